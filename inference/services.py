"""Pre-segmentation: run a backend on an image and store its cells as the proposal layer.

Proposals are tagged with the model version that made them; re-running a version replaces
that version's proposals in one transaction. The doctors' annotation layer is never touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotations.models import LOCKED_STATUSES, Cell, CellSource, Image, Layer, PresegmentStatus, Project
from annotations.services.workflow import annotation_write_check, image_presegmented
from core.queue import task_enqueue
from cytoseg.backends import backend_get
from cytoseg.contours import instances_to_polygons
from cytoseg.device import device_default
from cytoseg.imaging import read_rgb
from training.models import ModelVersion
from training.services.registry import artifacts_verify, model_version_for_project, model_version_settings

logger = logging.getLogger(__name__)


def image_presegment_enqueue(*, image: Image, model_version: ModelVersion | None = None) -> ModelVersion:
    """Mark the image queued and enqueue the GPU task once the transaction commits."""
    # Proposals are what verified cells' provenance points back to: once an image is submitted
    # they must stay as they were (correction analytics), so pre-segmenting again is refused.
    annotation_write_check(image=image)
    version = model_version or model_version_for_project(project=image.project)
    Image.objects.filter(pk=image.pk).update(
        presegment_status=PresegmentStatus.QUEUED, presegment_error="", presegment_model=version
    )
    image.presegment_status = PresegmentStatus.QUEUED
    image_id, version_id = image.pk, version.pk
    task_enqueue("inference.presegment_image", args=[image_id, version_id], queue="gpu")
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


def _device() -> str:
    return device_default() if settings.INFERENCE_DEVICE == "auto" else settings.INFERENCE_DEVICE


def image_presegment_run(*, image_id: int, model_version_id: int) -> PresegmentResult:
    """Pre-segment one image with one model version and store the proposals.

    On failure the image is marked failed with the reason and earlier proposals stay intact;
    the exception propagates so the task layer can retry transient errors.
    """
    image = Image.objects.select_related("project").get(pk=image_id)
    version = ModelVersion.objects.select_related("project").get(pk=model_version_id)
    if version.project_id != image.project_id:
        raise ValueError("The model version belongs to another project.")
    Image.objects.filter(pk=image_id).update(presegment_status=PresegmentStatus.RUNNING, presegment_error="")
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        with image.display.open("rb") as handle:
            rgb = read_rgb(handle.read())
        timings["load_image"] = time.perf_counter() - started
        # The files must be the ones registered and the settings must name no file: nothing
        # but a checked package ever reaches a loader.
        artifacts_verify(version)
        backend = backend_get(
            name=version.kind,
            artifacts=Path(version.artifact_path) if version.artifact_path else None,
            settings=model_version_settings(version=version),
            device=_device(),
        )
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
    except Exception as exc:
        Image.objects.filter(pk=image_id).update(
            presegment_status=PresegmentStatus.FAILED, presegment_error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        logger.exception("Pre-segmentation of image %s failed", image_id)
        raise
    return PresegmentResult(image_id=image_id, model_version_id=version.pk, cell_count=count, timings=timings)


def proposals_store(*, image: Image, model_version: ModelVersion, contours: list[Any]) -> int:
    """Replace ``model_version``'s proposals of ``image`` with ``contours`` in one transaction."""
    by_label: dict[int, int] = {}
    for cell_class in image.project.classes.order_by("order", "id"):
        by_label.setdefault(cell_class.model_label, cell_class.pk)
    now = timezone.now()
    cells = []
    for contour in contours:
        class_id = by_label.get(contour.label)
        if class_id is None:
            continue  # the project has no class for this label (e.g. no erythrocyte class)
        # the contour's bbox is (x_min, y_min, x_max, y_max); the store and COCO keep [x, y, w, h]
        x0, y0, x1, y1 = contour.bbox
        x, y, w, h = x0, y0, x1 - x0, y1 - y0
        cells.append(
            Cell(
                image_id=image.pk,
                layer=Layer.PROPOSAL,
                cell_class_id=class_id,
                polygon=[[float(px), float(py)] for px, py in contour.points],
                bbox_x=x,
                bbox_y=y,
                bbox_w=w,
                bbox_h=h,
                area=contour.area,
                score=float(contour.score),
                source=CellSource.MODEL,
                model_version=model_version,
                provenance={"model_kind": model_version.kind, "model_number": model_version.number},
                created_at=now,
                updated_at=now,
            )
        )
    with transaction.atomic():
        Cell.objects.filter(image_id=image.pk, layer=Layer.PROPOSAL, model_version=model_version).delete()
        Cell.objects.bulk_create(cells, batch_size=500)
        updates: dict[str, Any] = {
            "presegment_status": PresegmentStatus.DONE,
            "presegment_error": "",
            "presegment_model": model_version,
        }
        Image.objects.filter(pk=image.pk).update(**updates)
        image_presegmented(image=image)
    return len(cells)
