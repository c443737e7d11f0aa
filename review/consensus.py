"""Multi-expert consensus and agreement (Django-free).

Each expert's review of an image is turned into the expert's own set of cells: the annotation
cells they accepted (the annotator's polygon), the ones they edited (their polygon) and the
cells they added. Rejected cells are simply absent from the expert's set.

Matching. The experts' cells are grouped into *clusters* holding at most one cell per expert.
Reviews are taken in order of their key; the first review's cells start the clusters, and every
further review is matched to the clusters formed so far by an optimal one-to-one assignment
(``cytoseg.metrics.match_one_to_one``, threshold ``match_iou``) on the mean IoU between the
cell and the cluster's members. Unmatched cells start new clusters. For two experts this is
exactly the optimal one-to-one matching of their cells.

Quorum. A cluster supported by at least ``quorum`` experts is verified when at least ``quorum``
of them also agree on the class; a cluster with fewer supporters (a cell some experts rejected,
or a cell one expert added and the others did not confirm), or without a class quorum, is
disputed and goes to adjudication. Annotation cells that no expert supports are rejected.

Fusion. The verified contour is the annotator's polygon when every supporter accepted it
unchanged (or the common polygon when all supporters drew the same one). Otherwise the
supporters' contours are fused by **pixel majority vote**: a pixel belongs to the verified cell
when more than half of the contours cover it (pixel centres, as ``polygon_rasterize`` defines).
With an even number of contours a pixel covered by exactly half of them is a tie; ties are
broken by the mean signed distance to the contours (positive inside), i.e. they fall on the
side of the average contour, so two experts' edits fuse to the contour halfway between them.
Majority vote was chosen over STAPLE because a cell has two to five raters, too few to
estimate per-rater sensitivity and specificity reliably, and because the result is easy to
explain to the doctors who adjudicate. The fused mask goes back to a polygon through
``cytoseg.contours.instances_to_polygons`` (largest component, outer contour), by its pixel-edge
``staircase`` method: the experts' own vertices come back where they agree, and a voted mask is
already what they drew, so there is nothing for the smooth method to round off.

Agreement. Per pair of experts: F1 of their cells matched one-to-one at IoU 0.5, the mean IoU of
the matched pairs (None when nothing matched) and the pixel Dice of the union of their cells.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from cytoseg.backends.base import Instance
from cytoseg.contours import instances_to_polygons, polygon_rasterize
from cytoseg.metrics import iou_matrix, match_one_to_one, pixel_dice

__all__ = [
    "ACCEPT",
    "ADD",
    "EDIT",
    "REJECT",
    "AgreementScores",
    "ConsensusCell",
    "ConsensusResult",
    "ExpertCell",
    "ExpertReview",
    "Raster",
    "RasterCache",
    "consensus_build",
    "pair_agreement",
    "polygon_iou",
    "polygons_fuse",
    "polygons_rasterize",
    "proposal_relation",
]

ACCEPT, REJECT, EDIT, ADD = "accept", "reject", "edit", "add"

Points = Sequence[Sequence[float]]


@dataclass(frozen=True)
class Raster:
    """A polygon rasterised into a bool crop placed at column ``x0``, row ``y0``."""

    x0: int
    y0: int
    mask: np.ndarray


@dataclass(frozen=True)
class ExpertCell:
    """One expert's version of one cell.

    ``decision`` is ``accept`` (``polygon`` is the annotator's), ``edit`` (the expert's own
    contour) or ``add`` (a cell the annotator missed). ``origin`` is the annotation cell the
    version belongs to (None for an added cell).
    """

    review: int
    polygon: list[list[float]]
    class_id: int
    decision: str
    origin: int | None = None


@dataclass
class ExpertReview:
    """One expert's submitted review: their positive cells and the annotation cells they rejected."""

    key: int
    cells: list[ExpertCell]
    rejected: frozenset[int] = frozenset()


@dataclass
class ConsensusCell:
    """One cluster of matching expert cells and its outcome.

    ``outcome`` is ``verified`` or ``disputed``; ``reason`` (disputed only) is ``quorum`` (fewer
    supporters than the quorum), ``added`` (only added by experts, not confirmed by the quorum)
    or ``class`` (contours match, the class does not reach the quorum). ``polygon`` is the
    verified contour, or for a dispute the candidate contour fused from its supporters.
    """

    outcome: str
    reason: str
    members: list[ExpertCell]
    others: list[int]  # keys of the reviews without a cell in this cluster
    origin: int | None
    class_id: int
    polygon: list[list[float]]
    fusion: str  # accepted | identical | majority_vote | single | medoid

    @property
    def support(self) -> int:
        return len(self.members)


@dataclass
class ConsensusResult:
    cells: list[ConsensusCell] = field(default_factory=list)
    rejected_origins: list[int] = field(default_factory=list)  # annotation cells nobody supported

    @property
    def verified(self) -> list[ConsensusCell]:
        return [c for c in self.cells if c.outcome == "verified"]

    @property
    def disputed(self) -> list[ConsensusCell]:
        return [c for c in self.cells if c.outcome == "disputed"]


@dataclass(frozen=True)
class AgreementScores:
    """Agreement of two sets of cells on one image."""

    f1: float
    mean_iou: float | None  # mean IoU of the matched pairs; None when no pair matched
    dice: float
    matched: int
    n_a: int
    n_b: int


# --- rasterisation -------------------------------------------------------------------------


def _window(polygons: Sequence[Points], height: int, width: int, margin: int = 0) -> tuple[int, int, int, int]:
    """Pixel window (x0, y0, x1, y1) holding every polygon, widened by ``margin`` (clipped)."""
    xs = [float(p[0]) for poly in polygons for p in poly]
    ys = [float(p[1]) for poly in polygons for p in poly]
    x0 = max(math.floor(min(xs)) - margin, 0)
    y0 = max(math.floor(min(ys)) - margin, 0)
    x1 = min(math.ceil(max(xs)) + margin, width)
    y1 = min(math.ceil(max(ys)) + margin, height)
    return x0, y0, max(x1, x0), max(y1, y0)


def _shifted(points: Points, x0: int, y0: int) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2) - np.array([x0, y0], dtype=np.float64)


def _raster(points: Points, window: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = window
    # Shifting by whole pixels keeps the pixel-centre rule exact.
    return polygon_rasterize(_shifted(points, x0, y0), height=y1 - y0, width=x1 - x0)


RasterCache = dict[tuple[tuple[float, ...], ...], Raster]


def polygons_rasterize(
    polygons: Sequence[Points], *, height: int, width: int, cache: RasterCache | None = None
) -> list[Raster]:
    """Each polygon as a bool crop of its own bounding window (the metrics' cropped form).

    ``cache`` (one per image) keeps rasters by polygon: the consensus, the pair agreements and
    the agreement with the result rasterise the same contours several times otherwise.
    """
    out: list[Raster] = []
    for points in polygons:
        key = tuple(tuple(float(v) for v in p) for p in points)
        raster = cache.get(key) if cache is not None else None
        if raster is None:
            window = _window([points], height, width)
            raster = Raster(x0=window[0], y0=window[1], mask=_raster(points, window))
            if cache is not None:
                cache[key] = raster
        out.append(raster)
    return out


def _paint(rasters: Sequence[Raster], height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), dtype=bool)
    for r in rasters:
        h, w = r.mask.shape
        canvas[r.y0 : r.y0 + h, r.x0 : r.x0 + w] |= r.mask
    return canvas


def polygon_iou(a: Points, b: Points, *, height: int, width: int, cache: RasterCache | None = None) -> float:
    """Pixel IoU of two polygons (0.0 when both are empty)."""
    rasters = polygons_rasterize([a, b], height=height, width=width, cache=cache)
    iou = iou_matrix(rasters[:1], rasters[1:])
    return float(iou[0, 0])


# --- fusion --------------------------------------------------------------------------------


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance to the outline: positive inside the mask, negative outside."""
    inside = ndi.distance_transform_edt(mask)
    outside = ndi.distance_transform_edt(~mask)
    return np.asarray(inside, dtype=np.float64) - np.asarray(outside, dtype=np.float64)


def polygons_fuse(
    polygons: Sequence[Points], *, height: int, width: int, tolerance: float = 0.5
) -> list[list[float]] | None:
    """Fuse contours of one cell by pixel majority vote (ties: mean signed distance, see module doc).

    Returns the fused polygon in image coordinates, or None when the vote leaves no pixel.
    """
    if not polygons:
        return None
    # One pixel of margin so that the distance transform sees background around every mask.
    window = _window(polygons, height, width, margin=1)
    masks = np.stack([_raster(p, window) for p in polygons])
    n = len(polygons)
    votes = masks.sum(axis=0)
    fused = votes * 2 > n
    tie = votes * 2 == n
    if tie.any():
        mean_distance = np.mean([_signed_distance(m) for m in masks], axis=0)
        fused |= tie & (mean_distance > 0)
    if not fused.any():
        return None
    instance = Instance(x0=window[0], y0=window[1], mask=fused, label=1, score=1.0)
    contours = instances_to_polygons([instance], min_area=1.0, tolerance=tolerance, method="staircase")
    if not contours:
        return None
    return [[float(x), float(y)] for x, y in contours[0].points]


# --- consensus -----------------------------------------------------------------------------


def _clusters(
    reviews: Sequence[ExpertReview], iou: np.ndarray, offsets: dict[int, int], threshold: float
) -> list[list[int]]:
    """Group cell indices into clusters with at most one cell per review (see module doc)."""
    clusters: list[list[int]] = []
    for review in reviews:
        start = offsets[review.key]
        indices = list(range(start, start + len(review.cells)))
        if not indices:
            continue
        if clusters:
            # Mean IoU of each cell with each cluster's members: IoU rows times a membership
            # matrix whose rows average over a cluster.
            membership = np.zeros((len(clusters), iou.shape[0]))
            for c, members in enumerate(clusters):
                membership[c, members] = 1.0 / len(members)
            similarity = iou[indices] @ membership.T
            rows, cols = match_one_to_one(similarity, threshold)
        else:
            rows, cols = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        matched = set()
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            clusters[c].append(indices[r])
            matched.add(r)
        clusters.extend([indices[r]] for r in range(len(indices)) if r not in matched)
    return clusters


def _origin(members: Sequence[ExpertCell]) -> int | None:
    origins = Counter(m.origin for m in members if m.origin is not None)
    if not origins:
        return None
    top = max(origins.values())
    return min(o for o, n in origins.items() if n == top)


def _class(members: Sequence[ExpertCell]) -> tuple[int, int]:
    """The most voted class and its votes (ties: the smallest class id, deterministic)."""
    votes = Counter(m.class_id for m in members)
    top = max(votes.values())
    return min(c for c, n in votes.items() if n == top), top


def _medoid(polygons: Sequence[list[list[float]]], rasters: Sequence[Raster]) -> list[list[float]]:
    """The contour with the highest mean IoU to the others."""
    iou = iou_matrix(list(rasters), list(rasters))
    return polygons[int(np.argmax(iou.sum(axis=1)))]


def _contour(
    members: Sequence[ExpertCell], rasters: Sequence[Raster], height: int, width: int
) -> tuple[list[list[float]], str]:
    polygons = [m.polygon for m in members]
    if len(members) == 1:
        return polygons[0], "single"
    if all(p == polygons[0] for p in polygons):
        kind = "accepted" if all(m.decision == ACCEPT for m in members) else "identical"
        return polygons[0], kind
    fused = polygons_fuse(polygons, height=height, width=width)
    if fused is None or len(fused) < 3:
        # The vote can only come out empty for contours that barely overlap; keep a real contour.
        return _medoid(polygons, rasters), "medoid"
    return fused, "majority_vote"


def consensus_build(
    reviews: Sequence[ExpertReview],
    *,
    quorum: int,
    match_iou: float,
    height: int,
    width: int,
    cache: RasterCache | None = None,
) -> ConsensusResult:
    """Match the experts' cells, decide each cluster by the quorum and fuse verified contours.

    ``reviews`` are the submitted reviews of one image; ``quorum`` the number of experts that
    must support a cell (and agree on its class) for it to be verified without adjudication.
    """
    ordered = sorted(reviews, key=lambda r: r.key)
    flat: list[ExpertCell] = [cell for review in ordered for cell in review.cells]
    offsets: dict[int, int] = {}
    position = 0
    for review in ordered:
        offsets[review.key] = position
        position += len(review.cells)
    rasters = polygons_rasterize([c.polygon for c in flat], height=height, width=width, cache=cache)
    iou = iou_matrix(rasters, rasters) if flat else np.zeros((0, 0))
    result = ConsensusResult()
    supported: set[int] = set()
    for indices in _clusters(ordered, iou, offsets, match_iou):
        members = [flat[i] for i in indices]
        member_reviews = {m.review for m in members}
        origin = _origin(members)
        class_id, class_votes = _class(members)
        polygon, fusion = _contour(members, [rasters[i] for i in indices], height, width)
        if len(members) < quorum:
            outcome, reason = "disputed", "added" if origin is None else "quorum"
        elif class_votes < quorum:
            outcome, reason = "disputed", "class"
        else:
            outcome, reason = "verified", ""
        supported.update(m.origin for m in members if m.origin is not None)
        result.cells.append(
            ConsensusCell(
                outcome=outcome,
                reason=reason,
                members=members,
                others=[r.key for r in ordered if r.key not in member_reviews],
                origin=origin,
                class_id=class_id,
                polygon=polygon,
                fusion=fusion,
            )
        )
    rejected = set().union(*(r.rejected for r in ordered)) if ordered else set()
    result.rejected_origins = sorted(rejected - supported)
    return result


# --- agreement -----------------------------------------------------------------------------


def _agreement(a: Sequence[Raster], b: Sequence[Raster], height: int, width: int, threshold: float) -> AgreementScores:
    iou = iou_matrix(list(a), list(b)) if a and b else np.zeros((len(a), len(b)))
    rows, cols = match_one_to_one(iou, threshold)
    matched = int(rows.size)
    total = len(a) + len(b)
    f1 = 1.0 if total == 0 else 2.0 * matched / total
    mean_iou = float(iou[rows, cols].mean()) if matched else None
    dice = pixel_dice(_paint(a, height, width), _paint(b, height, width))
    return AgreementScores(f1=f1, mean_iou=mean_iou, dice=dice, matched=matched, n_a=len(a), n_b=len(b))


def pair_agreement(
    a: Sequence[Points],
    b: Sequence[Points],
    *,
    height: int,
    width: int,
    iou_threshold: float = 0.5,
    cache: RasterCache | None = None,
) -> AgreementScores:
    """F1 at ``iou_threshold`` (one-to-one), mean IoU of matched cells and pixel Dice of two cell sets.

    Both empty: F1 and Dice are 1.0 (nothing to find, nothing found), mean IoU None.
    """
    ra = polygons_rasterize(a, height=height, width=width, cache=cache)
    rb = polygons_rasterize(b, height=height, width=width, cache=cache)
    return _agreement(ra, rb, height, width, iou_threshold)


def proposal_relation(
    verified: Points, proposal: Points | None, *, height: int, width: int, cache: RasterCache | None = None
) -> tuple[str, float | None]:
    """How a verified cell relates to the model proposal it came from.

    ``("added", None)`` without a proposal, ``("kept", 1.0)`` when the contours cover the same
    pixels, else ``("edited", IoU)``.
    """
    if proposal is None:
        return "added", None
    iou = polygon_iou(verified, proposal, height=height, width=width, cache=cache)
    if iou >= 1.0 - 1e-12:
        return "kept", 1.0
    return "edited", iou
