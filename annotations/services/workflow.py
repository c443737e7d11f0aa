"""The image lifecycle: the one table of the states an image passes through and the edges between
them, the lock on annotations from submission until reopening, and the only way to change an
image's status (``image_status_set``). A slide's region of interest goes through the same states
on its own (``REGION_TRANSITIONS``, ``region_status_set``), and the annotation cells inside a
region under review are locked like a submitted image's (``region_write_check``). The review app
drives the verification actions through it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.contrib.auth.models import User
from django.utils import timezone

from annotations.models import (
    LOCKED_STATUSES,
    Image,
    ImageStatus,
    Region,
)
from annotations.services.audit import audit_record
from core.errors import ConflictError
from cytoseg.regions import cells_inside

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


# A region of a slide is submitted for verification straight from being drawn (new), after its
# pre-segmentation, or after a reopen (annotating); the rest is the image's table.
REGION_TRANSITIONS: dict[str, tuple[frozenset[str], str | None]] = {
    "submit": (
        frozenset({ImageStatus.NEW, ImageStatus.PRE_SEGMENTED, ImageStatus.ANNOTATING}),
        ImageStatus.SUBMITTED,
    ),
    "close_review": TRANSITIONS["close_review"],
    "start_adjudication": TRANSITIONS["start_adjudication"],
    "reopen": TRANSITIONS["reopen"],
}

REGION_EDGES: frozenset[tuple[str, str]] = EDGES | {
    (ImageStatus.NEW, ImageStatus.SUBMITTED),
    (ImageStatus.PRE_SEGMENTED, ImageStatus.SUBMITTED),
}


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


def region_status_set(*, region: Region, to: str, actor: User | None, action: str) -> None:
    """Move ``region`` (locked by the caller) along one edge of the region workflow and audit it."""
    before = region.status
    if (before, to) not in REGION_EDGES:
        raise ConflictError(
            f"A region that is {status_label(before)} cannot become {status_label(to)}.", {"status": before}
        )
    Region.objects.filter(pk=region.pk).update(status=to, updated_at=timezone.now())
    region.status = to
    audit_record(
        project=region.image.project,
        image=region.image,
        actor=actor,
        action="region.transition",
        target=f"{region.name} ({action})",
        before={"region": region.pk, "status": before},
        after={"region": region.pk, "status": to},
    )


def region_lock(region: Region) -> Region:
    """``region`` locked for update (its status refreshed from the row). Callers lock the image
    first: every path that locks both takes them in that order."""
    locked = Region.objects.select_for_update().get(pk=region.pk)
    region.status, region.polygon = locked.status, locked.polygon
    locked.image = region.image
    return locked


def regions_locked(*, image_id: int) -> list[tuple[str, str, list[list[float]]]]:
    """The image's regions under review or verified: (name, status, polygon) each. One query."""
    rows = Region.objects.filter(image_id=image_id, status__in=LOCKED_STATUSES).order_by("id")
    return [(name, status, polygon) for name, status, polygon in rows.values_list("name", "status", "polygon")]


def region_locked_message(name: str, status: str) -> str:
    return f"The region {name!r} is {status_label(status)}; the cells inside it are locked until an admin reopens it."


def region_locked_items(
    *, locked: list[tuple[str, str, list[list[float]]]], items: Sequence[tuple[str, Sequence[Sequence[float]]]]
) -> list[tuple[str, str, str]]:
    """Of ``items`` (key, outline), those whose centroid lies in one of the ``locked`` regions:
    (key, region name, region status) each, in ``items``' order, each key once."""
    found: dict[str, tuple[str, str, str]] = {}
    outlines = [outline for _, outline in items]
    for name, status, polygon in locked:
        for (key, _), inside in zip(items, cells_inside(polygon, outlines), strict=True):
            if inside and key not in found:
                found[key] = (key, name, status)
    return [found[key] for key in dict.fromkeys(key for key, _ in items) if key in found]


def region_write_check(*, image_id: int, polygons: Iterable[Sequence[Sequence[float]]]) -> None:
    """Refuse (409) an annotation write whose added, changed or deleted cells (``polygons``: their
    outlines before and after) have a centroid inside a region under review or verified: those
    cells are what the experts decide on, as a submitted image's are. One query, and
    ``polygons`` is not even read, when the image has no such region."""
    locked = regions_locked(image_id=image_id)
    if not locked:
        return
    hits = region_locked_items(locked=locked, items=[(str(i), p) for i, p in enumerate(polygons)])
    if hits:
        _, name, status = hits[0]
        raise ConflictError(region_locked_message(name, status), {"status": status, "region": name})


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
