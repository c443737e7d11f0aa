"""Blind, independent reviews at service level (docs/api.md, "Reviews"): the draft and its
validation, when a review can still change, submission (a decision per cell, accept_undecided,
idempotency, the consensus on the last submit) and who may read a round's reviews."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import AuditEvent, Image, Role
from core.errors import ConflictError, NotFoundError, PermissionDeniedError, ServiceValidationError
from review.models import Review, ReviewComment, ReviewDecision, ReviewStatus
from review.selectors import reviews_visible
from review.services.reviews import COMMENT_MAX_CHARS, review_draft_save, review_submit
from review.services.settings import verification_settings_update
from review.services.workflow import image_transition, review_assign, review_unassign
from review.tests.support import (
    accept_all,
    annotate,
    audits,
    draft,
    fresh,
    open_reviewers,
    prepared,
    rect,
    reviewed,
    settings_set,
    status_of,
    submit,
)
from tests.factories import UserFactory, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(image: Image, annotator: Any, experts: list[Any], class_id: int) -> tuple[list[int], list[Any]]:
    """Two annotation cells, submitted; the first two experts assigned."""
    return prepared(image, annotator, [rect(4, 4, 12, 12), rect(24, 4, 12, 12)], class_id)


def decisions_of(review: Review) -> list[tuple[Any, ...]]:
    return list(review.decisions.order_by("id").values_list("cell_id", "decision", "cell_class_id", "polygon"))


# --- the draft ------------------------------------------------------------------------------


def test_draft_holds_decisions_added_cells_and_comments(
    image: Image, setup: Any, class_id: int, other_class_id: int
) -> None:
    cells, (a, _b) = setup
    review = draft(
        a,
        image,
        [
            {"cell_id": cells[0], "decision": "accept"},
            {"cell_id": cells[1], "decision": "edit", "polygon": rect(24, 4, 12, 10), "class_id": other_class_id},
        ],
        added=[{"class_id": class_id, "polygon": rect(40, 30, 10, 10)}],
        comments=[{"cell_id": cells[1], "text": "  too big  "}, {"cell_id": None, "text": "blurry"}],
    )
    assert review.status == ReviewStatus.ASSIGNED and review.submitted_at is None
    assert decisions_of(review) == [
        (cells[0], "accept", None, None),
        (cells[1], "edit", other_class_id, rect(24, 4, 12, 10)),
        (None, "add", class_id, rect(40, 30, 10, 10)),
    ]
    assert list(review.comments.order_by("id").values_list("cell_id", "text")) == [
        (cells[1], "too big"),
        (None, "blurry"),
    ]
    # The audit log holds sizes only (a draft is blind).
    (event,) = audits(image=image, action="review.draft")
    assert event.after == {"items": 3, "comments": 2} and event.target == str(review.pk)


def test_saving_a_draft_replaces_the_previous_one(image: Image, setup: Any) -> None:
    cells, (a, _b) = setup
    draft(a, image, accept_all(cells), comments=[{"text": "first"}])
    review = draft(a, image, [{"cell_id": cells[1], "decision": "reject"}])
    assert decisions_of(review) == [(cells[1], "reject", None, None)]
    assert not review.comments.exists()


BAD_DRAFTS: list[tuple[str, dict[str, Any], str]] = [
    ("decision_not_an_object", {"decisions": ["accept"]}, "decisions.0"),
    ("unknown_cell", {"decisions": [{"cell_id": 999999, "decision": "accept"}]}, "decisions.0"),
    ("cell_id_not_int", {"decisions": [{"cell_id": "1", "decision": "accept"}]}, "decisions.0"),
    (
        "decided_twice",
        {"decisions": [{"cell_id": 0, "decision": "accept"}, {"cell_id": 0, "decision": "reject"}]},
        "decisions.1",
    ),
    ("unknown_decision", {"decisions": [{"cell_id": 0, "decision": "maybe"}]}, "decisions.0"),
    (
        "accept_with_polygon",
        {"decisions": [{"cell_id": 0, "decision": "accept", "polygon": rect(4, 4, 9, 9)}]},
        "decisions.0",
    ),
    ("reject_with_class", {"decisions": [{"cell_id": 0, "decision": "reject", "class_id": "CLASS"}]}, "decisions.0"),
    ("edit_without_polygon", {"decisions": [{"cell_id": 0, "decision": "edit"}]}, "decisions.0"),
    (
        "edit_bad_polygon",
        {"decisions": [{"cell_id": 0, "decision": "edit", "polygon": [[1, 1], [2, 2]]}]},
        "decisions.0",
    ),
    (
        "edit_unknown_class",
        {"decisions": [{"cell_id": 0, "decision": "edit", "polygon": rect(4, 4, 9, 9), "class_id": 999999}]},
        "decisions.0",
    ),
    ("decisions_not_a_list", {"decisions": {"cell_id": 0}}, "decisions"),
    ("added_unknown_class", {"added": [{"class_id": 999999, "polygon": rect(40, 30, 9, 9)}]}, "added.0"),
    ("added_bad_polygon", {"added": [{"class_id": "CLASS", "polygon": [[0, 0]]}]}, "added.0"),
    ("added_not_an_object", {"added": ["cell"]}, "added.0"),
    ("comment_empty", {"comments": [{"text": "   "}]}, "comments.0"),
    ("comment_too_long", {"comments": [{"text": "x" * (COMMENT_MAX_CHARS + 1)}]}, "comments.0"),
    ("comment_unknown_cell", {"comments": [{"text": "ok"}, {"cell_id": 999999, "text": "hm"}]}, "comments.1"),
]


def _resolve(value: Any, cells: list[int], class_id: int) -> Any:
    """Put real ids in a BAD_DRAFTS body: cell_id 0 is the first cell, "CLASS" a valid class."""
    if isinstance(value, list):
        return [_resolve(v, cells, class_id) for v in value]
    if isinstance(value, dict):
        out = {k: _resolve(v, cells, class_id) for k, v in value.items()}
        if out.get("cell_id") == 0:
            out["cell_id"] = cells[0]
        return out
    return class_id if value == "CLASS" else value


@pytest.mark.parametrize(("body", "key"), [(b, k) for _, b, k in BAD_DRAFTS], ids=[n for n, _, _ in BAD_DRAFTS])
def test_draft_validation_names_the_item_and_saves_nothing(
    image: Image, setup: Any, class_id: int, body: dict[str, Any], key: str
) -> None:
    cells, (a, _b) = setup
    kept = draft(a, image, accept_all(cells), comments=[{"text": "kept"}])
    events = AuditEvent.objects.count()
    body = _resolve(body, cells, class_id)
    with pytest.raises(ServiceValidationError) as refused:
        review_draft_save(
            image=fresh(image),
            user=a,
            decisions=body.get("decisions", []),
            added=body.get("added", []),
            comments=body.get("comments", []),
        )
    assert set(refused.value.errors) == {key}
    assert decisions_of(kept) == [(c, "accept", None, None) for c in cells]
    assert list(kept.comments.values_list("text", flat=True)) == ["kept"]
    assert AuditEvent.objects.count() == events


def test_draft_errors_are_reported_together(image: Image, setup: Any, class_id: int) -> None:
    cells, (a, _b) = setup
    with pytest.raises(ServiceValidationError) as refused:
        review_draft_save(
            image=fresh(image),
            user=a,
            decisions=[{"cell_id": cells[0], "decision": "edit"}, {"cell_id": 999999, "decision": "accept"}],
            added=[{"class_id": class_id, "polygon": [[0, 0], [1, 1]]}],
            comments=[{"text": ""}],
        )
    assert set(refused.value.errors) == {"decisions.0", "decisions.1", "added.0", "comments.0"}


def test_only_assigned_reviewers_write_reviews(
    project: Any, image: Image, setup: Any, annotator: Any, admin_user: Any, experts: list[Any]
) -> None:
    cells, (a, _b) = setup
    spare = experts[2]
    for user in (annotator, spare, admin_user):
        with pytest.raises(PermissionDeniedError):
            draft(user, image, accept_all(cells))
        with pytest.raises(PermissionDeniedError):
            review_submit(image=fresh(image), user=user, accept_undecided=True)
    # A cancelled assignment no longer writes either.
    review_unassign(review=Review.objects.get(image=image, reviewer=a), actor=admin_user)
    with pytest.raises(PermissionDeniedError):
        draft(a, image, accept_all(cells))
    assert not ReviewDecision.objects.exists()


def test_a_submitted_review_can_no_longer_change(image: Image, setup: Any) -> None:
    cells, (a, _b) = setup
    review = reviewed(a, image, accept_all(cells))
    with pytest.raises(ConflictError) as refused:
        draft(a, image, [{"cell_id": cells[0], "decision": "reject"}])
    assert refused.value.payload == {"status": "submitted"}
    assert decisions_of(review) == [(c, "accept", None, None) for c in cells]


def test_reviews_are_written_only_while_the_image_is_in_review(image: Image, setup: Any) -> None:
    cells, (a, _b) = setup
    draft(a, image, accept_all(cells))
    # No workflow path leaves an open assignment on an image outside review (reopen and
    # close_review cancel them); the guard is checked by putting the image in another state.
    Image.objects.filter(pk=image.pk).update(status="disputed")
    with pytest.raises(ConflictError) as refused:
        draft(a, image, [{"cell_id": cells[0], "decision": "reject"}])
    assert refused.value.payload == {"status": "disputed"}
    with pytest.raises(ConflictError):
        review_submit(image=fresh(image), user=a)
    review = Review.objects.get(image=image, reviewer=a)
    assert review.status == ReviewStatus.ASSIGNED and decisions_of(review) == [(c, "accept", None, None) for c in cells]


# --- submission -----------------------------------------------------------------------------


def test_submit_needs_a_decision_for_every_cell(image: Image, setup: Any) -> None:
    cells, (a, _b) = setup
    draft(a, image, accept_all(cells[:1]))
    with pytest.raises(ServiceValidationError) as refused:
        review_submit(image=fresh(image), user=a)
    assert set(refused.value.errors) == {"decisions"} and str([cells[1]]) in refused.value.errors["decisions"]
    review = Review.objects.get(image=image, reviewer=a)
    assert review.status == ReviewStatus.ASSIGNED and review.submitted_at is None and review.decisions.count() == 1
    assert not audits(image=image, action="review.submit")


def test_accept_undecided_accepts_the_cells_left_undecided(image: Image, setup: Any, class_id: int) -> None:
    cells, (a, _b) = setup
    draft(
        a,
        image,
        [{"cell_id": cells[1], "decision": "edit", "polygon": rect(24, 4, 12, 10)}],
        added=[{"class_id": class_id, "polygon": rect(40, 30, 10, 10)}],
    )
    review, submitted_now = review_submit(image=fresh(image), user=a, accept_undecided=True)
    assert submitted_now is True and review.status == ReviewStatus.SUBMITTED and review.submitted_at is not None
    assert (review.n_accept, review.n_reject, review.n_edit, review.n_add) == (1, 0, 1, 1)
    assert ReviewDecision.objects.get(review=review, cell_id=cells[0]).decision == "accept"
    (event,) = audits(image=image, action="review.submit")
    assert event.after == {"accepted": 1, "rejected": 0, "edited": 1, "added": 1, "auto_accepted": 1}


def test_submit_is_idempotent(image: Image, setup: Any) -> None:
    cells, (a, _b) = setup
    first = reviewed(
        a, image, [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "reject"}]
    )
    state = (first.submitted_at, first.updated_at, decisions_of(first), AuditEvent.objects.count())
    again, submitted_now = review_submit(image=fresh(image), user=a, accept_undecided=True)
    assert submitted_now is False and again.pk == first.pk
    again.refresh_from_db()
    assert (again.submitted_at, again.updated_at, decisions_of(again), AuditEvent.objects.count()) == state
    assert status_of(image) == "in_review"


def test_only_the_last_submit_runs_the_consensus(image: Image, setup: Any) -> None:
    cells, (a, b) = setup
    reviewed(a, image, accept_all(cells))
    assert status_of(image) == "in_review" and not audits(image=image, action="consensus")
    reviewed(b, image, accept_all(cells))
    assert status_of(image) == "verified"
    (event,) = audits(image=image, action="consensus")
    assert event.after["reviews"] == 2 and event.actor_id == b.pk


def test_the_consensus_waits_for_open_slots(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int
) -> None:
    # K = 2 with a single expert: their submit alone does not end the round.
    expert = member(project, Role.EXPERT)
    cells, reviewers = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    assert reviewers == [expert]
    reviewed(expert, image, accept_all(cells))
    assert status_of(image) == "in_review" and not audits(image=image, action="consensus")
    review_assign(image=fresh(image), actor=admin_user, reviewer=admin_user)
    reviewed(admin_user, image, accept_all(cells))
    assert status_of(image) == "verified"


# --- blind reviews --------------------------------------------------------------------------


def test_reviews_are_blind_until_the_caller_submitted(image: Image, setup: Any) -> None:
    cells, (a, b) = setup
    draft(b, image, [{"cell_id": cells[0], "decision": "reject"}], comments=[{"text": "secret"}])
    with pytest.raises(PermissionDeniedError):
        reviews_visible(image=fresh(image), user=a)
    mine = reviewed(a, image, accept_all(cells))
    chosen, visible = reviews_visible(image=fresh(image), user=a)
    # Only submitted reviews: b's draft is never shown.
    assert chosen.number == 1 and [r.pk for r in visible] == [mine.pk]
    assert all(r.status == ReviewStatus.SUBMITTED for r in visible)
    with pytest.raises(PermissionDeniedError):
        reviews_visible(image=fresh(image), user=b)
    other = reviewed(b, image, accept_all(cells))
    assert [r.pk for r in reviews_visible(image=fresh(image), user=b)[1]] == [mine.pk, other.pk]


@pytest.mark.parametrize(
    ("who", "may_read"),
    [
        ("admin", True),
        ("judge", True),  # an expert named adjudicator, not reviewing this image
        ("superuser", True),
        ("bystander", False),  # an expert of the project not reviewing this image
        ("annotator", False),
        ("cancelled", False),  # an expert whose assignment was cancelled
    ],
)
def test_who_may_read_the_reviews_of_a_round(
    project: Any,
    image: Image,
    setup: Any,
    admin_user: Any,
    annotator: Any,
    experts: list[Any],
    who: str,
    may_read: bool,
) -> None:
    cells, (a, b) = setup
    judge = member(project, Role.EXPERT, username="judge")
    verification_settings_update(project=project, user=admin_user, data={"adjudicators": [judge.pk]})
    submitted = reviewed(a, image, accept_all(cells))
    if who == "cancelled":
        review_unassign(review=Review.objects.get(image=image, reviewer=b), actor=admin_user)
    user = {
        "admin": admin_user,
        "judge": judge,
        "superuser": UserFactory(is_superuser=True),
        "bystander": experts[2],
        "annotator": annotator,
        "cancelled": b,
    }[who]
    if may_read:
        _, visible = reviews_visible(image=fresh(image), user=user)
        assert [r.pk for r in visible] == [submitted.pk]
    else:
        with pytest.raises(PermissionDeniedError):
            reviews_visible(image=fresh(image), user=user)


def test_an_admin_reviewing_the_image_is_blind_too(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int
) -> None:
    expert = member(project, Role.EXPERT)
    cells, _ = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    review_assign(image=fresh(image), actor=admin_user, reviewer=admin_user)
    reviewed(expert, image, accept_all(cells))
    with pytest.raises(PermissionDeniedError):
        reviews_visible(image=fresh(image), user=admin_user)
    reviewed(admin_user, image, accept_all(cells))
    assert len(reviews_visible(image=fresh(image), user=admin_user)[1]) == 2


def test_blindness_is_per_round(
    project: Any, image: Image, setup: Any, annotator: Any, admin_user: Any, class_id: int
) -> None:
    cells, (a, b) = setup
    first = [reviewed(a, image, accept_all(cells)).pk, reviewed(b, image, accept_all(cells)).pk]
    image_transition(image=fresh(image), user=admin_user, action="reopen")
    settings_set(project, experts_required=3)
    annotate(image, annotator, [rect(4, 4, 12, 12)], class_id)
    submit(image, annotator)
    assert a in open_reviewers(image)
    # `a` submitted in round 1 (readable) but has an open review in round 2 (blind).
    assert [r.pk for r in reviews_visible(image=fresh(image), user=a, round_number=1)[1]] == first
    with pytest.raises(PermissionDeniedError):
        reviews_visible(image=fresh(image), user=a)
    with pytest.raises(PermissionDeniedError):
        reviews_visible(image=fresh(image), user=a, round_number=2)
    with pytest.raises(NotFoundError):
        reviews_visible(image=fresh(image), user=a, round_number=3)


def test_no_round_no_reviews(image: Image, admin_user: Any) -> None:
    with pytest.raises(NotFoundError):
        reviews_visible(image=image, user=admin_user)


def test_comments_are_kept_with_the_submitted_review(image: Image, setup: Any) -> None:
    cells, (a, b) = setup
    reviewed(a, image, accept_all(cells), comments=[{"cell_id": cells[0], "text": "round"}])
    reviewed(b, image, accept_all(cells))
    _, visible = reviews_visible(image=fresh(image), user=b)
    assert [list(r.comments.values_list("cell_id", "text")) for r in visible] == [[(cells[0], "round")], []]
    assert ReviewComment.objects.count() == 1
