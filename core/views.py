"""Plain Django views of the core app (outside the REST API)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from core.health import health_check


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """``GET /healthz``: 200 when the database, cache, broker and file storage all answer, 503
    naming the failing check otherwise. Public and unthrottled (a plain view, outside DRF): it
    says only whether each service works, never how it is configured."""
    report = health_check()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
