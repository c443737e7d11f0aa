"""Paper B's refinement net: size, training on a toy case, loading, the backend wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from cytoseg.backends.base import Instance
from cytoseg.backends.refinement import (
    RefinementNet,
    instances_crop,
    refinement_input,
    refinement_predict,
)
from cytoseg.tests.tiny_models import NnUNetTrained, field, held_out_fields
from cytoseg.trainers import TrainingCancelled
from cytoseg.trainers.refinement import (
    RefinementTrainConfig,
    parameter_count,
    refinement_train,
)

pytestmark = pytest.mark.ml


def _toy(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, blurred noisy first-stage probability, true foreground) of a 96x96 field."""
    from cytoseg.synthetic import generate_field

    f = generate_field(seed=seed, width=96, height=96, n_cells=8, n_erythrocytes=3)
    truth = f.semantic_map() > 0
    rng = np.random.default_rng(seed)
    prob = ndi.gaussian_filter(truth.astype(np.float32), 3)
    prob = np.clip(0.15 + 0.7 * prob + rng.normal(0, 0.1, prob.shape), 0.01, 0.99)
    return f.image, prob.astype(np.float32), truth


def _bce(prob: np.ndarray, truth: np.ndarray) -> float:
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())


def test_network_has_paper_b_size() -> None:
    net = RefinementNet()
    # 4->64 3x3, 64->64 3x3 twice, 64->1 1x1, with biases
    expected = (4 * 9 * 64 + 64) + 2 * (64 * 9 * 64 + 64) + (64 + 1)
    assert parameter_count(net) == expected == 76_289  # paper B: ~77k
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 + [(1, 1)]
    assert all(c.stride == (1, 1) for c in convs)  # no down-sampling
    x = torch.zeros(1, 4, 20, 28)
    assert net(x).shape == (1, 1, 20, 28)


def test_input_layout() -> None:
    image = np.full((5, 7, 3), 255, np.uint8)
    x = refinement_input(image, np.full((5, 7), 0.25, np.float32))
    assert x.shape == (4, 5, 7) and x.dtype == np.float32
    assert np.allclose(x[:3], 1.0) and np.allclose(x[3], 0.25)
    with pytest.raises(ValueError):
        refinement_input(image, np.zeros((5, 6), np.float32))


def test_training_reduces_bce(tmp_path: Path) -> None:
    train = [_toy(s) for s in range(6)]
    val = [_toy(100 + s) for s in range(2)]
    epochs: list[dict] = []
    result = refinement_train(
        images=[t[0] for t in train],
        probabilities=[t[1] for t in train],
        targets=[t[2] for t in train],
        val_images=[v[0] for v in val],
        val_probabilities=[v[1] for v in val],
        val_targets=[v[2] for v in val],
        workdir=tmp_path,
        config=RefinementTrainConfig.tiny(),
        device="cpu",
        progress=epochs.append,
    )
    assert result.parameters == 76_289
    assert len(epochs) == len(result.train_losses) == len(result.val_losses)
    assert result.best_loss == pytest.approx(min(result.val_losses))
    meta = json.loads((tmp_path / "refinement.json").read_text())
    assert meta["best_epoch"] == result.best_epoch
    # a state_dict that loads with weights_only=True
    net = RefinementNet()
    net.load_state_dict(torch.load(result.weights_file, weights_only=True))
    untrained = RefinementNet()
    image, prob, truth = _toy(999)
    refined = _bce(refinement_predict(net, image, prob), truth)
    assert refined < _bce(prob, truth), "refinement does not beat its input"
    assert refined < _bce(refinement_predict(untrained, image, prob), truth)


def test_early_stopping(tmp_path: Path) -> None:
    image, prob, truth = _toy(3)
    cfg = RefinementTrainConfig(
        max_epochs=50,
        iterations_per_epoch=1,
        batch_size=1,
        patch_size=16,
        patience=1,
        learning_rate=1e-9,  # no progress: stops after `patience` epochs without gain
    )
    result = refinement_train(
        images=[image],
        probabilities=[prob],
        targets=[truth],
        val_images=[image],
        val_probabilities=[prob],
        val_targets=[truth],
        workdir=tmp_path,
        config=cfg,
    )
    assert result.stopped_early and len(result.train_losses) < 50


def test_cancellation_raises(tmp_path: Path) -> None:
    image, prob, truth = _toy(1)
    with pytest.raises(TrainingCancelled):
        refinement_train(
            images=[image],
            probabilities=[prob],
            targets=[truth],
            workdir=tmp_path,
            config=RefinementTrainConfig.tiny(),
            should_cancel=lambda: True,
        )
    assert not (tmp_path / "refinement.pt").exists()


def test_instances_crop() -> None:
    mask = np.ones((4, 6), bool)
    inst = Instance(x0=2, y0=1, mask=mask, label=2, score=0.7)
    fg = np.zeros((8, 10), bool)
    fg[2:5, 4:10] = True  # keeps rows 2-4, cols 4-7 of the instance
    (out,) = instances_crop([inst], fg, min_area=1)
    assert (out.x0, out.y0, out.mask.shape, out.label, out.score) == (4, 2, (3, 4), 2, 0.7)
    assert out.mask.all()
    assert instances_crop([inst], fg, min_area=13) == []
    assert instances_crop([inst], np.zeros((8, 10), bool)) == []


def test_backend_wraps_nnunet(nnunet_model: NnUNetTrained, tmp_path: Path) -> None:
    from cytoseg.backends import BackendError
    from cytoseg.backends.nnunet import NnUNetBackend
    from cytoseg.backends.refinement import RefinementBackend

    nn_settings = {"use_mirroring": False}
    base = NnUNetBackend(artifacts=nnunet_model.model_folder, settings=nn_settings, device="cpu")
    fields = [field(s) for s in (0, 1)]
    probs = [1.0 - base.predict_probabilities(f.image)[0] for f in fields]
    result = refinement_train(
        images=[f.image for f in fields],
        probabilities=probs,
        targets=[f.semantic_map() > 0 for f in fields],
        workdir=tmp_path / "ref",
        config=RefinementTrainConfig(
            max_epochs=2, iterations_per_epoch=3, batch_size=2, patch_size=48, learning_rate=1e-3
        ),
    )
    backend = RefinementBackend(
        artifacts=tmp_path / "ref",
        device="cpu",
        settings={"base": "nnunet", "base_artifacts": str(nnunet_model.model_folder), "base_settings": nn_settings},
    )
    assert result.weights_file.parent == tmp_path / "ref"
    f = held_out_fields()[0]
    pred = backend.predict(f.image)
    assert pred.semantic is not None and pred.semantic.shape == f.image.shape[:2]
    assert set(np.unique(pred.semantic)) <= {0, 1, 2}
    assert {"base", "refinement"} <= set(pred.timings)
    for inst in pred.instances:  # every kept instance lies in the refined foreground
        window = pred.semantic[inst.y0 : inst.y0 + inst.mask.shape[0], inst.x0 : inst.x0 + inst.mask.shape[1]]
        assert (window[inst.mask] > 0).all()
    with pytest.raises(BackendError):
        RefinementBackend(artifacts=tmp_path / "ref", settings={}, device="cpu")
