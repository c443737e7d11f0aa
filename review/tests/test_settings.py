"""Verification settings at service level (docs/api.md, "Settings"): who may change them,
validation naming the field, what is stored, and the rules frozen per round."""

from __future__ import annotations

from typing import Any

import pytest

from annotations.models import AuditEvent, Image, Project, Role
from annotations.services.projects import membership_set
from core.errors import ConflictError, PermissionDeniedError, ServiceValidationError
from review.models import VerificationSettings
from review.selectors import adjudicator_ids, verification_settings_get
from review.services.settings import verification_settings_update
from review.services.workflow import review_assign
from review.tests.support import accept_all, fresh, live_reviewers, prepared, rect, reviewed, status_of
from tests.factories import ProjectFactory, member

pytestmark = pytest.mark.django_db


def stored(project: Project) -> tuple[Any, ...]:
    row = Project.objects.get(pk=project.pk)
    settings = VerificationSettings.objects.filter(project=project).first()
    return (
        row.experts_required,
        row.quorum,
        row.match_iou,
        settings.active_learning_order if settings else None,
        adjudicator_ids(project=project),
        AuditEvent.objects.filter(action="verification.settings").count(),
    )


def test_defaults(project: Any) -> None:
    settings = verification_settings_get(project=project)
    assert (project.experts_required, project.quorum, project.match_iou) == (2, None, 0.5)
    assert settings.active_learning_order == "none" and adjudicator_ids(project=project) == []


def test_admins_update_every_setting(project: Any, admin_user: Any) -> None:
    judge = member(project, Role.EXPERT)
    co_admin = member(project, Role.ADMIN)
    data = {
        "experts_required": 3,
        "quorum": 2,
        "match_iou": 0.7,
        "adjudicators": [judge.pk, co_admin.pk],
        "active_learning_order": "disagreement",
    }
    result = verification_settings_update(project=project, user=admin_user, data=data)
    assert result.active_learning_order == "disagreement"
    assert stored(project) == (3, 2, 0.7, "disagreement", sorted([judge.pk, co_admin.pk]), 1)
    event = AuditEvent.objects.get(action="verification.settings")
    assert event.before == {
        "experts_required": 2,
        "quorum": None,
        "match_iou": 0.5,
        "adjudicators": [],
        "active_learning_order": "none",
    }
    assert event.after == data and event.actor_id == admin_user.pk and event.project_id == project.pk
    # A partial update changes only what it names; an empty list clears the adjudicators.
    verification_settings_update(project=project, user=admin_user, data={"adjudicators": [], "quorum": None})
    assert stored(project) == (3, None, 0.7, "disagreement", [], 2)


@pytest.mark.parametrize("role", [Role.EXPERT, Role.ANNOTATOR, None])
def test_only_admins_change_settings(project: Any, role: str | None) -> None:
    user = member(project, role) if role else ProjectFactory().memberships.get().user
    before = stored(project)
    with pytest.raises(PermissionDeniedError):
        verification_settings_update(project=project, user=user, data={"active_learning_order": "uncertainty"})
    assert stored(project) == before


INVALID: list[tuple[str, dict[str, Any], set[str]]] = [
    ("unknown_field", {"name": "x"}, {"name"}),
    ("bad_order", {"active_learning_order": "random"}, {"active_learning_order"}),
    ("adjudicators_not_a_list", {"adjudicators": 3}, {"adjudicators"}),
    ("adjudicators_not_ids", {"adjudicators": [True]}, {"adjudicators"}),
    ("adjudicator_annotator", {"adjudicators": ["ANNOTATOR"]}, {"adjudicators"}),
    ("adjudicator_outsider", {"adjudicators": ["OUTSIDER"]}, {"adjudicators"}),
    ("k_zero", {"experts_required": 0}, {"experts_required"}),
    ("k_eleven", {"experts_required": 11}, {"experts_required"}),
    ("k_text", {"experts_required": "2"}, {"experts_required"}),
    ("quorum_zero", {"quorum": 0}, {"quorum"}),
    ("quorum_above_k", {"quorum": 3}, {"quorum"}),
    ("quorum_above_new_k", {"experts_required": 3, "quorum": 4}, {"quorum"}),
    ("k_below_quorum", {"experts_required": 1, "quorum": 2}, {"quorum"}),
    ("iou_zero", {"match_iou": 0}, {"match_iou"}),
    ("iou_above_one", {"match_iou": 1.5}, {"match_iou"}),
    (
        "several",
        {"adjudicators": ["ANNOTATOR"], "active_learning_order": "random"},
        {"adjudicators", "active_learning_order"},
    ),
]


@pytest.mark.parametrize(("data", "keys"), [(d, k) for _, d, k in INVALID], ids=[n for n, _, _ in INVALID])
def test_validation_names_the_field_and_changes_nothing(
    project: Any, admin_user: Any, data: dict[str, Any], keys: set[str]
) -> None:
    annotator = member(project, Role.ANNOTATOR)
    outsider = ProjectFactory().memberships.get().user
    ids = {"ANNOTATOR": annotator.pk, "OUTSIDER": outsider.pk}
    if isinstance(data.get("adjudicators"), list):
        data = data | {"adjudicators": [ids.get(u, u) if isinstance(u, str) else u for u in data["adjudicators"]]}
    before = stored(project)
    with pytest.raises(ServiceValidationError) as refused:
        verification_settings_update(project=project, user=admin_user, data=data)
    assert set(refused.value.errors) == keys
    assert stored(project) == before
    assert not VerificationSettings.objects.filter(project=project).exists()


def test_settings_change_during_review_keeps_the_rounds_rules(
    project: Any, image: Image, annotator: Any, admin_user: Any, experts: list[Any], class_id: int
) -> None:
    cells, (a, b) = prepared(image, annotator, [rect(4, 4, 12, 12)], class_id)
    verification_settings_update(project=project, user=admin_user, data={"experts_required": 3, "quorum": 3})
    # The round still has K = 2: no third reviewer fits, and a reviewer who leaves is replaced
    # by one expert, not two.
    with pytest.raises(ConflictError):
        review_assign(image=fresh(image), actor=admin_user, reviewer=experts[2])
    extra = member(project, Role.EXPERT)
    membership_set(project=project, user=b, role=Role.ANNOTATOR)
    b = experts[2]
    assert live_reviewers(image) == [a, b] and extra not in live_reviewers(image)
    assert not AuditEvent.objects.filter(action="review.unstaffed").exists()
    reviewed(a, image, accept_all(cells))
    reviewed(b, image, accept_all(cells))
    assert status_of(image) == "verified"
