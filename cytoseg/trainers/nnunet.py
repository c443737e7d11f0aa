"""nnU-Net v2 semantic trainer (paper A, stage 1), Django-free.

``nnunet_train`` turns in-memory RGB images and 0/1/2 semantic label maps into a
trained nnU-Net v2 model folder:

1. write an nnU-Net raw dataset (``DatasetNNN_Name/imagesTr/<case>_0000.png`` RGB,
   ``labelsTr/<case>.png``, ``dataset.json``), following nnU-Net's own conversion of
   natural RGB images (``dataset_conversion/Dataset120_RoadSegmentation.py``): one
   PNG per case read by ``NaturalImage2DIO`` as three channels named R, G, B, which
   nnU-Net normalises by per-image z-score (what paper A reports);
2. fingerprint, plan (nnU-Net's default ``ExperimentPlanner``), optionally shrink
   the plan (patch size, feature caps, number of stages) for a fast configuration,
   preprocess;
3. train ``ConfigurableTrainer``, a ``nnUNetTrainer`` whose epochs, iterations,
   learning rate, weight decay, foreground oversampling and augmentation
   probabilities come from :class:`NnUNetTrainConfig` (paper A's values by default).

Daemon safety: nnU-Net's fingerprint extraction, preprocessing and dataset
unpacking always start a ``multiprocessing`` spawn pool, and its data
augmentation starts worker processes. A Celery prefork child is daemonic and may
not have children, so this module runs all of them in-process: fingerprinting
and preprocessing through small subclasses that loop over the cases, data
augmentation through nnU-Net's own ``SingleThreadedAugmenter`` (chosen by
``nnUNet_n_proc_DA=0`` while the trainer runs; the planner is run with a
non-zero value because it calls ``torch.set_num_threads(nnUNet_n_proc_DA)``),
and the final nnU-Net validation (another pool) is skipped: the per-epoch
validation loss and pseudo Dice are reported instead. The nnU-Net path variables
(``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results``) are set to
job-specific folders under ``workdir`` only while a job runs (nnU-Net 2.8 reads
them lazily), and restored afterwards. For GPU training outside a daemon,
``python -m cytoseg.trainers.nnunet`` runs a job in a child interpreter, where
``NnUNetTrainConfig.num_workers_da > 0`` may use worker processes.

Why one module of ~900 lines: the in-process fingerprint extractor, preprocessor and
``ConfigurableTrainer`` are small subclasses of nnU-Net classes that only make sense as the
steps of ``nnunet_train``, which sets the nnU-Net path variables and ``CONFIG_ENV`` they read;
splitting them would spread that shared process state over several files.

Fork caveat (measured with torch 2.13 CPU): a process forked from a parent that
has already run multi-threaded torch code hangs in its first parallel torch
operation (OpenMP). Celery's prefork master must therefore not run torch before
forking its children; otherwise call ``torch.set_num_threads(1)`` first thing in
the child (``worker_process_init``), or train in a child interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from batchgeneratorsv2.helpers.scalar_type import RandomScalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
    DownsampleSegForDSTransform,
)
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
    DatasetFingerprintExtractor,
)
from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from PIL import Image
from torch._dynamo import OptimizedModule

from cytoseg.datasets import LABELS, LABELS_WITH_BOUNDARY, LABELS_WITH_CORE, boundary_label_map, core_label_map
from cytoseg.stain import augmented_copies
from cytoseg.trainers import CancelFn, ProgressFn, Trainer, TrainingCancelled, TrainOutcome, TrainRequest, short_number
from cytoseg.trainers.configs import NnUNetAugmentation, NnUNetPlansOverride, NnUNetTrainConfig

__all__ = [
    "CONFIG_ENV",
    "LABELS",
    "ConfigurableTrainer",
    "NnUNetAugmentation",
    "NnUNetPlansOverride",
    "NnUNetTrainConfig",
    "NnUNetTrainResult",
    "TrainingCancelled",
    "main",
    "nnunet_env",
    "nnunet_train",
    "plans_override",
    "raw_dataset_write",
]

# ConfigurableTrainer reads its NnUNetTrainConfig from the JSON file this names:
# nnU-Net builds trainers from a fixed __init__ signature, so no extra argument.
CONFIG_ENV = "DIFFQUIK_NNUNET_TRAIN_CONFIG"
# The network of ConfigurableTrainer is nnUNetTrainer's; checkpoints name the base
# class so that nnUNetPredictor (which looks trainer classes up by name inside the
# nnunetv2 package) can rebuild the network without nnUNet_extTrainer.
CHECKPOINT_TRAINER_NAME = "nnUNetTrainer"


@dataclass
class NnUNetTrainResult:
    """What ``nnunet_train`` produced.

    ``model_folder`` is usable by ``nnUNetPredictor.initialize_from_trained_model_folder``
    (it holds ``plans.json``, ``dataset.json`` and ``fold_<fold>/checkpoint_final.pth``;
    pass ``use_folds=(fold,)``: nnU-Net's auto-detection skips ``fold_all``); it is
    also the folder the ``nnunet`` inference backend loads. ``curves`` has one
    dict per epoch: epoch, train_loss, val_loss, pseudo_dice (per foreground class),
    mean_pseudo_dice, lr, seconds.
    """

    model_folder: Path
    fold: int | str
    final_train_loss: float
    final_val_loss: float
    final_pseudo_dice: float
    curves: list[dict[str, Any]]
    plans_summary: dict[str, Any]
    seconds: float
    config: dict[str, Any]


# ----------------------------------------------------------- environment


@contextlib.contextmanager
def nnunet_env(
    *,
    raw: Path | None = None,
    preprocessed: Path | None = None,
    results: Path | None = None,
    extra: dict[str, str] | None = None,
) -> Iterator[None]:
    """Set nnU-Net's path variables (and ``extra``) for the duration of a job.

    nnU-Net 2.8 reads ``nnUNet_raw`` etc. from ``os.environ`` on every use, so the
    per-job folders take effect without re-importing; the previous values are
    restored on exit. Process-wide: run one job per process at a time.
    """
    values: dict[str, str] = dict(extra or {})
    for key, path in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed), ("nnUNet_results", results)):
        if path is not None:
            values[key] = str(path)
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# ------------------------------------------------------------- raw dataset


def raw_dataset_write(
    *,
    raw_root: Path,
    dataset_id: int,
    dataset_name: str,
    images: Sequence[np.ndarray],
    semantic_labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray] = (),
    val_semantic_labels: Sequence[np.ndarray] = (),
    normalization: str = "zscore",
    labels: Mapping[str, int] = LABELS,
) -> tuple[Path, list[str], list[str]]:
    """Write an nnU-Net v2 raw dataset; return (folder, train case ids, val case ids).

    Images are (H, W, 3) uint8 RGB, label maps (H, W) with the ids of ``labels`` (0 background
    / 1 cell / 2 erythrocyte, and 3 the cell rim with ``LABELS_WITH_BOUNDARY``). Validation
    cases go into ``imagesTr`` too (nnU-Net plans and preprocesses them with the rest); the
    split is written by the caller.
    """
    if len(images) != len(semantic_labels) or len(val_images) != len(val_semantic_labels):
        raise ValueError("images and labels must have the same length")
    if not images:
        raise ValueError("no training images")
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{dataset_name}"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()

    def put(case: str, image: np.ndarray, label: np.ndarray) -> None:
        img = np.asarray(image)
        lab = np.asarray(label)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{case}: expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
        if lab.shape != img.shape[:2]:
            raise ValueError(f"{case}: label shape {lab.shape} != image shape {img.shape[:2]}")
        if lab.min() < 0 or lab.max() > max(labels.values()):
            raise ValueError(f"{case}: labels must be in {sorted(labels.values())}")
        Image.fromarray(img, mode="RGB").save(folder / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(lab.astype(np.uint8), mode="L").save(folder / "labelsTr" / f"{case}.png")

    train_ids = [f"train_{i:04d}" for i in range(len(images))]
    val_ids = [f"val_{i:04d}" for i in range(len(val_images))]
    for case, img, lab in zip(train_ids, images, semantic_labels, strict=True):
        put(case, img, lab)
    for case, img, lab in zip(val_ids, val_images, val_semantic_labels, strict=True):
        put(case, img, lab)
    if normalization == "zscore":
        channels = {"0": "R", "1": "G", "2": "B"}  # unknown names -> ZScoreNormalization
    elif normalization == "rgb_to_0_1":
        channels = {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    # An explicit "dataset" table: without it nnU-Net matches files to cases with a
    # multiprocessing pool (utilities.utils.create_lists_from_splitted_dataset_folder),
    # which a daemonic process may not start.
    table = {
        case: {"images": [f"imagesTr/{case}_0000.png"], "label": f"labelsTr/{case}.png"} for case in train_ids + val_ids
    }
    save_json(
        {
            "channel_names": channels,
            "labels": dict(labels),
            "numTraining": len(train_ids) + len(val_ids),
            "file_ending": ".png",
            "name": dataset_name,
            "dataset": table,
        },
        str(folder / "dataset.json"),
        sort_keys=False,
    )
    return folder, train_ids, val_ids


# ------------------------------------------- in-process fingerprint / preprocessing


class _InProcessFingerprintExtractor(DatasetFingerprintExtractor):
    """nnU-Net's fingerprint extractor without its spawn pool (daemon-safe).

    ``run`` is nnU-Net 2.8.1's, with the pool replaced by a loop over the cases.
    """

    def __init__(self, dataset_name_or_id: str | int, num_processes: int = 1, verbose: bool = False) -> None:
        super().__init__(dataset_name_or_id, num_processes, verbose)
        # nnU-Net draws 1e8 foreground intensity samples in total (minutes on 2 cores). They
        # only feed CT normalisation; RGB channels are z-scored per image, so 1e6 suffice.
        self.num_foreground_voxels_for_intensitystats = 1e6

    def run(self, overwrite_existing: bool = False) -> dict:
        """Compute, save and return the dataset fingerprint."""
        out_folder = Path(str(nnUNet_preprocessed)) / self.dataset_name
        out_folder.mkdir(parents=True, exist_ok=True)
        properties_file = out_folder / "dataset_fingerprint.json"
        if properties_file.is_file() and not overwrite_existing:
            return load_json(str(properties_file))
        first = next(iter(self.dataset.values()))["images"][0]
        reader_writer_class = determine_reader_writer_from_dataset_json(self.dataset_json, first)
        n_samples = int(self.num_foreground_voxels_for_intensitystats // len(self.dataset))
        results = [
            self.analyze_case(case["images"], case["label"], reader_writer_class, n_samples)
            for case in self.dataset.values()
        ]
        n_channels = len(self.dataset_json["channel_names"])
        intensities = [
            np.concatenate([np.asarray(r[2][c], dtype=np.float32) for r in results]) for c in range(n_channels)
        ]
        stats: dict[int, dict[str, float]] = {}
        for c in range(n_channels):
            values = intensities[c] if intensities[c].size else np.zeros(1, np.float32)
            p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
            stats[c] = {
                "mean": float(np.mean(values)),
                "median": float(median),
                "std": float(np.std(values)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
                "percentile_99_5": float(p995),
                "percentile_00_5": float(p005),
            }
        fingerprint = {
            "spacings": [r[1] for r in results],
            "shapes_after_crop": [r[0] for r in results],
            "foreground_intensity_properties_per_channel": stats,
            "median_relative_size_after_cropping": float(np.median([r[4] for r in results], 0)),
        }
        save_json(fingerprint, str(properties_file))
        return fingerprint


class _InProcessPreprocessor(DefaultPreprocessor):
    """nnU-Net's DefaultPreprocessor without its spawn pool (daemon-safe).

    The plans keep naming ``DefaultPreprocessor``: the output is identical, and
    inference preprocesses with that class.
    """

    def run(
        self,
        dataset_name_or_id: int | str,
        configuration_name: str,
        plans_identifier: str,
        num_processes: int = 1,
    ) -> None:
        """Preprocess every training case of one configuration in this process."""
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
        pre = Path(str(nnUNet_preprocessed)) / dataset_name
        plans_manager = PlansManager(str(pre / f"{plans_identifier}.json"))
        configuration_manager = plans_manager.get_configuration(configuration_name)
        dataset_json = load_json(str(pre / "dataset.json"))
        out = pre / configuration_manager.data_identifier
        if out.is_dir():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        dataset = get_filenames_of_train_images_and_targets(str(Path(str(nnUNet_raw)) / dataset_name), dataset_json)
        for case, files in dataset.items():
            self.run_case_save(
                str(out / case),
                files["images"],
                files["label"],
                plans_manager,
                configuration_manager,
                dataset_json,
            )


# ------------------------------------------------------------ plans override


def plans_override(plans: dict, configuration: str, override: NnUNetPlansOverride) -> dict:
    """Return a copy of nnU-Net ``plans`` with ``override`` applied to ``configuration``.

    Only PlainConvUNet-style ``arch_kwargs`` (nnU-Net's default 2D network) are
    edited: n_stages, features_per_stage, kernel_sizes, strides, n_conv_per_stage,
    n_conv_per_stage_decoder.
    """
    plans = json.loads(json.dumps(plans))
    if override.is_empty():
        return plans
    conf = plans["configurations"][configuration]
    arch = conf["architecture"]["arch_kwargs"]
    dim = len(conf["patch_size"])
    if override.patch_size is not None:
        if len(override.patch_size) != dim:
            raise ValueError(f"patch_size needs {dim} values, got {override.patch_size}")
        conf["patch_size"] = [int(v) for v in override.patch_size]
    if override.batch_size is not None:
        conf["batch_size"] = int(override.batch_size)
    patch = conf["patch_size"]
    n_stages = int(arch["n_stages"])
    if override.n_stages is not None:
        n_stages = int(override.n_stages)
    elif override.patch_size is not None:
        # deepest feature map edge >= 4 pixels, as nnU-Net's planner keeps it
        n_stages = min(n_stages, 1 + int(np.floor(np.log2(min(patch) / 4))))
    if n_stages < 2:
        raise ValueError("n_stages must be at least 2")
    for edge in patch:
        if edge % 2 ** (n_stages - 1):
            raise ValueError(f"patch edge {edge} not divisible by 2**{n_stages - 1}")
    old_features = list(arch["features_per_stage"])
    base = int(override.base_features or old_features[0])
    cap = int(override.max_features or max(old_features))
    convs = override.n_conv_per_stage
    conv_enc = [int(convs)] * n_stages if convs else _stretch(arch["n_conv_per_stage"], n_stages)
    conv_dec = [int(convs)] * (n_stages - 1) if convs else _stretch(arch["n_conv_per_stage_decoder"], n_stages - 1)
    arch.update(
        n_stages=n_stages,
        features_per_stage=[min(base * 2**i, cap) for i in range(n_stages)],
        kernel_sizes=[[3] * dim for _ in range(n_stages)],
        strides=[[1] * dim] + [[2] * dim for _ in range(n_stages - 1)],
        n_conv_per_stage=conv_enc,
        n_conv_per_stage_decoder=conv_dec,
    )
    return plans


def _stretch(values: Sequence[int], n: int) -> list[int]:
    """``values`` cut or padded (with its last value) to length ``n``."""
    vals = [int(v) for v in values] or [2]
    return (vals + [vals[-1]] * n)[:n]


def _plans_summary(plans: dict, configuration: str) -> dict[str, Any]:
    conf = plans["configurations"][configuration]
    arch = conf["architecture"]["arch_kwargs"]
    return {
        "configuration": configuration,
        "patch_size": list(conf["patch_size"]),
        "batch_size": conf["batch_size"],
        "n_stages": arch["n_stages"],
        "features_per_stage": list(arch["features_per_stage"]),
        "normalization_schemes": list(conf["normalization_schemes"]),
    }


# ------------------------------------------------------------------ trainer


class _MirrorTransformP(MirrorTransform):
    """MirrorTransform whose per-axis flip probability is configurable (nnU-Net: 0.5)."""

    def __init__(self, allowed_axes: tuple[int, ...], p_per_axis: float) -> None:
        super().__init__(allowed_axes)
        self.p_per_axis = p_per_axis

    def get_parameters(self, **data_dict: Any) -> dict:
        """Pick the axes to flip."""
        return {"axes": [i for i in self.allowed_axes if torch.rand(1) < self.p_per_axis]}


def _config_from_env() -> NnUNetTrainConfig:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return NnUNetTrainConfig()
    return NnUNetTrainConfig.from_dict(json.loads(Path(path).read_text()))


class ConfigurableTrainer(nnUNetTrainer):
    """nnUNetTrainer with hyper-parameters from a :class:`NnUNetTrainConfig`.

    The config comes from the JSON file named by the ``DIFFQUIK_NNUNET_TRAIN_CONFIG``
    environment variable (nnU-Net reconstructs trainers from their ``__init__``
    arguments, so the signature must stay nnU-Net's); without it, the defaults.
    ``progress_fn`` / ``cancel_fn`` may be set after construction.
    """

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int | str,  # nnU-Net passes "all" as well
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.train_config = _config_from_env()
        cfg = self.train_config
        self.num_epochs = cfg.num_epochs
        self.num_iterations_per_epoch = cfg.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = cfg.num_val_iterations_per_epoch
        self.initial_lr = cfg.initial_lr
        self.weight_decay = cfg.weight_decay
        self.oversample_foreground_percent = cfg.oversample_foreground_percent
        self.enable_deep_supervision = cfg.deep_supervision
        self.save_every = cfg.save_every
        self.progress_fn: ProgressFn | None = None
        self.cancel_fn: CancelFn | None = None
        self.curves: list[dict[str, Any]] = []
        self._iteration = 0
        self._epoch_t0 = time.perf_counter()
        if not cfg.plot_progress:
            # matplotlib/seaborn plotting costs ~0.5 s per epoch; tiny runs skip it
            self.logger.plot_progress_png = lambda *_args, **_kwargs: None

    def _do_i_compile(self) -> bool:
        return bool(self.train_config.compile) and super()._do_i_compile()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self) -> tuple:
        """nnU-Net's, with the configured rotation range and scaling for 2D patches."""
        rot, dummy_2d, initial, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = self.configuration_manager.patch_size
        if len(patch_size) == 2:
            aug = self.train_config.augmentation
            rot = tuple(float(np.deg2rad(v)) for v in aug.rotation_deg)
            # larger sampling window so that rotated/scaled crops have no empty corners
            initial = get_patch_size(patch_size, rot, rot, rot, tuple(aug.scaling))
        return rot, dummy_2d, initial, mirror_axes

    def get_training_transforms(  # type: ignore[override]
        self,
        patch_size: np.ndarray | tuple[int, ...],
        rotation_for_DA: RandomScalar,
        deep_supervision_scales: list | tuple | None,
        mirror_axes: tuple[int, ...],
        do_dummy_2d_data_aug: bool,
        use_mask_for_norm: list[bool] | None = None,
        is_cascaded: bool = False,
        foreground_labels: tuple[int, ...] | list[int] | None = None,
        regions: list[list[int] | tuple[int, ...] | int] | None = None,
        ignore_label: int | None = None,
    ) -> BasicTransform:
        """nnU-Net's 2D augmentation pipeline with probabilities from the config.

        Cascades and dummy-2D (3D) data are not used by this platform and fall back
        to nnU-Net's own pipeline.
        """
        if is_cascaded or do_dummy_2d_data_aug or len(patch_size) != 2:
            return nnUNetTrainer.get_training_transforms(
                patch_size,
                rotation_for_DA,
                deep_supervision_scales,
                mirror_axes,
                do_dummy_2d_data_aug,
                use_mask_for_norm,
                is_cascaded,
                foreground_labels,
                regions,
                ignore_label,
            )
        aug = self.train_config.augmentation
        t: list[BasicTransform] = [
            SpatialTransform(
                patch_size,
                patch_center_dist_from_border=0,
                random_crop=False,
                p_elastic_deform=0,
                p_rotation=aug.p_rotation,
                rotation=rotation_for_DA,
                p_scaling=aug.p_scaling,
                scaling=tuple(aug.scaling),
                p_synchronize_scaling_across_axes=1,
                bg_style_seg_sampling=False,
                border_mode_seg="constant",
                padding_value_seg=-1,
            ),
            RandomTransform(
                GaussianNoiseTransform(
                    noise_variance=tuple(aug.noise_variance),
                    p_per_channel=1,
                    synchronize_channels=True,
                ),
                apply_probability=aug.p_noise,
            ),
            RandomTransform(
                GaussianBlurTransform(
                    blur_sigma=tuple(aug.blur_sigma),
                    synchronize_channels=False,
                    synchronize_axes=False,
                    p_per_channel=0.5,
                    benchmark=True,
                ),
                apply_probability=aug.p_blur,
            ),
            RandomTransform(
                MultiplicativeBrightnessTransform(
                    multiplier_range=BGContrast(tuple(aug.brightness)),
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=aug.p_brightness,
            ),
            RandomTransform(
                ContrastTransform(
                    contrast_range=BGContrast(tuple(aug.contrast)),
                    preserve_range=True,
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=aug.p_contrast,
            ),
            RandomTransform(
                SimulateLowResolutionTransform(
                    scale=tuple(aug.low_res_scale),
                    synchronize_channels=False,
                    synchronize_axes=True,
                    ignore_axes=None,
                    allowed_channels=None,
                    p_per_channel=0.5,
                ),
                apply_probability=aug.p_low_res,
            ),
        ]
        if aug.p_gamma_inverted > 0:
            t.append(
                RandomTransform(
                    GammaTransform(
                        gamma=BGContrast(tuple(aug.gamma)),
                        p_invert_image=1,
                        synchronize_channels=False,
                        p_per_channel=1,
                        p_retain_stats=1,
                    ),
                    apply_probability=aug.p_gamma_inverted,
                )
            )
        t.append(
            RandomTransform(
                GammaTransform(
                    gamma=BGContrast(tuple(aug.gamma)),
                    p_invert_image=0,
                    synchronize_channels=False,
                    p_per_channel=1,
                    p_retain_stats=1,
                ),
                apply_probability=aug.p_gamma,
            )
        )
        if mirror_axes and aug.p_flip > 0:
            t.append(_MirrorTransformP(tuple(mirror_axes), aug.p_flip))
        if use_mask_for_norm is not None and any(use_mask_for_norm):
            t.append(
                MaskImageTransform(
                    apply_to_channels=[i for i, m in enumerate(use_mask_for_norm) if m],
                    channel_idx_in_seg=0,
                    set_outside_to=0,
                )
            )
        t.append(RemoveLabelTansform(-1, 0))
        if regions is not None:
            t.append(
                ConvertSegmentationToRegionsTransform(
                    regions=[*regions, ignore_label] if ignore_label is not None else regions,
                    channel_in_seg=0,
                )
            )
        if deep_supervision_scales is not None:
            t.append(DownsampleSegForDSTransform(ds_scales=deep_supervision_scales))
        return ComposeTransforms(t)

    def _cancel_check(self) -> None:
        if self.cancel_fn is not None and self.cancel_fn():
            raise TrainingCancelled(f"nnU-Net training cancelled in epoch {self.current_epoch}")

    def _report(self, info: dict[str, Any]) -> None:
        if self.progress_fn is not None:
            self.progress_fn(info)

    def on_epoch_start(self) -> None:
        """Reset the iteration counter (and check for cancellation)."""
        self._cancel_check()
        self._iteration = 0
        self._epoch_t0 = time.perf_counter()
        super().on_epoch_start()

    def train_step(self, batch: dict) -> dict:
        """One optimiser step; reports progress and polls cancellation."""
        out = super().train_step(batch)
        self._iteration += 1
        every = max(1, self.train_config.progress_every_iterations)
        if self._iteration % every == 0 or self._iteration == self.num_iterations_per_epoch:
            self._report(
                {
                    "phase": "train",
                    "epoch": self.current_epoch,
                    "epochs": self.num_epochs,
                    "iteration": self._iteration,
                    "iterations": self.num_iterations_per_epoch,
                    "loss": float(out["loss"]),
                }
            )
            self._cancel_check()
        return out

    def on_epoch_end(self) -> None:
        """nnU-Net's epoch end, then record the epoch's curve point and report it."""
        epoch = self.current_epoch
        super().on_epoch_end()  # increments current_epoch
        log = self.logger
        dice = [float(v) for v in log.get_value("dice_per_class_or_region", step=-1)]
        point = {
            "epoch": epoch,
            "train_loss": float(log.get_value("train_losses", step=-1)),
            "val_loss": float(log.get_value("val_losses", step=-1)),
            "pseudo_dice": dice,
            "mean_pseudo_dice": float(np.nanmean(dice)) if dice else float("nan"),
            "lr": float(log.get_value("lrs", step=-1)),
            "seconds": time.perf_counter() - self._epoch_t0,
        }
        self.curves.append(point)
        self._report({"phase": "epoch", "epochs": self.num_epochs, **point})
        if epoch + 1 < self.num_epochs:
            self._cancel_check()

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, naming the base trainer (see CHECKPOINT_TRAINER_NAME)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        checkpoint = {
            "network_weights": mod.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": (self.grad_scaler.state_dict() if self.grad_scaler is not None else None),
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": CHECKPOINT_TRAINER_NAME,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }
        torch.save(checkpoint, filename)

    def dataloaders_finish(self) -> None:
        """Stop data-augmentation worker processes, if any (after an error or cancel)."""
        for loader in (self.dataloader_train, self.dataloader_val):
            finish = getattr(loader, "_finish", None)
            if callable(finish):
                with contextlib.suppress(Exception):
                    finish()


# -------------------------------------------------------------- entry point


def nnunet_train(
    *,
    images: Sequence[np.ndarray],
    semantic_labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray] = (),
    val_semantic_labels: Sequence[np.ndarray] = (),
    workdir: Path,
    config: NnUNetTrainConfig | None = None,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    cell_instances: Sequence[np.ndarray] | None = None,
    val_cell_instances: Sequence[np.ndarray] | None = None,
) -> NnUNetTrainResult:
    """Train an nnU-Net v2 semantic model (0 background / 1 cell / 2 erythrocyte).

    With ``config.seed_class`` "core" or "rim" the model learns a fourth class, the core or the
    rim of every cell (:func:`cytoseg.datasets.core_label_map`, ``boundary_label_map``), drawn
    from ``cell_instances`` (instance label maps of the cells, one per image; required then).

    Runs entirely in the calling process (daemon-safe, see the module docstring).
    ``workdir`` receives ``nnUNet_raw/``, ``nnUNet_preprocessed/``, ``nnUNet_results/``
    and ``model/`` (the trained model folder, see :class:`NnUNetTrainResult`). With
    validation images the split is train/val (fold 0); without, nnU-Net's fold
    ``"all"`` (validation on the training images). ``progress`` receives dicts with
    ``phase`` "prepare" (``step``), "train" (epoch, iteration, loss) and "epoch"
    (one curve point). ``should_cancel`` is polled every
    ``progress_every_iterations`` iterations and between epochs; it raises
    :class:`TrainingCancelled`.
    """
    cfg = config or NnUNetTrainConfig()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / "nnUNet_raw"
    pre = workdir / "nnUNet_preprocessed"
    res = workdir / "nnUNet_results"
    for folder in (raw, pre, res):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
    t0 = time.perf_counter()

    def report(info: dict[str, Any]) -> None:
        if progress is not None:
            progress(info)

    def cancel_check() -> None:
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled("nnU-Net training cancelled while preparing")

    num_workers = int(cfg.num_workers_da)
    if num_workers > 0 and multiprocessing.current_process().daemon:
        num_workers = 0  # daemonic processes may not start augmentation workers
    if cfg.seed is not None:
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
    config_file = workdir / "train_config.json"
    config_file.write_text(json.dumps(cfg.to_dict(), indent=1))
    planning_threads = str(max(1, torch.get_num_threads()))
    env = {
        CONFIG_ENV: str(config_file),
        "nnUNet_compile": "true" if cfg.compile else "false",
        # the planner calls torch.set_num_threads(nnUNet_n_proc_DA): must not be 0 here
        "nnUNet_n_proc_DA": planning_threads,
    }
    torch_threads = torch.get_num_threads()
    trainer: ConfigurableTrainer | None = None
    with nnunet_env(raw=raw, preprocessed=pre, results=res, extra=env):
        try:
            report({"phase": "prepare", "step": "write_raw"})
            labels = LABELS
            if cfg.seed_class != "none":
                if cell_instances is None or (val_images and val_cell_instances is None):
                    raise ValueError(f"seed_class {cfg.seed_class!r} needs the cells' instance maps")

                def with_seeds(sem: np.ndarray, inst: np.ndarray) -> np.ndarray:
                    if cfg.seed_class == "core":
                        return core_label_map(sem, inst, fraction=cfg.core_fraction)
                    return boundary_label_map(sem, inst, width=cfg.rim_width)

                semantic_labels = [with_seeds(a, b) for a, b in zip(semantic_labels, cell_instances, strict=True)]
                val_semantic_labels = [
                    with_seeds(a, b) for a, b in zip(val_semantic_labels, val_cell_instances or (), strict=True)
                ]
                labels = LABELS_WITH_CORE if cfg.seed_class == "core" else LABELS_WITH_BOUNDARY
            if cfg.stain.copies > 0:
                report({"phase": "prepare", "step": "stain_augment"})
                copies = augmented_copies(images, cfg.stain)
                semantic_labels = [*semantic_labels, *(lab for lab in semantic_labels for _ in range(cfg.stain.copies))]
                images = [*images, *copies]
            raw_dataset_write(
                labels=labels,
                raw_root=raw,
                dataset_id=cfg.dataset_id,
                dataset_name=cfg.dataset_name,
                images=images,
                semantic_labels=semantic_labels,
                val_images=val_images,
                val_semantic_labels=val_semantic_labels,
                normalization=cfg.normalization,
            )
            cancel_check()
            report({"phase": "prepare", "step": "fingerprint"})
            _InProcessFingerprintExtractor(cfg.dataset_id, 1, verbose=False).run(overwrite_existing=True)
            cancel_check()
            report({"phase": "prepare", "step": "plan"})
            plans, plans_identifier = plan_experiment_dataset(cfg.dataset_id)
            if cfg.configuration not in plans["configurations"]:
                raise ValueError(f"nnU-Net planned no {cfg.configuration!r} configuration")
            plans = plans_override(plans, cfg.configuration, cfg.plans)
            dataset_name = maybe_convert_to_dataset_name(cfg.dataset_id)
            pre_ds = pre / dataset_name
            save_json(plans, str(pre_ds / f"{plans_identifier}.json"), sort_keys=False)
            cancel_check()
            report({"phase": "prepare", "step": "preprocess"})
            _InProcessPreprocessor(verbose=False).run(cfg.dataset_id, cfg.configuration, plans_identifier)
            train_ids = [f"train_{i:04d}" for i in range(len(images))]
            val_ids = [f"val_{i:04d}" for i in range(len(val_images))]
            fold: int | str = "all"
            if val_ids:
                save_json([{"train": train_ids, "val": val_ids}], str(pre_ds / "splits_final.json"))
                fold = 0
            cancel_check()

            os.environ["nnUNet_n_proc_DA"] = str(num_workers)  # 0: SingleThreadedAugmenter
            plans = load_json(str(pre_ds / f"{plans_identifier}.json"))
            plans["continue_training"] = False  # nnUNetTrainer.__init__ pops this key
            dataset_json = load_json(str(pre_ds / "dataset.json"))
            trainer = ConfigurableTrainer(
                plans=plans,
                configuration=cfg.configuration,
                fold=fold,
                dataset_json=dataset_json,
                device=torch.device(device),
            )
            trainer.progress_fn = progress
            trainer.cancel_fn = should_cancel
            trainer.run_training()
        finally:
            if trainer is not None:
                trainer.dataloaders_finish()
            # nnU-Net changes torch's thread count in places; give the caller its own back
            torch.set_num_threads(torch_threads)

    assert trainer is not None
    model_folder = _model_folder_export(Path(trainer.output_folder_base), workdir / "model", fold)
    (model_folder / "curves.json").write_text(json.dumps(trainer.curves, indent=1))
    shutil.copy(config_file, model_folder / "train_config.json")
    last = trainer.curves[-1] if trainer.curves else {}
    return NnUNetTrainResult(
        model_folder=model_folder,
        fold=fold,
        final_train_loss=float(last.get("train_loss", float("nan"))),
        final_val_loss=float(last.get("val_loss", float("nan"))),
        final_pseudo_dice=float(last.get("mean_pseudo_dice", float("nan"))),
        curves=list(trainer.curves),
        plans_summary=_plans_summary(trainer.plans_manager.plans, cfg.configuration),
        seconds=time.perf_counter() - t0,
        config=cfg.to_dict(),
    )


def _model_folder_export(source: Path, target: Path, fold: int | str) -> Path:
    """Copy what inference needs out of nnU-Net's results folder.

    Keeps plans/dataset/fingerprint JSONs, the final checkpoint, the progress plot
    and the training log; drops ``checkpoint_best.pth`` (EMA pseudo Dice on few
    validation patches is a weak criterion) to keep artifacts small.
    """
    if target.exists():
        shutil.rmtree(target)
    fold_dir = f"fold_{fold}"
    (target / fold_dir).mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    for item in (source / fold_dir).iterdir():
        if item.is_file() and (item.name == "checkpoint_final.pth" or item.suffix in (".png", ".txt")):
            shutil.copy(item, target / fold_dir / item.name)
    if not (target / fold_dir / "checkpoint_final.pth").is_file():
        raise RuntimeError(f"nnU-Net wrote no checkpoint_final.pth in {source / fold_dir}")
    return target


# ---------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run one job in this interpreter: ``python -m cytoseg.trainers.nnunet``.

    ``--data`` is an ``.npz`` with arrays ``image_<i>``, ``label_<i>`` and optionally
    ``val_image_<i>``, ``val_label_<i>``; ``--config`` a JSON of
    :meth:`NnUNetTrainConfig.to_dict` (default: paper A's). Progress goes to stdout
    as one JSON object per line; the result is written to ``<workdir>/result.json``.
    Use this from a daemonic process through ``subprocess.run`` when DA worker
    processes are wanted.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    cfg = NnUNetTrainConfig.from_dict(json.loads(args.config.read_text())) if args.config else NnUNetTrainConfig()
    with np.load(args.data) as data:

        def stack(prefix: str) -> list[np.ndarray]:
            keys = sorted(
                (k for k in data.files if k.startswith(prefix)),
                key=lambda k: int(k.rsplit("_", 1)[1]),
            )
            return [data[k] for k in keys]

        images, labels = stack("image_"), stack("label_")
        val_images, val_labels = stack("val_image_"), stack("val_label_")

    def progress(info: dict[str, Any]) -> None:
        print(json.dumps({"progress": info}), flush=True)

    result = nnunet_train(
        images=images,
        semantic_labels=labels,
        val_images=val_images,
        val_semantic_labels=val_labels,
        workdir=args.workdir,
        config=cfg,
        device=args.device,
        progress=progress,
    )
    out = dataclasses.asdict(result)
    out["model_folder"] = str(result.model_folder)
    (args.workdir / "result.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({"result": str(args.workdir / "result.json")}), flush=True)
    return 0


if __name__ == "__main__":  # nnU-Net's spawn-based helpers re-import the main module
    sys.exit(main())


class NnUNetTrainer(Trainer):
    """nnU-Net v2 on the cases' semantic maps; the model folder is moved to ``request.target``."""

    name = "nnunet"
    config_class = NnUNetTrainConfig

    def train(self, request: TrainRequest) -> TrainOutcome:
        """Train in ``request.workdir/nnunet``, then move the model folder to the target."""
        result = nnunet_train(
            images=[c.image for c in request.train],
            semantic_labels=[c.semantic for c in request.train],
            val_images=[c.image for c in request.validation],
            val_semantic_labels=[c.semantic for c in request.validation],
            cell_instances=[c.cell_instances for c in request.train],
            val_cell_instances=[c.cell_instances for c in request.validation],
            workdir=Path(request.workdir) / "nnunet",
            config=request.config,
            device=request.device,
            progress=request.progress,
            should_cancel=request.should_cancel,
        )
        target = Path(request.target)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(result.model_folder), str(target))
        return TrainOutcome(
            summary=(
                f"fold {result.fold}, final val loss {short_number(result.final_val_loss)}, "
                f"pseudo Dice {short_number(result.final_pseudo_dice)}"
            ),
            details={"fold": result.fold, "seconds": result.seconds},
        )
