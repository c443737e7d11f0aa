"""Exports of a whole slide (issue #14), the optional part ``--export`` of ``bench/slide_bench.py``.

Called by ``slide_bench.py`` while its platform runs (gunicorn + one Celery worker on a test
database of their own), after the slide was uploaded and tiled:

1. the slide's ground truth (``cytoseg.slide_synthetic``: the same arguments give the same slide)
   becomes the image's annotation layer, outlines by ``mask_to_polygon``, inserted in batches;
2. each export (COCO, GeoJSON, nnU-Net crops, Cellpose crops) is asked for over HTTP as a job
   (``async=1``; a slide's image exports always are), the worker writes it into the storage and
   the bench polls the job, then downloads the file (streamed, counted, dropped);
3. per export: seconds from the request to the job done, download seconds, bytes, and the
   worker child's peak resident memory during that export (its high-water mark reset before,
   ``/proc/<pid>/clear_refs``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

EXPORTS = ("coco", "geojson", "nnunet", "cellpose")
BATCH = 20_000  # cells per insert (one history revision each)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _hwm_reset(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def cells_fill(*, image_id: int, width: int, height: int, distinct: int = 8, seed: int = 1) -> dict[str, float]:
    """The synthetic slide's instances as the image's annotation layer; (count, seconds)."""
    from annotations.models import Image
    from cytoseg.contours import mask_to_polygon
    from cytoseg.slide_synthetic import slide_synthetic
    from tests.factories import annotation_cells_bulk_create

    started = time.perf_counter()
    image = Image.objects.get(pk=image_id)
    classes = dict(image.project.classes.values_list("model_label", "pk"))
    slide = slide_synthetic(width=width, height=height, distinct=distinct, seed=seed)
    batches: dict[int, list[list[list[float]]]] = {1: [], 2: []}
    count = 0

    def flush(label: int) -> None:
        nonlocal count
        if batches[label]:
            annotation_cells_bulk_create(image=image, class_id=classes[label], polygons=batches[label])
            count += len(batches[label])
            batches[label] = []

    for instance in slide.instances():
        polygon = mask_to_polygon(instance.mask, x0=instance.x0, y0=instance.y0)
        if polygon is None or polygon.area < 4:
            continue
        batches[instance.label].append([[float(x), float(y)] for x, y in list(polygon.exterior.coords)[:-1]])
        if len(batches[instance.label]) >= BATCH:
            flush(instance.label)
    flush(1)
    flush(2)
    return {"cells": count, "seconds": time.perf_counter() - started}


def export_bench(
    client: Any, *, project_id: int, image_id: int, width: int, height: int, worker_pid: int, timeout: float = 7200
) -> dict[str, Any]:
    """Fill the slide's layer, then time every export as a job and its download (see above)."""
    results: dict[str, Any] = {"fill": cells_fill(image_id=image_id, width=width, height=height)}
    for kind in EXPORTS:
        for pid in _children(worker_pid):
            _hwm_reset(pid)
        started = time.perf_counter()
        answer = client.get(f"/api/v1/projects/{project_id}/export/{kind}", params={"async": "1"})
        if answer.status_code != 202:
            raise SystemExit(f"export {kind}: {answer.status_code} {answer.text[:300]}")
        job = answer.json()
        while time.perf_counter() - started < timeout:
            job = client.get(job["url"]).json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.5)
        job_s = time.perf_counter() - started
        if job["status"] != "done":
            raise SystemExit(f"export {kind}: {job['status']} {job.get('error', '')[:300]}")
        peak = max((_hwm(pid) for pid in _children(worker_pid)), default=0)
        started = time.perf_counter()
        size = 0
        with client.stream("GET", job["download_url"]) as download:
            for chunk in download.iter_bytes(1024 * 1024):
                size += len(chunk)
        results[kind] = {
            "job_s": job_s,
            "download_s": time.perf_counter() - started,
            "bytes": size,
            "worker_peak_rss_mb": peak / 2**20,
        }
    return results
