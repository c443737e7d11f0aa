"""Stain, illumination and optics augmentation of training images (Django-free).

Smears differ from lab to lab and slide to slide in what a model must not care about: the
stain's hue and strength, uneven illumination, focus, and the compression of the camera. A
model trained on ten fields of one look fails on the next look. :func:`stain_augment` draws
one plausible other look for an image; geometry is untouched, so every label map stays valid.

The steps, each drawn per image (after Tellez et al. 2018, "Whole-slide mitosis detection in
H&E breast histology using PHH3 as a reference to train distilled stain-invariant
convolutional networks", for the colour-deconvolution jitter):

* stain jitter in optical density: the image is split into the Haematoxylin / Eosin / DAB
  components (``skimage.color.rgb2hed``), each scaled by ``1 + U(-hed, hed)`` and shifted by
  ``U(-hed, hed)``; Diff-Quik's two dyes map onto the first two like H&E's;
* hue rotation by ``U(-hue, hue)`` of the colour circle and saturation scaled by
  ``1 + U(-saturation, saturation)`` (a magenta or bluish stain from a lilac one);
* an illumination gradient: a linear ramp in a random direction times a radial fall-off,
  losing up to ``gradient`` of the light;
* defocus: Gaussian blur with sigma ``U(0, blur)``, blended with the sharp image through a
  smooth random map so that focus varies across the field;
* JPEG compression at a quality in ``jpeg`` with probability ``p_jpeg``.

The trainers add ``copies`` augmented versions of every training image to its originals
(:func:`augmented_copies`); deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["augmented_copies", "stain_augment"]


def _smooth(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random field in 0..1 (a few blobs across the image)."""
    coarse = rng.random((4, 4)).astype(np.float32)
    return np.asarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)).clip(0.0, 1.0)


def stain_augment(image: np.ndarray, rng: np.random.Generator, config: Any) -> np.ndarray:
    """One augmented look of an (H, W, 3) uint8 RGB image; ``config`` has the fields of
    :class:`cytoseg.trainers.configs.StainAugmentation`."""
    from skimage.color import hed2rgb, rgb2hed

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    height, width = img.shape[:2]
    out = img.astype(np.float32) / 255.0
    if config.hed > 0:
        hed = rgb2hed(out)
        alpha = 1.0 + rng.uniform(-config.hed, config.hed, 3)
        beta = rng.uniform(-config.hed, config.hed, 3) * 0.05  # OD offsets are small numbers
        out = np.asarray(hed2rgb(hed * alpha + beta), dtype=np.float32).clip(0.0, 1.0)
    if config.hue > 0 or config.saturation > 0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)  # float: H in degrees 0..360
        hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-config.hue, config.hue)) % 360.0
        hsv[..., 1] = (hsv[..., 1] * (1.0 + rng.uniform(-config.saturation, config.saturation))).clip(0.0, 1.0)
        out = np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), dtype=np.float32)
    if config.gradient > 0:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        ramp = xx * math.cos(angle) + yy * math.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        cx, cy = rng.uniform(0.0, 1.0) * width, rng.uniform(0.0, 1.0) * height
        radial = np.clip(((xx - cx) ** 2 + (yy - cy) ** 2) / float(width**2 + height**2) / 0.5, 0.0, 1.0)
        share = rng.uniform(0.0, 1.0)
        loss = rng.uniform(0.0, config.gradient)
        light = 1.0 - loss * (share * ramp + (1.0 - share) * radial)
        out = out * light[..., None]
    if config.blur > 0:
        sigma = float(rng.uniform(0.0, config.blur))
        if sigma > 0.2:
            blurred = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma)
            weight = _smooth(rng, height, width)[..., None]
            out = out * (1.0 - weight) + blurred * weight
    result = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    if config.p_jpeg > 0 and rng.random() < config.p_jpeg:
        quality = int(rng.integers(int(config.jpeg[0]), int(config.jpeg[1]) + 1))
        ok, data = cv2.imencode(".jpg", result[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if decoded is not None:
                result = np.ascontiguousarray(np.asarray(decoded)[:, :, ::-1])
    return result


def augmented_copies(images: Sequence[np.ndarray], config: Any) -> list[np.ndarray]:
    """``config.copies`` augmented versions of each image, in order (image 0's copies first);
    image ``i``'s copy ``k`` depends only on ``config.seed``, ``i`` and ``k``."""
    out: list[np.ndarray] = []
    for i, image in enumerate(images):
        for k in range(int(config.copies)):
            rng = np.random.default_rng([int(config.seed), i, k])
            out.append(stain_augment(image, rng, config))
    return out
