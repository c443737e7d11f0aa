from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from core.views import healthz


@ensure_csrf_cookie
def spa_index(request: HttpRequest) -> HttpResponse:
    """The browser tool's page (built by Vite into frontend/dist)."""
    index = settings.FRONTEND_DIST / "index.html"
    if not index.exists():
        return HttpResponse(
            "<h1>Cytology annotation platform</h1><p>The frontend is not built. "
            "The API is at <a href='/api/v1/docs'>/api/v1/docs</a> and the admin at "
            "<a href='/admin/'>/admin/</a>.</p>"
        )
    return HttpResponse(index.read_text(), content_type="text/html")


api_v1: list[URLPattern | URLResolver] = [
    path("", include(("annotations.api.urls", "api"))),
    path("", include(("review.api.urls", "review"))),
    path("", include(("interchange.api.urls", "interchange"))),
    path("", include(("inference.api.urls", "inference"))),
    path("", include(("training.api.urls", "training"))),
    path("", include(("webhooks.api.urls", "webhooks"))),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    # the split view serves Swagger UI's start-up script as a file: no inline script, so the
    # strict Content-Security-Policy holds on this page too
    path("docs", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    # public and unauthenticated: load balancers and container health checks probe it
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("", spa_index, name="spa"),
]

# Under /api/ every error, including those Django answers before a view runs (an unknown path,
# a body over DATA_UPLOAD_MAX_MEMORY_SIZE, an uncaught exception), has the API's JSON shape.
handler400 = "core.api.errors.error_400"
handler403 = "core.api.errors.error_403"
handler404 = "core.api.errors.error_404"
handler500 = "core.api.errors.error_500"
