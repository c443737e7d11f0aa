"""Large images and slides through the API: upload of every producible format, the pyramid
build, the tile endpoint (every level, permissions, 404s) and the web's bounded memory."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files import File
from PIL import Image as PILImage

from annotations.models import Image, TileStatus
from annotations.services.images import image_upload_many
from annotations.services.slides import PYRAMID_TASK, image_pyramid_build
from core.models import OutboxMessage
from cytoseg.slide_synthetic import SyntheticSlide, slide_synthetic, slide_write
from cytoseg.tiles import TileGeometry
from tests.api.conftest import client_for
from tests.factories import png_bytes, upload

pytestmark = pytest.mark.django_db

WIDTH, HEIGHT = 1300, 900


@pytest.fixture(autouse=True)
def _small_threshold(settings: Any) -> None:
    # Test-sized "large" images: a side above 1024 px is tiled; uploads land in temporary files
    # as a real slide upload does (the in-memory path is covered by the small image tests).
    settings.TILED_MIN_SIDE = 1024
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return slide_synthetic(width=WIDTH, height=HEIGHT, field_width=512, field_height=384, distinct=2, seed=7)


def _post(client: Any, project: Any, path: Path, **data: Any) -> Any:
    with path.open("rb") as handle:
        return client.post(f"/api/v1/projects/{project.pk}/images", {"files": [handle], **data}, format="multipart")


def _built(image_id: int) -> None:
    assert OutboxMessage.objects.filter(name=PYRAMID_TASK, args=[image_id]).exists()
    result = image_pyramid_build(image_id=image_id)
    assert "levels" in result, result


def _tile(client: Any, image_id: int, level: int, col: int, row: int) -> np.ndarray:
    response = client.get(f"/api/v1/images/{image_id}/tiles/{level}/{col}_{row}.jpeg")
    assert response.status_code == 200, (level, col, row, response.status_code)
    assert response["Content-Type"] == "image/jpeg" and "max-age" in response["Cache-Control"]
    with PILImage.open(io.BytesIO(b"".join(response.streaming_content))) as tile:
        return np.asarray(tile.convert("RGB"))


@pytest.mark.parametrize(
    ("kind", "fmt", "mpp", "power"),
    [
        ("pyramidal-tiff", "TIFF", 0.5, None),
        ("svs", "SVS", 0.5, 20.0),
        ("ome-tiff", "OME-TIFF", 0.5, 20.0),
        ("jpeg", "JPEG", None, None),
        ("png", "PNG", None, None),
        ("tiff", "TIFF", 0.5, None),
    ],
)
def test_upload_of_each_format_builds_a_pyramid(
    kind: str, fmt: str, mpp: float | None, power: float | None, slide: SyntheticSlide, project: Any,
    admin_user: Any, annotator: Any, tmp_path: Path,
) -> None:  # fmt: skip
    path = slide_write(slide, tmp_path / f"slide.{kind}", kind=kind, mpp=0.5, magnification=20)
    admin = client_for(admin_user)
    response = _post(admin, project, path)
    assert response.status_code == 201, response.content
    body = response.json()[0]
    assert body["tiled"] is True and body["tile_status"] == "queued" and body["tiles"] is None
    assert (body["width"], body["height"], body["original_format"]) == (WIDTH, HEIGHT, fmt)
    assert body["mpp_x"] == (pytest.approx(mpp) if mpp else None)
    assert body["objective_power"] == (pytest.approx(power) if power else None)
    assert body["magnification"] == ("20x" if power else "")
    image_id = body["id"]
    # not built yet: no tiles, no display, no thumbnail
    assert admin.get(f"/api/v1/images/{image_id}/tiles/0/0_0.jpeg").status_code == 404
    assert admin.get(f"/api/v1/images/{image_id}/file?variant=display").status_code == 404

    _built(image_id)
    detail = client_for(annotator).get(f"/api/v1/images/{image_id}").json()
    assert detail["tile_status"] == "done" and detail["tile_error"] == ""
    tiles = detail["tiles"]
    geometry = TileGeometry(WIDTH, HEIGHT, 256)
    assert tiles == {
        "url": f"/api/v1/images/{image_id}/tiles/{{level}}/{{col}}_{{row}}.jpeg",
        "tile_size": 256,
        "levels": geometry.levels,
        "min_level": geometry.single_tile_level(),
        "format": "jpeg",
    }
    thumbnail = admin.get(f"/api/v1/images/{image_id}/file?variant=thumbnail")
    assert thumbnail.status_code == 200
    # the full-resolution level, reassembled from the endpoint, is the slide
    full = slide.region(0, 0, WIDTH, HEIGHT).astype(np.float64)
    level = geometry.max_level
    cols, rows = geometry.tile_counts(level)
    got = np.zeros_like(full)
    for row in range(rows):
        for col in range(cols):
            x0, y0, x1, y1 = geometry.tile_box(level, col, row)
            got[y0:y1, x0:x1] = _tile(admin, image_id, level, col, row)
    assert np.abs(got - full).mean() < 4.0


def test_every_level_is_served_and_out_of_range_is_404(
    slide: SyntheticSlide, project: Any, admin_user: Any, outsider: Any, tmp_path: Path
) -> None:
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff")
    admin = client_for(admin_user)
    image_id = _post(admin, project, path).json()[0]["id"]
    _built(image_id)
    geometry = TileGeometry(WIDTH, HEIGHT, 256)
    full = slide.region(0, 0, WIDTH, HEIGHT).astype(np.float64)
    for level in range(geometry.levels):
        width, height = geometry.level_size(level)
        cols, rows = geometry.tile_counts(level)
        got = np.zeros((height, width, 3))
        for row in range(rows):
            for col in range(cols):
                x0, y0, x1, y1 = geometry.tile_box(level, col, row)
                tile = _tile(admin, image_id, level, col, row)
                assert tile.shape == (y1 - y0, x1 - x0, 3)
                got[y0:y1, x0:x1] = tile
        factor = geometry.scale(level)
        # the level against the full image averaged over factor x factor blocks
        want = np.zeros_like(got)
        for y in range(height):
            band = full[y * factor : (y + 1) * factor]
            for x in range(width):
                want[y, x] = band[:, x * factor : (x + 1) * factor].mean(axis=(0, 1))
        assert np.abs(got - want).mean() < (4.0 if factor == 1 else 7.0), level
        # one past the last column and row, at every level
        assert admin.get(f"/api/v1/images/{image_id}/tiles/{level}/{cols}_0.jpeg").status_code == 404
        assert admin.get(f"/api/v1/images/{image_id}/tiles/{level}/0_{rows}.jpeg").status_code == 404
    base = f"/api/v1/images/{image_id}/tiles"
    assert admin.get(f"{base}/{geometry.levels}/0_0.jpeg").status_code == 404
    assert admin.get(f"{base}/0/0_0.png").status_code == 404
    assert admin.get(f"{base}/0/0-0.jpeg").status_code == 404
    assert admin.get(f"{base}/0/..%2F0_0.jpeg").status_code == 404
    error = admin.get(f"{base}/99/0_0.jpeg").json()
    assert error["detail"] == "No such tile."
    # members only: an outsider learns nothing, not even that the image exists
    assert client_for(outsider).get(f"{base}/0/0_0.jpeg").status_code == 404
    assert client_for(outsider).get(f"/api/v1/images/{image_id}").status_code == 404


def test_small_images_keep_the_ordinary_path(project: Any, admin_user: Any) -> None:
    response = client_for(admin_user).post(
        f"/api/v1/projects/{project.pk}/images",
        {"files": [upload("small.png", png_bytes(300, 200))]},
        format="multipart",
    )
    body = response.json()[0]
    assert body["tiled"] is False and body["tile_status"] == "none" and body["tiles"] is None
    assert client_for(admin_user).get(f"/api/v1/images/{body['id']}/file?variant=display").status_code == 200
    assert not OutboxMessage.objects.filter(name=PYRAMID_TASK).exists()


def test_a_corrupt_slide_fails_with_its_reason(project: Any, admin_user: Any, tmp_path: Path) -> None:
    big = PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1300, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # the header is intact
    image_id = _post(client_for(admin_user), project, path).json()[0]["id"]
    result = image_pyramid_build(image_id=image_id)
    image = Image.objects.get(pk=image_id)
    assert "failed" in result and image.tile_status == TileStatus.FAILED
    assert "decoded" in image.tile_error or "cannot" in image.tile_error, image.tile_error
    assert client_for(admin_user).get(f"/api/v1/images/{image_id}").json()["tile_error"] == image.tile_error


def test_not_an_image_is_rejected_and_nothing_is_stored(
    project: Any, admin_user: Any, tmp_path: Path, settings: Any
) -> None:
    path = tmp_path / "slide.svs"
    path.write_bytes(b"II*\x00" + b"\x00" * 5000)
    response = _post(client_for(admin_user), project, path)
    assert response.status_code == 400 and "files.0" in response.json()["errors"]
    assert not Image.objects.exists() and not OutboxMessage.objects.exists()


def test_duplicate_slide_is_named(slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path) -> None:
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff")
    client = client_for(admin_user)
    assert _post(client, project, path).status_code == 201
    again = _post(client, project, path)
    assert again.status_code == 400 and "duplicate" in again.json()["errors"]["files.0"]


def test_delete_removes_the_tiles(slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path) -> None:
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff")
    client = client_for(admin_user)
    with pytest.MonkeyPatch.context():
        image_id = _post(client, project, path).json()[0]["id"]
    _built(image_id)
    image = Image.objects.get(pk=image_id)
    from django.conf import settings as django_settings

    tile_dir = Path(django_settings.MEDIA_ROOT) / image.tile_root
    assert any(tile_dir.rglob("*.jpeg"))
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        assert client.delete(f"/api/v1/images/{image_id}").status_code == 204
    assert not any(tile_dir.rglob("*.jpeg"))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def test_the_web_never_decodes_the_whole_image(project: Any, admin_user: Any, tmp_path: Path) -> None:
    """Upload (header probe, hash, copy into the storage) and tile requests of a 6000 x 4500
    JPEG stay far below its decoded size (81 MB): the Python allocations (tracemalloc) and the
    process's peak resident memory (which sees libvips's C allocations too)."""
    rng = np.random.default_rng(1)
    small = PILImage.fromarray(rng.integers(0, 255, (450, 600, 3), dtype=np.uint8))
    path = tmp_path / "big.jpg"
    small.resize((6000, 4500), PILImage.Resampling.NEAREST).save(path, format="JPEG", quality=80)
    decoded_bytes = 6000 * 4500 * 3
    client = client_for(admin_user)
    client.get(f"/api/v1/projects/{project.pk}")  # warm the URL resolver and the serializers

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size (VmHWM)
    rss_before = _rss_kib("VmRSS")
    tracemalloc.start()
    try:
        with path.open("rb") as handle:
            wrapped = File(handle, name="big.jpg")
            # a temporary upload is a file on disk: the service sees it as Django hands it over
            wrapped.temporary_file_path = lambda: str(path)  # type: ignore[attr-defined]
            image = image_upload_many(project=project, files=[wrapped], metadata={}, uploaded_by=admin_user)[0]
        _, upload_peak = tracemalloc.get_traced_memory()
        upload_rss_growth = (_rss_kib("VmHWM") - rss_before) * 1024
        tracemalloc.stop()
        image_pyramid_build(image_id=image.pk)  # the worker's side: not measured
        Path("/proc/self/clear_refs").write_text("5")
        rss_before = _rss_kib("VmRSS")
        tracemalloc.start()
        for level in (13, 12, 8):
            _tile(client, image.pk, level, 0, 0)
        _, tiles_peak = tracemalloc.get_traced_memory()
        tiles_rss_growth = (_rss_kib("VmHWM") - rss_before) * 1024
    finally:
        tracemalloc.stop()
    assert image.tiled and image.width == 6000
    assert upload_peak < decoded_bytes / 20, upload_peak
    assert tiles_peak < decoded_bytes / 20, tiles_peak
    assert upload_rss_growth < decoded_bytes / 4, upload_rss_growth
    assert tiles_rss_growth < decoded_bytes / 4, tiles_rss_growth


def test_a_slide_is_pre_segmented_by_tiles_never_whole(
    slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path
) -> None:
    """Pre-segmentation of a slide on upload goes by tile tasks (inference.tiled), never the
    single-image task that reads a display PNG whole (tests/api/test_tiled_presegment.py runs them)."""
    project.auto_presegment = True
    project.save(update_fields=["auto_presegment"])
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff")
    client = client_for(admin_user)
    image_id = _post(client, project, path).json()[0]["id"]
    assert not OutboxMessage.objects.filter(name="inference.presegment_image").exists()
    assert OutboxMessage.objects.filter(name="inference.presegment_tiles", args__0=image_id).exists()
    assert Image.objects.get(pk=image_id).presegment_status == "queued"


def test_a_slide_that_keeps_killing_the_worker_fails(
    slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path
) -> None:
    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff")
    image_id = _post(client_for(admin_user), project, path).json()[0]["id"]
    # three builds started and never finished (each delivery of the task claims it again)
    Image.objects.filter(pk=image_id).update(tile_status=TileStatus.RUNNING, tile_attempts=3)
    assert image_pyramid_build(image_id=image_id) == {"failed": "too many attempts"}
    image = Image.objects.get(pk=image_id)
    assert image.tile_status == TileStatus.FAILED and "3 times" in image.tile_error
    # a running build of a worker that died is claimed again, and counted
    Image.objects.filter(pk=image_id).update(tile_status=TileStatus.RUNNING, tile_attempts=1)
    assert "levels" in image_pyramid_build(image_id=image_id)
    image = Image.objects.get(pk=image_id)
    assert image.tile_status == TileStatus.DONE and image.tile_attempts == 2


def test_a_slide_stays_out_of_training_snapshots(
    slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path
) -> None:
    """Training reads an image whole: a verified slide is left out of the snapshots (training
    by regions is a later part of issue #14) instead of failing the job."""
    from tests.factories import image_create
    from training.models import DatasetSource
    from training.snapshots import eligible_images

    path = slide_write(slide, tmp_path / "slide.tif", kind="pyramidal-tiff")
    slide_id = _post(client_for(admin_user), project, path).json()[0]["id"]
    small = image_create(project, seed=5, split="train")
    Image.objects.filter(pk__in=[slide_id, small.pk]).update(status="verified")
    assert list(eligible_images(project=project, source=DatasetSource.VERIFIED)) == [small]
