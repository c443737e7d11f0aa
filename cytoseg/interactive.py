"""Click-to-segment and box prompts on one image (Django-free).

A click outlines the one cell under it from the model's kept maps (:class:`ImageMaps`), on a
small window around the click, so it costs milliseconds rather than a network pass:

* **flows** (Cellpose, alone or in the two-stage model): every pixel of the window whose
  cell-probability logit lies above the model's threshold *relaxed* by ``RELAX_LOGITS``
  follows the flows (Euler steps of ``dP / 5`` with bilinear interpolation, as Cellpose's
  dynamics do); the cell is the pixels that end where the clicked pixel ends. No size, flow
  quality or foreground-fraction rule of pre-segmentation applies, so a cell those thresholds
  dropped is still there to click. With nnU-Net's foreground the cell is clipped to it (at a
  threshold relaxed to half the foreground probability under the click).
* **foreground only** (nnU-Net alone): the foreground around the click, thresholded the same
  way, split by the distance-transform watershed; the piece under the click.
* **no maps** (no model trained yet): the project's classical baseline (the watershed backend
  by default) run on the window; the instance under the click.

Several positive clicks merge their cells into one (their convex hull when they do not touch);
a negative click removes the cell it falls in, or, when it lies in the same cell as a positive
click, splits that cell between them (watershed on the distance transform, seeded by the
clicks). A box proposes every instance whose centre lies inside it, from the same sources.

Coordinates are image pixels, ``(x, y)``, with pixel ``(c, r)`` covering ``[c, c+1) x [r, r+1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed as sk_watershed

from cytoseg.backends.base import Instance, SegmentationBackend, image_check
from cytoseg.crops import label_map_from_instances
from cytoseg.maps import ImageMaps, maps_dump, maps_load, maps_merge

__all__ = [
    "DEFAULT_DIAMETER",
    "RELAX_LOGITS",
    "ImageMaps",
    "box_segment",
    "click_segment",
    "flows_follow",
    "maps_dump",
    "maps_load",
    "maps_merge",
    "window_context",
    "window_maps",
]

DEFAULT_DIAMETER = 30.0  # pixels; a window size for maps and baselines that do not know theirs
RELAX_LOGITS = 3.0  # how far below the model's cell-probability threshold a click still reaches
_MAX_GROW = 2  # the window doubles at most this often when the cell touches its edge
WINDOW_MARGIN = 24  # context computed around a window of maps and then dropped (edge effects)

Point = tuple[float, float]


def flows_follow(flows: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, niter: int) -> np.ndarray:
    """Final (2, N) float positions (row, col) of the pixels ``(rows, cols)`` after ``niter``
    Euler steps along ``flows`` ((2, h, w) Cellpose dP of a window, steps of ``dP / 5``,
    bilinear interpolation, positions kept inside the window)."""
    h, w = flows.shape[1:]
    dy = np.ascontiguousarray(flows[0], dtype=np.float32) / 5.0
    dx = np.ascontiguousarray(flows[1], dtype=np.float32) / 5.0
    pos = np.stack([rows, cols]).astype(np.float32)
    if pos.shape[1] == 0:
        return pos
    # bilinear interpolation by hand: map_coordinates costs more per call on small N
    flat_y, flat_x = dy.ravel(), dx.ravel()
    for _ in range(niter):
        r0 = np.floor(pos[0]).astype(np.int32)
        c0 = np.floor(pos[1]).astype(np.int32)
        np.clip(r0, 0, h - 2 if h > 1 else 0, out=r0)
        np.clip(c0, 0, w - 2 if w > 1 else 0, out=c0)
        fr = pos[0] - r0
        fc = pos[1] - c0
        i00 = r0 * w + c0
        i01 = i00 + (1 if w > 1 else 0)
        i10 = i00 + (w if h > 1 else 0)
        i11 = i10 + (1 if w > 1 else 0)
        w00 = (1 - fr) * (1 - fc)
        w01 = (1 - fr) * fc
        w10 = fr * (1 - fc)
        w11 = fr * fc
        vy = flat_y[i00] * w00 + flat_y[i01] * w01 + flat_y[i10] * w10 + flat_y[i11] * w11
        vx = flat_x[i00] * w00 + flat_x[i01] * w01 + flat_x[i10] * w10 + flat_x[i11] * w11
        pos[0] = np.clip(pos[0] + vy, 0, h - 1)
        pos[1] = np.clip(pos[1] + vx, 0, w - 1)
    return pos


@dataclass
class _Window:
    """A rectangle of the image: rows ``r0:r1``, columns ``c0:c1``."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    def local(self, pt: Point) -> tuple[int, int]:
        """(row, col) in the window of the pixel holding image point (x, y)."""
        return math.floor(pt[1]) - self.r0, math.floor(pt[0]) - self.c0

    def touches(self, mask: np.ndarray, height: int, width: int) -> bool:
        """Whether ``mask`` reaches an edge of the window that is not an edge of the image."""
        return bool(
            (self.r0 > 0 and mask[0].any())
            or (self.c0 > 0 and mask[:, 0].any())
            or (self.r1 < height and mask[-1].any())
            or (self.c1 < width and mask[:, -1].any())
        )


def _window(points: Sequence[Point], radius: float, height: int, width: int) -> _Window:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    r = math.ceil(radius)
    return _Window(
        max(0, math.floor(min(ys)) - r),
        min(height, math.floor(max(ys)) + r + 1),
        max(0, math.floor(min(xs)) - r),
        min(width, math.floor(max(xs)) + r + 1),
    )


def _points_check(points: Sequence[Point], height: int, width: int, name: str) -> list[Point]:
    out: list[Point] = []
    for i, p in enumerate(points):
        if len(p) != 2:
            raise ValueError(f"{name}.{i}: a point is [x, y]")
        x, y = float(p[0]), float(p[1])
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < width and 0 <= y < height):
            raise ValueError(f"{name}.{i}: ({x}, {y}) lies outside the {width}x{height} image")
        out.append((x, y))
    return out


class _Source:
    """What a click is resolved against in one window: which pixels form the cell under a
    point, whether two points lie in one cell, and a cell's class and score."""

    window: _Window

    def cell(self, pt: tuple[int, int]) -> np.ndarray | None:
        raise NotImplementedError

    def same(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        raise NotImplementedError

    def label(self, mask: np.ndarray) -> int:
        raise NotImplementedError

    def score(self, mask: np.ndarray) -> float:
        raise NotImplementedError


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float32)))


def _majority(semantic: np.ndarray | None, mask: np.ndarray, default: int) -> int:
    if semantic is None:
        return default
    vals = semantic[mask]
    n1, n2 = int(np.count_nonzero(vals == 1)), int(np.count_nonzero(vals == 2))
    if n1 == 0 and n2 == 0:
        return default
    return 2 if n2 > n1 else 1


def _diameter(maps: ImageMaps | None) -> float:
    return float(maps.diameter) if maps is not None and maps.diameter else DEFAULT_DIAMETER


class _FlowSource(_Source):
    """The cell under a point: the candidate pixels whose flows end where the point's end."""

    def __init__(self, maps: ImageMaps, window: _Window, clicks: Sequence[tuple[int, int]]) -> None:
        assert maps.flows is not None and maps.cellprob is not None
        self.window = window
        sl = window.slices
        diam = _diameter(maps)
        self.cellprob = np.asarray(maps.cellprob[sl], dtype=np.float32)
        self.semantic = None if maps.semantic is None else np.asarray(maps.semantic[sl])
        self.default_label = maps.label
        flows = np.asarray(maps.flows[(slice(None), *sl)], dtype=np.float32)
        cand = self.cellprob > maps.cellprob_threshold - RELAX_LOGITS
        self.fg_clip: np.ndarray | None = None
        if maps.foreground is not None:
            fg = np.asarray(maps.foreground[sl], dtype=np.float32)
            under = max(float(fg[r, c]) for r, c in clicks) if clicks else 1.0
            self.fg_clip = fg >= min(0.5, 0.5 * under)
            cand &= self.fg_clip
        for r, c in clicks:  # a clicked pixel always follows the flows, candidate or not
            cand[r, c] = True
        rows, cols = np.nonzero(cand)
        self.niter = int(min(400, 2 * diam + 10))
        final = flows_follow(flows, rows, cols, niter=self.niter)
        self.end = np.full((2, *cand.shape), np.nan, dtype=np.float32)
        self.end[0][rows, cols] = final[0]
        self.end[1][rows, cols] = final[1]
        self.cand = cand
        self.radius = max(2.5, 0.2 * diam)

    def _end(self, pt: tuple[int, int]) -> np.ndarray:
        return self.end[:, pt[0], pt[1]]

    def cell(self, pt: tuple[int, int]) -> np.ndarray | None:
        e = self._end(pt)
        d2 = (self.end[0] - e[0]) ** 2 + (self.end[1] - e[1]) ** 2
        near = np.nan_to_num(d2, nan=np.inf) <= self.radius**2
        if not near.any():
            return None
        lab, _ = ndi.label(near, structure=np.ones((3, 3), bool))
        k = lab[pt]
        if k == 0:
            return None
        mask = lab == k
        if self.fg_clip is not None:
            mask &= self.fg_clip
            mask[pt] = True
        if mask.sum() < 3:  # a pixel on background with no flow stays where it is, alone
            return None
        return mask

    def same(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        ea, eb = self._end(a), self._end(b)
        return bool(np.hypot(*(ea - eb)) <= self.radius)

    def label(self, mask: np.ndarray) -> int:
        return _majority(self.semantic, mask, self.default_label)

    def score(self, mask: np.ndarray) -> float:
        return float(_sigmoid(self.cellprob[mask]).mean())


class _LabelSource(_Source):
    """The cell under a point: the instance of a label map of the window that holds it (or
    the nearest within a few pixels, for a click just beside a thin cell)."""

    def __init__(
        self,
        window: _Window,
        labels: np.ndarray,
        classes: dict[int, int],
        scores: dict[int, float],
        near: float,
    ) -> None:
        self.window = window
        self.labels = labels
        self.classes = classes
        self.scores = scores
        self.near = near

    def _id(self, pt: tuple[int, int]) -> int:
        k = int(self.labels[pt])
        if k:
            return k
        r = math.ceil(self.near)
        r0, c0 = max(0, pt[0] - r), max(0, pt[1] - r)
        patch = self.labels[r0 : pt[0] + r + 1, c0 : pt[1] + r + 1]
        rows, cols = np.nonzero(patch)
        if rows.size == 0:
            return 0
        d = (rows + r0 - pt[0]) ** 2 + (cols + c0 - pt[1]) ** 2
        i = int(np.argmin(d))
        return int(patch[rows[i], cols[i]]) if d[i] <= self.near**2 else 0

    def cell(self, pt: tuple[int, int]) -> np.ndarray | None:
        k = self._id(pt)
        return None if k == 0 else self.labels == k

    def same(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        ka = self._id(a)
        return ka != 0 and ka == self._id(b)

    def _ids(self, mask: np.ndarray) -> np.ndarray:
        ids = self.labels[mask]
        return ids[ids > 0]

    def label(self, mask: np.ndarray) -> int:
        ids = self._ids(mask)
        if ids.size == 0:
            return 1
        return self.classes.get(int(np.bincount(ids).argmax()), 1)

    def score(self, mask: np.ndarray) -> float:
        ids = self._ids(mask)
        if ids.size == 0:
            return 0.5
        return float(np.mean([self.scores.get(int(k), 0.5) for k in ids]))


def _baseline_default() -> SegmentationBackend:
    from cytoseg.backends.watershed import WatershedBackend

    return WatershedBackend(artifacts=None, settings={}, device="cpu")


def _instances_source(window: _Window, instances: Sequence[Instance], near: float) -> _LabelSource:
    h, w = window.r1 - window.r0, window.c1 - window.c0
    labels = label_map_from_instances(instances, height=h, width=w).astype(np.int32)
    classes = {i + 1: inst.label for i, inst in enumerate(instances)}
    scores = {i + 1: inst.score for i, inst in enumerate(instances)}
    return _LabelSource(window, labels, classes, scores, near)


def _classical_source(image: np.ndarray, window: _Window, baseline: SegmentationBackend | None) -> _LabelSource:
    backend = baseline or _baseline_default()
    crop = np.ascontiguousarray(image[window.slices])
    return _instances_source(window, backend.predict(crop).instances, near=4.0)


def _foreground_source(image: np.ndarray, maps: ImageMaps, window: _Window, threshold: float) -> _LabelSource:
    """nnU-Net's foreground around the points, split by the distance-transform watershed."""
    from cytoseg.backends.watershed import WatershedSettings, watershed_split

    assert maps.foreground is not None
    sl = window.slices
    fg = np.asarray(maps.foreground[sl], dtype=np.float32)
    mask = ndi.binary_fill_holes(fg >= threshold)
    labels, _ = watershed_split(np.ascontiguousarray(image[sl]), mask, WatershedSettings(opening_radius=1))
    labels = labels.astype(np.int32)
    semantic = None if maps.semantic is None else np.asarray(maps.semantic[sl])
    ids = [int(k) for k in np.unique(labels) if k > 0]
    classes = {k: _majority(semantic, labels == k, maps.label) for k in ids}
    means = ndi.mean(fg, labels=labels, index=ids) if ids else []
    scores = {k: float(v) for k, v in zip(ids, means, strict=True)}
    return _LabelSource(window, labels, classes, scores, near=4.0)


def _combine(source: _Source, pos: list[tuple[int, int]], neg: list[tuple[int, int]]) -> np.ndarray | None:
    """The positive clicks' cells merged, with the negative clicks' cells removed or split off."""
    cells = [c for c in (source.cell(p) for p in pos) if c is not None]
    if not cells:
        return None
    mask = np.logical_or.reduce(cells)
    for n in neg:
        if not mask[n] and not any(source.same(n, p) for p in pos):
            other = source.cell(n)
            if other is not None:
                mask &= ~other
            continue
        # the negative click lies in the outlined cell: split the cell between the clicks
        markers = np.zeros(mask.shape, dtype=np.int32)
        for p in pos:
            markers[p] = 1
        for q in neg:
            if mask[q]:
                markers[q] = 2
        if markers[n] != 2:
            markers[n] = 2
            mask = mask.copy()
            mask[n] = True
        dist = ndi.distance_transform_edt(mask)
        mask = sk_watershed(-dist, markers, mask=mask) == 1
    if not mask.any():
        return None
    lab, _n_parts = ndi.label(mask, structure=np.ones((3, 3), bool))
    keep = {int(lab[p]) for p in pos if lab[p]}
    if not keep:
        return None
    mask = np.isin(lab, list(keep))
    if len(keep) > 1:  # several positive clicks in cells that do not touch: one cell spanning them
        hull = convex_hull_image(mask)
        for q in neg:
            hull[q] = False
        mask = hull
    return ndi.binary_fill_holes(mask)


def _instance(window: _Window, mask: np.ndarray, *, label: int, score: float) -> Instance:
    """An instance of the image from a mask of the window (cropped to its bounding box)."""
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return Instance(
        x0=int(window.c0 + c0),
        y0=int(window.r0 + r0),
        mask=mask[r0:r1, c0:c1].copy(),
        label=int(label),
        score=float(np.clip(score, 0.0, 1.0)),
    )


def _image_shape(image: np.ndarray, maps: ImageMaps | None) -> tuple[int, int]:
    if maps is not None:
        if image is not None and tuple(image.shape[:2]) != (maps.height, maps.width):
            raise ValueError(f"maps of {maps.width}x{maps.height} for an image of {image.shape[1]}x{image.shape[0]}")
        return maps.height, maps.width
    return int(image.shape[0]), int(image.shape[1])


def click_segment(
    *,
    image: np.ndarray,
    maps: ImageMaps | None,
    positive: Sequence[Point],
    negative: Sequence[Point] = (),
    baseline: SegmentationBackend | None = None,
) -> Instance | None:
    """The one cell that the clicks outline, or None where there is none.

    ``image`` is the (H, W, 3) uint8 RGB image, ``positive`` / ``negative`` are (x, y) image
    points (at least one positive). ``maps`` None runs ``baseline`` (a classical backend; the
    watershed's defaults when None) on a window around the clicks; maps without flows or
    foreground give None. Raises ValueError for a point outside the image (the message starts
    with ``positive.<i>`` or ``negative.<i>``).
    """
    height, width = _image_shape(image, maps)
    pos = _points_check(positive, height, width, "positive")
    neg = _points_check(negative, height, width, "negative")
    if not pos:
        raise ValueError("positive: at least one point is needed")
    if maps is not None and not maps.has_flows and maps.foreground is None:
        return None
    diam = _diameter(maps)
    radius = max(48.0, 1.5 * diam)
    found: tuple[_Source, np.ndarray] | None = None
    for _ in range(_MAX_GROW + 1):
        window = _window(pos + neg, radius, height, width)
        lpos = [window.local(p) for p in pos]
        lneg = [window.local(p) for p in neg]
        source: _Source
        if maps is None:
            source = _classical_source(image, window, baseline)
        elif maps.has_flows:
            source = _FlowSource(maps, window, lpos + lneg)
        else:
            under = max(float(maps.foreground[int(p[1]), int(p[0])]) for p in pos)  # type: ignore[index]
            if under < 0.05:
                return None  # nnU-Net sees nothing there: the caller may fall back to a baseline
            source = _foreground_source(image, maps, window, min(0.5, 0.5 * under))
        mask = _combine(source, lpos, lneg)
        if mask is None:
            return None
        found = source, mask
        if not window.touches(mask, height, width):
            break
        radius *= 2  # the cell reaches the window's edge: look again on a larger one
    assert found is not None
    source, mask = found
    return _instance(source.window, mask, label=source.label(mask), score=source.score(mask))


def _box_check(box: Sequence[float], height: int, width: int) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError("box: [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError("box: not finite")
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box: ({x0}, {y0}, {x1}, {y1}) is empty or not inside the {width}x{height} image")
    return x0, y0, x1, y1


def _flow_labels(maps: ImageMaps, window: _Window) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """An instance label map of the window by Cellpose's rule: the candidate pixels whose
    flows end in one cluster of end points form one cell."""
    assert maps.flows is not None and maps.cellprob is not None
    sl = window.slices
    diam = _diameter(maps)
    cellprob = np.asarray(maps.cellprob[sl], dtype=np.float32)
    flows = np.asarray(maps.flows[(slice(None), *sl)], dtype=np.float32)
    cand = cellprob > maps.cellprob_threshold - 1.0
    if maps.foreground is not None:
        cand &= np.asarray(maps.foreground[sl], dtype=np.float32) >= 0.5
    rows, cols = np.nonzero(cand)
    final = flows_follow(flows, rows, cols, niter=int(min(400, 2 * diam + 10)))
    end_r = np.clip(np.rint(final[0]).astype(np.int64), 0, cand.shape[0] - 1)
    end_c = np.clip(np.rint(final[1]).astype(np.int64), 0, cand.shape[1] - 1)
    moved = np.hypot(final[0] - rows, final[1] - cols) >= 2.0
    # end points of pixels that moved: the cells' sinks; pixels that stayed put (background
    # without flow) make none, and join a sink only if they already sit in one
    occupied = np.zeros(cand.shape, dtype=bool)
    occupied[end_r[moved], end_c[moved]] = True
    sinks, _ = ndi.label(ndi.binary_dilation(occupied, iterations=1), structure=np.ones((3, 3), bool))
    labels = np.zeros(cand.shape, dtype=np.int32)
    labels[rows, cols] = sinks[end_r, end_c]
    probability = _sigmoid(cellprob)
    return labels, lambda m: float(probability[m].mean())


def box_segment(
    *,
    image: np.ndarray,
    maps: ImageMaps | None,
    box: tuple[float, float, float, float],
    baseline: SegmentationBackend | None = None,
) -> list[Instance]:
    """The instances whose centre lies inside ``box`` ((x0, y0, x1, y1) image pixels), from
    the maps (flows, else foreground) or, with ``maps`` None, the classical ``baseline`` on a
    window around the box. Raises ValueError (message starting ``box``) for an empty box or
    one outside the image."""
    height, width = _image_shape(image, maps)
    x0, y0, x1, y1 = _box_check(box, height, width)
    diam = _diameter(maps)
    margin = max(16.0, 0.75 * diam)  # room for the flows of cells cut by the box to find their sinks
    window = _window([(x0, y0), (max(x0, x1 - 1e-3), max(y0, y1 - 1e-3))], margin, height, width)
    min_area = max(10.0, 0.05 * math.pi * (diam / 2) ** 2)
    if maps is not None and maps.has_flows:
        labels, score = _flow_labels(maps, window)
        semantic = None if maps.semantic is None else np.asarray(maps.semantic[window.slices])
        classes: Callable[[np.ndarray], int] = lambda m: _majority(semantic, m, maps.label)  # noqa: E731
    else:
        if maps is None:
            source = _classical_source(image, window, baseline)
        elif maps.foreground is not None:
            source = _foreground_source(image, maps, window, 0.5)
        else:
            return []
        labels = source.labels
        score = source.score
        classes = source.label
    out: list[Instance] = []
    ids = [int(k) for k in np.unique(labels) if k > 0]
    if not ids:
        return out
    centres = ndi.center_of_mass(np.ones(labels.shape), labels=labels, index=ids)
    for k, (cr, cc) in zip(ids, centres, strict=True):
        cy, cx = cr + window.r0 + 0.5, cc + window.c0 + 0.5
        if not (x0 <= cx < x1 and y0 <= cy < y1):
            continue
        mask = ndi.binary_fill_holes(labels == k)
        if mask.sum() < min_area:
            continue
        out.append(_instance(window, mask, label=classes(mask), score=score(mask)))
    return out


def window_context(side: int, margin: int = WINDOW_MARGIN) -> int:
    """The context around a window of ``side`` pixels: ``margin`` less what would take the crop
    past a multiple of 16 (Cellpose runs a window as one tile padded up to one: a 97 px window
    with 24 px on each side would be a 160 px tile, with 23 a 144 px one, a fifth fewer pixels)."""
    spill = (side + 2 * margin) % 16
    return max(0, margin - (spill + 1) // 2)


def _network_maps(backend: SegmentationBackend, image: np.ndarray) -> ImageMaps | None:
    """``backend.maps(image)``; a two-stage model's two networks side by side when torch runs
    one thread per operation (the interactive worker's default): on two cores the window waits
    for the slower network instead of both, and no thread waits for another at a barrier."""
    from cytoseg.backends.two_stage import TwoStageBackend

    if not isinstance(backend, TwoStageBackend):
        return backend.maps(image)
    import torch

    img = image_check(image)
    if torch.get_num_threads() != 1:
        return backend.maps(img)
    with ThreadPoolExecutor(max_workers=1) as pool:
        semantic = pool.submit(backend.nnunet.predict_maps, img)
        outputs = backend.cellpose.network(img)
        return backend.image_maps(semantic.result(), outputs)


def window_maps(
    backend: SegmentationBackend, image: np.ndarray, *, r0: int, r1: int, c0: int, c1: int, margin: int = WINDOW_MARGIN
) -> ImageMaps | None:
    """The backend's maps of rows r0:r1, columns c0:c1 of ``image`` (an ``ImageMaps`` of that
    window's size; None for a backend without maps), computed on the window widened by
    ``margin`` pixels of context where the image has them, so that a first click on an image
    costs a network pass over a window rather than over the whole field."""
    height, width = image.shape[:2]
    o0, o1 = max(0, r0 - margin), min(height, r1 + margin)
    p0, p1 = max(0, c0 - margin), min(width, c1 + margin)
    maps = _network_maps(backend, np.ascontiguousarray(image[o0:o1, p0:p1]))
    if maps is None:
        return None
    sl = (slice(r0 - o0, r1 - o0), slice(c0 - p0, c1 - p0))

    def cut(arr: np.ndarray | None) -> np.ndarray | None:
        return None if arr is None else np.ascontiguousarray(arr[(..., *sl)])

    return ImageMaps(
        height=r1 - r0,
        width=c1 - c0,
        flows=cut(maps.flows),
        cellprob=cut(maps.cellprob),
        foreground=cut(maps.foreground),
        semantic=cut(maps.semantic),
        cellprob_threshold=maps.cellprob_threshold,
        diameter=maps.diameter,
        label=maps.label,
    )
