"""Training API: jobs, snapshots and downloads, the model registry, promotion, schedules."""

from __future__ import annotations

import io
import zipfile
from typing import Any
from unittest import mock

import pytest

from annotations.models import AuditEvent
from tests.api.conftest import client_for
from tests.factories import model_version_files
from training import snapshots
from training.models import JobStatus, ModelKind, TrainingJob
from training.services import registry
from training.services.registry import model_version_baseline
from training.tests.factories import synthetic_project

pytestmark = pytest.mark.django_db

FAST = {"preset": "tiny", "device": "cpu", "cellpose": {"n_epochs": 2}}


@pytest.fixture
def data(project: Any) -> Any:
    return synthetic_project(
        project=project, splits={"train": 2, "validation": 1, "test": 1}, size=64, n_cells=5, n_erythrocytes=2
    )


@pytest.fixture(autouse=True)
def enqueued() -> Any:
    with mock.patch("core.queue.task_send") as send:
        yield send


def _jobs(project: Any) -> str:
    return f"/api/v1/projects/{project.pk}/training/jobs"


def test_access_rules(project: Any, data: Any, admin_user: Any, annotator: Any, outsider: Any) -> None:
    assert client_for(outsider).get(_jobs(project)).status_code == 404
    assert client_for(outsider).get(f"/api/v1/projects/{project.pk}/training/models").status_code == 404
    assert client_for(annotator).get(_jobs(project)).status_code == 200
    assert client_for(annotator).post(_jobs(project), {"kind": "cellpose"}, format="json").status_code == 403
    assert (
        client_for(annotator).post(f"/api/v1/projects/{project.pk}/training/snapshots", {}, format="json").status_code
        == 403
    )
    response = client_for(admin_user).post(_jobs(project), {"kind": "cellpose", "config": FAST}, format="json")
    assert response.status_code == 201
    job_id = response.json()["id"]
    assert client_for(outsider).get(f"/api/v1/training/jobs/{job_id}").status_code == 404
    assert client_for(annotator).post(f"/api/v1/training/jobs/{job_id}/cancel").status_code == 403
    assert (
        client_for(outsider).put(f"/api/v1/projects/{project.pk}/training/schedule", {}, format="json").status_code
        == 404
    )


def test_start_list_get_and_cancel_a_job(
    project: Any, data: Any, admin_user: Any, django_capture_on_commit_callbacks: Any, enqueued: Any
) -> None:
    client = client_for(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            _jobs(project), {"kind": "two_stage", "config": FAST | {"nnunet": {"num_epochs": 1}}}, format="json"
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["kind"] == "two_stage" and body["created_by"] == admin_user.username
    assert body["snapshot_number"] == 1 and body["config"]["nnunet"] == {"num_epochs": 1}
    enqueued.assert_called_once_with("training.run_job", args=[body["id"]], queue="training", task_id=body["task_id"])
    conflict = client.post(_jobs(project), {"kind": "cellpose"}, format="json")
    assert conflict.status_code == 409 and conflict.json()["job"] == body["id"]
    listing = client.get(_jobs(project) + "?status=queued").json()
    assert listing["count"] == 1 and "log" not in listing["results"][0]
    TrainingJob.objects.filter(pk=body["id"]).update(
        status=JobStatus.RUNNING,
        progress={"stage": "nnunet", "epoch": 1, "epochs": 1, "iteration": 3},
        curves={"nnunet": [{"epoch": 0, "train_loss": 0.5, "val_loss": 0.4}]},
        log="started\n",
    )
    detail = client.get(f"/api/v1/training/jobs/{body['id']}").json()
    assert detail["progress"]["iteration"] == 3 and detail["curves"]["nnunet"][0]["val_loss"] == 0.4
    assert detail["log"] == "started\n" and detail["log_length"] == 8
    tail = client.get(f"/api/v1/training/jobs/{body['id']}?log_after=3").json()
    assert tail["log"] == "rted\n" and tail["log_length"] == 8
    assert client.get(f"/api/v1/training/jobs/{body['id']}?log_after=-1").status_code == 400
    cancelled = client.post(f"/api/v1/training/jobs/{body['id']}/cancel")
    assert cancelled.json() == {"id": body["id"], "status": "running", "cancel_requested": True}
    TrainingJob.objects.filter(pk=body["id"]).update(status=JobStatus.CANCELLED)
    assert client.post(f"/api/v1/training/jobs/{body['id']}/cancel").status_code == 409
    assert AuditEvent.objects.filter(project=project, action="training.cancel").exists()


def test_start_validates_the_configuration(project: Any, data: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    response = client.post(
        _jobs(project), {"kind": "cellpose", "config": {"cellpose": {"n_epoch": 2}, "lr": 1}}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == {"config.cellpose.n_epoch": "unknown key", "config.lr": "unknown key"}
    response = client.post(_jobs(project), {"kind": "cellpose", "epochs": 3}, format="json")
    assert response.status_code == 400 and response.json()["errors"] == {"epochs": "unknown field"}
    # the API takes one kind (docs/api.md once said "kinds")
    response = client.post(_jobs(project), {"kinds": ["cellpose"]}, format="json")
    assert response.status_code == 400 and response.json()["errors"]["kinds"] == "unknown field"
    response = client.post(_jobs(project), {"kind": "yolo"}, format="json")
    assert response.status_code == 400 and "kind" in response.json()["errors"]
    other = synthetic_project(splits={"train": 1}, size=64, n_cells=3, n_erythrocytes=1, seed=30)
    foreign = snapshots.dataset_snapshot_create(project=other.project, user=other.admin)
    response = client.post(_jobs(project), {"kind": "cellpose", "snapshot": foreign.pk}, format="json")
    assert response.status_code == 400 and "snapshot" in response.json()["errors"]
    assert not TrainingJob.objects.filter(project=project).exists()


def test_snapshots_create_list_detail_and_download(project: Any, data: Any, admin_user: Any, annotator: Any) -> None:
    client = client_for(admin_user)
    url = f"/api/v1/projects/{project.pk}/training/snapshots"
    response = client.post(url, {"source": "verified"}, format="json")
    assert response.status_code == 201, response.content
    snapshot = response.json()
    assert snapshot["counts"]["train"]["images"] == 2 and snapshot["counts"]["test"]["images"] == 1
    bad = client.post(url, {"synthetic": {"count": 1, "blur": 2}}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"] == {"synthetic.blur": "unknown option"}
    assert client_for(annotator).get(url).json()["count"] == 1
    detail = client.get(f"/api/v1/training/snapshots/{snapshot['id']}").json()
    assert len(detail["items"]) == 4 and all(item["cell_count"] > 0 for item in detail["items"])
    download = client.get(f"/api/v1/training/snapshots/{snapshot['id']}/download/nnunet?dataset_id=7")
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    assert f"Dataset007_Project{project.pk}Snapshot1/dataset.json" in archive.namelist()
    download = client.get(f"/api/v1/training/snapshots/{snapshot['id']}/download/cellpose")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    assert sum(name.endswith("_masks.png") for name in archive.namelist()) == 4
    assert client.get(f"/api/v1/training/snapshots/{snapshot['id']}/download/coco").status_code == 400
    assert client.get(f"/api/v1/training/snapshots/{snapshot['id']}/download/nnunet?dataset_id=0").status_code == 400
    assert client_for(annotator).get(f"/api/v1/training/snapshots/{snapshot['id']}/download/nnunet").status_code == 403


def test_completion_marks_images_for_the_annotation_source(project: Any, admin_user: Any) -> None:
    sp = synthetic_project(project=project, splits={"train": 2}, size=64, n_cells=3, n_erythrocytes=1, verified=False)
    client = client_for(admin_user)
    url = f"/api/v1/projects/{project.pk}/training/completion"
    ids = [i.pk for i in sp.images["train"]]
    assert client.post(url, {"images": ids}, format="json").json() == {"images": 2, "complete": True}
    assert client.post(url, {"images": [12345]}, format="json").status_code == 400
    response = client.post(
        _jobs(project), {"kind": "cellpose", "config": FAST | {"source": "annotation"}}, format="json"
    )
    assert response.status_code == 201, response.content


def test_registry_promote_rollback_and_evaluate(
    project: Any, data: Any, admin_user: Any, tmp_path: Any, django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(admin_user)
    snapshot = snapshots.dataset_snapshot_create(project=project, user=admin_user)
    baseline = model_version_baseline(project=project)
    registry.model_version_evaluate(version=baseline, snapshot=snapshot, device="cpu")
    version = model_version_files(project, ModelKind.CELLPOSE, {"cellpose.pth": b"x"})
    table = client.get(f"/api/v1/projects/{project.pk}/training/models").json()
    assert table["snapshot"] == snapshot.pk and "dsb" in table["metric_names"]
    rows = {row["id"]: row for row in table["versions"]}
    assert rows[baseline.pk]["metrics"]["dice"] is not None
    low, high = rows[baseline.pk]["intervals"]["dice"]
    assert low <= rows[baseline.pk]["metrics"]["dice"] <= high
    assert rows[baseline.pk]["raw_metrics"]["dice"] is not None  # the masks before they became polygons
    assert rows[version.pk]["metrics"] is None and rows[version.pk]["intervals"] is None  # not evaluated here
    assert table["presegmenter"] == baseline.pk and rows[baseline.pk]["presegmenter"] is True
    assert client.get(f"/api/v1/projects/{project.pk}/training/models?snapshot=x").status_code == 400
    detail = client.get(f"/api/v1/training/models/{baseline.pk}").json()
    assert detail["evaluations"][0]["snapshot"] == snapshot.pk and detail["metrics"]["per_image"]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/api/v1/training/models/{version.pk}/evaluate", {}, format="json")
    assert response.status_code == 202 and response.json() == {"model_version": version.pk, "snapshot": snapshot.pk}
    assert len(callbacks) == 1
    promoted = client.post(f"/api/v1/training/models/{version.pk}/promote", {"reason": "looks right"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["status"] == "active"
    table = client.get(f"/api/v1/projects/{project.pk}/training/models").json()
    rows = {row["id"]: row for row in table["versions"]}
    assert "replaced" in rows[version.pk] and table["presegmenter"] == version.pk
    assert client.get(f"/api/v1/projects/{project.pk}/training/schedule").json()["presegmenter"] == version.pk
    assert AuditEvent.objects.get(action="model.promote").after["reason"] == "looks right"
    rollback = client.post(f"/api/v1/projects/{project.pk}/training/rollback", {"kind": "cellpose"}, format="json")
    assert rollback.json() == {"rolled_back": version.pk, "active": None}
    again = client.post(f"/api/v1/projects/{project.pk}/training/rollback", {"kind": "cellpose"}, format="json")
    assert again.status_code == 409


def test_schedule_get_and_set(project: Any, data: Any, admin_user: Any, annotator: Any) -> None:
    from django_celery_beat.models import PeriodicTask

    url = f"/api/v1/projects/{project.pk}/training/schedule"
    body = client_for(annotator).get(url).json()
    assert body["schedule_enabled"] is False and body["new_images"] == 3 and body["live_job"] is None
    assert client_for(annotator).put(url, {"schedule_enabled": True}, format="json").status_code == 403
    client = client_for(admin_user)
    response = client.put(
        url,
        {
            "schedule_enabled": True,
            "cron_hour": "2",
            "min_new_images": 5,
            "job_kind": "cellpose",
            "job_config": FAST,
            "gate_metric": "f1_70",
            "gate_margin": 0.01,
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["min_new_images"] == 5 and body["gate_metric"] == "f1_70" and body["periodic_task"]
    task = PeriodicTask.objects.get(pk=body["periodic_task"])
    assert task.enabled and task.crontab.hour == "2" and task.queue == "default"
    bad = client.patch(url, {"min_new_images": 0, "job_config": {"nnunet": {}}, "colour": 1}, format="json")
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"min_new_images", "job_config.nnunet", "colour"}


def test_openapi_lists_the_training_endpoints(admin_user: Any) -> None:
    paths = client_for(admin_user).get("/api/v1/schema", HTTP_ACCEPT="application/json").json()["paths"]
    for path in (
        "/api/v1/projects/{project_id}/training/jobs",
        "/api/v1/training/jobs/{job_id}/cancel",
        "/api/v1/training/snapshots/{snapshot_id}/download/{layout}",
        "/api/v1/training/models/{version_id}/promote",
        "/api/v1/projects/{project_id}/training/schedule",
    ):
        assert path in paths
