"""The Celery application. Queues: ``default`` (CPU work) and ``gpu`` (models, one at a time)."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES

# The embedded broker: the filesystem transport, with atomic writes (see config.broker).
TRANSPORT_ALIASES["filesystem"] = "config.broker:AtomicFilesystemTransport"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("cytoplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("gpu"))
app.autodiscover_tasks()
