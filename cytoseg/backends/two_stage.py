"""Paper A's two-stage model: nnU-Net v2 foreground + Cellpose 3 instances.

nnU-Net's semantic map (0 background / 1 cell / 2 erythrocyte) decides where
cells are; Cellpose separates them into instances. The setting ``combine`` picks
the rule (``cytoseg.backends.combine``): ``"assign"`` keeps nnU-Net's foreground and
classes and splits the cells by Cellpose's flows (and nnU-Net's cell interiors, for a
model with a rim class); ``"filter"``, the first rule, keeps Cellpose's masks, drops
those lying mostly on nnU-Net background, and gives each kept one the majority
nnU-Net class under it (see :func:`two_stage_filter`).

Artifacts: a folder with ``nnunet/`` (an nnU-Net model folder) and ``cellpose/``
(``cellpose.pth`` + ``cellpose.json``) subfolders. Settings:
:class:`cytoseg.backends.settings.TwoStageSettings` (``restrict_masks`` runs
Cellpose's flow dynamics only on nnU-Net foreground dilated by ``restrict_margin``
pixels: less work on sparse fields).

Timings: ``nnunet``, ``cellpose_net``, ``cellpose_masks`` (with ``assign``: the masks and
the combination), ``filter``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from cytoseg.backends.base import (
    BackendError,
    ImageMaps,
    Instance,
    Prediction,
    SegmentationBackend,
    image_check,
)
from cytoseg.backends.combine import AssignParams, combine_assign
from cytoseg.backends.settings import ERYTHROCYTE_MODES, TwoStageSettings

if TYPE_CHECKING:  # the backends import torch: only their types are needed here
    from cytoseg.backends.cellpose import CellposeOutputs
    from cytoseg.backends.nnunet import NnUNetMaps

__all__ = ["TwoStageBackend", "two_stage_filter"]


def two_stage_filter(
    instances: Sequence[Instance],
    semantic: np.ndarray,
    *,
    min_fg_fraction: float = 0.5,
    erythrocytes: str = "label",
    crop_to_foreground: bool = False,
) -> list[Instance]:
    """Combine instances with a semantic map (0 background, 1 cell, 2 erythrocyte).

    An instance is dropped when less than ``min_fg_fraction`` of its pixels (inside
    the image) are foreground; otherwise it takes the majority foreground class
    under it (ties go to 1, the cell). ``erythrocytes="suppress"`` then drops
    class-2 instances, ``"label"`` keeps them with label 2.
    ``crop_to_foreground`` cuts kept masks to the foreground pixels. Pure function.
    """
    if erythrocytes not in ERYTHROCYTE_MODES:
        raise ValueError(f"erythrocytes must be one of {ERYTHROCYTE_MODES}, not {erythrocytes!r}")
    sem = np.asarray(semantic)
    height, width = sem.shape
    out: list[Instance] = []
    for inst in instances:
        h, w = inst.mask.shape
        ys0, xs0 = max(inst.y0, 0), max(inst.x0, 0)
        ys1, xs1 = min(inst.y0 + h, height), min(inst.x0 + w, width)
        if ys1 <= ys0 or xs1 <= xs0:
            continue
        mask = inst.mask[ys0 - inst.y0 : ys1 - inst.y0, xs0 - inst.x0 : xs1 - inst.x0]
        area = int(mask.sum())
        if area == 0:
            continue
        under = sem[ys0:ys1, xs0:xs1][mask]
        n_cell = int(np.count_nonzero(under == 1))
        n_ery = int(np.count_nonzero(under == 2))
        if (n_cell + n_ery) < min_fg_fraction * area:
            continue
        label = 2 if n_ery > n_cell else 1
        if label == 2 and erythrocytes == "suppress":
            continue
        if crop_to_foreground:
            fg = mask & (sem[ys0:ys1, xs0:xs1] > 0)
            rows, cols = np.nonzero(fg)
            if rows.size == 0:
                continue
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            out.append(
                dataclasses.replace(
                    inst,
                    x0=int(xs0 + c0),
                    y0=int(ys0 + r0),
                    mask=fg[r0:r1, c0:c1].copy(),
                    label=label,
                )
            )
        else:
            out.append(dataclasses.replace(inst, label=label))
    return out


class TwoStageBackend(SegmentationBackend):
    """nnU-Net v2 semantic stage, then Cellpose 3 instances filtered by it."""

    name = "two_stage"
    settings_class = TwoStageSettings
    config: TwoStageSettings

    def __init__(self, *, artifacts: Path | None, settings: Mapping[str, Any], device: str) -> None:
        super().__init__(artifacts=artifacts, settings=settings, device=device)
        from cytoseg.backends.cellpose import CellposeBackend
        from cytoseg.backends.nnunet import NnUNetBackend

        cfg = self.config
        art = self.artifacts
        nn_settings = dict(cfg.nnunet)
        nn_settings.setdefault("instances", "none")  # components are not needed here
        if cfg.nnunet_model_folder:
            nn_settings["model_folder"] = cfg.nnunet_model_folder
        cp_settings = dict(cfg.cellpose)
        if cfg.cellpose_model_file:
            cp_settings["model_file"] = cfg.cellpose_model_file
        if art is None and not (nn_settings.get("model_folder") and cp_settings.get("model_file")):
            raise BackendError("two_stage: needs artifacts or both model paths in settings")
        self.nnunet = NnUNetBackend(
            artifacts=art / "nnunet" if art is not None else None,
            settings=nn_settings,
            device=device,
        )
        self.cellpose = CellposeBackend(
            artifacts=art / "cellpose" if art is not None else None,
            settings=cp_settings,
            device=device,
        )
        self.min_fg_fraction = cfg.min_fg_fraction
        self.erythrocytes = cfg.erythrocytes
        self.colour_filter = cfg.colour_filter
        self.crop_to_foreground = cfg.crop_to_foreground
        self.restrict_masks = cfg.restrict_masks
        self.restrict_margin = cfg.restrict_margin
        self.combine_mode = cfg.combine
        self.assign_flow_threshold = cfg.assign_flow_threshold
        self.assign_params = AssignParams(
            grow_radius=cfg.grow_radius,
            new_min_area=cfg.new_min_area,
            new_min_solidity=cfg.new_min_solidity,
            new_max_elongation=cfg.new_max_elongation,
            erythrocyte_radius=cfg.erythrocyte_radius,
        )

    def image_maps(self, maps: NnUNetMaps, outputs: CellposeOutputs) -> ImageMaps:
        """Cellpose's flows and cell probability with nnU-Net's foreground and class map."""
        from cytoseg.backends.nnunet import nnunet_image_maps

        nn = nnunet_image_maps(maps)
        cp = self.cellpose.outputs_maps(outputs)
        cp.foreground, cp.semantic = nn.foreground, nn.semantic
        return cp

    def maps(self, image: np.ndarray) -> ImageMaps:
        """Both networks' maps of ``image``, without the mask reconstruction and combination."""
        img = image_check(image)
        return self.image_maps(self.nnunet.predict_maps(img), self.cellpose.network(img))

    def predict(self, image: np.ndarray) -> Prediction:
        """nnU-Net maps, Cellpose's network, then the combination rule (``combine``)."""
        img = image_check(image)
        t0 = time.perf_counter()
        maps = self.nnunet.predict_maps(img)
        t1 = time.perf_counter()
        outputs = self.cellpose.network(img)
        t2 = time.perf_counter()
        return self._combined(img, maps, outputs, {"nnunet": t1 - t0, "cellpose_net": t2 - t1})

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """:meth:`predict` of several images (the reads of a tiled run): both networks batched
        across them (``NnUNetBackend.predict_maps_batch``, ``CellposeBackend.networks``), then
        each image's combination. Each network's time is shared out evenly in the timings."""
        imgs = [image_check(image) for image in images]
        n = max(1, len(imgs))
        t0 = time.perf_counter()
        maps = self.nnunet.predict_maps_batch(imgs)
        t1 = time.perf_counter()
        outputs = self.cellpose.networks(imgs)
        t2 = time.perf_counter()
        timings = {"nnunet": (t1 - t0) / n, "cellpose_net": (t2 - t1) / n}
        return [self._combined(*parts, timings) for parts in zip(imgs, maps, outputs, strict=True)]

    def _combined(
        self, img: np.ndarray, maps: NnUNetMaps, outputs: CellposeOutputs, timings: dict[str, float]
    ) -> Prediction:
        """The combination rule (``combine``) over both networks' outputs of one image."""
        t2 = time.perf_counter()
        if self.combine_mode == "assign":
            kept = self.assign(img, maps, outputs)
            t3 = time.perf_counter()
            stages = {"cellpose_masks": t3 - t2, "assign": 0.0}
        else:
            region = None
            if self.restrict_masks:
                region = maps.semantic > 0
                if self.restrict_margin > 0:
                    region = ndi.binary_dilation(region, iterations=self.restrict_margin)
            masks = self.cellpose.masks(outputs, foreground=region)
            instances = self.cellpose.instances(masks, outputs)
            t3 = time.perf_counter()
            kept = self.combine(img, instances, maps.semantic)
            t4 = time.perf_counter()
            stages = {"cellpose_masks": t3 - t2, "filter": t4 - t3}
        return Prediction(
            instances=kept,
            semantic=maps.semantic,
            timings={**timings, **stages},
            maps=self.image_maps(maps, outputs),
        )

    def assign(self, image: np.ndarray, maps: NnUNetMaps, outputs: CellposeOutputs) -> list[Instance]:
        """The ``"assign"`` rule: Cellpose's flows followed inside nnU-Net's cell foreground,
        then :func:`cytoseg.backends.combine.combine_assign` (and the colour filter, if on)."""
        masks = self.cellpose.masks(outputs, foreground=maps.semantic == 1, flow_threshold=self.assign_flow_threshold)
        kept = combine_assign(
            masks,
            maps.semantic,
            cell_probability=maps.probabilities[1],
            boundary=maps.boundary,
            core=maps.core,
            params=self.assign_params,
        )
        return self._finish(image, kept)

    def combine(self, image: np.ndarray, instances: Sequence[Instance], semantic: np.ndarray) -> list[Instance]:
        """Apply the two-stage filter (and the optional colour filter) to instances."""
        kept = two_stage_filter(
            instances,
            semantic,
            min_fg_fraction=self.min_fg_fraction,
            erythrocytes="label",
            crop_to_foreground=self.crop_to_foreground,
        )
        return self._finish(image, kept)

    def _finish(self, image: np.ndarray, kept: list[Instance]) -> list[Instance]:
        if self.colour_filter and kept:
            # lazy: a module of another author, only needed when the option is on
            from cytoseg.backends.colour_filter import colour_filter_labels

            colour = colour_filter_labels(image, kept)
            kept = [
                dataclasses.replace(inst, label=2) if c == 2 else inst for inst, c in zip(kept, colour, strict=True)
            ]
        if self.erythrocytes == "suppress":
            kept = [inst for inst in kept if inst.label != 2]
        return kept
