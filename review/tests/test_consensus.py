"""Consensus, fusion and agreement against hand-computed cases (no database)."""

from __future__ import annotations

import pytest

from review.consensus import (
    ACCEPT,
    ADD,
    EDIT,
    ExpertCell,
    ExpertReview,
    consensus_build,
    pair_agreement,
    polygon_iou,
    polygons_fuse,
    proposal_relation,
)

H, W = 100, 200


def rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def area(points: list[list[float]]) -> float:
    # Shoelace formula: the fused polygons run along pixel edges, so this is their pixel count.
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True)) / 2)


def accept(review: int, origin: int, polygon: list[list[float]], class_id: int = 1) -> ExpertCell:
    return ExpertCell(review, polygon, class_id, ACCEPT, origin)


def build(reviews: list[ExpertReview], quorum: int = 2, match_iou: float = 0.5):  # type: ignore[no-untyped-def]
    return consensus_build(reviews, quorum=quorum, match_iou=match_iou, height=H, width=W)


# --- agreement -----------------------------------------------------------------------------


def test_pair_agreement_hand_computed() -> None:
    a = [rect(0, 0, 10, 10), rect(50, 50, 10, 10)]
    b = [rect(0, 0, 10, 10), rect(52, 50, 10, 10), rect(80, 80, 5, 5)]
    scores = pair_agreement(a, b, height=H, width=W)
    # Matches: identical squares (IoU 1) and squares shifted by 2 px (80 / 120). F1 = 2*2 / (2+3).
    assert scores.matched == 2 and scores.f1 == pytest.approx(0.8)
    assert scores.mean_iou == pytest.approx((1 + 80 / 120) / 2)
    # Pixels: 200 and 225 foreground, 180 shared.
    assert scores.dice == pytest.approx(2 * 180 / (200 + 225))
    assert (scores.n_a, scores.n_b) == (2, 3)


def test_pair_agreement_threshold_is_inclusive_and_empty_sets() -> None:
    # IoU exactly 0.5: 10x10 against 10x20 sharing the first square.
    scores = pair_agreement([rect(0, 0, 10, 10)], [rect(0, 0, 10, 20)], height=H, width=W)
    assert scores.matched == 1 and scores.mean_iou == pytest.approx(0.5)
    below = pair_agreement([rect(0, 0, 10, 10)], [rect(0, 0, 10, 21)], height=H, width=W)
    assert below.matched == 0 and below.f1 == 0.0 and below.mean_iou is None
    empty = pair_agreement([], [], height=H, width=W)
    assert (empty.f1, empty.dice, empty.mean_iou) == (1.0, 1.0, None)
    one_sided = pair_agreement([rect(0, 0, 10, 10)], [], height=H, width=W)
    assert (one_sided.f1, one_sided.dice) == (0.0, 0.0)


def test_polygon_iou_and_proposal_relation() -> None:
    assert polygon_iou(rect(0, 0, 10, 10), rect(5, 0, 10, 10), height=H, width=W) == pytest.approx(50 / 150)
    assert proposal_relation(rect(0, 0, 10, 10), None, height=H, width=W) == ("added", None)
    assert proposal_relation(rect(0, 0, 10, 10), rect(0, 0, 10, 10), height=H, width=W) == ("kept", 1.0)
    kind, iou = proposal_relation(rect(0, 0, 10, 8), rect(0, 0, 10, 10), height=H, width=W)
    assert kind == "edited" and iou == pytest.approx(0.8)


# --- fusion --------------------------------------------------------------------------------


def test_majority_of_three_is_the_median_contour() -> None:
    fused = polygons_fuse([rect(10, 10, 40, 24), rect(10, 10, 40, 28), rect(10, 10, 40, 30)], height=H, width=W)
    assert fused is not None and area(fused) == 40 * 28
    assert {p[1] for p in fused} == {10, 38} and {p[0] for p in fused} == {10, 50}


def test_majority_of_three_shifted_squares() -> None:
    # Pixels covered by at least two of three 10x10 squares shifted by 0, 2, 4 columns: columns 2..11.
    fused = polygons_fuse([rect(0, 0, 10, 10), rect(2, 0, 10, 10), rect(4, 0, 10, 10)], height=H, width=W)
    assert fused is not None and sorted({p[0] for p in fused}) == [2, 12] and area(fused) == 100


def test_two_contours_tie_broken_towards_the_average_contour() -> None:
    fused = polygons_fuse([rect(10, 10, 40, 20), rect(10, 10, 40, 24)], height=H, width=W)
    assert fused is not None
    # Rows 10..29 are covered by both; of the tie band 30..33 the two rows nearer the shared part win.
    assert max(p[1] for p in fused) == 32
    assert 40 * 20 < area(fused) < 40 * 24


def test_fusing_identical_contours_gives_them_back() -> None:
    square = rect(10, 10, 20, 20)
    assert polygons_fuse([square, square], height=H, width=W) == square


def test_disjoint_contours_fuse_to_nothing_for_a_tie() -> None:
    # Two experts with disjoint contours: every pixel is a tie with a negative mean distance.
    assert polygons_fuse([rect(0, 0, 4, 4), rect(50, 50, 4, 4)], height=H, width=W) is None


# --- consensus -----------------------------------------------------------------------------


def test_all_accept_verified_with_the_accepted_contour() -> None:
    cells = {1: rect(10, 10, 20, 20), 2: rect(60, 10, 20, 20)}
    reviews = [ExpertReview(k, [accept(k, o, p) for o, p in cells.items()]) for k in (7, 8)]
    result = build(reviews)
    assert [c.outcome for c in result.cells] == ["verified", "verified"]
    assert [c.polygon for c in result.cells] == list(cells.values())
    assert {c.fusion for c in result.cells} == {"accepted"} and [c.origin for c in result.cells] == [1, 2]


def test_one_rejects_disputed_under_unanimous_quorum_verified_under_quorum_one() -> None:
    polygon = rect(10, 10, 20, 20)
    reviews = [ExpertReview(1, [accept(1, 5, polygon)]), ExpertReview(2, [], rejected=frozenset({5}))]
    (cell,) = build(reviews, quorum=2).cells
    assert (cell.outcome, cell.reason, cell.others) == ("disputed", "quorum", [2])
    (lenient,) = build(reviews, quorum=1).cells
    assert lenient.outcome == "verified"


def test_rejected_by_everyone() -> None:
    reviews = [ExpertReview(k, [], rejected=frozenset({5})) for k in (1, 2)]
    result = build(reviews)
    assert result.cells == [] and result.rejected_origins == [5]


def test_added_cells_confirmed_or_disputed() -> None:
    a = ExpertReview(1, [ExpertCell(1, rect(100, 40, 20, 20), 1, ADD)])
    b = ExpertReview(2, [ExpertCell(2, rect(100, 40, 20, 18), 1, ADD)])
    (confirmed,) = build([a, b]).cells
    assert confirmed.outcome == "verified" and confirmed.origin is None and confirmed.fusion == "majority_vote"
    (alone,) = build([a, ExpertReview(2, [])]).cells
    assert (alone.outcome, alone.reason) == ("disputed", "added")


def test_class_must_reach_the_quorum() -> None:
    polygon = rect(10, 10, 20, 20)
    reviews = [
        ExpertReview(1, [accept(1, 5, polygon, class_id=1)]),
        ExpertReview(2, [ExpertCell(2, polygon, 2, EDIT, 5)]),
    ]
    (cell,) = build(reviews).cells
    assert (cell.outcome, cell.reason) == ("disputed", "class")
    three = [*reviews, ExpertReview(3, [accept(3, 5, polygon, class_id=1)])]
    (majority,) = build(three, quorum=2).cells
    assert majority.outcome == "verified" and majority.class_id == 1


def test_edit_and_accept_are_fused() -> None:
    reviews = [
        ExpertReview(1, [accept(1, 5, rect(10, 10, 40, 20))]),
        ExpertReview(2, [ExpertCell(2, rect(10, 10, 40, 24), 1, EDIT, 5)]),
    ]
    (cell,) = build(reviews).cells
    assert cell.outcome == "verified" and cell.fusion == "majority_vote"
    assert max(p[1] for p in cell.polygon) == 32


def test_edit_below_the_threshold_splits_into_two_disputes() -> None:
    reviews = [
        ExpertReview(1, [accept(1, 5, rect(10, 10, 20, 20))]),
        ExpertReview(2, [ExpertCell(2, rect(25, 10, 20, 20), 1, EDIT, 5)]),  # IoU 100/700
    ]
    result = build(reviews)
    assert [(c.outcome, c.support) for c in result.cells] == [("disputed", 1), ("disputed", 1)]


def test_matching_is_optimal_not_greedy() -> None:
    # Greedy by best IoU pairs a1-b2 (0.8) and leaves a2-b1 (8/36) unmatched; the optimal
    # one-to-one assignment matches both pairs (14/26 each).
    a = ExpertReview(1, [ExpertCell(1, rect(10, 0, 20, 10), 1, ADD), ExpertCell(1, rect(16, 0, 24, 10), 1, ADD)])
    b = ExpertReview(2, [ExpertCell(2, rect(4, 0, 20, 10), 1, ADD), ExpertCell(2, rect(14, 0, 16, 10), 1, ADD)])
    result = build([a, b])
    assert [c.support for c in result.cells] == [2, 2]
    assert all(c.outcome == "verified" for c in result.cells)


def test_three_experts_one_cluster_per_cell() -> None:
    polygons = {1: rect(10, 10, 20, 20), 2: rect(40, 10, 20, 20), 3: rect(70, 10, 20, 20)}
    reviews = [
        ExpertReview(
            k, [accept(k, o, p) for o, p in polygons.items() if (k, o) != (3, 3)], frozenset({3} if k == 3 else ())
        )
        for k in (1, 2, 3)
    ]
    result = build(reviews, quorum=3)
    assert [c.support for c in result.cells] == [3, 3, 2]
    assert [c.outcome for c in result.cells] == ["verified", "verified", "disputed"]
    assert result.cells[2].others == [3]


def test_review_order_does_not_change_a_two_expert_result() -> None:
    a = ExpertReview(1, [accept(1, 5, rect(10, 10, 20, 20)), ExpertCell(1, rect(100, 40, 20, 20), 1, ADD)])
    b = ExpertReview(2, [ExpertCell(2, rect(10, 10, 20, 24), 1, EDIT, 5)])
    forward, backward = build([a, b]), build([b, a])
    assert [(c.outcome, c.polygon) for c in forward.cells] == [(c.outcome, c.polygon) for c in backward.cells]
