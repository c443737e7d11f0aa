from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from annotations.models import AuditEvent, Image
from tests.api.conftest import client_for
from tests.factories import image_create, png_bytes, upload

pytestmark = pytest.mark.django_db


def _post(client: Any, project: Any, files: list[Any], **data: Any) -> Any:
    return client.post(f"/api/v1/projects/{project.pk}/images", {"files": files, **data}, format="multipart")


def _media_files(settings: Any) -> list[Path]:
    return (
        [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()] if Path(settings.MEDIA_ROOT).exists() else []
    )


def test_upload_many_with_metadata(project: Any, admin_user: Any) -> None:
    response = _post(
        client_for(admin_user),
        project,
        [upload("a.png", png_bytes(seed=1)), upload("b.png", png_bytes(seed=2))],
        bethesda="IV",
        slide_code="S-17",
        split="train",
        magnification="20x",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert [i["file_name"] for i in body] == ["a.png", "b.png"]
    assert body[0]["width"] == 64 and body[0]["height"] == 48
    assert body[0]["bethesda"] == "IV" and body[0]["split"] == "train" and body[0]["status"] == "new"


def test_split_assigned_when_missing(project: Any) -> None:
    image = image_create(project, seed=3)
    assert image.split in {"train", "validation", "test"}


def _tiff16(gray: bool) -> bytes:
    import tifffile

    rng = np.random.default_rng(0)
    shape = (40, 50) if gray else (40, 50, 3)
    array = rng.integers(1000, 4000, size=shape, dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def test_16bit_grey_tiff_is_kept_and_converted(project: Any, admin_user: Any) -> None:
    response = _post(client_for(admin_user), project, [upload("g.tif", _tiff16(gray=True))])
    assert response.status_code == 201, response.content
    image = Image.objects.get(pk=response.json()[0]["id"])
    assert image.bit_depth == 16 and image.original_format == "TIFF"
    with image.display.open("rb") as handle:
        display = np.asarray(PILImage.open(handle).convert("RGB"))
    assert display.shape == (40, 50, 3) and display.dtype == np.uint8 and display.max() > 200
    with image.original.open("rb") as handle:
        assert handle.read() == _tiff16(gray=True)


def test_grey_png_becomes_rgb(project: Any, admin_user: Any) -> None:
    response = _post(client_for(admin_user), project, [upload("g.png", png_bytes(mode="L"))])
    assert response.status_code == 201


@pytest.mark.parametrize(
    "data,fragment",
    [
        (b"this is text, not an image", "not a decodable image"),
        (png_bytes()[:200], "truncated"),
        (b"", "empty"),
    ],
)
def test_bad_files_rejected_with_reason(
    project: Any, admin_user: Any, settings: Any, data: bytes, fragment: str
) -> None:
    response = _post(client_for(admin_user), project, [upload("bad.png", data)])
    assert response.status_code == 400
    message = response.json()["errors"]["files.0"]
    assert "bad.png" in message and fragment in message
    assert Image.objects.count() == 0 and _media_files(settings) == []


def test_gif_rejected(project: Any, admin_user: Any) -> None:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(buffer, format="GIF")
    response = _post(client_for(admin_user), project, [upload("x.gif", buffer.getvalue())])
    assert response.status_code == 400 and "not accepted" in response.json()["errors"]["files.0"]


def test_decompression_bomb_and_size_limit(project: Any, admin_user: Any, settings: Any) -> None:
    settings.IMAGE_MAX_PIXELS = 1000
    response = _post(client_for(admin_user), project, [upload("big.png", png_bytes(64, 48))])
    assert response.status_code == 400 and "decompression bomb" in response.json()["errors"]["files.0"]
    settings.IMAGE_MAX_PIXELS = 10**8
    settings.IMAGE_MAX_UPLOAD_BYTES = 1024
    response = _post(client_for(admin_user), project, [upload("big.png", png_bytes(64, 48))])
    assert response.status_code == 400 and "limit" in response.json()["errors"]["files.0"]


def test_batch_is_atomic_and_duplicates_rejected(project: Any, admin_user: Any, settings: Any) -> None:
    client = client_for(admin_user)
    good, dup = png_bytes(seed=5), png_bytes(seed=5)
    response = _post(client, project, [upload("ok.png", good), upload("same.png", dup), upload("bad.png", b"junk")])
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert "duplicate" in errors["files.1"] and "files.2" in errors and "files.0" not in errors
    assert Image.objects.count() == 0 and _media_files(settings) == []
    assert _post(client, project, [upload("ok.png", good)]).status_code == 201
    again = _post(client, project, [upload("copy.png", good)])
    assert again.status_code == 400 and "already in this project" in again.json()["errors"]["files.0"]


def test_invalid_metadata_named(project: Any, admin_user: Any) -> None:
    response = _post(client_for(admin_user), project, [upload()], bethesda="VII", split="holdout")
    assert response.status_code == 400
    assert {"bethesda", "split"} <= set(response.json()["errors"])


def test_no_files(project: Any, admin_user: Any) -> None:
    response = client_for(admin_user).post(f"/api/v1/projects/{project.pk}/images", {}, format="multipart")
    assert response.status_code == 400 and "files" in response.json()["errors"]


def test_only_admin_uploads(project: Any, annotator: Any) -> None:
    assert _post(client_for(annotator), project, [upload()]).status_code == 403


def test_files_served_to_members_only(project: Any, annotator: Any, outsider: Any) -> None:
    image = image_create(project)
    client = client_for(annotator)
    for variant, content_type in (("display", "image/png"), ("thumbnail", "image/jpeg")):
        response = client.get(f"/api/v1/images/{image.pk}/file?variant={variant}")
        assert response.status_code == 200 and response["Content-Type"] == content_type
        b"".join(response.streaming_content)
    original = client.get(f"/api/v1/images/{image.pk}/file?variant=original")
    assert b"".join(original.streaming_content) == png_bytes(64, 48, 0)
    assert client.get(f"/api/v1/images/{image.pk}/file?variant=secret").status_code == 400
    assert client_for(outsider).get(f"/api/v1/images/{image.pk}/file").status_code == 404
    assert client_for(outsider).get(f"/api/v1/images/{image.pk}").status_code == 404


def test_image_list_filters_and_counts(project: Any, annotator: Any, django_assert_max_num_queries: Any) -> None:
    for seed, (bethesda, split) in enumerate([("IV", "train"), ("V", "test"), ("IV", "test")]):
        image_create(project, seed=seed, bethesda=bethesda, split=split)
    client = client_for(annotator)
    with django_assert_max_num_queries(8):
        body = client.get(f"/api/v1/projects/{project.pk}/images").json()
    assert body["count"] == 3 and body["results"][0]["cell_count"] == 0
    assert client.get(f"/api/v1/projects/{project.pk}/images?bethesda=IV").json()["count"] == 2
    assert client.get(f"/api/v1/projects/{project.pk}/images?bethesda=IV&split=test").json()["count"] == 1
    assert client.get(f"/api/v1/projects/{project.pk}/images?status=verified").json()["count"] == 0
    assert client.get(f"/api/v1/projects/{project.pk}/images?cell_class=x").status_code == 400


def test_image_list_query_count_does_not_grow(project: Any, annotator: Any, django_assert_max_num_queries: Any) -> None:
    for seed in range(12):
        image_create(project, seed=seed)
    with django_assert_max_num_queries(8):
        assert client_for(annotator).get(f"/api/v1/projects/{project.pk}/images").json()["count"] == 12


def test_split_is_fixed_unless_admin_confirms(project: Any, admin_user: Any, annotator: Any) -> None:
    image = image_create(project, split="test")
    response = client_for(annotator).patch(f"/api/v1/images/{image.pk}", {"split": "train"}, format="json")
    assert response.status_code == 400 and "split" in response.json()["errors"]
    response = client_for(admin_user).patch(f"/api/v1/images/{image.pk}", {"split": "train"}, format="json")
    assert response.status_code == 400 and "confirm_split_change" in response.json()["errors"]["split"]
    response = client_for(admin_user).patch(
        f"/api/v1/images/{image.pk}", {"split": "train", "confirm_split_change": True}, format="json"
    )
    assert response.status_code == 200 and response.json()["split"] == "train"
    assert AuditEvent.objects.get(action="image.split_change").before == {"split": "test"}
    # Other metadata stays editable by annotators.
    assert (
        client_for(annotator).patch(f"/api/v1/images/{image.pk}", {"bethesda": "VI"}, format="json").json()["bethesda"]
        == "VI"
    )


def test_delete_image_removes_files(
    project: Any, admin_user: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    image = image_create(project)
    with django_capture_on_commit_callbacks(execute=True):
        assert client_for(admin_user).delete(f"/api/v1/images/{image.pk}").status_code == 204
    assert _media_files(settings) == []


def test_frozen_test_image_never_leaves_test(project: Any, admin_user: Any) -> None:
    from training.models import FrozenTestImage

    image = image_create(project, split="test")
    FrozenTestImage.objects.create(project=project, image=image)
    response = client_for(admin_user).patch(
        f"/api/v1/images/{image.pk}", {"split": "train", "confirm_split_change": True}, format="json"
    )
    assert response.status_code == 400 and "frozen test split" in response.json()["errors"]["split"]
    image.refresh_from_db()
    assert image.split == "test"
