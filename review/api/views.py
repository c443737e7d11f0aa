"""Verification API: workflow transitions, assignments, work queue, blind reviews, adjudication,
agreement and correction analytics. Views parse, authorise, call one service, serialise.

The review endpoints of an image answer under ``images/{id}/regions/{region_id}/...`` too: the
same views, acting on the round of that region of a slide (``region_id`` in the URL)."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import selectors as access
from annotations.models import Image, Region
from core.api.parsing import request_user
from core.errors import NotFoundError, ServiceValidationError
from core.idempotency import idempotent_call
from review import selectors
from review.api import serializers as rs
from review.models import Review
from review.services import adjudication, reviews
from review.services import settings as review_settings
from review.services import workflow as review_workflow


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ServiceValidationError("Expected a JSON object.")
    return dict(request.data)


def _target(
    request: Request, image_id: int, region_id: int | None, capability: str = "view"
) -> tuple[Image, Region | None]:
    """The image, and the region of it the URL names (404 when it is not one of the image's)."""
    user = request_user(request)
    if region_id is None:
        return access.image_get_for_user(user=user, image_id=image_id, capability=capability), None
    region = access.region_get_for_user(user=user, image_id=image_id, region_id=region_id, capability=capability)
    return region.image, region


class TransitionView(APIView):
    @extend_schema(
        responses=rs.AllowedActionsOut, tags=rs.TAGS, summary="The image's status and the actions you may take"
    )
    def get(self, request: Request, image_id: int) -> Response:
        image = access.image_get_for_user(user=request_user(request), image_id=image_id)
        return Response(
            {
                "status": image.status,
                "annotator": image.annotator_id,
                "allowed_actions": review_workflow.transitions_allowed(user=request_user(request), image=image),
            }
        )

    @extend_schema(
        request=rs.TransitionIn,
        responses={200: rs.TransitionOut, 403: None, 409: None},
        tags=rs.TAGS,
        summary="Take a workflow action: start, submit, close_review, start_adjudication, reopen",
    )
    def post(self, request: Request, image_id: int) -> Response:
        image = access.image_get_for_user(user=request_user(request), image_id=image_id)
        action = _body(request).get("action")
        if not isinstance(action, str):
            raise ServiceValidationError("Invalid action.", {"action": "required"})
        image = review_workflow.image_transition(image=image, user=request_user(request), action=action)
        return Response(rs.transition_body(image, request_user(request)))


class RegionTransitionView(APIView):
    @extend_schema(
        responses=rs.RegionActionsOut, tags=rs.TAGS, summary="The region's status and the actions you may take"
    )
    def get(self, request: Request, image_id: int, region_id: int) -> Response:
        _, region = _target(request, image_id, region_id)
        assert region is not None
        return Response(rs.region_actions_body(region, request_user(request)))

    @extend_schema(
        request=rs.RegionTransitionIn,
        responses={200: rs.RegionTransitionOut, 400: None, 403: None, 409: None},
        tags=rs.TAGS,
        summary="Take a verification action on a slide's region: submit, close_review, start_adjudication, reopen",
    )
    def post(self, request: Request, image_id: int, region_id: int) -> Response:
        _, region = _target(request, image_id, region_id)
        assert region is not None
        action = _body(request).get("action")
        if not isinstance(action, str):
            raise ServiceValidationError("Invalid action.", {"action": "required"})
        region = review_workflow.region_transition(region=region, user=request_user(request), action=action)
        return Response(rs.region_transition_body(region, request_user(request)))


class AssignmentsView(APIView):
    @extend_schema(
        responses=rs.AssignmentsOut, tags=rs.TAGS, summary="Reviewers of the image (all rounds, no decisions)"
    )
    def get(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id)
        assignments = selectors.assignment_list(image=image, region=region)
        current = selectors.round_current(image=image, region=region)
        live = sum(1 for a in assignments if current and a.round_id == current.pk and a.status != "cancelled")
        open_slots = current.experts_required - live if current and current.status == "open" else 0
        return Response(
            {
                "round": rs.round_out(current),
                "open_slots": max(open_slots, 0),
                "assignments": [rs.assignment_out(a) for a in assignments],
            }
        )

    @extend_schema(
        request=rs.AssignIn, responses={201: rs.AssignmentOut}, tags=rs.TAGS, summary="Assign a reviewer by hand"
    )
    def post(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id, capability="manage")
        reviewer_id = _body(request).get("reviewer")
        reviewer = User.objects.filter(pk=reviewer_id).first() if isinstance(reviewer_id, int) else None
        if reviewer is None:
            raise ServiceValidationError("Unknown user.", {"reviewer": "must be the id of a user"})
        review = review_workflow.review_assign(
            image=image, actor=request_user(request), reviewer=reviewer, region=region
        )
        return Response(rs.assignment_out(review), status=status.HTTP_201_CREATED)


class AssignmentDetailView(APIView):
    @extend_schema(responses={204: None}, tags=rs.TAGS, summary="Cancel an open assignment (draft discarded)")
    def delete(self, request: Request, image_id: int, review_id: int) -> Response:
        image = access.image_get_for_user(user=request_user(request), image_id=image_id, capability="manage")
        review = Review.objects.filter(pk=review_id, image=image).select_related("image__project").first()
        if review is None:
            raise NotFoundError("No such assignment.")
        review_workflow.review_unassign(review=review, actor=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class QueueView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("project", int, required=True), OpenApiParameter("limit", int)],
        responses=rs.QueueOut,
        tags=rs.TAGS,
        summary="Your next images: to annotate, to review, to adjudicate, to assign",
    )
    def get(self, request: Request) -> Response:
        raw_project, raw_limit = request.query_params.get("project", ""), request.query_params.get("limit", "5")
        if not raw_project.isdigit():
            raise ServiceValidationError("Which project?", {"project": "required: a project id"})
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 50:
            raise ServiceValidationError("Invalid limit.", {"limit": "must be from 1 to 50"})
        project = access.project_get_for_user(user=request_user(request), project_id=int(raw_project))
        queue = selectors.work_queue(user=request_user(request), project=project, limit=int(raw_limit))
        body: dict[str, Any] = {"project": project.pk, "order": queue["order"]}
        for key in ("annotate", "review", "adjudicate", "assign"):
            body[key] = {"count": queue[key]["count"], "images": [rs.queue_image(i) for i in queue[key]["images"]]}
        return Response(body)


class MyReviewView(APIView):
    @extend_schema(responses=rs.ReviewOut, tags=rs.TAGS, summary="Your review (draft or submitted) of the latest round")
    def get(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id, capability="review")
        review = selectors.review_mine(image=image, user=request_user(request), region=region)
        if review is None:
            raise NotFoundError(f"You are not assigned to review this {'image' if region is None else 'region'}.")
        return Response(rs.review_out(review))

    @extend_schema(
        request=rs.DraftIn,
        responses=rs.ReviewOut,
        tags=rs.TAGS,
        summary="Replace your draft: decisions, added cells, comments",
    )
    def put(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id, capability="review")
        data = _body(request)
        reviews.review_draft_save(
            image=image,
            user=request_user(request),
            decisions=data.get("decisions"),
            added=data.get("added"),
            comments=data.get("comments"),
            region=region,
        )
        review = selectors.review_mine(image=image, user=request_user(request), region=region)
        assert review is not None
        return Response(rs.review_out(review))


class MyReviewSubmitView(APIView):
    @extend_schema(
        request=rs.SubmitIn,
        responses=rs.SubmitOut,
        tags=rs.TAGS,
        summary="Submit your review (idempotent; the last one runs the consensus)",
    )
    def post(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id, capability="review")
        accept_undecided = _body(request).get("accept_undecided", False)
        if not isinstance(accept_undecided, bool):
            raise ServiceValidationError("Invalid flag.", {"accept_undecided": "must be true or false"})
        _, submitted_now = reviews.review_submit(
            image=image, user=request_user(request), accept_undecided=accept_undecided, region=region
        )
        review = selectors.review_mine(image=image, user=request_user(request), region=region)
        assert review is not None
        image.refresh_from_db(fields=["status"])
        if region is not None:
            region.refresh_from_db(fields=["status"])
        return Response(
            rs.review_out(review)
            | {
                "submitted_now": submitted_now,
                "image_status": image.status,
                "region_status": None if region is None else region.status,
            }
        )


class ReviewsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("round", int)],
        responses=rs.ReviewsOut,
        tags=rs.TAGS,
        summary="Submitted reviews of a round (after submitting your own, or as adjudicator/admin)",
    )
    def get(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id)
        raw_round = request.query_params.get("round")
        if raw_round is not None and not raw_round.isdigit():
            raise ServiceValidationError("Invalid round.", {"round": "must be a round number"})
        chosen, reviews = selectors.reviews_visible(
            image=image, user=request_user(request), round_number=int(raw_round) if raw_round else None, region=region
        )
        assignments = [a for a in selectors.assignment_list(image=image, region=region) if a.round_id == chosen.pk]
        return Response(
            {
                "round": rs.round_out(chosen),
                "reviews": [rs.review_out(r) for r in reviews],
                "assignments": [rs.assignment_out(a) for a in assignments],
            }
        )


class AdjudicationView(APIView):
    @extend_schema(responses=rs.AdjudicationOut, tags=rs.TAGS, summary="Disputed cells with every expert's version")
    def get(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id)
        selectors.adjudicator_check(user=request_user(request), project=image.project)
        return Response(self._body(image, region))

    @extend_schema(
        request=rs.AdjudicationIn,
        responses={200: rs.AdjudicationOut, 409: None},
        tags=rs.TAGS,
        summary="Decide disputed cells",
    )
    def post(self, request: Request, image_id: int, region_id: int | None = None) -> Response:
        image, region = _target(request, image_id, region_id)
        decisions = _body(request).get("decisions")

        def run() -> tuple[int, dict[str, Any]]:
            adjudication.adjudication_decide(
                image=image, user=request_user(request), decisions=decisions, region=region
            )
            if region is not None:
                region.refresh_from_db(fields=["status"])
            return 200, self._body(image, region)

        code, body = idempotent_call(
            user=request_user(request),
            key=request.headers.get("Idempotency-Key"),
            scope=f"adjudication:{image.pk}" if region is None else f"adjudication:{image.pk}:region:{region.pk}",
            payload=decisions,
            run=run,
        )
        return Response(body, status=code)

    @staticmethod
    def _body(image: Image, region: Region | None = None) -> dict[str, Any]:
        current, disputes, names = selectors.disputes_for_adjudication(image=image, region=region)
        return {
            "image": image.pk,
            "region": None if region is None else region.pk,
            "status": image.status if region is None else region.status,
            "round": rs.round_out(current),
            "agreed": len(current.agreed) if current else 0,
            "disputes": [rs.dispute_out(d, names) for d in disputes],
        }


class VerificationSettingsView(APIView):
    @extend_schema(responses=rs.VerificationSettingsIO, tags=rs.TAGS, summary="K, quorum, IoU, adjudicators, AL order")
    def get(self, request: Request, project_id: int) -> Response:
        project = access.project_get_for_user(user=request_user(request), project_id=project_id)
        return Response(rs.settings_body(project))

    @extend_schema(request=rs.VerificationSettingsIO, responses=rs.VerificationSettingsIO, tags=rs.TAGS)
    def patch(self, request: Request, project_id: int) -> Response:
        project = access.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        review_settings.verification_settings_update(project=project, user=request_user(request), data=_body(request))
        return Response(rs.settings_body(project))


class ProjectAgreementView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("image", int)],
        responses=rs.AgreementOut,
        tags=rs.TAGS,
        summary="Agreement per expert pair, per expert (by month) and for the project (admins)",
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = access.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        image = _image_filter(request, project)
        return Response(selectors.agreement_summary(project=project, image=image))


class ImageAgreementView(APIView):
    @extend_schema(responses=rs.AgreementOut, tags=rs.TAGS, summary="Agreement on one image (admins and adjudicators)")
    def get(self, request: Request, image_id: int) -> Response:
        image = access.image_get_for_user(user=request_user(request), image_id=image_id)
        selectors.adjudicator_check(user=request_user(request), project=image.project)
        return Response(selectors.agreement_summary(project=image.project, image=image))


class CorrectionsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("image", int)],
        responses=rs.CorrectionsOut,
        tags=rs.TAGS,
        summary="How verified cells relate to model proposals, per model version",
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = access.project_get_for_user(user=request_user(request), project_id=project_id)
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
        raise NotFoundError("No such image.")
    return cast(Image, image)
