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


class PresegmentStatus(models.TextChoices):
    NONE = "none", "Not requested"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
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
    # Revision of the annotation layer; every accepted write increments it.
    revision = models.PositiveIntegerField(default=0)
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
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["image", "layer"]),
            models.Index(fields=["image", "layer", "model_version"]),
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


class IdempotencyRecord(models.Model):
    """The stored response of a write made with an Idempotency-Key, replayed on retry."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=128)
    scope = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="uniq_idempotency_key_per_user")]


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


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ExportJob(models.Model):
    """A large export written by a Celery job to a file under MEDIA_ROOT/exports.

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
    file = models.CharField(max_length=500, blank=True, help_text="Storage path (under MEDIA_ROOT/exports).")
    file_name = models.CharField(max_length=255, blank=True, help_text="Name offered to the downloader.")
    content_type = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} export {self.pk} of {self.project_id} ({self.status})"


# --- verification workflow -----------------------------------------------------------------


class ActiveLearningOrder(models.TextChoices):
    NONE = "none", "Upload order"
    UNCERTAINTY = "uncertainty", "Model uncertainty (lowest proposal scores first)"
    DISAGREEMENT = "disagreement", "Past expert disagreement (lowest agreement first)"


class VerificationSettings(models.Model):
    """Per-project verification settings that are not plain Project fields.

    Project admins may always adjudicate; ``adjudicators`` adds experts who may as well.
    """

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="verification_settings")
    adjudicators = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    active_learning_order = models.CharField(
        max_length=16, choices=ActiveLearningOrder.choices, default=ActiveLearningOrder.NONE
    )
    updated_at = models.DateTimeField(auto_now=True)


class RoundStatus(models.TextChoices):
    OPEN = "open", "Open (experts reviewing)"
    DISPUTED = "disputed", "Consensus done, disputes open"
    CLOSED = "closed", "Verified"
    CANCELLED = "cancelled", "Cancelled by reopen"


class VerificationRound(models.Model):
    """One pass of an image through review: starts at submit, ends verified or reopened.

    The project's K, quorum and IoU threshold are frozen here when the round starts so that
    changing the settings never changes the rules for an image already in review.
    """

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="verification_rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=RoundStatus.choices, default=RoundStatus.OPEN)
    experts_required = models.PositiveSmallIntegerField()
    quorum = models.PositiveSmallIntegerField()
    match_iou = models.FloatField()
    base_revision = models.PositiveIntegerField(help_text="Annotation revision under review.")
    # Consensus cells that need no adjudication, kept until the image is verified.
    agreed = models.JSONField(default=list, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "number"], name="uniq_round_number_per_image")]
        ordering = ["image_id", "number"]


class ReviewStatus(models.TextChoices):
    ASSIGNED = "assigned", "Assigned (draft)"
    SUBMITTED = "submitted", "Submitted"
    CANCELLED = "cancelled", "Cancelled"


class Review(models.Model):
    """An expert's assignment to verify an image in one round, and the review they write.

    The decisions are a private draft until submitted (reviews are blind). A cancelled review
    (expert removed, unassigned or image reopened) keeps its row for the record; its draft is
    discarded.
    """

    round = models.ForeignKey(VerificationRound, on_delete=models.CASCADE, related_name="reviews")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reviews")
    status = models.CharField(max_length=16, choices=ReviewStatus.choices, default=ReviewStatus.ASSIGNED)
    manual = models.BooleanField(default=False, help_text="Assigned by an admin rather than automatically.")
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=200, blank=True)
    # Decision counts, set on submit (acceptance and edit rates).
    n_accept = models.PositiveIntegerField(default=0)
    n_reject = models.PositiveIntegerField(default=0)
    n_edit = models.PositiveIntegerField(default=0)
    n_add = models.PositiveIntegerField(default=0)
    # Agreement of this review with the verified result, set when the image is verified.
    consensus_f1 = models.FloatField(null=True, blank=True)
    consensus_mean_iou = models.FloatField(null=True, blank=True)
    consensus_dice = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["round", "reviewer"],
                condition=~models.Q(status="cancelled"),
                name="uniq_live_review_per_round_reviewer",
            )
        ]
        indexes = [models.Index(fields=["reviewer", "status"]), models.Index(fields=["image", "status"])]
        ordering = ["id"]


class ReviewDecisionKind(models.TextChoices):
    ACCEPT = "accept", "Accept"
    REJECT = "reject", "Reject"
    EDIT = "edit", "Edit (expert's own contour)"
    ADD = "add", "Added cell"


class ReviewDecision(models.Model):
    """An expert's decision on one annotation cell, or a cell the expert added (``cell`` empty).

    ``polygon`` and ``cell_class`` are the expert's version for edits and additions (an edit
    without a class keeps the annotation cell's class).
    """

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="decisions")
    cell = models.ForeignKey(Cell, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    decision = models.CharField(max_length=8, choices=ReviewDecisionKind.choices)
    cell_class = models.ForeignKey(CellClass, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    polygon = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["review", "cell"], condition=models.Q(cell__isnull=False), name="uniq_decision_per_review_cell"
            )
        ]
        ordering = ["id"]


class ReviewComment(models.Model):
    """A reviewer's comment on a cell or (``cell`` empty) on the image; blind like the review."""

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="comments")
    cell = models.ForeignKey(Cell, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class DisputeReason(models.TextChoices):
    QUORUM = "quorum", "Fewer experts than the quorum support the cell"
    ADDED = "added", "Added by an expert, not confirmed by the quorum"
    CLASS = "class", "Contours match, the class does not reach the quorum"


class DisputeStatus(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"


class Dispute(models.Model):
    """A cell the experts did not agree on, with every expert's version, and its adjudication.

    ``versions``: one entry per submitted review, ``{review_id, reviewer_id, decision, polygon,
    class_id}`` (decision ``absent`` when the expert has no matching cell). ``candidate`` is the
    contour fused from the supporters. The adjudicator's ``choice`` is a review id, ``reject``,
    ``annotation`` (the annotator's cell) or ``own`` (the adjudicator's polygon).
    """

    round = models.ForeignKey(VerificationRound, on_delete=models.CASCADE, related_name="disputes")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="disputes")
    reason = models.CharField(max_length=16, choices=DisputeReason.choices)
    origin_cell = models.ForeignKey(Cell, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    annotation = models.JSONField(null=True, blank=True, help_text="The annotator's cell {polygon, class_id}.")
    versions = models.JSONField(default=list)
    candidate = models.JSONField(null=True, blank=True)
    candidate_class_id = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=DisputeStatus.choices, default=DisputeStatus.OPEN)
    choice = models.CharField(max_length=32, blank=True)
    polygon = models.JSONField(null=True, blank=True)
    cell_class = models.ForeignKey(CellClass, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class PairAgreement(models.Model):
    """Agreement of two experts' submitted reviews of one image (``review_a`` has the lower reviewer id)."""

    round = models.ForeignKey(VerificationRound, on_delete=models.CASCADE, related_name="pair_agreements")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    review_a = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="+")
    review_b = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="+")
    reviewer_a = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reviewer_b = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    f1 = models.FloatField()
    mean_iou = models.FloatField(null=True, blank=True)
    dice = models.FloatField()
    matched = models.PositiveIntegerField()
    n_a = models.PositiveIntegerField()
    n_b = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class CorrectionKind(models.TextChoices):
    KEPT = "kept", "Kept as proposed"
    EDITED = "edited", "Proposal edited"
    ADDED = "added", "Added by a human"
    DELETED = "deleted", "Proposal deleted"
    IGNORED = "ignored", "Proposal never acted upon"


class CorrectionRecord(models.Model):
    """How one verified cell relates to the model proposal it came from, or a proposal that
    did not reach the verified layer. Written when an image is verified."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="correction_records")
    round = models.ForeignKey(VerificationRound, on_delete=models.CASCADE, related_name="+")
    model_version = models.ForeignKey(
        "training.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    proposal = models.ForeignKey(Cell, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    verified_cell = models.ForeignKey(Cell, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    kind = models.CharField(max_length=16, choices=CorrectionKind.choices)
    iou = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["image", "kind"])]
        ordering = ["id"]
