"""Celery adapters of the annotations app: ids in, one service call, on the ``default`` queue."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from annotations import exports, services


@shared_task(
    name="annotations.export_run",
    queue="default",
    acks_late=True,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 60,
)
def export_run(job_id: int) -> dict[str, Any]:
    """Write a queued export job's file (see exports.export_job_run)."""
    job = exports.export_job_run(job_id=job_id)
    return {"job": job.pk, "status": job.status, "size_bytes": job.size_bytes}


@shared_task(name="annotations.export_jobs_prune", queue="default")
def export_jobs_prune() -> int:
    """Delete the files of expired export jobs (schedule it, e.g. hourly, in Celery beat)."""
    return exports.export_jobs_prune()


@shared_task(name="annotations.idempotency_prune", queue="default")
def idempotency_prune() -> int:
    """Forget Idempotency-Key responses older than IDEMPOTENCY_TTL_HOURS (scheduled daily)."""
    return services.idempotency_prune()
