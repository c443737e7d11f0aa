"""Click-to-segment and box prompts: the interactive path (issue #13).

A click is answered in the web process from the active model's maps of the image
(:mod:`cytoseg.interactive`): the maps are held in a small per-process LRU (``_MAPS``), loaded
from the default storage on a miss (``maps/<project>/<image>/<model version>.npz``, written by
pre-segmentation, :func:`image_maps_store`), and computed on demand where there are none: by the
``inference.image_maps`` task on the ``interactive`` queue, served by a worker of its own (so a
click never waits behind pre-segmentation on ``gpu`` or a training job on ``training``), the
web waiting for it up to ``INTERACTIVE_MAPS_TIMEOUT`` seconds; with ``INTERACTIVE_MAPS_WORKER``
off the web computes them itself. Before a model is trained (the active version is a classical
baseline) a click runs the baseline on a window around it and needs no maps. A tiled image (a
whole slide) is never read whole: a prompt on it is resolved on one block of it, its pixels read
from the original and its maps kept per block (the "slides" section below).

One module: the maps' storage, the per-process caches, the task's service and the two prompts
share their keys, locks and windows; apart they would import each other.

Nothing here writes cells: the client adds the returned outline to the annotation layer
through the usual cells API (undo, revisions and conflicts stay where they are).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotations.models import Image
from annotations.services.regions import image_crop_rgb
from annotations.services.workflow import annotation_write_check
from core.errors import ConflictError, ServiceValidationError, UnavailableError
from core.queue import task_enqueue
from cytoseg.backends import backend_get
from cytoseg.backends.base import Instance, SegmentationBackend
from cytoseg.contours import instances_to_polygons
from cytoseg.device import device_default
from cytoseg.imaging import read_rgb
from cytoseg.interactive import DEFAULT_DIAMETER, box_segment, click_segment, window_context, window_maps
from cytoseg.maps import ImageMaps, maps_dump, maps_load, maps_merge
from training.models import ModelKind, ModelVersion
from training.services.artifacts import artifacts_for
from training.services.registry import model_version_baseline, model_version_for_project, model_version_settings

logger = logging.getLogger(__name__)

MAPS_TASK = "inference.image_maps"
INTERACTIVE_QUEUE = "interactive"
# kinds whose backend has maps; the others (the classical baselines) answer a click themselves
MAPS_KINDS = (ModelKind.TWO_STAGE, ModelKind.CELLPOSE, ModelKind.NNUNET)
MAX_POINTS = 20
# maps needed around a click's points: click_segment looks max(48, 1.5 x diameter) around them
CLICK_MARGIN = 48
# the largest side of the window of maps a first click computes (a network pass over a window
# rather than the whole field; pre-segmentation keeps the whole field's): see _window_side
WINDOW_MAX = 256
BOX_MARGIN = 24
_POLL_SECONDS = 0.02
_CONTEXT_SECONDS = 5.0
_READY_GRACE = 5.0  # seconds: a window marked ready just before a click looked at the storage


# --- maps in storage -----------------------------------------------------------------------


def maps_folder(*, project_id: int, image_id: int) -> str:
    return f"maps/{project_id}/{image_id}"


def maps_key(*, project_id: int, image_id: int, model_version_id: int) -> str:
    """Where the maps of one image by one model version are kept in the default storage."""
    return f"{maps_folder(project_id=project_id, image_id=image_id)}/{model_version_id}.npz"


def _ready_key(image_id: int, model_version_id: int, region: Sequence[int] | None = None) -> str:
    where = "all" if region is None else "-".join(str(int(v)) for v in region)
    return f"interactive-maps:{image_id}:{model_version_id}:{where}"


def image_maps_store(*, image: Image, model_version: ModelVersion, maps: ImageMaps) -> str:
    """Keep ``maps`` as the image's maps by ``model_version``, replacing any earlier ones (of
    this or another version: only the latest run's are kept). Returns the storage key."""
    key = maps_key(project_id=image.project_id, image_id=image.pk, model_version_id=model_version.pk)
    data = maps_dump(maps)
    if default_storage.exists(key):
        default_storage.delete(key)
    saved = default_storage.save(key, ContentFile(data))
    if saved != key:  # a concurrent writer took the name: keep one copy under the name read
        default_storage.delete(saved)
    image_maps_delete(image_id=image.pk, project_id=image.project_id, keep=key)
    _maps_remember((image.pk, model_version.pk), maps.compact())
    return key


def image_maps_delete(*, image_id: int, project_id: int, keep: str | None = None) -> int:
    """Delete the kept maps of an image (all but ``keep``); the number deleted."""
    folder = maps_folder(project_id=project_id, image_id=image_id)
    try:
        _, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    deleted = 0
    for name in files:
        key = f"{folder}/{name}"
        if key != keep:
            default_storage.delete(key)
            deleted += 1
    if keep is None:
        deleted += _windows_delete(image_id=image_id, project_id=project_id)
    with _LOCK:
        for cached in [k for k in _MAPS if k[0] == image_id and (keep is None or _key_of(k, project_id) != keep)]:
            _MAPS.pop(cached, None)
    return deleted


def _key_of(cached: tuple[int, int], project_id: int) -> str:
    return maps_key(project_id=project_id, image_id=cached[0], model_version_id=cached[1])


# --- the per-process LRU of maps and decoded images ------------------------------------------

_LOCK = threading.Lock()
_MAPS: OrderedDict[tuple[int, int], ImageMaps] = OrderedDict()
_IMAGES: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
_IMAGES_MAX = 8


def _maps_remember(key: tuple[int, int], maps: ImageMaps) -> None:
    budget = settings.INTERACTIVE_MAPS_CACHE_MB * 1024 * 1024
    with _LOCK:
        _MAPS[key] = maps
        _MAPS.move_to_end(key)
        while len(_MAPS) > 1 and sum(m.nbytes for m in _MAPS.values()) > budget:
            _MAPS.popitem(last=False)


def _maps_cached(key: tuple[int, int]) -> ImageMaps | None:
    with _LOCK:
        maps = _MAPS.get(key)
        if maps is not None:
            _MAPS.move_to_end(key)
        return maps


def interactive_cache_clear() -> None:
    """Forget every held map and image (tests; a process that must free memory)."""
    with _LOCK:
        _MAPS.clear()
        _IMAGES.clear()
        _CONTEXTS.clear()
        _BLOCKS.clear()
        _DIAMETERS.clear()


def _image_rgb(image: Image) -> np.ndarray:
    if not image.display:
        raise ConflictError("Click-to-segment needs the image's display PNG; this image is a tiled slide.")
    key = (image.pk, str(image.display.name))
    with _LOCK:
        rgb = _IMAGES.get(key)
        if rgb is not None:
            _IMAGES.move_to_end(key)
            return rgb
    with image.display.open("rb") as handle:
        rgb = read_rgb(handle.read())
    with _LOCK:
        _IMAGES[key] = rgb
        while len(_IMAGES) > _IMAGES_MAX:
            _IMAGES.popitem(last=False)
    return rgb


# --- computing maps ---------------------------------------------------------------------------


def _device() -> str:
    return device_default() if settings.INFERENCE_DEVICE == "auto" else settings.INFERENCE_DEVICE


# A first click's window of maps is computed for one answer, while the doctor waits: without
# nnU-Net's flip test-time augmentation (4 passes in 2D) and as one Cellpose tile, several times
# less work on a CPU. Pre-segmentation keeps the version's own settings for the whole-field maps
# that later replace the window's.
_WINDOW_SETTINGS: dict[str, dict[str, Any]] = {
    "nnunet": {"use_mirroring": False},
    "cellpose": {"bsize": 0, "augment": False},
}


def _window_settings(kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` of a model of ``kind`` with the window's speed settings over them."""
    if kind == "two_stage":
        stages = {stage: {**(settings.get(stage) or {}), **fast} for stage, fast in _WINDOW_SETTINGS.items()}
        return {**settings, **stages}
    return {**settings, **_WINDOW_SETTINGS.get(kind, {})}


def _backend(version: ModelVersion, *, window: bool = False) -> SegmentationBackend:
    settings = model_version_settings(version=version)
    return backend_get(
        name=version.kind,
        artifacts=artifacts_for(version),
        settings=_window_settings(version.kind, settings) if window else settings,
        device=_device(),
    )


Region = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1


@dataclass
class MapsResult:
    image_id: int
    model_version_id: int
    computed: bool
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)


def _stored(key: str) -> ImageMaps | None:
    if not default_storage.exists(key):
        return None
    with default_storage.open(key, "rb") as handle:
        return maps_load(handle.read())


# --- slides: maps and pixels by block ------------------------------------------------------
#
# A tiled image (a whole slide) is never decoded whole and has no maps of the whole: a click or
# box on it is resolved on a *block* of the slide, SLIDE_BLOCK pixels on a side, its pixels read
# at full resolution from the original (``image_crop_rgb``: OpenSlide or libvips, only that
# crop) and the model's partial maps of it built window by window as on a plain image
# (``maps_merge``), kept per block (``maps/<project>/<image>/windows/<version>/<r0>-<r1>-<c0>-<c1>.npz``)
# and held with the block's pixels in a per-process LRU. Blocks start every SLIDE_BLOCK / 2
# pixels, so whatever a prompt needs (at most SLIDE_PROMPT_MAX plus its margin on a side) lies
# inside one block. The outline is shifted back to slide (level-0) pixels.

WINDOWS_FOLDER = "windows"
SLIDE_BLOCK = 1024
_SLIDE_STRIDE = SLIDE_BLOCK // 2
# the largest box, or spread of a click's points, on a slide: what one block holds with margins
SLIDE_PROMPT_MAX = 384  # plus a box's or a click's margin on each side: at most a stride
_BLOCKS_MAX = 4  # blocks held per process: pixels and maps, ~13 MB each
_WINDOW_NAME = re.compile(r"(\d+)-(\d+)-(\d+)-(\d+)\.npz")


@dataclass
class _View:
    """What a prompt is resolved on: the pixels of rows ``r0:``, columns ``c0:`` of the image
    (all of a plain image, a block of a slide) and the model's maps of them (None: a classical
    model, which needs none)."""

    rgb: np.ndarray
    maps: ImageMaps | None
    r0: int = 0
    c0: int = 0


_BLOCKS: OrderedDict[tuple[int, int, Region], _View] = OrderedDict()


def window_key(*, project_id: int, image_id: int, model_version_id: int, block: Sequence[int]) -> str:
    """Where the partial maps of one block of a slide by one model version are kept."""
    r0, r1, c0, c1 = (int(v) for v in block)
    folder = maps_folder(project_id=project_id, image_id=image_id)
    return f"{folder}/{WINDOWS_FOLDER}/{model_version_id}/{r0}-{r1}-{c0}-{c1}.npz"


def _windows_delete(*, image_id: int, project_id: int, keep_version: int | None = None) -> int:
    """Delete a slide's kept block maps (of every version but ``keep_version``)."""
    folder = f"{maps_folder(project_id=project_id, image_id=image_id)}/{WINDOWS_FOLDER}"
    try:
        versions, _ = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        versions = []
    deleted = 0
    for version in versions:
        if version == str(keep_version):
            continue
        try:
            _, files = default_storage.listdir(f"{folder}/{version}")
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in files:
            default_storage.delete(f"{folder}/{version}/{name}")
            deleted += 1
    with _LOCK:
        for cached in [k for k in _BLOCKS if k[0] == image_id and k[1] != keep_version]:
            _BLOCKS.pop(cached, None)
    return deleted


def _block_of(image: Image, region: Sequence[int]) -> Region:
    """The block a prompt's region is resolved on: the one starting at the stride below its
    top-left corner (it holds the region whole when the region is at most a stride on a side)."""
    r0, c0 = int(region[0]) // _SLIDE_STRIDE * _SLIDE_STRIDE, int(region[2]) // _SLIDE_STRIDE * _SLIDE_STRIDE
    return r0, min(image.height, r0 + SLIDE_BLOCK), c0, min(image.width, c0 + SLIDE_BLOCK)


def _blocks_around(image: Image, need: Region) -> list[Region]:
    """The blocks that hold ``need`` whole, its own block first."""
    own = _block_of(image, need)
    out = [own]
    for dr in (0, -_SLIDE_STRIDE):
        for dc in (0, -_SLIDE_STRIDE):
            if (dr, dc) == (0, 0) or own[0] + dr < 0 or own[2] + dc < 0:
                continue
            r0, c0 = own[0] + dr, own[2] + dc
            block = (r0, min(image.height, r0 + SLIDE_BLOCK), c0, min(image.width, c0 + SLIDE_BLOCK))
            if block[1] >= need[1] and block[3] >= need[3]:
                out.append(block)
    return out


def _slide_crop(image: Image, region: Region) -> np.ndarray:
    r0, r1, c0, c1 = region
    return image_crop_rgb(image=image, crop=(c0, r0, c1, r1), polygon=None)


def _block_remember(image_id: int, version_id: int, block: Region, view: _View) -> _View:
    with _LOCK:
        _BLOCKS[(image_id, version_id, block)] = view
        _BLOCKS.move_to_end((image_id, version_id, block))
        while len(_BLOCKS) > _BLOCKS_MAX:
            _BLOCKS.popitem(last=False)
    return view


def _local(need: Region, block: Region) -> Region:
    return need[0] - block[0], need[1] - block[0], need[2] - block[2], need[3] - block[2]


def _block_held(image: Image, version: ModelVersion, need: Region) -> _View | None:
    """A block this process holds whose maps cover ``need``."""
    with _LOCK:
        for block in _blocks_around(image, need):
            view = _BLOCKS.get((image.pk, version.pk, block))
            if view is not None and (view.maps is None or view.maps.covers(*_local(need, block))):
                _BLOCKS.move_to_end((image.pk, version.pk, block))
                return view
    return None


def _block_stored(image: Image, version: ModelVersion, need: Region) -> _View | None:
    """A block whose kept maps cover ``need``, read with its pixels (and then held)."""
    for block in _blocks_around(image, need):
        key = window_key(project_id=image.project_id, image_id=image.pk, model_version_id=version.pk, block=block)
        maps = _stored(key)
        if maps is not None and maps.covers(*_local(need, block)):
            view = _View(rgb=_slide_crop(image, block), maps=maps, r0=block[0], c0=block[2])
            return _block_remember(image.pk, version.pk, block, view)
    return None


def _slide_maps_compute(image: Image, version: ModelVersion, need: Region) -> bool:
    """Compute the maps of a window around ``need`` of a slide (inside one block) from a crop of
    the original around it, and merge them into the block's kept maps. False where they cover
    ``need`` already."""
    block = _block_of(image, need)
    if not (need[1] <= block[1] and need[3] <= block[3]):
        raise ValueError("the window does not fit one block of the slide")
    key = window_key(project_id=image.project_id, image_id=image.pk, model_version_id=version.pk, block=block)
    kept = _stored(key)
    if kept is not None and kept.covers(*_local(need, block)):
        return False
    region = _grown(image, need, _window_side(version.pk), block)
    local = _local(region, block)
    r0, r1, c0, c1 = region
    # the window's context from the slide itself, also beyond the block
    context = window_context(max(r1 - r0, c1 - c0))
    o0, o1 = max(0, r0 - context), min(image.height, r1 + context)
    p0, p1 = max(0, c0 - context), min(image.width, c1 + context)
    crop = _slide_crop(image, (o0, o1, p0, p1))
    part = window_maps(
        _backend(version, window=True), crop, r0=r0 - o0, r1=r1 - o0, c0=c0 - p0, c1=c1 - p0, margin=context
    )
    if part is None:
        raise ValueError(f"a {version.kind} model has no maps")
    if part.diameter:
        _DIAMETERS[version.pk] = part.diameter
    height, width = block[1] - block[0], block[3] - block[2]
    maps = maps_merge(kept, part, y0=local[0], x0=local[2], height=height, width=width)
    if default_storage.exists(key):
        default_storage.delete(key)
    saved = default_storage.save(key, ContentFile(maps_dump(maps)))
    if saved != key:  # a concurrent writer took the name: keep one copy under the name read
        default_storage.delete(saved)
    _windows_delete(image_id=image.pk, project_id=image.project_id, keep_version=version.pk)
    with _LOCK:
        held = _BLOCKS.get((image.pk, version.pk, block))
    if held is not None:
        _block_remember(image.pk, version.pk, block, _View(rgb=held.rgb, maps=maps.compact(), r0=block[0], c0=block[2]))
    return True


def _slide_view(image: Image, version: ModelVersion, need: Region, timings: dict[str, float]) -> _View:
    """The block of a slide a prompt needing ``need`` is resolved on, with the model's maps of
    it covering ``need``: held, kept, or computed now for a window around ``need``."""
    view = _block_held(image, version, need)
    if view is not None:
        timings["maps_memory"] = 0.0
        return view
    started = time.perf_counter()
    if version.kind not in MAPS_KINDS:  # a classical model: the block's pixels are all it needs
        block = _block_of(image, need)
        view = _View(rgb=_slide_crop(image, block), maps=None, r0=block[0], c0=block[2])
        timings["image_ms"] = (time.perf_counter() - started) * 1000
        return _block_remember(image.pk, version.pk, block, view)
    view = _block_stored(image, version, need)
    timings["maps_storage_ms"] = (time.perf_counter() - started) * 1000
    if view is not None:
        return view
    started = time.perf_counter()
    _maps_request(image, version, need)
    timings["maps_compute_ms"] = (time.perf_counter() - started) * 1000
    view = _block_held(image, version, need) or _block_stored(image, version, need)
    if view is None:
        raise UnavailableError("The model's maps of this part of the slide are not ready; click again.")
    return view


def image_maps_compute(*, image_id: int, model_version_id: int, region: Sequence[int] | None = None) -> MapsResult:
    """Compute and keep the maps of one image by one model version (the interactive task's
    service): of the whole image, or (``region`` ``[r0, r1, c0, c1]``) of that window only,
    merged into the partial maps kept so far. Nothing to do where the kept maps cover it
    already. A failure is left in the cache for the click waiting on it, and raised."""
    started = time.perf_counter()
    ready = _ready_key(image_id, model_version_id, region)
    try:
        image = Image.objects.get(pk=image_id)
        version = ModelVersion.objects.select_related("project").get(pk=model_version_id)
        if version.project_id != image.project_id:
            raise ValueError("The model version belongs to another project.")
        if image.tiled:
            if region is None:
                raise ValueError("a slide's maps are computed window by window")
            window = (int(region[0]), int(region[1]), int(region[2]), int(region[3]))
            computed = _slide_maps_compute(image, version, window)
            cache.set(ready, {"at": time.time(), "error": None}, timeout=600)
            return MapsResult(
                image_id=image_id,
                model_version_id=model_version_id,
                computed=computed,
                seconds=time.perf_counter() - started,
            )
        stages: dict[str, float] = {}
        lap = _Lap(stages)
        key = maps_key(project_id=image.project_id, image_id=image.pk, model_version_id=version.pk)
        kept = _stored(key)
        lap("kept_ms")
        whole = (0, image.height, 0, image.width)
        need = (int(region[0]), int(region[1]), int(region[2]), int(region[3])) if region is not None else whole
        if kept is not None and kept.covers(*need):
            cache.set(ready, {"at": time.time(), "error": None}, timeout=600)
            return MapsResult(image_id=image_id, model_version_id=model_version_id, computed=False)
        r0, r1, c0, c1 = need if region is None else _grown(image, need, _window_side(version.pk))
        backend = _backend(version, window=region is not None)
        lap("model_ms")
        rgb = _image_rgb(image)
        lap("image_ms")
        if region is None:
            maps = backend.maps(rgb)
            lap("network_ms")
        else:
            context = window_context(max(r1 - r0, c1 - c0))
            part = window_maps(backend, rgb, r0=r0, r1=r1, c0=c0, c1=c1, margin=context)
            lap("network_ms")
            if part is not None and part.diameter:
                _DIAMETERS[version.pk] = part.diameter
            maps = (
                None if part is None else maps_merge(kept, part, y0=r0, x0=c0, height=rgb.shape[0], width=rgb.shape[1])
            )
        if maps is None:
            raise ValueError(f"a {version.kind} model has no maps")
        image_maps_store(image=image, model_version=version, maps=maps)
        lap("store_ms")
    except Exception as exc:
        cache.set(ready, {"at": time.time(), "error": f"{type(exc).__name__}: {exc}"[:500]}, timeout=600)
        raise
    cache.set(ready, {"at": time.time(), "error": None}, timeout=600)
    return MapsResult(
        image_id=image_id,
        model_version_id=model_version_id,
        computed=True,
        seconds=time.perf_counter() - started,
        stages=stages,
    )


class _Lap:
    """Milliseconds since the previous lap, written under a stage's name (the task's result and
    the worker's log say where a window's time went)."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.last = into, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round((now - self.last) * 1000, 1)
        self.last = now


# how many projects' models the interactive worker loads when it starts (most recently worked on
# first); the backends' own per-process cache holds cytoseg.backends.CACHE_SIZE
WARM_MODELS = 2


def interactive_models_warm(*, limit: int = WARM_MODELS) -> list[int]:
    """Load the active models (with maps) of the ``limit`` projects whose images were worked on
    last, with a window's settings, and run each once on a window-sized image: the interactive
    worker calls it when it starts, so that the first click of the day waits for a window's
    network pass, not for the model's files, their loading and torch's first-call set-up. The
    version ids warmed."""
    from django.db.models import Max

    projects = (
        Image.objects.values("project_id").annotate(last=Max("updated_at")).order_by("-last").values_list("project_id")
    )
    warmed: list[int] = []
    side = _window_side(0) + 2 * window_context(_window_side(0))  # a window's crop for the default diameter
    rng = np.random.default_rng(0)
    dummy = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    for (project_id,) in projects[: 4 * limit]:
        if len(warmed) >= limit:
            break
        image = Image.objects.select_related("project").filter(project_id=project_id).first()
        if image is None:
            continue
        version = model_version_for_project(project=image.project)
        if version.kind not in MAPS_KINDS or version.pk in warmed:
            continue
        started = time.perf_counter()
        maps = window_maps(_backend(version, window=True), dummy, r0=0, r1=side, c0=0, c1=side, margin=0)
        if maps is not None and maps.diameter:
            _DIAMETERS[version.pk] = maps.diameter
        logger.info("interactive: %s loaded and warmed in %.1f s", version, time.perf_counter() - started)
        warmed.append(version.pk)
    return warmed


def _need(image: Image, points: Sequence[tuple[float, float]], margin: float) -> Region:
    """The window of maps a request needs: around its points, ``margin`` on each side."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    r0, r1 = int(min(ys) - margin), int(max(ys) + margin) + 1
    c0, c1 = int(min(xs) - margin), int(max(xs) + margin) + 1
    return max(0, r0), min(image.height, r1), max(0, c0), min(image.width, c1)


# per model version, the cell diameter its maps gave last in this process (the window's size)
_DIAMETERS: dict[int, float] = {}


def _window_side(version_id: int) -> int:
    """The side of the window a first click computes: what a click on a cell of the model's
    diameter reads around it (``click_segment``: max(48, 1.5 diameters) on each side), 97 px
    for 30 px cells. Small, because a window's network pass (Cellpose's above all) costs in
    proportion to its pixels while the doctor waits; the next click beside it computes the
    next window."""
    diameter = _DIAMETERS.get(version_id) or DEFAULT_DIAMETER
    return min(WINDOW_MAX, 2 * math.ceil(max(float(CLICK_MARGIN), 1.5 * diameter)) + 1)


def _grown(image: Image, need: Region, side: int, within: Region | None = None) -> Region:
    """``need`` widened to ``side`` pixels on a side (where the image, or ``within``, has
    them): the window computed on demand."""
    r0, r1, c0, c1 = need
    b_r0, b_r1, b_c0, b_c1 = within if within is not None else (0, image.height, 0, image.width)

    def widen(lo: int, hi: int, start: int, end: int) -> tuple[int, int]:
        extra = max(0, side - (hi - lo))
        lo, hi = lo - extra // 2, hi + extra - extra // 2
        if lo < start:
            lo, hi = start, min(end, hi + (start - lo))
        if hi > end:
            lo, hi = max(start, lo - (hi - end)), end
        return lo, hi

    r0, r1 = widen(r0, r1, b_r0, b_r1)
    c0, c1 = widen(c0, c1, b_c0, b_c1)
    return r0, r1, c0, c1


def _maps_load(image: Image, version: ModelVersion, need: Region, timings: dict[str, float]) -> ImageMaps:
    """The maps of ``image`` by ``version`` covering ``need``: held, kept in storage, or (for a
    window around ``need``) computed now."""
    cached_key = (image.pk, version.pk)
    maps = _maps_cached(cached_key)
    if maps is not None and maps.covers(*need):
        timings["maps_memory"] = 0.0
        return maps
    key = maps_key(project_id=image.project_id, image_id=image.pk, model_version_id=version.pk)
    started = time.perf_counter()
    maps = _stored(key)
    timings["maps_storage_ms"] = (time.perf_counter() - started) * 1000
    if maps is not None:
        _maps_remember(cached_key, maps)
        if maps.covers(*need):
            return maps
    started = time.perf_counter()
    _maps_request(image, version, need)
    timings["maps_compute_ms"] = (time.perf_counter() - started) * 1000
    maps = _maps_cached(cached_key)  # a compute in this process left them here
    if maps is None or not maps.covers(*need):
        maps = _stored(key)
        if maps is None or not maps.covers(*need):
            raise UnavailableError("The model's maps of this part of the image are not ready; click again.")
        _maps_remember(cached_key, maps)
    return maps


def _maps_request(image: Image, version: ModelVersion, region: Region) -> None:
    """Have the maps of ``region`` computed: here, or by the interactive worker while this
    request waits (the task marks the window ready in the cache with the time it finished)."""
    if not settings.INTERACTIVE_MAPS_WORKER:
        image_maps_compute(image_id=image.pk, model_version_id=version.pk, region=list(region))
        return
    ready = _ready_key(image.pk, version.pk, region)
    # a mark older than this request's own look at the storage is another request's, since gone
    since = time.time() - _READY_GRACE
    # one task per window at a time: a second click waiting for the same one does not send another
    if cache.add(f"{ready}:queued", 1, timeout=settings.INTERACTIVE_MAPS_TIMEOUT):
        task_enqueue(MAPS_TASK, args=[image.pk, version.pk, list(region)], queue=INTERACTIVE_QUEUE)
    deadline = time.monotonic() + settings.INTERACTIVE_MAPS_TIMEOUT
    try:
        while time.monotonic() < deadline:
            state = cache.get(ready)
            if isinstance(state, dict) and state.get("at", 0.0) >= since:
                if state.get("error"):
                    raise ConflictError(f"The model could not compute this image's maps ({state['error']}).")
                return
            time.sleep(_POLL_SECONDS)
    finally:
        cache.delete(f"{ready}:queued")
    raise UnavailableError(
        "The model's maps of this image are still being computed; click again in a moment.", retry_after=2
    )


# --- clicks and boxes -------------------------------------------------------------------------


@dataclass
class Outline:
    polygon: list[list[float]] | None
    label: int | None
    class_id: int | None
    score: float | None = None


@dataclass
class ClickResult:
    outline: Outline
    source: str  # "model" or "baseline"
    model_version: int | None
    reason: str | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class BoxResult:
    cells: list[Outline]
    source: str
    model_version: int | None
    timings: dict[str, float] = field(default_factory=dict)


def _points(raw: Sequence[Sequence[float]], image: Image, name: str) -> list[tuple[float, float]]:
    out = []
    for i, point in enumerate(raw):
        x, y = float(point[0]), float(point[1])
        if not (0 <= x < image.width and 0 <= y < image.height):
            raise ServiceValidationError(
                "A point lies outside the image.",
                {f"{name}.{i}": f"({x:g}, {y:g}) is outside the {image.width}x{image.height} image"},
            )
        out.append((x, y))
    return out


def _classes(image: Image) -> dict[int, int]:
    by_label: dict[int, int] = {}
    for class_id, label in image.project.classes.order_by("order", "id").values_list("pk", "model_label"):
        by_label.setdefault(label, class_id)
    return by_label


def _outlines(instances: list[Instance], classes: dict[int, int]) -> list[Outline]:
    contours = instances_to_polygons(instances, min_area=settings.PRESEGMENT_MIN_AREA)
    return [
        Outline(
            polygon=[[round(x, 2), round(y, 2)] for x, y in c.points],
            label=c.label,
            class_id=classes.get(c.label),
            score=round(c.score, 4),
        )
        for c in contours
    ]


@dataclass
class _ProjectContext:
    version: ModelVersion
    baseline: SegmentationBackend
    classes: dict[int, int]
    until: float


_CONTEXTS: dict[int, _ProjectContext] = {}


def _project_context(image: Image) -> _ProjectContext:
    """The project's active version, classical baseline and classes, remembered by this
    process for ``_CONTEXT_SECONDS``: a doctor's clicks come in bursts, and these queries are
    most of a warm click's database time (a promotion reaches clicks within those seconds)."""
    now = time.monotonic()
    with _LOCK:
        context = _CONTEXTS.get(image.project_id)
    if context is not None and context.until > now:
        return context
    version = model_version_for_project(project=image.project)
    baseline_version = version if version.kind not in MAPS_KINDS else None
    if baseline_version is None or baseline_version.kind not in (ModelKind.WATERSHED, ModelKind.REGION_GROWING):
        baseline_version = model_version_baseline(project=image.project)
    context = _ProjectContext(
        version=version,
        baseline=_backend(baseline_version),
        classes=_classes(image),
        until=now + _CONTEXT_SECONDS,
    )
    with _LOCK:
        _CONTEXTS[image.project_id] = context
    return context


def _sources(image: Image, need: Region, timings: dict[str, float]) -> tuple[ModelVersion, _View, SegmentationBackend]:
    """The active version, the pixels and its maps (None for a classical one) a prompt needing
    ``need`` is resolved on (the whole of a plain image, a block of a slide), and the classical
    baseline a click falls back to."""
    context = _project_context(image)
    version = context.version
    if image.tiled:
        return version, _slide_view(image, version, need, timings), context.baseline
    maps = _maps_load(image, version, need, timings) if version.kind in MAPS_KINDS else None
    started = time.perf_counter()
    rgb = _image_rgb(image)
    timings["image_ms"] = (time.perf_counter() - started) * 1000
    return version, _View(rgb=rgb, maps=maps), context.baseline


def _shifted(instance: Instance, view: _View) -> Instance:
    """An instance found in ``view``'s pixels placed in the image's."""
    if view.r0 == 0 and view.c0 == 0:
        return instance
    return dataclasses.replace(instance, x0=instance.x0 + view.c0, y0=instance.y0 + view.r0)


def _spread_check(points: Sequence[tuple[float, float]], name: str) -> None:
    """On a slide a prompt is resolved on one block: its points (a box's corners) lie within
    ``SLIDE_PROMPT_MAX`` pixels of each other."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if max(xs) - min(xs) > SLIDE_PROMPT_MAX or max(ys) - min(ys) > SLIDE_PROMPT_MAX:
        raise ServiceValidationError(
            f"On a slide a box, or the points of one click, span at most {SLIDE_PROMPT_MAX} pixels.",
            {name: f"on a slide the points lie within {SLIDE_PROMPT_MAX} pixels of each other"},
        )


def image_click_segment(
    *, image: Image, positive: Sequence[Sequence[float]], negative: Sequence[Sequence[float]] = ()
) -> ClickResult:
    """The outline of the cell the clicks point at, by the project's active model (from its
    maps of the image, computed first where there are none) or, before any model is trained or
    where the model sees no cell there, the classical baseline on a window around the clicks.

    ``positive`` (1..20) and ``negative`` (0..20) are ``[x, y]`` image pixels (a slide's level-0
    pixels, its points within ``SLIDE_PROMPT_MAX`` of each other); a point outside the image is a
    ServiceValidationError naming it (``positive.0``). The image must be open for annotation
    (its cells editable)."""
    started = time.perf_counter()
    annotation_write_check(image=image)
    pos = _points(positive, image, "positive")
    neg = _points(negative, image, "negative")
    if image.tiled:
        _spread_check(pos + neg, "positive")
    timings: dict[str, float] = {}
    version, view, baseline = _sources(image, _need(image, pos + neg, CLICK_MARGIN), timings)
    t = time.perf_counter()
    maps, rgb = view.maps, view.rgb
    lpos = [(x - view.c0, y - view.r0) for x, y in pos]
    lneg = [(x - view.c0, y - view.r0) for x, y in neg]
    source = "model" if maps is not None else "baseline"
    instance = click_segment(image=rgb, maps=maps, positive=lpos, negative=lneg, baseline=baseline)
    reason = None
    if instance is None and maps is not None:
        # the model sees no cell there (below even the relaxed thresholds): the baseline may
        instance = click_segment(image=rgb, maps=None, positive=lpos, negative=lneg, baseline=baseline)
        source = "baseline"
    if instance is not None:
        instance = _shifted(instance, view)
    timings["segment_ms"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    outlines = _outlines([instance], _project_context(image).classes) if instance is not None else []
    timings["contour_ms"] = (time.perf_counter() - t) * 1000
    if instance is None:
        reason = "no cell found at the clicked point"
    elif not outlines:
        reason = "the cell found there is smaller than the smallest kept cell"
    outline = outlines[0] if outlines else Outline(polygon=None, label=None, class_id=None)
    timings["total_ms"] = (time.perf_counter() - started) * 1000
    return ClickResult(
        outline=outline,
        source=source,
        model_version=version.pk if source == "model" else None,
        reason=reason,
        timings={k: round(v, 2) for k, v in timings.items()},
    )


def image_box_segment(*, image: Image, box: Sequence[float]) -> BoxResult:
    """The outlines of the cells whose centres lie inside ``box`` ``[x0, y0, x1, y1]`` (image
    pixels, x0 < x1, y0 < y1, inside the image; on a slide at most ``SLIDE_PROMPT_MAX`` on a
    side), by the active model's maps or the baseline."""
    started = time.perf_counter()
    annotation_write_check(image=image)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
        raise ServiceValidationError(
            "The box is empty or not inside the image.",
            {"box": f"[x0, y0, x1, y1] with 0 <= x0 < x1 <= {image.width} and 0 <= y0 < y1 <= {image.height}"},
        )
    if image.tiled:
        _spread_check([(x0, y0), (x1, y1)], "box")
    timings: dict[str, float] = {}
    version, view, baseline = _sources(image, _need(image, [(x0, y0), (x1, y1)], BOX_MARGIN), timings)
    maps = view.maps
    t = time.perf_counter()
    local = (x0 - view.c0, y0 - view.r0, x1 - view.c0, y1 - view.r0)
    instances = [_shifted(i, view) for i in box_segment(image=view.rgb, maps=maps, box=local, baseline=baseline)]
    timings["segment_ms"] = (time.perf_counter() - t) * 1000
    cells = _outlines(instances, _project_context(image).classes)
    timings["total_ms"] = (time.perf_counter() - started) * 1000
    return BoxResult(
        cells=cells,
        source="model" if maps is not None else "baseline",
        model_version=version.pk if maps is not None else None,
        timings={k: round(v, 2) for k, v in timings.items()},
    )
