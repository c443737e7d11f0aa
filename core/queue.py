"""Enqueueing Celery tasks from services, by name, through a transactional outbox.

A tasks module imports the services it adapts; a service that imported its tasks module back
would close an import cycle (hidden or not). So services name the task they enqueue.

``task_enqueue`` writes an :class:`~core.models.OutboxMessage` in the caller's transaction and
sends it once the transaction commits: a worker never sees a row that was rolled back, and a
committed row always has its task, sent now or, while the broker is down, by
``outbox_dispatch`` once it is back. Sending fails fast (``CELERY_BROKER_CONNECTION_TIMEOUT``,
no publish retries), so a request never hangs on a dead broker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import current_app
from django.db import transaction

from core.models import OutboxMessage

logger = logging.getLogger(__name__)


def task_send(name: str, *, args: Sequence[Any], queue: str, task_id: str | None = None) -> None:
    """Send task ``name`` now; raises when the broker cannot take it (tests replace this
    function to see what would be sent).

    With ``CELERY_TASK_ALWAYS_EAGER`` the task runs here and now, as ``delay`` would run it
    (``send_task`` alone ignores that setting).
    """
    if current_app.conf.task_always_eager:
        if name not in current_app.tasks:
            current_app.loader.import_default_modules()  # the apps' tasks modules (autodiscovery)
        current_app.tasks[name].apply(
            args=list(args), task_id=task_id, throw=bool(current_app.conf.task_eager_propagates)
        )
        return
    current_app.send_task(name, args=list(args), queue=queue, task_id=task_id)


def _send_stored(message_id: int) -> bool:
    """Send one stored message and delete it; on a broker error keep it (and say why)."""
    message = OutboxMessage.objects.filter(pk=message_id).first()
    if message is None:  # sent already (by the dispatcher)
        return True
    try:
        task_send(message.name, args=message.args, queue=message.queue, task_id=message.task_id or None)
    except Exception as exc:
        OutboxMessage.objects.filter(pk=message_id).update(
            attempts=message.attempts + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        logger.warning("Task %s kept in the outbox (the broker is unavailable): %s", message.name, exc)
        return False
    OutboxMessage.objects.filter(pk=message_id).delete()
    return True


def task_enqueue(name: str, *, args: Sequence[Any], queue: str, task_id: str | None = None) -> None:
    """Store task ``name`` for ``queue`` with the current transaction and send it once that
    commits (at once outside one). A broker outage is no error here: the message waits in the
    outbox."""
    message = OutboxMessage.objects.create(name=name, args=list(args), queue=queue, task_id=task_id or "")
    transaction.on_commit(lambda: _send_stored(message.pk))


def outbox_dispatch(*, limit: int = 1000) -> dict[str, int]:
    """Send the messages still in the outbox, oldest first; stop at the first broker error.
    Returns ``{"sent": n, "left": m}``."""
    sent = 0
    ids = list(OutboxMessage.objects.order_by("created_at", "pk").values_list("pk", flat=True)[:limit])
    for message_id in ids:
        if not _send_stored(message_id):
            break
        sent += 1
    return {"sent": sent, "left": OutboxMessage.objects.count()}


def outbox_pending(*, name: str, args: Sequence[Any]) -> bool:
    """Whether a message for task ``name`` with ``args`` still waits in the outbox."""
    return OutboxMessage.objects.filter(name=name, args=list(args)).exists()
