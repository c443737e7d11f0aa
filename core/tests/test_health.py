"""GET /healthz (core.health): every check answers, a failing or hanging service makes it a 503
that names the check (quickly, with no secret in the error), and it is public and unthrottled
but keeps the security headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import Client
from kombu import Connection

from core import health

pytestmark = pytest.mark.django_db

CHECK_NAMES = ["database", "cache", "broker", "storage"]


@pytest.fixture(autouse=True)
def _no_hung_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    # each test starts with no check left hanging by another
    monkeypatch.setattr(health, "_hung", {})


def _get(client: Client | None = None) -> Any:
    return (client or Client()).get("/healthz")


def test_all_services_answer(settings: Any) -> None:
    response = _get()
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert list(body["checks"]) == CHECK_NAMES
    for name, check in body["checks"].items():
        assert check["ok"] is True, name
        assert isinstance(check["ms"], float) and check["ms"] >= 0
        assert "error" not in check
    # the storage probe leaves nothing behind
    probes = Path(settings.MEDIA_ROOT) / "healthz"
    assert not probes.exists() or list(probes.iterdir()) == []


def test_public_unthrottled_and_with_the_security_headers(settings: Any) -> None:
    # no session, no token; far more requests than the anonymous API throttle allows
    with mock.patch("core.api.throttling.AnonThrottle.get_rate", return_value="1/min"):
        statuses = {_get().status_code for _ in range(3)}
    assert statuses == {200}
    response = _get()
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert "no-cache" in response["Cache-Control"]  # a proxy must not answer for it
    assert response["Content-Type"] == "application/json"
    assert Client().post("/healthz").status_code == 405


def _failing_checks(body: dict[str, Any]) -> list[str]:
    return [name for name, check in body["checks"].items() if not check["ok"]]


def test_database_down(monkeypatch: pytest.MonkeyPatch) -> None:
    real = BaseDatabaseWrapper.ensure_connection

    def ensure_connection(self: BaseDatabaseWrapper) -> None:
        # only the health check's own connection fails: the test's connection stays usable
        if threading.current_thread().name.startswith("healthz-"):
            raise OperationalError('connection to server at "db" (10.0.0.5), port 5432 failed: Connection refused')
        real(self)

    monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", ensure_connection)
    response = _get()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error" and _failing_checks(body) == ["database"]
    assert body["checks"]["database"]["error"].startswith("OperationalError: connection to server")


def test_cache_failing_hides_credentials() -> None:
    error = ConnectionError("Error 111 connecting to redis://:s3cret-pass@cache:6379/1. Connection refused.")
    # the cache handler is per thread: the check's thread has its own, so patch the class
    with mock.patch.object(type(caches["default"]), "set", side_effect=error):
        response = _get()
    assert response.status_code == 503
    body = response.json()
    assert _failing_checks(body) == ["cache"]
    message = body["checks"]["cache"]["error"]
    assert "s3cret-pass" not in message and "redis://***@cache:6379/1" in message


def test_storage_failing() -> None:
    with mock.patch.object(health.default_storage, "save", side_effect=PermissionError(13, "Permission denied")):
        response = _get()
    assert response.status_code == 503
    body = response.json()
    assert _failing_checks(body) == ["storage"]
    assert "Permission denied" in body["checks"]["storage"]["error"]


def test_storage_that_loses_what_it_saved() -> None:
    with mock.patch.object(health.default_storage, "exists", return_value=False):
        body = _get().json()
    assert _failing_checks(body) == ["storage"]


def test_redis_broker_down_answers_quickly_without_its_password() -> None:
    # a Redis broker on a port where nothing listens (the real transport, not a stand-in)
    dead = Connection("redis://:hunter2@127.0.0.1:1/0", transport_options={"socket_connect_timeout": 1})
    with mock.patch.object(health.current_app, "connection_for_write", return_value=dead):
        started = time.monotonic()
        response = _get()
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    body = response.json()
    assert _failing_checks(body) == ["broker"]
    assert "hunter2" not in response.content.decode()
    assert elapsed < 5


def test_filesystem_broker_without_its_folder(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    options = {"data_folder_in": missing, "data_folder_out": missing}
    broken = Connection("filesystem://", transport="config.broker:AtomicFilesystemTransport", transport_options=options)
    with mock.patch.object(health.current_app, "connection_for_write", return_value=broken):
        body = _get().json()
    assert _failing_checks(body) == ["broker"]
    assert "not writable" in body["checks"]["broker"]["error"]


@pytest.fixture
def hanging_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, list[int]]]:
    """The cache check hangs until released; counts how often it was started."""
    release = threading.Event()
    starts: list[int] = []

    def hang() -> None:
        starts.append(1)
        release.wait(30)

    monkeypatch.setitem(health.CHECKS, "cache", hang)
    yield release, starts
    release.set()


def test_a_hanging_service_answers_503_within_the_timeout(
    settings: Any, hanging_cache: tuple[threading.Event, list[int]]
) -> None:
    settings.HEALTHZ_TIMEOUT_SECONDS = 0.5
    release, starts = hanging_cache
    started = time.monotonic()
    response = _get()
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    body = response.json()
    assert _failing_checks(body) == ["cache"]
    assert body["checks"]["cache"]["error"] == "timed out after 0.5 s"

    # while it still hangs, the next probes fail it at once and start no second thread
    again = _get().json()
    assert _failing_checks(again) == ["cache"]
    assert again["checks"]["cache"]["error"].startswith("an earlier check still hangs")
    assert len(starts) == 1

    # one that hangs for too long is given up on and tried afresh (one more thread)
    with mock.patch.object(health, "HUNG_RETRY_SECONDS", 0.0):
        assert _get().json()["checks"]["cache"]["error"] == "timed out after 0.5 s"
    assert len(starts) == 2

    # once it returns, it is checked afresh
    release.set()
    deadline = time.monotonic() + 5
    while not all(run.done.is_set() for run in health._hung.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _get().status_code == 200
    assert len(starts) == 3
