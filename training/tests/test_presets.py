"""Training presets: base configurations, registered inference settings, job validation."""

from __future__ import annotations

import pytest

from core.errors import ServiceValidationError
from cytoseg.trainers.configs import CellposeTrainConfig, NnUNetTrainConfig
from cytoseg.trainers.presets import (
    FAST_CELLPOSE_SCALE,
    FAST_INFERENCE,
    FAST_PLAN,
    preset_backend_settings,
    preset_base_config,
)
from training.services.config import training_config_validate


def test_default_preset_is_paper_a_and_the_planners_plan() -> None:
    nn = NnUNetTrainConfig.from_dict(preset_base_config(preset="default", stage="nnunet"))
    assert (nn.num_epochs, nn.num_iterations_per_epoch, nn.initial_lr) == (50, 250, 7e-3)
    assert nn.plans.is_empty()
    cp = CellposeTrainConfig.from_dict(preset_base_config(preset="default", stage="cellpose"))
    assert cp.network_scale == 1.0 and cp.diam_mean is None
    assert preset_backend_settings(preset="default", kind="two_stage") == {}


def test_fast_preset_shrinks_the_models_and_keeps_the_schedules() -> None:
    nn = NnUNetTrainConfig.from_dict(preset_base_config(preset="fast", stage="nnunet"))
    assert (nn.plans.n_stages, nn.plans.base_features, nn.plans.max_features, nn.plans.n_conv_per_stage) == (
        5,
        16,
        128,
        1,
    )
    assert (nn.num_epochs, nn.num_iterations_per_epoch) == (50, 250)
    cp = CellposeTrainConfig.from_dict(preset_base_config(preset="fast", stage="cellpose"))
    assert cp.network_scale == FAST_CELLPOSE_SCALE == 1.0  # half scale cost precision@0.7 (fast_accuracy)
    assert cp.n_epochs == CellposeTrainConfig().n_epochs
    two = preset_backend_settings(preset="fast", kind="two_stage")
    cellpose = {"niter": 60, "bsize": 160, "batch_size": 4}
    assert two == {
        "nnunet": {"tile_step_size": 1.0, "use_gaussian": False},
        "cellpose": cellpose,
        "restrict_masks": True,
    }
    assert preset_backend_settings(preset="fast", kind="cellpose") == cellpose
    two["cellpose"]["niter"] = 1  # a copy: registering a version cannot change the preset
    assert FAST_INFERENCE["two_stage"]["cellpose"]["niter"] == 60 and FAST_PLAN["n_stages"] == 5
    assert preset_backend_settings(preset="fast", kind="watershed") == {}


def test_tiny_preset_and_unknown_names() -> None:
    assert preset_base_config(preset="tiny", stage="cellpose") == CellposeTrainConfig.tiny().to_dict()
    with pytest.raises(ValueError, match="unknown preset"):
        preset_base_config(preset="quick", stage="nnunet")
    with pytest.raises(ValueError, match="unknown training stage"):
        preset_base_config(preset="fast", stage="unet")


def test_job_config_accepts_the_fast_preset_and_checks_network_scale() -> None:
    config = {"preset": "fast", "cellpose": {"network_scale": 0.5}}
    assert training_config_validate(kind="two_stage", config=config) == config
    with pytest.raises(ServiceValidationError) as err:
        training_config_validate(kind="cellpose", config={"preset": "turbo", "cellpose": {"network_scale": 0}})
    assert err.value.errors == {
        "config.preset": "must be one of default, fast, tiny",
        "config.cellpose.network_scale": "must be positive",
    }
    with pytest.raises(ServiceValidationError) as err:
        training_config_validate(kind="cellpose", config={"cellpose": {"network_scale": "half"}})
    assert err.value.errors == {"config.cellpose.network_scale": "must be a number"}
