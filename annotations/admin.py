from typing import Any

from django import forms
from django.contrib import admin

from annotations import models
from annotations.services.projects import pipeline_errors


class MembershipInline(admin.TabularInline):
    model = models.ProjectMembership
    extra = 0
    raw_id_fields = ["user"]


class CellClassInline(admin.TabularInline):
    model = models.CellClass
    extra = 0


class ProjectAdminForm(forms.ModelForm):
    """The pipeline is checked here as in the API: no unknown keys, no server paths."""

    class Meta:
        model = models.Project
        fields = [
            "name",
            "description",
            "experts_required",
            "quorum",
            "match_iou",
            "auto_presegment",
            "pipeline",
            "created_by",
        ]

    def clean_pipeline(self) -> Any:
        pipeline = self.cleaned_data.get("pipeline")
        errors = pipeline_errors(pipeline if pipeline is not None else {})
        if errors:
            raise forms.ValidationError([f"{key}: {message}" for key, message in sorted(errors.items())])
        return pipeline


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    form = ProjectAdminForm
    list_display = ["id", "name", "experts_required", "auto_presegment", "created_at"]
    search_fields = ["name"]
    inlines = [CellClassInline, MembershipInline]


@admin.register(models.ProjectMembership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "user", "role"]
    list_filter = ["role", "project"]
    raw_id_fields = ["user"]


@admin.register(models.CellClass)
class CellClassAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "name", "color", "model_label", "order"]
    list_filter = ["project"]


@admin.register(models.ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "name", "prefix", "project", "created_at", "expires_at", "revoked_at"]
    readonly_fields = ["key_hash", "prefix", "last_used_at"]


@admin.register(models.Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "file_name",
        "width",
        "height",
        "bethesda",
        "split",
        "status",
        "presegment_status",
        "revision",
    ]
    list_filter = ["project", "status", "split", "bethesda", "presegment_status"]
    search_fields = ["file_name", "slide_code", "sha256"]
    readonly_fields = ["sha256", "revision", "original", "display", "thumbnail"]


@admin.register(models.Cell)
class CellAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "layer", "cell_class", "source", "score", "area", "author"]
    list_filter = ["layer", "source"]
    raw_id_fields = ["image", "author", "model_version"]


@admin.register(models.AnnotationRevision)
class AnnotationRevisionAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "revision", "action", "author", "created_at"]
    raw_id_fields = ["image", "author"]


@admin.register(models.AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "project", "actor", "action", "target"]
    list_filter = ["action", "project"]
    readonly_fields = ["project", "image", "actor", "action", "target", "before", "after", "created_at"]
