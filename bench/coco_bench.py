"""COCO export benchmark: (1) export of a project at the paper's scale (272 images, 20,374 cells of
~40 vertices) through the API, target <= 1 s; (2) 1,000,000 cells streamed, with memory that does
not grow with the count (peak RSS growth and peak traced memory, 100k cells vs 1M cells).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/cytoplatform_bench \\
        .venv/bin/python bench/coco_bench.py

Creates its own test database (test_<name>_coco_bench) and destroys it at the end. Cells are
bulk-created directly (not through the validating services) to set up quickly; the 1M cells are
copied from one image's cells inside the database (INSERT ... SELECT).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))

WIDTH, HEIGHT = 1024, 768


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def backend_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of the PostgreSQL backend serving this connection."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def polygon(rng: Any, cx: float, cy: float) -> list[list[float]]:
    """A cell-like outline: ~40 vertices, radius 6-22 px, a little irregular, 2-decimal coordinates."""
    n = int(rng.integers(34, 47))
    radius = float(rng.uniform(6, 22))
    phase = float(rng.uniform(0, 2 * math.pi))
    points = []
    for k in range(n):
        angle = 2 * math.pi * k / n
        r = radius * (1 + 0.12 * math.sin(3 * angle + phase) + 0.05 * math.cos(5 * angle))
        x = min(max(cx + r * math.cos(angle), 0.0), WIDTH)
        y = min(max(cy + r * math.sin(angle), 0.0), HEIGHT)
        points.append([round(x, 2), round(y, 2)])
    return points


def make_images(project: Any, count: int, prefix: str) -> list[Any]:
    from annotations.models import Image

    splits = ["train"] * 120 + ["validation"] * 30 + ["test"] * 122
    rows = [
        Image(
            project=project,
            file_name=f"{prefix}-{i:05d}.png",
            sha256=f"{prefix}{i:060d}"[-64:],
            original=f"bench/{prefix}/{i}.png",
            display=f"bench/{prefix}/{i}.png",
            thumbnail=f"bench/{prefix}/{i}.jpg",
            original_format="PNG",
            original_mode="RGB",
            size_bytes=1,
            width=WIDTH,
            height=HEIGHT,
            bethesda=["II", "IV", "V", "VI"][i % 4],
            split=splits[i % len(splits)],
        )
        for i in range(count)
    ]
    return Image.objects.bulk_create(rows, batch_size=1000)


def make_cells(images: list[Any], total: int, class_ids: list[int], seed: int) -> None:
    import numpy as np

    from annotations.models import Cell
    from annotations.services.cells import cell_geometry
    from cytoseg.geometry import polygon_clean

    rng = np.random.default_rng(seed)
    per_image = np.bincount(rng.integers(0, len(images), total), minlength=len(images))
    rows = []
    for image, n in zip(images, per_image, strict=True):
        for _ in range(int(n)):
            clean = polygon_clean(
                polygon(rng, rng.uniform(25, WIDTH - 25), rng.uniform(25, HEIGHT - 25)),
                width=WIDTH,
                height=HEIGHT,
                max_vertices=1000,
            )
            rows.append(
                Cell(
                    image=image,
                    cell_class_id=class_ids[int(rng.random() < 0.15)],
                    **cell_geometry(clean),
                )
            )
    Cell.objects.bulk_create(rows, batch_size=2000)


def copy_cells(template_image: Any, images: list[Any]) -> None:
    """Give every image in ``images`` a copy of ``template_image``'s cells, inside the database
    (every column but id and image_id copied, so columns other issues add come along)."""
    from django.db import connection

    from annotations.models import Cell

    columns = [str(f.column) for f in Cell._meta.concrete_fields if f.column not in ("id", "image_id")]
    column_list = ", ".join(connection.ops.quote_name(c) for c in columns)
    table = connection.ops.quote_name(Cell._meta.db_table)
    with connection.cursor() as cursor:
        for start in range(0, len(images), 200):
            ids = [image.pk for image in images[start : start + 200]]
            cursor.execute(
                f"INSERT INTO {table} (image_id, {column_list}) "
                f"SELECT i.id, {', '.join('c.' + connection.ops.quote_name(c) for c in columns)} "
                f"FROM {table} c CROSS JOIN unnest(%s::bigint[]) AS i(id) WHERE c.image_id = %s ORDER BY i.id, c.id",
                [ids, template_image.pk],
            )


def stream(project: Any, *, trace: bool) -> dict[str, float]:
    from interchange.services import coco as coco_export
    from interchange.services import selection

    filters = selection.ExportFilters()
    before = rss_bytes()
    peak_rss = before
    if trace:
        tracemalloc.start()
        tracemalloc.reset_peak()
    started = time.perf_counter()
    chunks = size = 0
    for chunk in coco_export.coco_export_stream(project=project, filters=filters):
        chunks += 1
        size += len(chunk)
        if chunks % 8 == 0:
            peak_rss = max(peak_rss, rss_bytes())
    seconds = time.perf_counter() - started
    traced = tracemalloc.get_traced_memory()[1] if trace else float("nan")
    if trace:
        tracemalloc.stop()
    peak_rss = max(peak_rss, rss_bytes())
    return {
        "seconds": seconds,
        "chunks": chunks,
        "mb": size / 1e6,
        "rss_growth_mb": (peak_rss - before) / 1e6,
        "rss_before_mb": before / 1e6,
        "rss_peak_mb": peak_rss / 1e6,
        "traced_peak_mb": traced / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=272)
    parser.add_argument("--cells", type=int, default=20_374)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--million", type=int, default=1_000_000, help="cells of the large stream (0: skip)")
    parser.add_argument("--no-trace", action="store_true", help="skip tracemalloc on the large streams")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment
    from rest_framework.test import APIClient

    from annotations.models import Cell
    from tests.factories import ProjectFactory, UserFactory

    setup_test_environment()
    test_settings = settings.DATABASES["default"].setdefault("TEST", {})
    if connection.vendor == "postgresql":
        test_settings["NAME"] = f"test_{settings.DATABASES['default']['NAME']}_coco_bench"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        settings.MEDIA_ROOT = str(ROOT / "var" / "bench-media")
        user: Any = UserFactory()
        project: Any = ProjectFactory(created_by=user)
        class_ids = list(project.classes.order_by("model_label").values_list("pk", flat=True))
        started = time.perf_counter()
        images = make_images(project, args.images, "paper")
        make_cells(images, args.cells, class_ids, seed=1)
        vertices = sum(len(p) for p in Cell.objects.filter(image__project=project).values_list("polygon", flat=True))
        print(
            f"database: {connection.vendor}; set-up {time.perf_counter() - started:.1f} s: {args.images} images, "
            f"{args.cells} cells, {vertices / args.cells:.1f} vertices per cell on average"
        )

        client = APIClient()
        client.force_authenticate(user)
        url = f"/api/v1/projects/{project.pk}/export/coco"
        backend = 0
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend = cursor.fetchone()[0]
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for label, query in (("polygon", ""), ("polygon, gzip", "?gzip=1"), ("rle", "?segmentation=rle")):
            times, cpu, server = [], [], []
            size = 0
            for _ in range(args.repeats):
                begun, begun_cpu = time.perf_counter(), time.process_time()
                begun_server = backend_cpu_seconds(backend) if backend else float("nan")
                response: Any = client.get(url + query)
                size = sum(len(chunk) for chunk in response.streaming_content)
                times.append(time.perf_counter() - begun)
                cpu.append(time.process_time() - begun_cpu)
                server.append(backend_cpu_seconds(backend) - begun_server if backend else float("nan"))
                assert response.status_code == 200
            print(
                f"paper-scale export via API ({label:13s}): wall median {statistics.median(times):.3f} s, "
                f"best {min(times):.3f} s; CPU median {statistics.median(cpu):.3f} s (Python) + "
                f"{statistics.median(server):.3f} s (PostgreSQL); {size / 1e6:.1f} MB  (target <= 1 s)"
            )
        print(f"load average after: {os.getloadavg()[0]:.1f}")

        if args.million:
            small: Any = ProjectFactory(created_by=user)
            large: Any = ProjectFactory(created_by=user)
            per_image = 250
            small_images = make_images(small, args.million // 10 // per_image, "small")
            large_images = make_images(large, args.million // per_image, "large")
            template = make_images(ProjectFactory(created_by=user), 1, "template")[0]
            make_cells([template], per_image, list(large.classes.values_list("pk", flat=True)), seed=2)
            Cell.objects.filter(image=template).update(cell_class_id=large.classes.get(model_label=1).pk)
            begun = time.perf_counter()
            copy_cells(template, large_images)
            small_class = small.classes.get(model_label=1).pk
            copy_cells(template, small_images)
            Cell.objects.filter(image__project=small).update(cell_class_id=small_class)
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
            n_small = Cell.objects.filter(image__project=small).count()
            n_large = Cell.objects.filter(image__project=large).count()
            print(f"large set-up {time.perf_counter() - begun:.1f} s: {n_small} and {n_large} cells")
            for label, target in (("100k", small), ("1M", large), ("100k again", small)):
                result = stream(target, trace=False)
                print(
                    f"stream {label:10s}: {result['seconds']:6.1f} s, {result['mb']:7.1f} MB in {result['chunks']:5d} "
                    f"chunks, {n_large / result['seconds'] if label == '1M' else n_small / result['seconds']:8.0f} "
                    f"cells/s, RSS {result['rss_before_mb']:.0f} MB before, peak {result['rss_peak_mb']:.0f} MB "
                    f"(growth {result['rss_growth_mb']:.1f} MB)"
                )
            if not args.no_trace:
                for label, target in (("100k", small), ("1M", large)):
                    result = stream(target, trace=True)
                    print(f"stream {label:10s} under tracemalloc: peak traced memory {result['traced_peak_mb']:.1f} MB")
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
