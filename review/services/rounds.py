"""The end of a round: consensus of the submitted reviews, disputes, and the verified (gold) layer
with agreement and correction records. A round of a slide's region works on the annotation cells
inside the region and replaces only the verified cells inside it; the region's status moves,
not the image's (``subject_status_set``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from shapely.geometry import Polygon

from annotations.models import (
    Cell,
    CellSource,
    Image,
    ImageStatus,
    Layer,
    Region,
)
from annotations.services.audit import audit_record
from annotations.services.cells import cell_geometry
from annotations.services.regions import region_cell_ids
from annotations.services.workflow import image_status_set, region_status_set
from core.events import event_emit
from cytoseg.geometry import CleanPolygon, GeometryError, polygon_clean
from review.consensus import (
    ACCEPT,
    ADD,
    EDIT,
    REJECT,
    ConsensusCell,
    ExpertCell,
    ExpertReview,
    RasterCache,
    consensus_build,
    pair_agreement,
    proposal_relation,
)
from review.models import (
    CorrectionKind,
    CorrectionRecord,
    Dispute,
    DisputeStatus,
    PairAgreement,
    Review,
    ReviewDecision,
    ReviewDecisionKind,
    ReviewStatus,
    RoundStatus,
    VerificationRound,
)


def subject_status(image: Image, region: Region | None) -> str:
    """The status the round's transitions act on: the region's when it has one, else the image's."""
    return image.status if region is None else region.status


def subject_status_set(*, image: Image, region: Region | None, to: str, actor: User | None, action: str) -> None:
    """Move the region (when given) or the image along the workflow; both locked by the caller."""
    if region is None:
        image_status_set(image=image, to=to, actor=actor, action=action)
    else:
        region_status_set(region=region, to=to, actor=actor, action=action)


def round_cells(*, image: Image, region: Region | None, layer: str = Layer.ANNOTATION) -> Any:
    """The cells of ``layer`` a round concerns: the image's, or those whose centroid lies in its region."""
    cells = image.cells.filter(layer=layer)
    return cells if region is None else cells.filter(pk__in=region_cell_ids(region=region, layer=layer))


def _annotation_cells(image: Image, region: Region | None = None) -> dict[int, dict[str, Any]]:
    rows = round_cells(image=image, region=region).values(
        "pk", "cell_class_id", "polygon", "provenance", "author_id", "source", "model_version_id", "score"
    )
    return {r["pk"]: dict(r) for r in rows}


def _expert_reviews(
    reviews: list[Review], annotation: dict[int, dict[str, Any]]
) -> tuple[list[ExpertReview], dict[int, dict[int, ReviewDecision]]]:
    """The consensus input, and each review's decision per annotation cell."""
    out: list[ExpertReview] = []
    by_cell: dict[int, dict[int, ReviewDecision]] = {}
    for review in reviews:
        cells: list[ExpertCell] = []
        rejected: set[int] = set()
        mine = by_cell.setdefault(review.pk, {})
        for d in review.decisions.all():
            if d.decision == ReviewDecisionKind.ADD:
                if d.polygon and d.cell_class_id:
                    cells.append(ExpertCell(review.pk, d.polygon, d.cell_class_id, ADD))
                continue
            origin = annotation.get(d.cell_id) if d.cell_id is not None else None
            if origin is None:
                continue
            mine[origin["pk"]] = d
            if d.decision == ReviewDecisionKind.REJECT:
                rejected.add(origin["pk"])
            elif d.decision == ReviewDecisionKind.EDIT and d.polygon:
                cells.append(
                    ExpertCell(review.pk, d.polygon, d.cell_class_id or origin["cell_class_id"], EDIT, origin["pk"])
                )
            else:
                cells.append(ExpertCell(review.pk, origin["polygon"], origin["cell_class_id"], ACCEPT, origin["pk"]))
        out.append(ExpertReview(key=review.pk, cells=cells, rejected=frozenset(rejected)))
    return out, by_cell


def _version(
    review: Review, cell: ConsensusCell, decisions: dict[int, ReviewDecision], annotation: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """One expert's version of a disputed cell, for the adjudicator's side-by-side view."""
    base = {"review_id": review.pk, "reviewer_id": review.reviewer_id}
    member = next((m for m in cell.members if m.review == review.pk), None)
    if member is not None:
        return base | {"decision": member.decision, "polygon": member.polygon, "class_id": member.class_id}
    decision = decisions.get(cell.origin) if cell.origin is not None else None
    if decision is None or cell.origin is None:
        return base | {"decision": "absent", "polygon": None, "class_id": None}
    origin = annotation[cell.origin]
    if decision.decision == ReviewDecisionKind.REJECT:
        return base | {"decision": "reject", "polygon": None, "class_id": None}
    if decision.decision == ReviewDecisionKind.EDIT:
        return base | {
            "decision": "edit",
            "polygon": decision.polygon,
            "class_id": decision.cell_class_id or origin["cell_class_id"],
        }
    return base | {"decision": "accept", "polygon": origin["polygon"], "class_id": origin["cell_class_id"]}


def _agreed_entry(cell: ConsensusCell, reviewers: dict[int, int], rejected_by: list[int]) -> dict[str, Any]:
    def who(kind: str) -> list[int]:
        return sorted(reviewers[m.review] for m in cell.members if m.decision == kind)

    return {
        "polygon": cell.polygon,
        "class_id": cell.class_id,
        "origin_cell_id": cell.origin,
        "review_ids": sorted(m.review for m in cell.members),
        "accepted_by": who(ACCEPT),
        "edited_by": who(EDIT),
        "added_by": who(ADD),
        "rejected_by": rejected_by,
        "fusion": cell.fusion,
    }


def round_consensus(*, image: Image, verification_round: VerificationRound, actor: User | None) -> None:
    """Match the round's submitted reviews, record pair agreement, and either verify the image
    or open disputes for adjudication (image locked by the caller)."""
    region = verification_round.region
    reviews = list(
        verification_round.reviews.filter(status=ReviewStatus.SUBMITTED).prefetch_related("decisions").order_by("id")
    )
    annotation = _annotation_cells(image, region)
    expert_reviews, decisions = _expert_reviews(reviews, annotation)
    cache: RasterCache = {}
    result = consensus_build(
        expert_reviews,
        quorum=verification_round.quorum,
        match_iou=verification_round.match_iou,
        height=image.height,
        width=image.width,
        cache=cache,
    )
    reviewers = {r.pk: r.reviewer_id for r in reviews}
    positives = {e.key: [c.polygon for c in e.cells] for e in expert_reviews}
    pairs = []
    ordered = sorted(reviews, key=lambda r: r.reviewer_id)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            scores = pair_agreement(
                positives[a.pk], positives[b.pk], height=image.height, width=image.width, cache=cache
            )
            pairs.append(
                PairAgreement(
                    round=verification_round,
                    image=image,
                    review_a=a,
                    review_b=b,
                    reviewer_a_id=a.reviewer_id,
                    reviewer_b_id=b.reviewer_id,
                    f1=scores.f1,
                    mean_iou=scores.mean_iou,
                    dice=scores.dice,
                    matched=scores.matched,
                    n_a=scores.n_a,
                    n_b=scores.n_b,
                )
            )
    PairAgreement.objects.bulk_create(pairs)

    def rejected_by(cell: ConsensusCell) -> list[int]:
        if cell.origin is None:
            return []
        return sorted(
            reviewers[key]
            for key, mine in decisions.items()
            if (d := mine.get(cell.origin)) is not None and d.decision == ReviewDecisionKind.REJECT
        )

    verification_round.agreed = [_agreed_entry(c, reviewers, rejected_by(c)) for c in result.verified]
    disputes = [
        Dispute(
            round=verification_round,
            image=image,
            reason=cell.reason,
            origin_cell_id=cell.origin,
            annotation=(
                {
                    "polygon": annotation[cell.origin]["polygon"],
                    "class_id": annotation[cell.origin]["cell_class_id"],
                }
                if cell.origin is not None
                else None
            ),
            versions=[_version(r, cell, decisions[r.pk], annotation) for r in reviews],
            candidate=cell.polygon,
            candidate_class_id=cell.class_id,
        )
        for cell in result.disputed
    ]
    Dispute.objects.bulk_create(disputes)
    verification_round.summary = {
        "reviews": len(reviews),
        "verified": len(result.verified),
        "disputed": len(disputes),
        "rejected": len(result.rejected_origins),
        "fused": sum(1 for c in result.verified if c.fusion == "majority_vote"),
    }
    verification_round.save(update_fields=["agreed", "summary"])
    audit_record(
        project=image.project,
        image=image,
        actor=actor,
        action="consensus",
        target=_round_label(verification_round),
        after=verification_round.summary,
    )
    if disputes:
        verification_round.status = RoundStatus.DISPUTED
        verification_round.save(update_fields=["status"])
        subject_status_set(image=image, region=region, to=ImageStatus.DISPUTED, actor=actor, action="consensus")
        event_emit(
            project_id=image.project_id,
            event="dispute.opened",
            data={"image": image.pk, "round": verification_round.number, "disputes": len(disputes)}
            | _region_data(region),
        )
    else:
        image_verify(image=image, verification_round=verification_round, actor=actor, cache=cache)


def _round_label(verification_round: VerificationRound) -> str:
    region = verification_round.region
    where = "" if region is None else f" of region {region.name!r}"
    return f"round {verification_round.number}{where}"


def _region_data(region: Region | None) -> dict[str, Any]:
    return {} if region is None else {"region": region.pk}


def polygon_stored(points: list[list[float]], image: Image) -> CleanPolygon:
    try:
        return polygon_clean(points, width=image.width, height=image.height, max_vertices=settings.CELL_MAX_VERTICES)
    except GeometryError:
        # Fused contours come from pixel masks and are valid; keep the geometry as it is.
        shape = Polygon(points)
        x0, y0, x1, y1 = shape.bounds
        return CleanPolygon(points=points, area=shape.area, bbox=(x0, y0, x1 - x0, y1 - y0), repaired=False)


def image_verify(
    *, image: Image, verification_round: VerificationRound, actor: User | None, cache: RasterCache | None = None
) -> None:
    """Write the verified (gold) layer from the agreed cells and the adjudicated disputes, with
    provenance; record correction analytics and each review's agreement with the result.

    For a round of a region (locked by the caller), only the verified cells and model proposals
    whose centroid lies in the region are replaced and judged, and the correction records of
    the region's earlier rounds are replaced: the rest of the slide is untouched."""
    cache = {} if cache is None else cache
    region = verification_round.region
    annotation = _annotation_cells(image, region)
    final: list[dict[str, Any]] = [dict(entry) for entry in verification_round.agreed]
    for dispute in verification_round.disputes.filter(status=DisputeStatus.RESOLVED).order_by("id"):
        if dispute.polygon is None or dispute.cell_class_id is None:
            continue
        final.append(
            {
                "polygon": dispute.polygon,
                "class_id": dispute.cell_class_id,
                "origin_cell_id": dispute.origin_cell_id,
                "review_ids": [v["review_id"] for v in dispute.versions if v["polygon"] is not None],
                "accepted_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == ACCEPT],
                "edited_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == EDIT],
                "added_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == ADD],
                "rejected_by": [v["reviewer_id"] for v in dispute.versions if v["decision"] == REJECT],
                "fusion": "adjudicated",
                "adjudicated_by": dispute.resolved_by_id,
                "dispute_id": dispute.pk,
                "adjudication_choice": dispute.choice,
            }
        )
    proposals = {
        p["pk"]: p
        for p in round_cells(image=image, region=region, layer=Layer.PROPOSAL).values(
            "pk", "polygon", "model_version_id", "state"
        )
    }
    round_cells(image=image, region=region, layer=Layer.VERIFIED).delete()
    now = timezone.now()
    cells: list[Cell] = []
    records: list[CorrectionRecord] = []
    for entry in final:
        origin = annotation.get(entry["origin_cell_id"]) if entry["origin_cell_id"] is not None else None
        origin_provenance = origin["provenance"] if origin else {}
        proposal = proposals.get(int(origin_provenance.get("proposal_id") or 0)) if origin else None
        kind, iou = proposal_relation(
            entry["polygon"],
            proposal["polygon"] if proposal else None,
            height=image.height,
            width=image.width,
            cache=cache,
        )
        provenance = (
            entry
            | _region_data(region)
            | {
                "round": verification_round.number,
                "annotation_author_id": origin["author_id"] if origin else None,
                "annotation_source": origin["source"] if origin else None,
                "proposal_id": proposal["pk"] if proposal else None,
                "correction": kind,
                "proposal_iou": iou,
            }
        )
        del provenance["polygon"], provenance["class_id"]
        clean = polygon_stored(entry["polygon"], image)
        cell = Cell(
            image=image,
            layer=Layer.VERIFIED,
            cell_class_id=entry["class_id"],
            **cell_geometry(clean),
            score=origin["score"] if origin else None,
            source=CellSource.CONSENSUS,
            model_version_id=proposal["model_version_id"] if proposal else None,
            provenance=provenance,
            author_id=entry.get("adjudicated_by"),
            created_at=now,
            updated_at=now,
        )
        cells.append(cell)
        records.append(
            CorrectionRecord(
                image=image,
                round=verification_round,
                model_version_id=proposal["model_version_id"] if proposal else image.presegment_model_id,
                proposal_id=proposal["pk"] if proposal else None,
                kind=kind,
                iou=iou,
            )
        )
    Cell.objects.bulk_create(cells)
    for cell, record in zip(cells, records, strict=True):
        record.verified_cell = cell
    used = {c.provenance["proposal_id"] for c in cells if c.provenance.get("proposal_id")}
    records.extend(
        CorrectionRecord(
            image=image,
            round=verification_round,
            model_version_id=p["model_version_id"],
            proposal_id=p["pk"],
            kind=CorrectionKind.IGNORED if p["state"] == "" else CorrectionKind.DELETED,
        )
        for p in proposals.values()
        if p["pk"] not in used
    )
    earlier = CorrectionRecord.objects.filter(image=image)
    earlier = earlier.filter(round__region__isnull=True) if region is None else earlier.filter(round__region=region)
    earlier.delete()
    CorrectionRecord.objects.bulk_create(records)
    gold = [c.polygon for c in cells]
    reviews = list(verification_round.reviews.filter(status=ReviewStatus.SUBMITTED).prefetch_related("decisions"))
    expert_reviews, _ = _expert_reviews(reviews, annotation)
    for review, expert in zip(reviews, expert_reviews, strict=True):
        scores = pair_agreement(
            [c.polygon for c in expert.cells], gold, height=image.height, width=image.width, cache=cache
        )
        review.consensus_f1, review.consensus_mean_iou, review.consensus_dice = scores.f1, scores.mean_iou, scores.dice
    Review.objects.bulk_update(reviews, ["consensus_f1", "consensus_mean_iou", "consensus_dice"])
    verification_round.status = RoundStatus.CLOSED
    verification_round.closed_at = now
    verification_round.save(update_fields=["status", "closed_at"])
    audit_record(
        project=image.project,
        image=image,
        actor=actor,
        action="image.verified" if region is None else "region.verified",
        target=_round_label(verification_round),
        after={"verified_cells": len(cells), "corrections": dict(Counter(r.kind for r in records))}
        | _region_data(region),
    )
    subject_status_set(image=image, region=region, to=ImageStatus.VERIFIED, actor=actor, action="verify")
    event_emit(
        project_id=image.project_id,
        event="image.verified",
        data={"image": image.pk, "round": verification_round.number, "verified_cells": len(cells)}
        | _region_data(region),
    )
