"""Request and response bodies of the webhooks API."""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.parsing import StrictSerializer
from core.events import EVENTS
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from webhooks.services import PING
from webhooks.targets import URL_MAX_LENGTH


class WebhookIn(StrictSerializer):
    url = serializers.CharField(
        max_length=URL_MAX_LENGTH, help_text="http(s) URL that resolves to public addresses only."
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=list(EVENTS)), allow_empty=False, help_text="At least one event."
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    active = serializers.BooleanField(required=False, default=True)


class WebhookUpdateIn(StrictSerializer):
    url = serializers.CharField(max_length=URL_MAX_LENGTH, required=False)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=list(EVENTS)), allow_empty=False, required=False
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    active = serializers.BooleanField(required=False)


class WebhookOut(serializers.ModelSerializer):
    events = serializers.ListField(child=serializers.ChoiceField(choices=list(EVENTS)))
    active = serializers.BooleanField(source="is_active")
    secret_prefix = serializers.CharField(help_text="The secret's first characters, to tell secrets apart.")

    class Meta:
        model = WebhookSubscription
        fields = [
            "id",
            "project",
            "url",
            "description",
            "events",
            "active",
            "secret_prefix",
            "created_by",
            "created_at",
            "updated_at",
        ]


class WebhookCreatedOut(WebhookOut):
    secret = serializers.CharField(help_text="The signing secret; shown only in this response.")

    class Meta(WebhookOut.Meta):
        fields = [*WebhookOut.Meta.fields, "secret"]


class AttemptOut(serializers.Serializer):
    number = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    duration_ms = serializers.FloatField()
    address = serializers.CharField(help_text="The checked address connected to (empty when none was).")
    status_code = serializers.IntegerField(allow_null=True)
    ok = serializers.BooleanField()
    error = serializers.CharField()
    response_excerpt = serializers.CharField(help_text="The response body's first 1024 bytes.")


class DeliveryOut(serializers.Serializer):
    id = serializers.UUIDField(help_text="The payload's id and the X-Cyto-Delivery header.")
    event = serializers.ChoiceField(choices=[*EVENTS, PING])
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    payload = serializers.SerializerMethodField()
    attempt_log = AttemptOut(many=True)

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_payload(self, delivery: WebhookDelivery) -> dict[str, Any]:
        """The body sent: {id, event, project, created_at, data}."""
        return dict(json.loads(delivery.body))
