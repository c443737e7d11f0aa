"""Reads of the inference app: what waits and runs on the workers (the admins' queue view)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Min

from annotations.models import Image, PresegmentStatus
from core.models import OutboxMessage
from core.selectors import worker_heartbeat_list
from training.models import LIVE_JOB_STATUSES, JobStatus, TrainingJob

_PRESEGMENT_SHOWN = (PresegmentStatus.QUEUED, PresegmentStatus.RUNNING, PresegmentStatus.FAILED)


def queue_overview() -> dict[str, Any]:
    """Pre-segmentations queued, running and failed (in all and per project), training jobs
    queued and running, tasks waiting in the outbox for the broker, and every worker's
    heartbeat. A fixed number of queries, whatever the number of projects and workers."""
    presegment: dict[str, Any] = {status.value: 0 for status in _PRESEGMENT_SHOWN}
    projects: dict[int, dict[str, Any]] = {}
    rows = (
        Image.objects.filter(presegment_status__in=_PRESEGMENT_SHOWN)
        .values("project_id", "project__name", "presegment_status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        presegment[row["presegment_status"]] += row["n"]
        project = projects.setdefault(
            row["project_id"],
            {"project": row["project_id"], "name": row["project__name"]} | {s.value: 0 for s in _PRESEGMENT_SHOWN},
        )
        project[row["presegment_status"]] += row["n"]
    presegment["by_project"] = sorted(projects.values(), key=lambda p: (-p["queued"] - p["running"], p["project"]))

    jobs = dict(
        TrainingJob.objects.filter(status__in=LIVE_JOB_STATUSES)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    outbox = OutboxMessage.objects.aggregate(waiting=Count("id"), oldest=Min("created_at"))
    return {
        "presegment": presegment,
        "training": {"queued": jobs.get(JobStatus.QUEUED, 0), "running": jobs.get(JobStatus.RUNNING, 0)},
        "outbox": {"waiting": outbox["waiting"], "oldest": outbox["oldest"]},
        "workers": worker_heartbeat_list(),
    }
