"""Training end to end through a real Celery worker process (prefork pool: nnU-Net trains in a
daemonic child, as in production): synthetic project -> verified cells -> two-stage job
(nnU-Net, then Cellpose) on the CPU -> versions registered -> evaluated on the frozen test
split -> promoted -> used by pre-segmentation. Then cancel and a killed worker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotations.models import Cell, Image, Layer, PresegmentStatus
from cytoseg.synthetic import generate_field
from tests.worker import celery_worker
from training.models import Evaluation, JobStatus, ModelKind, ModelStatus, ModelVersion, TrainingJob
from training.services.registry import model_version_for_project
from training.tests.factories import synthetic_png, synthetic_project

pytestmark = [pytest.mark.integration, pytest.mark.ml, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


@pytest.fixture
def training_dir(tmp_path: Path) -> Path:
    return tmp_path / "training"


@pytest.fixture
def worker(settings: Any, tmp_path: Path, training_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    settings.TRAINING_DIR = str(training_dir)
    env = {
        "TRAINING_DIR": str(training_dir),
        "TRAINING_DEVICE": "cpu",
        "INFERENCE_DEVICE": "cpu",
        "TRAINING_HEARTBEAT_SECONDS": "1",
    }
    with celery_worker(log_path=tmp_path / "worker.log", env=env) as process:
        yield process


def _wait_job(job_id: int, statuses: set[str], timeout: float = 900, what: Any = None) -> TrainingJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = TrainingJob.objects.get(pk=job_id)
        if job.status in statuses and (what is None or what(job)):
            return job
        time.sleep(0.5)
    job = TrainingJob.objects.get(pk=job_id)
    raise AssertionError(f"job {job_id} stayed {job.status} {job.progress}:\n{job.log[-3000:]}")


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_two_stage_job_end_to_end(worker: Any, training_dir: Path) -> None:
    started = time.monotonic()
    sp = synthetic_project(splits={"train": 4, "validation": 1, "test": 2}, size=128, n_cells=14, n_erythrocytes=5)
    client = _client(sp.admin)
    config = {
        "preset": "tiny",
        "nnunet": {"num_epochs": 4, "num_iterations_per_epoch": 10},
        "cellpose": {"n_epochs": 8, "bsize": 64, "bn_recalibrate_batches": 2},
        "synthetic": {"count": 2, "seed": 1},
    }
    response = client.post(
        f"/api/v1/projects/{sp.project.pk}/training/jobs", {"kind": "two_stage", "config": config}, format="json"
    )
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    running = _wait_job(
        job_id,
        {JobStatus.RUNNING} | TERMINAL,
        what=lambda j: j.status != JobStatus.RUNNING or j.progress.get("phase") == "train",
    )
    assert running.worker_pid and running.heartbeat_at
    job = _wait_job(job_id, TERMINAL)
    assert job.status == JobStatus.SUCCEEDED, f"{job.error}\n{job.log[-4000:]}"
    assert len(job.curves["nnunet"]) == 4 and len(job.curves["cellpose"]) == 8
    versions = {v.kind: v for v in ModelVersion.objects.filter(job=job)}
    assert set(versions) == {ModelKind.NNUNET, ModelKind.CELLPOSE, ModelKind.TWO_STAGE}
    assert versions[ModelKind.TWO_STAGE].artifact_prefix.startswith(f"models/{job.project_id}/")
    assert {a["path"] for a in versions[ModelKind.TWO_STAGE].artifacts} >= {
        "nnunet/fold_0/checkpoint_final.pth",
        "cellpose/cellpose.pth",
    }
    # every candidate and the baseline it had to beat were evaluated on the same frozen test split
    baseline = ModelVersion.objects.get(project=sp.project, kind=ModelKind.WATERSHED)
    for version in versions.values():
        assert Evaluation.objects.filter(model_version=version, snapshot=job.snapshot).exists()
    assert Evaluation.objects.filter(model_version=baseline, snapshot=job.snapshot).exists()
    decisions = job.result["promotion"]
    two_stage = versions[ModelKind.TWO_STAGE]
    decision = decisions[str(two_stage.pk)]
    if not decision["promoted"]:  # the gate kept it: an admin promotes it by hand
        promoted = client.post(f"/api/v1/training/models/{two_stage.pk}/promote", {"reason": "e2e"}, format="json")
        assert promoted.status_code == 200, promoted.content
    two_stage.refresh_from_db()
    assert two_stage.status == ModelStatus.ACTIVE
    assert model_version_for_project(project=sp.project) == two_stage

    # pre-segmentation of a new image now uses the two-stage model
    field = generate_field(seed=500, width=128, height=128, n_cells=14, n_erythrocytes=5)
    upload = SimpleUploadedFile("new.png", synthetic_png(field), content_type="image/png")
    image_id = client.post(f"/api/v1/projects/{sp.project.pk}/images", {"files": [upload]}, format="multipart").json()[
        0
    ]["id"]
    assert client.post(f"/api/v1/images/{image_id}/presegment", {}, format="json").status_code == 202
    deadline = time.monotonic() + 300
    while Image.objects.get(pk=image_id).presegment_status not in (PresegmentStatus.DONE, PresegmentStatus.FAILED):
        assert time.monotonic() < deadline, "pre-segmentation did not finish"
        time.sleep(0.5)
    image = Image.objects.get(pk=image_id)
    assert image.presegment_status == PresegmentStatus.DONE, image.presegment_error
    assert image.presegment_model_id == two_stage.pk
    proposals = Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL)
    assert all(p.model_version_id == two_stage.pk for p in proposals)

    table = client.get(f"/api/v1/projects/{sp.project.pk}/training/models").json()
    numbers = {
        "seconds": round(time.monotonic() - started, 1),
        "timings": {k: round(v, 1) for k, v in job.timings.items()},
        "proposals_on_new_image": proposals.count(),
        "gate": {
            str(v.kind): {k: decisions[str(v.pk)][k] for k in ("metric", "candidate", "baseline", "promoted")}
            for v in versions.values()
        },
        "models": {
            f"{row['kind']} v{row['number']} ({row['status']})": {
                k: None if row["metrics"][k] is None else round(row["metrics"][k], 3)
                for k in (
                    "dice",
                    "iou",
                    "f1_50",
                    "f1_70",
                    "best_match_precision_70",
                    "ranked_ap50",
                    "ranked_ap70",
                    "boundary_ranked_ap50",
                    "dsb",
                    "coco_AP",
                    "coco_AP50",
                    "erythrocyte_fp",
                )
            }
            for row in table["versions"]
            if row["metrics"]
        },
    }
    print("TRAINING_E2E " + json.dumps(numbers))


def test_cancel_and_killed_worker_process(worker: Any) -> None:
    sp = synthetic_project(splits={"train": 2}, size=96, n_cells=8, n_erythrocytes=3)
    client = _client(sp.admin)
    url = f"/api/v1/projects/{sp.project.pk}/training/jobs"
    long_run = {"preset": "tiny", "nnunet": {"num_epochs": 200}}

    # cancel a running job: the trainer stops at its next check
    job_id = client.post(url, {"kind": "nnunet", "config": long_run}, format="json").json()["id"]
    _wait_job(job_id, {JobStatus.RUNNING}, timeout=300, what=lambda j: j.progress.get("phase") == "train")
    response = client.post(f"/api/v1/training/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    job = _wait_job(job_id, TERMINAL, timeout=300)
    assert job.status == JobStatus.CANCELLED, job.log[-2000:]
    assert not ModelVersion.objects.filter(job=job).exists()

    # kill the pool process that runs the next job: the job ends failed, with the reason
    job_id = client.post(url, {"kind": "nnunet", "config": long_run}, format="json").json()["id"]
    running = _wait_job(job_id, {JobStatus.RUNNING}, timeout=300, what=lambda j: j.progress.get("phase") == "train")
    os.kill(running.worker_pid, signal.SIGKILL)
    job = _wait_job(job_id, TERMINAL, timeout=300)
    assert job.status == JobStatus.FAILED
    assert f"worker process {running.worker_pid}" in job.error, job.error
    # the project is free for the next job
    assert client.post(url, {"kind": "nnunet", "config": {"preset": "tiny"}}, format="json").status_code == 201
