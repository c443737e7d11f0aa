"""Settings of the model backends as validated dataclasses (Django-free, torch-free).

These classes are the schema of what a project's ``pipeline`` and a model version's ``config``
may say about a backend: every key has a type and a range, an unknown key is an error, and the
settings that name files on the machine are marked ``path``. The platform accepts no path
settings from its users (a path would let whoever sets it make a worker load any file on the
server); they exist for notebooks and benchmarks that point a backend at a folder of their own.

They live apart from the backends because the backends import torch, nnU-Net and Cellpose,
while the web process validates settings without loading any of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cytoseg.backends.base import (
    setting_bool,
    setting_choice,
    setting_float,
    setting_int,
)

__all__ = [
    "NNUNET_CHECKPOINT_NAMES",
    "CellposeSettings",
    "NnUNetSettings",
    "RefinementSettings",
    "TwoStageSettings",
    "path_setting",
    "setting_path",
]

# File names inside a model folder; a name, never a path.
NNUNET_CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
ERYTHROCYTE_MODES = ("label", "suppress")
# How the two-stage backend combines its models (cytoseg.backends.combine).
COMBINE_MODES = ("filter", "assign")


def path_setting() -> Any:
    """A dataclass field holding a path on this machine (refused where paths are not allowed)."""
    return field(default=None, metadata={"path": True})


def setting_path(name: str, value: Any) -> str | None:
    """Validate a path setting: a non-empty string or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a path (text), got {value!r}")
    return value


def _optional(value: Any, check: Any) -> Any:
    return None if value is None else check(value)


class _Settings:
    """Frozen-dataclass helper: normalised values are written back once, in __post_init__."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class NnUNetSettings(_Settings):
    """Settings of the nnU-Net backend (``cytoseg.backends.nnunet``).

    ``checkpoint``: which checkpoint of each fold to load (a file name in the model folder).
    ``folds``: folds to ensemble (integers or ``"all"``); default every numbered fold with the
    checkpoint, else ``fold_all``. ``tile_step_size``: sliding-window step as a fraction of the
    patch. ``use_mirroring``: flip test-time augmentation (4 passes in 2D). ``use_gaussian``:
    Gaussian weighting of the tiles. ``perform_everything_on_device``: keep logits on the GPU
    (CUDA only). ``instances``: ``"components"`` (connected components per class), ``"seeds"``
    (cells grown from the model's core or rim class, for a model trained with one; else
    components) or ``"none"``. ``min_instance_area``: smaller components are dropped.
    ``batch_size``: sliding-window patches per network pass when several images are predicted
    together (``predict_batch``, the tiles of a tiled run; nnU-Net's own predictor, used for one
    image, runs one patch per pass).
    ``model_folder`` (path): a model folder instead of the artifacts.
    """

    model_folder: str | None = path_setting()
    checkpoint: str = "checkpoint_final.pth"
    folds: tuple[int | str, ...] | None = None
    tile_step_size: float = 0.5
    use_mirroring: bool = True
    use_gaussian: bool = True
    perform_everything_on_device: bool = True
    instances: str = "components"
    min_instance_area: int = 15
    batch_size: int = 8

    def __post_init__(self) -> None:
        self._set("model_folder", setting_path("model_folder", self.model_folder))
        self._set("checkpoint", setting_choice("checkpoint", self.checkpoint, NNUNET_CHECKPOINT_NAMES))
        self._set("folds", _optional(self.folds, _folds))
        self._set(
            "tile_step_size",
            setting_float("tile_step_size", self.tile_step_size, lo=0.0, hi=1.0, open_lo=True),
        )
        self._set("use_mirroring", setting_bool("use_mirroring", self.use_mirroring))
        self._set("use_gaussian", setting_bool("use_gaussian", self.use_gaussian))
        self._set(
            "perform_everything_on_device",
            setting_bool("perform_everything_on_device", self.perform_everything_on_device),
        )
        self._set("instances", setting_choice("instances", self.instances, ("components", "seeds", "none")))
        self._set("min_instance_area", setting_int("min_instance_area", self.min_instance_area, lo=0))
        self._set("batch_size", setting_int("batch_size", self.batch_size, lo=1, hi=512))


def _folds(value: Any) -> tuple[int | str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"folds must be a non-empty list of fold numbers or 'all', got {value!r}")
    out: list[int | str] = []
    for fold in value:
        if fold == "all":
            out.append("all")
        else:
            out.append(setting_int("folds[]", fold, lo=0, hi=99))
    return tuple(out)


@dataclass(frozen=True)
class CellposeSettings(_Settings):
    """Settings of the Cellpose backend (``cytoseg.backends.cellpose``).

    ``channels``: Cellpose channels ``[c1, c2]``, or None for RGB (default from the model).
    ``diameter``: expected cell diameter in pixels (default: the training labels' mean), times
    ``diameter_scale`` (below 1 the network sees cells larger than it was trained on: in dense
    clusters that separates more of them, at more pixels to run).
    ``flow_threshold``, ``cellprob_threshold``, ``min_size``, ``max_size_fraction``: mask
    reconstruction. ``niter``: dynamics iterations (default Cellpose's 200 x scale).
    ``batch_size``, ``tile_overlap``, ``bsize`` (0 = the whole image as one tile), ``augment``:
    network tiling. ``label``: class given to every instance.
    ``model_file`` (path): a model file instead of the artifacts.
    """

    model_file: str | None = path_setting()
    channels: tuple[int, int] | None = None
    diameter: float | None = None
    diameter_scale: float = 1.0
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size: int = 15
    max_size_fraction: float = 0.4
    niter: int | None = None
    batch_size: int = 8
    tile_overlap: float = 0.1
    bsize: int = 224
    augment: bool = False
    label: int = 1

    def __post_init__(self) -> None:
        self._set("model_file", setting_path("model_file", self.model_file))
        self._set("channels", _optional(self.channels, _channels))
        self._set("diameter_scale", setting_float("diameter_scale", self.diameter_scale, lo=0.25, hi=4.0))
        self._set(
            "diameter",
            _optional(self.diameter, lambda v: setting_float("diameter", v, lo=0.0, hi=1000.0, open_lo=True)),
        )
        self._set("flow_threshold", setting_float("flow_threshold", self.flow_threshold, lo=0.0, hi=10.0))
        self._set("cellprob_threshold", setting_float("cellprob_threshold", self.cellprob_threshold, lo=-20.0, hi=20.0))
        self._set("min_size", setting_int("min_size", self.min_size, lo=0))
        self._set(
            "max_size_fraction",
            setting_float("max_size_fraction", self.max_size_fraction, lo=0.0, hi=1.0, open_lo=True),
        )
        self._set("niter", _optional(self.niter, lambda v: setting_int("niter", v, lo=1, hi=10000)))
        self._set("batch_size", setting_int("batch_size", self.batch_size, lo=1, hi=512))
        self._set("tile_overlap", setting_float("tile_overlap", self.tile_overlap, lo=0.0, hi=0.5, open_hi=True))
        bsize = setting_int("bsize", self.bsize, lo=0, hi=4096)
        if 0 < bsize < 16:
            raise ValueError(f"bsize must be 0 (one tile) or at least 16, got {bsize}")
        self._set("bsize", bsize)
        self._set("augment", setting_bool("augment", self.augment))
        self._set("label", setting_int("label", self.label, lo=1, hi=2))


def _channels(value: Any) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"channels must be a list of two channel numbers or null, got {value!r}")
    a, b = (setting_int("channels[]", v, lo=0, hi=3) for v in value)
    return (a, b)


def _nested(name: str, value: Any, cls: type[Any]) -> dict[str, Any]:
    """Validate a nested settings object by building ``cls`` from it; return it as a dict."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be an object, got {value!r}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {', '.join(map(str, unknown))}")
    cls(**value)
    return dict(value)


@dataclass(frozen=True)
class TwoStageSettings(_Settings):
    """Settings of the two-stage backend (``cytoseg.backends.two_stage``).

    ``nnunet`` / ``cellpose``: settings objects of the two stages. ``min_fg_fraction``: keep an
    instance when at least this fraction of it is nnU-Net foreground. ``erythrocytes``:
    ``"label"`` (keep them with label 2) or ``"suppress"``. ``colour_filter``: paper A's colour
    filter on top of nnU-Net's classes. ``crop_to_foreground``: cut kept masks to the
    foreground. ``restrict_masks``: run Cellpose's dynamics only on nnU-Net foreground dilated
    by ``restrict_margin`` pixels.
    ``combine``: how the two are combined (``cytoseg.backends.combine``): ``"filter"`` keeps
    Cellpose's masks and lets nnU-Net drop and classify them; ``"assign"`` keeps nnU-Net's
    foreground and classes and lets the instances split it (Cellpose's flows followed inside
    nnU-Net's cells, nnU-Net's cell interiors where the model has a rim class, growth by at most
    ``grow_radius`` px, unclaimed foreground a new cell when it is at least ``new_min_area`` px,
    ``new_min_solidity`` solid and at most ``new_max_elongation`` long for its width;
    erythrocytes from nnU-Net's class split by ``erythrocyte_radius``). ``assign_flow_threshold``:
    Cellpose's flow threshold when its flows are followed inside nnU-Net's cells (``"assign"``;
    looser than Cellpose's own 0.4 because nnU-Net already removed the masks on background: on
    hard synthetic fields F1@0.5 0.41 at 0.4, 0.63 at 0.8). ``min_fg_fraction``,
    ``crop_to_foreground`` and ``restrict_*`` apply to ``"filter"``.
    ``nnunet_model_folder`` / ``cellpose_model_file`` (paths): models instead of the artifacts.
    """

    nnunet_model_folder: str | None = path_setting()
    cellpose_model_file: str | None = path_setting()
    nnunet: Mapping[str, Any] = field(default_factory=dict, metadata={"nested": "nnunet"})
    cellpose: Mapping[str, Any] = field(default_factory=dict, metadata={"nested": "cellpose"})
    min_fg_fraction: float = 0.5
    erythrocytes: str = "label"
    colour_filter: bool = False
    crop_to_foreground: bool = False
    restrict_masks: bool = False
    restrict_margin: int = 3
    combine: str = "assign"
    grow_radius: float = 4.0
    new_min_area: int = 60
    new_min_solidity: float = 0.9
    new_max_elongation: float = 2.5
    erythrocyte_radius: float = 4.0
    assign_flow_threshold: float = 0.8

    def __post_init__(self) -> None:
        self._set("combine", setting_choice("combine", self.combine, COMBINE_MODES))
        self._set(
            "assign_flow_threshold",
            setting_float("assign_flow_threshold", self.assign_flow_threshold, lo=0.0, hi=10.0),
        )
        self._set("grow_radius", setting_float("grow_radius", self.grow_radius, lo=0.0, hi=100.0))
        self._set("new_min_area", setting_int("new_min_area", self.new_min_area, lo=1))
        self._set("new_min_solidity", setting_float("new_min_solidity", self.new_min_solidity, lo=0.0, hi=1.0))
        self._set("new_max_elongation", setting_float("new_max_elongation", self.new_max_elongation, lo=1.0, hi=100.0))
        self._set("erythrocyte_radius", setting_float("erythrocyte_radius", self.erythrocyte_radius, lo=0.5, hi=100.0))
        self._set("nnunet_model_folder", setting_path("nnunet_model_folder", self.nnunet_model_folder))
        self._set("cellpose_model_file", setting_path("cellpose_model_file", self.cellpose_model_file))
        self._set("nnunet", _nested("nnunet", self.nnunet, NnUNetSettings))
        self._set("cellpose", _nested("cellpose", self.cellpose, CellposeSettings))
        self._set("min_fg_fraction", setting_float("min_fg_fraction", self.min_fg_fraction, lo=0.0, hi=1.0))
        self._set("erythrocytes", setting_choice("erythrocytes", self.erythrocytes, ERYTHROCYTE_MODES))
        self._set("colour_filter", setting_bool("colour_filter", self.colour_filter))
        self._set("crop_to_foreground", setting_bool("crop_to_foreground", self.crop_to_foreground))
        self._set("restrict_masks", setting_bool("restrict_masks", self.restrict_masks))
        self._set("restrict_margin", setting_int("restrict_margin", self.restrict_margin, lo=0, hi=50))


_BACKEND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")


@dataclass(frozen=True)
class RefinementSettings(_Settings):
    """Settings of the refinement backend (``cytoseg.backends.refinement``, paper B).

    ``base``: name of the wrapped backend (required). ``base_settings``: its settings object
    (checked against that backend's settings). ``threshold``: foreground threshold on the
    refined probability. ``min_area``: instances smaller than this after cropping are dropped.
    ``weights`` / ``base_artifacts`` (paths): files instead of the artifacts.
    """

    base: str | None = None
    base_settings: Mapping[str, Any] = field(default_factory=dict, metadata={"nested_from": "base"})
    weights: str | None = path_setting()
    base_artifacts: str | None = path_setting()
    threshold: float = 0.5
    min_area: int = 15

    def __post_init__(self) -> None:
        if self.base is not None:
            if not isinstance(self.base, str) or not _BACKEND_NAME.match(self.base):
                raise ValueError(f"base must be a backend name, got {self.base!r}")
            if self.base == "refinement":
                raise ValueError("base cannot be refinement itself")
        if not isinstance(self.base_settings, Mapping):
            raise ValueError(f"base_settings must be an object, got {self.base_settings!r}")
        self._set("base_settings", dict(self.base_settings))
        self._set("weights", setting_path("weights", self.weights))
        self._set("base_artifacts", setting_path("base_artifacts", self.base_artifacts))
        self._set("threshold", setting_float("threshold", self.threshold, lo=0.0, hi=1.0, open_lo=True, open_hi=True))
        self._set("min_area", setting_int("min_area", self.min_area, lo=0))
