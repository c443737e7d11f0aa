"""Webhooks API: project admins only, every input validated (400 naming the field), the secret
shown once, the SSRF guard at subscription time, ping and the delivery log."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from annotations.models import AuditEvent
from tests.api.conftest import client_for
from webhooks.models import WebhookDelivery, WebhookSubscription
from webhooks.signing import signature_verify
from webhooks.targets import host_addresses
from webhooks.tests.support import Receiver, eager_celery, loopback, receiver

__all__ = ["eager_celery", "loopback", "receiver"]  # fixtures

pytestmark = pytest.mark.django_db

PUBLIC = ["93.184.215.14"]
_resolve = host_addresses


def _dns(host: str, port: int) -> list[str]:
    """Stands in for DNS: the tests' example.com names are public; anything else really resolves."""
    return PUBLIC if host.endswith("example.com") else _resolve(host, port)


def _create(client: Any, project: Any, **body: Any) -> Any:
    body = {"url": "https://hooks.example.com/cyto", "events": ["model.promoted"], **body}
    with mock.patch("webhooks.targets.host_addresses", _dns):
        return client.post(f"/api/v1/projects/{project.pk}/webhooks", body, format="json")


def test_admin_creates_and_sees_the_secret_once(project: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    response = _create(
        client, project, events=["image.verified", "model.promoted", "image.verified"], description="LIMS"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and body["secret_prefix"] == secret[:10]
    assert body["events"] == ["image.verified", "model.promoted"]  # each once, in the catalogue's order
    assert body["active"] is True and body["project"] == project.pk and body["created_by"] == admin_user.pk
    hook_id = body["id"]
    assert WebhookSubscription.objects.get(pk=hook_id).secret == secret
    listed = client.get(f"/api/v1/projects/{project.pk}/webhooks").json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]
    detail = client.get(f"/api/v1/webhooks/{hook_id}").json()
    assert "secret" not in detail and detail["secret_prefix"] == secret[:10] and detail["description"] == "LIMS"
    assert secret not in str(AuditEvent.objects.filter(action="webhook.create").values())


def test_only_project_admins(project: Any, admin_user: Any, annotator: Any, expert: Any, outsider: Any) -> None:
    hook_id = _create(client_for(admin_user), project).json()["id"]
    for user, code in ((annotator, 403), (expert, 403), (outsider, 404)):
        client = client_for(user)
        assert client.get(f"/api/v1/projects/{project.pk}/webhooks").status_code == code
        assert _create(client, project).status_code == code
        assert client.get(f"/api/v1/webhooks/{hook_id}").status_code == code
        assert client.patch(f"/api/v1/webhooks/{hook_id}", {"active": False}, format="json").status_code == code
        assert client.post(f"/api/v1/webhooks/{hook_id}/ping").status_code == code
        assert client.get(f"/api/v1/webhooks/{hook_id}/deliveries").status_code == code
        assert client.delete(f"/api/v1/webhooks/{hook_id}").status_code == code
    assert client_for(admin_user).get("/api/v1/webhooks/999999").status_code == 404
    assert WebhookSubscription.objects.filter(pk=hook_id, is_active=True).exists()


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"url": None}, "url", ""),
        ({"url": "ftp://hooks.example.com/"}, "url", "scheme must be http or https"),
        ({"url": "https://u:p@hooks.example.com/"}, "url", "credentials"),
        ({"url": "not a url"}, "url", ""),
        ({"url": "http://10.0.0.1/hook"}, "url", "10.0.0.1 is a private address"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url", "link-local"),
        ({"url": "http://[::1]:8000/"}, "url", "loopback"),
        ({"url": "http://[::ffff:127.0.0.1]/"}, "url", "loopback"),
        ({"url": "http://localhost:8000/hook"}, "url", "loopback"),
        ({"events": []}, "events", ""),
        ({"events": ["model.promoted", "image.deleted"]}, "events", ""),
        ({"events": "model.promoted"}, "events", ""),
        ({"events": ["ping"]}, "events", ""),
        ({"active": "maybe"}, "active", ""),
        ({"description": "x" * 201}, "description", ""),
        ({"secret": "mine"}, "secret", "unknown field"),
    ],
)
def test_every_input_is_validated(
    project: Any, admin_user: Any, body: dict[str, Any], field: str, message: str
) -> None:
    response = _create(client_for(admin_user), project, **body)
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert field in errors and message in str(errors[field])
    assert not WebhookSubscription.objects.exists()


def test_a_name_resolving_to_a_private_address_is_refused(project: Any, admin_user: Any) -> None:
    with mock.patch("webhooks.targets.host_addresses", return_value=["192.168.7.7"]):
        response = client_for(admin_user).post(
            f"/api/v1/projects/{project.pk}/webhooks",
            {"url": "https://intranet.example.com/hook", "events": ["export.ready"]},
            format="json",
        )
    assert response.status_code == 400
    assert "intranet.example.com resolves to 192.168.7.7 is a private address" in response.json()["errors"]["url"]


def test_patch_and_delete(project: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    hook_id = _create(client, project).json()["id"]
    response = client.patch(
        f"/api/v1/webhooks/{hook_id}", {"events": ["export.ready"], "active": False, "description": "d"}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["events"], response.json()["active"]) == (["export.ready"], False)
    for body, field in (
        ({"url": "http://127.0.0.1/"}, "url"),
        ({"events": []}, "events"),
        ({"secret": "x"}, "secret"),
        ({"project": 2}, "project"),
    ):
        response = client.patch(f"/api/v1/webhooks/{hook_id}", body, format="json")
        assert response.status_code == 400 and field in response.json()["errors"], (body, response.json())
    with mock.patch("webhooks.targets.host_addresses", _dns):
        response = client.patch(f"/api/v1/webhooks/{hook_id}", {"url": "https://new.example.com/h"}, format="json")
    assert response.status_code == 200 and response.json()["url"] == "https://new.example.com/h"
    assert "secret" not in response.json()
    assert AuditEvent.objects.filter(action="webhook.update").count() == 2
    assert client.delete(f"/api/v1/webhooks/{hook_id}").status_code == 204
    assert client.get(f"/api/v1/webhooks/{hook_id}").status_code == 404


@pytest.mark.usefixtures("loopback", "eager_celery")
def test_ping_is_delivered_and_logged(
    project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(admin_user)
    created = client.post(
        f"/api/v1/projects/{project.pk}/webhooks",
        {"url": receiver.url("/ping-here"), "events": ["export.ready"], "active": False},
        format="json",
    ).json()
    receiver.responses = [(500, {}, b"not yet")]
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(f"/api/v1/webhooks/{created['id']}/ping")
    assert first.status_code == 202
    assert first.json()["event"] == "ping" and first.json()["status"] == "pending"
    with django_capture_on_commit_callbacks(execute=True):
        second = client.post(f"/api/v1/webhooks/{created['id']}/ping")  # an inactive hook is pinged too
    received = receiver.requests[-1]
    assert signature_verify(
        secret=created["secret"],
        body=received.body,
        timestamp=received.headers["X-Cyto-Timestamp"],
        signature=received.headers["X-Cyto-Signature"],
    )
    assert received.headers["X-Cyto-Event"] == "ping" and received.path == "/ping-here"
    page = client.get(f"/api/v1/webhooks/{created['id']}/deliveries").json()
    assert page["count"] == 2
    newest, oldest = page["results"]
    assert newest["id"] == second.json()["id"] and oldest["id"] == first.json()["id"]
    assert newest["status"] == "succeeded" and newest["payload"]["data"]["webhook"] == created["id"]
    assert newest["attempt_log"][0]["status_code"] == 200 and newest["attempt_log"][0]["ok"] is True
    assert oldest["status"] == "pending" and oldest["last_error"] == "HTTP 500"
    log = oldest["attempt_log"]
    assert [(a["number"], a["status_code"], a["ok"], a["response_excerpt"]) for a in log] == [
        (1, 500, False, "not yet")
    ]
    assert log[0]["address"] == "127.0.0.1" and log[0]["duration_ms"] >= 0
    one = client.get(f"/api/v1/webhooks/{created['id']}/deliveries?page_size=1&page=2").json()
    assert one["count"] == 2 and [d["id"] for d in one["results"]] == [oldest["id"]] and one["next"] is None


def test_deliveries_are_the_subscriptions_own(project: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    mine = _create(client, project).json()["id"]
    other = _create(client, project).json()["id"]
    with mock.patch("core.queue.task_send"):
        client.post(f"/api/v1/webhooks/{other}/ping")
    assert client.get(f"/api/v1/webhooks/{mine}/deliveries").json()["count"] == 0
    assert client.get(f"/api/v1/webhooks/{other}/deliveries").json()["count"] == 1
    assert WebhookDelivery.objects.count() == 1
