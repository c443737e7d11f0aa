"""The transactional outbox (core.queue): a committed row always has its task, even when the
broker is down at the commit; a rolled-back row never has one."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.db import transaction

from core import queue
from core.models import OutboxMessage

pytestmark = pytest.mark.django_db


class Broker:
    """Stands in for task_send: down (raises like kombu) or up (records what it got)."""

    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[str, list[Any], str]] = []

    def __call__(self, name: str, *, args: Any, queue: str, task_id: Any = None) -> None:
        if not self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        self.sent.append((name, list(args), queue))


def test_sent_after_commit_and_forgotten(django_capture_on_commit_callbacks: Any) -> None:
    broker = Broker()
    with mock.patch.object(queue, "task_send", broker):
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            queue.task_enqueue("x.task", args=[1, 2], queue="gpu")
            assert broker.sent == []  # not before the commit
    assert broker.sent == [("x.task", [1, 2], "gpu")]
    assert not OutboxMessage.objects.exists()


def test_rolled_back_never_sent(django_capture_on_commit_callbacks: Any) -> None:
    broker = Broker()
    with mock.patch.object(queue, "task_send", broker), django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            queue.task_enqueue("x.task", args=[1], queue="gpu")
            raise RuntimeError("the write failed")
    assert broker.sent == [] and not OutboxMessage.objects.exists()


def test_broker_down_keeps_the_message_until_the_dispatcher_sends_it(
    django_capture_on_commit_callbacks: Any,
) -> None:
    broker = Broker()
    broker.up = False
    with mock.patch.object(queue, "task_send", broker):
        with django_capture_on_commit_callbacks(execute=True):
            queue.task_enqueue("x.first", args=[1], queue="gpu")
            queue.task_enqueue("x.second", args=[2], queue="default")
        kept = list(OutboxMessage.objects.order_by("pk"))
        assert [m.name for m in kept] == ["x.first", "x.second"]
        assert kept[0].attempts == 1 and "Connection refused" in kept[0].last_error
        assert queue.outbox_pending(name="x.first", args=[1])
        assert queue.outbox_dispatch() == {"sent": 0, "left": 2}  # still down: stops at once
        broker.up = True
        assert queue.outbox_dispatch() == {"sent": 2, "left": 0}
    assert broker.sent == [("x.first", [1], "gpu"), ("x.second", [2], "default")]  # in order


def test_the_beat_schedule_dispatches_the_outbox(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["core-outbox-dispatch"]
    assert entry["task"] == "core.outbox_dispatch" and entry["schedule"] <= 60
    from core import tasks

    assert tasks.outbox_dispatch.name == "core.outbox_dispatch"
