"""Shared types of the segmentation backends (Django-free).

Every backend turns one RGB image into a list of cell instances. Instances are
stored as bool crops with an offset so that a 1024x768 field with ~250 cells
does not hold 250 full-size masks.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from scipy import ndimage as ndi

from cytoseg.crops import CropGeometry, label_map_from_instances, semantic_from_instances
from cytoseg.maps import ImageMaps

__all__ = [
    "BackendError",
    "ImageMaps",
    "Instance",
    "Prediction",
    "SegmentationBackend",
    "image_check",
    "instances_from_label_map",
    "label_map_from_instances",
    "semantic_from_instances",
    "setting_bool",
    "setting_choice",
    "setting_float",
    "setting_int",
    "settings_build",
]

_S = TypeVar("_S")


class BackendError(Exception):
    """A backend cannot be found, configured, loaded or run."""


@dataclass(frozen=True)
class Instance(CropGeometry):
    """One predicted cell.

    ``mask`` is a bool crop whose top-left pixel lies at column ``x0``, row ``y0``
    of the image. ``label`` is the semantic id (1 cell, 2 erythrocyte) and
    ``score`` a confidence in 0..1.
    """

    x0: int
    y0: int
    mask: np.ndarray
    label: int
    score: float


@dataclass
class Prediction:
    """What a backend returns for one image."""

    instances: list[Instance]
    semantic: np.ndarray | None  # (H, W) uint8 0/1/2 where the backend has one
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    # the dense outputs a click is resolved against (cytoseg.interactive), where the backend
    # has them (Cellpose's flows, nnU-Net's foreground); None for the classical backends
    maps: ImageMaps | None = None


class SegmentationBackend(abc.ABC):
    """A model (or a classical pipeline) that segments cells in an RGB image.

    Subclasses set ``name`` and implement :meth:`predict`. The constructor
    loads everything that is needed once per worker process; ``predict`` must
    not mutate the instance in a way that changes later results, because
    instances are cached and shared (see ``cytoseg.backends.backend_get``).
    """

    name: ClassVar[str]
    # The settings dataclass (``cytoseg.backends.settings`` and the classical backends'); the
    # constructor validates ``settings`` into ``self.config`` with it.
    settings_class: ClassVar[type | None] = None
    config: Any

    def __init__(self, *, artifacts: Path | None, settings: Mapping[str, Any], device: str) -> None:
        self.artifacts = Path(artifacts) if artifacts is not None else None
        self.settings: Mapping[str, Any] = dict(settings)
        self.device = device
        if self.settings_class is not None:
            self.config = settings_build(self.settings_class, self.settings, backend=self.name)

    @abc.abstractmethod
    def predict(self, image: np.ndarray) -> Prediction:
        """Segment ``image``, an (H, W, 3) uint8 RGB array."""

    def maps(self, image: np.ndarray) -> ImageMaps | None:
        """The dense maps of ``image`` for interactive segmentation (``cytoseg.interactive``),
        without the instance post-processing of :meth:`predict`; None for a backend that has
        none (the classical ones: a click then runs the backend itself on a window)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} device={self.device!r}>"


def image_check(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous (H, W, 3) uint8 array or raise BackendError.

    RGBA is accepted and its alpha dropped, because PNG uploads often carry one.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BackendError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise BackendError(f"expected a uint8 image, got {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise BackendError("empty image")
    return np.ascontiguousarray(arr)


def instances_from_label_map(
    label_map: np.ndarray,
    *,
    labels: Mapping[int, int] | Sequence[int] | np.ndarray | None = None,
    scores: Mapping[int, float] | Sequence[float] | np.ndarray | None = None,
    min_area: int = 0,
) -> list[Instance]:
    """Cut an instance label map (0 background, k > 0 instance k) into instances.

    ``labels[k]`` / ``scores[k]`` give the class and score of instance id ``k``
    (a sequence is indexed by ``k - 1``); the defaults are class 1 and score 1.
    Instances smaller than ``min_area`` pixels are dropped.
    """
    lm = np.asarray(label_map)
    out: list[Instance] = []
    if lm.size == 0 or lm.max() <= 0:
        return out
    slices = ndi.find_objects(lm.astype(np.int64, copy=False))

    def pick(table: Mapping[int, Any] | Sequence[Any] | np.ndarray | None, k: int, default: Any) -> Any:
        if table is None:
            return default
        if isinstance(table, Mapping):
            return table.get(k, default)
        return table[k - 1]

    for idx, sl in enumerate(slices):
        if sl is None:
            continue
        k = idx + 1
        crop = lm[sl] == k
        area = int(crop.sum())
        if area == 0 or area < min_area:
            continue
        out.append(
            Instance(
                x0=int(sl[1].start),
                y0=int(sl[0].start),
                mask=crop,
                label=int(pick(labels, k, 1)),
                score=float(np.clip(pick(scores, k, 1.0), 0.0, 1.0)),
            )
        )
    return out


def settings_build(cls: type[_S], settings: Mapping[str, Any] | None, *, backend: str) -> _S:
    """Build the settings dataclass ``cls`` from a mapping, as BackendError on mistakes.

    Unknown keys are an error rather than ignored: a misspelt setting stored
    with a model version would otherwise silently fall back to the default.
    The dataclass validates values in ``__post_init__`` by raising ValueError.
    """
    values = dict(settings or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise BackendError(f"{backend}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise BackendError(f"{backend}: invalid settings: {exc}") from exc


def setting_int(name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
    """Validate an integer setting (an integral float from JSON is accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
    return v


def setting_float(
    name: str, value: Any, *, lo: float, hi: float, open_lo: bool = False, open_hi: bool = False
) -> float:
    """Validate a float setting within ``lo``..``hi`` (ends optionally excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    too_low = v <= lo if open_lo else v < lo
    too_high = v >= hi if open_hi else v > hi
    if not np.isfinite(v) or too_low or too_high:
        lb, rb = "(" if open_lo else "[", ")" if open_hi else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {v}")
    return v


def setting_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Validate a string setting against ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def setting_bool(name: str, value: Any) -> bool:
    """Validate a boolean setting."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value
