"""API views: parse, authorise (selectors.*_get_for_user), call one service, serialise."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.contrib.auth import login, logout
from django.http import FileResponse, Http404, HttpResponse
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.views import APIView

from annotations import selectors
from annotations.api import serializers as s
from annotations.models import ApiToken, AuditEvent, ImageStatus, Layer, ProjectMembership, Role
from annotations.services import audit, projects, tokens
from annotations.services import cell_deltas as cell_delta_services
from annotations.services import cells as cell_services
from annotations.services import images as image_services
from annotations.services import regions as region_services
from annotations.services import slides as slide_services
from core.api.parsing import PAGE_PARAMETERS, base_revision, client_ip, paginate, paginated, parse, request_user
from core.api.throttling import TileThrottle
from core.errors import ConflictError, NotFoundError, ServiceValidationError
from core.idempotency import idempotent_call
from core.login import user_login_check

# --- auth ----------------------------------------------------------------------------------


class LoginView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(request=s.LoginIn, responses=s.MeOut, tags=["auth"])
    @method_decorator(ensure_csrf_cookie)
    def post(self, request: Request) -> Response:
        data = parse(s.LoginIn, request.data)
        user = user_login_check(username=data["username"], password=data["password"], ip=client_ip(request))
        login(request._request, user)  # type: ignore[arg-type]
        return Response(_me(user))


class LogoutView(APIView):
    @extend_schema(request=None, responses={204: None}, tags=["auth"])
    def post(self, request: Request) -> Response:
        logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _me(user: Any) -> dict[str, Any]:
    return {
        "id": user.pk,
        "username": user.get_username(),
        "is_superuser": user.is_superuser,
        "is_staff": user.is_staff or user.is_superuser,
        "memberships": list(ProjectMembership.objects.filter(user=user).values("project", "role")),
    }


class MeView(APIView):
    @extend_schema(responses=s.MeOut, tags=["auth"])
    @method_decorator(ensure_csrf_cookie)
    def get(self, request: Request) -> Response:
        return Response(_me(request_user(request)))


class TokenListView(APIView):
    @extend_schema(responses=s.TokenOut(many=True), tags=["auth"])
    def get(self, request: Request) -> Response:
        selectors.token_management_check(user=request_user(request))
        tokens = ApiToken.objects.filter(user=request_user(request))
        return Response(s.TokenOut(tokens, many=True).data)

    @extend_schema(request=s.TokenIn, responses={201: s.TokenCreatedOut}, tags=["auth"])
    def post(self, request: Request) -> Response:
        selectors.token_management_check(user=request_user(request))
        data = parse(s.TokenIn, request.data)
        project = None
        if data.get("project") is not None:
            project = selectors.project_get_for_user(user=request_user(request), project_id=data["project"])
        token, raw = tokens.api_token_create(
            user=request_user(request), name=data["name"], project=project, expires_in_days=data.get("expires_in_days")
        )
        body = dict(s.TokenOut(token).data) | {"token": raw}
        return Response(body, status=status.HTTP_201_CREATED)


class TokenDetailView(APIView):
    @extend_schema(responses={204: None}, tags=["auth"])
    def delete(self, request: Request, token_id: int) -> Response:
        selectors.token_management_check(user=request_user(request))
        token = ApiToken.objects.filter(pk=token_id, user=request_user(request)).first()
        if token is None:
            raise Http404("No such token.")
        tokens.api_token_revoke(token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- projects ------------------------------------------------------------------------------


def _roles(request: Request) -> dict[int, str]:
    if request.user.is_superuser:
        return {}
    return dict(ProjectMembership.objects.filter(user=request_user(request)).values_list("project_id", "role"))


def _project_body(request: Request, project: Any) -> dict[str, Any]:
    roles = _roles(request)
    if request.user.is_superuser:
        roles = {project.pk: Role.ADMIN}
    if not hasattr(project, "image_count"):
        project.image_count = project.images.count()
    return dict(s.ProjectOut(project, context={"roles": roles}).data)


class ProjectListView(APIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=paginated(s.ProjectOut), tags=["projects"])
    def get(self, request: Request) -> Response:
        queryset = selectors.project_list_for_user(user=request_user(request))
        roles = _roles(request)
        if request.user.is_superuser:
            roles = dict.fromkeys(queryset.values_list("pk", flat=True), Role.ADMIN)
        return paginate(request, self, queryset, s.ProjectOut, roles=roles)

    @extend_schema(request=s.ProjectIn, responses={201: s.ProjectOut}, tags=["projects"])
    def post(self, request: Request) -> Response:
        if not (request.user.is_superuser or request.user.is_staff):
            raise PermissionDenied("Only staff may create projects.")
        data = parse(s.ProjectIn, request.data)
        project = projects.project_create(created_by=request_user(request), **data)
        return Response(_project_body(request, project), status=status.HTTP_201_CREATED)


class ProjectDetailView(APIView):
    @extend_schema(responses=s.ProjectOut, tags=["projects"])
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id)
        return Response(_project_body(request, project))

    @extend_schema(request=s.ProjectUpdateIn(partial=True), responses=s.ProjectOut, tags=["projects"])
    def patch(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        if not isinstance(request.data, dict):
            raise ServiceValidationError("Expected a JSON object.")
        before = {f: getattr(project, f) for f in request.data if f in projects.PROJECT_EDITABLE}
        project = projects.project_update(project=project, data=dict(request.data))
        audit.audit_record(
            project=project,
            actor=request_user(request),
            action="project.update",
            before=before,
            after=dict(request.data),
        )
        return Response(_project_body(request, project))

    @extend_schema(responses={204: None}, tags=["projects"])
    def delete(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        project.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemberListView(APIView):
    @extend_schema(responses=s.MembershipOut(many=True), tags=["projects"])
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id)
        return Response(s.MembershipOut(selectors.membership_list(project=project), many=True).data)

    @extend_schema(request=s.MembershipIn, responses={201: s.MembershipOut}, tags=["projects"])
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        data = parse(s.MembershipIn, request.data)
        user = selectors.user_find(login=data["username"])
        if user is None:
            raise ServiceValidationError(
                "Unknown user.", {"username": f"no user with the username or e-mail address {data['username']!r}"}
            )
        membership = projects.membership_set(project=project, user=user, role=data["role"])
        audit.audit_record(
            project=project,
            actor=request_user(request),
            action="membership.set",
            target=user.get_username(),
            after={"role": data["role"]},
        )
        return Response(s.MembershipOut(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    def _membership(self, request: Request, project_id: int, membership_id: int) -> ProjectMembership:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        membership = project.memberships.select_related("user", "project").filter(pk=membership_id).first()
        if membership is None:
            raise Http404("No such member.")
        return membership

    @extend_schema(request=s.MembershipRoleIn, responses=s.MembershipOut, tags=["projects"])
    def patch(self, request: Request, project_id: int, membership_id: int) -> Response:
        membership = self._membership(request, project_id, membership_id)
        data = parse(s.MembershipRoleIn, request.data)
        if membership.role == Role.ADMIN and data["role"] != Role.ADMIN:
            if not membership.project.memberships.filter(role=Role.ADMIN).exclude(pk=membership.pk).exists():
                raise ConflictError("A project must keep at least one admin.")
        before = membership.role
        membership = projects.membership_set(project=membership.project, user=membership.user, role=data["role"])
        audit.audit_record(
            project=membership.project,
            actor=request_user(request),
            action="membership.set",
            target=membership.user.get_username(),
            before={"role": before},
            after={"role": data["role"]},
        )
        return Response(s.MembershipOut(membership).data)

    @extend_schema(responses={204: None}, tags=["projects"])
    def delete(self, request: Request, project_id: int, membership_id: int) -> Response:
        membership = self._membership(request, project_id, membership_id)
        projects.membership_remove(membership=membership)
        audit.audit_record(
            project=membership.project,
            actor=request_user(request),
            action="membership.remove",
            target=membership.user.get_username(),
            before={"role": membership.role},
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class ClassListView(APIView):
    @extend_schema(responses=s.CellClassSerializer(many=True), tags=["projects"])
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id)
        return Response(s.CellClassSerializer(project.classes.all(), many=True).data)

    @extend_schema(request=s.CellClassIn, responses={201: s.CellClassSerializer}, tags=["projects"])
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        data = parse(s.CellClassIn, request.data)
        cell_class = projects.cell_class_create(project=project, **data)
        return Response(s.CellClassSerializer(cell_class).data, status=status.HTTP_201_CREATED)


class ClassDetailView(APIView):
    def _cell_class(self, request: Request, project_id: int, class_id: int) -> Any:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        cell_class = project.classes.filter(pk=class_id).first()
        if cell_class is None:
            raise Http404("No such class.")
        return cell_class

    @extend_schema(request=s.CellClassIn(partial=True), responses=s.CellClassSerializer, tags=["projects"])
    def patch(self, request: Request, project_id: int, class_id: int) -> Response:
        cell_class = self._cell_class(request, project_id, class_id)
        if not isinstance(request.data, dict):
            raise ServiceValidationError("Expected a JSON object.")
        cell_class = projects.cell_class_update(cell_class=cell_class, data=dict(request.data))
        return Response(s.CellClassSerializer(cell_class).data)

    @extend_schema(responses={204: None}, tags=["projects"])
    def delete(self, request: Request, project_id: int, class_id: int) -> Response:
        projects.cell_class_delete(cell_class=self._cell_class(request, project_id, class_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditListView(APIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=paginated(s.AuditOut), tags=["projects"])
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        queryset = AuditEvent.objects.filter(project=project).select_related("actor").order_by("-id")
        return paginate(request, self, queryset, s.AuditOut)


# --- images --------------------------------------------------------------------------------

IMAGE_FILTERS = [
    OpenApiParameter(name, str, required=False)
    for name in ("status", "split", "bethesda", "presegment_status", "cell_class", "search")
]


class ImageListView(APIView):
    parser_classes = [MultiPartParser]  # the upload (GET takes none)

    @extend_schema(parameters=IMAGE_FILTERS + PAGE_PARAMETERS, responses=paginated(s.ImageOut), tags=["images"])
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id)
        filters = {
            k: request.query_params.get(k)
            for k in ("status", "split", "bethesda", "presegment_status", "cell_class", "search")
        }
        if filters["cell_class"] and not str(filters["cell_class"]).isdigit():
            raise ServiceValidationError("Invalid filter.", {"cell_class": "must be a class id"})
        return paginate(request, self, selectors.image_list(project=project, filters=filters), s.ImageOut)

    @extend_schema(
        request={"multipart/form-data": s.ImageUploadIn}, responses={201: s.ImageOut(many=True)}, tags=["images"]
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        files = request.FILES.getlist("files") or request.FILES.getlist("file")
        form: Any = request.data
        metadata = {k: form[k] for k in image_services.METADATA_FIELDS if k in form}
        images = image_services.image_upload_many(
            project=project, files=files, metadata=metadata, uploaded_by=request_user(request)
        )
        for image in images:
            image.cell_count = 0  # type: ignore[attr-defined]  # new: no cells yet
        return Response(s.ImageOut(images, many=True).data, status=status.HTTP_201_CREATED)


class ImageDetailView(APIView):
    @extend_schema(responses=s.ImageOut, tags=["images"])
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id)
        image.cell_count = image.cells.filter(layer=Layer.ANNOTATION).count()  # type: ignore[attr-defined]
        return Response(s.ImageOut(image).data)

    @extend_schema(request=s.ImagePatchIn, responses=s.ImageOut, tags=["images"])
    def patch(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        if not isinstance(request.data, dict):
            raise ServiceValidationError("Expected a JSON object.")
        can_manage = selectors.user_can(user=request_user(request), project=image.project, capability="manage")
        image = image_services.image_update(
            image=image, data=dict(request.data), user=request_user(request), can_manage=can_manage
        )
        image.cell_count = image.cells.filter(layer=Layer.ANNOTATION).count()  # type: ignore[attr-defined]
        return Response(s.ImageOut(image).data)

    @extend_schema(responses={204: None}, tags=["images"])
    def delete(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="manage")
        audit.audit_record(
            project=image.project,
            actor=request_user(request),
            action="image.delete",
            target=image.file_name,
            before={"sha256": image.sha256},
        )
        image_services.image_delete(image=image)
        return Response(status=status.HTTP_204_NO_CONTENT)


ORIGINAL_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff"}


class ImageFileView(APIView):
    VARIANTS = {
        "display": ("display", "image/png"),
        "thumbnail": ("thumbnail", "image/jpeg"),
        "original": ("original", None),
    }

    @extend_schema(
        parameters=[OpenApiParameter("variant", str, enum=["display", "thumbnail", "original"])],
        responses={(200, "image/*"): bytes, (200, "application/octet-stream"): bytes},
        tags=["images"],
    )
    def get(self, request: Request, image_id: int) -> FileResponse:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id)
        variant = request.query_params.get("variant", "display")
        if variant not in self.VARIANTS:
            raise ServiceValidationError("Invalid variant.", {"variant": "must be display, thumbnail or original"})
        field, content_type = self.VARIANTS[variant]
        if variant == "original":  # the format the upload was decoded as
            content_type = ORIGINAL_TYPES.get(image.original_format.upper())
        stored = getattr(image, field)
        if not stored.name:  # a tiled image has no display PNG; its thumbnail comes with its pyramid
            raise NotFoundError("A tiled image is served as tiles." if variant == "display" else "Not built yet.")
        response = FileResponse(stored.open("rb"), content_type=content_type or "application/octet-stream")
        if variant == "original":
            response["Content-Disposition"] = f'attachment; filename="{image.file_name}"'
        response["Cache-Control"] = "private, max-age=86400"
        return response


TILE_NAME = re.compile(r"(?P<col>[0-9]{1,7})_(?P<row>[0-9]{1,7})\.(?P<ext>[a-z]{3,4})")


class ImageTileView(APIView):
    """One tile of a tiled image's pyramid: only the tile file is read (the web process never
    decodes a slide)."""

    throttle_classes = [TileThrottle]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "tile", str, OpenApiParameter.PATH, description="{col}_{row}.{format} (the format of the image's tiles)"
            ),
            OpenApiParameter("level", int, OpenApiParameter.PATH, description="0 (one pixel) .. levels-1 (full size)"),
        ],
        responses={(200, "image/jpeg"): bytes},
        tags=["images"],
        operation_id="image_tile",
    )
    def get(self, request: Request, image_id: int, level: int, tile: str) -> FileResponse:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id)
        found = TILE_NAME.fullmatch(tile)
        if found is None:
            raise NotFoundError("No such tile: the name is {col}_{row}.{format}.")
        col, row, ext = int(found["col"]), int(found["row"]), found["ext"]
        handle = slide_services.image_tile_open(image=image, level=level, col=col, row=row, ext=ext)
        response = FileResponse(handle, content_type="image/jpeg")
        # A built pyramid never changes (a rebuild writes a new folder): the folder is the ETag.
        response["Cache-Control"] = "private, max-age=86400"
        response["ETag"] = f'"{image.tile_root.rsplit("/", 1)[-1]}"'
        return response


# --- cells ---------------------------------------------------------------------------------


def _saved_response(code: int, body: dict[str, Any]) -> HttpResponse:
    """A save's answer (whole-layer PUT or delta PATCH), encoded directly with DRF's encoder:
    this is the autosave hot path."""
    return HttpResponse(
        json.dumps(body, cls=JSONEncoder),
        status=code,
        content_type="application/json",
        headers={"ETag": f'"{body["revision"]}"'},
    )


def _cells_response(revision: int, rows: list[dict[str, Any]], code: int = 200) -> Response:
    body = {"revision": revision, "cells": [s.cell_out(r) for r in rows]}
    return Response(body, status=code, headers={"ETag": f'"{revision}"'})


# A viewport read answers at most this many cells per page (more: next_after says where to go on).
CELLS_PAGE_DEFAULT = 5000
CELLS_PAGE_MAX = 20000


def _bbox_param(raw: str) -> tuple[float, float, float, float]:
    parts = raw.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ServiceValidationError("Invalid bbox.", {"bbox": "must be x0,y0,x1,y1: four numbers (image pixels)"})
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ServiceValidationError("Invalid bbox.", {"bbox": "x1 must exceed x0 and y1 must exceed y0"})
    return x0, y0, x1, y1


def _int_param(request: Request, name: str, *, low: int, high: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        bound = f" from {low} to {high}" if high is not None else f" of at least {low}"
        raise ServiceValidationError(f"Invalid {name}.", {name: f"must be an integer{bound}"})
    return int(raw)


class CellsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("layer", str, enum=Layer.values),
            OpenApiParameter("model_version", int),
            OpenApiParameter(
                "bbox",
                str,
                description="x0,y0,x1,y1 (image pixels): only the cells whose bounding box meets this box, a page "
                "at a time (large images and slides)",
            ),
            OpenApiParameter(
                "limit",
                int,
                description=f"With bbox: cells per page (default {CELLS_PAGE_DEFAULT}, at most {CELLS_PAGE_MAX})",
            ),
            OpenApiParameter("after", int, description="With bbox: the next_after of the previous page"),
        ],
        responses=s.CellsOut,
        tags=["cells"],
    )
    def get(self, request: Request, image_id: int) -> HttpResponse:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id)
        layer = request.query_params.get("layer", Layer.ANNOTATION)
        if layer not in Layer.values:
            raise ServiceValidationError("Invalid layer.", {"layer": f"must be one of {', '.join(Layer.values)}"})
        model_version = request.query_params.get("model_version")
        if model_version is not None and not model_version.isdigit():
            raise ServiceValidationError("Invalid filter.", {"model_version": "must be an id"})
        model_version_id = int(model_version) if model_version else None
        bbox = request.query_params.get("bbox")
        if bbox is None:
            for name in ("limit", "after"):
                if name in request.query_params:
                    raise ServiceValidationError(f"Invalid {name}.", {name: "only with bbox"})
            cells = selectors.cells_json(image=image, layer=layer, model_version_id=model_version_id)
            body = f'{{"revision": {image.revision}, "cells": {cells}}}'
        else:
            box = _bbox_param(bbox)
            limit = _int_param(request, "limit", low=1, high=CELLS_PAGE_MAX) or CELLS_PAGE_DEFAULT
            page = selectors.cells_in_box_json(
                image=image,
                box=box,
                layer=layer,
                model_version_id=model_version_id,
                limit=limit,
                after=_int_param(request, "after", low=0),
            )
            next_after = "null" if page.next_after is None else str(page.next_after)
            body = f'{{"revision": {image.revision}, "cells": {page.json}, "next_after": {next_after}}}'
        return HttpResponse(body, content_type="application/json", headers={"ETag": f'"{image.revision}"'})

    @extend_schema(
        request=s.CellsDeltaIn,
        responses={200: s.CellsDeltaOut, 409: s.CellsDeltaConflictOut},
        tags=["cells"],
        summary="Save a delta of the annotation layer (added, changed, deleted cells)",
    )
    def patch(self, request: Request, image_id: int) -> HttpResponse:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = request.data
        if not isinstance(data, dict):
            raise ServiceValidationError("Expected a JSON object with base_revision, added, changed and deleted.")
        body_revision = data.get("base_revision", data.get("revision"))
        if body_revision is not None and not (isinstance(body_revision, int) and not isinstance(body_revision, bool)):
            raise ServiceValidationError("Invalid base_revision.", {"base_revision": "must be an integer"})
        try:
            base = base_revision(request, body_revision)
        except ServiceValidationError as exc:
            if "revision" in exc.errors:
                raise ServiceValidationError(exc.detail, {"base_revision": exc.errors["revision"]}) from exc
            raise

        def run() -> tuple[int, dict[str, Any]]:
            result = cell_delta_services.cells_delta_apply(
                image=image, user=request_user(request), base_revision=base, data=data
            )
            return 200, {
                "revision": result.revision,
                "added": [s.cell_out(r) for r in result.added],
                "changed": [s.cell_out(r) for r in result.changed],
                "deleted": result.deleted,
            }

        code, body = idempotent_call(
            user=request_user(request),
            key=request.headers.get("Idempotency-Key"),
            scope=f"cells_delta:{image.pk}",
            payload={"base_revision": base, "delta": data},
            run=run,
        )
        return _saved_response(code, body)

    @extend_schema(request=s.CellsReplaceIn, responses={200: s.CellsOut, 409: s.CellsOut}, tags=["cells"])
    def put(self, request: Request, image_id: int) -> HttpResponse:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        if not isinstance(request.data, dict):
            raise ServiceValidationError("Expected a JSON object with revision and cells.")
        body_revision = request.data.get("revision")
        if body_revision is not None and (not isinstance(body_revision, int) or isinstance(body_revision, bool)):
            raise ServiceValidationError("Invalid revision.", {"revision": "must be an integer"})
        base = base_revision(request, body_revision)
        cells = request.data.get("cells")

        def run() -> tuple[int, dict[str, Any]]:
            result = cell_services.cells_replace(
                image=image, user=request_user(request), base_revision=base, cells=cells
            )
            return 200, {"revision": result.revision, "cells": [s.cell_out(r) for r in result.cells]}

        code, body = idempotent_call(
            user=request_user(request),
            key=request.headers.get("Idempotency-Key"),
            scope=f"cells_replace:{image.pk}",
            payload={"revision": base, "cells": cells},
            run=run,
        )
        return _saved_response(code, body)


class HistoryView(APIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=paginated(s.HistoryOut), tags=["cells"])
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id)
        return paginate(request, self, selectors.history_list(image=image), s.HistoryOut)


class RevisionView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "bbox", str, description="x0,y0,x1,y1: only the cells whose bounding box meets it (a slide's view)"
            )
        ],
        responses=s.RevisionOut,
        tags=["cells"],
        summary="The annotation layer as it was at a revision",
    )
    def get(self, request: Request, image_id: int, revision: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id)
        bbox = request.query_params.get("bbox")
        box = _bbox_param(bbox) if bbox is not None else None
        if revision != 0 and not image.history.filter(revision=revision).exists():
            raise NotFoundError("No such revision.")
        cells = selectors.revision_state(image=image, revision=revision, box=box)
        return Response(
            {
                "revision": revision,
                "cells": [{"id": c["id"], "class_id": c["class_id"], "polygon": c["polygon"]} for c in cells],
            }
        )


class RestoreView(APIView):
    @extend_schema(request=s.RestoreIn, responses={200: s.CellsOut, 409: s.CellsOut}, tags=["cells"])
    def post(self, request: Request, image_id: int, revision: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(s.RestoreIn, request.data)
        base = base_revision(request, data.get("revision"))
        result = cell_services.revision_restore(
            image=image, user=request_user(request), target_revision=revision, base_revision=base
        )
        return _cells_response(result.revision, result.cells)


# --- regions of interest (issue #14) -------------------------------------------------------------


class RegionsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("status", str, description="Only the regions in this workflow status.")],
        responses=s.RegionOut(many=True),
        tags=["regions"],
    )
    def get(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id)
        wanted = request.query_params.get("status")
        if wanted is not None and wanted not in ImageStatus.values:
            raise ServiceValidationError(
                "Invalid filter.", {"status": f"must be one of {', '.join(ImageStatus.values)}"}
            )
        return Response(s.RegionOut(selectors.region_list(image=image, status=wanted), many=True).data)

    @extend_schema(request=s.RegionIn, responses={201: s.RegionOut}, tags=["regions"])
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(s.RegionIn, request.data)
        region = region_services.region_create(
            image=image, user=request_user(request), polygon=data["polygon"], name=data.get("name")
        )
        return Response(s.RegionOut(region).data, status=status.HTTP_201_CREATED)


class RegionDetailView(APIView):
    @extend_schema(responses=s.RegionOut, tags=["regions"])
    def get(self, request: Request, image_id: int, region_id: int) -> Response:
        region = selectors.region_get_for_user(user=request_user(request), image_id=image_id, region_id=region_id)
        return Response(s.RegionOut(region).data)

    @extend_schema(request=s.RegionPatchIn, responses=s.RegionOut, tags=["regions"])
    def patch(self, request: Request, image_id: int, region_id: int) -> Response:
        region = selectors.region_get_for_user(
            user=request_user(request), image_id=image_id, region_id=region_id, capability="annotate"
        )
        if not isinstance(request.data, dict):
            raise ServiceValidationError("Expected a JSON object.")
        parse(s.RegionPatchIn, request.data)  # shapes; unknown fields are named by the service
        region = region_services.region_update(region=region, user=request_user(request), data=dict(request.data))
        return Response(s.RegionOut(region).data)

    @extend_schema(responses={204: None}, tags=["regions"])
    def delete(self, request: Request, image_id: int, region_id: int) -> Response:
        region = selectors.region_get_for_user(
            user=request_user(request), image_id=image_id, region_id=region_id, capability="annotate"
        )
        region_services.region_delete(region=region, user=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
