"""Proposals: accepting model proposals into the annotation layer (with provenance) or rejecting them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from annotations.models import (
    Cell,
    CellSource,
    Image,
    Layer,
)
from annotations.services.audit import audit_record
from annotations.services.cells import LayerWrite, annotation_layer_write
from annotations.services.workflow import annotation_write_check
from core.errors import ServiceValidationError
from cytoseg.geometry import CleanPolygon


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
