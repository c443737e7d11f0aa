"""Celery adapters: ids in, one service call. GPU work runs on the ``gpu`` queue."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import OperationalError

from annotations.models import Image, PresegmentStatus
from inference.services import image_presegment_run


@shared_task(
    name="inference.presegment_image",
    queue="gpu",
    bind=True,
    acks_late=True,
    autoretry_for=(OperationalError, ConnectionError),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=settings.GPU_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.GPU_TASK_TIME_LIMIT,
)
def presegment_image(self: Any, image_id: int, model_version_id: int) -> dict[str, Any]:
    try:
        result = image_presegment_run(image_id=image_id, model_version_id=model_version_id)
    except SoftTimeLimitExceeded:
        Image.objects.filter(pk=image_id).update(
            presegment_status=PresegmentStatus.FAILED, presegment_error="Timed out."
        )
        raise
    return {"cells": result.cell_count, "timings": result.timings}
