"""Reads of the core app."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from core.models import WorkerHeartbeat

# A worker unseen for this many heartbeat intervals is taken for gone (killed, host down).
ALIVE_INTERVALS = 3


def worker_state(*, heartbeat: WorkerHeartbeat, now: datetime) -> str:
    """``alive``, ``stale`` (no heartbeat for ``ALIVE_INTERVALS`` intervals: killed, or its host
    or the database unreachable from it) or ``stopped`` (shut down)."""
    if heartbeat.stopped_at is not None:
        return "stopped"
    window = timedelta(seconds=ALIVE_INTERVALS * settings.WORKER_HEARTBEAT_SECONDS)
    return "alive" if heartbeat.last_seen >= now - window else "stale"


def worker_heartbeat_list(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every worker that reported itself (until pruned), by name, with its state; one query."""
    now = now or timezone.now()
    out = []
    for heartbeat in WorkerHeartbeat.objects.order_by("name"):
        state = worker_state(heartbeat=heartbeat, now=now)
        out.append(
            {
                "name": heartbeat.name,
                "host": heartbeat.host,
                "pid": heartbeat.pid,
                "queues": list(heartbeat.queues),
                "device": heartbeat.device,
                "device_name": heartbeat.device_name,
                "concurrency": heartbeat.concurrency,
                "state": state,
                "alive": state == "alive",
                "tasks": list(heartbeat.tasks) if state == "alive" else [],
                "started_at": heartbeat.started_at,
                "last_seen": heartbeat.last_seen,
                "stopped_at": heartbeat.stopped_at,
            }
        )
    return out
