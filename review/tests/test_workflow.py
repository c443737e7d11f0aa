"""The image lifecycle at service level (docs/api.md, "Image states and transitions"): each
action with its role and state rules, refusals that change nothing, the annotation lock from
submission until reopen, the first write, and reopen with its history."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import AuditEvent, Cell, Image, ImageStatus, Layer, Role
from annotations.services.cells import annotation_layer_write, cells_replace, revision_restore
from annotations.services.workflow import image_presegmented
from core.errors import ConflictError, PermissionDeniedError, ServiceValidationError
from cytoseg.geometry import polygon_clean
from review.models import (
    CorrectionRecord,
    Dispute,
    PairAgreement,
    Review,
    ReviewComment,
    ReviewDecision,
    ReviewStatus,
    RoundStatus,
    VerificationRound,
)
from review.services.settings import verification_settings_update
from review.services.workflow import image_transition, transitions_allowed
from review.tests.support import (
    accept_all,
    annotate,
    audits,
    draft,
    drive_to,
    fresh,
    open_reviewers,
    prepared,
    rect,
    reviewed,
    settings_set,
    status_of,
    submit,
    verified_cells,
)
from tests.factories import ProjectFactory, member

pytestmark = pytest.mark.django_db

LOCKED = ["submitted", "in_review", "disputed", "adjudication", "verified"]


def snapshot(image: Image) -> tuple[Any, ...]:
    """Everything a refused action must leave as it was."""
    row = fresh(image)
    return (
        row.status,
        row.annotator_id,
        row.revision,
        AuditEvent.objects.count(),
        VerificationRound.objects.filter(image=image).count(),
        list(Review.objects.filter(image=image).order_by("id").values_list("status", flat=True)),
        list(VerificationRound.objects.filter(image=image).order_by("id").values_list("status", flat=True)),
    )


# --- start and the first write -------------------------------------------------------------


@pytest.mark.parametrize("initial", ["new", "pre_segmented"])
def test_start_moves_to_annotating_and_makes_the_caller_annotator(image: Image, annotator: Any, initial: str) -> None:
    if initial == "pre_segmented":
        image_presegmented(image=image)
    assert status_of(image) == initial
    result = image_transition(image=fresh(image), user=annotator, action="start")
    assert result.status == "annotating" and result.annotator_id == annotator.pk
    (event,) = audits(image=image, action="image.transition")
    assert (event.target, event.before, event.after) == ("start", {"status": initial}, {"status": "annotating"})
    assert event.actor_id == annotator.pk


def test_start_needs_membership(image: Image) -> None:
    outsider = ProjectFactory().memberships.get().user
    before = snapshot(image)
    with pytest.raises(PermissionDeniedError):
        image_transition(image=fresh(image), user=outsider, action="start")
    assert snapshot(image) == before


def _write_save(image: Image, user: Any, class_id: int) -> None:
    cells_replace(image=image, user=user, base_revision=0, cells=[{"class_id": class_id, "polygon": rect(4, 4, 8, 8)}])


def _write_restore(image: Image, user: Any, class_id: int) -> None:
    revision_restore(image=image, user=user, target_revision=0, base_revision=0)


def _write_proposal_accept(image: Image, user: Any, class_id: int) -> None:
    # The path a proposal accept takes (inference.proposals.proposals_accept): added to the layer.
    polygon = polygon_clean(rect(4, 4, 8, 8), width=image.width, height=image.height, max_vertices=100)
    annotation_layer_write(
        image=image,
        user=user,
        base_revision=0,
        desired=[{"id": None, "class_id": class_id, "polygon": polygon, "source": "model", "provenance": {}}],
        action="accept_proposals",
        keep_missing=True,
    )


@pytest.mark.parametrize(
    "write", [_write_save, _write_restore, _write_proposal_accept], ids=["save", "restore", "accept"]
)
@pytest.mark.parametrize("initial", ["new", "pre_segmented"])
def test_first_accepted_write_makes_the_writer_annotator(
    image: Image, annotator: Any, project: Any, class_id: int, write: Any, initial: str
) -> None:
    if initial == "pre_segmented":
        image_presegmented(image=image)
    write(fresh(image), annotator, class_id)
    row = fresh(image)
    assert row.status == "annotating" and row.annotator_id == annotator.pk and row.revision == 1
    event = AuditEvent.objects.get(image=image, action="image.transition")
    assert event.before == {"status": initial} and event.after == {"status": "annotating"}
    # A later writer does not take the image over.
    other = member(project, Role.ANNOTATOR)
    cells_replace(image=fresh(image), user=other, base_revision=1, cells=[])
    row = fresh(image)
    assert row.annotator_id == annotator.pk and row.status == "annotating" and row.revision == 2


def test_refused_writes_do_not_start_the_image(image: Image, annotator: Any, class_id: int) -> None:
    with pytest.raises(ServiceValidationError) as invalid:
        cells_replace(
            image=fresh(image), user=annotator, base_revision=0, cells=[{"class_id": class_id, "polygon": [[0, 0]]}]
        )
    assert set(invalid.value.errors) == {"cells.0"}
    with pytest.raises(ConflictError):
        cells_replace(image=fresh(image), user=annotator, base_revision=5, cells=[])
    row = fresh(image)
    assert (row.status, row.annotator_id, row.revision) == ("new", None, 0)
    assert not AuditEvent.objects.filter(image=image, action="image.transition").exists()


# --- the annotation lock --------------------------------------------------------------------


@pytest.mark.parametrize("state", LOCKED)
def test_annotations_locked_from_submission_until_reopen(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int, state: str
) -> None:
    if state != "submitted":
        for i in range(2):
            member(project, Role.EXPERT, username=f"lock-expert{i}")
    drive_to(state, image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    row = fresh(image)
    cells_before = list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).values_list("pk", "polygon"))
    with pytest.raises(ConflictError) as saved:
        cells_replace(image=row, user=annotator, base_revision=row.revision, cells=[])
    assert "locked until an admin reopens it" in saved.value.detail and saved.value.payload == {"status": state}
    with pytest.raises(ConflictError) as restored:
        revision_restore(image=fresh(image), user=annotator, target_revision=0, base_revision=row.revision)
    assert restored.value.payload == {"status": state}
    # The lock holds for admins too.
    with pytest.raises(ConflictError):
        cells_replace(image=fresh(image), user=admin_user, base_revision=row.revision, cells=[])
    assert fresh(image).revision == row.revision
    assert list(Cell.objects.filter(image=image, layer=Layer.ANNOTATION).values_list("pk", "polygon")) == cells_before
    image_transition(image=fresh(image), user=admin_user, action="reopen")
    written = cells_replace(image=fresh(image), user=annotator, base_revision=row.revision, cells=[])
    assert written.revision == row.revision + 1 and status_of(image) == "annotating"


# --- submit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["annotator", "admin"])
def test_submit_by_the_annotator_or_an_admin_starts_a_round(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int, who: str
) -> None:
    annotate(image, annotator, [rect(4, 4, 12, 12)], class_id)
    settings_set(project, experts_required=2, quorum=None, match_iou=0.6)
    actor = annotator if who == "annotator" else admin_user
    result = submit(image, actor)
    assert result.status == "in_review" and result.annotator_id == annotator.pk
    (current,) = VerificationRound.objects.filter(image=image)
    assert (current.number, current.status, current.experts_required, current.quorum, current.match_iou) == (
        1,
        RoundStatus.OPEN,
        2,
        2,  # quorum null = all K
        0.6,
    )
    assert current.base_revision == result.revision and current.started_by_id == actor.pk
    assert len(open_reviewers(image)) == 2
    moves = [(e.before["status"], e.after["status"]) for e in audits(image=image, action="image.transition")]
    assert moves[-2:] == [("annotating", "submitted"), ("submitted", "in_review")]


@pytest.mark.parametrize("who", ["other_annotator", "expert", "outsider"])
def test_submit_refused_for_others_and_nothing_changes(
    project: Any, image: Image, annotator: Any, experts: list[Any], class_id: int, who: str
) -> None:
    annotate(image, annotator, [rect(4, 4, 12, 12)], class_id)
    user = {
        "other_annotator": lambda: member(project, Role.ANNOTATOR),
        "expert": lambda: experts[0],
        "outsider": lambda: ProjectFactory().memberships.get().user,
    }[who]()
    before = snapshot(image)
    with pytest.raises(PermissionDeniedError):
        image_transition(image=fresh(image), user=user, action="submit")
    assert snapshot(image) == before


# --- refusals -------------------------------------------------------------------------------


def test_unknown_action_is_a_validation_error(image: Image, admin_user: Any) -> None:
    before = snapshot(image)
    with pytest.raises(ServiceValidationError) as refused:
        image_transition(image=fresh(image), user=admin_user, action="fly")
    assert set(refused.value.errors) == {"action"}
    assert snapshot(image) == before


@pytest.mark.parametrize(
    ("state", "action", "who"),
    [
        ("annotating", "reopen", "annotator"),
        ("in_review", "reopen", "expert"),
        ("in_review", "close_review", "annotator"),
        ("in_review", "close_review", "expert"),
        ("disputed", "start_adjudication", "expert"),
        ("disputed", "start_adjudication", "annotator"),
        ("disputed", "reopen", "expert"),
    ],
)
def test_wrong_role_is_refused_and_nothing_changes(
    project: Any,
    image: Image,
    annotator: Any,
    admin_user: Any,
    experts: list[Any],
    class_id: int,
    state: str,
    action: str,
    who: str,
) -> None:
    drive_to(state, image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    # An expert of the project who takes no part in this image (and is no adjudicator).
    user = annotator if who == "annotator" else member(project, Role.EXPERT)
    before = snapshot(image)
    with pytest.raises(PermissionDeniedError):
        image_transition(image=fresh(image), user=user, action=action)
    assert snapshot(image) == before


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("new", "submit"),
        ("new", "close_review"),
        ("new", "reopen"),
        ("annotating", "start"),
        ("annotating", "close_review"),
        ("annotating", "start_adjudication"),
        ("annotating", "reopen"),
        ("in_review", "submit"),
        ("in_review", "start_adjudication"),
        ("disputed", "close_review"),
        ("adjudication", "start_adjudication"),
        ("verified", "submit"),
        ("verified", "close_review"),
    ],
)
def test_wrong_state_is_a_conflict_and_nothing_changes(
    image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int, state: str, action: str
) -> None:
    if state != "new":
        drive_to(state, image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    before = snapshot(image)
    with pytest.raises(ConflictError) as refused:
        image_transition(image=fresh(image), user=admin_user, action=action)
    assert refused.value.payload["status"] == state
    assert refused.value.payload["allowed_actions"] == transitions_allowed(user=admin_user, image=fresh(image))
    assert snapshot(image) == before


ROLES = ("annotator", "admin", "judge", "bystander")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("new", (["start"], ["start"], ["start"], ["start"])),
        ("annotating", (["submit"], ["submit"], [], [])),
        ("in_review", ([], ["reopen"], [], [])),  # close_review: once the quorum is in (below)
        ("disputed", ([], ["start_adjudication", "reopen"], ["start_adjudication"], [])),
        ("adjudication", ([], ["reopen"], [], [])),
        ("verified", ([], ["reopen"], [], [])),
    ],
)
def test_allowed_actions_follow_role_and_state(
    project: Any,
    image: Image,
    annotator: Any,
    admin_user: Any,
    experts: list[Any],
    class_id: int,
    state: str,
    expected: tuple[list[str], ...],
) -> None:
    if state != "new":
        drive_to(state, image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    # Created after the experts, so never assigned automatically before them.
    judge = member(project, Role.EXPERT, username="judge")
    bystander = member(project, Role.EXPERT, username="bystander")
    verification_settings_update(project=project, user=admin_user, data={"adjudicators": [judge.pk]})
    users = dict(zip(ROLES, (annotator, admin_user, judge, bystander), strict=True))
    allowed = tuple(transitions_allowed(user=users[r], image=fresh(image)) for r in ROLES)
    assert allowed == expected


def test_allowed_actions_are_the_ones_the_caller_may_take_now(
    image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    drive_to("in_review", image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    with pytest.raises(ConflictError):
        image_transition(image=fresh(image), user=admin_user, action="close_review")
    assert "close_review" not in transitions_allowed(user=admin_user, image=fresh(image))


# --- close_review and start_adjudication ----------------------------------------------------


def test_close_review_needs_the_quorum_then_cancels_open_reviews(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    settings_set(project, experts_required=3, quorum=2)
    cells, (a, b, c) = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    reviewed(a, image, accept_all(cells))
    draft(c, image, accept_all(cells), comments=[{"text": "pale"}])
    before = snapshot(image)
    with pytest.raises(ConflictError) as refused:
        image_transition(image=fresh(image), user=admin_user, action="close_review")
    assert refused.value.payload == {"status": "in_review"} and "quorum (2)" in refused.value.detail
    assert snapshot(image) == before
    assert "close_review" not in transitions_allowed(user=admin_user, image=fresh(image))
    reviewed(b, image, accept_all(cells))
    assert "close_review" in transitions_allowed(user=admin_user, image=fresh(image))
    result = image_transition(image=fresh(image), user=admin_user, action="close_review")
    assert result.status == "verified"
    cancelled = Review.objects.get(image=image, reviewer=c)
    assert cancelled.status == ReviewStatus.CANCELLED and cancelled.cancel_reason == "round closed early by an admin"
    assert not ReviewDecision.objects.filter(review=cancelled).exists()
    assert not ReviewComment.objects.filter(review=cancelled).exists()
    current = VerificationRound.objects.get(image=image)
    assert current.status == RoundStatus.CLOSED and current.summary["reviews"] == 2
    assert [cell.polygon for cell in verified_cells(image)] == [rect(4, 4, 12, 12)]


@pytest.mark.parametrize("who", ["admin", "judge"])
def test_start_adjudication_moves_disputed_to_adjudication(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int, who: str
) -> None:
    drive_to("disputed", image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    judge = member(project, Role.EXPERT, username="judge")
    verification_settings_update(project=project, user=admin_user, data={"adjudicators": [judge.pk]})
    user = admin_user if who == "admin" else judge
    assert image_transition(image=fresh(image), user=user, action="start_adjudication").status == "adjudication"
    event = audits(image=image, action="image.transition")[-1]
    assert (event.target, event.before, event.after, event.actor_id) == (
        "start_adjudication",
        {"status": "disputed"},
        {"status": "adjudication"},
        user.pk,
    )
    # The round stays disputed until the adjudication is done.
    assert VerificationRound.objects.get(image=image).status == RoundStatus.DISPUTED


# --- reopen ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", LOCKED)
def test_reopen_from_any_locked_state_goes_back_to_annotating(
    project: Any, image: Image, annotator: Any, admin_user: Any, class_id: int, state: str
) -> None:
    if state != "submitted":
        for i in range(2):
            member(project, Role.EXPERT, username=f"reopen-expert{i}")
    drive_to(state, image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    result = image_transition(image=fresh(image), user=admin_user, action="reopen")
    assert result.status == "annotating" and result.annotator_id == annotator.pk
    event = audits(image=image, action="image.transition")[-1]
    assert (event.target, event.before, event.after) == ("reopen", {"status": state}, {"status": "annotating"})
    current = VerificationRound.objects.get(image=image)
    # A verified round is finished history; an unfinished one is cancelled.
    assert current.status == (RoundStatus.CLOSED if state == "verified" else RoundStatus.CANCELLED)
    assert (current.closed_at is not None) is True
    assert not Review.objects.filter(image=image, status=ReviewStatus.ASSIGNED).exists()


def test_reopen_mid_review_cancels_open_reviews_and_discards_drafts(
    image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    done = reviewed(a, image, accept_all(cells), comments=[{"cell_id": cells[0], "text": "fine"}])
    draft(b, image, [{"cell_id": cells[0], "decision": "reject"}], comments=[{"text": "pale"}])
    image_transition(image=fresh(image), user=admin_user, action="reopen")
    open_review = Review.objects.get(image=image, reviewer=b)
    assert open_review.status == ReviewStatus.CANCELLED and open_review.cancel_reason == "image reopened"
    assert open_review.cancelled_at is not None
    assert not ReviewDecision.objects.filter(review=open_review).exists()
    assert not ReviewComment.objects.filter(review=open_review).exists()
    # The submitted review stays as it was.
    done.refresh_from_db()
    assert done.status == ReviewStatus.SUBMITTED
    assert list(ReviewDecision.objects.filter(review=done).values_list("decision", flat=True)) == ["accept"]
    assert ReviewComment.objects.filter(review=done).count() == 1
    cancel = audits(image=image, action="review.cancel")
    assert [e.target for e in cancel] == [str(b.pk)] and cancel[0].before["draft"] == {"decisions": 1, "comments": 1}
    assert VerificationRound.objects.get(image=image).status == RoundStatus.CANCELLED


def test_reopen_withdraws_the_verified_layer_keeps_history_and_next_submit_starts_round_two(
    image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    drive_to("verified_by_adjudication", image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    first = VerificationRound.objects.get(image=image)
    gold = verified_cells(image)
    assert len(gold) == 1 and CorrectionRecord.objects.filter(image=image).count() == 1
    history = (
        list(Review.objects.filter(image=image).order_by("id").values_list("pk", "status", "consensus_f1")),
        list(Dispute.objects.filter(image=image).values_list("pk", "status", "choice")),
        list(PairAgreement.objects.filter(image=image).values_list("pk", "f1")),
    )
    image_transition(image=fresh(image), user=admin_user, action="reopen")
    assert verified_cells(image) == [] and not CorrectionRecord.objects.filter(image=image).exists()
    (withdraw,) = audits(image=image, action="verified.withdraw")
    assert withdraw.before == {"verified_cells": 1} and withdraw.actor_id == admin_user.pk
    assert (
        list(Review.objects.filter(image=image).order_by("id").values_list("pk", "status", "consensus_f1")),
        list(Dispute.objects.filter(image=image).values_list("pk", "status", "choice")),
        list(PairAgreement.objects.filter(image=image).values_list("pk", "f1")),
    ) == history
    first.refresh_from_db()
    assert first.status == RoundStatus.CLOSED
    # Writable again; the next submit starts round 2 on the new revision.
    cells = annotate(image, annotator, [rect(6, 6, 12, 12)], class_id)
    submit(image, annotator)
    second = VerificationRound.objects.get(image=image, number=2)
    assert second.status == RoundStatus.OPEN and second.base_revision == fresh(image).revision
    assert Review.objects.filter(round=second, status=ReviewStatus.ASSIGNED).count() == 2
    reviewers = open_reviewers(image)
    for reviewer in reviewers:
        reviewed(reviewer, image, accept_all(cells))
    assert status_of(image) == ImageStatus.VERIFIED
    assert [c.provenance["round"] for c in verified_cells(image)] == [2]
    assert first.pk != second.pk and VerificationRound.objects.filter(image=image).count() == 2
