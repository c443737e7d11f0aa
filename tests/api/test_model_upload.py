"""No API field takes a server path: models enter as uploads, pipelines are validated against the
backends' schemas, and nothing stored before that can point a worker at a file."""

from __future__ import annotations

import importlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from django.apps import apps as django_apps
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from annotations.models import AuditEvent, Cell, Image, Layer, PresegmentStatus, Project
from core.errors import ConflictError
from cytoseg.backends import PATHS_REFUSED
from cytoseg.tests.model_files import cellpose_weights, nnunet_checkpoint, nnunet_package, nnunet_plans
from inference.services import image_presegment_run
from tests.api.conftest import client_for
from tests.factories import image_create, model_object_read, zip_upload
from training.models import ModelStatus, ModelVersion
from training.services import artifacts, registry

pytestmark = pytest.mark.django_db


def _post(client: Any, project: Any, data: dict[str, Any], *, fmt: str = "multipart") -> Any:
    return client.post(f"/api/v1/projects/{project.pk}/models", data, format=fmt)


def _stored() -> list[Path]:
    root = Path(settings.MODEL_DIR)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_server_paths_are_refused(project: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    response = _post(client, project, {"kind": "nnunet", "artifact_path": "/etc"}, fmt="json")
    assert response.status_code == 400
    assert "server paths are not accepted" in response.json()["errors"]["artifact_path"][0]
    response = _post(client, project, {"kind": "nnunet", "model_folder": "/etc"}, fmt="json")
    assert response.json()["errors"] == {"model_folder": ["unknown field"]}
    response = _post(client, project, {"kind": "watershed", "config": {"model_folder": "/srv"}}, fmt="json")
    assert response.status_code == 400 and response.json()["errors"][
        "config.model_folder"
    ] == "unknown setting; known: " + (
        "bg_dilation, blur_sigma, dist_fraction, dist_reference, erythrocyte_filter, fill_holes, flood, "
        "min_area, min_contrast, opening_radius, polarity, prob_threshold"
    )
    upload = SimpleUploadedFile("cellpose.pth", cellpose_weights())
    response = _post(client, project, {"kind": "cellpose", "file": upload, "config": json.dumps({"model_file": "/x"})})
    assert response.status_code == 400 and response.json()["errors"] == {"config.model_file": PATHS_REFUSED}
    assert not ModelVersion.objects.exists() and _stored() == []


def test_upload_validation(project: Any, admin_user: Any, annotator: Any) -> None:
    client = client_for(admin_user)
    assert _post(client, project, {"kind": "yolo"}).json()["errors"]["kind"]
    assert "is required" in _post(client, project, {"kind": "nnunet"}).json()["errors"]["file"]
    watershed_with_file = _post(client, project, {"kind": "watershed", "file": SimpleUploadedFile("a.pth", b"x")})
    assert watershed_with_file.json()["errors"]["file"] == "a watershed model has no files"
    bad_config = _post(client, project, {"kind": "watershed", "config": "{not json"})
    assert "valid JSON" in bad_config.json()["errors"]["config"][0]
    loose_checkpoint = _post(client, project, {"kind": "nnunet", "file": SimpleUploadedFile("c.pth", b"x")})
    assert "zip" in loose_checkpoint.json()["errors"]["file"]
    assert _post(client_for(annotator), project, {"kind": "watershed"}).status_code == 403
    response = _post(client, project, {"kind": "watershed", "name": "baseline", "config": json.dumps({"min_area": 50})})
    assert response.status_code == 201, response.content
    assert response.json()["config"] == {"min_area": 50} and response.json()["artifacts"] == []


def test_cellpose_file_upload_is_stored_checked_and_hashed(project: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    upload = SimpleUploadedFile("my-model.pth", cellpose_weights())
    response = _post(
        client, project, {"kind": "cellpose", "file": upload, "activate": True, "config": '{"diameter": 17}'}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert "artifact_path" not in body
    assert [a["path"] for a in body["artifacts"]] == ["cellpose.pth"] and len(body["artifacts"][0]["sha256"]) == 64
    version = ModelVersion.objects.get(pk=body["id"])
    assert version.status == ModelStatus.ACTIVE and version.config == {"diameter": 17}
    assert version.artifact_prefix.startswith(f"models/{project.pk}/")
    assert model_object_read(version, "cellpose.pth") == cellpose_weights()
    assert not list(Path(settings.MODEL_DIR).rglob("*.pth"))  # the scratch copy is gone
    artifacts.artifacts_check(version)
    audit = AuditEvent.objects.get(action="model.register")
    assert audit.after == {"files": 1, "status": "active", "config": {"diameter": 17}}
    detail = client.get(f"/api/v1/training/models/{version.pk}").json()
    assert "artifact_path" not in detail and detail["artifacts"] == body["artifacts"]


def test_nnunet_zip_upload_is_sanitised(project: Any, admin_user: Any) -> None:
    import numpy as np

    raw = io.BytesIO()  # as nnU-Net writes it: optimiser state and numpy scalars
    torch.save(
        {
            "network_weights": {"w": torch.zeros(2)},
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "2d"},
            "optimizer_state": {"lr": np.float64(0.01)},
        },
        raw,
    )
    files = {f"model/{k}": v for k, v in nnunet_package(checkpoint=raw.getvalue()).items()}
    response = _post(client_for(admin_user), project, {"kind": "nnunet", "file": zip_upload(files)})
    assert response.status_code == 201, response.content
    assert {a["path"] for a in response.json()["artifacts"]} == {
        "plans.json",
        "dataset.json",
        "fold_all/checkpoint_final.pth",
    }
    version = ModelVersion.objects.get(pk=response.json()["id"])
    stored = torch.load(io.BytesIO(model_object_read(version, "fold_all/checkpoint_final.pth")), weights_only=True)
    assert "optimizer_state" not in stored


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (nnunet_package(plans=nnunet_plans(nonlin="os.system")), "plans.json: "),
        (nnunet_package(checkpoint=nnunet_checkpoint(trainer_name="builtins.eval")), "fold_all/checkpoint_final.pth: "),
        ({**nnunet_package(), "../../escape.json": b"{}"}, "'..'"),
        ({**nnunet_package(), "extra/state.pkl": b"x"}, "pickle"),
        ({"plans.json": b"{}"}, "dataset.json: is missing"),
    ],
)
def test_unsafe_or_broken_packages_are_refused_and_nothing_is_kept(
    project: Any, admin_user: Any, files: dict[str, bytes], message: str
) -> None:
    response = _post(client_for(admin_user), project, {"kind": "nnunet", "file": zip_upload(files)})
    assert response.status_code == 400, response.content
    assert message in response.json()["errors"]["file"]
    assert not ModelVersion.objects.exists() and _stored() == []


def test_a_pickled_object_in_an_upload_never_runs(project: Any, admin_user: Any, tmp_path: Path) -> None:
    from cytoseg.tests.test_packages import Marker

    buffer = io.BytesIO()
    torch.save({"x": Marker(tmp_path / "ran")}, buffer)
    upload = SimpleUploadedFile("cellpose.pth", buffer.getvalue())
    response = _post(client_for(admin_user), project, {"kind": "cellpose", "file": upload})
    assert response.status_code == 400 and "weights_only" in response.json()["errors"]["file"]
    assert not (tmp_path / "ran").exists()


# --- project pipelines -------------------------------------------------------------------------


def test_pipeline_settings_are_validated(project: Any, admin_user: Any) -> None:
    client = client_for(admin_user)
    url = f"/api/v1/projects/{project.pk}"
    for pipeline, errors in (
        ({"nnunet": {"model_folder": "/srv/media/2"}}, {"pipeline.nnunet.model_folder": PATHS_REFUSED}),
        ({"nnunet": {"checkpoint": "../../x.pth"}}, {"pipeline.nnunet.checkpoint"}),
        (
            {"two_stage": {"nnunet_model_folder": "/x", "cellpose": {"model_file": "/y"}}},
            {
                "pipeline.two_stage.nnunet_model_folder": PATHS_REFUSED,
                "pipeline.two_stage.cellpose.model_file": PATHS_REFUSED,
            },
        ),
        ({"refinement": {"base": "nnunet", "weights": "/w"}}, {"pipeline.refinement.weights": PATHS_REFUSED}),
        ({"cellpose": {"diameter": "big"}}, {"pipeline.cellpose.diameter"}),
        ({"yolo": {}}, {"pipeline.yolo"}),
        ({"split_ratios": {"train": 0.5, "test": 0.6}}, {"pipeline.split_ratios"}),
        ([], {"pipeline"}),
    ):
        response = client.patch(url, {"pipeline": pipeline}, format="json")
        assert response.status_code == 400, pipeline
        got = response.json()["errors"]
        assert (got == errors) if isinstance(errors, dict) else (set(got) == errors), got
    ok = {"nnunet": {"use_mirroring": False}, "split_ratios": {"train": 0.5, "validation": 0.25, "test": 0.25}}
    assert client.patch(url, {"pipeline": ok}, format="json").json()["pipeline"] == ok
    admin_user.is_staff = True
    admin_user.save()
    created = client.post(
        "/api/v1/projects", {"name": "P", "pipeline": {"cellpose": {"model_file": "/x"}}}, format="json"
    )
    assert created.status_code == 400 and created.json()["errors"] == {"pipeline.cellpose.model_file": PATHS_REFUSED}


def _queued(image: Any, version_id: int) -> None:
    """As image_presegment_enqueue leaves an image (the run claims only a queued image)."""
    Image.objects.filter(pk=image.pk).update(presegment_status=PresegmentStatus.QUEUED, presegment_model_id=version_id)


def test_settings_stored_before_validation_never_reach_a_loader(project: Any, admin_user: Any) -> None:
    image = image_create(project)
    version = registry.model_version_upload(
        project=project, kind="cellpose", upload=SimpleUploadedFile("c.pth", cellpose_weights()), user=admin_user
    )
    Project.objects.filter(pk=project.pk).update(pipeline={"cellpose": {"model_file": "/etc/passwd"}})
    _queued(image, version.pk)
    with pytest.raises(Exception, match="model_file"):
        image_presegment_run(image_id=image.pk, model_version_id=version.pk)
    image.refresh_from_db()
    assert image.presegment_status == PresegmentStatus.FAILED and "model_file" in image.presegment_error
    assert not Cell.objects.filter(image=image, layer=Layer.PROPOSAL).exists()


def test_versions_naming_objects_outside_the_model_storage_are_refused(project: Any, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "cellpose.pth").write_bytes(cellpose_weights())
    for prefix in ("/etc", "projects/1", "models/../projects/1", ""):
        version = ModelVersion.objects.create(
            project=project,
            kind="cellpose",
            number=ModelVersion.objects.count() + 1,
            artifact_prefix=prefix,
            artifacts=artifacts.artifacts_inspect(folder),
        )
        match = "no recorded model files" if not prefix else "outside the platform's model storage"
        with pytest.raises(ConflictError, match=match):
            artifacts.artifacts_local(version)
        with pytest.raises(ConflictError, match=match):
            artifacts.artifacts_check(version)
    traversal = ModelVersion.objects.create(
        project=project,
        kind="cellpose",
        number=99,
        artifact_prefix=f"models/{project.pk}/x",
        artifacts=[{"path": "../../../etc/passwd", "sha256": "0" * 64, "size": 1}],
    )
    with pytest.raises(ConflictError, match="invalid file name"):
        artifacts.artifacts_local(traversal)
    no_files = ModelVersion.objects.create(project=project, kind="nnunet", number=1)
    with pytest.raises(ConflictError, match="no recorded model files"):
        artifacts.artifacts_local(no_files)


def test_migration_removes_stored_paths(project: Any) -> None:
    migration = importlib.import_module("annotations.migrations.0007_pipeline_paths_removed")
    stored = {
        "nnunet": {"model_folder": "/srv", "checkpoint": "../x.pth", "use_mirroring": False},
        "two_stage": {"cellpose_model_file": "/y", "nnunet": {"model_folder": "/z", "tile_step_size": 0.5}},
        "split_ratios": {"train": 1.0},
    }
    Project.objects.filter(pk=project.pk).update(pipeline=stored)
    migration.remove_paths(django_apps, None)
    project.refresh_from_db()
    assert project.pipeline == {
        "nnunet": {"use_mirroring": False},
        "two_stage": {"nnunet": {"tile_step_size": 0.5}},
        "split_ratios": {"train": 1.0},
    }
    event = AuditEvent.objects.get(action="project.pipeline_paths_removed")
    assert event.before == {"pipeline": stored} and event.after == {"pipeline": project.pipeline}


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.ml
def test_uploaded_two_stage_model_presegments(
    project: Any, admin_user: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from cytoseg.tests.tiny_models import cellpose_trained, models_base_get, nnunet_trained

    base = models_base_get(tmp_path_factory)
    bundle = tmp_path / "bundle"
    shutil.copytree(nnunet_trained(base).model_folder, bundle / "nnunet")
    shutil.copytree(cellpose_trained(base)[0].model_file.parent, bundle / "cellpose")
    files = {str(p.relative_to(bundle)): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    config = {"nnunet": {"use_mirroring": False}}
    response = _post(
        client_for(admin_user),
        project,
        {"kind": "two_stage", "file": zip_upload(files), "activate": True, "config": json.dumps(config)},
    )
    assert response.status_code == 201, response.content
    image = image_create(project, width=128, height=128, seed=3)
    _queued(image, response.json()["id"])
    result = image_presegment_run(image_id=image.pk, model_version_id=response.json()["id"])
    image.refresh_from_db()
    assert image.presegment_status == PresegmentStatus.DONE and result.cell_count >= 0
    assert Cell.objects.filter(image=image, layer=Layer.PROPOSAL, model_version_id=response.json()["id"]).count() == (
        result.cell_count
    )


def test_django_admin_refuses_pipeline_paths(project: Any) -> None:
    from annotations.admin import ProjectAdminForm

    data = {
        "name": project.name,
        "description": "",
        "experts_required": 2,
        "match_iou": 0.5,
        "auto_presegment": True,
        "created_by": project.created_by_id,
        "pipeline": json.dumps({"nnunet": {"model_folder": "/srv"}}),
    }
    form = ProjectAdminForm(instance=project, data=data)
    assert not form.is_valid() and "pipeline.nnunet.model_folder" in str(form.errors["pipeline"])
    form = ProjectAdminForm(
        instance=project, data={**data, "pipeline": json.dumps({"nnunet": {"use_mirroring": False}})}
    )
    assert form.is_valid(), form.errors
