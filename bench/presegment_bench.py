"""Pre-segmentation speed: paper A's two-stage pipeline (nnU-Net v2 + Cellpose 3) per stage and end to end.

One synthetic Diff-Quik field (default 1024x768 with 250 thyroid cells) is pre-segmented by the
``two_stage`` backend without test-time augmentation, in two configurations:

* ``paper``: the nnU-Net plan exactly as nnU-Net's planner derives it for the training images
  (for 1024x768: patch 768x1024, 8 stages, 32..512 features, 2 convs per stage), tile step 0.5
  with Gaussian weighting, and Cellpose's defaults (224 px tiles with 10 % overlap, flow
  quality check, 200 dynamics iterations);
* ``fast``: the ``fast`` training preset (``cytoseg.trainers.presets``): a smaller nnU-Net plan
  (``NnUNetPlansOverride``: 5 stages, 16..128 features, one conv per stage, the whole image as
  one patch, no overlap, no Gaussian), Cellpose in 160 px tiles (faster per pixel on a CPU than
  224) with fewer dynamics iterations run only where nnU-Net sees cells (``restrict_masks``).
  The ``--fast-cellpose-*`` options try the speed-ups ``bench/fast_accuracy.py`` rejected (a
  reduced scale, one tile, no flow quality check).

Stages timed in this process (torch threads = ``--threads``): nnU-Net, Cellpose network,
mask reconstruction (flow dynamics + instances), the two-stage filter, contours
(``instances_to_polygons``) and the database write (``proposals_store``); then the whole
``inference.presegment_image`` Celery task, sent to a real worker process (prefork, as in
production) on the configured broker and a test database of its own, timed from
``apply_async`` to the result (median of ``--repeats`` after one warm-up each). The paper
reports 60 s per image for nnU-Net v2 + Cellpose (hardware not stated).

Speed does not depend on the weights, so quickly trained models do for the networks; the
post-processing stages do depend on how many cells the models find, which is printed next to
the ground-truth count (and contours + database write of the ground-truth cells are timed too).

One script of ~800 lines: training the quick models, each stage's timing and the end-to-end run
through a real worker share its options and model cache, and a benchmark is read as one piece.

    # train quick models on synthetic data, then time both configurations (about 10-15 min on 2 CPU cores);
    # without --train or model paths it reuses the models of an earlier --train run of the same sizes
    .venv/bin/python bench/presegment_bench.py --train
    # models trained elsewhere
    .venv/bin/python bench/presegment_bench.py --nnunet-paper var/bench/presegment/models/nnunet_paper \\
        --nnunet-fast var/bench/presegment/models/nnunet_fast --cellpose var/bench/presegment/models/cellpose
    # smoke run
    .venv/bin/python bench/presegment_bench.py --train --width 256 --height 192 --cells 20 --repeats 1 \\
        --train-images 2 --train-iterations 2 --train-cellpose-epochs 2

Targets for the fast configuration: <= 10 s per image end to end on a 2-core CPU, <= 0.5 s on a GPU.
Everything it writes lies under ``var/bench/presegment/`` (its own ``PLATFORM_VAR_DIR``: test
database, broker folder, media), so it does not touch the development or CI databases.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import size_arg  # noqa: E402  (a sibling script, not a package)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))

from cytoseg.trainers.presets import FAST_CELLPOSE_SCALE, FAST_INFERENCE, FAST_PLAN  # noqa: E402  (Django-free)

BENCH_DIR = ROOT / "var" / "bench" / "presegment"
PAPER_SECONDS = 60.0  # paper A: nnU-Net v2 + Cellpose, seconds per image
PAPER_GFLOP = 360.0  # paper A's nnU-Net pass, as the brief quotes it
CONFIGS = ("paper", "fast")
STAGES = ("nnunet", "cellpose_net", "cellpose_masks", "filter", "contours", "db_write")
STAGE_TITLES = {
    "nnunet": "nnU-Net",
    "cellpose_net": "CP net",
    "cellpose_masks": "CP masks",
    "filter": "filter",
    "contours": "contours",
    "db_write": "DB write",
}


# ------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("benchmark image and runs")
    g.add_argument("--width", type=int, default=1024, help="image width (default 1024)")
    g.add_argument("--height", type=int, default=768, help="image height (default 768)")
    g.add_argument("--cells", type=int, default=250, help="thyroid cells in the image (default 250)")
    g.add_argument("--erythrocytes", type=int, default=None, help="erythrocytes (default: generator's, by area)")
    g.add_argument("--seed", type=int, default=4242, help="seed of the benchmark field")
    g.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (default 3)")
    g.add_argument("--configs", default="paper,fast", help="comma list of paper,fast (default both)")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    g.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)")
    g.add_argument("--no-task", action="store_true", help="skip the end-to-end run through a Celery worker")
    g.add_argument("--task-timeout", type=float, default=900.0, help="seconds to wait for one task")
    g.add_argument("--workdir", type=Path, default=BENCH_DIR, help=f"output folder (default {BENCH_DIR})")
    g = p.add_argument_group("models")
    g.add_argument("--train", action="store_true", help="train quick models on synthetic data first")
    g.add_argument("--nnunet-paper", type=Path, help="nnU-Net model folder with the planner's plan")
    g.add_argument("--nnunet-fast", type=Path, help="nnU-Net model folder with the fast plan")
    g.add_argument("--cellpose", type=Path, help="Cellpose model folder (cellpose.pth + cellpose.json) or file")
    g.add_argument("--train-images", type=int, default=3, help="--train: training fields (default 3)")
    g.add_argument(
        "--train-size",
        type=size_arg,
        default=None,
        help="--train: ROWSxCOLS of the training fields "
        "(default: the benchmark size; the paper plan is derived from it)",
    )
    g.add_argument(
        "--train-iterations", type=int, default=8, help="--train: iterations of the paper-plan nnU-Net (default 8)"
    )
    g.add_argument(
        "--train-fast-iterations",
        type=int,
        default=40,
        help="--train: iterations of the fast-plan nnU-Net (default 40)",
    )
    g.add_argument(
        "--train-cellpose-epochs", type=int, default=30, help="--train: Cellpose epochs of 8 crops (default 30)"
    )
    g = p.add_argument_group("fast configuration", "defaults: the fast training preset (cytoseg.trainers.presets)")
    fast_cp = FAST_INFERENCE["cellpose"]
    g.add_argument(
        "--fast-stages", type=int, default=FAST_PLAN["n_stages"], help=f"nnU-Net stages ({FAST_PLAN['n_stages']})"
    )
    g.add_argument(
        "--fast-features",
        type=int,
        default=FAST_PLAN["base_features"],
        help=f"nnU-Net features of the first stage ({FAST_PLAN['base_features']})",
    )
    g.add_argument(
        "--fast-max-features",
        type=int,
        default=FAST_PLAN["max_features"],
        help=f"nnU-Net feature cap ({FAST_PLAN['max_features']})",
    )
    g.add_argument(
        "--fast-convs",
        type=int,
        default=FAST_PLAN["n_conv_per_stage"],
        help=f"nnU-Net convs per stage ({FAST_PLAN['n_conv_per_stage']})",
    )
    g.add_argument(
        "--fast-patch",
        type=size_arg,
        default=None,
        help="nnU-Net patch ROWSxCOLS (default: the image size rounded up, i.e. one tile)",
    )
    g.add_argument(
        "--fast-tile-step",
        type=float,
        default=FAST_INFERENCE["nnunet"]["tile_step_size"],
        help="nnU-Net tile step (1.0: no overlap)",
    )
    g.add_argument(
        "--fast-cellpose-scale",
        type=float,
        default=FAST_CELLPOSE_SCALE,
        help=f"scale at which Cellpose's network sees the image ({FAST_CELLPOSE_SCALE}; 0.5 is 4x fewer "
        "pixels, as a Cellpose trained with network_scale=0.5 sees it)",
    )
    g.add_argument(
        "--fast-cellpose-bsize",
        type=int,
        default=fast_cp.get("bsize", 224),
        help=f"Cellpose tile size ({fast_cp.get('bsize', 224)}; 0: the scaled image in one tile)",
    )
    g.add_argument(
        "--fast-cellpose-batch",
        type=int,
        default=fast_cp.get("batch_size", 8),
        help=f"Cellpose tiles per batch ({fast_cp.get('batch_size', 8)})",
    )
    g.add_argument(
        "--fast-niter",
        type=int,
        default=fast_cp.get("niter", 200),
        help=f"Cellpose dynamics iterations ({fast_cp.get('niter', 200)})",
    )
    g.add_argument(
        "--fast-flow-threshold",
        type=float,
        default=fast_cp.get("flow_threshold", 0.4),
        help=f"Cellpose flow quality check threshold ({fast_cp.get('flow_threshold', 0.4)}; 0 skips it)",
    )
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown or not args.configs:
        p.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


# ------------------------------------------------------------------------- helpers


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def device_pick(name: str) -> str:
    if name != "auto":
        return name
    from cytoseg.device import device_default

    return device_default()


def round_up(value: float, multiple: int) -> int:
    return int(multiple * math.ceil(value / multiple))


def cellpose_file(path: Path) -> Path:
    """The ``cellpose.pth`` of a folder (or the file itself)."""
    path = Path(path)
    for candidate in (path, path / "cellpose.pth", path / "cellpose" / "cellpose.pth"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"no Cellpose model file in {path}")


def cellpose_diam_labels(model_file: Path) -> float:
    """Mean training-label diameter of a Cellpose model (what the backend rescales to by default)."""
    meta = model_file.with_name("cellpose.json")
    if meta.is_file():
        return float(json.loads(meta.read_text())["diam_labels"])
    import torch

    state = torch.load(model_file, map_location="cpu", weights_only=True)
    return float(state["diam_labels"].item())


def nnunet_folder(path: Path) -> Path:
    path = Path(path)
    for candidate in (path, path / "nnunet", path / "model"):
        if (candidate / "plans.json").is_file():
            return candidate
    raise SystemExit(f"no nnU-Net model folder (plans.json) in {path}")


# ------------------------------------------------------------------------- training


@dataclass
class Models:
    nnunet_paper: Path | None
    nnunet_fast: Path | None
    cellpose: Path  # the cellpose.pth file


def fast_patch(args: argparse.Namespace) -> tuple[int, int]:
    if args.fast_patch is not None:
        return tuple(args.fast_patch)  # type: ignore[return-value]
    stride = 2 ** (args.fast_stages - 1)
    return round_up(args.height, stride), round_up(args.width, stride)


def train_models(args: argparse.Namespace, device: str, out: Path) -> Models:
    """Quick models on synthetic fields: speed does not depend on how well they are trained."""
    from cytoseg.synthetic import generate_field
    from cytoseg.trainers.cellpose import cellpose_train
    from cytoseg.trainers.configs import CellposeTrainConfig, NnUNetPlansOverride, NnUNetTrainConfig
    from cytoseg.trainers.nnunet import nnunet_train

    rows, cols = args.train_size or (args.height, args.width)
    n_cells = max(1, round(args.cells * rows * cols / (args.width * args.height)))
    log(f"training fields: {args.train_images} + 1 validation, {cols}x{rows}, {n_cells} cells each")
    fields = [
        generate_field(seed=7000 + i, width=cols, height=rows, n_cells=n_cells) for i in range(args.train_images + 1)
    ]
    train, val = fields[:-1], fields[-1:]
    images, semantic = [f.image for f in train], [f.semantic_map() for f in train]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").unlink(missing_ok=True)
    for name in set(CONFIGS) - set(args.configs):  # a stale model of another size must not be reused
        shutil.rmtree(out / f"nnunet_{name}", ignore_errors=True)
    found: dict[str, Path] = {}
    plans = {
        # batch size is a training-only setting: the network of the plan is the planner's
        "paper": NnUNetPlansOverride(batch_size=1),
        "fast": NnUNetPlansOverride(
            patch_size=fast_patch(args),
            batch_size=2,
            n_stages=args.fast_stages,
            base_features=args.fast_features,
            max_features=args.fast_max_features,
            n_conv_per_stage=args.fast_convs,
        ),
    }
    for k, name in enumerate(args.configs):
        iterations = args.train_iterations if name == "paper" else args.train_fast_iterations
        cfg = NnUNetTrainConfig(
            num_epochs=1,
            num_iterations_per_epoch=iterations,
            num_val_iterations_per_epoch=1,
            initial_lr=1e-2,
            plans=plans[name],
            plot_progress=False,
            save_every=10**6,
            dataset_id=611 + k,
            dataset_name=f"PresegBench{name.capitalize()}",
        )
        log(f"training nnU-Net ({name} plan, {iterations} iterations)")
        started = time.perf_counter()
        result = nnunet_train(
            images=images,
            semantic_labels=semantic,
            val_images=[f.image for f in val],
            val_semantic_labels=[f.semantic_map() for f in val],
            workdir=out / f"nnunet_{name}_job",
            config=cfg,
            device=device,
        )
        target = out / f"nnunet_{name}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(result.model_folder, target)
        shutil.rmtree(out / f"nnunet_{name}_job", ignore_errors=True)
        found[name] = target
        log(f"  {time.perf_counter() - started:.0f} s, plan {result.plans_summary}")
    log(f"training Cellpose ({args.train_cellpose_epochs} epochs)")
    started = time.perf_counter()
    # small crops: more steps per second (the network is fully convolutional; inference is unaffected)
    cp_cfg = CellposeTrainConfig(
        n_epochs=args.train_cellpose_epochs,
        warmup_epochs=min(2, args.train_cellpose_epochs - 1),
        learning_rate=0.01,
        batch_size=4,
        bsize=min(128, rows - rows % 16, cols - cols % 16),
        nimg_per_epoch=8,
        val_every=max(1, args.train_cellpose_epochs),
        bn_recalibrate_batches=8,
    )
    cp = cellpose_train(
        images=images,
        instance_labels=[f.label_map() for f in train],
        val_images=[f.image for f in val],
        val_instance_labels=[f.label_map() for f in val],
        workdir=out / "cellpose",
        config=cp_cfg,
        device=device,
    )
    log(f"  {time.perf_counter() - started:.0f} s, diam_labels {cp.diam_labels:.1f} px")
    (out / "train.json").write_text(json.dumps(train_key(args)))
    return Models(found.get("paper"), found.get("fast"), cp.model_file)


def train_key(args: argparse.Namespace) -> dict[str, Any]:
    """What trained models must match to be reused: the sizes the plans derive from, the fast plan."""
    return {
        "size": [args.height, args.width],
        "train_size": list(args.train_size or (args.height, args.width)),
        "fast_plan": [
            args.fast_stages,
            args.fast_features,
            args.fast_max_features,
            args.fast_convs,
            list(fast_patch(args)),
        ],
    }


def models_find(args: argparse.Namespace, device: str) -> Models:
    out = args.workdir / "models"
    if args.train:
        return train_models(args, device, out)
    if not (args.nnunet_paper or args.nnunet_fast or args.cellpose):
        marker = out / "train.json"
        needed = [out / f"nnunet_{c}" for c in args.configs] + [out / "cellpose" / "cellpose.pth"]
        if marker.is_file() and json.loads(marker.read_text()) == train_key(args) and all(p.exists() for p in needed):
            log(f"reusing the models of an earlier --train run in {out}")
            return Models(
                out / "nnunet_paper" if "paper" in args.configs else None,
                out / "nnunet_fast" if "fast" in args.configs else None,
                out / "cellpose" / "cellpose.pth",
            )
        log("no trained models given, none cached for this size: training quick ones (as --train)")
        return train_models(args, device, out)
    paper, fast, cp = args.nnunet_paper, args.nnunet_fast, args.cellpose
    missing = [
        n
        for n, v in (("--nnunet-paper", paper), ("--nnunet-fast", fast))
        if v is None and n.removeprefix("--nnunet-") in args.configs
    ]
    if cp is None:
        missing.append("--cellpose")
    if missing or cp is None:
        raise SystemExit(f"missing {', '.join(missing)} (or use --train)")
    return Models(nnunet_folder(paper) if paper else None, nnunet_folder(fast) if fast else None, cellpose_file(cp))


# ------------------------------------------------------------------------- configurations


@dataclass
class Config:
    name: str
    bundle: Path  # two_stage artifacts: nnunet/ + cellpose/
    settings: dict[str, Any]
    describe: str
    timings: dict[str, list[float]] = field(default_factory=dict)
    task: list[dict[str, Any]] = field(default_factory=list)
    cells: list[int] = field(default_factory=list)
    flops: dict[str, Any] = field(default_factory=dict)


def config_settings(name: str, args: argparse.Namespace, diam_labels: float) -> tuple[dict[str, Any], str]:
    if name == "paper":
        return (
            {"nnunet": {"use_mirroring": False}},
            "planner's plan, tile step 0.5 + Gaussian, no mirroring; Cellpose defaults "
            "(224 px tiles, 10% overlap, flow check 0.4, niter 200/scale)",
        )
    scale = float(args.fast_cellpose_scale)
    bsize = args.fast_cellpose_bsize or round_up(max(args.height, args.width) * scale, 16)
    cellpose: dict[str, Any] = {
        "niter": args.fast_niter,
        "bsize": bsize,
        "batch_size": args.fast_cellpose_batch,
        "flow_threshold": args.fast_flow_threshold,
    }
    if scale != 1.0:
        cellpose["diameter"] = diam_labels / scale
    settings = {
        "nnunet": {"use_mirroring": False, "tile_step_size": args.fast_tile_step, "use_gaussian": False},
        "cellpose": cellpose,
        "restrict_masks": True,
    }
    describe = (
        f"nnU-Net {args.fast_stages} stages {args.fast_features}..{args.fast_max_features} features "
        f"x{args.fast_convs} conv, patch {fast_patch(args)}, tile step {args.fast_tile_step}, no Gaussian, "
        f"no mirroring; Cellpose at scale {scale} in {bsize} px tiles, niter {args.fast_niter}, "
        f"flow check {args.fast_flow_threshold or 'off'}, dynamics on nnU-Net foreground only"
    )
    return settings, describe


def bundle_make(target: Path, nnunet: Path, cellpose: Path) -> Path:
    """artifacts/{nnunet,cellpose} with the nnU-Net checkpoint made loadable with weights_only=True."""
    from cytoseg.backends.packages import nnunet_checkpoint_sanitize

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(nnunet, target / "nnunet", ignore=shutil.ignore_patterns("*.png", "*.txt", "checkpoint_best.pth"))
    (target / "cellpose").mkdir(parents=True)
    shutil.copy(cellpose, target / "cellpose" / "cellpose.pth")
    meta = cellpose.with_name("cellpose.json")
    if meta.is_file():
        shutil.copy(meta, target / "cellpose" / "cellpose.json")
    for checkpoint in (target / "nnunet").glob("fold_*/checkpoint_final.pth"):
        nnunet_checkpoint_sanitize(checkpoint)
    return target


def bundle_zip(folder: Path) -> Path:
    """``folder`` as a zip archive beside it: models enter the platform only as uploads."""
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))


# ------------------------------------------------------------------------- FLOPs


def conv_macs(net: Any, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the conv, transposed-conv and linear layers for one input of ``shape``.

    Counted with forward hooks on a copy of the network on torch's ``meta`` device (shapes only,
    no arithmetic); falls back to a real forward pass on the CPU.
    """
    import torch
    from torch import nn

    total = 0

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            x = inputs[0]
            total += x.numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.modules.conv._ConvNd):
            total += out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    def run(device: str) -> int:
        nonlocal total
        total = 0
        clone = copy.deepcopy(net).to(device).eval()
        if hasattr(clone, "mkldnn"):
            clone.mkldnn = False
        handles = [
            m.register_forward_hook(hook)
            for m in clone.modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        ]
        try:
            with torch.inference_mode():
                clone(torch.zeros(shape, device=device))
        finally:
            for h in handles:
                h.remove()
        return total

    try:
        return run("meta")
    except Exception:
        return run("cpu")


def nnunet_flops(backend: Any, height: int, width: int) -> dict[str, Any]:
    """Plan summary and conv GFLOP of the nnU-Net of a two_stage backend for one image."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    predictor = backend.nnunet.predictor
    plans = json.loads((backend.nnunet.model_folder / "plans.json").read_text())
    conf = plans["configurations"]["2d"]
    arch = conf["architecture"]["arch_kwargs"]
    patch = tuple(int(v) for v in conf["patch_size"])
    step = float(predictor.tile_step_size)
    padded = tuple(max(a, b) for a, b in zip((height, width), patch, strict=True))
    steps = compute_steps_for_sliding_window(padded, patch, step)
    tiles = int(math.prod(len(s) for s in steps))
    mirror = 1
    axes = getattr(predictor, "allowed_mirroring_axes", None)
    if predictor.use_mirroring and axes:
        mirror = 2 ** len(axes)
    from torch import nn

    first = next(m for m in predictor.network.modules() if isinstance(m, nn.modules.conv._ConvNd))
    macs = conv_macs(predictor.network, (1, int(first.in_channels), *patch))
    params = sum(p.numel() for p in predictor.network.parameters())
    return {
        "patch_size": list(patch),
        "batch_size": conf["batch_size"],
        "n_stages": arch["n_stages"],
        "features_per_stage": arch["features_per_stage"],
        "n_conv_per_stage": arch["n_conv_per_stage"],
        "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"],
        "strides": arch["strides"],
        "params_m": params / 1e6,
        "tile_step": step,
        "tiles": tiles,
        "mirror_passes": mirror,
        "gmac_per_pass": macs / 1e9,
        "gflop_per_pass": 2 * macs / 1e9,
        "gflop_per_image": 2 * macs * tiles * mirror / 1e9,
    }


def cellpose_flops(backend: Any, height: int, width: int) -> dict[str, Any]:
    """Conv GFLOP of Cellpose's network for one image at the backend's scale and tiling."""
    cp = backend.cellpose
    rescale = cp.diam_mean / cp.diameter
    ly, lx = (round_up(round(v * rescale), 16) for v in (height, width))
    overlap = min(0.5, max(0.05, cp.tile_overlap))
    by, bx = min(cp.bsize, ly), min(cp.bsize, lx)
    ny = 1 if ly <= cp.bsize else math.ceil((1 + 2 * overlap) * ly / cp.bsize)
    nx = 1 if lx <= cp.bsize else math.ceil((1 + 2 * overlap) * lx / cp.bsize)
    nchan = 3 if cp.channels is None else 2
    macs = conv_macs(cp.model.net, (1, nchan, by, bx))
    return {
        "scale": rescale,
        "network_input": [ly, lx],
        "tile": [by, bx],
        "tiles": ny * nx,
        "gflop_per_tile": 2 * macs / 1e9,
        "gflop_per_image": 2 * macs * ny * nx / 1e9,
    }


# ------------------------------------------------------------------------- Django side


def png_bytes(image: Any) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def database_url(connection: Any) -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    auth = f"{user}:{db['PASSWORD']}" if db.get("PASSWORD") else user
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def worker_start(queue: str, env: Mapping[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """A Celery worker process like production's (prefork, one child) consuming only ``queue``."""
    handle = log_file.open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queue,
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "-n",
            f"presegment-bench-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def worker_stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


# ------------------------------------------------------------------------- report


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(configs: list[Config], args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    print()
    print(
        f"Pre-segmentation of one {args.width}x{args.height} field, {meta['gt_cells']} ground-truth cells "
        f"(+ {meta['gt_erythrocytes']} erythrocytes); device {meta['device']}, torch threads {args.threads}; "
        f"median of {args.repeats} after 1 warm-up; seconds"
    )
    for cfg in configs:
        print(f"  {cfg.name}: {cfg.describe}")
    header = [
        "config",
        *[STAGE_TITLES[s] for s in STAGES],
        "in-proc",
        "cells",
        "task e2e",
        "overhead",
        "/ 60 s",
        "speed-up",
    ]
    rows = []
    out: dict[str, Any] = {"meta": meta, "configs": {}}
    for cfg in configs:
        med = {s: median(cfg.timings.get(s, [])) for s in STAGES}
        in_proc = sum(v for v in med.values() if not math.isnan(v))
        e2e = median([t["e2e"] for t in cfg.task]) if cfg.task else math.nan
        inside = median([t["inside"] for t in cfg.task]) if cfg.task else math.nan
        ref = e2e if cfg.task else in_proc
        rows.append(
            [
                cfg.name,
                *[f"{med[s]:.2f}" for s in STAGES],
                f"{in_proc:.2f}",
                str(int(median(cfg.cells))),
                f"{e2e:.2f}" if cfg.task else "-",
                f"{e2e - inside:.2f}" if cfg.task else "-",
                f"{ref / PAPER_SECONDS:.3f}",
                f"{PAPER_SECONDS / ref:.1f}x",
            ]
        )
        out["configs"][cfg.name] = {
            "describe": cfg.describe,
            "settings": cfg.settings,
            "stages_median_s": med,
            "in_process_s": in_proc,
            "task_e2e_median_s": e2e,
            "task_inside_median_s": inside,
            "ratio_to_paper": ref / PAPER_SECONDS,
            "cells_found": cfg.cells,
            "timings": cfg.timings,
            "task_runs": cfg.task,
            "flops": cfg.flops,
        }
    print(table(rows, header))
    print(
        "in-proc: sum of the stages in this process; task e2e: apply_async -> result through the worker; "
        "overhead: e2e minus the task's own load+predict+contours+DB (broker, result store, model sha256 check)"
    )
    worker_rows = []
    for cfg in configs:
        if not cfg.task:
            continue
        keys = [f"backend.{s}" for s in STAGES[:4]] + ["contours", "db_write", "load_image"]
        worker_rows.append(
            [cfg.name, *[f"{median([t['timings'].get(k, math.nan) for t in cfg.task]):.2f}" for k in keys]]
        )
    if worker_rows:
        print("\nthe same stages inside the worker (from the task's result):")
        print(table(worker_rows, ["config", *[STAGE_TITLES[s] for s in STAGES], "load img"]))
    print(
        f"\ncontours + DB write of the {meta['gt_cells'] + meta['gt_erythrocytes']} ground-truth instances: "
        f"{meta['gt_contours_s']:.2f} + {meta['gt_db_write_s']:.2f} s"
    )
    for cfg in configs:
        nn, cp = cfg.flops.get("nnunet"), cfg.flops.get("cellpose")
        if nn:
            print(
                f"\n{cfg.name} nnU-Net plan: patch {nn['patch_size']}, batch {nn['batch_size']}, "
                f"{nn['n_stages']} stages, features {nn['features_per_stage']}, convs/stage "
                f"{nn['n_conv_per_stage']}, {nn['params_m']:.1f} M weights"
            )
            print(
                f"  {nn['gflop_per_pass']:.1f} GFLOP per pass ({nn['gmac_per_pass']:.1f} GMAC; "
                f"paper ~{PAPER_GFLOP:.0f} GFLOP), x {nn['tiles']} tiles (step {nn['tile_step']}) "
                f"x {nn['mirror_passes']} mirror passes = {nn['gflop_per_image']:.1f} GFLOP per image"
            )
        if cp:
            print(
                f"  Cellpose network: scale {cp['scale']:.2f} -> {cp['network_input']} px, {cp['tiles']} tiles "
                f"of {cp['tile']}, {cp['gflop_per_tile']:.1f} GFLOP per tile = {cp['gflop_per_image']:.1f} "
                f"GFLOP per image"
            )
    fast = out["configs"].get("fast")
    if fast is not None:
        value = fast["task_e2e_median_s"] if not math.isnan(fast["task_e2e_median_s"]) else fast["in_process_s"]
        target = 0.5 if meta["device"].startswith("cuda") else 10.0
        verdict = "PASS" if value <= target else "FAIL"
        print(f"\nfast configuration: {value:.2f} s per image (target <= {target} s on {meta['device']}): {verdict}")
        out["target"] = {"seconds": target, "value": value, "pass": value <= target}
    return out


# ------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = Path(args.workdir).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # Its own var folder: its own SQLite test database, filesystem broker folder and media,
    # never the development or CI ones.
    os.environ["PLATFORM_VAR_DIR"] = str(args.workdir / "platform")
    os.environ.pop("MEDIA_ROOT", None)

    import torch

    torch.set_num_threads(args.threads)
    device = device_pick(args.device)
    models = models_find(args, device)

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import setup_test_environment

    from annotations.models import Image, PresegmentStatus
    from annotations.services import images, projects
    from cytoseg.backends import backend_cache_clear, backend_get
    from cytoseg.backends.base import instances_from_label_map
    from cytoseg.contours import instances_to_polygons
    from cytoseg.synthetic import generate_field
    from inference.services import proposals_store
    from training.services.registry import model_version_upload

    log(f"device {device}, torch threads {torch.get_num_threads()}, models {models}")
    diam_labels = cellpose_diam_labels(models.cellpose)
    configs: list[Config] = []
    for name in args.configs:
        nn_folder = models.nnunet_paper if name == "paper" else models.nnunet_fast
        assert nn_folder is not None
        bundle = bundle_make(args.workdir / "bundles" / name, nn_folder, models.cellpose)
        cfg_settings, describe = config_settings(name, args, diam_labels)
        configs.append(Config(name=name, bundle=bundle, settings=cfg_settings, describe=describe))

    field_ = generate_field(
        seed=args.seed, width=args.width, height=args.height, n_cells=args.cells, n_erythrocytes=args.erythrocytes
    )
    image_rgb = field_.image
    gt_labels = {i + 1: c.label for i, c in enumerate(field_.cells)}
    gt_instances = instances_from_label_map(field_.label_map(), labels=gt_labels)
    meta: dict[str, Any] = {
        "device": device,
        "threads": args.threads,
        "width": args.width,
        "height": args.height,
        "gt_cells": sum(1 for i in gt_instances if i.label == 1),
        "gt_erythrocytes": sum(1 for i in gt_instances if i.label == 2),
        "repeats": args.repeats,
        "models": {k: str(v) for k, v in vars(models).items()},
    }

    setup_test_environment()
    db = connection.settings_dict
    if not db["ENGINE"].endswith("sqlite3"):  # a name of its own: never clobber another test database
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_presegment_bench"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    worker = None
    try:
        user = get_user_model().objects.create_user(username="bench")
        project = projects.project_create(name="Presegment bench", created_by=user, auto_presegment=False)
        from django.core.files.uploadedfile import SimpleUploadedFile

        upload = SimpleUploadedFile("field.png", png_bytes(image_rgb), content_type="image/png")
        image = images.image_upload_many(project=project, files=[upload], metadata={}, uploaded_by=user)[0]
        versions = {}
        from django.core.files import File

        for cfg in configs:
            with bundle_zip(cfg.bundle).open("rb") as handle:
                versions[cfg.name] = model_version_upload(
                    project=project,
                    kind="two_stage",
                    upload=File(handle, name="bundle.zip"),
                    name=f"bench {cfg.name}",
                    config=cfg.settings,
                    user=user,
                    activate=False,
                )
        reference = model_version_upload(
            project=project, kind="watershed", upload=None, name="ground truth", user=user, activate=False
        )
        gt_contours, meta["gt_contours_s"] = timed(
            lambda: instances_to_polygons(gt_instances, min_area=settings.PRESEGMENT_MIN_AREA)
        )
        _, meta["gt_db_write_s"] = timed(
            lambda: proposals_store(image=image, model_version=reference, contours=gt_contours)
        )

        # --- stages in this process
        for cfg in configs:
            log(f"{cfg.name}: loading models")
            backend: Any = backend_get(name="two_stage", artifacts=cfg.bundle, settings=cfg.settings, device=device)
            cfg.flops = {
                "nnunet": nnunet_flops(backend, args.height, args.width),
                "cellpose": cellpose_flops(backend, args.height, args.width),
            }
            for run in range(args.repeats + 1):
                prediction = backend.predict(image_rgb)
                started = time.perf_counter()
                contours = instances_to_polygons(prediction.instances, min_area=settings.PRESEGMENT_MIN_AREA)
                t_contours = time.perf_counter() - started
                started = time.perf_counter()
                count = proposals_store(image=image, model_version=versions[cfg.name], contours=contours)
                t_db = time.perf_counter() - started
                stage = {
                    **{k: float(v) for k, v in prediction.timings.items()},
                    "contours": t_contours,
                    "db_write": t_db,
                }
                log(
                    f"{cfg.name} run {run}{' (warm-up)' if run == 0 else ''}: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in stage.items())
                    + f"; {count} cells stored"
                )
                if run == 0:
                    continue
                for key, value in stage.items():
                    cfg.timings.setdefault(key, []).append(value)
                cfg.cells.append(int(count))
            backend_cache_clear()
            del backend
        import gc

        gc.collect()

        # --- end to end through a Celery worker
        if not args.no_task:
            from inference.tasks import presegment_image

            queue = f"presegment-bench-{uuid.uuid4().hex[:8]}"
            env = os.environ | {
                "DATABASE_URL": database_url(connection),
                "MEDIA_ROOT": str(settings.MEDIA_ROOT),
                "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
                "PLATFORM_VAR_DIR": str(settings.VAR_DIR),
                "INFERENCE_DEVICE": device,
                "OMP_NUM_THREADS": str(args.threads),
            }
            log_file = args.workdir / "worker.log"
            log(
                f"starting a Celery worker on {settings.CELERY_BROKER_URL.split('@')[-1]} queue {queue} "
                f"(log {log_file})"
            )
            worker = worker_start(queue, env, log_file)
            for cfg in configs:
                version = versions[cfg.name]
                for run in range(args.repeats + 1):
                    Image.objects.filter(pk=image.pk).update(
                        presegment_status=PresegmentStatus.QUEUED, presegment_model=version
                    )
                    started = time.perf_counter()
                    result = presegment_image.apply_async(args=[image.pk, version.pk], queue=queue)
                    try:
                        value = result.get(timeout=args.task_timeout, interval=0.02)
                    except Exception as exc:
                        if worker.poll() is not None:
                            raise SystemExit(f"the worker died; see {log_file}") from exc
                        raise
                    e2e = time.perf_counter() - started
                    timings = {k: float(v) for k, v in value["timings"].items()}
                    inside = sum(timings.get(k, 0.0) for k in ("load_image", "predict", "contours", "db_write"))
                    log(
                        f"{cfg.name} task {run}{' (warm-up: loads the models)' if run == 0 else ''}: "
                        f"e2e {e2e:.2f} s, inside {inside:.2f} s, {value['cells']} cells"
                    )
                    if run:
                        cfg.task.append({"e2e": e2e, "inside": inside, "cells": value["cells"], "timings": timings})
    finally:
        if worker is not None:
            worker_stop(worker)
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(Path(settings.MEDIA_ROOT) / "projects", ignore_errors=True)  # the uploaded fields

    out = report(configs, args, meta)
    result_file = args.workdir / "results.json"
    result_file.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nresults: {result_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
