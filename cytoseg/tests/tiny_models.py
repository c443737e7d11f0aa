"""Tiny trained models shared by the model-library tests and the training app's job tests.

Each model is trained once per pytest session: the builders below cache their
result in this module, and the conftest files of ``cytoseg/tests`` and
``training/tests`` import its fixtures, so a run over both folders trains nnU-Net
and Cellpose once each. nnU-Net is
trained inside a daemonic child process (what a Celery prefork worker is: daemonic
processes may not start children). The child is spawned, not forked: this pytest
process may already have run multi-threaded torch code, and a forked child of such
a process hangs in its first OpenMP parallel region.
"""

from __future__ import annotations

import json
import multiprocessing
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SIZE = 128
TRAIN_SEEDS = list(range(8))
VAL_SEEDS = [100, 101]
HELD_OUT_SEEDS = [990, 999]
NNUNET_EPOCHS = 6
NNUNET_TIMEOUT_S = 600

_cache: dict[str, Any] = {}


def field(seed: int) -> Any:
    """A small synthetic Diff-Quik field (``cytoseg.synthetic``).

    8-16 cells and 3-5 erythrocytes, varying with the seed: denser than the
    generator's default for 128x128 (about 7 cells), and of varied density so
    that a tiny model does not learn one foreground fraction.
    """
    from cytoseg.synthetic import generate_field

    return generate_field(
        seed=seed,
        width=SIZE,
        height=SIZE,
        n_cells=8 + 2 * (seed % 5),
        n_erythrocytes=3 + seed % 3,
    )


def held_out_fields() -> list[Any]:
    """Fields none of the tiny models was trained or validated on."""
    return [field(s) for s in HELD_OUT_SEEDS]


@dataclass
class NnUNetTrained:
    """Outcome of the tiny nnU-Net training run in a daemonic child process."""

    model_folder: Path
    curves: list[dict[str, Any]]
    phases: list[str]
    child_was_daemon: bool
    seconds: float
    fold: Any


def _nnunet_child(workdir: str, out_file: str) -> None:
    """Body of the daemonic child: train the tiny nnU-Net, write a JSON summary."""
    out = Path(out_file)
    try:
        from cytoseg.trainers.configs import NnUNetTrainConfig
        from cytoseg.trainers.nnunet import nnunet_train

        fields = [field(s) for s in TRAIN_SEEDS]
        vals = [field(s) for s in VAL_SEEDS]
        phases: list[str] = []
        cfg = NnUNetTrainConfig.tiny()
        cfg.num_epochs = NNUNET_EPOCHS
        cfg.num_iterations_per_epoch = 15
        result = nnunet_train(
            images=[f.image for f in fields],
            semantic_labels=[f.semantic_map() for f in fields],
            val_images=[f.image for f in vals],
            val_semantic_labels=[f.semantic_map() for f in vals],
            workdir=Path(workdir),
            config=cfg,
            device="cpu",
            progress=lambda info: phases.append(info["phase"]),
        )
        out.write_text(
            json.dumps(
                {
                    "model_folder": str(result.model_folder),
                    "curves": result.curves,
                    "phases": phases,
                    "daemon": multiprocessing.current_process().daemon,
                    "seconds": result.seconds,
                    "fold": result.fold,
                }
            )
        )
    except BaseException:  # report everything to the parent, which fails the test
        out.with_suffix(".error").write_text(traceback.format_exc())
        raise


def nnunet_trained(base: Path) -> NnUNetTrained:
    """Train (once per session) the tiny nnU-Net inside a daemonic process."""
    if "nnunet" not in _cache:
        workdir = base / "nnunet_job"
        out_file = base / "nnunet_result.json"
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_nnunet_child, args=(str(workdir), str(out_file)), daemon=True)
        proc.start()
        proc.join(NNUNET_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            pytest.fail("nnU-Net training in the daemonic child timed out")
        err = out_file.with_suffix(".error")
        if proc.exitcode != 0 or not out_file.is_file():
            detail = err.read_text() if err.is_file() else f"exit code {proc.exitcode}"
            pytest.fail(f"nnU-Net training in a daemonic process failed:\n{detail}")
        data = json.loads(out_file.read_text())
        _cache["nnunet"] = NnUNetTrained(
            model_folder=Path(data["model_folder"]),
            curves=data["curves"],
            phases=data["phases"],
            child_was_daemon=bool(data["daemon"]),
            seconds=float(data["seconds"]),
            fold=data["fold"],
        )
    return _cache["nnunet"]


def cellpose_trained(base: Path) -> Any:
    """Train (once per session) the tiny Cellpose model in this process."""
    if "cellpose" not in _cache:
        from cytoseg.trainers.cellpose import cellpose_train
        from cytoseg.trainers.configs import CellposeTrainConfig

        fields = [field(s) for s in TRAIN_SEEDS]
        vals = [field(s) for s in VAL_SEEDS]
        epochs: list[dict[str, Any]] = []

        def progress(info: dict[str, Any]) -> None:
            if info["phase"] == "epoch":
                epochs.append(info)

        result = cellpose_train(
            images=[f.image for f in fields],
            instance_labels=[f.label_map() for f in fields],
            val_images=[f.image for f in vals],
            val_instance_labels=[f.label_map() for f in vals],
            workdir=base / "cellpose_job",
            config=CellposeTrainConfig.tiny(),
            device="cpu",
            progress=progress,
        )
        _cache["cellpose"] = (result, epochs)
    return _cache["cellpose"]


def foreground_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pixel Dice 2TP / (2TP + FP + FN) of two foreground masks."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    denom = p.sum() + t.sum()
    return float(2 * (p & t).sum() / denom) if denom else 1.0


def models_base_get(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session folder holding the tiny models' training jobs (created once)."""
    if "base" not in _cache:
        _cache["base"] = tmp_path_factory.mktemp("tiny_models")
    return _cache["base"]


@pytest.fixture(scope="session")
def models_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session folder holding the tiny models' training jobs."""
    return models_base_get(tmp_path_factory)


@pytest.fixture(scope="session")
def nnunet_model(models_base: Path) -> NnUNetTrained:
    """The tiny nnU-Net trained in a daemonic process."""
    return nnunet_trained(models_base)


@pytest.fixture(scope="session")
def cellpose_model(models_base: Path) -> Any:
    """(CellposeTrainResult, epoch progress dicts) of the tiny Cellpose model."""
    return cellpose_trained(models_base)
