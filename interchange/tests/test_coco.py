"""COCO conversion (cytoseg.coco), the shared data set writers (cytoseg.datasets) and the
export/import services (annotations.exports) below the API."""

from __future__ import annotations

import io
import json
import math
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from annotations.models import Cell, Image, Layer
from annotations.services.cells import cell_geometry
from core import streaming
from cytoseg import coco
from cytoseg.contours import polygon_rasterize
from cytoseg.datasets import (
    DatasetCase,
    cellpose_dataset_write,
    instance_label_map,
    nnunet_raw_dataset_files,
    nnunet_raw_dataset_write,
    semantic_label_map,
)
from cytoseg.geometry import polygon_clean
from interchange.models import ExportJob, ExportStatus
from interchange.services import archives, coco_import, jobs, selection
from interchange.services import coco as coco_export
from tests.factories import ProjectFactory, UserFactory, image_create, png_bytes


def blob(cx: float, cy: float, r: float, n: int = 16) -> list[list[float]]:
    return [
        [round(cx + r * math.cos(2 * math.pi * k / n), 3), round(cy + r * math.sin(2 * math.pi * k / n), 3)]
        for k in range(n)
    ]


# --- cytoseg.coco ----------------------------------------------------------------------


def test_area_is_pycocotools_area() -> None:
    rng = np.random.default_rng(1)
    polygons = [blob(*rng.uniform(20, 80, 2), rng.uniform(3, 15), n=int(rng.integers(3, 40))) for _ in range(300)]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 100, "height": 90}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": [coco.polygon_flatten(p)]}
            for i, p in enumerate(polygons)
        ],
    }
    gt.createIndex()
    expected = [float(mask_utils.area(gt.annToRLE(a))) for a in gt.dataset["annotations"]]
    assert [coco.segmentation_area(p, height=90, width=100) for p in polygons] == expected
    # The batched path (more than pycocotools' 255 at a time) gives the same.
    rles = coco.rles_from_flat([coco.polygon_flatten(p) for p in polygons], height=90, width=100)
    assert coco.rle_areas(rles) == expected
    assert coco.rle_areas([]) == [] and coco.rles_from_flat([], height=1, width=1) == []


@pytest.mark.parametrize("text", ["[[1.5, 2.0], [3.0, 4.25], [0, 1e-05]]", "[[1.5,2.0],[3.0,4.25],[0,1e-05]]"])
def test_polygon_text_flat(text: str) -> None:
    flat = coco.polygon_text_flat(text)
    assert flat == "1.5,2.0,3.0,4.25,0,1e-05"
    assert json.loads(f"[{flat}]") == [1.5, 2.0, 3.0, 4.25, 0, 1e-05]
    assert coco.flat_text_numbers(flat).tolist() == [1.5, 2.0, 3.0, 4.25, 0.0, 1e-05]


def test_rle_json() -> None:
    rle = coco.rles_from_flat([[1, 1, 8, 1, 8, 8]], height=10, width=12)[0]
    out = coco.rle_json(rle)
    assert out["size"] == [10, 12] and isinstance(out["counts"], str)
    assert json.loads(json.dumps(out)) == out


def test_polygon_segmentations() -> None:
    square = [[1.0, 1.0], [9.0, 1.0], [9.0, 9.0], [1.0, 9.0]]
    assert coco.segmentation_points([coco.polygon_flatten(square)], height=10, width=10).points == square
    # A bare flat list, as some tools write it.
    assert coco.segmentation_points(coco.polygon_flatten(square), height=10, width=10).points == square
    for bad, fragment in [
        ([], "empty"),
        ([[1, 1, 5, 1, 5, 5], [6, 6, 8, 6, 8, 8]], "2 polygons"),
        ([[1, 1, 5, 1, 5]], "odd number"),
        ([[1, 1, 5, 1]], "2 point(s)"),
        ([[1, 1, 5, "x", 5, 5]], "list of numbers"),
        ([[1, 1, 5, True, 5, 5]], "list of numbers"),
        ([[1, 1, 5, float("nan"), 5, 5]], "list of numbers"),
        ("polygon", "list of polygons or an RLE"),
    ]:
        with pytest.raises(coco.SegmentationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            coco.segmentation_points(bad, height=10, width=10)


def test_rle_becomes_the_exact_outer_contour() -> None:
    yy, xx = np.mgrid[0:60, 0:80]
    mask = (((xx - 40) / 20.0) ** 2 + ((yy - 30) / 12.0) ** 2 <= 1).astype(np.uint8)
    mask[28:32, 38:42] = 0  # a hole: filled
    rle = mask_utils.encode(np.asfortranarray(mask))
    result = coco.segmentation_points({"size": rle["size"], "counts": rle["counts"].decode()}, height=60, width=80)
    filled = mask.astype(bool)
    filled[28:32, 38:42] = True
    assert np.array_equal(polygon_rasterize(result.points, height=60, width=80), filled)
    assert result.warnings == []
    clean = polygon_clean(result.points, width=80, height=60, max_vertices=10_000)
    assert clean.points == result.points


def test_rle_errors() -> None:
    with pytest.raises(coco.SegmentationError, match="does not match the image"):
        coco.segmentation_points({"size": [5, 5], "counts": "0"}, height=6, width=5)
    with pytest.raises(coco.SegmentationError, match="size must be"):
        coco.segmentation_points({"size": "5x5", "counts": "0"}, height=5, width=5)
    with pytest.raises(coco.SegmentationError, match="counts must be"):
        coco.segmentation_points({"size": [5, 5], "counts": 3}, height=5, width=5)
    with pytest.raises(coco.SegmentationError, match="sum to"):
        coco.segmentation_points({"size": [5, 5], "counts": [3, 4]}, height=5, width=5)
    with pytest.raises(coco.SegmentationError, match="empty"):
        coco.segmentation_points({"size": [5, 5], "counts": [25]}, height=5, width=5)


# --- cytoseg.datasets ---------------------------------------------------------------------


def _case(case_id: str = "case_1", split: str = "train") -> DatasetCase:
    rgb = np.random.default_rng(0).integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    return DatasetCase(
        case_id=case_id,
        split=split,
        image=rgb,
        height=40,
        width=50,
        polygons=[[[5, 5], [30, 5], [30, 30], [5, 30]], [[20, 20], [45, 20], [45, 35], [20, 35]]],
        labels=[1, 2],
    )


def test_label_maps_paint_in_order() -> None:
    case = _case()
    semantic = semantic_label_map(polygons=case.polygons, labels=case.labels, height=40, width=50)
    assert semantic[10, 10] == 1 and semantic[25, 25] == 2 and semantic[33, 40] == 2 and semantic[0, 0] == 0
    instances = instance_label_map(polygons=case.polygons, height=40, width=50)
    assert instances[10, 10] == 1 and instances[25, 25] == 2 and instances.max() == 2
    # Exactly the platform's rasteriser, also for polygons that leave the crop box.
    edge = [[-0.0, 0.0], [50.0, 0.0], [50.0, 40.0]]
    assert np.array_equal(
        instance_label_map(polygons=[edge], height=40, width=50) == 1, polygon_rasterize(edge, height=40, width=50)
    )


def test_nnunet_and_cellpose_writers(tmp_path: Path) -> None:
    cases = [_case("case_1"), _case("case_2", "validation"), _case("case_3", "test")]
    names = [name for name, _ in nnunet_raw_dataset_files(dataset_id=7, dataset_name="Demo", cases=cases)]
    assert names == [
        "Dataset007_Demo/imagesTr/case_1_0000.png",
        "Dataset007_Demo/labelsTr/case_1.png",
        "Dataset007_Demo/imagesTr/case_2_0000.png",
        "Dataset007_Demo/labelsTr/case_2.png",
        "Dataset007_Demo/imagesTs/case_3_0000.png",
        "Dataset007_Demo/labelsTs/case_3.png",
        "Dataset007_Demo/dataset.json",
        "Dataset007_Demo/splits_final.json",
    ]
    folder = nnunet_raw_dataset_write(raw_root=tmp_path, dataset_id=7, dataset_name="Demo", cases=cases)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    label = cv2.imread(str(folder / "labelsTr" / "case_1.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
    image = cv2.imread(str(folder / "imagesTr" / "case_1_0000.png"))[:, :, ::-1]
    assert np.array_equal(image, cases[0].image)
    root = cellpose_dataset_write(root=tmp_path / "cellpose", cases=cases)
    masks = cv2.imread(str(root / "test" / "case_3_masks.png"), cv2.IMREAD_UNCHANGED)
    assert masks.dtype == np.uint16 and sorted(np.unique(masks).tolist()) == [0, 1, 2]
    assert (root / "validation" / "case_2.png").exists()
    with pytest.raises(ValueError, match="appears twice"):
        list(nnunet_raw_dataset_files(dataset_id=7, dataset_name="Demo", cases=[_case(), _case()]))
    with pytest.raises(ValueError, match="dataset name"):
        list(nnunet_raw_dataset_files(dataset_id=7, dataset_name="a b", cases=[]))
    with pytest.raises(ValueError, match="case id"):
        _case("bad/name")
    with pytest.raises(ValueError, match="split"):
        _case(split="holdout")


# --- services ------------------------------------------------------------------------------


def _bulk_cells(image: Image, count: int, cell_class: Any) -> None:
    rows = []
    for k in range(count):
        points = blob(10 + (k % 20) * 9, 10 + (k // 20 % 15) * 9, 4, n=40)
        polygon = polygon_clean(points, width=image.width, height=image.height, max_vertices=1000)
        rows.append(
            Cell(
                image=image,
                cell_class=cell_class,
                **cell_geometry(polygon),
            )
        )
    Cell.objects.bulk_create(rows, batch_size=500)


def _stream_peak(project: Any) -> tuple[int, int, int]:
    """(chunks, bytes, peak traced memory) of streaming the project's COCO export."""
    filters = selection.ExportFilters()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        chunks = size = 0
        for chunk in coco_export.coco_export_stream(project=project, filters=filters):
            chunks += 1
            size += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return chunks, size, peak


@pytest.mark.django_db
def test_streaming_memory_does_not_grow_with_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 32 * 1024)
    monkeypatch.setattr(selection, "CELL_BATCH", 1000)
    monkeypatch.setattr(selection, "CELL_CHUNK", 250)
    small, large = ProjectFactory(), ProjectFactory()
    for project, images in ((small, 2), (large, 10)):
        cell_class = project.classes.get(model_label=1)
        for seed in range(images):
            _bulk_cells(image_create(project, seed=seed, width=200, height=150), 600, cell_class)
    chunks_small, bytes_small, peak_small = _stream_peak(small)
    chunks_large, bytes_large, peak_large = _stream_peak(large)
    assert bytes_large > 4.5 * bytes_small and chunks_large > 4 * chunks_small > 40
    # Five times the cells, about the same memory (batches, not the whole export).
    assert peak_large < 1.5 * peak_small, (peak_small, peak_large)


@pytest.mark.django_db
def test_export_job_failure_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    project = ProjectFactory()
    job = ExportJob.objects.create(project=project, kind="coco", params=selection.ExportOptions(kind="coco").to_dict())

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(jobs, "export_stream", broken)
    result = jobs.export_job_run(job_id=job.pk)
    assert result.status == ExportStatus.FAILED and "disk full" in result.error and not result.file
    # A finished job is not run again (a duplicate delivery).
    assert jobs.export_job_run(job_id=job.pk).status == ExportStatus.FAILED


@pytest.mark.django_db
def test_export_options_round_trip_through_json() -> None:
    project = ProjectFactory()
    image = image_create(project)
    options, wants_async = selection.export_options_parse(
        project=project,
        kind="nnunet",
        params={"split": "train,test", "bethesda": "II", "image_ids": str(image.pk), "dataset_id": "12", "async": "1"},
    )
    assert wants_async
    assert selection.ExportOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options


@pytest.mark.django_db
def test_dry_run_with_uploaded_images_leaves_nothing(settings: Any) -> None:
    user = UserFactory()
    project = ProjectFactory(created_by=user)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("fields/a.png", png_bytes(60, 40, seed=1))
        zipped.writestr("__MACOSX/fields/._a.png", b"junk")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40, "split": "test", "bethesda": "III"}],
        "categories": [{"id": 1, "name": "thyroid cell"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[5, 5, 20, 5, 20, 20, 5, 20]]},
        ],
    }

    def upload(raw: bytes, name: str) -> Any:
        handle = io.BytesIO(raw)
        handle.name = name  # type: ignore[attr-defined]
        handle.size = len(raw)  # type: ignore[attr-defined]
        return handle

    result = coco_import.coco_import(
        project=project,
        user=user,
        coco_file=upload(json.dumps(data).encode(), "coco.json"),
        images_zip=upload(archive.getvalue(), "images.zip"),
        dry_run=True,
    )
    assert result.dry_run and result.cells == 1 and result.images_uploaded == 1
    assert result.per_image[0]["image_id"] is None and result.created_images == []
    assert not project.images.exists() and not Cell.objects.exists()
    assert not [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()]
    result = coco_import.coco_import(
        project=project,
        user=user,
        coco_file=upload(json.dumps(data).encode(), "coco.json"),
        images_zip=upload(archive.getvalue(), "images.zip"),
    )
    image = project.images.get()
    assert (image.split, image.bethesda, image.file_name) == ("test", "III", "a.png")
    assert result.per_image[0]["image_id"] == image.pk
    assert Cell.objects.get().layer == Layer.ANNOTATION


def test_csv_numbers_is_float_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.uniform(0, 5000, 3000),  # 15-17 significant digits: the general path
            np.round(rng.uniform(0, 5000, 3000), 2),
            np.round(rng.uniform(0, 5000, 300)),
            rng.uniform(0, 1e-3, 100),
            [0.0, -0.0, 0.1, 0.3, 5e-324, 1e-05, 123456789012345.0, 1234567890123456.0, 1e22, 1e23],
        ]
    )
    texts = [repr(float(v)) for v in values] + [str(int(v)) for v in values[:50]]
    texts += ["-12.5", "007.250", "10", "-0", "1e3", "1E-2", "+5", "-0.0000001", "0.1234567890123"]
    expected = np.array([float(t) for t in texts])
    for chunk in (texts, [t for t in texts if "e" not in t.lower() and "+" not in t]):
        got = coco.csv_numbers(",".join(chunk))
        want = np.array([float(t) for t in chunk])
        assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert np.array_equal(coco.csv_numbers(",".join(texts)).view(np.int64), expected.view(np.int64))
    parts = coco.flats_numbers(["1.5,2", "3,4.25,5,6", "7"])
    assert [p.tolist() for p in parts] == [[1.5, 2.0], [3.0, 4.25, 5.0, 6.0], [7.0]]
    assert coco.flats_numbers([]) == []
    with pytest.raises(ValueError):
        coco.csv_numbers("1,,2")
    with pytest.raises(ValueError):
        coco.csv_numbers("1,2-3")


@pytest.mark.django_db
def test_images_added_during_a_stream_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 1)  # yield as soon as anything is written
    project = ProjectFactory()
    cell_class = project.classes.get(model_label=1)
    _bulk_cells(image_create(project, seed=1, width=200, height=150), 5, cell_class)
    stream = archives.coco_zip_stream(project=project, filters=selection.ExportFilters())
    first = next(stream)
    late = image_create(project, seed=2, width=200, height=150)
    _bulk_cells(late, 5, cell_class)
    archive = zipfile.ZipFile(io.BytesIO(first + b"".join(stream)))
    data = json.loads(archive.read("annotations.json"))
    assert [i["id"] for i in data["images"]] != [] and late.pk not in {i["id"] for i in data["images"]}
    assert {a["image_id"] for a in data["annotations"]} == {i["id"] for i in data["images"]}
    assert sorted(archive.namelist()) == sorted(
        ["annotations.json", *(f"images/{i['file_name']}" for i in data["images"])]
    )


@pytest.mark.django_db
def test_a_malformed_stored_polygon_is_skipped_and_named_not_fatal() -> None:
    """A row written before the API refused booleans (``[[true, false], ...]``) used to make
    every COCO export of its project fail: now it is left out, named, and findable."""
    from django.core.management import call_command

    project = ProjectFactory()
    image = image_create(project, width=120, height=100)
    cell_class = project.classes.get(model_label=1)
    _bulk_cells(image, 3, cell_class)
    good = list(Cell.objects.filter(image=image).values_list("pk", flat=True))
    bad = Cell.objects.create(
        image=image,
        cell_class=cell_class,
        polygon=[[True, False], [50, 50], [90, 1]],
        bbox_x=0,
        bbox_y=0,
        bbox_w=90,
        bbox_h=50,
        area=10.0,
    )
    body = json.loads(b"".join(coco_export.coco_export_stream(project=project, filters=selection.ExportFilters())))
    assert sorted(a["id"] for a in body["annotations"]) == sorted(good)
    assert body["skipped_cells"] == [bad.pk]
    # the other exports read the same rows: left out there too
    zipped = b"".join(archives.geojson_zip_stream(project=project, filters=selection.ExportFilters()))
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        (name,) = archive.namelist()
        assert len(json.loads(archive.read(name))["features"]) == 3
    out = io.StringIO()
    call_command("cells_check", stdout=out)
    assert f"cell {bad.pk} (project {project.pk}" in out.getvalue() and "1 malformed cell(s)" in out.getvalue()
    # a clean project's export has no such key
    Cell.objects.filter(pk=bad.pk).delete()
    body = json.loads(b"".join(coco_export.coco_export_stream(project=project, filters=selection.ExportFilters())))
    assert "skipped_cells" not in body


def test_flat_polygon_check() -> None:
    assert coco.flat_is_polygon("1,2,3.5,4,5e1,-6")
    for bad in ("true,false,50,50,90,1", "1,2,3,4,5", "1,2,3,4", '1,2,3,4,"a",6', "1,2,3,4,NaN,6", ""):
        assert not coco.flat_is_polygon(bad), bad
