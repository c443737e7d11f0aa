"""Idempotent writes: a write sent with an ``Idempotency-Key`` applies once; a retry replays it."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.errors import ServiceValidationError
from core.models import IdempotencyRecord


def json_default(value: Any) -> Any:
    """JSON form of the values API bodies hold besides JSON's own (as the API's encoder writes
    them: UTC datetimes end in ``Z``), so that a replayed body equals the first response."""
    if isinstance(value, datetime.datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def idempotent_call(
    *,
    user: User,
    key: str | None,
    scope: str,
    payload: Any,
    run: Callable[[], tuple[int, dict[str, Any]]],
) -> tuple[int, dict[str, Any]]:
    """Run a write once per (user, Idempotency-Key): a retry replays the stored response.

    The record is written in the same transaction as the write, so a retry after a lost
    response can never apply the write twice; a retry sent while the first is still running
    waits for it and replays its response. Reusing a key for a different request is an error.
    """
    if not key:
        return run()
    if len(key) > 128:
        raise ServiceValidationError("Invalid Idempotency-Key.", {"Idempotency-Key": "at most 128 characters"})
    request_hash = hashlib.sha256(json.dumps([scope, payload], sort_keys=True, default=str).encode()).hexdigest()

    def replay(record: IdempotencyRecord) -> tuple[int, dict[str, Any]]:
        if record.request_hash != request_hash:
            raise ServiceValidationError(
                "Idempotency-Key reused for a different request.",
                {"Idempotency-Key": "this key was already used for a different request"},
            )
        return record.status_code, record.response

    record = IdempotencyRecord.objects.filter(user=user, key=key).first()
    if record is not None:
        return replay(record)
    try:
        with transaction.atomic():
            # A concurrent request with the same key waits here until the first one commits (or
            # rolls back), then replays its response instead of running the write again (which
            # would answer 409: the first one moved the revision on).
            _key_lock(user.pk, key)
            record = IdempotencyRecord.objects.filter(user=user, key=key).first()
            if record is not None:
                return replay(record)
            status, body = run()
            # Stored and returned in its JSON form so that a replay is byte-for-byte the same.
            body = json.loads(json.dumps(body, default=json_default))
            IdempotencyRecord.objects.create(
                user=user, key=key, scope=scope, request_hash=request_hash, status_code=status, response=body
            )
            return status, body
    except IntegrityError:
        # Backstop where no lock serialised the two (another database): the first one's response.
        record = IdempotencyRecord.objects.filter(user=user, key=key).first()
        if record is None:
            raise
        return replay(record)


def _key_lock(user_id: int, key: str) -> None:
    """Hold a lock on (user, key) until the current transaction ends. PostgreSQL: an advisory
    transaction lock. SQLite (the embedded default) opens its transactions IMMEDIATE, which
    serialises every writer already."""
    if connection.vendor != "postgresql":
        return
    digest = hashlib.blake2b(f"idempotency:{user_id}:{key}".encode(), digest_size=8).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest, "big", signed=True)])


def idempotency_prune() -> int:
    """Delete idempotency records older than IDEMPOTENCY_TTL_HOURS; returns how many."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
