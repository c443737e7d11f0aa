"""Celery adapters of the training app: ids in, one service call.

``training.run_job`` and ``training.evaluate_version`` run models and go to the ``gpu`` queue;
``training.schedule_check`` (django-celery-beat, per project) and ``training.watchdog`` (every
few minutes, ``CELERY_BEAT_SCHEDULE``) only touch the database and go to ``default``.
``run_job`` is ``acks_late`` with ``reject_on_worker_lost``: a job whose worker was killed is
redelivered, and the service then refuses to rerun it and marks it failed with the reason.
At worker start, jobs left "running" by a dead worker are failed the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import task_failure, worker_ready
from django.conf import settings
from django.db import close_old_connections

from training.models import DatasetSnapshot, ModelVersion
from training.services import jobs, registry, runner, schedule

logger = logging.getLogger(__name__)


@shared_task(
    name="training.run_job",
    queue="training",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.TRAINING_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.TRAINING_TASK_TIME_LIMIT,
)
def run_training_job(self: Any, job_id: int) -> dict[str, Any]:
    return runner.training_job_run(job_id=job_id, task_id=self.request.id or "")


@shared_task(
    name="training.evaluate_version",
    queue="training",
    acks_late=True,
    soft_time_limit=settings.TRAINING_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.TRAINING_TASK_TIME_LIMIT,
)
def evaluate_version(model_version_id: int, snapshot_id: int) -> dict[str, Any]:
    version = ModelVersion.objects.select_related("project").get(pk=model_version_id)
    snapshot = DatasetSnapshot.objects.get(pk=snapshot_id)
    evaluation = registry.model_version_evaluate(version=version, snapshot=snapshot)
    return {"evaluation": evaluation.pk}


@shared_task(name="training.schedule_check", queue="default", acks_late=True)
def schedule_check(project_id: int) -> dict[str, Any]:
    return schedule.training_schedule_check(project_id=project_id)


@shared_task(name="training.watchdog", queue="default", acks_late=True)
def watchdog() -> dict[str, Any]:
    return {"failed": jobs.training_jobs_reap()}


@worker_ready.connect
def _reap_at_worker_start(sender: Any = None, **kwargs: Any) -> None:
    """A worker that starts may be the restart of one that died mid-job: fail its orphans."""
    try:
        failed = jobs.training_jobs_reap()
        if failed:
            logger.warning("Training jobs left running by a dead worker were marked failed: %s", failed)
    except Exception:  # a database hiccup must not stop the worker from starting
        logger.exception("Could not check for orphaned training jobs")
    finally:
        close_old_connections()


@task_failure.connect(sender=run_training_job)
def _job_task_failed(
    sender: Any = None, task_id: str | None = None, exception: Any = None, args: Any = None, **kwargs: Any
) -> None:
    """The task failed outside the job body (hard time limit, lost worker that is not requeued)."""
    try:
        job_id = int(args[0]) if args else None
    except (TypeError, ValueError):
        job_id = None
    if job_id is not None:
        jobs.job_fail(job_id, f"the Celery task failed: {type(exception).__name__}: {exception}")
