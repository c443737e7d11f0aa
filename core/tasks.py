"""Celery adapters of the core app: one service call each, explicit names, the ``default`` queue."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from celery.worker import state as worker_state
from django.db import close_old_connections

from core import idempotency, queue, workers

logger = logging.getLogger(__name__)


@shared_task(name="core.idempotency_prune", queue="default")
def idempotency_prune() -> int:
    """Forget Idempotency-Key responses older than IDEMPOTENCY_TTL_HOURS (scheduled daily)."""
    return idempotency.idempotency_prune()


@shared_task(name="core.outbox_dispatch", queue="default")
def outbox_dispatch() -> dict[str, int]:
    """Send what waits in the outbox (scheduled every ``OUTBOX_DISPATCH_SECONDS``)."""
    return queue.outbox_dispatch()


@worker_ready.connect
def _dispatch_at_worker_start(sender: Any = None, **kwargs: Any) -> None:
    """A worker that starts often means the broker is reachable again: send what waited."""
    try:
        result = queue.outbox_dispatch()
        if result["sent"]:
            logger.warning("Sent %s task(s) that waited in the outbox", result["sent"])
    except Exception:  # a database hiccup must not stop the worker from starting
        logger.exception("Could not dispatch the outbox")
    finally:
        close_old_connections()


def _active_tasks() -> list[dict[str, Any]]:
    """What this worker runs now, from the main process's own bookkeeping (no broker call)."""
    try:
        requests = list(worker_state.active_requests)
    except RuntimeError:  # changed size while copied (another thread): next beat
        return []
    return [
        {
            "id": request.id,
            "name": request.name,
            "args": str(request.argsrepr)[:200],
            "started_at": (
                datetime.fromtimestamp(request.time_start, tz=UTC).isoformat() if request.time_start else None
            ),
        }
        for request in requests
    ]


@worker_ready.connect
def _heartbeat_at_worker_start(sender: Any = None, **kwargs: Any) -> None:
    """Start the worker's heartbeat (core.workers): its name, queues and concurrency."""
    try:
        queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
        workers.worker_heartbeat_start(
            name=sender.hostname,
            queues=queues,
            concurrency=int(getattr(sender.controller, "concurrency", 0) or 0),
            tasks=_active_tasks,
        )
    except Exception:  # visibility must never stop the worker from starting
        logger.exception("Could not start the worker heartbeat")


@worker_shutdown.connect
def _heartbeat_at_worker_stop(sender: Any = None, **kwargs: Any) -> None:
    try:
        workers.worker_heartbeat_finish()
    except Exception:
        logger.exception("Could not mark the worker stopped")
