"""Faults with real processes: a redis-server this test starts on its own port (the broker)
is killed during uploads, job starts and exports, then started again; a worker's whole process
group is SIGKILLed during pre-segmentation. After each: nothing stuck, nothing half written,
nothing lost."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotations.models import Cell, Image, Layer, PresegmentStatus
from core.models import OutboxMessage
from core.processes import pid_alive
from core.queue import outbox_dispatch
from inference.services import presegment_reap
from interchange.models import ExportJob
from tests.factories import ProjectFactory, UserFactory
from tests.integration.support import field_png, wait_until
from tests.redis_server import RedisServer, app_broker
from tests.worker import celery_worker
from training.models import JobStatus, TrainingJob
from training.tests.factories import synthetic_project

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return call(), time.monotonic() - started


def test_broker_outage_keeps_every_write_and_its_task_until_the_broker_is_back(
    redis_server: RedisServer, tmp_path: Path, settings: Any
) -> None:
    sp = synthetic_project(splits={"train": 2, "test": 1}, size=96, n_cells=6, n_erythrocytes=1)
    project, admin = sp.project, sp.admin
    project.auto_presegment = True
    project.save(update_fields=["auto_presegment"])
    client = APIClient()
    client.force_authenticate(admin)
    with app_broker(redis_server.url):
        redis_server.kill()  # the broker goes down
        upload, upload_s = _timed(
            lambda: client.post(
                f"/api/v1/projects/{project.pk}/images",
                {"files": [SimpleUploadedFile("b.png", field_png(2, 192), content_type="image/png")], "split": "train"},
                format="multipart",
            )
        )
        export, export_s = _timed(lambda: client.get(f"/api/v1/projects/{project.pk}/export/geojson?async=1"))
        job, job_s = _timed(
            lambda: client.post(
                f"/api/v1/projects/{project.pk}/training/jobs",
                {"kind": "cellpose", "config": {"preset": "tiny"}},
                format="json",
            )
        )
        # answered at once, and kept: the rows with their tasks waiting in the outbox
        assert upload.status_code == 201, upload.content
        assert export.status_code == 202 and job.status_code == 201, (export.content, job.content)
        assert max(upload_s, export_s, job_s) < 5, (upload_s, export_s, job_s)
        image_id = upload.json()[0]["id"]
        assert Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.QUEUED
        names = sorted(OutboxMessage.objects.values_list("name", flat=True))
        assert names == ["inference.presegment_image", "interchange.export_run", "training.run_job"]
        assert outbox_dispatch()["sent"] == 0  # still down
        # the job that waits cannot block training for days: cancelling it works at once
        assert client.post(f"/api/v1/training/jobs/{job.json()['id']}/cancel", {}, format="json").status_code == 200

        redis_server.start()  # the broker is back: the dispatcher (beat, or a starting worker) sends
        assert outbox_dispatch() == {"sent": 3, "left": 0}
        assert redis_server.queue_length("gpu") == 1 and redis_server.queue_length("default") == 1
        worker_env = {"CELERY_BROKER_URL": redis_server.url}
        with celery_worker(
            log_path=tmp_path / "worker.log", env=worker_env, queues="default,gpu,training", purge=False
        ):
            wait_until(
                lambda: (
                    Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.DONE
                    and ExportJob.objects.get(pk=export.json()["id"]).status == "done"
                ),
                120,
                lambda: (
                    f"image {Image.objects.get(pk=image_id).presegment_status}, "
                    f"export {ExportJob.objects.get(pk=export.json()['id']).status}"
                ),
            )
            assert TrainingJob.objects.get(pk=job.json()["id"]).status == JobStatus.CANCELLED
    assert Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).exists()
    assert not OutboxMessage.objects.exists()


def _big_image(*, seed: int) -> tuple[APIClient, int]:
    """An admin's client and a large uploaded field: the watershed baseline takes seconds on it,
    long enough for a test to catch its pre-segmentation running."""
    admin = UserFactory()
    project = ProjectFactory(created_by=admin, auto_presegment=False)
    client = APIClient()
    client.force_authenticate(admin)
    upload = client.post(
        f"/api/v1/projects/{project.pk}/images",
        {
            "files": [SimpleUploadedFile("big.png", field_png(seed, 2600), content_type="image/png")],
            "split": "train",
        },
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    return client, int(upload.json()[0]["id"])


def test_worker_group_killed_during_presegmentation_is_requeued_and_finished(tmp_path: Path, settings: Any) -> None:
    client, image_id = _big_image(seed=3)
    with celery_worker(log_path=tmp_path / "worker1.log", queues="gpu") as first:
        assert client.post(f"/api/v1/images/{image_id}/presegment", {}, format="json").status_code == 202
        wait_until(
            lambda: Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.RUNNING,
            60,
            lambda: f"never ran: {Image.objects.get(pk=image_id).presegment_status}",
        )
        os.killpg(first.pid, signal.SIGKILL)  # the whole worker: main process and pool child
        first.wait(10)
    image = Image.objects.get(pk=image_id)
    assert image.presegment_status == PresegmentStatus.RUNNING  # what it used to stay, for hours
    # a SIGKILLed process takes a moment to be gone (seen in a CI run); the watchdog looks
    # again every few minutes anyway
    pid = int(image.presegment_worker.rpartition(":")[2])
    wait_until(lambda: not pid_alive(pid), 30, lambda: f"pool child {pid} still alive")
    # the watchdog sees the dead worker (its process is gone; elsewhere its heartbeat stops)
    assert presegment_reap() == {"requeued": [image_id], "failed": []}
    assert Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.QUEUED
    with celery_worker(log_path=tmp_path / "worker2.log", queues="gpu", purge=False):
        wait_until(
            lambda: Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.DONE,
            180,
            lambda: f"stayed {Image.objects.get(pk=image_id).presegment_status}",
        )
    done = Image.objects.get(pk=image_id)
    assert done.presegment_attempts == 2 and Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).exists()


@pytest.mark.ml
def test_worker_group_killed_during_training_fails_the_job_with_the_reason(tmp_path: Path, settings: Any) -> None:
    from training.services.jobs import training_jobs_reap

    sp = synthetic_project(splits={"train": 2}, size=96, n_cells=8, n_erythrocytes=3)
    client = APIClient()
    client.force_authenticate(sp.admin)
    url = f"/api/v1/projects/{sp.project.pk}/training/jobs"
    settings.TRAINING_DIR = str(tmp_path / "training")
    env = {"TRAINING_DIR": str(tmp_path / "training"), "TRAINING_DEVICE": "cpu", "TRAINING_HEARTBEAT_SECONDS": "1"}
    with celery_worker(log_path=tmp_path / "worker.log", env=env, queues="training") as worker:
        answer = client.post(
            url, {"kind": "nnunet", "config": {"preset": "tiny", "nnunet": {"num_epochs": 200}}}, format="json"
        )
        job_id = answer.json()["id"]
        wait_until(
            lambda: TrainingJob.objects.get(pk=job_id).progress.get("phase") == "train",
            300,
            lambda: f"never trained: {TrainingJob.objects.get(pk=job_id).status}",
        )
        os.killpg(worker.pid, signal.SIGKILL)  # main process and pool child at once
        worker.wait(10)
    stuck = TrainingJob.objects.get(pk=job_id)
    assert stuck.status == JobStatus.RUNNING  # nobody left to say otherwise
    # a big process takes a moment to die; the watchdog looks again every few minutes anyway
    wait_until(lambda: not pid_alive(stuck.worker_pid), 30, lambda: f"pool child {stuck.worker_pid} still alive")
    assert training_jobs_reap() == [job_id]  # the watchdog: the worker's process is gone
    job = TrainingJob.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED and "is gone" in job.error, job.error
    # the project is free for the next job
    assert client.post(url, {"kind": "nnunet", "config": {"preset": "tiny"}}, format="json").status_code == 201


def test_pool_child_killed_during_presegmentation_is_run_again_by_its_worker(tmp_path: Path) -> None:
    """The worker's main process survives and the broker delivers the message again at once
    (reject on worker lost): the new run claims the image from the dead process."""
    client, image_id = _big_image(seed=4)
    with celery_worker(log_path=tmp_path / "worker.log", queues="gpu"):
        assert client.post(f"/api/v1/images/{image_id}/presegment", {}, format="json").status_code == 202
        wait_until(
            lambda: Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.RUNNING,
            60,
            lambda: f"never ran: {Image.objects.get(pk=image_id).presegment_status}",
        )
        child = int(Image.objects.get(pk=image_id).presegment_worker.rpartition(":")[2])
        os.kill(child, signal.SIGKILL)
        wait_until(
            lambda: Image.objects.get(pk=image_id).presegment_status == PresegmentStatus.DONE,
            180,
            lambda: f"stayed {Image.objects.get(pk=image_id).presegment_status}",
        )
    done = Image.objects.get(pk=image_id)
    assert done.presegment_attempts == 2 and Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).exists()
