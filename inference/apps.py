from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Pre-segmentation with the project's active model, and the proposals it makes."""

    name = "inference"
    verbose_name = "Pre-segmentation"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from annotations.models import Image
        from annotations.signals import images_uploaded
        from inference import receivers

        images_uploaded.connect(receivers.images_uploaded, dispatch_uid="inference.images_uploaded")
        post_delete.connect(receivers.image_deleted, sender=Image, dispatch_uid="inference.image_deleted")
