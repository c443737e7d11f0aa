"""Webhook subscriptions, their deliveries (one per event and subscription) and the log of
every attempt to deliver one."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from annotations.models import Project


class WebhookSubscription(models.Model):
    """A project's subscription of ``url`` to some events.

    The secret is stored as it is: the platform must have it to sign every delivery, so it
    cannot be hashed like an API token, and encrypting it with a key kept in the same server's
    settings would protect it only from a leak of the database alone, at the cost of a key to
    manage and a cryptography dependency. What it guards is small: it lets its holder forge
    deliveries to this one receiver, never reach the platform. The API shows it once, at
    creation (then only ``secret_prefix``); the admin site never shows it.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    url = models.CharField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    events = models.JSONField(default=list, help_text="Names from core.events.EVENTS.")
    secret = models.CharField(max_length=100)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"webhook {self.pk} of project {self.project_id} -> {self.url}"

    @property
    def secret_prefix(self) -> str:
        return self.secret[:10]


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # not yet delivered; attempts left
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"  # every attempt failed


class WebhookDelivery(models.Model):
    """One event for one subscription: the exact body every attempt sends, and where the
    attempts stand. ``id`` is the payload's ``id`` and the ``X-Cyto-Delivery`` header."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    body = models.TextField(help_text="The JSON body, byte for byte what every attempt sends and signs.")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    # When beat should hand the delivery to a worker (again): the next retry, or a lease that
    # brings back a delivery whose message or worker was lost. Null once finished.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="webhooks_delivery_due"),
            models.Index(fields=["subscription", "-created_at"], name="webhooks_delivery_list"),
        ]

    def __str__(self) -> str:
        return f"{self.event} delivery {self.pk} ({self.status})"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a delivery, as the admins see it in the delivery log."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.FloatField(default=0.0)
    address = models.CharField(max_length=64, blank=True, help_text="The checked address connected to.")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhooks_attempt_unique")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"
