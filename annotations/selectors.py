"""Reads, and the one place where project/image access is decided.

Access rules: a user who is not a member of a project (and not a superuser) gets 404 for the
project and everything in it, so that existence is not revealed; a member without the needed
capability gets 403. A token scoped to a project reaches that project only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Count, F, Prefetch, Q, QuerySet, TextField
from django.db.models.functions import Cast

from annotations.models import (
    AnnotationRevision,
    Cell,
    CellClass,
    Image,
    Layer,
    Project,
    ProjectMembership,
    Region,
    Role,
)
from core.errors import NotFoundError, PermissionDeniedError

UserLike = AbstractBaseUser | AnonymousUser

# What each role may do in its project. Admins manage the project; experts verify.
CAPABILITIES: dict[str, set[str]] = {
    Role.ANNOTATOR: {"view", "annotate"},
    Role.EXPERT: {"view", "annotate", "review"},
    Role.ADMIN: {"view", "annotate", "review", "adjudicate", "manage", "train"},
}


def _token_project_id(user: UserLike) -> int | None:
    token = getattr(user, "api_token", None)
    return getattr(token, "project_id", None)


def membership_role(*, user: UserLike, project: Project) -> str | None:
    if not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    return (
        ProjectMembership.objects.filter(user_id=user.pk, project_id=project.pk).values_list("role", flat=True).first()
    )


def user_can(*, user: UserLike, project: Project, capability: str) -> bool:
    role = membership_role(user=user, project=project)
    return role is not None and capability in CAPABILITIES[role]


def _check(*, user: UserLike, project: Project, capability: str) -> None:
    token_project = _token_project_id(user)
    if token_project is not None and token_project != project.pk:
        raise NotFoundError("No such project.")
    role = membership_role(user=user, project=project)
    if role is None:
        raise NotFoundError("No such project.")
    if capability not in CAPABILITIES[role]:
        raise PermissionDeniedError(f"Your role in this project ({role}) may not {capability}.")


def token_management_check(*, user: UserLike) -> None:
    """Tokens are managed by their user signed in or with an unscoped token: a token scoped to
    one project could otherwise mint an unscoped one and reach every project of its user."""
    if _token_project_id(user) is not None:
        raise PermissionDeniedError("A token scoped to a project cannot list, create or revoke tokens.")


def staff_access_check(*, user: UserLike) -> None:
    """Platform-wide views (the workers and queues) are for staff and superusers, signed in or
    with an unscoped token: a token scoped to one project sees that project only."""
    if not (getattr(user, "is_staff", False) or getattr(user, "is_superuser", False)):
        raise PermissionDeniedError("Only staff may see this.")
    if _token_project_id(user) is not None:
        raise PermissionDeniedError("A token scoped to a project cannot see platform-wide views.")


def project_get_for_user(*, user: UserLike, project_id: int, capability: str = "view") -> Project:
    """The project, if ``user`` may ``capability`` in it (404 for non-members, 403 for roles)."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        raise NotFoundError("No such project.")
    _check(user=user, project=project, capability=capability)
    return project


def image_get_for_user(*, user: UserLike, image_id: int, capability: str = "view") -> Image:
    """The image, if ``user`` may ``capability`` in its project (404/403 as for projects)."""
    image = Image.objects.select_related("project").filter(pk=image_id).first()
    if image is None:
        raise NotFoundError("No such image.")
    _check(user=user, project=image.project, capability=capability)
    return image


def region_get_for_user(*, user: UserLike, image_id: int, region_id: int, capability: str = "view") -> Region:
    """A region of the image, if ``user`` may ``capability`` in its project (404 otherwise)."""
    image = image_get_for_user(user=user, image_id=image_id, capability=capability)
    region = Region.objects.filter(pk=region_id, image_id=image.pk).first()
    if region is None:
        raise NotFoundError("No such region on this image.")
    region.image = image
    return region


def region_list(*, image: Image, status: str | None = None) -> QuerySet[Region]:
    """The image's regions (in ``status`` when given), oldest first."""
    regions = Region.objects.filter(image_id=image.pk)
    return (regions if status is None else regions.filter(status=status)).order_by("id")


def project_list_for_user(*, user: UserLike) -> QuerySet[Project]:
    queryset = Project.objects.all()
    if not getattr(user, "is_superuser", False):
        queryset = queryset.filter(memberships__user_id=cast(int, user.pk))
    token_project = _token_project_id(user)
    if token_project is not None:
        queryset = queryset.filter(pk=token_project)
    return (
        queryset.annotate(image_count=Count("images", distinct=True))
        .prefetch_related(Prefetch("classes", queryset=CellClass.objects.order_by("order", "id")))
        .order_by("id")
    )


def image_list(*, project: Project, filters: dict[str, Any] | None = None) -> QuerySet[Image]:
    """Images of a project with their annotation cell count, filtered by status, split,
    Bethesda category, cell class (images having such an annotated cell) or file name."""
    filters = filters or {}
    queryset = project.images.all()
    for field in ("status", "split", "bethesda", "presegment_status"):
        value = filters.get(field)
        if value:
            queryset = queryset.filter(**{field: value})
    cell_class = filters.get("cell_class")
    if cell_class:
        queryset = queryset.filter(
            pk__in=Cell.objects.filter(image__project=project, layer=Layer.ANNOTATION, cell_class_id=cell_class).values(
                "image_id"
            )
        )
    search = filters.get("search")
    if search:
        queryset = queryset.filter(Q(file_name__icontains=search) | Q(slide_code__icontains=search))
    return (
        queryset.select_related("presegment_model")
        .annotate(
            cell_count=Count("cells", filter=Q(cells__layer=Layer.ANNOTATION)),
            presegment_proposals=Count(
                "cells", filter=Q(cells__layer=Layer.PROPOSAL, cells__model_version_id=F("presegment_model_id"))
            ),
        )
        .order_by("id")
    )


CELL_FIELDS = (
    "id",
    "cell_class_id",
    "polygon",
    "layer",
    "source",
    "score",
    "model_version_id",
    "author_id",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "area",
    "provenance",
    "state",
    "geometry_digest",
    "revision",
    "created_at",
    "updated_at",
)


_CELL_META_FIELDS = [f for f in CELL_FIELDS if f != "polygon"]


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _cells_json(rows: Any) -> tuple[str, int, int | None]:
    """The API JSON array of cell rows (meta fields + polygon text), their count and last id."""
    dumps = json.dumps
    parts = []
    last_id: int | None = None
    for row in rows:
        meta = dict(zip(_CELL_META_FIELDS, row, strict=False))
        body = dumps(
            {
                "id": meta["id"],
                "class_id": meta["cell_class_id"],
                "layer": meta["layer"],
                "source": meta["source"],
                "score": meta["score"],
                "model_version": meta["model_version_id"],
                "author": meta["author_id"],
                "bbox": [meta["bbox_x"], meta["bbox_y"], meta["bbox_w"], meta["bbox_h"]],
                "area": meta["area"],
                "provenance": meta["provenance"],
                "state": meta["state"],
                "revision": meta["revision"],
                "created_at": _iso(meta["created_at"]),
                "updated_at": _iso(meta["updated_at"]),
            }
        )
        parts.append(f'{body[:-1]}, "polygon": {row[-1]}}}')
        last_id = meta["id"]
    return "[" + ", ".join(parts) + "]", len(parts), last_id


def _cells_queryset(*, image: Image, layer: str, model_version_id: int | None) -> QuerySet[Cell]:
    queryset = Cell.objects.filter(image_id=image.pk, layer=layer)
    if model_version_id is not None:
        queryset = queryset.filter(model_version_id=model_version_id)
    return queryset


def cells_json(*, image: Image, layer: str = Layer.ANNOTATION, model_version_id: int | None = None) -> str:
    """The API JSON array of one layer's cells, built without decoding the stored polygons.

    This is the hottest read: polygons are fetched as JSON text and spliced into the output,
    which skips a JSON parse and a JSON dump of every vertex.
    """
    rows = (
        _cells_queryset(image=image, layer=layer, model_version_id=model_version_id)
        .order_by("id")
        .annotate(polygon_text=Cast("polygon", TextField()))
        .values_list(*_CELL_META_FIELDS, "polygon_text")
    )
    return _cells_json(rows)[0]


def cells_by_ids_json(*, image: Image, ids: list[int], layer: str = Layer.ANNOTATION) -> str:
    """The API JSON array of the cells of ``ids`` that exist in the layer (by id)."""
    rows = (
        Cell.objects.filter(image_id=image.pk, layer=layer, pk__in=ids)
        .order_by("id")
        .annotate(polygon_text=Cast("polygon", TextField()))
        .values_list(*_CELL_META_FIELDS, "polygon_text")
    )
    return _cells_json(rows)[0]


# The expression of the PostgreSQL GiST index of migration 0012 (repeated exactly, or the planner
# does not use the index): each image's boxes in a band of their own along y.
BOX_EXPRESSION = (
    "box(point(bbox_x, bbox_y + image_id * 1e7::float8), "
    "point(bbox_x + bbox_w, bbox_y + bbox_h + image_id * 1e7::float8))"
)


def cells_in_box_filter(queryset: QuerySet[Cell], *, image_id: int, box: tuple[float, float, float, float]) -> Any:
    """``queryset`` narrowed to the cells whose bounding box intersects ``box`` (x0, y0, x1, y1;
    touching edges count), by the GiST index on PostgreSQL and the bbox_x btree elsewhere."""
    x0, y0, x1, y1 = box
    queryset = queryset.filter(
        bbox_x__lte=x1,
        bbox_y__lte=y1,
        bbox_x__gte=x0 - F("bbox_w"),
        bbox_y__gte=y0 - F("bbox_h"),
    )
    if connection.vendor == "postgresql":
        band = image_id * 1e7
        queryset = queryset.extra(
            where=[f"{BOX_EXPRESSION} && box(point(%s, %s), point(%s, %s))"],
            params=[x0, y0 + band, x1, y1 + band],
        )
    return queryset


@dataclass
class CellsPage:
    json: str  # the API JSON array of the cells
    count: int
    next_after: int | None  # the id to continue after when the page was full, else None


def cells_in_box_json(
    *,
    image: Image,
    box: tuple[float, float, float, float],
    layer: str = Layer.ANNOTATION,
    model_version_id: int | None = None,
    limit: int,
    after: int | None = None,
) -> CellsPage:
    """One page (by id, at most ``limit``) of the cells of a layer whose bounding box intersects
    ``box``: a viewport read of a large image, which never loads the rest of the layer."""
    queryset = cells_in_box_filter(
        _cells_queryset(image=image, layer=layer, model_version_id=model_version_id), image_id=image.pk, box=box
    )
    if after is not None:
        queryset = queryset.filter(pk__gt=after)
    rows = list(
        queryset.order_by("id")
        .annotate(polygon_text=Cast("polygon", TextField()))
        .values_list(*_CELL_META_FIELDS, "polygon_text")[: limit + 1]
    )
    text, count, _ = _cells_json(rows[:limit])
    more = len(rows) > limit
    return CellsPage(json=text, count=count, next_after=rows[limit - 1][0] if more else None)


def revision_state(
    *, image: Image, revision: int, box: tuple[float, float, float, float] | None = None
) -> list[dict[str, Any]]:
    """The annotation layer as it was at ``revision``, replayed from the history's deltas; with
    ``box`` (x0, y0, x1, y1) only the cells whose bounding box meets it (a slide's view)."""
    state: dict[int, dict[str, Any]] = {}
    for changes in image.history.filter(revision__lte=revision).order_by("revision").values_list("changes", flat=True):
        for cell in changes.get("upserted", []):
            state[cell["id"]] = cell
        for cell_id in changes.get("deleted", []):
            state.pop(cell_id, None)
    cells = [state[k] for k in sorted(state)]
    if box is None:
        return cells
    x0, y0, x1, y1 = box

    def meets(points: list[list[float]]) -> bool:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return min(xs) <= x1 and max(xs) >= x0 and min(ys) <= y1 and max(ys) >= y0

    return [c for c in cells if c["polygon"] and meets(c["polygon"])]


def history_list(*, image: Image) -> QuerySet[AnnotationRevision]:
    return image.history.select_related("author").defer("changes").order_by("-revision")


def membership_list(*, project: Project) -> QuerySet[ProjectMembership]:
    return project.memberships.select_related("user").order_by("id")


def user_find(*, login: str) -> Any | None:
    """An active user by username, else by e-mail address (case-insensitive; only when exactly one
    user has it). None when there is none."""
    users = get_user_model().objects.filter(is_active=True)
    login = login.strip()
    found = users.filter(username=login).first()
    if found is None and "@" in login:
        matches = list(users.filter(email__iexact=login)[:2])
        found = matches[0] if len(matches) == 1 else None
    return found
