"""The trainers' configurations as dataclasses, and their validation (Django-free, torch-free).

Each field carries its constraints in its metadata (``at_least``, ``probability``,
``positive``, ``choices``, ``pattern``, ``between``), so the one description of a trainer's
hyper-parameters is this module: the trainers build from these classes, and
:func:`config_errors` validates a job's JSON against them (names, types, ranges) without
importing torch, nnU-Net or Cellpose, which is what lets the web process check a job.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CellposeTrainConfig",
    "NnUNetAugmentation",
    "NnUNetPlansOverride",
    "NnUNetTrainConfig",
    "RefinementTrainConfig",
    "config_errors",
]


def spec(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules in its metadata (see :func:`config_errors`)."""
    return field(default=default, metadata=rules)


def _p(default: float) -> Any:
    return spec(default, probability=True)


# --------------------------------------------------------------------- stain augmentation


@dataclass
class StainAugmentation:
    """Augmented copies of the training images (``cytoseg.stain``): ``copies`` per image (0 =
    off), stain jitter in optical density (``hed``), hue rotation (``hue``, fraction of the
    colour circle) and saturation (``saturation``), illumination loss up to ``gradient``,
    defocus up to sigma ``blur`` px, JPEG at a quality in ``jpeg`` with probability ``p_jpeg``."""

    copies: int = spec(0, between=(0, 16))
    hed: float = spec(0.3, between=(0.0, 1.0))
    hue: float = spec(0.08, between=(0.0, 0.5))
    saturation: float = spec(0.3, between=(0.0, 1.0))
    gradient: float = spec(0.45, between=(0.0, 0.9))
    blur: float = spec(2.5, between=(0.0, 8.0))
    jpeg: tuple[int, int] = spec((35, 90), pair_within=(1, 100))
    p_jpeg: float = _p(0.5)
    seed: int = 0


# --------------------------------------------------------------------- nnU-Net


@dataclass
class NnUNetAugmentation:
    """Per-sample augmentation probabilities and ranges (paper A's values by default).

    nnU-Net's own pipeline, with the probabilities made configurable. ``p_flip`` is
    the probability of flipping along each image axis; ``rotation_deg`` is used for
    every 2D patch (nnU-Net itself narrows it to +-15 deg for elongated patches).
    ``p_gamma_inverted`` is nnU-Net's extra inverted-image gamma (0.1 in nnU-Net),
    not in paper A's list, so it is off by default.
    """

    p_flip: float = _p(0.5)
    p_rotation: float = _p(0.2)
    rotation_deg: tuple[float, float] = (-180.0, 180.0)
    p_scaling: float = _p(0.2)
    scaling: tuple[float, float] = (0.7, 1.4)
    p_low_res: float = _p(0.25)
    low_res_scale: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = _p(0.3)
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma_inverted: float = _p(0.0)
    p_brightness: float = _p(0.15)
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = _p(0.15)
    contrast: tuple[float, float] = (0.75, 1.25)
    p_blur: float = _p(0.2)
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_noise: float = _p(0.1)
    noise_variance: tuple[float, float] = (0.0, 0.1)


@dataclass
class NnUNetPlansOverride:
    """Changes applied to nnU-Net's plan of the trained configuration (None = keep).

    ``patch_size`` is (rows, cols); each must be divisible by 2**(n_stages - 1).
    When only ``patch_size`` is given, the number of stages is reduced so that the
    deepest feature map keeps an edge of at least 4 pixels, as nnU-Net plans it.
    """

    patch_size: tuple[int, int] | None = None
    batch_size: int | None = spec(None, at_least=1)
    n_stages: int | None = spec(None, at_least=1)
    base_features: int | None = spec(None, at_least=1)
    max_features: int | None = spec(None, at_least=1)
    n_conv_per_stage: int | None = spec(None, at_least=1)

    def is_empty(self) -> bool:
        """True when nothing is overridden."""
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


@dataclass
class NnUNetTrainConfig:
    """Hyper-parameters of an nnU-Net v2 training job.

    Defaults are paper A's: 50 epochs x 250 iterations, 50 validation iterations,
    initial LR 7e-3 (polynomial decay, SGD with Nesterov momentum 0.99 as in nnU-Net),
    weight decay 1e-4, foreground oversampling 0.33, and its augmentation list.
    """

    num_epochs: int = spec(50, at_least=1)
    num_iterations_per_epoch: int = spec(250, at_least=1)
    num_val_iterations_per_epoch: int = 50
    initial_lr: float = spec(7e-3, positive=True)
    weight_decay: float = 1e-4
    oversample_foreground_percent: float = 0.33
    augmentation: NnUNetAugmentation = field(default_factory=NnUNetAugmentation)
    plans: NnUNetPlansOverride = field(default_factory=NnUNetPlansOverride)
    configuration: str = spec("2d", choices=("2d",))
    # "zscore" = nnU-Net's per-image z-score per channel (channels named R, G, B; paper A);
    # "rgb_to_0_1" = divide by 255.
    normalization: str = spec("zscore", choices=("zscore", "rgb_to_0_1"))
    dataset_id: int = spec(501, between=(1, 999))
    # It names a folder of the job: letters, digits and underscores only.
    dataset_name: str = spec("DiffQuik", pattern=r"[A-Za-z0-9_]{1,50}")
    deep_supervision: bool = True
    # A fourth class that tells cells apart, where the two-stage combination takes its seeds:
    # "core", the middle of every cell (pixels at least core_fraction of the cell's largest inner
    # distance from its edge; cytoseg.datasets.core_label_map), or "rim", its inner rim
    # rim_width pixels wide (boundary_label_map). "none": the label convention's three classes.
    seed_class: str = spec("none", choices=("none", "core", "rim"))
    core_fraction: float = spec(0.4, between=(0.05, 0.95))
    rim_width: int = spec(2, between=(1, 8))
    stain: StainAugmentation = field(default_factory=StainAugmentation)
    # Data-augmentation worker processes; 0 runs it in the training process (the only
    # choice inside a daemonic process, forced there).
    num_workers_da: int = 0
    # torch.compile (nnU-Net's default on CUDA): off because compiling costs minutes and
    # fails on some setups; turn on for long GPU trainings.
    compile: bool = False
    save_every: int = spec(50, at_least=1)
    plot_progress: bool = True
    progress_every_iterations: int = spec(10, at_least=1)
    seed: int | None = 0

    @classmethod
    def tiny(cls) -> NnUNetTrainConfig:
        """A configuration that trains in seconds on a CPU (tests, smoke runs)."""
        return cls(
            num_epochs=3,
            num_iterations_per_epoch=8,
            num_val_iterations_per_epoch=2,
            initial_lr=1e-2,
            plans=NnUNetPlansOverride(
                patch_size=(64, 64),
                batch_size=4,
                n_stages=4,
                base_features=8,
                max_features=64,
                n_conv_per_stage=1,
            ),
            plot_progress=False,
            save_every=1000,
            progress_every_iterations=1,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NnUNetTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise TypeError."""
        return config_build(cls, data)


# --------------------------------------------------------------------- Cellpose


@dataclass
class CellposeTrainConfig:
    """Hyper-parameters of a Cellpose training job.

    ``diam_mean`` is the object diameter the network sees: each training image is
    rescaled by (its mean cell diameter / ``diam_mean``). ``None`` = the mean
    diameter of the training labels when training from scratch (no resizing at
    inference for typical fields), or the initial model's value when fine-tuning.
    ``network_scale`` (used when ``diam_mean`` is None and training from scratch) sets
    ``diam_mean`` to that fraction of the labels' mean diameter: 0.5 trains a network that
    sees cells at half their size, so inference runs on a quarter of the pixels (the fast
    pre-segmentation configuration; ``bench/fast_accuracy.py`` measures what it costs).
    ``rescale=False`` trains at native size (``scale_range`` then defaults to 1,
    i.e. no random zoom). ``val_every`` epochs a validation loss is computed (on a
    fixed random crop of each validation image, as Cellpose does).
    """

    n_epochs: int = spec(100, at_least=1)
    learning_rate: float = spec(0.005, positive=True)
    # Cellpose ramps the learning rate up linearly from 0 over its first 10 epochs
    warmup_epochs: int = 10
    weight_decay: float = 1e-5
    batch_size: int = spec(8, at_least=1)
    sgd: bool = False
    momentum: float = 0.9
    channels: tuple[int, int] | None = None
    diam_mean: float | None = None
    network_scale: float = spec(1.0, positive=True)
    rescale: bool = True
    scale_range: float | None = None
    bsize: int = spec(224, at_least=1)
    nimg_per_epoch: int | None = None
    min_train_masks: int = spec(1, at_least=1)
    val_every: int = spec(1, at_least=1)
    # Re-estimate BatchNorm running statistics over this many batches of training
    # crops after the last epoch. Cellpose's BatchNorm momentum (0.05) needs hundreds
    # of steps for usable running statistics; short runs without this predict nothing.
    bn_recalibrate_batches: int = 0
    stain: StainAugmentation = field(default_factory=StainAugmentation)
    seed: int = 0

    @classmethod
    def tiny(cls) -> CellposeTrainConfig:
        """A configuration that trains in seconds on a CPU (tests, smoke runs)."""
        return cls(
            n_epochs=12,
            warmup_epochs=1,
            learning_rate=0.01,
            batch_size=4,
            bsize=64,
            val_every=4,
            bn_recalibrate_batches=3,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = dataclasses.asdict(self)
        out["channels"] = list(self.channels) if self.channels is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellposeTrainConfig:
        """Inverse of :meth:`to_dict`."""
        return config_build(cls, data)


# --------------------------------------------------------------------- refinement (paper B)


@dataclass
class RefinementTrainConfig:
    """Hyper-parameters (paper B: Adam, LR 1e-4, BCE, early stopping on val loss).

    Each epoch draws ``iterations_per_epoch`` batches of random ``patch_size``
    crops (with flips and 90-degree rotations); images smaller than the patch are
    used whole. Training stops after ``patience`` epochs without a validation loss
    improvement of at least ``min_delta``, or at ``max_epochs``; the best weights
    are kept.
    """

    max_epochs: int = spec(100, at_least=1)
    iterations_per_epoch: int = spec(50, at_least=1)
    batch_size: int = spec(8, at_least=1)
    patch_size: int = spec(128, at_least=1)
    learning_rate: float = spec(1e-4, positive=True)
    weight_decay: float = 0.0
    patience: int = 10
    min_delta: float = 1e-4
    seed: int = 0

    @classmethod
    def tiny(cls) -> RefinementTrainConfig:
        """Seconds on a CPU (tests)."""
        return cls(
            max_epochs=6,
            iterations_per_epoch=6,
            batch_size=4,
            patch_size=48,
            learning_rate=1e-3,
            patience=3,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefinementTrainConfig:
        """Inverse of :meth:`to_dict`."""
        return config_build(cls, data)


# --------------------------------------------------------------------- validation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, ``(hint, False)`` otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_problem(hint: Any, value: Any) -> str | None:
    base, optional = _split_optional(hint)
    if value is None:
        return None if optional else "must not be null"
    if base is int:
        return None if _is_int(value) else "must be an integer"
    if base is float:
        return None if _is_number(value) else "must be a number"
    if base is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if base is str:
        return None if isinstance(value, str) else "must be a string"
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all((_is_int(v) if item is int else _is_number(v)) for v in value)
        )
        return None if ok else f"must be a list of two {'integers' if item is int else 'numbers'}"
    raise TypeError(f"unsupported configuration type {hint!r}")


def _rule_problem(rules: Mapping[str, Any], value: Any) -> str | None:
    if value is None:
        return None
    if "pair_within" in rules:
        lo, hi = rules["pair_within"]
        ok = lo <= value[0] <= value[1] <= hi
        return None if ok else f"must be [low, high] with {lo} <= low <= high <= {hi}"
    if "at_least" in rules and value < rules["at_least"]:
        return f"must be at least {rules['at_least']}"
    if rules.get("probability") and not 0 <= value <= 1:
        return "must be a probability in [0, 1]"
    if rules.get("positive") and value <= 0:
        return "must be positive"
    if "choices" in rules and value not in rules["choices"]:
        return f"must be one of {', '.join(rules['choices'])}"
    if "pattern" in rules and not re.fullmatch(rules["pattern"], value):
        return "must be 1-50 letters, digits or underscores (it names a folder)"
    if "between" in rules and not rules["between"][0] <= value <= rules["between"][1]:
        return f"must be from {rules['between'][0]} to {rules['between'][1]}"
    return None


def config_errors(cls: type, data: Any, prefix: str) -> dict[str, str]:
    """What is wrong with ``data`` (JSON) as a partial ``cls`` configuration: ``{path: message}``.

    Keys are optional (missing ones keep their defaults); unknown keys are errors, so that a
    misspelt hyper-parameter never falls back silently to its default.
    """
    if not isinstance(data, Mapping):
        return {prefix: "must be an object"}
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors: dict[str, str] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}"
        spec_ = fields.get(key)
        if spec_ is None:
            errors[path] = "unknown key"
            continue
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            errors.update(config_errors(hint, value, path))
            continue
        problem = _type_problem(hint, value) or _rule_problem(spec_.metadata, value)
        if problem:
            errors[path] = problem
    return errors


def config_build(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls`` from its JSON form (nested configurations and tuples rebuilt); unknown keys
    raise TypeError. Validate with :func:`config_errors` first for per-key messages."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for key, value in dict(data).items():
        hint = hints.get(key)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_build(hint, value)
        elif isinstance(value, list) and hint is not None:
            base, _ = _split_optional(hint)
            if typing.get_origin(base) is tuple:
                value = tuple(value)
        values[key] = value
    return cls(**values)
