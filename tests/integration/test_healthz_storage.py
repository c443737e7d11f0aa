"""GET /healthz with the default storage in an S3 bucket (django-storages against a real
S3-protocol server of the test's own, tests/s3.py): healthy while the server answers, leaves no
probe object behind, and a 503 naming the storage, without the secret key, once it is gone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from core import health
from tests.s3 import SECRET_KEY, S3Server, s3_server

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


@pytest.fixture
def s3(tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Server, str]]:
    monkeypatch.setattr(health, "_hung", {})
    with s3_server(tmp_path) as server:
        prefix = f"t-{uuid.uuid4().hex[:10]}"
        settings.STORAGES = server.storages_setting(prefix)
        yield server, prefix


def test_storage_check_on_s3(s3: tuple[S3Server, str]) -> None:
    server, prefix = s3
    response = Client().get("/healthz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"]["storage"]["ok"] is True
    assert server.keys(prefix) == []  # the probe object was deleted

    server.kill()
    started = time.monotonic()
    response = Client().get("/healthz")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert [name for name, check in body["checks"].items() if not check["ok"]] == ["storage"]
    assert SECRET_KEY not in response.content.decode()
