"""Celery adapters of the core app: one service call each, explicit names, the ``default`` queue."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.db import close_old_connections

from core import idempotency, queue

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
