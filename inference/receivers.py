"""How the inference app reacts to what the annotations app announces (``annotations.signals``)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from annotations.models import Image
from inference.interactive import image_maps_delete
from inference.services import presegment_on_upload


def images_uploaded(*, images: list[Image], **_: Any) -> None:
    """New images are pre-segmented when their project asks for it."""
    presegment_on_upload(images=images)


def image_deleted(*, instance: Image, **_: Any) -> None:
    """A deleted image's kept maps go with it (also when its project is deleted: Django sends
    ``post_delete`` for every image the cascade removes), once the deletion commits."""
    image_id, project_id = instance.pk, instance.project_id
    transaction.on_commit(lambda: image_maps_delete(image_id=image_id, project_id=project_id))
