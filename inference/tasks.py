"""Celery adapters: ids in, one service call. GPU work runs on the ``gpu`` queue, the maps a click
waits for on the ``interactive`` queue."""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

from celery import current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready
from django.conf import settings
from django.db import OperationalError, close_old_connections, connection

from annotations.models import Image, PresegmentStatus
from inference.interactive import INTERACTIVE_QUEUE, image_maps_compute, interactive_models_warm
from inference.services import image_presegment_run, presegment_reap
from inference.tiled import QUEUE as TILES_QUEUE
from inference.tiled import STITCH_TASK, TILES_TASK, image_tiles_run, image_tiles_stitch

logger = logging.getLogger(__name__)


@shared_task(
    name="inference.presegment_image",
    queue="gpu",
    bind=True,
    acks_late=True,
    autoretry_for=(OperationalError, ConnectionError),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def presegment_image(self: Any, image_id: int, model_version_id: int) -> dict[str, Any]:
    try:
        result = image_presegment_run(
            image_id=image_id, model_version_id=model_version_id, retry=bool(self.request.retries)
        )
    except SoftTimeLimitExceeded:
        Image.objects.filter(pk=image_id).update(
            presegment_status=PresegmentStatus.FAILED, presegment_error="Timed out."
        )
        raise
    if result.skipped:
        return {"skipped": "another run has or had the image"}
    return {"cells": result.cell_count, "timings": result.timings}


@shared_task(
    name=TILES_TASK,
    queue=TILES_QUEUE,
    acks_late=True,
    autoretry_for=(OperationalError, ConnectionError),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def presegment_tiles(image_id: int, model_version_id: int, task: int) -> dict[str, Any]:
    """One batch of a tiled image's tiles (``image_tiles_run``); the last one stitches."""
    result = image_tiles_run(image_id=image_id, model_version_id=model_version_id, task=task)
    out: dict[str, Any] = {"tiles": result.tiles, "timings": result.timings}
    if result.skipped:
        out["skipped"] = result.skipped
    if result.cell_count is not None:
        out["cells"] = result.cell_count
    return out


@shared_task(
    name=STITCH_TASK,
    queue=TILES_QUEUE,
    acks_late=True,
    autoretry_for=(OperationalError, ConnectionError),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def presegment_stitch(image_id: int, model_version_id: int) -> dict[str, Any]:
    """Stitch a tiled run whose stitch was lost (the watchdog's; normally the last tile task
    stitches)."""
    return {"cells": image_tiles_stitch(image_id=image_id, model_version_id=model_version_id)}


@shared_task(
    name="inference.image_maps",
    queue=INTERACTIVE_QUEUE,
    acks_late=True,
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def image_maps(image_id: int, model_version_id: int, region: list[int] | None = None) -> dict[str, Any]:
    """The model's maps of one image (or of a window of it, ``[r0, r1, c0, c1]``) for
    click-to-segment, on the ``interactive`` queue: its own worker, so that a click never waits
    behind pre-segmentation or training."""
    result = image_maps_compute(image_id=image_id, model_version_id=model_version_id, region=region)
    return {"computed": result.computed, "seconds": round(result.seconds, 3), **result.stages}


@shared_task(name="inference.watchdog", queue="default", acks_late=True)
def watchdog() -> dict[str, Any]:
    """Re-queue or fail pre-segmentations without a live task (scheduled every
    PRESEGMENT_HEARTBEAT_TIMEOUT seconds)."""
    return presegment_reap()


@worker_ready.connect
def _reap_at_worker_start(sender: Any = None, **kwargs: Any) -> None:
    """A worker that starts may be the restart of one killed mid-image: re-queue its images."""
    try:
        result = presegment_reap()
        if result["requeued"] or result["failed"]:
            logger.warning("Pre-segmentations left by a dead worker: %s", result)
    except Exception:  # a database hiccup must not stop the worker from starting
        logger.exception("Could not check for orphaned pre-segmentations")
    finally:
        close_old_connections()


@worker_process_init.connect
def _interactive_preload(**_: Any) -> None:
    """A pool process of a worker on the ``interactive`` queue imports the model libraries when
    it starts rather than on its first task: that task is a click waiting (tens of seconds of
    imports on a busy CPU). The worker's main process never imports them (see config.celery)."""
    queues = set(current_app.amqp.queues.consume_from or {})
    if INTERACTIVE_QUEUE not in queues:
        return
    try:
        for module in ("cytoseg.backends.cellpose", "cytoseg.backends.nnunet"):  # torch, Cellpose, nnU-Net
            importlib.import_module(module)
    except Exception:  # a missing library fails the task later, with its message
        logger.warning("Could not preload the model libraries", exc_info=True)
        return
    if settings.INTERACTIVE_TORCH_THREADS:
        import torch

        torch.set_num_threads(settings.INTERACTIVE_TORCH_THREADS)
    # the models themselves in a thread: the pool waits a few seconds at most for a child to
    # start, and a task that comes meanwhile finds the model being loaded (the backends' cache
    # lock) rather than loading it a second time
    threading.Thread(target=_interactive_warm, name="interactive-warm", daemon=True).start()


def _interactive_warm() -> None:
    try:
        interactive_models_warm()
    except Exception:  # a broken model fails its first task later, with its message
        logger.warning("Could not load the active models for clicks", exc_info=True)
    finally:
        connection.close()  # this thread's own
