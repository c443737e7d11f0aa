"""Assignment of experts at service level (docs/api.md, "Assignment and work queue"): the
automatic order on submit, unstaffed rounds, manual assignment and its validation, unassign,
and what happens to open reviews when an expert leaves the project or loses the review role."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import AuditEvent, Image, Role
from annotations.services.projects import membership_remove, membership_set
from core.errors import ConflictError, PermissionDeniedError, ServiceValidationError
from review.models import Review, ReviewComment, ReviewDecision, ReviewStatus, VerificationRound
from review.selectors import work_queue
from review.services.workflow import review_assign, review_unassign
from review.tests.support import (
    accept_all,
    annotate,
    audits,
    draft,
    drive_to,
    fresh,
    live_reviewers,
    open_reviewers,
    prepared,
    rect,
    reviewed,
    settings_set,
    status_of,
    submit,
)
from tests.factories import ProjectFactory, image_create, member

pytestmark = pytest.mark.django_db


def load(user: Any, project: Any, *statuses: str) -> None:
    """Give ``user`` reviews with ``statuses`` on other images of ``project`` (one round each)."""
    for status in statuses:
        other = image_create(project, seed=100 + Review.objects.count())
        verification_round = VerificationRound.objects.create(
            image=other, number=1, experts_required=2, quorum=2, match_iou=0.5, base_revision=0
        )
        Review.objects.create(round=verification_round, image=other, reviewer=user, status=status)


def assign_queue(user: Any, project: Any) -> list[int]:
    return [i.pk for i in work_queue(user=user, project=project, limit=50)["assign"]["images"]]


# --- automatic assignment -------------------------------------------------------------------


def test_automatic_assignment_order(project: Any, image: Image, admin_user: Any, class_id: int) -> None:
    settings_set(project, experts_required=3)
    # The annotator is an expert with nothing to do: never assigned to their own image.
    annotating_expert = member(project, Role.EXPERT, username="annotating-expert")
    busy = member(project, Role.EXPERT, username="busy")  # one open review
    done = member(project, Role.EXPERT, username="done")  # no open review, one done
    idle_low = member(project, Role.EXPERT, username="idle-low")  # nothing in this project
    idle_high = member(project, Role.EXPERT, username="idle-high")  # same, higher id
    member(project, Role.ANNOTATOR, username="plain-annotator")  # not an expert
    load(busy, project, ReviewStatus.ASSIGNED)
    load(done, project, ReviewStatus.SUBMITTED, ReviewStatus.CANCELLED)
    # Cancelled reviews and other projects' reviews do not count.
    load(idle_low, project, ReviewStatus.CANCELLED, ReviewStatus.CANCELLED)
    elsewhere = ProjectFactory()
    load(idle_low, elsewhere, ReviewStatus.ASSIGNED, ReviewStatus.SUBMITTED)
    assert idle_low.pk < idle_high.pk
    annotate(image, annotating_expert, [rect(4, 4, 12, 12)], class_id)
    assert submit(image, annotating_expert).status == "in_review"
    # Fewest open reviews, then fewest done, then user id; the admin is not an expert.
    assert open_reviewers(image) == [idle_low, idle_high, done]
    events = audits(image=image, action="review.assign")
    assert [e.after for e in events] == [
        {"review": r.pk, "reviewer": r.reviewer_id, "manual": False}
        for r in Review.objects.filter(image=image).order_by("id")
    ]
    assert all(r.manual is False and r.assigned_by_id is None for r in Review.objects.filter(image=image))
    assert not audits(image=image, action="review.unstaffed")


def test_fewer_experts_than_k_review_with_those_there_are(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int
) -> None:
    settings_set(project, experts_required=3)
    a, b = member(project, Role.EXPERT), member(project, Role.EXPERT)
    prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    assert status_of(image) == "in_review" and open_reviewers(image) == [a, b]
    (unstaffed,) = audits(image=image, action="review.unstaffed")
    assert unstaffed.after == {"round": 1, "open_slots": 1}
    assert assign_queue(admin_user, project) == [image.pk]
    assert assign_queue(a, project) == []  # the assign queue is the admins'


def test_no_expert_leaves_the_image_submitted_for_the_admins(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int
) -> None:
    prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    assert status_of(image) == "submitted" and not Review.objects.filter(image=image).exists()
    (unstaffed,) = audits(image=image, action="review.unstaffed")
    assert unstaffed.after == {"round": 1, "open_slots": 2}
    assert VerificationRound.objects.get(image=image).status == "open"
    assert assign_queue(admin_user, project) == [image.pk]
    # An admin assigns by hand (an admin may review): the image is in review.
    review = review_assign(image=fresh(image), actor=admin_user, reviewer=admin_user)
    assert review.manual is True and review.assigned_by_id == admin_user.pk and review.status == "assigned"
    assert status_of(image) == "in_review"
    assert assign_queue(admin_user, project) == [image.pk]  # one slot still open


# --- manual assignment ----------------------------------------------------------------------


def test_manual_assignment_of_an_expert_or_admin(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int
) -> None:
    settings_set(project, experts_required=2)
    expert = member(project, Role.EXPERT)
    prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)  # assigns the only expert
    assert open_reviewers(image) == [expert]
    other_admin = member(project, Role.ADMIN)
    review = review_assign(image=fresh(image), actor=admin_user, reviewer=other_admin)
    assert (review.reviewer_id, review.manual, review.assigned_by_id) == (other_admin.pk, True, admin_user.pk)
    event = audits(image=image, action="review.assign")[-1]
    assert event.after == {"review": review.pk, "reviewer": other_admin.pk, "manual": True}
    assert event.actor_id == admin_user.pk and event.target == other_admin.username
    assert assign_queue(admin_user, project) == []


@pytest.mark.parametrize("who", ["annotator_role", "outsider", "image_annotator", "already_assigned"])
def test_manual_assignment_refuses_ineligible_reviewers(
    project: Any, image: Image, admin_user: Any, class_id: int, who: str
) -> None:
    settings_set(project, experts_required=3)
    annotating_expert = member(project, Role.EXPERT, username="annotating-expert")
    expert = member(project, Role.EXPERT)
    annotate(image, annotating_expert, [rect(4, 4, 12, 12)], class_id)
    submit(image, annotating_expert)
    assert open_reviewers(image) == [expert]
    reviewer = {
        "annotator_role": lambda: member(project, Role.ANNOTATOR),
        "outsider": lambda: ProjectFactory().memberships.get().user,
        "image_annotator": lambda: annotating_expert,
        "already_assigned": lambda: expert,
    }[who]()
    reviews, events = Review.objects.count(), AuditEvent.objects.count()
    with pytest.raises(ServiceValidationError) as refused:
        review_assign(image=fresh(image), actor=admin_user, reviewer=reviewer)
    assert set(refused.value.errors) == {"reviewer"}
    assert (Review.objects.count(), AuditEvent.objects.count()) == (reviews, events)


def test_manual_assignment_at_most_k(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    assert len(open_reviewers(image)) == 2
    spare = experts[2]
    with pytest.raises(ConflictError) as refused:
        review_assign(image=fresh(image), actor=admin_user, reviewer=spare)
    assert refused.value.payload == {"status": "in_review"}
    assert Review.objects.filter(image=image).count() == 2


@pytest.mark.parametrize("state", ["new", "annotating", "disputed", "verified"])
def test_manual_assignment_only_while_submitted_or_in_review(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int, state: str
) -> None:
    if state != "new":
        drive_to(state, image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    spare = member(project, Role.EXPERT)
    reviews = Review.objects.count()
    with pytest.raises(ConflictError) as refused:
        review_assign(image=fresh(image), actor=admin_user, reviewer=spare)
    assert refused.value.payload == {"status": state}
    assert Review.objects.count() == reviews and status_of(image) == state


def test_manual_assignment_and_unassign_are_for_admins(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    a, b, spare = experts
    review = Review.objects.get(image=image, reviewer=a)
    before = list(Review.objects.filter(image=image).order_by("id").values_list("reviewer_id", "status"))
    for user in (annotator, b, spare):
        with pytest.raises(PermissionDeniedError):
            review_assign(image=fresh(image), actor=user, reviewer=spare)
        with pytest.raises(PermissionDeniedError):
            review_unassign(review=review, actor=user)
    assert list(Review.objects.filter(image=image).order_by("id").values_list("reviewer_id", "status")) == before


# --- unassign -------------------------------------------------------------------------------


def test_unassign_cancels_the_draft_and_leaves_the_slot_open(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    draft(a, image, accept_all(cells), comments=[{"text": "ok"}])
    review = Review.objects.get(image=image, reviewer=a)
    review_unassign(review=review, actor=admin_user)
    review.refresh_from_db()
    assert review.status == ReviewStatus.CANCELLED and review.cancel_reason == "unassigned by an admin"
    assert review.cancelled_at is not None
    assert not ReviewDecision.objects.filter(review=review).exists()
    assert not ReviewComment.objects.filter(review=review).exists()
    (event,) = audits(image=image, action="review.cancel")
    assert event.before == {"status": "assigned", "draft": {"decisions": 1, "comments": 1}}
    assert event.after == {"status": "cancelled", "reason": "unassigned by an admin"}
    # The slot stays open for a manual assignment even though a spare expert exists.
    assert live_reviewers(image) == [b] and status_of(image) == "in_review"
    assert assign_queue(admin_user, project) == [image.pk]
    replacement = review_assign(image=fresh(image), actor=admin_user, reviewer=experts[2])
    assert replacement.manual is True and set(live_reviewers(image)) == {b, experts[2]}


def test_unassign_refuses_submitted_and_cancelled_reviews(
    image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    submitted = reviewed(a, image, accept_all(cells))
    with pytest.raises(ConflictError):
        review_unassign(review=submitted, actor=admin_user)
    submitted.refresh_from_db()
    assert submitted.status == ReviewStatus.SUBMITTED and submitted.decisions.count() == 1
    open_review = Review.objects.get(image=image, reviewer=b)
    review_unassign(review=open_review, actor=admin_user)
    with pytest.raises(ConflictError):
        review_unassign(review=open_review, actor=admin_user)
    assert len(audits(image=image, action="review.cancel")) == 1


# --- experts leaving ------------------------------------------------------------------------


def _remove(project: Any, user: Any) -> None:
    membership_remove(membership=project.memberships.get(user=user))


def _demote(project: Any, user: Any) -> None:
    membership_set(project=project, user=user, role=Role.ANNOTATOR)


@pytest.mark.parametrize("leave", [_remove, _demote], ids=["removed", "demoted"])
def test_expert_leaving_is_replaced_and_submitted_reviews_stand(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int, leave: Any
) -> None:
    # `a` has submitted a review of another image (it must stand) and drafts one of `image`.
    other = image_create(project, seed=9)
    other_cells, (a, spare) = prepared(other, annotator, [rect(4, 4, 12, 12)], class_id)
    kept = reviewed(a, other, accept_all(other_cells))
    reviewed(spare, other, accept_all(other_cells))
    cells, reviewers = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    (b,) = [e for e in experts if e not in (a, spare)]
    assert reviewers == [b, a]  # fewest reviews done first
    submitted = reviewed(b, image, accept_all(cells))
    draft(a, image, [{"cell_id": cells[0], "decision": "reject"}], comments=[{"text": "no"}])
    leave(project, a)
    cancelled = Review.objects.get(image=image, reviewer=a)
    assert cancelled.status == ReviewStatus.CANCELLED
    assert cancelled.cancel_reason == "reviewer no longer an expert of the project"
    assert not ReviewDecision.objects.filter(review=cancelled).exists()
    assert not ReviewComment.objects.filter(review=cancelled).exists()
    replacement = Review.objects.get(image=image, reviewer=spare)
    assert replacement.status == ReviewStatus.ASSIGNED and replacement.manual is False
    assert live_reviewers(image) == [b, spare]
    kept.refresh_from_db()
    submitted.refresh_from_db()
    assert kept.status == ReviewStatus.SUBMITTED and kept.decisions.count() == 1
    assert submitted.status == ReviewStatus.SUBMITTED
    assert [e.target for e in audits(image=image, action="review.cancel")] == [str(a.pk)]
    # The replacement finishes the round.
    reviewed(spare, image, accept_all(cells))
    assert status_of(image) == "verified"


def test_expert_promoted_to_admin_keeps_open_reviews(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, _b) = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    draft(a, image, accept_all(cells))
    membership_set(project=project, user=a, role=Role.ADMIN)
    review = Review.objects.get(image=image, reviewer=a)
    assert review.status == ReviewStatus.ASSIGNED and review.decisions.count() == 1
    assert not audits(image=image, action="review.cancel")


def test_expert_leaving_without_replacement_leaves_the_slot_open(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int
) -> None:
    a, b = member(project, Role.EXPERT), member(project, Role.EXPERT)
    cells, _ = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    reviewed(b, image, accept_all(cells))
    _demote(project, a)
    assert Review.objects.get(image=image, reviewer=a).status == ReviewStatus.CANCELLED
    # The image waits in review with one open slot; nothing ran the consensus.
    assert status_of(image) == "in_review" and live_reviewers(image) == [b]
    assert VerificationRound.objects.get(image=image).status == "open"
    (unstaffed,) = audits(image=image, action="review.unstaffed")
    assert unstaffed.after == {"round": 1, "open_slots": 1} and unstaffed.actor_id is None
    assert assign_queue(admin_user, project) == [image.pk]


def test_reassignment_never_picks_someone_already_in_the_round(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    a, b, c = experts
    review_unassign(review=Review.objects.get(image=image, reviewer=a), actor=admin_user)
    _demote(project, b)
    # Both slots are open; `a` (unassigned earlier) is in the round already, so only `c` is taken.
    assert live_reviewers(image) == [c]
    assert audits(image=image, action="review.unstaffed")[-1].after == {"round": 1, "open_slots": 1}
