"""Paper B's refinement ("enhancement") network as a backend wrapper, Django-free.

A small fully-convolutional net refines a first-stage foreground: input the RGB
image and the first-stage foreground probability (4 channels), three 3x3
convolutions of 64 filters with ReLU and no down-sampling, a 1x1 convolution and
a sigmoid (76,289 weights, the paper's ~77k). ``RefinementBackend`` runs another
backend, refines its foreground, and keeps its instances cropped to the refined
foreground.

Artifacts: a folder with ``refinement.pt`` (a ``state_dict`` written by
``cytoseg.trainers.refinement``; loaded with ``weights_only=True``) and the
base model in ``base/``. Settings: :class:`cytoseg.backends.settings.RefinementSettings`
(``base``, the wrapped backend's name, is required).

The first-stage probability is ``1 - P(background)`` when the base backend has
``predict_probabilities`` (nnU-Net), else its semantic map (or the union of its
instance masks) as 0/1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cytoseg.backends.base import (
    BackendError,
    Instance,
    Prediction,
    SegmentationBackend,
    image_check,
    semantic_from_instances,
)
from cytoseg.backends.settings import RefinementSettings

__all__ = [
    "WEIGHTS_FILE",
    "RefinementBackend",
    "RefinementNet",
    "instances_crop",
    "refinement_input",
    "refinement_predict",
]

WEIGHTS_FILE = "refinement.pt"


class RefinementNet(nn.Module):
    """Paper B's enhancement network; ``forward`` returns logits (N, 1, H, W).

    The sigmoid is applied by :meth:`probability` (and by BCE-with-logits in
    training, which is the same loss, computed stably).
    """

    def __init__(self, in_channels: int = 4, features: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(features, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the refined foreground."""
        return self.body(x)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Refined foreground probability (sigmoid of the logits)."""
        return torch.sigmoid(self.forward(x))


def refinement_input(image: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """(4, H, W) float32 network input: RGB scaled to 0..1 and the first-stage probability."""
    img = np.asarray(image, dtype=np.float32) / 255.0
    prob = np.asarray(probability, dtype=np.float32)
    if prob.shape != img.shape[:2]:
        raise ValueError(f"probability shape {prob.shape} != image shape {img.shape[:2]}")
    return np.concatenate([img.transpose(2, 0, 1), prob[None]], axis=0)


def refinement_predict(
    net: RefinementNet, image: np.ndarray, probability: np.ndarray, *, device: str = "cpu"
) -> np.ndarray:
    """Refined foreground probability (H, W) float32 of one image."""
    x = torch.from_numpy(refinement_input(image, probability))[None].to(device)
    net.eval()
    with torch.inference_mode():
        out = net.probability(x)
    return out[0, 0].float().cpu().numpy()


def instances_crop(instances: Sequence[Instance], foreground: np.ndarray, *, min_area: int = 15) -> list[Instance]:
    """Instances cut to ``foreground`` (bool (H, W)); those left under ``min_area`` dropped."""
    fg = np.asarray(foreground, dtype=bool)
    height, width = fg.shape
    out: list[Instance] = []
    for inst in instances:
        h, w = inst.mask.shape
        ys0, xs0 = max(inst.y0, 0), max(inst.x0, 0)
        ys1, xs1 = min(inst.y0 + h, height), min(inst.x0 + w, width)
        if ys1 <= ys0 or xs1 <= xs0:
            continue
        mask = inst.mask[ys0 - inst.y0 : ys1 - inst.y0, xs0 - inst.x0 : xs1 - inst.x0]
        kept = mask & fg[ys0:ys1, xs0:xs1]
        if int(kept.sum()) < max(min_area, 1):
            continue
        rows, cols = np.nonzero(kept)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        out.append(dataclasses.replace(inst, x0=int(xs0 + c0), y0=int(ys0 + r0), mask=kept[r0:r1, c0:c1].copy()))
    return out


class RefinementBackend(SegmentationBackend):
    """Another backend's prediction with its foreground refined by paper B's net."""

    name = "refinement"
    settings_class = RefinementSettings
    config: RefinementSettings

    def __init__(self, *, artifacts: Path | None, settings: Mapping[str, Any], device: str) -> None:
        super().__init__(artifacts=artifacts, settings=settings, device=device)
        # backend_class, not backend_get: backend_get holds its (non-reentrant) lock
        # while constructing this backend
        from cytoseg.backends import backend_class

        cfg = self.config
        if not cfg.base:
            raise BackendError("refinement: settings need 'base' (the wrapped backend)")
        weights = (
            Path(cfg.weights)
            if cfg.weights
            else (self.artifacts / WEIGHTS_FILE if self.artifacts is not None else None)
        )
        if weights is None or not weights.is_file():
            raise BackendError(f"refinement: no weights file ({weights})")
        base_art = (
            Path(cfg.base_artifacts)
            if cfg.base_artifacts
            else (self.artifacts / "base" if self.artifacts is not None else None)
        )
        self.base = backend_class(cfg.base)(artifacts=base_art, settings=dict(cfg.base_settings), device=device)
        self.net = RefinementNet()
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state)
        except Exception as exc:  # a bad file is a configuration error for the caller
            raise BackendError(f"refinement: cannot load {weights}: {exc}") from exc
        self.net.to(device).eval()
        self.threshold = cfg.threshold
        self.min_area = cfg.min_area

    def _first_stage(self, image: np.ndarray) -> tuple[Prediction, np.ndarray, np.ndarray | None]:
        """Base prediction, its foreground probability, and class probabilities if any."""
        both = getattr(self.base, "predict_with_probabilities", None)
        if callable(both):
            pred, probs = both(image)
            return pred, 1.0 - probs[0], probs
        pred = self.base.predict(image)
        h, w = image.shape[:2]
        semantic = pred.semantic
        if semantic is None:
            semantic = semantic_from_instances(pred.instances, height=h, width=w)
        return pred, (semantic > 0).astype(np.float32), None

    def predict(self, image: np.ndarray) -> Prediction:
        """Base prediction with refined foreground, semantic map and cropped instances."""
        img = image_check(image)
        t0 = time.perf_counter()
        base, fg_prob, probs = self._first_stage(img)
        t1 = time.perf_counter()
        refined = refinement_predict(self.net, img, fg_prob, device=self.device) >= self.threshold
        t2 = time.perf_counter()
        h, w = img.shape[:2]
        semantic = base.semantic
        if semantic is None:
            semantic = semantic_from_instances(base.instances, height=h, width=w)
        if probs is not None and probs.shape[0] > 2:
            # newly added foreground pixels get the likelier foreground class
            fg_class = (1 + np.argmax(probs[1:], axis=0)).astype(np.uint8)
        else:
            fg_class = np.ones((h, w), dtype=np.uint8)
        new_semantic = np.where(refined, np.where(semantic > 0, semantic, fg_class), 0)
        instances = instances_crop(base.instances, refined, min_area=self.min_area)
        t3 = time.perf_counter()
        timings = {f"base_{k}": v for k, v in base.timings.items()}
        timings.update({"base": t1 - t0, "refinement": t2 - t1, "crop": t3 - t2})
        return Prediction(instances=instances, semantic=new_semantic.astype(np.uint8), timings=timings)
