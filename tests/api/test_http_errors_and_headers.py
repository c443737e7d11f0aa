"""What every response carries and what errors look like outside the views: a strict
Content-Security-Policy, HSTS on HTTPS, and the API's JSON error shape for an unknown path, a
body over the limit and an uncaught exception (they were Django's HTML pages)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from rest_framework.test import APIClient

from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db


def test_every_page_has_a_strict_content_security_policy(annotator: Any) -> None:
    client = client_for(annotator)
    for path in ("/", "/api/v1/projects", "/api/v1/docs", "/admin/login/"):
        policy = client.get(path)["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
        assert directives["script-src"] == "'self'", path  # no inline script, no other origin
        assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        assert directives["object-src"] == "'none'"


def test_swagger_ui_needs_no_inline_script(annotator: Any) -> None:
    """Its start-up script is a file (the split view), so the policy above lets it run."""
    page = client_for(annotator).get("/api/v1/docs").content.decode()
    assert "<script>" not in page and 'src="/api/v1/docs?script=' in page
    script = client_for(annotator).get("/api/v1/docs?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")


def test_hsts_on_https_when_cookies_are_secure(settings: Any, annotator: Any) -> None:
    assert settings.SESSION_COOKIE_SECURE  # DEBUG off
    assert settings.SECURE_HSTS_SECONDS >= 31_536_000
    response = client_for(annotator).get("/api/v1/projects", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


def test_unknown_api_path_is_a_json_404(annotator: Any) -> None:
    response = client_for(annotator).get("/api/v1/no-such-thing")
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}
    # outside the API, pages stay pages
    assert client_for(annotator).get("/no-such-page")["Content-Type"].startswith("text/html")


def test_body_over_the_limit_is_a_json_413(settings: Any, project: Any, admin_user: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    response = client_for(admin_user).patch(
        f"/api/v1/projects/{project.pk}", {"description": "x" * 5000}, format="json"
    )
    assert response.status_code == 413
    assert "at most 2000 bytes" in response.json()["detail"]
    project.refresh_from_db()
    assert project.description != "x" * 5000


def test_uncaught_exception_is_a_json_500_that_tells_nothing(annotator: Any) -> None:
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(annotator)
    with mock.patch("annotations.selectors.project_list_for_user", side_effect=RuntimeError("db password is x")):
        response = client.get("/api/v1/projects")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error. It has been logged."}
