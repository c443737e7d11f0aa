"""Verification API: workflow transitions, assignments, work queue, blind reviews, adjudication,
agreement and correction analytics. Views parse, authorise, call one service, serialise."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import selectors, services
from annotations.api import serializers as s
from annotations.errors import ServiceValidationError
from annotations.models import Dispute, Image, Review, ReviewDecisionKind, VerificationRound

TAGS = ["verification"]


def _user(request: Request) -> User:
    return cast(User, request.user)


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ServiceValidationError("Expected a JSON object.")
    return dict(request.data)


# --- input and output shapes (documentation; validation happens in the services) -------------


class TransitionIn(serializers.Serializer):
    action = serializers.ChoiceField(choices=list(services.TRANSITIONS))


class TransitionOut(s.ImageOut):
    annotator = serializers.IntegerField(source="annotator_id", allow_null=True, read_only=True)
    allowed_actions = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta(s.ImageOut.Meta):
        fields = [*s.ImageOut.Meta.fields, "annotator", "allowed_actions"]


class AllowedActionsOut(serializers.Serializer):
    status = serializers.CharField()
    annotator = serializers.IntegerField(allow_null=True)
    allowed_actions = serializers.ListField(child=serializers.CharField())


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
    text = serializers.CharField(max_length=services.COMMENT_MAX_CHARS)


class DraftIn(serializers.Serializer):
    decisions = DecisionIO(many=True, required=False)
    added = AddedIO(many=True, required=False)
    comments = CommentIO(many=True, required=False)


class ReviewOut(serializers.Serializer):
    id = serializers.IntegerField()
    image = serializers.IntegerField()
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
    status = serializers.CharField()
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


# --- serialisation helpers ----------------------------------------------------------------


def _round_out(verification_round: VerificationRound | None) -> dict[str, Any] | None:
    if verification_round is None:
        return None
    return {
        "number": verification_round.number,
        "status": verification_round.status,
        "experts_required": verification_round.experts_required,
        "quorum": verification_round.quorum,
        "match_iou": verification_round.match_iou,
        "base_revision": verification_round.base_revision,
        "summary": verification_round.summary,
    }


def _assignment_out(review: Review) -> dict[str, Any]:
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


def _review_out(review: Review) -> dict[str, Any]:
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


def _queue_image(image: Image) -> dict[str, Any]:
    return {
        "id": image.pk,
        "file_name": image.file_name,
        "status": image.status,
        "thumbnail_url": s.ImageOut().get_thumbnail_url(image),
    }


def _dispute_out(dispute: Dispute, names: dict[int, str]) -> dict[str, Any]:
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


def _transition_body(image: Image, user: User) -> dict[str, Any]:
    body = dict(s.ImageOut(image).data)
    return body | {
        "annotator": image.annotator_id,
        "allowed_actions": services.transitions_allowed(user=user, image=image),
    }


def _settings_body(project: Any) -> dict[str, Any]:
    stored = selectors.verification_settings_get(project=project)
    return {
        "experts_required": project.experts_required,
        "quorum": project.quorum,
        "match_iou": project.match_iou,
        "adjudicators": selectors.adjudicator_ids(project=project) if stored.pk else [],
        "active_learning_order": stored.active_learning_order,
    }


# --- workflow ------------------------------------------------------------------------------


class TransitionView(APIView):
    @extend_schema(responses=AllowedActionsOut, tags=TAGS, summary="The image's status and the actions you may take")
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id)
        return Response(
            {
                "status": image.status,
                "annotator": image.annotator_id,
                "allowed_actions": services.transitions_allowed(user=_user(request), image=image),
            }
        )

    @extend_schema(
        request=TransitionIn,
        responses={200: TransitionOut, 403: None, 409: None},
        tags=TAGS,
        summary="Take a workflow action: start, submit, close_review, start_adjudication, reopen",
    )
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id)
        action = _body(request).get("action")
        if not isinstance(action, str):
            raise ServiceValidationError("Invalid action.", {"action": "required"})
        image = services.image_transition(image=image, user=_user(request), action=action)
        return Response(_transition_body(image, _user(request)))


class AssignmentsView(APIView):
    @extend_schema(responses=AssignmentsOut, tags=TAGS, summary="Reviewers of the image (all rounds, no decisions)")
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id)
        assignments = selectors.assignment_list(image=image)
        current = selectors.round_current(image=image)
        live = sum(1 for a in assignments if current and a.round_id == current.pk and a.status != "cancelled")
        open_slots = current.experts_required - live if current and current.status == "open" else 0
        return Response(
            {
                "round": _round_out(current),
                "open_slots": max(open_slots, 0),
                "assignments": [_assignment_out(a) for a in assignments],
            }
        )

    @extend_schema(request=AssignIn, responses={201: AssignmentOut}, tags=TAGS, summary="Assign a reviewer by hand")
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id, capability="manage")
        reviewer_id = _body(request).get("reviewer")
        reviewer = User.objects.filter(pk=reviewer_id).first() if isinstance(reviewer_id, int) else None
        if reviewer is None:
            raise ServiceValidationError("Unknown user.", {"reviewer": "must be the id of a user"})
        review = services.review_assign(image=image, actor=_user(request), reviewer=reviewer)
        return Response(_assignment_out(review), status=status.HTTP_201_CREATED)


class AssignmentDetailView(APIView):
    @extend_schema(responses={204: None}, tags=TAGS, summary="Cancel an open assignment (draft discarded)")
    def delete(self, request: Request, image_id: int, review_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id, capability="manage")
        review = Review.objects.filter(pk=review_id, image=image).select_related("image__project").first()
        if review is None:
            raise Http404("No such assignment.")
        services.review_unassign(review=review, actor=_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class QueueView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("project", int, required=True), OpenApiParameter("limit", int)],
        responses=QueueOut,
        tags=TAGS,
        summary="Your next images: to annotate, to review, to adjudicate, to assign",
    )
    def get(self, request: Request) -> Response:
        raw_project, raw_limit = request.query_params.get("project", ""), request.query_params.get("limit", "5")
        if not raw_project.isdigit():
            raise ServiceValidationError("Which project?", {"project": "required: a project id"})
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 50:
            raise ServiceValidationError("Invalid limit.", {"limit": "must be from 1 to 50"})
        project = selectors.project_get_for_user(user=_user(request), project_id=int(raw_project))
        queue = selectors.work_queue(user=_user(request), project=project, limit=int(raw_limit))
        body: dict[str, Any] = {"project": project.pk, "order": queue["order"]}
        for key in ("annotate", "review", "adjudicate", "assign"):
            body[key] = {"count": queue[key]["count"], "images": [_queue_image(i) for i in queue[key]["images"]]}
        return Response(body)


# --- reviews -------------------------------------------------------------------------------


class MyReviewView(APIView):
    @extend_schema(responses=ReviewOut, tags=TAGS, summary="Your review (draft or submitted) of the latest round")
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id, capability="review")
        review = selectors.review_mine(image=image, user=_user(request))
        if review is None:
            raise Http404("You are not assigned to review this image.")
        return Response(_review_out(review))

    @extend_schema(
        request=DraftIn, responses=ReviewOut, tags=TAGS, summary="Replace your draft: decisions, added cells, comments"
    )
    def put(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id, capability="review")
        data = _body(request)
        services.review_draft_save(
            image=image,
            user=_user(request),
            decisions=data.get("decisions"),
            added=data.get("added"),
            comments=data.get("comments"),
        )
        review = selectors.review_mine(image=image, user=_user(request))
        assert review is not None
        return Response(_review_out(review))


class MyReviewSubmitView(APIView):
    @extend_schema(
        request=SubmitIn,
        responses=SubmitOut,
        tags=TAGS,
        summary="Submit your review (idempotent; the last one runs the consensus)",
    )
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id, capability="review")
        accept_undecided = _body(request).get("accept_undecided", False)
        if not isinstance(accept_undecided, bool):
            raise ServiceValidationError("Invalid flag.", {"accept_undecided": "must be true or false"})
        _, submitted_now = services.review_submit(image=image, user=_user(request), accept_undecided=accept_undecided)
        review = selectors.review_mine(image=image, user=_user(request))
        assert review is not None
        image.refresh_from_db(fields=["status"])
        return Response(_review_out(review) | {"submitted_now": submitted_now, "image_status": image.status})


class ReviewsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("round", int)],
        responses=ReviewsOut,
        tags=TAGS,
        summary="Submitted reviews of a round (after submitting your own, or as adjudicator/admin)",
    )
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id)
        raw_round = request.query_params.get("round")
        if raw_round is not None and not raw_round.isdigit():
            raise ServiceValidationError("Invalid round.", {"round": "must be a round number"})
        chosen, reviews = selectors.reviews_visible(
            image=image, user=_user(request), round_number=int(raw_round) if raw_round else None
        )
        assignments = [a for a in selectors.assignment_list(image=image) if a.round_id == chosen.pk]
        return Response(
            {
                "round": _round_out(chosen),
                "reviews": [_review_out(r) for r in reviews],
                "assignments": [_assignment_out(a) for a in assignments],
            }
        )


# --- adjudication --------------------------------------------------------------------------


class AdjudicationView(APIView):
    @extend_schema(responses=AdjudicationOut, tags=TAGS, summary="Disputed cells with every expert's version")
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id)
        selectors.adjudicator_check(user=_user(request), project=image.project)
        return Response(self._body(image))

    @extend_schema(
        request=AdjudicationIn, responses={200: AdjudicationOut, 409: None}, tags=TAGS, summary="Decide disputed cells"
    )
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id)
        decisions = _body(request).get("decisions")

        def run() -> tuple[int, dict[str, Any]]:
            services.adjudication_decide(image=image, user=_user(request), decisions=decisions)
            return 200, self._body(image)

        code, body = services.idempotent_call(
            user=_user(request),
            key=request.headers.get("Idempotency-Key"),
            scope=f"adjudication:{image.pk}",
            payload=decisions,
            run=run,
        )
        return Response(body, status=code)

    @staticmethod
    def _body(image: Image) -> dict[str, Any]:
        current, disputes, names = selectors.disputes_for_adjudication(image=image)
        return {
            "image": image.pk,
            "status": image.status,
            "round": _round_out(current),
            "agreed": len(current.agreed) if current else 0,
            "disputes": [_dispute_out(d, names) for d in disputes],
        }


# --- settings and analytics ----------------------------------------------------------------


class VerificationSettingsView(APIView):
    @extend_schema(responses=VerificationSettingsIO, tags=TAGS, summary="K, quorum, IoU, adjudicators, AL order")
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=_user(request), project_id=project_id)
        return Response(_settings_body(project))

    @extend_schema(request=VerificationSettingsIO, responses=VerificationSettingsIO, tags=TAGS)
    def patch(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=_user(request), project_id=project_id, capability="manage")
        services.verification_settings_update(project=project, user=_user(request), data=_body(request))
        return Response(_settings_body(project))


class ProjectAgreementView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("image", int)],
        responses=AgreementOut,
        tags=TAGS,
        summary="Agreement per expert pair, per expert (by month) and for the project (admins)",
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=_user(request), project_id=project_id, capability="manage")
        image = _image_filter(request, project)
        return Response(selectors.agreement_summary(project=project, image=image))


class ImageAgreementView(APIView):
    @extend_schema(responses=AgreementOut, tags=TAGS, summary="Agreement on one image (admins and adjudicators)")
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id)
        selectors.adjudicator_check(user=_user(request), project=image.project)
        return Response(selectors.agreement_summary(project=image.project, image=image))


class CorrectionsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("image", int)],
        responses=CorrectionsOut,
        tags=TAGS,
        summary="How verified cells relate to model proposals, per model version",
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=_user(request), project_id=project_id)
        image = _image_filter(request, project)
        return Response(selectors.corrections_summary(project=project, image=image))


def _image_filter(request: Request, project: Any) -> Image | None:
    raw = request.query_params.get("image")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ServiceValidationError("Invalid filter.", {"image": "must be an image id"})
    image = project.images.filter(pk=int(raw)).first()
    if image is None:
        raise Http404("No such image.")
    return cast(Image, image)
