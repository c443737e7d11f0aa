"""Training API: jobs, dataset snapshots, the model registry, schedules. Views parse, authorise
(``project_get_for_user`` / ``training.selectors``), call one service and serialise."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.selectors import project_get_for_user
from core.api.parsing import PAGE_PARAMETERS, paginate, paginated, parse, request_user
from core.errors import ServiceValidationError
from core.queue import task_enqueue
from training import selectors, snapshots
from training.api import serializers as s
from training.models import DatasetSnapshot, JobKind, JobStatus, ModelKind
from training.services import jobs, registry, schedule
from training.snapshots import snapshot_zip_stream


def _reject_unknown(data: Any, allowed: set[str]) -> None:
    """400 naming every top-level key the endpoint does not know (nothing is silently ignored)."""
    if hasattr(data, "keys"):
        unknown = sorted(set(data.keys()) - allowed)
        if unknown:
            raise ServiceValidationError("Unknown fields.", {key: "unknown field" for key in unknown})


def _snapshot_of(project_id: int, snapshot_id: int | None) -> DatasetSnapshot | None:
    if snapshot_id is None:
        return None
    snapshot = DatasetSnapshot.objects.filter(pk=snapshot_id, project_id=project_id).first()
    if snapshot is None:
        raise ServiceValidationError("Unknown snapshot.", {"snapshot": "not a snapshot of this project"})
    return snapshot


# --- jobs ----------------------------------------------------------------------------------


class ProjectJobsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=JobStatus.values),
            OpenApiParameter("kind", str, enum=JobKind.values),
            *PAGE_PARAMETERS,
        ],
        responses=paginated(s.JobBriefOut),
        tags=["training"],
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id)
        jobs = selectors.training_job_list(
            project_id=project.pk, status=request.query_params.get("status"), kind=request.query_params.get("kind")
        ).prefetch_related("model_versions")
        return paginate(request, self, jobs, s.JobBriefOut)

    @extend_schema(request=s.JobIn, responses={201: s.JobOut, 409: dict}, tags=["training"])
    def post(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id, capability="train")
        _reject_unknown(request.data, {"kind", "config", "snapshot"})
        data = parse(s.JobIn, request.data)
        job = jobs.training_job_start(
            project=project,
            user=request_user(request),
            kind=data["kind"],
            config=data.get("config"),
            snapshot=_snapshot_of(project.pk, data.get("snapshot")),
        )
        return Response(s.JobOut(job).data, status=status.HTTP_201_CREATED)


class JobDetailView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("log_after", int, description="Return only the log after this many characters.")],
        responses=s.JobOut,
        tags=["training"],
    )
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.training_job_get_for_user(user=request_user(request), job_id=job_id)
        body = dict(s.JobOut(job).data)
        # Pollers pass the length they already have, so a long log is not re-sent every poll.
        log_after = request.query_params.get("log_after")
        if log_after is not None:
            if not log_after.isdigit():
                raise ServiceValidationError("Invalid parameter.", {"log_after": "must be a non-negative integer"})
            body["log"] = job.log[int(log_after) :]
        body["log_length"] = len(job.log)
        return Response(body)


class JobCancelView(APIView):
    @extend_schema(request=None, responses={200: s.CancelOut, 409: dict}, tags=["training"])
    def post(self, request: Request, job_id: int) -> Response:
        job = selectors.training_job_get_for_user(user=request_user(request), job_id=job_id, capability="train")
        job = jobs.training_job_cancel(job=job, user=request_user(request))
        return Response({"id": job.pk, "status": job.status, "cancel_requested": job.cancel_requested})


# --- dataset snapshots ---------------------------------------------------------------------


class ProjectSnapshotsView(APIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=paginated(s.SnapshotOut), tags=["training"])
    def get(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id)
        return paginate(request, self, selectors.snapshot_list(project_id=project.pk), s.SnapshotOut)

    @extend_schema(request=s.SnapshotIn, responses={201: s.SnapshotOut}, tags=["training"])
    def post(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id, capability="train")
        _reject_unknown(request.data, {"source", "synthetic"})
        data = parse(s.SnapshotIn, request.data)
        snapshot = snapshots.dataset_snapshot_create(
            project=project, user=request_user(request), source=data["source"], synthetic=data.get("synthetic")
        )
        return Response(s.SnapshotOut(snapshot).data, status=status.HTTP_201_CREATED)


class SnapshotDetailView(APIView):
    @extend_schema(responses=s.SnapshotDetailOut, tags=["training"])
    def get(self, request: Request, snapshot_id: int) -> Response:
        snapshot = selectors.snapshot_get_for_user(user=request_user(request), snapshot_id=snapshot_id)
        return Response(s.SnapshotDetailOut(snapshot).data)


class SnapshotDownloadView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("dataset_id", int, description="nnU-Net dataset id (1-999), default 501")],
        responses={(200, "application/zip"): bytes},
        tags=["training"],
    )
    def get(self, request: Request, snapshot_id: int, layout: str) -> StreamingHttpResponse:
        snapshot = selectors.snapshot_get_for_user(
            user=request_user(request), snapshot_id=snapshot_id, capability="train"
        )
        if layout not in ("nnunet", "cellpose"):
            raise ServiceValidationError("Unknown layout.", {"layout": "must be nnunet or cellpose"})
        raw = request.query_params.get("dataset_id", "501")
        if not raw.isdigit() or not 1 <= int(raw) <= 999:
            raise ServiceValidationError("Invalid dataset id.", {"dataset_id": "must be an integer from 1 to 999"})
        name = f"project{snapshot.project_id}-snapshot{snapshot.number}-{layout}.zip"
        response = StreamingHttpResponse(
            snapshot_zip_stream(snapshot, fmt=layout, dataset_id=int(raw)), content_type="application/zip"
        )
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


class ProjectCompletionView(APIView):
    @extend_schema(request=s.CompletionIn, responses={200: dict}, tags=["training"])
    def post(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id, capability="train")
        _reject_unknown(request.data, {"images", "complete"})
        data = parse(s.CompletionIn, request.data)
        count = snapshots.image_completion_set(
            project=project, image_ids=data["images"], complete=data["complete"], user=request_user(request)
        )
        return Response({"images": count, "complete": data["complete"]})


# --- model registry ------------------------------------------------------------------------


class ProjectRegistryView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("snapshot", int), OpenApiParameter("kind", str, enum=ModelKind.values)],
        responses=s.RegistryOut,
        tags=["training"],
    )
    def get(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id)
        raw = request.query_params.get("snapshot")
        if raw is not None and not raw.isdigit():
            raise ServiceValidationError("Invalid snapshot.", {"snapshot": "must be a snapshot id"})
        snapshot = _snapshot_of(project.pk, int(raw) if raw else None)
        table = selectors.registry_table(
            project_id=project.pk, snapshot=snapshot, kind=request.query_params.get("kind")
        )
        return Response(s.RegistryOut(table).data)


class ModelDetailView(APIView):
    @extend_schema(responses=s.ModelVersionDetailOut, tags=["training"])
    def get(self, request: Request, version_id: int) -> Response:
        version = selectors.model_version_get_for_user(user=request_user(request), version_id=version_id)
        return Response(s.ModelVersionDetailOut(version).data)


class ModelPromoteView(APIView):
    @extend_schema(request=s.PromoteIn, responses={200: s.ModelVersionDetailOut, 409: dict}, tags=["training"])
    def post(self, request: Request, version_id: int) -> Response:
        version = selectors.model_version_get_for_user(
            user=request_user(request), version_id=version_id, capability="train"
        )
        _reject_unknown(request.data, {"reason"})
        data = parse(s.PromoteIn, request.data)
        version = registry.model_version_promote(
            version=version, user=request_user(request), reason=data["reason"] or "promoted by an admin"
        )
        return Response(s.ModelVersionDetailOut(version).data)


class ModelGateView(APIView):
    @extend_schema(responses={200: s.GateVerdictOut}, tags=["training"])
    def get(self, request: Request, version_id: int) -> Response:
        version = selectors.model_version_get_for_user(
            user=request_user(request), version_id=version_id, capability="train"
        )
        return Response(s.GateVerdictOut(registry.model_version_gate_verdict(version=version)).data)


class ModelEvaluateView(APIView):
    @extend_schema(request=s.EvaluateIn, responses={202: dict}, tags=["training"])
    def post(self, request: Request, version_id: int) -> Response:
        version = selectors.model_version_get_for_user(
            user=request_user(request), version_id=version_id, capability="train"
        )
        _reject_unknown(request.data, {"snapshot"})
        data = parse(s.EvaluateIn, request.data)
        # default: where the other models were compared, else the snapshot the version was trained with
        snapshot = (
            _snapshot_of(version.project_id, data.get("snapshot"))
            or selectors.reference_snapshot(project_id=version.project_id)
            or version.snapshot
        )
        if snapshot is None or not snapshot.counts.get("test", {}).get("images"):
            raise ServiceValidationError("Nothing to evaluate on.", {"snapshot": "no snapshot with test images"})
        version_id_, snapshot_id = version.pk, snapshot.pk
        task_enqueue("training.evaluate_version", args=[version_id_, snapshot_id], queue="training")
        return Response({"model_version": version.pk, "snapshot": snapshot.pk}, status=status.HTTP_202_ACCEPTED)


class ProjectRollbackView(APIView):
    @extend_schema(request=s.RollbackIn, responses={200: s.RollbackOut, 409: dict}, tags=["training"])
    def post(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id, capability="train")
        _reject_unknown(request.data, {"kind"})
        data = parse(s.RollbackIn, request.data)
        before = project.model_versions.filter(kind=data["kind"], status="active").order_by("-promoted_at").first()
        target = registry.model_version_rollback(project=project, kind=data["kind"], user=request_user(request))
        return Response({"rolled_back": before.pk if before else None, "active": target.pk if target else None})


# --- schedule and promotion gate -----------------------------------------------------------


class ProjectScheduleView(APIView):
    @extend_schema(responses=s.PolicyOut, tags=["training"])
    def get(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id)
        return Response(s.PolicyOut(schedule.training_policy_get(project=project)).data)

    @extend_schema(request=s.PolicyOut, responses=s.PolicyOut, tags=["training"])
    def put(self, request: Request, project_id: int) -> Response:
        project = project_get_for_user(user=request_user(request), project_id=project_id, capability="train")
        if not isinstance(request.data, dict):
            raise ServiceValidationError("Invalid schedule.", {"non_field_errors": "must be an object"})
        policy = schedule.training_policy_update(project=project, data=dict(request.data), user=request_user(request))
        return Response(s.PolicyOut(policy).data)

    patch = put


class ModelVersionListView(APIView):
    parser_classes = [MultiPartParser, JSONParser]

    @extend_schema(responses=s.ModelVersionOut(many=True), tags=["models"])
    def get(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id)
        return Response(s.ModelVersionOut(project.model_versions.order_by("-id"), many=True).data)

    @extend_schema(
        request={"multipart/form-data": s.ModelVersionIn, "application/json": s.ModelVersionIn},
        responses={201: s.ModelVersionOut},
        tags=["models"],
    )
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        data = parse(s.ModelVersionIn, request.data)
        version = registry.model_version_upload(
            project=project, user=request_user(request), upload=data.pop("file", None), **data
        )
        return Response(s.ModelVersionOut(version).data, status=status.HTTP_201_CREATED)
