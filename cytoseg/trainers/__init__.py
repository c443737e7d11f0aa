"""Django-free model trainers (nnU-Net v2, Cellpose 3, the refinement net) behind one interface.

Every trainer is a :class:`Trainer`: it takes a :class:`TrainRequest` (cases with their images
and label maps, its configuration, where to work and where to leave the model, progress and
cancel callbacks) and leaves a model folder at ``request.target``. Trainers are registered by
name as ``"module:Class"`` import strings, like the backends, and imported on first use: each
trainer module imports torch, nnU-Net or Cellpose at its top, this package stays light. The
configurations live in ``cytoseg.trainers.configs`` (no heavy imports), so a web process can
validate a job against them.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

__all__ = [
    "TRAINER_PATHS",
    "CancelFn",
    "ProgressFn",
    "TrainCase",
    "TrainOutcome",
    "TrainRequest",
    "Trainer",
    "TrainerError",
    "TrainingCancelled",
    "short_number",
    "trainer_config_class",
    "trainer_get",
    "trainer_names",
]

# A trainer calls this with a small JSON-serialisable dict (keys documented per
# trainer; always "phase", and "epoch"/"epochs" once training runs).
ProgressFn = Callable[[dict[str, Any]], None]
# Polled between iterations/epochs; True stops the training with TrainingCancelled.
CancelFn = Callable[[], bool]


def short_number(value: Any) -> str:
    """A number (or list of numbers) for a log line: floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(short_number(v) for v in value) + "]"
    return str(value)


class TrainingCancelled(Exception):
    """Raised by a trainer when its ``should_cancel`` callback returned True."""


class TrainerError(Exception):
    """A trainer cannot be found or was asked for something it cannot do."""


class TrainCase(Protocol):
    """One training image with its labels (0 background; semantic 1 cell, 2 erythrocyte)."""

    @property
    def image(self) -> np.ndarray: ...  # (H, W, 3) uint8 RGB

    @property
    def semantic(self) -> np.ndarray: ...  # (H, W) uint8 0/1/2

    @property
    def instances(self) -> np.ndarray: ...  # (H, W) int32, every object

    @property
    def cell_instances(self) -> np.ndarray: ...  # (H, W) int32, cells only


@dataclass
class TrainRequest:
    """What a trainer needs. ``options`` are the trainer's own extras (documented per trainer)."""

    train: Sequence[TrainCase]
    validation: Sequence[TrainCase]
    config: Any  # the trainer's configuration dataclass
    workdir: Path  # scratch, removed by the caller afterwards
    target: Path  # where the trained model folder is left
    device: str
    progress: ProgressFn = lambda info: None
    should_cancel: CancelFn = lambda: False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TrainOutcome:
    """What a trainer reports: one line for the job log, and numbers worth keeping."""

    summary: str
    details: dict[str, Any] = field(default_factory=dict)


class Trainer(abc.ABC):
    """Trains one kind of model. Subclasses set ``name`` and ``config_class``."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        """The configuration from its JSON form (``config_class.from_dict``)."""
        return self.config_class.from_dict(data)  # type: ignore[attr-defined]

    @abc.abstractmethod
    def train(self, request: TrainRequest) -> TrainOutcome:
        """Train, leave the model folder at ``request.target``, report; TrainingCancelled when
        ``request.should_cancel()`` turned true."""


# name -> "module:Class": imported on first use (torch, nnU-Net, Cellpose are heavy).
TRAINER_PATHS: dict[str, str] = {
    "nnunet": "cytoseg.trainers.nnunet:NnUNetTrainer",
    "cellpose": "cytoseg.trainers.cellpose:CellposeTrainer",
    "refinement": "cytoseg.trainers.refinement:RefinementTrainer",
}
# name -> "module:Class" of the configuration (cytoseg.trainers.configs, no heavy imports).
CONFIG_PATHS: dict[str, str] = {
    "nnunet": "cytoseg.trainers.configs:NnUNetTrainConfig",
    "cellpose": "cytoseg.trainers.configs:CellposeTrainConfig",
    "refinement": "cytoseg.trainers.configs:RefinementTrainConfig",
}


def _load(path: str, what: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TrainerError(f"{what}: cannot import {path}: {exc}") from exc


def trainer_names() -> list[str]:
    """Registered trainer names, sorted."""
    return sorted(TRAINER_PATHS)


def trainer_config_class(name: str) -> type:
    """The configuration dataclass of trainer ``name`` (without importing the trainer)."""
    if name not in CONFIG_PATHS:
        raise TrainerError(f"unknown trainer {name!r}; known: {', '.join(trainer_names())}")
    cls = _load(CONFIG_PATHS[name], f"trainer {name!r}")
    assert isinstance(cls, type)
    return cls


def trainer_get(name: str) -> Trainer:
    """A trainer instance by name (TrainerError when unknown)."""
    if name not in TRAINER_PATHS:
        raise TrainerError(f"unknown trainer {name!r}; known: {', '.join(trainer_names())}")
    cls = _load(TRAINER_PATHS[name], f"trainer {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise TrainerError(f"trainer {name!r}: {TRAINER_PATHS[name]} is not a Trainer")
    return cls()
