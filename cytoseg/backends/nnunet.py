"""nnU-Net v2 semantic backend (paper A, stage 1), Django-free.

Loads a trained model folder once (``plans.json``, ``dataset.json``,
``fold_<f>/checkpoint_final.pth``, as written by
``cytoseg.trainers.nnunet.nnunet_train``) and predicts in-process with
``nnUNetPredictor.predict_single_npy_array`` (no worker processes, so it runs in
Celery prefork children). nnU-Net is a semantic model: its instances here are the
connected components of each class, so touching cells merge into one instance;
the ``two_stage`` backend separates them with Cellpose.

Artifacts: the model folder itself, or a folder with an ``nnunet/`` subfolder
holding it. Settings: :class:`cytoseg.backends.settings.NnUNetSettings`.

Loading never hands a file to an unpickling (not weights-only) ``torch.load``: nnU-Net's own
``initialize_from_trained_model_folder`` does, so this backend reads the checkpoints
itself (:func:`cytoseg.backends.packages.nnunet_checkpoint_load`, weights-only),
checks the class names in ``plans.json`` against an allow-list, builds the network
and hands both to ``nnUNetPredictor.manual_initialization``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
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
)
from cytoseg.backends.combine import combine_assign
from cytoseg.backends.packages import PackageError, nnunet_checkpoint_load, nnunet_plans_check
from cytoseg.backends.settings import NnUNetSettings

__all__ = [
    "NnUNetBackend",
    "NnUNetMaps",
    "components_to_instances",
    "folds_available",
    "nnunet_image_maps",
    "nnunet_model_folder_find",
    "nnunet_network_load",
    "nnunet_seeded_instances",
]

# natural 2D images: nnU-Net's NaturalImage2DIO reports this spacing (a dummy z axis)
_SPACING = {"spacing": (999.0, 1.0, 1.0)}


def nnunet_model_folder_find(artifacts: Path | None, settings: Mapping[str, Any]) -> Path:
    """The nnU-Net model folder named by settings or found in ``artifacts``."""
    explicit = settings.get("model_folder")
    candidates = [Path(explicit)] if explicit else []
    if artifacts is not None:
        candidates += [Path(artifacts), Path(artifacts) / "nnunet"]
    for folder in candidates:
        if (folder / "plans.json").is_file() and (folder / "dataset.json").is_file():
            return folder
    raise BackendError(
        "nnunet: no model folder (plans.json + dataset.json) in "
        + (", ".join(str(c) for c in candidates) or "<no artifacts>")
    )


def nnunet_network_load(model_folder: Path, folds: tuple[int | str, ...], checkpoint: str) -> dict[str, Any]:
    """Read an nnU-Net model folder safely; the arguments of ``manual_initialization``.

    ``plans.json`` and ``dataset.json`` are checked against the allow-lists of
    :func:`~cytoseg.backends.packages.nnunet_plans_check` before nnU-Net resolves any
    name in them, and every fold's checkpoint is loaded weights-only. The network is
    built as ``nnUNetTrainer`` builds it (every trainer accepted shares that
    architecture; a checkpoint of another one fails to load its weights).
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(model_folder)
    try:
        plans = json.loads((folder / "plans.json").read_text())
        dataset = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackendError(f"nnunet: cannot read {folder}: {exc}") from exc
    nnunet_plans_check(plans, dataset)
    loaded = [
        nnunet_checkpoint_load(folder / f"fold_{f}" / checkpoint, plans=plans, relative=f"fold_{f}/{checkpoint}")
        for f in folds
    ]
    first = loaded[0]
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(first["configuration"])
    n_in = determine_num_input_channels(plans_manager, configuration_manager, dataset)
    n_out = plans_manager.get_label_manager(dataset).num_segmentation_heads
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, n_in, n_out, enable_deep_supervision=False
    )
    parameters = [c["network_weights"] for c in loaded]
    try:
        network.load_state_dict(parameters[0])
    except RuntimeError as exc:
        raise PackageError(
            f"the weights do not fit the network of plans.json: {exc}", file=f"fold_{folds[0]}/{checkpoint}"
        ) from exc
    return {
        "network": network,
        "plans_manager": plans_manager,
        "configuration_manager": configuration_manager,
        "parameters": parameters,
        "dataset_json": dataset,
        "trainer_name": first["trainer_name"],
        "inference_allowed_mirroring_axes": first["inference_allowed_mirroring_axes"],
    }


def folds_available(model_folder: Path, checkpoint: str) -> list[int | str]:
    """Folds with a checkpoint: numbered ones, else ``"all"``.

    nnUNetPredictor's own auto-detection skips ``fold_all``, the only fold of a
    model trained without a validation split.
    """
    numbered: list[int | str] = []
    for sub in sorted(Path(model_folder).glob("fold_*")):
        suffix = sub.name[len("fold_") :]
        if suffix.isdigit() and (sub / checkpoint).is_file():
            numbered.append(int(suffix))
    if numbered:
        return numbered
    return ["all"] if (Path(model_folder) / "fold_all" / checkpoint).is_file() else []


def components_to_instances(
    semantic: np.ndarray,
    probabilities: np.ndarray | None = None,
    *,
    min_area: int = 15,
    labels: tuple[int, ...] = (1, 2),
) -> list[Instance]:
    """Connected components (4-connectivity) of each class of a semantic map.

    The score of a component is the mean probability of its class over its pixels
    (1.0 without ``probabilities``, a (C, H, W) softmax map).
    """
    out: list[Instance] = []
    for label in labels:
        comp, n = ndi.label(semantic == label)
        if n == 0:
            continue
        for idx, sl in enumerate(ndi.find_objects(comp), start=1):
            if sl is None:
                continue
            crop = comp[sl] == idx
            area = int(crop.sum())
            if area < min_area:
                continue
            score = 1.0
            if probabilities is not None:
                score = float(probabilities[label][sl][crop].mean())
            out.append(
                Instance(
                    x0=int(sl[1].start),
                    y0=int(sl[0].start),
                    mask=crop,
                    label=int(label),
                    score=float(np.clip(score, 0.0, 1.0)),
                )
            )
    return out


@dataclass
class NnUNetMaps:
    """One network run: ``semantic`` (H, W) 0/1/2, ``probabilities`` (3, H, W), and ``boundary``
    (rim) or ``core`` probability (H, W) for a model with that class, else None."""

    semantic: np.ndarray
    probabilities: np.ndarray
    boundary: np.ndarray | None = None
    core: np.ndarray | None = None


def nnunet_image_maps(maps: NnUNetMaps) -> ImageMaps:
    """nnU-Net's maps for interactive segmentation: the probability of any foreground class
    (erythrocytes are clicked too; the class map names them) and the class map."""
    height, width = maps.semantic.shape
    return ImageMaps(
        height=height,
        width=width,
        foreground=1.0 - maps.probabilities[0],
        semantic=maps.semantic,
    )


def nnunet_seeded_instances(maps: NnUNetMaps) -> list[Instance]:
    """Instances of nnU-Net alone from its seed class (core or rim): the two-stage ``assign``
    rule without Cellpose (``cytoseg.backends.combine``)."""
    return combine_assign(
        np.zeros(maps.semantic.shape, dtype=np.int32),
        maps.semantic,
        cell_probability=maps.probabilities[1],
        boundary=maps.boundary,
        core=maps.core,
    )


class NnUNetBackend(SegmentationBackend):
    """nnU-Net v2 2D model: semantic map 0/1/2 plus per-class connected components."""

    name = "nnunet"
    settings_class = NnUNetSettings
    config: NnUNetSettings

    def __init__(self, *, artifacts: Path | None, settings: Mapping[str, Any], device: str) -> None:
        super().__init__(artifacts=artifacts, settings=settings, device=device)
        # imported here: nnunetv2 is heavy and only workers that use the backend need it
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        cfg = self.config
        self.model_folder = nnunet_model_folder_find(self.artifacts, {"model_folder": cfg.model_folder})
        torch_device = torch.device(device)
        on_device = cfg.perform_everything_on_device and torch_device.type == "cuda"
        self.predictor = nnUNetPredictor(
            tile_step_size=cfg.tile_step_size,
            use_gaussian=cfg.use_gaussian,
            use_mirroring=cfg.use_mirroring,
            perform_everything_on_device=on_device,
            device=torch_device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        folds = cfg.folds or tuple(folds_available(self.model_folder, cfg.checkpoint))
        if not folds:
            raise BackendError(f"nnunet: no fold_*/{cfg.checkpoint} in {self.model_folder}")
        try:
            self.predictor.manual_initialization(**nnunet_network_load(self.model_folder, folds, cfg.checkpoint))
        except BackendError:
            raise
        except (OSError, RuntimeError, KeyError) as exc:
            raise BackendError(f"nnunet: cannot load {self.model_folder}: {exc}") from exc
        self.instances_mode = cfg.instances
        self.min_instance_area = cfg.min_instance_area
        labels = json.loads((self.model_folder / "dataset.json").read_text()).get("labels", {})
        # A model trained with a fourth class that tells cells apart (cytoseg.datasets):
        # their rim ("boundary") or their core ("core"); both are parts of the cell class.
        self.boundary_label: int | None = labels.get("boundary")
        self.core_label: int | None = labels.get("core")

    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """Softmax map (3, H, W) float32 (background, cell, erythrocyte) of an (H, W, 3) uint8
        RGB image; a cell-rim class, where the model has one, is counted as cell."""
        return self.predict_maps(image).probabilities

    def predict_maps(self, image: np.ndarray) -> NnUNetMaps:
        """Semantic map (0/1/2), class probabilities (3, H, W) and, for a model with a cell-rim
        or cell-core class, that class's probability (H, W), from one network run."""
        img = image_check(image)
        # (C, 1, H, W): the layout NaturalImage2DIO gives nnU-Net for RGB PNGs
        data = np.ascontiguousarray(img.transpose(2, 0, 1)[:, None].astype(np.float32))
        seg, raw = self.predictor.predict_single_npy_array(data, dict(_SPACING), None, None, True)
        semantic = np.asarray(seg)[0].astype(np.uint8)
        probs = np.asarray(raw, dtype=np.float32)[:, 0]
        extra: dict[str, np.ndarray | None] = {"boundary": None, "core": None}
        for name, label in (("boundary", self.boundary_label), ("core", self.core_label)):
            if label is not None:
                extra[name] = probs[label].copy()
                semantic[semantic == label] = 1
        if extra["boundary"] is not None or extra["core"] is not None:
            merged = probs[:3].copy()
            for part in extra.values():
                if part is not None:
                    merged[1] += part
            probs = merged
        return NnUNetMaps(semantic=semantic, probabilities=probs, boundary=extra["boundary"], core=extra["core"])

    def maps(self, image: np.ndarray) -> ImageMaps:
        """Foreground probability (1 - P(background)) and class map of ``image``."""
        return nnunet_image_maps(self.predict_maps(image))

    def _run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = self.predict_maps(image)
        return maps.semantic, maps.probabilities

    def predict_with_probabilities(self, image: np.ndarray) -> tuple[Prediction, np.ndarray]:
        """:meth:`predict` and the softmax map from a single network run."""
        t0 = time.perf_counter()
        maps = self.predict_maps(image)
        semantic, probs = maps.semantic, maps.probabilities
        t1 = time.perf_counter()
        instances: list[Instance] = []
        if self.instances_mode == "seeds" and (maps.core is not None or maps.boundary is not None):
            instances = nnunet_seeded_instances(maps)
        elif self.instances_mode in ("components", "seeds"):
            instances = components_to_instances(semantic, probs, min_area=self.min_instance_area)
        t2 = time.perf_counter()
        timings = {"nnunet": t1 - t0, "components": t2 - t1}
        prediction = Prediction(instances=instances, semantic=semantic, timings=timings, maps=nnunet_image_maps(maps))
        return prediction, probs

    def predict(self, image: np.ndarray) -> Prediction:
        """Semantic map and connected-component instances of ``image``."""
        return self.predict_with_probabilities(image)[0]
