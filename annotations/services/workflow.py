"""The image lifecycle: the one table of the states an image passes through and the edges between
them, the lock on annotations from submission until reopening, and the only way to change an
image's status (``image_status_set``). The review app drives the verification actions through it."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.utils import timezone

from annotations.models import (
    LOCKED_STATUSES,
    Image,
    ImageStatus,
)
from annotations.services.audit import audit_record
from core.errors import ConflictError

# action -> (states it may start from, state it leads to). ``close_review`` ends in whatever
# the consensus decides (verified or disputed).
TRANSITIONS: dict[str, tuple[frozenset[str], str | None]] = {
    "start": (frozenset({ImageStatus.NEW, ImageStatus.PRE_SEGMENTED}), ImageStatus.ANNOTATING),
    "submit": (frozenset({ImageStatus.ANNOTATING}), ImageStatus.SUBMITTED),
    "close_review": (frozenset({ImageStatus.IN_REVIEW}), None),
    "start_adjudication": (frozenset({ImageStatus.DISPUTED}), ImageStatus.ADJUDICATION),
    "reopen": (LOCKED_STATUSES, ImageStatus.ANNOTATING),
}


# Every edge the workflow may take, by an action or on its own (pre-segmentation, assignment,
# consensus).
EDGES: frozenset[tuple[str, str]] = frozenset(
    {
        (ImageStatus.NEW, ImageStatus.PRE_SEGMENTED),
        (ImageStatus.NEW, ImageStatus.ANNOTATING),
        (ImageStatus.PRE_SEGMENTED, ImageStatus.ANNOTATING),
        (ImageStatus.ANNOTATING, ImageStatus.SUBMITTED),
        (ImageStatus.SUBMITTED, ImageStatus.IN_REVIEW),
        (ImageStatus.IN_REVIEW, ImageStatus.VERIFIED),
        (ImageStatus.IN_REVIEW, ImageStatus.DISPUTED),
        (ImageStatus.DISPUTED, ImageStatus.ADJUDICATION),
        (ImageStatus.ADJUDICATION, ImageStatus.VERIFIED),
    }
    | {(s, ImageStatus.ANNOTATING) for s in LOCKED_STATUSES}
)


def status_label(status: str) -> str:
    return str(ImageStatus(status).label).lower()


def image_status_set(*, image: Image, to: str, actor: User | None, action: str) -> None:
    """Move ``image`` (locked by the caller) along one edge of the workflow and audit it."""
    before = image.status
    if (before, to) not in EDGES:
        raise ConflictError(
            f"An image that is {status_label(before)} cannot become {status_label(to)}.", {"status": before}
        )
    Image.objects.filter(pk=image.pk).update(status=to, updated_at=timezone.now())
    image.status = to
    audit_record(
        project=image.project,
        image=image,
        actor=actor,
        action="image.transition",
        target=action,
        before={"status": before},
        after={"status": to},
    )


def image_presegmented(*, image: Image) -> None:
    """A new image that received proposals becomes pre-segmented (nothing else changes state)."""
    Image.objects.filter(pk=image.pk, status=ImageStatus.NEW).update(status=ImageStatus.PRE_SEGMENTED)


def image_lock(image: Image) -> Image:
    """``image`` locked for update (its status, annotator and revision refreshed from the row)."""
    locked = Image.objects.select_for_update().select_related("project").get(pk=image.pk)
    image.status, image.annotator_id, image.revision = locked.status, locked.annotator_id, locked.revision
    return locked


def annotation_write_check(*, image: Image) -> None:
    """Refuse writes to the annotation layer (409) from submission until an admin reopens the image."""
    if image.status in LOCKED_STATUSES:
        raise ConflictError(
            f"The image is {status_label(image.status)}; its annotations are locked until an admin reopens it.",
            {"status": image.status},
        )


def annotation_write_started(*, image: Image, user: User | None) -> None:
    """After an accepted annotation write: the first writer becomes the image's annotator and a
    new or pre-segmented image moves to ``annotating``. ``image`` is locked by the caller."""
    if image.annotator_id is None and user is not None:
        Image.objects.filter(pk=image.pk).update(annotator=user)
        image.annotator_id = user.pk
    if image.status in (ImageStatus.NEW, ImageStatus.PRE_SEGMENTED):
        image_status_set(image=image, to=ImageStatus.ANNOTATING, actor=user, action="start")
