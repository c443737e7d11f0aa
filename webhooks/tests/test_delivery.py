"""Deliveries end to end against a real HTTP receiver on 127.0.0.1 (allowed by the settings for
these tests only): signed payloads, retries with the same body, no redirects followed, and
targets refused at delivery time getting no request at all."""

from __future__ import annotations

import functools
import json
import shutil
import ssl
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import urllib3
from django.utils import timezone

from core.events import event_emit
from tests.factories import model_version_files
from training.services.registry import model_version_promote
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookSubscription
from webhooks.services import (
    retry_delay,
    webhook_create,
    webhook_deliveries_create,
    webhook_deliveries_due,
    webhook_delivery_attempt,
)
from webhooks.signing import signature_verify
from webhooks.tests.support import Receiver

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("loopback", "eager_celery")]


def _verified(received: Any, secret: str) -> dict[str, Any]:
    """What a receiver does: check the signature over the raw body, then parse it."""
    assert signature_verify(
        secret=secret,
        body=received.body,
        timestamp=received.headers["X-Cyto-Timestamp"],
        signature=received.headers["X-Cyto-Signature"],
    )
    return dict(json.loads(received.body))


def _emit(capture: Any, project: Any, event: str = "training.failed", **data: Any) -> WebhookDelivery | None:
    with capture(execute=True):
        event_emit(project_id=project.pk, event=event, data=data or {"job": 7})
    return WebhookDelivery.objects.order_by("-created_at").first()


def test_a_promotion_is_delivered_signed(
    project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    _, secret = webhook_create(project=project, user=admin_user, url=receiver.url("/in?s=1"), events=["model.promoted"])
    webhook_create(project=project, user=admin_user, url=receiver.url("/other"), events=["export.ready"])
    webhook_create(project=project, user=admin_user, url=receiver.url("/off"), events=["model.promoted"], active=False)
    version = model_version_files(project, "cellpose", {"weights.bin": b"w1"})
    with django_capture_on_commit_callbacks(execute=True):
        model_version_promote(version=version, user=admin_user, reason="test")
    assert [r.path for r in receiver.requests] == ["/in?s=1"]  # not the other event's, not the inactive one's
    received = receiver.requests[0]
    payload = _verified(received, secret)
    assert list(payload) == ["id", "event", "project", "created_at", "data"]
    assert payload["event"] == "model.promoted" and payload["project"] == project.pk
    assert payload["data"] == {
        "model_version": version.pk,
        "kind": "cellpose",
        "number": version.number,
        "replaced": None,
    }
    assert payload["created_at"].endswith("Z")
    headers = received.headers
    assert headers["X-Cyto-Event"] == "model.promoted" and headers["X-Cyto-Delivery"] == payload["id"]
    assert headers["X-Cyto-Attempt"] == "1" and headers["Content-Type"] == "application/json"
    assert headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert headers["X-Cyto-Signature"].startswith("sha256=")
    delivery = WebhookDelivery.objects.get(pk=payload["id"])
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == (DeliveryStatus.SUCCEEDED, 1, None)
    attempt = delivery.attempt_log.get()
    assert (attempt.ok, attempt.status_code, attempt.address, attempt.response_excerpt) == (
        True,
        200,
        "127.0.0.1",
        "ok",
    )


def test_nothing_is_sent_for_a_rolled_back_transaction(
    project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    from django.db import transaction

    webhook_create(project=project, user=admin_user, url=receiver.url(), events=["training.failed"])
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            event_emit(project_id=project.pk, event="training.failed", data={"job": 1})
            raise RuntimeError("rolled back")
    assert receiver.requests == [] and not WebhookDelivery.objects.exists()


def test_a_failed_attempt_is_retried_with_the_same_body(
    project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    receiver.responses = [(500, {}, b"boom " * 1000)]
    _, secret = webhook_create(project=project, user=admin_user, url=receiver.url(), events=["training.failed"])
    delivery = _emit(django_capture_on_commit_callbacks, project)
    assert delivery is not None
    assert (delivery.status, delivery.attempts, delivery.last_error) == (DeliveryStatus.PENDING, 1, "HTTP 500")
    first = delivery.attempt_log.get()
    assert first.status_code == 500 and not first.ok and len(first.response_excerpt) == 1024  # capped
    with django_capture_on_commit_callbacks(execute=True):
        assert webhook_deliveries_due() == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (DeliveryStatus.SUCCEEDED, 2, "")
    assert [r.headers["X-Cyto-Attempt"] for r in receiver.requests] == ["1", "2"]
    assert receiver.requests[0].body == receiver.requests[1].body
    assert {r.headers["X-Cyto-Delivery"] for r in receiver.requests} == {str(delivery.pk)}
    for received in receiver.requests:
        _verified(received, secret)
    assert list(delivery.attempt_log.values_list("number", "status_code")) == [(1, 500), (2, 200)]
    assert webhook_deliveries_due() == 0
    # a duplicate message of an attempt already made does nothing
    assert webhook_delivery_attempt(delivery_id=str(delivery.pk), attempt=2) is None
    assert len(receiver.requests) == 2


def test_back_off_is_exponential_and_due_only_when_its_time_comes(
    settings: Any, project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30
    settings.WEBHOOK_RETRY_FACTOR = 3
    delays = [retry_delay(n) for n in range(1, 6)]
    assert delays == [30, 90, 270, 810, 2430] and 3500 < sum(delays) < 3700  # six attempts in about an hour
    receiver.responses = [(503, {}, b"")]
    webhook_create(project=project, user=admin_user, url=receiver.url(), events=["training.failed"])
    delivery = _emit(django_capture_on_commit_callbacks, project)
    assert delivery is not None and delivery.next_attempt_at is not None
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 25 < wait <= 30
    assert webhook_deliveries_due() == 0
    with django_capture_on_commit_callbacks(execute=True):
        assert webhook_deliveries_due(now=timezone.now() + timedelta(seconds=31)) == 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempts == 2


def test_a_delivery_fails_after_the_last_attempt(
    settings: Any, project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    receiver.responses = [(500, {}, b"")] * 5
    webhook_create(project=project, user=admin_user, url=receiver.url(), events=["training.failed"])
    delivery = _emit(django_capture_on_commit_callbacks, project)
    assert delivery is not None
    for _ in range(4):
        with django_capture_on_commit_callbacks(execute=True):
            webhook_deliveries_due()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == (DeliveryStatus.FAILED, 3, None)
    assert delivery.finished_at is not None and delivery.last_error == "HTTP 500"
    assert len(receiver.requests) == 3


def test_a_redirect_is_not_followed(
    settings: Any, project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    receiver.responses = [(302, {"Location": receiver.url("/elsewhere")}, b"")]
    webhook_create(project=project, user=admin_user, url=receiver.url("/in"), events=["training.failed"])
    delivery = _emit(django_capture_on_commit_callbacks, project)
    assert delivery is not None
    assert [r.path for r in receiver.requests] == ["/in"]
    assert delivery.status == DeliveryStatus.FAILED
    attempt = delivery.attempt_log.get()
    assert attempt.status_code == 302 and not attempt.ok and "redirects are not followed" in attempt.error
    assert "/elsewhere" in attempt.error


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[::ffff:10.0.0.1]/hook", "10.0.0.1 is a private address"),
    ],
)
def test_a_forbidden_target_gets_no_request(
    project: Any, url: str, reason: str, django_capture_on_commit_callbacks: Any
) -> None:
    # made before the rule, or by hand: the attempt checks again
    WebhookSubscription.objects.create(project=project, url=url, events=["training.failed"], secret="whsec_x")
    with mock.patch("webhooks.transport.post") as post:
        delivery = _emit(django_capture_on_commit_callbacks, project)
    post.assert_not_called()
    assert delivery is not None
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)  # no retries: it will not change
    attempt = delivery.attempt_log.get()
    assert attempt.status_code is None and attempt.address == "" and not attempt.ok
    assert attempt.error.startswith("refused, no request made: ") and reason in attempt.error


def test_localhost_without_the_allowance_gets_no_request(
    settings: Any, project: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    WebhookSubscription.objects.create(
        project=project, url=receiver.url(host="localhost"), events=["training.failed"], secret="whsec_x"
    )
    delivery = _emit(django_capture_on_commit_callbacks, project)
    assert receiver.requests == []
    assert delivery is not None and delivery.status == DeliveryStatus.FAILED
    assert "loopback" in delivery.last_error and "localhost resolves to" in delivery.last_error


def test_the_connection_goes_to_the_address_checked(
    project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    """The name is resolved once per attempt, checked, and that address connected to with the
    name in the Host header (no second lookup a rebinding DNS could answer differently)."""
    url = f"http://hooks.example.test:{receiver.port}/in"
    with mock.patch("webhooks.targets.host_addresses", return_value=["127.0.0.1"]):
        _, secret = webhook_create(project=project, user=admin_user, url=url, events=["training.failed"])
    with mock.patch("webhooks.targets.host_addresses", return_value=["127.0.0.1"]) as dns:
        delivery = _emit(django_capture_on_commit_callbacks, project)
    dns.assert_called_once_with("hooks.example.test", receiver.port)
    assert delivery is not None and delivery.status == DeliveryStatus.SUCCEEDED
    assert receiver.requests[0].headers["Host"] == f"hooks.example.test:{receiver.port}"
    _verified(receiver.requests[0], secret)
    # the name now resolves to a private address: checked again at the next delivery, refused
    with mock.patch("webhooks.targets.host_addresses", return_value=["10.9.8.7"]):
        rebound = _emit(django_capture_on_commit_callbacks, project)
    assert rebound is not None and rebound.status == DeliveryStatus.FAILED
    assert "hooks.example.test resolves to 10.9.8.7 is a private address" in rebound.last_error
    assert len(receiver.requests) == 1


def test_a_name_that_does_not_resolve_is_retried(project: Any, django_capture_on_commit_callbacks: Any) -> None:
    WebhookSubscription.objects.create(
        project=project, url="https://gone.example.test/", events=["training.failed"], secret="whsec_x"
    )
    with mock.patch("webhooks.targets.host_addresses", side_effect=OSError("Name or service not known")):
        delivery = _emit(django_capture_on_commit_callbacks, project)
    assert (
        delivery is not None and delivery.status == DeliveryStatus.PENDING and "does not resolve" in delivery.last_error
    )


def test_a_deactivated_subscription_sends_no_more(
    project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    receiver.responses = [(500, {}, b"")]
    subscription, _ = webhook_create(project=project, user=admin_user, url=receiver.url(), events=["training.failed"])
    delivery = _emit(django_capture_on_commit_callbacks, project)
    WebhookSubscription.objects.filter(pk=subscription.pk).update(is_active=False)
    with django_capture_on_commit_callbacks(execute=True):
        webhook_deliveries_due()
    assert delivery is not None
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and "deactivated" in delivery.last_error
    assert len(receiver.requests) == 1


def test_payload_shape(project: Any, admin_user: Any, receiver: Receiver) -> None:
    webhook_create(project=project, user=admin_user, url=receiver.url(), events=["export.ready", "image.verified"])
    occurred = timezone.now()
    (delivery,) = webhook_deliveries_create(
        project_id=project.pk, event="export.ready", data={"job": 3, "size_bytes": 10}, occurred_at=occurred
    )
    assert delivery.body == json.dumps(
        {
            "id": str(delivery.pk),
            "event": "export.ready",
            "project": project.pk,
            "created_at": occurred.isoformat().replace("+00:00", "Z"),
            "data": {"job": 3, "size_bytes": 10},
        },
        separators=(",", ":"),
    )
    assert WebhookAttempt.objects.count() == 0 and delivery.status == DeliveryStatus.PENDING


def test_a_lost_attempt_comes_back_after_its_lease(
    project: Any, admin_user: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    webhook_create(project=project, user=admin_user, url=receiver.url(), events=["training.failed"])
    # the first message is lost (never sent here: no commit)
    (delivery,) = webhook_deliveries_create(
        project_id=project.pk, event="training.failed", data={}, occurred_at=timezone.now()
    )
    assert webhook_deliveries_due() == 0  # leased while its message may still come
    with mock.patch("core.queue.task_send") as send, django_capture_on_commit_callbacks(execute=True):
        assert webhook_deliveries_due(now=timezone.now() + timedelta(minutes=11)) == 1
    send.assert_called_once_with("webhooks.deliver", args=[str(delivery.pk), 1], queue="default", task_id=None)


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test's certificates (Debian's openssl package)")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [*command, "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("served_name", ["hooks.example.test", "other.example.test"])
def test_https_checks_the_certificate_for_the_url_host(
    tmp_path: Path, project: Any, served_name: str, django_capture_on_commit_callbacks: Any
) -> None:
    """TLS goes to the checked address but is for the URL's host: SNI and the certificate check
    use the name; an untrusted or mismatched certificate is a failed attempt."""
    cert, key = _certificate(tmp_path, served_name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment]
    server = Receiver().start(tls=context)
    try:
        url = f"https://hooks.example.test:{server.port}/in"
        WebhookSubscription.objects.create(project=project, url=url, events=["training.failed"], secret="whsec_x")
        with mock.patch("webhooks.targets.host_addresses", return_value=["127.0.0.1"]):
            untrusted = _emit(django_capture_on_commit_callbacks, project)  # a self-signed certificate
            assert untrusted is not None and untrusted.attempts == 1 and untrusted.status == DeliveryStatus.PENDING
            assert "certificate" in untrusted.last_error.lower() and server.requests == []
            trusting = functools.partial(urllib3.HTTPSConnectionPool, ca_certs=str(cert))
            with mock.patch("webhooks.transport.urllib3.HTTPSConnectionPool", trusting):
                trusted = _emit(django_capture_on_commit_callbacks, project)
    finally:
        server.stop()
    assert trusted is not None
    assert set(names) == {"hooks.example.test"}  # SNI names the URL's host, not 127.0.0.1
    if served_name == "hooks.example.test":
        assert trusted.status == DeliveryStatus.SUCCEEDED
        assert server.requests[0].headers["Host"] == f"hooks.example.test:{server.port}"
    else:  # a certificate for another name
        assert trusted.status == DeliveryStatus.PENDING and "hooks.example.test" in trusted.last_error
        assert server.requests == []
