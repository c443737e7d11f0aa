"""Cellpose 3 instance backend (paper A, stage 2), Django-free.

Loads a Cellpose 3 model file once (``CellposeModel(pretrained_model=<file>)``)
and splits prediction into the network pass (flows + cell probability) and the
mask reconstruction (``dynamics.resize_and_compute_masks``: pixels follow the
flows, pixels converging together form a cell), timed separately. The
``two_stage`` backend reuses both halves to restrict reconstruction to nnU-Net's
foreground. Several images at once (``predict_batch``, a tiled run's reads) share the network's
passes (:meth:`CellposeBackend.networks`), then each gets its own masks.

Artifacts: a folder with ``cellpose.pth`` (and ``cellpose.json``, written by
``cytoseg.trainers.cellpose``), or one with a ``cellpose/`` subfolder holding
them. Settings: :class:`cytoseg.backends.settings.CellposeSettings`; ``bsize`` 0
runs the whole (rescaled) image as one tile.

Scores are the mean cell probability (sigmoid of Cellpose's logit) over each mask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _TilePlan:
    """Where one image's network tiles lie in its shape's stack, and how to undo the tiling."""

    shape: tuple[int, int]  # network tile (ly, lx)
    first: int  # index of its first tile in the stack of that shape
    count: int
    grid: tuple[int, int]  # tiles (ny, nx)
    ysub: list[list[int]]
    xsub: list[list[int]]
    tiled: tuple[int, int]  # (Ly, Lx) that make_tiles tiled
    padded: tuple[int, int]  # the padded, rescaled image
    pads: tuple[int, int, int, int]
    size: tuple[int, int]  # the image's own (H, W)


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

    def networks(self, images: Sequence[np.ndarray]) -> list[CellposeOutputs]:
        """:meth:`network` of several images, their network tiles run in shared batches.

        Each image is prepared as Cellpose's ``eval`` prepares it (channels, percentile
        normalisation, rescaling to the model's diameter, padding, overlapping tiles of
        ``bsize``); the tiles of every image that have one shape are then stacked and run through
        the network ``batch_size`` at a time, so a few reads fill a GPU batch where each alone
        would leave its last batch part empty. On the device the tiles go up in one copy per
        shape and the outputs come back in one, with no host synchronisation per batch. The tiles'
        outputs are averaged back per image as in ``cellpose.core.run_net``; an image's result
        equals :meth:`network`'s up to the float rounding of a batched convolution.
        """
        from cellpose import transforms
        from cellpose.models import normalize_default

        rescale = self.diam_mean / self.diameter
        rsz = rescale if rescale != 1.0 else None
        normalize = {**normalize_default, "normalize": True, "invert": False}
        plans: list[_TilePlan] = []
        groups: dict[tuple[int, int], list[np.ndarray]] = {}
        for image in images:
            img = image_check(image)
            bsize = self.bsize or 16 * -(-round(max(img.shape[:2]) * rescale) // 16)
            x = transforms.convert_image(img, self.channels, channel_axis=2, nchan=self.model.nchan)
            x = transforms.normalize_img(np.asarray(x[np.newaxis]), **normalize)[0]
            height, width = x.shape[:2]
            if rsz is not None:
                x = transforms.resize_image(x, rsz=rsz)
            ypad1, ypad2, xpad1, xpad2 = transforms.get_pad_yx(x.shape[0], x.shape[1])
            padded = np.pad(x.transpose(2, 0, 1), [[0, 0], [ypad1, ypad2], [xpad1, xpad2]], mode="constant")
            tiles, ysub, xsub, lyt, lxt = transforms.make_tiles(
                padded, bsize=bsize, augment=self.augment, tile_overlap=self.tile_overlap
            )
            ny, nx, nchan, ly, lx = tiles.shape
            group = groups.setdefault((ly, lx), [])
            plans.append(
                _TilePlan(
                    shape=(ly, lx), first=sum(len(t) for t in group), count=ny * nx, grid=(ny, nx),
                    ysub=ysub, xsub=xsub, tiled=(lyt, lxt), padded=(padded.shape[1], padded.shape[2]),
                    pads=(ypad1, ypad2, xpad1, xpad2), size=(height, width),
                )
            )  # fmt: skip
            group.append(tiles.reshape(ny * nx, nchan, ly, lx))
        outputs = {shape: self._forward(np.concatenate(tiles)) for shape, tiles in groups.items()}
        out = []
        for plan in plans:
            y = outputs[plan.shape][plan.first : plan.first + plan.count]
            if self.augment:
                y = transforms.unaugment_tiles(y.reshape(*plan.grid, *y.shape[1:])).reshape(y.shape)
            averaged = transforms.average_tiles(y, plan.ysub, plan.xsub, *plan.tiled)
            ypad1, ypad2, xpad1, xpad2 = plan.pads
            lyp, lxp = plan.padded
            yf = averaged[:, :lyp, :lxp][:, ypad1 : lyp - ypad2, xpad1 : lxp - xpad2]
            yf = yf.transpose(1, 2, 0)[np.newaxis]
            if rsz is not None:  # back to the image's size, as eval's resample
                yf = transforms.resize_image(yf, *plan.size)
            out.append(
                CellposeOutputs(
                    np.ascontiguousarray(yf[0, :, :, :2].transpose(2, 0, 1), dtype=np.float32),
                    np.ascontiguousarray(yf[0, :, :, 2], dtype=np.float32),
                    rescale,
                )
            )
        return out

    def _forward(self, tiles: np.ndarray) -> np.ndarray:
        """The network's flows and cell probability (N, 3, ly, lx) of network tiles (N, nchan,
        ly, lx), ``batch_size`` at a time: one copy to the device and one back."""
        from torch.utils import mkldnn as mkldnn_utils

        net = self.model.net
        net.eval()
        if net.mkldnn:  # as cellpose.core._forward, but converted once per call
            net = mkldnn_utils.to_mkldnn(net)
        with torch.no_grad():
            x = torch.from_numpy(tiles).to(self.torch_device, dtype=torch.float32)
            parts = [net(x[j : j + self.batch_size])[0] for j in range(0, x.shape[0], self.batch_size)]
            y = torch.cat(parts) if len(parts) > 1 else parts[0]
            result: np.ndarray = y.cpu().numpy()
        return result

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

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """:meth:`predict` of several images (the reads of a tiled run): the network tiles of all
        of them in shared batches (:meth:`networks`), then each image's masks. The network's time
        is shared out evenly in the timings."""
        t0 = time.perf_counter()
        batch = self.networks(images)
        net_s = (time.perf_counter() - t0) / max(1, len(batch))
        out = []
        for outputs in batch:
            t1 = time.perf_counter()
            masks = self.masks(outputs)
            t2 = time.perf_counter()
            instances = self.instances(masks, outputs)
            t3 = time.perf_counter()
            out.append(
                Prediction(
                    instances=instances,
                    semantic=None,
                    timings={"cellpose_net": net_s, "cellpose_masks": t2 - t1, "instances": t3 - t2},
                    maps=self.outputs_maps(outputs),
                )
            )
        return out

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
