"""Celery adapters of the core app: one service call each, explicit names, the ``default`` queue."""

from __future__ import annotations

from celery import shared_task

from core import idempotency


@shared_task(name="core.idempotency_prune", queue="default")
def idempotency_prune() -> int:
    """Forget Idempotency-Key responses older than IDEMPOTENCY_TTL_HOURS (scheduled daily)."""
    return idempotency.idempotency_prune()
