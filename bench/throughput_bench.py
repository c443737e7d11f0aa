"""Pre-segmentation throughput through the real queue, storage and database, and what storage costs.

For each storage (``local``: the embedded default, files under MEDIA_ROOT; ``s3``: moto's S3
server, a process of its own started here as the tests do, ``tests/s3.py``), this script

1. uploads ``--images`` synthetic 1024x768 Diff-Quik fields and the ``fast`` preset's two-stage
   model (quick nnU-Net + Cellpose models of ``bench/presegment_bench.py``, trained once and
   cached; speed does not depend on how well they are trained) through the platform's services,
   so both lie in that storage;
2. starts one Celery worker process (prefork, as in production) with an empty model cache and
   sends it one image, then a second one: the **cold** first image (fetching the model from
   storage into the cache, verifying its sha256, loading it) against a **warm** one;
3. measures **throughput**: every image queued at once through the outbox and the broker
   (``inference.services.project_presegment_enqueue``), with 1 and then 2 worker processes on
   the ``gpu`` queue (each worker warmed up first; torch threads = cores / workers), from the
   enqueue until the last image is done: images per hour.

Each worker has folders of its own (media, scratch, model cache), as on another host; with
``s3`` it reads images and models from the bucket only.

    .venv/bin/python bench/throughput_bench.py                  # both storages, 12 images
    .venv/bin/python bench/throughput_bench.py --storages s3 --images 6
    .venv/bin/python bench/throughput_bench.py --device cuda --workers 1   # one GPU worker

Uses the configured database (a test database of its own, ``test_<name>_throughput``) and
broker (``CELERY_BROKER_URL``; Redis in production, the filesystem transport by default).
Everything it writes lies under ``var/bench/throughput/``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))

BENCH_DIR = ROOT / "var" / "bench" / "throughput"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=12, help="images per throughput run (default 12)")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--storages", default="local,s3", help="comma list of local,s3 (default both)")
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (default 1,2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all (default: cores)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for a run")
    p.add_argument("--workdir", type=Path, default=BENCH_DIR)
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fast_models(workdir: Path, args: argparse.Namespace, device: str) -> tuple[Path, dict[str, Any]]:
    """The fast preset's two-stage bundle (zip) and its inference settings, from presegment_bench."""
    import presegment_bench as pb

    pargs = pb.parse_args(["--configs", "fast", "--width", str(args.width), "--height", str(args.height)])
    pargs.workdir = ROOT / "var" / "bench" / "presegment"
    models = pb.models_find(pargs, device)
    assert models.nnunet_fast is not None
    bundle = pb.bundle_make(workdir / "bundle", models.nnunet_fast, models.cellpose)
    settings, _ = pb.config_settings("fast", pargs, pb.cellpose_diam_labels(models.cellpose))
    return pb.bundle_zip(bundle), settings


@contextmanager
def storage(kind: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Point this process's default storage at ``kind``; yield the env a worker needs for it."""
    from django.conf import settings
    from django.test import override_settings

    if kind == "local":
        yield {"STORAGE_URL": "file:", "MEDIA_ROOT": str(settings.MEDIA_ROOT)}
        return
    if kind != "s3":
        raise SystemExit(f"unknown storage {kind!r}: local or s3")
    from tests.s3 import s3_server

    (workdir / "s3").mkdir(parents=True, exist_ok=True)
    with s3_server(workdir / "s3") as server:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        with override_settings(STORAGES=server.storages_setting(prefix)):  # resets default_storage
            yield server.storage_env(prefix)


def worker_start(name: str, env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    environ = (
        os.environ
        | env
        | {
            "MEDIA_ROOT": env.get("MEDIA_ROOT", str(home / "media")),
            "TRAINING_DIR": str(home / "training"),
            "MODEL_DIR": str(home / "models"),
            "MODEL_CACHE_DIR": str(home / "model-cache"),
        }
    )
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu", "--pool", "prefork",
        "--concurrency", "1", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
        "--loglevel", "INFO",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=environ, stdout=(home / "worker.log").open("wb"), stderr=subprocess.STDOUT
    )


def workers_stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_done(image_ids: list[int], timeout: float) -> float:
    """Seconds until every image is done (failed ones stop the benchmark)."""
    from annotations.models import Image, PresegmentStatus

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        rows = dict(Image.objects.filter(pk__in=image_ids).values_list("pk", "presegment_status"))
        failed = [pk for pk, s in rows.items() if s == PresegmentStatus.FAILED]
        if failed:
            errors = Image.objects.filter(pk__in=failed).values_list("presegment_error", flat=True)
            raise SystemExit(f"pre-segmentation failed: {list(errors)[:3]}")
        if all(s == PresegmentStatus.DONE for s in rows.values()):
            return time.perf_counter() - started
        time.sleep(0.05)
    raise SystemExit(f"images not done after {timeout} s")


def run_storage(kind: str, args: argparse.Namespace, bundle: Path, model_settings: dict[str, Any]) -> dict[str, Any]:
    import presegment_bench as pb
    from django.contrib.auth import get_user_model
    from django.core.files import File
    from django.core.files.uploadedfile import SimpleUploadedFile

    from annotations.models import Image, PresegmentStatus
    from annotations.services import images, projects
    from cytoseg.synthetic import generate_field
    from inference.services import image_presegment_enqueue
    from training.services.registry import model_version_upload

    out: dict[str, Any] = {"storage": kind}
    workdir = args.workdir / kind
    shutil.rmtree(workdir, ignore_errors=True)
    with storage(kind, workdir) as env:
        user = get_user_model().objects.create_user(username=f"bench-{kind}-{uuid.uuid4().hex[:6]}")
        project = projects.project_create(name=f"Throughput {kind}", created_by=user, auto_presegment=False)
        log(f"{kind}: uploading {args.images + 2} fields of {args.width}x{args.height} and the model")
        files = [
            SimpleUploadedFile(
                f"f{i}.png",
                pb.png_bytes(generate_field(seed=9000 + i, width=args.width, height=args.height).image),
                content_type="image/png",
            )
            for i in range(args.images + 2)
        ]
        uploaded = images.image_upload_many(project=project, files=files, metadata={}, uploaded_by=user)
        with bundle.open("rb") as handle:
            version = model_version_upload(
                project=project,
                kind="two_stage",
                upload=File(handle, name="bundle.zip"),
                name="fast",
                config=model_settings,
                user=user,
                activate=True,
            )
        out["model_mb"] = sum(a["size"] for a in version.artifacts) / 1e6
        probe, timed = uploaded[:2], uploaded[2:]
        threads_env = {"INFERENCE_DEVICE": args.device, **env}

        # cold (empty cache: fetch + verify + load) against warm, one worker
        home = workdir / "worker-cold"
        worker = worker_start("cold", {**threads_env, "OMP_NUM_THREADS": str(args.threads)}, home)
        try:
            for label, image in zip(("cold", "warm"), probe, strict=True):
                Image.objects.filter(pk=image.pk).update(presegment_status=PresegmentStatus.NONE)
                image_presegment_enqueue(image=image, model_version=version)
                seconds = wait_done([image.pk], args.timeout)
                out[label] = {"e2e_s": seconds}
                log(f"{kind}: {label} image {seconds:.2f} s end to end")
        finally:
            workers_stop([worker])
        fetched = [line for line in (home / "worker.log").read_text().splitlines() if "model cache: fetched" in line]
        out["cache_fetches"] = len(fetched)
        out["model_s"] = _task_timings(home / "worker.log", "model")

        for count in (int(n) for n in args.workers.split(",")):
            threads = max(1, args.threads // count)
            homes = [workdir / f"run{count}-w{i}" for i in range(count)]
            processes = [
                worker_start(f"w{i}", {**threads_env, "OMP_NUM_THREADS": str(threads)}, h) for i, h in enumerate(homes)
            ]
            try:
                # warm each worker up (its pool child fetches and loads the model once): once all
                # are ready, warm-up images go out until every worker has run one
                _wait_ready(homes, args.timeout)
                _warm_up(homes, probe, version, args.timeout)
                Image.objects.filter(pk__in=[i.pk for i in timed]).update(presegment_status=PresegmentStatus.NONE)
                started = time.perf_counter()
                for image in timed:
                    image_presegment_enqueue(image=image, model_version=version)
                wait_done([i.pk for i in timed], args.timeout)
                total = time.perf_counter() - started
            finally:
                workers_stop(processes)
            per_hour = len(timed) / total * 3600
            out[f"workers_{count}"] = {"images": len(timed), "seconds": total, "images_per_hour": per_hour}
            log(f"{kind}: {count} worker(s), {threads} threads each: {len(timed)} images in {total:.1f} s")
            log(f"{kind}: {per_hour:.0f} images/hour")
    return out


def _task_timings(log_file: Path, key: str) -> list[float]:
    """The ``key`` timing of every task a worker's log reports."""
    import ast

    values = []
    for line in log_file.read_text().splitlines():
        if "inference.presegment_image" in line and "succeeded" in line and "{" in line:
            try:
                result = ast.literal_eval(line[line.index("{") :])
            except (ValueError, SyntaxError):
                continue
            if key in result.get("timings", {}):
                values.append(float(result["timings"][key]))
    return values


def _wait_ready(homes: list[Path], timeout: float) -> None:
    """Until every worker process says it is ready to consume."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        logs = [(h / "worker.log").read_text() if (h / "worker.log").exists() else "" for h in homes]
        if all(" ready." in text for text in logs):
            return
        if any("Traceback" in text for text in logs):
            raise SystemExit(f"a worker failed to start; see {homes}")
        time.sleep(0.2)
    raise SystemExit("a worker never became ready")


def _warm_up(homes: list[Path], probe: list[Any], version: Any, timeout: float) -> None:
    """Send warm-up images (alternating between the probes) until every worker has run one, so
    that each has its model loaded before the timed run."""
    from annotations.models import Image, PresegmentStatus
    from inference.services import image_presegment_enqueue

    started = time.perf_counter()
    turn = 0
    while not all(_task_timings(h / "worker.log", "predict") for h in homes):
        if time.perf_counter() - started > timeout:
            raise SystemExit("a worker never ran a warm-up image")
        batch = probe[: len(homes)]
        for image in batch:
            Image.objects.filter(pk=image.pk).update(presegment_status=PresegmentStatus.NONE)
            image_presegment_enqueue(image=image, model_version=version)
        wait_done([i.pk for i in batch], timeout)
        time.sleep(0.5)  # the log line of the result is written just after the database row
        turn += 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ["PLATFORM_VAR_DIR"] = str(args.workdir / "platform")
    os.environ.pop("MEDIA_ROOT", None)
    os.environ.pop("STORAGE_URL", None)
    bundle, model_settings = fast_models(args.workdir, args, args.device)

    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    db = connection.settings_dict
    if not db["ENGINE"].endswith("sqlite3"):  # a name of its own: never clobber another test database
        db.setdefault("TEST", {})["NAME"] = f"test_{db['NAME']}_throughput"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    from config.celery import app

    app.control.purge()
    os.environ["DATABASE_URL"] = _database_url(connection)  # the workers' database: this test one
    results = []
    try:
        for kind in args.storages.split(","):
            results.append(run_storage(kind.strip(), args, bundle, model_settings))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
    print()
    print(
        f"pre-segmentation throughput, fast preset two-stage, {args.width}x{args.height}, device {args.device}, "
        f"{os.cpu_count()} cores, broker {_broker()}"
    )
    print(
        "| storage | cold first image (s) | warm image (s) | model fetch+load cold / warm (s) | "
        + " | ".join(f"{n} worker(s): images/hour" for n in args.workers.split(","))
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(args.workers.split(",")))
    for r in results:
        model = r["model_s"]
        print(
            f"| {r['storage']} | {r['cold']['e2e_s']:.2f} | {r['warm']['e2e_s']:.2f} | "
            f"{model[0]:.2f} / {statistics.median(model[1:]) if len(model) > 1 else float('nan'):.3f} | "
            + " | ".join(f"{r[f'workers_{n}']['images_per_hour']:.0f}" for n in args.workers.split(","))
            + " |"
        )
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {args.workdir / 'results.json'}")
    return 0


def _database_url(connection: Any) -> str:
    import presegment_bench as pb

    return str(pb.database_url(connection))


def _broker() -> str:
    from django.conf import settings

    return str(settings.CELERY_BROKER_URL).split("@")[-1]


if __name__ == "__main__":
    sys.exit(main())
