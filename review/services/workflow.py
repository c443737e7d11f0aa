"""The verification actions on an image, or on one region of a slide (submit, close a round early,
start adjudication, reopen), with their role rules, and the assignment of experts to a round.

A round with a ``region`` verifies that region only: its status moves instead of the image's,
its cells are the annotation cells whose centroid lies inside, and the image stays editable
outside it. Two regions of one slide may be in review at once; every path locks the image row
first, then the region's."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from annotations import selectors as access
from annotations.models import (
    LOCKED_STATUSES,
    Cell,
    Image,
    ImageStatus,
    Layer,
    Project,
    Region,
    Role,
)
from annotations.services.audit import audit_record
from annotations.services.regions import region_cell_ids
from annotations.services.workflow import (
    REGION_TRANSITIONS,
    TRANSITIONS,
    annotation_write_started,
    image_lock,
    region_lock,
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
from review.services.rounds import round_consensus, subject_status, subject_status_set


def capability_require(user: User, project: Project, capability: str, why: str) -> None:
    if not access.user_can(user=user, project=project, capability=capability):
        raise PermissionDeniedError(why)


def _transition_allowed(*, user: User, image: Image, action: str, region: Region | None = None) -> str | None:
    """Why ``user`` may not take ``action`` because of their role (None: they may)."""
    project = image.project
    if action == "start":
        ok = access.user_can(user=user, project=project, capability="annotate")
        return None if ok else "Your role may not annotate."
    if action == "submit":
        if not access.user_can(user=user, project=project, capability="annotate"):
            return "Your role may not annotate."
        authors = {image.annotator_id} if region is None else {image.annotator_id, region.created_by_id}
        if (
            None not in authors
            and user.pk not in authors
            and not access.user_can(user=user, project=project, capability="manage")
        ):
            if region is not None:
                return "Only the region's author, the image's annotator or a project admin may submit it."
            return "Only the image's annotator or a project admin may submit it."
        return None
    if action == "start_adjudication":
        return None if selectors.may_adjudicate(user=user, project=project) else "You may not adjudicate."
    # close_review, reopen
    ok = access.user_can(user=user, project=project, capability="manage")
    return None if ok else "Only a project admin may do this."


def transitions_allowed(*, user: User, image: Image, region: Region | None = None) -> list[str]:
    """The actions ``user`` may take on ``image`` (or on its ``region``) now: role and state,
    and for ``close_review`` the quorum of submitted reviews (one query, only when the rest
    allows it). A region is submitted only on a tiled image that is not under review whole."""
    table = TRANSITIONS if region is None else REGION_TRANSITIONS
    status = subject_status(image, region)
    return [
        action
        for action, (sources, _) in table.items()
        if status in sources
        and _transition_allowed(user=user, image=image, action=action, region=region) is None
        and (action != "close_review" or _quorum_reached(image, region))
        and (action != "submit" or _submittable(image, region))
    ]


def _submittable(image: Image, region: Region | None) -> bool:
    """A region only on a slide that is not under review whole; a slide whole only while none of
    its regions is under review or verified (one query, for a slide only)."""
    if region is not None:
        return image.tiled and image.status not in LOCKED_STATUSES
    return not (image.tiled and image.regions.filter(status__in=LOCKED_STATUSES).exists())


def _quorum_reached(image: Image, region: Region | None = None) -> bool:
    current = selectors.round_current(image=image, region=region)
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
    _transition(image=image, region=None, user=user, action=action)
    image.refresh_from_db()
    return image


def region_transition(*, region: Region, user: User, action: str) -> Region:
    """Take one verification action on a region of a slide (``region.image`` loaded); the only
    public way to change a region's status.

    Actions: ``submit`` (new, pre-segmented or annotating -> submitted -> in review: a round of
    the region, K experts assigned, who decide on the region's annotation cells only; 400
    naming ``region`` when the image is not tiled or the region has no annotation cell, 409 when
    the image is under review whole), ``close_review``, ``start_adjudication`` and ``reopen``
    (admin: back to annotating, the region's verified cells withdrawn), as for an image. The
    image's own status does not change. 400 for an unknown action, 403 for the wrong role, 409
    for the wrong state; nothing changes on refusal.
    """
    _transition(image=region.image, region=region, user=user, action=action)
    region.refresh_from_db()
    return region


def _transition(*, image: Image, region: Region | None, user: User, action: str) -> None:
    table = TRANSITIONS if region is None else REGION_TRANSITIONS
    if action not in table:
        raise ServiceValidationError("Unknown action.", {"action": f"must be one of {', '.join(table)}"})
    refusal = _transition_allowed(user=user, image=image, action=action, region=region)
    if refusal is not None:
        raise PermissionDeniedError(refusal)
    with transaction.atomic():
        locked = image_lock(image)
        subject = None if region is None else region_lock(region)
        if subject is not None:
            subject.image = locked
        sources, target = table[action]
        status = subject_status(locked, subject)
        if status not in sources:
            allowed = ", ".join(status_label(s) for s in sorted(sources))
            what = "an image" if subject is None else "a region"
            raise ConflictError(
                f"Cannot {action.replace('_', ' ')} {what} that is {status_label(status)} (allowed from: {allowed}).",
                {
                    "status": status,
                    "allowed_actions": transitions_allowed(user=user, image=locked, region=subject),
                },
            )
        if action == "start":
            annotation_write_started(image=locked, user=user)
        elif action == "submit":
            _round_start(image=locked, region=subject, user=user)
        elif action == "close_review":
            _round_close_early(image=locked, region=subject, user=user)
        elif action == "reopen":
            _reopen(image=locked, region=subject, user=user)
        else:
            assert target is not None
            subject_status_set(image=locked, region=subject, to=target, actor=user, action=action)


def _region_submittable(*, image: Image, region: Region) -> None:
    """Refuse a region's submission where the slide is not verified by region (400 or 409)."""
    if not image.tiled:
        raise ServiceValidationError(
            "Only a slide (a tiled image) is verified by region.",
            {"region": "this image is verified whole; submit the image without a region"},
        )
    if image.status in LOCKED_STATUSES:
        raise ConflictError(
            f"The image is {status_label(image.status)} as a whole; its regions are not submitted on their own.",
            {"status": image.status},
        )
    if not region_cell_ids(region=region, layer=Layer.ANNOTATION):
        raise ServiceValidationError(
            "Nothing to verify in this region.",
            {"region": "has no annotation cell (a cell is in a region when its centroid lies inside)"},
        )


def _round_start(*, image: Image, region: Region | None, user: User) -> None:
    """A new round of the image, or of its ``region`` (locked by the caller), with K experts."""
    if region is not None:
        _region_submittable(image=image, region=region)
    elif not _submittable(image, None):
        # The whole slide's verified layer would replace its regions' results.
        raise ConflictError(
            "Regions of this slide are under review or verified on their own; submit regions, not the whole slide.",
            {"status": image.status},
        )
    project = image.project
    k = project.experts_required
    rounds = VerificationRound.objects.filter(image=image, region=region)
    previous = rounds.order_by("-number").values_list("number", flat=True).first() or 0
    verification_round = VerificationRound.objects.create(
        image=image,
        region=region,
        number=previous + 1,
        experts_required=k,
        quorum=min(project.quorum or k, k),
        match_iou=project.match_iou,
        base_revision=image.revision,
        started_by=user,
    )
    subject_status_set(image=image, region=region, to=ImageStatus.SUBMITTED, actor=user, action="submit")
    data: dict[str, object] = {"image": image.pk, "round": verification_round.number, "submitted_by": user.pk}
    if region is not None:
        data["region"] = region.pk
    event_emit(project_id=image.project_id, event="image.submitted", data=data)
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
        # Never the image's annotator; for a region, nor who drew or submitted it.
        authors = {image.annotator_id}
        if verification_round.region is not None:
            authors |= {verification_round.region.created_by_id, verification_round.started_by_id}
        taken |= {a for a in authors if a is not None}
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
    region = verification_round.region
    if subject_status(image, region) == ImageStatus.SUBMITTED and live + len(created) > 0:
        subject_status_set(image=image, region=region, to=ImageStatus.IN_REVIEW, actor=actor, action="assign")
    return created


def _round_open(image: Image, region: Region | None = None) -> VerificationRound:
    current = selectors.round_current(image=image, region=region)
    if current is None or current.status != RoundStatus.OPEN:
        what = "image" if region is None else "region"
        raise ConflictError(f"The {what} has no open review round.", {"status": subject_status(image, region)})
    current.region = region
    return current


def review_assign(*, image: Image, actor: User, reviewer: User, region: Region | None = None) -> Review:
    """An admin assigns ``reviewer`` (an expert or admin of the project, not the image's
    annotator) to the open round of the image (or of its ``region``), up to K reviewers."""
    capability_require(actor, image.project, "manage", "Only a project admin may assign reviewers.")
    with transaction.atomic():
        locked = image_lock(image)
        subject = None if region is None else region_lock(region)
        status = subject_status(locked, subject)
        what = "images" if subject is None else "regions"
        if status not in (ImageStatus.SUBMITTED, ImageStatus.IN_REVIEW):
            raise ConflictError(
                f"Reviewers are assigned to submitted {what}; this one is {status_label(status)}.",
                {"status": status},
            )
        verification_round = _round_open(locked, subject)
        if not access.user_can(user=reviewer, project=locked.project, capability="review"):
            raise ServiceValidationError("Not a reviewer.", {"reviewer": "must be an expert or admin of this project"})
        if reviewer.pk == locked.annotator_id:
            raise ServiceValidationError("Not independent.", {"reviewer": "the image's annotator cannot review it"})
        if subject is not None and reviewer.pk in (subject.created_by_id, verification_round.started_by_id):
            raise ServiceValidationError(
                "Not independent.", {"reviewer": "who drew or submitted the region cannot review it"}
            )
        live = verification_round.reviews.exclude(status=ReviewStatus.CANCELLED)
        if live.filter(reviewer=reviewer).exists():
            raise ServiceValidationError("Already assigned.", {"reviewer": f"already reviews this {what[:-1]}"})
        if live.count() >= verification_round.experts_required:
            raise ConflictError(
                f"The {what[:-1]} already has {verification_round.experts_required} reviewers; unassign one first.",
                {"status": status},
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
            after={"review": review.pk, "reviewer": reviewer.pk, "manual": True}
            | ({} if subject is None else {"region": subject.pk}),
        )
        if status == ImageStatus.SUBMITTED:
            subject_status_set(image=locked, region=subject, to=ImageStatus.IN_REVIEW, actor=actor, action="assign")
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
            "image__project", "round__region"
        )
    )
    with transaction.atomic():
        for review in open_reviews:
            image = image_lock(review.image)
            verification_round = review.round
            if verification_round.region is not None:
                region = region_lock(verification_round.region)
                region.image = image
                verification_round.region = region
            _review_cancel(review=review, actor=None, reason="reviewer no longer an expert of the project")
            if verification_round.status == RoundStatus.OPEN:
                _reviews_fill(image=image, verification_round=verification_round, actor=None)
    return len(open_reviews)


def _round_close_early(*, image: Image, region: Region | None, user: User) -> None:
    verification_round = _round_open(image, region)
    submitted = verification_round.reviews.filter(status=ReviewStatus.SUBMITTED).count()
    if submitted < verification_round.quorum:
        raise ConflictError(
            f"Only {submitted} review(s) submitted; closing needs at least the quorum ({verification_round.quorum}).",
            {"status": subject_status(image, region)},
        )
    for review in verification_round.reviews.filter(status=ReviewStatus.ASSIGNED).select_related("image__project"):
        _review_cancel(review=review, actor=user, reason="round closed early by an admin")
    round_consensus(image=image, verification_round=verification_round, actor=user)


def _reopen(*, image: Image, region: Region | None, user: User) -> None:
    """Back to annotating: open reviews are cancelled (drafts discarded), an unfinished round is
    cancelled, and the verified layer and its correction records are withdrawn (the reviews,
    disputes and agreement of earlier rounds stay as history). For a region, only its round and
    the verified cells inside it (and its rounds' correction records) are concerned."""
    current = selectors.round_current(image=image, region=region)
    what = "image" if region is None else "region"
    if current is not None:
        for review in current.reviews.filter(status=ReviewStatus.ASSIGNED).select_related("image__project"):
            _review_cancel(review=review, actor=user, reason=f"{what} reopened")
        if current.status in (RoundStatus.OPEN, RoundStatus.DISPUTED):
            current.status = RoundStatus.CANCELLED
            current.closed_at = timezone.now()
            current.save(update_fields=["status", "closed_at"])
    if region is None:
        withdrawn, _ = Cell.objects.filter(image=image, layer=Layer.VERIFIED).delete()
        CorrectionRecord.objects.filter(image=image).delete()
    else:
        ids = region_cell_ids(region=region, layer=Layer.VERIFIED)
        withdrawn, _ = Cell.objects.filter(pk__in=ids).delete()
        CorrectionRecord.objects.filter(image=image, round__region=region).delete()
    if withdrawn:
        audit_record(
            project=image.project,
            image=image,
            actor=user,
            action="verified.withdraw",
            target="" if region is None else region.name,
            before={"verified_cells": withdrawn} | ({} if region is None else {"region": region.pk}),
        )
    subject_status_set(image=image, region=region, to=ImageStatus.ANNOTATING, actor=user, action="reopen")
