"""Pre-segmentation and proposal endpoints, and the admins' view of the queues and workers."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations import selectors
from annotations.api.serializers import CellsOut, cell_out
from core.api.parsing import base_revision, parse, request_user
from core.errors import ServiceValidationError
from inference import interactive, proposals, services
from inference import selectors as inference_selectors
from training.models import ModelVersion


class PresegmentIn(serializers.Serializer):
    model_version = serializers.IntegerField(required=False, allow_null=True)


class ImagePresegmentIn(PresegmentIn):
    region = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text="A region of interest of this (tiled) image: only its tiles, proposals only inside it.",
    )


class ProposalSelectionIn(serializers.Serializer):
    revision = serializers.IntegerField(required=False)
    ids = serializers.ListField(child=serializers.IntegerField(), required=False)
    all = serializers.BooleanField(required=False, default=False)


def _version(project_id: int, version_id: int | None) -> ModelVersion | None:
    if version_id is None:
        return None
    version = ModelVersion.objects.filter(pk=version_id, project_id=project_id).first()
    if version is None:
        raise ServiceValidationError("Unknown model version.", {"model_version": "not a model version of this project"})
    return version


class ImagePresegmentView(APIView):
    @extend_schema(request=ImagePresegmentIn, responses={202: dict}, tags=["proposals"])
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(ImagePresegmentIn, request.data)
        region = None
        if data.get("region") is not None:
            region = selectors.region_list(image=image).filter(pk=data["region"]).first()
            if region is None:
                raise ServiceValidationError("Unknown region.", {"region": "not a region of this image"})
        version = services.image_presegment_enqueue(
            image=image, model_version=_version(image.project_id, data.get("model_version")), region=region
        )
        return Response(
            {"presegment_status": image.presegment_status, "model_version": version.pk}, status=status.HTTP_202_ACCEPTED
        )


class ProjectPresegmentView(APIView):
    @extend_schema(request=PresegmentIn, responses={202: dict}, tags=["proposals"])
    def post(self, request: Request, project_id: int) -> Response:
        project = selectors.project_get_for_user(user=request_user(request), project_id=project_id, capability="manage")
        data = parse(PresegmentIn, request.data)
        count = services.project_presegment_enqueue(
            project=project, model_version=_version(project.pk, data.get("model_version"))
        )
        return Response({"queued": count}, status=status.HTTP_202_ACCEPTED)


class ProposalAcceptView(APIView):
    @extend_schema(request=ProposalSelectionIn, responses={200: CellsOut, 409: CellsOut}, tags=["proposals"])
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(ProposalSelectionIn, request.data)
        base = base_revision(request, data.get("revision"))
        result = proposals.proposals_accept(
            image=image, user=request_user(request), base_revision=base, ids=data.get("ids"), select_all=data["all"]
        )
        body: dict[str, Any] = {
            "revision": result.revision,
            "cells": [cell_out(r) for r in result.layer],
            "accepted": [r["id"] for r in result.cells],
        }
        return Response(body, headers={"ETag": f'"{result.revision}"'})


class ProposalRejectView(APIView):
    @extend_schema(request=ProposalSelectionIn, responses={200: dict}, tags=["proposals"])
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(ProposalSelectionIn, request.data)
        count = proposals.proposals_reject(
            image=image, user=request_user(request), ids=data.get("ids"), select_all=data["all"]
        )
        return Response({"rejected": count})


# --- click-to-segment and box prompts ---------------------------------------------------------


def _point_field(help_text: str) -> serializers.ListField:
    return serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2, help_text=help_text)


class SegmentClickIn(serializers.Serializer):
    positive = serializers.ListField(
        child=_point_field("[x, y] in image pixels"),
        min_length=1,
        max_length=interactive.MAX_POINTS,
        help_text="Points inside the cell, [[x, y], ...] (1..20); several merge into one cell.",
    )
    negative = serializers.ListField(
        child=_point_field("[x, y] in image pixels"),
        required=False,
        default=list,
        max_length=interactive.MAX_POINTS,
        help_text="Points outside it (0..20): what they fall in is removed or split off.",
    )


class SegmentBoxIn(serializers.Serializer):
    box = serializers.ListField(
        child=serializers.FloatField(), min_length=4, max_length=4, help_text="[x0, y0, x1, y1] in image pixels."
    )


class SegmentTimingsOut(serializers.Serializer):
    total_ms = serializers.FloatField(help_text="Server time of the request; further stages by name.")


class SegmentCellOut(serializers.Serializer):
    polygon = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()))
    class_id = serializers.IntegerField(allow_null=True, help_text="The project's class for the label, if it has one.")
    label = serializers.IntegerField(help_text="1 cell, 2 erythrocyte.")  # type: ignore[assignment]  # the API field name
    score = serializers.FloatField()


class SegmentClickOut(serializers.Serializer):
    polygon = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()), allow_null=True, help_text="Null: no cell there."
    )
    class_id = serializers.IntegerField(allow_null=True)
    label = serializers.IntegerField(  # type: ignore[assignment]  # the API field name
        allow_null=True, help_text="1 cell, 2 erythrocyte."
    )
    score = serializers.FloatField(allow_null=True)
    source = serializers.ChoiceField(  # type: ignore[assignment]  # the API field name
        choices=["model", "baseline"], help_text="model: the active model's maps; baseline: the classical baseline."
    )
    model_version = serializers.IntegerField(allow_null=True, help_text="The model version that outlined it.")
    reason = serializers.CharField(allow_null=True, help_text="Why polygon is null.")
    timings = SegmentTimingsOut()


class SegmentBoxOut(serializers.Serializer):
    cells = SegmentCellOut(many=True)
    source = serializers.ChoiceField(  # type: ignore[assignment]  # the API field name
        choices=["model", "baseline"], help_text="model: the active model's maps; baseline: the classical baseline."
    )
    model_version = serializers.IntegerField(allow_null=True)
    timings = SegmentTimingsOut()


def _timings(values: dict[str, float]) -> dict[str, float]:
    return {"total_ms": values.get("total_ms", 0.0), **values}


class SegmentClickView(APIView):
    @extend_schema(request=SegmentClickIn, responses={200: SegmentClickOut}, tags=["proposals"])
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(SegmentClickIn, request.data)
        result = interactive.image_click_segment(image=image, positive=data["positive"], negative=data["negative"])
        out = result.outline
        return Response(
            {
                "polygon": out.polygon,
                "class_id": out.class_id,
                "label": out.label,
                "score": out.score,
                "source": result.source,
                "model_version": result.model_version,
                "reason": result.reason,
                "timings": _timings(result.timings),
            }
        )


class SegmentBoxView(APIView):
    @extend_schema(request=SegmentBoxIn, responses={200: SegmentBoxOut}, tags=["proposals"])
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(SegmentBoxIn, request.data)
        result = interactive.image_box_segment(image=image, box=data["box"])
        cells = [
            {"polygon": c.polygon, "class_id": c.class_id, "label": c.label, "score": c.score} for c in result.cells
        ]
        return Response(
            {
                "cells": cells,
                "source": result.source,
                "model_version": result.model_version,
                "timings": _timings(result.timings),
            }
        )


# --- the queues and workers (staff) ----------------------------------------------------------


class PresegmentProjectOut(serializers.Serializer):
    project = serializers.IntegerField()
    name = serializers.CharField()
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    failed = serializers.IntegerField()


class PresegmentQueueOut(serializers.Serializer):
    queued = serializers.IntegerField(help_text="Images waiting for a worker.")
    running = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Images whose last pre-segmentation failed.")
    by_project = PresegmentProjectOut(many=True, help_text="Projects with images queued, running or failed.")


class TrainingQueueOut(serializers.Serializer):
    queued = serializers.IntegerField()
    running = serializers.IntegerField()


class OutboxOut(serializers.Serializer):
    waiting = serializers.IntegerField(help_text="Tasks not yet handed to the broker (it was unreachable).")
    oldest = serializers.DateTimeField(allow_null=True)


class WorkerTaskOut(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    args = serializers.CharField()
    started_at = serializers.DateTimeField(allow_null=True)


class WorkerOut(serializers.Serializer):
    name = serializers.CharField()
    host = serializers.CharField()
    pid = serializers.IntegerField()
    queues = serializers.ListField(child=serializers.CharField())
    device = serializers.CharField(help_text="cpu or cuda:N; empty until the worker has found out.")
    device_name = serializers.CharField(help_text="The GPU's name.")
    concurrency = serializers.IntegerField()
    state = serializers.ChoiceField(choices=["alive", "stale", "stopped"])
    alive = serializers.BooleanField()
    tasks = WorkerTaskOut(many=True, help_text="What it runs now (alive workers only).")
    started_at = serializers.DateTimeField()
    last_seen = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField(allow_null=True)


class AdminQueueOut(serializers.Serializer):
    presegment = PresegmentQueueOut()
    training = TrainingQueueOut()
    outbox = OutboxOut()
    workers = WorkerOut(many=True)


class AdminQueueView(APIView):
    @extend_schema(responses=AdminQueueOut, tags=["admin"])
    def get(self, request: Request) -> Response:
        selectors.staff_access_check(user=request_user(request))
        return Response(AdminQueueOut(inference_selectors.queue_overview()).data)
