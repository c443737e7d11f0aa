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
from inference import proposals, services
from inference import selectors as inference_selectors
from training.models import ModelVersion


class PresegmentIn(serializers.Serializer):
    model_version = serializers.IntegerField(required=False, allow_null=True)


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
    @extend_schema(request=PresegmentIn, responses={202: dict}, tags=["proposals"])
    def post(self, request: Request, image_id: int) -> Response:
        image = selectors.image_get_for_user(user=request_user(request), image_id=image_id, capability="annotate")
        data = parse(PresegmentIn, request.data)
        version = services.image_presegment_enqueue(
            image=image, model_version=_version(image.project_id, data.get("model_version"))
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
