"""Model files for tests, built in memory (Django-free): small Cellpose weights, nnU-Net plans,
checkpoints and whole nnU-Net model folders as ``{relative path: bytes}``."""

from __future__ import annotations

import functools
import io
import json
from typing import Any


@functools.lru_cache(maxsize=1)
def cellpose_weights() -> bytes:
    """A Cellpose 3 state_dict (CPnet as the backend builds it, untrained), as bytes of a .pth file."""
    import torch
    from cellpose.resnet_torch import CPnet

    buffer = io.BytesIO()
    torch.save(CPnet([3, 32, 64, 128, 256], 3, 3).state_dict(), buffer)
    return buffer.getvalue()


def nnunet_plans(**arch_changes: Any) -> dict[str, Any]:
    """A minimal nnU-Net v2 plans.json (2d PlainConvUNet) with ``arch_kwargs`` changed as given."""
    arch_kwargs: dict[str, Any] = {
        "n_stages": 3,
        "features_per_stage": [8, 16, 32],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 3,
        "strides": [[1, 1], [2, 2], [2, 2]],
        "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        **arch_changes,
    }
    return {
        "dataset_name": "Dataset501_DiffQuik",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "NaturalImage2DIO",
        "label_manager": "LabelManager",
        "configurations": {
            "2d": {
                "data_identifier": "nnUNetPlans_2d",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [64, 64],
                "normalization_schemes": ["ZScoreNormalization"] * 3,
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": arch_kwargs,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            }
        },
    }


NNUNET_DATASET = {
    "channel_names": {"0": "R", "1": "G", "2": "B"},
    "labels": {"background": 0, "cell": 1, "erythrocyte": 2},
    "numTraining": 4,
    "file_ending": ".png",
}


def nnunet_checkpoint(**changes: Any) -> bytes:
    """A sanitised nnU-Net checkpoint (stand-in weights) as bytes of a .pth file."""
    import torch

    checkpoint = {
        "network_weights": {"w": torch.zeros(2)},
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "2d"},
        "inference_allowed_mirroring_axes": (0, 1),
        **changes,
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def nnunet_package(*, plans: dict[str, Any] | None = None, checkpoint: bytes | None = None) -> dict[str, bytes]:
    """The files of an nnU-Net model folder, name -> bytes."""
    return {
        "plans.json": json.dumps(plans or nnunet_plans()).encode(),
        "dataset.json": json.dumps(NNUNET_DATASET).encode(),
        "fold_all/checkpoint_final.pth": checkpoint or nnunet_checkpoint(),
    }
