"""Retraining policies: the schedule (django-celery-beat), the threshold of newly verified images,
and the promotion gate's settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from annotations.models import Project, Split
from annotations.services.audit import audit_record
from core.errors import ConflictError, ServiceValidationError
from cytoseg.evaluation import METRICS
from training.models import (
    DatasetSource,
    FrozenTestImage,
    JobKind,
    JobStatus,
    JobTrigger,
    SnapshotItem,
    TrainingJob,
    TrainingPolicy,
)
from training.services.config import training_config_validate
from training.services.jobs import live_job, training_job_start
from training.snapshots import (
    eligible_images,
    source_layer,
)

POLICY_FIELDS = (
    "schedule_enabled",
    "cron_minute",
    "cron_hour",
    "cron_day_of_week",
    "cron_day_of_month",
    "cron_month_of_year",
    "min_new_images",
    "job_kind",
    "job_config",
    "auto_promote",
    "gate_metric",
    "gate_margin",
    "gate_tolerance",
    "gate_guarded",
)


def training_policy_get(*, project: Project) -> TrainingPolicy:
    policy, _ = TrainingPolicy.objects.get_or_create(project=project)
    return policy


def policy_errors(data: Mapping[str, Any], merged: Mapping[str, Any]) -> dict[str, str]:
    from celery.schedules import crontab

    errors: dict[str, str] = {f: "unknown or read-only field" for f in sorted(set(data) - set(POLICY_FIELDS))}
    if "schedule_enabled" in data and not isinstance(data["schedule_enabled"], bool):
        errors["schedule_enabled"] = "must be true or false"
    if "auto_promote" in data and not isinstance(data["auto_promote"], bool):
        errors["auto_promote"] = "must be true or false"
    for field in ("cron_minute", "cron_hour", "cron_day_of_week", "cron_day_of_month", "cron_month_of_year"):
        if field in data and (not isinstance(data[field], str) or not data[field].strip()):
            errors[field] = "must be a crontab field such as '0', '*/15' or '1-5'"
    if not any(f.startswith("cron_") for f in errors):
        try:
            crontab(
                minute=merged["cron_minute"],
                hour=merged["cron_hour"],
                day_of_week=merged["cron_day_of_week"],
                day_of_month=merged["cron_day_of_month"],
                month_of_year=merged["cron_month_of_year"],
            )
        except (ValueError, TypeError) as exc:
            errors["cron"] = f"not a valid crontab: {exc}"
    n = data.get("min_new_images")
    if "min_new_images" in data and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        errors["min_new_images"] = "must be a positive integer"
    if "job_kind" in data and data["job_kind"] not in JobKind.values:
        errors["job_kind"] = f"must be one of {', '.join(JobKind.values)}"
    elif "job_kind" in data or "job_config" in data:
        try:
            training_config_validate(kind=merged["job_kind"], config=merged["job_config"])
        except ServiceValidationError as exc:
            errors.update({f"job_{k}" if k.startswith("config") else k: v for k, v in exc.errors.items()})
    if "gate_metric" in data and data["gate_metric"] not in ("", *METRICS):
        errors["gate_metric"] = f"must be one of {', '.join(METRICS)}"
    for field in ("gate_margin", "gate_tolerance"):
        value = data.get(field)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            errors[field] = "must be a number or null (the platform default)"
        elif field == "gate_tolerance" and value is not None and value < 0:
            errors[field] = "must not be negative"
    if "gate_guarded" in data:
        guarded = data["gate_guarded"]
        if not isinstance(guarded, list) or any(m not in METRICS for m in guarded):
            errors["gate_guarded"] = f"must be a list of metrics from {', '.join(METRICS)}"
    return errors


def training_policy_update(*, project: Project, data: dict[str, Any], user: User | None) -> TrainingPolicy:
    """Change the retraining schedule and promotion gate; keeps the beat ``PeriodicTask`` in step."""
    policy = training_policy_get(project=project)
    before = {f: getattr(policy, f) for f in POLICY_FIELDS}
    merged = before | data
    errors = policy_errors(data, merged)
    if errors:
        raise ServiceValidationError("Invalid training schedule.", errors)
    with transaction.atomic():
        for field, value in data.items():
            setattr(policy, field, value.strip() if isinstance(value, str) and field.startswith("cron_") else value)
        policy.save()
        periodic_task_sync(policy=policy)
        audit_record(
            project=project,
            actor=user,
            action="training.schedule",
            target=str(policy),
            before=before,
            after={f: getattr(policy, f) for f in POLICY_FIELDS},
        )
    return policy


def periodic_task_sync(*, policy: TrainingPolicy) -> None:
    """Create, update or disable the policy's django-celery-beat task (``training.schedule_check``)."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    task = policy.periodic_task
    if not policy.schedule_enabled:
        if task is not None and task.enabled:
            task.enabled = False
            task.save(update_fields=["enabled"])
        return
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=policy.cron_minute,
        hour=policy.cron_hour,
        day_of_week=policy.cron_day_of_week,
        day_of_month=policy.cron_day_of_month,
        month_of_year=policy.cron_month_of_year,
        timezone=settings.TIME_ZONE,
    )
    if task is None:
        task = PeriodicTask(name=f"training schedule of project {policy.project_id}")
    task.task = "training.schedule_check"
    task.crontab = schedule
    task.interval = None
    task.args = json.dumps([policy.project_id])
    task.queue = "default"
    task.enabled = True
    task.description = "Start a training job when enough newly verified images exist (training.TrainingPolicy)."
    task.save()
    if policy.periodic_task_id != task.pk:
        policy.periodic_task = task
        policy.save(update_fields=["periodic_task"])


def new_image_count(*, project: Project, source: str = DatasetSource.VERIFIED) -> int:
    """Training images (train/validation, never the frozen test split) that are new or changed
    since the snapshot of the project's last successful job."""
    layer = source_layer(source)
    frozen = FrozenTestImage.objects.filter(project=project).values("image_id")
    candidates = (
        eligible_images(project=project, source=source)
        .exclude(split=Split.TEST)
        .exclude(pk__in=frozen)
        .annotate(last_change=Max("cells__updated_at", filter=Q(cells__layer=layer)))
    )
    last = (
        TrainingJob.objects.filter(project=project, status=JobStatus.SUCCEEDED)
        .select_related("snapshot")
        .order_by("-finished_at", "-id")
        .first()
    )
    if last is None:
        return candidates.count()
    trained = set(
        SnapshotItem.objects.filter(snapshot=last.snapshot, split__in=[Split.TRAIN, Split.VALIDATION]).values_list(
            "image_id", flat=True
        )
    )
    since = last.snapshot.created_at
    return sum(
        1
        for image_id, changed in candidates.values_list("pk", "last_change")
        if image_id not in trained or (changed is not None and changed > since)
    )


def training_schedule_check(*, project_id: int) -> dict[str, Any]:
    """The scheduled check: start the policy's job when enough new images exist and no job is
    queued or running. Returns (and records on the policy) what it decided."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return {"started": False, "reason": "no such project"}
    policy = training_policy_get(project=project)
    source = policy.job_config.get("source", DatasetSource.VERIFIED)
    outcome: dict[str, Any] = {"started": False}
    if not policy.schedule_enabled:
        outcome["reason"] = "the schedule is off"
    elif (live := live_job(project)) is not None:
        outcome["reason"] = f"job {live.pk} is {live.status}"
    else:
        count = new_image_count(project=project, source=source)
        outcome["new_images"] = count
        if count < policy.min_new_images:
            outcome["reason"] = f"{count} new images < threshold {policy.min_new_images}"
        else:
            try:
                job = training_job_start(
                    project=project,
                    user=None,
                    kind=policy.job_kind,
                    config=policy.job_config,
                    trigger=JobTrigger.SCHEDULE,
                )
            except (ConflictError, ServiceValidationError) as exc:
                outcome["reason"] = f"not started: {exc.detail}"
            else:
                outcome.update(started=True, job=job.pk, reason=f"{count} new images >= {policy.min_new_images}")
    TrainingPolicy.objects.filter(pk=policy.pk).update(last_check_at=timezone.now(), last_check=outcome)
    return outcome
