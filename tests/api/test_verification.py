"""Multi-expert verification: workflow states, assignment, blind reviews, consensus, adjudication,
the verified layer, agreement and correction analytics (two and three experts, synthetic images).

One file over ~600 lines because it walks docs/api.md's verification section end to end through
the API in order; the service-level rules are tested in review/tests/."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from annotations.models import AuditEvent, Cell, Image, Layer, Role
from review.models import CorrectionRecord, PairAgreement, Review, ReviewDecision
from tests.api.conftest import client_for
from tests.factories import image_create, member, square

pytestmark = pytest.mark.django_db

W, H = 200, 100


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # These tests create many users; the production hasher costs a quarter second per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


@pytest.fixture
def class_id(project: Any) -> int:
    return int(project.classes.get(name="thyroid cell").pk)


@pytest.fixture
def other_class_id(project: Any) -> int:
    return int(project.classes.get(name="erythrocyte").pk)


@pytest.fixture
def image(project: Any) -> Image:
    return image_create(project, width=W, height=H)


@pytest.fixture
def experts(project: Any) -> list[Any]:
    return [member(project, Role.EXPERT, username=f"expert{i}") for i in range(3)]


def annotate(image: Image, user: Any, polygons: list[list[list[float]]], class_id: int) -> list[int]:
    image.refresh_from_db()
    body = {"revision": image.revision, "cells": [{"class_id": class_id, "polygon": p} for p in polygons]}
    response = client_for(user).put(f"/api/v1/images/{image.pk}/cells", body, format="json")
    assert response.status_code == 200, response.content
    return [c["id"] for c in response.json()["cells"]]


def transition(user: Any, image: Image, action: str) -> Any:
    return client_for(user).post(f"/api/v1/images/{image.pk}/transition", {"action": action}, format="json")


def submit_image(image: Image, annotator: Any) -> dict[str, Any]:
    response = transition(annotator, image, "submit")
    assert response.status_code == 200, response.content
    return dict(response.json())


def reviewers_of(image: Image) -> list[Any]:
    return [r.reviewer for r in Review.objects.filter(image=image, status="assigned").select_related("reviewer")]


def review(user: Any, image: Image, decisions: list[dict[str, Any]], added: Any = None, comments: Any = None) -> Any:
    body = {"decisions": decisions, "added": added or [], "comments": comments or []}
    response = client_for(user).put(f"/api/v1/images/{image.pk}/reviews/mine", body, format="json")
    assert response.status_code == 200, response.content
    submitted = client_for(user).post(f"/api/v1/images/{image.pk}/reviews/mine/submit", {}, format="json")
    assert submitted.status_code == 200, submitted.content
    return submitted.json()


def accept_all(cells: list[int]) -> list[dict[str, Any]]:
    return [{"cell_id": c, "decision": "accept"} for c in cells]


def verified(image: Image) -> list[Cell]:
    return list(Cell.objects.filter(image=image, layer=Layer.VERIFIED).order_by("id"))


def setup_review(project: Any, image: Image, annotator: Any, class_id: int, polygons: list[Any]) -> tuple[list, list]:
    cells = annotate(image, annotator, polygons, class_id)
    submit_image(image, annotator)
    return cells, reviewers_of(image)


# --- workflow ------------------------------------------------------------------------------


def test_first_write_starts_annotating_and_records_annotator(image: Image, annotator: Any, class_id: int) -> None:
    assert image.status == "new"
    annotate(image, annotator, [square(10, 10)], class_id)
    image.refresh_from_db()
    assert image.status == "annotating" and image.annotator_id == annotator.pk
    event = AuditEvent.objects.get(action="image.transition", image=image)
    assert event.before == {"status": "new"} and event.after == {"status": "annotating"} and event.target == "start"


def test_submit_assigns_k_experts_by_workload_never_the_annotator(
    project: Any, image: Image, experts: list[Any], class_id: int
) -> None:
    # The image's annotator is an expert too: they must never review their own image.
    annotating_expert, done, busy = experts
    other = image_create(project, seed=7, width=W, height=H)
    other_cells = annotate(other, annotating_expert, [square(5, 5)], class_id)
    submit_image(other, annotating_expert)  # assigns the two idle experts
    assert {r.pk for r in reviewers_of(other)} == {done.pk, busy.pk}
    review(done, other, accept_all(other_cells))  # `done` has no open review left, `busy` has one
    free = member(project, Role.EXPERT, username="free")
    annotate(image, annotating_expert, [square(10, 10)], class_id)
    body = submit_image(image, annotating_expert)
    assert body["status"] == "in_review" and body["annotator"] == annotating_expert.pk
    # Fewest open reviews first (free: 0, done: 0, busy: 1); never the annotator.
    assert {r.pk for r in reviewers_of(image)} == {free.pk, done.pk}
    events = AuditEvent.objects.filter(image=image, action="review.assign")
    assert events.count() == 2 and all(e.after["manual"] is False for e in events)


def test_annotations_locked_while_in_review(image: Image, annotator: Any, experts: list[Any], class_id: int) -> None:
    annotate(image, annotator, [square(10, 10)], class_id)
    submit_image(image, annotator)
    image.refresh_from_db()
    before = Cell.objects.filter(image=image).count()
    response = client_for(annotator).put(
        f"/api/v1/images/{image.pk}/cells", {"revision": image.revision, "cells": []}, format="json"
    )
    assert response.status_code == 409 and "locked" in response.json()["detail"]
    assert response.json()["status"] == "in_review"
    restore = client_for(annotator).post(
        f"/api/v1/images/{image.pk}/history/0/restore", {"revision": image.revision}, format="json"
    )
    assert restore.status_code == 409
    assert Cell.objects.filter(image=image).count() == before


def test_wrong_role_and_wrong_state_are_refused_and_change_nothing(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, outsider: Any, class_id: int
) -> None:
    # Submitting a new image (nothing annotated): wrong state.
    response = transition(annotator, image, "submit")
    assert response.status_code == 409 and "allowed from: annotating" in response.json()["detail"]
    annotate(image, annotator, [square(10, 10)], class_id)
    events = AuditEvent.objects.count()
    assert transition(annotator, image, "reopen").status_code == 403  # an annotator may not reopen
    assert transition(experts[0], image, "close_review").status_code == 403
    assert transition(annotator, image, "fly").status_code == 400
    assert transition(admin_user, image, "start_adjudication").status_code == 409
    # Another annotator may not submit someone else's image.
    stranger = member(project, Role.ANNOTATOR)
    assert transition(stranger, image, "submit").status_code == 403
    image.refresh_from_db()
    assert image.status == "annotating" and AuditEvent.objects.count() == events
    submit_image(image, annotator)
    again = transition(annotator, image, "submit")
    assert again.status_code == 409 and again.json()["status"] == "in_review"
    # Outsiders do not even learn that the image exists.
    assert transition(outsider, image, "reopen").status_code == 404


def test_allowed_actions(image: Image, annotator: Any, admin_user: Any, class_id: int) -> None:
    annotate(image, annotator, [square(10, 10)], class_id)
    body = client_for(annotator).get(f"/api/v1/images/{image.pk}/transition").json()
    assert body == {"status": "annotating", "annotator": annotator.pk, "allowed_actions": ["submit"]}
    assert client_for(admin_user).get(f"/api/v1/images/{image.pk}/transition").json()["allowed_actions"] == ["submit"]


# --- consensus with two experts ------------------------------------------------------------


def test_two_experts_agree_image_verified_with_provenance(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20), square(60, 10, 20)])
    first = review(a, image, accept_all(cells))
    assert first["submitted_now"] is True and first["image_status"] == "in_review"
    second = review(b, image, accept_all(cells))
    assert second["image_status"] == "verified"
    gold = verified(image)
    assert [c.polygon for c in gold] == [square(10, 10, 20), square(60, 10, 20)]
    provenance = gold[0].provenance
    assert gold[0].source == "consensus"
    assert provenance["origin_cell_id"] == cells[0] and provenance["fusion"] == "accepted"
    assert sorted(provenance["accepted_by"]) == sorted([a.pk, b.pk]) and provenance["edited_by"] == []
    assert provenance["annotation_author_id"] == annotator.pk and provenance["correction"] == "added"
    pair = PairAgreement.objects.get(image=image)
    assert (pair.f1, pair.mean_iou, pair.dice, pair.matched) == (1.0, 1.0, 1.0, 2)
    listed = client_for(annotator).get(f"/api/v1/images/{image.pk}/cells?layer=verified").json()["cells"]
    assert len(listed) == 2 and listed[0]["layer"] == "verified"


def test_one_expert_rejects_goes_to_adjudication(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20), square(60, 10, 20)])
    review(a, image, accept_all(cells))
    body = review(b, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
    assert body["image_status"] == "disputed"
    assert verified(image) == []  # nothing is gold before adjudication
    # Experts who are not adjudicators may not adjudicate.
    assert client_for(a).get(f"/api/v1/images/{image.pk}/adjudication").status_code == 403
    view = client_for(admin_user).get(f"/api/v1/images/{image.pk}/adjudication").json()
    assert view["status"] == "disputed" and view["agreed"] == 1
    (dispute,) = view["disputes"]
    assert dispute["reason"] == "quorum" and dispute["origin_cell_id"] == cells[1]
    versions = {v["username"]: v["decision"] for v in dispute["versions"]}
    assert versions == {a.username: "accept", b.username: "reject"}
    assert dispute["annotation"]["polygon"] == square(60, 10, 20)
    decided = client_for(admin_user).post(
        f"/api/v1/images/{image.pk}/adjudication",
        {"decisions": [{"dispute_id": dispute["id"], "choice": "reject"}]},
        format="json",
    )
    assert decided.status_code == 200, decided.content
    assert decided.json()["status"] == "verified"
    assert [c.polygon for c in verified(image)] == [square(10, 10, 20)]
    assert AuditEvent.objects.filter(action="adjudication.decide", image=image).count() == 1
    # A verified image is not adjudicated again.
    again = client_for(admin_user).post(
        f"/api/v1/images/{image.pk}/adjudication",
        {"decisions": [{"dispute_id": dispute["id"], "choice": "reject"}]},
        format="json",
    )
    assert again.status_code == 409


def test_adjudicator_keeps_an_experts_version(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, [{"cell_id": cells[0], "decision": "edit", "polygon": rect(10, 10, 20, 16)}])
    review(b, image, [{"cell_id": cells[0], "decision": "reject"}])
    dispute = client_for(admin_user).get(f"/api/v1/images/{image.pk}/adjudication").json()["disputes"][0]
    by_user = {v["reviewer_id"]: v for v in dispute["versions"]}
    assert by_user[a.pk]["decision"] == "edit" and by_user[a.pk]["polygon"] == rect(10, 10, 20, 16)
    start = transition(admin_user, image, "start_adjudication")
    assert start.status_code == 200 and start.json()["status"] == "adjudication"
    response = client_for(admin_user).post(
        f"/api/v1/images/{image.pk}/adjudication",
        {"decisions": [{"dispute_id": dispute["id"], "choice": str(by_user[a.pk]["review_id"])}]},
        format="json",
    )
    assert response.status_code == 200, response.content
    (gold,) = verified(image)
    assert gold.polygon == rect(10, 10, 20, 16)
    assert gold.provenance["adjudicated_by"] == admin_user.pk and gold.provenance["edited_by"] == [a.pk]
    assert gold.provenance["rejected_by"] == [b.pk] and gold.author_id == admin_user.pk


def test_edits_fused_by_majority_vote(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [rect(10, 10, 40, 20)])
    review(a, image, [{"cell_id": cells[0], "decision": "edit", "polygon": rect(10, 10, 40, 30)}])
    body = review(b, image, [{"cell_id": cells[0], "decision": "edit", "polygon": rect(10, 10, 40, 34)}])
    assert body["image_status"] == "verified"
    (gold,) = verified(image)
    assert gold.provenance["fusion"] == "majority_vote" and sorted(gold.provenance["edited_by"]) == [a.pk, b.pk]
    # Two contours: pixels both cover, plus the tie band up to the average contour (rows 40-41).
    ys = [p[1] for p in gold.polygon]
    assert min(ys) == 10 and max(ys) == 42
    assert 40 * 30 < gold.area < 40 * 34


def test_added_cell_confirmed_by_both(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, accept_all(cells), added=[{"class_id": class_id, "polygon": square(100, 40, 20)}])
    body = review(b, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(100, 40, 20, 18)}])
    assert body["image_status"] == "verified"
    added = [c for c in verified(image) if c.provenance["origin_cell_id"] is None]
    assert len(added) == 1 and sorted(added[0].provenance["added_by"]) == sorted([a.pk, b.pk])


def test_added_cell_by_one_expert_is_disputed(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, accept_all(cells), added=[{"class_id": class_id, "polygon": square(100, 40, 20)}])
    body = review(b, image, accept_all(cells))
    assert body["image_status"] == "disputed"
    (dispute,) = client_for(admin_user).get(f"/api/v1/images/{image.pk}/adjudication").json()["disputes"]
    assert dispute["reason"] == "added" and dispute["annotation"] is None
    assert {v["decision"] for v in dispute["versions"]} == {"add", "absent"}
    review_a = next(v["review_id"] for v in dispute["versions"] if v["decision"] == "add")
    client_for(admin_user).post(
        f"/api/v1/images/{image.pk}/adjudication",
        {"decisions": [{"dispute_id": dispute["id"], "choice": str(review_a)}]},
        format="json",
    )
    assert len(verified(image)) == 2


def test_adjudication_in_several_calls(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20), square(60, 10, 20)])
    review(a, image, accept_all(cells))
    review(b, image, [{"cell_id": c, "decision": "reject"} for c in cells])
    url = f"/api/v1/images/{image.pk}/adjudication"
    first, second = client_for(admin_user).get(url).json()["disputes"]
    bad = client_for(admin_user).post(url, {"decisions": [{"dispute_id": first["id"], "choice": "own"}]}, format="json")
    assert bad.status_code == 400 and "decisions.0" in bad.json()["errors"]
    own = {"dispute_id": first["id"], "choice": "own", "polygon": square(12, 12, 16)}
    partial = client_for(admin_user).post(url, {"decisions": [own]}, format="json")
    assert partial.json()["status"] == "adjudication" and verified(image) == []
    keep = {"dispute_id": second["id"], "choice": "annotation"}
    done = client_for(admin_user).post(url, {"decisions": [keep]}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert done.json()["status"] == "verified"
    replay = client_for(admin_user).post(url, {"decisions": [keep]}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert replay.status_code == 200 and replay.json() == done.json()
    assert sorted(c.polygon[0] for c in verified(image)) == [[12, 12], [60, 10]]


def test_class_disagreement_is_disputed(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int, other_class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, accept_all(cells))
    edit = {"cell_id": cells[0], "decision": "edit", "polygon": square(10, 10, 20), "class_id": other_class_id}
    assert review(b, image, [edit])["image_status"] == "disputed"


# --- three experts -------------------------------------------------------------------------


def test_three_experts_quorum_two(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    project.experts_required, project.quorum = 3, 2
    project.save()
    cells, reviewers = setup_review(project, image, annotator, class_id, [square(10, 10, 20), square(60, 10, 20)])
    assert len(reviewers) == 3
    a, b, c = reviewers
    review(a, image, accept_all(cells))
    review(b, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
    body = review(c, image, [{"cell_id": cells[0], "decision": "reject"}, {"cell_id": cells[1], "decision": "reject"}])
    # Cell 0: two of three accept (quorum 2) -> verified; cell 1: one supporter -> disputed.
    assert body["image_status"] == "disputed"
    image.refresh_from_db()
    round_ = image.verification_rounds.get()
    assert round_.summary == {"reviews": 3, "verified": 1, "disputed": 1, "rejected": 0, "fused": 0}
    assert round_.agreed[0]["rejected_by"] == [c.pk]
    assert PairAgreement.objects.filter(image=image).count() == 3


def test_three_experts_edits_fused_exactly(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    project.experts_required = 3
    project.save()
    cells, reviewers = setup_review(project, image, annotator, class_id, [rect(10, 10, 40, 20)])
    heights = [24, 28, 30]
    for user, h in zip(reviewers, heights, strict=True):
        body = review(user, image, [{"cell_id": cells[0], "decision": "edit", "polygon": rect(10, 10, 40, h)}])
    assert body["image_status"] == "verified"
    (gold,) = verified(image)
    # Three contours: a pixel is kept when two of three cover it, i.e. the median height (28).
    assert gold.area == 40 * 28 and {p[1] for p in gold.polygon} == {10, 38}


# --- blindness, removal, idempotency -------------------------------------------------------


def test_reviews_are_blind_until_submitted(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    client_for(b).put(
        f"/api/v1/images/{image.pk}/reviews/mine",
        {"decisions": [{"cell_id": cells[0], "decision": "reject"}], "comments": [{"text": "too pale"}]},
        format="json",
    )
    refused = client_for(a).get(f"/api/v1/images/{image.pk}/reviews")
    assert refused.status_code == 403 and "blind" in refused.json()["detail"]
    # An annotator never reads reviews before the round is theirs to read; non-reviewers get 403/404.
    assert client_for(annotator).get(f"/api/v1/images/{image.pk}/reviews").status_code == 403
    assert client_for(annotator).get(f"/api/v1/images/{image.pk}/reviews/mine").status_code == 403
    mine = client_for(b).get(f"/api/v1/images/{image.pk}/reviews/mine").json()
    assert mine["decisions"] == [{"cell_id": cells[0], "decision": "reject"}] and mine["status"] == "assigned"
    assert mine["comments"][0]["text"] == "too pale"
    review(a, image, accept_all(cells))
    seen = client_for(a).get(f"/api/v1/images/{image.pk}/reviews").json()
    # b has not submitted: a sees only submitted reviews, never b's draft.
    assert [r["reviewer"] for r in seen["reviews"]] == [a.pk]
    assert {x["reviewer"]: x["status"] for x in seen["assignments"]} == {a.pk: "submitted", b.pk: "assigned"}
    admin_view = client_for(admin_user).get(f"/api/v1/images/{image.pk}/reviews").json()
    assert [r["reviewer"] for r in admin_view["reviews"]] == [a.pk]


def test_expert_removed_mid_review_is_replaced(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    (spare,) = [e for e in experts if e.pk not in (a.pk, b.pk)]
    client_for(a).put(
        f"/api/v1/images/{image.pk}/reviews/mine",
        {"decisions": [{"cell_id": cells[0], "decision": "reject"}]},
        format="json",
    )
    membership = project.memberships.get(user=a)
    response = client_for(admin_user).delete(f"/api/v1/projects/{project.pk}/members/{membership.pk}")
    assert response.status_code == 204
    cancelled = Review.objects.get(image=image, reviewer=a)
    assert cancelled.status == "cancelled" and not ReviewDecision.objects.filter(review=cancelled).exists()
    assert {r.pk for r in reviewers_of(image)} == {b.pk, spare.pk}
    assert AuditEvent.objects.filter(action="review.cancel", image=image).exists()
    review(b, image, accept_all(cells))
    assert review(spare, image, accept_all(cells))["image_status"] == "verified"


def test_expert_removed_without_replacement_leaves_open_slot(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int
) -> None:
    a, b = member(project, Role.EXPERT), member(project, Role.EXPERT)
    cells = annotate(image, annotator, [square(10, 10, 20)], class_id)
    submit_image(image, annotator)
    review(b, image, accept_all(cells))
    # Demoting the expert to annotator also releases the open review.
    membership = project.memberships.get(user=a)
    client_for(admin_user).patch(
        f"/api/v1/projects/{project.pk}/members/{membership.pk}", {"role": "annotator"}, format="json"
    )
    image.refresh_from_db()
    assert image.status == "in_review"
    assignments = client_for(admin_user).get(f"/api/v1/images/{image.pk}/assignments").json()
    assert assignments["open_slots"] == 1
    assert AuditEvent.objects.filter(action="review.unstaffed", image=image).exists()
    queue = client_for(admin_user).get(f"/api/v1/me/queue?project={project.pk}").json()
    assert [i["id"] for i in queue["assign"]["images"]] == [image.pk]
    # Closing early needs the quorum (2 by default): refused with one review.
    assert transition(admin_user, image, "close_review").status_code == 409
    # The admin assigns a reviewer by hand (the annotator may not review their own image).
    refused = client_for(admin_user).post(
        f"/api/v1/images/{image.pk}/assignments", {"reviewer": annotator.pk}, format="json"
    )
    assert refused.status_code == 400
    assigned = client_for(admin_user).post(
        f"/api/v1/images/{image.pk}/assignments", {"reviewer": admin_user.pk}, format="json"
    )
    assert assigned.status_code == 201 and assigned.json()["manual"] is True
    # An admin who reviews the image is blind until submitting, like any expert.
    assert client_for(admin_user).get(f"/api/v1/images/{image.pk}/reviews").status_code == 403
    assert review(admin_user, image, accept_all(cells))["image_status"] == "verified"


def test_close_review_early_with_quorum(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    project.experts_required, project.quorum = 3, 2
    project.save()
    cells, (a, b, c) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, accept_all(cells))
    assert transition(admin_user, image, "close_review").status_code == 409
    review(b, image, accept_all(cells))
    response = transition(admin_user, image, "close_review")
    assert response.status_code == 200 and response.json()["status"] == "verified"
    assert Review.objects.get(image=image, reviewer=c).status == "cancelled"


def test_same_review_submitted_twice_is_idempotent(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, _b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    first = review(a, image, accept_all(cells))
    events = AuditEvent.objects.count()
    second = client_for(a).post(f"/api/v1/images/{image.pk}/reviews/mine/submit", {}, format="json")
    assert second.status_code == 200 and second.json()["submitted_now"] is False
    assert second.json()["decisions"] == first["decisions"] and AuditEvent.objects.count() == events
    # A submitted review can no longer change.
    changed = client_for(a).put(
        f"/api/v1/images/{image.pk}/reviews/mine", {"decisions": accept_all(cells)}, format="json"
    )
    assert changed.status_code == 409


def test_submit_needs_a_decision_per_cell(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, _b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20), square(60, 10, 20)])
    client_for(a).put(f"/api/v1/images/{image.pk}/reviews/mine", {"decisions": accept_all(cells[:1])}, format="json")
    refused = client_for(a).post(f"/api/v1/images/{image.pk}/reviews/mine/submit", {}, format="json")
    assert refused.status_code == 400 and str(cells[1]) in refused.json()["errors"]["decisions"]
    done = client_for(a).post(
        f"/api/v1/images/{image.pk}/reviews/mine/submit", {"accept_undecided": True}, format="json"
    )
    assert done.status_code == 200 and done.json()["counts"]["accepted"] == 2


def test_draft_validation_names_the_item(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, _b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    body = {
        "decisions": [
            {"cell_id": cells[0], "decision": "edit"},
            {"cell_id": 999999, "decision": "accept"},
        ],
        "added": [{"class_id": class_id, "polygon": [[0, 0], [1, 1]]}],
        "comments": [{"text": ""}],
    }
    response = client_for(a).put(f"/api/v1/images/{image.pk}/reviews/mine", body, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"decisions.0", "decisions.1", "added.0", "comments.0"}


# --- reopen, settings, queue ---------------------------------------------------------------


def test_reopen_withdraws_gold_and_starts_a_new_round(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, accept_all(cells))
    review(b, image, accept_all(cells))
    assert transition(annotator, image, "reopen").status_code == 403
    response = transition(admin_user, image, "reopen")
    assert response.status_code == 200 and response.json()["status"] == "annotating"
    assert verified(image) == [] and not CorrectionRecord.objects.filter(image=image).exists()
    annotate(image, annotator, [square(12, 12, 20)], class_id)  # writable again
    submit_image(image, annotator)
    assert sorted(image.verification_rounds.values_list("number", flat=True)) == [1, 2]
    # Round 1 stays readable as history.
    old = client_for(a).get(f"/api/v1/images/{image.pk}/reviews?round=1")
    assert old.status_code == 200 and len(old.json()["reviews"]) == 2


def test_reopen_mid_review_cancels_drafts(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, _b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    client_for(a).put(f"/api/v1/images/{image.pk}/reviews/mine", {"decisions": accept_all(cells)}, format="json")
    transition(admin_user, image, "reopen")
    assert set(Review.objects.filter(image=image).values_list("status", flat=True)) == {"cancelled"}
    assert not ReviewDecision.objects.filter(review__image=image).exists()


def test_verification_settings_and_expert_adjudicator(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    url = f"/api/v1/projects/{project.pk}/verification"
    assert client_for(annotator).patch(url, {"active_learning_order": "uncertainty"}, format="json").status_code == 403
    bad = client_for(admin_user).patch(
        url, {"adjudicators": [annotator.pk], "active_learning_order": "random", "quorum": 5}, format="json"
    )
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"adjudicators", "active_learning_order"}
    bad_quorum = client_for(admin_user).patch(url, {"quorum": 5}, format="json")
    assert bad_quorum.status_code == 400 and "quorum" in bad_quorum.json()["errors"]
    judge = experts[2]
    ok = client_for(admin_user).patch(url, {"adjudicators": [judge.pk], "experts_required": 2}, format="json")
    assert ok.status_code == 200
    assert ok.json() == {
        "experts_required": 2,
        "quorum": None,
        "match_iou": 0.5,
        "adjudicators": [judge.pk],
        "active_learning_order": "none",
    }
    assert AuditEvent.objects.filter(action="verification.settings").exists()
    # The expert adjudicator may adjudicate a disputed image.
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, accept_all(cells))
    review(b, image, [{"cell_id": cells[0], "decision": "reject"}])
    assert judge.pk not in (a.pk, b.pk)
    assert client_for(judge).get(f"/api/v1/images/{image.pk}/adjudication").status_code == 200
    assert client_for(a).get(f"/api/v1/images/{image.pk}/adjudication").status_code == 403


def test_work_queue_follows_active_learning_order(
    project: Any, annotator: Any, experts: list[Any], admin_user: Any, class_id: int, django_assert_max_num_queries: Any
) -> None:
    from inference.services import proposals_store
    from training.services.registry import model_version_baseline

    version = model_version_baseline(project=project)
    images = [image_create(project, seed=s, width=W, height=H) for s in range(4)]
    for img, score in zip(images, [0.9, 0.2, 0.6, None], strict=True):
        if score is not None:
            contour = SimpleNamespace(
                label=1, bbox=(10, 10, 20, 20), points=square(10, 10, 20), area=400.0, score=score
            )
            proposals_store(image=img, model_version=version, contours=[contour])
    url = f"/api/v1/me/queue?project={project.pk}&limit=10"
    plain = client_for(annotator).get(url).json()
    assert [i["id"] for i in plain["annotate"]["images"]] == [i.pk for i in images]
    client_for(admin_user).patch(
        f"/api/v1/projects/{project.pk}/verification", {"active_learning_order": "uncertainty"}, format="json"
    )
    with django_assert_max_num_queries(12):
        ranked = client_for(annotator).get(url).json()
    assert ranked["order"] == "uncertainty"
    assert [i["id"] for i in ranked["annotate"]["images"]] == [images[i].pk for i in (1, 2, 0, 3)]
    # The annotator's own image in progress comes first; submitted images go to the reviewers' queues.
    annotate(images[3], annotator, [square(10, 10, 20)], class_id)
    assert client_for(annotator).get(url).json()["annotate"]["images"][0]["id"] == images[3].pk
    submit_image(images[3], annotator)
    reviewer = reviewers_of(images[3])[0]
    queue = client_for(reviewer).get(url).json()
    assert queue["review"]["count"] == 1 and queue["review"]["images"][0]["id"] == images[3].pk
    assert queue["adjudicate"]["count"] == 0
    assert client_for(annotator).get("/api/v1/me/queue").status_code == 400


def test_disagreement_order_ranks_reopened_images_by_past_agreement(
    project: Any, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    client_for(admin_user).patch(
        f"/api/v1/projects/{project.pk}/verification", {"active_learning_order": "disagreement"}, format="json"
    )
    disputed_slide = image_create(project, seed=1, width=W, height=H, slide_code="S1")
    fresh_same_slide = image_create(project, seed=2, width=W, height=H, slide_code="S1")
    fresh_other = image_create(project, seed=3, width=W, height=H, slide_code="S2")
    cells, (a, b) = setup_review(project, disputed_slide, annotator, class_id, [square(10, 10, 20)])
    review(a, disputed_slide, accept_all(cells))
    review(b, disputed_slide, [{"cell_id": cells[0], "decision": "reject"}])
    url = f"/api/v1/me/queue?project={project.pk}&limit=10"
    order = [i["id"] for i in client_for(member(project, Role.ANNOTATOR)).get(url).json()["annotate"]["images"]]
    assert order == [fresh_same_slide.pk, fresh_other.pk]


# --- analytics -----------------------------------------------------------------------------


def test_agreement_hand_computed(
    project: Any,
    image: Image,
    annotator: Any,
    experts: list[Any],
    admin_user: Any,
    class_id: int,
    django_assert_max_num_queries: Any,
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20), square(60, 10, 20)])
    review(a, image, accept_all(cells))
    review(
        b,
        image,
        [
            {"cell_id": cells[0], "decision": "accept"},
            {"cell_id": cells[1], "decision": "edit", "polygon": rect(60, 10, 20, 16)},
        ],
    )
    with django_assert_max_num_queries(15):
        body = client_for(admin_user).get(f"/api/v1/projects/{project.pk}/agreement").json()
    (row,) = body["per_image"]
    assert row["image"] == image.pk and row["f1"] == 1.0 and row["dice"] == pytest.approx(1440 / 1520)
    (pair,) = body["pairs"]
    # Matched: both cells (IoU 1 and 320/400 = 0.8). Dice: 2 * 720 / (800 + 720).
    assert pair["f1"] == 1.0 and pair["mean_iou"] == pytest.approx(0.9)
    assert pair["dice"] == pytest.approx(1440 / 1520)
    experts_rows = {r["reviewer"]: r for r in body["experts"]}
    assert experts_rows[b.pk]["edit_rate"] == 0.5 and experts_rows[b.pk]["acceptance_rate"] == 0.5
    assert experts_rows[a.pk]["acceptance_rate"] == 1.0 and experts_rows[a.pk]["consensus_f1"] == 1.0
    assert len(experts_rows[a.pk]["by_month"]) == 1
    assert body["summary"]["verified_images"] == 1 and body["summary"]["pairs"] == 1
    assert client_for(a).get(f"/api/v1/projects/{project.pk}/agreement").status_code == 403
    per_image = client_for(admin_user).get(f"/api/v1/images/{image.pk}/agreement").json()
    assert per_image["pairs"][0]["f1"] == 1.0


def test_correction_analytics_per_model_version(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    from inference.services import proposals_store
    from training.services.registry import model_version_baseline

    version = model_version_baseline(project=project)
    shapes = [square(10, 10, 20), square(60, 10, 20), square(110, 10, 20), square(160, 10, 20)]
    contours = [SimpleNamespace(label=1, bbox=(0, 0, 1, 1), points=p, area=400.0, score=0.8) for p in shapes]
    proposals_store(image=image, model_version=version, contours=contours)
    proposals = list(Cell.objects.filter(image=image, layer=Layer.PROPOSAL).order_by("id"))
    client = client_for(annotator)
    accepted = client.post(
        f"/api/v1/images/{image.pk}/proposals/accept",
        {"revision": 0, "ids": [proposals[0].pk, proposals[1].pk]},
        format="json",
    )
    assert accepted.status_code == 200, accepted.content
    client.post(f"/api/v1/images/{image.pk}/proposals/reject", {"ids": [proposals[2].pk]}, format="json")
    # proposals[3] stays open (ignored); the annotator draws one cell by hand.
    image.refresh_from_db()
    current = client.get(f"/api/v1/images/{image.pk}/cells").json()["cells"]
    kept = [{"id": c["id"], "class_id": c["class_id"], "polygon": c["polygon"]} for c in current]
    response = client.put(
        f"/api/v1/images/{image.pk}/cells",
        {"revision": image.revision, "cells": [*kept, {"class_id": class_id, "polygon": square(100, 60, 20)}]},
        format="json",
    )
    assert response.status_code == 200
    cells = [c["id"] for c in response.json()["cells"]]
    submit_image(image, annotator)
    a, b = reviewers_of(image)
    edit = {"cell_id": cells[1], "decision": "edit", "polygon": rect(60, 10, 20, 16)}
    review(a, image, [{"cell_id": cells[0], "decision": "accept"}, edit, {"cell_id": cells[2], "decision": "accept"}])
    review(b, image, [{"cell_id": cells[0], "decision": "accept"}, edit, {"cell_id": cells[2], "decision": "accept"}])
    body = client_for(annotator).get(f"/api/v1/projects/{project.pk}/corrections").json()
    (row,) = body["model_versions"]
    assert row["model_version"] == version.pk
    assert (row["kept"], row["edited"], row["added"], row["deleted"], row["ignored"]) == (1, 1, 1, 1, 1)
    assert row["edited_mean_iou"] == pytest.approx(0.8)
    assert row["kept_rate"] == pytest.approx(1 / 3) and row["proposal_recall"] == pytest.approx(2 / 3)
    gold = {c.provenance["correction"]: c for c in verified(image)}
    assert gold["kept"].model_version_id == version.pk and gold["kept"].provenance["proposal_id"] == proposals[0].pk
    assert gold["edited"].provenance["proposal_iou"] == pytest.approx(0.8)


def test_audit_visible_to_admins_only(
    project: Any, image: Image, annotator: Any, experts: list[Any], admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10, 10, 20)])
    review(a, image, accept_all(cells))
    review(b, image, accept_all(cells))
    actions = {
        e["action"] for e in client_for(admin_user).get(f"/api/v1/projects/{project.pk}/audit").json()["results"]
    }
    assert {
        "image.transition",
        "review.assign",
        "review.draft",
        "review.submit",
        "consensus",
        "image.verified",
    } <= actions
    assert client_for(a).get(f"/api/v1/projects/{project.pk}/audit").status_code == 403


def test_reviews_list_query_count(
    project: Any,
    image: Image,
    annotator: Any,
    experts: list[Any],
    admin_user: Any,
    class_id: int,
    django_assert_max_num_queries: Any,
) -> None:
    cells, (a, b) = setup_review(project, image, annotator, class_id, [square(10 + 30 * i, 10, 20) for i in range(6)])
    review(a, image, accept_all(cells), comments=[{"cell_id": cells[0], "text": "ok"}])
    review(b, image, [{"cell_id": c, "decision": "reject"} for c in cells])
    with django_assert_max_num_queries(12):
        body = client_for(admin_user).get(f"/api/v1/images/{image.pk}/reviews").json()
    assert len(body["reviews"]) == 2 and len(body["reviews"][1]["decisions"]) == 6
    with django_assert_max_num_queries(10):
        adjudication = client_for(admin_user).get(f"/api/v1/images/{image.pk}/adjudication").json()
    assert len(adjudication["disputes"]) == 6


def test_openapi_schema_builds(admin_user: Any) -> None:
    response = client_for(admin_user).get("/api/v1/schema")
    assert response.status_code == 200
    text = response.content.decode()
    assert "/api/v1/images/{image_id}/reviews/mine/submit" in text and "/api/v1/me/queue" in text
