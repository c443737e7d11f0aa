"""How the webhooks app reacts to the events services emit (``core.events``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from webhooks.services import webhook_deliveries_create


def event_emitted(*, project_id: int, event: str, data: dict[str, Any], occurred_at: datetime, **_: Any) -> None:
    """Each active subscription of the project to ``event`` gets a delivery, sent by a task."""
    webhook_deliveries_create(project_id=project_id, event=event, data=data, occurred_at=occurred_at)
