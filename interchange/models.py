"""Export jobs: large exports written by a Celery job to a file, downloaded until they expire.

Moved from the annotations app with its table (``db_table`` keeps the name).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from annotations.models import Project


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ExportJob(models.Model):
    """A large export written by a Celery job to ``exports/`` of the default storage (disk or bucket).

    Project members may download the file until ``expires_at``; after that it is gone (410).
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="export_jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    items_total = models.PositiveBigIntegerField(default=0)
    items_done = models.PositiveBigIntegerField(default=0)
    file = models.CharField(max_length=500, blank=True, help_text="Name in the default storage (under exports/).")
    file_name = models.CharField(max_length=255, blank=True, help_text="Name offered to the downloader.")
    content_type = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        db_table = "annotations_exportjob"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} export {self.pk} of {self.project_id} ({self.status})"
