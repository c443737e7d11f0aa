"""How the inference app reacts to what the annotations app announces (``annotations.signals``)."""

from __future__ import annotations

from typing import Any

from annotations.models import Image
from inference.services import presegment_on_upload


def images_uploaded(*, images: list[Image], **_: Any) -> None:
    """New images are pre-segmented when their project asks for it."""
    presegment_on_upload(images=images)
