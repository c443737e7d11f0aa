"""How the review app reacts to what the annotations app announces (``annotations.signals``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from annotations.models import Project
from review.services.workflow import reviews_release_if_ineligible


def membership_changed(*, project: Project, user: User, **_: Any) -> None:
    """A member whose role may no longer review gives up open reviews (they are reassigned)."""
    reviews_release_if_ineligible(project=project, user=user)
