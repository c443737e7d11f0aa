"""A project's verification settings: K experts, quorum, match IoU, adjudicators, active learning."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.db import transaction

from annotations.models import (
    Project,
    Role,
)
from annotations.services.audit import audit_record
from annotations.services.projects import project_update
from core.errors import ServiceValidationError
from review import selectors
from review.models import (
    ActiveLearningOrder,
    VerificationSettings,
)
from review.services.workflow import capability_require

VERIFICATION_EDITABLE = ("experts_required", "quorum", "match_iou", "adjudicators", "active_learning_order")


def verification_settings_update(*, project: Project, user: User, data: dict[str, Any]) -> VerificationSettings:
    """Update K, the quorum, the matching IoU (project fields), the adjudicators (experts or
    admins of the project; admins may always adjudicate) and the active-learning order.
    Rounds already started keep the rules they started with."""
    capability_require(user, project, "manage", "Only a project admin may change verification settings.")
    unknown = set(data) - set(VERIFICATION_EDITABLE)
    errors: dict[str, str] = {f: "cannot be changed here" for f in sorted(unknown)}
    order = data.get("active_learning_order")
    if "active_learning_order" in data and order not in ActiveLearningOrder.values:
        errors["active_learning_order"] = f"must be one of {', '.join(ActiveLearningOrder.values)}"
    adjudicators = data.get("adjudicators")
    if "adjudicators" in data:
        if not isinstance(adjudicators, list) or not all(
            isinstance(u, int) and not isinstance(u, bool) for u in adjudicators
        ):
            errors["adjudicators"] = "must be a list of user ids"
        else:
            eligible = set(
                project.memberships.filter(role__in=[Role.EXPERT, Role.ADMIN], user_id__in=adjudicators).values_list(
                    "user_id", flat=True
                )
            )
            missing = sorted(set(adjudicators) - eligible)
            if missing:
                errors["adjudicators"] = f"not experts or admins of this project: {missing}"
    if errors:
        raise ServiceValidationError("Invalid verification settings.", errors)
    with transaction.atomic():
        stored, _ = VerificationSettings.objects.get_or_create(project=project)
        before = {f: getattr(project, f) for f in ("experts_required", "quorum", "match_iou")} | {
            "adjudicators": selectors.adjudicator_ids(project=project),
            "active_learning_order": stored.active_learning_order,
        }
        project_fields: dict[str, Any] = {f: data[f] for f in ("experts_required", "quorum", "match_iou") if f in data}
        if project_fields:
            project_update(project=project, data=project_fields)
        if "active_learning_order" in data:
            stored.active_learning_order = str(order)
            stored.save(update_fields=["active_learning_order", "updated_at"])
        if "adjudicators" in data:
            stored.adjudicators.set(cast(list[int], adjudicators))
        audit_record(project=project, actor=user, action="verification.settings", before=before, after=data)
    return stored
