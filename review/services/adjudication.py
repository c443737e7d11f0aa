"""Adjudication of disputed cells, after which the image (or the slide's region) is verified."""

from __future__ import annotations

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
from review import selectors
from review.models import (
    Dispute,
    DisputeStatus,
)
from review.services.rounds import image_verify, subject_status, subject_status_set


def _adjudication_parse(
    *, image: Image, disputes: dict[int, Dispute], decisions: object
) -> list[tuple[Dispute, str, list[list[float]] | None, int | None]]:
    if not isinstance(decisions, list) or not decisions:
        raise ServiceValidationError("Nothing decided.", {"decisions": "must be a non-empty list"})
    classes = set(image.project.classes.values_list("pk", flat=True))
    errors: dict[str, str] = {}
    out: list[tuple[Dispute, str, list[list[float]] | None, int | None]] = []
    seen: set[int] = set()
    for index, item in enumerate(decisions):
        key = f"decisions.{index}"
        dispute_id = item.get("dispute_id") if isinstance(item, dict) else None
        dispute = disputes.get(dispute_id) if isinstance(dispute_id, int) else None
        if dispute is None or not isinstance(item, dict):
            errors[key] = "dispute_id is not a dispute of the current round"
            continue
        if dispute.pk in seen:
            errors[key] = f"dispute {dispute.pk} is decided twice"
            continue
        seen.add(dispute.pk)
        choice, raw_polygon, class_id = str(item.get("choice", "")), item.get("polygon"), item.get("class_id")
        if class_id is not None and class_id not in classes:
            errors[key] = f"class_id {class_id!r} is not a class of this project"
            continue
        polygon: list[list[float]] | None = None
        if raw_polygon is not None:
            try:
                polygon = polygon_clean(
                    raw_polygon, width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES
                ).points
            except GeometryError as exc:
                errors[key] = str(exc)
                continue
        if choice == "reject":
            out.append((dispute, choice, None, None))
            continue
        if choice == "own":
            base_polygon, base_class = None, dispute.candidate_class_id
        elif choice == "annotation" and dispute.annotation:
            base_polygon, base_class = dispute.annotation["polygon"], dispute.annotation["class_id"]
        else:
            version = next(
                (v for v in dispute.versions if str(v["review_id"]) == choice and v["polygon"] is not None), None
            )
            if version is None:
                errors[key] = "choice must be the id of a review with a version of this cell, annotation, own or reject"
                continue
            base_polygon, base_class = version["polygon"], version["class_id"]
        final_polygon = polygon if polygon is not None else base_polygon
        if final_polygon is None:
            errors[key] = "choice own needs a polygon"
            continue
        out.append((dispute, choice, final_polygon, class_id if class_id is not None else base_class))
    if errors:
        raise ServiceValidationError("Some adjudication decisions are invalid; nothing was saved.", errors)
    return out


def adjudication_decide(*, image: Image, user: User, decisions: object, region: Region | None = None) -> Image:
    """Decide disputed cells of the image's (or its ``region``'s) current round: keep one
    expert's version (``choice`` = review id), the annotator's cell (``annotation``), the
    adjudicator's own polygon (``own`` + ``polygon``) or ``reject``; ``polygon``/``class_id``
    may refine a chosen version. Decisions may come in several calls (a decided dispute may be
    decided again until verified); the image (region) moves to adjudication on the first and is
    verified when no dispute is left open."""
    if not selectors.may_adjudicate(user=user, project=image.project):
        raise PermissionDeniedError("Only project admins and the project's adjudicators may adjudicate.")
    with transaction.atomic():
        locked = image_lock(image)
        subject = None if region is None else region_lock(region)
        if subject is not None:
            subject.image = locked
        status = subject_status(locked, subject)
        if status not in (ImageStatus.DISPUTED, ImageStatus.ADJUDICATION):
            what = "images are" if subject is None else "regions are"
            raise ConflictError(
                f"The {'image' if subject is None else 'region'} is {status_label(status)}; only disputed {what} "
                "adjudicated.",
                {"status": status},
            )
        current = selectors.round_current(image=locked, region=subject)
        assert current is not None  # a disputed image has a round
        current.region = subject
        disputes = {d.pk: d for d in current.disputes.select_for_update()}
        parsed = _adjudication_parse(image=locked, disputes=disputes, decisions=decisions)
        if status == ImageStatus.DISPUTED:
            subject_status_set(
                image=locked, region=subject, to=ImageStatus.ADJUDICATION, actor=user, action="start_adjudication"
            )
        now = timezone.now()
        for dispute, choice, polygon, class_id in parsed:
            before = {"status": dispute.status, "choice": dispute.choice}
            dispute.status = DisputeStatus.RESOLVED
            dispute.choice = choice
            dispute.polygon = polygon
            dispute.cell_class_id = class_id
            dispute.resolved_by = user
            dispute.resolved_at = now
            audit_record(
                project=locked.project,
                image=locked,
                actor=user,
                action="adjudication.decide",
                target=f"dispute {dispute.pk}",
                before=before,
                after={"choice": choice, "class_id": class_id, "polygon": polygon},
            )
        Dispute.objects.bulk_update(
            [p[0] for p in parsed], ["status", "choice", "polygon", "cell_class", "resolved_by", "resolved_at"]
        )
        if not any(d.status == DisputeStatus.OPEN for d in disputes.values()):
            image_verify(image=locked, verification_round=current, actor=user)
    image.refresh_from_db()
    return image
