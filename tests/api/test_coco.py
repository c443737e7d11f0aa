"""COCO export/import over the API, and the zip, GeoJSON, nnU-Net and Cellpose exports.

One file over ~600 lines because the round trip (export, COCOeval, import) and each export's
filters share one set of fixtures; the services below the API are tested in interchange/tests/."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from django.http import StreamingHttpResponse
from django.utils import timezone
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rest_framework.test import APIClient

from annotations.models import AnnotationRevision, Cell, CellSource, Image, Layer, Role
from annotations.services import cells as cell_services
from annotations.services import projects
from annotations.services.cells import cell_geometry
from core import streaming
from cytoseg.contours import polygon_rasterize
from cytoseg.datasets import semantic_label_map
from cytoseg.geometry import polygon_clean
from interchange.models import ExportJob
from interchange.services import jobs, selection
from tests.api.conftest import client_for
from tests.factories import PASSWORD, ProjectFactory, UserFactory, image_create, member, png_bytes
from training.models import ModelVersion

pytestmark = pytest.mark.django_db

WIDTH, HEIGHT = 160, 120


def blob(cx: float, cy: float, r: float, n: int = 14, wobble: float = 0.0) -> list[list[float]]:
    """A star-free, roughly round polygon (convex when wobble is 0)."""
    points = []
    for k in range(n):
        angle = 2 * math.pi * k / n
        radius = r * (1 + wobble * math.sin(3 * angle))
        points.append([round(cx + radius * math.cos(angle), 2), round(cy + radius * math.sin(angle), 2)])
    return points


def add_cell(
    image: Image, cell_class: Any, points: list[list[float]], layer: str = Layer.ANNOTATION, **extra: Any
) -> Cell:
    polygon = polygon_clean(points, width=image.width, height=image.height, max_vertices=10_000)
    return Cell.objects.create(
        image=image,
        layer=layer,
        cell_class=cell_class,
        **cell_geometry(polygon),
        **extra,
    )


@pytest.fixture
def classes(project: Any) -> tuple[Any, Any]:
    return project.classes.get(model_label=1), project.classes.get(model_label=2)


@pytest.fixture
def images(project: Any, admin_user: Any, classes: tuple[Any, Any]) -> list[Image]:
    """Three annotated images (train/II, test/IV, validation/II) with cells of both classes."""
    cell, erythrocyte = classes
    made = []
    for seed, (split, bethesda) in enumerate((("train", "II"), ("test", "IV"), ("validation", "II"))):
        image = image_create(project, seed=seed, width=WIDTH, height=HEIGHT, split=split, bethesda=bethesda)
        cells = [
            {"class_id": cell.pk, "polygon": blob(30 + 10 * seed, 30, 12, wobble=0.1)},
            {"class_id": cell.pk, "polygon": blob(90, 40 + 5 * seed, 15, n=20)},
            {"class_id": erythrocyte.pk, "polygon": blob(60, 90, 9, n=10)},
        ]
        cell_services.cells_replace(image=image, user=admin_user, base_revision=0, cells=cells)
        made.append(image)
    return made


def body_of(response: Any) -> bytes:
    if isinstance(response, StreamingHttpResponse):
        return b"".join(response.streaming_content)  # type: ignore[arg-type]
    return bytes(response.content)


def export_json(client: APIClient, project: Any, query: str = "") -> dict[str, Any]:
    response = client.get(f"/api/v1/projects/{project.pk}/export/coco{query}")
    assert response.status_code == 200, body_of(response)[:500]
    return json.loads(body_of(response))


def load_coco(data: dict[str, Any], tmp_path: Path) -> COCO:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def self_eval_ap(coco_gt: COCO) -> float:
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": coco_gt.annToRLE(a), "score": 1.0}
        for a in coco_gt.dataset["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def cells_by_file(project: Any) -> dict[str, list[tuple[str, list[list[float]]]]]:
    out: dict[str, list[tuple[str, list[list[float]]]]] = {}
    for image in project.images.all():
        rows = Cell.objects.filter(image=image, layer=Layer.ANNOTATION).select_related("cell_class")
        out[image.file_name] = sorted((c.cell_class.name, c.polygon) for c in rows)
    return out


def import_coco(
    client: APIClient, project: Any, data: bytes | dict[str, Any], images_zip: bytes | None = None, **form: Any
) -> Any:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    payload: dict[str, Any] = {"file": io.BytesIO(raw), **form}
    payload["file"].name = "coco.json"
    if images_zip is not None:
        payload["images"] = io.BytesIO(images_zip)
        payload["images"].name = "images.zip"
    return client.post(f"/api/v1/projects/{project.pk}/import/coco", payload, format="multipart")


# --- round trip ----------------------------------------------------------------------------


def test_round_trip_export_cocoeval_import(project: Any, images: list[Image], admin_user: Any, tmp_path: Path) -> None:
    client = client_for(admin_user)
    data = export_json(client, project)
    coco_gt = load_coco(data, tmp_path)
    assert sorted(coco_gt.getImgIds()) == sorted(i.pk for i in images)
    assert len(coco_gt.getAnnIds()) == 9
    assert self_eval_ap(coco_gt) == pytest.approx(1.0)

    # The zip carries the images; an empty project gets them and the same cells.
    archive = zipfile.ZipFile(io.BytesIO(body_of(client.get(f"/api/v1/projects/{project.pk}/export/coco-zip"))))
    target = ProjectFactory(created_by=admin_user)
    response = import_coco(client, target, archive.read("annotations.json"), body_of_zip(archive))
    assert response.status_code == 201, response.json()
    summary = response.json()
    assert summary["cells"] == 9 and summary["images"] == {"matched": 0, "uploaded": 3}
    assert cells_by_file(target) == cells_by_file(project)
    imported = Cell.objects.filter(image__project=target).first()
    assert imported is not None and imported.source == CellSource.IMPORT and imported.author == admin_user
    assert imported.provenance["import"] == "coco"
    for image in target.images.all():
        assert image.revision == 1
        assert AnnotationRevision.objects.get(image=image, revision=1).action == "import"
    # Same metadata on the other side.
    assert sorted(target.images.values_list("file_name", "split", "bethesda")) == sorted(
        project.images.values_list("file_name", "split", "bethesda")
    )
    # Exporting the copy gives the same annotations (ids differ: they are the new project's).
    again = export_json(client, target)
    assert self_eval_ap(load_coco(again, tmp_path)) == pytest.approx(1.0)
    areas = sorted(a["area"] for a in data["annotations"])
    assert sorted(a["area"] for a in again["annotations"]) == areas


def body_of_zip(archive: zipfile.ZipFile) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as copy:
        for info in archive.infolist():
            copy.writestr(info.filename, archive.read(info))
    return buffer.getvalue()


def test_export_content_and_stable_ids(
    project: Any, images: list[Image], admin_user: Any, classes: tuple[Any, Any], tmp_path: Path
) -> None:
    client = client_for(admin_user)
    data = export_json(client, project)
    assert set(data) == {"info", "licenses", "categories", "images", "annotations"}
    assert data["info"]["project_id"] == project.pk and data["info"]["layer"] == "annotation"
    assert {c["id"]: c["name"] for c in data["categories"]} == {c.pk: c.name for c in classes}
    assert {c["model_label"] for c in data["categories"]} == {1, 2}
    first = next(i for i in data["images"] if i["id"] == images[0].pk)
    assert first["file_name"] == images[0].file_name and (first["width"], first["height"]) == (WIDTH, HEIGHT)
    assert first["split"] == "train" and first["bethesda"] == "II" and first["stain"] == "Diff-Quik"
    cells = {c.pk: c for c in Cell.objects.filter(image__project=project)}
    coco_gt = load_coco(data, tmp_path)
    for ann in data["annotations"]:
        cell = cells[ann["id"]]
        assert ann["image_id"] == cell.image_id and ann["category_id"] == cell.cell_class_id
        assert ann["segmentation"] == [[v for p in cell.polygon for v in p]]
        assert ann["bbox"] == [cell.bbox_x, cell.bbox_y, cell.bbox_w, cell.bbox_h]
        assert ann["iscrowd"] == 0 and ann["source"] == "manual"
        assert ann["score"] is None and ann["model_version"] is None and ann["verified_by"] is None
        # The area is pycocotools' own (rasterised) area of the segmentation.
        assert ann["area"] == float(mask_utils.area(coco_gt.annToRLE(ann)))
    assert [a["id"] for a in data["annotations"]] == sorted(cells)
    # Stable across exports.
    again = export_json(client, project)
    assert again["annotations"] == data["annotations"] and again["images"] == data["images"]


# --- filters -------------------------------------------------------------------------------


def test_filters(project: Any, images: list[Image], admin_user: Any, classes: tuple[Any, Any]) -> None:
    client = client_for(admin_user)
    cell_class, erythrocyte = classes
    version = ModelVersion.objects.create(project=project, kind="watershed", number=1)
    other = ModelVersion.objects.create(project=project, kind="watershed", number=2)
    proposal = add_cell(images[0], cell_class, blob(40, 40, 10), Layer.PROPOSAL, score=0.75, model_version=version)
    add_cell(images[0], cell_class, blob(40, 40, 11), Layer.PROPOSAL, score=0.5, model_version=other)
    verified = add_cell(
        images[1],
        erythrocyte,
        blob(50, 50, 8),
        Layer.VERIFIED,
        source=CellSource.CONSENSUS,
        provenance={"verified_by": [admin_user.pk]},
    )

    data = export_json(client, project, f"?layer=proposal&model_version={version.pk}")
    assert [a["id"] for a in data["annotations"]] == [proposal.pk]
    ann = data["annotations"][0]
    assert ann["score"] == 0.75 and ann["model_version"] == version.pk and ann["state"] == "open"
    consensus = add_cell(
        images[2],
        cell_class,
        blob(50, 50, 8),
        Layer.VERIFIED,
        source=CellSource.CONSENSUS,
        provenance={
            "accepted_by": [7, 3],
            "edited_by": [5],
            "added_by": [],
            "rejected_by": [9],
            "adjudicated_by": 2,
            "fusion": "adjudicated",
        },
    )
    data = export_json(client, project, "?layer=verified")
    assert [(a["id"], a["verified_by"], a["source"]) for a in data["annotations"]] == [
        (verified.pk, [admin_user.pk], "consensus"),
        (consensus.pk, [2, 3, 5, 7], "consensus"),
    ]
    # Accepting a proposal is not verifying it.
    accepted = add_cell(images[0], cell_class, blob(40, 40, 10), provenance={"proposal_id": 1, "accepted_by": 4})
    assert next(a for a in export_json(client, project)["annotations"] if a["id"] == accepted.pk)["verified_by"] is None
    data = export_json(client, project, "?split=train")
    assert [i["id"] for i in data["images"]] == [images[0].pk]
    assert {a["image_id"] for a in data["annotations"]} == {images[0].pk}
    data = export_json(client, project, "?split=train,test&bethesda=II")
    assert [i["id"] for i in data["images"]] == [images[0].pk]
    data = export_json(client, project, "?bethesda=IV")
    assert [i["id"] for i in data["images"]] == [images[1].pk]
    data = export_json(client, project, f"?class_ids={erythrocyte.pk}")
    assert [c["id"] for c in data["categories"]] == [erythrocyte.pk]
    assert len(data["annotations"]) == 3 and {a["category_id"] for a in data["annotations"]} == {erythrocyte.pk}
    data = export_json(client, project, f"?image_ids={images[2].pk},{images[0].pk}")
    assert [i["id"] for i in data["images"]] == [images[0].pk, images[2].pk]
    assert len(data["annotations"]) == 7  # with the accepted proposal above


def test_coco_lists_only_images_with_ground_truth_unless_asked(
    project: Any, images: list[Image], admin_user: Any, classes: tuple[Any, Any]
) -> None:
    """COCOeval scores a listed image without annotations as an empty ground truth: the verified
    layer lists the images with verified cells and those verified with none, not the others."""
    from annotations.models import ImageStatus

    client = client_for(admin_user)
    cell_class, _ = classes
    add_cell(images[0], cell_class, blob(40, 40, 10), Layer.VERIFIED, source=CellSource.CONSENSUS)
    Image.objects.filter(pk=images[1].pk).update(status=ImageStatus.VERIFIED)  # verified: no cells
    everything = sorted(i.pk for i in images)
    assert [i["id"] for i in export_json(client, project, "?layer=verified")["images"]] == [images[0].pk, images[1].pk]
    listed = export_json(client, project, "?layer=verified&include_empty=true")["images"]
    assert [i["id"] for i in listed] == everything
    # the zip holds the files of the images it lists
    response = client.get(f"/api/v1/projects/{project.pk}/export/coco-zip?layer=verified")
    assert response.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(body_of(response))).namelist()
    assert len([n for n in names if n.startswith("images/")]) == 2
    # other layers: only images with selected cells
    assert [i["id"] for i in export_json(client, project, "?layer=annotation")["images"]] == sorted(
        {c.image_id for c in Cell.objects.filter(image__project=project, layer=Layer.ANNOTATION)}
    )


@pytest.mark.parametrize(
    "query,field",
    [
        ("?layer=drafts", "layer"),
        ("?layer=proposal", "model_version"),
        ("?model_version=1", "model_version"),
        ("?layer=proposal&model_version=999999", "model_version"),
        ("?split=training", "split"),
        ("?bethesda=VII", "bethesda"),
        ("?class_ids=abc", "class_ids"),
        ("?class_ids=999999", "class_ids"),
        ("?image_ids=1,x", "image_ids"),
        ("?image_ids=999999", "image_ids"),
        ("?segmentation=mask", "segmentation"),
        ("?gzip=maybe", "gzip"),
        ("?splt=train", "splt"),
    ],
)
def test_invalid_filters_name_the_field(project: Any, admin_user: Any, query: str, field: str) -> None:
    response = client_for(admin_user).get(f"/api/v1/projects/{project.pk}/export/coco{query}")
    assert response.status_code == 400
    assert field in response.json()["errors"], response.json()


def test_image_of_another_project_is_not_exportable(project: Any, admin_user: Any) -> None:
    other = ProjectFactory(created_by=admin_user)
    foreign = image_create(other, seed=9)
    response = client_for(admin_user).get(f"/api/v1/projects/{project.pk}/export/coco?image_ids={foreign.pk}")
    assert response.status_code == 400 and str(foreign.pk) in response.json()["errors"]["image_ids"]


# --- permissions ---------------------------------------------------------------------------


def test_permissions(project: Any, images: list[Image], annotator: Any, outsider: Any) -> None:
    base = f"/api/v1/projects/{project.pk}"
    assert client_for(annotator).get(f"{base}/export/coco").status_code == 200
    for path in ("export/coco", "export/coco-zip", "export/geojson", "export/nnunet", "export/cellpose", "export/jobs"):
        assert client_for(outsider).get(f"{base}/{path}").status_code == 404, path
    assert import_coco(client_for(outsider), project, {}).status_code == 404
    assert import_coco(client_for(annotator), project, {}).status_code == 403
    assert APIClient().get(f"{base}/export/coco").status_code in (401, 403)


def test_project_scoped_tokens(project: Any, images: list[Image]) -> None:
    user = UserFactory()
    other = ProjectFactory(created_by=user)
    member(project, Role.ANNOTATOR, username="both")
    both = type(user).objects.get(username="both")
    projects.membership_set(project=other, user=both, role=Role.ANNOTATOR)
    session = APIClient()
    assert (
        session.post("/api/v1/auth/login", {"username": "both", "password": PASSWORD}, format="json").status_code == 200
    )

    def token(project_id: int) -> str:
        response = session.post("/api/v1/auth/tokens", {"name": "script", "project": project_id}, format="json")
        assert response.status_code == 201, response.content
        return str(response.json()["token"])

    url = f"/api/v1/projects/{project.pk}/export/coco"
    scoped_elsewhere = APIClient(HTTP_AUTHORIZATION=f"Bearer {token(other.pk)}")
    assert scoped_elsewhere.get(url).status_code == 404
    scoped_here = APIClient(HTTP_AUTHORIZATION=f"Bearer {token(project.pk)}")
    response = scoped_here.get(url)
    assert response.status_code == 200 and len(json.loads(body_of(response))["annotations"]) == 9
    # The session reaches it too.
    assert session.get(url).status_code == 200


# --- RLE, gzip, streaming ------------------------------------------------------------------


def test_rle_export_and_import(project: Any, images: list[Image], admin_user: Any, tmp_path: Path) -> None:
    client = client_for(admin_user)
    data = export_json(client, project, "?segmentation=rle")
    coco_gt = load_coco(data, tmp_path)
    for ann in data["annotations"]:
        rle = ann["segmentation"]
        assert rle["size"] == [HEIGHT, WIDTH] and isinstance(rle["counts"], str)
        assert ann["area"] == float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))
    assert self_eval_ap(coco_gt) == pytest.approx(1.0)

    # Into an empty project: the outer contour of each mask, which rasterises back to the mask.
    archive = zipfile.ZipFile(io.BytesIO(body_of(client.get(f"/api/v1/projects/{project.pk}/export/coco-zip"))))
    target = ProjectFactory(created_by=admin_user)
    response = import_coco(client, target, data, body_of_zip(archive))
    assert response.status_code == 201, response.json()
    assert response.json()["cells"] == 9
    by_name = {i["id"]: i["file_name"] for i in data["images"]}
    expected: dict[str, list[bytes]] = {}
    for ann in data["annotations"]:
        mask = mask_utils.decode(
            {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        )
        expected.setdefault(by_name[ann["image_id"]], []).append(mask.astype(bool).tobytes())
    for image in target.images.all():
        got = [
            polygon_rasterize(c.polygon, height=HEIGHT, width=WIDTH).tobytes() for c in Cell.objects.filter(image=image)
        ]
        assert sorted(got) == sorted(expected[image.file_name])


def test_gzip(project: Any, images: list[Image], admin_user: Any) -> None:
    client = client_for(admin_user)
    url = f"/api/v1/projects/{project.pk}/export/coco"
    plain = json.loads(body_of(client.get(url)))
    as_file = client.get(url + "?gzip=1")
    assert as_file["Content-Type"] == "application/gzip"
    assert as_file["Content-Disposition"].endswith('.json.gz"')
    assert json.loads(gzip.decompress(body_of(as_file)))["annotations"] == plain["annotations"]
    encoded = client.get(url, HTTP_ACCEPT_ENCODING="gzip, deflate")
    assert encoded["Content-Encoding"] == "gzip" and encoded["Content-Type"] == "application/json"
    assert json.loads(gzip.decompress(body_of(encoded)))["annotations"] == plain["annotations"]
    assert not client.get(url, HTTP_ACCEPT_ENCODING="gzip;q=0").has_header("Content-Encoding")


def test_export_streams_in_many_chunks(
    project: Any, admin_user: Any, classes: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(selection, "CELL_BATCH", 300)
    monkeypatch.setattr(selection, "CELL_CHUNK", 100)
    cell_class = classes[0]
    rows = []
    for seed in range(3):
        image = image_create(project, seed=seed, width=WIDTH, height=HEIGHT)
        for k in range(400):
            polygon = polygon_clean(
                blob(20 + (k % 12) * 10, 20 + (k // 12 % 8) * 10, 4), width=WIDTH, height=HEIGHT, max_vertices=100
            )
            rows.append(
                Cell(
                    image=image,
                    cell_class=cell_class,
                    polygon=polygon.points,
                    bbox_x=polygon.bbox[0],
                    bbox_y=polygon.bbox[1],
                    bbox_w=polygon.bbox[2],
                    bbox_h=polygon.bbox[3],
                    area=polygon.area,
                )
            )
    Cell.objects.bulk_create(rows)
    response = client_for(admin_user).get(f"/api/v1/projects/{project.pk}/export/coco")
    assert isinstance(response, StreamingHttpResponse)
    chunks = list(response.streaming_content)
    assert len(chunks) > 50 and max(len(c) for c in chunks) < 4096 + 2000
    data = json.loads(b"".join(chunks))  # type: ignore[arg-type]
    assert len(data["annotations"]) == 1200 and len({a["id"] for a in data["annotations"]}) == 1200


# --- background job ------------------------------------------------------------------------


@pytest.fixture
def eager_celery() -> Any:
    from config.celery import app

    old = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = old


def test_large_export_runs_as_a_job(
    project: Any,
    images: list[Image],
    admin_user: Any,
    annotator: Any,
    outsider: Any,
    settings: Any,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.EXPORT_ASYNC_CELL_THRESHOLD = 5
    client = client_for(annotator)
    base = f"/api/v1/projects/{project.pk}/export"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.get(f"{base}/coco?segmentation=rle")
    assert response.status_code == 202, response.content
    job = response.json()
    assert response["Location"] == job["url"] == f"{base}/jobs/{job['id']}"
    status = client.get(job["url"]).json()
    assert status["status"] == "done" and status["progress"] == 1.0 and status["items_total"] == 9
    assert status["download_url"] == f"{base}/jobs/{job['id']}/download"
    stored = ExportJob.objects.get(pk=job["id"])
    assert stored.file.startswith(f"exports/{project.pk}/") and stored.expires_at is not None
    download = client.get(status["download_url"])
    assert download.status_code == 200
    data = json.loads(b"".join(download.streaming_content))  # type: ignore[arg-type]
    assert len(data["annotations"]) == 9 and isinstance(data["annotations"][0]["segmentation"], dict)
    assert [j["id"] for j in client.get(f"{base}/jobs").json()] == [job["id"]]
    # Members only.
    assert client_for(outsider).get(status["download_url"]).status_code == 404
    assert client_for(outsider).get(job["url"]).status_code == 404
    # Expired: 410, and the status says so.
    ExportJob.objects.filter(pk=job["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(status["download_url"]).status_code == 410
    expired = client.get(job["url"]).json()
    assert expired["status"] == "expired" and expired["download_url"] is None
    assert jobs.export_jobs_prune() == 1
    assert not (Path(settings.MEDIA_ROOT) / stored.file).exists()


def test_async_on_request_and_pending_job(project: Any, images: list[Image], admin_user: Any) -> None:
    client = client_for(admin_user)
    response = client.get(f"/api/v1/projects/{project.pk}/export/geojson?async=1")
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued" and job["download_url"] is None
    assert client.get(f"{job['url']}/download").status_code == 409
    # The job of another project is not reachable through this one.
    other = ProjectFactory(created_by=admin_user)
    assert client.get(f"/api/v1/projects/{other.pk}/export/jobs/{job['id']}").status_code == 404
    # The worker's side, called directly.
    finished = jobs.export_job_run(job_id=job["id"])
    assert finished.status == "done" and finished.file_name.endswith("-geojson.zip")
    assert zipfile.ZipFile(io.BytesIO(b"".join(client.get(f"{job['url']}/download").streaming_content)))  # type: ignore[arg-type]


# --- other formats -------------------------------------------------------------------------


def zip_of(client: APIClient, url: str) -> zipfile.ZipFile:
    response = client.get(url)
    assert response.status_code == 200, body_of(response)[:300]
    assert isinstance(response, StreamingHttpResponse) and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(body_of(response)))
    assert archive.testzip() is None
    return archive


def test_coco_zip(project: Any, images: list[Image], admin_user: Any) -> None:
    archive = zip_of(client_for(admin_user), f"/api/v1/projects/{project.pk}/export/coco-zip")
    names = sorted(archive.namelist())
    assert names == sorted(["annotations.json", *(f"images/{i.file_name}" for i in images)])
    data = json.loads(archive.read("annotations.json"))
    assert {i["file_name"] for i in data["images"]} == {i.file_name for i in images}
    for image in images:
        with image.original.open("rb") as handle:
            assert archive.read(f"images/{image.file_name}") == handle.read()


def test_geojson_for_qupath(project: Any, images: list[Image], admin_user: Any, classes: tuple[Any, Any]) -> None:
    version = ModelVersion.objects.create(project=project, kind="watershed", number=1)
    add_cell(images[0], classes[0], blob(40, 40, 10), Layer.PROPOSAL, score=0.9, model_version=version)
    client = client_for(admin_user)
    archive = zip_of(client, f"/api/v1/projects/{project.pk}/export/geojson")
    assert sorted(archive.namelist()) == sorted(f"{Path(i.file_name).stem}.geojson" for i in images)
    collection = json.loads(archive.read(f"{Path(images[0].file_name).stem}.geojson"))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 3
    colours = {c.name: [int(c.color[i : i + 2], 16) for i in (1, 3, 5)] for c in classes}
    stored = {tuple(map(tuple, c.polygon)) for c in Cell.objects.filter(image=images[0], layer=Layer.ANNOTATION)}
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and tuple(map(tuple, ring[:-1])) in stored
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        assert properties["classification"]["color"] == colours[properties["classification"]["name"]]
    proposals = zip_of(
        client, f"/api/v1/projects/{project.pk}/export/geojson?layer=proposal&model_version={version.pk}"
    )
    features = json.loads(proposals.read(f"{Path(images[0].file_name).stem}.geojson"))["features"]
    assert [f["properties"]["objectType"] for f in features] == ["detection"]
    forced = zip_of(client, f"/api/v1/projects/{project.pk}/export/geojson?object_type=detection")
    features = json.loads(forced.read(f"{Path(images[1].file_name).stem}.geojson"))["features"]
    assert {f["properties"]["objectType"] for f in features} == {"detection"}


def test_nnunet_dataset(project: Any, images: list[Image], admin_user: Any) -> None:
    empty = image_create(project, seed=7, width=WIDTH, height=HEIGHT, split="train")
    archive = zip_of(client_for(admin_user), f"/api/v1/projects/{project.pk}/export/nnunet?dataset_id=42")
    folder = f"Dataset042_{project.name.replace(' ', '_')}"
    case = {image.pk: f"case_{image.pk:06d}" for image in images}
    train, test, validation = images
    expected = {
        f"{folder}/dataset.json",
        f"{folder}/splits_final.json",
        f"{folder}/imagesTr/{case[train.pk]}_0000.png",
        f"{folder}/labelsTr/{case[train.pk]}.png",
        f"{folder}/imagesTr/{case[validation.pk]}_0000.png",
        f"{folder}/labelsTr/{case[validation.pk]}.png",
        f"{folder}/imagesTs/{case[test.pk]}_0000.png",
        f"{folder}/labelsTs/{case[test.pk]}.png",
    }
    assert set(archive.namelist()) == expected  # the image without cells is left out
    assert f"case_{empty.pk:06d}" not in " ".join(archive.namelist())
    dataset = json.loads(archive.read(f"{folder}/dataset.json"))
    assert dataset["labels"] == {"background": 0, "cell": 1, "erythrocyte": 2}
    assert dataset["numTraining"] == 2 and dataset["file_ending"] == ".png"
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert json.loads(archive.read(f"{folder}/splits_final.json")) == [
        {"train": [case[train.pk]], "val": [case[validation.pk]]}
    ]
    raw = archive.read(f"{folder}/labelsTr/{case[train.pk]}.png")
    labels = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint8 and labels.shape == (HEIGHT, WIDTH) and set(np.unique(labels)) == {0, 1, 2}
    cells = list(Cell.objects.filter(image=train, layer=Layer.ANNOTATION).select_related("cell_class"))
    expected_map = semantic_label_map(
        polygons=[c.polygon for c in cells],
        labels=[c.cell_class.model_label for c in cells],
        height=HEIGHT,
        width=WIDTH,
    )
    assert np.array_equal(labels, expected_map)
    picture = cv2.imdecode(np.frombuffer(archive.read(f"{folder}/imagesTr/{case[train.pk]}_0000.png"), np.uint8), 1)
    assert picture.shape == (HEIGHT, WIDTH, 3)
    with_empty = zip_of(client_for(admin_user), f"/api/v1/projects/{project.pk}/export/nnunet?include_empty=1")
    assert any(f"case_{empty.pk:06d}" in name for name in with_empty.namelist())


def test_cellpose_dataset(project: Any, images: list[Image], admin_user: Any) -> None:
    archive = zip_of(client_for(admin_user), f"/api/v1/projects/{project.pk}/export/cellpose")
    train, test, validation = images
    assert set(archive.namelist()) == {
        f"{split}/case_{image.pk:06d}{suffix}"
        for split, image in (("train", train), ("test", test), ("validation", validation))
        for suffix in (".png", "_masks.png")
    }
    raw = archive.read(f"train/case_{train.pk:06d}_masks.png")
    masks = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert masks.dtype == np.uint16 and masks.shape == (HEIGHT, WIDTH)
    assert sorted(np.unique(masks).tolist()) == [0, 1, 2, 3]  # three cells, numbered in id order
    first = Cell.objects.filter(image=train, layer=Layer.ANNOTATION).order_by("id").first()
    assert first is not None
    assert np.array_equal(masks == 1, polygon_rasterize(first.polygon, height=HEIGHT, width=WIDTH))


# --- import --------------------------------------------------------------------------------


def coco_for(image: Image, annotations: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": image.file_name, "width": image.width, "height": image.height}],
        "categories": [{"id": 7, "name": "thyroid cell"}, {"id": 8, "name": "erythrocyte"}],
        "annotations": annotations,
        **extra,
    }


def ann(ann_id: int, points: list[list[float]], category_id: int = 7, image_id: int = 1) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": [[v for p in points for v in p]],
        "iscrowd": 0,
    }


@pytest.fixture
def image(project: Any) -> Image:
    return image_create(project, seed=3, width=WIDTH, height=HEIGHT)


def test_import_appends_to_the_annotation_layer(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    cell_class = project.classes.get(name="thyroid cell")
    cell_services.cells_replace(
        image=image, user=admin_user, base_revision=0, cells=[{"class_id": cell_class.pk, "polygon": blob(20, 20, 8)}]
    )
    data = coco_for(image, [ann(1, blob(60, 60, 10)), ann(2, blob(100, 60, 10), category_id=8)])
    dry = import_coco(client, project, data, dry_run="true")
    assert dry.status_code == 200 and dry.json()["dry_run"] is True and dry.json()["cells"] == 2
    assert Cell.objects.filter(image=image).count() == 1
    image.refresh_from_db()
    assert image.revision == 1

    response = import_coco(client, project, data)
    assert response.status_code == 201, response.json()
    assert response.json()["images"] == {"matched": 1, "uploaded": 0}
    assert response.json()["per_image"] == [
        {"coco_id": 1, "file_name": image.file_name, "image_id": image.pk, "action": "matched", "cells": 2}
    ]
    image.refresh_from_db()
    assert image.revision == 2 and Cell.objects.filter(image=image, layer=Layer.ANNOTATION).count() == 3
    revision = AnnotationRevision.objects.get(image=image, revision=2)
    assert revision.action == "import" and revision.summary == {"added": 2, "changed": 0, "deleted": 0}
    # The revision holds the two imported cells (history keeps per-write changes).
    assert sorted(c["source"] for c in revision.changes["upserted"]) == ["import", "import"]
    assert project.audit_events.filter(action="coco.import").exists()


def test_import_unknown_categories(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    data = coco_for(image, [ann(1, blob(60, 60, 10), category_id=9)])
    data["categories"].append({"id": 9, "name": "macrophage", "color": "#00ff00"})
    response = import_coco(client, project, data)
    assert response.status_code == 400
    assert "macrophage" in response.json()["errors"]["categories.2"]
    assert not project.classes.filter(name="macrophage").exists()
    # A dry run with create reports the class but leaves nothing behind.
    dry = import_coco(client, project, data, unknown_categories="create", dry_run="1")
    assert dry.status_code == 200 and dry.json()["categories_created"] == ["macrophage"]
    assert not project.classes.filter(name="macrophage").exists()
    response = import_coco(client, project, data, unknown_categories="create")
    assert response.status_code == 201 and response.json()["categories_created"] == ["macrophage"]
    created = project.classes.get(name="macrophage")
    assert created.color == "#00ff00" and Cell.objects.get(image=image).cell_class == created
    assert import_coco(client, project, data, unknown_categories="ignore").json()["errors"] == {
        "unknown_categories": "must be reject or create"
    }


def test_import_is_atomic(project: Any, image: Image, admin_user: Any, settings: Any) -> None:
    """One bad annotation: no cell, no revision, no image and no image file is stored."""
    client = client_for(admin_user)
    new_png = png_bytes(WIDTH, HEIGHT, seed=11)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("new.png", new_png)
    data = coco_for(image, [ann(1, blob(60, 60, 10)), ann(2, blob(60, 60, 10), image_id=2)])
    data["images"].append({"id": 2, "file_name": "new.png", "width": WIDTH, "height": HEIGHT})
    files_before = sorted(p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())
    # Valid: uploads the new image; check, then undo through a failing variant.
    bad = json.loads(json.dumps(data))
    bad["annotations"].append(ann(3, [[10, 10], [500, 10], [500, 50]], image_id=2))
    response = import_coco(client, project, bad, zipped.getvalue())
    assert response.status_code == 400
    message = response.json()["errors"]["annotations.2"]
    assert "annotation 3" in message and "'new.png'" in message and "outside the image" in message
    assert Cell.objects.count() == 0 and project.images.count() == 1
    # Image dimensions that do not match the file are found only after decoding it: still atomic.
    wrong_size = json.loads(json.dumps(data))
    wrong_size["images"][1].update(width=WIDTH + 10)
    response = import_coco(client, project, wrong_size, zipped.getvalue())
    assert response.status_code == 400 and "images.1" in response.json()["errors"], response.json()
    assert Cell.objects.count() == 0 and project.images.count() == 1
    assert sorted(p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()) == files_before
    image.refresh_from_db()
    assert image.revision == 0 and not AnnotationRevision.objects.exists()
    # The good file goes in whole.
    response = import_coco(client, project, data, zipped.getvalue())
    assert response.status_code == 201, response.json()
    assert response.json()["images"] == {"matched": 1, "uploaded": 1}
    assert project.images.count() == 2 and Cell.objects.count() == 2


def _errors(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["detail"]
    return dict(body["errors"])


def test_malformed_coco(project: Any, image: Image, admin_user: Any, settings: Any) -> None:
    client = client_for(admin_user)
    good = coco_for(image, [ann(1, blob(60, 60, 10))])

    def variant(**changes: Any) -> dict[str, Any]:
        data = json.loads(json.dumps(good))
        data.update(changes)
        return data

    assert "file" in _errors(import_coco(client, project, b"{not json"))
    assert "not UTF-8" in _errors(import_coco(client, project, b"\xff\xfe\x00"))["file"]
    assert "must be a JSON object" in _errors(import_coco(client, project, b"[1, 2]"))["file"]
    missing = variant()
    del missing["annotations"]
    assert _errors(import_coco(client, project, missing)) == {"annotations": "required key is missing"}
    assert _errors(import_coco(client, project, variant(images={"id": 1}))) == {"images": "must be a list"}
    wrong = variant(images=[{"id": "1", "file_name": image.file_name, "width": "wide", "height": HEIGHT}])
    message = _errors(import_coco(client, project, wrong))["images.0"]
    assert "id must be an integer" in message and "width and height" in message
    no_width = variant(images=[{"id": 1, "file_name": image.file_name, "height": HEIGHT}])
    assert "missing key(s) width" in _errors(import_coco(client, project, no_width))["images.0"]
    bad_ann = variant(annotations=[{"id": 1, "image_id": 1, "category_id": "7", "segmentation": []}])
    assert "category_id must be integer" in _errors(import_coco(client, project, bad_ann))["annotations.0"]
    no_seg = variant(annotations=[{"id": 5, "image_id": 1, "category_id": 7}])
    assert "annotation 5: missing key(s) segmentation" in _errors(import_coco(client, project, no_seg))["annotations.0"]
    two_points = variant(annotations=[ann(4, [[10, 10], [20, 20]])])
    message = _errors(import_coco(client, project, two_points))["annotations.0"]
    assert "annotation 4" in message and image.file_name in message and "at least 3" in message
    odd = variant(annotations=[{**ann(4, blob(60, 60, 10)), "segmentation": [[10, 10, 20, 20, 30]]}])
    assert "odd number" in _errors(import_coco(client, project, odd))["annotations.0"]
    bad_segmentation = variant(annotations=[{**ann(4, blob(60, 60, 10)), "segmentation": "circle"}])
    assert "list of polygons or an RLE" in _errors(import_coco(client, project, bad_segmentation))["annotations.0"]
    colliding = variant(annotations=[ann(1, blob(60, 60, 10)), ann(1, blob(30, 30, 10))])
    assert "collides" in _errors(import_coco(client, project, colliding))["annotations.1"]
    images_collide = variant(images=good["images"] * 2)
    assert "collides" in _errors(import_coco(client, project, images_collide))["images.1"]
    categories_collide = variant(categories=[{"id": 7, "name": "thyroid cell"}, {"id": 7, "name": "erythrocyte"}])
    assert "collides" in _errors(import_coco(client, project, categories_collide))["categories.1"]
    names_collide = variant(categories=[{"id": 7, "name": "thyroid cell"}, {"id": 8, "name": "thyroid cell"}])
    assert "also used" in _errors(import_coco(client, project, names_collide))["categories.1"]
    dangling = variant(annotations=[ann(1, blob(60, 60, 10), image_id=99)])
    assert "image_id 99" in _errors(import_coco(client, project, dangling))["annotations.0"]
    unknown_image = variant(images=[{"id": 1, "file_name": "elsewhere.png", "width": WIDTH, "height": HEIGHT}])
    assert "no image of that name" in _errors(import_coco(client, project, unknown_image))["images.0"]
    other_size = variant(images=[{"id": 1, "file_name": image.file_name, "width": 10, "height": 10}])
    assert "in the COCO file" in _errors(import_coco(client, project, other_size))["images.0"]
    assert "images" in _errors(import_coco(client, project, good, b"not a zip"))
    assert _errors(client.post(f"/api/v1/projects/{project.pk}/import/coco", {}, format="multipart"))["file"]
    assert "dry_run" in _errors(import_coco(client, project, good, dry_run="perhaps"))
    settings.COCO_IMPORT_MAX_BYTES = 100
    assert "exceeds the limit of 100 bytes" in _errors(import_coco(client, project, good))["file"]
    assert Cell.objects.count() == 0


def test_import_rle_and_crowd(project: Any, image: Image, admin_user: Any) -> None:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8, order="F")
    mask[20:40, 30:55] = 1
    mask[60:62, 100:102] = 1  # a second, smaller region: dropped with a warning
    rle = mask_utils.encode(mask)
    uncompressed = {"size": [HEIGHT, WIDTH], "counts": _uncompressed_counts(mask)}
    data = coco_for(
        image,
        [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            },
            {"id": 2, "image_id": 1, "category_id": 8, "segmentation": uncompressed},
            {**ann(3, blob(60, 60, 10)), "iscrowd": 1},
        ],
    )
    response = import_coco(client_for(admin_user), project, data)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["cells"] == 2 and body["skipped_crowd"] == 1
    assert any("2 separate regions" in w for w in body["warnings"])
    for cell in Cell.objects.filter(image=image):
        # The outer contour of the largest region, which rasterises back to exactly that region.
        assert np.array_equal(polygon_rasterize(cell.polygon, height=HEIGHT, width=WIDTH), _largest(mask))
    wrong_size = coco_for(
        image, [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": {"size": [5, 5], "counts": "0"}}]
    )
    assert (
        "does not match the image" in _errors(import_coco(client_for(admin_user), project, wrong_size))["annotations.0"]
    )


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def _largest(mask: np.ndarray) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
