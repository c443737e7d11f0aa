"""The Celery application. Queues: ``default`` (CPU work), ``gpu`` (pre-segmentation, one image at a
time) and ``training`` (training and evaluation jobs, on a worker of their own, so that a long
training job never delays the pre-segmentation of new uploads) and ``interactive`` (the maps a
click waits for, on a worker of its own: a click never waits behind either of the others)."""

from __future__ import annotations

import os
import sys

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES

# The embedded broker: the filesystem transport, with atomic writes (see config.broker).
TRANSPORT_ALIASES["filesystem"] = "config.broker:AtomicFilesystemTransport"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("cytoplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("gpu"), Queue("training"), Queue("interactive"))
app.autodiscover_tasks()


@worker_process_init.connect
def _torch_after_fork(**_: object) -> None:
    # A child forked from a parent that already ran multi-threaded torch code hangs in its first
    # parallel region. The worker master never imports torch (backends load it lazily, in the
    # children); if something did, fall back to one intra-op thread so the child cannot hang.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
