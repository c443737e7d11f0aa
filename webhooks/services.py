"""Webhook subscriptions and deliveries.

An event (``core.events``) becomes one :class:`~webhooks.models.WebhookDelivery` per active
subscription of its project to it, written with its task in one transaction
(``core.queue.task_enqueue``): the body is fixed then, and every attempt sends it byte for
byte, signed afresh with the attempt's timestamp.

Attempts and retries live in the database, not in messages a worker holds: the task
``webhooks.deliver(delivery, n)`` makes attempt ``n`` if the delivery still waits for it (a
duplicate message does nothing); a failed attempt sets ``next_attempt_at`` by exponential
back-off and beat's ``webhooks.deliveries_due`` hands due deliveries to the workers again. While
an attempt's message waits or runs, ``next_attempt_at`` is a lease: a delivery whose message or
worker was lost comes back once it passes.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from annotations.models import Project
from annotations.services.audit import audit_record
from core.errors import ServiceValidationError
from core.events import EVENTS
from core.queue import task_enqueue
from webhooks import signing, transport
from webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookSubscription
from webhooks.targets import TargetError, target_check

logger = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.deliver"
PING = "ping"  # sent only on an admin's request, to one subscription
USER_AGENT = "cytoplatform-webhooks/1"
# How long a handed-out attempt may take to start and finish before beat hands it out again.
LEASE = timedelta(minutes=10)
SUBSCRIPTION_FIELDS = ("url", "events", "description", "active")


# --- subscriptions ---------------------------------------------------------------------------


def _url_checked(url: Any) -> str:
    try:
        target_check(str(url))
    except TargetError as exc:
        raise ServiceValidationError("The webhook URL cannot be used.", {"url": str(exc)}) from exc
    return str(url).strip()


def _events_checked(events: Any) -> list[str]:
    if not isinstance(events, list) or not events:
        raise ServiceValidationError("Invalid events.", {"events": "name at least one event"})
    unknown = sorted({str(e) for e in events} - set(EVENTS))
    if unknown:
        raise ServiceValidationError(
            "Invalid events.", {"events": f"unknown: {', '.join(unknown)}; known: {', '.join(EVENTS)}"}
        )
    return [e for e in EVENTS if e in events]  # the catalogue's order, each once


def webhook_create(
    *,
    project: Project,
    user: User | None,
    url: str,
    events: list[str],
    description: str = "",
    active: bool = True,
) -> tuple[WebhookSubscription, str]:
    """Subscribe ``url`` to ``events`` of ``project``. The URL must resolve to addresses a
    delivery may reach (400 naming ``url`` otherwise). Returns the subscription and its new
    secret, which is shown to the caller this once."""
    url = _url_checked(url)
    events = _events_checked(events)
    secret = signing.secret_generate()
    with transaction.atomic():
        subscription = WebhookSubscription.objects.create(
            project=project,
            url=url,
            events=events,
            description=description,
            secret=secret,
            is_active=active,
            created_by=user,
        )
        audit_record(
            project=project,
            actor=user,
            action="webhook.create",
            target=f"webhook {subscription.pk}",
            after={"url": url, "events": events, "active": active},
        )
    return subscription, secret


def webhook_update(
    *, subscription: WebhookSubscription, user: User | None, data: dict[str, Any]
) -> WebhookSubscription:
    """Change a subscription's ``url``, ``events``, ``description`` or ``active`` flag (a new
    URL is checked as at creation). Deliveries already made keep their URL's outcome; those
    still pending go to the new URL."""
    unknown = sorted(set(data) - set(SUBSCRIPTION_FIELDS))
    if unknown:
        raise ServiceValidationError("Invalid webhook.", dict.fromkeys(unknown, "unknown field"))
    before = _state(subscription)
    if "url" in data:
        subscription.url = _url_checked(data["url"])
    if "events" in data:
        subscription.events = _events_checked(data["events"])
    if "description" in data:
        subscription.description = str(data["description"])
    if "active" in data:
        subscription.is_active = bool(data["active"])
    with transaction.atomic():
        subscription.save()
        audit_record(
            project=subscription.project,
            actor=user,
            action="webhook.update",
            target=f"webhook {subscription.pk}",
            before=before,
            after=_state(subscription),
        )
    return subscription


def _state(subscription: WebhookSubscription) -> dict[str, Any]:
    return {"url": subscription.url, "events": list(subscription.events), "active": subscription.is_active}


def webhook_delete(*, subscription: WebhookSubscription, user: User | None) -> None:
    """Delete a subscription with its deliveries and their log (pending ones are never sent)."""
    with transaction.atomic():
        audit_record(
            project=subscription.project,
            actor=user,
            action="webhook.delete",
            target=f"webhook {subscription.pk}",
            before=_state(subscription),
        )
        subscription.delete()


# --- deliveries ------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _delivery_create(
    *, subscription: WebhookSubscription, event: str, data: dict[str, Any], occurred_at: datetime
) -> WebhookDelivery:
    delivery = WebhookDelivery(subscription=subscription, event=event, next_attempt_at=timezone.now() + LEASE)
    payload = {
        "id": str(delivery.pk),
        "event": event,
        "project": subscription.project_id,
        "created_at": _iso(occurred_at),
        "data": data,
    }
    delivery.body = json.dumps(payload, cls=DjangoJSONEncoder, separators=(",", ":"))
    delivery.save(force_insert=True)
    task_enqueue(DELIVER_TASK, args=[str(delivery.pk), 1], queue="default")
    return delivery


def webhook_deliveries_create(
    *, project_id: int, event: str, data: dict[str, Any], occurred_at: datetime
) -> list[WebhookDelivery]:
    """One delivery of ``event`` per active subscription of the project to it, each with its
    task (sent once this commits)."""
    subscriptions = [
        s for s in WebhookSubscription.objects.filter(project_id=project_id, is_active=True) if event in s.events
    ]
    if not subscriptions:
        return []
    with transaction.atomic():
        return [
            _delivery_create(subscription=s, event=event, data=data, occurred_at=occurred_at) for s in subscriptions
        ]


def webhook_ping(*, subscription: WebhookSubscription, user: User | None) -> WebhookDelivery:
    """Send a ``ping`` event to this subscription alone (even an inactive one: an admin tries a
    receiver before switching it on)."""
    data = {"webhook": subscription.pk, "requested_by": user.pk if user is not None else None}
    with transaction.atomic():
        return _delivery_create(subscription=subscription, event=PING, data=data, occurred_at=timezone.now())


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): base * factor^(attempt-1)."""
    return float(settings.WEBHOOK_RETRY_BASE_SECONDS) * float(settings.WEBHOOK_RETRY_FACTOR) ** (attempt - 1)


def _headers(delivery: WebhookDelivery, secret: str, attempt: int, body: bytes) -> dict[str, str]:
    timestamp = int(timezone.now().timestamp())
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Cyto-Event": delivery.event,
        "X-Cyto-Delivery": str(delivery.pk),
        "X-Cyto-Attempt": str(attempt),
        "X-Cyto-Timestamp": str(timestamp),
        "X-Cyto-Signature": signing.signature_compute(secret=secret, timestamp=timestamp, body=body),
    }


def webhook_delivery_attempt(*, delivery_id: str, attempt: int) -> WebhookDelivery | None:
    """Make attempt ``attempt`` of a delivery, if it still waits for exactly that one (None
    otherwise: a duplicate message). The target is checked again first (DNS may have changed):
    a refused address gets no request, and the delivery fails at once with the reason. The
    attempt is logged; a failure is retried after :func:`retry_delay` until
    ``WEBHOOK_MAX_ATTEMPTS`` attempts were made."""
    now = timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, attempts=attempt - 1
    ).update(attempts=attempt, next_attempt_at=now + LEASE)
    if not claimed:
        return None
    delivery = WebhookDelivery.objects.select_related("subscription").get(pk=delivery_id)
    subscription = delivery.subscription
    final = False
    if not subscription.is_active and delivery.event != PING:
        result = transport.PostResult(error="the subscription was deactivated; not sent")
        final = True
    else:
        try:
            target, addresses = target_check(subscription.url)
        except TargetError as exc:
            result = transport.PostResult(error=f"refused, no request made: {exc}")
            final = exc.final
        else:
            body = delivery.body.encode()
            headers = _headers(delivery, subscription.secret, attempt, body)
            result = transport.post(target=target, addresses=addresses, body=body, headers=headers)
    finished = timezone.now()
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=attempt,
        started_at=now,
        duration_ms=result.duration_ms,
        address=result.address,
        status_code=result.status_code,
        ok=result.ok,
        error=result.error,
        response_excerpt=result.excerpt,
    )
    if result.ok:
        update: dict[str, Any] = {
            "status": DeliveryStatus.SUCCEEDED,
            "next_attempt_at": None,
            "finished_at": finished,
            "last_error": "",
        }
    elif final or attempt >= settings.WEBHOOK_MAX_ATTEMPTS:
        update = {
            "status": DeliveryStatus.FAILED,
            "next_attempt_at": None,
            "finished_at": finished,
            "last_error": result.error,
        }
    else:
        update = {"next_attempt_at": finished + timedelta(seconds=retry_delay(attempt)), "last_error": result.error}
    WebhookDelivery.objects.filter(pk=delivery.pk, attempts=attempt).update(**update)
    if not result.ok:
        logger.info("Webhook delivery %s attempt %s failed: %s", delivery.pk, attempt, result.error)
    delivery.refresh_from_db()
    return delivery


def webhook_deliveries_due(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Hand the pending deliveries whose ``next_attempt_at`` has come (a retry, or a lease
    that ran out) to the workers, through the outbox. Returns how many."""
    now = now or timezone.now()
    due = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now).order_by(
        "next_attempt_at"
    )
    sent = 0
    for pk, attempts, at in due.values_list("pk", "attempts", "next_attempt_at")[:limit]:
        if attempts >= settings.WEBHOOK_MAX_ATTEMPTS:  # the last attempt's worker was lost
            WebhookDelivery.objects.filter(pk=pk, status=DeliveryStatus.PENDING, attempts=attempts).update(
                status=DeliveryStatus.FAILED,
                next_attempt_at=None,
                finished_at=now,
                last_error=f"attempt {attempts} was lost (its worker stopped) and none is left",
            )
            continue
        with transaction.atomic():
            taken = WebhookDelivery.objects.filter(
                pk=pk, status=DeliveryStatus.PENDING, attempts=attempts, next_attempt_at=at
            ).update(next_attempt_at=now + LEASE)
            if taken:
                task_enqueue(DELIVER_TASK, args=[str(pk), attempts + 1], queue="default")
                sent += 1
    return sent


def webhook_deliveries_prune(*, now: datetime | None = None) -> int:
    """Delete finished deliveries (and their log) older than ``WEBHOOK_DELIVERY_KEEP_DAYS``."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.WEBHOOK_DELIVERY_KEEP_DAYS)
    deleted, _ = WebhookDelivery.objects.filter(
        status__in=(DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED), created_at__lt=cutoff
    ).delete()
    return deleted
