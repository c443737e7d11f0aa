"""Who runs a pre-segmentation, and whether that worker still lives (the claims and the
watchdogs of ``inference.services`` and ``inference.tiled``)."""

from __future__ import annotations

import os
import socket

from core.processes import pid_alive


def worker_name() -> str:
    """This process as a pre-segmentation's worker: "host:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: str) -> bool:
    """Whether ``worker`` ("host:pid") ran on this host and its process is gone."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))
