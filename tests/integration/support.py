"""What the integration tests share: synthetic fields as PNG uploads, and waiting for a worker."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from PIL import Image as PILImage

from cytoseg.synthetic import generate_field


def field_png(seed: int, width: int = 256, height: int | None = None) -> bytes:
    """A synthetic Diff-Quik field (the project's generator) as PNG bytes."""
    field = generate_field(seed=seed, width=width, height=width if height is None else height)
    buffer = io.BytesIO()
    PILImage.fromarray(field.image).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_until(what: Callable[[], bool], timeout: float, message: Callable[[], str]) -> None:
    """Poll ``what`` until it is true; after ``timeout`` seconds fail with ``message()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.3)
    raise AssertionError(message())
