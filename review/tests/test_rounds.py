"""The end of a round at service level (docs/api.md, "Consensus", "The verified (gold) layer",
"Agreement and correction analytics"): quorum and class majority, dispute reasons, rejected
cells, fusion, the rules frozen per round, the verified layer's provenance, pair agreement and
correction records."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Cell, CellSource, Image, Layer, PresegmentStatus
from annotations.services.cells import annotation_layer_write, cell_geometry
from annotations.services.workflow import image_presegmented
from cytoseg.geometry import polygon_clean
from review.models import CorrectionRecord, Dispute, PairAgreement, Review, RoundStatus, VerificationRound
from review.selectors import agreement_summary, corrections_summary
from review.services.settings import verification_settings_update
from review.services.workflow import image_transition
from review.tests.support import (
    accept_all,
    annotate,
    audits,
    fresh,
    open_reviewers,
    prepared,
    rect,
    reject_all,
    reviewed,
    settings_set,
    status_of,
    submit,
    verified_cells,
)
from tests.factories import image_create
from training.services.registry import model_version_baseline

pytestmark = pytest.mark.django_db

CELL = rect(4, 4, 12, 12)
SECOND = rect(24, 4, 12, 12)


def ys(points: list[list[float]]) -> tuple[float, float]:
    return min(p[1] for p in points), max(p[1] for p in points)


def the_round(image: Image) -> VerificationRound:
    return VerificationRound.objects.filter(image=image).order_by("-number")[0]


@pytest.fixture
def three(project: Any, experts: list[Any]) -> list[Any]:
    settings_set(project, experts_required=3, quorum=2)
    return experts


# --- quorum, class majority, disputes -------------------------------------------------------


def test_all_accept_verified_at_once(image: Image, annotator: Any, experts: list[Any], class_id: int) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL, SECOND], class_id)
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, accept_all(cells))
    assert status_of(image) == "verified"
    current = the_round(image)
    assert current.status == RoundStatus.CLOSED and current.closed_at is not None
    assert current.summary == {"reviews": 2, "verified": 2, "disputed": 0, "rejected": 0, "fused": 0}
    gold = verified_cells(image)
    assert [(c.polygon, c.cell_class_id, c.provenance["fusion"]) for c in gold] == [
        (CELL, class_id, "accepted"),
        (SECOND, class_id, "accepted"),
    ]
    assert not Dispute.objects.filter(image=image).exists()


def test_quorum_of_three_verifies_a_cell_two_support(
    image: Image, annotator: Any, three: list[Any], class_id: int
) -> None:
    cells, (a, b, c) = prepared(image, annotator, [CELL, SECOND], class_id)
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
    reviewed(c, image, reject_all(cells))
    # Cell 0: two of three (quorum 2) -> verified; cell 1: one supporter -> disputed (quorum).
    assert status_of(image) == "disputed"
    current = the_round(image)
    assert current.status == RoundStatus.DISPUTED
    assert current.summary == {"reviews": 3, "verified": 1, "disputed": 1, "rejected": 0, "fused": 0}
    (agreed,) = current.agreed
    assert agreed["origin_cell_id"] == cells[0] and agreed["accepted_by"] == sorted([a.pk, b.pk])
    assert agreed["rejected_by"] == [c.pk] and agreed["polygon"] == CELL
    (dispute,) = Dispute.objects.filter(image=image)
    assert (dispute.reason, dispute.origin_cell_id, dispute.status) == ("quorum", cells[1], "open")
    assert dispute.annotation == {"polygon": SECOND, "class_id": class_id}
    assert dispute.candidate == SECOND and dispute.candidate_class_id == class_id
    reviews = {r.reviewer_id: r.pk for r in Review.objects.filter(image=image)}
    assert dispute.versions == [
        {
            "review_id": reviews[a.pk],
            "reviewer_id": a.pk,
            "decision": "accept",
            "polygon": SECOND,
            "class_id": class_id,
        },
        {"review_id": reviews[b.pk], "reviewer_id": b.pk, "decision": "reject", "polygon": None, "class_id": None},
        {"review_id": reviews[c.pk], "reviewer_id": c.pk, "decision": "reject", "polygon": None, "class_id": None},
    ]
    # Nothing is gold before the adjudication.
    assert verified_cells(image) == []


def test_quorum_null_means_all_k(project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int) -> None:
    settings_set(project, experts_required=3, quorum=None)
    cells, (a, b, c) = prepared(image, annotator, [CELL], class_id)
    assert the_round(image).quorum == 3
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, accept_all(cells))
    reviewed(c, image, reject_all(cells))
    assert status_of(image) == "disputed"
    assert Dispute.objects.get(image=image).reason == "quorum"


def test_class_majority_of_the_quorum(
    image: Image, annotator: Any, three: list[Any], class_id: int, other_class_id: int
) -> None:
    cells, (a, b, c) = prepared(image, annotator, [CELL], class_id)
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, [{"cell_id": cells[0], "decision": "edit", "polygon": CELL, "class_id": other_class_id}])
    reviewed(c, image, accept_all(cells))
    # Two of three say `class_id` (quorum 2): verified with that class; the same polygon drawn
    # by all is `identical` (not every supporter accepted it unchanged).
    assert status_of(image) == "verified"
    (gold,) = verified_cells(image)
    assert gold.cell_class_id == class_id and gold.polygon == CELL
    assert gold.provenance["fusion"] == "identical" and gold.provenance["edited_by"] == [b.pk]


def test_class_disagreement_is_disputed(
    image: Image, annotator: Any, experts: list[Any], class_id: int, other_class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, [{"cell_id": cells[0], "decision": "edit", "polygon": CELL, "class_id": other_class_id}])
    assert status_of(image) == "disputed"
    (dispute,) = Dispute.objects.filter(image=image)
    assert dispute.reason == "class" and dispute.origin_cell_id == cells[0]
    assert {v["reviewer_id"]: (v["decision"], v["class_id"]) for v in dispute.versions} == {
        a.pk: ("accept", class_id),
        b.pk: ("edit", other_class_id),
    }


def test_a_cell_added_by_one_expert_is_disputed(
    image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    added = rect(40, 28, 12, 12)
    reviewed(a, image, accept_all(cells), added=[{"class_id": class_id, "polygon": added}])
    reviewed(b, image, accept_all(cells))
    assert status_of(image) == "disputed"
    (dispute,) = Dispute.objects.filter(image=image)
    assert (dispute.reason, dispute.origin_cell_id, dispute.annotation) == ("added", None, None)
    assert [(v["reviewer_id"], v["decision"], v["polygon"]) for v in dispute.versions] == [
        (a.pk, "add", added),
        (b.pk, "absent", None),
    ]
    assert dispute.candidate == added


def test_a_cell_added_by_both_is_verified(image: Image, annotator: Any, experts: list[Any], class_id: int) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    reviewed(a, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(40, 28, 12, 12)}])
    reviewed(b, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(40, 28, 12, 14)}])
    assert status_of(image) == "verified"
    (added,) = [c for c in verified_cells(image) if c.provenance["origin_cell_id"] is None]
    assert added.provenance["added_by"] == sorted([a.pk, b.pk]) and added.provenance["accepted_by"] == []
    assert added.provenance["fusion"] == "majority_vote" and added.provenance["correction"] == "added"
    assert added.provenance["annotation_author_id"] is None and added.provenance["annotation_source"] is None


def test_cells_nobody_supports_are_rejected(image: Image, annotator: Any, experts: list[Any], class_id: int) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL, SECOND], class_id)
    reviewed(a, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
    reviewed(b, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
    # Rejected by everyone: neither gold nor disputed; the image is verified at once.
    assert status_of(image) == "verified"
    assert the_round(image).summary == {"reviews": 2, "verified": 1, "disputed": 0, "rejected": 1, "fused": 0}
    assert [c.provenance["origin_cell_id"] for c in verified_cells(image)] == [cells[0]]
    assert not Dispute.objects.filter(image=image).exists()


# --- fusion ---------------------------------------------------------------------------------


def test_identical_edits_keep_the_common_polygon(
    image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    edit = [{"cell_id": cells[0], "decision": "edit", "polygon": rect(4, 4, 12, 10)}]
    reviewed(a, image, edit)
    reviewed(b, image, edit)
    (gold,) = verified_cells(image)
    assert gold.polygon == rect(4, 4, 12, 10) and gold.provenance["fusion"] == "identical"
    assert gold.provenance["edited_by"] == sorted([a.pk, b.pk]) and gold.provenance["accepted_by"] == []


def test_two_edits_fuse_halfway_by_majority_vote(
    image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [rect(4, 4, 20, 12)], class_id)
    reviewed(a, image, [{"cell_id": cells[0], "decision": "edit", "polygon": rect(4, 4, 20, 14)}])
    reviewed(b, image, [{"cell_id": cells[0], "decision": "edit", "polygon": rect(4, 4, 20, 18)}])
    assert status_of(image) == "verified"
    (gold,) = verified_cells(image)
    # Pixels both cover, plus the tie band up to the average contour (height 16).
    assert gold.provenance["fusion"] == "majority_vote" and ys(gold.polygon) == (4, 20)
    assert 20 * 14 < gold.area <= 20 * 16
    assert the_round(image).summary["fused"] == 1


def test_three_edits_fuse_to_the_median(image: Image, annotator: Any, three: list[Any], class_id: int) -> None:
    cells, reviewers = prepared(image, annotator, [rect(4, 4, 20, 12)], class_id)
    for user, height in zip(reviewers, (10, 12, 16), strict=True):
        reviewed(user, image, [{"cell_id": cells[0], "decision": "edit", "polygon": rect(4, 4, 20, height)}])
    (gold,) = verified_cells(image)
    # A pixel is kept when two of three cover it: the median height.
    assert gold.provenance["fusion"] == "majority_vote" and gold.area == 20 * 12 and ys(gold.polygon) == (4, 16)


def test_matching_threshold_is_inclusive(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    settings_set(project, match_iou=0.5)
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    # IoU exactly 0.5 (a 10x10 square inside a 10x20 rectangle): one cluster, verified.
    reviewed(a, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(40, 4, 10, 10)}])
    reviewed(b, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(40, 4, 10, 20)}])
    assert status_of(image) == "verified" and len(verified_cells(image)) == 2


# --- rules frozen per round -----------------------------------------------------------------


def test_k_quorum_and_iou_are_frozen_when_the_round_starts(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    verification_settings_update(
        project=project, user=admin_user, data={"experts_required": 3, "quorum": 3, "match_iou": 0.9}
    )
    current = the_round(image)
    assert (current.experts_required, current.quorum, current.match_iou) == (2, 2, 0.5)
    assert len(open_reviewers(image)) == 2  # no third expert is added to a running round
    reviewed(a, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(40, 4, 10, 10)}])
    reviewed(b, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(40, 4, 10, 20)}])
    # Under the new rules (K 3, IoU 0.9) this round would neither end nor match the added cells.
    assert status_of(image) == "verified" and len(verified_cells(image)) == 2
    # The next round uses the new settings.
    image_transition(image=fresh(image), user=admin_user, action="reopen")
    annotate(image, annotator, [CELL], class_id)
    submit(image, annotator)
    second = the_round(image)
    assert (second.number, second.experts_required, second.quorum, second.match_iou) == (2, 3, 3, 0.9)
    assert len(open_reviewers(image)) == 3


# --- the verified layer and correction records ----------------------------------------------


def _proposal(image: Image, version: Any, class_id: int, points: list[list[float]], score: float) -> Cell:
    clean = polygon_clean(points, width=image.width, height=image.height, max_vertices=100)
    return Cell.objects.create(
        image=image,
        layer=Layer.PROPOSAL,
        cell_class_id=class_id,
        **cell_geometry(clean),
        score=score,
        source=CellSource.MODEL,
        model_version=version,
        provenance={"model_kind": version.kind, "model_number": version.number},
    )


def _accept_proposals(image: Image, user: Any, proposals: list[Cell]) -> list[int]:
    """What inference.proposals.proposals_accept writes: the proposals copied with provenance."""
    current = fresh(image)
    written = annotation_layer_write(
        image=current,
        user=user,
        base_revision=current.revision,
        desired=[
            {
                "id": None,
                "class_id": p.cell_class_id,
                "polygon": polygon_clean(p.polygon, width=image.width, height=image.height, max_vertices=100),
                "source": CellSource.MODEL,
                "score": p.score,
                "model_version_id": p.model_version_id,
                "provenance": {"proposal_id": p.pk, "accepted_by": user.pk},
            }
            for p in proposals
        ],
        action="accept_proposals",
        keep_missing=True,
    )
    Cell.objects.filter(pk__in=[p.pk for p in proposals]).update(state="accepted")
    return [c["id"] for c in written.cells]


def test_verified_layer_provenance_and_correction_records(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    version = model_version_baseline(project=project)
    kept, edited, rejected, ignored, dropped = (
        _proposal(image, version, class_id, rect(4, 4, 12, 12), 0.9),
        _proposal(image, version, class_id, rect(24, 4, 12, 12), 0.7),
        _proposal(image, version, class_id, rect(44, 4, 12, 12), 0.5),
        _proposal(image, version, class_id, rect(4, 28, 12, 12), 0.3),
        _proposal(image, version, class_id, rect(24, 28, 12, 12), 0.6),
    )
    Image.objects.filter(pk=image.pk).update(presegment_model=version, presegment_status=PresegmentStatus.DONE)
    image_presegmented(image=image)
    from_kept, from_edited, from_dropped = _accept_proposals(image, annotator, [kept, edited, dropped])
    Cell.objects.filter(pk=rejected.pk).update(state="rejected")  # the annotator rejected it
    current = fresh(image)
    drawn = annotation_layer_write(
        image=current,
        user=annotator,
        base_revision=current.revision,
        desired=[
            {
                "id": None,
                "class_id": class_id,
                "polygon": polygon_clean(rect(44, 28, 12, 12), width=64, height=48, max_vertices=100),
            }
        ],
        action="replace",
        keep_missing=True,
    ).cells[0]["id"]
    submit(image, annotator)
    a, b = open_reviewers(image)
    decisions = [
        {"cell_id": from_kept, "decision": "accept"},
        {"cell_id": from_edited, "decision": "edit", "polygon": rect(24, 4, 12, 8)},
        {"cell_id": from_dropped, "decision": "reject"},
        {"cell_id": drawn, "decision": "accept"},
    ]
    review_a, review_b = reviewed(a, image, decisions), reviewed(b, image, decisions)
    assert status_of(image) == "verified"
    gold = {c.provenance["origin_cell_id"]: c for c in verified_cells(image)}
    assert set(gold) == {from_kept, from_edited, drawn}
    both = sorted([a.pk, b.pk])
    assert gold[from_kept].provenance == {
        "round": 1,
        "origin_cell_id": from_kept,
        "review_ids": sorted([review_a.pk, review_b.pk]),
        "accepted_by": both,
        "edited_by": [],
        "added_by": [],
        "rejected_by": [],
        "fusion": "accepted",
        "annotation_author_id": annotator.pk,
        "annotation_source": "model",
        "proposal_id": kept.pk,
        "correction": "kept",
        "proposal_iou": 1.0,
    }
    for cell in gold.values():
        assert cell.layer == Layer.VERIFIED and cell.source == CellSource.CONSENSUS and cell.author_id is None
    # model_version and score of the proposal the cell came from.
    assert (gold[from_kept].model_version_id, gold[from_kept].score) == (version.pk, 0.9)
    assert (gold[from_edited].model_version_id, gold[from_edited].score) == (version.pk, 0.7)
    assert gold[from_edited].provenance["correction"] == "edited"
    assert gold[from_edited].provenance["proposal_iou"] == pytest.approx(96 / 144)
    assert gold[from_edited].provenance["edited_by"] == both
    assert gold[drawn].provenance["correction"] == "added" and gold[drawn].provenance["proposal_id"] is None
    assert (gold[drawn].model_version_id, gold[drawn].provenance["annotation_source"]) == (None, "manual")
    records = {
        (r.kind, r.proposal_id): r for r in CorrectionRecord.objects.filter(image=image).select_related("verified_cell")
    }
    assert set(records) == {
        ("kept", kept.pk),
        ("edited", edited.pk),
        ("added", None),
        ("deleted", rejected.pk),  # rejected by the annotator
        ("deleted", dropped.pk),  # accepted, then rejected by the experts
        ("ignored", ignored.pk),  # never acted upon
    }
    assert records["kept", kept.pk].verified_cell_id == gold[from_kept].pk and records["kept", kept.pk].iou == 1.0
    assert records["edited", edited.pk].iou == pytest.approx(96 / 144)
    assert records["added", None].verified_cell_id == gold[drawn].pk
    # Added cells count for the image's pre-segmentation model.
    assert {r.model_version_id for r in records.values()} == {version.pk}
    assert all(r.round_id == the_round(image).pk for r in records.values())
    (row,) = corrections_summary(project=project)["model_versions"]
    assert (row["kept"], row["edited"], row["added"], row["deleted"], row["ignored"]) == (1, 1, 1, 2, 1)
    assert row["kept_rate"] == pytest.approx(1 / 4) and row["proposal_precision"] == pytest.approx(2 / 4)
    assert row["proposal_recall"] == pytest.approx(2 / 3) and row["edited_mean_iou"] == pytest.approx(96 / 144)
    (verified_event,) = audits(image=image, action="image.verified")
    assert verified_event.after == {
        "verified_cells": 3,
        "corrections": {"kept": 1, "edited": 1, "added": 1, "deleted": 2, "ignored": 1},
    }


# --- agreement ------------------------------------------------------------------------------


def test_pair_agreement_is_recorded_at_consensus_and_review_agreement_at_verification(
    image: Image, annotator: Any, admin_user: Any, three: list[Any], class_id: int
) -> None:
    cells, (a, b, c) = prepared(image, annotator, [CELL, SECOND], class_id)
    reviewed(a, image, accept_all(cells))
    reviewed(
        b,
        image,
        [
            {"cell_id": cells[0], "decision": "accept"},
            {"cell_id": cells[1], "decision": "edit", "polygon": rect(24, 4, 12, 9)},
        ],
    )
    reviewed(c, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
    # Cell 1: a and b match (IoU 0.75) -> verified by two; the image is verified.
    assert status_of(image) == "verified"
    pairs = {(p.reviewer_a_id, p.reviewer_b_id): p for p in PairAgreement.objects.filter(image=image)}
    assert set(pairs) == {(a.pk, b.pk), (a.pk, c.pk), (b.pk, c.pk)}
    for (low, high), pair in pairs.items():
        assert low < high and pair.review_a.reviewer_id == low and pair.review_b.reviewer_id == high
        assert pair.round_id == the_round(image).pk
    ab = pairs[a.pk, b.pk]
    assert (ab.f1, ab.matched, ab.n_a, ab.n_b) == (1.0, 2, 2, 2)
    assert ab.mean_iou == pytest.approx((1 + 0.75) / 2)
    assert ab.dice == pytest.approx(2 * (144 + 108) / (288 + 252))
    ac = pairs[a.pk, c.pk]
    assert (ac.f1, ac.matched, ac.n_a, ac.n_b, ac.mean_iou) == (pytest.approx(2 / 3), 1, 2, 1, 1.0)
    reviews = {r.reviewer_id: r for r in Review.objects.filter(image=image)}
    # Against the verified result (cell 1 fused from a's and b's contours).
    assert reviews[c.pk].consensus_f1 == pytest.approx(2 / 3)
    summary = agreement_summary(project=fresh(image).project)
    assert summary["summary"]["pairs"] == 3 and summary["summary"]["verified_images"] == 1
    assert {r["reviewer"]: r["reviews"] for r in summary["experts"]} == {a.pk: 1, b.pk: 1, c.pk: 1}


def test_a_disputed_round_has_pair_agreement_but_no_correction_records(
    image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, reject_all(cells))
    assert status_of(image) == "disputed"
    (pair,) = PairAgreement.objects.filter(image=image)
    assert (pair.f1, pair.matched, pair.mean_iou, pair.dice) == (0.0, 0, None, 0.0)
    assert not CorrectionRecord.objects.filter(image=image).exists()
    assert not Review.objects.filter(image=image, consensus_f1__isnull=False).exists()
    assert verified_cells(image) == []


def test_agreement_counts_each_round_once_however_many_disputes_it_has(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    # Three submissions: one verified, one disputed on three cells, one still in review. The
    # disputes' join used to count the disputed round once per dispute ("5 review rounds").
    cells, (a, b) = prepared(image, annotator, [CELL, SECOND], class_id)
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, accept_all(cells))
    disputed = image_create(project, seed=1, width=image.width, height=image.height)
    cells, (a, b) = prepared(disputed, annotator, [CELL, SECOND, rect(4, 24, 12, 12)], class_id)
    reviewed(a, disputed, accept_all(cells))
    reviewed(b, disputed, reject_all(cells))
    assert Dispute.objects.filter(image=disputed).count() == 3
    prepared(image_create(project, seed=2, width=image.width, height=image.height), annotator, [CELL], class_id)
    summary = agreement_summary(project=fresh(image).project)["summary"]
    assert (summary["rounds"], summary["rounds_done"], summary["rounds_with_disputes"]) == (3, 2, 1)
    assert agreement_summary(project=project, image=disputed)["summary"]["rounds"] == 1
