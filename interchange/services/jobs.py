"""An export as a streamed response or, when large or asked for, a Celery job that writes it to a
file members download until it expires (then 410)."""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from typing import IO

from django.contrib.auth.models import User
from django.core.files import File
from django.core.files.storage import default_storage
from django.db.models import QuerySet
from django.utils import timezone

from annotations.models import Image, Project
from core.errors import ConflictError, GoneError
from core.events import event_emit
from core.queue import task_enqueue
from core.streaming import gzip_chunks
from interchange.models import ExportJob, ExportStatus
from interchange.services.archives import cellpose_zip_stream, coco_zip_stream, geojson_zip_stream, nnunet_zip_stream
from interchange.services.coco import ProgressFn, coco_export_stream
from interchange.services.selection import (
    EXPORT_ASYNC_CELL_THRESHOLD,
    EXPORT_ASYNC_IMAGE_THRESHOLD,
    EXPORT_JOB_TTL_HOURS,
    IMAGE_KINDS,
    ExportOptions,
    export_cell_counts,
    export_images,
    export_options_parse,
    logger,
    setting,
)


@dataclass
class ExportStream:
    chunks: Iterator[bytes]
    file_name: str
    content_type: str
    content_encoding: str | None = None


def export_stream(
    *,
    project: Project,
    options: ExportOptions,
    accept_gzip: bool = False,
    progress: ProgressFn | None = None,
    gzip_level: int = 1,
) -> ExportStream:
    """The bytes of an export (lazily), with the name and content type to offer them under.
    A COCO export is a ``.json.gz`` file with ``gzip``, or gzip content-encoded when the client
    accepts it (``accept_gzip``); ``gzip_level`` 1 suits streaming, a stored file may take more."""
    filters = options.filters
    base = f"project-{project.pk}-{filters.layer}"
    if filters.model_version_id is not None:
        base += f"-model-{filters.model_version_id}"
    kind = options.kind
    if kind == "coco":
        chunks = coco_export_stream(
            project=project,
            filters=filters,
            segmentation=options.segmentation,
            progress=progress,
            include_empty=options.include_empty,
        )
        if options.gzip:
            return ExportStream(gzip_chunks(chunks, gzip_level), f"{base}-coco.json.gz", "application/gzip")
        if accept_gzip:
            return ExportStream(gzip_chunks(chunks, gzip_level), f"{base}-coco.json", "application/json", "gzip")
        return ExportStream(chunks, f"{base}-coco.json", "application/json")
    if kind == "coco_zip":
        chunks = coco_zip_stream(
            project=project,
            filters=filters,
            segmentation=options.segmentation,
            progress=progress,
            include_empty=options.include_empty,
        )
        return ExportStream(chunks, f"{base}-coco.zip", "application/zip")
    if kind == "geojson":
        chunks = geojson_zip_stream(
            project=project, filters=filters, object_type=options.object_type, progress=progress
        )
        return ExportStream(chunks, f"{base}-geojson.zip", "application/zip")
    if kind == "nnunet":
        return ExportStream(
            nnunet_zip_stream(project=project, options=options, progress=progress),
            f"{base}-nnunet.zip",
            "application/zip",
        )
    return ExportStream(
        cellpose_zip_stream(project=project, options=options, progress=progress),
        f"{base}-cellpose.zip",
        "application/zip",
    )


def _export_images(project: Project, options: ExportOptions) -> QuerySet[Image]:
    return export_images(project=project, filters=options.filters, include_empty=options.include_empty)


def _export_size(project: Project, options: ExportOptions) -> tuple[int, int]:
    """(cells, images) an export holds."""
    counts = export_cell_counts(project=project, filters=options.filters)
    return sum(counts.values()), _export_images(project, options).count()


def export_request(
    *, project: Project, user: User, kind: str, params: Mapping[str, str], accept_gzip: bool = False
) -> ExportStream | ExportJob:
    """Start an export: validate the parameters, then stream it, or (``async=1``, or more than
    EXPORT_ASYNC_CELL_THRESHOLD cells, or for the kinds that carry image files more than
    EXPORT_ASYNC_IMAGE_THRESHOLD images or any tiled image: a slide's original or its crops are
    read by a worker, not in a web request) queue a job."""
    options, wants_async = export_options_parse(project=project, kind=kind, params=params)
    if not wants_async:
        cells, images = _export_size(project, options)
        wants_async = cells > setting("EXPORT_ASYNC_CELL_THRESHOLD", EXPORT_ASYNC_CELL_THRESHOLD) or (
            kind in IMAGE_KINDS
            and (
                images > setting("EXPORT_ASYNC_IMAGE_THRESHOLD", EXPORT_ASYNC_IMAGE_THRESHOLD)
                or _export_images(project, options).filter(tiled=True).exists()
            )
        )
    if wants_async:
        return export_job_create(project=project, user=user, options=options)
    return export_stream(project=project, options=options, accept_gzip=accept_gzip)


def export_job_create(*, project: Project, user: User | None, options: ExportOptions) -> ExportJob:
    """Record an export job and run it on the ``default`` queue once the transaction commits."""

    cells, images = _export_size(project, options)
    job = ExportJob.objects.create(
        project=project,
        created_by=user,
        kind=options.kind,
        params=options.to_dict(),
        items_total=cells if options.kind in ("coco", "geojson") else images,
    )
    job_id = job.pk
    task_enqueue("interchange.export_run", args=[job_id], queue="default")
    return job


def export_job_run(*, job_id: int) -> ExportJob:
    """Write a queued export to ``exports/<project>/`` of the default storage (the Celery task's body).

    Progress is saved at most once a second; a failure is recorded on the job, not raised.
    Running a job that already finished (a duplicate delivery) does nothing.
    """
    # Queued, or running when a worker died and the broker redelivered the task (acks_late).
    claimed = ExportJob.objects.filter(pk=job_id, status__in=(ExportStatus.QUEUED, ExportStatus.RUNNING)).update(
        status=ExportStatus.RUNNING, started_at=timezone.now()
    )
    job = ExportJob.objects.select_related("project").get(pk=job_id)
    if not claimed:
        return job
    options = ExportOptions.from_dict(job.params)
    last_saved = [0.0]

    def progress(done: int) -> None:
        now = time.monotonic()
        if now - last_saved[0] >= 1.0:
            last_saved[0] = now
            ExportJob.objects.filter(pk=job_id).update(items_done=done)

    try:
        stream = export_stream(project=job.project, options=options, progress=progress, gzip_level=6)
        suffix = "".join(PurePosixPath(stream.file_name).suffixes[-2:]) or ".bin"
        path = f"exports/{job.project_id}/{job.pk}-{secrets.token_hex(8)}{suffix}"
        size = 0
        with tempfile.TemporaryFile() as handle:
            for chunk in stream.chunks:
                handle.write(chunk)
                size += len(chunk)
            handle.seek(0)
            stored = default_storage.save(path, File(handle, name=stream.file_name))
    except Exception as exc:
        logger.exception("export job %s failed", job_id)
        ExportJob.objects.filter(pk=job_id).update(
            status=ExportStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
    else:
        now = timezone.now()
        ttl = timedelta(hours=setting("EXPORT_JOB_TTL_HOURS", EXPORT_JOB_TTL_HOURS))
        ExportJob.objects.filter(pk=job_id).update(
            status=ExportStatus.DONE,
            file=stored,
            file_name=stream.file_name,
            content_type=stream.content_type,
            size_bytes=size,
            items_done=job.items_total,
            finished_at=now,
            expires_at=now + ttl,
        )
        event_emit(
            project_id=job.project_id, event="export.ready", data={"job": job.pk, "kind": job.kind, "size_bytes": size}
        )
    job.refresh_from_db()
    return job


def export_job_expired(job: ExportJob, now: datetime | None = None) -> bool:
    return job.expires_at is not None and job.expires_at <= (now or timezone.now())


def export_job_open(*, job: ExportJob) -> IO[bytes]:
    """The job's file, open for reading. ConflictError (409) while it is not done, ExportGone
    (410) once it expired."""
    if job.status != ExportStatus.DONE:
        raise ConflictError(f"The export is {job.status}; there is nothing to download yet.", {"status": job.status})
    if export_job_expired(job) or not job.file:
        raise GoneError("This export expired; start a new one.")
    try:
        return default_storage.open(job.file, "rb")
    except FileNotFoundError as exc:
        raise GoneError("This export's file is gone; start a new one.") from exc


def export_jobs_prune() -> int:
    """Delete the files of expired exports (the jobs stay, as history); returns how many."""
    expired = ExportJob.objects.filter(expires_at__lte=timezone.now()).exclude(file="")
    count = 0
    for job in expired.iterator():
        default_storage.delete(job.file)
        ExportJob.objects.filter(pk=job.pk).update(file="")
        count += 1
    return count
