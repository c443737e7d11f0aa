"""Test-session set-up shared by every test folder.

In CI (CI=true) the suite must run on the real PostgreSQL and Redis; if either is missing the
session fails instead of silently falling back to the embedded SQLite/filesystem default.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Fixtures more than one test folder uses (a folder's own conftest may override them).
pytest_plugins = ("tests.fixtures",)


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI", "").lower() != "true":
        return
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    broker = settings.CELERY_BROKER_URL
    problems = []
    if "postgresql" not in engine:
        problems.append(f"database engine is {engine}, expected PostgreSQL (set DATABASE_URL)")
    if not broker.startswith("redis://"):
        problems.append(f"Celery broker is {broker}, expected Redis (set CELERY_BROKER_URL)")
    if problems:
        pytest.exit("CI=true but " + "; ".join(problems), returncode=1)


@pytest.fixture(autouse=True)
def _media_root(settings: object, tmp_path: Path) -> None:
    # Each test writes images, trained and uploaded models into its own folders; nothing leaks
    # between tests.
    settings.MEDIA_ROOT = str(tmp_path / "media")  # type: ignore[attr-defined]
    settings.TRAINING_DIR = str(tmp_path / "training")  # type: ignore[attr-defined]
    settings.MODEL_DIR = str(tmp_path / "models")  # type: ignore[attr-defined]
    settings.MODEL_CACHE_DIR = str(tmp_path / "model-cache")  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    from django.core.cache import cache

    cache.clear()
