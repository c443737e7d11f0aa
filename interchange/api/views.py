"""Export and import views: parse, authorise (selectors), call one service, serialise.

Exports stream (``StreamingHttpResponse``) or, when large or asked with ``async=1``, answer 202
with an export job whose file members download until it expires (then 410).
"""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.http import FileResponse, StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import selectors
from annotations.api.serializers import CellOut
from annotations.models import Layer
from core.api.parsing import JSONObjectField, StrictSerializer, base_revision, parse
from core.errors import GoneError, ServiceValidationError
from interchange import selectors as export_selectors
from interchange.models import ExportJob, ExportStatus
from interchange.services import coco_import, geojson_import, jobs
from interchange.services.parts import MULTIPART_CHOICES


def _user(request: Request) -> User:
    return cast(User, request.user)


class ExportJobOut(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    status = serializers.ChoiceField(choices=[*ExportStatus.values, "expired"])
    progress = serializers.FloatField()
    items_done = serializers.IntegerField()
    items_total = serializers.IntegerField()
    params = serializers.DictField()
    file_name = serializers.CharField()
    size_bytes = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    url = serializers.CharField()
    download_url = serializers.CharField(allow_null=True)


def job_out(job: ExportJob) -> dict[str, Any]:
    expired = job.status == ExportStatus.DONE and jobs.export_job_expired(job)
    done = job.status == ExportStatus.DONE
    kwargs = {"project_id": job.project_id, "job_id": job.pk}
    if done:
        progress = 1.0
    else:
        progress = min(job.items_done / job.items_total, 1.0) if job.items_total else 0.0
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": "expired" if expired else job.status,
        "progress": round(progress, 4),
        "items_done": job.items_done,
        "items_total": job.items_total,
        "params": job.params,
        "file_name": job.file_name,
        "size_bytes": job.size_bytes,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "url": reverse("interchange:export-job", kwargs=kwargs),
        "download_url": reverse("interchange:export-job-download", kwargs=kwargs) if done and not expired else None,
    }


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            quality = params.strip().removeprefix("q=").strip()
            try:
                return not quality or float(quality) > 0
            except ValueError:
                return True
    return False


FILTER_PARAMETERS = [
    OpenApiParameter("layer", str, enum=["annotation", "verified", "proposal"]),
    OpenApiParameter("model_version", int, description="Required with layer=proposal."),
    OpenApiParameter("split", str, description="train, validation, test (comma-separated)"),
    OpenApiParameter("bethesda", str, description="I..VI (comma-separated)"),
    OpenApiParameter("class_ids", str, description="Class ids, comma-separated"),
    OpenApiParameter("image_ids", str, description="Image ids, comma-separated: 1,2,3"),
    OpenApiParameter("async", bool, description="Run as a background job (202 with the job)."),
]
_COCO_EMPTY = (
    "List images without selected cells too (default: only images with cells, and on the verified "
    "layer images verified with none)."
)
KIND_PARAMETERS = {
    "coco": [
        OpenApiParameter("segmentation", str, enum=["polygon", "rle"]),
        OpenApiParameter("gzip", bool, description="A .json.gz file (Accept-Encoding: gzip also compresses)."),
        OpenApiParameter("include_empty", bool, description=_COCO_EMPTY),
    ],
    "coco_zip": [
        OpenApiParameter("segmentation", str, enum=["polygon", "rle"]),
        OpenApiParameter("include_empty", bool, description=_COCO_EMPTY),
    ],
    "geojson": [OpenApiParameter("object_type", str, enum=["annotation", "detection"])],
    "nnunet": [OpenApiParameter("dataset_id", int), OpenApiParameter("include_empty", bool)],
    "cellpose": [OpenApiParameter("include_empty", bool)],
}


def _export_view(kind: str, content_type: str) -> type[APIView]:
    class ExportView(APIView):
        @extend_schema(
            parameters=FILTER_PARAMETERS + KIND_PARAMETERS[kind],
            responses={
                # a COCO document is a JSON object (a .json.gz file with gzip=1); the others zips
                **(
                    {(200, "application/json"): OpenApiTypes.OBJECT, (200, "application/gzip"): OpenApiTypes.BINARY}
                    if kind == "coco"
                    else {(200, content_type): OpenApiTypes.BINARY}
                ),
                202: OpenApiResponse(ExportJobOut, description="Queued as a job."),
            },
            tags=["exports"],
            operation_id=f"export_{kind}",
        )
        def get(self, request: Request, project_id: int) -> Any:
            project = selectors.project_get_for_user(user=_user(request), project_id=project_id, capability="view")
            params = {key: ",".join(request.query_params.getlist(key)) for key in request.query_params}
            result = jobs.export_request(
                project=project, user=_user(request), kind=kind, params=params, accept_gzip=_accepts_gzip(request)
            )
            if isinstance(result, ExportJob):
                body = job_out(result)
                return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})
            response = StreamingHttpResponse(result.chunks, content_type=result.content_type)
            response["Content-Disposition"] = f'attachment; filename="{result.file_name}"'
            if result.content_encoding:
                response["Content-Encoding"] = result.content_encoding
            if kind == "coco":
                response["Vary"] = "Accept-Encoding"
            response["Cache-Control"] = "private, no-store"
            response["X-Accel-Buffering"] = "no"  # let a proxy pass chunks through as they come
            return response

    ExportView.__name__ = ExportView.__qualname__ = f"Export{kind.title().replace('_', '')}View"
    return ExportView


CocoExportView = _export_view("coco", "application/json")
CocoZipExportView = _export_view("coco_zip", "application/zip")
GeoJsonExportView = _export_view("geojson", "application/zip")
NnUNetExportView = _export_view("nnunet", "application/zip")
CellposeExportView = _export_view("cellpose", "application/zip")


class ExportJobListView(APIView):
    @extend_schema(responses=ExportJobOut(many=True), tags=["exports"])
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=_user(request), project_id=project_id, capability="view")
        jobs = export_selectors.export_job_list(project=project)[:100]
        return Response([job_out(job) for job in jobs])


class ExportJobDetailView(APIView):
    @extend_schema(responses=ExportJobOut, tags=["exports"])
    def get(self, request: Request, project_id: int, job_id: int) -> Response:
        job = export_selectors.export_job_get_for_user(user=_user(request), project_id=project_id, job_id=job_id)
        return Response(job_out(job))


class ExportJobDownloadView(APIView):
    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 409: None, 410: None}, tags=["exports"]
    )
    def get(self, request: Request, project_id: int, job_id: int) -> Any:
        job = export_selectors.export_job_get_for_user(user=_user(request), project_id=project_id, job_id=job_id)
        try:
            handle = jobs.export_job_open(job=job)
        except GoneError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_410_GONE)
        response = FileResponse(
            handle, as_attachment=True, filename=job.file_name, content_type=job.content_type or None
        )
        response["Cache-Control"] = "private, no-store"
        return response


class CocoImportIn(serializers.Serializer):
    file = serializers.FileField(help_text="The COCO JSON file.")
    images = serializers.FileField(required=False, help_text="A zip of the image files not yet in the project.")
    dry_run = serializers.BooleanField(required=False, default=False)
    unknown_categories = serializers.ChoiceField(choices=["reject", "create"], required=False, default="reject")
    multipart = serializers.ChoiceField(
        choices=MULTIPART_CHOICES,
        required=False,
        default="merge",
        help_text=(
            "A segmentation of several polygons: merge (one cell when they overlap or touch, else "
            "refused), split (one cell each) or refuse."
        ),
    )


class MultipartCountsOut(serializers.Serializer):
    merged = serializers.IntegerField(help_text="Objects of several polygons imported as one cell.")
    split = serializers.IntegerField(help_text="Objects of several polygons imported as one cell per polygon.")


class CocoImagesOut(serializers.Serializer):
    matched = serializers.IntegerField()
    uploaded = serializers.IntegerField()


class CocoImportImageOut(serializers.Serializer):
    coco_id = serializers.IntegerField()
    file_name = serializers.CharField()
    image_id = serializers.IntegerField(allow_null=True, help_text="null for an image a dry run would upload.")
    action = serializers.CharField(help_text="matched (an image of the project) or uploaded (from the zip)")
    cells = serializers.IntegerField()


class CocoSkippedOut(serializers.Serializer):
    annotation = serializers.IntegerField(help_text="The COCO annotation id.")
    image = serializers.IntegerField(help_text="The COCO image id.")
    reason = serializers.CharField()


class CocoImportOut(serializers.Serializer):
    dry_run = serializers.BooleanField()
    images = CocoImagesOut()
    categories_created = serializers.ListField(child=serializers.CharField())
    cells = serializers.IntegerField()
    skipped_crowd = serializers.IntegerField(help_text="Crowd annotations (iscrowd=1), not imported.")
    skipped = CocoSkippedOut(many=True, help_text="Annotations not imported and why (the first 1000).")
    multipart = MultipartCountsOut()
    repaired = serializers.IntegerField()
    per_image = CocoImportImageOut(many=True)
    warnings = serializers.ListField(child=serializers.CharField())


def _form_flag(value: Any, name: str) -> bool:
    text = str(value).strip().lower() if value is not None else ""
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ServiceValidationError("Invalid import options.", {name: "must be true or false"})


class CocoImportView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": CocoImportIn},
        responses={
            200: OpenApiResponse(CocoImportOut, description="Dry run: what would be imported."),
            201: OpenApiResponse(CocoImportOut, description="Imported."),
        },
        tags=["exports"],
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=_user(request), project_id=project_id, capability="manage")
        form: Any = request.data
        coco_file = request.FILES.get("file")
        if coco_file is None:
            raise ServiceValidationError("No COCO file.", {"file": "required: the COCO JSON as multipart field file"})
        dry_run = _form_flag(form.get("dry_run", request.query_params.get("dry_run")), "dry_run")
        unknown = form.get("unknown_categories") or request.query_params.get("unknown_categories") or "reject"
        multipart = form.get("multipart") or request.query_params.get("multipart") or "merge"
        result = coco_import.coco_import(
            project=project,
            user=_user(request),
            coco_file=coco_file,
            images_zip=request.FILES.get("images"),
            dry_run=dry_run,
            unknown_categories=str(unknown),
            multipart=str(multipart),
        )
        code = status.HTTP_200_OK if result.dry_run else status.HTTP_201_CREATED
        return Response(result.as_dict(), status=code)


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}]})
class ClassRefField(serializers.CharField):
    """A class of the project by id or by name (JSON: a number or a text; a form: text)."""


_CLASS_MAP_HELP = (
    "Classification name (case ignored) -> class id or name of this project, or null to skip those "
    "objects. Names it leaves out match the project's class names, case ignored."
)


class GeoJsonImportForm(StrictSerializer):
    file = serializers.FileField(help_text="The GeoJSON: a FeatureCollection as QuPath exports it.")
    revision = serializers.IntegerField(
        required=False, help_text="The annotation layer's current revision (or If-Match); a dry run may leave it out."
    )
    mode = serializers.ChoiceField(
        choices=geojson_import.MODES,
        required=False,
        default="append",
        help_text="append: add to the annotation layer; replace: the layer becomes the imported cells.",
    )
    layer = serializers.ChoiceField(
        choices=[Layer.ANNOTATION], required=False, default=Layer.ANNOTATION, help_text="The layer written."
    )
    class_map = JSONObjectField(required=False, help_text=f"JSON text. {_CLASS_MAP_HELP}")
    default_class = ClassRefField(
        required=False, help_text="The class (id or name) of objects whose class is unknown or missing."
    )
    multipart = serializers.ChoiceField(
        choices=MULTIPART_CHOICES,
        required=False,
        default="merge",
        help_text="A MultiPolygon: merge (one cell when its parts overlap or touch, else refused), split or refuse.",
    )
    holes = serializers.ChoiceField(
        choices=geojson_import.HOLES,
        required=False,
        default="refuse",
        help_text="A polygon with holes: refuse, or fill (import its outer ring).",
    )
    dry_run = serializers.BooleanField(required=False, default=False, help_text="Validate and report; write nothing.")


class GeoJsonImportJson(GeoJsonImportForm):
    file = None  # type: ignore[assignment]
    geojson = serializers.DictField(help_text="The GeoJSON FeatureCollection (or one Feature).")
    class_map = serializers.DictField(required=False, help_text=_CLASS_MAP_HELP)  # type: ignore[assignment]


class GeoJsonSkippedOut(serializers.Serializer):
    feature = serializers.IntegerField(help_text="Index in the file's features.")
    reason = serializers.CharField()


class GeoJsonImportOut(serializers.Serializer):
    dry_run = serializers.BooleanField()
    image = serializers.IntegerField()
    mode = serializers.ChoiceField(choices=geojson_import.MODES)
    revision = serializers.IntegerField(help_text="The annotation layer's revision now (unchanged by a dry run).")
    features = serializers.IntegerField(help_text="Features in the file.")
    cells = serializers.IntegerField(help_text="Cells written (or that a dry run would write).")
    deleted = serializers.IntegerField(help_text="Cells removed from the layer (mode=replace).")
    classes = serializers.DictField(child=serializers.IntegerField(), help_text="Cells written per class name.")
    skipped = GeoJsonSkippedOut(many=True, help_text="Features not imported and why.")
    multipart = MultipartCountsOut()
    holes_filled = serializers.IntegerField(help_text="Polygons imported as their outer ring (holes=fill).")
    nuclei_ignored = serializers.IntegerField(help_text="QuPath cells whose nucleusGeometry was not imported.")
    repaired = serializers.IntegerField(help_text="Self-intersecting outlines repaired into one simple polygon.")
    warnings = serializers.ListField(child=serializers.CharField())


class GeoJsonConflictOut(serializers.Serializer):
    detail = serializers.CharField()
    revision = serializers.IntegerField(required=False, help_text="A stale revision: the current one.")
    cells = CellOut(many=True, required=False, help_text="A stale revision: the current annotation layer.")
    status = serializers.CharField(required=False, help_text="The image is locked: its status.")


class GeoJsonImportView(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": GeoJsonImportForm, "application/json": GeoJsonImportJson},
        responses={
            200: OpenApiResponse(GeoJsonImportOut, description="Dry run: what would be written."),
            201: OpenApiResponse(GeoJsonImportOut, description="Imported."),
            409: OpenApiResponse(
                GeoJsonConflictOut,
                description=(
                    "Stale revision: the server's current revision and cells, as for a cell save; or the "
                    "image is locked for review (its status)."
                ),
            ),
        },
        tags=["cells"],
        operation_id="images_import_geojson",
    )
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=_user(request), image_id=image_id, capability="annotate")
        is_form = request.content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))
        data = parse(GeoJsonImportForm if is_form else GeoJsonImportJson, request.data)
        revision = data.get("revision")
        if revision is None and data["dry_run"] and not request.headers.get("If-Match", "").strip():
            base = None  # a dry run may leave the revision out
        else:
            base = base_revision(request, revision)
        result = geojson_import.geojson_import(
            image=image,
            user=_user(request),
            geojson_file=data.get("file"),
            geojson=data.get("geojson"),
            base_revision=base,
            mode=data["mode"],
            layer=data["layer"],
            class_map=data.get("class_map"),
            default_class=data.get("default_class"),
            multipart=data["multipart"],
            holes=data["holes"],
            dry_run=data["dry_run"],
        )
        code = status.HTTP_200_OK if result.dry_run else status.HTTP_201_CREATED
        return Response(result.as_dict(), status=code, headers={"ETag": f'"{result.revision}"'})
