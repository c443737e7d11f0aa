"""The worker side of a training job: claim it, run its stages through the trainer registry
(``cytoseg.trainers``), register the models, evaluate them and apply the promotion gate, with
progress, curves, log, heartbeat and cancellation."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from annotations.models import Split
from core.events import event_emit
from cytoseg.backends import backend_get
from cytoseg.backends.packages import (
    package_prepare,
)
from cytoseg.trainers import TrainRequest, short_number, trainer_get
from cytoseg.trainers.presets import preset_backend_settings
from training.models import (
    JobStatus,
    ModelKind,
    ModelStatus,
    ModelVersion,
    TrainingJob,
)
from training.services.artifacts import artifacts_for
from training.services.config import JOB_PLANS, device_for, stage_config
from training.services.jobs import job_fail, log_append, worker_lost_reason
from training.services.registry import (
    baseline_for,
    gate_settings,
    model_version_best,
    model_version_evaluate,
    model_version_promote,
    model_version_register,
    model_version_settings,
    promotion_gate,
    refinement_base,
)
from training.services.schedule import training_policy_get
from training.snapshots import (
    SnapshotData,
    snapshot_load,
)

logger = logging.getLogger(__name__)


class JobRunner:
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
        self.log = log_append(self.log, line)
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
                    + ", ".join(f"{k}={short_number(v)}" for k, v in point.items() if k not in ("epoch", "epochs"))
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

    @staticmethod
    def _evaluate_progress(
        version: ModelVersion,
        image: int | None,
        images: int | None,
        *,
        index: int | None = None,
        count: int | None = None,
        phase: str = "evaluate",
    ) -> dict[str, Any]:
        progress: dict[str, Any] = {
            "stage": "evaluate",
            "phase": phase,
            "model_version": version.pk,
            "version": str(version),
            "image": image,
            "images": images,
        }
        if index is not None:
            progress["version_index"] = index
            progress["versions"] = count
        return progress

    def evaluate_progress_fn(
        self, version: ModelVersion, *, index: int | None = None, count: int | None = None, phase: str = "evaluate"
    ) -> Callable[[int, int | None], None]:
        """A progress callback for evaluating ``version``: which test image is being scored, so
        the job screen does not sit on one percentage for the minutes evaluation takes. Written
        at most once a second (the first image at once), like the trainers' iterations."""

        def report(image: int, images: int | None) -> None:
            self.progress = self._evaluate_progress(version, image, images, index=index, count=count, phase=phase)
            if image == 1 or time.monotonic() - self._last_write >= 1.0:
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
            device = device_for(job.config)
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
            event_emit(
                project_id=job.project_id,
                event="training.finished",
                data={"job": job.pk, "kind": job.kind, "versions": outcome["versions"]},
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

    def _preset(self) -> str:
        return str(self.job.config.get("preset", "default"))

    def train(self, data: SnapshotData, device: str) -> list[ModelVersion]:
        """Run the job's stages through the trainer registry, then register its models."""
        plan = JOB_PLANS[self.job.kind]
        configs = {stage.trainer: stage_config(config=self.job.config, stage=stage.trainer) for stage in plan.stages}
        resolved: dict[str, Any] = {"device": device, "preset": self._preset()}
        resolved.update({name: cfg.to_dict() for name, cfg in configs.items()})
        TrainingJob.objects.filter(pk=self.job.pk).update(resolved_config=_json_floats(resolved))
        for stage in plan.stages:
            trainer = trainer_get(stage.trainer)
            started = time.perf_counter()
            outcome = trainer.train(
                TrainRequest(
                    train=data.train,
                    validation=data.validation,
                    config=configs[stage.trainer],
                    workdir=self.work,
                    target=self.root / stage.folder,
                    device=device,
                    progress=self.progress_fn(stage.trainer),
                    should_cancel=self.should_cancel,
                    options=STAGE_OPTIONS.get(stage.trainer, _no_options)(self, device),
                )
            )
            self.timings[stage.trainer] = time.perf_counter() - started
            self.note(f"{stage.trainer} trained in {self.timings[stage.trainer]:.1f} s ({outcome.summary})")
        preset_settings = {
            r.kind: preset_backend_settings(preset=self._preset(), kind=r.kind) for r in plan.registrations
        }
        return [
            self.register(r.kind, self.root / r.folder, {**preset_settings[r.kind], **r.config})
            for r in plan.registrations
        ]

    def register(self, kind: str, path: Path, backend_config: dict[str, Any]) -> ModelVersion:
        package_prepare(kind, path, backend_config)
        version = model_version_register(
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
        """Evaluate every version the job made, then put only the best of them (by the gate's
        primary metric) through the gate against the project's current pre-segmenter. The
        others stay candidates: promoting a weaker sibling first would make the better one
        compete against it (the nnU-Net version used to veto the two-stage one that way)."""
        job = self.job
        if not job.snapshot.counts.get(Split.TEST, {}).get("images"):
            self.note("no test images in the snapshot: not evaluated, nothing promoted")
            return {}
        policy = training_policy_get(project=job.project)
        auto = job.config.get("auto_promote")
        auto = policy.auto_promote if auto is None else bool(auto)
        started = time.perf_counter()
        overall: dict[int, dict[str, Any]] = {}
        for index, version in enumerate(versions, start=1):
            self.progress = self._evaluate_progress(version, None, None, index=index, count=len(versions))
            self.write()
            evaluation = model_version_evaluate(
                version=version,
                snapshot=job.snapshot,
                device=device,
                should_cancel=self.should_cancel,
                progress=self.evaluate_progress_fn(version, index=index, count=len(versions)),
            )
            overall[version.pk] = evaluation.overall
            self.note(f"evaluated {version}: " + _summary_line(evaluation.overall))
        best = model_version_best(versions=versions, snapshot=job.snapshot, policy=policy)
        metric = gate_settings(policy)[0]
        decisions: dict[str, Any] = {}
        for version in versions:
            if version != best:
                why = (
                    f"not the best of this job by {metric} ({best} is)"
                    if best is not None
                    else f"no version of this job has a value for {metric}"
                )
                # the same keys as a gate decision, so that clients read every entry alike:
                # here the "baseline" is the job's best version, which this one lost to
                decisions[str(version.pk)] = {
                    "promote": False,
                    "promoted": False,
                    "metric": metric,
                    "candidate": _number(overall.get(version.pk, {}).get(metric)),
                    "baseline": _number(overall.get(best.pk, {}).get(metric)) if best is not None else None,
                    "reason": why,
                    "baseline_version": None,
                    "best_version": best.pk if best is not None else None,
                }
                self.note(f"kept {version} as a candidate: {why}")
        if best is not None:
            self.progress = {"stage": "evaluate", "phase": "gate", "model_version": best.pk, "version": str(best)}
            self.write()
            baseline = baseline_for(best)
            decision = promotion_gate(
                version=best,
                baseline=baseline,
                snapshot=job.snapshot,
                device=device,
                policy=policy,
                should_cancel=self.should_cancel,
                # the gate may evaluate the active model on this snapshot first: minutes too
                progress=lambda evaluated, image, images: self.evaluate_progress_fn(evaluated, phase="gate")(
                    image, images
                ),
            )
            entry: dict[str, Any] = {
                **decision.to_dict(),
                "baseline_version": baseline.pk if baseline else None,
                "best_version": best.pk,
            }
            if decision.promote and auto:
                model_version_promote(
                    version=best, user=None, reason=f"automatic: {decision.reason}", decision=decision
                )
                entry["promoted"] = True
                self.note(f"promoted {best}, now the pre-segmenter: {decision.reason}")
            else:
                entry["promoted"] = False
                why = decision.reason if not decision.promote else "automatic promotion is off"
                self.note(f"kept {best} as a candidate: {why}")
            decisions[str(best.pk)] = entry
        self.timings["evaluate"] = time.perf_counter() - started
        return {k: decisions[k] for k in (str(v.pk) for v in versions)}


def _no_options(runner: JobRunner, device: str) -> dict[str, Any]:
    return {}


def _cellpose_options(runner: JobRunner, device: str) -> dict[str, Any]:
    return {"erythrocytes": bool(runner.job.config.get("cellpose_erythrocytes", True))}


def _refinement_options(runner: JobRunner, device: str) -> dict[str, Any]:
    """The frozen first stage: the project's active (or the chosen) nnU-Net version."""
    base = refinement_base(project=runner.job.project, version_id=runner.job.config.get("base_model_version"))
    folder = artifacts_for(base)
    backend: Any = backend_get(
        name=base.kind,
        artifacts=folder,
        settings=model_version_settings(version=base),
        device=device,
    )
    runner.note(f"refinement: first stage {base}")
    return {
        "first_stage": lambda image: 1.0 - backend.predict_probabilities(image)[0],
        "base_folder": folder,
    }


# Extra inputs of the trainers that need more than the cases (``cytoseg.trainers``' docstrings).
STAGE_OPTIONS: dict[str, Callable[[JobRunner, str], dict[str, Any]]] = {
    "cellpose": _cellpose_options,
    "refinement": _refinement_options,
}


def _json_floats(value: Any) -> Any:
    from cytoseg.evaluation import json_safe

    return json_safe(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _summary_line(overall: Mapping[str, Any]) -> str:
    keys = ("dice", "iou", "f1_50", "best_match_precision_70", "ranked_ap50", "dsb", "coco_AP", "erythrocyte_fp")
    return ", ".join(f"{k}={short_number(overall.get(k))}" for k in keys)


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
            reason = worker_lost_reason(job, now)
            if reason is not None and job_fail(job.pk, f"{reason}; the task was delivered again and not rerun"):
                return {"job": job_id, "status": JobStatus.FAILED, "error": reason}
            return {"job": job_id, "skipped": "running in another worker"}
        return {"job": job_id, "skipped": f"job is {job.status}"}
    job = TrainingJob.objects.select_related("project", "snapshot", "created_by").get(pk=job_id)
    return JobRunner(job).run()
