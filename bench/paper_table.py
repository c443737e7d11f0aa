"""Paper A's results table, reproduced on a synthetic Diff-Quik benchmark.

Builds train / validation / test splits of synthetic fields (``cytoseg.synthetic``), trains
nnU-Net v2 (semantic: background / cell / erythrocyte), Cellpose 3 (instances) and paper B's
refinement net (on nnU-Net's foreground probability), and evaluates every row on the test
split with ``cytoseg.evaluation`` (the platform's own metrics):

* Watershed, Region growing: the classical backends on the stain foreground (no training);
* nnU-Net: its connected components; nnU-Net + region growing (paper A's erosion-seed
  baseline) and nnU-Net + watershed: instances cut from nnU-Net's semantic foreground;
* Cellpose alone (every instance a cell, as Cellpose knows no classes);
* nnU-Net + Cellpose (the two-stage pipeline, ``two_stage`` backend), then the same with
  paper A's colour filter, and with nnU-Net's foreground refined by paper B's net (instances
  filtered by and cropped to the refined foreground); nnU-Net + refinement alone as well.

Columns: pixel Dice and IoU of the cell foreground, precision@0.7 (paper A's best match), AP50,
the DSB score (paper D), seconds per image (the stages a row uses; stages shared by several
rows are run once per image and counted in each), beside paper A's numbers (their private
data, so only the ordering is comparable). Ground truth is the visible part of every
synthetic instance; cell metrics use the instances labelled 1 (cell) on both sides.
Targets checked: the two-stage row beats every single-model row on precision@0.7, and reaches
Dice >= 0.92, IoU >= 0.86, precision@0.7 >= 0.87.

Training choices are **recipes** (``--recipes``, the first one is the table's; see ``RECIPES``):
``base`` (the schedules above); ``rim`` / ``core`` (nnU-Net learns a fourth class that tells
touching cells apart: their inner rim, or their core); ``cells_only`` (Cellpose on cells alone,
erythrocytes left to nnU-Net's class map); ``core_cells`` (both ``core`` and ``cells_only``);
``stain`` (stain / illumination / blur / JPEG copies
of the training images for both models); ``clusters`` (paper C's synthetic clusters at high
density); ``long`` (twice the schedules). Every other recipe adds its rows under the table, so
each choice is measured on the same test fields. The two-stage rows use the ``two_stage``
backend's combination rules: ``filter`` (Cellpose's masks, filtered by nnU-Net) and ``assign``
(nnU-Net's foreground split by the instances; ``cytoseg.backends.combine``).

On ``--difficulty hard`` the checks are the hard targets: two-stage (assign) F1@0.5 >= 0.85,
Dice within 0.005 of nnU-Net alone, above every single-model row on F1@0.5, P@0.7 and DSB, and
erythrocytes taken for cells at most 2% of the predicted cells.

This script is one piece (over 600 lines) because a benchmark run is one story, from data to
table, that is read top to bottom.

Models and results are cached under ``var/bench/paper_table/<data>/`` (one folder per data set,
one model folder per training configuration); ``--reuse`` skips training a model whose folder
exists. The table is written next to them as ``table.csv`` and ``table.json``.

    .venv/bin/python bench/paper_table.py --quick               # smoke run, under a minute
    .venv/bin/python bench/paper_table.py                        # CPU default: 256x256, 24/6/12; ~45 min, 2 cores
    .venv/bin/python bench/paper_table.py --reuse                # evaluate again without training
    .venv/bin/python bench/paper_table.py --paper --device cuda  # paper A's 1024x768, 120/30/122, its schedule
    .venv/bin/python bench/paper_table.py --difficulty hard --train 10 --val 2 --test 8 \
        --recipes hard,base,rim,core,cells_only,stain,clusters,long     # every training choice
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import size_arg  # noqa: E402  (a sibling script, not a package)

BENCH_DIR = ROOT / "var" / "bench" / "paper_table"

# Paper A (their data; time per image, hardware not stated).
PAPER_A: dict[str, dict[str, float]] = {
    "U-Net": {"dice": 0.76, "iou": 0.62, "seconds": 45},
    "U-Net++": {"dice": 0.78, "iou": 0.62, "seconds": 60},
    "nnU-Net v2": {"dice": 0.89, "iou": 0.82, "seconds": 43},
    "Mask R-CNN": {"dice": 0.70, "p70": 0.51, "seconds": 198},
    "NucleAIzer": {"dice": 0.75, "p70": 0.59, "seconds": 195},
    "Cellpose": {"dice": 0.71, "p70": 0.59, "seconds": 10},
    "nnU-Net v2 + Cellpose": {"dice": 0.92, "iou": 0.86, "p70": 0.87, "seconds": 60},
}
TARGETS = {"dice": 0.92, "iou": 0.86, "p70": 0.87}
HARD_TARGETS = {"f1_50": 0.85, "dice_gap": 0.005, "ery_rate": 0.02}
TWO_STAGE = "nnU-Net + Cellpose (assign)"
TWO_STAGE_FILTER = "nnU-Net + Cellpose (filter)"
# nnU-Net alone, its cells grown from its seed class (core or rim; components without one)
NN_SEEDS = "nnU-Net (seeds)"


@dataclass(frozen=True)
class Row:
    name: str
    stages: tuple[str, ...]  # timed stages whose sum is the row's time per image
    paper: str | None  # the paper A row it corresponds to
    single_model: bool  # one model at most (compared with the two-stage row)


ROWS: tuple[Row, ...] = (
    Row("Watershed (stain)", ("watershed",), "U-Net", True),
    Row("Region growing (stain)", ("region_growing",), None, True),
    Row("nnU-Net (components)", ("nnunet", "components"), "nnU-Net v2", True),
    Row(NN_SEEDS, ("nnunet", "seeds"), "nnU-Net v2", True),
    Row("nnU-Net + region growing", ("nnunet", "nn_region_growing"), "nnU-Net v2", True),
    Row("nnU-Net + watershed", ("nnunet", "nn_watershed"), "nnU-Net v2", True),
    Row("Cellpose", ("cellpose_net", "cellpose_masks"), "Cellpose", True),
    Row(TWO_STAGE_FILTER, ("nnunet", "cellpose_net", "cellpose_masks", "filter"), "nnU-Net v2 + Cellpose", False),
    Row(TWO_STAGE, ("nnunet", "cellpose_net", "assign"), "nnU-Net v2 + Cellpose", False),
    Row("  + colour filter", ("nnunet", "cellpose_net", "cellpose_masks", "filter_colour"), None, False),
    Row(
        "  + refinement (paper B)",
        ("nnunet", "refinement", "cellpose_net", "cellpose_masks", "filter_refined"),
        None,
        False,
    ),
    Row("nnU-Net + refinement", ("nnunet", "components", "refinement", "crop"), None, False),
)


@dataclass(frozen=True)
class Recipe:
    """A way of training the two models: overrides of the nnU-Net and Cellpose training
    configurations (nested dicts of ``cytoseg.trainers.configs``), Cellpose on cells only,
    paper C's synthetic clusters added to the training images (``cytoseg.augment.AugmentConfig``
    fields; ``count`` images), and the combination's parameters
    (``cytoseg.backends.combine.AssignParams`` fields)."""

    key: str
    title: str
    nnunet: dict[str, Any] = field(default_factory=dict)
    cellpose: dict[str, Any] = field(default_factory=dict)
    cells_only: bool = False
    clusters: dict[str, Any] = field(default_factory=dict)
    combine: dict[str, Any] = field(default_factory=dict)
    schedule: float = 1.0  # epochs of both models times this


RECIPES: dict[str, Recipe] = {
    r.key: r
    for r in (
        Recipe("base", "paper A's schedules"),
        Recipe("rim", "+ nnU-Net cell-rim class", nnunet={"seed_class": "rim"}),
        Recipe("core", "+ nnU-Net cell-core class", nnunet={"seed_class": "core"}),
        Recipe("cells_only", "+ Cellpose on cells only", cells_only=True),
        Recipe(
            "core_cells",
            "+ nnU-Net cell-core class, Cellpose on cells only",
            nnunet={"seed_class": "core"},
            cells_only=True,
        ),
        Recipe(
            "stain",
            "+ stain/illumination/blur/JPEG copies",
            nnunet={"stain": {"copies": 3}},
            cellpose={"stain": {"copies": 3}},
        ),
        Recipe(
            "clusters",
            "+ paper C clusters, dense",
            clusters={"count": 10, "fill_fraction": 0.6, "cluster_size": [6, 18]},
        ),
        Recipe("long", "+ twice the schedules", schedule=2.0),
    )
}


# ------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("mode")
    g.add_argument("--quick", action="store_true", help="smoke run: 128x128, 4/2/3 images, tiny models, 1 epoch")
    g.add_argument(
        "--paper",
        action="store_true",
        help="paper A's data size (1024x768, 120/30/122) and training schedule (needs a GPU)",
    )
    g.add_argument("--reuse", action="store_true", help="reuse trained models found in the cache")
    g.add_argument(
        "--recipes",
        default="base",
        help=f"comma-separated training recipes, the first one makes the table ({', '.join(RECIPES)})",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    g.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)")
    g.add_argument("--cache", type=Path, default=BENCH_DIR, help=f"cache folder (default {BENCH_DIR})")
    g = p.add_argument_group(
        "data", "defaults: 256x256, 24/6/12; --paper: 1024x768, 120/30/122; --quick: 128x128, 4/2/3 with 10 cells"
    )
    g.add_argument("--width", type=int, default=None, help="image width")
    g.add_argument("--height", type=int, default=None, help="image height")
    g.add_argument("--train", type=int, default=None, help="training images")
    g.add_argument("--val", type=int, default=None, help="validation images")
    g.add_argument("--test", type=int, default=None, help="test images")
    g.add_argument("--cells", type=int, default=None, help="thyroid cells per image (default: generator's, by area)")
    g.add_argument("--seed", type=int, default=0, help="data seed")
    g.add_argument(
        "--difficulty",
        choices=("normal", "hard"),
        default="normal",
        help="the generator's mode: hard = palettes, gradients, dense clusters, faint erythrocytes, "
        "varying blur, JPEG (cytoseg.synthetic)",
    )
    g = p.add_argument_group(
        "nnU-Net",
        "defaults: 20 epochs x 50 iterations (10 validation), the planner's plan with batch 4 and "
        "16..256 features; --paper: 50 x 250 (50), the planner's plan as is; --quick: 1 x 4, tiny plan",
    )
    g.add_argument("--nnunet-epochs", type=int, default=None, help="epochs")
    g.add_argument("--nnunet-iterations", type=int, default=None, help="iterations per epoch")
    g.add_argument("--nnunet-val-iterations", type=int, default=None, help="validation iterations per epoch")
    g.add_argument("--nnunet-lr", type=float, default=None, help="initial LR (default paper A's 7e-3)")
    g.add_argument("--nnunet-batch", type=int, default=None, help="plan override: batch size")
    g.add_argument("--nnunet-patch", type=size_arg, default=None, help="plan override: patch ROWSxCOLS")
    g.add_argument("--nnunet-stages", type=int, default=None, help="plan override: number of stages")
    g.add_argument("--nnunet-features", type=int, default=None, help="plan override: features of stage 1")
    g.add_argument("--nnunet-max-features", type=int, default=None, help="plan override: feature cap")
    g.add_argument("--nnunet-convs", type=int, default=None, help="plan override: convs per stage")
    g.add_argument("--planner-plan", action="store_true", help="no plan override (nnU-Net's planner as is)")
    g.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="nnU-Net mirroring at test time (default: on with --paper, else off)",
    )
    g = p.add_argument_group(
        "Cellpose",
        "defaults: 200 epochs over the training images, 128 px crops, batch 8, LR 0.005 (AdamW); "
        "--paper: 500 epochs, 224 px crops; --quick: 1 epoch, 64 px crops",
    )
    g.add_argument("--cellpose-epochs", type=int, default=None, help="epochs")
    g.add_argument("--cellpose-lr", type=float, default=None, help="learning rate")
    g.add_argument("--cellpose-batch", type=int, default=None, help="batch size")
    g.add_argument("--cellpose-bsize", type=int, default=None, help="training crop size")
    g = p.add_argument_group(
        "refinement (paper B)",
        "defaults: up to 20 epochs x 30 iterations, LR 1e-3, patience 5; --paper: "
        "paper B's Adam 1e-4, up to 100 x 50, patience 10; --quick: 1 epoch",
    )
    g.add_argument("--refinement-epochs", type=int, default=None, help="maximum epochs (early stopping)")
    g.add_argument("--refinement-iterations", type=int, default=None, help="iterations per epoch")
    g.add_argument("--refinement-lr", type=float, default=None, help="learning rate")
    args = p.parse_args(argv)
    if args.quick and args.paper:
        p.error("--quick and --paper exclude each other")
    return args


@dataclass
class Setup:
    width: int
    height: int
    n_train: int
    n_val: int
    n_test: int
    cells: int | None
    seed: int
    tta: bool
    nnunet: Any  # NnUNetTrainConfig
    cellpose: Any  # CellposeTrainConfig
    refinement: Any  # RefinementTrainConfig
    recipes: tuple[Recipe, ...]
    difficulty: str = "normal"

    @property
    def data_key(self) -> str:
        cells = f"-c{self.cells}" if self.cells is not None else ""
        hard = "-hard" if self.difficulty == "hard" else ""
        return f"{self.width}x{self.height}-{self.n_train}-{self.n_val}-{self.n_test}-s{self.seed}{cells}{hard}"


def pick(value: Any, quick: Any, default: Any, paper: Any, args: argparse.Namespace) -> Any:
    if value is not None:
        return value
    return quick if args.quick else paper if args.paper else default


def setup_build(args: argparse.Namespace) -> Setup:
    from cytoseg.trainers.configs import (
        CellposeTrainConfig,
        NnUNetPlansOverride,
        NnUNetTrainConfig,
        RefinementTrainConfig,
    )

    width = pick(args.width, 128, 256, 1024, args)
    height = pick(args.height, 128, 256, 768, args)
    # nnU-Net: paper A's LR, weight decay, oversampling and augmentation; the CPU default
    # trains a slimmer plan (batch 4, 16..256 features) for fewer iterations.
    if args.quick:
        nn = NnUNetTrainConfig.tiny()
        nn.num_epochs, nn.num_iterations_per_epoch, nn.num_val_iterations_per_epoch = 1, 4, 1
    else:
        nn = NnUNetTrainConfig(plot_progress=False, save_every=10**6)
        if not args.paper:
            nn.num_epochs, nn.num_iterations_per_epoch, nn.num_val_iterations_per_epoch = 20, 50, 10
            nn.plans = NnUNetPlansOverride(batch_size=4, base_features=16, max_features=256)
    nn.dataset_id, nn.dataset_name = 631, "PaperTable"
    if args.planner_plan:
        nn.plans = NnUNetPlansOverride()
    for attr, value in (
        ("num_epochs", args.nnunet_epochs),
        ("num_iterations_per_epoch", args.nnunet_iterations),
        ("num_val_iterations_per_epoch", args.nnunet_val_iterations),
        ("initial_lr", args.nnunet_lr),
    ):
        if value is not None:
            setattr(nn, attr, value)
    for attr, value in (
        ("batch_size", args.nnunet_batch),
        ("patch_size", args.nnunet_patch),
        ("n_stages", args.nnunet_stages),
        ("base_features", args.nnunet_features),
        ("max_features", args.nnunet_max_features),
        ("n_conv_per_stage", args.nnunet_convs),
    ):
        if value is not None:
            setattr(nn.plans, attr, tuple(value) if isinstance(value, tuple) else value)
    # Cellpose: its own schedule (warm-up, AdamW, random rotate-and-resize crops); BatchNorm
    # statistics re-estimated after training (short runs otherwise predict nothing).
    if args.quick:
        cp = CellposeTrainConfig.tiny()
        cp.n_epochs, cp.warmup_epochs, cp.val_every, cp.bn_recalibrate_batches = 1, 0, 1, 2
    elif args.paper:
        cp = CellposeTrainConfig(n_epochs=500, val_every=10, bn_recalibrate_batches=20)
    else:  # 128 px crops (cells are ~25 px across): more steps for the CPU time
        cp = CellposeTrainConfig(n_epochs=200, bsize=128, val_every=20, bn_recalibrate_batches=10)
    for attr, value in (
        ("n_epochs", args.cellpose_epochs),
        ("learning_rate", args.cellpose_lr),
        ("batch_size", args.cellpose_batch),
        ("bsize", args.cellpose_bsize),
    ):
        if value is not None:
            setattr(cp, attr, value)
    cp.warmup_epochs = min(cp.warmup_epochs, max(cp.n_epochs - 1, 0))
    # Refinement: paper B (Adam 1e-4, BCE, early stopping); the CPU default runs fewer, larger steps.
    if args.quick:
        rf = RefinementTrainConfig.tiny()
        rf.max_epochs = 1
    elif args.paper:
        rf = RefinementTrainConfig()
    else:
        rf = RefinementTrainConfig(max_epochs=20, iterations_per_epoch=30, learning_rate=1e-3, patience=5)
    for attr, value in (
        ("max_epochs", args.refinement_epochs),
        ("iterations_per_epoch", args.refinement_iterations),
        ("learning_rate", args.refinement_lr),
    ):
        if value is not None:
            setattr(rf, attr, value)
    unknown = [k for k in args.recipes.split(",") if k.strip() not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}: choose from {', '.join(RECIPES)}")
    recipes = tuple(RECIPES[k.strip()] for k in args.recipes.split(","))
    return Setup(
        width=width,
        height=height,
        n_train=pick(args.train, 4, 24, 120, args),
        n_val=pick(args.val, 2, 6, 30, args),
        n_test=pick(args.test, 3, 12, 122, args),
        cells=pick(args.cells, 10, None, None, args),
        seed=args.seed,
        tta=args.tta if args.tta is not None else bool(args.paper),
        nnunet=nn,
        cellpose=cp,
        refinement=rf,
        recipes=recipes,
        difficulty=args.difficulty,
    )


# ------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def config_hash(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Clock:
    """Accumulates seconds per stage: ``with clock("nnunet"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


@dataclass
class Split:
    images: list[Any] = field(default_factory=list)  # (H, W, 3) uint8
    semantic: list[Any] = field(default_factory=list)  # (H, W) uint8 0/1/2
    instances: list[Any] = field(default_factory=list)  # (H, W) int32 label maps, every object
    cell_instances: list[Any] = field(default_factory=list)  # (H, W) int32 label maps, cells only
    gt: list[list[Any]] = field(default_factory=list)  # Instance crops with labels
    cells: list[list[Any]] = field(default_factory=list)  # the generator's cells (paper C's sources)


def _cells_only(label_map: Any, labels: dict[int, int]) -> Any:
    import numpy as np

    keep = [k for k, label in labels.items() if label == 1]
    return np.where(np.isin(label_map, keep), label_map, 0).astype(np.int32)


def data_build(setup: Setup) -> dict[str, Split]:
    from cytoseg.backends.base import instances_from_label_map
    from cytoseg.synthetic import generate_field

    out: dict[str, Split] = {}
    for name, count, base in (
        ("train", setup.n_train, 10_000),
        ("val", setup.n_val, 20_000),
        ("test", setup.n_test, 30_000),
    ):
        split = Split()
        for i in range(count):
            f = generate_field(
                seed=setup.seed * 100_000 + base + i,
                width=setup.width,
                height=setup.height,
                n_cells=setup.cells,
                difficulty=setup.difficulty,
            )
            label_map = f.label_map()
            labels = {k + 1: c.label for k, c in enumerate(f.cells)}
            split.images.append(f.image)
            split.semantic.append(f.semantic_map())
            split.instances.append(label_map)
            split.cell_instances.append(_cells_only(label_map, labels))
            split.gt.append(instances_from_label_map(label_map, labels=labels))
            split.cells.append(list(f.cells))
        out[name] = split
    return out


def recipe_train_split(recipe: Recipe, train: Split) -> Split:
    """The training images of a recipe: the split's, plus paper C's synthetic clusters."""
    if not recipe.clusters:
        return train
    from cytoseg.augment import AugmentConfig, synthetic_images

    config = AugmentConfig.from_dict({**recipe.clusters, "seed": 7})
    out = Split(
        images=list(train.images),
        semantic=list(train.semantic),
        instances=list(train.instances),
        cell_instances=list(train.cell_instances),
    )
    fields = list(zip(train.images, train.cells, strict=True))
    made = 0
    for synthetic in synthetic_images(fields, config):
        label_map = synthetic.label_map()
        labels = {k + 1: c.label for k, c in enumerate(synthetic.cells)}
        out.images.append(synthetic.image)
        out.semantic.append(synthetic.semantic_map())
        out.instances.append(label_map)
        out.cell_instances.append(_cells_only(label_map, labels))
        made += 1
    log(f"recipe {recipe.key}: {made} paper C images added to {len(train.images)} training images")
    return out


def recipe_configs(setup: Setup, recipe: Recipe) -> tuple[Any, Any]:
    """The nnU-Net and Cellpose training configurations of a recipe."""
    from cytoseg.trainers.configs import CellposeTrainConfig, NnUNetTrainConfig, config_build

    def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    nn = config_build(NnUNetTrainConfig, merged(setup.nnunet.to_dict(), recipe.nnunet))
    cp = config_build(CellposeTrainConfig, merged(setup.cellpose.to_dict(), recipe.cellpose))
    if recipe.schedule != 1.0:
        nn.num_epochs = max(1, round(nn.num_epochs * recipe.schedule))
        cp.n_epochs = max(1, round(cp.n_epochs * recipe.schedule))
    return nn, cp


def config_key(config: Any) -> dict[str, Any]:
    """What of a training configuration differs from its class's defaults (nested): the cache
    key, so that a field added to a configuration later does not orphan trained models."""

    def diff(value: Any, default: Any) -> Any:
        if isinstance(value, dict) and isinstance(default, dict):
            out = {k: diff(v, default.get(k)) for k, v in value.items() if v != default.get(k)}
            return out
        return value

    return diff(config.to_dict(), type(config)().to_dict())


# ------------------------------------------------------------------------- training


def cached(folder: Path, reuse: bool) -> bool:
    done = folder / "DONE.json"
    if reuse and done.is_file():
        log(f"reusing {folder}")
        return True
    if folder.exists():
        shutil.rmtree(folder)
    return False


def train_nnunet(config: Any, train: Split, val: Split, folder: Path, device: str) -> dict[str, Any]:
    from cytoseg.trainers.nnunet import nnunet_train

    log(
        f"training nnU-Net: {config.num_epochs} epochs x {config.num_iterations_per_epoch} iterations, "
        f"plan override {config.plans}, seed class {config.seed_class}, stain copies {config.stain.copies}, "
        f"{len(train.images)} images"
    )
    job = folder.with_name(folder.name + "-job")
    result = nnunet_train(
        images=train.images,
        semantic_labels=train.semantic,
        val_images=val.images,
        val_semantic_labels=val.semantic,
        cell_instances=train.cell_instances,
        val_cell_instances=val.cell_instances,
        workdir=job,
        config=config,
        device=device,
    )
    shutil.copytree(result.model_folder, folder)
    shutil.rmtree(job, ignore_errors=True)
    epochs = [float(c["seconds"]) for c in result.curves if c.get("seconds") is not None]
    info = {
        "seconds": result.seconds,
        "plans": result.plans_summary,
        "final_val_loss": result.final_val_loss,
        "epoch_seconds": sum(epochs) / len(epochs) if epochs else None,
        "final_pseudo_dice": result.final_pseudo_dice,
        "config": result.config,
    }
    (folder / "DONE.json").write_text(json.dumps(info, indent=1, default=str))
    return info


def train_cellpose(
    config: Any, cells_only: bool, train: Split, val: Split, folder: Path, device: str
) -> dict[str, Any]:
    from cytoseg.trainers.cellpose import cellpose_train

    log(
        f"training Cellpose: {config.n_epochs} epochs, crops {config.bsize}, batch {config.batch_size}, "
        f"{'cells only' if cells_only else 'cells and erythrocytes'}, stain copies {config.stain.copies}, "
        f"{len(train.images)} images"
    )
    result = cellpose_train(
        images=train.images,
        instance_labels=train.cell_instances if cells_only else train.instances,
        val_images=val.images,
        val_instance_labels=val.cell_instances if cells_only else val.instances,
        workdir=folder,
        config=config,
        device=device,
    )
    epochs = [c["seconds"] for c in result.curves]
    info = {
        "seconds": result.seconds,
        "diam_labels": result.diam_labels,
        "final_train_loss": result.train_losses[-1],
        "epoch_seconds": sum(epochs) / len(epochs) if epochs else None,
        "config": result.config,
    }
    (folder / "DONE.json").write_text(json.dumps(info, indent=1, default=str))
    return info


def train_refinement(setup: Setup, data: dict[str, Split], nnunet: Any, folder: Path, device: str) -> dict[str, Any]:
    """Paper B's net on the (base) training fields, over the table recipe's nnU-Net."""
    from cytoseg.trainers.refinement import refinement_train

    log(
        f"training the refinement net: up to {setup.refinement.max_epochs} epochs x "
        f"{setup.refinement.iterations_per_epoch} iterations (inputs: nnU-Net's foreground probability)"
    )

    def first_stage(split: Split) -> list[Any]:
        return [1.0 - nnunet.predict_probabilities(img)[0] for img in split.images]

    result = refinement_train(
        images=data["train"].images,
        probabilities=first_stage(data["train"]),
        targets=[s > 0 for s in data["train"].semantic],
        val_images=data["val"].images,
        val_probabilities=first_stage(data["val"]),
        val_targets=[s > 0 for s in data["val"].semantic],
        workdir=folder,
        config=setup.refinement,
        device=device,
    )
    info = {
        "seconds": result.seconds,
        "best_epoch": result.best_epoch,
        "best_loss": result.best_loss,
        "stopped_early": result.stopped_early,
        "config": result.config,
    }
    (folder / "DONE.json").write_text(json.dumps(info, indent=1, default=str))
    return info


# ------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Models:
    """A recipe's trained models."""

    recipe: Recipe
    nn_folder: Path
    cp_folder: Path


def two_stage_for(setup: Setup, models: Models, device: str) -> Any:
    from cytoseg.backends.two_stage import TwoStageBackend

    return TwoStageBackend(
        artifacts=None,
        device=device,
        settings={
            "nnunet_model_folder": str(models.nn_folder),
            "cellpose_model_file": str(models.cp_folder / "cellpose.pth"),
            "nnunet": {"use_mirroring": setup.tta, "instances": "components"},
            "combine": "assign",
            **models.recipe.combine,
        },
    )


def evaluate(
    setup: Setup, data: dict[str, Split], main: Models, rf_folder: Path, device: str
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Every row of the table on the test split: (metrics per row, mean seconds per image per stage)."""
    import numpy as np
    import torch

    from cytoseg.backends.nnunet import components_to_instances
    from cytoseg.backends.refinement import RefinementNet, instances_crop, refinement_predict
    from cytoseg.backends.region_growing import RegionGrowingBackend
    from cytoseg.backends.watershed import WatershedBackend

    two = two_stage_for(setup, main, device)
    two_colour = copy.copy(two)
    two_colour.colour_filter = True
    two_cropped = copy.copy(two)
    two_cropped.crop_to_foreground = True
    ws = WatershedBackend(artifacts=None, settings={}, device=device)
    rg = RegionGrowingBackend(artifacts=None, settings={}, device=device)
    net = RefinementNet()
    net.load_state_dict(torch.load(rf_folder / "refinement.pt", map_location="cpu", weights_only=True))
    net.to(device).eval()

    preds: dict[str, list[Any]] = {row.name: [] for row in ROWS}
    totals: dict[str, float] = {}
    test = data["test"]
    for i, img in enumerate(test.images):
        clock = Clock()
        with clock("watershed"):
            preds["Watershed (stain)"].append(ws.predict(img).instances)
        with clock("region_growing"):
            preds["Region growing (stain)"].append(rg.predict(img).instances)
        with clock("nnunet"):
            maps = two.nnunet.predict_maps(img)
        semantic, probs = maps.semantic, maps.probabilities
        with clock("components"):
            preds["nnU-Net (components)"].append(components_to_instances(semantic, probs))
        with clock("seeds"):
            preds[NN_SEEDS].append(_nn_seeds(maps))
        with clock("nn_region_growing"):
            preds["nnU-Net + region growing"].append(rg.predict_from_mask(img, semantic).instances)
        with clock("nn_watershed"):
            preds["nnU-Net + watershed"].append(ws.predict_from_mask(img, semantic).instances)
        with clock("cellpose_net"):
            outputs = two.cellpose.network(img)
        with clock("cellpose_masks"):
            instances = two.cellpose.instances(two.cellpose.masks(outputs), outputs)
        preds["Cellpose"].append(instances)
        with clock("filter"):
            preds[TWO_STAGE_FILTER].append(two.combine(img, instances, semantic))
        with clock("assign"):
            preds[TWO_STAGE].append(two.assign(img, maps, outputs))
        with clock("filter_colour"):
            preds["  + colour filter"].append(two_colour.combine(img, instances, semantic))
        with clock("refinement"):
            refined = refinement_predict(net, img, 1.0 - probs[0], device=device) >= 0.5
            fg_class = (1 + np.argmax(probs[1:], axis=0)).astype(np.uint8)
            refined_semantic = np.where(refined, np.where(semantic > 0, semantic, fg_class), 0).astype(np.uint8)
        with clock("filter_refined"):
            preds["  + refinement (paper B)"].append(two_cropped.combine(img, instances, refined_semantic))
        with clock("crop"):
            nn_instances = preds["nnU-Net (components)"][-1]
            preds["nnU-Net + refinement"].append(instances_crop(nn_instances, refined, min_area=15))
        for stage, seconds in clock.seconds.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
        log(
            f"test image {i + 1}/{len(test.images)}: {len(test.gt[i])} instances; "
            f"nnU-Net {clock.seconds['nnunet']:.2f} s, Cellpose {clock.seconds['cellpose_net']:.2f} + "
            f"{clock.seconds['cellpose_masks']:.2f} s, assign {clock.seconds['assign']:.2f} s"
        )
    per_stage = {k: v / max(len(test.images), 1) for k, v in totals.items()}

    results: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        results[row.name] = {
            **split_score(test, preds[row.name]),
            "seconds": sum(per_stage.get(s, 0.0) for s in row.stages),
        }
    return results, per_stage


RECIPE_ROWS = ("nnU-Net (components)", NN_SEEDS, "Cellpose", TWO_STAGE_FILTER, TWO_STAGE)


def _nn_seeds(maps: Any) -> list[Any]:
    from cytoseg.backends.nnunet import components_to_instances, nnunet_seeded_instances

    if maps.core is None and maps.boundary is None:
        return components_to_instances(maps.semantic, maps.probabilities)
    return nnunet_seeded_instances(maps)


def evaluate_recipe(setup: Setup, data: dict[str, Split], models: Models, device: str) -> dict[str, dict[str, Any]]:
    """A recipe's single-model and two-stage rows on the test split."""
    from cytoseg.backends.nnunet import components_to_instances

    two = two_stage_for(setup, models, device)
    preds: dict[str, list[Any]] = {name: [] for name in RECIPE_ROWS}
    totals: dict[str, float] = {}
    for img in data["test"].images:
        clock = Clock()
        with clock("nnunet"):
            maps = two.nnunet.predict_maps(img)
        with clock("components"):
            preds["nnU-Net (components)"].append(components_to_instances(maps.semantic, maps.probabilities))
        with clock("seeds"):
            preds[NN_SEEDS].append(_nn_seeds(maps))
        with clock("cellpose_net"):
            outputs = two.cellpose.network(img)
        with clock("cellpose_masks"):
            instances = two.cellpose.instances(two.cellpose.masks(outputs), outputs)
        preds["Cellpose"].append(instances)
        with clock("filter"):
            preds[TWO_STAGE_FILTER].append(two.combine(img, instances, maps.semantic))
        with clock("assign"):
            preds[TWO_STAGE].append(two.assign(img, maps, outputs))
        for stage, seconds in clock.seconds.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    per_stage = {k: v / max(len(data["test"].images), 1) for k, v in totals.items()}
    stages = {row.name: row.stages for row in ROWS}
    return {
        name: {
            **split_score(data["test"], preds[name]),
            "seconds": sum(per_stage.get(s, 0.0) for s in stages[name]),
        }
        for name in RECIPE_ROWS
    }


def split_score(test: Split, preds: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The table's metrics of one row: its predicted instances per test image against the truth."""
    from cytoseg.evaluation import EvalCase, evaluate_cases

    cases = []
    for i, pred in enumerate(preds):
        h, w = test.images[i].shape[:2]
        gt = test.gt[i]
        cases.append(
            EvalCase(
                key=f"test_{i:04d}",
                group="synthetic",
                height=h,
                width=w,
                gt=gt,
                gt_labels=[g.label for g in gt],
                pred=list(pred),
                pred_labels=[int(p.label) for p in pred],
                pred_scores=[float(p.score) for p in pred],
            )
        )
    overall = evaluate_cases(cases).overall
    return {
        "dice": overall.get("dice"),
        "iou": overall.get("iou"),
        "p70": overall.get("best_match_precision_70"),
        "ranked_ap50": overall.get("ranked_ap50"),
        "dsb": overall.get("dsb"),
        "f1_50": overall.get("f1_50"),
        "coco_AP": overall.get("coco_AP"),
        "erythrocyte_fp": overall.get("erythrocyte_fp"),
        "ery_rate": (overall.get("erythrocyte_fp") or 0.0) / max(overall.get("n_pred") or 0.0, 1.0),
        "precision_50": overall.get("precision_50"),
        "recall_50": overall.get("recall_50"),
        "n_pred": overall.get("n_pred"),
        "n_gt": overall.get("n_gt"),
    }


# ------------------------------------------------------------------------- report


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> None:
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        fmt(r["dice"]),
        fmt(r["iou"]),
        fmt(r["f1_50"]),
        fmt(r["p70"]),
        fmt(r["ranked_ap50"]),
        fmt(r["dsb"]),
        fmt(100 * r["ery_rate"], 1),
        fmt(r["seconds"], 2),
    ]


def checks_for(results: dict[str, dict[str, Any]], setup: Setup) -> list[dict[str, Any]]:
    """The targets of the mode: paper A's on normal fields, the hard targets on hard ones."""
    two = results[TWO_STAGE]
    singles = [row for row in ROWS if row.single_model]
    checks: list[dict[str, Any]] = []
    keys = ("f1_50", "p70", "dsb") if setup.difficulty == "hard" else ("p70",)
    for key in keys:
        best = max((results[row.name][key] or 0.0, row.name) for row in singles)
        checks.append(
            {
                "target": f"two-stage {key} > every single-model row (best: {best[1].strip()} {fmt(best[0])})",
                "value": two[key],
                "pass": (two[key] or 0.0) > best[0],
            }
        )
    if setup.difficulty == "hard":
        nn_dice = results["nnU-Net (components)"]["dice"] or 0.0
        checks += [
            {
                "target": f"two-stage F1@0.5 >= {HARD_TARGETS['f1_50']}",
                "value": two["f1_50"],
                "pass": (two["f1_50"] or 0.0) >= HARD_TARGETS["f1_50"],
            },
            {
                "target": f"two-stage Dice within {HARD_TARGETS['dice_gap']} of nnU-Net alone ({fmt(nn_dice, 4)})",
                "value": two["dice"],
                "pass": (two["dice"] or 0.0) >= nn_dice - HARD_TARGETS["dice_gap"],
            },
            {
                "target": f"erythrocytes taken for cells <= {100 * HARD_TARGETS['ery_rate']:.0f}% of predicted cells",
                "value": two["ery_rate"],
                "pass": two["ery_rate"] <= HARD_TARGETS["ery_rate"],
            },
        ]
    else:
        for key, title in (("dice", "Dice"), ("iou", "IoU"), ("p70", "P@0.7")):
            checks.append(
                {
                    "target": f"two-stage {title} >= {TARGETS[key]}",
                    "value": two[key],
                    "pass": (two[key] or 0.0) >= TARGETS[key],
                }
            )
    return checks


def report(
    results: dict[str, dict[str, Any]],
    extra: dict[str, dict[str, dict[str, Any]]],
    setup: Setup,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    metrics = ["Dice", "IoU", "F1@0.5", "P@0.7", "AP50", "DSB", "ery %", "s/img"]
    header = ["row", *metrics, "| paper A row", "Dice", "IoU", "P@0.7", "s"]
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    main = setup.recipes[0]
    for row in ROWS:
        r = results[row.name]
        ref = PAPER_A.get(row.paper or "", {})
        rows.append(
            [
                row.name,
                *_cells(r),
                f"| {row.paper or ''}",
                fmt(ref.get("dice"), 2),
                fmt(ref.get("iou"), 2),
                fmt(ref.get("p70"), 2),
                fmt(ref.get("seconds"), 0),
            ]
        )
        records.append(
            {
                "row": row.name.strip(),
                "recipe": main.key,
                **r,
                "paper_row": row.paper,
                **{f"paper_{k}": v for k, v in ref.items()},
            }
        )
    print()
    print(
        f"Synthetic benchmark ({setup.difficulty}) {setup.width}x{setup.height}, {setup.n_train}/{setup.n_val}/"
        f"{setup.n_test} images (train/val/test); recipe {main.key} ({main.title}); nnU-Net TTA "
        f"{'on' if setup.tta else 'off'}; ery % = erythrocytes taken for cells, of the predicted cells"
    )
    _table(header, rows, left=(0, 9))
    if extra:
        print("\nTraining choices, one recipe each (same test fields):")
        extra_rows: list[list[str]] = []
        for key, rows_of in extra.items():
            recipe = RECIPES[key]
            for name, r in rows_of.items():
                extra_rows.append([f"{recipe.key}: {recipe.title}", name, *_cells(r)])
                records.append({"row": name, "recipe": key, **r})
        _table(["recipe", "row", *metrics], extra_rows, left=(0, 1))
    checks = checks_for(results, setup)
    print()
    for c in checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {fmt(c['value'])}")
    return records, checks


# ------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from cytoseg.device import device_default

    device = device_default() if args.device == "auto" else args.device
    setup = setup_build(args)
    base = Path(args.cache).resolve() / setup.data_key
    models = base / "models"
    models.mkdir(parents=True, exist_ok=True)
    log(f"data {setup.data_key}, device {device}, torch threads {torch.get_num_threads()}, cache {base}")
    data = data_build(setup)
    log(
        f"data: {sum(len(g) for g in data['test'].gt)} test instances "
        f"({sum(1 for g in data['test'].gt for c in g if c.label == 1)} cells) in {len(data['test'].images)} images"
    )

    training: dict[str, Any] = {}
    trained: list[Models] = []
    for recipe in setup.recipes:
        nn_cfg, cp_cfg = recipe_configs(setup, recipe)
        train = recipe_train_split(recipe, data["train"])
        nn_key = config_hash(setup.data_key, config_key(nn_cfg), recipe.clusters)
        cp_key = config_hash(setup.data_key, config_key(cp_cfg), recipe.cells_only, recipe.clusters)
        nn_folder, cp_folder = models / f"nnunet-{nn_key}", models / f"cellpose-{cp_key}"
        if not cached(nn_folder, args.reuse):
            train_nnunet(nn_cfg, train, data["val"], nn_folder, device)
        if not cached(cp_folder, args.reuse):
            train_cellpose(cp_cfg, recipe.cells_only, train, data["val"], cp_folder, device)
        for name, folder in (("nnunet", nn_folder), ("cellpose", cp_folder)):
            info = json.loads((folder / "DONE.json").read_text())
            training[f"{recipe.key}/{name}"] = info
            per_epoch = f", {info['epoch_seconds']:.1f} s per epoch" if info.get("epoch_seconds") else ""
            log(f"{recipe.key}/{name}: {folder.name}, trained in {info['seconds']:.0f} s{per_epoch}")
        trained.append(Models(recipe=recipe, nn_folder=nn_folder, cp_folder=cp_folder))
    main_models = trained[0]
    rf_key = config_hash(main_models.nn_folder.name, setup.tta, config_key(setup.refinement))
    rf_folder = models / f"refinement-{rf_key}"
    if not cached(rf_folder, args.reuse):
        from cytoseg.backends.nnunet import NnUNetBackend

        nnunet = NnUNetBackend(artifacts=main_models.nn_folder, settings={"use_mirroring": setup.tta}, device=device)
        train_refinement(setup, data, nnunet, rf_folder, device)
        del nnunet
    training["refinement"] = json.loads((rf_folder / "DONE.json").read_text())

    log("evaluating on the test split")
    results, per_stage = evaluate(setup, data, main_models, rf_folder, device)
    extra: dict[str, dict[str, dict[str, Any]]] = {}
    for models_of in trained[1:]:
        log(f"evaluating recipe {models_of.recipe.key}")
        extra[models_of.recipe.key] = evaluate_recipe(setup, data, models_of, device)
    records, checks = report(results, extra, setup)

    csv_file, json_file = base / "table.csv", base / "table.json"
    keys = list(dict.fromkeys(k for r in records for k in r))
    with csv_file.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)
    json_file.write_text(
        json.dumps(
            {
                "data": setup.data_key,
                "device": device,
                "threads": args.threads,
                "tta": setup.tta,
                "rows": records,
                "checks": checks,
                "seconds_per_stage": per_stage,
                "difficulty": setup.difficulty,
                "recipes": [dataclasses.asdict(r) for r in setup.recipes],
                "models": {
                    **{m.recipe.key: {"nnunet": str(m.nn_folder), "cellpose": str(m.cp_folder)} for m in trained},
                    "refinement": str(rf_folder),
                },
                "training": training,
                "paper_a": PAPER_A,
                "wall_seconds": time.perf_counter() - started,
            },
            indent=1,
            default=str,
        )
    )
    print(f"\ntable: {csv_file}\n       {json_file}\nwall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
