"""Helpers of the review app's service tests: drive an image through the workflow by calling
the services directly (no HTTP)."""

from __future__ import annotations

from typing import Any

from annotations.models import AuditEvent, Cell, Image, Layer, Project
from annotations.services.cells import cells_replace
from review.models import Review, ReviewStatus, VerificationRound
from review.services.adjudication import adjudication_decide
from review.services.reviews import review_draft_save, review_submit
from review.services.workflow import image_transition


def rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def fresh(image: Image) -> Image:
    return Image.objects.get(pk=image.pk)


def annotate(image: Image, user: Any, polygons: list[list[list[float]]], class_id: int) -> list[int]:
    """Replace the annotation layer with ``polygons``; returns the cell ids in order."""
    current = fresh(image)
    written = cells_replace(
        image=current,
        user=user,
        base_revision=current.revision,
        cells=[{"class_id": class_id, "polygon": p} for p in polygons],
    )
    return [c["id"] for c in written.cells]


def submit(image: Image, user: Any) -> Image:
    return image_transition(image=fresh(image), user=user, action="submit")


def open_reviewers(image: Image) -> list[Any]:
    """The reviewers with an open assignment, in assignment order."""
    return [
        r.reviewer
        for r in Review.objects.filter(image=image, status=ReviewStatus.ASSIGNED)
        .select_related("reviewer")
        .order_by("id")
    ]


def live_reviewers(image: Image) -> list[Any]:
    """Reviewers of the latest round that are not cancelled, in assignment order."""
    current = VerificationRound.objects.filter(image=image).order_by("-number").first()
    return [
        r.reviewer
        for r in Review.objects.filter(round=current)
        .exclude(status=ReviewStatus.CANCELLED)
        .select_related("reviewer")
        .order_by("id")
    ]


def prepared(
    image: Image, annotator: Any, polygons: list[list[list[float]]], class_id: int
) -> tuple[list[int], list[Any]]:
    """Annotate and submit; returns the annotation cell ids and the assigned reviewers."""
    cells = annotate(image, annotator, polygons, class_id)
    submit(image, annotator)
    return cells, open_reviewers(image)


def draft(
    user: Any,
    image: Image,
    decisions: list[dict[str, Any]] | None = None,
    added: list[dict[str, Any]] | None = None,
    comments: list[dict[str, Any]] | None = None,
) -> Review:
    return review_draft_save(
        image=fresh(image), user=user, decisions=decisions or [], added=added or [], comments=comments or []
    )


def reviewed(
    user: Any,
    image: Image,
    decisions: list[dict[str, Any]],
    added: list[dict[str, Any]] | None = None,
    comments: list[dict[str, Any]] | None = None,
) -> Review:
    """Save a draft and submit it; returns the submitted review."""
    draft(user, image, decisions, added, comments)
    review, submitted_now = review_submit(image=fresh(image), user=user)
    assert submitted_now
    return review


def accept_all(cells: list[int]) -> list[dict[str, Any]]:
    return [{"cell_id": c, "decision": "accept"} for c in cells]


def reject_all(cells: list[int]) -> list[dict[str, Any]]:
    return [{"cell_id": c, "decision": "reject"} for c in cells]


def status_of(image: Image) -> str:
    return str(fresh(image).status)


def verified_cells(image: Image) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.VERIFIED).order_by("id"))


def annotation_cells(image: Image) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).order_by("id"))


def audits(project: Project | None = None, **filters: Any) -> list[AuditEvent]:
    queryset = AuditEvent.objects.all() if project is None else AuditEvent.objects.filter(project=project)
    return list(queryset.filter(**filters).order_by("id"))


def settings_set(project: Project, **fields: Any) -> None:
    """Change K / quorum / match IoU on the project row (the settings service is tested on its own)."""
    for name, value in fields.items():
        setattr(project, name, value)
    project.save(update_fields=list(fields))


def drive_to(state: str, *, image: Image, annotator: Any, admin: Any, class_id: int) -> list[int]:
    """Bring ``image`` to ``state`` with two cells (submitted: the project has no experts, so no
    reviewer can be assigned; the others need the project's experts). Returns the cell ids."""
    cells = annotate(image, annotator, [rect(4, 4, 12, 12), rect(24, 4, 12, 12)], class_id)
    if state == "annotating":
        return cells
    submit(image, annotator)
    if state in ("submitted", "in_review"):
        assert status_of(image) == state
        return cells
    a, b = open_reviewers(image)
    reviewed(a, image, accept_all(cells))
    if state == "verified":
        reviewed(b, image, accept_all(cells))
    else:
        reviewed(b, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
        if state == "adjudication":
            image_transition(image=fresh(image), user=admin, action="start_adjudication")
        elif state == "verified_by_adjudication":
            dispute = fresh(image).disputes.get()
            adjudication_decide(
                image=fresh(image), user=admin, decisions=[{"dispute_id": dispute.pk, "choice": "reject"}]
            )
            state = "verified"
    assert status_of(image) == state
    return cells
