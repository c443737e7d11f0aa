from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView


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
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("", spa_index, name="spa"),
]
