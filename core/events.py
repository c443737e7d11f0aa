"""Domain events: what happened in a project, announced to whichever app listens, without the
emitting app importing it.

The emitting apps (annotations, training, review, interchange, inference) sit below or beside
the apps that react (webhooks), and the import contracts forbid them to import those. So a
service calls :func:`event_emit` with the project, the event's name and a few ids and facts;
the ``event_emitted`` signal carries it to the receivers that the apps above connect in their
``AppConfig.ready``.

The signal is sent once the current transaction commits (``transaction.on_commit``, at once
outside one): a receiver never hears of a change that was rolled back. Receivers are called
robustly: an exception in one is logged and never reaches the service that emitted the event
(its change is committed by then; a webhook's trouble must not turn it into an error).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

logger = logging.getLogger(__name__)

# Every event a service emits: the catalogue webhooks subscribe to (docs/webhooks.md). A name
# not listed here is a programming error (ValueError), so a typo cannot silently emit nothing.
EVENTS: tuple[str, ...] = (
    "image.submitted",
    "image.verified",
    "dispute.opened",
    "training.finished",
    "training.failed",
    "model.promoted",
    "model.rolled_back",
    "export.ready",
    "presegment.failed",
)

# Sent with keyword arguments project_id (int), event (str), data (dict), occurred_at (datetime).
event_emitted = Signal()


def _send(*, project_id: int, event: str, data: dict[str, Any], occurred_at: datetime) -> None:
    results = event_emitted.send_robust(
        sender=None, project_id=project_id, event=event, data=data, occurred_at=occurred_at
    )
    for receiver, result in results:
        if isinstance(result, BaseException):
            logger.error("Receiver %r of event %s (project %s) failed", receiver, event, project_id, exc_info=result)


def event_emit(*, project_id: int, event: str, data: dict[str, Any]) -> None:
    """Announce ``event`` in project ``project_id`` with ``data`` (ids and small facts, JSON
    values only) once the current transaction commits."""
    if event not in EVENTS:
        raise ValueError(f"Unknown event {event!r}; add it to core.events.EVENTS.")
    occurred_at = timezone.now()
    payload = dict(data)
    transaction.on_commit(
        lambda: _send(project_id=project_id, event=event, data=payload, occurred_at=occurred_at), robust=True
    )
