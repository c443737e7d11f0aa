"""Loaded at start-up by a worker process the tests start with this folder on PYTHONPATH: it
simulates a worker on another host by refusing every file access under the folders named in
``HOSTGUARD_FORBIDDEN`` (os.pathsep-separated: the web process's media and model folders).

A Python audit hook sees every ``open`` (and directory listing) the process makes, its
libraries' included, and raises PermissionError for those paths; each refusal is also printed,
so that a test can assert that none happened.
"""

from __future__ import annotations

import os
import sys

_FORBIDDEN = tuple(
    os.path.realpath(p) + os.sep for p in os.environ.get("HOSTGUARD_FORBIDDEN", "").split(os.pathsep) if p
)
_EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rename", "shutil.copyfile"}


def _guard(event: str, args: tuple[object, ...]) -> None:
    if event not in _EVENTS or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return  # a file descriptor
    real = os.path.realpath(path) + os.sep
    if real.startswith(_FORBIDDEN):
        print(f"HOSTGUARD refused {event} {path}", file=sys.stderr, flush=True)
        raise PermissionError(f"hostguard: {path} is on another host")


if _FORBIDDEN:
    sys.addaudithook(_guard)
