"""Training never blocks pre-segmentation: training jobs run on their own queue and worker
process, so an image uploaded while a job trains is pre-segmented at once (real worker processes,
as bin/run and docker-compose start them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotations.models import Image, PresegmentStatus
from cytoseg.synthetic import generate_field
from tests.worker import celery_worker
from training.models import JobStatus, TrainingJob
from training.tests.factories import synthetic_png, synthetic_project

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def workers(settings: Any, tmp_path: Path) -> Iterator[None]:
    settings.TRAINING_DIR = str(tmp_path / "training")
    env = {
        "TRAINING_DIR": settings.TRAINING_DIR,
        "TRAINING_DEVICE": "cpu",
        "INFERENCE_DEVICE": "cpu",
        "TRAINING_HEARTBEAT_SECONDS": "1",
    }
    with (
        celery_worker(log_path=tmp_path / "gpu.log", env=env, name="gpu", queues="default,gpu"),
        celery_worker(log_path=tmp_path / "training.log", env=env, name="training", queues="training", purge=False),
    ):
        yield


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_upload_is_presegmented_while_a_job_trains(workers: None) -> None:
    sp = synthetic_project(splits={"train": 2, "test": 1}, size=64, n_cells=5, n_erythrocytes=2)
    sp.project.auto_presegment = True
    sp.project.save(update_fields=["auto_presegment"])
    client = APIClient()
    client.force_authenticate(sp.admin)
    # A Cellpose job long enough to still be training when the upload comes (cancelled below).
    config = {"preset": "tiny", "evaluate": False, "cellpose": {"n_epochs": 5000, "val_every": 1000}}
    response = client.post(
        f"/api/v1/projects/{sp.project.pk}/training/jobs", {"kind": "cellpose", "config": config}, format="json"
    )
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    _wait(
        lambda: TrainingJob.objects.get(pk=job_id).progress.get("phase") == "train",
        120,
        "the training job to start training",
    )

    field = generate_field(seed=77, width=128, height=96)
    upload = SimpleUploadedFile("new.png", synthetic_png(field), content_type="image/png")
    uploaded = client.post(f"/api/v1/projects/{sp.project.pk}/images", {"files": [upload]}, format="multipart")
    assert uploaded.status_code == 201, uploaded.content
    image_id = uploaded.json()[0]["id"]
    sent = time.monotonic()
    _wait(
        lambda: Image.objects.get(pk=image_id).presegment_status in (PresegmentStatus.DONE, PresegmentStatus.FAILED),
        90,
        "the pre-segmentation of the new upload",
    )
    waited = time.monotonic() - sent
    assert Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.DONE
    # It did not wait for the job: the job is still training.
    assert TrainingJob.objects.get(pk=job_id).status == JobStatus.RUNNING, f"pre-segmented after {waited:.1f} s"

    assert client.post(f"/api/v1/training/jobs/{job_id}/cancel", {}, format="json").status_code == 200
    _wait(lambda: TrainingJob.objects.get(pk=job_id).status == JobStatus.CANCELLED, 120, "the job to stop")


def test_presegmentation_is_first_in_first_out(settings: Any, tmp_path: Path) -> None:
    """Queued images are taken in the order they were sent (the embedded broker sorts by name)."""
    from config.broker import AtomicChannel

    names = []
    channel = AtomicChannel.__new__(AtomicChannel)
    channel.data_folder_out = str(tmp_path)
    for _ in range(3):
        channel._put("gpu", {"body": "x"})
        names.append(sorted(p.name for p in tmp_path.iterdir()))
    first, second, third = names[0][0], *(set(names[1]) - set(names[0])), *(set(names[2]) - set(names[1]))
    assert sorted([third, first, second]) == [first, second, third]
    stamps = [name.split("_", 1)[0] for name in (first, second, third)]
    assert len({len(s) for s in stamps}) == 1, "fixed-width time stamps sort as numbers"
