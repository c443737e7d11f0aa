"""Large images and whole slides: the upload's routing, the tile pyramid's build and its tiles.

An upload whose header (``cytoseg.slides.slide_probe``: libvips or OpenSlide, never a full
decode) shows a side above ``TILED_MIN_SIDE``, several resolutions or a scanner format becomes a
*tiled* image: the original is streamed into the storage unchanged, the row is created with
``tile_status=queued``, and the task ``annotations.pyramid_build`` (queue ``default``, through
the outbox) builds the DeepZoom pyramid in the worker's scratch and copies its tiles into the
storage under a folder of its own (``tile_root``). The web process then only streams tile files.
Smaller plain images keep the path of ``annotations.services.images``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from annotations.models import Image, TileStatus
from core.errors import NotFoundError
from core.queue import task_enqueue
from cytoseg.imaging import ImageRejected
from cytoseg.slides import TILE_SUFFIX, SlideInfo, slide_probe, sniff_format
from cytoseg.tiles import TileGeometry

logger = logging.getLogger(__name__)

PYRAMID_TASK = "annotations.pyramid_build"
PYRAMID_QUEUE = "default"
PYRAMID_MAX_ATTEMPTS = 3
_CHUNK = 1024 * 1024


@dataclass
class PreparedSlide:
    """An upload that goes the tiled way: its header's facts and its content hash."""

    name: str
    upload: Any
    info: SlideInfo
    sha256: str
    size: int


def _hash(upload: Any) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    upload.seek(0)
    while chunk := upload.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    upload.seek(0)
    return digest.hexdigest(), size


def slide_prepare(*, upload: Any, name: str) -> PreparedSlide | None:
    """Route one upload: a :class:`PreparedSlide` when it is to be tiled, None when it is an
    ordinary image (or no image at all: the ordinary path then says why). Reads the header
    only; raises :class:`ImageRejected` for a slide that breaks the slide limits."""
    if not hasattr(upload, "seek"):
        return None
    upload.seek(0)
    kind = sniff_format(upload.read(16))
    upload.seek(0)
    path = Path(upload.temporary_file_path()) if hasattr(upload, "temporary_file_path") else None
    if kind is None and path is None:
        return None
    try:
        if path is not None:
            info = slide_probe(path)
        elif kind == "TIFF":  # OpenSlide tells the scanner TIFFs (SVS, NDPI, ...) from a file only
            with tempfile.NamedTemporaryFile(suffix=".tif") as copy:
                shutil.copyfileobj(upload, copy, _CHUNK)
                copy.flush()
                info = slide_probe(Path(copy.name))
        else:
            info = slide_probe(upload.read(settings.IMAGE_MAX_UPLOAD_BYTES))
    except ImageRejected:
        return None  # the ordinary decoder gives its own, tested, reasons
    finally:
        upload.seek(0)
    tiled = info.reader == "openslide" or info.pyramidal or max(info.width, info.height) > settings.TILED_MIN_SIDE
    if not tiled:
        return None
    if info.width * info.height > settings.SLIDE_MAX_PIXELS:
        raise ImageRejected(
            f"the slide has {info.width}x{info.height} pixels; the limit is {settings.SLIDE_MAX_PIXELS}"
        )
    size = getattr(upload, "size", None)
    if size is not None and size > settings.SLIDE_MAX_UPLOAD_BYTES:
        raise ImageRejected(f"{size} bytes exceeds the slide size limit of {settings.SLIDE_MAX_UPLOAD_BYTES}")
    sha256, size = _hash(upload)
    return PreparedSlide(name=name, upload=upload, info=info, sha256=sha256, size=size)


def slide_store(*, prepared: PreparedSlide, folder: str, save_fields: dict[str, Any], written: list[str]) -> Image:
    """Stream the original into the storage, create the tiled row and enqueue its pyramid
    (in the caller's transaction: the task is sent once the row is committed)."""
    info = prepared.info
    extension = {"JPEG": "jpg", "PNG": "png"}.get(info.format, "tif" if "TIFF" in info.format else "bin")
    if info.reader == "openslide":
        extension = info.format.lower()
    prepared.upload.seek(0)
    # A Django upload spooled to disk is moved into disk storage, not copied (file_move_safe).
    content = prepared.upload if isinstance(prepared.upload, File) else File(prepared.upload)
    original = default_storage.save(f"{folder}/original.{extension}", content)
    written.append(original)
    magnification = save_fields.pop("magnification") or (f"{info.objective_power:g}x" if info.objective_power else "")
    image = Image.objects.create(
        sha256=prepared.sha256,
        original=original,
        display="",
        thumbnail="",
        original_format=info.format[:16],
        original_mode="RGB",
        bit_depth=8,
        size_bytes=prepared.size,
        width=info.width,
        height=info.height,
        magnification=magnification[:16],
        tiled=True,
        tile_status=TileStatus.QUEUED,
        tile_size=settings.SLIDE_TILE_SIZE,
        mpp_x=info.mpp_x,
        mpp_y=info.mpp_y,
        objective_power=info.objective_power,
        **save_fields,
    )
    task_enqueue(PYRAMID_TASK, args=[image.pk], queue=PYRAMID_QUEUE)
    return image


def tile_geometry(image: Image) -> TileGeometry:
    return TileGeometry(image.width, image.height, image.tile_size)


def _local_original(image: Image, scratch: Path) -> Path:
    """The original on the local disk: the file itself on disk storage, a streamed copy from
    object storage."""
    name = str(image.original.name)
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:
        target = scratch / f"original{Path(name).suffix}"
        with default_storage.open(name, "rb") as source, target.open("wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
        return target


class _ScratchFile(File):  # type: ignore[type-arg]
    """A scratch file disk storage may move instead of copying (it does so for any content with
    a temporary file path); object storage uploads it as any file."""

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def temporary_file_path(self) -> str:
        return str(self.path)


def _tiles_upload(root: Path, prefix: str, geometry: TileGeometry) -> None:
    """Copy every tile file into the storage under ``prefix`` (threads: object storage takes
    one request per tile, and the requests wait on the network, not the CPU)."""

    def put(relative: str) -> None:
        with (root / relative).open("rb") as handle:
            saved = default_storage.save(f"{prefix}/{relative}", _ScratchFile(handle, root / relative))
        if saved != f"{prefix}/{relative}":  # a fresh folder per build: a rename is a bug
            raise RuntimeError(f"tile stored as {saved}")

    names = [
        f"{level}/{col}_{row}.{TILE_SUFFIX}"
        for level in range(geometry.levels)
        for cols, rows in [geometry.tile_counts(level)]
        for row in range(rows)
        for col in range(cols)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in pool.map(put, names):
            pass


def folder_delete(prefix: str) -> None:
    """Delete every file under ``prefix`` in the storage (a tile folder)."""
    try:
        folders, files = default_storage.listdir(prefix)
    except FileNotFoundError:
        return
    for name in files:
        default_storage.delete(f"{prefix}/{name}")
    for folder in folders:
        folder_delete(f"{prefix}/{folder}")


def image_pyramid_build(*, image_id: int, on_progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Build the tile pyramid of a tiled image (worker side). Claims the image (queued, or
    running again after a lost worker), writes the pyramid under a new folder, records the
    geometry and a thumbnail, and marks it done; any failure is recorded with its reason."""
    waiting = Image.objects.filter(pk=image_id, tiled=True, tile_status__in=[TileStatus.QUEUED, TileStatus.RUNNING])
    if waiting.filter(tile_attempts__gte=PYRAMID_MAX_ATTEMPTS).update(
        tile_status=TileStatus.FAILED,
        tile_error=f"The worker stopped {PYRAMID_MAX_ATTEMPTS} times while building the pyramid (out of memory?).",
    ):
        return {"failed": "too many attempts"}
    claimed = waiting.update(
        tile_status=TileStatus.RUNNING, tile_error="", tile_attempts=F("tile_attempts") + 1, updated_at=timezone.now()
    )
    if not claimed:
        return {"skipped": "not a tiled image waiting for its pyramid"}
    image = Image.objects.get(pk=image_id)
    settings.SLIDE_SCRATCH_DIR.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"pyramid-{image_id}-", dir=settings.SLIDE_SCRATCH_DIR))
    folder = str(image.original.name).rsplit("/", 1)[0]
    prefix = f"{folder}/tiles-{uuid.uuid4().hex[:12]}"
    thumbnail = ""
    try:
        from cytoseg.slides import pyramid_build

        started = time.perf_counter()
        source = _local_original(image, scratch)
        info, geometry, root = pyramid_build(source, scratch / "out", tile_size=image.tile_size, progress=on_progress)
        if (info.width, info.height) != (image.width, image.height):
            raise ImageRejected(f"the file is {info.width}x{info.height}, its header said {image.width}x{image.height}")
        built = time.perf_counter()
        # the thumbnail first: storing the tiles may move them out of scratch
        thumbnail = _thumbnail_save(root / str(geometry.single_tile_level()) / f"0_0.{TILE_SUFFIX}", folder)
        _tiles_upload(root, prefix, geometry)
        timings = {"pyramid_s": round(built - started, 2), "store_s": round(time.perf_counter() - built, 2)}
    except Exception as exc:
        folder_delete(prefix)
        if thumbnail:
            default_storage.delete(thumbnail)
        reason = str(exc) if isinstance(exc, ImageRejected) else f"{type(exc).__name__}: {exc}"
        Image.objects.filter(pk=image_id).update(tile_status=TileStatus.FAILED, tile_error=reason[:2000])
        logger.warning("Pyramid of image %s failed: %s", image_id, reason)
        if not isinstance(exc, ImageRejected | OSError):
            raise
        return {"failed": reason}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with transaction.atomic():
        current = Image.objects.select_for_update().filter(pk=image_id).first()
        if current is None:  # deleted while building
            transaction.on_commit(lambda: _build_discard(prefix, thumbnail))
            return {"skipped": "deleted"}
        old_root, old_thumbnail = current.tile_root, str(current.thumbnail.name or "")
        current.tile_root = prefix
        current.thumbnail = thumbnail
        current.tile_status = TileStatus.DONE
        current.tile_error = ""
        current.save(update_fields=["tile_root", "thumbnail", "tile_status", "tile_error", "updated_at"])
    if old_root and old_root != prefix:
        transaction.on_commit(lambda: _build_discard(old_root, old_thumbnail))
    return {"levels": geometry.levels, "tiles": geometry.tile_total(), **timings}


def _build_discard(prefix: str, thumbnail: str) -> None:
    folder_delete(prefix)
    if thumbnail:
        default_storage.delete(thumbnail)


def _thumbnail_save(tile: Path, folder: str) -> str:
    """The thumbnail is the pyramid's one-tile level (no second decode of the slide)."""
    with tile.open("rb") as handle:
        return default_storage.save(f"{folder}/thumbnail.jpg", File(handle))


def image_tile_open(*, image: Image, level: int, col: int, row: int, ext: str) -> IO[bytes]:
    """The stored tile file, opened for streaming. 404 when the image is not tiled, its
    pyramid is not built yet, or the tile lies outside the pyramid."""
    if not image.tiled or image.tile_status != TileStatus.DONE or not image.tile_root:
        raise NotFoundError("This image has no tile pyramid (yet).")
    if ext != TILE_SUFFIX or not tile_geometry(image).has_tile(level, col, row):
        raise NotFoundError("No such tile.")
    try:
        return default_storage.open(f"{image.tile_root}/{level}/{col}_{row}.{TILE_SUFFIX}", "rb")
    except FileNotFoundError as exc:
        raise NotFoundError("No such tile.") from exc
