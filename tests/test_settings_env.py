from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import env

ROOT = Path(__file__).resolve().parents[1]


def test_helpers_parse_and_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_INT", "12")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert env.env_bool("X_BOOL", False) is True
    assert env.env_int("X_INT", 0) == 12
    assert env.env_list("X_LIST", []) == ["a", "b", "c"]
    assert env.env_int("X_MISSING", 7) == 7
    monkeypatch.setenv("X_BOOL", "ture")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        env.env_bool("X_BOOL", False)
    monkeypatch.setenv("X_INT", "twelve")
    with pytest.raises(ImproperlyConfigured, match="X_INT"):
        env.env_int("X_INT", 0)
    monkeypatch.setenv("X_INT", "-1")
    with pytest.raises(ImproperlyConfigured, match="minimum"):
        env.env_int("X_INT", 0, minimum=0)
    monkeypatch.setenv("X_URL", "mysql://x")
    with pytest.raises(ImproperlyConfigured, match="X_URL"):
        env.env_url("X_URL", "sqlite://", schemes={"sqlite", "postgres"})


def _settings_in_subprocess(extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_", "CACHE_"))}
    environ |= {"PLATFORM_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"} | extra
    code = "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['ENGINE'], settings.CELERY_BROKER_URL)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def test_malformed_setting_stops_startup(tmp_path: Path) -> None:
    result = _settings_in_subprocess({"DJANGO_DEBUG": "maybe"}, tmp_path)
    assert result.returncode != 0 and "DJANGO_DEBUG" in result.stderr


def test_secret_key_required_without_debug_and_generated_with_it(tmp_path: Path) -> None:
    result = _settings_in_subprocess({}, tmp_path)
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr
    result = _settings_in_subprocess({"DJANGO_DEBUG": "true"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sqlite3 filesystem://" in result.stdout
    assert len((tmp_path / "dev_secret_key").read_text()) > 40


@pytest.mark.parametrize("key", ["short", "a" * 60, "django-insecure-" + "x1y2z3" * 10])
def test_weak_secret_key_stops_startup_without_debug(tmp_path: Path, key: str) -> None:
    result = _settings_in_subprocess({"DJANGO_SECRET_KEY": key}, tmp_path)
    assert result.returncode != 0 and "DJANGO_SECRET_KEY is too weak" in result.stderr
    strong = _settings_in_subprocess({"DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}, tmp_path)
    assert strong.returncode == 0, strong.stderr


def test_urls_switch_to_postgres_and_redis_without_code_change(tmp_path: Path) -> None:
    result = _settings_in_subprocess(
        {"DJANGO_DEBUG": "true", "DATABASE_URL": "postgres://u@db:5432/x", "CELERY_BROKER_URL": "redis://r:6379/0"},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "postgresql redis://r:6379/0" in result.stdout
