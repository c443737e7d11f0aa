"""Trainer of paper B's refinement network (stage 2 on a frozen stage 1), Django-free.

Inputs are RGB images, the first-stage foreground probability of each (e.g.
``1 - P(background)`` from ``NnUNetBackend.predict_probabilities``) and the true
foreground. Loss: binary cross-entropy; optimiser Adam, LR 1e-4; early stopping on
the validation loss (training loss without validation images). Paper B then
fine-tunes both stages together; with nnU-Net as stage 1 that joint step is not
done here (the first stage stays frozen).

The result is a ``state_dict`` file (``refinement.pt``) that
``cytoseg.backends.refinement`` loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cytoseg.backends.refinement import WEIGHTS_FILE, RefinementNet, refinement_input
from cytoseg.trainers import CancelFn, ProgressFn, Trainer, TrainingCancelled, TrainOutcome, TrainRequest
from cytoseg.trainers.configs import RefinementTrainConfig

__all__ = [
    "RefinementTrainConfig",
    "RefinementTrainResult",
    "TrainingCancelled",
    "parameter_count",
    "refinement_train",
]


@dataclass
class RefinementTrainResult:
    """Weights file, losses per epoch and the epoch whose weights were kept."""

    weights_file: Path
    train_losses: list[float]
    val_losses: list[float]
    best_epoch: int
    best_loss: float
    stopped_early: bool
    parameters: int
    seconds: float
    config: dict[str, Any]


def parameter_count(net: nn.Module) -> int:
    """Number of trainable weights (biases included)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def _crop_batch(
    rng: np.random.Generator,
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    batch_size: int,
    patch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    ph = min(patch, min(x.shape[1] for x in inputs))
    pw = min(patch, min(x.shape[2] for x in inputs))
    for _ in range(batch_size):
        i = int(rng.integers(len(inputs)))
        x, y = inputs[i], targets[i]
        r = int(rng.integers(x.shape[1] - ph + 1))
        c = int(rng.integers(x.shape[2] - pw + 1))
        xc, yc = x[:, r : r + ph, c : c + pw], y[r : r + ph, c : c + pw]
        k = int(rng.integers(4)) if ph == pw else 2 * int(rng.integers(2))
        xc, yc = np.rot90(xc, k, axes=(1, 2)), np.rot90(yc, k)
        if rng.random() < 0.5:
            xc, yc = xc[:, :, ::-1], yc[:, ::-1]
        xs.append(np.ascontiguousarray(xc))
        ys.append(np.ascontiguousarray(yc))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)[:, None])


def _full_loss(
    net: RefinementNet,
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    device: torch.device,
) -> float:
    """Mean BCE over all pixels of whole images (deterministic validation)."""
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in zip(inputs, targets, strict=True):
            xt = torch.from_numpy(x)[None].to(device)
            yt = torch.from_numpy(y)[None, None].to(device)
            total += float(loss_fn(net(xt), yt))
            count += y.size
    return total / max(count, 1)


def refinement_train(
    *,
    images: Sequence[np.ndarray],
    probabilities: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray] = (),
    val_probabilities: Sequence[np.ndarray] = (),
    val_targets: Sequence[np.ndarray] = (),
    workdir: Path,
    config: RefinementTrainConfig | None = None,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> RefinementTrainResult:
    """Train the refinement net; write ``workdir/refinement.pt`` (best weights).

    ``images`` (H, W, 3) uint8, ``probabilities`` (H, W) first-stage foreground
    probabilities in 0..1, ``targets`` (H, W) bool/0-1 true foreground.
    ``progress`` gets ``{"phase": "epoch", "epoch", "epochs", "train_loss",
    "val_loss", "best_epoch"}``; ``should_cancel`` is polled before every batch.
    """
    cfg = config or RefinementTrainConfig()
    if not (len(images) == len(probabilities) == len(targets)) or not images:
        raise ValueError("need as many images, probabilities and targets, at least one")
    if not (len(val_images) == len(val_probabilities) == len(val_targets)):
        raise ValueError("need as many validation images, probabilities and targets")
    t_start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    def prep(
        ims: Sequence[np.ndarray], probs: Sequence[np.ndarray], tgts: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        xs = [refinement_input(im, p) for im, p in zip(ims, probs, strict=True)]
        ys = [np.asarray(t).astype(np.float32) for t in tgts]
        return xs, ys

    train_x, train_y = prep(images, probabilities, targets)
    val_x, val_y = prep(val_images, val_probabilities, val_targets)

    net = RefinementNet().to(torch_device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    train_losses: list[float] = []
    val_losses: list[float] = []
    best_loss, best_epoch, best_state = float("inf"), -1, None
    stopped_early = False
    for epoch in range(cfg.max_epochs):
        net.train()
        running = 0.0
        for _ in range(cfg.iterations_per_epoch):
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(f"refinement training cancelled in epoch {epoch}")
            x, y = _crop_batch(rng, train_x, train_y, cfg.batch_size, cfg.patch_size)
            loss = loss_fn(net(x.to(torch_device)), y.to(torch_device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += float(loss.item())
        train_losses.append(running / max(cfg.iterations_per_epoch, 1))
        monitored = _full_loss(net, val_x, val_y, torch_device) if val_x else train_losses[-1]
        val_losses.append(monitored if val_x else float("nan"))
        if monitored < best_loss - cfg.min_delta:
            best_loss, best_epoch = monitored, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if progress is not None:
            progress(
                {
                    "phase": "epoch",
                    "epoch": epoch,
                    "epochs": cfg.max_epochs,
                    "train_loss": train_losses[-1],
                    "val_loss": val_losses[-1],
                    "best_epoch": best_epoch,
                }
            )
        if epoch - best_epoch >= cfg.patience:
            stopped_early = True
            break

    assert best_state is not None
    weights_file = workdir / WEIGHTS_FILE
    torch.save(best_state, weights_file)
    (workdir / "refinement.json").write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "best_epoch": best_epoch,
                "best_loss": best_loss,
                "train_losses": train_losses,
                # NaN (no validation set) is not JSON
                "val_losses": [None if np.isnan(v) else v for v in val_losses],
            },
            indent=1,
        )
    )
    return RefinementTrainResult(
        weights_file=weights_file,
        train_losses=train_losses,
        val_losses=val_losses,
        best_epoch=best_epoch,
        best_loss=best_loss,
        stopped_early=stopped_early,
        parameters=parameter_count(net),
        seconds=time.perf_counter() - t_start,
        config=cfg.to_dict(),
    )


class RefinementTrainer(Trainer):
    """Paper B's refinement net on top of a frozen first stage, written to ``request.target``.

    Options: ``first_stage`` (required), a function from an RGB image to its first-stage
    foreground probability (H, W) in 0..1; ``base_folder``, the first stage's model folder,
    copied to ``<target>/base`` so the refined model carries its base.
    """

    name = "refinement"
    config_class = RefinementTrainConfig

    def train(self, request: TrainRequest) -> TrainOutcome:
        """Compute the first-stage probabilities, train, keep the best weights."""
        first_stage = request.options.get("first_stage")
        if not callable(first_stage):
            raise ValueError("the refinement trainer needs options['first_stage'] (image -> probability)")

        def probabilities(cases: Sequence[Any]) -> list[np.ndarray]:
            out = []
            for case in cases:
                if request.should_cancel():
                    raise TrainingCancelled("cancelled while computing first-stage probabilities")
                out.append(first_stage(case.image))
            return out

        request.progress({"phase": "prepare", "step": "first_stage"})
        result = refinement_train(
            images=[c.image for c in request.train],
            probabilities=probabilities(request.train),
            targets=[c.semantic > 0 for c in request.train],
            val_images=[c.image for c in request.validation],
            val_probabilities=probabilities(request.validation),
            val_targets=[c.semantic > 0 for c in request.validation],
            workdir=Path(request.target),
            config=request.config,
            device=request.device,
            progress=request.progress,
            should_cancel=request.should_cancel,
        )
        base = request.options.get("base_folder")
        if base is not None:
            shutil.copytree(Path(base), Path(request.target) / "base")
        return TrainOutcome(
            summary=f"best epoch {result.best_epoch}, {result.parameters} weights",
            details={"best_epoch": result.best_epoch},
        )
