"""The project's audit log: who did what, when, with the state before and after."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from annotations.models import (
    AuditEvent,
    Image,
    Project,
)


def audit_record(
    *,
    project: Project | None,
    actor: User | None,
    action: str,
    image: Image | None = None,
    target: str = "",
    before: Any = None,
    after: Any = None,
) -> AuditEvent:
    """Append one entry to the audit log (who, when, what, before/after)."""
    return AuditEvent.objects.create(
        project=project,
        image=image,
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target=target,
        before=before,
        after=after,
    )
