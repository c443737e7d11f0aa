"""Pre-segmentation liveness (inference.services): the claim, the heartbeat and the watchdog."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from annotations.models import Image, PresegmentStatus
from core.models import OutboxMessage
from inference import services
from tests.factories import ProjectFactory, UserFactory, image_create
from training.services.registry import model_version_baseline

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(django_capture_on_commit_callbacks: Any) -> tuple[Image, int]:
    project = ProjectFactory(created_by=UserFactory(), auto_presegment=False)
    image = image_create(project)
    version = model_version_baseline(project=project)
    with mock.patch("core.queue.task_send"), django_capture_on_commit_callbacks(execute=True):
        services.image_presegment_enqueue(image=image, model_version=version)
    return Image.objects.get(pk=image.pk), version.pk


def test_a_run_claims_the_image_once(queued: tuple[Image, int]) -> None:
    image, version_id = queued
    result = services.image_presegment_run(image_id=image.pk, model_version_id=version_id)
    assert not result.skipped
    done = Image.objects.get(pk=image.pk)
    assert done.presegment_status == PresegmentStatus.DONE and done.presegment_attempts == 1
    assert done.presegment_worker.endswith(f":{__import__('os').getpid()}")
    # a duplicate delivery of the same message is skipped, not run again
    assert services.image_presegment_run(image_id=image.pk, model_version_id=version_id).skipped
    assert Image.objects.get(pk=image.pk).presegment_attempts == 1


@pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection
def test_heartbeat_is_written_while_running(queued: tuple[Image, int], settings: Any) -> None:
    image, version_id = queued
    settings.PRESEGMENT_HEARTBEAT_SECONDS = 1
    beats: list[Any] = []
    real = services.proposals_store

    def slow_store(**kwargs: Any) -> int:
        import time

        first = Image.objects.get(pk=image.pk).presegment_heartbeat_at
        time.sleep(2.5)
        beats.extend([first, Image.objects.get(pk=image.pk).presegment_heartbeat_at])
        return real(**kwargs)

    with mock.patch.object(services, "proposals_store", side_effect=slow_store):
        services.image_presegment_run(image_id=image.pk, model_version_id=version_id)
    assert beats[1] > beats[0]


def test_watchdog_requeues_a_running_image_whose_heartbeat_stopped_then_gives_up(
    queued: tuple[Image, int], settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    image, version_id = queued
    old = timezone.now() - timedelta(seconds=settings.PRESEGMENT_HEARTBEAT_TIMEOUT + 5)
    Image.objects.filter(pk=image.pk).update(
        presegment_status=PresegmentStatus.RUNNING, presegment_heartbeat_at=old, presegment_worker="elsewhere:1"
    )
    with mock.patch("core.queue.task_send") as send, django_capture_on_commit_callbacks(execute=True):
        assert services.presegment_reap() == {"requeued": [image.pk], "failed": []}
    send.assert_called_once_with("inference.presegment_image", args=[image.pk, version_id], queue="gpu", task_id=None)
    again = Image.objects.get(pk=image.pk)
    assert again.presegment_status == PresegmentStatus.QUEUED and "no heartbeat" in again.presegment_error
    # a live one is left alone
    Image.objects.filter(pk=image.pk).update(
        presegment_status=PresegmentStatus.RUNNING, presegment_heartbeat_at=timezone.now()
    )
    assert services.presegment_reap() == {"requeued": [], "failed": []}
    # after PRESEGMENT_MAX_ATTEMPTS runs it fails, with the reason
    Image.objects.filter(pk=image.pk).update(
        presegment_heartbeat_at=old, presegment_attempts=settings.PRESEGMENT_MAX_ATTEMPTS
    )
    assert services.presegment_reap() == {"requeued": [], "failed": [image.pk]}
    failed = Image.objects.get(pk=image.pk)
    assert failed.presegment_status == PresegmentStatus.FAILED and "gave up after 3 run(s)" in failed.presegment_error


def test_watchdog_requeues_an_image_whose_task_was_lost_not_one_waiting_for_the_broker(
    queued: tuple[Image, int], settings: Any
) -> None:
    image, version_id = queued
    long_ago = timezone.now() - timedelta(seconds=settings.PRESEGMENT_QUEUED_TIMEOUT + 5)
    Image.objects.filter(pk=image.pk).update(presegment_queued_at=long_ago)
    # its message still waits in the outbox (the broker is down): not lost
    OutboxMessage.objects.create(name="inference.presegment_image", args=[image.pk, version_id], queue="gpu")
    assert services.presegment_reap() == {"requeued": [], "failed": []}
    OutboxMessage.objects.all().delete()  # sent; then the broker lost it
    with mock.patch("core.queue.task_send"):
        assert services.presegment_reap() == {"requeued": [image.pk], "failed": []}
    assert "its task was lost" in Image.objects.get(pk=image.pk).presegment_error
