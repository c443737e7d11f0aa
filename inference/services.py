"""Pre-segmentation: run a backend on an image and store its cells as the proposal layer.

Proposals are tagged with the model version that made them; re-running a version replaces
that version's proposals in one transaction. The doctors' annotation layer is never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from annotations.models import LOCKED_STATUSES, Image, PresegmentStatus, Project, Region
from annotations.services.workflow import annotation_write_check, status_label
from core.errors import ConflictError, ServiceValidationError
from core.events import event_emit
from core.queue import outbox_pending, task_enqueue
from cytoseg.backends import backend_get
from cytoseg.contours import instances_to_polygons
from cytoseg.device import device_default
from cytoseg.imaging import read_rgb
from inference.interactive import image_maps_store
from inference.liveness import worker_gone, worker_name
from inference.proposals import proposals_store
from inference.tiled import image_tiles_enqueue, tiles_reap
from training.models import ModelVersion
from training.services.artifacts import artifacts_for
from training.services.registry import model_version_for_project, model_version_settings

logger = logging.getLogger(__name__)
PRESEGMENT_TASK = "inference.presegment_image"


def image_presegment_enqueue(
    *, image: Image, model_version: ModelVersion | None = None, region: Region | None = None
) -> ModelVersion:
    """Mark the image queued and enqueue the GPU task once the transaction commits. ``region``
    (a tiled image's region of interest): only the tiles it meets, proposals only inside it."""
    if region is not None and not image.tiled:
        raise ServiceValidationError(
            "Only a large image or slide is pre-segmented by region.",
            {"region": "this image is pre-segmented whole; leave region out"},
        )
    if region is not None and region.status in LOCKED_STATUSES:
        raise ConflictError(f"The region is {status_label(region.status)}; its proposals are locked.")
    # Proposals are what verified cells' provenance points back to: once an image is submitted
    # they must stay as they were (correction analytics), so pre-segmenting again is refused.
    annotation_write_check(image=image)
    version = model_version or model_version_for_project(project=image.project)
    with transaction.atomic():
        Image.objects.filter(pk=image.pk).update(
            presegment_status=PresegmentStatus.QUEUED,
            presegment_error="",
            presegment_model=version,
            presegment_queued_at=timezone.now(),
            presegment_attempts=0,
        )
        image.presegment_status = PresegmentStatus.QUEUED
        if image.tiled:
            # a large image or slide is never read whole: its tiles are tasks of their own
            # (inference.tiled), which every GPU worker shares
            image_tiles_enqueue(image=image, model_version=version, region=region)
        else:
            task_enqueue(PRESEGMENT_TASK, args=[image.pk, version.pk], queue="gpu")
    return version


def project_presegment_enqueue(*, project: Project, model_version: ModelVersion | None = None) -> int:
    version = model_version or model_version_for_project(project=project)
    images = list(project.images.exclude(status__in=LOCKED_STATUSES))
    for image in images:
        image_presegment_enqueue(image=image, model_version=version)
    return len(images)


def presegment_on_upload(*, images: list[Image]) -> None:
    """Pre-segment freshly uploaded images when their project asks for it."""
    for image in images:
        if image.project.auto_presegment:
            image_presegment_enqueue(image=image)


@dataclass
class PresegmentResult:
    image_id: int
    model_version_id: int
    cell_count: int
    timings: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # a duplicate delivery: another run has (or had) the image


def _claim(image_id: int, model_version_id: int, *, retry: bool) -> bool:
    """Mark the image running on this worker if it is this version's to run (see the caller)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.PRESEGMENT_HEARTBEAT_TIMEOUT)
    mine = Q(presegment_status=PresegmentStatus.QUEUED) | Q(
        presegment_status=PresegmentStatus.RUNNING, presegment_heartbeat_at__lt=stale
    )
    # a message delivered again because its pool process was killed: that process is gone
    worker = Image.objects.filter(pk=image_id, presegment_status=PresegmentStatus.RUNNING).values_list(
        "presegment_worker", flat=True
    )
    dead = [w for w in worker if w and worker_gone(w)]
    if dead:
        mine |= Q(presegment_status=PresegmentStatus.RUNNING, presegment_worker=dead[0])
    if retry:
        mine |= Q(presegment_status=PresegmentStatus.FAILED)
    return bool(
        Image.objects.filter(mine, pk=image_id, presegment_model_id=model_version_id).update(
            presegment_status=PresegmentStatus.RUNNING,
            presegment_error="",
            presegment_worker=worker_name(),
            presegment_heartbeat_at=now,
            presegment_attempts=F("presegment_attempts") + 1,
        )
    )


class _Heartbeat:
    """Writes the image's heartbeat every PRESEGMENT_HEARTBEAT_SECONDS from a thread."""

    def __init__(self, image_id: int) -> None:
        self.image_id = image_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"presegment-heartbeat-{image_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _beat(self) -> None:
        try:
            while not self.stopped.wait(settings.PRESEGMENT_HEARTBEAT_SECONDS):
                Image.objects.filter(pk=self.image_id, presegment_status=PresegmentStatus.RUNNING).update(
                    presegment_heartbeat_at=timezone.now()
                )
        except Exception:  # a missed heartbeat is the watchdog's business, not a crash
            logger.warning("pre-segmentation heartbeat of image %s stopped", self.image_id, exc_info=True)
        finally:
            connection.close()


def presegment_reap(*, now: Any = None) -> dict[str, list[int]]:
    """Find pre-segmentations without a live task behind them and re-queue them (through the
    outbox), or fail them with the reason after PRESEGMENT_MAX_ATTEMPTS runs:

    * running, but the heartbeat is older than PRESEGMENT_HEARTBEAT_TIMEOUT or the worker's
      process (on this host) is gone: the worker was killed;
    * queued for longer than PRESEGMENT_QUEUED_TIMEOUT with no message waiting in the outbox:
      the broker lost the task;
    * a tiled image's tiles the same way, one by one (:func:`inference.tiled.tiles_reap`).

    Returns ``{"requeued": [...], "failed": [...]}`` (image ids)."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.PRESEGMENT_HEARTBEAT_TIMEOUT)
    out: dict[str, list[int]] = {"requeued": [], "failed": []}
    # a tiled image's run lives in its tiles (inference.tiled.tiles_reap)
    running = Image.objects.filter(presegment_status=PresegmentStatus.RUNNING, tiled=False).values_list(
        "pk", "presegment_worker", "presegment_heartbeat_at", "presegment_attempts", "presegment_model_id"
    )
    lost: list[tuple[int, str, int, int | None, PresegmentStatus]] = []
    for pk, worker, beat, attempts, version_id in running:
        if beat is None or beat < stale:
            last = beat.isoformat() if beat else "never"
            reason = f"no heartbeat for more than {settings.PRESEGMENT_HEARTBEAT_TIMEOUT} s (last {last})"
        elif worker_gone(worker):
            reason = f"the worker process {worker} is gone (killed or crashed)"
        else:
            continue
        lost.append((pk, f"{reason}; the worker was lost", attempts, version_id, PresegmentStatus.RUNNING))
    waited = now - timedelta(seconds=settings.PRESEGMENT_QUEUED_TIMEOUT)
    queued = Image.objects.filter(
        presegment_status=PresegmentStatus.QUEUED, presegment_queued_at__lt=waited, tiled=False
    ).values_list("pk", "presegment_attempts", "presegment_model_id")
    for image_id, runs, model_id in queued:
        if model_id is not None and outbox_pending(name=PRESEGMENT_TASK, args=[image_id, model_id]):
            continue  # the broker is down: its message waits in the outbox
        reason = f"still queued after {settings.PRESEGMENT_QUEUED_TIMEOUT} s: its task was lost"
        lost.append((image_id, reason, runs, model_id, PresegmentStatus.QUEUED))
    for lost_id, reason, runs_so_far, lost_model, status in lost:
        if runs_so_far >= settings.PRESEGMENT_MAX_ATTEMPTS or lost_model is None:
            if Image.objects.filter(pk=lost_id, presegment_status=status).update(
                presegment_status=PresegmentStatus.FAILED,
                presegment_error=f"{reason}; gave up after {runs_so_far} run(s). Pre-segment it again."[:2000],
            ):
                out["failed"].append(lost_id)
                event_emit(
                    project_id=Image.objects.values_list("project_id", flat=True).get(pk=lost_id),
                    event="presegment.failed",
                    data={"image": lost_id, "model_version": lost_model, "error": reason[:500]},
                )
            continue
        with transaction.atomic():
            if Image.objects.filter(pk=lost_id, presegment_status=status).update(
                presegment_status=PresegmentStatus.QUEUED,
                presegment_error=f"re-queued: {reason}"[:2000],
                presegment_queued_at=now,
                presegment_heartbeat_at=None,
            ):
                task_enqueue(PRESEGMENT_TASK, args=[lost_id, lost_model], queue="gpu")
                out["requeued"].append(lost_id)
        logger.warning("Pre-segmentation of image %s: %s", lost_id, reason)
    tiled = tiles_reap(now=now)
    out["requeued"] += tiled["requeued"]
    out["failed"] += tiled["failed"]
    return out


def _device() -> str:
    return device_default() if settings.INFERENCE_DEVICE == "auto" else settings.INFERENCE_DEVICE


def image_presegment_run(*, image_id: int, model_version_id: int, retry: bool = False) -> PresegmentResult:
    """Pre-segment one image with one model version and store the proposals.

    Runs only when it claims the image: queued for this version, or running on a worker that is
    evidently gone (a redelivered message); ``retry`` (the task's own retry) may claim it after
    its failure too. Anything else is a duplicate delivery and is skipped. While it runs, a
    heartbeat shows the worker is alive (:func:`presegment_reap`).
    On failure the image is marked failed with the reason and earlier proposals stay intact;
    the exception propagates so the task layer can retry transient errors.
    """
    image = Image.objects.select_related("project").get(pk=image_id)
    version = ModelVersion.objects.select_related("project").get(pk=model_version_id)
    if version.project_id != image.project_id:
        raise ValueError("The model version belongs to another project.")
    if image.tiled or not _claim(image_id, model_version_id, retry=retry):  # a tiled image: inference.tiled
        return PresegmentResult(image_id=image_id, model_version_id=version.pk, cell_count=0, skipped=True)
    timings: dict[str, float] = {}
    heartbeat = _Heartbeat(image_id)
    heartbeat.start()
    try:
        started = time.perf_counter()
        with image.display.open("rb") as handle:
            rgb = read_rgb(handle.read())
        timings["load_image"] = time.perf_counter() - started
        # The files must be the ones registered and the settings must name no file: nothing
        # but a checked package ever reaches a loader. A first use on this host fetches them
        # from storage into the model cache (timed as "model", with the load).
        started = time.perf_counter()
        backend = backend_get(
            name=version.kind,
            artifacts=artifacts_for(version),
            settings=model_version_settings(version=version),
            device=_device(),
        )
        timings["model"] = time.perf_counter() - started
        started = time.perf_counter()
        prediction = backend.predict(rgb)
        timings["predict"] = time.perf_counter() - started
        timings.update({f"backend.{k}": v for k, v in prediction.timings.items()})
        started = time.perf_counter()
        contours = instances_to_polygons(prediction.instances, min_area=settings.PRESEGMENT_MIN_AREA)
        timings["contours"] = time.perf_counter() - started
        started = time.perf_counter()
        count = proposals_store(image=image, model_version=version, contours=contours)
        timings["db_write"] = time.perf_counter() - started
        if prediction.maps is not None:
            # kept for click-to-segment: a click then costs milliseconds (inference.interactive);
            # without them the first click computes them, so a failure here fails nothing
            started = time.perf_counter()
            try:
                image_maps_store(image=image, model_version=version, maps=prediction.maps)
            except Exception:
                logger.warning("Could not keep the maps of image %s", image_id, exc_info=True)
            timings["maps_store"] = time.perf_counter() - started
    except Exception as exc:
        Image.objects.filter(pk=image_id).update(
            presegment_status=PresegmentStatus.FAILED, presegment_error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        event_emit(
            project_id=image.project_id,
            event="presegment.failed",
            data={"image": image_id, "model_version": version.pk, "error": f"{type(exc).__name__}: {exc}"[:500]},
        )
        logger.exception("Pre-segmentation of image %s failed", image_id)
        raise
    finally:
        heartbeat.stop()
    return PresegmentResult(image_id=image_id, model_version_id=version.pk, cell_count=count, timings=timings)
