"""Training presets: the starting hyper-parameters of a job and the inference settings its models get.

A job's ``preset`` picks the trainers' base configurations, which the job's own sections
override key by key:

* ``default``: paper A's hyper-parameters and the plan nnU-Net's planner derives (8 stages up
  to 512 features for 1024x768 fields); models run with the backends' defaults;
* ``fast``: the same schedules and a smaller nnU-Net (``FAST_PLAN``: 39 instead of 358 GFLOP per
  1024x768 pass); the registered versions carry ``FAST_INFERENCE`` settings (nnU-Net on the
  image as one tile without Gaussian weighting; Cellpose in 160 px tiles with 60 dynamics
  iterations run only on nnU-Net's foreground). ``bench/presegment_bench.py`` times it and ``bench/fast_accuracy.py``
  measures its accuracy against ``default``. Cellpose keeps its scale
  (``FAST_CELLPOSE_SCALE``) and its flow quality check: training it at half scale or skipping
  the check was faster but cost 0.03 to 0.05 precision@0.7 on that benchmark, and one
  whole-image tile was both slower on a CPU and less precise;
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

FAST_PLAN: dict[str, int] = {"n_stages": 5, "base_features": 16, "max_features": 128, "n_conv_per_stage": 1}
FAST_CELLPOSE_SCALE = 1.0

# Backend settings per model kind for the fast preset (see the backends' docstrings).
FAST_INFERENCE: dict[str, dict[str, Any]] = {
    "nnunet": {"tile_step_size": 1.0, "use_gaussian": False},
    # 160 px tiles in batches of 4: on a CPU smaller tiles run faster per pixel than Cellpose's 224
    # (5.7 s instead of 8.9 s per 1024x768 field on 2 cores) at equal accuracy
    "cellpose": {"niter": 60, "bsize": 160, "batch_size": 4},
}
FAST_INFERENCE["two_stage"] = {
    "nnunet": FAST_INFERENCE["nnunet"],
    "cellpose": FAST_INFERENCE["cellpose"],
    "restrict_masks": True,
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
        from cytoseg.trainers.configs import NnUNetPlansOverride, NnUNetTrainConfig

        nn = NnUNetTrainConfig.tiny() if tiny else NnUNetTrainConfig()
        if preset == "fast":
            nn.plans = NnUNetPlansOverride(
                n_stages=FAST_PLAN["n_stages"],
                base_features=FAST_PLAN["base_features"],
                max_features=FAST_PLAN["max_features"],
                n_conv_per_stage=FAST_PLAN["n_conv_per_stage"],
            )
        return nn.to_dict()
    if stage == "cellpose":
        from cytoseg.trainers.configs import CellposeTrainConfig

        cp = CellposeTrainConfig.tiny() if tiny else CellposeTrainConfig()
        if preset == "fast":
            cp.network_scale = FAST_CELLPOSE_SCALE
        return cp.to_dict()
    if stage == "refinement":
        from cytoseg.trainers.configs import RefinementTrainConfig

        return (RefinementTrainConfig.tiny() if tiny else RefinementTrainConfig()).to_dict()
    raise ValueError(f"unknown training stage {stage!r}")


def preset_backend_settings(*, preset: str, kind: str) -> dict[str, Any]:
    """Inference settings a model version of ``kind`` trained with ``preset`` is registered with."""
    if preset == "fast":
        return copy.deepcopy(FAST_INFERENCE.get(kind, {}))
    return {}
