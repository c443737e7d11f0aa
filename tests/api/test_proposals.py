from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from annotations.models import Cell, ImageStatus, Layer, PresegmentStatus
from tests.api.conftest import client_for
from tests.factories import image_create, square
from training.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(project: Any) -> Any:
    return image_create(project, width=200, height=100)


def _proposals(image: Any, project: Any, count: int = 3) -> list[Cell]:
    from training.services.registry import model_version_baseline

    version = model_version_baseline(project=project)
    class_id = project.classes.get(model_label=1).pk
    return [
        Cell.objects.create(
            image=image,
            layer=Layer.PROPOSAL,
            cell_class_id=class_id,
            polygon=square(10 + 30 * i, 10),
            bbox_x=10 + 30 * i,
            bbox_y=10,
            bbox_w=10,
            bbox_h=10,
            area=100,
            score=0.8,
            model_version=version,
        )
        for i in range(count)
    ]


def test_presegment_enqueues_on_commit(image: Any, annotator: Any, django_capture_on_commit_callbacks: Any) -> None:
    with mock.patch("core.queue.task_send") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            response = client_for(annotator).post(f"/api/v1/images/{image.pk}/presegment", {}, format="json")
    assert response.status_code == 202
    image.refresh_from_db()
    assert image.presegment_status == PresegmentStatus.QUEUED
    version = ModelVersion.objects.get(project=image.project)
    assert version.kind == "watershed" and version.status == "active"
    delay.assert_called_once_with("inference.presegment_image", args=[image.pk, version.pk], queue="gpu", task_id=None)


def test_presegment_validates_model_version(image: Any, annotator: Any) -> None:
    from tests.factories import ProjectFactory

    foreign = ModelVersion.objects.create(project=ProjectFactory(), kind="watershed", number=1)
    response = client_for(annotator).post(
        f"/api/v1/images/{image.pk}/presegment", {"model_version": foreign.pk}, format="json"
    )
    assert response.status_code == 400 and "model_version" in response.json()["errors"]


def test_project_presegment_needs_admin(project: Any, annotator: Any, admin_user: Any) -> None:
    image_create(project)
    assert client_for(annotator).post(f"/api/v1/projects/{project.pk}/presegment", {}, format="json").status_code == 403
    with mock.patch("core.queue.task_send"):
        response = client_for(admin_user).post(f"/api/v1/projects/{project.pk}/presegment", {}, format="json")
    assert response.status_code == 202 and response.json()["queued"] == 1


def test_accept_some_then_reject_rest(image: Any, project: Any, annotator: Any) -> None:
    first, second, third = _proposals(image, project)
    client = client_for(annotator)
    accepted = client.post(
        f"/api/v1/images/{image.pk}/proposals/accept", {"revision": 0, "ids": [first.pk]}, format="json"
    )
    assert accepted.status_code == 200, accepted.content
    body = accepted.json()
    assert body["revision"] == 1 and len(body["cells"]) == 1
    cell = body["cells"][0]
    assert cell["source"] == "model" and cell["provenance"]["proposal_id"] == first.pk and cell["score"] == 0.8
    # Accepting again is refused: it is no longer an open proposal.
    again = client.post(
        f"/api/v1/images/{image.pk}/proposals/accept", {"revision": 1, "ids": [first.pk]}, format="json"
    )
    assert again.status_code == 400 and "ids" in again.json()["errors"]
    stale = client.post(
        f"/api/v1/images/{image.pk}/proposals/accept", {"revision": 0, "ids": [second.pk]}, format="json"
    )
    assert stale.status_code == 409
    rejected = client.post(f"/api/v1/images/{image.pk}/proposals/reject", {"all": True}, format="json")
    assert rejected.json() == {"rejected": 2}
    states = dict(Cell.objects.filter(layer=Layer.PROPOSAL).values_list("pk", "state"))
    assert states == {first.pk: "accepted", second.pk: "rejected", third.pk: "rejected"}


def test_accept_needs_a_selection(image: Any, annotator: Any) -> None:
    response = client_for(annotator).post(f"/api/v1/images/{image.pk}/proposals/accept", {"revision": 0}, format="json")
    assert response.status_code == 400 and "ids" in response.json()["errors"]


def test_locked_image_refuses_proposal_changes_and_presegmentation(image: Any, project: Any, annotator: Any) -> None:
    _proposals(image, project)
    image.status = ImageStatus.IN_REVIEW
    image.save()
    client = client_for(annotator)
    assert client.post(f"/api/v1/images/{image.pk}/proposals/reject", {"all": True}, format="json").status_code == 409
    assert (
        client.post(
            f"/api/v1/images/{image.pk}/proposals/accept", {"revision": 0, "all": True}, format="json"
        ).status_code
        == 409
    )
    assert client.post(f"/api/v1/images/{image.pk}/presegment", {}, format="json").status_code == 409
    assert Cell.objects.filter(layer=Layer.PROPOSAL, state="").count() == 3


def test_proposal_boxes_are_x_y_width_height(image: Any, project: Any, annotator: Any) -> None:
    """The contour library's boxes are (x_min, y_min, x_max, y_max); proposals were stored with
    x_max / y_max as width / height (COCO box AP 0.000). Stored rows are repaired by migration."""
    import importlib

    import numpy as np
    from django.apps import apps

    from cytoseg.backends.base import instances_from_label_map
    from cytoseg.contours import instances_to_polygons
    from inference.services import proposals_store
    from training.services.registry import model_version_baseline

    labels = np.zeros((100, 200), np.int32)
    labels[30:45, 120:140] = 1  # x 120..139, y 30..44
    contours = instances_to_polygons(instances_from_label_map(labels, labels=[1]))
    version = model_version_baseline(project=project)
    assert proposals_store(image=image, model_version=version, contours=contours) == 1
    (cell,) = client_for(annotator).get(f"/api/v1/images/{image.pk}/cells?layer=proposal").json()["cells"]
    xs, ys = [p[0] for p in cell["polygon"]], [p[1] for p in cell["polygon"]]
    assert cell["bbox"] == [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    assert 115 <= cell["bbox"][0] <= 121 and 18 <= cell["bbox"][2] <= 22

    # a row stored the old way is repaired by annotations 0009
    Cell.objects.filter(pk=cell["id"]).update(bbox_w=max(xs), bbox_h=max(ys))
    module = importlib.import_module("annotations.migrations.0009_proposal_bbox_xywh")
    module.forwards(apps, None)
    stored = Cell.objects.get(pk=cell["id"])
    assert [stored.bbox_x, stored.bbox_y, stored.bbox_w, stored.bbox_h] == cell["bbox"]


def test_images_tell_how_many_proposals_the_last_presegmentation_made(image: Any, project: Any, annotator: Any) -> None:
    """A run that found nothing reads "0 proposals from <model>", not a plain "done"."""
    from inference.services import proposals_store
    from training.services.registry import model_version_baseline

    other = image_create(project, seed=1, width=200, height=100)
    client = client_for(annotator)
    assert client.get(f"/api/v1/images/{image.pk}").json()["presegment_proposals"] is None
    version = model_version_baseline(project=project)
    assert proposals_store(image=image, model_version=version, contours=[]) == 0
    _proposals(other, project, count=3)
    Cell.objects.filter(pk=Cell.objects.filter(image=other, layer=Layer.PROPOSAL).first().pk).update(
        state="accepted"
    )  # acted-on proposals still count
    type(other).objects.filter(pk=other.pk).update(presegment_status=PresegmentStatus.DONE, presegment_model=version)
    detail = client.get(f"/api/v1/images/{image.pk}").json()
    assert (detail["presegment_status"], detail["presegment_proposals"]) == ("done", 0)
    assert (detail["presegment_model"], detail["presegment_model_label"]) == (version.pk, str(version))
    rows = {r["id"]: r for r in client.get(f"/api/v1/projects/{project.pk}/images").json()["results"]}
    assert rows[image.pk]["presegment_proposals"] == 0 and rows[other.pk]["presegment_proposals"] == 3
    assert rows[other.pk]["presegment_model_label"] == str(version)
