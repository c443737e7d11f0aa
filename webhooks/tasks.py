"""Celery adapters of the webhooks app: ids in, one service call, on the ``default`` queue."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from webhooks import services


@shared_task(name="webhooks.deliver", queue="default", acks_late=True, soft_time_limit=60, time_limit=90)
def deliver(delivery_id: str, attempt: int) -> dict[str, Any]:
    """Make one attempt of a delivery (see services.webhook_delivery_attempt)."""
    delivery = services.webhook_delivery_attempt(delivery_id=delivery_id, attempt=attempt)
    if delivery is None:
        return {"delivery": delivery_id, "skipped": f"attempt {attempt} is not the one it waits for"}
    return {"delivery": delivery_id, "attempt": attempt, "status": delivery.status}


@shared_task(name="webhooks.deliveries_due", queue="default")
def deliveries_due() -> int:
    """Hand due retries to the workers (scheduled every WEBHOOK_RETRY_POLL_SECONDS)."""
    return services.webhook_deliveries_due()


@shared_task(name="webhooks.deliveries_prune", queue="default")
def deliveries_prune() -> int:
    """Delete finished deliveries older than WEBHOOK_DELIVERY_KEEP_DAYS (scheduled daily)."""
    return services.webhook_deliveries_prune()
