"""Training jobs on the web and beat side: start (validated, snapshotted, enqueued on commit),
cancel, and the reaper that fails jobs whose worker died."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotations.models import Project, Split
from annotations.services.audit import audit_record
from core.errors import ConflictError, ServiceValidationError
from core.events import event_emit
from core.processes import pid_alive
from core.queue import task_enqueue
from training.models import (
    LIVE_JOB_STATUSES,
    DatasetSnapshot,
    DatasetSource,
    JobKind,
    JobStatus,
    JobTrigger,
    ModelStatus,
    ModelVersion,
    TrainingJob,
)
from training.services.config import training_config_validate
from training.services.registry import refinement_base
from training.snapshots import (
    dataset_snapshot_create,
)

logger = logging.getLogger(__name__)


def live_job(project: Project) -> TrainingJob | None:
    return TrainingJob.objects.filter(project=project, status__in=LIVE_JOB_STATUSES).first()


def training_job_start(
    *,
    project: Project,
    user: User | None,
    kind: str,
    config: dict[str, Any] | None = None,
    snapshot: DatasetSnapshot | None = None,
    trigger: str = JobTrigger.MANUAL,
) -> TrainingJob:
    """Validate, snapshot the data unless ``snapshot`` is given, create the job and enqueue it.

    409 when the project already has a queued or running job.
    """
    config = training_config_validate(kind=kind, config=config or {}, with_snapshot=snapshot is not None)
    if snapshot is not None and snapshot.project_id != project.pk:
        raise ServiceValidationError("Invalid training job.", {"snapshot": "not a snapshot of this project"})
    live = live_job(project)
    if live is not None:
        raise ConflictError(
            f"Training job {live.pk} of this project is {live.status}; one job at a time.", {"job": live.pk}
        )
    if kind == JobKind.REFINEMENT:
        refinement_base(project=project, version_id=config.get("base_model_version"))

    task_id = str(uuid.uuid4())
    try:
        with transaction.atomic():
            if snapshot is None:
                snapshot = dataset_snapshot_create(
                    project=project,
                    user=user,
                    source=config.get("source", DatasetSource.VERIFIED),
                    synthetic=config.get("synthetic"),
                )
            if not snapshot.counts.get(Split.TRAIN, {}).get("images"):
                raise ServiceValidationError(
                    "Nothing to train on.", {"snapshot": f"snapshot {snapshot.number} has no training images"}
                )
            job = TrainingJob.objects.create(
                project=project,
                kind=kind,
                snapshot=snapshot,
                config=config,
                created_by=user,
                trigger=trigger,
                task_id=task_id,
            )
            audit_record(
                project=project,
                actor=user,
                action="training.start",
                target=str(job),
                after={"job": job.pk, "kind": kind, "snapshot": snapshot.pk, "config": config, "trigger": trigger},
            )
    except IntegrityError as exc:  # the partial unique index: another job was created meanwhile
        live = live_job(project)
        raise ConflictError(
            "A training job of this project is already queued or running.", {"job": live.pk if live else None}
        ) from exc
    job_id = job.pk
    task_enqueue("training.run_job", args=[job_id], queue="training", task_id=task_id)
    return job


def training_job_cancel(*, job: TrainingJob, user: User | None) -> TrainingJob:
    """Cancel a queued job now; ask a running one to stop (its trainer polls the flag). 409 when
    the job has already finished."""
    now = timezone.now()
    with transaction.atomic():
        locked = TrainingJob.objects.select_for_update().get(pk=job.pk)
        if locked.status == JobStatus.QUEUED:
            locked.status = JobStatus.CANCELLED
            locked.cancel_requested = True
            locked.cancelled_by = user
            locked.finished_at = now
            locked.log = log_append(locked.log, "cancelled before it started")
            locked.save(update_fields=["status", "cancel_requested", "cancelled_by", "finished_at", "log"])
        elif locked.status == JobStatus.RUNNING:
            if not locked.cancel_requested:
                locked.cancel_requested = True
                locked.cancelled_by = user
                locked.save(update_fields=["cancel_requested", "cancelled_by"])
        else:
            raise ConflictError(f"Training job {locked.pk} has already {locked.status}.", {"status": locked.status})
        audit_record(
            project=locked.project,
            actor=user,
            action="training.cancel",
            target=str(locked),
            after={"status": locked.status},
        )
    return locked


LOG_LIMIT = 200_000


def log_append(log: str, line: str) -> str:
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    text = f"{log}{stamp} {line}\n"
    return text[-LOG_LIMIT:] if len(text) > LOG_LIMIT else text


def job_fail(job_id: int, reason: str, *, statuses: Iterable[str] = (JobStatus.RUNNING,)) -> bool:
    """Mark a job failed with ``reason`` if it is still in one of ``statuses``."""
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().filter(pk=job_id, status__in=list(statuses)).first()
        if job is None:
            return False
        job.status = JobStatus.FAILED
        job.error = reason
        job.finished_at = timezone.now()
        job.log = log_append(job.log, f"failed: {reason}")
        job.save(update_fields=["status", "error", "finished_at", "log"])
        ModelVersion.objects.filter(job=job, status=ModelStatus.CANDIDATE).update(status=ModelStatus.FAILED)
        event_emit(
            project_id=job.project_id,
            event="training.failed",
            data={"job": job.pk, "kind": job.kind, "error": reason[:500]},
        )
    logger.warning("Training job %s failed: %s", job_id, reason)
    return True


def worker_lost_reason(job: TrainingJob, now: Any) -> str | None:
    """Why a running job is evidently dead, or None when it may still be alive."""
    if job.worker_host == socket.gethostname() and job.worker_pid and not pid_alive(job.worker_pid):
        return f"the worker process {job.worker_pid} on {job.worker_host} is gone (killed or crashed)"
    timeout = timedelta(seconds=settings.TRAINING_HEARTBEAT_TIMEOUT)
    if job.heartbeat_at is None or now - job.heartbeat_at > timeout:
        last = job.heartbeat_at.isoformat() if job.heartbeat_at else "never"
        return f"no heartbeat for more than {settings.TRAINING_HEARTBEAT_TIMEOUT} s (last {last}); the worker was lost"
    return None


def training_jobs_reap(*, now: Any = None) -> list[int]:
    """Mark failed, with the reason, every job whose worker is evidently gone (see the module
    docstring). Returns the ids of the jobs it failed."""
    now = now or timezone.now()
    failed: list[int] = []
    for job in TrainingJob.objects.filter(status=JobStatus.RUNNING):
        reason = worker_lost_reason(job, now)
        if reason and job_fail(job.pk, reason):
            failed.append(job.pk)
    stale = now - timedelta(seconds=settings.TRAINING_QUEUED_TIMEOUT)
    for job_id in TrainingJob.objects.filter(status=JobStatus.QUEUED, created_at__lt=stale).values_list(
        "pk", flat=True
    ):
        reason = f"still queued after {settings.TRAINING_QUEUED_TIMEOUT} s: its task was lost or no gpu worker runs"
        if job_fail(job_id, reason, statuses=(JobStatus.QUEUED,)):
            failed.append(job_id)
    return failed
