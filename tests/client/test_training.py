"""A tiny training job started and followed through the client and the command line, run by a
real Celery worker process (prefork, as in production) on the test database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cytoclient import Client, ConflictError, Progress, TrainingJob

from tests.client.conftest import Account, CliResult

pytestmark = [pytest.mark.integration, pytest.mark.ml, pytest.mark.django_db(transaction=True)]

TINY = {"preset": "tiny", "device": "cpu", "cellpose": {"n_epochs": 2}}


@pytest.fixture
def worker(settings: Any, tmp_path: Path) -> Iterator[Any]:
    from tests.worker import celery_worker

    env = {"TRAINING_DIR": str(tmp_path / "training"), "TRAINING_HEARTBEAT_SECONDS": "2", "TRAINING_DEVICE": "cpu"}
    with celery_worker(log_path=tmp_path / "worker.log", env=env, name="client", queues="training") as process:
        yield process


def test_train_wait_with_progress_then_metrics_and_curves(
    cyto: Client, project: Any, admin: Account, worker: Any, run_cli: Any
) -> None:
    from training.tests.factories import synthetic_project

    synthetic_project(project=project, splits={"train": 2, "test": 1}, size=96, n_cells=6, n_erythrocytes=2)
    job = cyto.training.start(project.pk, "cellpose", TINY)
    assert job.status == "queued" and job.kind == "cellpose" and job.config == TINY
    with pytest.raises(ConflictError):  # one live job a project
        cyto.training.start(project.pk, "cellpose", TINY)

    reports: list[Progress] = []
    updates: list[TrainingJob] = []
    log: list[str] = []
    done = cyto.training.wait(
        job, progress=reports.append, on_update=updates.append, on_log=log.append, poll_interval=0.3, timeout=600
    )
    assert done.status == "succeeded", done.log[-3000:]
    assert reports[-1].fraction == 1.0 and all(r.stage == "training" for r in reports)
    fractions = [r.fraction for r in reports if r.fraction is not None]
    assert any(0 < f < 1 for f in fractions), f"no progress seen between start and end: {fractions}"
    assert any("cellpose" in r.message for r in reports)
    assert "".join(log) == done.log  # the log arrived piece by piece, whole
    assert "cellpose epoch 2/2" in done.log
    assert {u.status for u in updates} >= {"succeeded"}

    curves = cyto.training.curves(done)
    assert [p["epoch"] for p in curves["cellpose"]] == [0, 1]
    metrics = cyto.training.metrics(done)
    assert set(metrics) == set(done.model_versions) and len(metrics) == 1
    (version_id,) = metrics
    assert "f1_50" in metrics[version_id]
    registry = cyto.models.list(project.pk)
    assert version_id in {v.id for v in registry.versions}

    # the command line shows the finished job and its versions
    shown: CliResult = run_cli("job", str(done.id), "--wait", "-q")
    assert shown.code == 0, shown.stderr
    assert f"Training job {done.id} succeeded" in shown.stdout and f"version {version_id}" in shown.stdout
    as_json = json.loads(run_cli("job", str(done.id), "--json").stdout)
    assert as_json["status"] == "succeeded"


def test_cli_train_and_wait(run_cli: Any, project: Any, worker: Any) -> None:
    from training.tests.factories import synthetic_project

    synthetic_project(project=project, splits={"train": 2, "test": 1}, size=96, n_cells=6, n_erythrocytes=2)
    result = run_cli(
        "train", "--project", str(project.pk), "--kind", "cellpose", "--preset", "tiny", "--device", "cpu",
        "--set", "cellpose.n_epochs=2", "--set", "evaluate=false", "--wait",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "succeeded" in result.stdout
    assert "training" in result.stderr and "100%" in result.stderr  # the progress lines

    from training.models import TrainingJob as Job

    job = Job.objects.get(project=project)
    assert job.config == {"preset": "tiny", "device": "cpu", "cellpose": {"n_epochs": 2}, "evaluate": False}

    bad = run_cli("train", "--project", str(project.pk), "--kind", "cellpose", "--set", "cellpose.n_epoch=2")
    assert bad.code == 1 and "config.cellpose.n_epoch" in bad.stderr
