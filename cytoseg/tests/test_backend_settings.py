"""Backend settings as a schema: every key typed and ranged, unknown keys and (for the platform)
server paths refused, each mistake named."""

from __future__ import annotations

import pytest

from cytoseg.backends import (
    PATHS_REFUSED,
    BackendError,
    backend_names,
    backend_settings_class,
    backend_settings_errors,
)
from cytoseg.backends.base import settings_build
from cytoseg.backends.settings import CellposeSettings, NnUNetSettings, TwoStageSettings


def test_every_backend_has_a_settings_schema() -> None:
    for name in backend_names():
        cls = backend_settings_class(name)
        assert cls is not None
        cls()  # the defaults are valid
        assert backend_settings_errors(name, {}) == {}
    with pytest.raises(BackendError, match="unknown backend"):
        backend_settings_class("yolo")


def test_paths_are_refused_where_the_platform_asks() -> None:
    values = {"model_folder": "/srv/other-project/model", "tile_step_size": 0.5}
    assert backend_settings_errors("nnunet", values) == {}  # a notebook may point at its own folder
    assert backend_settings_errors("nnunet", values, allow_paths=False) == {"model_folder": PATHS_REFUSED}
    nested = {"nnunet": {"model_folder": "/x"}, "cellpose_model_file": "/y", "cellpose": {"model_file": "/z"}}
    assert backend_settings_errors("two_stage", nested, allow_paths=False) == {
        "nnunet.model_folder": PATHS_REFUSED,
        "cellpose_model_file": PATHS_REFUSED,
        "cellpose.model_file": PATHS_REFUSED,
    }
    refinement = {"base": "nnunet", "weights": "/w", "base_artifacts": "/b", "base_settings": {"model_folder": "/m"}}
    assert backend_settings_errors("refinement", refinement, allow_paths=False) == {
        "weights": PATHS_REFUSED,
        "base_artifacts": PATHS_REFUSED,
        "base_settings.model_folder": PATHS_REFUSED,
    }


def test_each_bad_value_is_named() -> None:
    errors = backend_settings_errors(
        "nnunet",
        {
            "tile_step_size": "fast",
            "use_mirroring": 1,
            "checkpoint": "../../../etc/x.pth",
            "folds": [0, "x"],
            "instance": "none",
        },
    )
    assert set(errors) == {"tile_step_size", "use_mirroring", "checkpoint", "folds", "instance"}
    assert "unknown setting" in errors["instance"] and "must be one of" in errors["checkpoint"]
    errors = backend_settings_errors(
        "two_stage", {"cellpose": {"bsize": 8, "diameter": -1}, "min_fg_fraction": 2, "nnunet": []}
    )
    assert set(errors) == {"cellpose.bsize", "cellpose.diameter", "min_fg_fraction", "nnunet"}
    assert backend_settings_errors("refinement", {"base": "yolo"}) == {
        "base": "unknown backend 'yolo'; known: " + ", ".join(backend_names())
    }
    assert "set base first" in backend_settings_errors("refinement", {"base_settings": {}})["base_settings"]
    assert backend_settings_errors("refinement", {"base": "watershed", "base_settings": {"min_area": -1}}) == {
        "base_settings.min_area": "min_area must be in [0, inf], got -1"
    }
    assert backend_settings_errors("watershed", {"flood": "sideways"})["flood"].startswith("flood must be one of")
    assert backend_settings_errors("cellpose", ["not", "an", "object"]) == {"": "must be an object"}


def test_settings_build_normalises_and_refuses() -> None:
    cfg = settings_build(NnUNetSettings, {"folds": [0, "all"], "tile_step_size": 1}, backend="nnunet")
    assert cfg.folds == (0, "all") and cfg.tile_step_size == 1.0
    assert settings_build(CellposeSettings, {"channels": [0, 0], "bsize": 0}, backend="cellpose").channels == (0, 0)
    with pytest.raises(BackendError, match="unknown setting"):
        settings_build(TwoStageSettings, {"nnunet_folder": "/x"}, backend="two_stage")
    with pytest.raises(BackendError, match="bsize"):
        settings_build(TwoStageSettings, {"cellpose": {"bsize": 3}}, backend="two_stage")
    assert settings_build(CellposeSettings, {"diameter_scale": 0.8}, backend="cellpose").diameter_scale == 0.8
    assert (
        "diameter_scale must be in [0.25, 4.0]"
        in backend_settings_errors("cellpose", {"diameter_scale": 5})["diameter_scale"]
    )
    assert settings_build(NnUNetSettings, {"instances": "seeds"}, backend="nnunet").instances == "seeds"
    assert settings_build(TwoStageSettings, {}, backend="two_stage").assign_flow_threshold == 0.8
    assert "assign_flow_threshold" in backend_settings_errors("two_stage", {"assign_flow_threshold": -1})
    assert "must be one of" in backend_settings_errors("nnunet", {"instances": "watershed"})["instances"]
    # patches per network pass of nnU-Net's batched prediction (cytoseg.tiled's tiles)
    assert settings_build(NnUNetSettings, {"batch_size": 16}, backend="nnunet").batch_size == 16
    assert "batch_size must be in [1, 512]" in backend_settings_errors("nnunet", {"batch_size": 0})["batch_size"]


def test_the_light_registry_names_each_backends_own_settings() -> None:
    """``SETTINGS_PATHS`` (read without importing torch) must agree with the backends' classes."""
    from cytoseg.backends import backend_class

    for name in backend_names():
        assert backend_class(name).settings_class is backend_settings_class(name), name
