"""Adjudication at service level (docs/api.md, "Adjudication"): who may adjudicate, the
choices (a review's version, the annotation, the adjudicator's own contour, reject) and their
refinements, validation, decisions in several calls, and the state rules."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import AuditEvent, Image, Role
from annotations.services.projects import membership_set
from core.errors import ConflictError, PermissionDeniedError, ServiceValidationError
from review.models import CorrectionRecord, Dispute, DisputeStatus, Review, RoundStatus, VerificationRound
from review.selectors import disputes_for_adjudication, may_adjudicate
from review.services.adjudication import adjudication_decide
from review.services.settings import verification_settings_update
from review.services.workflow import image_transition
from review.tests.support import (
    accept_all,
    annotate,
    audits,
    drive_to,
    fresh,
    prepared,
    rect,
    reject_all,
    reviewed,
    status_of,
    submit,
    verified_cells,
)
from tests.factories import ProjectFactory, UserFactory, image_create, member

pytestmark = pytest.mark.django_db

CELL = rect(4, 4, 12, 12)
SECOND = rect(24, 4, 12, 12)
EDITED = rect(24, 4, 12, 9)


@pytest.fixture
def disputed(image: Image, annotator: Any, experts: list[Any], class_id: int) -> dict[str, Any]:
    """Two disputes: `a` accepts the first cell and edits the second, `b` rejects both."""
    cells, (a, b) = prepared(image, annotator, [CELL, SECOND], class_id)
    review_a = reviewed(
        a,
        image,
        [{"cell_id": cells[0], "decision": "accept"}, {"cell_id": cells[1], "decision": "edit", "polygon": EDITED}],
    )
    review_b = reviewed(b, image, reject_all(cells))
    assert status_of(image) == "disputed"
    first, second = Dispute.objects.filter(image=image).order_by("id")
    assert (first.origin_cell_id, second.origin_cell_id) == (cells[0], cells[1])
    return {
        "cells": cells,
        "a": a,
        "b": b,
        "review_a": review_a,
        "review_b": review_b,
        "first": first,
        "second": second,
    }


def decide(image: Image, user: Any, *decisions: dict[str, Any]) -> Image:
    return adjudication_decide(image=fresh(image), user=user, decisions=list(decisions))


def state(image: Image) -> tuple[Any, ...]:
    return (
        status_of(image),
        list(
            Dispute.objects.filter(image=image).order_by("id").values_list("status", "choice", "polygon", "cell_class")
        ),
        len(verified_cells(image)),
        AuditEvent.objects.count(),
    )


# --- who may adjudicate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        ("admin", True),
        ("superuser", True),
        ("named_expert", True),
        ("expert", False),
        ("annotator", False),
        ("named_then_demoted", False),
        ("outsider", False),
    ],
)
def test_who_may_adjudicate(project: Any, admin_user: Any, who: str, allowed: bool) -> None:
    named = member(project, Role.EXPERT, username="named")
    demoted = member(project, Role.EXPERT, username="demoted")
    verification_settings_update(project=project, user=admin_user, data={"adjudicators": [named.pk, demoted.pk]})
    membership_set(project=project, user=demoted, role=Role.ANNOTATOR)
    user = {
        "admin": lambda: admin_user,
        "superuser": lambda: UserFactory(is_superuser=True),
        "named_expert": lambda: named,
        "expert": lambda: member(project, Role.EXPERT),
        "annotator": lambda: member(project, Role.ANNOTATOR),
        "named_then_demoted": lambda: demoted,
        "outsider": lambda: ProjectFactory().memberships.get().user,
    }[who]()
    assert may_adjudicate(user=user, project=project) is allowed


def test_only_adjudicators_decide(
    project: Any, image: Image, annotator: Any, admin_user: Any, disputed: dict[str, Any]
) -> None:
    judge = member(project, Role.EXPERT, username="judge")
    before = state(image)
    for user in (disputed["a"], annotator, judge):
        with pytest.raises(PermissionDeniedError):
            decide(image, user, {"dispute_id": disputed["first"].pk, "choice": "reject"})
    assert state(image) == before
    verification_settings_update(project=project, user=admin_user, data={"adjudicators": [judge.pk]})
    decide(image, judge, {"dispute_id": disputed["first"].pk, "choice": "reject"})
    first = Dispute.objects.get(pk=disputed["first"].pk)
    assert first.status == DisputeStatus.RESOLVED and first.resolved_by_id == judge.pk


# --- choices --------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["review", "annotation", "own", "reject"])
def test_choices(image: Image, admin_user: Any, disputed: dict[str, Any], class_id: int, choice: str) -> None:
    second = disputed["second"]
    decision: dict[str, Any] = {"dispute_id": second.pk, "choice": choice}
    if choice == "review":
        decision["choice"] = str(disputed["review_a"].pk)
    if choice == "own":
        decision["polygon"] = rect(26, 6, 8, 8)
    expected = {"review": EDITED, "annotation": SECOND, "own": rect(26, 6, 8, 8), "reject": None}[choice]
    result = decide(image, admin_user, {"dispute_id": disputed["first"].pk, "choice": "annotation"}, decision)
    assert result.status == "verified"
    second.refresh_from_db()
    assert (second.status, second.choice, second.polygon, second.resolved_by_id) == (
        DisputeStatus.RESOLVED,
        decision["choice"],
        expected,
        admin_user.pk,
    )
    assert second.resolved_at is not None
    assert second.cell_class_id == (None if choice == "reject" else class_id)
    gold = {c.provenance["dispute_id"]: c for c in verified_cells(image)}
    assert gold[disputed["first"].pk].polygon == CELL
    if choice == "reject":
        assert set(gold) == {disputed["first"].pk}
        return
    cell = gold[second.pk]
    assert (cell.polygon, cell.cell_class_id, cell.author_id) == (expected, class_id, admin_user.pk)
    provenance = cell.provenance
    assert provenance["fusion"] == "adjudicated" and provenance["adjudicated_by"] == admin_user.pk
    assert (
        provenance["adjudication_choice"] == decision["choice"] and provenance["origin_cell_id"] == disputed["cells"][1]
    )
    assert provenance["edited_by"] == [disputed["a"].pk] and provenance["rejected_by"] == [disputed["b"].pk]
    assert provenance["review_ids"] == [disputed["review_a"].pk] and provenance["round"] == 1


def test_a_chosen_version_may_be_refined(
    image: Image, admin_user: Any, disputed: dict[str, Any], class_id: int, other_class_id: int
) -> None:
    decide(
        image,
        admin_user,
        {"dispute_id": disputed["first"].pk, "choice": "annotation", "polygon": rect(4, 4, 12, 10)},
        {"dispute_id": disputed["second"].pk, "choice": str(disputed["review_a"].pk), "class_id": other_class_id},
    )
    gold = {c.provenance["dispute_id"]: c for c in verified_cells(image)}
    assert (gold[disputed["first"].pk].polygon, gold[disputed["first"].pk].cell_class_id) == (
        rect(4, 4, 12, 10),
        class_id,
    )
    assert (gold[disputed["second"].pk].polygon, gold[disputed["second"].pk].cell_class_id) == (EDITED, other_class_id)


def test_an_added_cell_is_kept_by_choosing_the_experts_version(
    image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [CELL], class_id)
    review_a = reviewed(a, image, accept_all(cells), added=[{"class_id": class_id, "polygon": rect(40, 28, 12, 12)}])
    reviewed(b, image, accept_all(cells))
    (dispute,) = Dispute.objects.filter(image=image)
    # There is no annotation cell to keep.
    with pytest.raises(ServiceValidationError) as refused:
        decide(image, admin_user, {"dispute_id": dispute.pk, "choice": "annotation"})
    assert set(refused.value.errors) == {"decisions.0"}
    decide(image, admin_user, {"dispute_id": dispute.pk, "choice": str(review_a.pk)})
    assert sorted(c.polygon[0] for c in verified_cells(image)) == [[4, 4], [40, 28]]
    added = next(c for c in verified_cells(image) if c.provenance["origin_cell_id"] is None)
    assert added.provenance["added_by"] == [a.pk] and added.provenance["correction"] == "added"


# --- validation -----------------------------------------------------------------------------

INVALID: list[tuple[str, Any, str]] = [
    ("empty", [], "decisions"),
    ("not_a_list", {"dispute_id": 1}, "decisions"),
    ("unknown_dispute", [{"dispute_id": 999999, "choice": "reject"}], "decisions.0"),
    (
        "decided_twice",
        [{"dispute_id": "FIRST", "choice": "reject"}, {"dispute_id": "FIRST", "choice": "annotation"}],
        "decisions.1",
    ),
    ("own_without_polygon", [{"dispute_id": "FIRST", "choice": "own"}], "decisions.0"),
    ("rejecting_review", [{"dispute_id": "FIRST", "choice": "REVIEW_B"}], "decisions.0"),
    ("unknown_choice", [{"dispute_id": "FIRST", "choice": "keep"}], "decisions.0"),
    ("unknown_class", [{"dispute_id": "FIRST", "choice": "annotation", "class_id": 999999}], "decisions.0"),
    ("bad_polygon", [{"dispute_id": "FIRST", "choice": "own", "polygon": [[1, 1], [2, 2]]}], "decisions.0"),
    (
        "second_item_bad",
        [{"dispute_id": "FIRST", "choice": "reject"}, {"dispute_id": "SECOND", "choice": "own"}],
        "decisions.1",
    ),
]


@pytest.mark.parametrize(("decisions", "key"), [(d, k) for _, d, k in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_decisions_name_the_item_and_save_nothing(
    image: Image, admin_user: Any, disputed: dict[str, Any], decisions: Any, key: str
) -> None:
    names = {"FIRST": disputed["first"].pk, "SECOND": disputed["second"].pk, "REVIEW_B": str(disputed["review_b"].pk)}
    if isinstance(decisions, list):
        decisions = [{k: names.get(v, v) if isinstance(v, str) else v for k, v in d.items()} for d in decisions]
    before = state(image)
    with pytest.raises(ServiceValidationError) as refused:
        adjudication_decide(image=fresh(image), user=admin_user, decisions=decisions)
    assert set(refused.value.errors) == {key}
    # Not even the implied start of the adjudication.
    assert state(image) == before and before[0] == "disputed"


def test_only_disputes_of_the_current_round(
    project: Any, image: Image, annotator: Any, admin_user: Any, disputed: dict[str, Any], class_id: int
) -> None:
    old = disputed["first"]
    image_transition(image=fresh(image), user=admin_user, action="reopen")
    cells = annotate(image, annotator, [CELL], class_id)
    submit(image, annotator)
    reviewers = list(Review.objects.filter(image=image, status="assigned").select_related("reviewer"))
    reviewed(reviewers[0].reviewer, image, accept_all(cells))
    reviewed(reviewers[1].reviewer, image, reject_all(cells))
    assert status_of(image) == "disputed"
    with pytest.raises(ServiceValidationError) as refused:
        decide(image, admin_user, {"dispute_id": old.pk, "choice": "reject"})
    assert set(refused.value.errors) == {"decisions.0"}
    # Nor of another image.
    other = image_create(project, seed=3)
    drive_to("disputed", image=other, annotator=annotator, admin=admin_user, class_id=class_id)
    foreign = Dispute.objects.get(image=other)
    with pytest.raises(ServiceValidationError):
        decide(image, admin_user, {"dispute_id": foreign.pk, "choice": "reject"})
    old.refresh_from_db()
    assert old.status == DisputeStatus.OPEN and Dispute.objects.get(pk=foreign.pk).status == DisputeStatus.OPEN


# --- several calls, the end of the adjudication, state rules --------------------------------


def test_decisions_in_several_calls_and_verified_when_none_is_open(
    image: Image, admin_user: Any, disputed: dict[str, Any]
) -> None:
    first, second = disputed["first"], disputed["second"]
    result = decide(image, admin_user, {"dispute_id": first.pk, "choice": "reject"})
    # The first decision implies start_adjudication; nothing is gold while a dispute is open.
    assert result.status == "adjudication" and verified_cells(image) == []
    assert audits(image=image, action="image.transition")[-1].target == "start_adjudication"
    assert not CorrectionRecord.objects.filter(image=image).exists()
    assert VerificationRound.objects.get(image=image).status == RoundStatus.DISPUTED
    # A decided dispute may be decided again until the image is verified.
    result = decide(
        image,
        admin_user,
        {"dispute_id": first.pk, "choice": "annotation"},
        {"dispute_id": second.pk, "choice": "own", "polygon": rect(26, 6, 8, 8)},
    )
    assert result.status == "verified"
    assert sorted(c.polygon[0] for c in verified_cells(image)) == [[4, 4], [26, 6]]
    first.refresh_from_db()
    assert first.choice == "annotation" and first.polygon == CELL
    events = audits(image=image, action="adjudication.decide")
    assert [(e.target, e.after["choice"]) for e in events] == [
        (f"dispute {first.pk}", "reject"),
        (f"dispute {first.pk}", "annotation"),
        (f"dispute {second.pk}", "own"),
    ]
    assert events[1].before == {"status": "resolved", "choice": "reject"}
    current = VerificationRound.objects.get(image=image)
    assert current.status == RoundStatus.CLOSED and current.closed_at is not None
    assert CorrectionRecord.objects.filter(image=image).count() == 2
    assert not Review.objects.filter(image=image, consensus_f1__isnull=True).exists()


def test_adjudication_also_continues_after_start_adjudication(
    image: Image, admin_user: Any, disputed: dict[str, Any]
) -> None:
    image_transition(image=fresh(image), user=admin_user, action="start_adjudication")
    result = decide(
        image,
        admin_user,
        {"dispute_id": disputed["first"].pk, "choice": "reject"},
        {"dispute_id": disputed["second"].pk, "choice": "reject"},
    )
    assert result.status == "verified" and verified_cells(image) == []


@pytest.mark.parametrize("state_name", ["annotating", "in_review", "verified"])
def test_adjudication_only_while_disputed(
    image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int, state_name: str
) -> None:
    drive_to(state_name, image=image, annotator=annotator, admin=admin_user, class_id=class_id)
    before = state(image)
    with pytest.raises(ConflictError) as refused:
        decide(image, admin_user, {"dispute_id": 1, "choice": "reject"})
    assert refused.value.payload == {"status": state_name}
    assert state(image) == before


def test_a_verified_image_is_not_adjudicated_again(image: Image, admin_user: Any, disputed: dict[str, Any]) -> None:
    decide(
        image,
        admin_user,
        {"dispute_id": disputed["first"].pk, "choice": "reject"},
        {"dispute_id": disputed["second"].pk, "choice": "reject"},
    )
    before = state(image)
    with pytest.raises(ConflictError):
        decide(image, admin_user, {"dispute_id": disputed["first"].pk, "choice": "annotation"})
    assert state(image) == before


def test_disputes_for_adjudication(image: Image, disputed: dict[str, Any]) -> None:
    current, disputes, names = disputes_for_adjudication(image=fresh(image))
    assert current is not None and current.number == 1
    assert [d.pk for d in disputes] == [disputed["first"].pk, disputed["second"].pk]
    assert names == {disputed["a"].pk: disputed["a"].username, disputed["b"].pk: disputed["b"].username}
    assert disputes[1].candidate == EDITED and disputes[1].reason == "quorum"
