"""Click-to-segment and box prompts on a tiled image (a whole slide, issue #13 with #14): the
maps of a window around the click are computed from a full-resolution crop of the original
(never the whole slide), kept per block of the slide, and the outline is answered in slide
(level-0) pixels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.test import override_settings

from annotations.models import Image, Role
from cytoseg.contours import polygon_rasterize
from cytoseg.maps import ImageMaps
from cytoseg.slide_synthetic import SyntheticSlide, slide_synthetic
from inference import interactive
from tests.api.conftest import client_for, slide_upload
from tests.factories import member, model_version_files
from training.models import ModelStatus

pytestmark = pytest.mark.django_db

WIDTH, HEIGHT = 2048, 1536


@pytest.fixture(autouse=True)
def _settings(settings: Any) -> Iterator[None]:
    settings.TILED_MIN_SIDE = 512
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    interactive.interactive_cache_clear()
    yield
    interactive.interactive_cache_clear()


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return slide_synthetic(width=WIDTH, height=HEIGHT, field_width=512, field_height=512, distinct=3, seed=11)


@pytest.fixture
def tiled(slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path) -> Image:
    image = slide_upload(slide=slide, project=project, user=admin_user, folder=tmp_path)
    assert image.tiled and not image.display and (image.width, image.height) == (WIDTH, HEIGHT)
    return image


def _cell_near(slide: SyntheticSlide, x: int, y: int) -> np.ndarray:
    """The visible pixels (slide-sized mask) of the largest cell (class 1) near (x, y)."""
    best: np.ndarray | None = None
    for index, fx, fy in slide.placements:
        field = slide.fields[index]
        if not (fx <= x < fx + slide.field_width and fy <= y < fy + slide.field_height):
            continue
        lm = field.label_map()
        for k, cell in enumerate(field.cells, start=1):
            mask = lm == k
            rows, cols = np.nonzero(mask)
            if cell.label != 1 or rows.size == 0 or abs(fx + cols.mean() - x) > 120 or abs(fy + rows.mean() - y) > 120:
                continue
            if best is None or mask.sum() > best.sum():
                best = np.zeros((HEIGHT, WIDTH), bool)
                best[fy : fy + slide.field_height, fx : fx + slide.field_width] = mask
    assert best is not None
    return best


def _inside(mask: np.ndarray) -> list[float]:
    from scipy import ndimage as ndi

    r, c = np.unravel_index(np.argmax(ndi.distance_transform_edt(mask)), mask.shape)
    return [float(c) + 0.5, float(r) + 0.5]


def _iou(polygon: list[list[float]], mask: np.ndarray) -> float:
    drawn = polygon_rasterize(polygon, height=HEIGHT, width=WIDTH)
    return float((drawn & mask).sum() / max(1, (drawn | mask).sum()))


def _slide_labels(slide: SyntheticSlide) -> np.ndarray:
    """The slide's instance label map (each placed field's, numbered apart)."""
    out = np.zeros((HEIGHT, WIDTH), np.int32)
    for n, (index, fx, fy) in enumerate(slide.placements):
        lm = slide.fields[index].label_map()[: HEIGHT - fy, : WIDTH - fx]
        out[fy : fy + lm.shape[0], fx : fx + lm.shape[1]] = np.where(lm > 0, lm + 10_000 * n, 0)
    return out


class _TrueMaps:
    """A stand-in for a perfect network: the maps of the slide's true cells (Cellpose flows
    and cell probability) under the crop the server last read from the slide's original, so
    that a misplaced window, merge or answer shows as a wrong outline."""

    def __init__(self, labels: np.ndarray, crops: list[tuple[int, int, int, int]]) -> None:
        self.labels, self.crops = labels, crops

    def maps(self, image: np.ndarray) -> ImageMaps:
        from cellpose import dynamics

        x0, y0, x1, y1 = self.crops[-1]
        assert image.shape[:2] == (y1 - y0, x1 - x0)
        ids, inverse = np.unique(self.labels[y0:y1, x0:x1], return_inverse=True)
        labels = (inverse.reshape(y1 - y0, x1 - x0) + int(ids[0] != 0)).astype(np.int32)
        flows = np.asarray(dynamics.masks_to_flows(labels), dtype=np.float32) * 5.0
        return ImageMaps(
            height=y1 - y0,
            width=x1 - x0,
            flows=flows,
            cellprob=np.where(labels > 0, 4.0, -6.0).astype(np.float32),
            diameter=30.0,
        )


@pytest.fixture
def crops() -> Iterator[list[tuple[int, int, int, int]]]:
    """Every crop read from the slide's original, (x0, y0, x1, y1)."""
    seen: list[tuple[int, int, int, int]] = []
    real = interactive.image_crop_rgb

    def spy(*, image: Image, crop: tuple[int, int, int, int], polygon: Any) -> np.ndarray:
        seen.append(tuple(crop))  # type: ignore[arg-type]
        return real(image=image, crop=crop, polygon=polygon)

    with mock.patch("inference.interactive.image_crop_rgb", side_effect=spy):
        yield seen


def _small(crops: list[tuple[int, int, int, int]]) -> bool:
    side = interactive.SLIDE_BLOCK
    return bool(crops) and all(x1 - x0 <= side and y1 - y0 <= side for x0, y0, x1, y1 in crops)


def test_a_click_on_a_slide_without_a_model_uses_the_baseline_on_a_block(
    tiled: Image, slide: SyntheticSlide, project: Any, crops: list[Any]
) -> None:
    cell = _cell_near(slide, 1500, 1100)
    annotator = member(project, Role.ANNOTATOR)
    response = client_for(annotator).post(
        f"/api/v1/images/{tiled.pk}/segment/click", {"positive": [_inside(cell)]}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["source"] == "baseline" and body["polygon"]
    assert _iou(body["polygon"], cell) >= 0.6  # in slide pixels, at the clicked place
    assert _small(crops)  # a block read at full resolution, never the whole slide
    box = [1400, 1000, 1600, 1200]
    answer = client_for(annotator).post(f"/api/v1/images/{tiled.pk}/segment/box", {"box": box}, format="json")
    assert answer.status_code == 200, answer.content
    cells = answer.json()["cells"]
    assert cells
    for c in cells:
        xs, ys = [p[0] for p in c["polygon"]], [p[1] for p in c["polygon"]]
        assert box[0] <= sum(xs) / len(xs) < box[2] + 10 and box[1] <= sum(ys) / len(ys) < box[3] + 10


@override_settings(INTERACTIVE_MAPS_WORKER=False)
def test_a_click_on_a_slide_computes_the_maps_of_a_window_around_it(
    tiled: Image, slide: SyntheticSlide, project: Any, crops: list[Any]
) -> None:
    from cytoseg.tests.model_files import cellpose_weights

    version = model_version_files(project, "cellpose", {"cellpose.pth": cellpose_weights()}, status=ModelStatus.ACTIVE)
    real_backend = interactive._backend
    true_maps = _TrueMaps(_slide_labels(slide), crops)

    def backend(v: Any, *, window: bool = False) -> Any:
        return true_maps if v.kind == "cellpose" else real_backend(v, window=window)

    cell = _cell_near(slide, 1300, 900)
    point = _inside(cell)
    annotator = member(project, Role.ANNOTATOR)
    url = f"/api/v1/images/{tiled.pk}/segment/click"
    with mock.patch("inference.interactive._backend", side_effect=backend):
        response = client_for(annotator).post(url, {"positive": [point]}, format="json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["source"] == "model" and body["model_version"] == version.pk
        assert "maps_compute_ms" in body["timings"]
        assert _iou(body["polygon"], cell) >= 0.7  # in slide pixels, at the clicked place
        assert _small(crops)
        # the window's maps are kept in its block's file, marked known around the click
        margin = interactive.CLICK_MARGIN
        block = interactive._block_of(tiled, (int(point[1]) - margin, 0, int(point[0]) - margin, 0))
        key = interactive.window_key(project_id=project.pk, image_id=tiled.pk, model_version_id=version.pk, block=block)
        with default_storage.open(key, "rb") as handle:
            kept = interactive.maps_load(handle.read())
        assert kept.known is not None and kept.known[int(point[1]) - block[0], int(point[0]) - block[2]]
        assert kept.known.sum() == interactive._window_side(version.pk) ** 2 and kept.height <= interactive.SLIDE_BLOCK
        # a second click there is answered from the held block; another process reads the kept file
        again = client_for(annotator).post(url, {"positive": [point]}, format="json").json()
        assert "maps_memory" in again["timings"] and again["polygon"] == body["polygon"]
        interactive.interactive_cache_clear()
        other = client_for(annotator).post(url, {"positive": [point]}, format="json").json()
        assert "maps_storage_ms" in other["timings"] and "maps_compute_ms" not in other["timings"]
        assert other["polygon"] == body["polygon"]
        # a box next to it on the same block adds a window; its cells are in slide pixels too
        x, y = int(point[0]), int(point[1])
        box = [x + 60, y - 40, x + 200, y + 100]
        answer = client_for(annotator).post(f"/api/v1/images/{tiled.pk}/segment/box", {"box": box}, format="json")
        assert answer.status_code == 200, answer.content
        assert answer.json()["source"] == "model" and answer.json()["cells"]
        for c in answer.json()["cells"]:
            xs = [p[0] for p in c["polygon"]]
            assert box[0] - 5 <= sum(xs) / len(xs) <= box[2] + 5
    # deleting the slide deletes its kept windows
    from annotations.services.images import image_delete

    with mock.patch("django.db.transaction.on_commit", side_effect=lambda fn, *a, **k: fn()):
        image_delete(image=tiled)
    assert not default_storage.exists(key)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("click", {"positive": [[WIDTH, 10]]}, "positive.0"),
        ("click", {"positive": [[10, 10]], "negative": [[10, HEIGHT + 1]]}, "negative.0"),
        ("click", {"positive": [[10, 10], [900, 10]]}, "positive"),
        ("box", {"box": [0, 0, WIDTH + 1, 10]}, "box"),
        ("box", {"box": [0, 0, 1000, 100]}, "box"),
    ],
)
def test_a_prompt_outside_the_slide_or_too_large_is_400_naming_the_field(
    tiled: Image, project: Any, path: str, body: dict[str, Any], field: str
) -> None:
    annotator = member(project, Role.ANNOTATOR)
    response = client_for(annotator).post(f"/api/v1/images/{tiled.pk}/segment/{path}", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
