"""The multi-expert verification workflow's records: settings, rounds, reviews and their decisions
and comments, disputes and their adjudication, pairwise agreement and correction records.

Moved from the annotations app with their tables (``db_table`` keeps the names; no data is copied).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from annotations.models import Cell, CellClass, Image, Project, Region


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

    class Meta:
        db_table = "annotations_verificationsettings"


class RoundStatus(models.TextChoices):
    OPEN = "open", "Open (experts reviewing)"
    DISPUTED = "disputed", "Consensus done, disputes open"
    CLOSED = "closed", "Verified"
    CANCELLED = "cancelled", "Cancelled by reopen"


class VerificationRound(models.Model):
    """One pass of an image, or of one region of a slide, through review: starts at submit,
    ends verified or reopened.

    The project's K, quorum and IoU threshold are frozen here when the round starts so that
    changing the settings never changes the rules for an image already in review. With a
    ``region`` the round verifies that region of a tiled image only: its cells are the
    annotation cells whose centroid lies inside, and its transitions move the region's status,
    not the image's. Rounds are numbered per image (``region`` empty) and per region; deleting a
    region (refused while it is locked) deletes its rounds' history with it.
    """

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="verification_rounds")
    # RESTRICT: deleting a region would take its reviews, disputes and agreement with it; a region
    # with verification history stays (renamed at most). The image's deletion still takes both.
    region = models.ForeignKey(
        Region, null=True, blank=True, on_delete=models.RESTRICT, related_name="verification_rounds"
    )
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
        db_table = "annotations_verificationround"
        constraints = [
            models.UniqueConstraint(
                fields=["image", "number"], condition=models.Q(region__isnull=True), name="uniq_round_number_per_image"
            ),
            models.UniqueConstraint(
                fields=["region", "number"],
                condition=models.Q(region__isnull=False),
                name="uniq_round_number_per_region",
            ),
            # One unfinished round per region at a time (two regions of a slide may both be in review).
            models.UniqueConstraint(
                fields=["region"],
                condition=models.Q(region__isnull=False, status__in=["open", "disputed"]),
                name="uniq_live_round_per_region",
            ),
        ]
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
        db_table = "annotations_review"
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
        db_table = "annotations_reviewdecision"
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
        db_table = "annotations_reviewcomment"
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
        db_table = "annotations_dispute"
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
        db_table = "annotations_pairagreement"
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
        db_table = "annotations_correctionrecord"
        indexes = [models.Index(fields=["image", "kind"])]
        ordering = ["id"]
