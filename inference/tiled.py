"""Tiled pre-segmentation of large images and whole slides (issue #14).

A tiled image (``Image.tiled``: a large image or slide, no display PNG) is never read whole.
``image_tiles_enqueue`` lays a ``cytoseg.tiled.TilePlan`` over it, writes one
:class:`~inference.models.PresegmentTile` row per tile and enqueues one task
``inference.presegment_tiles`` per ``PRESEGMENT_TILES_PER_TASK`` tiles on the ``gpu`` queue
(through the outbox, with the image's row): every worker of the queue takes some, so several
share one slide. A task claims its queued tiles, reads each one's region of the original at full
resolution (``cytoseg.tiled.region_reader``: OpenSlide or libvips, bounded memory), predicts them
as one batch, and records each tile done with the cells it owns (progress: the image's
``presegment_tiles_done`` of ``presegment_tiles_total``, which the image list shows). The task
that finds every tile done stitches the tiles' cells (``cytoseg.tiled.stitch_stream``: no cell
kept twice or cut at a border) and stores them as the image's proposals in batches, under the
image's row lock, so it happens once.

Liveness reuses the single-image design: a heartbeat on the claimed tile rows (and the image)
from a thread; the watchdog (:func:`tiles_reap`, called by ``presegment_reap``) puts the tiles of
a dead or silent worker back to queued and enqueues their task again, fails the image with the
reason after ``PRESEGMENT_MAX_ATTEMPTS`` tries of one tile, enqueues the task of queued tiles
whose message was lost, and the stitch of a run whose every tile is done but whose stitch died.
A finished tile is never redone: a killed worker's run resumes at its unfinished tiles.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from annotations.models import Image, PresegmentStatus, Region
from core.events import event_emit
from core.queue import outbox_pending, task_enqueue
from cytoseg.backends import backend_get
from cytoseg.device import device_default
from cytoseg.regions import cells_inside, tiles_for_region
from cytoseg.tiled import RegionReader, TileCell, TilePlan, margin_for, region_reader, stitch_stream, tiles_segment
from inference.liveness import worker_gone, worker_name
from inference.models import PresegmentTile, TileRunStatus
from inference.proposals import proposals_store
from training.models import ModelVersion
from training.services.artifacts import artifacts_for
from training.services.registry import model_version_settings

logger = logging.getLogger(__name__)

TILES_TASK = "inference.presegment_tiles"
STITCH_TASK = "inference.presegment_stitch"
QUEUE = "gpu"


class _Superseded(Exception):
    """The run was replaced (pre-segmented again) or failed elsewhere while this task ran."""


def tile_plan(*, image: Image, model_version: ModelVersion) -> TilePlan:
    """The plan of a new run: ``PRESEGMENT_TILE_SIZE`` cores, the margin from the settings or
    from the model's cell diameter (its ``diameter`` setting; the platform's default otherwise)."""
    margin = settings.PRESEGMENT_TILE_MARGIN
    if not margin:
        diameter = model_version_settings(version=model_version).get("diameter")
        margin = margin_for(float(diameter) if isinstance(diameter, int | float) and diameter > 0 else None)
    tile = settings.PRESEGMENT_TILE_SIZE
    return TilePlan(image.width, image.height, tile=tile, margin=min(margin, tile))


def image_tiles_enqueue(*, image: Image, model_version: ModelVersion, region: Region | None = None) -> int:
    """Replace the image's tile rows by a new run's and enqueue its tile tasks (the caller has
    marked the image queued; all in one transaction, the messages sent once it commits).
    With ``region``, only the tiles whose core meets the region's polygon. Returns the number
    of tiles."""
    plan = tile_plan(image=image, model_version=model_version)
    if region is None:
        indices = list(range(plan.count))
    else:
        indices = tiles_for_region(plan.columns, plan.rows, plan.tile, plan.width, plan.height, region.polygon)
    per_task = settings.PRESEGMENT_TILES_PER_TASK
    now = timezone.now()
    with transaction.atomic():
        PresegmentTile.objects.filter(image_id=image.pk).delete()
        PresegmentTile.objects.bulk_create(
            [
                PresegmentTile(
                    image_id=image.pk,
                    model_version=model_version,
                    index=index,
                    task=position // per_task,
                    tile_size=plan.tile,
                    margin=plan.margin,
                    queued_at=now,
                    region_polygon=None if region is None else region.polygon,
                )
                for position, index in enumerate(indices)
            ],
            batch_size=1000,
        )
        Image.objects.filter(pk=image.pk).update(presegment_tiles_done=0, presegment_tiles_total=len(indices))
        for task in range(-(-len(indices) // per_task)):
            task_enqueue(TILES_TASK, args=[image.pk, model_version.pk, task], queue=QUEUE)
    return len(indices)


def tiles_progress(*, image_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(tiles done, tiles) of the current tiled run of each image that has one."""
    rows = (
        PresegmentTile.objects.filter(image_id__in=image_ids)
        .values("image_id")
        .annotate(total=Count("id"), done=Count("id", filter=Q(status=TileRunStatus.DONE)))
    )
    return {row["image_id"]: (row["done"], row["total"]) for row in rows}


# --- the local original ------------------------------------------------------------------------

_READER: dict[str, Any] = {}  # one open reader per process: the next task of the slide reuses it
_READER_LOCK = threading.Lock()


def _original_path(image: Image) -> Path:
    """The original on this host's disk: the stored file itself on disk storage; on object
    storage one streamed copy per host in ``SLIDE_SCRATCH_DIR`` (kept for the run's other tile
    tasks on this host, removed by the stitch on its host)."""
    name = str(image.original.name)
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        pass
    folder = Path(settings.SLIDE_SCRATCH_DIR) / "presegment"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{image.pk}-{image.sha256[:16]}{Path(name).suffix}"
    if not target.exists():
        partial = target.with_suffix(f".{worker_name().replace(':', '-')}.part")
        with default_storage.open(name, "rb") as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
        partial.replace(target)
    return target


def _reader(image: Image) -> RegionReader:
    path = str(_original_path(image))
    with _READER_LOCK:
        if _READER.get("path") != path:
            old = _READER.get("reader")
            if old is not None:
                old.close()
            _READER.clear()
            _READER.update(path=path, reader=region_reader(Path(path)))
        reader: RegionReader = _READER["reader"]
    return reader


def _reader_forget(image: Image) -> None:
    with _READER_LOCK:
        reader = _READER.get("reader")
        if reader is not None:
            reader.close()
        _READER.clear()
    try:
        default_storage.path(str(image.original.name))
    except NotImplementedError:
        for copy in (Path(settings.SLIDE_SCRATCH_DIR) / "presegment").glob(f"{image.pk}-*"):
            copy.unlink(missing_ok=True)


# --- running tiles -----------------------------------------------------------------------------


@dataclass
class TilesResult:
    image_id: int
    tiles: list[int] = field(default_factory=list)  # the tiles this task segmented
    cell_count: int | None = None  # set when this task stitched the run
    skipped: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class _Heartbeat:
    """Writes the heartbeat of this worker's running tiles of an image, and the image's."""

    def __init__(self, image_id: int, worker: str) -> None:
        self.image_id, self.worker = image_id, worker
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"tiles-heartbeat-{image_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _beat(self) -> None:
        try:
            while not self.stopped.wait(settings.PRESEGMENT_HEARTBEAT_SECONDS):
                now = timezone.now()
                PresegmentTile.objects.filter(
                    image_id=self.image_id, worker=self.worker, status=TileRunStatus.RUNNING
                ).update(heartbeat_at=now)
                Image.objects.filter(pk=self.image_id, presegment_status=PresegmentStatus.RUNNING).update(
                    presegment_heartbeat_at=now
                )
        except Exception:  # a missed heartbeat is the watchdog's business, not a crash
            logger.warning("tile heartbeat of image %s stopped", self.image_id, exc_info=True)
        finally:
            connection.close()


def _tiles_claim(image_id: int, model_version_id: int, task: int, worker: str) -> list[int]:
    """Take the task's tiles that are queued, or running on a worker that is evidently gone (a
    message delivered again after its worker was killed)."""
    stale = timezone.now() - timedelta(seconds=settings.PRESEGMENT_HEARTBEAT_TIMEOUT)
    rows = PresegmentTile.objects.filter(image_id=image_id, model_version_id=model_version_id, task=task)
    running = rows.filter(status=TileRunStatus.RUNNING).values_list("worker", flat=True).distinct()
    mine = Q(status=TileRunStatus.QUEUED) | Q(status=TileRunStatus.RUNNING, heartbeat_at__lt=stale)
    dead = [w for w in running if w and worker_gone(w)]
    if dead:
        mine |= Q(status=TileRunStatus.RUNNING, worker__in=dead)
    with transaction.atomic():
        claimed = list(
            rows.filter(mine).select_for_update(skip_locked=True).order_by("index").values_list("index", flat=True)
        )
        if claimed:
            # the update checks the state again: without row locks (SQLite) two workers may
            # read the same tiles, and only the one whose update still finds them has them
            now = timezone.now()
            rows.filter(mine, index__in=claimed).update(
                status=TileRunStatus.RUNNING,
                worker=worker,
                heartbeat_at=now,
                attempts=F("attempts") + 1,
                error="",
            )
            claimed = list(
                rows.filter(index__in=claimed, status=TileRunStatus.RUNNING, worker=worker, heartbeat_at=now)
                .order_by("index")
                .values_list("index", flat=True)
            )
    return claimed


def _device() -> str:
    return device_default() if settings.INFERENCE_DEVICE == "auto" else settings.INFERENCE_DEVICE


def image_tiles_run(*, image_id: int, model_version_id: int, task: int) -> TilesResult:
    """Segment one task's tiles of a tiled image (the task's service), then stitch the run if
    it was the last. Skips a task whose tiles are done or held by a live worker, and a run that
    was replaced or failed. A failing tile fails the image with the tile and the reason."""
    result = TilesResult(image_id=image_id)
    image = Image.objects.select_related("project").get(pk=image_id)
    version = ModelVersion.objects.select_related("project").get(pk=model_version_id)
    if version.project_id != image.project_id:
        raise ValueError("The model version belongs to another project.")
    live = Q(presegment_status__in=[PresegmentStatus.QUEUED, PresegmentStatus.RUNNING])
    if not Image.objects.filter(live, pk=image_id, presegment_model_id=model_version_id).exists():
        result.skipped = "the image's run was replaced, failed or finished"
        return result
    worker = worker_name()
    claimed = _tiles_claim(image_id, model_version_id, task, worker)
    if not claimed:
        result.skipped = "no tile of this task is waiting"
        result.cell_count = image_tiles_stitch(image_id=image_id, model_version_id=model_version_id)
        return result
    Image.objects.filter(live, pk=image_id, presegment_model_id=model_version_id).update(
        presegment_status=PresegmentStatus.RUNNING,
        presegment_worker=worker,
        presegment_heartbeat_at=timezone.now(),
    )
    current = claimed[0]
    with _Heartbeat(image_id, worker):
        try:
            started = time.perf_counter()
            backend = backend_get(
                name=version.kind,
                artifacts=artifacts_for(version),
                settings=model_version_settings(version=version),
                device=_device(),
            )
            result.timings["model"] = time.perf_counter() - started
            first = PresegmentTile.objects.filter(image_id=image_id, index=claimed[0]).values("tile_size", "margin")
            shape = first.get()
            plan = TilePlan(image.width, image.height, tile=shape["tile_size"], margin=shape["margin"])
            started = time.perf_counter()
            reader = _reader(image)
            result.timings["open"] = time.perf_counter() - started
            started = time.perf_counter()
            for index, cells in tiles_segment(
                backend, reader, plan, claimed, min_area=settings.PRESEGMENT_MIN_AREA, batch=len(claimed)
            ):
                current = index
                done = PresegmentTile.objects.filter(
                    image_id=image_id, index=index, worker=worker, status=TileRunStatus.RUNNING
                ).update(
                    status=TileRunStatus.DONE,
                    cells=[c.to_json() for c in cells],
                    cell_count=len(cells),
                    seconds=round((time.perf_counter() - started) / len(claimed), 3),
                )
                if not done:
                    raise _Superseded
                Image.objects.filter(pk=image_id).update(presegment_tiles_done=F("presegment_tiles_done") + 1)
                result.tiles.append(index)
            result.timings["tiles"] = time.perf_counter() - started
        except _Superseded:
            result.skipped = "the run was replaced while this task ran"
            return result
        except Exception as exc:
            reason = f"tile {current + 1} of the plan: {type(exc).__name__}: {exc}"[:2000]
            PresegmentTile.objects.filter(image_id=image_id, worker=worker, status=TileRunStatus.RUNNING).update(
                status=TileRunStatus.FAILED, error=reason
            )
            _image_fail(image, model_version_id, reason)
            logger.exception("Tiled pre-segmentation of image %s failed", image_id)
            raise
    result.cell_count = image_tiles_stitch(image_id=image_id, model_version_id=model_version_id)
    return result


def _image_fail(image: Image, model_version_id: int, reason: str) -> None:
    if Image.objects.filter(
        pk=image.pk,
        presegment_model_id=model_version_id,
        presegment_status__in=[PresegmentStatus.QUEUED, PresegmentStatus.RUNNING],
    ).update(presegment_status=PresegmentStatus.FAILED, presegment_error=reason[:2000]):
        event_emit(
            project_id=image.project_id,
            event="presegment.failed",
            data={"image": image.pk, "model_version": model_version_id, "error": reason[:500]},
        )


def _tile_cells(image_id: int, chunk: int = 32) -> Iterator[TileCell]:
    """The kept cells of every tile of the image, read ``chunk`` tiles per query (each query
    complete before the caller writes: no cursor stays open under the inserts)."""
    last = -1
    while True:
        rows = list(
            PresegmentTile.objects.filter(image_id=image_id, index__gt=last)
            .order_by("index")
            .values_list("index", "cells")[:chunk]
        )
        if not rows:
            return
        for index, cells in rows:
            last = index
            for row in cells:
                yield TileCell.from_json(row)


def image_tiles_stitch(*, image_id: int, model_version_id: int) -> int | None:
    """Stitch a run whose every tile is done and store its proposals (under the image's row
    lock: once, however many tasks finish together). None when the run is not complete, or
    was stitched, replaced or failed meanwhile; the number of proposals otherwise."""
    pending = PresegmentTile.objects.filter(image_id=image_id).exclude(status=TileRunStatus.DONE)
    if pending.exists() or not PresegmentTile.objects.filter(image_id=image_id).exists():
        return None
    started = time.perf_counter()
    try:
        with transaction.atomic():
            image = (
                Image.objects.select_for_update()
                .select_related("project")
                .filter(pk=image_id, presegment_model_id=model_version_id, presegment_status=PresegmentStatus.RUNNING)
                .first()
            )
            if image is None or pending.exists():
                return None
            version = ModelVersion.objects.get(pk=model_version_id)
            # two passes over the rows, streamed: a slide's cells are never all held at once
            cells: Iterable[TileCell] = stitch_stream(lambda: _tile_cells(image_id))
            # a region's run: its tiles reach past it; keep the cells whose centroid is inside
            region = PresegmentTile.objects.filter(image_id=image_id).values_list("region_polygon", flat=True)[0]
            if region is not None:
                held = list(cells)
                inside = cells_inside(region, [c.points for c in held])
                cells = [c for c, keep in zip(held, inside, strict=True) if keep]
            count = proposals_store(image=image, model_version=version, contours=cells, within=region)
            PresegmentTile.objects.filter(image_id=image_id).update(cells=[])
    except Exception as exc:
        reason = f"stitching the tiles: {type(exc).__name__}: {exc}"
        failed = Image.objects.select_related("project").get(pk=image_id)
        _image_fail(failed, model_version_id, reason)
        raise
    _reader_forget(image)
    logger.info("Image %s: %s proposals stitched in %.1f s", image_id, count, time.perf_counter() - started)
    return count


# --- the watchdog ------------------------------------------------------------------------------


def tiles_reap(*, now: Any = None) -> dict[str, list[int]]:
    """The tiled runs' share of ``presegment_reap``: tiles whose worker is gone (no heartbeat
    for ``PRESEGMENT_HEARTBEAT_TIMEOUT`` s, or its process on this host died) go back to queued
    and their task is enqueued again, or fail the image after ``PRESEGMENT_MAX_ATTEMPTS`` tries;
    queued tiles whose task waited ``PRESEGMENT_QUEUED_TIMEOUT`` with no message in the outbox
    get it again; a run with every tile done whose stitch is not running is stitched by a new
    task. Returns ``{"requeued": [image ids], "failed": [image ids]}``."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.PRESEGMENT_HEARTBEAT_TIMEOUT)
    out: dict[str, list[int]] = {"requeued": [], "failed": []}
    resend: set[tuple[int, int, int]] = set()
    running = PresegmentTile.objects.filter(status=TileRunStatus.RUNNING).values_list(
        "pk", "image_id", "model_version_id", "task", "index", "worker", "heartbeat_at", "attempts"
    )
    for pk, image_id, version_id, task, index, worker, beat, attempts in running:
        if beat is None or beat < stale:
            reason = f"no heartbeat for more than {settings.PRESEGMENT_HEARTBEAT_TIMEOUT} s"
        elif worker_gone(worker):
            reason = f"the worker process {worker} is gone (killed or crashed)"
        else:
            continue
        reason = f"tile {index + 1}: {reason}; the worker was lost"
        if attempts >= settings.PRESEGMENT_MAX_ATTEMPTS:
            if PresegmentTile.objects.filter(pk=pk, status=TileRunStatus.RUNNING).update(
                status=TileRunStatus.FAILED, error=reason
            ):
                image = Image.objects.get(pk=image_id)
                _image_fail(image, version_id, f"{reason}; gave up after {attempts} run(s). Pre-segment it again.")
                out["failed"].append(image_id)
            continue
        if PresegmentTile.objects.filter(pk=pk, status=TileRunStatus.RUNNING, worker=worker).update(
            status=TileRunStatus.QUEUED, worker="", heartbeat_at=None, queued_at=now, error=f"re-queued: {reason}"
        ):
            resend.add((image_id, version_id, task))
            logger.warning("Tiled pre-segmentation of image %s: %s", image_id, reason)
    waited = now - timedelta(seconds=settings.PRESEGMENT_QUEUED_TIMEOUT)
    for image_id, version_id, task in (
        PresegmentTile.objects.filter(status=TileRunStatus.QUEUED, queued_at__lt=waited)
        .values_list("image_id", "model_version_id", "task")
        .distinct()
    ):
        if not outbox_pending(name=TILES_TASK, args=[image_id, version_id, task]):
            resend.add((image_id, version_id, task))
    live = [PresegmentStatus.QUEUED, PresegmentStatus.RUNNING]
    for image_id, version_id, task in sorted(resend):
        if Image.objects.filter(pk=image_id, presegment_model_id=version_id, presegment_status__in=live).exists():
            PresegmentTile.objects.filter(image_id=image_id, task=task, status=TileRunStatus.QUEUED).update(
                queued_at=now
            )
            task_enqueue(TILES_TASK, args=[image_id, version_id, task], queue=QUEUE)
            if image_id not in out["requeued"]:
                out["requeued"].append(image_id)
    # every tile done, the image still running, nobody beating: the stitch died
    complete = (
        Image.objects.filter(tiled=True, presegment_status=PresegmentStatus.RUNNING)
        .filter(Q(presegment_heartbeat_at__lt=stale) | Q(presegment_heartbeat_at__isnull=True))
        .values_list("pk", "presegment_model_id")
    )
    for image_id, version_id in complete:
        tiles = PresegmentTile.objects.filter(image_id=image_id)
        if version_id is None or not tiles.exists() or tiles.exclude(status=TileRunStatus.DONE).exists():
            continue
        if outbox_pending(name=STITCH_TASK, args=[image_id, version_id]):
            continue
        Image.objects.filter(pk=image_id).update(presegment_heartbeat_at=now)
        task_enqueue(STITCH_TASK, args=[image_id, version_id], queue=QUEUE)
        out["requeued"].append(image_id)
    return out
