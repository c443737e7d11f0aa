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

__all__ = ["ImageMaps", "maps_dump", "maps_load"]

_ARRAYS = ("flows", "cellprob", "foreground", "semantic")


@dataclass
class ImageMaps:
    """Dense model outputs of one (H, W) image; any map may be missing.

    ``flows``: Cellpose's dP (2, H, W), row (y) then column (x) component, at the network's
    scale (one step of ``dP / 5`` moves about one pixel). ``cellprob``: Cellpose's
    cell-probability logits (H, W). ``foreground``: nnU-Net's probability that a pixel is not
    background (H, W, 0..1). ``semantic``: nnU-Net's class map (H, W) uint8 0/1/2.
    ``cellprob_threshold`` is the logit threshold the model's pre-segmentation uses,
    ``diameter`` its typical cell diameter in image pixels (None: unknown), ``label`` the class
    of a cell where there is no semantic map.
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

    def __post_init__(self) -> None:
        shape = (self.height, self.width)
        for name in _ARRAYS:
            arr = getattr(self, name)
            if arr is None:
                continue
            want = (2, *shape) if name == "flows" else shape
            if tuple(arr.shape) != want:
                raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {want}")

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
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def maps_load(data: bytes) -> ImageMaps:
    """Read what :func:`maps_dump` wrote (never unpickles: ``allow_pickle=False``)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(bytes(npz["meta"]).decode())
        arrays = {name: npz[name] for name in _ARRAYS if name in npz.files}
    return ImageMaps(
        height=int(meta["height"]),
        width=int(meta["width"]),
        cellprob_threshold=float(meta.get("cellprob_threshold", 0.0)),
        diameter=None if meta.get("diameter") is None else float(meta["diameter"]),
        label=int(meta.get("label", 1)),
        **arrays,
    )
