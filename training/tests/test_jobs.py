"""Training jobs run in-process: start, claim, train, register, evaluate, gate; cancel; crashes;
schedules. (The same through a real Celery worker: tests/integration/test_training_worker.py.)"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from annotations.models import AuditEvent, Cell
from core.errors import ConflictError, ServiceValidationError
from tests.factories import model_object_read
from training.models import DatasetSnapshot, Evaluation, JobStatus, ModelKind, ModelStatus, ModelVersion, TrainingJob
from training.services import jobs, runner, schedule
from training.services.registry import model_version_for_project
from training.tests.factories import synthetic_project

pytestmark = pytest.mark.django_db

# Cellpose's tiny() with fewer, smaller crops: seconds on two CPU cores
CELLPOSE_FAST = {
    "preset": "tiny",
    "device": "cpu",
    "cellpose": {"n_epochs": 3, "bsize": 64, "bn_recalibrate_batches": 1, "val_every": 2},
}


@pytest.fixture
def enqueued() -> Any:
    with mock.patch("core.queue.task_send") as send:
        yield send


@pytest.fixture
def var_training(settings: Any, tmp_path: Path) -> Path:
    settings.TRAINING_DIR = str(tmp_path / "training")
    return Path(settings.TRAINING_DIR)


def _start(sp: Any, kind: str = "cellpose", config: dict[str, Any] | None = None, **kwargs: Any) -> TrainingJob:
    return jobs.training_job_start(
        project=sp.project,
        user=sp.admin,
        kind=kind,
        config=config if config is not None else dict(CELLPOSE_FAST),
        **kwargs,
    )


def test_start_snapshots_and_enqueues_once_committed(
    django_capture_on_commit_callbacks: Any, enqueued: Any, var_training: Path
) -> None:
    sp = synthetic_project(splits={"train": 2, "test": 1}, size=64, n_cells=5, n_erythrocytes=2)
    with django_capture_on_commit_callbacks(execute=True):
        job = _start(sp)
    assert job.status == JobStatus.QUEUED and job.snapshot.number == 1 and job.created_by == sp.admin
    assert job.artifact_dir == ""  # the scratch folder of the worker that claims it, set then
    enqueued.assert_called_once_with("training.run_job", args=[job.pk], queue="training", task_id=job.task_id)
    assert AuditEvent.objects.filter(action="training.start", project=sp.project).exists()
    with pytest.raises(ConflictError):  # never two jobs of one project at once
        _start(sp)
    other = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1, seed=50)
    assert _start(other).status == JobStatus.QUEUED


def test_start_needs_training_images_and_a_valid_config(enqueued: Any) -> None:
    sp = synthetic_project(splits={"test": 1}, size=64, n_cells=4, n_erythrocytes=1)
    with pytest.raises(ServiceValidationError) as err:
        _start(sp)
    assert "snapshot" in err.value.errors
    assert not TrainingJob.objects.exists()
    with pytest.raises(ServiceValidationError) as err:
        _start(sp, config={"cellpose": {"n_epoch": 3}, "nnunet": {}})
    assert err.value.errors == {
        "config.cellpose.n_epoch": "unknown key",
        "config.nnunet": "not used by a cellpose job (it trains cellpose)",
    }


def test_cancel_queued_job_and_the_task_then_skips_it(enqueued: Any) -> None:
    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1)
    job = _start(sp)
    jobs.training_job_cancel(job=job, user=sp.admin)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert runner.training_job_run(job_id=job.pk) == {"job": job.pk, "skipped": "job is cancelled"}
    with pytest.raises(ConflictError):
        jobs.training_job_cancel(job=job, user=sp.admin)
    assert _start(sp).status == JobStatus.QUEUED  # the project is free again


def test_cellpose_job_trains_registers_evaluates_and_promotes(enqueued: Any, var_training: Path) -> None:
    sp = synthetic_project(splits={"train": 3, "validation": 1, "test": 2}, size=96, n_cells=8, n_erythrocytes=3)
    schedule.training_policy_update(
        project=sp.project, data={"gate_margin": -1.0, "gate_tolerance": 1.0}, user=sp.admin
    )
    job = _start(sp)
    outcome = runner.training_job_run(job_id=job.pk, task_id="task-1")
    job.refresh_from_db()
    assert outcome["status"] == JobStatus.SUCCEEDED, job.log
    assert job.status == JobStatus.SUCCEEDED and job.error == ""
    assert job.task_id == "task-1" and job.worker_pid and job.started_at and job.finished_at
    assert job.resolved_config["cellpose"]["n_epochs"] == 3 and job.resolved_config["cellpose"]["batch_size"] == 4
    assert [p["epoch"] for p in job.curves["cellpose"]] == [0, 1, 2]
    # validation only every 2nd epoch and the last; epochs without it carry no val_loss (not NaN),
    # and with BatchNorm recalibrated first the value is a plausible loss, not millions
    first, second, third = job.curves["cellpose"]
    assert {"train_loss", "lr"} <= set(first) and "val_loss" not in first
    assert all(0 < p["val_loss"] < 100 for p in (second, third))
    assert "nan" not in job.log.lower()
    assert job.progress["stage"] == "done" and job.timings["cellpose"] > 0
    assert "cellpose epoch 3/3" in job.log and "succeeded" in job.log
    version = ModelVersion.objects.get(job=job)
    assert (version.kind, version.number, version.snapshot_id) == (ModelKind.CELLPOSE, 1, job.snapshot_id)
    assert {a["path"] for a in version.artifacts} == {"cellpose.pth", "cellpose.json"}
    assert all(len(a["sha256"]) == 64 and a["size"] > 0 for a in version.artifacts)
    assert version.artifact_prefix.startswith(f"models/{job.project_id}/")  # in storage, not a local folder
    assert not (var_training / str(job.pk) / "work").exists()
    # evaluated on the frozen test split, against the baseline on the same snapshot
    evaluation = Evaluation.objects.get(model_version=version)
    assert evaluation.snapshot_id == job.snapshot_id and evaluation.overall["n_images"] == 2
    assert set(evaluation.per_bethesda) <= {"IV", "V", "VI"} and len(evaluation.per_image) == 2
    assert version.metrics["snapshot"] == job.snapshot_id and "dsb" in version.metrics["overall"]
    baseline = ModelVersion.objects.get(project=sp.project, kind=ModelKind.WATERSHED)
    assert Evaluation.objects.filter(model_version=baseline, snapshot=job.snapshot).exists()
    decision = job.result["promotion"][str(version.pk)]
    assert decision["baseline_version"] == baseline.pk and decision["promoted"] is True
    version.refresh_from_db()
    assert version.status == ModelStatus.ACTIVE
    assert model_version_for_project(project=sp.project) == version  # pre-segmentation uses it now


def test_fast_preset_and_network_scale_reach_the_trainer_and_the_registered_version(
    enqueued: Any, var_training: Path
) -> None:
    import json

    from cytoseg.trainers.presets import FAST_INFERENCE

    sp = synthetic_project(
        splits={"train": 3, "validation": 1, "test": 1}, size=96, n_cells=8, n_erythrocytes=3, seed=11
    )
    config = {
        "preset": "fast",
        "device": "cpu",
        "cellpose": {
            "n_epochs": 2,
            "warmup_epochs": 0,
            "batch_size": 4,
            "bsize": 64,
            "bn_recalibrate_batches": 1,
            "network_scale": 0.5,
        },
    }
    job = _start(sp, config=config)
    outcome = runner.training_job_run(job_id=job.pk, task_id="task-fast")
    job.refresh_from_db()
    assert outcome["status"] == JobStatus.SUCCEEDED, job.log
    assert job.resolved_config["preset"] == "fast" and job.resolved_config["cellpose"]["network_scale"] == 0.5
    assert job.resolved_config["cellpose"]["n_epochs"] == 2
    version = ModelVersion.objects.get(job=job)
    assert version.config == FAST_INFERENCE["cellpose"]  # the preset's inference settings
    meta = json.loads(model_object_read(version, "cellpose.json"))
    assert meta["diam_mean"] == pytest.approx(0.5 * meta["diam_labels"])  # sees cells at half size
    # evaluated with those settings
    assert Evaluation.objects.get(model_version=version).overall["n_images"] == 1


def test_running_job_stops_when_cancel_is_requested(enqueued: Any, var_training: Path) -> None:
    sp = synthetic_project(splits={"train": 2}, size=64, n_cells=5, n_erythrocytes=2)
    job = _start(sp)
    seen: list[int] = []
    original = runner.JobRunner.progress_fn

    def progress_fn(self: Any, stage: str) -> Any:
        report = original(self, stage)

        def wrapped(info: dict[str, Any]) -> None:
            report(info)
            if info.get("phase") == "train" and not seen:
                seen.append(1)
                jobs.training_job_cancel(job=TrainingJob.objects.get(pk=job.pk), user=sp.admin)
                self._last_cancel_check = 0.0

        return wrapped

    with mock.patch.object(runner.JobRunner, "progress_fn", progress_fn):
        outcome = runner.training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert outcome["status"] == JobStatus.CANCELLED and job.status == JobStatus.CANCELLED
    assert job.cancelled_by == sp.admin and "cancelled" in job.log
    assert not ModelVersion.objects.filter(job=job).exists()


def _dead_pid() -> int:
    process = subprocess.Popen(["sleep", "30"])
    process.kill()
    process.wait()
    return process.pid


def test_redelivered_task_of_a_killed_worker_fails_the_job(enqueued: Any) -> None:
    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1)
    job = _start(sp)
    import socket

    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, worker_host=socket.gethostname(), worker_pid=_dead_pid(), heartbeat_at=timezone.now()
    )
    outcome = runner.training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert outcome["status"] == JobStatus.FAILED and job.status == JobStatus.FAILED
    assert "is gone" in job.error and "not rerun" in job.error


def test_reaper_fails_stale_running_and_lost_queued_jobs(enqueued: Any, settings: Any) -> None:
    a = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1)
    b = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1, seed=20)
    c = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1, seed=40)
    stale, alive, lost = _start(a), _start(b), _start(c)
    old = timezone.now() - timedelta(seconds=settings.TRAINING_HEARTBEAT_TIMEOUT + 5)
    TrainingJob.objects.filter(pk=stale.pk).update(
        status=JobStatus.RUNNING, worker_host="elsewhere", worker_pid=1, heartbeat_at=old
    )
    TrainingJob.objects.filter(pk=alive.pk).update(
        status=JobStatus.RUNNING, worker_host="elsewhere", worker_pid=1, heartbeat_at=timezone.now()
    )
    TrainingJob.objects.filter(pk=lost.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.TRAINING_QUEUED_TIMEOUT + 5)
    )
    assert sorted(jobs.training_jobs_reap()) == sorted([stale.pk, lost.pk])
    stale.refresh_from_db()
    assert stale.status == JobStatus.FAILED and "no heartbeat" in stale.error
    lost.refresh_from_db()
    assert lost.status == JobStatus.FAILED and "still queued" in lost.error
    alive.refresh_from_db()
    assert alive.status == JobStatus.RUNNING
    # a redelivered message of a job another worker still runs leaves it alone
    assert runner.training_job_run(job_id=alive.pk) == {"job": alive.pk, "skipped": "running in another worker"}


def test_job_whose_image_file_is_gone_fails_with_the_reason(enqueued: Any, var_training: Path) -> None:
    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1)
    job = _start(sp)
    image = sp.images["train"][0]
    Path(image.display.path).unlink()
    outcome = runner.training_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert outcome["status"] == JobStatus.FAILED and job.status == JobStatus.FAILED
    assert "FileNotFoundError" in job.error and "Traceback" in job.log


def test_schedule_starts_a_job_only_past_the_threshold(enqueued: Any) -> None:
    from django_celery_beat.models import PeriodicTask

    sp = synthetic_project(splits={"train": 2, "test": 1}, size=64, n_cells=4, n_erythrocytes=1)
    policy = schedule.training_policy_update(
        project=sp.project,
        data={
            "schedule_enabled": True,
            "cron_minute": "*/30",
            "cron_hour": "*",
            "min_new_images": 3,
            "job_kind": "cellpose",
            "job_config": CELLPOSE_FAST,
        },
        user=sp.admin,
    )
    task = PeriodicTask.objects.get(pk=policy.periodic_task_id)
    assert task.task == "training.schedule_check" and task.args == f"[{sp.project.pk}]" and task.enabled
    assert (task.crontab.minute, task.crontab.hour) == ("*/30", "*")
    assert schedule.new_image_count(project=sp.project) == 2  # the test image never counts
    outcome = schedule.training_schedule_check(project_id=sp.project.pk)
    assert outcome == {"started": False, "new_images": 2, "reason": "2 new images < threshold 3"}
    schedule.training_policy_update(project=sp.project, data={"min_new_images": 2}, user=sp.admin)
    outcome = schedule.training_schedule_check(project_id=sp.project.pk)
    assert outcome["started"] is True
    job = TrainingJob.objects.get(pk=outcome["job"])
    assert job.trigger == "schedule" and job.created_by is None and job.kind == "cellpose"
    assert schedule.training_schedule_check(project_id=sp.project.pk)["reason"] == f"job {job.pk} is queued"
    # after the job succeeded, only images new since its snapshot count
    TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    assert schedule.new_image_count(project=sp.project) == 0
    schedule.training_policy_update(project=sp.project, data={"schedule_enabled": False}, user=sp.admin)
    task.refresh_from_db()
    assert not task.enabled
    with pytest.raises(ServiceValidationError) as err:
        schedule.training_policy_update(
            project=sp.project,
            data={"cron_hour": "25", "gate_metric": "accuracy", "job_config": {"cellpose": {"lr": 1}}},
            user=sp.admin,
        )
    assert set(err.value.errors) == {"cron", "gate_metric", "job_config.cellpose.lr"}


def test_worker_start_fails_jobs_its_dead_predecessor_left_running(enqueued: Any) -> None:
    import socket

    from training.tasks import _reap_at_worker_start

    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1)
    job = _start(sp)
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, worker_host=socket.gethostname(), worker_pid=_dead_pid(), heartbeat_at=timezone.now()
    )
    with mock.patch("training.tasks.close_old_connections"):  # the handler's clean-up would close the test's
        _reap_at_worker_start(sender=None)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "killed or crashed" in job.error


def test_deleting_a_project_deletes_its_training_records(enqueued: Any) -> None:
    sp = synthetic_project(splits={"train": 1}, size=64, n_cells=4, n_erythrocytes=1)
    _start(sp)
    # (cells must go first: Cell.cell_class is PROTECT in annotations)
    Cell.objects.filter(image__project=sp.project).delete()
    sp.project.delete()
    assert not TrainingJob.objects.exists() and not DatasetSnapshot.objects.exists()
