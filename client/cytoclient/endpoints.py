"""Every API operation this client calls, with what it may send.

Each request the client makes goes through one of these (``Transport.call`` refuses a query
parameter or body field an endpoint does not list here), so this table is exactly what the client
depends on. tests/client/test_drift.py checks it against the schema the server generates: each
(method, path) exists, each query parameter and body field is one the server declares, the
fields the server requires are among those the client always sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """One API operation. ``path`` is relative to ``/api/v1/`` with ``{name}`` placeholders.

    ``query``: the query parameters the client may send. ``body``: the body fields it may send
    (JSON, or multipart form fields and files with ``multipart``); ``body_required``: those it
    always sends.
    """

    method: str
    path: str
    query: frozenset[str] = field(default_factory=frozenset)
    body: frozenset[str] = field(default_factory=frozenset)
    body_required: frozenset[str] = field(default_factory=frozenset)
    multipart: bool = False

    @property
    def schema_path(self) -> str:
        return "/api/v1/" + self.path

    def __str__(self) -> str:
        return f"{self.method.upper()} /api/v1/{self.path}"


def _e(
    method: str,
    path: str,
    *,
    query: tuple[str, ...] = (),
    body: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    multipart: bool = False,
) -> Endpoint:
    return Endpoint(
        method, path, frozenset(query), frozenset(body) | frozenset(required), frozenset(required), multipart
    )


PAGE = ("page", "page_size")
EXPORT_FILTERS = ("layer", "model_version", "split", "bethesda", "class_ids", "image_ids", "async")

SCHEMA = _e("get", "schema")

# auth
ME = _e("get", "auth/me")
LOGIN = _e("post", "auth/login", required=("username", "password"))
TOKEN_CREATE = _e("post", "auth/tokens", body=("project", "expires_in_days"), required=("name",))

# projects and classes
PROJECT_LIST = _e("get", "projects", query=PAGE)
PROJECT_GET = _e("get", "projects/{project_id}")
PROJECT_CREATE = _e(
    "post",
    "projects",
    body=("description", "experts_required", "quorum", "match_iou", "auto_presegment", "pipeline", "classes"),
    required=("name",),
)
CLASS_LIST = _e("get", "projects/{project_id}/classes")
CLASS_CREATE = _e("post", "projects/{project_id}/classes", body=("color", "model_label"), required=("name",))

# images
IMAGE_LIST = _e(
    "get",
    "projects/{project_id}/images",
    query=("status", "split", "bethesda", "presegment_status", "cell_class", "search", *PAGE),
)
IMAGE_UPLOAD = _e(
    "post",
    "projects/{project_id}/images",
    body=("bethesda", "stain", "magnification", "slide_code", "split"),
    required=("files",),
    multipart=True,
)
IMAGE_GET = _e("get", "images/{image_id}")
IMAGE_UPDATE = _e(
    "patch",
    "images/{image_id}",
    body=("bethesda", "stain", "magnification", "slide_code", "split", "confirm_split_change"),
)
IMAGE_DELETE = _e("delete", "images/{image_id}")
IMAGE_FILE = _e("get", "images/{image_id}/file", query=("variant",))
IMAGE_TRANSITION = _e("post", "images/{image_id}/transition", required=("action",))
# {tile} is "{col}_{row}.{format}"; the client builds it from numbers, never from a server's URL
TILE = _e("get", "images/{image_id}/tiles/{level}/{tile}")

# cells
CELLS_GET = _e("get", "images/{image_id}/cells", query=("layer", "model_version", "bbox", "limit", "after"))
CELLS_SAVE = _e("put", "images/{image_id}/cells", required=("revision", "cells"))
CELLS_PATCH = _e("patch", "images/{image_id}/cells", body=("added", "changed", "deleted"), required=("base_revision",))
HISTORY = _e("get", "images/{image_id}/history", query=PAGE)
REVISION_GET = _e("get", "images/{image_id}/history/{revision}", query=("bbox",))
RESTORE = _e("post", "images/{image_id}/history/{revision}/restore", required=("revision",))

# regions of interest
REGION_LIST = _e("get", "images/{image_id}/regions")
REGION_CREATE = _e("post", "images/{image_id}/regions", body=("name",), required=("polygon",))
REGION_GET = _e("get", "images/{image_id}/regions/{region_id}")
REGION_UPDATE = _e("patch", "images/{image_id}/regions/{region_id}", body=("name", "polygon"))
REGION_DELETE = _e("delete", "images/{image_id}/regions/{region_id}")

# proposals, click-to-segment and box prompts
PRESEGMENT = _e("post", "images/{image_id}/presegment", body=("model_version", "region"))
SEGMENT_CLICK = _e("post", "images/{image_id}/segment/click", body=("negative",), required=("positive",))
SEGMENT_BOX = _e("post", "images/{image_id}/segment/box", required=("box",))
PROPOSALS_ACCEPT = _e("post", "images/{image_id}/proposals/accept", body=("ids", "all"), required=("revision",))
PROPOSALS_REJECT = _e("post", "images/{image_id}/proposals/reject", body=("ids", "all"))

# review
WORK_QUEUE = _e("get", "me/queue", query=("project", "limit"))

# exports and imports
EXPORTS = {
    "coco": _e(
        "get", "projects/{project_id}/export/coco", query=(*EXPORT_FILTERS, "segmentation", "gzip", "include_empty")
    ),
    "coco-zip": _e(
        "get", "projects/{project_id}/export/coco-zip", query=(*EXPORT_FILTERS, "segmentation", "include_empty")
    ),
    "geojson": _e("get", "projects/{project_id}/export/geojson", query=(*EXPORT_FILTERS, "object_type")),
    "nnunet": _e("get", "projects/{project_id}/export/nnunet", query=(*EXPORT_FILTERS, "dataset_id", "include_empty")),
    "cellpose": _e("get", "projects/{project_id}/export/cellpose", query=(*EXPORT_FILTERS, "include_empty")),
}
EXPORT_JOB_LIST = _e("get", "projects/{project_id}/export/jobs")
EXPORT_JOB_GET = _e("get", "projects/{project_id}/export/jobs/{job_id}")
EXPORT_JOB_DOWNLOAD = _e("get", "projects/{project_id}/export/jobs/{job_id}/download")
IMPORT_COCO = _e(
    "post",
    "projects/{project_id}/import/coco",
    body=("images", "dry_run", "unknown_categories", "multipart"),
    required=("file",),
    multipart=True,
)
GEOJSON_OPTIONS = ("revision", "mode", "layer", "class_map", "default_class", "multipart", "holes", "dry_run")
# the same operation, the file as multipart or the FeatureCollection in a JSON body
IMPORT_GEOJSON_FILE = _e(
    "post", "images/{image_id}/import/geojson", body=GEOJSON_OPTIONS, required=("file",), multipart=True
)
IMPORT_GEOJSON_JSON = _e("post", "images/{image_id}/import/geojson", body=GEOJSON_OPTIONS, required=("geojson",))

# training and the model registry
TRAINING_START = _e("post", "projects/{project_id}/training/jobs", body=("config", "snapshot"), required=("kind",))
TRAINING_LIST = _e("get", "projects/{project_id}/training/jobs", query=("status", "kind", *PAGE))
TRAINING_GET = _e("get", "training/jobs/{job_id}", query=("log_after",))
TRAINING_CANCEL = _e("post", "training/jobs/{job_id}/cancel")
REGISTRY = _e("get", "projects/{project_id}/training/models", query=("snapshot", "kind"))
MODEL_GET = _e("get", "training/models/{version_id}")
MODEL_PROMOTE = _e("post", "training/models/{version_id}/promote", body=("reason",))
MODEL_ROLLBACK = _e("post", "projects/{project_id}/training/rollback", required=("kind",))


def all_endpoints() -> list[Endpoint]:
    """Every endpoint of this module (the drift test walks them)."""
    found: list[Endpoint] = []
    for value in globals().values():
        if isinstance(value, Endpoint):
            found.append(value)
        elif isinstance(value, dict):
            found.extend(v for v in value.values() if isinstance(v, Endpoint))
    return found
