"""What every API view does the same way: who is asking, parsing a body through a serializer, the
revision a write is based on, paginated lists, and JSON objects sent as form fields."""

from __future__ import annotations

import json
from typing import Any, cast

from django.contrib.auth.models import User
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.pagination import Pagination
from core.errors import ServiceValidationError


def request_user(request: Request) -> User:
    """The authenticated user (views run behind IsAuthenticated)."""
    return cast(User, request.user)


def client_ip(request: Request) -> str:
    return str(request.META.get("REMOTE_ADDR", "unknown"))


def parse(serializer_class: type[serializers.Serializer], data: Any, **kwargs: Any) -> dict[str, Any]:
    """``data`` validated by ``serializer_class`` (400 naming each bad field)."""
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def base_revision(request: Request, body_revision: int | None) -> int:
    """The revision a write is based on: ``If-Match: "<revision>"`` or the body's ``revision``."""
    header = request.headers.get("If-Match", "").strip()
    if header:
        value = header.removeprefix("W/").strip('"')
        if not value.isdigit():
            raise ServiceValidationError("Invalid If-Match.", {"If-Match": 'must be "<revision>"'})
        return int(value)
    if body_revision is None:
        raise ServiceValidationError(
            "The revision this write is based on is required.",
            {"revision": "send the revision field or an If-Match header"},
        )
    return body_revision


PAGE_PARAMETERS = [
    OpenApiParameter("page", int, description="Page number (from 1)."),
    OpenApiParameter("page_size", int, description=f"Items per page (default 50, at most {Pagination.max_page_size})."),
]


def paginated(item: type[serializers.Serializer]) -> Any:
    """The schema of a page of ``item``s as :func:`paginate` answers it (``count``, ``next``,
    ``previous``, ``results``), for ``extend_schema(responses=...)``."""
    return inline_serializer(
        name=f"Paginated{item.__name__}",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.CharField(allow_null=True),
            "previous": serializers.CharField(allow_null=True),
            "results": item(many=True),
        },
    )


def paginate(request: Request, view: APIView, queryset: Any, serializer: Any, **context: Any) -> Response:
    """One page of ``queryset`` serialised, in the API's list shape."""
    paginator = Pagination()
    page: Any = paginator.paginate_queryset(queryset, request, view=view)
    data = serializer(page, many=True, context={"request": request, **context}).data
    return paginator.get_paginated_response(data)


class JSONObjectField(serializers.Field):
    """A JSON object, sent as an object (JSON body) or as JSON text (a multipart form field)."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, str):
            try:
                data = json.loads(data or "{}")
            except ValueError as exc:
                raise serializers.ValidationError(f"is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise serializers.ValidationError("must be a JSON object")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class StrictSerializer(serializers.Serializer):
    """A request body whose unknown fields are a 400 naming them, not silently dropped (a
    client that sends ``classes`` where none are read must hear so)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        initial = self.initial_data if isinstance(self.initial_data, dict) else {}
        unknown = sorted(set(initial) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(dict.fromkeys(unknown, "unknown field"))
        return attrs
