"""Two worker processes consume the `gpu` queue, as two GPU hosts would: every queued image is
pre-segmented exactly once, and when one worker is SIGKILLed halfway (main process and pool
child), its unacknowledged message goes back to the queue after the broker's visibility
timeout and the other worker runs it: nothing is lost, nothing is run twice.

The broker is a redis-server of the test's own (tests/redis_server.py), so that its visibility
timeout can be short; the visibility timeout is what redelivers a killed host's task."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotations.models import Cell, Image, Layer, PresegmentStatus
from core.processes import pid_alive
from tests.factories import ProjectFactory, UserFactory
from tests.integration.support import field_png
from tests.redis_server import RedisServer, app_broker
from tests.worker import celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

IMAGES = 20


def _statuses(ids: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Image.objects.filter(pk__in=ids).values_list("presegment_status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except ProcessLookupError:
        return False


def test_two_gpu_workers_share_the_queue_and_a_killed_one_loses_nothing(
    redis_server: RedisServer, tmp_path: Path, settings: Any
) -> None:
    admin = UserFactory()
    project = ProjectFactory(created_by=admin, auto_presegment=False)
    client = APIClient()
    client.force_authenticate(admin)
    files = [SimpleUploadedFile(f"f{i}.png", field_png(i, 1024), content_type="image/png") for i in range(IMAGES)]
    upload = client.post(f"/api/v1/projects/{project.pk}/images", {"files": files}, format="multipart")
    assert upload.status_code == 201, upload.content
    ids = [int(row["id"]) for row in upload.json()]
    assert len(ids) == IMAGES

    env = {
        "CELERY_BROKER_URL": redis_server.url,
        "BROKER_VISIBILITY_TIMEOUT": "12",
        "BROKER_RESTORE_INTERVAL": "2",
        "INFERENCE_DEVICE": "cpu",
    }
    with (
        app_broker(redis_server.url),
        celery_worker(log_path=tmp_path / "a.log", queues="gpu", env=env, name="gpu-a", purge=False) as a,
        celery_worker(log_path=tmp_path / "b.log", queues="gpu", env=env, name="gpu-b", purge=False),
    ):
        assert client.post(f"/api/v1/projects/{project.pk}/presegment", {}, format="json").status_code == 202
        # halfway: a few done, and worker A in the middle of one
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = _statuses(ids).get(PresegmentStatus.DONE, 0)
            running = Image.objects.filter(pk__in=ids, presegment_status=PresegmentStatus.RUNNING)
            if done >= 4 and any(
                _in_group(int(w.rpartition(":")[2]), a.pid) for w in running.values_list("presegment_worker", flat=True)
            ):
                break
            time.sleep(0.02)
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(10)
        # what it was in the middle of when it died (read after the kill: it moves on quickly;
        # its pool child, killed too, may take a moment to be gone)
        victims: dict[int, str] = {}
        until = time.monotonic() + 15
        while not victims and time.monotonic() < until:
            running = Image.objects.filter(pk__in=ids, presegment_status=PresegmentStatus.RUNNING)
            victims = {
                image_id: worker
                for image_id, worker in running.values_list("pk", "presegment_worker")
                if not pid_alive(int(worker.rpartition(":")[2]))
            }
            time.sleep(0.1)
        assert len(victims) == 1, f"worker A was not caught mid-image: {_statuses(ids)}"
        killed_at = time.monotonic()
        deadline = time.monotonic() + 240
        while _statuses(ids).get(PresegmentStatus.DONE, 0) < IMAGES and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _statuses(ids) == {PresegmentStatus.DONE: IMAGES}
        redelivered_after = time.monotonic() - killed_at
    attempts = dict(Image.objects.filter(pk__in=ids).values_list("pk", "presegment_attempts"))
    # run once each; the one the killed worker was in the middle of twice (killed, then finished)
    assert attempts == {i: (2 if i in victims else 1) for i in ids}
    ((victim, dead),) = victims.items()
    finished_by = Image.objects.get(pk=victim).presegment_worker
    assert finished_by not in ("", dead)  # finished by B
    # redelivered by the broker's visibility timeout (12 s) to B, not by the watchdog
    assert redelivered_after < 60, redelivered_after
    log_b = (tmp_path / "b.log").read_text()
    assert log_b.count("inference.presegment_image") > 0
    for image_id in ids:
        assert Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).exists()
