"""The API's answers as typed dataclasses.

Each class reads the fields this client relies on; a field the server adds later is kept in
``raw`` (the answer as it came) and never breaks an older client. A field the class needs and the
answer lacks raises :class:`~cytoclient.errors.ProtocolError` naming it (the drift test,
tests/client/test_drift.py, checks every such field against the server's schema).
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
    cell_count: int | None = None
    created_at: str | None = None


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

    def to_write(self) -> JSON:
        """This cell as a save sends it (``{id, class_id, polygon}``): keeps its id."""
        return {"id": self.id, "class_id": self.class_id, "polygon": self.polygon}


@dataclass
class Cells(Model):
    """A layer of an image at a revision (the answer of a get, a save, a restore, an accept)."""

    api_sources = (("get", "/api/v1/images/{image_id}/cells", 200),)

    revision: int
    cells: list[Cell]
    accepted: list[int] = field(default_factory=list)  # a proposal accept: the annotation cells it made


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
