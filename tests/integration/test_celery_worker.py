"""End to end through a real Celery worker process (prefork pool, as in production) on the
configured broker: Redis in CI, the filesystem transport otherwise."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from annotations.models import Cell, Image, Layer, PresegmentStatus
from cytoseg.tests.model_files import cellpose_weights
from tests.factories import ProjectFactory, UserFactory, model_object_read, model_object_replace
from tests.integration.support import field_png
from tests.worker import celery_worker
from training.models import ModelKind, ModelVersion

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(settings: Any, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with celery_worker(log_path=tmp_path / "worker.log") as process:
        yield process


def _wait_for(image_id: int, statuses: set[str], timeout: float = 120) -> Image:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image = Image.objects.get(pk=image_id)
        if image.presegment_status in statuses:
            return image
        time.sleep(0.5)
    raise AssertionError(f"image {image_id} stayed {Image.objects.get(pk=image_id).presegment_status}")


def test_upload_presegments_on_worker_and_proposals_can_be_accepted(worker: Any) -> None:
    admin = UserFactory()
    project = ProjectFactory(created_by=admin, auto_presegment=True)
    client = APIClient()
    client.force_authenticate(admin)
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post(
        f"/api/v1/projects/{project.pk}/images",
        {"files": [SimpleUploadedFile("field.png", field_png(7, 256, 192), content_type="image/png")]},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    image_id = response.json()[0]["id"]
    image = _wait_for(image_id, {PresegmentStatus.DONE, PresegmentStatus.FAILED})
    assert image.presegment_status == PresegmentStatus.DONE, image.presegment_error
    assert image.status == "pre_segmented"
    proposals = Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL)
    assert proposals.count() >= 5
    assert {p.model_version.kind for p in proposals} == {ModelKind.WATERSHED}

    # Re-running the same model version replaces its proposals instead of duplicating them.
    count = proposals.count()
    assert client.post(f"/api/v1/images/{image_id}/presegment", {}, format="json").status_code == 202
    _wait_for(image_id, {PresegmentStatus.DONE, PresegmentStatus.FAILED})
    assert Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).count() == count

    accepted = client.post(f"/api/v1/images/{image_id}/proposals/accept", {"revision": 0, "all": True}, format="json")
    assert accepted.status_code == 200, accepted.content
    assert len(accepted.json()["cells"]) == count and accepted.json()["revision"] == 1
    assert all(c["provenance"]["proposal_id"] for c in accepted.json()["cells"])


def test_backend_failure_marks_image_failed_and_keeps_earlier_proposals(worker: Any, tmp_path: Path) -> None:
    admin = UserFactory()
    project = ProjectFactory(created_by=admin)
    client = APIClient()
    client.force_authenticate(admin)
    from django.core.files.uploadedfile import SimpleUploadedFile

    image_id = client.post(
        f"/api/v1/projects/{project.pk}/images",
        {"files": [SimpleUploadedFile("f.png", field_png(8, 256, 192), content_type="image/png")]},
        format="multipart",
    ).json()[0]["id"]
    assert client.post(f"/api/v1/images/{image_id}/presegment", {}, format="json").status_code == 202
    _wait_for(image_id, {PresegmentStatus.DONE})
    before = set(Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).values_list("pk", flat=True))
    assert before

    version = client.post(
        f"/api/v1/projects/{project.pk}/models",
        {"kind": "cellpose", "file": SimpleUploadedFile("cellpose.pth", cellpose_weights())},
        format="multipart",
    )
    assert version.status_code == 201, version.content
    # the stored file changes after registration: the worker must refuse it, not load it
    stored = ModelVersion.objects.get(pk=version.json()["id"])
    original = model_object_read(stored, "cellpose.pth")
    model_object_replace(stored, "cellpose.pth", original[:-8] + b"tampered")  # same size, other bytes
    response = client.post(
        f"/api/v1/images/{image_id}/presegment", {"model_version": version.json()["id"]}, format="json"
    )
    assert response.status_code == 202
    image = _wait_for(image_id, {PresegmentStatus.FAILED})
    assert "sha256" in image.presegment_error
    after = set(Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).values_list("pk", flat=True))
    assert after == before
