"""Input and output shapes of the verification API (documentation for the OpenAPI schema; the
services validate), and the functions that build the output bodies."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

from annotations.api import serializers as s
from annotations.models import Image, Layer, Region
from annotations.services import workflow
from review import selectors
from review.models import Dispute, Review, ReviewDecisionKind, VerificationRound
from review.services import reviews
from review.services import workflow as review_workflow

TAGS = ["verification"]


class TransitionIn(serializers.Serializer):
    action = serializers.ChoiceField(choices=list(workflow.TRANSITIONS))


class TransitionOut(s.ImageOut):
    annotator = serializers.IntegerField(source="annotator_id", allow_null=True, read_only=True)
    allowed_actions = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta(s.ImageOut.Meta):
        fields = [*s.ImageOut.Meta.fields, "annotator", "allowed_actions"]


class AllowedActionsOut(serializers.Serializer):
    status = serializers.CharField()
    annotator = serializers.IntegerField(allow_null=True)
    allowed_actions = serializers.ListField(child=serializers.CharField())


class RegionTransitionIn(serializers.Serializer):
    action = serializers.ChoiceField(choices=list(workflow.REGION_TRANSITIONS))


class RegionActionsOut(serializers.Serializer):
    region = serializers.IntegerField()
    status = serializers.CharField(help_text="The region's status (the image workflow's values).")
    image_status = serializers.CharField()
    allowed_actions = serializers.ListField(child=serializers.CharField())


class RegionTransitionOut(s.RegionOut):
    image_status = serializers.CharField(source="image.status", read_only=True)
    allowed_actions = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta(s.RegionOut.Meta):
        fields = [*s.RegionOut.Meta.fields, "image_status", "allowed_actions"]
        read_only_fields = fields


class AssignmentOut(serializers.Serializer):
    id = serializers.IntegerField()
    round = serializers.IntegerField()
    reviewer = serializers.IntegerField()
    username = serializers.CharField()
    status = serializers.CharField()
    manual = serializers.BooleanField()
    assigned_by = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    cancelled_at = serializers.DateTimeField(allow_null=True)
    cancel_reason = serializers.CharField()


class RoundOut(serializers.Serializer):
    number = serializers.IntegerField()
    region = serializers.IntegerField(
        allow_null=True, help_text="The slide's region the round verifies; null: the whole image."
    )
    status = serializers.CharField()
    experts_required = serializers.IntegerField()
    quorum = serializers.IntegerField()
    match_iou = serializers.FloatField()
    base_revision = serializers.IntegerField()
    summary = serializers.DictField()


class AssignmentsOut(serializers.Serializer):
    round = RoundOut(allow_null=True)
    open_slots = serializers.IntegerField()
    assignments = AssignmentOut(many=True)


class AssignIn(serializers.Serializer):
    reviewer = serializers.IntegerField(help_text="User id of an expert or admin of the project.")


class DecisionIO(serializers.Serializer):
    cell_id = serializers.IntegerField()
    decision = serializers.ChoiceField(choices=["accept", "reject", "edit"])
    polygon = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()), required=False, help_text="Edits only."
    )
    class_id = serializers.IntegerField(required=False, help_text="Edits only: a corrected class.")


class AddedIO(serializers.Serializer):
    class_id = serializers.IntegerField()
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))


class CommentIO(serializers.Serializer):
    cell_id = serializers.IntegerField(required=False, allow_null=True, help_text="Empty: on the image.")
    text = serializers.CharField(max_length=reviews.COMMENT_MAX_CHARS)


class DraftIn(serializers.Serializer):
    decisions = DecisionIO(many=True, required=False)
    added = AddedIO(many=True, required=False)
    comments = CommentIO(many=True, required=False)


class ReviewOut(serializers.Serializer):
    id = serializers.IntegerField()
    image = serializers.IntegerField()
    region = serializers.IntegerField(allow_null=True, help_text="The region under review; null: the whole image.")
    round = serializers.IntegerField()
    reviewer = serializers.IntegerField()
    username = serializers.CharField()
    status = serializers.CharField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    counts = serializers.DictField(child=serializers.IntegerField())
    decisions = DecisionIO(many=True)
    added = AddedIO(many=True)
    comments = CommentIO(many=True)


class SubmitIn(serializers.Serializer):
    accept_undecided = serializers.BooleanField(required=False, default=False)


class SubmitOut(ReviewOut):
    submitted_now = serializers.BooleanField(help_text="False when the review was already submitted.")
    image_status = serializers.CharField()
    region_status = serializers.CharField(allow_null=True, help_text="For a region's review: the region's status.")


class ReviewsOut(serializers.Serializer):
    round = RoundOut()
    reviews = ReviewOut(many=True)
    assignments = AssignmentOut(many=True)


class VersionOut(serializers.Serializer):
    review_id = serializers.IntegerField()
    reviewer_id = serializers.IntegerField()
    username = serializers.CharField()
    decision = serializers.CharField(help_text="accept, edit, add, reject or absent")
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), allow_null=True)
    class_id = serializers.IntegerField(allow_null=True)


class DisputeOut(serializers.Serializer):
    id = serializers.IntegerField()
    reason = serializers.CharField()
    origin_cell_id = serializers.IntegerField(allow_null=True)
    annotation = serializers.DictField(allow_null=True)
    versions = VersionOut(many=True)
    candidate = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), allow_null=True)
    candidate_class_id = serializers.IntegerField(allow_null=True)
    status = serializers.CharField()
    choice = serializers.CharField()
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), allow_null=True)
    class_id = serializers.IntegerField(allow_null=True)
    resolved_by = serializers.IntegerField(allow_null=True)
    resolved_at = serializers.DateTimeField(allow_null=True)


class AdjudicationOut(serializers.Serializer):
    image = serializers.IntegerField()
    region = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(help_text="The image's status, or the region's for a region's round.")
    round = RoundOut(allow_null=True)
    agreed = serializers.IntegerField(help_text="Cells verified by consensus, not in dispute.")
    disputes = DisputeOut(many=True)


class AdjudicationDecisionIn(serializers.Serializer):
    dispute_id = serializers.IntegerField()
    choice = serializers.CharField(help_text='A review id, "annotation", "own" (with polygon) or "reject".')
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), required=False)
    class_id = serializers.IntegerField(required=False)


class AdjudicationIn(serializers.Serializer):
    decisions = AdjudicationDecisionIn(many=True)


class QueueImageOut(serializers.Serializer):
    id = serializers.IntegerField()
    file_name = serializers.CharField()
    status = serializers.CharField()
    thumbnail_url = serializers.CharField()
    reason = serializers.CharField(
        help_text="Why the image stands here: in_progress (your image), uncertainty (value: mean proposal "
        "score), no_proposals, disagreement_image / disagreement_slide (value: past mean pair F1 of the image "
        "/ its slide), no_history, upload_order, assigned (oldest assignment first), disputed (oldest first), "
        "open_slots (value: reviewers missing)."
    )
    reason_value = serializers.FloatField(allow_null=True)
    region = serializers.IntegerField(
        allow_null=True, help_text="A slide's region to review, adjudicate or staff; null: the whole image."
    )
    region_name = serializers.CharField(allow_null=True)
    region_status = serializers.CharField(allow_null=True)


class QueueSectionOut(serializers.Serializer):
    count = serializers.IntegerField()
    images = QueueImageOut(many=True)


class QueueOut(serializers.Serializer):
    project = serializers.IntegerField()
    order = serializers.CharField()
    annotate = QueueSectionOut()
    review = QueueSectionOut()
    adjudicate = QueueSectionOut()
    assign = QueueSectionOut()


class VerificationSettingsIO(serializers.Serializer):
    experts_required = serializers.IntegerField(required=False)
    quorum = serializers.IntegerField(required=False, allow_null=True)
    match_iou = serializers.FloatField(required=False)
    adjudicators = serializers.ListField(child=serializers.IntegerField(), required=False)
    active_learning_order = serializers.ChoiceField(choices=["none", "uncertainty", "disagreement"], required=False)


AgreementOut = inline_serializer(
    "AgreementOut",
    {
        "summary": serializers.DictField(),
        "pairs": serializers.ListField(child=serializers.DictField()),
        "experts": serializers.ListField(child=serializers.DictField()),
    },
)


CorrectionsOut = inline_serializer(
    "CorrectionsOut",
    {"model_versions": serializers.ListField(child=serializers.DictField()), "totals": serializers.DictField()},
)


def round_out(verification_round: VerificationRound | None) -> dict[str, Any] | None:
    if verification_round is None:
        return None
    return {
        "number": verification_round.number,
        "region": verification_round.region_id,
        "status": verification_round.status,
        "experts_required": verification_round.experts_required,
        "quorum": verification_round.quorum,
        "match_iou": verification_round.match_iou,
        "base_revision": verification_round.base_revision,
        "summary": verification_round.summary,
    }


def assignment_out(review: Review) -> dict[str, Any]:
    return {
        "id": review.pk,
        "round": review.round.number,
        "reviewer": review.reviewer_id,
        "username": review.reviewer.username,
        "status": review.status,
        "manual": review.manual,
        "assigned_by": review.assigned_by_id,
        "created_at": review.created_at,
        "submitted_at": review.submitted_at,
        "cancelled_at": review.cancelled_at,
        "cancel_reason": review.cancel_reason,
    }


def review_out(review: Review) -> dict[str, Any]:
    """A review with its decisions (uses the prefetched decisions and comments)."""
    decisions: list[dict[str, Any]] = []
    added: list[dict[str, Any]] = []
    for d in review.decisions.all():
        if d.decision == ReviewDecisionKind.ADD:
            added.append({"id": d.pk, "class_id": d.cell_class_id, "polygon": d.polygon})
        else:
            item: dict[str, Any] = {"cell_id": d.cell_id, "decision": d.decision}
            if d.decision == ReviewDecisionKind.EDIT:
                item |= {"polygon": d.polygon, "class_id": d.cell_class_id}
            decisions.append(item)
    return {
        "id": review.pk,
        "image": review.image_id,
        "region": review.round.region_id,
        "round": review.round.number,
        "reviewer": review.reviewer_id,
        "username": review.reviewer.username,
        "status": review.status,
        "submitted_at": review.submitted_at,
        "counts": {
            "accepted": review.n_accept,
            "rejected": review.n_reject,
            "edited": review.n_edit,
            "added": review.n_add,
        },
        "decisions": decisions,
        "added": added,
        "comments": [{"cell_id": c.cell_id, "text": c.text, "created_at": c.created_at} for c in review.comments.all()],
    }


def queue_image(image: Image) -> dict[str, Any]:
    region: Region | None = getattr(image, "queue_region", None)
    return {
        "region": None if region is None else region.pk,
        "region_name": None if region is None else region.name,
        "region_status": None if region is None else region.status,
        "id": image.pk,
        "file_name": image.file_name,
        "status": image.status,
        "thumbnail_url": s.ImageOut().get_thumbnail_url(image),
        "reason": getattr(image, "queue_reason", ("upload_order", None))[0],
        "reason_value": getattr(image, "queue_reason", ("upload_order", None))[1],
    }


def dispute_out(dispute: Dispute, names: dict[int, str]) -> dict[str, Any]:
    return {
        "id": dispute.pk,
        "reason": dispute.reason,
        "origin_cell_id": dispute.origin_cell_id,
        "annotation": dispute.annotation,
        "versions": [v | {"username": names.get(v["reviewer_id"], "")} for v in dispute.versions],
        "candidate": dispute.candidate,
        "candidate_class_id": dispute.candidate_class_id,
        "status": dispute.status,
        "choice": dispute.choice,
        "polygon": dispute.polygon,
        "class_id": dispute.cell_class_id,
        "resolved_by": dispute.resolved_by_id,
        "resolved_at": dispute.resolved_at,
    }


def transition_body(image: Image, user: User) -> dict[str, Any]:
    if getattr(image, "cell_count", None) is None:
        image.cell_count = image.cells.filter(layer=Layer.ANNOTATION).count()  # type: ignore[attr-defined]
    body = dict(s.ImageOut(image).data)
    return body | {
        "annotator": image.annotator_id,
        "allowed_actions": review_workflow.transitions_allowed(user=user, image=image),
    }


def settings_body(project: Any) -> dict[str, Any]:
    stored = selectors.verification_settings_get(project=project)
    return {
        "experts_required": project.experts_required,
        "quorum": project.quorum,
        "match_iou": project.match_iou,
        "adjudicators": selectors.adjudicator_ids(project=project) if stored.pk else [],
        "active_learning_order": stored.active_learning_order,
    }


def region_actions_body(region: Region, user: User) -> dict[str, Any]:
    return {
        "region": region.pk,
        "status": region.status,
        "image_status": region.image.status,
        "allowed_actions": review_workflow.transitions_allowed(user=user, image=region.image, region=region),
    }


def region_transition_body(region: Region, user: User) -> dict[str, Any]:
    return dict(s.RegionOut(region).data) | {
        "image_status": region.image.status,
        "allowed_actions": review_workflow.transitions_allowed(user=user, image=region.image, region=region),
    }
