"""The COCO import of segmentations of several polygons (``multipart``: merge, split, refuse)
and of crowd annotations (reported, not imported), over the API."""

from __future__ import annotations

from typing import Any

import pytest
from shapely.geometry import Polygon
from shapely.ops import unary_union

from annotations.models import Cell, Image, Layer
from tests.api.conftest import client_for
from tests.api.test_coco import HEIGHT, WIDTH, ann, blob, coco_for, import_coco
from tests.factories import image_create, square

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project: Any) -> Image:
    return image_create(project, seed=5, width=WIDTH, height=HEIGHT)


def parts_ann(ann_id: int, *parts: list[list[float]], category_id: int = 7) -> dict[str, Any]:
    return {**ann(ann_id, parts[0], category_id), "segmentation": [[v for p in part for v in p] for part in parts]}


def cells(image: Image) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).order_by("id"))


def refused(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.content
    return dict(response.json()["errors"])


def test_overlapping_parts_are_one_cell(project: Any, image: Image, admin_user: Any) -> None:
    parts = [square(20, 20, 20), square(30, 30, 20)]
    response = import_coco(client_for(admin_user), project, coco_for(image, [parts_ann(1, *parts)]))
    assert response.status_code == 201, response.json()
    assert response.json()["cells"] == 1 and response.json()["multipart"] == {"merged": 1, "split": 0}
    (cell,) = cells(image)
    assert Polygon(cell.polygon).equals(unary_union([Polygon(p) for p in parts]))
    assert cell.area == pytest.approx(700)
    assert cell.provenance == {"import": "coco", "coco_annotation_id": 1}


@pytest.mark.parametrize(
    "second",
    [square(30, 20), square(30, 30)],  # sharing an edge; meeting at a corner
    ids=["edge", "corner"],
)
def test_touching_parts_are_one_cell(project: Any, image: Image, admin_user: Any, second: list[list[float]]) -> None:
    response = import_coco(client_for(admin_user), project, coco_for(image, [parts_ann(1, square(20, 20), second)]))
    assert response.status_code == 201, response.json()
    (cell,) = cells(image)
    assert cell.area == pytest.approx(200, abs=0.01)


def test_disjoint_parts_under_merge_are_refused_naming_the_annotation(
    project: Any, image: Image, admin_user: Any
) -> None:
    data = coco_for(image, [ann(1, blob(100, 60, 10)), parts_ann(42, square(10, 10), square(60, 60))])
    errors = refused(import_coco(client_for(admin_user), project, data))
    message = errors["annotations.1"]
    assert "annotation 42" in message and "do not overlap or touch" in message and "multipart=split" in message
    assert cells(image) == []  # atomic: the good annotation is not stored either


def test_disjoint_parts_with_split_are_two_cells(project: Any, image: Image, admin_user: Any) -> None:
    data = coco_for(image, [parts_ann(42, square(10, 10), square(60, 60), category_id=8)])
    response = import_coco(client_for(admin_user), project, data, multipart="split")
    assert response.status_code == 201, response.json()
    assert response.json()["cells"] == 2 and response.json()["multipart"] == {"merged": 0, "split": 1}
    first, second = cells(image)
    assert first.polygon == square(10, 10) and second.polygon == square(60, 60)
    assert {first.cell_class.name, second.cell_class.name} == {"erythrocyte"}
    assert [first.provenance["coco_part"], second.provenance["coco_part"]] == [0, 1]


def test_refuse_names_the_annotation(project: Any, image: Image, admin_user: Any) -> None:
    data = coco_for(image, [parts_ann(7, square(20, 20, 20), square(30, 30, 20))])
    message = refused(import_coco(client_for(admin_user), project, data, multipart="refuse"))["annotations.0"]
    assert "annotation 7" in message and "2 polygons" in message
    assert refused(import_coco(client_for(admin_user), project, data, multipart="glue")) == {
        "multipart": "must be merge, split or refuse"
    }
    assert cells(image) == []


def test_a_bad_part_is_named(project: Any, image: Image, admin_user: Any) -> None:
    data = coco_for(image, [parts_ann(3, square(20, 20), [[150, 10], [170, 10], [170, 20]])])
    message = refused(import_coco(client_for(admin_user), project, data))["annotations.0"]
    assert "annotation 3" in message and "polygon 1" in message and "outside the image" in message


def test_crowd_annotations_are_reported(project: Any, image: Image, admin_user: Any) -> None:
    rle_crowd = {"id": 9, "image_id": 1, "category_id": 7, "iscrowd": 1, "segmentation": {"size": [1, 1], "counts": []}}
    data = coco_for(image, [ann(1, blob(60, 60, 10)), {**ann(5, blob(30, 30, 8)), "iscrowd": 1}, rle_crowd])
    dry = import_coco(client_for(admin_user), project, data, dry_run="1")
    assert dry.status_code == 200 and dry.json()["skipped_crowd"] == 2
    response = import_coco(client_for(admin_user), project, data)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["cells"] == 1 and body["skipped_crowd"] == 2
    assert [(s["annotation"], s["image"]) for s in body["skipped"]] == [(5, 1), (9, 1)]
    assert all("iscrowd=1" in s["reason"] for s in body["skipped"])
    assert len(cells(image)) == 1
