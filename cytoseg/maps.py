"""Per-image model maps kept for interactive segmentation (Django-free, numpy only).

A model's dense outputs for one image (Cellpose's flows and cell probability, nnU-Net's
foreground probability and class map) are what a click needs to outline one cell in
milliseconds (``cytoseg.interactive``). Pre-segmentation keeps them beside its proposals; the
serialisation here is compact: float16 arrays in an uncompressed ``.npz`` (about 7 MB for a
1024x768 field with every map; compression saves little on float noise and costs a
decompression on every cold click).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

__all__ = ["UNKNOWN_LOGIT", "ImageMaps", "maps_dump", "maps_load", "maps_merge"]

_ARRAYS = ("flows", "cellprob", "foreground", "semantic", "known")
# where partial maps have not been computed: no cell probability, no foreground, no flow
UNKNOWN_LOGIT = -30.0


@dataclass
class ImageMaps:
    """Dense model outputs of one (H, W) image; any map may be missing.

    ``flows``: Cellpose's dP (2, H, W), row (y) then column (x) component, at the network's
    scale (one step of ``dP / 5`` moves about one pixel). ``cellprob``: Cellpose's
    cell-probability logits (H, W). ``foreground``: nnU-Net's probability that a pixel is not
    background (H, W, 0..1). ``semantic``: nnU-Net's class map (H, W) uint8 0/1/2.
    ``cellprob_threshold`` is the logit threshold the model's pre-segmentation uses,
    ``diameter`` its typical cell diameter in image pixels (None: unknown), ``label`` the class
    of a cell where there is no semantic map. ``known`` (H, W bool) marks where partial maps
    (computed on demand for windows of the image, :func:`maps_merge`) hold values; None: all.
    """

    height: int
    width: int
    flows: np.ndarray | None = None
    cellprob: np.ndarray | None = None
    foreground: np.ndarray | None = None
    semantic: np.ndarray | None = None
    cellprob_threshold: float = 0.0
    diameter: float | None = None
    label: int = 1
    known: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = (self.height, self.width)
        for name in _ARRAYS:
            arr = getattr(self, name)
            if arr is None:
                continue
            want = (2, *shape) if name == "flows" else shape
            if tuple(arr.shape) != want:
                raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {want}")

    def covers(self, r0: int, r1: int, c0: int, c1: int) -> bool:
        """Whether the maps hold values for every pixel of rows r0:r1, columns c0:c1."""
        return self.known is None or bool(self.known[max(r0, 0) : r1, max(c0, 0) : c1].all())

    @property
    def has_flows(self) -> bool:
        return self.flows is not None and self.cellprob is not None

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, n).nbytes) for n in _ARRAYS if getattr(self, n) is not None)

    def compact(self) -> ImageMaps:
        """The same maps as float16 (semantic uint8): what is stored and held in memory."""
        return ImageMaps(
            height=self.height,
            width=self.width,
            flows=None if self.flows is None else np.asarray(self.flows, dtype=np.float16),
            cellprob=None if self.cellprob is None else np.asarray(self.cellprob, dtype=np.float16),
            foreground=None if self.foreground is None else np.asarray(self.foreground, dtype=np.float16),
            semantic=None if self.semantic is None else np.asarray(self.semantic, dtype=np.uint8),
            cellprob_threshold=self.cellprob_threshold,
            diameter=self.diameter,
            label=self.label,
            known=None if self.known is None else np.asarray(self.known, dtype=bool),
        )


def maps_merge(base: ImageMaps | None, part: ImageMaps, *, y0: int, x0: int, height: int, width: int) -> ImageMaps:
    """``base`` (partial maps of an image of ``height`` x ``width``; None: none yet) with
    ``part``, the maps of the window whose top-left pixel is (``x0``, ``y0``), written in. The
    pixels no window has covered keep ``UNKNOWN_LOGIT`` / zero foreground: no click finds a cell
    there. Full maps (``known`` None) are returned as they are."""
    if base is not None and base.known is None:
        return base
    if base is not None and (base.height, base.width) != (height, width):
        raise ValueError("partial maps of another image size")
    h, w = part.height, part.width
    sl = (slice(y0, y0 + h), slice(x0, x0 + w))

    def plane(name: str, shape: tuple[int, ...], fill: float, dtype: type) -> np.ndarray | None:
        new = getattr(part, name)
        if new is None:
            return None
        old = None if base is None else getattr(base, name)
        out: np.ndarray = np.full(shape, fill, dtype=dtype) if old is None else np.array(old, dtype=dtype)
        out[(..., *sl)] = new
        return out

    known = np.zeros((height, width), bool) if base is None or base.known is None else base.known.copy()
    known[sl] = True
    return ImageMaps(
        height=height,
        width=width,
        flows=plane("flows", (2, height, width), 0.0, np.float16),
        cellprob=plane("cellprob", (height, width), UNKNOWN_LOGIT, np.float16),
        foreground=plane("foreground", (height, width), 0.0, np.float16),
        semantic=plane("semantic", (height, width), 0, np.uint8),
        cellprob_threshold=part.cellprob_threshold,
        diameter=part.diameter,
        label=part.label,
        known=known,
    )


def maps_dump(maps: ImageMaps) -> bytes:
    """``maps`` as the bytes of an uncompressed .npz (float16 maps, JSON metadata)."""
    small = maps.compact()
    meta = {
        "height": small.height,
        "width": small.width,
        "cellprob_threshold": float(small.cellprob_threshold),
        "diameter": None if small.diameter is None else float(small.diameter),
        "label": int(small.label),
    }
    arrays = {name: getattr(small, name) for name in _ARRAYS if getattr(small, name) is not None}
    if "known" in arrays:
        arrays["known"] = arrays["known"].astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def maps_load(data: bytes) -> ImageMaps:
    """Read what :func:`maps_dump` wrote (never unpickles: ``allow_pickle=False``)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(bytes(npz["meta"]).decode())
        arrays = {name: npz[name] for name in _ARRAYS if name in npz.files}
    if "known" in arrays:
        arrays["known"] = arrays["known"].astype(bool)
    return ImageMaps(
        height=int(meta["height"]),
        width=int(meta["width"]),
        cellprob_threshold=float(meta.get("cellprob_threshold", 0.0)),
        diameter=None if meta.get("diameter") is None else float(meta["diameter"]),
        label=int(meta.get("label", 1)),
        **arrays,
    )
