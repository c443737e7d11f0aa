"""Proposals: storing a model's proposals (pre-segmentation), accepting them into the annotation
layer (with provenance) or rejecting them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from annotations.models import Cell, CellSource, Image, Layer, PresegmentStatus
from annotations.selectors import cells_in_box_filter
from annotations.services.audit import audit_record
from annotations.services.cells import LayerWrite, annotation_layer_write
from annotations.services.workflow import annotation_write_check, image_presegmented
from core.errors import ServiceValidationError
from cytoseg.geometry import CleanPolygon
from cytoseg.regions import cells_inside
from training.models import ModelVersion


def _proposal_query(*, image: Image, ids: list[int] | None, select_all: bool) -> Any:
    if not select_all and not ids:
        raise ServiceValidationError("Nothing selected.", {"ids": "send ids or all: true"})
    queryset = Cell.objects.filter(image_id=image.pk, layer=Layer.PROPOSAL, state="")
    if not select_all:
        assert ids is not None
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ServiceValidationError("Invalid ids.", {"ids": "must be a list of integers"})
        queryset = queryset.filter(pk__in=ids)
        found = set(queryset.values_list("pk", flat=True))
        missing = sorted(set(ids) - found)
        if missing:
            raise ServiceValidationError(
                "Some proposals are not open proposals of this image.",
                {"ids": f"not open proposals of this image: {missing[:20]}"},
            )
    return queryset


def proposals_accept(
    *, image: Image, user: User, base_revision: int, ids: list[int] | None, select_all: bool = False
) -> LayerWrite:
    """Copy open proposals into the annotation layer (a new revision, 409 rules as for saves),
    keeping their provenance (proposal id, model version, score); the proposals become accepted."""
    with transaction.atomic():
        proposals = list(_proposal_query(image=image, ids=ids, select_all=select_all).select_for_update())
        desired = [
            {
                "id": None,
                "class_id": p.cell_class_id,
                "polygon": CleanPolygon(
                    points=p.polygon, area=p.area, bbox=(p.bbox_x, p.bbox_y, p.bbox_w, p.bbox_h), repaired=False
                ),
                "source": CellSource.MODEL,
                "score": p.score,
                "model_version_id": p.model_version_id,
                "provenance": {"proposal_id": p.pk, "accepted_by": user.pk},
            }
            for p in proposals
        ]
        result = annotation_layer_write(
            image=image,
            user=user,
            base_revision=base_revision,
            desired=desired,
            action="accept_proposals",
            keep_missing=True,
        )
        Cell.objects.filter(pk__in=[p.pk for p in proposals]).update(state="accepted", updated_at=timezone.now())
    return result


def proposals_reject(*, image: Image, user: User, ids: list[int] | None, select_all: bool = False) -> int:
    """Mark open proposals rejected (kept for correction analytics); returns how many."""
    with transaction.atomic():
        annotation_write_check(image=Image.objects.select_for_update().get(pk=image.pk))
        count = _proposal_query(image=image, ids=ids, select_all=select_all).update(
            state="rejected", updated_at=timezone.now()
        )
        audit_record(
            project=image.project,
            image=image,
            actor=user,
            action="proposals.reject",
            after={"count": count, "ids": ids, "all": select_all},
        )
    return count


_STORE_BATCH = 2000


def proposals_store(
    *, image: Image, model_version: ModelVersion, contours: Iterable[Any], within: list[Any] | None = None
) -> int:
    """Replace ``model_version``'s proposals of ``image`` with ``contours`` (anything with
    ``label``, ``points``, ``bbox`` as x_min, y_min, x_max, y_max, ``area`` and ``score``: a
    ``ContourResult`` or a stitched ``TileCell``) in one transaction, built and inserted
    ``_STORE_BATCH`` at a time (a whole slide has hundreds of thousands). ``within``: a region's
    polygon: only that version's proposals whose centroid lies in it are replaced (a region's
    run leaves the rest of the slide's proposals as they were)."""
    by_label: dict[int, int] = {}
    for cell_class in image.project.classes.order_by("order", "id"):
        by_label.setdefault(cell_class.model_label, cell_class.pk)
    now = timezone.now()
    provenance = {"model_kind": model_version.kind, "model_number": model_version.number}

    def cell(contour: Any, class_id: int) -> Cell:
        # the contour's bbox is (x_min, y_min, x_max, y_max); the store and COCO keep [x, y, w, h]
        x0, y0, x1, y1 = contour.bbox
        return Cell(
            image_id=image.pk,
            layer=Layer.PROPOSAL,
            cell_class_id=class_id,
            polygon=[[float(px), float(py)] for px, py in contour.points],
            bbox_x=x0,
            bbox_y=y0,
            bbox_w=x1 - x0,
            bbox_h=y1 - y0,
            area=contour.area,
            score=float(contour.score),
            source=CellSource.MODEL,
            model_version=model_version,
            provenance=dict(provenance),
            created_at=now,
            updated_at=now,
        )

    count = 0
    with transaction.atomic():
        old = Cell.objects.filter(image_id=image.pk, layer=Layer.PROPOSAL, model_version=model_version)
        if within is None:
            old.delete()
        else:
            xs, ys = [p[0] for p in within], [p[1] for p in within]
            rows = list(
                cells_in_box_filter(old, image_id=image.pk, box=(min(xs), min(ys), max(xs), max(ys))).values_list(
                    "id", "polygon"
                )
            )
            inside = cells_inside(within, [polygon for _, polygon in rows])
            doomed = [cell_id for (cell_id, _), keep in zip(rows, inside, strict=True) if keep]
            for start in range(0, len(doomed), _STORE_BATCH):
                Cell.objects.filter(pk__in=doomed[start : start + _STORE_BATCH]).delete()
        batch: list[Cell] = []
        for contour in contours:
            class_id = by_label.get(contour.label)
            if class_id is None:
                continue  # the project has no class for this label (e.g. no erythrocyte class)
            batch.append(cell(contour, class_id))
            if len(batch) >= _STORE_BATCH:
                Cell.objects.bulk_create(batch, batch_size=500)
                count += len(batch)
                batch = []
        Cell.objects.bulk_create(batch, batch_size=500)
        count += len(batch)
        updates: dict[str, Any] = {
            "presegment_status": PresegmentStatus.DONE,
            "presegment_error": "",
            "presegment_model": model_version,
        }
        Image.objects.filter(pk=image.pk).update(**updates)
        image_presegmented(image=image)
    return count
