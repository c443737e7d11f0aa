"""The webhooks tab in a real browser: a project admin subscribes a loopback receiver (the tests'
own, ``webhooks.tests.support.Receiver``; loopback allowed through ``WEBHOOK_ALLOWED_NETWORKS``,
in this process for the live server and in the environment of a real Celery worker, which makes
the deliveries), sees the secret once, sends test pings that the log shows delivered and
retrying, pages through the log, pauses, edits and deletes the subscription; a refused target
shows the server's reason under the URL field; a member who is not an admin gets no tab."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from annotations.models import Role
from core.models import WorkerHeartbeat
from tests.browser.conftest import shot
from tests.browser.helpers import ProjectFactory, UserFactory, login, member
from tests.worker import celery_worker
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookSubscription
from webhooks.signing import signature_verify
from webhooks.tests.support import Receiver, receiver

__all__ = ["receiver"]  # fixture

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# the worker's settings: loopback only, a failed attempt retried after 30 s (no beat runs here,
# so a retry stays "retrying" for the log to show)
WORKER_ENV = {
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
    "WEBHOOK_RETRY_BASE_SECONDS": "30",
    "WEBHOOK_CONNECT_TIMEOUT": "2",
    "WEBHOOK_READ_TIMEOUT": "2",
    "WORKER_HEARTBEAT_SECONDS": "2",
}


@pytest.fixture
def loopback_live(settings: Any) -> None:
    """The live server (this process) accepts the receiver on 127.0.0.1 when it is subscribed."""
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]


def _history(subscription: WebhookSubscription, n: int) -> None:
    """``n`` older deliveries of the subscription (some failed), as the worker would have logged them."""
    now = timezone.now()
    events = ["model.promoted", "export.ready", "image.verified"]
    for i in range(n):
        failed = i % 4 == 3
        created = now - timedelta(hours=n - i)
        body = json.dumps({"id": "", "event": events[i % 3], "project": subscription.project_id, "data": {"n": i}})
        delivery = WebhookDelivery.objects.create(
            id=uuid.uuid4(),
            subscription=subscription,
            event=events[i % 3],
            body=body,
            status=DeliveryStatus.FAILED if failed else DeliveryStatus.SUCCEEDED,
            attempts=2 if failed else 1,
            finished_at=created + timedelta(seconds=31),
            last_error="connection refused" if failed else "",
        )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(created_at=created)
        for number in range(1, delivery.attempts + 1):
            WebhookAttempt.objects.create(
                delivery=delivery,
                number=number,
                started_at=created + timedelta(seconds=30 * (number - 1)),
                duration_ms=3.2 if failed else 41.0,
                address="127.0.0.1",
                status_code=None if failed else 204,
                ok=not failed,
                error="connection refused" if failed else "",
            )


def test_admin_subscribes_pings_and_reads_the_log(
    live_server: Any, page: Any, receiver: Receiver, loopback_live: None, tmp_path: Path
) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Thyroid FNA — ward 3", created_by=admin)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)

    with celery_worker(log_path=tmp_path / "worker.log", env=WORKER_ENV, name="hooks", queues="default") as process:
        login(page, live_server.url, "dr.head")
        page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/training")
        page.click("a.tab:has-text('Webhooks')")
        page.wait_for_selector(".webhook-form")
        assert "No webhook yet" in page.locator(".hooks").inner_text()

        # a private address: the server refuses it, its reason shows under the URL field
        page.fill(".webhook-form input[name=url]", "http://10.0.0.1/hook")
        page.check(".webhook-form [data-event='model.promoted'] input")
        page.click("[data-action=create-webhook]")
        error = page.locator(".webhook-form [data-error-for=url]")
        error.wait_for()
        assert "10.0.0.1 is a private address" in error.inner_text()
        assert "only sent to public internet addresses" in error.inner_text()
        assert page.locator(".webhook-form input[name=url]").get_attribute("aria-invalid") == "true"
        assert not WebhookSubscription.objects.exists()
        shot(page, "40-webhooks-refused-url")

        # the receiver: created, the secret shown once
        page.fill(".webhook-form input[name=url]", receiver.url("/cyto/hooks"))
        page.fill(".webhook-form input[name=description]", "LIMS (test receiver)")
        page.check(".webhook-form [data-event='image.verified'] input")
        page.check(".webhook-form [data-event='export.ready'] input")
        page.click("[data-action=create-webhook]")
        dialog = page.locator(".secret-dialog")
        dialog.wait_for()
        subscription = WebhookSubscription.objects.get()
        assert subscription.events == ["image.verified", "model.promoted", "export.ready"]
        assert subscription.description == "LIMS (test receiver)" and subscription.is_active
        secret = dialog.locator("input.secret-value").input_value()
        assert secret == subscription.secret and secret.startswith("whsec_")
        assert "Store this secret now: it will not be shown again." in dialog.inner_text()
        shot(page, "41-webhooks-secret-once")
        dialog.locator("[data-action=copy-secret]").click()
        page.wait_for_function("document.querySelector('[data-action=copy-secret]').textContent.includes('Copied')")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        dialog.locator("[data-action=secret-stored]").click()
        dialog.wait_for(state="detached")
        assert secret not in page.content()

        card = page.locator(f".hook-card[data-webhook='{subscription.pk}']")
        assert receiver.url("/cyto/hooks") in card.inner_text()
        assert f"{subscription.secret[:10]}…" in card.inner_text()
        for label in ("Image verified", "Model promoted", "Export ready"):
            assert label in card.locator(".hook-events").inner_text()
        assert card.locator("[data-testid=active]").inner_text() == "Active"
        card.locator("[data-testid=last-delivery]:has-text('None yet')").wait_for()
        page.locator(".delivery-log:has-text('Nothing delivered yet')").wait_for()

        # older deliveries, more than one page of the log
        _history(subscription, 12)

        deadline = time.monotonic() + 90
        while not WorkerHeartbeat.objects.filter(pid=process.pid).exists():
            assert time.monotonic() < deadline, "the worker never reported itself"
            time.sleep(0.25)

        # a test ping: delivered, signed with the secret, shown in the log
        card.locator("[data-action=ping]").click()
        ping = page.locator(".deliveries tbody tr[data-event=ping]").first
        page.locator(".deliveries tbody tr[data-event=ping][data-status=delivered]").wait_for(timeout=30_000)
        assert ping.locator(".attempt").first.get_attribute("data-status") == "200"
        assert "HTTP 200 OK" in ping.inner_text() and "Delivered" in ping.inner_text()
        card.locator("[data-testid=ping-note]:has-text('Ping delivered')").wait_for()
        assert "Delivered" in card.locator("[data-testid=last-delivery]").inner_text()
        received = receiver.requests[-1]
        assert received.path == "/cyto/hooks" and received.headers["X-Cyto-Event"] == "ping"
        assert signature_verify(
            secret=secret,
            body=received.body,
            timestamp=received.headers["X-Cyto-Timestamp"],
            signature=received.headers["X-Cyto-Signature"],
        )

        # another, which the receiver refuses: retrying, with the next attempt's time
        receiver.responses = [(503, {}, b"busy, try later")]
        card.locator("[data-action=ping]").click()
        retrying = page.locator(".deliveries tbody tr[data-event=ping][data-status=retrying]")
        retrying.wait_for(timeout=30_000)
        assert "HTTP 503 Service Unavailable" in retrying.inner_text()
        assert "next attempt at" in retrying.locator("[data-testid=status-detail]").inner_text()
        card.locator(
            "[data-testid=ping-note]:has-text('Ping not delivered yet (HTTP 503); next attempt at')"
        ).wait_for()
        rows = page.locator(".deliveries tbody tr[data-delivery]")
        shown = rows.count()  # the newest page, and what the polls after the first ping had shown
        assert 10 <= shown < 14 and rows.first.get_attribute("data-status") == "retrying"  # newest first
        assert f"Load older deliveries ({14 - shown} more)" in page.locator("[data-action=load-more]").inner_text()
        assert f"{shown} of 14 shown" in page.locator(".log-head").inner_text()
        shot(page, "42-webhooks-ping-and-log", full=True)

        page.click("[data-action=load-more]")
        page.wait_for_function("document.querySelectorAll('.deliveries tbody tr[data-delivery]').length === 14")
        assert page.locator("[data-action=load-more]").count() == 0
        statuses = [rows.nth(i).get_attribute("data-status") for i in range(14)]
        assert statuses[:2] == ["retrying", "delivered"] and statuses.count("failed") == 3
        failed = page.locator(".deliveries tbody tr[data-status=failed]").first
        assert "no answer" in failed.inner_text() and "connection refused" in failed.inner_text()
        page.locator(".deliveries tbody tr[data-event=ping] >> text=Details").first.click()
        assert '"event": "ping"' in page.locator(".deliveries tr.sub-row").inner_text()
        shot(page, "43-webhooks-log-all", full=True)

    # pause and activate again
    card.locator("[data-action=toggle-active]").click()
    card.locator("[data-testid=active]:has-text('Paused')").wait_for()
    subscription.refresh_from_db()
    assert not subscription.is_active
    card.locator("[data-action=toggle-active]").click()
    card.locator("[data-testid=active]:has-text('Active')").wait_for()

    # edit the events
    card.locator("[data-action=edit]").click()
    page.uncheck(".hook-card.editing [data-event='export.ready'] input")
    page.check(".hook-card.editing [data-event='image.submitted'] input")
    shot(page, "44-webhooks-edit")
    page.click("[data-action=save-webhook]")
    page.locator(".hook-card.editing").wait_for(state="detached")
    subscription.refresh_from_db()
    assert subscription.events == ["image.submitted", "image.verified", "model.promoted"] and subscription.is_active
    assert "Image submitted" in card.locator(".hook-events").inner_text()

    # delete, after confirming
    card.locator("[data-action=delete]").click()
    page.locator(".dialog:has-text('Delete this subscription?') button:has-text('Delete subscription')").click()
    page.locator(".hooks:has-text('No webhook yet')").wait_for()
    assert not WebhookSubscription.objects.exists()
    assert page.locator(".delivery-log").is_hidden()


def test_a_member_who_is_not_an_admin_has_no_webhooks_tab(live_server: Any, page: Any) -> None:
    admin = UserFactory(username="dr.head")
    project = ProjectFactory(name="Ward", created_by=admin)
    member(project, Role.ANNOTATOR, username="dr.ward")
    login(page, live_server.url, "dr.ward")
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/training")
    page.wait_for_selector(".empty.error")
    assert page.locator("a.tab:text-is('Training')").count() == 1
    assert page.locator("a.tab:has-text('Webhooks')").count() == 0
    page.goto(f"{live_server.url}/#/projects/{project.pk}/admin/webhooks")
    page.wait_for_selector(".empty.error")
    assert "Administrators only" in page.locator(".empty.error").inner_text()
    assert page.locator("a.tab:has-text('Webhooks')").count() == 0
    assert page.locator(".webhook-form").count() == 0
    shot(page, "45-webhooks-member-has-no-tab")
