"""Whether the services the platform needs answer: the database, the cache, the Celery broker and
the default file storage (``GET /healthz``, for load balancers, container health checks and
monitoring).

Each check runs in a thread of its own, all at once, and is given ``HEALTHZ_TIMEOUT_SECONDS``:
a dead service (a blackholed database host, a Redis that accepts and never answers, an S3
endpoint that stalls) makes the report fail within that time instead of hanging the caller. A
timed-out check cannot be killed; it is remembered, and while it still hangs the next reports
fail that check at once rather than start another thread behind it, so repeated probes of a
dead service never pile up threads or connections. After ``HUNG_RETRY_SECONDS`` a check still
hanging is given up on and tried afresh (at most one more thread per check that often), so a
connection that never returns cannot keep the check failing after the service is back.

Error strings name the exception and its message with any credentials in URLs masked; nothing
else (no settings, no URLs with passwords) is reported.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connections
from kombu.transport import filesystem

PROBE_PREFIX = "healthz/"
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_ERROR_MAX = 300
HUNG_RETRY_SECONDS = 60.0


class CheckResult(TypedDict, total=False):
    ok: bool
    ms: float
    error: str


class HealthReport(TypedDict):
    status: str  # "ok" | "error"
    checks: dict[str, CheckResult]


def _database() -> None:
    # A connection of this thread's own: it proves a new connection can be made, and it is
    # closed again so that a probe every few seconds holds no connection open.
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            row = cursor.fetchone()
        if row is None or row[0] != 1:
            raise RuntimeError(f"SELECT 1 answered {row!r}")
    finally:
        connection.close()


def _cache() -> None:
    key = f"healthz:{uuid.uuid4().hex}"
    value = uuid.uuid4().hex
    try:
        cache.set(key, value, timeout=30)
        try:
            got = cache.get(key)
        finally:
            cache.delete(key)
    finally:
        cache.close()  # this thread's handler: let go of its connection
    if got != value:
        raise RuntimeError("the cache did not return the value just written")


def _broker() -> None:
    timeout = float(settings.HEALTHZ_TIMEOUT_SECONDS)
    with current_app.connection_for_write() as conn:
        # one try and one immediate retry; the Redis transport pings the server when it opens
        # its channel, with the broker's own connect timeout (socket_connect_timeout)
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        conn.default_channel  # noqa: B018 -- opening the channel is the check
        if isinstance(conn.transport, filesystem.Transport):
            # The embedded broker has no server: it is healthy when its folders can be written.
            options = conn.transport_options
            for key in ("data_folder_in", "data_folder_out"):
                folder = options.get(key)
                if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                    raise RuntimeError(f"the broker folder {key} is missing or not writable")


def _storage() -> None:
    name = default_storage.save(f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}.txt", ContentFile(b"ok"))
    try:
        if not default_storage.exists(name):
            raise RuntimeError("a file just saved does not exist")
    finally:
        default_storage.delete(name)


CHECKS: dict[str, Callable[[], None]] = {
    "database": _database,
    "cache": _cache,
    "broker": _broker,
    "storage": _storage,
}


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 1] + "…"


@dataclass
class _Run:
    """One check running in its thread."""

    name: str
    started: float
    done: threading.Event
    error: str | None = None
    elapsed: float = 0.0


# The checks that timed out and still run, by name (see the module's docstring).
_hung: dict[str, _Run] = {}
_hung_lock = threading.Lock()


def _start(name: str, check: Callable[[], None]) -> _Run:
    run = _Run(name=name, started=time.monotonic(), done=threading.Event())

    def target() -> None:
        try:
            check()
        except BaseException as exc:
            run.error = _error_text(exc)
        finally:
            run.elapsed = time.monotonic() - run.started
            run.done.set()

    threading.Thread(target=target, name=f"healthz-{name}", daemon=True).start()
    return run


def health_check(*, timeout: float | None = None) -> HealthReport:
    """Check the database, the cache, the broker and the default file storage, at once, each
    within ``timeout`` seconds (``HEALTHZ_TIMEOUT_SECONDS``). Returns ``{"status": "ok" |
    "error", "checks": {name: {"ok", "ms", "error"?}}}``; never raises."""
    limit = float(settings.HEALTHZ_TIMEOUT_SECONDS if timeout is None else timeout)
    results: dict[str, CheckResult] = {}
    runs: list[_Run] = []
    with _hung_lock:
        for name, check in CHECKS.items():
            hung = _hung.get(name)
            waited = time.monotonic() - hung.started if hung is not None else 0.0
            if hung is not None and not hung.done.is_set() and waited < HUNG_RETRY_SECONDS:
                results[name] = {"ok": False, "ms": 0.0, "error": f"an earlier check still hangs (for {waited:.0f} s)"}
                continue
            _hung.pop(name, None)
            runs.append(_start(name, check))
    deadline = time.monotonic() + limit
    for run in runs:
        finished = run.done.wait(max(0.0, deadline - time.monotonic()))
        if not finished:
            with _hung_lock:
                _hung[run.name] = run
            results[run.name] = {"ok": False, "ms": round(limit * 1000, 1), "error": f"timed out after {limit:g} s"}
        elif run.error is not None:
            results[run.name] = {"ok": False, "ms": round(run.elapsed * 1000, 1), "error": run.error}
        else:
            results[run.name] = {"ok": True, "ms": round(run.elapsed * 1000, 1)}
    checks = {name: results[name] for name in CHECKS}
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "error", "checks": checks}
