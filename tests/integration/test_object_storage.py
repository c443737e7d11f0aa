"""Beyond one machine: every kept file in an S3 bucket (moto's server, a process of the tests'
own, tests/s3.py), and Celery workers that share nothing with the web process but the
database, the broker and the bucket. Each worker has local folders of its own and is refused,
by an audit hook (tests/hostguard), any access to the web's folders: a worker on another host.

Covered: upload -> pre-segmentation on such a worker -> proposals; a training job whose model
lands in the bucket, then a second worker with an empty cache pre-segmenting with it (cache
filled and verified), a changed object refused; an export written by a worker and downloaded
through the API; and nothing of it on the web's disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotations.models import Cell, Image, Layer, PresegmentStatus, Project
from interchange.models import ExportJob
from tests.factories import ProjectFactory, UserFactory
from tests.integration.support import field_png, wait_until
from tests.s3 import S3Server, s3_server
from tests.worker import celery_worker
from training.models import JobStatus, ModelKind, ModelVersion, TrainingJob
from training.services.artifacts import manifest_key
from training.tests.factories import synthetic_project

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
HOSTGUARD = ROOT / "tests" / "hostguard"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server, settings: Any) -> Iterator[str]:
    """This test's prefix of the bucket, as the web process's default storage."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    settings.STORAGES = s3.storages_setting(prefix)
    yield prefix


def _web_folders(settings: Any) -> list[str]:
    return [
        str(settings.MEDIA_ROOT),
        str(settings.TRAINING_DIR),
        str(settings.MODEL_DIR),
        str(settings.MODEL_CACHE_DIR),
    ]


@contextmanager
def remote_worker(
    s3: S3Server, prefix: str, settings: Any, home: Path, *, queues: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker on "another host": folders of its own under ``home``, the web's refused."""
    home.mkdir(parents=True, exist_ok=True)
    environ = {
        **s3.storage_env(prefix),
        "MEDIA_ROOT": str(home / "media"),
        "TRAINING_DIR": str(home / "training"),
        "MODEL_DIR": str(home / "models"),
        "MODEL_CACHE_DIR": str(home / "model-cache"),
        "INFERENCE_DEVICE": "cpu",
        "TRAINING_DEVICE": "cpu",
        "TRAINING_HEARTBEAT_SECONDS": "1",
        "PYTHONPATH": os.pathsep.join([str(HOSTGUARD), str(ROOT)]),
        "HOSTGUARD_FORBIDDEN": os.pathsep.join(_web_folders(settings)),
        **(env or {}),
    }
    with celery_worker(log_path=home / "worker.log", queues=queues, env=environ) as process:
        yield process
    log = (home / "worker.log").read_text()
    assert "HOSTGUARD refused" not in log, "the worker reached for the web's files"


def test_the_host_guard_refuses_the_web_folders(tmp_path: Path) -> None:
    forbidden = tmp_path / "web"
    forbidden.mkdir()
    (forbidden / "x").write_text("the web's file")
    env = os.environ | {"PYTHONPATH": str(HOSTGUARD), "HOSTGUARD_FORBIDDEN": str(forbidden)}
    probe = "import sys; open(sys.argv[1]).read()"
    refused = subprocess.run(
        [sys.executable, "-c", probe, str(forbidden / "x")], env=env, capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0 and "PermissionError" in refused.stderr
    allowed = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "README.md")], env=env, capture_output=True, text=True, check=False
    )
    assert allowed.returncode == 0, allowed.stderr


def _wait_image(image_id: int, statuses: set[str], timeout: float = 180) -> Image:
    wait_until(
        lambda: Image.objects.get(pk=image_id).presegment_status in statuses,
        timeout,
        lambda: f"image {image_id} stayed {Image.objects.get(pk=image_id).presegment_status}",
    )
    return Image.objects.get(pk=image_id)


def _files_under(folder: str) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()] if Path(folder).exists() else []


def test_upload_presegment_and_export_through_the_bucket(
    s3: S3Server, bucket: str, settings: Any, tmp_path: Path
) -> None:
    admin = UserFactory()
    project = ProjectFactory(created_by=admin, auto_presegment=True)
    client = APIClient()
    client.force_authenticate(admin)
    with remote_worker(s3, bucket, settings, tmp_path / "host-b", queues="gpu,default"):
        response = client.post(
            f"/api/v1/projects/{project.pk}/images",
            {"files": [SimpleUploadedFile("field.png", field_png(7), content_type="image/png")]},
            format="multipart",
        )
        assert response.status_code == 201, response.content
        image_id = response.json()[0]["id"]
        image = Image.objects.get(pk=image_id)
        keys = s3.keys(f"{bucket}/")
        assert {
            f"{bucket}/{image.original.name}",
            f"{bucket}/{image.display.name}",
            f"{bucket}/{image.thumbnail.name}",
        } <= set(keys)
        image = _wait_image(image_id, {PresegmentStatus.DONE, PresegmentStatus.FAILED})
        assert image.presegment_status == PresegmentStatus.DONE, image.presegment_error
        assert Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).count() >= 5
        # the display image is served to members from the bucket, through the API
        served = client.get(f"/api/v1/images/{image_id}/file?variant=display")
        assert served.status_code == 200 and b"".join(served.streaming_content)[:8] == b"\x89PNG\r\n\x1a\n"  # type: ignore[attr-defined]

        # an export job written by the worker, downloaded through the API
        version_id = Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).first().model_version_id  # type: ignore[union-attr]
        queued = client.get(
            f"/api/v1/projects/{project.pk}/export/coco?async=1&layer=proposal&model_version={version_id}"
        )
        assert queued.status_code == 202, queued.content
        job_id = queued.json()["id"]
        wait_until(
            lambda: ExportJob.objects.get(pk=job_id).status in ("done", "failed"),
            120,
            lambda: f"export stayed {ExportJob.objects.get(pk=job_id).status}",
        )
        job = ExportJob.objects.get(pk=job_id)
        assert job.status == "done", job.error
        assert f"{bucket}/{job.file}" in s3.keys(f"{bucket}/exports/")
        download = client.get(f"/api/v1/projects/{project.pk}/export/jobs/{job_id}/download")
        assert download.status_code == 200
        body = b"".join(download.streaming_content)  # type: ignore[attr-defined]
        coco = json.loads(body)
        assert len(coco["annotations"]) == Cell.objects.filter(image_id=image_id, layer=Layer.PROPOSAL).count()
    # nothing was kept on the web's disk: the bucket holds it all
    assert _files_under(str(settings.MEDIA_ROOT)) == []
    # and the bucket is private: an unsigned request is refused
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{s3.endpoint}/{s3.bucket}/{bucket}/{image.display.name}", timeout=5)


@pytest.mark.ml
def test_model_trained_on_one_host_is_fetched_verified_and_used_on_another(
    s3: S3Server, bucket: str, settings: Any, tmp_path: Path
) -> None:
    sp = synthetic_project(splits={"train": 2, "validation": 1, "test": 1}, size=96, n_cells=8, n_erythrocytes=3)
    client = APIClient()
    client.force_authenticate(sp.admin)
    config = {"preset": "tiny", "device": "cpu", "cellpose": {"n_epochs": 3}}
    with remote_worker(s3, bucket, settings, tmp_path / "trainer", queues="training,default"):
        answer = client.post(
            f"/api/v1/projects/{sp.project.pk}/training/jobs", {"kind": "cellpose", "config": config}, format="json"
        )
        assert answer.status_code == 201, answer.content
        job_id = answer.json()["id"]
        wait_until(
            lambda: TrainingJob.objects.get(pk=job_id).status in (JobStatus.SUCCEEDED, JobStatus.FAILED),
            600,
            lambda: f"job stayed {TrainingJob.objects.get(pk=job_id).status}",
        )
    job = TrainingJob.objects.get(pk=job_id)
    assert job.status == JobStatus.SUCCEEDED, f"{job.error}\n{job.log[-3000:]}"
    version = ModelVersion.objects.get(job=job, kind=ModelKind.CELLPOSE)
    stored = s3.keys(f"{bucket}/{version.artifact_prefix}/")
    assert stored == sorted(f"{bucket}/{version.artifact_prefix}/{a['path']}" for a in version.artifacts)
    assert _files_under(str(settings.MODEL_DIR)) == [] and _files_under(str(settings.TRAINING_DIR)) == []

    Project.objects.filter(pk=sp.project.pk).update(auto_presegment=False)
    upload = client.post(
        f"/api/v1/projects/{sp.project.pk}/images",
        {"files": [SimpleUploadedFile("new.png", field_png(11, 128), content_type="image/png")]},
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    image = Image.objects.get(pk=upload.json()[0]["id"])
    home = tmp_path / "gpu-host"
    cache = home / "model-cache"
    with remote_worker(s3, bucket, settings, home, queues="gpu"):
        assert not cache.exists() or not any(cache.iterdir())  # an empty cache
        response = client.post(f"/api/v1/images/{image.pk}/presegment", {"model_version": version.pk}, format="json")
        assert response.status_code == 202, response.content
        done = _wait_image(image.pk, {PresegmentStatus.DONE, PresegmentStatus.FAILED}, timeout=240)
        assert done.presegment_status == PresegmentStatus.DONE, done.presegment_error
        # (three epochs of Cellpose find few cells or none: what matters is which model ran, and from where)
        assert done.presegment_model_id == version.pk
        entry = cache / manifest_key(version.artifacts)
        assert sorted(
            str(p.relative_to(entry)) for p in entry.rglob("*") if p.is_file() and p.name[0] != "."
        ) == sorted(a["path"] for a in version.artifacts)

    # the object changes in the bucket (same size, other bytes): a worker with an empty cache refuses it
    name = f"{bucket}/{version.artifact_prefix}/cellpose.pth"
    original = s3.client().get_object(Bucket=s3.bucket, Key=name)["Body"].read()
    s3.client().put_object(Bucket=s3.bucket, Key=name, Body=original[:-8] + b"tampered")
    with remote_worker(s3, bucket, settings, tmp_path / "another-host", queues="gpu"):
        response = client.post(f"/api/v1/images/{image.pk}/presegment", {"model_version": version.pk}, format="json")
        assert response.status_code == 202
        failed = _wait_image(image.pk, {PresegmentStatus.FAILED})
        assert "sha256" in failed.presegment_error
        assert not (tmp_path / "another-host" / "model-cache" / manifest_key(version.artifacts)).exists()
    assert default_storage.exists(f"{version.artifact_prefix}/cellpose.pth")
