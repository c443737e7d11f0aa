from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Signed webhooks: project admins subscribe URLs to project events (``core.events``); each
    event becomes a delivery per matching subscription, POSTed by a Celery task with retries."""

    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        from core.events import event_emitted
        from webhooks import receivers

        event_emitted.connect(receivers.event_emitted, dispatch_uid="webhooks.event_emitted")
