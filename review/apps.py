from django.apps import AppConfig


class ReviewConfig(AppConfig):
    """The multi-expert verification workflow: assignment, blind reviews, consensus,
    adjudication, the verified layer, agreement and correction analytics."""

    name = "review"
    verbose_name = "Expert verification"

    def ready(self) -> None:
        from annotations.signals import membership_changed
        from review import receivers

        membership_changed.connect(receivers.membership_changed, dispatch_uid="review.membership_changed")
