"""The Python client against the live server: upload a folder with metadata and progress, cells
with revisions and a conflict, typed errors, exports (streamed and as a job), the COCO import,
the model registry, the work queue and the version check."""

from __future__ import annotations

import json
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cytoclient import (
    API_VERSION,
    Client,
    CompatibilityWarning,
    ConflictError,
    IncompatibleServerError,
    NotFoundError,
    PermissionDeniedError,
    Progress,
    ThrottledError,
    UploadError,
    ValidationError,
)

from annotations.models import Image, Role
from tests.client.conftest import Account, account_for, image_folder, square
from tests.factories import member

pytestmark = pytest.mark.django_db(transaction=True)


def test_upload_a_folder_in_batches_with_metadata_and_progress(
    live_server: Any, admin: Account, project: Any, tmp_path: Path
) -> None:
    folder = image_folder(tmp_path / "slide-7", 5)
    uploads: list[httpx.Request] = []
    http = httpx.Client(
        event_hooks={"request": [lambda r: uploads.append(r) if r.method == "POST" else None]}, timeout=60
    )
    reports: list[Progress] = []
    with Client(live_server.url, admin.token, http=http) as cyto:
        result = cyto.images.upload(
            project.pk,
            folder,
            bethesda="B4",
            stain="Diff-Quik",
            magnification="40x",
            slide_code="S-7",
            split="train",
            batch_size=2,
            progress=reports.append,
        )
        assert [i.file_name for i in result.images] == [f"field-{i:03d}.png" for i in range(5)]
        assert result.skipped == []
        assert len(uploads) == 3  # 2 + 2 + 1 files: the batches
        stored = Image.objects.filter(project=project)
        assert stored.count() == 5
        assert {(i.bethesda, i.stain, i.magnification, i.slide_code, i.split) for i in stored} == {
            ("IV", "Diff-Quik", "40x", "S-7", "train")
        }
        total = sum(p.stat().st_size for p in folder.glob("*.png"))
        assert all(r.stage == "upload" and r.total == total and r.unit == "B" for r in reports)
        done = [r.done for r in reports]
        assert done == sorted(done) and done[-1] == total
        assert any(0 < d < total for d in done), "no progress between the start and the end"

        # run again: every file is already there, nothing is sent
        again = cyto.images.upload(project.pk, folder, bethesda="IV")
        assert again.images == [] and sorted(p.name for p in again.skipped) == [f"field-{i:03d}.png" for i in range(5)]

        # a file the server refuses: its batch is refused, named by path; earlier batches stay
        image_folder(folder, 1, seed=50)
        (folder / "zz-broken.png").write_bytes(b"\x89PNG not really")
        with pytest.raises(UploadError) as refused:
            cyto.images.upload(project.pk, folder, batch_size=1)
        assert refused.value.status_code == 400
        assert refused.value.field == str(folder / "zz-broken.png")
        assert "zz-broken.png" in refused.value.errors[str(folder / "zz-broken.png")]
        assert [i.file_name for i in refused.value.uploaded] == ["field-050.png"]
        assert isinstance(refused.value, ValidationError)
        assert Image.objects.filter(project=project).count() == 6


def test_cells_save_with_revisions_and_a_conflict(cyto: Client, project: Any, tmp_path: Path) -> None:
    image = cyto.images.upload(project.pk, image_folder(tmp_path / "in", 1)).images[0]
    cell_class = cyto.projects.get(project.pk).class_id("thyroid cell")
    layer = cyto.cells.get(image)
    assert layer.revision == 0 and layer.cells == []

    saved = cyto.cells.save(image, [{"class_id": cell_class, "polygon": square(5, 5)}], revision=layer.revision)
    assert saved.revision == 1 and len(saved.cells) == 1 and saved.cells[0].area == pytest.approx(100)

    # someone else saves meanwhile; a save based on revision 1 is now stale
    other = cyto.cells.save(image, [*saved.cells, {"class_id": cell_class, "polygon": square(30, 20)}], revision=1)
    assert other.revision == 2
    with pytest.raises(ConflictError) as conflict:
        cyto.cells.save(image, [{"class_id": cell_class, "polygon": square(1, 1)}], revision=1)
    assert conflict.value.status_code == 409
    assert conflict.value.revision == 2
    assert conflict.value.cells is not None
    assert {c.id for c in conflict.value.cells} == {c.id for c in other.cells}
    assert "changed on the server" in conflict.value.detail  # the server's message

    # resolve: rebase onto the server's state and save again
    merged = cyto.cells.save(
        image, [*conflict.value.cells, {"class_id": cell_class, "polygon": square(1, 1, 3)}], conflict.value.revision
    )
    assert merged.revision == 3 and len(merged.cells) == 3

    with pytest.raises(ValidationError) as invalid:
        cyto.cells.save(image, [{"class_id": cell_class, "polygon": [[0, 0], [1, 1]]}], revision=3)
    assert invalid.value.field == "cells.0" and invalid.value.errors["cells.0"]
    assert "cells.0" in str(invalid.value)

    history = cyto.cells.history(image)
    assert [h.revision for h in history][:3] == [3, 2, 1]
    restored = cyto.cells.restore(image, 1, current_revision=3)
    assert restored.revision == 4 and len(restored.cells) == 1


def test_server_errors_become_typed_exceptions(
    live_server: Any, cyto: Client, admin: Account, project: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    with pytest.raises(NotFoundError) as missing:
        cyto.images.get(999_999)
    assert missing.value.status_code == 404 and missing.value.detail

    annotator = account_for(member(project, Role.ANNOTATOR, username="dr.kim"))
    with Client(live_server.url, annotator.token) as as_annotator:
        with pytest.raises(PermissionDeniedError) as denied:
            as_annotator.images.upload(project.pk, image_folder(tmp_path / "x", 1))
        assert denied.value.status_code == 403 and denied.value.detail

    with pytest.raises(ValidationError) as invalid:
        cyto.training.start(project.pk, "cellpose", {"cellpose": {"n_epoch": 2}})
    assert invalid.value.field == "config.cellpose.n_epoch"

    from django.core.cache import cache

    from core.api.throttling import UserThrottle

    monkeypatch.setattr(UserThrottle, "rate", "1/s", raising=False)
    cache.clear()  # the requests above do not count
    with Client(live_server.url, admin.token, check_version=False, max_throttle_retries=0) as eager:
        eager.me()
        with pytest.raises(ThrottledError) as throttled:
            eager.me()
        assert throttled.value.status_code == 429 and throttled.value.retry_after is not None
        assert 0 < throttled.value.retry_after <= 1
    with Client(live_server.url, admin.token, check_version=False) as patient:
        started = time.monotonic()
        assert [patient.me().username for _ in range(3)] == ["dr.head"] * 3  # 429s waited out
        assert time.monotonic() - started >= 1


def test_version_check_before_the_first_call(live_server: Any, admin: Account, monkeypatch: Any) -> None:
    from drf_spectacular.settings import spectacular_settings

    with Client(live_server.url, admin.token) as cyto:
        assert cyto.server_api_version() == API_VERSION
        cyto.me()

    monkeypatch.setattr(spectacular_settings, "VERSION", "2.0.0")
    with Client(live_server.url, admin.token) as cyto:
        with pytest.raises(IncompatibleServerError) as incompatible:
            cyto.me()
        assert incompatible.value.server_version == "2.0.0"
        assert "the server speaks API 2.0.0" in str(incompatible.value)
        with pytest.raises(IncompatibleServerError):
            cyto.projects.list()  # and every call after

    # an older minor version on the server: calls added since may be missing there
    monkeypatch.setattr(spectacular_settings, "VERSION", "1.0.0")
    monkeypatch.setattr("cytoclient._transport.API_VERSION", "1.1.0")
    with Client(live_server.url, admin.token) as cyto:
        with pytest.warns(CompatibilityWarning, match="older than this client's 1.1.0"):
            cyto.me()
        cyto.me()  # checked once
    monkeypatch.setattr(spectacular_settings, "VERSION", "1.3.2")  # a newer minor one only adds
    with Client(live_server.url, admin.token) as cyto, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cyto.me().username == "dr.head"

    with Client(live_server.url, admin.token, check_version=False) as unchecked:
        assert unchecked.me().username == "dr.head"


@pytest.fixture
def annotated(cyto: Client, project: Any, tmp_path: Path) -> list[Any]:
    """Three images of the project, two with cells in their annotation layer."""
    images = cyto.images.upload(project.pk, image_folder(tmp_path / "annotated", 3), split="train").images
    cell_class = cyto.projects.get(project.pk).class_id("thyroid cell")
    for offset, image in enumerate(images[:2]):
        cyto.cells.save(
            image,
            [
                {"class_id": cell_class, "polygon": square(4 + offset, 4)},
                {"class_id": cell_class, "polygon": square(30, 20 + offset)},
            ],
            revision=0,
        )
    return images


@pytest.fixture
def export_worker() -> Iterator[list[int]]:
    """Runs the export jobs the server queues, in a thread of this process (as the Celery task
    would, a moment later, so the client sees the job queued first). Yields the job ids run."""
    from django.db import connection

    from interchange.models import ExportJob
    from interchange.services.jobs import export_job_run

    stop = threading.Event()
    ran: list[int] = []

    def work() -> None:
        try:
            while not stop.is_set():
                for job_id in ExportJob.objects.filter(status="queued").values_list("pk", flat=True):
                    time.sleep(0.5)
                    export_job_run(job_id=job_id)
                    ran.append(job_id)
                stop.wait(0.1)
        finally:
            connection.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield ran
    stop.set()
    thread.join(timeout=30)


def test_export_coco_streamed_and_as_a_job(
    cyto: Client, project: Any, annotated: list[Any], tmp_path: Path, export_worker: list[int]
) -> None:
    reports: list[Progress] = []
    streamed = cyto.exports.coco(
        project.pk, tmp_path / "out" / "coco.json", layer="annotation", progress=reports.append
    )
    coco = json.loads(streamed.read_text())
    assert len(coco["annotations"]) == 4 and len(coco["images"]) == 2
    assert {c["name"] for c in coco["categories"]} >= {"thyroid cell"}
    assert reports and reports[-1].done == streamed.stat().st_size
    assert not list((tmp_path / "out").glob("*.part"))

    reports.clear()
    job_file = cyto.exports.download(
        project.pk,
        tmp_path / "job.json",
        layer="annotation",
        run_async=True,
        poll_interval=0.2,
        progress=reports.append,
    )
    assert isinstance(job_file, Path)
    assert json.loads(job_file.read_text())["annotations"] == coco["annotations"]
    assert len(export_worker) == 1
    polled = [r for r in reports if r.stage == "export"]
    assert polled[0].message in ("queued", "running") and polled[-1].message == "done"
    assert polled[-1].done == polled[-1].total == 4
    assert reports[-1].stage == "download"

    job = cyto.exports.download(project.pk, tmp_path / "later.json", layer="annotation", run_async=True, wait=False)
    assert not isinstance(job, Path) and job.status == "queued"
    finished = cyto.exports.wait(project.pk, job, poll_interval=0.2)
    assert finished.status == "done" and finished.download_url
    cyto.exports.download_job(project.pk, finished, tmp_path / "later.json")
    assert json.loads((tmp_path / "later.json").read_text())["annotations"] == coco["annotations"]
    assert [j.id for j in cyto.exports.jobs(project.pk)][:2] == [job.id, export_worker[0]]


def test_import_coco_into_another_project(
    cyto: Client, project: Any, annotated: list[Any], tmp_path: Path, admin: Account
) -> None:
    from tests.factories import ProjectFactory

    coco_file = cyto.exports.coco(project.pk, tmp_path / "coco.json", layer="annotation")
    images_zip = tmp_path / "images.zip"
    with zipfile.ZipFile(images_zip, "w") as archive:
        for path in sorted((tmp_path / "annotated").glob("*.png")):
            archive.write(path, path.name)
    target = ProjectFactory(name="Second site", created_by=admin.user)

    dry = cyto.imports.coco(target.pk, coco_file, images_zip=images_zip, dry_run=True)
    assert dry.dry_run and dry.cells == 4 and dry.images["uploaded"] == 2
    assert Image.objects.filter(project=target).count() == 0

    report = cyto.imports.coco(target.pk, coco_file, images_zip=images_zip)
    assert not report.dry_run and report.cells == 4 and report.images == {"matched": 0, "uploaded": 2}
    imported = {i.file_name: i for i in cyto.images.list(target.pk)}
    assert len(imported) == 2
    assert sum(len(cyto.cells.get(i).cells) for i in imported.values()) == 4

    broken = json.loads(coco_file.read_text())
    broken["categories"][0]["name"] = "macrophage"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValidationError) as refused:
        cyto.imports.coco(target.pk, tmp_path / "broken.json")
    assert refused.value.errors and any(k.startswith("categories") for k in refused.value.errors)


def test_projects_queue_proposals_and_the_registry(
    cyto: Client, project: Any, annotated: list[Any], admin: Account
) -> None:
    from tests.factories import model_version_files
    from training.models import ModelKind

    projects = cyto.projects.list()
    assert [p.name for p in projects] == ["Thyroid FNA"] and projects[0].my_role == "admin"
    assert [c.name for c in cyto.projects.classes(project.pk)] == [c.name for c in projects[0].classes]
    assert cyto.me().username == "dr.head"

    queue = cyto.review.queue(project.pk, limit=2)
    assert queue.project == project.pk and queue.annotate.count >= 1
    assert len(queue.annotate.images) <= 2

    assert cyto.proposals.list(annotated[0]) == []
    assert cyto.proposals.reject(annotated[0], select_all=True) == 0

    version = model_version_files(project, ModelKind.CELLPOSE, {"cellpose.pth": b"x"})
    registry = cyto.models.list(project.pk)
    assert version.pk in {v.id for v in registry.versions}
    promoted = cyto.models.promote(version.pk, reason="looks right")
    assert promoted.status == "active"
    assert cyto.models.list(project.pk).presegmenter == version.pk
    rollback = cyto.models.rollback(project.pk, "cellpose")
    assert rollback.rolled_back == version.pk and rollback.active is None
    with pytest.raises(ConflictError):
        cyto.models.rollback(project.pk, "cellpose")
    assert cyto.models.get(version.pk).status != "active"


def _feature(points: list[list[float]], name: str | None) -> dict[str, Any]:
    properties: dict[str, Any] = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[*points, points[0]]]},
        "properties": properties,
    }


def test_import_geojson_into_an_image(cyto: Client, project: Any, tmp_path: Path) -> None:
    from cytoclient import GeoJsonImportReport

    image = cyto.images.upload(project.pk, image_folder(tmp_path / "g", 1)).images[0]
    collection = {
        "type": "FeatureCollection",
        "features": [
            _feature(square(5, 5), "Tumor"),
            _feature(square(30, 20), "Tumor"),
            _feature(square(0, 0, 40), "Tissue"),
        ],
    }
    class_map = {"Tumor": "thyroid cell", "Tissue": None}

    dry = cyto.imports.geojson(image, collection, class_map=class_map, dry_run=True)
    assert isinstance(dry, GeoJsonImportReport)
    assert dry.dry_run and dry.cells == 2 and dry.features == 3 and dry.revision == 0
    assert [s["feature"] for s in dry.skipped] == [2]

    path = tmp_path / "slide.geojson"
    path.write_text(json.dumps(collection))
    report = cyto.imports.geojson(image, path, class_map=class_map)  # the current revision is read first
    assert not report.dry_run and report.cells == 2 and report.revision == 1
    assert report.classes == {"thyroid cell": 2}
    assert len(cyto.cells.get(image).cells) == 2

    with pytest.raises(ConflictError) as stale:
        cyto.imports.geojson(image, collection["features"][:1], class_map=class_map, revision=0)
    assert stale.value.revision == 1 and stale.value.cells is not None and len(stale.value.cells) == 2

    replaced = cyto.imports.geojson(image, collection, class_map=class_map, mode="replace", revision=1)
    assert replaced.deleted == 2 and replaced.cells == 2 and replaced.revision == 2

    with pytest.raises(ValidationError) as refused:
        cyto.imports.geojson(image, {"type": "FeatureCollection", "features": [_feature(square(5, 5), "Macrophage")]})
    assert refused.value.field is not None and refused.value.field.startswith("features.0")


def test_proposals_list_accept_and_reject(cyto: Client, project: Any) -> None:
    from annotations.models import Cell, Layer
    from tests.factories import image_create
    from training.services.registry import model_version_baseline

    image = image_create(project, seed=9, width=200, height=100)
    version = model_version_baseline(project=project)
    class_id = project.classes.get(model_label=1).pk
    for i in range(3):
        Cell.objects.create(
            image=image, layer=Layer.PROPOSAL, cell_class_id=class_id, polygon=square(10 + 30 * i, 10),
            bbox_x=10 + 30 * i, bbox_y=10, bbox_w=10, bbox_h=10, area=100, score=0.8, model_version=version,
        )  # fmt: skip
    proposals = cyto.proposals.list(image.pk)
    assert len(proposals) == 3 and {p.layer for p in proposals} == {"proposal"}
    assert all(p.score == 0.8 and p.model_version == version.pk for p in proposals)

    accepted = cyto.proposals.accept(image.pk, revision=0, ids=[proposals[0].id])
    assert accepted.revision == 1 and len(accepted.cells) == 1
    assert accepted.accepted == [accepted.cells[0].id]  # the annotation cell the proposal became
    assert accepted.cells[0].provenance["proposal_id"] == proposals[0].id
    with pytest.raises(ConflictError) as stale:
        cyto.proposals.accept(image.pk, revision=0, ids=[proposals[1].id])
    assert stale.value.revision == 1
    assert cyto.proposals.reject(image.pk, ids=[proposals[1].id]) == 1
    with pytest.raises(TypeError, match="select_all"):
        cyto.proposals.reject(image.pk)
