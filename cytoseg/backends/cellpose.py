"""Cellpose 3 instance backend (paper A, stage 2), Django-free.

Loads a Cellpose 3 model file once (``CellposeModel(pretrained_model=<file>)``)
and splits prediction into the network pass (flows + cell probability) and the
mask reconstruction (``dynamics.resize_and_compute_masks``: pixels follow the
flows, pixels converging together form a cell), timed separately. The
``two_stage`` backend reuses both halves to restrict reconstruction to nnU-Net's
foreground.

Artifacts: a folder with ``cellpose.pth`` (and ``cellpose.json``, written by
``cytoseg.trainers.cellpose``), or one with a ``cellpose/`` subfolder holding
them. Settings: :class:`cytoseg.backends.settings.CellposeSettings`; ``bsize`` 0
runs the whole (rescaled) image as one tile.

Scores are the mean cell probability (sigmoid of Cellpose's logit) over each mask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from cytoseg.backends.base import (
    BackendError,
    ImageMaps,
    Instance,
    Prediction,
    SegmentationBackend,
    image_check,
    instances_from_label_map,
)
from cytoseg.backends.settings import CellposeSettings

__all__ = ["CellposeBackend", "CellposeOutputs", "cellpose_model_file_find"]

MODEL_FILE = "cellpose.pth"
META_FILE = "cellpose.json"
_FIRST_NORM_KEY = "downsample.down.res_down_0.conv.conv_0.0.weight"


def cellpose_model_file_find(artifacts: Path | None, settings: Mapping[str, Any]) -> Path:
    """The Cellpose model file named by settings or found in ``artifacts``."""
    explicit = settings.get("model_file")
    candidates = [Path(explicit)] if explicit else []
    if artifacts is not None:
        art = Path(artifacts)
        candidates += [art / MODEL_FILE, art / "cellpose" / MODEL_FILE]
        if art.is_file():
            candidates.insert(0, art)
    for path in candidates:
        if path.is_file():
            return path
    raise BackendError("cellpose: no model file in " + (", ".join(str(c) for c in candidates) or "<none>"))


class CellposeOutputs:
    """Network outputs of one image: flows ``dP`` (2, H, W), ``cellprob`` logits (H, W)."""

    __slots__ = ("cellprob", "dP", "rescale")

    def __init__(self, dP: np.ndarray, cellprob: np.ndarray, rescale: float) -> None:
        self.dP = dP
        self.cellprob = cellprob
        self.rescale = rescale


class CellposeBackend(SegmentationBackend):
    """Cellpose 3 model: instance masks from flow dynamics."""

    name = "cellpose"
    settings_class = CellposeSettings
    config: CellposeSettings

    def __init__(self, *, artifacts: Path | None, settings: Mapping[str, Any], device: str) -> None:
        super().__init__(artifacts=artifacts, settings=settings, device=device)
        from cellpose import models  # heavy; imported when a worker needs the backend

        cfg = self.config
        self.model_file = cellpose_model_file_find(self.artifacts, {"model_file": cfg.model_file})
        meta_path = self.model_file.with_name(META_FILE)
        meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        try:
            state = torch.load(self.model_file, map_location="cpu", weights_only=True)
            nchan = int(state[_FIRST_NORM_KEY].shape[0])
        except Exception as exc:  # any unreadable file is a configuration error here
            raise BackendError(f"cellpose: {self.model_file} is not a Cellpose 3 model: {exc}") from exc
        channels = cfg.channels if "channels" in self.settings else meta.get("channels", None if nchan == 3 else [0, 0])
        self.channels: list[int] | None = [int(c) for c in channels] if channels is not None else None
        if (self.channels is None) != (nchan == 3):
            raise BackendError(f"cellpose: channels {self.channels} do not fit a model with {nchan} input channels")
        self.torch_device = torch.device(device)
        self.model = models.CellposeModel(
            gpu=self.torch_device.type == "cuda",
            pretrained_model=str(self.model_file),
            device=self.torch_device,
            nchan=nchan,
        )
        self.diam_mean = float(self.model.diam_mean)
        self.diam_labels = float(self.model.diam_labels)
        self.diameter = (cfg.diameter or self.diam_labels) * cfg.diameter_scale
        self.flow_threshold = cfg.flow_threshold
        self.cellprob_threshold = cfg.cellprob_threshold
        self.min_size = cfg.min_size
        self.max_size_fraction = cfg.max_size_fraction
        self.niter = cfg.niter
        self.batch_size = cfg.batch_size
        self.tile_overlap = cfg.tile_overlap
        self.bsize = cfg.bsize
        self.augment = cfg.augment
        self.label = cfg.label

    def network(self, image: np.ndarray) -> CellposeOutputs:
        """Run the network: flows and cell-probability logits at the image's size."""
        img = image_check(image)
        rescale = self.diam_mean / self.diameter
        bsize = self.bsize or 16 * -(-round(max(img.shape[:2]) * rescale) // 16)
        _, flows, _ = self.model.eval(
            img,
            batch_size=self.batch_size,
            channels=self.channels,
            channel_axis=2,
            normalize=True,
            diameter=self.diameter,
            augment=self.augment,
            tile_overlap=self.tile_overlap,
            bsize=bsize,
            resample=True,
            compute_masks=False,
        )
        return CellposeOutputs(
            np.asarray(flows[1], dtype=np.float32),
            np.asarray(flows[2], dtype=np.float32),
            rescale,
        )

    def masks(
        self, outputs: CellposeOutputs, *, foreground: np.ndarray | None = None, flow_threshold: float | None = None
    ) -> np.ndarray:
        """Reconstruct the (H, W) instance label map from the network outputs.

        With ``foreground`` (bool (H, W)), pixels outside it are excluded from the
        flow dynamics, which skips work on background and keeps masks inside it.
        ``flow_threshold`` overrides the setting for this call.
        """
        from cellpose import dynamics

        cellprob = outputs.cellprob
        if foreground is not None:
            cellprob = np.where(foreground, cellprob, np.float32(self.cellprob_threshold - 10.0))
        # Cellpose's default: 200 iterations at the network's scale
        niter = self.niter or round(200 / outputs.rescale)
        masks = dynamics.resize_and_compute_masks(
            outputs.dP,
            cellprob,
            niter=niter,
            cellprob_threshold=self.cellprob_threshold,
            flow_threshold=self.flow_threshold if flow_threshold is None else flow_threshold,
            interp=True,
            min_size=self.min_size,
            max_size_fraction=self.max_size_fraction,
            resize=None,
            device=self.torch_device,
        )
        return np.asarray(masks).astype(np.int32)

    def instances(self, masks: np.ndarray, outputs: CellposeOutputs) -> list[Instance]:
        """Cut a label map into instances scored by mean cell probability."""
        ids = np.unique(masks)
        ids = ids[ids > 0]
        if ids.size == 0:
            return []
        prob = 1.0 / (1.0 + np.exp(-outputs.cellprob.astype(np.float64)))
        means = ndi.mean(prob, labels=masks, index=ids)
        scores = {int(k): float(v) for k, v in zip(ids, means, strict=True)}
        labels = {int(k): self.label for k in ids}
        return instances_from_label_map(masks, labels=labels, scores=scores)

    def outputs_maps(self, outputs: CellposeOutputs) -> ImageMaps:
        """The network outputs as interactive maps (flows, cell probability, threshold, diameter)."""
        height, width = outputs.cellprob.shape
        return ImageMaps(
            height=height,
            width=width,
            flows=outputs.dP,
            cellprob=outputs.cellprob,
            cellprob_threshold=self.cellprob_threshold,
            diameter=self.diameter,
            label=self.label,
        )

    def maps(self, image: np.ndarray) -> ImageMaps:
        """Flows and cell probability of ``image`` (the network pass only)."""
        return self.outputs_maps(self.network(image))

    def predict(self, image: np.ndarray) -> Prediction:
        """Instances of ``image`` (label ``label``), no semantic map."""
        t0 = time.perf_counter()
        outputs = self.network(image)
        t1 = time.perf_counter()
        masks = self.masks(outputs)
        t2 = time.perf_counter()
        instances = self.instances(masks, outputs)
        t3 = time.perf_counter()
        return Prediction(
            instances=instances,
            semantic=None,
            timings={"cellpose_net": t1 - t0, "cellpose_masks": t2 - t1, "instances": t3 - t2},
            maps=self.outputs_maps(outputs),
        )
