from django.contrib import admin
from django.http import HttpRequest

from webhooks import models


@admin.register(models.WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    # The secret stays out of the admin site (the API shows it once, at creation); without it a
    # subscription cannot be made here, so the API (which checks the URL) makes them.
    exclude = ["secret"]
    list_display = ["id", "project", "url", "is_active", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(models.WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "subscription", "event", "status", "attempts", "created_at"]
    list_filter = ["status", "event"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
