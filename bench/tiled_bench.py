"""Tiled pre-segmentation against the single-image path (GitHub issue #14, its benchmark's
pre-segmentation part): seconds per megapixel and peak memory, on the same model.

1. writes a synthetic slide (``cytoseg.slide_synthetic``: a mosaic of synthetic fields, known
   masks) of ``--size`` (default 8000 x 6000, the issue's JPEG) as ``--kind`` (default JPEG, the
   issue's case; ``pyramidal-tiff`` or ``svs`` for a scanner-like file);
2. **single-image path** (what ``inference.services.image_presegment_run`` does with an image's
   display PNG): decode the whole file into one array (PIL), one ``backend.predict`` over it,
   polygons (``instances_to_polygons``);
3. **tiled path** (what the tile tasks of ``inference.tiled`` do, in one process, without the
   database): ``region_reader`` reads each tile's region with its margin, ``tiles_segment``
   predicts them in batches and keeps the owned cells as polygons, ``cells_stitch`` joins them;
4. each path runs in a process of its own, so that its peak resident memory (``ru_maxrss``) is
   its own; prints seconds, seconds per megapixel, cells and peak RSS of both, as a table and
   as JSON.

The model is the classical watershed backend (``--backend``: any backend that needs no model
files; CPU). A trained model's ``predict`` is slower per pixel and its tiles batch on a GPU, so
the classical numbers measure the tiling's own overhead (margins read and segmented twice, the
stitch) against the whole-image pass.

**Batching** (``--batching``): the tiled path of a learned backend (``--backend cellpose``,
``nnunet`` or ``two_stage``) twice, each in its own process: tile by tile (``--batch 1``: one
``predict`` per read, what a backend without ``predict_batch`` gets) and batched (``--batch``
reads per ``predict_batch`` call: the network tiles or patches of all of them in shared network
passes), on ``--device`` (default cpu). Prints seconds per tile of both and whether the stitched
cells are identical (a digest of them). The model: ``--artifacts`` (a folder with ``nnunet/`` and
``cellpose/``, as the two-stage backend reads it), or, without it, the tests' tiny models
(``cytoseg.tests.tiny_models``; full Cellpose network, small nnU-Net) trained once into the
work folder. Backend settings: ``--settings`` (JSON).

    .venv/bin/python bench/tiled_bench.py                       # 8000 x 6000 JPEG
    .venv/bin/python bench/tiled_bench.py --quick               # 2048 x 1536
    .venv/bin/python bench/tiled_bench.py --kind pyramidal-tiff --tile 512
    .venv/bin/python bench/tiled_bench.py --batching --backend two_stage --size 2048x2048 --tile 512

``slide_bench.py`` may call :func:`tiled_bench` with the slide it built.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_DIR = ROOT / "var" / "bench" / "tiled"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_single(path: Path, backend_name: str) -> dict[str, Any]:
    """The single-image path over the file at ``path``."""
    import io

    from PIL import Image as PILImage

    from cytoseg.backends import backend_get
    from cytoseg.contours import instances_to_polygons

    PILImage.MAX_IMAGE_PIXELS = None  # the bench's own file
    backend = backend_get(name=backend_name, artifacts=None, settings={}, device="cpu")
    started = time.perf_counter()
    with PILImage.open(io.BytesIO(path.read_bytes())) as picture:
        import numpy as np

        rgb = np.asarray(picture.convert("RGB"))
    decoded = time.perf_counter()
    prediction = backend.predict(rgb)
    predicted = time.perf_counter()
    contours = instances_to_polygons(prediction.instances, min_area=20.0)
    done = time.perf_counter()
    return {
        "seconds": done - started,
        "decode_s": decoded - started,
        "predict_s": predicted - decoded,
        "contours_s": done - predicted,
        "cells": len(contours),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _backend_artifacts(name: str, artifacts: str | None) -> Path | None:
    """Where a backend of ``name`` finds its model in a two-stage artifacts folder."""
    if artifacts is None:
        return None
    folder = Path(artifacts)
    return folder / name if name in ("nnunet", "cellpose") else folder


def run_tiled(
    path: Path, backend_name: str, tile: int, margin: int, batch: int, *,
    artifacts: str | None = None, settings: dict[str, Any] | None = None, device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """The tiled path over the file at ``path``."""
    import hashlib

    from cytoseg.backends import backend_get
    from cytoseg.tiled import TilePlan, cells_stitch, region_reader, stitch_summary, tiles_segment

    backend = backend_get(
        name=backend_name, artifacts=_backend_artifacts(backend_name, artifacts), settings=settings or {}, device=device
    )
    started = time.perf_counter()
    reader = region_reader(path)
    plan = TilePlan(reader.width, reader.height, tile=tile, margin=margin)
    opened = time.perf_counter()
    kept = []
    for _, cells in tiles_segment(backend, reader, plan, list(range(plan.count)), min_area=20.0, batch=batch):
        kept.extend(cells)
    segmented = time.perf_counter()
    stitched = cells_stitch(kept)
    done = time.perf_counter()
    reader.close()
    digest = hashlib.sha1(json.dumps(sorted(json.dumps(c.to_json()) for c in stitched)).encode()).hexdigest()
    return {
        "batch": batch,
        "cells_digest": digest,
        "seconds": done - started,
        "open_s": opened - started,
        "tiles_s": segmented - opened,
        "stitch_s": done - segmented,
        "tiles": plan.count,
        "seconds_per_tile": (segmented - opened) / plan.count,
        **stitch_summary(stitched),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def tiny_artifacts(workdir: Path) -> Path:
    """The tests' tiny nnU-Net and Cellpose (``cytoseg.tests.tiny_models``), trained once into
    ``workdir/models`` as a two-stage artifacts folder."""
    import shutil

    art = workdir / "models" / "tiny"
    if (art / "nnunet" / "plans.json").is_file() and (art / "cellpose" / "cellpose.pth").is_file():
        return art
    from cytoseg.tests.tiny_models import cellpose_trained, nnunet_trained

    base = workdir / "models" / "tiny-jobs"
    base.mkdir(parents=True, exist_ok=True)
    nn = nnunet_trained(base)
    cp, _ = cellpose_trained(base)
    shutil.rmtree(art, ignore_errors=True)
    shutil.copytree(nn.model_folder, art / "nnunet")
    shutil.copytree(cp.model_file.parent, art / "cellpose")
    return art


def batching_bench(
    path: Path, *, width: int, height: int, backend: str, artifacts: Path, settings: dict[str, Any],
    tile: int, margin: int, batch: int, device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """The tiled path of a learned backend tile by tile and batched (each in a process of its
    own): seconds per tile of both, and whether their stitched cells are identical."""
    out: dict[str, Any] = {
        "size": f"{width}x{height}", "megapixels": round(width * height / 1e6, 2), "backend": backend,
        "device": device, "settings": settings,
    }  # fmt: skip
    for name, size in (("per_tile", 1), ("batched", batch)):
        spec = {
            "kind": "tiled", "path": str(path), "backend": backend, "tile": tile, "margin": margin,
            "batch": size, "artifacts": str(artifacts), "settings": settings, "device": device,
        }  # fmt: skip
        out[name] = _child(["--_run", json.dumps(spec)])
    out["identical_cells"] = out["per_tile"]["cells_digest"] == out["batched"]["cells_digest"]
    out["speedup"] = out["per_tile"]["tiles_s"] / out["batched"]["tiles_s"]
    return out


def tiled_bench(
    path: Path, *, width: int, height: int, backend: str = "watershed", tile: int = 1024, margin: int = 80,
    batch: int = 4, single: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Both paths over the slide file at ``path`` (each in a process of its own); ``single``
    False skips the whole-image pass (a slide too large to decode whole)."""
    megapixels = width * height / 1e6
    out: dict[str, Any] = {"size": f"{width}x{height}", "megapixels": round(megapixels, 2), "backend": backend}
    spec = {"kind": "tiled", "path": str(path), "backend": backend, "tile": tile, "margin": margin, "batch": batch}
    tiled = _child(["--_run", json.dumps(spec)])
    tiled["seconds_per_mp"] = tiled["seconds"] / megapixels
    out["tiled"] = tiled
    if single:
        whole = _child(["--_run", json.dumps({"kind": "single", "path": str(path), "backend": backend})])
        whole["seconds_per_mp"] = whole["seconds"] / megapixels
        out["single"] = whole
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="8000x6000", help="slide WIDTHxHEIGHT (default 8000x6000)")
    p.add_argument("--quick", action="store_true", help="a 2048x1536 slide")
    p.add_argument("--kind", default="jpeg", help="jpeg (default), pyramidal-tiff, svs, png, tiff")
    p.add_argument("--backend", default="watershed", help="a backend without model files (default watershed)")
    p.add_argument("--tile", type=int, default=1024, help="core side in pixels (default 1024)")
    p.add_argument("--margin", type=int, default=80, help="margin in pixels (default 80: two 40 px cells)")
    p.add_argument("--batch", type=int, default=4, help="tiles per backend call (default 4)")
    p.add_argument("--no-single", action="store_true", help="skip the whole-image pass")
    p.add_argument("--batching", action="store_true", help="a learned backend's tiles one by one against batched")
    p.add_argument("--artifacts", type=Path, help="--batching: folder with nnunet/, cellpose/ (default: tiny models)")
    p.add_argument("--settings", type=json.loads, default={}, help="--batching: the backend's settings (JSON)")
    p.add_argument("--device", default="cpu", help="--batching: torch device (default cpu)")
    p.add_argument("--workdir", type=Path, default=BENCH_DIR)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_run"]:  # a child: one path, JSON on its last line
        spec = json.loads(argv[1])
        path, backend = Path(spec["path"]), spec["backend"]
        if spec["kind"] == "single":
            result = run_single(path, backend)
        else:
            result = run_tiled(
                path, backend, spec["tile"], spec["margin"], spec["batch"],
                artifacts=spec.get("artifacts"), settings=spec.get("settings"), device=spec.get("device", "cpu"),
            )  # fmt: skip
        print(json.dumps(result))
        return 0
    args = parse_args(argv)
    from cytoseg.slide_synthetic import slide_synthetic, slide_write

    width, height = (2048, 1536) if args.quick else (int(v) for v in args.size.lower().split("x"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    suffix = {"jpeg": "jpg", "png": "png"}.get(args.kind, "tif")
    path = args.workdir / f"slide-{width}x{height}-{args.kind}.{suffix}"
    if not path.exists():
        started = time.perf_counter()
        slide = slide_synthetic(width=width, height=height, seed=1)
        slide_write(slide, path, kind=args.kind)
        print(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    if args.batching:
        if args.backend not in ("cellpose", "nnunet", "two_stage"):
            raise SystemExit("--batching needs a learned backend: cellpose, nnunet or two_stage")
        artifacts = (args.artifacts or tiny_artifacts(args.workdir)).resolve()
        result = batching_bench(
            path, width=width, height=height, backend=args.backend, artifacts=artifacts, settings=args.settings,
            tile=args.tile, margin=args.margin, batch=args.batch, device=args.device,
        )  # fmt: skip
        print(f"\n{result['size']} ({result['megapixels']} MP) {args.kind}, backend {args.backend}, {args.device}")
        print(f"{'path':<9} {'batch':>5} {'tiles':>6} {'s / tile':>9} {'tiles s':>8} {'cells':>7}")
        for name in ("per_tile", "batched"):
            row = result[name]
            print(
                f"{name:<9} {row['batch']:5d} {row['tiles']:6d} {row['seconds_per_tile']:9.2f} "
                f"{row['tiles_s']:8.1f} {row['cells']:7d}"
            )
        print(f"batched / per tile: {result['speedup']:.2f}x faster; identical cells: {result['identical_cells']}")
        print(json.dumps(result))
        return 0
    result = tiled_bench(
        path, width=width, height=height, backend=args.backend, tile=args.tile, margin=args.margin,
        batch=args.batch, single=not args.no_single,
    )  # fmt: skip
    print(f"\n{result['size']} ({result['megapixels']} MP) {args.kind}, backend {args.backend}, CPU")
    print(f"{'path':<8} {'seconds':>8} {'s / MP':>8} {'cells':>7} {'peak RSS MB':>12}")
    for name in ("single", "tiled"):
        row = result.get(name)
        if row:
            print(
                f"{name:<8} {row['seconds']:8.1f} {row['seconds_per_mp']:8.2f} {row['cells']:7d} "
                f"{row['peak_rss_mb']:12.0f}"
            )
    tiled = result["tiled"]
    print(
        f"tiled: {tiled['tiles']} tiles of {args.tile} px + {args.margin} px margin, "
        f"{tiled['seconds_per_tile']:.2f} s per tile, stitch {tiled['stitch_s']:.1f} s, "
        f"{tiled['border']} cells near a tile line, {tiled['cut']} cut"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
