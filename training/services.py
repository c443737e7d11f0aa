"""Writes of the training app: snapshots, jobs (and the job body the worker runs), the model
registry with evaluation and gated promotion, retraining schedules.

Jobs. ``training_job_start`` validates the configuration, snapshots the data (or takes a given
snapshot), creates the job and enqueues ``training.run_job`` on the ``gpu`` queue once the
transaction commits. A partial unique index allows one queued-or-running job per project.
``training_job_run`` is the body of that task: it claims the job (queued -> running; a job that
is no longer queued is never run, which is what makes a redelivered message harmless), beats a
heartbeat from a thread, trains (trainers get ``progress`` and ``should_cancel`` callbacks),
registers the new model versions with their artifact files' sha256, evaluates them and the
active model on the snapshot's frozen test split, and applies the promotion gate.

Crash recovery: a job whose worker died is marked failed with the reason by
``training_jobs_reap`` (run at worker start, by the ``training.watchdog`` beat task, and when a
redelivered task finds its job still "running"): a job whose process is gone on this host, or
whose heartbeat is older than ``TRAINING_HEARTBEAT_TIMEOUT``, or that stayed queued longer than
``TRAINING_QUEUED_TIMEOUT``.

Cancel: a queued job is cancelled at once; a running one gets ``cancel_requested``, which the
trainers poll through ``should_cancel``.

Artifacts: files under ``TRAINING_DIR/<job id>/``; every file's sha256 is recorded in
``ModelVersion.artifacts`` and checked again before a version is evaluated or promoted. Torch
checkpoints must load with ``torch.load(weights_only=True)``: nnU-Net's checkpoint (which holds
numpy scalars and the optimiser state) is rewritten into such a file before registration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files import File
from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from annotations.models import Project, Split
from annotations.services.audit import audit_record
from core.errors import ConflictError, ServiceValidationError
from core.queue import task_enqueue
from cytoseg.augment import cells_from_polygons
from cytoseg.backends import backend_settings_errors
from cytoseg.backends.packages import (
    PACKAGE_KINDS,
    PackageError,
    archive_unpack,
    folder_remove,
    package_files,
    package_prepare,
    package_single_file,
)
from cytoseg.evaluation import DEFAULT_GUARDED, METRICS, EvalImage, GateDecision, evaluate_backend, gate_decide
from cytoseg.imaging import read_rgb
from cytoseg.trainers.presets import PRESETS, preset_backend_settings, preset_base_config
from training.models import (
    LIVE_JOB_STATUSES,
    DatasetSnapshot,
    DatasetSource,
    Evaluation,
    FrozenTestImage,
    ImageCompletion,
    JobKind,
    JobStatus,
    JobTrigger,
    ModelKind,
    ModelStatus,
    ModelVersion,
    SnapshotItem,
    TrainingJob,
    TrainingPolicy,
)
from training.snapshots import (
    LoadedCase,
    SnapshotData,
    dataset_snapshot_create,
    eligible_images,
    snapshot_load,
    source_layer,
)

logger = logging.getLogger(__name__)

__all__ = [
    "artifact_roots",
    "artifacts_inspect",
    "artifacts_verify",
    "dataset_snapshot_create",
    "image_completion_set",
    "job_fail",
    "model_version_evaluate",
    "model_version_promote",
    "model_version_rollback",
    "model_version_settings",
    "model_version_upload",
    "new_image_count",
    "training_config_validate",
    "training_job_cancel",
    "training_job_run",
    "training_job_start",
    "training_jobs_reap",
    "training_policy_get",
    "training_policy_update",
    "training_schedule_check",
]

# --- configuration schema ------------------------------------------------------------------
#
# The trainers' config dataclasses live in modules that import torch, nnU-Net and Cellpose; the
# web process validates against this mirror of their fields instead (a test keeps the two equal).
# Types: "int", "float", "bool", "str", "int?" (or null), "float?", "int[2]", "float[2]", "int[2]?".

_AUG = {
    "p_flip": "float",
    "p_rotation": "float",
    "rotation_deg": "float[2]",
    "p_scaling": "float",
    "scaling": "float[2]",
    "p_low_res": "float",
    "low_res_scale": "float[2]",
    "p_gamma": "float",
    "gamma": "float[2]",
    "p_gamma_inverted": "float",
    "p_brightness": "float",
    "brightness": "float[2]",
    "p_contrast": "float",
    "contrast": "float[2]",
    "p_blur": "float",
    "blur_sigma": "float[2]",
    "p_noise": "float",
    "noise_variance": "float[2]",
}
_PLANS = {
    "patch_size": "int[2]?",
    "batch_size": "int?",
    "n_stages": "int?",
    "base_features": "int?",
    "max_features": "int?",
    "n_conv_per_stage": "int?",
}
NNUNET_SCHEMA: dict[str, Any] = {
    "num_epochs": "int",
    "num_iterations_per_epoch": "int",
    "num_val_iterations_per_epoch": "int",
    "initial_lr": "float",
    "weight_decay": "float",
    "oversample_foreground_percent": "float",
    "augmentation": _AUG,
    "plans": _PLANS,
    "configuration": "str",
    "normalization": "str",
    "dataset_id": "int",
    "dataset_name": "str",
    "deep_supervision": "bool",
    "num_workers_da": "int",
    "compile": "bool",
    "save_every": "int",
    "plot_progress": "bool",
    "progress_every_iterations": "int",
    "seed": "int?",
}
CELLPOSE_SCHEMA: dict[str, Any] = {
    "n_epochs": "int",
    "learning_rate": "float",
    "warmup_epochs": "int",
    "weight_decay": "float",
    "batch_size": "int",
    "sgd": "bool",
    "momentum": "float",
    "channels": "int[2]?",
    "diam_mean": "float?",
    "network_scale": "float",
    "rescale": "bool",
    "scale_range": "float?",
    "bsize": "int",
    "nimg_per_epoch": "int?",
    "min_train_masks": "int",
    "val_every": "int",
    "bn_recalibrate_batches": "int",
    "seed": "int",
}
REFINEMENT_SCHEMA: dict[str, Any] = {
    "max_epochs": "int",
    "iterations_per_epoch": "int",
    "batch_size": "int",
    "patch_size": "int",
    "learning_rate": "float",
    "weight_decay": "float",
    "patience": "int",
    "min_delta": "float",
    "seed": "int",
}
# Which trainer sections each job kind uses.
KIND_STAGES: dict[str, tuple[str, ...]] = {
    JobKind.NNUNET: ("nnunet",),
    JobKind.CELLPOSE: ("cellpose",),
    JobKind.TWO_STAGE: ("nnunet", "cellpose"),
    JobKind.REFINEMENT: ("refinement",),
}
_STAGE_SCHEMAS = {"nnunet": NNUNET_SCHEMA, "cellpose": CELLPOSE_SCHEMA, "refinement": REFINEMENT_SCHEMA}
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
_POSITIVE = {
    "num_epochs",
    "num_iterations_per_epoch",
    "n_epochs",
    "max_epochs",
    "iterations_per_epoch",
    "batch_size",
    "bsize",
    "patch_size",
    "val_every",
    "progress_every_iterations",
    "save_every",
    "min_train_masks",
}


# String options of the trainers, each from a fixed set.
_CHOICES: dict[str, tuple[str, ...]] = {"configuration": ("2d",), "normalization": ("zscore", "rgb_to_0_1")}


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


def _validate_section(data: Any, schema: Mapping[str, Any], prefix: str, errors: dict[str, str]) -> None:
    if not isinstance(data, dict):
        errors[prefix] = "must be an object"
        return
    for key, value in data.items():
        path = f"{prefix}.{key}"
        kind = schema.get(key)
        if kind is None:
            errors[path] = "unknown key"
        elif isinstance(kind, dict):
            _validate_section(value, kind, path, errors)
        else:
            problem = _type_error(kind, value)
            if problem:
                errors[path] = problem
            elif key in _POSITIVE and isinstance(value, int) and value < 1:
                errors[path] = "must be at least 1"
            elif key.startswith("p_") and not 0 <= value <= 1:
                errors[path] = "must be a probability in [0, 1]"
            elif key in ("initial_lr", "learning_rate", "network_scale") and value <= 0:
                errors[path] = "must be positive"
            elif key in _CHOICES and value not in _CHOICES[key]:
                errors[path] = f"must be one of {', '.join(_CHOICES[key])}"
            elif key == "dataset_name" and not re.fullmatch(r"[A-Za-z0-9_]{1,50}", value):
                errors[path] = "must be 1-50 letters, digits or underscores (it names a folder)"
            elif key == "dataset_id" and not 1 <= value <= 999:
                errors[path] = "must be from 1 to 999"


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
        if key in _STAGE_SCHEMAS:
            if key not in stages:
                errors[path] = f"not used by a {kind} job (it trains {', '.join(stages)})"
            else:
                _validate_section(value, _STAGE_SCHEMAS[key], path, errors)
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
        from cytoseg.augment import AugmentConfig

        try:
            AugmentConfig.from_dict(synthetic)
        except KeyError as exc:
            for key in str(exc.args[0]).split(", "):
                errors[f"config.synthetic.{key}"] = "unknown key"
        except (TypeError, ValueError) as exc:
            errors["config.synthetic"] = str(exc)
    if errors:
        raise ServiceValidationError("Invalid training configuration.", errors)
    return config


def _merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


# --- artifacts -----------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifacts_inspect(root: Path) -> list[dict[str, Any]]:
    """``[{path, sha256, size}]`` of every file under ``root`` (paths relative to it, sorted)."""
    root = Path(root)
    out = []
    for relative in package_files(root):
        path = root if root.is_file() else root / relative
        out.append({"path": relative, "sha256": file_sha256(path), "size": path.stat().st_size})
    return out


def artifact_roots() -> tuple[Path, ...]:
    """Where model files may lie: training outputs and uploaded packages, nowhere else."""
    return (Path(settings.TRAINING_DIR).resolve(), Path(settings.MODEL_DIR).resolve())


def artifacts_verify(version: ModelVersion) -> None:
    """Raise ConflictError unless ``version``'s files are exactly the ones registered.

    They must lie in the platform's model storage (a version registered by path before uploads
    existed may point anywhere and is refused), be the recorded files and no others (a loader
    picks up any fold it finds), and each have its recorded sha256.
    """
    if version.kind not in PACKAGE_KINDS:
        return
    if not version.artifact_path or not version.artifacts:
        raise ConflictError(f"{version} has no recorded model files; upload the model again.")
    root = Path(version.artifact_path).resolve()
    if not any(root.is_relative_to(top) for top in artifact_roots()):
        raise ConflictError(f"The files of {version} lie outside the platform's model storage; upload the model again.")
    try:
        present = set(package_files(root)) if root.exists() else set()
    except PackageError as exc:
        raise ConflictError(f"The files of {version} are refused: {exc}") from exc
    recorded = {entry["path"] for entry in version.artifacts}
    if present != recorded:
        changed = sorted(present ^ recorded)
        raise ConflictError(f"The files of {version} changed since it was registered: {', '.join(changed[:5])}.")
    for entry in version.artifacts:
        path = root if root.is_file() else root / entry["path"]
        if file_sha256(path) != entry["sha256"]:
            raise ConflictError(f"Artifact {entry['path']} of {version} does not match its recorded sha256.")


def model_version_settings(*, version: ModelVersion) -> dict[str, Any]:
    """The backend settings ``version`` runs with: the project's settings for its kind,
    overridden by the version's own.

    Checked against the backend's schema with server paths refused, so that settings stored
    before they were validated can never point a worker at a file.
    """
    project_settings = (version.project.pipeline or {}).get(version.kind) or {}
    merged = {**(project_settings if isinstance(project_settings, dict) else {}), **(version.config or {})}
    errors = backend_settings_errors(version.kind, merged, allow_paths=False)
    if errors:
        problems = "; ".join(f"{key or 'settings'}: {message}" for key, message in sorted(errors.items()))
        raise ConflictError(f"The settings of {version} are invalid ({problems}); correct the project's pipeline.")
    return merged


def model_version_upload(
    *,
    project: Project,
    kind: str,
    upload: File | None,
    name: str = "",
    config: Any = None,
    user: User | None,
    activate: bool = False,
) -> ModelVersion:
    """Register a model the admin uploads: a .zip of the model folder, or a single torch file.

    The package is unpacked into the platform's model storage (never read from a path anyone
    names), every torch file must load weights-only, nnU-Net's plans may only name allowed
    classes, and the files' sha256 are recorded and checked again before every use. ``config``
    holds the version's inference settings, validated like a project's pipeline.
    """
    config = {} if config is None else config
    errors: dict[str, str] = {}
    if kind not in ModelKind.values:
        errors["kind"] = f"must be one of {', '.join(ModelKind.values)}"
    else:
        settings_problems = backend_settings_errors(kind, config, allow_paths=False)
        errors.update({f"config.{k}" if k else "config": v for k, v in settings_problems.items()})
        if kind in PACKAGE_KINDS and upload is None:
            errors["file"] = f"is required: a {kind} model is uploaded as a .zip of its folder" + (
                " or a single .pth file" if kind in ("cellpose", "refinement") else ""
            )
        elif kind not in PACKAGE_KINDS and upload is not None:
            errors["file"] = f"a {kind} model has no files"
        elif upload is not None and (upload.size or 0) > settings.MODEL_UPLOAD_MAX_BYTES:
            errors["file"] = f"is larger than {settings.MODEL_UPLOAD_MAX_BYTES} bytes"
    if len(name) > 200:
        errors["name"] = "must be at most 200 characters"
    if errors:
        raise ServiceValidationError("Invalid model version.", errors)
    folder = _package_store(project=project, kind=kind, upload=upload, config=config) if upload is not None else None
    try:
        return _model_version_create(
            project=project,
            kind=kind,
            name=name,
            folder=folder,
            config=config,
            user=user,
            status=ModelStatus.ACTIVE if activate else ModelStatus.CANDIDATE,
        )
    except BaseException:
        if folder is not None:
            folder_remove(folder)
        raise


def _package_store(*, project: Project, kind: str, upload: File, config: Mapping[str, Any]) -> Path:
    """Unpack (or copy) an upload into a fresh folder of the model storage, checked."""
    key = uuid.uuid4().hex
    staging = Path(settings.MODEL_DIR) / "staging" / key
    staging.mkdir(parents=True)
    file_name = Path(upload.name or "upload").name
    try:
        upload.seek(0)
        # By name: a .pth file is itself a zip archive (torch's format), never to be unpacked.
        if file_name.lower().endswith(".zip"):
            archive_unpack(upload, staging, max_bytes=settings.MODEL_UPLOAD_MAX_BYTES)
        else:
            with (staging / package_single_file(kind, file_name)).open("xb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
        package_prepare(kind, staging, config)
        final = Path(settings.MODEL_DIR) / str(project.pk) / key
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
        return final
    except PackageError as exc:
        folder_remove(staging)
        raise ServiceValidationError("The model files were refused.", {"file": str(exc)}) from exc
    except BaseException:
        folder_remove(staging)
        raise


def _model_version_create(
    *,
    project: Project,
    kind: str,
    name: str,
    folder: Path | None,
    config: dict[str, Any],
    user: User | None,
    status: str,
    job: TrainingJob | None = None,
) -> ModelVersion:
    """The registry row of a checked package (numbered per project and kind; one active per kind)."""
    artifacts = artifacts_inspect(folder) if folder is not None else []
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        last = ModelVersion.objects.filter(project=project, kind=kind).aggregate(top=Max("number"))
        version = ModelVersion.objects.create(
            project=project,
            kind=kind,
            number=(last["top"] or 0) + 1,
            name=name,
            artifact_path=str(folder) if folder is not None else "",
            artifacts=artifacts,
            config=config,
            status=status,
            promoted_at=timezone.now() if status == ModelStatus.ACTIVE else None,
            created_by=user,
            job=job,
            snapshot=job.snapshot if job is not None else None,
        )
        if status == ModelStatus.ACTIVE:
            # One active version per kind: pre-segmentation picks among kinds by preference.
            ModelVersion.objects.filter(project=project, kind=kind, status=ModelStatus.ACTIVE).exclude(
                pk=version.pk
            ).update(status=ModelStatus.RETIRED)
    return version


# --- marking images complete (the fallback source) -----------------------------------------


def image_completion_set(*, project: Project, image_ids: list[int], complete: bool, user: User) -> int:
    """Mark (or unmark) images whose annotation layer an admin considers complete for training."""
    images = list(project.images.filter(pk__in=image_ids))
    missing = sorted(set(image_ids) - {i.pk for i in images})
    if missing:
        raise ServiceValidationError(
            "Unknown images.", {"images": f"not images of this project: {', '.join(map(str, missing))}"}
        )
    with transaction.atomic():
        if complete:
            for image in images:
                ImageCompletion.objects.update_or_create(
                    image=image, defaults={"revision": image.revision, "marked_by": user}
                )
        else:
            ImageCompletion.objects.filter(image__in=images).delete()
        audit_record(
            project=project,
            actor=user,
            action="training.images_complete" if complete else "training.images_incomplete",
            target=f"{len(images)} images",
            after={"images": [i.pk for i in images]},
        )
    return len(images)


# --- jobs: start, cancel -------------------------------------------------------------------


def _live_job(project: Project) -> TrainingJob | None:
    return TrainingJob.objects.filter(project=project, status__in=LIVE_JOB_STATUSES).first()


def training_job_start(
    *,
    project: Project,
    user: User | None,
    kind: str,
    config: dict[str, Any] | None = None,
    snapshot: DatasetSnapshot | None = None,
    trigger: str = JobTrigger.MANUAL,
) -> TrainingJob:
    """Validate, snapshot the data unless ``snapshot`` is given, create the job and enqueue it.

    409 when the project already has a queued or running job.
    """
    config = training_config_validate(kind=kind, config=config or {}, with_snapshot=snapshot is not None)
    if snapshot is not None and snapshot.project_id != project.pk:
        raise ServiceValidationError("Invalid training job.", {"snapshot": "not a snapshot of this project"})
    live = _live_job(project)
    if live is not None:
        raise ConflictError(
            f"Training job {live.pk} of this project is {live.status}; one job at a time.", {"job": live.pk}
        )
    if kind == JobKind.REFINEMENT:
        _refinement_base(project=project, version_id=config.get("base_model_version"))

    task_id = str(uuid.uuid4())
    try:
        with transaction.atomic():
            if snapshot is None:
                snapshot = dataset_snapshot_create(
                    project=project,
                    user=user,
                    source=config.get("source", DatasetSource.VERIFIED),
                    synthetic=config.get("synthetic"),
                )
            if not snapshot.counts.get(Split.TRAIN, {}).get("images"):
                raise ServiceValidationError(
                    "Nothing to train on.", {"snapshot": f"snapshot {snapshot.number} has no training images"}
                )
            job = TrainingJob.objects.create(
                project=project,
                kind=kind,
                snapshot=snapshot,
                config=config,
                created_by=user,
                trigger=trigger,
                task_id=task_id,
            )
            job.artifact_dir = str(Path(settings.TRAINING_DIR) / str(job.pk))
            job.save(update_fields=["artifact_dir"])
            audit_record(
                project=project,
                actor=user,
                action="training.start",
                target=str(job),
                after={"job": job.pk, "kind": kind, "snapshot": snapshot.pk, "config": config, "trigger": trigger},
            )
    except IntegrityError as exc:  # the partial unique index: another job was created meanwhile
        live = _live_job(project)
        raise ConflictError(
            "A training job of this project is already queued or running.", {"job": live.pk if live else None}
        ) from exc
    job_id = job.pk
    task_enqueue("training.run_job", args=[job_id], queue="gpu", task_id=task_id)
    return job


def training_job_cancel(*, job: TrainingJob, user: User | None) -> TrainingJob:
    """Cancel a queued job now; ask a running one to stop (its trainer polls the flag). 409 when
    the job has already finished."""
    now = timezone.now()
    with transaction.atomic():
        locked = TrainingJob.objects.select_for_update().get(pk=job.pk)
        if locked.status == JobStatus.QUEUED:
            locked.status = JobStatus.CANCELLED
            locked.cancel_requested = True
            locked.cancelled_by = user
            locked.finished_at = now
            locked.log = _log_append(locked.log, "cancelled before it started")
            locked.save(update_fields=["status", "cancel_requested", "cancelled_by", "finished_at", "log"])
        elif locked.status == JobStatus.RUNNING:
            if not locked.cancel_requested:
                locked.cancel_requested = True
                locked.cancelled_by = user
                locked.save(update_fields=["cancel_requested", "cancelled_by"])
        else:
            raise ConflictError(f"Training job {locked.pk} has already {locked.status}.", {"status": locked.status})
        audit_record(
            project=locked.project,
            actor=user,
            action="training.cancel",
            target=str(locked),
            after={"status": locked.status},
        )
    return locked


# --- jobs: the worker side -----------------------------------------------------------------

LOG_LIMIT = 200_000


def _log_append(log: str, line: str) -> str:
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    text = f"{log}{stamp} {line}\n"
    return text[-LOG_LIMIT:] if len(text) > LOG_LIMIT else text


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_fail(job_id: int, reason: str, *, statuses: Iterable[str] = (JobStatus.RUNNING,)) -> bool:
    """Mark a job failed with ``reason`` if it is still in one of ``statuses``."""
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().filter(pk=job_id, status__in=list(statuses)).first()
        if job is None:
            return False
        job.status = JobStatus.FAILED
        job.error = reason
        job.finished_at = timezone.now()
        job.log = _log_append(job.log, f"failed: {reason}")
        job.save(update_fields=["status", "error", "finished_at", "log"])
        ModelVersion.objects.filter(job=job, status=ModelStatus.CANDIDATE).update(status=ModelStatus.FAILED)
    logger.warning("Training job %s failed: %s", job_id, reason)
    return True


def _worker_lost_reason(job: TrainingJob, now: Any) -> str | None:
    """Why a running job is evidently dead, or None when it may still be alive."""
    if job.worker_host == socket.gethostname() and job.worker_pid and not _pid_alive(job.worker_pid):
        return f"the worker process {job.worker_pid} on {job.worker_host} is gone (killed or crashed)"
    timeout = timedelta(seconds=settings.TRAINING_HEARTBEAT_TIMEOUT)
    if job.heartbeat_at is None or now - job.heartbeat_at > timeout:
        last = job.heartbeat_at.isoformat() if job.heartbeat_at else "never"
        return f"no heartbeat for more than {settings.TRAINING_HEARTBEAT_TIMEOUT} s (last {last}); the worker was lost"
    return None


def training_jobs_reap(*, now: Any = None) -> list[int]:
    """Mark failed, with the reason, every job whose worker is evidently gone (see the module
    docstring). Returns the ids of the jobs it failed."""
    now = now or timezone.now()
    failed: list[int] = []
    for job in TrainingJob.objects.filter(status=JobStatus.RUNNING):
        reason = _worker_lost_reason(job, now)
        if reason and job_fail(job.pk, reason):
            failed.append(job.pk)
    stale = now - timedelta(seconds=settings.TRAINING_QUEUED_TIMEOUT)
    for job_id in TrainingJob.objects.filter(status=JobStatus.QUEUED, created_at__lt=stale).values_list(
        "pk", flat=True
    ):
        reason = f"still queued after {settings.TRAINING_QUEUED_TIMEOUT} s: its task was lost or no gpu worker runs"
        if job_fail(job_id, reason, statuses=(JobStatus.QUEUED,)):
            failed.append(job_id)
    return failed


def _device(config: Mapping[str, Any]) -> str:
    wanted = str(config.get("device") or settings.TRAINING_DEVICE)
    if wanted == "auto":
        from cytoseg.device import device_default

        return device_default()
    return wanted


class _JobRunner:
    """Runs one claimed job: callbacks for the trainers, heartbeat, bookkeeping."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.progress: dict[str, Any] = {}
        self.curves: dict[str, list[dict[str, Any]]] = {}
        self.timings: dict[str, float] = {}
        self.log = job.log
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.root = Path(job.artifact_dir or Path(settings.TRAINING_DIR) / str(job.pk))
        self.work = self.root / "work"

    # bookkeeping ---------------------------------------------------------------------------

    def write(self, **extra: Any) -> None:
        TrainingJob.objects.filter(pk=self.job.pk).update(
            progress=self.progress,
            curves=self.curves,
            log=self.log,
            timings=self.timings,
            heartbeat_at=timezone.now(),
            **extra,
        )
        self._last_write = time.monotonic()

    def note(self, line: str) -> None:
        self.log = _log_append(self.log, line)
        logger.info("training job %s: %s", self.job.pk, line)

    def progress_fn(self, stage: str) -> Callable[[dict[str, Any]], None]:
        def report(info: dict[str, Any]) -> None:
            phase = info.get("phase")
            if phase == "epoch":
                point = {k: v for k, v in info.items() if k != "phase"}
                self.curves.setdefault(stage, []).append(_json_floats(point))
                self.progress = {
                    "stage": stage,
                    "phase": "train",
                    "epoch": info.get("epoch", 0) + 1,
                    "epochs": info.get("epochs"),
                    "iteration": self.progress.get("iteration"),
                    "iterations": self.progress.get("iterations"),
                    "loss": _json_floats(info.get("train_loss")),
                }
                self.note(
                    f"{stage} epoch {info.get('epoch', 0) + 1}/{info.get('epochs')}: "
                    + ", ".join(f"{k}={_fmt(v)}" for k, v in point.items() if k not in ("epoch", "epochs"))
                )
                self.write()
                return
            if phase == "prepare":
                self.progress = {"stage": stage, "phase": "prepare", "step": info.get("step")}
                self.note(f"{stage}: {info.get('step')}")
                self.write()
                return
            self.progress = {
                "stage": stage,
                "phase": "train",
                **_json_floats(
                    {
                        k: info.get(k)
                        for k in ("epoch", "epochs", "iteration", "iterations", "loss", "step")
                        if k in info
                    }
                ),
            }
            if "epoch" in self.progress:
                self.progress["epoch"] = int(self.progress["epoch"]) + 1  # 1-based for people
            if time.monotonic() - self._last_write >= 1.0:
                self.write()

        return report

    def should_cancel(self) -> bool:
        if self._cancel:
            return True
        if time.monotonic() - self._last_cancel_check >= 1.0:
            self._last_cancel_check = time.monotonic()
            self._cancel = TrainingJob.objects.filter(pk=self.job.pk, cancel_requested=True).exists()
        return self._cancel

    def _heartbeat(self) -> None:
        try:
            while not self._stop.wait(settings.TRAINING_HEARTBEAT_SECONDS):
                with contextlib.suppress(Exception):
                    TrainingJob.objects.filter(pk=self.job.pk, status=JobStatus.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
        finally:
            connection.close()

    # the job -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from cytoseg.trainers import TrainingCancelled

        job = self.job
        self._beat = threading.Thread(target=self._heartbeat, name=f"training-heartbeat-{job.pk}", daemon=True)
        self._beat.start()
        versions: list[ModelVersion] = []
        outcome: dict[str, Any] = {"job": job.pk}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            device = _device(job.config)
            self.note(
                f"started {job.kind} on {socket.gethostname()} (pid {os.getpid()}, device {device}), "
                f"snapshot {job.snapshot.number}"
            )
            self.progress = {"stage": "data", "phase": "prepare", "step": "load"}
            self.write()
            started = time.perf_counter()
            data = snapshot_load(job.snapshot, splits=(Split.TRAIN, Split.VALIDATION))  # test: evaluation
            self.timings["data"] = time.perf_counter() - started
            self.note(
                f"data: {len(data.train)} train ({data.synthetic} synthetic), {len(data.validation)} "
                f"validation, {job.snapshot.counts.get(Split.TEST, {}).get('images', 0)} test images"
            )
            if not data.train:
                raise ValueError("the snapshot has no training images")
            versions = self.train(data, device)
            outcome["versions"] = [v.pk for v in versions]
            if job.config.get("evaluate", True):
                outcome["promotion"] = self.evaluate_and_gate(versions, device)
            self.progress = {"stage": "done", "phase": "done"}
            finished = timezone.now()
            self.note("succeeded")
            result = {
                "versions": [{"id": v.pk, "kind": v.kind, "number": v.number} for v in versions],
                "promotion": outcome.get("promotion", {}),
            }
            self.write(result=result)
            TrainingJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                status=JobStatus.SUCCEEDED, finished_at=finished
            )
            outcome["status"] = JobStatus.SUCCEEDED
        except TrainingCancelled as exc:
            self.note(f"cancelled: {exc}")
            self.write()
            ModelVersion.objects.filter(pk__in=[v.pk for v in versions]).update(status=ModelStatus.FAILED)
            TrainingJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                status=JobStatus.CANCELLED, finished_at=timezone.now()
            )
            outcome["status"] = JobStatus.CANCELLED
        except BaseException as exc:  # SoftTimeLimitExceeded is a BaseException subclass in some versions
            from celery.exceptions import SoftTimeLimitExceeded

            if isinstance(exc, SoftTimeLimitExceeded):
                reason = f"time limit of {settings.TRAINING_TASK_SOFT_TIME_LIMIT} s exceeded"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            self.note("error:\n" + "".join(traceback.format_exception(exc))[-8000:])
            self.write()
            job_fail(job.pk, reason[:2000])
            outcome["status"] = JobStatus.FAILED
            outcome["error"] = reason
            if not isinstance(exc, Exception) and not isinstance(exc, SoftTimeLimitExceeded):
                raise  # KeyboardInterrupt, SystemExit: let the worker handle them
        finally:
            self._stop.set()
            if self._beat is not None:
                self._beat.join(timeout=5)
            shutil.rmtree(self.work, ignore_errors=True)
        return outcome

    # training ------------------------------------------------------------------------------

    def _stage_config(self, stage: str) -> Any:
        base = preset_base_config(preset=self._preset(), stage=stage)
        merged = _merged(base, self.job.config.get(stage) or {})
        if stage == "nnunet":
            from cytoseg.trainers.nnunet import NnUNetTrainConfig

            return NnUNetTrainConfig.from_dict(merged)
        if stage == "cellpose":
            from cytoseg.trainers.cellpose import CellposeTrainConfig

            return CellposeTrainConfig.from_dict(merged)
        from cytoseg.trainers.refinement import RefinementTrainConfig

        return RefinementTrainConfig(**merged)

    def _preset(self) -> str:
        return str(self.job.config.get("preset", "default"))

    def train(self, data: SnapshotData, device: str) -> list[ModelVersion]:
        kind = self.job.kind
        resolved: dict[str, Any] = {"device": device, "preset": self._preset()}
        configs = {stage: self._stage_config(stage) for stage in KIND_STAGES[kind]}
        resolved.update({stage: cfg.to_dict() for stage, cfg in configs.items()})
        TrainingJob.objects.filter(pk=self.job.pk).update(resolved_config=_json_floats(resolved))
        made: list[tuple[str, Path, dict[str, Any]]] = []  # (kind, artifact path, backend config)
        if kind in (JobKind.NNUNET, JobKind.TWO_STAGE):
            target = self.root / ("bundle/nnunet" if kind == JobKind.TWO_STAGE else "nnunet")
            self.train_nnunet(data, configs["nnunet"], device, target)
            made.append((ModelKind.NNUNET, target, {}))
        if kind in (JobKind.CELLPOSE, JobKind.TWO_STAGE):
            target = self.root / ("bundle/cellpose" if kind == JobKind.TWO_STAGE else "cellpose")
            self.train_cellpose(data, configs["cellpose"], device, target)
            made.append((ModelKind.CELLPOSE, target, {}))
        if kind == JobKind.TWO_STAGE:
            made.append((ModelKind.TWO_STAGE, self.root / "bundle", {}))
        if kind == JobKind.REFINEMENT:
            target = self.root / "refinement"
            self.train_refinement(data, configs["refinement"], device, target)
            made.append((ModelKind.REFINEMENT, target, {"base": "nnunet"}))
        return [
            self.register(model_kind, path, {**preset_backend_settings(preset=self._preset(), kind=model_kind), **cfg})
            for model_kind, path, cfg in made
        ]

    def train_nnunet(self, data: SnapshotData, cfg: Any, device: str, target: Path) -> None:
        from cytoseg.trainers.nnunet import nnunet_train

        started = time.perf_counter()
        result = nnunet_train(
            images=[c.image for c in data.train],
            semantic_labels=[c.semantic for c in data.train],
            val_images=[c.image for c in data.validation],
            val_semantic_labels=[c.semantic for c in data.validation],
            workdir=self.work / "nnunet",
            config=cfg,
            device=device,
            progress=self.progress_fn("nnunet"),
            should_cancel=self.should_cancel,
        )
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(result.model_folder), str(target))
        self.timings["nnunet"] = time.perf_counter() - started
        self.note(
            f"nnunet trained in {self.timings['nnunet']:.1f} s (fold {result.fold}, final val loss "
            f"{_fmt(result.final_val_loss)}, pseudo Dice {_fmt(result.final_pseudo_dice)})"
        )

    def train_cellpose(self, data: SnapshotData, cfg: Any, device: str, target: Path) -> None:
        from cytoseg.trainers.cellpose import cellpose_train

        with_ery = bool(self.job.config.get("cellpose_erythrocytes", True))

        def labels(cases: list[LoadedCase]) -> list[Any]:
            return [c.instances if with_ery else c.cell_instances for c in cases]

        train = [c for c, lab in zip(data.train, labels(data.train), strict=True) if lab.max() > 0]
        val = [c for c, lab in zip(data.validation, labels(data.validation), strict=True) if lab.max() > 0]
        started = time.perf_counter()
        result = cellpose_train(
            images=[c.image for c in train],
            instance_labels=labels(train),
            val_images=[c.image for c in val],
            val_instance_labels=labels(val),
            workdir=target,
            config=cfg,
            device=device,
            progress=self.progress_fn("cellpose"),
            should_cancel=self.should_cancel,
        )
        self.timings["cellpose"] = time.perf_counter() - started
        self.note(f"cellpose trained in {self.timings['cellpose']:.1f} s (diameter {result.diam_labels:.1f} px)")

    def train_refinement(self, data: SnapshotData, cfg: Any, device: str, target: Path) -> None:
        from cytoseg.backends import backend_get
        from cytoseg.trainers.refinement import refinement_train

        base = _refinement_base(project=self.job.project, version_id=self.job.config.get("base_model_version"))
        artifacts_verify(base)
        backend: Any = backend_get(
            name=base.kind,
            artifacts=Path(base.artifact_path),
            settings=model_version_settings(version=base),
            device=device,
        )
        started = time.perf_counter()
        self.progress = {"stage": "refinement", "phase": "prepare", "step": "first_stage"}
        self.note(
            f"refinement: first-stage probabilities from {base} on {len(data.train) + len(data.validation)} images"
        )
        self.write()

        def first_stage(cases: list[LoadedCase]) -> list[Any]:
            out = []
            for case in cases:
                if self.should_cancel():
                    from cytoseg.trainers import TrainingCancelled

                    raise TrainingCancelled("cancelled while computing first-stage probabilities")
                out.append(1.0 - backend.predict_probabilities(case.image)[0])
            return out

        result = refinement_train(
            images=[c.image for c in data.train],
            probabilities=first_stage(data.train),
            targets=[c.semantic > 0 for c in data.train],
            val_images=[c.image for c in data.validation],
            val_probabilities=first_stage(data.validation),
            val_targets=[c.semantic > 0 for c in data.validation],
            workdir=target,
            config=cfg,
            device=device,
            progress=self.progress_fn("refinement"),
            should_cancel=self.should_cancel,
        )
        shutil.copytree(Path(base.artifact_path), target / "base")
        self.timings["refinement"] = time.perf_counter() - started
        self.note(
            f"refinement trained in {self.timings['refinement']:.1f} s (best epoch {result.best_epoch}, "
            f"{result.parameters} weights), base {base}"
        )

    def register(self, kind: str, path: Path, backend_config: dict[str, Any]) -> ModelVersion:
        package_prepare(kind, path, backend_config)
        version = _model_version_create(
            project=self.job.project,
            kind=kind,
            name=f"{ModelKind(kind).label} from job {self.job.pk}",
            folder=path,
            config=backend_config,
            user=self.job.created_by,
            status=ModelStatus.CANDIDATE,
            job=self.job,
        )
        artifacts = version.artifacts
        self.note(
            f"registered {version} (id {version.pk}, {len(artifacts)} files, "
            f"{sum(a['size'] for a in artifacts) / 1e6:.1f} MB)"
        )
        return version

    # evaluation and promotion --------------------------------------------------------------

    def evaluate_and_gate(self, versions: list[ModelVersion], device: str) -> dict[str, Any]:
        job = self.job
        if not job.snapshot.counts.get(Split.TEST, {}).get("images"):
            self.note("no test images in the snapshot: not evaluated, nothing promoted")
            return {}
        policy = training_policy_get(project=job.project)
        auto = job.config.get("auto_promote")
        auto = policy.auto_promote if auto is None else bool(auto)
        decisions: dict[str, Any] = {}
        started = time.perf_counter()
        for version in versions:
            self.progress = {"stage": "evaluate", "phase": "evaluate", "model_version": version.pk}
            self.write()
            evaluation = model_version_evaluate(
                version=version, snapshot=job.snapshot, device=device, should_cancel=self.should_cancel
            )
            self.note(f"evaluated {version}: " + _summary_line(evaluation.overall))
            baseline = _baseline_for(version)
            decision = promotion_gate(
                version=version,
                baseline=baseline,
                snapshot=job.snapshot,
                device=device,
                policy=policy,
                should_cancel=self.should_cancel,
            )
            entry: dict[str, Any] = {**decision.to_dict(), "baseline_version": baseline.pk if baseline else None}
            if decision.promote and auto:
                model_version_promote(
                    version=version, user=None, reason=f"automatic: {decision.reason}", decision=decision
                )
                entry["promoted"] = True
                self.note(f"promoted {version}: {decision.reason}")
            else:
                entry["promoted"] = False
                why = decision.reason if not decision.promote else "automatic promotion is off"
                self.note(f"kept {version} as a candidate: {why}")
            decisions[str(version.pk)] = entry
        self.timings["evaluate"] = time.perf_counter() - started
        return decisions


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _json_floats(value: Any) -> Any:
    from cytoseg.evaluation import json_safe

    return json_safe(value)


def _summary_line(overall: Mapping[str, Any]) -> str:
    keys = ("dice", "iou", "f1_50", "best_match_precision_70", "ap50", "dsb", "coco_AP", "erythrocyte_fp")
    return ", ".join(f"{k}={_fmt(overall.get(k))}" for k in keys)


def training_job_run(*, job_id: int, task_id: str = "") -> dict[str, Any]:
    """Body of the ``training.run_job`` task: claim the job if it is still queued and run it.

    A job that is not queued any more is never run (cancelled, finished, or a redelivered
    message of a job that was running): when it is marked running but its worker is evidently
    gone, it is marked failed with the reason.
    """
    now = timezone.now()
    claimed = TrainingJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING,
        started_at=now,
        heartbeat_at=now,
        worker_host=socket.gethostname(),
        worker_pid=os.getpid(),
        artifact_dir=str(Path(settings.TRAINING_DIR) / str(job_id)),  # this worker's folder
        **({"task_id": task_id} if task_id else {}),
    )
    if not claimed:
        job = TrainingJob.objects.filter(pk=job_id).first()
        if job is None:
            return {"job": job_id, "skipped": "no such job"}
        if job.status == JobStatus.RUNNING:
            reason = _worker_lost_reason(job, now)
            if reason is not None and job_fail(job.pk, f"{reason}; the task was delivered again and not rerun"):
                return {"job": job_id, "status": JobStatus.FAILED, "error": reason}
            return {"job": job_id, "skipped": "running in another worker"}
        return {"job": job_id, "skipped": f"job is {job.status}"}
    job = TrainingJob.objects.select_related("project", "snapshot", "created_by").get(pk=job_id)
    return _JobRunner(job).run()


# --- evaluation ----------------------------------------------------------------------------


def _eval_images(items: list[SnapshotItem], should_cancel: Callable[[], bool] | None) -> Iterable[EvalImage]:
    for item in items:
        if should_cancel is not None and should_cancel():
            from cytoseg.trainers import TrainingCancelled

            raise TrainingCancelled("cancelled during evaluation")
        if item.image is None:
            logger.warning("snapshot %s: image %s was deleted; not evaluated", item.snapshot_id, item.file_name)
            continue
        with item.image.display.open("rb") as handle:
            rgb = read_rgb(handle.read())
        gt = cells_from_polygons(
            [c["polygon"] for c in item.cells], [c["label"] for c in item.cells], height=item.height, width=item.width
        )
        yield EvalImage(
            key=str(item.image_id),
            group=item.bethesda or "unassigned",
            image=rgb,
            gt=gt,
            gt_labels=[c.label for c in gt],
        )


def model_version_evaluate(
    *,
    version: ModelVersion,
    snapshot: DatasetSnapshot,
    device: str | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Evaluation:
    """Run ``version`` on the snapshot's test images (ground truth: the snapshot's cells) and
    store the metrics (``Evaluation``, mirrored into ``version.metrics``)."""
    from cytoseg.backends import backend_get

    if snapshot.project_id != version.project_id:
        raise ServiceValidationError("Invalid evaluation.", {"snapshot": "not a snapshot of the model's project"})
    items = list(snapshot.items.filter(split=Split.TEST).select_related("image").order_by("id"))
    if not items:
        raise ServiceValidationError("Nothing to evaluate on.", {"snapshot": "the snapshot has no test images"})
    artifacts_verify(version)
    backend = backend_get(
        name=version.kind,
        artifacts=Path(version.artifact_path) if version.artifact_path else None,
        settings=model_version_settings(version=version),
        device=device or _device({}),
    )
    result = evaluate_backend(backend, _eval_images(items, should_cancel))
    seconds = float(result.timings.get("predict", 0.0) + result.timings.get("metrics", 0.0))
    evaluation, _ = Evaluation.objects.update_or_create(
        model_version=version,
        snapshot=snapshot,
        defaults={
            "overall": result.overall,
            "per_bethesda": result.per_group,
            "per_image": result.per_image,
            "seconds": seconds,
        },
    )
    version.metrics = {
        "snapshot": snapshot.pk,
        "evaluation": evaluation.pk,
        "overall": result.overall,
        "per_bethesda": result.per_group,
        "per_image": result.per_image,
        "timings": result.timings,
    }
    version.save(update_fields=["metrics"])
    return evaluation


def _baseline_for(version: ModelVersion) -> ModelVersion | None:
    """What a candidate must beat: the active version of its kind, else the version that
    pre-segmentation uses now (the watershed baseline in a fresh project)."""
    active = (
        ModelVersion.objects.filter(project_id=version.project_id, kind=version.kind, status=ModelStatus.ACTIVE)
        .exclude(pk=version.pk)
        .order_by("-promoted_at", "-id")
        .first()
    )
    if active is not None:
        return active
    from inference.services import model_version_for_project

    current = model_version_for_project(project=version.project)
    return None if current.pk == version.pk else current


def _gate_settings(policy: TrainingPolicy) -> tuple[str, float, float, tuple[str, ...]]:
    metric = policy.gate_metric or settings.TRAINING_GATE_METRIC
    margin = settings.TRAINING_GATE_MARGIN if policy.gate_margin is None else policy.gate_margin
    tolerance = settings.TRAINING_GATE_TOLERANCE if policy.gate_tolerance is None else policy.gate_tolerance
    guarded = tuple(policy.gate_guarded) if policy.gate_guarded else DEFAULT_GUARDED
    return metric, float(margin), float(tolerance), guarded


def promotion_gate(
    *,
    version: ModelVersion,
    baseline: ModelVersion | None,
    snapshot: DatasetSnapshot,
    policy: TrainingPolicy,
    device: str | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> GateDecision:
    """The gate's decision for ``version`` against ``baseline``, both evaluated on ``snapshot``
    (the baseline is evaluated now when it has not been on this snapshot yet)."""
    metric, margin, tolerance, guarded = _gate_settings(policy)
    candidate = Evaluation.objects.filter(model_version=version, snapshot=snapshot).first()
    if candidate is None:
        candidate = model_version_evaluate(
            version=version, snapshot=snapshot, device=device, should_cancel=should_cancel
        )
    baseline_metrics: dict[str, Any] | None = None
    if baseline is not None:
        done = Evaluation.objects.filter(model_version=baseline, snapshot=snapshot).first()
        if done is None:
            try:
                done = model_version_evaluate(
                    version=baseline, snapshot=snapshot, device=device, should_cancel=should_cancel
                )
            except Exception as exc:
                from cytoseg.trainers import TrainingCancelled

                if isinstance(exc, TrainingCancelled):
                    raise
                logger.warning("Baseline %s could not be evaluated: %s", baseline, exc)
                decision = gate_decide(
                    candidate=candidate.overall,
                    baseline=None,
                    metric=metric,
                    margin=margin,
                    tolerance=tolerance,
                    guarded=guarded,
                )
                decision.reason = f"the active model {baseline} could not be evaluated: {exc}"
                return decision
        baseline_metrics = done.overall
    return gate_decide(
        candidate=candidate.overall,
        baseline=baseline_metrics,
        metric=metric,
        margin=margin,
        tolerance=tolerance,
        guarded=guarded,
    )


# --- registry: promote, roll back ----------------------------------------------------------


def model_version_promote(
    *, version: ModelVersion, user: User | None, reason: str = "", decision: GateDecision | None = None
) -> ModelVersion:
    """Make ``version`` the active model of its kind (the previous one is retired and remembered
    for a rollback). Artifacts are checked against their recorded sha256 first."""
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=version.project_id).first()
        version.refresh_from_db()
        if version.status == ModelStatus.FAILED:
            raise ConflictError(f"{version} failed and cannot be promoted.", {"status": version.status})
        if version.status == ModelStatus.ACTIVE:
            return version
        artifacts_verify(version)
        previous = (
            ModelVersion.objects.filter(project_id=version.project_id, kind=version.kind, status=ModelStatus.ACTIVE)
            .exclude(pk=version.pk)
            .order_by("-promoted_at", "-id")
        )
        replaced = previous.first()
        previous.update(status=ModelStatus.RETIRED)
        version.status = ModelStatus.ACTIVE
        version.promoted_at = timezone.now()
        version.replaced = replaced
        version.save(update_fields=["status", "promoted_at", "replaced"])
        audit_record(
            project=version.project,
            actor=user,
            action="model.promote",
            target=str(version),
            before={"active": replaced.pk if replaced else None},
            after={"active": version.pk, "reason": reason, "gate": decision.to_dict() if decision else None},
        )
    return version


def model_version_rollback(*, project: Project, kind: str, user: User | None) -> ModelVersion | None:
    """Retire the active ``kind`` model and reactivate the one it replaced (None when there was
    none: pre-segmentation then falls back to the next kind or the baseline)."""
    if kind not in ModelKind.values:
        raise ServiceValidationError("Invalid rollback.", {"kind": f"must be one of {', '.join(ModelKind.values)}"})
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        current = (
            ModelVersion.objects.filter(project=project, kind=kind, status=ModelStatus.ACTIVE)
            .order_by("-promoted_at", "-id")
            .first()
        )
        if current is None:
            raise ConflictError(f"The project has no active {kind} model to roll back.")
        target = current.replaced
        if target is not None and target.status == ModelStatus.FAILED:
            target = None
        if target is not None:
            artifacts_verify(target)
        current.status = ModelStatus.RETIRED
        current.save(update_fields=["status"])
        if target is not None:
            target.status = ModelStatus.ACTIVE
            target.promoted_at = timezone.now()
            target.save(update_fields=["status", "promoted_at"])
        audit_record(
            project=project,
            actor=user,
            action="model.rollback",
            target=str(current),
            before={"active": current.pk},
            after={"active": target.pk if target else None},
        )
    return target


def _refinement_base(*, project: Project, version_id: int | None) -> ModelVersion:
    queryset = ModelVersion.objects.filter(project=project, kind=ModelKind.NNUNET)
    base = (
        queryset.filter(pk=version_id).first()
        if version_id is not None
        else queryset.filter(status=ModelStatus.ACTIVE).order_by("-promoted_at", "-id").first()
    )
    if base is None or not base.artifact_path:
        what = f"nnU-Net version {version_id}" if version_id is not None else "an active nnU-Net model"
        raise ServiceValidationError(
            "Refinement needs a first stage.", {"config.base_model_version": f"the project has no {what}"}
        )
    return base


# --- schedules -----------------------------------------------------------------------------

POLICY_FIELDS = (
    "schedule_enabled",
    "cron_minute",
    "cron_hour",
    "cron_day_of_week",
    "cron_day_of_month",
    "cron_month_of_year",
    "min_new_images",
    "job_kind",
    "job_config",
    "auto_promote",
    "gate_metric",
    "gate_margin",
    "gate_tolerance",
    "gate_guarded",
)


def training_policy_get(*, project: Project) -> TrainingPolicy:
    policy, _ = TrainingPolicy.objects.get_or_create(project=project)
    return policy


def policy_errors(data: Mapping[str, Any], merged: Mapping[str, Any]) -> dict[str, str]:
    from celery.schedules import crontab

    errors: dict[str, str] = {f: "unknown or read-only field" for f in sorted(set(data) - set(POLICY_FIELDS))}
    if "schedule_enabled" in data and not isinstance(data["schedule_enabled"], bool):
        errors["schedule_enabled"] = "must be true or false"
    if "auto_promote" in data and not isinstance(data["auto_promote"], bool):
        errors["auto_promote"] = "must be true or false"
    for field in ("cron_minute", "cron_hour", "cron_day_of_week", "cron_day_of_month", "cron_month_of_year"):
        if field in data and (not isinstance(data[field], str) or not data[field].strip()):
            errors[field] = "must be a crontab field such as '0', '*/15' or '1-5'"
    if not any(f.startswith("cron_") for f in errors):
        try:
            crontab(
                minute=merged["cron_minute"],
                hour=merged["cron_hour"],
                day_of_week=merged["cron_day_of_week"],
                day_of_month=merged["cron_day_of_month"],
                month_of_year=merged["cron_month_of_year"],
            )
        except (ValueError, TypeError) as exc:
            errors["cron"] = f"not a valid crontab: {exc}"
    n = data.get("min_new_images")
    if "min_new_images" in data and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        errors["min_new_images"] = "must be a positive integer"
    if "job_kind" in data and data["job_kind"] not in JobKind.values:
        errors["job_kind"] = f"must be one of {', '.join(JobKind.values)}"
    elif "job_kind" in data or "job_config" in data:
        try:
            training_config_validate(kind=merged["job_kind"], config=merged["job_config"])
        except ServiceValidationError as exc:
            errors.update({f"job_{k}" if k.startswith("config") else k: v for k, v in exc.errors.items()})
    if "gate_metric" in data and data["gate_metric"] not in ("", *METRICS):
        errors["gate_metric"] = f"must be one of {', '.join(METRICS)}"
    for field in ("gate_margin", "gate_tolerance"):
        value = data.get(field)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            errors[field] = "must be a number or null (the platform default)"
        elif field == "gate_tolerance" and value is not None and value < 0:
            errors[field] = "must not be negative"
    if "gate_guarded" in data:
        guarded = data["gate_guarded"]
        if not isinstance(guarded, list) or any(m not in METRICS for m in guarded):
            errors["gate_guarded"] = f"must be a list of metrics from {', '.join(METRICS)}"
    return errors


def training_policy_update(*, project: Project, data: dict[str, Any], user: User | None) -> TrainingPolicy:
    """Change the retraining schedule and promotion gate; keeps the beat ``PeriodicTask`` in step."""
    policy = training_policy_get(project=project)
    before = {f: getattr(policy, f) for f in POLICY_FIELDS}
    merged = before | data
    errors = policy_errors(data, merged)
    if errors:
        raise ServiceValidationError("Invalid training schedule.", errors)
    with transaction.atomic():
        for field, value in data.items():
            setattr(policy, field, value.strip() if isinstance(value, str) and field.startswith("cron_") else value)
        policy.save()
        periodic_task_sync(policy=policy)
        audit_record(
            project=project,
            actor=user,
            action="training.schedule",
            target=str(policy),
            before=before,
            after={f: getattr(policy, f) for f in POLICY_FIELDS},
        )
    return policy


def periodic_task_sync(*, policy: TrainingPolicy) -> None:
    """Create, update or disable the policy's django-celery-beat task (``training.schedule_check``)."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    task = policy.periodic_task
    if not policy.schedule_enabled:
        if task is not None and task.enabled:
            task.enabled = False
            task.save(update_fields=["enabled"])
        return
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=policy.cron_minute,
        hour=policy.cron_hour,
        day_of_week=policy.cron_day_of_week,
        day_of_month=policy.cron_day_of_month,
        month_of_year=policy.cron_month_of_year,
        timezone=settings.TIME_ZONE,
    )
    if task is None:
        task = PeriodicTask(name=f"training schedule of project {policy.project_id}")
    task.task = "training.schedule_check"
    task.crontab = schedule
    task.interval = None
    task.args = json.dumps([policy.project_id])
    task.queue = "default"
    task.enabled = True
    task.description = "Start a training job when enough newly verified images exist (training.TrainingPolicy)."
    task.save()
    if policy.periodic_task_id != task.pk:
        policy.periodic_task = task
        policy.save(update_fields=["periodic_task"])


def new_image_count(*, project: Project, source: str = DatasetSource.VERIFIED) -> int:
    """Training images (train/validation, never the frozen test split) that are new or changed
    since the snapshot of the project's last successful job."""
    layer = source_layer(source)
    frozen = FrozenTestImage.objects.filter(project=project).values("image_id")
    candidates = (
        eligible_images(project=project, source=source)
        .exclude(split=Split.TEST)
        .exclude(pk__in=frozen)
        .annotate(last_change=Max("cells__updated_at", filter=Q(cells__layer=layer)))
    )
    last = (
        TrainingJob.objects.filter(project=project, status=JobStatus.SUCCEEDED)
        .select_related("snapshot")
        .order_by("-finished_at", "-id")
        .first()
    )
    if last is None:
        return candidates.count()
    trained = set(
        SnapshotItem.objects.filter(snapshot=last.snapshot, split__in=[Split.TRAIN, Split.VALIDATION]).values_list(
            "image_id", flat=True
        )
    )
    since = last.snapshot.created_at
    return sum(
        1
        for image_id, changed in candidates.values_list("pk", "last_change")
        if image_id not in trained or (changed is not None and changed > since)
    )


def training_schedule_check(*, project_id: int) -> dict[str, Any]:
    """The scheduled check: start the policy's job when enough new images exist and no job is
    queued or running. Returns (and records on the policy) what it decided."""
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return {"started": False, "reason": "no such project"}
    policy = training_policy_get(project=project)
    source = policy.job_config.get("source", DatasetSource.VERIFIED)
    outcome: dict[str, Any] = {"started": False}
    if not policy.schedule_enabled:
        outcome["reason"] = "the schedule is off"
    elif (live := _live_job(project)) is not None:
        outcome["reason"] = f"job {live.pk} is {live.status}"
    else:
        count = new_image_count(project=project, source=source)
        outcome["new_images"] = count
        if count < policy.min_new_images:
            outcome["reason"] = f"{count} new images < threshold {policy.min_new_images}"
        else:
            try:
                job = training_job_start(
                    project=project,
                    user=None,
                    kind=policy.job_kind,
                    config=policy.job_config,
                    trigger=JobTrigger.SCHEDULE,
                )
            except (ConflictError, ServiceValidationError) as exc:
                outcome["reason"] = f"not started: {exc.detail}"
            else:
                outcome.update(started=True, job=job.pk, reason=f"{count} new images >= {policy.min_new_images}")
    TrainingPolicy.objects.filter(pk=policy.pk).update(last_check_at=timezone.now(), last_check=outcome)
    return outcome
