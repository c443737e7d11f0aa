"""Exports of large images and whole slides (issue #14): COCO and GeoJSON in full-resolution
coordinates, streamed with bounded memory; nnU-Net and Cellpose as crops read at full
resolution with masks clipped from the cells, through the API, a job and its download."""

from __future__ import annotations

import io
import json
import tracemalloc
import uuid
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from annotations.models import Cell, Image, Region
from annotations.services.regions import region_create
from cytoseg.contours import mask_to_polygon, polygon_rasterize
from cytoseg.datasets import crop_grid, crop_polygons, instance_label_map, semantic_label_map
from cytoseg.regions import cells_inside, region_mask
from cytoseg.slide_synthetic import SyntheticSlide, slide_synthetic, slide_write
from interchange.services import archives, jobs, selection
from interchange.services import coco as coco_export
from tests.api.conftest import client_for
from tests.factories import annotation_cells_bulk_create, image_create, square

WIDTH, HEIGHT, CROP = 4096, 3072, 1024


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return slide_synthetic(width=WIDTH, height=HEIGHT, field_width=1024, field_height=768, distinct=2, seed=5)


@pytest.fixture(scope="module")
def truth(slide: SyntheticSlide) -> list[tuple[list[list[float]], int, Any]]:
    """(outline, label, instance) of every ground-truth instance, in the slide's pixels."""
    out = []
    for instance in slide.instances():
        polygon = mask_to_polygon(instance.mask, x0=instance.x0, y0=instance.y0)
        if polygon is not None and polygon.area >= 4:
            out.append(
                ([[float(x), float(y)] for x, y in list(polygon.exterior.coords)[:-1]], instance.label, instance)
            )
    return out


@pytest.fixture
def slide_image(
    slide: SyntheticSlide, truth: list[Any], project: Any, admin_user: Any, tmp_path: Path, settings: Any
) -> tuple[Image, list[int]]:
    """The slide uploaded (a lossless TIFF, 0.25 um/px; the tiled path) with the ground truth as
    its annotation layer (cell class by label). Returns the image and the cell ids in truth order."""
    settings.TILED_MIN_SIDE = 1024
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    settings.EXPORT_CROP_SIZE = CROP
    path = slide_write(slide, tmp_path / "slide.tif", kind="tiff", mpp=0.25)
    with path.open("rb") as handle, mock.patch("core.queue.task_send"):
        response = client_for(admin_user).post(
            f"/api/v1/projects/{project.pk}/images", {"files": [handle], "split": "train"}, format="multipart"
        )
    assert response.status_code == 201, response.content
    image = Image.objects.get(pk=response.json()[0]["id"])
    assert image.tiled and (image.width, image.height) == (WIDTH, HEIGHT)
    classes = {c.model_label: c.pk for c in project.classes.all()}
    ids: list[int] = []
    for label in (1, 2):
        polygons = [p for p, lab, _ in truth if lab == label]
        ids += annotation_cells_bulk_create(image=image, class_id=classes[label], polygons=polygons)
    order = [i for label in (1, 2) for i, (_, lab, _) in enumerate(truth) if lab == label]
    by_truth = [0] * len(truth)
    for cell_id, index in zip(ids, order, strict=True):
        by_truth[index] = cell_id
    return image, by_truth


def _coco(project: Any) -> dict[str, Any]:
    return json.loads(b"".join(coco_export.coco_export_stream(project=project, filters=selection.ExportFilters())))


@pytest.mark.django_db
def test_coco_and_geojson_of_a_slide_are_full_resolution_once_per_cell(
    slide_image: tuple[Image, list[int]], truth: list[Any], project: Any
) -> None:
    image, ids = slide_image
    document = _coco(project)
    [entry] = document["images"]
    # level 0 size and the scanner's resolution
    assert (entry["width"], entry["height"], entry["mpp_x"], entry["mpp_y"]) == (WIDTH, HEIGHT, 0.25, 0.25)
    annotations = document["annotations"]
    assert sorted(a["id"] for a in annotations) == sorted(ids)  # every cell exactly once
    by_id = {a["id"]: a for a in annotations}
    stored = dict(Cell.objects.filter(image=image).values_list("id", "polygon"))
    worst = 1.0
    for cell_id, (_, _, instance) in zip(ids, truth, strict=True):
        flat = by_id[cell_id]["segmentation"][0]
        points = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
        assert points.tolist() == stored[cell_id]  # the stored outline, unchanged
        # rasterised where the exported coordinates say: the instance at its place in the slide
        h, w = instance.mask.shape
        mask = polygon_rasterize(points - (instance.x0, instance.y0), height=h, width=w)
        union = np.logical_or(mask, instance.mask).sum()
        worst = min(worst, np.logical_and(mask, instance.mask).sum() / union)
    assert worst > 0.8, worst
    assert max(max(a["bbox"][0] + a["bbox"][2] for a in annotations), 0) > WIDTH - 200  # full-resolution range

    data = b"".join(archives.geojson_zip_stream(project=project, filters=selection.ExportFilters()))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        [name] = archive.namelist()
        collection = json.loads(archive.read(name))
    features = collection["features"]
    expected = {str(uuid.uuid5(uuid.NAMESPACE_URL, f"cytoplatform:cell:{i}")): i for i in ids}
    assert sorted(f["id"] for f in features) == sorted(expected)
    for feature in features:
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and ring[:-1] == stored[expected[feature["id"]]]


def _run_job(client: Any, project: Any, kind: str, query: str = "") -> zipfile.ZipFile:
    """Ask for an export through the API (a tiled image makes it a job), run the job as the
    worker would and download its file."""
    response = client.get(f"/api/v1/projects/{project.pk}/export/{kind}{query}")
    assert response.status_code == 202, response.content  # a slide is never exported in the request
    job = jobs.export_job_run(job_id=response.json()["id"])
    assert job.status == "done", job.error
    download = client.get(response.json()["url"] + "/download")
    assert download.status_code == 200
    return zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))


def _box_of(name: str) -> tuple[int, int, int, int]:
    stem = Path(name).stem.removesuffix("_0000").removesuffix("_masks")
    x0, y0 = int(stem.split("_x")[1].split("_y")[0]), int(stem.split("_y")[1])
    return x0, y0, min(x0 + CROP, WIDTH), min(y0 + CROP, HEIGHT)


def _png(archive: zipfile.ZipFile, name: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(archive.read(name), np.uint8), flags)


@pytest.mark.django_db
def test_nnunet_and_cellpose_exports_of_a_slide_are_crops_whose_masks_match_the_cells(
    slide_image: tuple[Image, list[int]], slide: SyntheticSlide, project: Any, admin_user: Any
) -> None:
    image, _ = slide_image
    # no cell reaches into the bottom-right crop: it is left out (and back with include_empty)
    Cell.objects.filter(image=image, bbox_x__gt=WIDTH - CROP - 200, bbox_y__gt=HEIGHT - CROP - 200).delete()
    rows = list(Cell.objects.filter(image=image).order_by("id").values_list("polygon", "cell_class__model_label"))
    polygons, labels = [r[0] for r in rows], [r[1] for r in rows]
    semantic = semantic_label_map(polygons=polygons, labels=labels, height=HEIGHT, width=WIDTH)
    instances = instance_label_map(polygons=polygons, height=HEIGHT, width=WIDTH)
    boxes = crop_grid(width=WIDTH, height=HEIGHT, size=CROP)
    with_cells = {box for box in boxes if semantic[box[1] : box[3], box[0] : box[2]].any()}
    assert len(with_cells) == len(boxes) - 1
    client = client_for(admin_user)

    archive = _run_job(client, project, "nnunet")
    folder = "Dataset500_" + archives._dataset_name(project)
    crops = sorted(n for n in archive.namelist() if n.startswith(f"{folder}/imagesTr/"))
    assert {_box_of(n) for n in crops} == with_cells  # crops without a cell pixel left out
    for name in crops:
        x0, y0, x1, y1 = box = _box_of(name)
        pixels = np.asarray(PILImage.open(io.BytesIO(archive.read(name))).convert("RGB"))
        assert np.array_equal(pixels, slide.region(*box))  # read at full resolution
        label = _png(archive, name.replace("imagesTr", "labelsTr").replace("_0000.png", ".png"))
        whole = semantic[y0:y1, x0:x1]
        assert label.shape == (y1 - y0, x1 - x0) and np.array_equal(label, whole)  # clipped cells, exactly
    assert json.loads(archive.read(f"{folder}/dataset.json"))["numTraining"] == len(crops)

    archive = _run_job(client, project, "cellpose")
    seen: dict[int, int] = {}  # whole-image label -> crops it appears in
    masks = sorted(n for n in archive.namelist() if n.endswith("_masks.png"))
    assert {_box_of(n) for n in masks} == with_cells
    for name in masks:
        x0, y0, x1, y1 = _box_of(name)
        crop = _png(archive, name).astype(np.int64)
        whole = instances[y0:y1, x0:x1].astype(np.int64)
        assert np.array_equal(crop > 0, whole > 0)
        pairs = np.unique(np.stack([crop[crop > 0], whole[crop > 0]]), axis=1)
        # one crop instance per cell and back: the cells, clipped, one label each
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]
        for label in pairs[1]:
            seen[int(label)] = seen.get(int(label), 0) + 1
    assert set(seen) == set(np.unique(instances)) - {0}  # the crops cover every cell
    assert any(n > 1 for n in seen.values())  # cells cut by a crop border are in each crop, clipped

    everything = _run_job(client, project, "cellpose", "?include_empty=1")
    assert len([n for n in everything.namelist() if n.endswith("_masks.png")]) == len(boxes)


@pytest.mark.django_db
def test_a_slide_with_verified_regions_is_exported_as_those_regions(
    slide_image: tuple[Image, list[int]], slide: SyntheticSlide, project: Any
) -> None:
    image, _ = slide_image
    outline = [[500.0, 300.0], [2100.0, 420.0], [1800.0, 1500.0], [600.0, 1300.0]]  # bbox 1600 x 1200
    verified = region_create(image=image, user=None, polygon=outline)
    Region.objects.filter(pk=verified.pk).update(status="verified")
    region_create(
        image=image, user=None, polygon=[[3000.0, 2000.0], [3500.0, 2000.0], [3500.0, 2500.0]]
    )  # not verified
    rows = list(Cell.objects.filter(image=image).order_by("id").values_list("polygon", "cell_class__model_label"))
    keep = cells_inside(outline, [r[0] for r in rows])
    polygons = [r[0] for r, k in zip(rows, keep, strict=True) if k]
    assert 50 < len(polygons) < len(rows) / 2
    instances = instance_label_map(polygons=polygons, height=HEIGHT, width=WIDTH)
    options = selection.ExportOptions(kind="cellpose")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(archives.cellpose_zip_stream(project=project, options=options))))
    masks = sorted(n for n in archive.namelist() if n.endswith("_masks.png"))
    prefix = f"train/case_{image.pk:06d}_r{verified.pk}_"
    corners = [(500, 300), (1524, 300), (500, 1324), (1524, 1324)]  # the region's box in crops from its corner
    assert masks == sorted(f"{prefix}x{x}_y{y}_masks.png" for x, y in corners)
    seen = set()
    for name in masks:
        x0, y0 = (int(v) for v in name.removeprefix(prefix).removesuffix("_masks.png").replace("x", "").split("_y"))
        x1, y1 = min(x0 + CROP, 2100), min(y0 + CROP, 1500)
        crop = _png(archive, name).astype(np.int64)
        whole = instances[y0:y1, x0:x1].astype(np.int64)
        assert crop.shape == whole.shape and np.array_equal(crop > 0, whole > 0)  # the region's cells, clipped
        seen |= set(np.unique(whole)) - {0}
        pixels = np.asarray(PILImage.open(io.BytesIO(archive.read(name.replace("_masks", "")))).convert("RGB"))
        outside = ~region_mask(outline, (x0, y0, x1, y1))
        assert (pixels[outside] == 255).all()  # nobody annotated there: white
        assert np.array_equal(pixels[~outside], slide.region(x0, y0, x1, y1)[~outside])
    assert seen == set(np.unique(instances)) - {0}
    # without selected cells a slide is not even opened (on object storage: not copied)
    Cell.objects.filter(image=image).delete()
    with mock.patch("interchange.services.crops.original_local_path", side_effect=AssertionError("opened")):
        empty = zipfile.ZipFile(io.BytesIO(b"".join(archives.cellpose_zip_stream(project=project, options=options))))
    assert empty.namelist() == []


def test_crop_polygons_keeps_cells_with_a_pixel_in_the_crop_clipped() -> None:
    polygons = [square(90, 10, 20), square(50, 50, 10), square(99.6, 60, 10), square(200, 200, 5)]
    kept, labels, indices = crop_polygons(polygons, [1, 2, 1, 1], (0, 0, 100, 100))
    # the cell across the border is kept (shifted), one whose pixel centres all lie outside is not
    assert indices == [0, 1] and labels == [1, 2]
    masks = instance_label_map(polygons=kept, height=100, width=100)
    assert (masks == 1).sum() == 10 * 20 and (masks == 2).sum() == 100
    kept, _, indices = crop_polygons(polygons, [1, 2, 1, 1], (100, 0, 200, 100))
    assert indices == [0, 2] and kept[0][0] == [-10.0, 10.0]
    assert crop_grid(width=250, height=100, size=100) == [(0, 0, 100, 100), (100, 0, 200, 100), (200, 0, 250, 100)]


def _many_cells(project: Any, count: int) -> Image:
    """An image the size of a whole slide (its rows only: the COCO and GeoJSON exports read no
    pixels) with ``count`` cells spread over it."""
    image = image_create(project, seed=count)
    Image.objects.filter(pk=image.pk).update(width=40_000, height=30_000, tiled=True, mpp_x=0.25, mpp_y=0.25)
    image.refresh_from_db()
    side = int(np.ceil(np.sqrt(count)))
    polygons = [
        [[x + 8 * np.cos(t), y + 8 * np.sin(t)] for t in np.linspace(0, 2 * np.pi, 24, endpoint=False)]
        for k in range(count)
        for x, y in [(20.0 + (k % side) * 39_000 / side, 20.0 + (k // side) * 29_000 / side)]
    ]
    annotation_cells_bulk_create(image=image, class_id=project.classes.get(model_label=1).pk, polygons=polygons)
    return image


def _peak(fn: Any) -> tuple[int, int]:
    """(bytes streamed, peak traced memory) of consuming a stream."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        size = sum(len(chunk) for chunk in fn())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return size, peak


@pytest.mark.django_db
def test_coco_and_geojson_memory_of_one_slide_does_not_grow_with_its_cells() -> None:
    from tests.factories import ProjectFactory

    peaks = {}
    filters = selection.ExportFilters()
    for count in (2_000, 20_000):
        project = ProjectFactory()
        _many_cells(project, count)
        coco_bytes, coco_peak = _peak(lambda p=project: coco_export.coco_export_stream(project=p, filters=filters))
        geo_bytes, geo_peak = _peak(lambda p=project: archives.geojson_zip_stream(project=p, filters=filters))
        peaks[count] = (coco_bytes, coco_peak, geo_bytes, geo_peak)
    small, large = peaks[2_000], peaks[20_000]
    assert large[0] > 9 * small[0] and large[2] > 8 * small[2]  # ten times the cells written...
    # ... in about the same memory: batches of cells, never the image's whole layer
    assert large[1] < 1.5 * small[1] + 2**20, (small, large)
    assert large[3] < 1.5 * small[3] + 2**20, (small, large)
    assert max(large[1], large[3]) < 32 * 2**20
