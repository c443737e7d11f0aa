"""Synthetic cluster augmentation after paper C ("cluster cell combination enhancement"), Django-free.

Paper C makes training images of overlapping cells out of images of isolated ones: crop
labelled cells, jitter them (random rotation, colour jitter, Gaussian noise), paste them at
random positions on a real image, darken the pixels where a pasted cell overlaps cells already
there (divide by a factor of about 1.8-2.5), and stop when the foreground covers a target share
of the image. The labels come for free.

Here:

* :func:`isolated_cells` crops the cells of a real field that touch no other cell (their mask
  dilated by ``isolation_margin`` pixels meets no other mask): these are clean examples whose
  crops contain one whole cell and nothing else;
* :func:`synthesize` pastes jittered copies into a real field (its own cells stay, and stay
  labelled) in chains of ``cluster_size`` cells, each placed about one cell radius from the
  previous, so that they touch and overlap as in real clusters; the overlapping pixels of a
  pasted cell are divided by a factor drawn from ``darken``;
* :func:`synthetic_images` makes ``count`` such images from a list of real fields,
  deterministically for a ``seed``.

Cells are :class:`PlacedCell` crops in paint order (a later cell covers an earlier one where
they overlap), the convention of ``cytoseg.synthetic`` and ``cytoseg.datasets``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from cytoseg.contours import mask_to_polygon, polygon_crop
from cytoseg.crops import PaintedField

__all__ = [
    "AugmentConfig",
    "CellPatch",
    "PlacedCell",
    "SyntheticImage",
    "cells_from_polygons",
    "isolated_cells",
    "synthesize",
    "synthetic_images",
]


@dataclass(frozen=True)
class CellPatch:
    """A cropped cell: RGB pixels, its mask on the crop, and its label (1 cell, 2 erythrocyte)."""

    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool
    label: int


@dataclass(frozen=True)
class PlacedCell:
    """A cell of an image: a bool crop whose top-left pixel is at column ``x0``, row ``y0``."""

    x0: int
    y0: int
    mask: np.ndarray
    label: int


@dataclass
class SyntheticImage(PaintedField):
    """A synthetic training image with its cells in paint order."""

    image: np.ndarray
    cells: list[PlacedCell]
    pasted: int  # how many of ``cells`` were pasted (the rest came with the background)

    def polygons(self) -> tuple[list[list[list[float]]], list[int]]:
        """Polygons (pixel-edge outlines, exact under the pixel-centre rule) and labels of the
        cells, in paint order; a cell whose mask gives no polygon is left out."""
        polygons: list[list[list[float]]] = []
        labels: list[int] = []
        for cell in self.cells:
            poly = mask_to_polygon(cell.mask, x0=cell.x0, y0=cell.y0, tolerance=0.0)
            if poly is None:
                continue
            polygons.append([[float(x), float(y)] for x, y in list(poly.exterior.coords)[:-1]])
            labels.append(cell.label)
        return polygons, labels


@dataclass
class AugmentConfig:
    """Options of the synthetic cluster augmentation (``count=0``: off).

    ``fill_fraction``: stop pasting into an image when cells cover this share of it;
    ``cluster_size``: cells per pasted chain; ``rotation_deg``: rotation range;
    ``colour_jitter``: each RGB channel is multiplied by a factor in [1 - j, 1 + j], and the
    whole cell by one from ``brightness``; ``noise_sigma``: range of the standard deviation of
    the Gaussian noise added to a cell's pixels; ``darken``: range of the factor that divides
    the overlapping pixels (paper C: about 1.8-2.5); ``max_overlap``: a placement is retried
    when more than this share of the new cell would lie on earlier cells;
    ``isolation_margin``: pixels of clearance a source cell needs to count as isolated;
    ``min_area``: smaller source cells are not used; ``include_erythrocytes``: paste
    erythrocytes (label 2) as well.
    """

    count: int = 0
    seed: int = 0
    fill_fraction: float = 0.4
    cluster_size: tuple[int, int] = (3, 8)
    rotation_deg: tuple[float, float] = (-180.0, 180.0)
    colour_jitter: float = 0.08
    brightness: tuple[float, float] = (0.9, 1.1)
    noise_sigma: tuple[float, float] = (0.0, 6.0)
    darken: tuple[float, float] = (1.8, 2.5)
    max_overlap: float = 0.5
    isolation_margin: int = 3
    min_area: int = 20
    max_cells_per_image: int = 400
    include_erythrocytes: bool = True

    def __post_init__(self) -> None:
        errors = self.errors()
        if errors:
            raise ValueError("; ".join(f"{k}: {v}" for k, v in errors.items()))

    def errors(self) -> dict[str, str]:
        """Problems with the values, by field name (empty when valid)."""
        out: dict[str, str] = {}
        if not 0 <= self.count <= 10_000:
            out["count"] = "must be from 0 to 10000"
        if not 0 < self.fill_fraction <= 0.95:
            out["fill_fraction"] = "must be in (0, 0.95]"
        lo, hi = self.cluster_size
        if not 1 <= lo <= hi <= 50:
            out["cluster_size"] = "must be [min, max] with 1 <= min <= max <= 50"
        if self.rotation_deg[0] > self.rotation_deg[1]:
            out["rotation_deg"] = "must be [min, max]"
        if not 0 <= self.colour_jitter < 1:
            out["colour_jitter"] = "must be in [0, 1)"
        if not 0 < self.brightness[0] <= self.brightness[1]:
            out["brightness"] = "must be [min, max] with 0 < min <= max"
        if not 0 <= self.noise_sigma[0] <= self.noise_sigma[1]:
            out["noise_sigma"] = "must be [min, max] with 0 <= min <= max"
        if not 1 <= self.darken[0] <= self.darken[1]:
            out["darken"] = "must be [min, max] with 1 <= min <= max"
        if not 0 <= self.max_overlap <= 1:
            out["max_overlap"] = "must be in [0, 1]"
        if self.isolation_margin < 0:
            out["isolation_margin"] = "must not be negative"
        if self.min_area < 1:
            out["min_area"] = "must be at least 1"
        if self.max_cells_per_image < 1:
            out["max_cells_per_image"] = "must be at least 1"
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise KeyError naming them, bad values ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeyError(", ".join(unknown))
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def from_dict_errors(cls, data: Mapping[str, Any], *, prefix: str, unknown: str = "unknown key") -> dict[str, str]:
        """What is wrong with ``data`` as options: ``{prefix.key: unknown}`` per unknown key, else
        ``{prefix: reason}`` for a bad value; ``{}`` when they are valid."""
        try:
            cls.from_dict(data)
        except KeyError as exc:
            return {f"{prefix}.{key}": unknown for key in str(exc.args[0]).split(", ")}
        except (TypeError, ValueError) as exc:
            return {prefix: str(exc)}
        return {}


def cells_from_polygons(
    polygons: Sequence[Sequence[Sequence[float]]], labels: Sequence[int], *, height: int, width: int
) -> list[PlacedCell]:
    """Rasterise polygons (pixel-centre rule) into crops; empty ones are left out."""
    out: list[PlacedCell] = []
    for points, label in zip(polygons, labels, strict=True):
        crop = polygon_crop(points, height=height, width=width)
        if crop is not None:
            x0, y0, mask = crop
            out.append(PlacedCell(x0=x0, y0=y0, mask=mask, label=int(label)))
    return out


def _union(cells: Sequence[PlacedCell], height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), dtype=bool)
    for c in cells:
        h, w = c.mask.shape
        out[c.y0 : c.y0 + h, c.x0 : c.x0 + w] |= c.mask
    return out


def isolated_cells(
    image: np.ndarray, cells: Sequence[PlacedCell], *, margin: int = 3, min_area: int = 20
) -> list[CellPatch]:
    """Crops of the cells that no other cell comes within ``margin`` pixels of.

    Cells touching the image border are left out (they may be cut off).
    """
    height, width = image.shape[:2]
    counts = np.zeros((height, width), dtype=np.int32)
    for c in cells:
        h, w = c.mask.shape
        counts[c.y0 : c.y0 + h, c.x0 : c.x0 + w] += c.mask
    out: list[CellPatch] = []
    for c in cells:
        h, w = c.mask.shape
        area = int(c.mask.sum())
        if area < min_area or c.x0 <= 0 or c.y0 <= 0 or c.x0 + w >= width or c.y0 + h >= height:
            continue
        # the window around the cell, the cell's own pixels taken out
        y0, x0 = max(c.y0 - margin, 0), max(c.x0 - margin, 0)
        y1, x1 = min(c.y0 + h + margin, height), min(c.x0 + w + margin, width)
        own = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        own[c.y0 - y0 : c.y0 - y0 + h, c.x0 - x0 : c.x0 - x0 + w] = c.mask
        others = counts[y0:y1, x0:x1] - own
        near = ndi.binary_dilation(own, iterations=margin) if margin > 0 else own
        if np.any(others[near] > 0):
            continue
        crop = image[c.y0 : c.y0 + h, c.x0 : c.x0 + w].copy()
        out.append(CellPatch(image=crop, mask=c.mask.copy(), label=c.label))
    return out


def _jitter(patch: CellPatch, rng: np.random.Generator, cfg: AugmentConfig) -> CellPatch:
    """Rotate (canvas grown to fit), colour-jitter and add noise to a cell crop."""
    h, w = patch.mask.shape
    angle = float(rng.uniform(*cfg.rotation_deg))
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = math.ceil(h * sin + w * cos), math.ceil(h * cos + w * sin)
    matrix[0, 2] += new_w / 2.0 - w / 2.0
    matrix[1, 2] += new_h / 2.0 - h / 2.0
    img = cv2.warpAffine(patch.image, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(patch.mask.astype(np.uint8), matrix, (new_w, new_h), flags=cv2.INTER_NEAREST) > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return patch
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    pixels: np.ndarray = img[sl].astype(np.float32)
    mask = mask[sl]
    factors = rng.uniform(1 - cfg.colour_jitter, 1 + cfg.colour_jitter, size=3) * rng.uniform(*cfg.brightness)
    pixels = pixels * factors.astype(np.float32)
    sigma = float(rng.uniform(*cfg.noise_sigma))
    if sigma > 0:
        pixels = pixels + rng.normal(0.0, sigma, size=pixels.shape).astype(np.float32)
    return CellPatch(image=np.clip(pixels, 0, 255).astype(np.uint8), mask=mask, label=patch.label)


def synthesize(
    background: np.ndarray,
    background_cells: Sequence[PlacedCell],
    patches: Sequence[CellPatch],
    *,
    rng: np.random.Generator,
    config: AugmentConfig,
) -> SyntheticImage:
    """Paste jittered ``patches`` in clusters into ``background`` until the cells cover
    ``config.fill_fraction`` of it. The background's own cells stay, first in paint order."""
    canvas = np.asarray(background, dtype=np.uint8).copy()
    height, width = canvas.shape[:2]
    cells = list(background_cells)
    foreground = _union(cells, height, width)
    pool = [p for p in patches if config.include_erythrocytes or p.label != 2]
    target = config.fill_fraction * height * width
    covered = int(foreground.sum())
    pasted = 0
    attempts = 0
    max_attempts = 20 * config.max_cells_per_image
    while pool and covered < target and pasted < config.max_cells_per_image and attempts < max_attempts:
        # one cluster: a chain of cells, each about a cell radius away from the previous one
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        for _ in range(int(rng.integers(config.cluster_size[0], config.cluster_size[1] + 1))):
            attempts += 1
            patch = _jitter(pool[int(rng.integers(len(pool)))], rng, config)
            ph, pw = patch.mask.shape
            radius = math.sqrt(max(int(patch.mask.sum()), 1) / math.pi)
            step = radius * float(rng.uniform(0.8, 1.6))
            direction = float(rng.uniform(0, 2 * math.pi))
            px, py = cx + step * math.cos(direction), cy + step * math.sin(direction)
            x0, y0 = round(px - pw / 2), round(py - ph / 2)
            # clip the crop to the image
            cy0, cx0 = max(0, -y0), max(0, -x0)
            cy1, cx1 = min(ph, height - y0), min(pw, width - x0)
            if cy1 <= cy0 or cx1 <= cx0:
                continue
            mask = patch.mask[cy0:cy1, cx0:cx1]
            area = int(mask.sum())
            if area < config.min_area:
                continue
            gy0, gx0 = y0 + cy0, x0 + cx0
            window = (slice(gy0, gy0 + mask.shape[0]), slice(gx0, gx0 + mask.shape[1]))
            overlap = mask & foreground[window]
            if overlap.sum() > config.max_overlap * area:
                continue
            pixels = patch.image[cy0:cy1, cx0:cx1].astype(np.float32)
            factor = float(rng.uniform(*config.darken))
            pixels[overlap] /= factor
            region = canvas[window]
            region[mask] = np.clip(pixels[mask], 0, 255).astype(np.uint8)
            covered += area - int(overlap.sum())
            foreground[window] |= mask
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            tight = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            cells.append(PlacedCell(x0=gx0 + int(cols[0]), y0=gy0 + int(rows[0]), mask=tight.copy(), label=patch.label))
            pasted += 1
            cx, cy = px, py
            if covered >= target or pasted >= config.max_cells_per_image:
                break
    return SyntheticImage(image=canvas, cells=cells, pasted=pasted)


def synthetic_images(
    fields: Sequence[tuple[np.ndarray, Sequence[PlacedCell]]], config: AugmentConfig
) -> Iterator[SyntheticImage]:
    """``config.count`` synthetic images made from real ``fields`` ((image, cells) pairs).

    Cells are cropped from every field's isolated cells; backgrounds are the fields in turn.
    Deterministic for ``config.seed``. Yields nothing when no field has an isolated cell.
    """
    if config.count <= 0 or not fields:
        return
    patches: list[CellPatch] = []
    for image, cells in fields:
        patches.extend(isolated_cells(image, cells, margin=config.isolation_margin, min_area=config.min_area))
    if not patches:
        return
    rng = np.random.default_rng(config.seed)
    for k in range(config.count):
        image, cells = fields[k % len(fields)]
        yield synthesize(image, cells, patches, rng=rng, config=config)
