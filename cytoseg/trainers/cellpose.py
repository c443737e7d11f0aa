"""Cellpose 3 instance trainer (paper A, stage 2), Django-free.

Trains a Cellpose 3 ``CPnet`` (residual U-Net with a style vector) on RGB images
and instance label maps: the targets are Cellpose's flow fields (gradients of a
diffusion from each cell's centre) plus a cell probability map, the loss
Cellpose's (MSE on 5x flows / 2 + BCE on the probability).

The loop is Cellpose 3.1's ``train.train_seg`` (same warm-up/step-down learning
rate schedule, AdamW or SGD, ``random_rotate_and_resize`` augmentation, per-image
rescaling to ``diam_mean``), written out here so that it can report progress per
epoch and stop between batches when cancelled, which ``train_seg`` cannot. It uses
Cellpose's own helpers (``dynamics.labels_to_flows``,
``transforms.random_rotate_and_resize``, ``train._loss_fn_seg``).

Channels: ``channels=None`` feeds the three RGB channels to a 3-channel network
(colour separates purple thyroid cells from pink erythrocytes on Diff-Quik);
``channels=(c1, c2)`` uses Cellpose's two-channel convention (0 gray, 1 R, 2 G,
3 B), needed to fine-tune Cellpose's published 2-channel models. The model file is
a plain ``state_dict`` (``CPnet.save_model``) and a ``cellpose.json`` beside it
records channels, nchan and diameters for the inference backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cellpose import dynamics, models, transforms, utils
from cellpose.train import _loss_fn_seg

from cytoseg.stain import augmented_copies
from cytoseg.trainers import CancelFn, ProgressFn, Trainer, TrainingCancelled, TrainOutcome, TrainRequest
from cytoseg.trainers.configs import CellposeTrainConfig

__all__ = [
    "CellposeTrainConfig",
    "CellposeTrainResult",
    "TrainingCancelled",
    "cellpose_input",
    "cellpose_model_nchan",
    "cellpose_train",
]

MODEL_FILE = "cellpose.pth"
META_FILE = "cellpose.json"
# key of the first BatchNorm of CPnet: its size is the number of input channels
_FIRST_NORM_KEY = "downsample.down.res_down_0.conv.conv_0.0.weight"


@dataclass
class CellposeTrainResult:
    """What ``cellpose_train`` produced.

    ``model_file`` is loadable with ``CellposeModel(pretrained_model=model_file,
    nchan=nchan)``; ``meta_file`` (``cellpose.json``) holds nchan, channels,
    diam_mean and diam_labels. ``val_losses`` is NaN for epochs without validation.
    """

    model_file: Path
    meta_file: Path
    train_losses: list[float]
    val_losses: list[float]
    curves: list[dict[str, Any]]
    nchan: int
    channels: tuple[int, int] | None
    diam_mean: float
    diam_labels: float
    seconds: float
    config: dict[str, Any]


def cellpose_model_nchan(model_file: Path) -> int:
    """Number of input channels of a Cellpose 3 model file (from its weights)."""
    state = torch.load(Path(model_file), map_location="cpu", weights_only=True)
    if _FIRST_NORM_KEY not in state:
        raise ValueError(f"{model_file} is not a Cellpose 3 CPnet state_dict")
    return int(state[_FIRST_NORM_KEY].shape[0])


def cellpose_input(image: np.ndarray, channels: Sequence[int] | None) -> np.ndarray:
    """(H, W, C) float32 network input of an RGB image, normalised as CellposeModel.eval does.

    Percentile (1, 99) normalisation per channel after Cellpose's channel selection;
    ``channels=None`` keeps R, G, B.
    """
    img = np.asarray(image)
    if channels is None:
        x = img.astype(np.float32)
    else:
        x = transforms.convert_image(img, list(channels), channel_axis=2, nchan=2)
    return transforms.normalize_img(x, normalize=True, axis=-1)


def cellpose_train(
    *,
    images: Sequence[np.ndarray],
    instance_labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray] = (),
    val_instance_labels: Sequence[np.ndarray] = (),
    workdir: Path,
    config: CellposeTrainConfig | None = None,
    device: str = "cpu",
    initial_model: Path | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> CellposeTrainResult:
    """Train a Cellpose 3 model from scratch or fine-tune ``initial_model``.

    ``images`` are (H, W, 3) uint8 RGB, ``instance_labels`` (H, W) int maps (0
    background, k > 0 one cell; erythrocytes are included or not as the caller
    decides). Writes ``workdir/cellpose.pth`` and ``workdir/cellpose.json``.
    ``progress`` receives ``{"phase": "prepare", "step": ...}``, then per batch
    ``{"phase": "train", "epoch", "epochs", "iteration", "iterations", "loss"}``
    and per epoch ``{"phase": "epoch", "epoch", "epochs", "train_loss",
    "val_loss", "lr", "seconds"}``. ``should_cancel`` is polled before every batch;
    True raises :class:`TrainingCancelled`.
    """
    cfg = config or CellposeTrainConfig()
    if len(images) != len(instance_labels) or len(val_images) != len(val_instance_labels):
        raise ValueError("images and labels must have the same length")
    if not images:
        raise ValueError("no training images")
    t_start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device)
    # before the network is built: its initial weights come from torch's RNG
    torch.manual_seed(cfg.seed)

    def report(info: dict[str, Any]) -> None:
        if progress is not None:
            progress(info)

    def cancel_check(epoch: int) -> None:
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled(f"Cellpose training cancelled in epoch {epoch}")

    nchan = 3 if cfg.channels is None else 2
    if initial_model is not None:
        initial_model = Path(initial_model)
        if not initial_model.is_file():
            # CellposeModel would silently fall back to downloading cyto3
            raise FileNotFoundError(f"initial Cellpose model {initial_model} not found")
        file_nchan = cellpose_model_nchan(initial_model)
        if file_nchan != nchan:
            raise ValueError(f"{initial_model} takes {file_nchan} channels but channels={cfg.channels} gives {nchan}")

    # Copies add variety, not steps: an epoch stays as many crops as there are real images.
    epoch_images = cfg.nimg_per_epoch or len(images)
    if cfg.stain.copies > 0:
        report({"phase": "prepare", "step": "stain_augment"})
        copies = augmented_copies(images, cfg.stain)
        instance_labels = [*instance_labels, *(lab for lab in instance_labels for _ in range(cfg.stain.copies))]
        images = [*images, *copies]
    report({"phase": "prepare", "step": "flows"})
    train_x = [cellpose_input(im, cfg.channels).transpose(2, 0, 1) for im in images]
    val_x = [cellpose_input(im, cfg.channels).transpose(2, 0, 1) for im in val_images]
    # labels_to_flows -> (4, H, W): labels, cell probability, flow y, flow x
    train_flows = dynamics.labels_to_flows(
        [np.asarray(lab).astype(np.int32) for lab in instance_labels], device=torch_device
    )
    val_flows = (
        dynamics.labels_to_flows(
            [np.asarray(lab).astype(np.int32) for lab in val_instance_labels],
            device=torch_device,
        )
        if val_images
        else []
    )
    cancel_check(0)

    diam_train, n_masks = _diameters([f[0] for f in train_flows])
    keep = np.nonzero(n_masks >= max(cfg.min_train_masks, 1))[0]
    if keep.size == 0:
        raise ValueError("no training image has enough masks")
    train_x = [train_x[i] for i in keep]
    train_flows = [train_flows[i] for i in keep]
    diam_train = diam_train[keep]
    diam_val, _ = _diameters([f[0] for f in val_flows]) if val_flows else (np.zeros(0), None)

    if initial_model is not None:
        model = models.CellposeModel(
            pretrained_model=str(initial_model), device=torch_device, nchan=nchan, mkldnn=False
        )
    else:
        diam_mean = float(cfg.diam_mean or cfg.network_scale * diam_train.mean())
        model = models.CellposeModel(
            pretrained_model=False,
            device=torch_device,
            nchan=nchan,
            diam_mean=diam_mean,
            mkldnn=False,
        )
    net = model.net
    diam_mean = float(net.diam_mean.item())
    net.diam_labels.data = torch.tensor([float(diam_train.mean())], device=torch_device)

    scale_range = cfg.scale_range if cfg.scale_range is not None else (0.5 if cfg.rescale else 1.0)
    lr_schedule = _lr_schedule(cfg.learning_rate, cfg.n_epochs, cfg.warmup_epochs)
    if cfg.sgd:
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(),
            lr=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
        )
    else:
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    nimg = len(train_x)
    nimg_per_epoch = epoch_images
    iterations = int(np.ceil(nimg_per_epoch / cfg.batch_size))
    train_losses: list[float] = []
    val_losses: list[float] = []
    curves: list[dict[str, Any]] = []
    rng = np.random.default_rng(cfg.seed)

    for epoch in range(cfg.n_epochs):
        t_epoch = time.perf_counter()
        # random_rotate_and_resize draws from numpy's global RNG (as in train_seg)
        np.random.seed(cfg.seed + epoch)
        if nimg_per_epoch != nimg:
            order = rng.choice(nimg, size=nimg_per_epoch)
        else:
            order = rng.permutation(nimg)
        for group in optimizer.param_groups:
            group["lr"] = float(lr_schedule[epoch])
        net.train()
        epoch_loss = 0.0
        for it, k in enumerate(range(0, nimg_per_epoch, cfg.batch_size)):
            cancel_check(epoch)
            inds = order[k : k + cfg.batch_size]
            loss_value, n = _batch_loss(
                net,
                [train_x[i] for i in inds],
                [train_flows[i][1:] for i in inds],
                diam_train[inds],
                diam_mean,
                cfg,
                scale_range,
                torch_device,
                train=True,
                optimizer=optimizer,
            )
            epoch_loss += loss_value * n
            report(
                {
                    "phase": "train",
                    "epoch": epoch,
                    "epochs": cfg.n_epochs,
                    "iteration": it + 1,
                    "iterations": iterations,
                    "loss": loss_value,
                }
            )
        train_loss = epoch_loss / nimg_per_epoch
        train_losses.append(train_loss)

        last = epoch == cfg.n_epochs - 1
        validate = bool(val_x) and (last or (epoch + 1) % max(1, cfg.val_every) == 0)
        if (last or validate) and cfg.bn_recalibrate_batches > 0:
            # In eval mode BatchNorm uses its running statistics, which lag far behind the
            # weights early on: validating without this gave losses like 4.9e6 for a network
            # that, recalibrated as it is before saving, predicts well.
            report({"phase": "train", "step": "bn_recalibrate", "epoch": epoch, "epochs": cfg.n_epochs})
            _bn_recalibrate(net, train_x, train_flows, diam_train, diam_mean, cfg, scale_range, torch_device)
        val_loss = float("nan")
        if validate:
            val_loss = _val_loss(net, val_x, val_flows, diam_val, diam_mean, cfg, scale_range, torch_device)
        val_losses.append(val_loss)
        point = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": float(lr_schedule[epoch]),
            "seconds": time.perf_counter() - t_epoch,
        }
        if validate:  # epochs without validation carry no val_loss (not NaN)
            point["val_loss"] = val_loss
        curves.append(point)
        report({"phase": "epoch", "epochs": cfg.n_epochs, **point})
        if not last:
            cancel_check(epoch + 1)

    model_file = workdir / MODEL_FILE
    net.save_model(str(model_file))
    meta = {
        "nchan": nchan,
        "channels": list(cfg.channels) if cfg.channels is not None else None,
        "diam_mean": diam_mean,
        "diam_labels": float(diam_train.mean()),
        "config": cfg.to_dict(),
        "initial_model": str(initial_model) if initial_model is not None else None,
    }
    meta_file = workdir / META_FILE
    meta_file.write_text(json.dumps(meta, indent=1))
    return CellposeTrainResult(
        model_file=model_file,
        meta_file=meta_file,
        train_losses=train_losses,
        val_losses=val_losses,
        curves=curves,
        nchan=nchan,
        channels=cfg.channels,
        diam_mean=diam_mean,
        diam_labels=float(diam_train.mean()),
        seconds=time.perf_counter() - t_start,
        config=cfg.to_dict(),
    )


def _diameters(label_maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean cell diameter (at least 5 px, as Cellpose) and mask count per label map."""
    diams = np.zeros(len(label_maps))
    counts = np.zeros(len(label_maps), dtype=int)
    for i, lab in enumerate(label_maps):
        diams[i], per_mask = utils.diameters(np.asarray(lab).astype(np.int32))
        counts[i] = len(per_mask)
    diams[diams < 5] = 5.0
    return diams, counts


def _lr_schedule(lr: float, n_epochs: int, warmup: int = 10) -> np.ndarray:
    """Cellpose 3.1 train_seg's schedule: linear warm-up from 0, then halvings at the end.

    ``warmup=10`` is Cellpose's; runs shorter than the warm-up ramp over all epochs
    starting above 0 (train_seg would spend a short run entirely warming up).
    """
    if n_epochs <= warmup:
        return np.linspace(lr / n_epochs, lr, n_epochs)
    sched = np.linspace(0, lr, warmup) if warmup > 0 else np.zeros(0)
    sched = np.append(sched, lr * np.ones(max(0, n_epochs - warmup)))
    if n_epochs > 300:
        sched = sched[:-100]
        for _ in range(10):
            sched = np.append(sched, sched[-1] / 2 * np.ones(10))
    elif n_epochs > 100:
        sched = sched[:-50]
        for _ in range(10):
            sched = np.append(sched, sched[-1] / 2 * np.ones(5))
    return sched[:n_epochs]


def _batch_loss(
    net: torch.nn.Module,
    imgs: list[np.ndarray],
    lbls: list[np.ndarray],
    diams: np.ndarray,
    diam_mean: float,
    cfg: CellposeTrainConfig,
    scale_range: float,
    device: torch.device,
    *,
    train: bool,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[float, int]:
    rsc = diams / diam_mean if cfg.rescale else np.ones(len(diams), "float32")
    imgi, lbl = transforms.random_rotate_and_resize(
        imgs, Y=lbls, rescale=rsc, scale_range=scale_range, xy=(cfg.bsize, cfg.bsize)
    )[:2]
    x = torch.from_numpy(imgi).to(device)
    if train:
        assert optimizer is not None
        y = net(x)[0]
        loss = _loss_fn_seg(lbl, y, device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        with torch.no_grad():
            y = net(x)[0]
            loss = _loss_fn_seg(lbl, y, device)
    return float(loss.item()), len(imgi)


def _bn_recalibrate(
    net: torch.nn.Module,
    train_x: list[np.ndarray],
    train_flows: list[np.ndarray],
    diams: np.ndarray,
    diam_mean: float,
    cfg: CellposeTrainConfig,
    scale_range: float,
    device: torch.device,
) -> None:
    """Recompute BatchNorm running statistics as plain averages over training crops."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    rng = np.random.default_rng(cfg.seed + 7919)
    net.train()
    try:
        with torch.no_grad():
            for _ in range(cfg.bn_recalibrate_batches):
                inds = rng.choice(len(train_x), size=min(cfg.batch_size, len(train_x)), replace=False)
                rsc = diams[inds] / diam_mean if cfg.rescale else np.ones(len(inds), "float32")
                imgi = transforms.random_rotate_and_resize(
                    [train_x[i] for i in inds],
                    Y=[train_flows[i][1:] for i in inds],
                    rescale=rsc,
                    scale_range=scale_range,
                    xy=(cfg.bsize, cfg.bsize),
                )[0]
                net(torch.from_numpy(imgi).to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    net.eval()


def _val_loss(
    net: torch.nn.Module,
    val_x: list[np.ndarray],
    val_flows: list[np.ndarray],
    diams: np.ndarray,
    diam_mean: float,
    cfg: CellposeTrainConfig,
    scale_range: float,
    device: torch.device,
) -> float:
    """Loss on the validation images, with a fixed augmentation seed (as train_seg)."""
    state = np.random.get_state()
    np.random.seed(42)
    net.eval()
    total, count = 0.0, 0
    try:
        for k in range(0, len(val_x), cfg.batch_size):
            sl = slice(k, k + cfg.batch_size)
            value, n = _batch_loss(
                net,
                val_x[sl],
                [f[1:] for f in val_flows[sl]],
                diams[sl],
                diam_mean,
                cfg,
                scale_range,
                device,
                train=False,
            )
            total += value * n
            count += n
    finally:
        np.random.set_state(state)
    return total / max(count, 1)


class CellposeTrainer(Trainer):
    """Cellpose 3 on the cases' instance maps, written to ``request.target``.

    Option ``erythrocytes`` (default true): erythrocytes are instances too; false trains on
    cells only. Cases without any instance are left out.
    """

    name = "cellpose"
    config_class = CellposeTrainConfig

    def train(self, request: TrainRequest) -> TrainOutcome:
        """Train (or fine-tune ``options["initial_model"]``) into the target folder."""
        with_ery = bool(request.options.get("erythrocytes", True))

        def labelled(cases: Sequence[Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
            pairs = [(c.image, c.instances if with_ery else c.cell_instances) for c in cases]
            kept = [(image, labels) for image, labels in pairs if labels.max() > 0]
            return [p[0] for p in kept], [p[1] for p in kept]

        images, labels = labelled(request.train)
        val_images, val_labels = labelled(request.validation)
        result = cellpose_train(
            images=images,
            instance_labels=labels,
            val_images=val_images,
            val_instance_labels=val_labels,
            workdir=Path(request.target),
            config=request.config,
            device=request.device,
            initial_model=request.options.get("initial_model"),
            progress=request.progress,
            should_cancel=request.should_cancel,
        )
        return TrainOutcome(
            summary=f"diameter {result.diam_labels:.1f} px", details={"diam_labels": float(result.diam_labels)}
        )
