"""Projects, roles, API tokens, images and the polygon store.

Cells of every layer live in one table: ``annotation`` (doctors' work, revisioned),
``proposal`` (model output, per model version) and ``verified`` (the gold layer).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    EXPERT = "expert", "Expert"
    ADMIN = "admin", "Admin"


class Project(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    experts_required = models.PositiveSmallIntegerField(default=2)
    quorum = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Empty: all experts.")
    match_iou = models.FloatField(default=0.5)
    auto_presegment = models.BooleanField(default=True)
    pipeline = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class ProjectMembership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="uniq_membership_per_project")]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class CellClass(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="classes")
    name = models.CharField(max_length=100)
    color = models.CharField(max_length=7, default="#1f77b4")
    # Semantic label the models use for this class: 1 cell, 2 erythrocyte (0 is background).
    model_label = models.PositiveSmallIntegerField(default=1)
    order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="uniq_class_name_per_project")]
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return self.name


class ApiToken(models.Model):
    """A script's credential. Only a SHA-256 of the secret is stored; the secret is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_tokens",
        help_text="When set, the token only reaches this project.",
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Bethesda(models.TextChoices):
    I = "I", "I — Nondiagnostic"  # noqa: E741 - Bethesda categories are roman numerals
    II = "II", "II — Benign"
    III = "III", "III — AUS/FLUS"
    IV = "IV", "IV — Follicular neoplasm"
    V = "V", "V — Suspicious for malignancy"
    VI = "VI", "VI — Malignant"


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    VALIDATION = "validation", "Validation"
    TEST = "test", "Test"


class ImageStatus(models.TextChoices):
    NEW = "new", "New"
    PRE_SEGMENTED = "pre_segmented", "Pre-segmented"
    ANNOTATING = "annotating", "Annotating"
    SUBMITTED = "submitted", "Submitted"
    IN_REVIEW = "in_review", "In review"
    DISPUTED = "disputed", "Disputed"
    ADJUDICATION = "adjudication", "Adjudication"
    VERIFIED = "verified", "Verified"


# From submission until an admin reopens the image, its annotation layer and proposals are locked.
LOCKED_STATUSES = frozenset(
    {
        ImageStatus.SUBMITTED,
        ImageStatus.IN_REVIEW,
        ImageStatus.DISPUTED,
        ImageStatus.ADJUDICATION,
        ImageStatus.VERIFIED,
    }
)


class PresegmentStatus(models.TextChoices):
    NONE = "none", "Not requested"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class TileStatus(models.TextChoices):
    NONE = "none", "Not tiled"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Building"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class Image(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="images")
    file_name = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    original = models.FileField(max_length=500)
    display = models.FileField(max_length=500, help_text="8-bit RGB PNG used by viewers and models.")
    thumbnail = models.FileField(max_length=500)
    original_format = models.CharField(max_length=16)
    original_mode = models.CharField(max_length=16)
    bit_depth = models.PositiveSmallIntegerField(default=8)
    size_bytes = models.PositiveBigIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bethesda = models.CharField(max_length=3, choices=Bethesda.choices, blank=True)
    stain = models.CharField(max_length=64, blank=True, default="Diff-Quik")
    magnification = models.CharField(max_length=16, blank=True)
    slide_code = models.CharField(max_length=64, blank=True, help_text="Pseudonymous slide/patient code.")
    split = models.CharField(max_length=16, choices=Split.choices)
    status = models.CharField(max_length=16, choices=ImageStatus.choices, default=ImageStatus.NEW)
    presegment_status = models.CharField(max_length=16, choices=PresegmentStatus.choices, default=PresegmentStatus.NONE)
    presegment_error = models.TextField(blank=True)
    presegment_model = models.ForeignKey(
        "training.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Liveness of pre-segmentation (inference.services): when it was queued, the worker running
    # it ("host:pid") and its last heartbeat, and how many runs were started.
    presegment_queued_at = models.DateTimeField(null=True, blank=True)
    presegment_worker = models.CharField(max_length=255, blank=True)
    presegment_heartbeat_at = models.DateTimeField(null=True, blank=True)
    presegment_attempts = models.PositiveSmallIntegerField(default=0)
    # A tiled image's pre-segmentation goes tile by tile (inference.tiled): its progress.
    presegment_tiles_done = models.PositiveIntegerField(default=0)
    presegment_tiles_total = models.PositiveIntegerField(default=0)
    # Revision of the annotation layer; every accepted write increments it.
    revision = models.PositiveIntegerField(default=0)
    # Large images and whole slides (annotations.services.slides): no display PNG; a worker
    # builds a DeepZoom tile pyramid (cytoseg.tiles) under tile_root in the storage.
    tiled = models.BooleanField(default=False)
    tile_status = models.CharField(max_length=16, choices=TileStatus.choices, default=TileStatus.NONE)
    tile_error = models.TextField(blank=True)
    tile_root = models.CharField(max_length=500, blank=True)
    tile_size = models.PositiveSmallIntegerField(default=256)
    # Builds started: a worker killed mid-build (out of memory) gives the task back, so a slide
    # that kills every worker must stop being retried.
    tile_attempts = models.PositiveSmallIntegerField(default=0)
    # From the file's metadata when it says (OpenSlide properties, OME-XML, TIFF resolution).
    mpp_x = models.FloatField(null=True, blank=True, help_text="Microns per pixel, horizontally.")
    mpp_y = models.FloatField(null=True, blank=True, help_text="Microns per pixel, vertically.")
    objective_power = models.FloatField(null=True, blank=True, help_text="The scanner's objective magnification.")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "sha256"], name="uniq_image_content_per_project")]
        indexes = [models.Index(fields=["project", "status"]), models.Index(fields=["project", "split"])]
        ordering = ["id"]

    def __str__(self) -> str:
        return self.file_name


class Layer(models.TextChoices):
    ANNOTATION = "annotation", "Annotation"
    PROPOSAL = "proposal", "Proposal"
    VERIFIED = "verified", "Verified"


class CellSource(models.TextChoices):
    MANUAL = "manual", "Manual"
    MODEL = "model", "Model"
    IMPORT = "import", "Import"
    CONSENSUS = "consensus", "Consensus"


class Cell(models.Model):
    """One cell instance: a polygon in image pixel coordinates (x right, y down)."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="cells")
    layer = models.CharField(max_length=16, choices=Layer.choices, default=Layer.ANNOTATION)
    # RESTRICT: a class in use cannot be deleted on its own, but deleting the whole project
    # (which deletes its cells too) works.
    cell_class = models.ForeignKey(CellClass, on_delete=models.RESTRICT, related_name="cells")
    polygon = models.JSONField()
    bbox_x = models.FloatField()
    bbox_y = models.FloatField()
    bbox_w = models.FloatField()
    bbox_h = models.FloatField()
    area = models.FloatField()
    score = models.FloatField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=CellSource.choices, default=CellSource.MANUAL)
    model_version = models.ForeignKey(
        "training.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="cells"
    )
    provenance = models.JSONField(default=dict, blank=True)
    # Digest of the vertex coordinates: lets a full-layer save find unchanged cells cheaply.
    geometry_digest = models.CharField(max_length=32, blank=True, default="")
    # Proposals only: "" open, "accepted" (copied into the annotation layer), "rejected".
    state = models.CharField(max_length=16, blank=True, default="")
    # Annotation layer only: the layer's revision that last wrote this cell (added or changed it).
    # A delta save finds what others changed after its base revision from it (services/cell_deltas.py).
    revision = models.PositiveIntegerField(default=0)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["image", "layer"]),
            models.Index(fields=["image", "layer", "model_version"]),
            # Viewport reads (GET cells?bbox=) and the delta save's "written after base" check.
            # PostgreSQL also gets a GiST index on the bounding box (migration 0012).
            models.Index(fields=["image", "layer", "bbox_x"], name="cell_bbox_x_idx"),
            models.Index(fields=["image", "layer", "revision"], name="cell_revision_idx"),
        ]
        ordering = ["id"]


class AnnotationRevision(models.Model):
    """History of an image's annotation layer: one row per accepted write holding what that write
    changed (``{"upserted": [cell, ...], "deleted": [id, ...]}``). Replaying the rows up to a
    revision gives the layer exactly as it was then, so any earlier revision can be restored; a
    delta per autosave keeps the history small where full copies would grow with every save."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="history")
    revision = models.PositiveIntegerField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=32)
    summary = models.JSONField(default=dict)
    changes = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "revision"], name="uniq_revision_per_image")]
        ordering = ["-revision"]


class AuditEvent(models.Model):
    """Append-only audit log of actions (who, when, what, before/after), visible to admins."""

    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="audit_events")
    image = models.ForeignKey(Image, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]


class Region(models.Model):
    """A region of interest a doctor drew on an image (issue #14): a simple polygon in
    full-resolution image pixels. On a tiled image it is the unit of pre-segmentation,
    verification and training: a cell belongs to it when its centroid lies inside
    (``cytoseg.regions``). ``status`` follows the image workflow's states."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="regions")
    name = models.CharField(max_length=100)
    polygon = models.JSONField()
    # Bounding box of the polygon (whole pixels, cut to the image): tile selection, cell queries.
    bbox_x = models.PositiveIntegerField()
    bbox_y = models.PositiveIntegerField()
    bbox_w = models.PositiveIntegerField()
    bbox_h = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=ImageStatus.choices, default=ImageStatus.NEW)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["image", "status"])]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} on image {self.image_id}"

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """The region's bounding box as x0, y0, x1, y1 (exclusive ends)."""
        return self.bbox_x, self.bbox_y, self.bbox_x + self.bbox_w, self.bbox_y + self.bbox_h
