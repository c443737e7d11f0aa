"""How the two-stage model combines nnU-Net's classes with Cellpose's instances (Django-free).

Two rules, a setting of the ``two_stage`` backend (``combine``):

* ``"filter"`` (paper A as first built): Cellpose's masks are kept as they are; nnU-Net only
  drops the ones lying mostly on its background and names each kept one's class. nnU-Net's
  better foreground is thrown away (foreground Dice 0.75 where nnU-Net alone had 0.97 on hard
  fields), and the cells Cellpose missed stay missed.
* ``"assign"``: nnU-Net decides *where* cells and erythrocytes are, the instances decide how
  that foreground splits (:func:`combine_assign`):

  1. erythrocytes come from nnU-Net's erythrocyte class, split at distance peaks with a size
     prior of their own, so they neither shrink the cell diameter nor take cell pixels;
  2. cell instances are seeded from more than one source: Cellpose's masks followed only
     inside nnU-Net's cell foreground, and, for a model with a cell-rim class, the cell
     interiors nnU-Net separates (a Cellpose mask holding two interiors is split between
     them; an interior no Cellpose mask covers is a cell Cellpose missed);
  3. the rest of the cell foreground goes to an instance only where that instance supports
     it: within ``grow_radius`` pixels of its own mask, flooded along nnU-Net's rim
     probability (or the distance to the seeds) so that it stops where two cells meet;
  4. foreground nobody claims becomes a new cell only when its size and shape say "cell"
     (area and solidity); slivers are left out.

Pure functions on arrays; no model is run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.segmentation import watershed

from cytoseg.backends.base import Instance, instances_from_label_map
from cytoseg.backends.settings import COMBINE_MODES

__all__ = ["COMBINE_MODES", "AssignParams", "combine_assign", "erythrocytes_split"]


@dataclass(frozen=True)
class AssignParams:
    """Parameters of :func:`combine_assign` (pixels at the image's own scale).

    ``seed_min_area``: smaller seeds are dropped. ``split_min_area``: a Cellpose mask is split
    only between nnU-Net interiors at least this big. ``grow_radius``: how far beyond its own
    mask an instance may take foreground. ``new_min_area`` / ``new_min_solidity`` /
    ``new_max_elongation`` (major / minor axis): unclaimed foreground that becomes a cell.
    ``erythrocyte_radius``: the size prior of erythrocytes (peaks of their distance map closer
    than this merge). ``interior_threshold``: a cell pixel
    is interior when its rim probability is below this share of its cell probability.
    ``split_radius``: unclaimed foreground too big or odd for one cell is cut at distance peaks
    this far apart (0: not cut). ``leftover``: what nobody claims after that, ``"attach"`` to
    the instance it touches (the cells then cover nnU-Net's foreground) or ``"drop"``.
    ``core_threshold`` / ``core_min_area``: a core seed is a component of the core probability
    above the threshold, at least this big. ``primary``: with a seed class, ``"nnunet"`` seeds
    from its cores or interiors and adds the Cellpose masks that hold none; ``"cellpose"`` keeps
    Cellpose's masks, splits those holding two or more interiors and adds the interiors they
    miss. ``elevation``: what the seeds grow along, ``"model"`` (the core or rim probability)
    or ``"distance"`` (to the seeds).
    """

    seed_min_area: int = 15
    split_min_area: int = 25
    grow_radius: float = 4.0
    new_min_area: int = 60
    new_min_solidity: float = 0.9
    new_max_elongation: float = 2.5
    erythrocyte_radius: float = 4.0
    erythrocyte_min_area: int = 12
    interior_threshold: float = 0.5
    split_radius: float = 8.0
    leftover: str = "attach"
    core_threshold: float = 0.5
    core_min_area: int = 4
    primary: str = "nnunet"
    elevation: str = "model"


def _relabel_largest(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Keep each label's largest connected piece (cutting to a foreground can leave crumbs),
    drop labels smaller than ``min_area``; relabel 1..N."""
    out = np.zeros_like(labels, dtype=np.int32)
    n = 0
    for index, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == index
        parts, count = ndi.label(mask)
        if count > 1:
            sizes = np.bincount(parts.ravel())[1:]
            mask = parts == (1 + int(np.argmax(sizes)))
        if int(mask.sum()) < min_area:
            continue
        n += 1
        out[sl][mask] = n
    return out


def erythrocytes_split(mask: np.ndarray, *, radius: float, min_area: int) -> np.ndarray:
    """Erythrocyte instances of a class mask: touching ones are split at the peaks of the
    distance map at least ``radius`` apart (erythrocytes are small discs of one size)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    dist = ndi.distance_transform_edt(mask)
    size = max(3, round(radius) * 2 + 1)
    peaks = (dist == ndi.maximum_filter(dist, size=size)) & (dist >= max(1.0, radius * 0.5)) & mask
    markers, _ = ndi.label(peaks)
    labels = watershed(-dist, markers, mask=mask)
    # a component without any peak (thin, faint) is still one erythrocyte
    rest, n_rest = ndi.label(mask & (labels == 0))
    if n_rest:
        labels = np.where(rest > 0, rest + labels.max(), labels)
    return _relabel_largest(labels.astype(np.int32), min_area)


def _split_by_interiors(
    cp: np.ndarray, interiors: np.ndarray, elevation: np.ndarray, split_min_area: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split Cellpose masks that hold two or more big nnU-Net interiors between them; return
    (new label map, interiors no Cellpose mask covers)."""
    out = cp.copy()
    next_id = int(cp.max()) + 1
    ids = np.arange(1, int(interiors.max()) + 1)
    if ids.size == 0:
        return out, np.zeros(cp.shape, dtype=bool)
    areas = ndi.sum(np.ones_like(interiors), interiors, ids)
    covered = ndi.sum(cp > 0, interiors, ids) / np.maximum(areas, 1)
    host = ndi.maximum(cp, interiors, ids)  # one Cellpose id under each interior (any)
    missed = np.isin(interiors, ids[(covered < 0.2) & (areas >= split_min_area)])
    for cell_id in np.unique(host[(covered >= 0.5) & (areas >= split_min_area)]).astype(np.int32):
        if cell_id <= 0:
            continue
        region = cp == cell_id
        inside = [
            int(k) for k in ids if host[k - 1] == cell_id and covered[k - 1] >= 0.5 and areas[k - 1] >= split_min_area
        ]
        inside = [k for k in inside if ((interiors == k) & region).sum() >= 0.5 * areas[k - 1]]
        if len(inside) < 2:
            continue
        markers = np.zeros(cp.shape, dtype=np.int32)
        for j, k in enumerate(inside):
            markers[(interiors == k) & region] = j + 1
        parts = watershed(elevation, markers, mask=region)
        for j in range(2, len(inside) + 1):
            out[parts == j] = next_id
            next_id += 1
    return out, missed


def _cell_like(region: Any, params: AssignParams) -> bool:
    elongation = region.axis_major_length / max(region.axis_minor_length, 1e-6)
    return bool(
        region.area >= params.new_min_area
        and region.solidity >= params.new_min_solidity
        and elongation <= params.new_max_elongation
    )


def _claim_unclaimed(grown: np.ndarray, cell: np.ndarray, params: AssignParams) -> np.ndarray:
    rest, n_rest = ndi.label(cell & (grown == 0))
    if not n_rest:
        return grown
    next_id = int(grown.max()) + 1
    for region in regionprops(rest):
        rows, cols = region.coords[:, 0], region.coords[:, 1]
        if _cell_like(region, params):
            grown[rows, cols] = next_id
            next_id += 1
            continue
        if params.split_radius <= 0 or region.area < 2 * params.new_min_area:
            continue
        sl = region.slice
        blob = rest[sl] == region.label
        pieces = erythrocytes_split(blob, radius=params.split_radius, min_area=params.new_min_area)
        for piece in regionprops(pieces):
            if _cell_like(piece, params):
                pr, pc = piece.coords[:, 0] + sl[0].start, piece.coords[:, 1] + sl[1].start
                grown[pr, pc] = next_id
                next_id += 1
    return grown


def _add_unseeded(seeds: np.ndarray, cp: np.ndarray, min_area: int) -> np.ndarray:
    """``seeds`` plus every Cellpose mask that holds no seed (a cell nnU-Net's seed class
    missed), where it does not overlap a seed."""
    out = seeds.copy()
    next_id = int(seeds.max()) + 1
    for index, sl in enumerate(ndi.find_objects(cp), start=1):
        if sl is None:
            continue
        mask = cp[sl] == index
        if (seeds[sl][mask] > 0).any():
            continue
        free = mask & (out[sl] == 0)
        if int(free.sum()) >= min_area:
            out[sl][free] = next_id
            next_id += 1
    return out


def combine_assign(
    cellpose_labels: np.ndarray,
    semantic: np.ndarray,
    *,
    cell_probability: np.ndarray | None = None,
    boundary: np.ndarray | None = None,
    core: np.ndarray | None = None,
    params: AssignParams = AssignParams(),
) -> list[Instance]:
    """Instances from nnU-Net's semantic map (0/1/2) and a Cellpose label map (see the module
    docstring). ``cell_probability`` (H, W): nnU-Net's cell probability (seed class included);
    ``core`` or ``boundary`` (H, W): the probability of its cell-core or cell-rim class, for a
    model with one. Scores: the mean cell probability under each instance (1.0 without one)."""
    sem = np.asarray(semantic)
    cell = sem == 1
    cp = np.where(cell, np.asarray(cellpose_labels, dtype=np.int32), 0)
    cp = _relabel_largest(cp, params.seed_min_area)
    interiors: np.ndarray | None = None
    elevation: np.ndarray | None = None
    if core is not None:
        found, _ = ndi.label(cell & (core > params.core_threshold))
        interiors = _relabel_largest(found.astype(np.int32), params.core_min_area)
        # the core probability falls off towards a cell's edge: cells meet where it is lowest
        elevation = (1.0 - ndi.gaussian_filter(core.astype(np.float32), 1.0)).astype(np.float32)
    elif boundary is not None and cell_probability is not None:
        interior_prob = np.clip(cell_probability - boundary, 0.0, 1.0)
        interior = (
            cell
            & (boundary < params.interior_threshold * np.maximum(cell_probability, 1e-6))
            & (interior_prob > boundary)
        )
        found, _ = ndi.label(interior)
        interiors = _relabel_largest(found.astype(np.int32), params.seed_min_area)
        elevation = boundary.astype(np.float32)
    if interiors is not None and params.primary == "nnunet":
        cp = _add_unseeded(interiors, cp, params.seed_min_area)
    elif interiors is not None and elevation is not None:
        cp, missed = _split_by_interiors(cp, interiors, elevation, params.split_min_area)
        if missed.any():
            extra, _ = ndi.label(missed)
            cp = np.where((extra > 0) & (cp == 0), extra + cp.max(), cp)
    if params.elevation == "distance" or elevation is None:
        elevation = None
    # grow each seed into the cell foreground it supports
    if cp.any():
        distance = ndi.distance_transform_edt(cp == 0)
        near = distance <= params.grow_radius
        grown = watershed(
            elevation if elevation is not None else distance.astype(np.float32), cp, mask=cell & (near | (cp > 0))
        )
    else:
        grown = np.zeros(sem.shape, dtype=np.int32)
    # unclaimed foreground: a new cell where size and shape say so; a blob too big or odd for
    # one cell is cut at the peaks of its distance map into cell-sized pieces first
    grown = _claim_unclaimed(grown.astype(np.int32), cell, params)
    if params.leftover == "attach" and grown.any():
        # what is still unclaimed (slivers between cells) goes to the instance it touches, so
        # that the cells cover nnU-Net's foreground
        grown = watershed(ndi.distance_transform_edt(grown == 0), grown, mask=cell)
    cells = _relabel_largest(grown.astype(np.int32), params.seed_min_area)
    ery = erythrocytes_split(sem == 2, radius=params.erythrocyte_radius, min_area=params.erythrocyte_min_area)
    scores: dict[int, float] = {}
    ids = np.arange(1, int(cells.max()) + 1)
    if cell_probability is not None and ids.size:
        scores = {int(k): float(v) for k, v in zip(ids, ndi.mean(cell_probability, cells, ids), strict=True)}
    out = instances_from_label_map(cells, labels=dict.fromkeys((int(k) for k in ids), 1), scores=scores or None)
    ery_ids = np.arange(1, int(ery.max()) + 1)
    out += instances_from_label_map(ery, labels=dict.fromkeys((int(k) for k in ery_ids), 2))
    return out
