"""The model registry: versions of trained (or hand-registered) segmentation models."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ModelKind(models.TextChoices):
    WATERSHED = "watershed", "Watershed baseline"
    REGION_GROWING = "region_growing", "Region growing baseline"
    NNUNET = "nnunet", "nnU-Net v2"
    CELLPOSE = "cellpose", "Cellpose 3"
    TWO_STAGE = "two_stage", "nnU-Net + Cellpose"
    REFINEMENT = "refinement", "Refinement network"


class ModelStatus(models.TextChoices):
    CANDIDATE = "candidate", "Candidate"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"
    FAILED = "failed", "Failed"


class ModelVersion(models.Model):
    project = models.ForeignKey("annotations.Project", on_delete=models.CASCADE, related_name="model_versions")
    kind = models.CharField(max_length=32, choices=ModelKind.choices)
    number = models.PositiveIntegerField()
    name = models.CharField(max_length=200, blank=True)
    artifact_path = models.CharField(max_length=500, blank=True)
    artifacts = models.JSONField(default=list, blank=True, help_text="[{path, sha256, size}]")
    config = models.JSONField(default=dict, blank=True, help_text="Backend settings.")
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ModelStatus.choices, default=ModelStatus.CANDIDATE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "kind", "number"], name="uniq_model_number")]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} v{self.number}"
