"""Click-to-segment latency through the real HTTP API, while a training run loads the CPU (issue #13).

Set-up (in this process): a fresh database (``DATABASE_URL``, PostgreSQL; its schema is emptied
and migrated), a project whose active model is the ``fast`` preset's two-stage model (nnU-Net +
Cellpose, trained here on a few small synthetic fields with the preset's configurations and
cached under ``var/bench/click/models``; inference with ``FAST_INFERENCE``), 1024x768 synthetic
fields (``cytoseg.synthetic``), some pre-segmented (their maps in the storage, as
pre-segmentation leaves them), and a second project with no model (the classical baseline).

Then the platform as ``bin/run`` runs it: gunicorn (2 workers x 4 threads) and the
``interactive`` Celery worker, on the configured broker (``CELERY_BROKER_URL``; Redis for
production-like numbers) and cache; plus a real training run in another process (nnU-Net with
the fast preset on synthetic fields, both cores; at nice 10 as ``bin/run`` runs its batch workers,
``--training-nice``), started before the clicks and stopped after.
Measured from an HTTP client (wall time per request, and the server's own ``timings.total_ms``):

* **warm**: repeated clicks on cells of an image whose maps the web processes hold (p50, p95);
* **cold, maps in storage**: the first click on a pre-segmented image (maps read from storage);
* **cold, no maps**: the first click on an image never pre-segmented: the interactive worker
  computes the maps while the click waits (the worker's very first task also loads the model:
  reported apart);
* **baseline**: clicks in the project without a model (the watershed on a window), first and warm;
* **box**: 192x192 box prompts on the warm image;
* **warm, idle**: the warm clicks again with the training run stopped, for comparison.

Targets (2-core CPU, 1024x768, server side, while training runs): warm p95 <= 150 ms per click,
cold (first click on an image) <= 2 s.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/cytoplatform_clickbench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/5 CACHE_URL=redis://127.0.0.1:6379/6 \\
        .venv/bin/python bench/click_bench.py
    # smoke run
    ... bench/click_bench.py --images 3 --clicks 10 --train-fields 2 --train-size 128

Everything it writes lies under ``--workdir`` (default ``var/bench/click/``): its own
``PLATFORM_VAR_DIR`` (media, logs), the cached models, ``results.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
WORKDIR = ROOT / "var" / "bench" / "click"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=WORKDIR)
    p.add_argument("--images", type=int, default=7, help="1024x768 fields of the model's project (default 7)")
    p.add_argument("--stored", type=int, default=3, help="of them pre-segmented before the clicks (default 3)")
    p.add_argument("--clicks", type=int, default=100, help="warm clicks measured (default 100)")
    p.add_argument("--boxes", type=int, default=10)
    p.add_argument("--train-fields", type=int, default=4, help="training fields of the cached model (default 4)")
    p.add_argument("--train-size", type=int, default=256, help="side of the training fields (default 256)")
    p.add_argument("--no-training-load", action="store_true", help="measure without the training run")
    p.add_argument(
        "--training-nice", type=int, default=10, help="niceness of the training run (default 10, as bin/run's workers)"
    )
    p.add_argument("--web-workers", type=int, default=2)
    p.add_argument(
        "--interactive-threads",
        type=int,
        default=None,
        help="INTERACTIVE_TORCH_THREADS of the interactive worker (default: the setting's, 1; 0: one per core)",
    )
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


# ------------------------------------------------------------------------------ the model


def setup_for(args: argparse.Namespace) -> Any:
    """paper_table's setup at the training size, the trainers' configurations the ``fast``
    preset's (``cytoseg.trainers.presets``) on a CPU-minutes schedule."""
    import paper_table as pt

    from cytoseg.trainers.configs import CellposeTrainConfig, NnUNetTrainConfig, config_build
    from cytoseg.trainers.presets import preset_base_config

    size = str(args.train_size)
    argv = ["--width", size, "--height", size, "--train", str(args.train_fields), "--val", "1", "--test", "0"]
    setup = pt.setup_build(pt.parse_args([*argv, "--seed", str(args.seed)]))
    nn = config_build(NnUNetTrainConfig, preset_base_config(preset="fast", stage="nnunet"))
    nn.num_epochs, nn.num_iterations_per_epoch, nn.num_val_iterations_per_epoch = 3, 25, 1
    nn.plans.batch_size = 4
    nn.plot_progress, nn.save_every = False, 10**6
    nn.dataset_id, nn.dataset_name = 644, "ClickBench"
    cp = config_build(CellposeTrainConfig, preset_base_config(preset="fast", stage="cellpose"))
    cp.n_epochs, cp.bsize, cp.nimg_per_epoch = 40, 128, 16
    cp.warmup_epochs = 10
    cp.val_every, cp.bn_recalibrate_batches = 10, 10
    setup.nnunet, setup.cellpose = nn, cp
    return setup


def models_get(args: argparse.Namespace) -> tuple[Path, Path]:
    """The fast preset's nnU-Net folder and Cellpose folder, trained once and cached."""
    import paper_table as pt

    setup = setup_for(args)
    models = args.workdir / "models" / setup.data_key
    nn_folder = models / f"nnunet-{pt.config_hash(setup.data_key, pt.config_key(setup.nnunet))}"
    cp_folder = models / f"cellpose-{pt.config_hash(setup.data_key, pt.config_key(setup.cellpose))}"
    if not (pt.cached(nn_folder, True) and pt.cached(cp_folder, True)):
        data = pt.data_build(setup)
        models.mkdir(parents=True, exist_ok=True)
        if not (nn_folder / "DONE.json").is_file():
            pt.train_nnunet(setup.nnunet, data["train"], data["val"], nn_folder, "cpu")
        if not (cp_folder / "DONE.json").is_file():
            pt.train_cellpose(setup.cellpose, False, data["train"], data["val"], cp_folder, "cpu")
    return nn_folder, cp_folder


# ------------------------------------------------------------------------------ the platform


def database_reset() -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("click_bench needs DATABASE_URL=postgres://... (a database it may empty)")
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    call_command("migrate", verbosity=0)
    # the ids start again at 1: files an earlier run kept under them (maps above all) must go
    from django.conf import settings
    from django.core.files.storage import FileSystemStorage, default_storage

    if isinstance(default_storage, FileSystemStorage):
        shutil.rmtree(settings.MEDIA_ROOT, ignore_errors=True)
    else:
        raise SystemExit("click_bench keeps its files on the local disk (leave STORAGE_URL unset)")


def png(image: Any) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def platform_prepare(args: argparse.Namespace, nn_folder: Path, cp_folder: Path) -> dict[str, Any]:
    """Projects, images, the registered model, tokens; the first images pre-segmented."""
    from django.core.cache import cache
    from django.core.files.uploadedfile import SimpleUploadedFile

    from annotations.models import Image
    from annotations.services import images as image_services
    from annotations.services.tokens import api_token_create
    from cytoseg.synthetic import generate_field
    from cytoseg.trainers.presets import FAST_INFERENCE
    from inference.services import image_presegment_run
    from tests.factories import ProjectFactory, UserFactory, model_version_files
    from training.models import ModelStatus

    cache.clear()
    owner: Any = UserFactory()
    project: Any = ProjectFactory(created_by=owner)
    plain: Any = ProjectFactory(created_by=owner)
    files: dict[str, bytes] = {}
    for folder, prefix in ((nn_folder, "nnunet"), (cp_folder, "cellpose")):
        for path in folder.rglob("*"):
            if path.is_file() and path.name != "DONE.json" and "validation" not in path.parts:
                files[f"{prefix}/{path.relative_to(folder)}"] = path.read_bytes()
    version = model_version_files(
        project,
        "two_stage",
        files,
        status=ModelStatus.ACTIVE,
        config=json.loads(json.dumps(FAST_INFERENCE["two_stage"])),
    )
    fields = [generate_field(seed=9000 + i, width=1024, height=768) for i in range(args.images + 1)]

    def upload(target: Any, i: int) -> Any:
        f = SimpleUploadedFile(f"field-{i}.png", png(fields[i].image), content_type="image/png")
        return image_services.image_upload_many(project=target, files=[f], metadata={}, uploaded_by=owner)[0]

    images = [upload(project, i) for i in range(args.images)]
    baseline_image = upload(plain, args.images)
    for image in images[: args.stored]:
        started = time.perf_counter()
        Image.objects.filter(pk=image.pk).update(presegment_status="queued", presegment_model_id=version.pk)
        result = image_presegment_run(image_id=image.pk, model_version_id=version.pk)
        log(f"pre-segmented image {image.pk}: {result.cell_count} cells, {time.perf_counter() - started:.1f} s")
    _, token = api_token_create(user=owner, name="click-bench")
    return {
        "token": token,
        "version": version.pk,
        "images": [i.pk for i in images],
        "fields": fields,
        "baseline_image": baseline_image.pk,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(name: str, argv: list[str], logs: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = (logs / f"{name}.log").open("wb")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


TRAINING_LOAD = """
import sys, time
sys.path.insert(0, {bench!r})
import click_bench as cb, paper_table as pt
args = cb.parse_args({argv!r})
setup = cb.setup_for(args)
setup.nnunet.num_epochs, setup.nnunet.num_iterations_per_epoch = 1000, 50
setup.nnunet.dataset_id, setup.nnunet.dataset_name = 645, "ClickBenchLoad"
data = pt.data_build(setup)
pt.train_nnunet(setup.nnunet, data["train"], data["val"], cb.Path({folder!r}), "cpu")
"""


# ------------------------------------------------------------------------------ the clicks


def interior_points(field: Any, count: int, seed: int) -> list[list[float]]:
    """The deepest pixel of visible cells (class 1) at least 150 px large, in random order."""
    import numpy as np
    from scipy import ndimage as ndi

    lm = field.label_map()
    points = []
    for k, cell in enumerate(field.cells, start=1):
        mask = lm == k
        if cell.label != 1 or mask.sum() < 150:
            continue
        r, c = np.unravel_index(np.argmax(ndi.distance_transform_edt(mask)), mask.shape)
        points.append([float(c) + 0.5, float(r) + 0.5])
    random.Random(seed).shuffle(points)
    return (points * (count // max(1, len(points)) + 1))[:count]


class Api:
    def __init__(self, base: str, token: str) -> None:
        import requests

        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.base = base

    def post(self, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """POST until answered (a 503 is sent again after its Retry-After, as the editor does);
        the time until the answer, and the answer (with ``tries``)."""
        started = time.perf_counter()
        tries = 0
        while True:
            tries += 1
            response = self.session.post(f"{self.base}{path}", json=body, timeout=120)
            if response.status_code != 503 or tries >= 5:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
        return elapsed, {**response.json(), "tries": tries}


def clicks(api: Api, image: int, points: list[list[float]]) -> dict[str, Any]:
    wall, server, sources, found = [], [], [], 0
    for point in points:
        ms, body = api.post(f"/api/v1/images/{image}/segment/click", {"positive": [point]})
        wall.append(ms)
        server.append(body["timings"]["total_ms"])
        sources.append(body["source"])
        found += body["polygon"] is not None
    return {
        "n": len(points),
        "p50_ms": pct(wall, 50),
        "p95_ms": pct(wall, 95),
        "max_ms": max(wall) if wall else float("nan"),
        "server_p50_ms": pct(server, 50),
        "server_p95_ms": pct(server, 95),
        "found": found,
        "model": sources.count("model"),
    }


def first_click(api: Api, image: int, point: list[float]) -> dict[str, Any]:
    ms, body = api.post(f"/api/v1/images/{image}/segment/click", {"positive": [point]})
    return {
        "ms": ms,
        "server_ms": body["timings"]["total_ms"],
        "source": body["source"],
        "timings": body["timings"],
        "tries": body["tries"],
    }


def worker_tasks(log: Path) -> list[dict[str, Any]]:
    """The interactive worker's window tasks as its log has them: seconds in the task and
    where they went (``inference.image_maps``'s result: kept maps, model, image, network, store)."""
    import ast
    import re

    out = []
    pattern = re.compile(r"inference\.image_maps\[[^\]]*\] succeeded in ([0-9.]+)s: (\{.*\})")
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        match = pattern.search(line)
        if match:
            out.append({"task_s": float(match.group(1)), **ast.literal_eval(match.group(2))})
    return out


def summary(results: dict[str, Any], args: argparse.Namespace) -> None:
    def ms(value: float) -> str:
        return f"{value:.1f} ms"

    warm = results["warm"]
    stored = [r["ms"] for r in results["cold_stored"]]
    no_maps = [r["ms"] for r in results["cold_no_maps"]]
    rows = [
        ("warm (maps held): p50 / p95", f"{ms(warm['p50_ms'])} / {ms(warm['p95_ms'])}"),
        ("  server's own total: p95", f"{ms(warm['server_p95_ms'])} ({warm['found']}/{warm['n']} cells found)"),
    ]
    if "warm_idle" in results:
        idle = results["warm_idle"]
        rows.append(("warm, training stopped: p50 / p95", f"{ms(idle['p50_ms'])} / {ms(idle['p95_ms'])}"))
    rows += [
        ("cold, maps in storage: max", f"{ms(max(stored, default=float('nan')))} {[round(v) for v in stored]}"),
        ("cold, no maps: max", f"{ms(max(no_maps, default=float('nan')))} {[round(v) for v in no_maps]}"),
        ("cold, no maps, worker's first task", f"{ms(results['cold_no_maps_first_task']['ms'])} (model load too)"),
        (
            "baseline: first / warm p95",
            f"{ms(results['baseline_first']['ms'])} / {ms(results['baseline_warm']['p95_ms'])}",
        ),
        ("box 192x192: p50 / p95", f"{ms(results['box']['p50_ms'])} / {ms(results['box']['p95_ms'])}"),
    ]
    for task in results.get("worker_tasks", []):
        rows.append(("  window task (worker)", ", ".join(f"{k} {v}" for k, v in task.items())))
    load = "no training load" if args.no_training_load else "while a training run loads the CPU"
    where = f"{results['cpus']} CPUs, broker {results['broker']}"
    print(f"\nClick-to-segment through the API, 1024x768 fields, {where}, {load}")
    for name, value in rows:
        print(f"  {name:<38} {value}")
    print(f"  load average at the end (1, 5, 15 min): {results.get('load_average')}")
    print(f"  (all numbers: {args.workdir / 'results.json'})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    var = args.workdir / "var"
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ["PLATFORM_VAR_DIR"] = str(var)
    os.environ.setdefault("INFERENCE_DEVICE", "cpu")

    log("models: the fast preset's two-stage model (trained once, cached)")
    nn_folder, cp_folder = models_get(args)
    log(f"  {nn_folder.name}, {cp_folder.name}")
    database_reset()
    prepared = platform_prepare(args, nn_folder, cp_folder)
    from django.db import connection

    connection.close()

    env = os.environ | {"DJANGO_ALLOWED_HOSTS": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    procs: dict[str, subprocess.Popen[bytes] | None] = {}
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "broker": env.get("CELERY_BROKER_URL", "filesystem://").split("://")[0],
        "images": "1024x768 synthetic fields",
    }
    try:
        procs["web"] = start(
            "web",
            [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", str(args.web_workers), "--threads", "4", "--timeout", "120"],
            logs, env,
        )  # fmt: skip
        worker_env = env
        if args.interactive_threads is not None:
            worker_env = env | {"INTERACTIVE_TORCH_THREADS": str(args.interactive_threads)}
        procs["interactive"] = start(
            "interactive",
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "interactive", "--concurrency", "1",
             "--prefetch-multiplier", "1", "-n", f"clickbench-{os.getpid()}@%h", "--loglevel", "INFO"],
            logs, worker_env,
        )  # fmt: skip
        import requests

        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                requests.get(f"{base}/api/v1/schema", timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise SystemExit(f"gunicorn did not start; see {logs / 'web.log'}") from None
                time.sleep(0.5)
        api = Api(base, prepared["token"])
        fields = prepared["fields"]
        images = prepared["images"]
        if not args.no_training_load:
            code = TRAINING_LOAD.format(
                bench=str(ROOT / "bench"),
                argv=["--workdir", str(args.workdir), "--train-fields", str(args.train_fields),
                      "--train-size", str(args.train_size), "--seed", str(args.seed + 1)],
                folder=str(args.workdir / "load-run" / "nnunet"),
            )  # fmt: skip
            training = start("training", ["nice", "-n", str(args.training_nice), sys.executable, "-c", code], logs, env)
            procs["training"] = training
            log("training run started; waiting for it to reach its training loop")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if "epoch" in (logs / "training.log").read_text(errors="replace").lower():
                    break
                if training.poll() is not None:
                    raise SystemExit(f"the training run ended; see {logs / 'training.log'}")
                time.sleep(2)
        load = "while training" if not args.no_training_load else "idle"
        # cold, no maps: the worker's very first task loads the model too
        stored = args.stored
        no_maps = images[stored:]
        results["cold_no_maps_first_task"] = first_click(api, no_maps[0], interior_points(fields[stored], 1, 1)[0])
        log(f"cold, no maps, worker's first task ({load}): {results['cold_no_maps_first_task']['ms']:.0f} ms")
        results["cold_no_maps"] = [
            first_click(api, image, interior_points(fields[stored + 1 + i], 1, 1)[0])
            for i, image in enumerate(no_maps[1:])
        ]
        log(f"cold, no maps ({load}): {[round(r['ms']) for r in results['cold_no_maps']]} ms")
        results["cold_stored"] = [
            first_click(api, image, interior_points(fields[i], 1, 2)[0]) for i, image in enumerate(images[1:stored], 1)
        ]
        log(f"cold, maps in storage ({load}): {[round(r['ms']) for r in results['cold_stored']]} ms")
        warm_points = interior_points(fields[0], args.clicks + 10, 3)
        clicks(api, images[0], warm_points[:10])  # each web process reads the maps once
        results["warm"] = clicks(api, images[0], warm_points[10:])
        log(f"warm ({load}): p50 {results['warm']['p50_ms']:.1f} ms, p95 {results['warm']['p95_ms']:.1f} ms")
        base_points = interior_points(fields[args.images], 60, 4)
        results["baseline_first"] = first_click(api, prepared["baseline_image"], base_points[0])
        results["baseline_warm"] = clicks(api, prepared["baseline_image"], base_points[10:])
        first, warm = results["baseline_first"]["ms"], results["baseline_warm"]["p95_ms"]
        log(f"baseline ({load}): first {first:.0f} ms, warm p95 {warm:.1f} ms")
        box_ms = []
        rng = random.Random(5)
        for _ in range(args.boxes):
            x0, y0 = rng.randrange(0, 1024 - 192), rng.randrange(0, 768 - 192)
            ms, _ = api.post(f"/api/v1/images/{images[0]}/segment/box", {"box": [x0, y0, x0 + 192, y0 + 192]})
            box_ms.append(ms)
        results["box"] = {"n": len(box_ms), "p50_ms": pct(box_ms, 50), "p95_ms": pct(box_ms, 95)}
        log(f"box 192x192 ({load}): p50 {results['box']['p50_ms']:.0f} ms, p95 {results['box']['p95_ms']:.0f} ms")
        if procs.get("training") is not None:
            stop(procs["training"])
            time.sleep(2)
            results["warm_idle"] = clicks(api, images[0], warm_points[10:])
            log(
                f"warm (idle): p50 {results['warm_idle']['p50_ms']:.1f} ms, p95 {results['warm_idle']['p95_ms']:.1f} ms"
            )
    finally:
        for proc in procs.values():
            stop(proc)
    results["worker_tasks"] = worker_tasks(logs / "interactive.log")
    results["load_average"] = os.getloadavg()
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    summary(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
