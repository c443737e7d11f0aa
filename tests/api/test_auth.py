from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from annotations.models import ApiToken
from tests.api.conftest import client_for
from tests.factories import PASSWORD, ProjectFactory, UserFactory, image_create

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


def _admin_login(client: Client, username: str, password: str, address: str) -> bool:
    """Django admin's login form; True when it signed in."""
    client.get("/admin/login/", REMOTE_ADDR=address)
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )
    return response.status_code == 302 and "_auth_user_id" in client.session


def test_one_throttle_for_admin_and_api_logins_that_locks_the_guesser_not_the_user(settings: Any) -> None:
    """/admin/login/ took unlimited guesses; the API's lock per name let anyone lock any user out."""
    settings.LOGIN_MAX_FAILURES = 3
    admin_user = UserFactory(is_staff=True, is_superuser=True)
    attacker, user_address = "203.0.113.9", "198.51.100.7"
    guesser = Client()
    for _ in range(3):
        assert not _admin_login(guesser, admin_user.username, "guess", attacker)
    # the right password no longer works from the guesser's address, on either login path
    assert not _admin_login(guesser, admin_user.username, PASSWORD, attacker)
    api = APIClient(REMOTE_ADDR=attacker)
    answer = api.post("/api/v1/auth/login", {"username": admin_user.username, "password": PASSWORD}, format="json")
    assert answer.status_code == 429
    # the real user, elsewhere, logs in on both
    assert _admin_login(Client(), admin_user.username, PASSWORD, user_address)
    real = APIClient(REMOTE_ADDR=user_address)
    answer = real.post("/api/v1/auth/login", {"username": admin_user.username, "password": PASSWORD}, format="json")
    assert answer.status_code == 200
    # spraying many names from one address locks the address (4 x the limit)
    sprayer = APIClient(REMOTE_ADDR="192.0.2.1")
    for i in range(12):
        sprayer.post("/api/v1/auth/login", {"username": f"user{i}", "password": "x"}, format="json")
    answer = sprayer.post("/api/v1/auth/login", {"username": admin_user.username, "password": PASSWORD}, format="json")
    assert answer.status_code == 429


def test_api_requests_are_throttled_per_user_and_per_anonymous_address(annotator: Any, project: Any) -> None:
    from unittest import mock

    from core.api.throttling import AnonThrottle, UserThrottle

    with mock.patch.dict(UserThrottle.THROTTLE_RATES, {"user": "3/min", "anon": "2/min"}):
        assert AnonThrottle.THROTTLE_RATES is UserThrottle.THROTTLE_RATES
        client = client_for(annotator)
        codes = [client.get("/api/v1/projects").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        response = client.get("/api/v1/projects")
        assert int(response["Retry-After"]) > 0 and "throttled" in response.json()["detail"]
        # anonymous requests reach the throttle where no sign-in is needed (else 401 first)
        anonymous = APIClient(REMOTE_ADDR="192.0.2.50")
        codes = [anonymous.post("/api/v1/auth/login", {}, format="json").status_code for _ in range(3)]
        assert codes == [400, 400, 429]


def test_throttles_let_requests_through_when_the_cache_is_down(annotator: Any, project: Any) -> None:
    """A Redis outage must not stop saves: the throttle fails open (and logs)."""
    from unittest import mock

    with mock.patch("rest_framework.throttling.SimpleRateThrottle.cache") as cache:
        cache.get.side_effect = ConnectionError("redis down")
        assert client_for(annotator).get("/api/v1/projects").status_code == 200
    with mock.patch("core.login.cache") as cache:
        cache.get_many.side_effect = ConnectionError("redis down")
        cache.add.side_effect = ConnectionError("redis down")
        answer = APIClient().post(
            "/api/v1/auth/login", {"username": annotator.username, "password": PASSWORD}, format="json"
        )
        assert answer.status_code == 200


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
