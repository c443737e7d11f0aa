"""Worker heartbeats (core.workers, core.selectors): the row a worker writes, alive / stale /
stopped, pruning, the heartbeat thread, what a worker runs now, and the device it reports."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from core import tasks as core_tasks
from core import workers
from core.models import WorkerHeartbeat
from core.selectors import worker_heartbeat_list, worker_state
from core.tests.factories import WorkerHeartbeatFactory

pytestmark = pytest.mark.django_db


def test_alive_stale_and_stopped(settings: Any) -> None:
    settings.WORKER_HEARTBEAT_SECONDS = 10
    now = timezone.now()
    alive = WorkerHeartbeatFactory(last_seen=now - timedelta(seconds=29), tasks=[{"id": "t", "name": "x"}])
    stale = WorkerHeartbeatFactory(last_seen=now - timedelta(seconds=31), tasks=[{"id": "t", "name": "x"}])
    stopped = WorkerHeartbeatFactory(last_seen=now, stopped_at=now)
    assert worker_state(heartbeat=alive, now=now) == "alive"
    assert worker_state(heartbeat=stale, now=now) == "stale"
    assert worker_state(heartbeat=stopped, now=now) == "stopped"
    listed = {w["name"]: w for w in worker_heartbeat_list(now=now)}
    assert [listed[w.name]["alive"] for w in (alive, stale, stopped)] == [True, False, False]
    # what a worker runs is shown only while it is alive (a stale row's list is out of date)
    assert listed[alive.name]["tasks"] == [{"id": "t", "name": "x"}]
    assert listed[stale.name]["tasks"] == []


def test_write_then_stop_and_a_restart_under_the_same_name() -> None:
    identity = workers.WorkerIdentity(name="gpu@h", queues=["gpu", "default"], concurrency=2, pid=11)
    workers.worker_heartbeat_write(identity=identity, tasks=[])
    row = WorkerHeartbeat.objects.get(name="gpu@h")
    assert row.queues == ["default", "gpu"] and row.concurrency == 2 and row.pid == 11
    workers.worker_heartbeat_stop(name="gpu@h", pid=11)
    assert WorkerHeartbeat.objects.get(name="gpu@h").stopped_at is not None

    # the same name started again: one row, running again; the old process's late stop is ignored
    again = workers.WorkerIdentity(name="gpu@h", queues=["gpu"], concurrency=1, pid=12)
    workers.worker_heartbeat_write(identity=again, tasks=[])
    workers.worker_heartbeat_stop(name="gpu@h", pid=11)
    row = WorkerHeartbeat.objects.get(name="gpu@h")
    assert row.pid == 12 and row.stopped_at is None


def test_prune_deletes_rows_unseen_for_long(settings: Any) -> None:
    settings.WORKER_HEARTBEAT_KEEP_HOURS = 24
    old = WorkerHeartbeatFactory(last_seen=timezone.now() - timedelta(hours=25))
    recent = WorkerHeartbeatFactory(last_seen=timezone.now() - timedelta(hours=23))
    assert workers.worker_heartbeats_prune() == 1
    assert list(WorkerHeartbeat.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not WorkerHeartbeat.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_the_thread_beats_reports_its_device_then_stops_for_good() -> None:
    identity = workers.WorkerIdentity(name="t@h", queues=["gpu"], concurrency=1)
    running = [{"id": "abc", "name": "inference.presegment_image", "args": "[1, 2]", "started_at": None}]
    thread = workers.WorkerHeartbeatThread(
        identity=identity, interval=0.1, tasks=lambda: running, device=lambda: ("cuda:0", "Test GPU")
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = WorkerHeartbeat.objects.filter(name="t@h").first()
            if row is not None and row.device:
                break
            time.sleep(0.05)
        assert row is not None and (row.device, row.device_name) == ("cuda:0", "Test GPU")
        assert row.tasks == running
        seen = row.last_seen
        time.sleep(0.3)
        assert WorkerHeartbeat.objects.get(name="t@h").last_seen > seen
    finally:
        thread.stop()
    assert not thread.is_alive()
    workers.worker_heartbeat_stop(name="t@h", pid=identity.pid)
    stopped_at = WorkerHeartbeat.objects.get(name="t@h").stopped_at
    time.sleep(0.3)  # no beat after the stop brings it back
    assert WorkerHeartbeat.objects.get(name="t@h").stopped_at == stopped_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_does_not_end_the_thread() -> None:
    identity = workers.WorkerIdentity(name="db@h", queues=["default"], concurrency=1)
    failures = {"left": 2}
    real = workers.worker_heartbeat_write

    def flaky(**kwargs: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("database unreachable")
        real(**kwargs)

    with mock.patch.object(workers, "worker_heartbeat_write", flaky):
        thread = workers.WorkerHeartbeatThread(
            identity=identity, interval=0.05, tasks=lambda: [], device=lambda: ("cpu", "")
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not WorkerHeartbeat.objects.filter(name="db@h").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        thread.stop()
    assert WorkerHeartbeat.objects.filter(name="db@h").exists()


def test_what_a_worker_runs_now_comes_from_its_own_bookkeeping() -> None:
    # celery.worker.request.Request as the main process keeps it (not yet started: no time)
    starting = SimpleNamespace(id="a1", name="inference.presegment_image", argsrepr="[7, 3]", time_start=None)
    running = SimpleNamespace(id="b2", name="training.run_job", argsrepr="(5,)", time_start=1_700_000_000.0)
    with mock.patch.object(core_tasks.worker_state, "active_requests", [starting, running]):
        tasks = sorted(core_tasks._active_tasks(), key=lambda t: t["id"])
    assert tasks == [
        {"id": "a1", "name": "inference.presegment_image", "args": "[7, 3]", "started_at": None},
        {"id": "b2", "name": "training.run_job", "args": "(5,)", "started_at": "2023-11-14T22:13:20+00:00"},
    ]


def test_device_of_a_worker_without_a_model_queue_or_set_to_cpu() -> None:
    with mock.patch.object(subprocess, "run") as run:
        assert workers.worker_device_resolve(configured="auto", queues=["default"]) == ("cpu", "")
        assert workers.worker_device_resolve(configured="cpu", queues=["gpu"]) == ("cpu", "")
    run.assert_not_called()  # nothing to ask torch


def test_device_is_asked_of_torch_in_a_child_process() -> None:
    """The real probe: on this machine torch sees no GPU unless it has one."""
    from cytoseg.device import device_default

    device, name = workers.worker_device_resolve(configured="auto", queues=["gpu"])
    if device_default() == "cpu":
        assert (device, name) == ("cpu", "")
    else:
        assert device == "cuda:0" and name


def test_device_probe_that_fails_says_so() -> None:
    with mock.patch.object(subprocess, "run", side_effect=subprocess.TimeoutExpired("python", 120)):
        assert workers.worker_device_resolve(configured="auto", queues=["gpu"]) == (
            "unknown",
            "could not be determined",
        )
        assert workers.worker_device_resolve(configured="cuda:1", queues=["training"]) == (
            "cuda:1",
            "could not be determined",
        )


FAKE_TORCH = """
import os


class cuda:
    @staticmethod
    def is_available():
        return os.environ.get("FAKE_CUDA") == "1"

    @staticmethod
    def current_device():
        return 0

    @staticmethod
    def device_count():
        return 2

    @staticmethod
    def get_device_name(index):
        return ["NVIDIA H100 80GB HBM3", "NVIDIA H200"][index]
"""


@pytest.mark.parametrize(
    ("cuda", "configured", "expected"),
    [
        ("1", "auto", ("cuda:0", "NVIDIA H100 80GB HBM3")),
        ("1", "cuda", ("cuda:0", "NVIDIA H100 80GB HBM3")),
        ("1", "cuda:1", ("cuda:1", "NVIDIA H200")),
        ("1", "cuda:5", ("cuda:5", "no such GPU")),
        ("0", "auto", ("cpu", "")),
        ("0", "cuda", ("cuda:0", "CUDA not available")),
    ],
)
def test_device_on_a_gpu_machine(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, cuda: str, configured: str, expected: tuple[str, str]
) -> None:
    """The probe's answers where torch sees GPUs (a stand-in torch, first on the child's path)."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_TORCH)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("FAKE_CUDA", cuda)
    assert workers.worker_device_resolve(configured=configured, queues=["gpu"]) == expected
