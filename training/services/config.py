"""The configuration of a training job: the trainers' sections, validated against their
configuration dataclasses (``cytoseg.trainers.configs``), and the job's own options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from core.errors import ServiceValidationError
from cytoseg.augment import AugmentConfig
from cytoseg.trainers import trainer_config_class, trainer_names
from cytoseg.trainers.configs import config_build, config_errors
from cytoseg.trainers.presets import PRESETS, preset_base_config
from training.models import (
    DatasetSource,
    JobKind,
    ModelKind,
)


# Which trainer sections each job kind uses.
@dataclass(frozen=True)
class Stage:
    """One training step of a job: a trainer (``cytoseg.trainers``), the folder under the job's
    directory where it leaves its model, and the model kind that folder is registered as."""

    trainer: str
    folder: str


@dataclass(frozen=True)
class Registration:
    """A model a job registers: its kind, its folder under the job's directory, the inference
    settings it starts with (the preset's are added by the runner)."""

    kind: str
    folder: str
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobPlan:
    """What a job kind trains and registers."""

    stages: tuple[Stage, ...]
    registrations: tuple[Registration, ...]


# The one table of what each kind of job does; the runner follows it (no branching by kind).
JOB_PLANS: dict[str, JobPlan] = {
    JobKind.NNUNET: JobPlan(
        stages=(Stage("nnunet", "nnunet"),), registrations=(Registration(ModelKind.NNUNET, "nnunet"),)
    ),
    JobKind.CELLPOSE: JobPlan(
        stages=(Stage("cellpose", "cellpose"),), registrations=(Registration(ModelKind.CELLPOSE, "cellpose"),)
    ),
    JobKind.TWO_STAGE: JobPlan(
        stages=(Stage("nnunet", "bundle/nnunet"), Stage("cellpose", "bundle/cellpose")),
        registrations=(
            Registration(ModelKind.NNUNET, "bundle/nnunet"),
            Registration(ModelKind.CELLPOSE, "bundle/cellpose"),
            Registration(ModelKind.TWO_STAGE, "bundle"),
        ),
    ),
    JobKind.REFINEMENT: JobPlan(
        stages=(Stage("refinement", "refinement"),),
        registrations=(Registration(ModelKind.REFINEMENT, "refinement", {"base": "nnunet"}),),
    ),
}
# Which trainer sections each job kind uses.
KIND_STAGES: dict[str, tuple[str, ...]] = {
    kind: tuple(stage.trainer for stage in plan.stages) for kind, plan in JOB_PLANS.items()
}


# Top-level job options besides the trainer sections.
JOB_OPTIONS: dict[str, str] = {
    "preset": "str",  # cytoseg.trainers.presets: "default" (paper A), "fast" (smaller models) or "tiny" (tests)
    "device": "str",  # "auto", "cpu", "cuda", "cuda:N"
    "evaluate": "bool",  # evaluate on the frozen test split (default true)
    "auto_promote": "bool?",  # null: the project's policy
    "cellpose_erythrocytes": "bool",  # erythrocytes are Cellpose instances too (default true)
    "base_model_version": "int?",  # refinement: the nnU-Net version to refine (default: active)
    "source": "str",  # dataset source when the job snapshots the data itself
    "synthetic": "dict",  # cytoseg.augment.AugmentConfig, idem
}


def _type_error(kind: str, value: Any) -> str | None:
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        return None if optional else "must not be null"
    if base == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "must be a number"
    if base == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if base == "str":
        return None if isinstance(value, str) else "must be a string"
    if base == "dict":
        return None if isinstance(value, dict) else "must be an object"
    if base in ("int[2]", "float[2]"):
        item = "int" if base == "int[2]" else "float"
        if not isinstance(value, list) or len(value) != 2 or any(_type_error(item, v) for v in value):
            return f"must be a list of two {'integers' if item == 'int' else 'numbers'}"
        return None
    raise AssertionError(kind)


def training_config_validate(*, kind: str, config: Any, with_snapshot: bool = False) -> dict[str, Any]:
    """Check a job configuration; ServiceValidationError names every bad key (``config.<path>``).

    Unknown keys are rejected rather than ignored: a misspelt hyper-parameter must not fall back
    silently to its default. Returns the configuration unchanged.
    """
    errors: dict[str, str] = {}
    if kind not in JobKind.values:
        raise ServiceValidationError("Invalid training job.", {"kind": f"must be one of {', '.join(JobKind.values)}"})
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ServiceValidationError("Invalid training job.", {"config": "must be an object"})
    stages = KIND_STAGES[kind]
    for key, value in config.items():
        path = f"config.{key}"
        if key in trainer_names():
            if key not in stages:
                errors[path] = f"not used by a {kind} job (it trains {', '.join(stages)})"
            else:
                errors.update(config_errors(trainer_config_class(key), value, path))
            continue
        option = JOB_OPTIONS.get(key)
        if option is None:
            errors[path] = "unknown key"
            continue
        problem = _type_error(option, value)
        if problem:
            errors[path] = problem
        elif key == "preset" and value not in PRESETS:
            errors[path] = f"must be one of {', '.join(PRESETS)}"
        elif key == "device" and not (value in ("auto", "cpu", "cuda") or str(value).startswith("cuda:")):
            errors[path] = "must be auto, cpu, cuda or cuda:N"
        elif key == "source" and value not in DatasetSource.values:
            errors[path] = f"must be one of {', '.join(DatasetSource.values)}"
        elif key in ("source", "synthetic") and with_snapshot:
            errors[path] = "not used with an existing snapshot (its data is fixed)"
        elif key == "base_model_version" and kind != JobKind.REFINEMENT:
            errors[path] = "only a refinement job has a base model"
        elif key == "cellpose_erythrocytes" and "cellpose" not in stages:
            errors[path] = f"not used by a {kind} job"
    synthetic = config.get("synthetic")
    if isinstance(synthetic, dict) and "config.synthetic" not in errors:
        errors.update(AugmentConfig.from_dict_errors(synthetic, prefix="config.synthetic"))
    if errors:
        raise ServiceValidationError("Invalid training configuration.", errors)
    return config


def config_merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied key by key (nested objects merged, not replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = config_merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def stage_config(*, config: Mapping[str, Any], stage: str) -> Any:
    """A trainer's configuration for a job: the preset's, overridden by the job's section."""
    preset = str(config.get("preset", "default"))
    merged = config_merged(preset_base_config(preset=preset, stage=stage), config.get(stage) or {})
    return config_build(trainer_config_class(stage), merged)


def device_for(config: Mapping[str, Any]) -> str:
    wanted = str(config.get("device") or settings.TRAINING_DEVICE)
    if wanted == "auto":
        from cytoseg.device import device_default

        return device_default()
    return wanted
