"""Cellpose 3 trainer and backend: tiny training, instances, fine-tuning, cancellation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cytoseg.tests.tiny_models import field, held_out_fields
from cytoseg.trainers import TrainingCancelled
from cytoseg.trainers.cellpose import (
    CellposeTrainConfig,
    _lr_schedule,
    cellpose_model_nchan,
    cellpose_train,
)

pytestmark = pytest.mark.ml


def _iou_matches(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> int:
    """Number of true instances with a predicted instance of IoU >= threshold."""
    hits = 0
    for k in np.unique(truth)[1:]:
        t = truth == k
        ids, counts = np.unique(pred[t], return_counts=True)
        best = 0.0
        for i, c in zip(ids, counts, strict=True):
            if i == 0:
                continue
            best = max(best, c / float((t | (pred == i)).sum()))
        hits += best >= threshold
    return hits


def test_lr_schedule_matches_cellpose() -> None:
    sched = _lr_schedule(0.1, 20)
    assert len(sched) == 20 and sched[0] == 0.0 and sched[9] == pytest.approx(0.1)
    assert np.all(sched[10:] == 0.1)
    long = _lr_schedule(0.1, 200)  # step-down over the last 50 epochs
    assert len(long) == 200 and long[-1] < long[149] / 100
    short = _lr_schedule(0.1, 3)  # no epoch without learning
    assert short[0] > 0 and short[-1] == pytest.approx(0.1)


def test_config_roundtrip() -> None:
    cfg = CellposeTrainConfig(channels=(2, 3), diam_mean=17.0)
    assert CellposeTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_trained_model_files(cellpose_model: Any) -> None:
    result, epochs = cellpose_model
    cfg = CellposeTrainConfig.tiny()
    assert result.model_file.is_file() and result.meta_file.is_file()
    assert cellpose_model_nchan(result.model_file) == 3 == result.nchan
    meta = json.loads(result.meta_file.read_text())
    assert meta["channels"] is None and meta["nchan"] == 3
    assert 5.0 <= meta["diam_labels"] <= 60.0
    assert len(result.train_losses) == cfg.n_epochs == len(epochs)
    assert all(np.isfinite(result.train_losses))
    assert result.train_losses[-1] < result.train_losses[0]
    # validation every val_every epochs and after the last one
    assert np.isfinite(result.val_losses[-1])
    assert np.isnan(result.val_losses[0])


def test_backend_finds_instances(cellpose_model: Any) -> None:
    from cytoseg.backends.base import label_map_from_instances
    from cytoseg.backends.cellpose import CellposeBackend

    result, _ = cellpose_model
    backend = CellposeBackend(artifacts=result.model_file.parent, settings={}, device="cpu")
    found, total = 0, 0
    for f in held_out_fields():
        pred = backend.predict(f.image)
        assert pred.instances, "Cellpose found no instance"
        assert all(i.label == 1 and 0.0 <= i.score <= 1.0 for i in pred.instances)
        assert {"cellpose_net", "cellpose_masks"} <= set(pred.timings)
        h, w = f.image.shape[:2]
        label_map = label_map_from_instances(pred.instances, height=h, width=w)
        truth = f.label_map()
        found += _iou_matches(label_map, truth)
        total += int(truth.max())
    # a 12-epoch model from scratch: a fair share of cells matched at IoU 0.5
    assert found / total >= 0.25, (found, total)


def test_backend_settings(cellpose_model: Any) -> None:
    from cytoseg.backends import BackendError
    from cytoseg.backends.cellpose import CellposeBackend

    result, _ = cellpose_model
    f = held_out_fields()[0]
    strict = CellposeBackend(
        artifacts=None,
        device="cpu",
        settings={"model_file": str(result.model_file), "cellprob_threshold": 6.0, "niter": 50},
    )
    loose = CellposeBackend(artifacts=result.model_file.parent, settings={}, device="cpu")
    area_strict = sum(i.area for i in strict.predict(f.image).instances)
    area_loose = sum(i.area for i in loose.predict(f.image).instances)
    assert area_strict < area_loose
    with pytest.raises(BackendError):
        CellposeBackend(artifacts=result.model_file.parent, settings={"channels": [0, 0]}, device="cpu")


def test_fine_tune_from_model_file(cellpose_model: Any, tmp_path: Path) -> None:
    result, _ = cellpose_model
    fields = [field(s) for s in (0, 1)]
    cfg = CellposeTrainConfig.tiny()
    cfg.n_epochs, cfg.bn_recalibrate_batches = 1, 0
    tuned = cellpose_train(
        images=[f.image for f in fields],
        instance_labels=[f.label_map() for f in fields],
        workdir=tmp_path,
        config=cfg,
        device="cpu",
        initial_model=result.model_file,
    )
    assert tuned.model_file.is_file()
    assert tuned.diam_mean == pytest.approx(result.diam_mean)  # kept from the initial model
    with pytest.raises(ValueError, match="channels"):
        cellpose_train(
            images=[f.image for f in fields],
            instance_labels=[f.label_map() for f in fields],
            workdir=tmp_path / "x",
            config=CellposeTrainConfig(channels=(0, 0)),
            device="cpu",
            initial_model=result.model_file,
        )
    with pytest.raises(FileNotFoundError):
        cellpose_train(
            images=[f.image for f in fields],
            instance_labels=[f.label_map() for f in fields],
            workdir=tmp_path / "y",
            config=cfg,
            device="cpu",
            initial_model=tmp_path / "missing.pth",
        )


def test_cancellation_raises(tmp_path: Path) -> None:
    fields = [field(s) for s in (0, 1)]
    batches: list[dict] = []

    with pytest.raises(TrainingCancelled):
        cellpose_train(
            images=[f.image for f in fields],
            instance_labels=[f.label_map() for f in fields],
            workdir=tmp_path,
            config=CellposeTrainConfig.tiny(),
            device="cpu",
            progress=lambda info: batches.append(info) if info["phase"] == "train" else None,
            should_cancel=lambda: len(batches) >= 1,
        )
    assert len(batches) == 1
    assert not (tmp_path / "cellpose.pth").exists()
