"""The GeoJSON (QuPath) import into one image, over the API: the round trip from our export, a
file in QuPath's own shape, the options (mode, class_map, default_class, multipart, holes,
dry_run), the revision, and the 400s that name the feature."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rest_framework.test import APIClient

from annotations.models import AnnotationRevision, AuditEvent, Cell, CellSource, Image, Layer, Role
from annotations.services import cells as cell_services
from tests.api.conftest import client_for
from tests.api.test_coco import HEIGHT, WIDTH, blob, zip_of
from tests.factories import ProjectFactory, UserFactory, image_create, member, square

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project: Any) -> Image:
    return image_create(project, seed=4, width=WIDTH, height=HEIGHT)


def url(image: Image) -> str:
    return f"/api/v1/images/{image.pk}/import/geojson"


def post_file(client: APIClient, image: Image, data: bytes | dict[str, Any] | list[Any], **form: Any) -> Any:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    upload = io.BytesIO(raw)
    upload.name = "cells.geojson"
    payload = {"file": upload, **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in form.items()}}
    return client.post(url(image), payload, format="multipart")


def post_json(client: APIClient, image: Image, body: dict[str, Any], **headers: Any) -> Any:
    return client.post(url(image), body, format="json", **headers)


def ring(points: list[list[float]]) -> list[list[float]]:
    return [*points, points[0]]


def feature(points: list[list[float]], name: str | None = "thyroid cell", **extra: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring(points)]},
        "properties": properties,
        **extra,
    }


def collection(*features: dict[str, Any]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def layer(image: Image) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).select_related("cell_class").order_by("id"))


def refused(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.content
    assert response.json()["detail"]
    return dict(response.json()["errors"])


# --- round trip ----------------------------------------------------------------------------


def test_our_export_imports_into_another_project_unchanged(project: Any, admin_user: Any) -> None:
    source = image_create(project, seed=8, width=WIDTH, height=HEIGHT)
    cell, erythrocyte = project.classes.get(model_label=1), project.classes.get(model_label=2)
    drawn = [
        {"class_id": cell.pk, "polygon": blob(30, 30, 12, wobble=0.1)},
        {"class_id": cell.pk, "polygon": blob(90.25, 45.5, 15, n=20)},
        {"class_id": erythrocyte.pk, "polygon": blob(60, 90, 9, n=10)},
        {"class_id": erythrocyte.pk, "polygon": [[0, 0], [12.5, 0], [12.5, 7.125], [0, 7.125]]},  # on the edge
    ]
    cell_services.cells_replace(image=source, user=admin_user, base_revision=0, cells=drawn)
    archive = zip_of(client_for(admin_user), f"/api/v1/projects/{project.pk}/export/geojson")
    exported = archive.read(f"{Path(source.file_name).stem}.geojson")

    other = ProjectFactory(created_by=UserFactory())
    other_admin = other.memberships.get(role=Role.ADMIN).user
    target = image_create(other, seed=8, width=WIDTH, height=HEIGHT)  # the same pixels
    response = post_file(client_for(other_admin), target, exported, revision=0)
    assert response.status_code == 201, response.json()
    assert response.json()["cells"] == 4 and response.json()["revision"] == 1
    assert response["ETag"] == '"1"'

    before = sorted((c.cell_class.name, c.polygon) for c in layer(source))
    after = sorted((c.cell_class.name, c.polygon) for c in layer(target))
    assert [name for name, _ in after] == [name for name, _ in before]
    for (_, want), (_, got) in zip(before, after, strict=True):
        assert np.allclose(np.asarray(got), np.asarray(want), atol=1e-9)
    assert all(c.source == CellSource.IMPORT and c.provenance["import"] == "geojson" for c in layer(target))
    target.refresh_from_db()
    assert target.revision == 1 and target.history.get(revision=1).action == "import"
    assert AuditEvent.objects.filter(project=other, image=target, action="geojson.import").exists()


# --- QuPath's own shape --------------------------------------------------------------------

# Written by hand from QuPath's documentation and its GeoJSON writer (PathObjectTypeAdapters):
# pixel coordinates from the top-left corner, closed rings, ``objectType`` and
# ``classification: {name, color: [r, g, b]}`` from 0.4 on, ``names`` for a derived class, a
# cell's ``nucleusGeometry`` beside its ``geometry``, measurements as an object; and the older
# shapes: 0.3's ``object_type``, 0.2's type in the feature's id with ``colorRGB``.
QUPATH_EXPORT: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "8c3c2b1e-6f0e-4b55-9d53-3f1c3a4c9f01",
            "geometry": {"type": "Polygon", "coordinates": [[[20, 20], [40, 20], [40, 36], [20, 36], [20, 20]]]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Thyroid cell", "color": [255, 0, 0]},
                "isLocked": False,
            },
        },
        {
            "type": "Feature",
            "id": "1f0d7a52-51ea-4c86-a54e-9c0e0a3f2b77",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[60.5, 60], [72, 58.25], [80, 66], [74, 78], [61, 75.5], [60.5, 60]]],
            },
            "nucleusGeometry": {
                "type": "Polygon",
                "coordinates": [[[66, 64], [72, 64], [72, 70], [66, 70], [66, 64]]],
            },
            "properties": {
                "objectType": "cell",
                "classification": {"name": "Erythrocyte", "color": [0, 0, 255]},
                "isLocked": False,
                "measurements": {"Nucleus: Area": 36.0, "Cell: Area": 250.1},
            },
        },
        {
            "type": "Feature",
            "id": "2b8e33a9-0b3f-4ac0-8a51-6d3f8c1b1d10",
            "geometry": {"type": "Polygon", "coordinates": [[[100, 20], [120, 20], [110, 40], [100, 20]]]},
            "properties": {
                "objectType": "detection",
                "classification": {"names": ["Thyroid cell"], "color": [1, 2, 3]},
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[10, 90], [30, 90], [30, 110], [10, 110], [10, 90]]]},
            "properties": {"object_type": "annotation", "classification": {"name": "erythrocyte", "colorRGB": -65536}},
        },
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {"type": "Polygon", "coordinates": [[[130, 90], [150, 90], [150, 110], [130, 90]]]},
            "properties": {
                "classification": {"name": "Thyroid cell", "colorRGB": -3670016},
                "isLocked": False,
                "measurements": [],
            },
        },
        {
            "type": "Feature",
            "id": "c9b9f6a4-3f5e-4e0c-9d1a-1b6f0d2a7e55",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [160, 0], [160, 120], [0, 120], [0, 0]]]},
            "properties": {"objectType": "tile", "isLocked": False},
        },
    ],
}


def test_a_file_in_qupaths_shape_imports(project: Any, image: Image, admin_user: Any) -> None:
    response = post_file(client_for(admin_user), image, QUPATH_EXPORT, revision=0)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["features"] == 6 and body["cells"] == 5 and body["nuclei_ignored"] == 1
    assert body["classes"] == {"thyroid cell": 3, "erythrocyte": 2}
    assert body["skipped"] == [{"feature": 5, "reason": "a QuPath tile is not a cell"}]
    cells = layer(image)
    assert [c.cell_class.name for c in cells] == [
        "thyroid cell",
        "erythrocyte",
        "thyroid cell",
        "erythrocyte",
        "thyroid cell",
    ]
    assert cells[0].polygon == [[20, 20], [40, 20], [40, 36], [20, 36]]
    assert cells[1].polygon[0] == [60.5, 60] and cells[1].provenance["object_type"] == "cell"
    assert cells[1].provenance["qupath_id"] == "1f0d7a52-51ea-4c86-a54e-9c0e0a3f2b77"
    assert [c.provenance["object_type"] for c in cells] == [
        "annotation",
        "cell",
        "detection",
        "annotation",
        "annotation",
    ]


def test_derived_classes_and_plain_lists(project: Any, image: Image, admin_user: Any) -> None:
    """A derived class is named as QuPath shows it; QuPath's plain (list) export works too."""
    derived = feature(square(20, 20), None)
    derived["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}
    older = feature(square(60, 20), None)
    older["properties"]["classification"] = {"name": "Positive", "parentClass": {"name": "Tumor"}}
    client = client_for(admin_user)
    errors = refused(post_file(client, image, [derived, older], revision=0))
    assert "'Tumor: Positive'" in errors["features.0.properties.classification"]
    response = post_file(client, image, [derived, older], revision=0, class_map={"tumor: positive": "Erythrocyte"})
    assert response.status_code == 201, response.json()
    assert [c.cell_class.name for c in layer(image)] == ["erythrocyte", "erythrocyte"]


# --- options -------------------------------------------------------------------------------


def test_dry_run_writes_nothing(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    cell_class = project.classes.get(model_label=1)
    cell_services.cells_replace(
        image=image, user=admin_user, base_revision=0, cells=[{"class_id": cell_class.pk, "polygon": square(5, 5)}]
    )
    data = collection(feature(square(20, 20)), feature(square(60, 60), "erythrocyte"))
    history, audit = AnnotationRevision.objects.count(), AuditEvent.objects.count()
    for mode in ("append", "replace"):
        response = post_file(client, image, data, dry_run="true", mode=mode)  # a dry run may leave out the revision
        assert response.status_code == 200, response.json()
        body = response.json()
        assert body["dry_run"] is True and body["cells"] == 2 and body["revision"] == 1
        assert body["deleted"] == (1 if mode == "replace" else 0)
    response = post_json(client, image, {"geojson": data, "dry_run": True, "revision": 1})
    assert response.status_code == 200 and response.json()["cells"] == 2
    assert post_json(client, image, {"geojson": data, "dry_run": True, "revision": 0}).status_code == 409
    image.refresh_from_db()
    assert image.revision == 1 and [c.polygon for c in layer(image)] == [square(5, 5)]
    assert (AnnotationRevision.objects.count(), AuditEvent.objects.count()) == (history, audit)


def test_append_replace_and_the_revision(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    data = collection(feature(square(20, 20)), feature(square(60, 60), "erythrocyte"))
    assert refused(post_file(client, image, data)) == {"revision": "send the revision field or an If-Match header"}
    assert post_file(client, image, data, revision=0).status_code == 201
    stale = post_file(client, image, data, revision=0)
    assert stale.status_code == 409 and stale.json()["revision"] == 1 and len(stale.json()["cells"]) == 2
    appended = post_json(client, image, {"geojson": data}, HTTP_IF_MATCH='"1"')
    assert appended.status_code == 201, appended.json()
    assert appended.json()["revision"] == 2 and len(layer(image)) == 4
    replaced = post_json(
        client, image, {"geojson": collection(feature(square(100, 20))), "mode": "replace", "revision": 2}
    )
    assert replaced.status_code == 201, replaced.json()
    assert replaced.json()["deleted"] == 4 and [c.polygon for c in layer(image)] == [square(100, 20)]
    assert image.history.get(revision=3).summary == {"added": 1, "changed": 0, "deleted": 4}


def test_class_map_and_default_class(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    erythrocyte = project.classes.get(model_label=2)
    data = collection(
        feature(square(10, 10), "Tumor"),
        feature(square(30, 10), "Stroma"),
        feature(square(50, 10), None),
        feature(square(70, 10), "Tissue"),
    )
    response = post_file(client, image, data, revision=0)
    errors = refused(response)
    assert "'Stroma', 'Tissue', 'Tumor'" in response.json()["detail"]
    assert "'Tumor' is not a class of this project" in errors["features.0.properties.classification"]
    assert "unclassified" in errors["features.2.properties.classification"]
    class_map = {"TUMOR": erythrocyte.pk, "tissue": None}
    response = post_file(client, image, data, revision=0, class_map=class_map, default_class="Thyroid Cell")
    assert response.status_code == 201, response.json()
    assert response.json()["skipped"] == [{"feature": 3, "reason": "class_map skips 'Tissue'"}]
    assert [c.cell_class.name for c in layer(image)] == ["erythrocyte", "thyroid cell", "thyroid cell"]
    bad = post_json(client, image, {"geojson": data, "revision": 1, "class_map": {"Tumor": 9999}, "default_class": "x"})
    errors = refused(bad)
    assert errors["class_map.Tumor"] == "9999 is not a class id of this project"
    assert errors["default_class"] == "'x' is not a class of this project"


def test_multipolygons_follow_multipart(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    touching = {"type": "MultiPolygon", "coordinates": [[ring(square(20, 20))], [ring(square(30, 20))]]}
    apart = {"type": "MultiPolygon", "coordinates": [[ring(square(20, 60))], [ring(square(60, 60))]]}
    data = collection({**feature(square(0, 0)), "geometry": touching}, {**feature(square(0, 0)), "geometry": apart})
    errors = refused(post_file(client, image, data, revision=0))
    assert "features.0.geometry" not in errors
    assert (
        "do not overlap or touch" in errors["features.1.geometry"]
        and "multipart=split" in errors["features.1.geometry"]
    )
    assert "2 parts" in refused(post_file(client, image, data, revision=0, multipart="refuse"))["features.0.geometry"]
    response = post_file(client, image, data, revision=0, multipart="split")
    assert response.status_code == 201, response.json()
    assert response.json()["multipart"] == {"merged": 0, "split": 2} and len(layer(image)) == 4
    response = post_file(client, image, collection(data["features"][0]), revision=1)
    assert response.json()["multipart"] == {"merged": 1, "split": 0}
    assert layer(image)[-1].area == pytest.approx(200)


def test_holes_are_refused_or_filled(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    donut = feature(square(20, 20, 40))
    donut["geometry"]["coordinates"].append(ring(square(30, 30, 10)))
    message = refused(post_file(client, image, collection(donut), revision=0))["features.0.geometry"]
    assert "1 hole(s)" in message and "holes=fill" in message
    response = post_file(client, image, collection(donut), revision=0, holes="fill")
    assert response.status_code == 201 and response.json()["holes_filled"] == 1
    assert layer(image)[0].polygon == square(20, 20, 40)


# --- refusals ------------------------------------------------------------------------------


def test_bad_inputs_name_the_feature_and_write_nothing(project: Any, image: Image, admin_user: Any) -> None:
    client = client_for(admin_user)
    assert "not valid JSON" in refused(post_file(client, image, b"{not json", revision=0))["file"]
    assert "FeatureCollection" in refused(post_file(client, image, {"type": "Polygon"}, revision=0))["file"]
    assert "FeatureCollection" in refused(post_json(client, image, {"geojson": {"a": 1}, "revision": 0}))["geojson"]
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}
    outside = feature([[150, 10], [170, 10], [170, 30]])
    bowtie = feature([[10, 10], [30, 30], [30, 10], [10, 30]])
    unknown = feature(square(40, 40), "Macrophage")
    data = collection(feature(square(60, 60)), point, outside, bowtie, unknown, {"type": "Polygon"})
    errors = refused(post_file(client, image, data, revision=0))
    assert "'Point' is not a cell outline" in errors["features.1.geometry"]
    assert "outside the image" in errors["features.2.geometry"]
    assert "not a valid simple polygon" in errors["features.3.geometry"]
    assert "'Macrophage'" in errors["features.4.properties.classification"]
    assert errors["features.5"] == "must be a GeoJSON Feature object"
    assert "features.0" not in " ".join(errors)
    assert refused(post_json(client, image, {"geojson": data, "revision": 0, "layer": "proposal"}))["layer"]
    assert refused(post_json(client, image, {"geojson": data, "revision": 0, "colour": 1})) == {
        "colour": ["unknown field"]
    }
    assert refused(post_json(client, image, {"revision": 0}))["geojson"]
    image.refresh_from_db()
    assert image.revision == 0 and layer(image) == [] and not AnnotationRevision.objects.exists()


def test_who_may_import(project: Any, image: Image) -> None:
    data = collection(feature(square(20, 20)))
    assert post_file(client_for(member(project, Role.ANNOTATOR)), image, data, revision=0).status_code == 201
    outsider = ProjectFactory().memberships.get(role=Role.ADMIN).user
    assert post_file(client_for(outsider), image, data, revision=1).status_code == 404
    assert APIClient().post(url(image), {}, format="json").status_code in (401, 403)
