"""Reads of webhooks; access is the project admins' (``annotations.selectors`` decides)."""

from __future__ import annotations

from django.db.models import QuerySet

from annotations.models import Project
from annotations.selectors import UserLike, project_get_for_user
from core.errors import NotFoundError
from webhooks.models import WebhookDelivery, WebhookSubscription


def webhook_get_for_user(*, user: UserLike, webhook_id: int) -> WebhookSubscription:
    """A subscription, for an admin of its project (404 for non-members, 403 for other roles)."""
    subscription = WebhookSubscription.objects.select_related("project").filter(pk=webhook_id).first()
    if subscription is None:
        raise NotFoundError("No such webhook.")
    project_get_for_user(user=user, project_id=subscription.project_id, capability="manage")
    return subscription


def webhook_list(*, project: Project) -> QuerySet[WebhookSubscription]:
    return WebhookSubscription.objects.filter(project=project).order_by("id")


def delivery_list(*, subscription: WebhookSubscription) -> QuerySet[WebhookDelivery]:
    """A subscription's deliveries, newest first, each with its attempts."""
    return (
        WebhookDelivery.objects.filter(subscription=subscription)
        .prefetch_related("attempt_log")
        .order_by("-created_at", "-pk")
    )
