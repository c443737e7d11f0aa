"""Training presets: the starting hyper-parameters of a job and the inference settings its models get.

A job's ``preset`` picks the trainers' base configurations, which the job's own sections
override key by key:

* ``default``: paper A's hyper-parameters and the plan nnU-Net's planner derives (8 stages up
  to 512 features for 1024x768 fields); models run with the backends' defaults;
* ``fast``: the same schedules, a smaller nnU-Net (``FAST_PLAN``) and a Cellpose network that
  sees cells at half their size (``FAST_CELLPOSE_SCALE``: a quarter of the pixels); the
  registered versions carry ``FAST_INFERENCE`` settings (one tile, fewer dynamics iterations,
  no flow check, dynamics only on nnU-Net's foreground). ``bench/presegment_bench.py`` times it
  and ``bench/fast_accuracy.py`` measures its accuracy against ``default``;
* ``tiny``: the trainers' ``tiny()`` configurations (tests, smoke runs).

Django-free, like the trainers.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "FAST_CELLPOSE_SCALE",
    "FAST_INFERENCE",
    "FAST_PLAN",
    "PRESETS",
    "preset_backend_settings",
    "preset_base_config",
]

PRESETS = ("default", "fast", "tiny")

# nnU-Net plan override of the fast preset: 39 GFLOP per 1024x768 pass instead of 358.
FAST_PLAN: dict[str, int] = {"n_stages": 5, "base_features": 16, "max_features": 128, "n_conv_per_stage": 1}
FAST_CELLPOSE_SCALE = 0.5

# Backend settings per model kind for the fast preset (see the backends' docstrings).
FAST_INFERENCE: dict[str, dict[str, Any]] = {
    "nnunet": {"tile_step_size": 1.0, "use_gaussian": False},
    "cellpose": {"niter": 60, "flow_threshold": 0.0, "bsize": 0},
}
FAST_INFERENCE["two_stage"] = {
    "nnunet": FAST_INFERENCE["nnunet"], "cellpose": FAST_INFERENCE["cellpose"], "restrict_masks": True,
}


def preset_base_config(*, preset: str, stage: str) -> dict[str, Any]:
    """The base configuration (``to_dict()`` form) of one trainer for a preset.

    ``stage`` is ``nnunet``, ``cellpose`` or ``refinement``; raises ValueError for an unknown
    preset or stage.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (one of {', '.join(PRESETS)})")
    tiny = preset == "tiny"
    if stage == "nnunet":
        from training.trainers.nnunet import NnUNetPlansOverride, NnUNetTrainConfig

        nn = NnUNetTrainConfig.tiny() if tiny else NnUNetTrainConfig()
        if preset == "fast":
            nn.plans = NnUNetPlansOverride(
                n_stages=FAST_PLAN["n_stages"], base_features=FAST_PLAN["base_features"],
                max_features=FAST_PLAN["max_features"], n_conv_per_stage=FAST_PLAN["n_conv_per_stage"],
            )
        return nn.to_dict()
    if stage == "cellpose":
        from training.trainers.cellpose import CellposeTrainConfig

        cp = CellposeTrainConfig.tiny() if tiny else CellposeTrainConfig()
        if preset == "fast":
            cp.network_scale = FAST_CELLPOSE_SCALE
        return cp.to_dict()
    if stage == "refinement":
        from training.trainers.refinement import RefinementTrainConfig

        return (RefinementTrainConfig.tiny() if tiny else RefinementTrainConfig()).to_dict()
    raise ValueError(f"unknown training stage {stage!r}")


def preset_backend_settings(*, preset: str, kind: str) -> dict[str, Any]:
    """Inference settings a model version of ``kind`` trained with ``preset`` is registered with."""
    if preset == "fast":
        return copy.deepcopy(FAST_INFERENCE.get(kind, {}))
    return {}
