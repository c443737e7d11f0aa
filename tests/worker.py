"""A real Celery worker process (prefork pool, as in production) for integration and browser
tests, on the configured broker (Redis in CI, the filesystem transport otherwise) and sharing the
test database, whose data the tests commit (transactional tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def test_database_url() -> str:
    """The URL of the test database this process uses, for a worker process to share."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    auth = f"{user}:{db['PASSWORD']}" if db.get("PASSWORD") else user
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@contextmanager
def celery_worker(
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    name: str = "test",
    queues: str = "default,gpu,training,interactive",
    purge: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a worker on ``queues`` (all by default); stop it (and print its log tail) on exit."""
    from config.celery import app

    if purge:
        app.control.purge()  # stale messages from an earlier run must not reach this worker
    environ = (
        os.environ
        | {
            "DATABASE_URL": test_database_url(),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "TRAINING_DIR": str(settings.TRAINING_DIR),
            "MODEL_DIR": str(settings.MODEL_DIR),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "PLATFORM_VAR_DIR": str(settings.VAR_DIR),
        }
        | (env or {})
    )
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "--pool", "prefork",
        "--concurrency", "1", "-n", f"{name}-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle",
        "--loglevel", "INFO",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        # its own process group, so that a fault test can SIGKILL the whole group at once
        process = subprocess.Popen(
            command, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(log_path.read_text()[-4000:])
