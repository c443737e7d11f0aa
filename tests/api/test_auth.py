from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from annotations.models import ApiToken
from tests.api.conftest import client_for
from tests.factories import PASSWORD, ProjectFactory, image_create

pytestmark = pytest.mark.django_db


def test_login_sets_session_and_me_lists_memberships(project: Any, annotator: Any) -> None:
    client = APIClient(enforce_csrf_checks=True)
    response = client.post("/api/v1/auth/login", {"username": annotator.username, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["username"] == annotator.username
    me = client.get("/api/v1/auth/me").json()
    assert me["memberships"] == [{"project": project.pk, "role": "annotator"}]


def test_session_writes_need_csrf(project: Any, annotator: Any) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.post("/api/v1/auth/login", {"username": annotator.username, "password": PASSWORD}, format="json")
    response = client.post("/api/v1/auth/logout")
    assert response.status_code == 403
    token = client.cookies["csrftoken"].value
    assert client.post("/api/v1/auth/logout", HTTP_X_CSRFTOKEN=token).status_code == 204


def test_wrong_password_is_400_then_rate_limited(annotator: Any, settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES = 3
    client = APIClient()
    for _ in range(3):
        response = client.post(
            "/api/v1/auth/login", {"username": annotator.username, "password": "nope"}, format="json"
        )
        assert response.status_code == 400
        assert "password" in response.json()["errors"]
    # Even the right password is refused while locked out.
    response = client.post("/api/v1/auth/login", {"username": annotator.username, "password": PASSWORD}, format="json")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0


def test_login_missing_fields_names_them() -> None:
    response = APIClient().post("/api/v1/auth/login", {}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"username", "password"}


def test_anonymous_gets_401_or_403() -> None:
    assert APIClient().get("/api/v1/projects").status_code in (401, 403)


def test_token_lifecycle_is_hashed_and_revocable(project: Any, annotator: Any) -> None:
    client = client_for(annotator)
    created = client.post("/api/v1/auth/tokens", {"name": "script"}, format="json")
    assert created.status_code == 201
    raw = created.json()["token"]
    stored = ApiToken.objects.get(pk=created.json()["id"])
    assert raw not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
    listed = client.get("/api/v1/auth/tokens").json()
    assert [t["name"] for t in listed] == ["script"] and "token" not in listed[0]

    bearer = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert bearer.get(f"/api/v1/projects/{project.pk}").status_code == 200
    assert client.delete(f"/api/v1/auth/tokens/{stored.pk}").status_code == 204
    assert bearer.get(f"/api/v1/projects/{project.pk}").status_code == 401


def test_bad_token_is_401(project: Any) -> None:
    assert APIClient(HTTP_AUTHORIZATION="Bearer cyt_nothing").get("/api/v1/projects").status_code == 401


def test_project_scoped_token_cannot_reach_other_projects(project: Any, annotator: Any) -> None:
    other = ProjectFactory()
    other.memberships.create(user=annotator, role="annotator")
    image = image_create(other)
    raw = (
        client_for(annotator)
        .post("/api/v1/auth/tokens", {"name": "p1", "project": project.pk}, format="json")
        .json()["token"]
    )
    bearer = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert bearer.get(f"/api/v1/projects/{project.pk}").status_code == 200
    assert bearer.get(f"/api/v1/projects/{other.pk}").status_code == 404
    assert bearer.get(f"/api/v1/images/{image.pk}/cells").status_code == 404
    assert [p["id"] for p in bearer.get("/api/v1/projects").json()["results"]] == [project.pk]


def test_token_for_foreign_project_is_404(project: Any, outsider: Any) -> None:
    response = client_for(outsider).post("/api/v1/auth/tokens", {"name": "x", "project": project.pk}, format="json")
    assert response.status_code == 404


def test_token_validation(annotator: Any) -> None:
    response = client_for(annotator).post("/api/v1/auth/tokens", {"name": "", "expires_in_days": 0}, format="json")
    assert response.status_code == 400
    assert {"name", "expires_in_days"} <= set(response.json()["errors"])
