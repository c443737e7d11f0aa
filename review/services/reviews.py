"""An expert's blind review: the draft (decisions, added cells, comments) and its submission.

A review of a slide's region decides on the annotation cells inside the region only, and the
cells an expert adds or redraws must lie in it (centroid inside, ``cytoseg.regions``' rule)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from annotations.models import (
    Image,
    ImageStatus,
    Region,
)
from annotations.services.audit import audit_record
from annotations.services.workflow import image_lock, region_lock, status_label
from core.errors import ConflictError, PermissionDeniedError, ServiceValidationError
from cytoseg.geometry import GeometryError, polygon_clean
from cytoseg.regions import cells_inside
from review import selectors
from review.models import (
    Review,
    ReviewComment,
    ReviewDecision,
    ReviewDecisionKind,
    ReviewStatus,
)
from review.services.rounds import round_cells, round_consensus, subject_status

COMMENT_MAX_CHARS = 2000


def _review_for_update(*, image: Image, user: User, region: Region | None = None) -> tuple[Image, Review]:
    """The image (and region) locked, and the caller's live review of the current round."""
    locked_image = image_lock(image)
    subject = None if region is None else region_lock(region)
    if subject is not None:
        subject.image = locked_image
    current = selectors.round_current(image=locked_image, region=subject)
    review = (
        Review.objects.select_for_update()
        .filter(round=current, reviewer=user)
        .exclude(status=ReviewStatus.CANCELLED)
        .first()
        if current is not None
        else None
    )
    if review is None:
        raise PermissionDeniedError(f"You are not assigned to review this {'image' if region is None else 'region'}.")
    review.round.region = subject
    return locked_image, review


def _draft_parse(
    *, image: Image, decisions: object, added: object, comments: object, region: Region | None = None
) -> tuple[list[ReviewDecision], list[ReviewComment]]:
    """Validate a draft; errors are keyed ``decisions.<i>``, ``added.<i>``, ``comments.<i>``."""
    annotation = {c["pk"]: c for c in round_cells(image=image, region=region).values("pk", "cell_class_id")}
    where = "this image" if region is None else "this region"
    classes = set(image.project.classes.values_list("pk", flat=True))
    errors: dict[str, Any] = {}
    rows: list[ReviewDecision] = []
    notes: list[ReviewComment] = []

    def polygon(raw: object, key: str) -> list[list[float]] | None:
        try:
            points = polygon_clean(
                raw, width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES
            ).points
        except GeometryError as exc:
            errors[key] = str(exc)
            return None
        if region is not None and not cells_inside(region.polygon, [points])[0]:
            errors[key] = "the cell's centroid lies outside the region under review"
            return None
        return points

    def as_list(value: object, name: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            errors[name] = "must be a list"
            return []
        return value

    seen: set[int] = set()
    for index, item in enumerate(as_list(decisions, "decisions")):
        key = f"decisions.{index}"
        if not isinstance(item, dict):
            errors[key] = "must be an object with cell_id and decision"
            continue
        cell_id, kind, class_id = item.get("cell_id"), item.get("decision"), item.get("class_id")
        if not isinstance(cell_id, int) or isinstance(cell_id, bool) or cell_id not in annotation:
            errors[key] = f"cell_id {cell_id!r} is not an annotation cell of {where}"
        elif cell_id in seen:
            errors[key] = f"cell {cell_id} is decided twice"
        elif kind not in (ReviewDecisionKind.ACCEPT, ReviewDecisionKind.REJECT, ReviewDecisionKind.EDIT):
            errors[key] = "decision must be accept, reject or edit"
        elif kind != ReviewDecisionKind.EDIT and (item.get("polygon") is not None or class_id is not None):
            errors[key] = "only an edit carries a polygon or a class_id"
        elif kind == ReviewDecisionKind.EDIT and class_id is not None and class_id not in classes:
            errors[key] = f"class_id {class_id!r} is not a class of this project"
        else:
            seen.add(cell_id)
            points = polygon(item.get("polygon"), key) if kind == ReviewDecisionKind.EDIT else None
            if kind != ReviewDecisionKind.EDIT or points is not None:
                rows.append(ReviewDecision(cell_id=cell_id, decision=kind, cell_class_id=class_id, polygon=points))
    for index, item in enumerate(as_list(added, "added")):
        key = f"added.{index}"
        if not isinstance(item, dict) or item.get("class_id") not in classes:
            errors[key] = "must be an object with a class_id of this project and a polygon"
            continue
        points = polygon(item.get("polygon"), key)
        if points is not None:
            rows.append(ReviewDecision(decision=ReviewDecisionKind.ADD, cell_class_id=item["class_id"], polygon=points))
    for index, item in enumerate(as_list(comments, "comments")):
        key = f"comments.{index}"
        text = item.get("text") if isinstance(item, dict) else None
        cell_id = item.get("cell_id") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > COMMENT_MAX_CHARS:
            errors[key] = f"text must be 1 to {COMMENT_MAX_CHARS} characters"
        elif cell_id is not None and cell_id not in annotation:
            errors[key] = f"cell_id {cell_id!r} is not an annotation cell of {where}"
        else:
            notes.append(ReviewComment(cell_id=cell_id, text=text.strip()))
    if len(rows) > settings.CELL_MAX_PER_IMAGE * 2:
        errors["decisions"] = "too many decisions"
    if errors:
        raise ServiceValidationError("The review draft is invalid; nothing was saved.", errors)
    return rows, notes


def _review_writable(*, image: Image, review: Review) -> None:
    region = review.round.region
    what = "image" if region is None else "region"
    if review.status == ReviewStatus.SUBMITTED:
        raise ConflictError(
            f"Your review of this {what} is submitted and can no longer change.", {"status": "submitted"}
        )
    status = subject_status(image, region)
    if status != ImageStatus.IN_REVIEW:
        raise ConflictError(
            f"The {what} is {status_label(status)}; reviews are written while it is in review.",
            {"status": status},
        )


def review_draft_save(
    *, image: Image, user: User, decisions: object, added: object, comments: object, region: Region | None = None
) -> Review:
    """Replace the caller's draft review of ``image`` (or of its ``region``): a decision per
    annotation cell (accept, reject, or edit with the expert's own polygon and optionally
    class), added cells and comments. Only the author sees a draft; 409 once submitted or when
    the image (region) is not in review."""
    with transaction.atomic():
        locked, review = _review_for_update(image=image, user=user, region=region)
        _review_writable(image=locked, review=review)
        rows, notes = _draft_parse(
            image=locked, decisions=decisions, added=added, comments=comments, region=review.round.region
        )
        review.decisions.all().delete()
        review.comments.all().delete()
        ReviewDecision.objects.bulk_create(ReviewDecision(review=review, **_decision_fields(r)) for r in rows)
        ReviewComment.objects.bulk_create(ReviewComment(review=review, cell_id=n.cell_id, text=n.text) for n in notes)
        review.save(update_fields=["updated_at"])
        audit_record(
            project=locked.project,
            image=locked,
            actor=user,
            action="review.draft",
            target=str(review.pk),
            # Sizes only: the audit log must not reveal a blind draft's decisions.
            after={"items": len(rows), "comments": len(notes)},
        )
    return review


def _decision_fields(row: ReviewDecision) -> dict[str, Any]:
    return {
        "cell_id": row.cell_id,
        "decision": row.decision,
        "cell_class_id": row.cell_class_id,
        "polygon": row.polygon,
    }


def review_submit(
    *, image: Image, user: User, accept_undecided: bool = False, region: Region | None = None
) -> tuple[Review, bool]:
    """Submit the caller's review of ``image`` (or of its ``region``); returns it and whether
    this call submitted it.

    Idempotent: submitting an already submitted review changes nothing. Every annotation cell
    (of the region) needs a decision, unless ``accept_undecided`` accepts the undecided ones.
    When the last reviewer of the round submits, the consensus runs (verified, or disputed for
    adjudication).
    """
    with transaction.atomic():
        locked, review = _review_for_update(image=image, user=user, region=region)
        if review.status == ReviewStatus.SUBMITTED:
            return review, False
        _review_writable(image=locked, review=review)
        decided = set(review.decisions.filter(cell__isnull=False).values_list("cell_id", flat=True))
        cells = set(round_cells(image=locked, region=review.round.region).values_list("pk", flat=True))
        undecided = sorted(cells - decided)
        if undecided and not accept_undecided:
            raise ServiceValidationError(
                "Some cells have no decision.",
                {"decisions": f"no decision for cells {undecided[:50]}; decide them or send accept_undecided: true"},
            )
        ReviewDecision.objects.bulk_create(
            ReviewDecision(review=review, cell_id=cell_id, decision=ReviewDecisionKind.ACCEPT) for cell_id in undecided
        )
        counts = Counter(review.decisions.values_list("decision", flat=True))
        review.n_accept = counts[ReviewDecisionKind.ACCEPT]
        review.n_reject = counts[ReviewDecisionKind.REJECT]
        review.n_edit = counts[ReviewDecisionKind.EDIT]
        review.n_add = counts[ReviewDecisionKind.ADD]
        review.status = ReviewStatus.SUBMITTED
        review.submitted_at = timezone.now()
        review.save()
        audit_record(
            project=locked.project,
            image=locked,
            actor=user,
            action="review.submit",
            target=str(review.pk),
            after={
                "accepted": review.n_accept,
                "rejected": review.n_reject,
                "edited": review.n_edit,
                "added": review.n_add,
                "auto_accepted": len(undecided),
            },
        )
        verification_round = review.round
        live = verification_round.reviews.exclude(status=ReviewStatus.CANCELLED)
        if (
            not live.filter(status=ReviewStatus.ASSIGNED).exists()
            and live.count() >= verification_round.experts_required
        ):
            round_consensus(image=locked, verification_round=verification_round, actor=user)
    return review, True
