"""nnU-Net v2 semantic backend (paper A, stage 1), Django-free.

Loads a trained model folder once (``plans.json``, ``dataset.json``,
``fold_<f>/checkpoint_final.pth``, as written by
``cytoseg.trainers.nnunet.nnunet_train``) and predicts in-process with
``nnUNetPredictor.predict_single_npy_array`` (no worker processes, so it runs in
Celery prefork children); several images at once (``predict_batch``, a tiled run's reads) go
through :func:`nnunet_logits_batch`, nnU-Net's sliding window with the patches of all of them in
shared network passes. nnU-Net is a semantic model: its instances here are the
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
    "nnunet_logits_batch",
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


def _nnunet_input(image: np.ndarray) -> np.ndarray:
    """(C, 1, H, W) float32: the layout NaturalImage2DIO gives nnU-Net for an RGB PNG."""
    img = image_check(image)
    return np.ascontiguousarray(img.transpose(2, 0, 1)[:, None].astype(np.float32))


def nnunet_logits_batch(predictor: Any, datas: Sequence[torch.Tensor], *, batch_size: int) -> list[torch.Tensor]:
    """nnU-Net's logits (on the CPU) of several preprocessed images (C, 1, H, W), their
    sliding-window patches run through the network ``batch_size`` at a time.

    This is ``nnUNetPredictor.predict_logits_from_preprocessed_data`` (nnunetv2 2.8, the
    version ``cytoseg.backends.packages`` pins) for a list of images: every fold's weights in
    turn, the folds' logits averaged; per fold each image padded to the patch size, its patches
    laid out by the predictor's own slicers, every patch (mirrored where the predictor mirrors)
    weighted by the same Gaussian and added into its image's half-precision sum in the
    predictor's order. Only the network passes differ: a batch of patches from any of the images
    instead of one patch. On a GPU the images, the sums and the patches stay on the device
    (``perform_everything_on_device``; on an out-of-memory error the sums move to the host, as
    nnU-Net does), under autocast as nnU-Net runs it, and the host waits for the device once
    per fold, not once per patch.
    """
    from nnunetv2.configuration import default_num_processes
    from torch._dynamo import OptimizedModule

    threads = torch.get_num_threads()
    torch.set_num_threads(min(default_num_processes, threads))
    try:
        summed: list[torch.Tensor] | None = None
        for params in predictor.list_of_parameters:
            network = predictor.network
            (network._orig_mod if isinstance(network, OptimizedModule) else network).load_state_dict(params)
            fold = _logits_fold(predictor, datas, batch_size)
            if summed is None:
                summed = fold
            else:
                for total, part in zip(summed, fold, strict=True):
                    total += part
        assert summed is not None  # the predictor has at least one fold
        if len(predictor.list_of_parameters) > 1:
            for total in summed:
                total /= len(predictor.list_of_parameters)
        return summed
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def _logits_fold(predictor: Any, datas: Sequence[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """One fold's logits of every image (``predict_sliding_window_return_logits`` for a list)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.utilities.helpers import dummy_context, empty_cache

    device = predictor.device
    predictor.network = predictor.network.to(device)
    predictor.network.eval()
    empty_cache(device)
    patch = predictor.configuration_manager.patch_size
    padded, reverts, slicers = [], [], []
    for data in datas:
        data_padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        padded.append(data_padded)
        reverts.append(revert)
        slicers.append(predictor._internal_get_sliding_window_slicers(data_padded.shape[1:]))
    with torch.autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context():
        if predictor.perform_everything_on_device and device.type != "cpu":
            try:
                logits = _windows(predictor, padded, slicers, batch_size, on_device=True)
            except RuntimeError:  # out of device memory: the sums on the host, as nnU-Net falls back
                empty_cache(device)
                logits = _windows(predictor, padded, slicers, batch_size, on_device=False)
        else:
            logits = _windows(predictor, padded, slicers, batch_size, on_device=False)
        empty_cache(device)
    return [lg[(slice(None), *revert[1:])].to("cpu") for lg, revert in zip(logits, reverts, strict=True)]


def _windows(
    predictor: Any, datas: Sequence[torch.Tensor], slicers: Sequence[list[Any]], batch_size: int, *, on_device: bool
) -> list[torch.Tensor]:
    """The Gaussian-weighted mean of every patch's logits, per image (half precision)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    device = predictor.device
    results_device = device if on_device else torch.device("cpu")
    images = [d.to(results_device) for d in datas]
    heads = predictor.label_manager.num_segmentation_heads
    sums = [torch.zeros((heads, *d.shape[1:]), dtype=torch.half, device=results_device) for d in images]
    counts = [torch.zeros(d.shape[1:], dtype=torch.half, device=results_device) for d in images]
    gaussian: torch.Tensor | int = 1
    if predictor.use_gaussian:
        patch = tuple(predictor.configuration_manager.patch_size)
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=results_device)
    work = [(i, sl) for i, image_slicers in enumerate(slicers) for sl in image_slicers]
    for start in range(0, len(work), batch_size):
        chunk = work[start : start + batch_size]
        x = torch.stack([images[i][sl] for i, sl in chunk]).to(device)
        predictions = predictor._internal_maybe_mirror_and_predict(x).to(results_device)
        for prediction, (i, sl) in zip(predictions, chunk, strict=True):
            if predictor.use_gaussian:
                prediction *= gaussian
            sums[i][sl] += prediction
            counts[i][sl[1:]] += gaussian
    for total, count in zip(sums, counts, strict=True):
        torch.div(total, count, out=total)
    # one check (one wait for the device) for all the images
    if sums and bool(torch.stack([torch.isinf(total).any() for total in sums]).any()):
        raise RuntimeError("nnunet: inf in the predicted logits (the half-precision sum overflowed)")
    return sums


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
        self.batch_size = cfg.batch_size
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
        seg, raw = self.predictor.predict_single_npy_array(_nnunet_input(image), dict(_SPACING), None, None, True)
        return self._maps_from(seg, raw)

    def predict_maps_batch(self, images: Sequence[np.ndarray]) -> list[NnUNetMaps]:
        """:meth:`predict_maps` of several images from shared network passes: each image is
        preprocessed by the model's own preprocessor, the sliding-window patches of all of them
        run through the network ``batch_size`` at a time (:func:`nnunet_logits_batch`), and each
        image's logits are resampled back as nnU-Net does. Equal to :meth:`predict_maps` up to
        the float rounding of a batched convolution."""
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape as logits_to_segmentation,
        )

        p = self.predictor
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        datas, properties = [], []
        for image in images:
            data, _, props = preprocessor.run_case_npy(
                _nnunet_input(image), None, dict(_SPACING), p.plans_manager, p.configuration_manager, p.dataset_json
            )
            datas.append(torch.from_numpy(data))
            properties.append(props)
        out = []
        for logits, props in zip(nnunet_logits_batch(p, datas, batch_size=self.batch_size), properties, strict=True):
            seg, raw = logits_to_segmentation(
                logits, p.plans_manager, p.configuration_manager, p.label_manager, props, return_probabilities=True
            )
            out.append(self._maps_from(seg, raw))
        return out

    def _maps_from(self, seg: np.ndarray, raw: np.ndarray) -> NnUNetMaps:
        """The maps of nnU-Net's segmentation and probabilities (C, 1, H, W) of one image."""
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

    def _prediction(self, maps: NnUNetMaps, timings: dict[str, float]) -> Prediction:
        t0 = time.perf_counter()
        instances: list[Instance] = []
        if self.instances_mode == "seeds" and (maps.core is not None or maps.boundary is not None):
            instances = nnunet_seeded_instances(maps)
        elif self.instances_mode in ("components", "seeds"):
            instances = components_to_instances(maps.semantic, maps.probabilities, min_area=self.min_instance_area)
        timings = {**timings, "components": time.perf_counter() - t0}
        return Prediction(instances=instances, semantic=maps.semantic, timings=timings, maps=nnunet_image_maps(maps))

    def predict_with_probabilities(self, image: np.ndarray) -> tuple[Prediction, np.ndarray]:
        """:meth:`predict` and the softmax map from a single network run."""
        t0 = time.perf_counter()
        maps = self.predict_maps(image)
        return self._prediction(maps, {"nnunet": time.perf_counter() - t0}), maps.probabilities

    def predict(self, image: np.ndarray) -> Prediction:
        """Semantic map and connected-component instances of ``image``."""
        return self.predict_with_probabilities(image)[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """:meth:`predict` of several images (the reads of a tiled run) from shared network
        passes (:meth:`predict_maps_batch`); the network's time is shared out evenly."""
        t0 = time.perf_counter()
        batch = self.predict_maps_batch(images)
        seconds = (time.perf_counter() - t0) / max(1, len(batch))
        return [self._prediction(maps, {"nnunet": seconds}) for maps in batch]
