"""The work queue at service level (docs/api.md, "Assignment and work queue" and "Settings"):
its sections per role and the active-learning orders of the images waiting for annotation."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import Cell, CellSource, Image, Layer, Role
from annotations.services.cells import cell_geometry
from annotations.services.workflow import image_presegmented
from cytoseg.geometry import polygon_clean
from review.selectors import work_queue
from review.services.settings import verification_settings_update
from review.tests.support import (
    accept_all,
    annotate,
    drive_to,
    prepared,
    rect,
    reject_all,
    reviewed,
    settings_set,
)
from tests.factories import image_create, member
from training.services.registry import model_version_baseline

pytestmark = pytest.mark.django_db

SECTIONS = ("annotate", "review", "adjudicate", "assign")


def ids(queue: dict[str, Any], section: str) -> list[int]:
    return [i.pk for i in queue[section]["images"]]


def counts(queue: dict[str, Any]) -> dict[str, int]:
    return {s: queue[s]["count"] for s in SECTIONS}


def proposals(image: Image, class_id: int, scores: list[float]) -> None:
    version = model_version_baseline(project=image.project)
    for i, score in enumerate(scores):
        clean = polygon_clean(rect(4 + 14 * i, 4, 10, 10), width=image.width, height=image.height, max_vertices=100)
        Cell.objects.create(
            image=image,
            layer=Layer.PROPOSAL,
            cell_class_id=class_id,
            **cell_geometry(clean),
            score=score,
            source=CellSource.MODEL,
            model_version=version,
        )
    image_presegmented(image=image)


# --- sections -------------------------------------------------------------------------------


def test_sections_per_role(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    judge = member(project, Role.EXPERT, username="judge")
    verification_settings_update(project=project, user=admin_user, data={"adjudicators": [judge.pk]})
    disputed = image_create(project, seed=1)
    drive_to("disputed", image=disputed, annotator=annotator, admin=admin_user, class_id=class_id)
    in_review = image_create(project, seed=2)
    drive_to("in_review", image=in_review, annotator=annotator, admin=admin_user, class_id=class_id)
    settings_set(project, experts_required=5)
    understaffed = image_create(project, seed=3)
    drive_to("in_review", image=understaffed, annotator=annotator, admin=admin_user, class_id=class_id)
    waiting = image  # new
    reviewer = experts[2]  # experts 0 and 1 reviewed `disputed`; the load puts 2 first next
    assert reviewer in {r.reviewer for r in in_review.reviews.all()}
    by_user = {
        u.username: work_queue(user=u, project=project, limit=10) for u in (annotator, reviewer, judge, admin_user)
    }
    assert ids(by_user["annotator"], "annotate") == [waiting.pk]
    assert counts(by_user["annotator"]) == {"annotate": 1, "review": 0, "adjudicate": 0, "assign": 0}
    assert ids(by_user[reviewer.username], "review") == [in_review.pk, understaffed.pk]
    assert by_user[reviewer.username]["adjudicate"]["count"] == 0 and by_user[reviewer.username]["assign"]["count"] == 0
    assert ids(by_user["judge"], "adjudicate") == [disputed.pk]
    assert by_user["judge"]["assign"]["count"] == 0
    admin_queue = by_user[admin_user.username]
    assert ids(admin_queue, "adjudicate") == [disputed.pk]
    # K = 5 with four experts: the last image has an open slot.
    assert ids(admin_queue, "assign") == [understaffed.pk]
    assert ids(admin_queue, "annotate") == [waiting.pk]
    assert all(by_user[u]["order"] == "none" for u in by_user)


def test_annotate_lists_own_images_in_progress_first(
    project: Any, annotator: Any, admin_user: Any, class_id: int
) -> None:
    images = [image_create(project, seed=s) for s in range(4)]
    other = member(project, Role.ANNOTATOR)
    annotate(images[3], annotator, [rect(4, 4, 12, 12)], class_id)  # mine, in progress
    annotate(images[1], other, [rect(4, 4, 12, 12)], class_id)  # someone else's
    submitted = image_create(project, seed=9)
    prepared(submitted, annotator, [rect(4, 4, 12, 12)], class_id)  # no experts: stays submitted
    queue = work_queue(user=annotator, project=project, limit=10)
    assert ids(queue, "annotate") == [images[3].pk, images[0].pk, images[2].pk]
    assert queue["annotate"]["count"] == 3
    # `limit` caps the list, `count` is the full number.
    capped = work_queue(user=annotator, project=project, limit=2)
    assert ids(capped, "annotate") == [images[3].pk, images[0].pk] and capped["annotate"]["count"] == 3
    assert ids(work_queue(user=other, project=project, limit=10), "annotate") == [
        images[1].pk,
        images[0].pk,
        images[2].pk,
    ]


def test_review_lists_open_assignments_oldest_first(
    project: Any, annotator: Any, experts: list[Any], class_id: int
) -> None:
    settings_set(project, experts_required=3)
    first, second, third = (image_create(project, seed=s) for s in range(3))
    cells_first, _ = prepared(first, annotator, [rect(4, 4, 12, 12)], class_id)
    prepared(second, annotator, [rect(4, 4, 12, 12)], class_id)
    prepared(third, annotator, [rect(4, 4, 12, 12)], class_id)
    expert = experts[0]
    assert ids(work_queue(user=expert, project=project), "review") == [first.pk, second.pk, third.pk]
    reviewed(expert, first, accept_all(cells_first))  # submitted: no longer in the queue
    queue = work_queue(user=expert, project=project, limit=1)
    assert ids(queue, "review") == [second.pk] and queue["review"]["count"] == 2


def test_adjudicate_lists_disputed_and_adjudication_images(
    project: Any, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    images = [image_create(project, seed=s) for s in range(3)]
    drive_to("disputed", image=images[0], annotator=annotator, admin=admin_user, class_id=class_id)
    drive_to("adjudication", image=images[1], annotator=annotator, admin=admin_user, class_id=class_id)
    drive_to("verified", image=images[2], annotator=annotator, admin=admin_user, class_id=class_id)
    queue = work_queue(user=admin_user, project=project)
    assert sorted(ids(queue, "adjudicate")) == [images[0].pk, images[1].pk]


# --- active-learning orders -----------------------------------------------------------------


def test_uncertainty_order_lowest_mean_proposal_score_first(
    project: Any, annotator: Any, admin_user: Any, class_id: int
) -> None:
    spread, low, high, bare = (image_create(project, seed=s) for s in range(4))
    proposals(spread, class_id, [0.1, 0.9])  # mean 0.5 (its lowest score is the lowest of all)
    proposals(low, class_id, [0.4, 0.4])  # mean 0.4
    proposals(high, class_id, [0.8])
    plain = work_queue(user=annotator, project=project, limit=10)
    assert ids(plain, "annotate") == [spread.pk, low.pk, high.pk, bare.pk]  # upload order
    verification_settings_update(project=project, user=admin_user, data={"active_learning_order": "uncertainty"})
    ranked = work_queue(user=annotator, project=project, limit=10)
    assert ranked["order"] == "uncertainty"
    assert ids(ranked, "annotate") == [low.pk, spread.pk, high.pk, bare.pk]  # no proposals last


def test_disagreement_order_lowest_past_agreement_of_the_slide_first(
    project: Any, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    verification_settings_update(project=project, user=admin_user, data={"active_learning_order": "disagreement"})
    # History: slide S1 disagreed (pair F1 0), slide S2 agreed (pair F1 1).
    for slide, agree in (("S1", False), ("S2", True)):
        done = image_create(project, seed=10 + agree, slide_code=slide)
        cells, (a, b) = prepared(done, annotator, [rect(4, 4, 12, 12)], class_id)
        reviewed(a, done, accept_all(cells))
        reviewed(b, done, accept_all(cells) if agree else reject_all(cells))
    no_slide = image_create(project, seed=1)
    other_slide = image_create(project, seed=2, slide_code="S3")
    agreed = image_create(project, seed=3, slide_code="S2")
    disagreed = image_create(project, seed=4, slide_code="S1")
    queue = work_queue(user=member(project, Role.ANNOTATOR), project=project, limit=10)
    assert queue["order"] == "disagreement"
    # Lowest agreement first; images without history last, in upload order.
    assert ids(queue, "annotate") == [disagreed.pk, agreed.pk, no_slide.pk, other_slide.pk]


def test_disagreement_order_prefers_the_images_own_history(
    project: Any, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    verification_settings_update(project=project, user=admin_user, data={"active_learning_order": "disagreement"})
    # Both images of slide S1 have history: `own_low` disagreed (F1 0), `own_high` agreed (F1 1);
    # the slide's mean (0.5) would rank them alike.
    own_low, own_high = image_create(project, seed=1, slide_code="S1"), image_create(project, seed=2, slide_code="S1")
    for img, agree in ((own_high, True), (own_low, False)):
        cells, (a, b) = prepared(img, annotator, [rect(4, 4, 12, 12)], class_id)
        reviewed(a, img, accept_all(cells))
        reviewed(b, img, accept_all(cells) if agree else reject_all(cells))
    middle = image_create(project, seed=3, slide_code="S2")
    cells, (a, b) = prepared(middle, annotator, [rect(4, 4, 12, 12), rect(24, 4, 12, 12)], class_id)
    reviewed(a, middle, accept_all(cells))
    reviewed(b, middle, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}])
    # No workflow path brings an image with history back to new (reopen goes to annotating,
    # where it is its annotator's own image); the selector's rule is checked on the rows.
    Image.objects.filter(pk__in=[own_low.pk, own_high.pk, middle.pk]).update(status="new")
    queue = work_queue(user=member(project, Role.ANNOTATOR), project=project, limit=10)
    # Own mean pair F1: own_low 0, middle 2/3, own_high 1.
    assert ids(queue, "annotate") == [own_low.pk, middle.pk, own_high.pk]


def reasons(queue: dict[str, Any], section: str) -> list[tuple[str, float | None]]:
    return [i.queue_reason for i in queue[section]["images"]]


def test_each_image_says_why_it_comes_next(
    project: Any, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    mine, scored, bare = (image_create(project, seed=s) for s in range(3))
    annotate(mine, annotator, [rect(4, 4, 12, 12)], class_id)
    proposals(scored, class_id, [0.25, 0.75])
    assert reasons(work_queue(user=annotator, project=project), "annotate") == [
        ("in_progress", None),
        ("upload_order", None),
        ("upload_order", None),
    ]
    verification_settings_update(project=project, user=admin_user, data={"active_learning_order": "uncertainty"})
    queue = work_queue(user=annotator, project=project)
    assert reasons(queue, "annotate") == [("in_progress", None), ("uncertainty", 0.5), ("no_proposals", None)]
    assert ids(queue, "annotate") == [mine.pk, scored.pk, bare.pk]
    verification_settings_update(project=project, user=admin_user, data={"active_learning_order": "disagreement"})
    assert reasons(work_queue(user=annotator, project=project), "annotate")[1:] == [("no_history", None)] * 2
    settings_set(project, experts_required=5)
    understaffed = image_create(project, seed=7)
    drive_to("in_review", image=understaffed, annotator=annotator, admin=admin_user, class_id=class_id)
    admin_queue = work_queue(user=admin_user, project=project)
    assert reasons(admin_queue, "assign") == [("open_slots", 2.0)]  # three experts for K = 5
    reviewer = next(r.reviewer for r in understaffed.reviews.all())
    assert reasons(work_queue(user=reviewer, project=project), "review") == [("assigned", None)]


def test_queue_api_sends_the_reason(project: Any, annotator: Any, class_id: int) -> None:
    from rest_framework.test import APIClient

    image_create(project, seed=1)
    client = APIClient()
    client.force_authenticate(annotator)
    body = client.get(f"/api/v1/me/queue?project={project.pk}").json()
    assert body["annotate"]["images"][0]["reason"] == "upload_order"
    assert body["annotate"]["images"][0]["reason_value"] is None
