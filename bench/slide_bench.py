"""Whole slides end to end (GitHub issue #14, first half of its benchmark).

1. builds a large synthetic slide from the project's own generator (``cytoseg.slide_synthetic``:
   a mosaic of synthetic fields with known masks, about 250,000 instances at 40,000 x 30,000)
   and writes it as a pyramidal JPEG TIFF with libvips (``--kind``: an SVS-like Aperio TIFF, read
   through OpenSlide, or a plain JPEG, PNG or TIFF);
2. starts the platform as in production: gunicorn (one worker process) and one Celery worker on
   the ``default`` queue (prefork, one child), on a test database of its own;
3. uploads the slide over HTTP (multipart, streamed) and times upload -> 201 and upload -> tile
   pyramid built (the worker's ``annotations.pyramid_build``);
4. time to first tile over HTTP (the image's detail, then its one-tile level and a
   full-resolution tile in the middle), cold;
5. opens the slide in the editor in headless Chromium (Debian's, software rendering) and measures
   the time until the first tile is drawn, then pan and zoom: frames per second
   (requestAnimationFrame ticks while the mouse drags / the wheel turns) and the tiles fetched;
6. peak resident memory (VmHWM) of the web process and of the worker's child that built the
   pyramid;
7. with ``--presegment``: tiled pre-segmentation of the slide file against the single-image path,
   seconds per megapixel and peak memory (``bench/tiled_bench.py``, the watershed backend).
8. with ``--export``: the slide's ground truth as its annotation layer, then COCO, GeoJSON,
   nnU-Net and Cellpose exports as worker jobs: seconds, download, bytes and the worker's peak
   memory for each (``bench/export_bench.py``).

    .venv/bin/python bench/slide_bench.py                   # 40,000 x 30,000
    .venv/bin/python bench/slide_bench.py --quick           # 4096 x 3072 (CI size)
    .venv/bin/python bench/slide_bench.py --size 20000x15000

Uses the configured database server (a test database of its own) and broker
(``CELERY_BROKER_URL``). Everything it writes lies under ``var/bench/slides/``; the slide file is
kept there between runs (``--rebuild`` writes it again).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))

BENCH_DIR = ROOT / "var" / "bench" / "slides"
PASSWORD = "slide-bench-" + secrets.token_hex(6)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="40000x30000", help="slide WIDTHxHEIGHT (default 40000x30000)")
    p.add_argument("--quick", action="store_true", help="a 4096x3072 slide (the CI size)")
    p.add_argument("--rebuild", action="store_true", help="write the slide file again even if it exists")
    p.add_argument(
        "--kind",
        default="pyramidal-tiff",
        choices=["pyramidal-tiff", "svs", "jpeg", "png", "tiff"],
        help="file format of the slide (default pyramidal-tiff; svs: an Aperio TIFF read through OpenSlide)",
    )
    p.add_argument("--port", type=int, default=8140)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the pyramid")
    p.add_argument("--workdir", type=Path, default=BENCH_DIR)
    p.add_argument(
        "--presegment",
        action="store_true",
        help="also time tiled pre-segmentation of the slide against the single-image path "
        "(bench/tiled_bench.py; the whole-image pass only up to 64 megapixels)",
    )
    p.add_argument(
        "--export",
        action="store_true",
        help="also time the exports of the slide with its ground truth as the layer (bench/export_bench.py)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.size = "4096x3072"
    width, _, height = args.size.partition("x")
    args.width, args.height = int(width), int(height)
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- memory of a process tree --------------------------------------------------------------


def _status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


class PeakMemory:
    """The largest resident size (VmHWM, kept by the kernel) seen of each process under a root,
    polled so that a child that exits (a recycled worker child) is not missed."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.25)

    def sample(self) -> None:
        for pid in [self.root, *_children(self.root)]:
            self.peaks[pid] = max(self.peaks.get(pid, 0), _status(pid, "VmHWM"))

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peaks


# --- the slide ------------------------------------------------------------------------------


def slide_file(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    from cytoseg.slide_synthetic import slide_synthetic, slide_write

    suffix = {"jpeg": "jpg", "png": "png", "svs": "svs"}.get(args.kind, "tif")
    path = args.workdir / f"slide-{args.width}x{args.height}-{args.kind}.{suffix}"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and not args.rebuild:
        log(f"slide {path} exists (--rebuild to write it again)")
        return path, json.loads(meta_path.read_text())
    started = time.perf_counter()
    slide = slide_synthetic(width=args.width, height=args.height, distinct=8, seed=1)
    rendered = time.perf_counter() - started
    cells = slide.cell_count()
    log(f"slide {args.width}x{args.height}: {len(slide.fields)} distinct fields rendered in {rendered:.1f} s")
    started = time.perf_counter()
    slide_write(slide, path, kind=args.kind, mpp=0.25, magnification=40)
    meta = {
        "instances": cells,
        "cells": slide.cell_count(label=1),
        "erythrocytes": slide.cell_count(label=2),
        "render_s": rendered,
        "write_s": time.perf_counter() - started,
        "bytes": path.stat().st_size,
    }
    meta_path.write_text(json.dumps(meta))
    log(f"written {path} ({meta['bytes'] / 1e6:.0f} MB, {cells} instances) in {meta['write_s']:.1f} s")
    return path, meta


# --- the platform ---------------------------------------------------------------------------


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}")


Process = subprocess.Popen[bytes]


def platform_start(env: dict[str, str], args: argparse.Namespace) -> tuple[Process, Process]:
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=ROOT, env=env, check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    web = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{args.port}", "-w", "1",
            "--timeout", "600", "--access-logfile", "-",
        ],
        cwd=ROOT, env=env, stdout=(args.workdir / "web.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "--pool", "prefork",
            "--concurrency", "1", "-n", f"slides-{uuid.uuid4().hex[:6]}@%h", "--without-gossip",
            "--without-mingle", "--loglevel", "INFO",
        ],
        cwd=ROOT, env=env, stdout=(args.workdir / "worker.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    _wait_port(args.port)
    return web, worker


def platform_stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


# --- the browser ----------------------------------------------------------------------------

FPS_START = """() => {
  window.__frames = [];
  window.__fpsOn = true;
  const tick = (t) => { if (!window.__fpsOn) return; window.__frames.push(t); requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
}"""
FPS_STOP = """() => {
  window.__fpsOn = false;
  const f = window.__frames;
  if (f.length < 2) return { fps: 0, p95_ms: 0, frames: f.length };
  const gaps = f.slice(1).map((t, i) => t - f[i]).sort((a, b) => a - b);
  const duration = f[f.length - 1] - f[0];
  return { fps: (f.length - 1) * 1000 / duration, p95_ms: gaps[Math.floor(gaps.length * 0.95)], frames: f.length };
}"""


def browser_run(base: str, username: str, image_id: int, project_id: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    tiles: list[tuple[float, int]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on(
            "response",
            lambda r: tiles.append((time.perf_counter(), r.status)) if "/tiles/" in r.url else None,
        )
        page.goto(f"{base}/#/login")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector(".topbar .user-name")
        tiles.clear()
        opened = time.perf_counter()
        page.goto(f"{base}/#/projects/{project_id}/images/{image_id}")
        page.wait_for_selector(".map canvas")
        deadline = time.perf_counter() + 60
        while not tiles and time.perf_counter() < deadline:
            page.wait_for_timeout(10)
        first_tile_s = tiles[0][0] - opened if tiles else float("nan")
        page.wait_for_selector(".map-overlay", state="hidden")
        page.wait_for_timeout(1500)
        editor_ready_s = time.perf_counter() - opened
        box = page.locator(".map").bounding_box()
        assert box is not None
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

        def measure(action: Any) -> dict[str, Any]:
            before = len(tiles)
            page.evaluate(FPS_START)
            started = time.perf_counter()
            action()
            result = page.evaluate(FPS_STOP)
            result["seconds"] = time.perf_counter() - started
            result["tiles"] = len(tiles) - before
            result["tile_errors"] = sum(1 for _, s in tiles[before:] if s != 200)
            page.wait_for_timeout(500)
            return dict(result)

        def pan() -> None:
            for _ in range(4):
                page.mouse.move(cx + 300, cy + 200)
                page.mouse.down()
                for step in range(1, 41):
                    page.mouse.move(cx + 300 - 15 * step, cy + 200 - 10 * step)
                    page.wait_for_timeout(16)
                page.mouse.up()

        def zoom() -> None:
            page.mouse.move(cx, cy)
            for direction in (-1, 1):
                for _ in range(14):
                    page.mouse.wheel(0, 300 * direction)
                    page.wait_for_timeout(60)

        zoom_result = measure(zoom)
        # pan at full resolution: zoom in first (not measured)
        for _ in range(14):
            page.mouse.wheel(0, -300)
            page.wait_for_timeout(60)
        page.wait_for_timeout(1500)
        pan_result = measure(pan)
        page.screenshot(path=str(BENCH_DIR / "slide-bench.png"))
        browser.close()
    return {"first_tile_s": first_tile_s, "editor_ready_s": editor_ready_s, "zoom": zoom_result, "pan": pan_result}


# --- the run --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    platform_dir = args.workdir / "platform"
    shutil.rmtree(platform_dir / "media", ignore_errors=True)
    os.environ["PLATFORM_VAR_DIR"] = str(platform_dir)
    os.environ.pop("MEDIA_ROOT", None)
    os.environ.pop("STORAGE_URL", None)
    path, meta = slide_file(args)

    import django

    django.setup()
    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import setup_test_environment

    from annotations.models import Image, TileStatus
    from annotations.services.projects import project_create
    from annotations.services.tokens import api_token_create
    from tests.worker import test_database_url

    setup_test_environment()
    db = connection.settings_dict
    if not db["ENGINE"].endswith("sqlite3"):  # a name of its own: never clobber another test database
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_slides"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    from config.celery import app

    app.control.purge()
    env = os.environ | {
        "DATABASE_URL": test_database_url(),
        "DJANGO_SECURE_COOKIES": "false",
        "DJANGO_DEBUG": "false",
    }
    web = worker = None
    results: dict[str, Any] = {"size": [args.width, args.height], "slide": meta}
    try:
        user_model = get_user_model()
        admin = user_model.objects.create_user("slide-admin", password=PASSWORD)
        project = project_create(name="Slides", created_by=admin)
        token = api_token_create(user=admin, name="bench")[1]
        web, worker = platform_start(env, args)
        time.sleep(3)  # the worker connects to the broker; gunicorn's worker has booted
        web_idle = max((_status(pid, "VmRSS") for pid in _children(web.pid)), default=0)
        web_memory, worker_memory = PeakMemory(web.pid), PeakMemory(worker.pid)
        base = f"http://127.0.0.1:{args.port}"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            log(f"uploading {path.name} ({path.stat().st_size / 1e6:.0f} MB)")
            started = time.perf_counter()
            with path.open("rb") as handle:
                upload = {"files": (path.name, handle, "application/octet-stream")}
                response = client.post(f"/api/v1/projects/{project.pk}/images", files=upload)
            upload_s = time.perf_counter() - started
            if response.status_code != 201:
                raise SystemExit(f"upload: {response.status_code} {response.text[:500]}")
            image_id = response.json()[0]["id"]
            log(f"uploaded in {upload_s:.1f} s; building the pyramid")
            while time.perf_counter() - started < args.timeout:
                status, error = Image.objects.filter(pk=image_id).values_list("tile_status", "tile_error").get()
                if status in (TileStatus.DONE, TileStatus.FAILED):
                    break
                time.sleep(0.25)
            built_s = time.perf_counter() - started
            if status != TileStatus.DONE:
                raise SystemExit(f"pyramid: {status} {error}")
            log(f"pyramid built {built_s:.1f} s after the upload started")
            # first tile, cold: the detail (as the editor asks for it), then the tiles
            started = time.perf_counter()
            detail = client.get(f"/api/v1/images/{image_id}").json()
            tiles = detail["tiles"]
            first = client.get(tiles["url"].format(level=tiles["min_level"], col=0, row=0))  # the editor's first tile
            first_tile_s = time.perf_counter() - started
            assert first.status_code == 200, first.status_code
            full = tiles["levels"] - 1
            col, row = args.width // 2 // tiles["tile_size"], args.height // 2 // tiles["tile_size"]
            started = time.perf_counter()
            middle = client.get(tiles["url"].format(level=full, col=col, row=row))
            full_tile_s = time.perf_counter() - started
            assert middle.status_code == 200
            tile_times = []
            cols = -(-args.width // tiles["tile_size"])
            for i in range(50):
                started = time.perf_counter()
                fetched = client.get(tiles["url"].format(level=full, col=(col + 1 + i) % cols, row=row))
                tile_times.append(time.perf_counter() - started)
                assert fetched.status_code == 200, fetched.status_code
        browser = browser_run(base, "slide-admin", image_id, project.pk)
        web_peaks, worker_peaks = web_memory.stop(), worker_memory.stop()
        tile_count = sum(1 for _ in (platform_dir / "media").rglob("*.jpeg"))
        results |= {
            "upload_s": upload_s,
            "upload_to_pyramid_s": built_s,
            "tiles_stored": tile_count,
            "first_tile_http_s": first_tile_s,
            "full_res_tile_http_s": full_tile_s,
            "tile_http_median_ms": sorted(tile_times)[len(tile_times) // 2] * 1000,
            "browser": browser,
            "web_idle_rss_mb": web_idle / 2**20,
            "web_peak_rss_mb": max(v for k, v in web_peaks.items() if k != web.pid) / 2**20,
            "worker_peak_rss_mb": max(v for k, v in worker_peaks.items() if k != worker.pid) / 2**20,
            "worker_master_rss_mb": worker_peaks.get(worker.pid, 0) / 2**20,
        }
        if args.export:
            from export_bench import export_bench  # a sibling script, not a package

            log("exports: the slide's ground truth as its layer, then each export as a job")
            with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
                results["export"] = export_bench(
                    client, project_id=project.pk, image_id=image_id, width=args.width, height=args.height,
                    worker_pid=worker.pid,
                )  # fmt: skip
    finally:
        if web is not None and worker is not None:
            platform_stop(web, worker)
        connection.creation.destroy_test_db(old_name, verbosity=0)
    b = results["browser"]
    print()
    print(f"whole slide {args.width}x{args.height}, {meta['instances']} instances "
          f"({meta.get('cells', '?')} cells, {meta.get('erythrocytes', '?')} erythrocytes), {args.kind} "
          f"{meta['bytes'] / 1e6:.0f} MB; {os.cpu_count()} cores")  # fmt: skip
    print(f"upload (HTTP, streamed)            {results['upload_s']:8.1f} s")
    print(f"upload -> pyramid built            {results['upload_to_pyramid_s']:8.1f} s  ({tile_count} tiles)")
    print(f"first tile over HTTP (cold)        {results['first_tile_http_s'] * 1000:8.0f} ms  (detail + one tile)")
    print(f"full-resolution tile over HTTP     {results['tile_http_median_ms']:8.1f} ms  (median of 50)")
    print(f"editor: first tile drawn           {b['first_tile_s']:8.2f} s  after navigation")
    print(f"zoom (wheel, in and out)           {b['zoom']['fps']:8.1f} fps  (p95 frame {b['zoom']['p95_ms']:.0f} ms, "
          f"{b['zoom']['tiles']} tiles, {b['zoom']['tile_errors']} errors)")  # fmt: skip
    print(f"pan (drag at full resolution)      {b['pan']['fps']:8.1f} fps  (p95 frame {b['pan']['p95_ms']:.0f} ms, "
          f"{b['pan']['tiles']} tiles, {b['pan']['tile_errors']} errors)")  # fmt: skip
    print(
        f"peak RSS web (gunicorn worker)     {results['web_peak_rss_mb']:8.0f} MB  "
        f"(idle after start {results['web_idle_rss_mb']:.0f} MB)"
    )
    print(f"peak RSS worker (pool child)       {results['worker_peak_rss_mb']:8.0f} MB")
    if args.presegment:
        from tiled_bench import tiled_bench  # a sibling script, not a package

        single = args.width * args.height <= 64_000_000
        pre = tiled_bench(path, width=args.width, height=args.height, single=single)
        results["presegment"] = pre
        for name in ("single", "tiled"):
            if name in pre:
                row = pre[name]
                print(
                    f"pre-segmentation, {name:<6} path     {row['seconds_per_mp']:8.2f} s/MP  ({row['seconds']:.0f} s, "
                    f"{row['cells']} cells, peak RSS {row['peak_rss_mb']:.0f} MB; {pre['backend']}, CPU)"
                )
    if "export" in results:
        fill = results["export"]["fill"]
        print(f"layer filled ({fill['cells']} cells)       {fill['seconds']:8.1f} s")
        for kind in ("coco", "geojson", "nnunet", "cellpose"):
            row = results["export"][kind]
            print(
                f"export {kind:<9} (job)            {row['job_s']:8.1f} s  (download {row['download_s']:.1f} s, "
                f"{row['bytes'] / 1e6:.0f} MB; worker peak RSS {row['worker_peak_rss_mb']:.0f} MB)"
            )
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {args.workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
