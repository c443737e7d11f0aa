"""Worker heartbeats from real worker processes (core.workers): a worker reports its name, host,
main process, queues, concurrency and device as soon as it is ready and keeps reporting; a warm
shutdown marks it stopped, a SIGKILLed worker goes stale after three intervals; and the admins'
queue endpoint lists it."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from core.models import WorkerHeartbeat
from core.selectors import worker_heartbeat_list
from cytoseg.device import device_default
from tests.factories import UserFactory
from tests.worker import celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _wait(read: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = read()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _row(pid: int) -> WorkerHeartbeat | None:
    return WorkerHeartbeat.objects.filter(pid=pid).first()


def test_a_worker_reports_itself_until_its_warm_shutdown(settings: Any, tmp_path: Path) -> None:
    settings.WORKER_HEARTBEAT_SECONDS = 1
    env = {"WORKER_HEARTBEAT_SECONDS": "1", "INFERENCE_DEVICE": "cpu"}
    with celery_worker(log_path=tmp_path / "worker.log", env=env, name="hb", queues="default,gpu") as process:
        row = _wait(lambda: _row(process.pid), 90, "the worker's first heartbeat")
        assert row.name.startswith("hb-") and row.name.endswith(f"@{socket.gethostname()}")
        assert row.host == socket.gethostname()
        assert row.queues == ["default", "gpu"]
        assert row.concurrency == 1
        assert row.stopped_at is None and row.tasks == []
        row = _wait(lambda: (r := _row(process.pid)) and r.device and r, 30, "the worker's device")
        assert (row.device, row.device_name) == ("cpu", "")
        seen = row.last_seen
        _wait(lambda: _row(process.pid).last_seen > seen, 10, "a later heartbeat")  # type: ignore[union-attr]
        [listed] = worker_heartbeat_list()
        assert listed["state"] == "alive" and listed["alive"] is True

        staff = APIClient()
        staff.force_authenticate(UserFactory(is_staff=True))
        [worker] = staff.get("/api/v1/admin/queue").json()["workers"]
        assert worker["name"] == row.name and worker["pid"] == process.pid and worker["alive"] is True
        assert worker["device"] == "cpu" and worker["queues"] == ["default", "gpu"]
    # leaving the block sent SIGTERM: a warm shutdown
    row = _row(process.pid)
    assert row is not None and row.stopped_at is not None
    [listed] = worker_heartbeat_list()
    assert listed["state"] == "stopped" and listed["alive"] is False


def test_a_killed_worker_goes_stale_and_auto_resolves_its_device(settings: Any, tmp_path: Path) -> None:
    settings.WORKER_HEARTBEAT_SECONDS = 1
    # "auto" asks torch, in a child process, which device pre-segmentation would use here
    env = {"WORKER_HEARTBEAT_SECONDS": "1", "INFERENCE_DEVICE": "auto"}
    with celery_worker(log_path=tmp_path / "worker.log", env=env, name="killed", queues="training") as process:
        row = _wait(lambda: (r := _row(process.pid)) and r.device and r, 150, "the worker's device")
        assert row.queues == ["training"]
        assert row.device == ("cpu" if device_default() == "cpu" else "cuda:0")
        assert [w["state"] for w in worker_heartbeat_list()] == ["alive"]
        os.killpg(process.pid, signal.SIGKILL)  # main process and pool child: no shutdown at all
        process.wait(10)
        killed_at = time.monotonic()
        _wait(lambda: worker_heartbeat_list()[0]["state"] == "stale", 10, "the killed worker to go stale")
        assert time.monotonic() - killed_at >= 2  # not before three intervals (with slack for the last beat)
    assert _row(process.pid).stopped_at is None  # type: ignore[union-attr]
