from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Pre-segmentation with the project's active model, and the proposals it makes."""

    name = "inference"
    verbose_name = "Pre-segmentation"

    def ready(self) -> None:
        from annotations.signals import images_uploaded
        from inference import receivers

        images_uploaded.connect(receivers.images_uploaded, dispatch_uid="inference.images_uploaded")
