"""Paper A's colour filter: tell thyroid cells from erythrocytes by mean colour.

The paper post-processes Mask R-CNN / NucleAIzer instances by the mean colour
of each instance and Otsu's threshold over those means: Diff-Quik stains
thyroid cells dark purple-blue and erythrocytes pale pink-red. The measure used
here is the "redness" of the mean colour, ``R - B``: the blue channel is the
one the purple cells keep and the red cells lose. The paper notes the filter is
unreliable on faint erythrocytes; the guards below keep it from inventing a
second class where the image has only one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cytoseg.backends.base import Instance

__all__ = ["colour_filter_labels", "instance_mean_colours", "redness"]

# Below this spread of redness (R - B units, 0..255 scale) all instances are
# taken as one population: a real cell/erythrocyte split spans far more.
MIN_SEPARATION = 25.0
# The red group must also be red in absolute terms: its mean colour has more
# red than blue. Without this, an image with cells only would still be cut in
# two by Otsu along its stain variation.
RED_FLOOR = -10.0


def instance_mean_colours(image: np.ndarray, instances: Sequence[Instance]) -> np.ndarray:
    """(N, 3) float64 mean RGB of each instance (NaN rows for empty masks)."""
    out = np.full((len(instances), 3), np.nan, dtype=np.float64)
    height, width = image.shape[:2]
    for i, inst in enumerate(instances):
        h, w = inst.mask.shape
        ys0, xs0 = max(inst.y0, 0), max(inst.x0, 0)
        ys1, xs1 = min(inst.y0 + h, height), min(inst.x0 + w, width)
        if ys1 <= ys0 or xs1 <= xs0:
            continue
        m = inst.mask[ys0 - inst.y0 : ys1 - inst.y0, xs0 - inst.x0 : xs1 - inst.x0]
        if not m.any():
            continue
        out[i] = image[ys0:ys1, xs0:xs1][m].mean(axis=0)
    return out


def redness(colours: np.ndarray) -> np.ndarray:
    """Redness ``R - B`` of (N, 3) RGB colours."""
    c = np.asarray(colours, dtype=np.float64).reshape(-1, 3)
    return c[:, 0] - c[:, 2]


def _otsu_1d(values: np.ndarray) -> float:
    """Otsu's threshold over a handful of values, exact (no histogram binning).

    Tries every cut between consecutive sorted values and keeps the one with
    the largest between-class variance; returns the midpoint of that gap.
    """
    v = np.sort(values)
    n = len(v)
    csum = np.cumsum(v)
    total = csum[-1]
    k = np.arange(1, n)  # size of the lower class
    mean_lo = csum[:-1] / k
    mean_hi = (total - csum[:-1]) / (n - k)
    between = k * (n - k) * (mean_lo - mean_hi) ** 2
    best = int(np.argmax(between))
    return float((v[best] + v[best + 1]) / 2.0)


def colour_filter_labels(
    image: np.ndarray,
    instances: Sequence[Instance],
    *,
    min_separation: float = MIN_SEPARATION,
    red_floor: float | None = RED_FLOOR,
) -> list[int]:
    """Label each instance 1 (dark/blue thyroid cell) or 2 (pale/red erythrocyte).

    Otsu's threshold over the instances' mean redness splits them in two; the
    redder group is 2. Everything is 1 when there are fewer than two instances,
    when the means span less than ``min_separation``, or (``red_floor``) for
    instances whose mean colour is not actually red.
    """
    n = len(instances)
    if n == 0:
        return []
    if n == 1:
        return [1]
    red = redness(instance_mean_colours(image, instances))
    valid = np.isfinite(red)
    if valid.sum() < 2:
        return [1] * n
    vals = red[valid]
    if float(vals.max() - vals.min()) < min_separation:
        return [1] * n
    thr = _otsu_1d(vals)
    is_red = valid & (np.nan_to_num(red, nan=-np.inf) > thr)
    if red_floor is not None:
        is_red &= np.nan_to_num(red, nan=-np.inf) > red_floor
    return [2 if r else 1 for r in is_red]
