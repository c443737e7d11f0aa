from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Cross-cutting pieces every app uses and that use no app: the project's errors and their
    HTTP mapping, API parsing helpers, idempotent writes, login throttling, streamed archives."""

    name = "core"
    verbose_name = "Core"
