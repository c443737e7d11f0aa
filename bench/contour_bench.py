"""Vertices and fidelity of the stored contours: the staircase method against the smooth one.

Issue #13: proposals and click results should be sub-pixel contours with few vertices whose
rasterised IoU with the mask stays >= 0.95 per cell. This script outlines every visible
instance of synthetic fields (``cytoseg.synthetic``, normal and hard mode; ground truth, so the
numbers measure the outlining alone) with both methods of ``cytoseg.contours.instances_to_polygons``
at the tolerance pre-segmentation stores them with, rasterises each polygon back
(``polygon_rasterize``, the pixel-centre rule) and prints, per mode and method: mean vertices
per cell (and for erythrocytes alone, the smallest objects), mean and minimum IoU with the
instance mask itself, the share of cells with IoU >= 0.95, the minimum IoU with the cell's
outline (its largest part, holes filled: what a polygon can stand for) and milliseconds per cell.

The IoU is with the raw mask, holes and stray parts included, so a cell whose visible part is
split by a cell on top of it scores below 1 with both methods; the smooth method's guarantee is
with the outline a polygon can stand for (largest part, holes filled; see ``cytoseg.contours``).

    .venv/bin/python bench/contour_bench.py            # 6 fields of 512x384 per mode, ~1 min on 2 cores
    .venv/bin/python bench/contour_bench.py --quick    # 1 field of 256x256 per mode
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cytoseg.backends.base import Instance, instances_from_label_map  # noqa: E402
from cytoseg.contours import (  # noqa: E402
    CONTOUR_METHODS,
    MIN_IOU,
    instances_to_polygons,
    mask_to_polygon,
    polygon_rasterize,
)
from cytoseg.synthetic import DIFFICULTIES, ERYTHROCYTE, generate_field  # noqa: E402


def field_instances(*, seed: int, width: int, height: int, difficulty: str) -> list[Instance]:
    """The visible part of every instance of one synthetic field."""
    f = generate_field(seed=seed, width=width, height=height, difficulty=difficulty)
    labels = {k + 1: c.label for k, c in enumerate(f.cells)}
    return instances_from_label_map(f.label_map(), labels=labels)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def measure(instances: Sequence[Instance], *, method: str, tolerance: float, min_area: float) -> dict[str, Any]:
    """Vertices, IoU with the mask and time per cell of one method on ``instances``."""
    started = time.perf_counter()
    results = instances_to_polygons(instances, min_area=min_area, tolerance=tolerance, method=method)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    vertices, ious, outline_ious, ery_vertices = [], [], [], []
    for res in results:
        inst = instances[res.index]
        h, w = inst.mask.shape
        back = polygon_rasterize(np.asarray(res.points) - (inst.x0, inst.y0), height=h, width=w)
        ious.append(_iou(back, inst.mask))
        exact = mask_to_polygon(inst.mask, tolerance=0.0)
        outline = polygon_rasterize(list(exact.exterior.coords)[:-1], height=h, width=w) if exact else inst.mask
        outline_ious.append(_iou(back, outline))
        vertices.append(len(res.points))
        if inst.label == ERYTHROCYTE:
            ery_vertices.append(len(res.points))
    iou = np.asarray(ious)
    return {
        "cells": len(results),
        "vertices": float(np.mean(vertices)),
        "erythrocyte_vertices": float(np.mean(ery_vertices)) if ery_vertices else None,
        "iou": float(iou.mean()),
        "iou_min": float(iou.min()),
        "iou_at_least": float(np.mean(iou >= MIN_IOU)),
        "outline_iou_min": float(np.min(outline_ious)),
        "ms_per_cell": 1000 * seconds / max(len(results), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one 256x256 field per mode")
    p.add_argument("--fields", type=int, default=None, help="fields per mode (default 6; --quick 1)")
    p.add_argument("--tolerance", type=float, default=0.5, help="simplification tolerance in pixels (0.5)")
    p.add_argument("--min-area", type=float, default=20.0, help="smallest polygon kept, px² (pre-segmentation's 20)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    fields = args.fields if args.fields is not None else 1 if args.quick else 6
    width, height = (256, 256) if args.quick else (512, 384)
    rows: dict[str, dict[str, Any]] = {}
    for difficulty in DIFFICULTIES:
        instances: list[Instance] = []
        for i in range(fields):
            instances += field_instances(seed=40_000 + i, width=width, height=height, difficulty=difficulty)
        for method in CONTOUR_METHODS:
            rows[f"{difficulty} / {method}"] = measure(
                instances, method=method, tolerance=args.tolerance, min_area=args.min_area
            )
    print(
        f"\n{fields} synthetic field(s) of {width}x{height} per mode, tolerance {args.tolerance} px, "
        f"IoU of the rasterised polygon with the instance mask"
    )
    header = ["mode / method", "cells", "vertices/cell", "erythrocyte", "mean IoU", "min IoU", f">={MIN_IOU}"]
    header += ["min IoU outline", "ms/cell"]
    lines = [header]
    for name, r in rows.items():
        ery = r["erythrocyte_vertices"]
        lines.append(
            [
                name,
                str(r["cells"]),
                f"{r['vertices']:.1f}",
                "-" if ery is None else f"{ery:.1f}",
                f"{r['iou']:.4f}",
                f"{r['iou_min']:.3f}",
                f"{100 * r['iou_at_least']:.1f}%",
                f"{r['outline_iou_min']:.3f}",
                f"{r['ms_per_cell']:.2f}",
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for k, row in enumerate(lines):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
