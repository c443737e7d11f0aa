"""Celery adapters of the annotations app: ids in, one service call."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from annotations.services.slides import PYRAMID_QUEUE, PYRAMID_TASK, image_pyramid_build


@shared_task(
    name=PYRAMID_TASK,
    queue=PYRAMID_QUEUE,
    acks_late=True,
    # a worker lost mid-build gives the message back; the build claims a running image again
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, ConnectionError),
    retry_backoff=True,
    max_retries=3,
    # the soft limit fails the image with its reason; the hard one only backs it up
    soft_time_limit=settings.SLIDE_TASK_TIME_LIMIT,
    time_limit=settings.SLIDE_TASK_TIME_LIMIT + 300,
)
def pyramid_build(image_id: int) -> dict[str, Any]:
    """Build the tile pyramid of a large image or slide (``image_pyramid_build``)."""
    return image_pyramid_build(image_id=image_id)
