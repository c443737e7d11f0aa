"""Seeded region growing backend (paper A's nnU-Net + region-growing baseline).

Pipeline: foreground mask -> erosion with a disc (r = 2) -> connected
components -> one seed per component at its centroid from image moments
(x = M10 / M00, y = M01 / M00) -> each seed grown back into the original mask
(watershed on the negated distance transform, restricted to the mask). The
paper notes it is weak on strong overlap and that the erosion depth needs
tuning; both are settings here. Needs no training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.segmentation import watershed as sk_watershed

from cytoseg.backends.base import setting_bool, setting_int
from cytoseg.backends.foreground import ClassicalBackend, ClassicalSettings, Foreground, disc

__all__ = ["RegionGrowingBackend", "RegionGrowingSettings", "region_growing_split"]


@dataclass(frozen=True)
class RegionGrowingSettings(ClassicalSettings):
    """Settings of :class:`RegionGrowingBackend`.

    ``erosion_radius``: disc radius of the erosion that separates touching
    cells into seeds. ``opening_radius``: opening applied before the erosion
    (0 = none), which keeps specks and thin bridges from making seeds; cells
    still grow back into the unopened mask. ``keep_unseeded``: a foreground
    component without a seed becomes a cell of its own instead of being lost
    (``min_area`` then drops the specks).
    """

    erosion_radius: int = 2
    opening_radius: int = 1
    keep_unseeded: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("erosion_radius", setting_int("erosion_radius", self.erosion_radius, lo=0, hi=50))
        self._set("opening_radius", setting_int("opening_radius", self.opening_radius, lo=0, hi=50))
        self._set("keep_unseeded", setting_bool("keep_unseeded", self.keep_unseeded))


def _seed_points(eroded: np.ndarray) -> list[tuple[int, int]]:
    """One (row, col) seed per 8-connected component of ``eroded``.

    The seed is the centroid from image moments; when it falls outside its
    (non-convex) component it is moved to the nearest component pixel so that
    the seed still grows the right cell.
    """
    n, comp, stats, _ = cv2.connectedComponentsWithStats(eroded, connectivity=8)
    seeds: list[tuple[int, int]] = []
    for k in range(1, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        crop = (comp[y : y + h, x : x + w] == k).astype(np.uint8)
        mom = cv2.moments(crop, binaryImage=True)
        if mom["m00"] <= 0:
            continue
        cx, cy = mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]
        r, c = round(cy), round(cx)
        r, c = min(max(r, 0), h - 1), min(max(c, 0), w - 1)
        if not crop[r, c]:
            rr, cc = np.nonzero(crop)
            j = int(np.argmin((rr - cy) ** 2 + (cc - cx) ** 2))
            r, c = int(rr[j]), int(cc[j])
        seeds.append((y + r, x + c))
    return seeds


def region_growing_split(fg_mask: np.ndarray, cfg: RegionGrowingSettings) -> tuple[np.ndarray, dict[str, float]]:
    """Seeded region growing of a foreground; (H, W) int32 labels and timings."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    fg = fg_mask.astype(np.uint8)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32), timings
    # The opening only cleans the seed source; cells are grown back into the
    # original mask, as in the paper.
    seed_src: np.ndarray = fg
    if cfg.opening_radius > 0:
        seed_src = cv2.morphologyEx(fg, cv2.MORPH_OPEN, disc(cfg.opening_radius))
    eroded = cv2.erode(seed_src, disc(cfg.erosion_radius)) if cfg.erosion_radius > 0 else seed_src
    seeds = _seed_points(eroded)
    markers = np.zeros(fg.shape, dtype=np.int32)
    for i, (r, c) in enumerate(seeds):
        markers[r, c] = i + 1
    if cfg.keep_unseeded:
        n_comp, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        seeded = np.zeros(n_comp, dtype=bool)
        seeded[comp[markers > 0]] = True
        seeded[0] = True
        next_id = len(seeds) + 1
        for k in np.flatnonzero(~seeded):
            x, y, w, h = (int(v) for v in stats[k, :4])
            rr, cc = np.nonzero(comp[y : y + h, x : x + w] == k)
            j = len(rr) // 2
            markers[y + rr[j], x + cc[j]] = next_id
            next_id += 1
    timings["seeds"] = time.perf_counter() - t

    t = time.perf_counter()
    # Growing by flooding the negated distance transform: each seed claims the
    # pixels it reaches first, and two cells meet at the neck between them.
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    labels = sk_watershed(-dist, markers, mask=fg > 0).astype(np.int32)
    timings["grow"] = time.perf_counter() - t
    return labels, timings


class RegionGrowingBackend(ClassicalBackend):
    """Erosion seeds + region growing; ``artifacts`` is not used."""

    name = "region_growing"
    settings_class = RegionGrowingSettings
    config: RegionGrowingSettings

    def split(self, image: np.ndarray, fg: Foreground, timings: dict[str, float]) -> np.ndarray:
        """Cut the foreground into cells by seeded region growing."""
        labels, t = region_growing_split(fg.mask, self.config)
        timings.update(t)
        return labels
