"""Decoding and conversion of uploaded microscopy images (Django-free).

Validation happens by decoding, never by file name: the bytes must decode completely as
JPEG, PNG or TIFF, within a pixel limit. Grey and 16-bit images are converted to 8-bit RGB
for display and models; the original bytes are kept untouched by the caller.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

ALLOWED_FORMATS = {"JPEG", "PNG", "TIFF", "MPO"}
THUMBNAIL_SIZE = 256


class ImageRejected(ValueError):
    """The upload is not an acceptable image; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    original_format: str
    original_mode: str
    bit_depth: int
    sha256: str

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    data = array.astype(np.float64)
    # Percentile stretch: 16-bit microscopy rarely uses the full range, and a min-max stretch
    # lets a few hot pixels darken the whole image.
    low, high = np.percentile(data, [0.1, 99.9])
    if high <= low:
        high = low + 1.0
    scaled = np.clip((data - low) / (high - low), 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)


def _pil_to_array(picture: PILImage.Image) -> tuple[np.ndarray, int]:
    mode = picture.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        array = np.asarray(picture.convert("I") if mode != "I" else picture)
        return array, 16
    if mode == "F":
        return np.asarray(picture), 32
    if mode in {"RGB", "L"}:
        return np.asarray(picture), 8
    return np.asarray(picture.convert("RGBA" if "A" in mode else "RGB")), 8


def image_decode(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode ``data`` fully into 8-bit RGB, rejecting anything that is not a sound image."""
    if not data:
        raise ImageRejected("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            picture = PILImage.open(io.BytesIO(data))
            image_format = picture.format or ""
            if image_format not in ALLOWED_FORMATS:
                raise ImageRejected(f"format {image_format or 'unknown'} is not accepted (JPEG, PNG or TIFF only)")
            width, height = picture.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"the image has {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels} (decompression bomb protection)"
                )
            picture.load()
    except ImageRejected:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise ImageRejected(f"the image is too large to decode safely ({exc})") from exc
    except PILImage.UnidentifiedImageError as exc:
        raise ImageRejected("the file is not a decodable image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"the image is truncated or corrupt ({exc})") from exc

    mode = picture.mode
    array, bit_depth = _pil_to_array(picture)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    array = _to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageRejected(f"unsupported channel layout {array.shape}")
    return DecodedImage(
        rgb=np.ascontiguousarray(array),
        original_format="JPEG" if image_format == "MPO" else image_format,
        original_mode=mode,
        bit_depth=bit_depth,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def encode_thumbnail(rgb: np.ndarray, size: int = THUMBNAIL_SIZE) -> bytes:
    picture = PILImage.fromarray(rgb)
    picture.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def read_rgb(data: bytes) -> np.ndarray:
    """Read a stored display PNG back as (H, W, 3) uint8."""
    with PILImage.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))
