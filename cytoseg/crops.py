"""Objects stored as a bool crop placed in an image: their geometry and painting them into maps.

Backends' instances, the synthetic generator's cells and the augmenter's pasted cells are all
``(x0, y0, mask[, label])``; a field with hundreds of cells never holds hundreds of full-size
masks. Painting goes through each crop's window, clipped to the image, so it costs the crops'
pixels, not N x H x W.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = [
    "Crop",
    "CropGeometry",
    "LabelledCrop",
    "PaintedField",
    "crop_window",
    "label_map_from_instances",
    "semantic_from_instances",
]


class Crop(Protocol):
    """A bool crop whose top-left pixel lies at column ``x0``, row ``y0`` of its image."""

    @property
    def x0(self) -> int: ...

    @property
    def y0(self) -> int: ...

    @property
    def mask(self) -> np.ndarray: ...


class LabelledCrop(Crop, Protocol):
    """A crop with its semantic label (1 cell, 2 erythrocyte)."""

    @property
    def label(self) -> int: ...


class CropGeometry:
    """``area``, ``bbox`` and ``full_mask`` of a class with ``x0``, ``y0`` and ``mask``."""

    x0: int
    y0: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Crop extent in image pixels as ``(x0, y0, x1, y1)`` with exclusive ends."""
        h, w = self.mask.shape
        return (self.x0, self.y0, self.x0 + w, self.y0 + h)

    def full_mask(self, *, height: int, width: int) -> np.ndarray:
        """The mask pasted into an image-sized bool array (clipped at the borders)."""
        out = np.zeros((height, width), dtype=bool)
        window = crop_window(self, height=height, width=width)
        if window is not None:
            dst, src = window
            out[dst] = self.mask[src]
        return out


def crop_window(crop: Crop, *, height: int, width: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices (image, crop) of the part of ``crop.mask`` that lies inside the image."""
    h, w = crop.mask.shape
    ys0, xs0 = max(crop.y0, 0), max(crop.x0, 0)
    ys1, xs1 = min(crop.y0 + h, height), min(crop.x0 + w, width)
    if ys1 <= ys0 or xs1 <= xs0:
        return None
    dst = (slice(ys0, ys1), slice(xs0, xs1))
    src = (slice(ys0 - crop.y0, ys1 - crop.y0), slice(xs0 - crop.x0, xs1 - crop.x0))
    return dst, src


def label_map_from_instances(instances: Sequence[Crop], *, height: int, width: int) -> np.ndarray:
    """Paint crops into an (H, W) int32 map, value ``i + 1`` for ``instances[i]``.

    Later instances overwrite earlier ones where they overlap (paint order).
    """
    out = np.zeros((height, width), dtype=np.int32)
    for i, inst in enumerate(instances):
        window = crop_window(inst, height=height, width=width)
        if window is not None:
            dst, src = window
            out[dst][inst.mask[src]] = i + 1
    return out


def semantic_from_instances(instances: Sequence[LabelledCrop], *, height: int, width: int) -> np.ndarray:
    """Paint labelled crops into an (H, W) uint8 semantic map (0/1/2), in paint order."""
    out = np.zeros((height, width), dtype=np.uint8)
    for inst in instances:
        window = crop_window(inst, height=height, width=width)
        if window is not None:
            dst, src = window
            out[dst][inst.mask[src]] = np.uint8(inst.label)
    return out


class PaintedField:
    """An RGB ``image`` with its labelled ``cells`` in paint order (later ones lie on top)."""

    image: np.ndarray
    cells: Sequence[LabelledCrop]

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    def label_map(self) -> np.ndarray:
        """(H, W) int32 map of the visible instance: index + 1, 0 for background."""
        return label_map_from_instances(self.cells, height=self.height, width=self.width)

    def semantic_map(self) -> np.ndarray:
        """(H, W) uint8 map of the visible class: 0 background, 1 cell, 2 erythrocyte."""
        return semantic_from_instances(self.cells, height=self.height, width=self.width)
