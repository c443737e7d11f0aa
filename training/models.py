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
    # The storage prefix of the version's files (``models/<project>/<key>``; see
    # training.services.artifacts); empty for kinds without files.
    artifact_prefix = models.CharField(max_length=500, blank=True)
    artifacts = models.JSONField(default=list, blank=True, help_text="[{path, sha256, size}]")
    config = models.JSONField(default=dict, blank=True, help_text="Backend settings.")
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ModelStatus.choices, default=ModelStatus.CANDIDATE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Provenance of trained versions (empty for baselines and hand-registered folders).
    job = models.ForeignKey(
        "training.TrainingJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    snapshot = models.ForeignKey(
        "training.DatasetSnapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    promoted_at = models.DateTimeField(null=True, blank=True, help_text="When it last became active.")
    replaced = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The active version of its kind that this one replaced (what a rollback returns to).",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "kind", "number"], name="uniq_model_number")]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} v{self.number}"


# --- datasets ------------------------------------------------------------------------------


class DatasetSource(models.TextChoices):
    VERIFIED = "verified", "Verified layer of verified images"
    ANNOTATION = "annotation", "Annotation layer of images an admin marked complete"


class ImageCompletion(models.Model):
    """An admin's mark that an image's annotation layer is complete enough to train on.

    The fallback source of training data (``DatasetSource.ANNOTATION``) for projects that do
    not run the expert verification workflow. ``revision`` is the annotation revision that was
    marked; a snapshot takes the layer as it is when the snapshot is built and records that
    revision.
    """

    image = models.OneToOneField("annotations.Image", on_delete=models.CASCADE, related_name="training_completion")
    revision = models.PositiveIntegerField()
    marked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    marked_at = models.DateTimeField(auto_now=True)


class FrozenTestImage(models.Model):
    """An image of a project's frozen test split. Rows are only ever added: a test image never
    feeds training, whatever its ``split`` field says later."""

    project = models.ForeignKey("annotations.Project", on_delete=models.CASCADE, related_name="frozen_test_images")
    image = models.OneToOneField("annotations.Image", on_delete=models.CASCADE, related_name="frozen_test")
    frozen_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class DatasetSnapshot(models.Model):
    """An immutable record of the data a training job uses: which images, in which split, at
    which annotation revision, with a frozen copy of their cells (``SnapshotItem``)."""

    project = models.ForeignKey("annotations.Project", on_delete=models.CASCADE, related_name="dataset_snapshots")
    number = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=DatasetSource.choices, default=DatasetSource.VERIFIED)
    # {"synthetic": {...cytoseg.augment.AugmentConfig...}} or {}
    options = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True, help_text="{split: {images, cells}}")
    excluded = models.JSONField(default=list, blank=True, help_text="[{image, reason}]")
    sha256 = models.CharField(max_length=64, blank=True, help_text="Hash of the items' ids, splits and cells.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="uniq_snapshot_number")]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"snapshot {self.number} of project {self.project_id}"


class SnapshotItem(models.Model):
    """One image (or one region of a slide) of a snapshot with its cells as they were: ``cells`` is
    ``[{"id", "polygon", "label", "class_id"}, ...]`` in paint order (label 1 cell, 2 erythrocyte)."""

    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.CASCADE, related_name="items")
    image = models.ForeignKey("annotations.Image", null=True, on_delete=models.SET_NULL, related_name="+")
    image_sha256 = models.CharField(max_length=64)
    file_name = models.CharField(max_length=255)
    split = models.CharField(max_length=16)
    bethesda = models.CharField(max_length=3, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    revision = models.PositiveIntegerField(help_text="Annotation revision of the image when snapshotted.")
    cells = models.JSONField(default=list)
    cells_sha256 = models.CharField(max_length=64)
    # A tiled image (a slide) is trained on by its verified regions (issue #14): one item per
    # region, its bounding box (``crop``: x0, y0, x1, y1 in full-resolution pixels) read from the
    # original, white outside the region's outline (``mask``, in crop coordinates). The cells and
    # width/height are then the crop's. Frozen here: redrawing or deleting the region later
    # changes nothing a job trained on. Empty for a whole image.
    region = models.ForeignKey("annotations.Region", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    crop = models.JSONField(null=True, blank=True)
    mask = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["snapshot", "split"])]
        ordering = ["id"]


# --- jobs ----------------------------------------------------------------------------------


class JobKind(models.TextChoices):
    NNUNET = "nnunet", "nnU-Net v2"
    CELLPOSE = "cellpose", "Cellpose 3"
    TWO_STAGE = "two_stage", "nnU-Net, then Cellpose (two-stage bundle)"
    REFINEMENT = "refinement", "Refinement net on the active nnU-Net"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


LIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class JobTrigger(models.TextChoices):
    MANUAL = "manual", "Started by an admin"
    SCHEDULE = "schedule", "Scheduled retraining"


class TrainingJob(models.Model):
    """A training run on the ``gpu`` queue. At most one queued or running job per project."""

    project = models.ForeignKey("annotations.Project", on_delete=models.CASCADE, related_name="training_jobs")
    kind = models.CharField(max_length=16, choices=JobKind.choices)
    # RESTRICT: a snapshot a job used cannot be deleted on its own, only with its project
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.RESTRICT, related_name="jobs")
    config = models.JSONField(default=dict, blank=True, help_text="As requested (validated).")
    resolved_config = models.JSONField(default=dict, blank=True, help_text="Every hyper-parameter, per stage.")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    trigger = models.CharField(max_length=16, choices=JobTrigger.choices, default=JobTrigger.MANUAL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancel_requested = models.BooleanField(default=False)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Liveness: the Celery task id, the worker host and process, and a heartbeat while running.
    task_id = models.CharField(max_length=64, blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # {"stage", "phase", "epoch" (1-based, the epoch under way), "epochs", "iteration", "iterations", "loss",
    # "step"}; ``curves`` keeps the trainers' per-epoch points as they report them (epoch 0-based).
    progress = models.JSONField(default=dict, blank=True)
    curves = models.JSONField(default=dict, blank=True, help_text="{stage: [per-epoch point]}")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds per stage.")
    artifact_dir = models.CharField(max_length=500, blank=True)
    result = models.JSONField(default=dict, blank=True, help_text="Versions made, evaluations, promotion decisions.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project"],
                condition=models.Q(status__in=["queued", "running"]),
                name="one_live_training_job_per_project",
            )
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} training job {self.pk} ({self.status})"


# --- evaluation and promotion ----------------------------------------------------------------


class Evaluation(models.Model):
    """Metrics of one model version on the test split of one snapshot.

    ``overall`` and ``per_bethesda`` are flat ``{metric: value}`` dicts of the polygons as
    pre-segmentation stores them, ``per_image`` a list of ``{"image", "bethesda", metric: value}``
    (see ``cytoseg.evaluation``); ``intervals`` the bootstrap intervals of ``overall``;
    ``raw_overall`` the same summary for the raw masks.
    """

    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.CASCADE, related_name="evaluations")
    overall = models.JSONField(default=dict)
    per_bethesda = models.JSONField(default=dict)
    per_image = models.JSONField(default=list)
    intervals = models.JSONField(
        default=dict, blank=True, help_text="{metric: [low, high]}: 95% bootstrap intervals over the test images."
    )
    raw_overall = models.JSONField(
        default=dict, blank=True, help_text="The overall metrics of the raw masks (``overall`` scores the polygons)."
    )
    seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_version", "snapshot"], name="uniq_evaluation_per_version_snapshot")
        ]
        ordering = ["-id"]


class TrainingPolicy(models.Model):
    """Per-project retraining schedule and promotion gate.

    Schedule: a django-celery-beat ``PeriodicTask`` (crontab) runs ``training.schedule_check``,
    which starts a ``job_kind`` job with ``job_config`` only when at least ``min_new_images``
    newly verified images exist and no job is queued or running.
    Gate: the best version of a job by ``gate_metric`` is promoted automatically
    (``auto_promote``) when it beats the project's ``presegmenter`` on the frozen test split by
    ``gate_margin`` on ``gate_metric`` and no metric of ``gate_guarded`` is worse by more than
    ``gate_tolerance`` beyond the bootstrap intervals (``cytoseg.evaluation.gate_decide``).
    """

    project = models.OneToOneField("annotations.Project", on_delete=models.CASCADE, related_name="training_policy")
    schedule_enabled = models.BooleanField(default=False)
    cron_minute = models.CharField(max_length=64, default="0")
    cron_hour = models.CharField(max_length=64, default="3")
    cron_day_of_week = models.CharField(max_length=64, default="*")
    cron_day_of_month = models.CharField(max_length=64, default="*")
    cron_month_of_year = models.CharField(max_length=64, default="*")
    min_new_images = models.PositiveIntegerField(default=10)
    job_kind = models.CharField(max_length=16, choices=JobKind.choices, default=JobKind.TWO_STAGE)
    job_config = models.JSONField(default=dict, blank=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    auto_promote = models.BooleanField(default=True)
    gate_metric = models.CharField(max_length=64, blank=True, help_text="Empty: settings.TRAINING_GATE_METRIC.")
    gate_margin = models.FloatField(null=True, blank=True)
    gate_tolerance = models.FloatField(null=True, blank=True)
    gate_guarded = models.JSONField(default=list, blank=True, help_text="Empty: the default guarded metrics.")
    # The version pre-segmentation uses: set by promotion (by the gate or an admin). When empty
    # or no longer active, the active versions are taken in the order of PRESEGMENT_KINDS.
    presegmenter = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_check_at = models.DateTimeField(null=True, blank=True)
    last_check = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "training policies"

    def __str__(self) -> str:
        return f"training policy of project {self.project_id}"
