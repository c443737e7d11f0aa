"""One error shape for the whole API: ``{"detail": ..., "errors": {field: message}}``.

The one place where the project's errors (``core.errors``) become HTTP responses.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import (
    ConflictError,
    GoneError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServiceValidationError,
    UnavailableError,
)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceValidationError):
        return Response({"detail": exc.detail, "errors": exc.errors}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ConflictError):
        return Response({"detail": exc.detail, **exc.payload}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, GoneError):
        return Response({"detail": exc.detail}, status=status.HTTP_410_GONE)
    if isinstance(exc, RateLimitedError):
        return Response(
            {"detail": exc.detail},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, UnavailableError):
        return Response(
            {"detail": exc.detail},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, NotFoundError | Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDeniedError | DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.ValidationError):
        data = response.data
        if isinstance(data, dict):
            response.data = {"detail": "Invalid input.", "errors": data}
        else:
            response.data = {"detail": "Invalid input.", "errors": {"non_field_errors": data}}
    return response


# --- Django's own error views (config/urls.py handler400/403/404/500) ----------------------


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def error_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's bad requests: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a 413, too many
    fields or files a 400, both in the API's shape under /api/."""
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        detail = f"Request body too large: at most {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."
        if _is_api(request):
            return JsonResponse({"detail": detail}, status=413)
        return HttpResponse(detail, status=413, content_type="text/plain")
    if not _is_api(request):
        return defaults.bad_request(request, exception)  # type: ignore[arg-type]
    if isinstance(exception, TooManyFieldsSent | TooManyFilesSent):
        return JsonResponse({"detail": "Too many fields or files in the request."}, status=400)
    return JsonResponse({"detail": "Bad request."}, status=400)


def error_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _is_api(request):
        return defaults.permission_denied(request, exception)  # type: ignore[arg-type]
    return JsonResponse({"detail": "You do not have permission to perform this action."}, status=403)


def error_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _is_api(request):
        return defaults.page_not_found(request, exception)  # type: ignore[arg-type]
    return JsonResponse({"detail": "Not found."}, status=404)


def error_500(request: HttpRequest) -> HttpResponse:
    """An uncaught exception: logged by Django with its traceback; the client learns nothing of it."""
    if not _is_api(request):
        return defaults.server_error(request)
    return JsonResponse({"detail": "Internal server error. It has been logged."}, status=500)
