"""GET /api/v1/admin/queue: pre-segmentations and training jobs waiting and running, the outbox,
and every worker's heartbeat; for staff only; a fixed number of queries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from annotations.models import Image, PresegmentStatus
from annotations.services.tokens import api_token_create
from core.models import OutboxMessage
from core.tests.factories import WorkerHeartbeatFactory
from tests.api.conftest import client_for
from tests.factories import ProjectFactory, UserFactory, image_create
from training.models import DatasetSnapshot, JobStatus, TrainingJob

pytestmark = pytest.mark.django_db

URL = "/api/v1/admin/queue"


def _images(project: Any, statuses: list[str]) -> None:
    for seed, status in enumerate(statuses):
        image = image_create(project, seed=seed + 100 * project.pk)
        Image.objects.filter(pk=image.pk).update(presegment_status=status)


def _job(project: Any, status: str) -> None:
    admin = project.memberships.first().user
    # an empty snapshot will do: the job is only counted
    snapshot = DatasetSnapshot.objects.create(project=project, number=1, created_by=admin)
    TrainingJob.objects.create(project=project, kind="cellpose", snapshot=snapshot, created_by=admin, status=status)


@pytest.fixture
def staff() -> Any:
    return UserFactory(is_staff=True)


def test_counts_per_status_and_project(staff: Any) -> None:
    busy, other, idle = ProjectFactory(name="Busy"), ProjectFactory(name="Other"), ProjectFactory(name="Idle")
    Q, R, F, D, N = (PresegmentStatus.QUEUED, PresegmentStatus.RUNNING, PresegmentStatus.FAILED,
                     PresegmentStatus.DONE, PresegmentStatus.NONE)  # fmt: skip
    _images(busy, [Q, Q, Q, R, D])
    _images(other, [Q, F, F, N])
    _images(idle, [D, N])
    _job(busy, JobStatus.QUEUED)
    _job(other, JobStatus.RUNNING)
    _job(idle, JobStatus.SUCCEEDED)
    OutboxMessage.objects.create(name="inference.presegment_image", args=[1, 1], queue="gpu")

    body = client_for(staff).get(URL).json()
    assert {k: v for k, v in body["presegment"].items() if k != "by_project"} == {
        "queued": 4,
        "running": 1,
        "failed": 2,
    }
    assert body["presegment"]["by_project"] == [
        {"project": busy.pk, "name": "Busy", "queued": 3, "running": 1, "failed": 0},
        {"project": other.pk, "name": "Other", "queued": 1, "running": 0, "failed": 2},
    ]
    assert body["training"] == {"queued": 1, "running": 1}
    assert body["outbox"]["waiting"] == 1 and body["outbox"]["oldest"]


def test_workers_with_their_state_and_device(settings: Any, staff: Any) -> None:
    settings.WORKER_HEARTBEAT_SECONDS = 10
    now = timezone.now()
    WorkerHeartbeatFactory(
        name="gpu@node1", host="node1", pid=41, queues=["default", "gpu"], device="cuda:0",
        device_name="NVIDIA H100 80GB HBM3", concurrency=1, started_at=now - timedelta(hours=2), last_seen=now,
        tasks=[{"id": "t1", "name": "inference.presegment_image", "args": "[5, 2]", "started_at": now.isoformat()}],
    )  # fmt: skip
    WorkerHeartbeatFactory(
        name="training@node2", host="node2", queues=["training"], last_seen=now - timedelta(minutes=5)
    )
    WorkerHeartbeatFactory(name="old@node3", last_seen=now, stopped_at=now)

    workers = {w["name"]: w for w in client_for(staff).get(URL).json()["workers"]}
    gpu = workers["gpu@node1"]
    assert gpu == {
        "name": "gpu@node1",
        "host": "node1",
        "pid": 41,
        "queues": ["default", "gpu"],
        "device": "cuda:0",
        "device_name": "NVIDIA H100 80GB HBM3",
        "concurrency": 1,
        "state": "alive",
        "alive": True,
        "tasks": [
            {
                "id": "t1",
                "name": "inference.presegment_image",
                "args": "[5, 2]",
                "started_at": gpu["tasks"][0]["started_at"],
            }
        ],
        "started_at": gpu["started_at"],
        "last_seen": gpu["last_seen"],
        "stopped_at": None,
    }
    assert (workers["training@node2"]["state"], workers["training@node2"]["alive"]) == ("stale", False)
    assert (workers["old@node3"]["state"], workers["old@node3"]["alive"]) == ("stopped", False)


def test_empty_platform(staff: Any) -> None:
    assert client_for(staff).get(URL).json() == {
        "presegment": {"queued": 0, "running": 0, "failed": 0, "by_project": []},
        "training": {"queued": 0, "running": 0},
        "outbox": {"waiting": 0, "oldest": None},
        "workers": [],
    }


def test_staff_and_superusers_only(project: Any, admin_user: Any) -> None:
    assert APIClient().get(URL).status_code in (401, 403)
    assert client_for(UserFactory()).get(URL).status_code == 403
    assert client_for(admin_user).get(URL).status_code == 403  # a project's admin is not staff
    assert client_for(UserFactory(is_staff=True)).get(URL).status_code == 200
    assert client_for(UserFactory(is_superuser=True)).get(URL).status_code == 200


def test_a_project_scoped_token_of_staff_is_refused(project: Any) -> None:
    staff = UserFactory(is_staff=True, is_superuser=True)
    _, scoped = api_token_create(user=staff, name="scoped", project=project)
    _, unscoped = api_token_create(user=staff, name="all")
    for raw, expected in ((scoped, 403), (unscoped, 200)):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert client.get(URL).status_code == expected


def test_queries_do_not_grow_with_projects_and_workers(staff: Any, django_assert_max_num_queries: Any) -> None:
    def load() -> Any:
        return client_for(staff).get(URL)

    for _ in range(2):
        project = ProjectFactory()
        _images(project, [PresegmentStatus.QUEUED, PresegmentStatus.FAILED])
        WorkerHeartbeatFactory()
    with django_assert_max_num_queries(4) as few:
        assert load().status_code == 200
    for _ in range(6):
        project = ProjectFactory()
        _images(project, [PresegmentStatus.QUEUED, PresegmentStatus.RUNNING])
        WorkerHeartbeatFactory()
    with django_assert_max_num_queries(len(few.captured_queries)):
        body = load().json()
    assert len(body["presegment"]["by_project"]) == 8 and len(body["workers"]) == 8


def test_me_says_who_is_staff(annotator: Any) -> None:
    """The browser shows the workers tab to those the endpoint answers."""
    assert client_for(UserFactory(is_staff=True)).get("/api/v1/auth/me").json()["is_staff"] is True
    assert client_for(UserFactory(is_superuser=True)).get("/api/v1/auth/me").json()["is_staff"] is True
    assert client_for(annotator).get("/api/v1/auth/me").json()["is_staff"] is False
