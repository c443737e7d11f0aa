"""Which Celery workers are alive, what they consume and run, and on which device: each worker's
main process writes a :class:`~core.models.WorkerHeartbeat` row (written here, read by
``core.selectors.worker_heartbeat_list``).

Why the database and not ``celery inspect``: the embedded filesystem broker has no broadcast
(remote control), and a broadcast waits for the slowest worker; a row per worker works on every
broker and costs one small write every ``WORKER_HEARTBEAT_SECONDS``.

The row is written when the worker is ready (``core.tasks`` wires the signals), then by a daemon
thread of the main process; on a warm shutdown the row is marked stopped. A worker killed
outright simply stops beating and is shown as gone after three intervals. Rows unseen for
``WORKER_HEARTBEAT_KEEP_HOURS`` are deleted by the workers themselves.

The device is what pre-segmentation on that worker resolves ``INFERENCE_DEVICE`` to (``auto``:
CUDA when torch sees a GPU). The worker's main process never imports torch: a parent that
initialised CUDA or torch's thread pools breaks the pool children it forks (config.celery), so
the GPU is asked about in a short child process, and only when torch is installed and the
worker consumes a queue that runs models.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from core.models import WorkerHeartbeat

logger = logging.getLogger(__name__)

# The queues whose tasks run a model (pre-segmentation, training and evaluation).
MODEL_QUEUES = frozenset({"gpu", "training"})
PROBE_TIMEOUT_SECONDS = 120
_PRUNE_EVERY_BEATS = 360  # about hourly at the default interval

_PROBE = r"""
import json, sys
import torch
wanted = sys.argv[1]
out = {"device": "cpu", "name": ""}
if wanted == "auto" or wanted.startswith("cuda"):
    index = int(wanted.split(":", 1)[1]) if ":" in wanted else None
    if torch.cuda.is_available():
        index = torch.cuda.current_device() if index is None else index
        if index < torch.cuda.device_count():
            out = {"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index)}
        else:
            out = {"device": f"cuda:{index}", "name": "no such GPU"}
    elif wanted != "auto":
        out = {"device": f"cuda:{index or 0}", "name": "CUDA not available"}
else:
    out = {"device": wanted, "name": ""}
print(json.dumps(out))
"""


@dataclass
class WorkerIdentity:
    """What a worker says about itself in its heartbeat."""

    name: str
    queues: list[str]
    concurrency: int
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=timezone.now)
    device: str = ""
    device_name: str = ""


def worker_device_resolve(*, configured: str, queues: Collection[str]) -> tuple[str, str]:
    """``(device, device_name)`` a worker consuming ``queues`` runs its models on: ``cpu`` or
    ``cuda:N`` with the GPU's name. Asks torch in a child process (see the module's docstring);
    a worker with no model queue, or without torch, computes on the CPU."""
    if configured == "cpu" or not MODEL_QUEUES.intersection(queues):
        return "cpu", ""
    if importlib.util.find_spec("torch") is None:
        return ("cpu", "") if configured == "auto" else (configured, "torch not installed")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, configured],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=True,
        )
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        return str(answer["device"]), str(answer["name"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError) as exc:
        logger.warning("Could not find out the worker's device: %s", exc)
        return ("unknown" if configured == "auto" else configured), "could not be determined"


def worker_heartbeat_write(*, identity: WorkerIdentity, tasks: list[dict[str, Any]]) -> None:
    """Write the worker's row: who it is, what it runs now, and that it was seen now."""
    WorkerHeartbeat.objects.update_or_create(
        name=identity.name,
        defaults={
            "host": identity.host,
            "pid": identity.pid,
            "queues": sorted(identity.queues),
            "device": identity.device,
            "device_name": identity.device_name,
            "concurrency": identity.concurrency,
            "tasks": tasks,
            "started_at": identity.started_at,
            "last_seen": timezone.now(),
            "stopped_at": None,
        },
    )


def worker_heartbeat_stop(*, name: str, pid: int) -> None:
    """Mark the worker stopped (a warm shutdown). Only its own row: a worker of the same name
    started since then is left alone."""
    now = timezone.now()
    WorkerHeartbeat.objects.filter(name=name, pid=pid, stopped_at__isnull=True).update(
        stopped_at=now, last_seen=now, tasks=[]
    )


def worker_heartbeats_prune(*, keep: timedelta | None = None) -> int:
    """Delete the rows of workers unseen for ``keep`` (``WORKER_HEARTBEAT_KEEP_HOURS``)."""
    keep = keep if keep is not None else timedelta(hours=settings.WORKER_HEARTBEAT_KEEP_HOURS)
    deleted, _ = WorkerHeartbeat.objects.filter(last_seen__lt=timezone.now() - keep).delete()
    return deleted


class WorkerHeartbeatThread(threading.Thread):
    """Writes the worker's heartbeat every ``interval`` seconds until stopped. The first beat goes
    out at once; the device is found out after it (it may take seconds) and sent with the next."""

    def __init__(
        self,
        *,
        identity: WorkerIdentity,
        interval: float,
        tasks: Callable[[], list[dict[str, Any]]],
        device: Callable[[], tuple[str, str]],
    ) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.identity = identity
        self.interval = interval
        self._tasks = tasks
        self._device = device
        self._stopping = threading.Event()
        # held while writing: once stopping is set under it, no beat can overwrite the stop
        self.write_lock = threading.Lock()
        self._failing = False

    def run(self) -> None:
        beats = 0
        while True:
            self.beat()
            if beats == 0:
                self.identity.device, self.identity.device_name = self._device()
                self.beat()
            if beats % _PRUNE_EVERY_BEATS == 0:
                self._guarded(worker_heartbeats_prune)
            beats += 1
            if self._stopping.wait(self.interval):
                return

    def beat(self) -> None:
        with self.write_lock:
            if not self._stopping.is_set():
                self._guarded(lambda: worker_heartbeat_write(identity=self.identity, tasks=self._tasks()))

    def _guarded(self, work: Callable[[], object]) -> None:
        # A database outage must not end the thread: the next beat tries again. The connection
        # is closed after every beat, so that a pool child forked meanwhile inherits none.
        try:
            work()
            if self._failing:
                logger.warning("Worker heartbeat written again")
            self._failing = False
        except Exception:
            if not self._failing:
                logger.exception("Could not write the worker heartbeat")
            self._failing = True
        finally:
            connection.close()

    def stop(self, *, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)


_current: WorkerHeartbeatThread | None = None
_current_lock = threading.Lock()


def worker_heartbeat_start(
    *, name: str, queues: list[str], concurrency: int, tasks: Callable[[], list[dict[str, Any]]]
) -> WorkerHeartbeatThread:
    """Start beating for this worker process (once; a second call returns the running thread)."""
    global _current
    with _current_lock:
        if _current is not None and _current.is_alive():
            return _current
        identity = WorkerIdentity(name=name, queues=list(queues), concurrency=concurrency)
        _current = WorkerHeartbeatThread(
            identity=identity,
            interval=float(settings.WORKER_HEARTBEAT_SECONDS),
            tasks=tasks,
            device=lambda: worker_device_resolve(configured=settings.INFERENCE_DEVICE, queues=queues),
        )
        _current.start()
        return _current


def worker_heartbeat_finish() -> None:
    """Stop beating and mark this worker stopped (its warm shutdown)."""
    global _current
    with _current_lock:
        thread, _current = _current, None
    if thread is None:
        return
    thread.stop()
    with thread.write_lock:
        try:
            worker_heartbeat_stop(name=thread.identity.name, pid=thread.identity.pid)
        finally:
            connection.close()
