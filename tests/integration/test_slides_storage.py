"""A whole slide through the bucket (issue #14): uploaded to S3 (moto's server), its pyramid built by
a Celery worker on "another host" (folders of its own, the web's refused by the host guard) that
reads the original from the bucket and writes the tiles into it; the web serves the tiles from
the bucket; deleting the image deletes them; nothing lies on the web's disk."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from rest_framework.test import APIClient

from annotations.models import Image, TileStatus
from cytoseg.slide_synthetic import slide_synthetic, slide_write
from cytoseg.tiles import TileGeometry
from tests.factories import ProjectFactory, UserFactory
from tests.integration.support import wait_until
from tests.integration.test_object_storage import _files_under, remote_worker
from tests.s3 import S3Server, s3_server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server, settings: Any) -> str:
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    settings.STORAGES = s3.storages_setting(prefix)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # spooled to a temporary file, as a real slide is
    return prefix


def test_slide_pyramid_built_from_and_into_the_bucket(s3: S3Server, bucket: str, settings: Any, tmp_path: Path) -> None:
    admin = UserFactory()
    project = ProjectFactory(created_by=admin)
    client = APIClient()
    client.force_authenticate(admin)
    slide = slide_synthetic(width=1300, height=900, field_width=512, field_height=384, distinct=2, seed=3)
    path = slide_write(slide, tmp_path / "slide.svs", kind="svs", mpp=0.5, magnification=20)
    with remote_worker(s3, bucket, settings, tmp_path / "host-b", queues="default"):
        with path.open("rb") as handle:
            response = client.post(f"/api/v1/projects/{project.pk}/images", {"files": [handle]}, format="multipart")
        assert response.status_code == 201, response.content
        body = response.json()[0]
        assert body["original_format"] == "SVS" and body["objective_power"] == 20.0
        image_id = body["id"]
        wait_until(
            lambda: Image.objects.get(pk=image_id).tile_status in (TileStatus.DONE, TileStatus.FAILED),
            180,
            lambda: f"pyramid stayed {Image.objects.get(pk=image_id).tile_status}",
        )
        image = Image.objects.get(pk=image_id)
        assert image.tile_status == TileStatus.DONE, image.tile_error
    geometry = TileGeometry(1300, 900, 256)
    tile_keys = [k for k in s3.keys(f"{bucket}/{image.tile_root}/") if k.endswith(".jpeg")]
    assert len(tile_keys) == geometry.tile_total()
    assert f"{bucket}/{image.original.name}" in s3.keys(f"{bucket}/")
    # the web streams a tile from the bucket
    served = client.get(f"/api/v1/images/{image_id}/tiles/{geometry.max_level}/5_3.jpeg")
    assert served.status_code == 200
    with PILImage.open(io.BytesIO(b"".join(served.streaming_content))) as tile:  # type: ignore[attr-defined]
        assert tile.size == (1300 - 5 * 256, 900 - 3 * 256)
    assert _files_under(str(settings.MEDIA_ROOT)) == []
    # deleting the image deletes its tiles from the bucket
    assert client.delete(f"/api/v1/images/{image_id}").status_code == 204
    assert s3.keys(f"{bucket}/{image.tile_root}/") == []
    assert f"{bucket}/{image.original.name}" not in s3.keys(f"{bucket}/")
