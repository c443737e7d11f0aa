"""The workers & queue tab in a real browser: a staff admin sees the pre-segmentation and training
counts, a real Celery worker (its heartbeat, its device) beside two reported by other hosts (one
on a GPU running an image, one that stopped reporting), and the tab refreshing on its own; a
project admin who is not staff does not get the tab."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from annotations.models import Image, PresegmentStatus
from core.models import WorkerHeartbeat
from core.tests.factories import WorkerHeartbeatFactory
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, synthetic_image
from tests.worker import celery_worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_sees_the_workers_and_the_queue(live_server: Any, page: Any, settings: Any, tmp_path: Path) -> None:
    settings.WORKER_HEARTBEAT_SECONDS = 2
    head = UserFactory(username="dr.head", is_staff=True)
    project = ProjectFactory(name="Thyroid FNA — ward 3", created_by=head)
    other = ProjectFactory(name="Thyroid FNA — teaching set")
    now = timezone.now()
    for seed, status in enumerate([PresegmentStatus.QUEUED] * 3 + [PresegmentStatus.RUNNING, PresegmentStatus.FAILED]):
        image, _ = synthetic_image(project if seed != 4 else other, seed=seed + 1, width=96, height=64, n_cells=2)
        Image.objects.filter(pk=image.pk).update(presegment_status=status, presegment_queued_at=now)
    # the running one runs in a live process (this one), so the worker's start-up check leaves it be
    Image.objects.filter(presegment_status=PresegmentStatus.RUNNING).update(
        presegment_worker=f"{socket.gethostname()}:{os.getpid()}", presegment_heartbeat_at=now
    )
    WorkerHeartbeatFactory(
        name="gpu@gpu-node-1", host="gpu-node-1", pid=2817, queues=["default", "gpu"], device="cuda:0",
        device_name="NVIDIA H100 80GB HBM3", concurrency=1, started_at=now - timedelta(hours=5, minutes=12),
        tasks=[{"id": "3f1c", "name": "inference.presegment_image", "args": "[4, 1]",
                "started_at": (now - timedelta(seconds=7)).isoformat()}],
    )  # fmt: skip
    WorkerHeartbeatFactory(
        name="training@gpu-node-2", host="gpu-node-2", pid=911, queues=["training"], device="cuda:1",
        device_name="NVIDIA A100-SXM4-40GB", started_at=now - timedelta(days=2), last_seen=now - timedelta(minutes=4),
    )  # fmt: skip

    env = {"WORKER_HEARTBEAT_SECONDS": "2", "INFERENCE_DEVICE": "cpu", "TRAINING_DIR": str(tmp_path / "training")}
    with celery_worker(log_path=tmp_path / "worker.log", env=env, name="browser", queues="default,gpu") as process:
        deadline = time.monotonic() + 90
        while not WorkerHeartbeat.objects.filter(pid=process.pid).exclude(device="").exists():
            assert time.monotonic() < deadline, "the worker never reported itself"
            time.sleep(0.25)
        real = WorkerHeartbeat.objects.get(pid=process.pid)

        login(page, live_server.url, "dr.head")
        page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/training")
        page.click("a.tab:has-text('Workers & queue')")
        page.wait_for_selector(".workers-table")
        assert page.locator("[data-stat=presegment-queued] .stat-value").inner_text() == "3"
        assert page.locator("[data-stat=presegment-failed] .stat-value").inner_text() == "1"
        assert page.locator("[data-stat=workers] .stat-value").inner_text() == "2 / 3"

        rows = page.locator(".workers-table tbody tr")
        assert rows.count() == 3
        names = [rows.nth(i).get_attribute("data-worker") for i in range(3)]
        assert names == [*sorted([real.name, "gpu@gpu-node-1"]), "training@gpu-node-2"]  # alive first
        gpu = page.locator("tr[data-worker='gpu@gpu-node-1']")
        assert gpu.get_attribute("data-state") == "alive"
        assert gpu.locator("[data-testid=device]").inner_text() == "cuda:0 · NVIDIA H100 80GB HBM3"
        assert "Pre-segmenting image 4" in gpu.inner_text()
        mine = page.locator(f"tr[data-worker='{real.name}']")
        assert mine.locator("[data-testid=device]").inner_text() == "CPU"
        assert f"pid {process.pid}" in mine.inner_text() and "idle" in mine.inner_text()
        stale = page.locator("tr[data-worker='training@gpu-node-2']")
        assert stale.get_attribute("data-state") == "stale" and "Not responding" in stale.inner_text()
        assert "1 worker has stopped reporting." in page.locator(".queue-warnings").inner_text()
        # the per-project table: this project first
        assert page.locator(".table.mini tbody tr").first.get_attribute("data-project") == str(project.pk)
        shot(page, "30-workers-and-queue", full=True)

        # it refreshes on its own: the worker's last-seen time keeps moving
        first = page.locator("[data-testid=queue-updated]").inner_text()
        page.wait_for_function(
            "(before) => document.querySelector('[data-testid=queue-updated]').textContent !== before",
            first,
            timeout=15_000,
        )
    # the warm shutdown shows once the tab refreshes
    page.wait_for_function(
        f"document.querySelector(\"tr[data-worker='{real.name}']\").dataset.state === 'stopped'", timeout=15_000
    )


def test_a_project_admin_who_is_not_staff_has_no_workers_tab(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.ward")
    project = ProjectFactory(name="Ward", created_by=admin)
    login(page, live_server.url, "dr.ward")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/training")
    page.wait_for_selector(".job-form")
    assert page.locator("a.tab:has-text('Workers & queue')").count() == 0
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/workers")
    page.wait_for_selector(".empty.error")
    assert "Administrators only" in page.locator(".empty.error").inner_text()
