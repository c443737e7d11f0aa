from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.errors import ConflictError
from training import models
from training.services import jobs, registry, schedule


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "number", "name", "status", "job", "snapshot", "promoted_at", "created_at"]
    list_filter = ["project", "kind", "status"]
    # Files enter only as uploads or training outputs: their location is never edited by hand.
    readonly_fields = ["artifact_prefix", "artifacts", "metrics", "job", "snapshot", "replaced", "promoted_at"]
    actions = ["promote"]

    @admin.action(description="Promote (make the active model of its kind)")
    def promote(self, request: HttpRequest, queryset: QuerySet[models.ModelVersion]) -> None:
        for version in queryset:
            try:
                registry.model_version_promote(
                    version=version,
                    user=request.user,  # type: ignore[arg-type]
                    reason="promoted in the Django admin",
                )
            except ConflictError as exc:
                self.message_user(request, f"{version}: {exc.detail}", level=messages.ERROR)


@admin.register(models.TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "status",
        "trigger",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    ]
    list_filter = ["project", "kind", "status", "trigger"]
    readonly_fields = [f.name for f in models.TrainingJob._meta.fields]
    actions = ["cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # start jobs through the API (validation, snapshot, enqueueing)

    @admin.action(description="Cancel")
    def cancel(self, request: HttpRequest, queryset: QuerySet[models.TrainingJob]) -> None:
        for job in queryset:
            try:
                jobs.training_job_cancel(job=job, user=request.user)  # type: ignore[arg-type]
            except ConflictError as exc:
                self.message_user(request, f"job {job.pk}: {exc.detail}", level=messages.WARNING)


class SnapshotItemInline(admin.TabularInline):
    model = models.SnapshotItem
    extra = 0
    fields = ["image", "file_name", "split", "bethesda", "revision", "cells_sha256"]
    readonly_fields = ["image", "file_name", "split", "bethesda", "revision", "cells_sha256"]
    can_delete = False


@admin.register(models.DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "number", "source", "created_by", "created_at"]
    list_filter = ["project", "source"]
    readonly_fields = ["project", "number", "source", "options", "counts", "excluded", "sha256", "created_by"]
    inlines = [SnapshotItemInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(models.Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ["id", "model_version", "snapshot", "seconds", "created_at"]
    list_filter = ["model_version__project"]
    readonly_fields = ["model_version", "snapshot", "overall", "per_bethesda", "per_image", "seconds"]


class TrainingPolicyForm(forms.ModelForm):
    """Validates like the API (crontab fields, job kind and configuration, gate metrics)."""

    class Meta:
        model = models.TrainingPolicy
        fields = ["project", *schedule.POLICY_FIELDS]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        values = {f: data[f] for f in schedule.POLICY_FIELDS if f in data}
        values["gate_guarded"] = values.get("gate_guarded") or []
        merged = {f: getattr(self.instance, f) for f in schedule.POLICY_FIELDS} | values
        for key, message in schedule.policy_errors(values, merged).items():
            field = key.split(".", 1)[0]
            self.add_error(field if field in self.fields else None, f"{key}: {message}")
        return data


@admin.register(models.TrainingPolicy)
class TrainingPolicyAdmin(admin.ModelAdmin):
    """The retraining schedule; saving keeps its django-celery-beat task in step."""

    form = TrainingPolicyForm

    list_display = [
        "project",
        "schedule_enabled",
        "cron_minute",
        "cron_hour",
        "cron_day_of_week",
        "min_new_images",
        "job_kind",
        "auto_promote",
        "gate_metric",
        "last_check_at",
    ]
    readonly_fields = ["periodic_task", "last_check_at", "last_check"]

    def save_model(self, request: HttpRequest, obj: models.TrainingPolicy, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        schedule.periodic_task_sync(policy=obj)


@admin.register(models.FrozenTestImage)
class FrozenTestImageAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "image", "frozen_at"]
    list_filter = ["project"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the frozen test split only grows


@admin.register(models.ImageCompletion)
class ImageCompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "revision", "marked_by", "marked_at"]
    raw_id_fields = ["image"]
