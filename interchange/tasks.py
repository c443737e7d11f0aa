"""Celery adapters of the interchange app: ids in, one service call, on the ``default`` queue."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from interchange.services import jobs


@shared_task(
    name="interchange.export_run",
    queue="default",
    acks_late=True,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 60,
)
def export_run(job_id: int) -> dict[str, Any]:
    """Write a queued export job's file (see jobs.export_job_run)."""
    job = jobs.export_job_run(job_id=job_id)
    return {"job": job.pk, "status": job.status, "size_bytes": job.size_bytes}


@shared_task(name="interchange.export_jobs_prune", queue="default")
def export_jobs_prune() -> int:
    """Delete the files of expired export jobs (schedule it, e.g. hourly, in Celery beat)."""
    return jobs.export_jobs_prune()
