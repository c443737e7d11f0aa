"""The verification actions on an image (submit, close a round early, start adjudication, reopen)
with their role rules, and the assignment of experts to a round."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from annotations import selectors as access
from annotations.models import (
    Cell,
    Image,
    ImageStatus,
    Layer,
    Project,
    Role,
)
from annotations.services.audit import audit_record
from annotations.services.workflow import (
    TRANSITIONS,
    annotation_write_started,
    image_lock,
    image_status_set,
    status_label,
)
from core.errors import ConflictError, PermissionDeniedError, ServiceValidationError
from core.events import event_emit
from review import selectors
from review.models import (
    CorrectionRecord,
    Review,
    ReviewStatus,
    RoundStatus,
    VerificationRound,
)
from review.services.rounds import round_consensus


def capability_require(user: User, project: Project, capability: str, why: str) -> None:
    if not access.user_can(user=user, project=project, capability=capability):
        raise PermissionDeniedError(why)


def _transition_allowed(*, user: User, image: Image, action: str) -> str | None:
    """Why ``user`` may not take ``action`` because of their role (None: they may)."""
    project = image.project
    if action == "start":
        ok = access.user_can(user=user, project=project, capability="annotate")
        return None if ok else "Your role may not annotate."
    if action == "submit":
        if not access.user_can(user=user, project=project, capability="annotate"):
            return "Your role may not annotate."
        if image.annotator_id not in (None, user.pk) and not access.user_can(
            user=user, project=project, capability="manage"
        ):
            return "Only the image's annotator or a project admin may submit it."
        return None
    if action == "start_adjudication":
        return None if selectors.may_adjudicate(user=user, project=project) else "You may not adjudicate."
    # close_review, reopen
    ok = access.user_can(user=user, project=project, capability="manage")
    return None if ok else "Only a project admin may do this."


def transitions_allowed(*, user: User, image: Image) -> list[str]:
    """The actions ``user`` may take on ``image`` now: role and state, and for ``close_review``
    the quorum of submitted reviews (one query, only when the rest allows it)."""
    return [
        action
        for action, (sources, _) in TRANSITIONS.items()
        if image.status in sources
        and _transition_allowed(user=user, image=image, action=action) is None
        and (action != "close_review" or _quorum_reached(image))
    ]


def _quorum_reached(image: Image) -> bool:
    current = selectors.round_current(image=image)
    if current is None or current.status != RoundStatus.OPEN:
        return False
    return current.reviews.filter(status=ReviewStatus.SUBMITTED).count() >= current.quorum


def image_transition(*, image: Image, user: User, action: str) -> Image:
    """Take one workflow action on an image; the only public way to change an image's status.

    Actions: ``start`` (new/pre-segmented -> annotating, the caller becomes the annotator),
    ``submit`` (annotating -> submitted -> in review: a new round, K experts assigned),
    ``close_review`` (admin: finish a round early with the reviews submitted so far, at least
    the quorum), ``start_adjudication`` (disputed -> adjudication) and ``reopen`` (admin: any
    state from submitted on -> annotating; open reviews are cancelled and the verified layer is
    withdrawn). 400 for an unknown action, 403 for the wrong role, 409 for the wrong state;
    nothing changes on refusal.
    """
    if action not in TRANSITIONS:
        raise ServiceValidationError("Unknown action.", {"action": f"must be one of {', '.join(TRANSITIONS)}"})
    refusal = _transition_allowed(user=user, image=image, action=action)
    if refusal is not None:
        raise PermissionDeniedError(refusal)
    with transaction.atomic():
        locked = image_lock(image)
        sources, target = TRANSITIONS[action]
        if locked.status not in sources:
            allowed = ", ".join(status_label(s) for s in sorted(sources))
            raise ConflictError(
                f"Cannot {action.replace('_', ' ')} an image that is {status_label(locked.status)} "
                f"(allowed from: {allowed}).",
                {"status": locked.status, "allowed_actions": transitions_allowed(user=user, image=locked)},
            )
        if action == "start":
            annotation_write_started(image=locked, user=user)
        elif action == "submit":
            _image_submit(image=locked, user=user)
        elif action == "close_review":
            _round_close_early(image=locked, user=user)
        elif action == "reopen":
            _image_reopen(image=locked, user=user)
        else:
            assert target is not None
            image_status_set(image=locked, to=target, actor=user, action=action)
    image.refresh_from_db()
    return image


def _image_submit(*, image: Image, user: User) -> None:
    project = image.project
    k = project.experts_required
    previous = image.verification_rounds.order_by("-number").values_list("number", flat=True).first() or 0
    verification_round = VerificationRound.objects.create(
        image=image,
        number=previous + 1,
        experts_required=k,
        quorum=min(project.quorum or k, k),
        match_iou=project.match_iou,
        base_revision=image.revision,
        started_by=user,
    )
    image_status_set(image=image, to=ImageStatus.SUBMITTED, actor=user, action="submit")
    event_emit(
        project_id=image.project_id,
        event="image.submitted",
        data={"image": image.pk, "round": verification_round.number, "submitted_by": user.pk},
    )
    _reviews_fill(image=image, verification_round=verification_round, actor=user)


def _reviews_fill(*, image: Image, verification_round: VerificationRound, actor: User | None) -> list[Review]:
    """Assign experts automatically up to K: project experts, never the image's annotator nor
    anyone already assigned in this round, fewest open reviews in the project first (then fewest
    reviews done, then user id). An image with at least one reviewer is in review; open slots
    are left for an admin to fill by hand and are audited as ``review.unstaffed``."""
    live = verification_round.reviews.exclude(status=ReviewStatus.CANCELLED).count()
    needed = verification_round.experts_required - live
    created: list[Review] = []
    if needed > 0:
        project = image.project
        taken = set(verification_round.reviews.values_list("reviewer_id", flat=True))
        if image.annotator_id is not None:
            taken.add(image.annotator_id)
        in_project = Q(reviews__image__project=project)
        candidates = list(
            User.objects.filter(memberships__project=project, memberships__role=Role.EXPERT, is_active=True)
            .exclude(pk__in=taken)
            .annotate(
                open_load=Count("reviews", filter=in_project & Q(reviews__status=ReviewStatus.ASSIGNED), distinct=True),
                done=Count("reviews", filter=in_project & Q(reviews__status=ReviewStatus.SUBMITTED), distinct=True),
            )
            .order_by("open_load", "done", "id")[:needed]
        )
        created = [
            Review.objects.create(round=verification_round, image=image, reviewer=expert, assigned_by=None)
            for expert in candidates
        ]
        for review in created:
            audit_record(
                project=project,
                image=image,
                actor=actor,
                action="review.assign",
                target=review.reviewer.username,
                after={"review": review.pk, "reviewer": review.reviewer_id, "manual": False},
            )
        if len(created) < needed:
            audit_record(
                project=project,
                image=image,
                actor=actor,
                action="review.unstaffed",
                after={"round": verification_round.number, "open_slots": needed - len(created)},
            )
    if image.status == ImageStatus.SUBMITTED and live + len(created) > 0:
        image_status_set(image=image, to=ImageStatus.IN_REVIEW, actor=actor, action="assign")
    return created


def _round_open(image: Image) -> VerificationRound:
    current = selectors.round_current(image=image)
    if current is None or current.status != RoundStatus.OPEN:
        raise ConflictError("The image has no open review round.", {"status": image.status})
    return current


def review_assign(*, image: Image, actor: User, reviewer: User) -> Review:
    """An admin assigns ``reviewer`` (an expert or admin of the project, not the image's
    annotator) to the image's open round, up to K reviewers."""
    capability_require(actor, image.project, "manage", "Only a project admin may assign reviewers.")
    with transaction.atomic():
        locked = image_lock(image)
        if locked.status not in (ImageStatus.SUBMITTED, ImageStatus.IN_REVIEW):
            raise ConflictError(
                f"Reviewers are assigned to submitted images; this one is {status_label(locked.status)}.",
                {"status": locked.status},
            )
        verification_round = _round_open(locked)
        if not access.user_can(user=reviewer, project=locked.project, capability="review"):
            raise ServiceValidationError("Not a reviewer.", {"reviewer": "must be an expert or admin of this project"})
        if reviewer.pk == locked.annotator_id:
            raise ServiceValidationError("Not independent.", {"reviewer": "the image's annotator cannot review it"})
        live = verification_round.reviews.exclude(status=ReviewStatus.CANCELLED)
        if live.filter(reviewer=reviewer).exists():
            raise ServiceValidationError("Already assigned.", {"reviewer": "already reviews this image"})
        if live.count() >= verification_round.experts_required:
            raise ConflictError(
                f"The image already has {verification_round.experts_required} reviewers; unassign one first.",
                {"status": locked.status},
            )
        review = Review.objects.create(
            round=verification_round, image=locked, reviewer=reviewer, manual=True, assigned_by=actor
        )
        audit_record(
            project=locked.project,
            image=locked,
            actor=actor,
            action="review.assign",
            target=reviewer.username,
            after={"review": review.pk, "reviewer": reviewer.pk, "manual": True},
        )
        if locked.status == ImageStatus.SUBMITTED:
            image_status_set(image=locked, to=ImageStatus.IN_REVIEW, actor=actor, action="assign")
    return review


def _review_cancel(*, review: Review, actor: User | None, reason: str) -> None:
    """Cancel an open assignment; its draft (decisions, comments) is discarded."""
    discarded = {"decisions": review.decisions.count(), "comments": review.comments.count()}
    review.decisions.all().delete()
    review.comments.all().delete()
    review.status = ReviewStatus.CANCELLED
    review.cancelled_at = timezone.now()
    review.cancel_reason = reason[:200]
    review.save(update_fields=["status", "cancelled_at", "cancel_reason", "updated_at"])
    audit_record(
        project=review.image.project,
        image=review.image,
        actor=actor,
        action="review.cancel",
        target=str(review.reviewer_id),
        before={"status": ReviewStatus.ASSIGNED, "draft": discarded},
        after={"status": ReviewStatus.CANCELLED, "reason": reason},
    )


def review_unassign(*, review: Review, actor: User) -> None:
    """An admin cancels an open assignment (the draft is discarded; the slot is left open)."""
    capability_require(actor, review.image.project, "manage", "Only a project admin may unassign reviewers.")
    with transaction.atomic():
        image_lock(review.image)
        locked = Review.objects.select_for_update().select_related("image__project").get(pk=review.pk)
        if locked.status != ReviewStatus.ASSIGNED:
            raise ConflictError(f"This review is {locked.status}; only open assignments can be cancelled.")
        _review_cancel(review=locked, actor=actor, reason="unassigned by an admin")


def reviews_release_if_ineligible(*, project: Project, user: User) -> int:
    """Cancel ``user``'s open reviews in ``project`` once they may no longer review (removed from
    the project, or their role lost the review capability): drafts are discarded and each image
    is reassigned to another expert when one is available. Submitted reviews stand."""
    if access.user_can(user=user, project=project, capability="review"):
        return 0
    open_reviews = list(
        Review.objects.filter(reviewer=user, image__project=project, status=ReviewStatus.ASSIGNED).select_related(
            "image__project", "round"
        )
    )
    with transaction.atomic():
        for review in open_reviews:
            image = image_lock(review.image)
            _review_cancel(review=review, actor=None, reason="reviewer no longer an expert of the project")
            if review.round.status == RoundStatus.OPEN:
                _reviews_fill(image=image, verification_round=review.round, actor=None)
    return len(open_reviews)


def _round_close_early(*, image: Image, user: User) -> None:
    verification_round = _round_open(image)
    submitted = verification_round.reviews.filter(status=ReviewStatus.SUBMITTED).count()
    if submitted < verification_round.quorum:
        raise ConflictError(
            f"Only {submitted} review(s) submitted; closing needs at least the quorum ({verification_round.quorum}).",
            {"status": image.status},
        )
    for review in verification_round.reviews.filter(status=ReviewStatus.ASSIGNED).select_related("image__project"):
        _review_cancel(review=review, actor=user, reason="round closed early by an admin")
    round_consensus(image=image, verification_round=verification_round, actor=user)


def _image_reopen(*, image: Image, user: User) -> None:
    """Back to annotating: open reviews are cancelled (drafts discarded), an unfinished round is
    cancelled, and the verified layer and its correction records are withdrawn (the reviews,
    disputes and agreement of earlier rounds stay as history)."""
    current = selectors.round_current(image=image)
    if current is not None:
        for review in current.reviews.filter(status=ReviewStatus.ASSIGNED).select_related("image__project"):
            _review_cancel(review=review, actor=user, reason="image reopened")
        if current.status in (RoundStatus.OPEN, RoundStatus.DISPUTED):
            current.status = RoundStatus.CANCELLED
            current.closed_at = timezone.now()
            current.save(update_fields=["status", "closed_at"])
    withdrawn, _ = Cell.objects.filter(image=image, layer=Layer.VERIFIED).delete()
    CorrectionRecord.objects.filter(image=image).delete()
    if withdrawn:
        audit_record(
            project=image.project,
            image=image,
            actor=user,
            action="verified.withdraw",
            before={"verified_cells": withdrawn},
        )
    image_status_set(image=image, to=ImageStatus.ANNOTATING, actor=user, action="reopen")
