"""Verification by region through the API (issue #14): two regions of one slide in review at
the same time, each verified by its own experts on its own cells; the other region and the rest
of the slide unaffected; the slide then trains on its verified regions only."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotations.models import Cell, Image, ImageStatus, Layer, Role
from review.models import Review, ReviewStatus
from tests.api.conftest import client_for
from tests.factories import image_create, member, square
from training import snapshots

pytestmark = pytest.mark.django_db

LEFT = [[0, 0], [300, 0], [300, 300], [0, 300]]
RIGHT = [[300, 0], [600, 0], [600, 300], [300, 300]]
DRAFT = [[0, 300], [300, 300], [300, 400], [0, 400]]


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def slide(project: Any) -> Image:
    """A 600 x 400 image with the ``tiled`` flag (the review needs no pyramid)."""
    image = image_create(project, width=600, height=400)
    Image.objects.filter(pk=image.pk).update(tiled=True)
    image.refresh_from_db()
    return image


def _ok(response: Any, code: int = 200) -> Any:
    assert response.status_code == code, response.content
    return response.json()


def _put_cells(image: Image, user: Any, polygons: list[list[list[float]]], class_id: int) -> list[int]:
    image.refresh_from_db()
    body = {"revision": image.revision, "cells": [{"class_id": class_id, "polygon": p} for p in polygons]}
    return [
        c["id"] for c in _ok(client_for(user).put(f"/api/v1/images/{image.pk}/cells", body, format="json"))["cells"]
    ]


def _reviewers(region_id: int) -> list[Any]:
    return [
        r.reviewer
        for r in Review.objects.filter(round__region_id=region_id, status=ReviewStatus.ASSIGNED)
        .select_related("reviewer")
        .order_by("id")
    ]


def _review(user: Any, base: str, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    client = client_for(user)
    _ok(client.put(f"{base}/reviews/mine", {"decisions": decisions}, format="json"))
    return _ok(client.post(f"{base}/reviews/mine/submit", {}, format="json"))


def test_two_regions_of_one_slide_are_verified_independently_and_train(
    project: Any, slide: Image, annotator: Any, admin_user: Any
) -> None:
    for i in range(3):
        member(project, Role.EXPERT, username=f"expert{i}")
    class_id = project.classes.get(model_label=1).pk
    client = client_for(annotator)
    url = f"/api/v1/images/{slide.pk}/regions"
    left = _ok(client.post(url, {"name": "left", "polygon": LEFT}, format="json"), 201)
    right = _ok(client.post(url, {"name": "right", "polygon": RIGHT}, format="json"), 201)
    draft = _ok(client.post(url, {"name": "draft", "polygon": DRAFT}, format="json"), 201)
    cells = _put_cells(
        slide,
        annotator,
        [square(20, 20, 30), square(200, 150, 30), square(350, 40, 30), square(500, 200, 30), square(100, 340, 30)],
        class_id,
    )
    in_left, in_right, in_draft = cells[:2], cells[2:4], cells[4:]
    base = {name: f"{url}/{r['id']}" for name, r in (("left", left), ("right", right), ("draft", draft))}

    # the actions offered on a fresh region, then both submitted
    actions = _ok(client.get(f"{base['left']}/transition"))
    assert actions == {
        "region": left["id"],
        "status": "new",
        "image_status": "annotating",
        "allowed_actions": ["submit"],
    }
    submitted = _ok(client.post(f"{base['left']}/transition", {"action": "submit"}, format="json"))
    assert submitted["id"] == left["id"] and submitted["status"] == "in_review"
    assert submitted["image_status"] == "annotating" and submitted["allowed_actions"] == []
    _ok(client.post(f"{base['right']}/transition", {"action": "submit"}, format="json"))
    regions = {r["name"]: r for r in _ok(client.get(url))}
    assert {n: r["status"] for n, r in regions.items()} == {"left": "in_review", "right": "in_review", "draft": "new"}
    # the regions list filters by status
    assert [r["name"] for r in _ok(client.get(url, {"status": "in_review"}))] == ["left", "right"]

    # each region's round: its own number, its own reviewers
    left_round = _ok(client_for(admin_user).get(f"{base['left']}/assignments"))
    assert left_round["round"]["region"] == left["id"] and left_round["round"]["number"] == 1
    assert len(left_round["assignments"]) == 2
    # the image's own assignments list has none of the regions' rounds
    assert _ok(client_for(admin_user).get(f"/api/v1/images/{slide.pk}/assignments"))["round"] is None

    # an expert reviewing both sees each region's own cells only
    left_reviewers, right_reviewers = _reviewers(left["id"]), _reviewers(right["id"])
    both = next(u for u in left_reviewers if u in right_reviewers)
    wrong = client_for(both).put(
        f"{base['left']}/reviews/mine", {"decisions": [{"cell_id": in_right[0], "decision": "accept"}]}, format="json"
    )
    assert wrong.status_code == 400 and "decisions.0" in wrong.json()["errors"]
    queue = _ok(client_for(both).get("/api/v1/me/queue", {"project": project.pk}))
    assert sorted(i["region"] for i in queue["review"]["images"]) == sorted([left["id"], right["id"]])
    assert {i["region_name"] for i in queue["review"]["images"]} == {"left", "right"}

    # the right region first: verified; the left stays in review
    for user in right_reviewers:
        answer = _review(user, base["right"], [{"cell_id": c, "decision": "accept"} for c in in_right])
        assert answer["region"] == right["id"]
    assert answer["region_status"] == "verified" and answer["image_status"] == "annotating"
    regions = {r["name"]: r for r in _ok(client.get(url))}
    assert (regions["right"]["status"], regions["left"]["status"]) == ("verified", "in_review")
    verified = Cell.objects.filter(image=slide, layer=Layer.VERIFIED)
    assert sorted(c.provenance["origin_cell_id"] for c in verified) == sorted(in_right)

    # the left region: one cell rejected by both experts
    for user in left_reviewers:
        _review(
            user,
            base["left"],
            [{"cell_id": in_left[0], "decision": "accept"}, {"cell_id": in_left[1], "decision": "reject"}],
        )
    regions = {r["name"]: r for r in _ok(client.get(url))}
    assert {n: r["status"] for n, r in regions.items()} == {"left": "verified", "right": "verified", "draft": "new"}
    by_region: dict[int, set[int]] = {}
    for cell in Cell.objects.filter(image=slide, layer=Layer.VERIFIED):
        by_region.setdefault(cell.provenance["region"], set()).add(cell.provenance["origin_cell_id"])
    assert by_region == {left["id"]: {in_left[0]}, right["id"]: set(in_right)}  # the right untouched
    slide.refresh_from_db()
    assert slide.status == ImageStatus.ANNOTATING  # the slide as a whole was never submitted
    # outside the regions in review the slide stays editable; inside, a verified region is locked
    slide.refresh_from_db()
    outside = client.patch(
        f"/api/v1/images/{slide.pk}/cells",
        {"base_revision": slide.revision, "deleted": [{"id": in_draft[0]}]},
        format="json",
    )
    assert outside.status_code == 200, outside.content
    # inside a verified region: refused as a conflict the editor resolves (the server's version
    # of the cells concerned; an added cell there dropped), nothing written
    inside = client.patch(
        f"/api/v1/images/{slide.pk}/cells",
        {
            "base_revision": slide.revision + 1,
            "added": [
                {"class_id": class_id, "polygon": square(400, 100, 20)},  # in the right region
                {"class_id": class_id, "polygon": square(100, 360, 20)},  # in the draft region: fine
            ],
            "deleted": [{"id": in_left[1]}],
        },
        format="json",
    )
    assert inside.status_code == 409, inside.content
    refused = inside.json()
    assert "right" in refused["detail"] and refused["region"] == "right" and refused["status"] == "verified"
    assert refused["revision"] == slide.revision + 1
    assert [(c["item"], c["id"], c["reason"]) for c in refused["conflicts"]] == [
        ("added.0", None, "region_locked"),
        ("deleted.0", in_left[1], "region_locked"),
    ]
    assert [c["id"] for c in refused["cells"]] == [in_left[1]] and refused["deleted"] == []
    assert Cell.objects.filter(pk=in_left[1]).exists()
    assert not Cell.objects.filter(image=slide, layer=Layer.ANNOTATION, bbox_x=100, bbox_y=360).exists()

    # training: the slide by its two verified regions, each with the verified cells inside it
    snapshot = snapshots.dataset_snapshot_create(project=project, user=admin_user)
    items = list(snapshot.items.order_by("region_id"))
    assert [(i.image_id, i.region_id) for i in items] == [(slide.pk, left["id"]), (slide.pk, right["id"])]
    assert [len(i.cells) for i in items] == [1, 2]
    assert items[0].crop == [0, 0, 300, 300] and items[1].crop == [300, 0, 600, 300]


def test_region_submission_errors_name_the_field(project: Any, slide: Image, annotator: Any, expert: Any) -> None:
    client = client_for(annotator)
    url = f"/api/v1/images/{slide.pk}/regions"
    empty = _ok(client.post(url, {"polygon": LEFT}, format="json"), 201)
    refused = client.post(f"{url}/{empty['id']}/transition", {"action": "submit"}, format="json")
    assert refused.status_code == 400 and "region" in refused.json()["errors"]
    unknown = client.post(f"{url}/{empty['id']}/transition", {"action": "start"}, format="json")
    assert unknown.status_code == 400 and "action" in unknown.json()["errors"]
    other = image_create(project, width=600, height=400, seed=2)
    assert client.get(f"/api/v1/images/{other.pk}/regions/{empty['id']}/transition").status_code == 404
    # an expert has no review of a region nobody submitted
    assert client_for(expert).get(f"{url}/{empty['id']}/reviews/mine").status_code == 404


def test_the_work_queue_costs_the_same_queries_with_more_regions_in_review(
    project: Any, slide: Image, annotator: Any, admin_user: Any
) -> None:
    expert = member(project, Role.EXPERT, username="solo")
    project.experts_required = 1
    project.save(update_fields=["experts_required"])
    class_id = project.classes.get(model_label=1).pk
    client = client_for(annotator)
    url = f"/api/v1/images/{slide.pk}/regions"

    def region_in_review(x: int) -> None:
        region = _ok(client.post(url, {"polygon": [[x, 0], [x + 50, 0], [x + 50, 50], [x, 50]]}, format="json"), 201)
        slide.refresh_from_db()
        body = {"base_revision": slide.revision, "added": [{"class_id": class_id, "polygon": square(x + 10, 10, 20)}]}
        _ok(client.patch(f"/api/v1/images/{slide.pk}/cells", body, format="json"))
        _ok(client.post(f"{url}/{region['id']}/transition", {"action": "submit"}, format="json"))

    def queries() -> tuple[int, dict[str, Any]]:
        with CaptureQueriesContext(connection) as seen:
            body = _ok(client_for(expert).get("/api/v1/me/queue", {"project": project.pk}))
        return len(seen.captured_queries), body

    region_in_review(0)
    one, body = queries()
    assert body["review"]["count"] == 1
    for x in (100, 200, 300, 400):
        region_in_review(x)
    five, body = queries()
    assert body["review"]["count"] == 5 and len(body["review"]["images"]) == 5
    assert five == one


def test_a_region_with_verification_history_is_kept_and_the_slide_can_still_be_deleted(
    project: Any, slide: Image, annotator: Any, admin_user: Any
) -> None:
    """Deleting a region would take its reviews with it: once reviewed (even reopened) it stays;
    a region never submitted is deleted; deleting the slide takes regions and rounds together."""
    from annotations.models import Region
    from review.models import VerificationRound

    for i in range(2):
        member(project, Role.EXPERT, username=f"expert{i}")
    class_id = project.classes.get(model_label=1).pk
    client = client_for(annotator)
    url = f"/api/v1/images/{slide.pk}/regions"
    reviewed = _ok(client.post(url, {"name": "reviewed", "polygon": LEFT}, format="json"), 201)
    spare = _ok(client.post(url, {"name": "spare", "polygon": RIGHT}, format="json"), 201)
    _put_cells(slide, annotator, [square(20, 20, 30)], class_id)
    _ok(client.post(f"{url}/{reviewed['id']}/transition", {"action": "submit"}, format="json"))
    admin = client_for(admin_user)
    _ok(admin.post(f"{url}/{reviewed['id']}/transition", {"action": "reopen"}, format="json"))
    assert Region.objects.get(pk=reviewed["id"]).status not in ("submitted", "in_review", "verified")

    refused = admin.delete(f"{url}/{reviewed['id']}")
    assert refused.status_code == 409, refused.content
    assert "verification" in refused.json()["detail"]
    assert Region.objects.filter(pk=reviewed["id"]).exists()
    assert VerificationRound.objects.filter(region_id=reviewed["id"]).exists()
    assert client.delete(f"{url}/{spare['id']}").status_code == 204

    assert admin.delete(f"/api/v1/images/{slide.pk}").status_code == 204
    assert not Region.objects.filter(image_id=slide.pk).exists()
    assert not VerificationRound.objects.filter(image_id=slide.pk).exists()
