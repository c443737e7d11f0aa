"""Accuracy of the fast pre-segmentation configuration against the paper configuration.

``bench/presegment_bench.py`` times two configurations of the two-stage pipeline (nnU-Net v2 +
Cellpose 3); this script checks, on paper A's synthetic benchmark (``bench/paper_table.py``:
same data, same training schedules, same metrics), that the fast one loses at most 0.01 Dice
and 0.01 precision@0.7 against the paper one. It trains four models (two nnU-Net plans, two
Cellpose scales) and evaluates the two configurations plus one row per change between them, so
that a change that costs accuracy shows up by name:

* ``paper``: the benchmark's nnU-Net plan (``paper_table``'s: the planner's stages and 2 convs
  per stage; on the CPU default with its features halved to 16..256 for training time) with
  tile step 0.5 + Gaussian weighting, no mirroring; Cellpose trained at the labels' size and run
  with its defaults (224 px tiles with 10 % overlap, flow quality check 0.4, 200 dynamics
  iterations);
* ``fast``: the ``fast`` training preset (``cytoseg.trainers.presets``): a 5-stage 16..128-feature plan
  with 1 conv per stage, the image as one tile without Gaussian weighting; Cellpose in 160 px
  tiles (batches of 4) with 60 dynamics iterations run only on nnU-Net's foreground.

Rows marked "(rejected)" are speed-ups that were measured and left out of the fast preset
because they cost accuracy here: Cellpose's network on the whole image as one tile, no flow
quality check, and Cellpose trained to see cells at a smaller scale (``--alt-scales``;
``CellposeTrainConfig.network_scale``: 0.5 is a quarter of the pixels).

Models are cached beside ``paper_table``'s (``var/bench/paper_table/<data>/models/``; the paper
configuration's two models are the very ones ``paper_table`` trains, keyed by the same hash), so
``--reuse`` after either script skips their training. Results go to ``fast_accuracy.json``
there.

    .venv/bin/python bench/fast_accuracy.py --quick          # smoke run, a few minutes
    .venv/bin/python bench/fast_accuracy.py                  # CPU default (256x256, 24/6/12), ~75 min on 2 cores
    .venv/bin/python bench/fast_accuracy.py --reuse          # evaluate again without training
    .venv/bin/python bench/fast_accuracy.py --paper --device cuda   # paper A's sizes and schedules
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import paper_table as pt  # noqa: E402  (a sibling script, not a package)

from cytoseg.trainers.presets import FAST_CELLPOSE_SCALE, FAST_INFERENCE, FAST_PLAN  # noqa: E402

TOLERANCE = {"dice": 0.01, "p70": 0.01}


@dataclass(frozen=True)
class Variant:
    name: str
    nnunet: str  # "paper" or "fast": which trained plan
    scale: float  # which trained Cellpose (its network_scale)
    nn_fast: bool  # the fast preset's nnU-Net inference settings
    cellpose: dict[str, Any]  # Cellpose settings
    restrict: bool = False  # dynamics only on nnU-Net's foreground


def variants_build(args: argparse.Namespace) -> list[Variant]:
    """The two configurations and, between them, one row per change (and the rejected ones)."""
    fast_cp = {
        **FAST_INFERENCE["cellpose"],
        **{
            k: v
            for k, v in (
                ("niter", args.fast_niter),
                ("flow_threshold", args.fast_flow_threshold),
                ("bsize", args.fast_bsize),
            )
            if v is not None
        },
    }
    restrict = bool(FAST_INFERENCE["two_stage"]["restrict_masks"])
    out = [
        Variant(PAPER, "paper", 1.0, False, {}),
        Variant("  fast nnU-Net plan + inference", "fast", 1.0, True, {}),
        Variant("  fast Cellpose inference", "paper", args.fast_scale, False, fast_cp, restrict),
        Variant("  (rejected) Cellpose as one tile", "paper", 1.0, False, {"bsize": 0}),
        Variant("  (rejected) no flow quality check", "paper", 1.0, False, {"flow_threshold": 0.0}),
    ]
    for scale in args.alt_scales:
        out.append(Variant(f"  (rejected) Cellpose trained at scale {scale}", "paper", scale, False, {}))
        out.append(
            Variant(
                f"  (rejected) fast, Cellpose at scale {scale} in one tile",
                "fast",
                scale,
                True,
                {**fast_cp, "bsize": 0},
                restrict,
            )
        )
    out.append(Variant(FAST, "fast", args.fast_scale, True, fast_cp, restrict))
    return out


PAPER, FAST = "paper configuration", "fast configuration"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run (paper_table's --quick sizes)")
    p.add_argument("--paper", action="store_true", help="paper A's sizes and schedules (needs a GPU)")
    p.add_argument("--reuse", action="store_true", help="reuse trained models found in the cache")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)")
    p.add_argument("--cache", type=Path, default=pt.BENCH_DIR, help=f"cache folder (default {pt.BENCH_DIR})")
    g = p.add_argument_group("fast configuration", "defaults: the fast training preset (cytoseg.trainers.presets)")
    cp = FAST_INFERENCE["cellpose"]
    for flag, key, title in (
        ("stages", "n_stages", "stages"),
        ("features", "base_features", "first-stage features"),
        ("max-features", "max_features", "feature cap"),
        ("convs", "n_conv_per_stage", "convs per stage"),
    ):
        g.add_argument(
            f"--fast-{flag}", type=int, default=FAST_PLAN[key], help=f"nnU-Net plan: {title} ({FAST_PLAN[key]})"
        )
    g.add_argument(
        "--fast-scale", type=float, default=FAST_CELLPOSE_SCALE, help=f"Cellpose network scale ({FAST_CELLPOSE_SCALE})"
    )
    g.add_argument("--fast-niter", type=int, default=None, help=f"Cellpose dynamics iterations ({cp.get('niter')})")
    g.add_argument(
        "--fast-flow-threshold",
        type=float,
        default=None,
        help=f"Cellpose flow quality threshold ({cp.get('flow_threshold', 0.4)}; 0 is off)",
    )
    g.add_argument(
        "--fast-bsize",
        type=int,
        default=None,
        help=f"Cellpose tile size ({cp.get('bsize', 224)}; 0 is the image in one tile)",
    )
    g.add_argument(
        "--alt-scales",
        type=lambda t: [float(v) for v in t.split(",") if v],
        default=[0.5],
        help="other Cellpose network scales to train and evaluate (comma list; default 0.5; '' none)",
    )
    return p.parse_args(argv)


def settings_for(v: Variant, setup: pt.Setup) -> dict[str, Any]:
    nn: dict[str, Any] = {"use_mirroring": setup.tta}
    if v.nn_fast:
        nn.update(FAST_INFERENCE["nnunet"])
    return {"nnunet": nn, "cellpose": dict(v.cellpose), "restrict_masks": v.restrict}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from cytoseg.backends.two_stage import TwoStageBackend
    from cytoseg.device import device_default
    from cytoseg.trainers.configs import NnUNetPlansOverride

    device = device_default() if args.device == "auto" else args.device
    pt_argv = [a for a, on in (("--quick", args.quick), ("--paper", args.paper)) if on]
    setup = pt.setup_build(pt.parse_args(pt_argv))
    fast_setup = copy.deepcopy(setup)
    fast_setup.nnunet.dataset_id, fast_setup.nnunet.dataset_name = 632, "PaperTableFast"
    fast_setup.nnunet.plans = NnUNetPlansOverride(
        batch_size=setup.nnunet.plans.batch_size,
        n_stages=args.fast_stages,
        base_features=args.fast_features,
        max_features=args.fast_max_features,
        n_conv_per_stage=args.fast_convs,
    )

    base = Path(args.cache).resolve() / setup.data_key
    models = base / "models"
    models.mkdir(parents=True, exist_ok=True)
    pt.log(f"data {setup.data_key}, device {device}, torch threads {torch.get_num_threads()}, cache {base}")
    data = pt.data_build(setup)
    variants = variants_build(args)

    folders: dict[str, Path] = {}
    training: dict[str, Any] = {}
    base_recipe = pt.RECIPES["base"]
    for key, s in (("paper", setup), ("fast", fast_setup)):
        # keyed as paper_table keys its base recipe, so the paper configuration's model is shared
        nn_folder = models / f"nnunet-{pt.config_hash(s.data_key, pt.config_key(s.nnunet), base_recipe.clusters)}"
        if not pt.cached(nn_folder, args.reuse):
            pt.train_nnunet(s.nnunet, data["train"], data["val"], nn_folder, device)
        folders[f"nnunet_{key}"] = nn_folder
    for scale in sorted({v.scale for v in variants}, reverse=True):
        s = copy.deepcopy(setup)
        s.cellpose.network_scale = scale
        cp_key = pt.config_hash(s.data_key, pt.config_key(s.cellpose), base_recipe.cells_only, base_recipe.clusters)
        cp_folder = models / f"cellpose-{cp_key}"
        if not pt.cached(cp_folder, args.reuse):
            pt.train_cellpose(s.cellpose, base_recipe.cells_only, data["train"], data["val"], cp_folder, device)
        folders[f"cellpose_{scale}"] = cp_folder
    for name, folder in folders.items():
        info = json.loads((folder / "DONE.json").read_text())
        training[name] = {"folder": str(folder), **info}
        extra = f", plan {info['plans']}" if info.get("plans") else f", diam_labels {info.get('diam_labels')}"
        pt.log(f"{name}: trained in {info['seconds']:.0f} s{extra}")

    test = data["test"]
    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        settings = settings_for(v, setup)
        backend = TwoStageBackend(
            artifacts=None,
            device=device,
            settings={
                **settings,
                "nnunet_model_folder": str(folders[f"nnunet_{v.nnunet}"]),
                "cellpose_model_file": str(folders[f"cellpose_{v.scale}"] / "cellpose.pth"),
            },
        )
        backend.predict(test.images[0])  # warm-up: first-call allocations are not the configuration's cost
        preds: list[Any] = []
        totals: dict[str, float] = {}
        for img in test.images:
            pred = backend.predict(img)
            for stage, seconds in pred.timings.items():
                totals[stage] = totals.get(stage, 0.0) + seconds
            preds.append(pred.instances)
        per_stage = {k: t / len(test.images) for k, t in totals.items()}
        results[v.name] = {
            **pt.split_score(test, preds),
            "seconds": sum(per_stage.values()),
            "seconds_per_stage": per_stage,
            "settings": settings,
            "nnunet": v.nnunet,
            "cellpose_scale": v.scale,
        }
        r = results[v.name]
        pt.log(f"{v.name.strip()}: Dice {pt.fmt(r['dice'])}, P@0.7 {pt.fmt(r['p70'])}, {r['seconds']:.2f} s/img")
        del backend

    header = [
        "configuration",
        "Dice",
        "IoU",
        "P@0.7",
        "AP50",
        "DSB",
        "pred/gt",
        "s/img",
        "nnU-Net",
        "CP net",
        "CP masks",
    ]
    lines = [header]
    for v in variants:
        r = results[v.name]
        st = r["seconds_per_stage"]
        lines.append(
            [
                v.name,
                pt.fmt(r["dice"]),
                pt.fmt(r["iou"]),
                pt.fmt(r["p70"]),
                pt.fmt(r["ranked_ap50"]),
                pt.fmt(r["dsb"]),
                f"{int(r['n_pred'] or 0)}/{int(r['n_gt'] or 0)}",
                pt.fmt(r["seconds"], 2),
                pt.fmt(st.get("nnunet"), 2),
                pt.fmt(st.get("cellpose_net"), 2),
                pt.fmt(st.get("cellpose_masks"), 2),
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    print(
        f"\nSynthetic benchmark {setup.width}x{setup.height}, {setup.n_train}/{setup.n_val}/{setup.n_test} images, "
        f"device {device}, {args.threads} threads (times are this benchmark's image size, not 1024x768)"
    )
    for k, row in enumerate(lines):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    paper, fast = results[PAPER], results[FAST]
    checks = []
    for key, title in (("dice", "Dice"), ("p70", "P@0.7")):
        delta = (fast[key] or 0.0) - (paper[key] or 0.0)
        checks.append(
            {
                "metric": key,
                "paper": paper[key],
                "fast": fast[key],
                "delta": delta,
                "tolerance": TOLERANCE[key],
                "pass": delta >= -TOLERANCE[key],
            }
        )
        print(
            f"{'PASS' if checks[-1]['pass'] else 'FAIL'}  fast {title} {pt.fmt(fast[key])} vs paper "
            f"{pt.fmt(paper[key])}: {delta:+.3f} (allowed -{TOLERANCE[key]})"
        )
    out = base / "fast_accuracy.json"
    out.write_text(
        json.dumps(
            {
                "data": setup.data_key,
                "device": device,
                "threads": args.threads,
                "results": results,
                "checks": checks,
                "training": training,
                "wall_seconds": time.perf_counter() - started,
            },
            indent=1,
            default=str,
        )
    )
    print(f"\nresults: {out}\nwall time {time.perf_counter() - started:.0f} s")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
