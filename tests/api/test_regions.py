"""Regions of interest (issue #14) through the API: create, change, delete with validation and
permissions, and a region's pre-segmentation (only the tiles it meets, proposals only inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from annotations.models import AuditEvent, Cell, Image, ImageStatus, Layer, PresegmentStatus, Region
from cytoseg.regions import cells_inside
from cytoseg.slide_synthetic import SyntheticSlide, slide_synthetic
from inference import tiled
from inference.models import PresegmentTile
from tests.api.conftest import client_for, slide_upload
from tests.factories import image_create, square
from training import snapshots
from training.services.registry import model_version_baseline

pytestmark = pytest.mark.django_db

SIDE = 1024
# an L-shaped region: its bounding box covers tiles whose cores it does not meet
L_SHAPE = [[40, 40], [500, 40], [500, 200], [200, 200], [200, 500], [40, 500]]


@pytest.fixture(autouse=True)
def _tiled_settings(settings: Any) -> None:
    settings.TILED_MIN_SIDE = 512
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    settings.PRESEGMENT_TILE_SIZE = 256
    settings.PRESEGMENT_TILE_MARGIN = 64
    settings.PRESEGMENT_TILES_PER_TASK = 4


@pytest.fixture(scope="module")
def slide() -> SyntheticSlide:
    return slide_synthetic(width=SIDE, height=SIDE, field_width=512, field_height=512, distinct=4, seed=3)


@pytest.fixture
def slide_image(slide: SyntheticSlide, project: Any, admin_user: Any, tmp_path: Path) -> Image:
    return slide_upload(slide=slide, project=project, user=admin_user, folder=tmp_path)


def test_regions_are_created_listed_changed_and_deleted(project: Any, annotator: Any) -> None:
    image = image_create(project, width=640, height=480)
    client = client_for(annotator)
    url = f"/api/v1/images/{image.pk}/regions"
    made = client.post(url, {"polygon": [[10, 10], [300.5, 10], [300.5, 200], [10, 200]]}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["name"] == "Region 1" and body["status"] == "new" and body["bbox"] == [10, 10, 301, 200]
    assert body["created_by"] == annotator.pk
    second = client.post(url, {"name": " Follicles ", "polygon": [[400, 300], [600, 300], [500, 470]]}, format="json")
    assert second.json()["name"] == "Follicles"
    assert [r["name"] for r in client.get(url).json()] == ["Region 1", "Follicles"]
    rid = body["id"]
    changed = client.patch(f"{url}/{rid}", {"name": "Top", "polygon": [[0, 0], [640, 0], [0, 480]]}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["name"] == "Top" and changed.json()["bbox"] == [0, 0, 640, 480]
    assert client.delete(f"{url}/{rid}").status_code == 204
    assert [r["name"] for r in client.get(url).json()] == ["Follicles"]
    actions = set(AuditEvent.objects.filter(image=image).values_list("action", flat=True))
    assert {"region.create", "region.update", "region.delete"} <= actions


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"polygon": [[0, 0], [10, 0]]}, "polygon", "at least 3 points"),
        ({"polygon": [[0, 0], [700, 0], [0, 100]]}, "polygon", "outside the image"),
        ({"polygon": [[0, 0], [100, 100], [100, 0], [0, 100]]}, "polygon", "not a simple polygon"),
        ({"polygon": [[0, 0], [10, 10], [20, 20]]}, "polygon", "zero area"),
        ({"polygon": [[0, 0], ["a", 1], [5, 5]]}, "polygon", "point 1"),
        ({"polygon": "square"}, "polygon", "list"),
        ({"polygon": [[0, 0], [10, 0], [0, 10]], "name": "  "}, "name", "non-empty"),
        ({"polygon": [[0, 0], [10, 0], [0, 10]], "name": "x" * 101}, "name", "100"),
        ({}, "polygon", ""),
    ],
)
def test_a_bad_region_is_refused_naming_the_field(
    project: Any, annotator: Any, payload: dict[str, Any], field: str, words: str
) -> None:
    image = image_create(project, width=640, height=480)
    response = client_for(annotator).post(f"/api/v1/images/{image.pk}/regions", payload, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert field in errors and words in str(errors[field])
    assert not Region.objects.exists()


def test_region_permissions_follow_the_image(project: Any, annotator: Any, expert: Any, outsider: Any) -> None:
    image = image_create(project, width=640, height=480)
    url = f"/api/v1/images/{image.pk}/regions"
    triangle = {"polygon": [[0, 0], [100, 0], [0, 100]]}
    assert client_for(outsider).post(url, triangle, format="json").status_code == 404
    assert client_for(outsider).get(url).status_code == 404
    rid = client_for(annotator).post(url, triangle, format="json").json()["id"]
    other = image_create(project, seed=1, width=640, height=480)
    assert client_for(annotator).get(f"/api/v1/images/{other.pk}/regions/{rid}").status_code == 404
    assert client_for(expert).get(f"{url}/{rid}").status_code == 200
    bad = client_for(annotator).patch(f"{url}/{rid}", {"status": "verified"}, format="json")
    assert bad.status_code == 400 and "status" in bad.json()["errors"]
    # a region under review is locked, like an image's annotations
    Region.objects.filter(pk=rid).update(status=ImageStatus.IN_REVIEW)
    assert client_for(annotator).patch(f"{url}/{rid}", triangle, format="json").status_code == 409
    assert client_for(annotator).delete(f"{url}/{rid}").status_code == 409


def test_a_region_is_pre_segmented_alone_proposals_only_inside(slide_image: Image, admin_user: Any) -> None:
    image = slide_image
    client = client_for(admin_user)
    version = model_version_baseline(project=image.project)
    rid = client.post(f"/api/v1/images/{image.pk}/regions", {"polygon": L_SHAPE}, format="json").json()["id"]
    # an unknown region and a region of a small image are refused, naming the field
    unknown = client.post(f"/api/v1/images/{image.pk}/presegment", {"region": rid + 99}, format="json")
    assert unknown.status_code == 400 and "region" in unknown.json()["errors"]
    with mock.patch("core.queue.task_send"):
        answer = client.post(
            f"/api/v1/images/{image.pk}/presegment", {"model_version": version.pk, "region": rid}, format="json"
        )
    assert answer.status_code == 202, answer.content
    # 256 px cores: the L meets tiles 0, 1 (top row) and 4 (second row), not 5 (inside its bbox)
    tiles = PresegmentTile.objects.filter(image=image).order_by("index")
    assert list(tiles.values_list("index", flat=True)) == [0, 1, 4]
    assert Image.objects.get(pk=image.pk).presegment_tiles_total == 3
    # proposals elsewhere on the slide (an earlier run) are kept
    outside = Cell.objects.create(
        image=image,
        layer=Layer.PROPOSAL,
        cell_class=image.project.classes.first(),
        polygon=[[900, 900], [920, 900], [920, 920], [900, 920]],
        bbox_x=900,
        bbox_y=900,
        bbox_w=20,
        bbox_h=20,
        area=400,
        model_version=version,
        source="model",
    )
    result = tiled.image_tiles_run(image_id=image.pk, model_version_id=version.pk, task=0)
    assert result.tiles == [0, 1, 4] and result.cell_count and result.cell_count > 10
    done = Image.objects.get(pk=image.pk)
    assert done.presegment_status == PresegmentStatus.DONE
    proposals = list(Cell.objects.filter(image=image, layer=Layer.PROPOSAL).exclude(pk=outside.pk))
    assert len(proposals) == result.cell_count
    assert all(cells_inside(L_SHAPE, [c.polygon for c in proposals]))
    assert Cell.objects.filter(pk=outside.pk).exists()
    # a region on a small image is pre-segmented whole instead
    small = image_create(image.project, width=64, height=48)
    small_region = client.post(
        f"/api/v1/images/{small.pk}/regions", {"polygon": [[0, 0], [30, 0], [0, 30]]}, format="json"
    ).json()["id"]
    refused = client.post(f"/api/v1/images/{small.pk}/presegment", {"region": small_region}, format="json")
    assert refused.status_code == 400 and "region" in refused.json()["errors"]


def _verified_cells(image: Image, squares: list[list[list[float]]]) -> list[int]:
    class_id = image.project.classes.get(model_label=1).pk
    cells = Cell.objects.bulk_create(
        [
            Cell(
                image=image,
                layer=Layer.VERIFIED,
                cell_class_id=class_id,
                polygon=points,
                bbox_x=points[0][0],
                bbox_y=points[0][1],
                bbox_w=20,
                bbox_h=20,
                area=400,
                source="consensus",
            )
            for points in squares
        ]
    )
    return [c.pk for c in cells]


def test_a_slide_with_three_verified_regions_trains_on_those_three_only(
    slide_image: Image, admin_user: Any, settings: Any
) -> None:
    image = slide_image
    project = image.project
    client = client_for(admin_user)
    shapes = {
        "A": [[50, 60], [300, 60], [300, 250], [50, 250]],
        "B": [[600, 100], [900, 100], [750, 400]],  # a triangle: its bbox's corners are outside it
        "C": [[100, 600], [400, 600], [400, 900], [100, 900]],
        "draft": [[600, 600], [900, 600], [900, 900], [600, 900]],  # drawn, never verified
    }
    regions = {
        name: client.post(f"/api/v1/images/{image.pk}/regions", {"name": name, "polygon": poly}, format="json").json()
        for name, poly in shapes.items()
    }
    Region.objects.filter(name__in=["A", "B", "C"]).update(status=ImageStatus.VERIFIED)
    inside = {
        "A": _verified_cells(image, [square(80, 80, 20), square(200, 150, 20)]),
        "B": _verified_cells(image, [square(740, 150, 20)]),
        "C": _verified_cells(image, [square(150, 650, 20), square(300, 800, 20), square(370, 870, 20)]),
    }
    # verified cells outside every verified region: in the draft region, in B's bbox but outside
    # the triangle, and nowhere near a region
    outside = _verified_cells(image, [square(700, 700, 20), square(610, 360, 20), square(980, 20, 20)])
    snapshot = snapshots.dataset_snapshot_create(project=project, user=admin_user)
    items = list(snapshot.items.order_by("id"))
    assert [item.region_id for item in items] == [regions[n]["id"] for n in ("A", "B", "C")]
    assert all(item.image_id == image.pk for item in items)
    for item, name in zip(items, ("A", "B", "C"), strict=True):
        assert sorted(c["id"] for c in item.cells) == sorted(inside[name])
        assert item.crop == regions[name]["bbox"]
        x0, y0, x1, y1 = item.crop
        assert (item.width, item.height) == (x1 - x0, y1 - y0)
        # cells in the crop's coordinates
        assert all(0 <= x <= item.width and 0 <= y <= item.height for c in item.cells for x, y in c["polygon"])
    kept = {c["id"] for item in items for c in item.cells}
    assert not kept & set(outside)
    assert (
        snapshot.counts["train"]["images"] + snapshot.counts["validation"]["images"] + snapshot.counts["test"]["images"]
        == 3
    )
    # the training data: each region's crop read from the slide at full resolution, white
    # outside the region (B's bbox corners), the slide's pixels inside
    data = snapshots.snapshot_load(snapshot)
    cases = data.train + data.validation + data.test
    assert sorted(case.key for case in cases) == sorted(f"{image.pk}_region_{regions[n]['id']}" for n in "ABC")
    b = next(case for case in cases if case.key.endswith(f"region_{regions['B']['id']}"))
    assert b.image.shape == (300, 300, 3)
    assert (b.image[-3, 2] == 255).all() and (b.image[-3, -3] == 255).all()  # outside the triangle
    assert b.image[150:250, 120:180].std() > 5  # inside: the slide, not a flat fill
    assert b.semantic.shape == (300, 300) and b.semantic.max() == 1
    files = list(snapshots.snapshot_cases(snapshot))
    assert len(files) == 3 and all(f.image[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
