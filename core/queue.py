"""Enqueueing Celery tasks from services, by name.

A tasks module imports the services it adapts; a service that imported its tasks module back
would close an import cycle (hidden or not). So services name the task they enqueue, and send
it once their transaction commits: a worker never sees a row that was rolled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import current_app
from django.db import transaction


def task_send(name: str, *, args: Sequence[Any], queue: str, task_id: str | None = None) -> None:
    """Send task ``name`` now (tests replace this function to see what would be sent).

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


def task_enqueue(name: str, *, args: Sequence[Any], queue: str, task_id: str | None = None) -> None:
    """Send task ``name`` to ``queue`` when the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: task_send(name, args=args, queue=queue, task_id=task_id))
