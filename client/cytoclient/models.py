"""The API's answers as typed dataclasses.

Each class reads the fields this client relies on; a field the server adds later is kept in
``raw`` (the answer as it came) and never breaks an older client. A field the class needs and the
answer lacks raises :class:`~cytoclient.errors.ProtocolError` naming it (the drift test,
tests/client/test_drift.py, checks every such field against the server's schema).

One module past the usual size: the classes are declarations, read together with the drift test.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from cytoclient.errors import ProtocolError

JSON = dict[str, Any]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _model_of(hint: Any) -> type[Model] | None:
    """The Model class a field holds (``X``, ``X | None``), if any."""
    if isinstance(hint, type) and issubclass(hint, Model):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _convert(value: Any, hint: Any) -> Any:
    model = _model_of(hint)
    if model is not None and isinstance(value, Mapping):
        return model.from_api(value)
    if typing.get_origin(hint) is list and isinstance(value, list):
        (item,) = typing.get_args(hint) or (Any,)
        item_model = _model_of(item)
        if item_model is not None:
            return [item_model.from_api(v) if isinstance(v, Mapping) else v for v in value]
    return value


@dataclass
class Model:
    """Base of the answer classes: ``from_api`` builds one from the server's JSON."""

    raw: JSON = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    # The endpoint(s) whose answer this class reads, for the drift test: (method, path, status).
    api_sources: ClassVar[tuple[tuple[str, str, int], ...]] = ()

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        """Build from one JSON object of the API (unknown keys are kept in ``raw`` only)."""
        if not isinstance(data, Mapping):
            raise ProtocolError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        hints = _hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "raw" or not f.init:
                continue
            if f.name in data:
                kwargs[f.name] = _convert(data[f.name], hints[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(
                    f"{cls.__name__}: the server's answer has no {f.name!r} (client and server drifted?)"
                )
        return cls(**kwargs, raw=dict(data))

    @classmethod
    def required_fields(cls) -> list[str]:
        """The fields an answer must carry (those without a default)."""
        return [
            f.name
            for f in dataclasses.fields(cls)
            if f.name != "raw" and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]


# --- auth and projects ---------------------------------------------------------------------


@dataclass
class Me(Model):
    """The token's user (``GET auth/me``)."""

    api_sources = (("get", "/api/v1/auth/me", 200),)

    id: int
    username: str
    is_superuser: bool
    is_staff: bool
    memberships: list[JSON] = field(default_factory=list)


@dataclass
class CellClass(Model):
    """A project's cell class; ``model_label`` is what the models call it (1 cell, 2 erythrocyte)."""

    api_sources = (("get", "/api/v1/projects/{project_id}/classes", 200),)

    id: int
    name: str
    color: str
    model_label: int
    order: int


@dataclass
class Project(Model):
    """A project, its classes and settings; ``my_role`` is the token user's role in it."""

    api_sources = (("get", "/api/v1/projects/{project_id}", 200), ("get", "/api/v1/projects", 200))

    id: int
    name: str
    description: str
    classes: list[CellClass]
    experts_required: int
    quorum: int | None
    match_iou: float
    auto_presegment: bool
    pipeline: JSON
    my_role: str | None
    image_count: int
    created_at: str | None = None

    def class_id(self, name: str) -> int:
        """The id of the class called ``name`` (KeyError naming the classes there are)."""
        for cell_class in self.classes:
            if cell_class.name == name:
                return cell_class.id
        raise KeyError(f"no class {name!r} in project {self.id}: {', '.join(c.name for c in self.classes)}")


# --- images and cells ----------------------------------------------------------------------


@dataclass
class Image(Model):
    """An image and its metadata (``bethesda`` I..VI or empty; ``split`` train, validation or test)."""

    api_sources = (("get", "/api/v1/images/{image_id}", 200),)

    id: int
    project: int
    file_name: str
    width: int
    height: int
    bethesda: str
    stain: str
    magnification: str
    slide_code: str
    split: str
    status: str
    presegment_status: str
    revision: int
    sha256: str
    presegment_error: str = ""
    presegment_tiles_done: int = 0
    presegment_tiles_total: int = 0
    cell_count: int | None = None
    tiled: bool = False
    tile_status: str = "none"  # none (an ordinary image), queued, running, done, failed
    tile_error: str = ""
    tiles: TilePyramid | None = None  # a tiled image's pyramid, once built
    mpp_x: float | None = None
    mpp_y: float | None = None
    objective_power: float | None = None
    created_at: str | None = None

    def tile_grid(self) -> TileGrid:
        """The geometry of the image's tile pyramid (levels, tiles per level, each tile's box).
        ValueError when the image has no built pyramid (not tiled, or ``tile_status`` not done)."""
        if self.tiles is None:
            why = "is not tiled" if not self.tiled else f"has no pyramid yet (tile_status {self.tile_status!r})"
            raise ValueError(f"image {self.id} {why}")
        return TileGrid(
            width=self.width,
            height=self.height,
            tile_size=self.tiles.tile_size,
            levels=self.tiles.levels,
            min_level=self.tiles.min_level,
            format=self.tiles.format,
        )


@dataclass
class TilePyramid(Model):
    """How a tiled image's DeepZoom pyramid is served (the image's ``tiles``): ``levels`` levels,
    ``levels - 1`` full size, each one below half of it (sides rounded up), down to one pixel;
    ``min_level`` holds the whole image in one tile. ``url`` is the server's template; the client
    never uses it (a tile is asked for by image id, level, column and row)."""

    url: str
    tile_size: int
    levels: int
    min_level: int
    format: str


@dataclass(frozen=True)
class TileGrid:
    """The geometry of an image's tile pyramid (``Image.tile_grid()``), as the server cuts it
    (cytoseg/tiles.py): tile ``(col, row)`` of a level covers that level's pixels
    ``[col * tile_size, (col + 1) * tile_size)`` in both directions, cut at the image's edge."""

    width: int
    height: int
    tile_size: int
    levels: int
    min_level: int = 0
    format: str = "jpeg"

    @property
    def max_level(self) -> int:
        """The full-resolution level."""
        return self.levels - 1

    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= self.max_level:
            raise ValueError(f"level must be an integer from 0 to {self.max_level}, got {level!r}")

    def scale(self, level: int) -> int:
        """Full-resolution pixels per pixel of ``level``."""
        self._check_level(level)
        return 1 << (self.max_level - level)

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of ``level`` in its own pixels."""
        factor = self.scale(level)
        return (-(-self.width // factor), -(-self.height // factor))

    def tile_counts(self, level: int) -> tuple[int, int]:
        """(columns, rows) of tiles at ``level``."""
        width, height = self.level_size(level)
        return (-(-width // self.tile_size), -(-height // self.tile_size))

    def has_tile(self, level: int, col: int, row: int) -> bool:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= self.max_level:
            return False
        cols, rows = self.tile_counts(level)
        return 0 <= col < cols and 0 <= row < rows

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the tile in ``level``'s pixels, exclusive ends, cut to the image."""
        if not self.has_tile(level, col, row):
            raise ValueError(f"no tile {col},{row} at level {level}")
        width, height = self.level_size(level)
        x0, y0 = col * self.tile_size, row * self.tile_size
        return (x0, y0, min(x0 + self.tile_size, width), min(y0 + self.tile_size, height))

    def tile_box_full(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the tile in full-resolution pixels, cut to the image."""
        x0, y0, x1, y1 = self.tile_box(level, col, row)
        factor = self.scale(level)
        return (x0 * factor, y0 * factor, min(x1 * factor, self.width), min(y1 * factor, self.height))

    def tiles(self, level: int) -> list[tuple[int, int]]:
        """The (col, row) of every tile of ``level``, row by row."""
        cols, rows = self.tile_counts(level)
        return [(col, row) for row in range(rows) for col in range(cols)]


@dataclass
class Cell(Model):
    """One cell contour of a layer (annotation, proposal or verified)."""

    id: int
    class_id: int
    polygon: list[list[float]]
    layer: str
    source: str
    score: float | None = None
    model_version: int | None = None
    author: int | None = None
    bbox: list[float] = field(default_factory=list)
    area: float = 0.0
    provenance: JSON = field(default_factory=dict)
    state: str = ""
    revision: int | None = None  # annotation layer: the layer's revision that last wrote this cell
    created_at: str | None = None
    updated_at: str | None = None

    def to_write(self) -> JSON:
        """This cell as a save sends it (``{id, class_id, polygon}``): keeps its id."""
        return {"id": self.id, "class_id": self.class_id, "polygon": self.polygon}

    def to_change(self) -> JSON:
        """This cell as a delta's ``changed`` item (``{id, revision?, class_id, polygon}``): with
        the revision it was read at, the server checks the change against that copy."""
        item: JSON = {"id": self.id, "class_id": self.class_id, "polygon": self.polygon}
        if self.revision is not None:
            item["revision"] = self.revision
        return item


@dataclass
class Cells(Model):
    """A layer of an image at a revision (the answer of a get, a save, a restore, an accept).

    ``next_after``: a page of a viewport read (``bbox``) that was full; the next page starts
    after this cell id (None: no more)."""

    api_sources = (("get", "/api/v1/images/{image_id}/cells", 200),)

    revision: int
    cells: list[Cell]
    accepted: list[int] = field(default_factory=list)  # a proposal accept: the annotation cells it made
    next_after: int | None = None


@dataclass
class CellsDelta(Model):
    """What a delta save wrote (``PATCH images/{id}/cells``): the layer's new ``revision``, the
    ``added`` cells with their new ids (in the order sent), the ``changed`` cells as now stored,
    and the ids ``deleted``."""

    api_sources = (("patch", "/api/v1/images/{image_id}/cells", 200),)

    revision: int
    added: list[Cell]
    changed: list[Cell]
    deleted: list[int]


@dataclass
class CellConflict(Model):
    """One edit of a refused delta (``ConflictError.conflicts``): ``item`` the delta's item
    (``changed.0``, ``added.2``, ``deleted.1``), ``id`` the server's cell it meets, ``reason``
    ``changed`` (saved since your copy), ``deleted`` (deleted since) or ``overlaps`` (your new
    outline overlaps one saved since), ``revision`` the revision that did it."""

    item: str
    id: int
    reason: str
    revision: int | None = None


@dataclass
class RevisionCell(Model):
    """A cell of the annotation layer as it was at a past revision."""

    id: int
    class_id: int
    polygon: list[list[float]]


@dataclass
class Revision(Model):
    """The annotation layer as it was at ``revision`` (``GET images/{id}/history/{revision}``)."""

    api_sources = (("get", "/api/v1/images/{image_id}/history/{revision}", 200),)

    revision: int
    cells: list[RevisionCell]


@dataclass
class Region(Model):
    """A region of interest of an image: a polygon in full-resolution pixels; ``bbox`` is
    ``[x0, y0, x1, y1]``, the whole pixels covering it. On a slide it is the unit of
    pre-segmentation and training; a cell belongs to it when its centroid lies inside."""

    api_sources = (
        ("get", "/api/v1/images/{image_id}/regions/{region_id}", 200),
        ("get", "/api/v1/images/{image_id}/regions", 200),
    )

    id: int
    image: int
    name: str
    polygon: list[list[float]]
    bbox: list[int]
    status: str
    created_by: int | None = None
    created_at: str | None = None
    updated_at: str | None = None


# --- click-to-segment and box prompts ------------------------------------------------------


@dataclass
class Outline(Model):
    """A cell outline the server proposes for a box prompt (nothing is stored: save it as a
    cell to keep it). ``label`` 1 cell, 2 erythrocyte; ``class_id`` the project's class for it."""

    polygon: list[list[float]]
    class_id: int | None
    label: int | None
    score: float | None


@dataclass
class ClickOutline(Model):
    """The cell under a click prompt (``polygon`` None: none there, ``reason`` says why).
    ``source``: ``model`` (the active model's maps) or ``baseline`` (the classical baseline, before
    a model is trained); ``timings`` the server's milliseconds (``total_ms``, ...)."""

    api_sources = (("post", "/api/v1/images/{image_id}/segment/click", 200),)

    polygon: list[list[float]] | None
    class_id: int | None
    label: int | None
    score: float | None
    source: str
    model_version: int | None = None
    reason: str | None = None
    timings: JSON = field(default_factory=dict)


@dataclass
class BoxOutlines(Model):
    """The cells of a box prompt: the instances whose centre lies in the box."""

    api_sources = (("post", "/api/v1/images/{image_id}/segment/box", 200),)

    cells: list[Outline]
    source: str
    model_version: int | None = None
    timings: JSON = field(default_factory=dict)


@dataclass
class HistoryEntry(Model):
    """One write in an image's history (any revision can be restored)."""

    api_sources = (("get", "/api/v1/images/{image_id}/history", 200),)

    revision: int
    author: str | None
    action: str
    summary: JSON | str | None = None
    created_at: str | None = None


# --- review --------------------------------------------------------------------------------


@dataclass
class QueueImage(Model):
    id: int
    file_name: str
    status: str
    thumbnail_url: str | None = None


@dataclass
class QueueList(Model):
    count: int
    images: list[QueueImage]


@dataclass
class WorkQueue(Model):
    """The token user's work in a project (``GET me/queue``); the first image of a list is the next."""

    api_sources = (("get", "/api/v1/me/queue", 200),)

    project: int
    order: str
    annotate: QueueList
    review: QueueList
    adjudicate: QueueList
    assign: QueueList


# --- exports and imports -------------------------------------------------------------------


@dataclass
class ExportJob(Model):
    """An export running in the background; ``download_url`` once done (until it expires)."""

    api_sources = (("get", "/api/v1/projects/{project_id}/export/jobs/{job_id}", 200),)

    id: int
    kind: str
    status: str  # queued, running, done, failed, expired
    progress: float
    items_done: int
    items_total: int
    file_name: str
    size_bytes: int
    error: str
    url: str
    download_url: str | None
    params: JSON = field(default_factory=dict)
    created_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "expired")


@dataclass
class CocoImportReport(Model):
    """What a COCO import stored (or, with ``dry_run``, would store)."""

    api_sources = (("post", "/api/v1/projects/{project_id}/import/coco", 201),)

    dry_run: bool
    images: JSON  # {"matched": n, "uploaded": n}
    categories_created: list[str]
    cells: int
    skipped_crowd: int = 0
    skipped: list[JSON] = field(default_factory=list)  # [{annotation, image, reason}]
    multipart: JSON = field(default_factory=dict)  # {"merged": n, "split": n}
    repaired: int = 0
    per_image: list[JSON] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class GeoJsonImportReport(Model):
    """What a GeoJSON (QuPath) import wrote into one image (or, with ``dry_run``, would write):
    ``revision`` is the annotation layer's now, ``classes`` the cells per class name, ``skipped``
    the features left out and why (``[{feature, reason}]``)."""

    api_sources = (("post", "/api/v1/images/{image_id}/import/geojson", 201),)

    dry_run: bool
    image: int
    mode: str
    revision: int
    features: int
    cells: int
    deleted: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    skipped: list[JSON] = field(default_factory=list)
    multipart: JSON = field(default_factory=dict)
    holes_filled: int = 0
    nuclei_ignored: int = 0
    repaired: int = 0
    warnings: list[str] = field(default_factory=list)


# --- training and the model registry -------------------------------------------------------

# The stages each job kind trains, in order (training/services/config.py JOB_PLANS).
JOB_STAGES: dict[str, tuple[str, ...]] = {
    "two_stage": ("nnunet", "cellpose"),
    "nnunet": ("nnunet",),
    "cellpose": ("cellpose",),
    "refinement": ("refinement",),
}
TERMINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass
class TrainingJob(Model):
    """A training job: ``progress`` where it is now, ``curves`` the per-epoch points of each stage
    (``{"cellpose": [{"epoch": 0, "train_loss": ...}, ...]}``), ``result`` the versions it made
    and the promotion decisions, ``log`` its log (or the part after ``log_after``)."""

    api_sources = (("get", "/api/v1/training/jobs/{job_id}", 200),)

    id: int
    project: int
    kind: str
    status: str
    config: JSON
    progress: JSON
    error: str
    result: JSON
    model_versions: list[int]
    snapshot: int | None = None
    cancel_requested: bool = False
    curves: JSON = field(default_factory=dict)
    timings: JSON = field(default_factory=dict)
    resolved_config: JSON = field(default_factory=dict)
    log: str = ""
    log_length: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @property
    def fraction(self) -> float | None:
        """Overall progress in [0, 1] (None: not known yet, e.g. queued), as the browser shows it:
        loading the data 3 %, the training stages share 85 % by epochs and iterations, the
        evaluation the last 12 % (frontend/src/core/training.ts ``jobFraction``)."""
        if self.status == "succeeded":
            return 1.0
        p = self.progress or {}
        stages = JOB_STAGES.get(self.kind, ())
        evaluates = self.config.get("evaluate", True) is not False
        train_share = 0.85 if evaluates else 0.97
        stage = p.get("stage")
        if not stage:
            return None if self.status == "queued" else 0.0
        if stage == "done":
            return 1.0
        if stage == "data":
            return 0.01
        if stage == "evaluate":
            return 0.03 + train_share + 0.06 if evaluates else 0.99
        if stage not in stages:
            return None
        per = train_share / len(stages)
        return min(1.0, 0.03 + per * stages.index(stage) + per * _stage_fraction(p))

    def describe(self) -> str:
        """One line saying where the job is (``cellpose · epoch 3/8 · loss 0.4121``)."""
        p = self.progress or {}
        if self.status == "queued":
            return "cancelling" if self.cancel_requested else "waiting for a worker"
        if self.status != "running":
            return self.status + (f": {self.error.splitlines()[-1]}" if self.error.strip() else "")
        stage = str(p.get("stage") or "")
        if p.get("phase") == "prepare":
            return f"{stage}: preparing" + (f" ({p['step']})" if p.get("step") else "")
        if stage == "evaluate":
            return "evaluating on the frozen test split"
        parts = [stage]
        if p.get("epoch") is not None and p.get("epochs"):
            parts.append(f"epoch {p['epoch']}/{p['epochs']}")
        if p.get("iteration") is not None and p.get("iterations"):
            parts.append(f"iteration {p['iteration']}/{p['iterations']}")
        if isinstance(p.get("loss"), int | float):
            parts.append(f"loss {p['loss']:.4f}")
        return " · ".join(parts)


def _stage_fraction(p: Mapping[str, Any]) -> float:
    if p.get("phase") == "prepare":
        return 0.0
    epochs = _number(p.get("epochs"))
    epoch = _number(p.get("epoch"))
    if not epochs:
        return 0.0
    iterations = _number(p.get("iterations"))
    iteration = p.get("iteration")
    if iterations and isinstance(iteration, int | float):
        done = epoch - 1 + min(1.0, iteration / iterations)  # during an epoch: the 1-based current one
    else:
        done = epoch
    return max(0.0, min(1.0, done / epochs))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass
class ModelVersion(Model):
    """A model version of the registry; ``metrics`` on the reference snapshot's test images."""

    api_sources = (("get", "/api/v1/training/models/{version_id}", 200),)

    id: int
    project: int
    kind: str
    number: int
    name: str
    status: str  # candidate, active, retired, ...
    artifacts: list[JSON] = field(default_factory=list)
    config: JSON = field(default_factory=dict)
    metrics: JSON = field(default_factory=dict)
    job: int | None = None
    snapshot: int | None = None
    replaced: int | None = None
    promoted_at: str | None = None
    created_at: str | None = None
    evaluations: list[JSON] = field(default_factory=list)

    @property
    def overall(self) -> dict[str, Any]:
        """The metrics over the test images of its last evaluation (``f1_50``, ``dice``, ...);
        empty when it was never evaluated. ``metrics`` has the rest (per image, per Bethesda
        category, the bootstrap intervals, the raw-mask figures)."""
        overall = self.metrics.get("overall") if isinstance(self.metrics, dict) else None
        return dict(overall) if isinstance(overall, dict) else {}


@dataclass
class RegistryRow(Model):
    """One version in the registry table, its metrics beside the others'."""

    id: int
    kind: str
    number: int
    name: str
    status: str
    presegmenter: bool
    metrics: dict[str, float | None] | None = None
    intervals: JSON | None = None
    job: int | None = None
    snapshot: int | None = None
    replaced: int | None = None
    promoted_at: str | None = None
    created_at: str | None = None


@dataclass
class Registry(Model):
    """The project's model versions with metrics side by side (``GET projects/{id}/training/models``)."""

    api_sources = (("get", "/api/v1/projects/{project_id}/training/models", 200),)

    snapshot: int | None
    metric_names: list[str]
    presegmenter: int | None
    versions: list[RegistryRow]


@dataclass
class Rollback(Model):
    """A roll back: the version that was active and the one that is now."""

    api_sources = (("post", "/api/v1/projects/{project_id}/training/rollback", 200),)

    rolled_back: int | None
    active: int | None
