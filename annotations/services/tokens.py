"""API tokens for scripts: stored hashed, shown once, revocable, optionally confined to one project."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from annotations.models import (
    ApiToken,
    Project,
)
from core.errors import ServiceValidationError


def _token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(
    *, user: User, name: str, project: Project | None = None, expires_in_days: int | None = None
) -> tuple[ApiToken, str]:
    """Create a token; returns it with its secret, which is never stored and shown only once."""
    errors: dict[str, str] = {}
    if not name.strip():
        errors["name"] = "must not be empty"
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        errors["expires_in_days"] = "must be from 1 to 3650"
    if errors:
        raise ServiceValidationError("Invalid token.", errors)
    raw = "cyt_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        project=project,
        name=name.strip(),
        prefix=raw[:12],
        key_hash=_token_hash(raw),
        expires_at=timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    return token, raw


def api_token_revoke(*, token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])


def api_token_authenticate(*, raw: str) -> ApiToken | None:
    """The live token for ``raw``, or None. Records last use at most once a minute."""
    token = ApiToken.objects.select_related("user").filter(key_hash=_token_hash(raw)).first()
    now = timezone.now()
    if token is None or token.revoked_at is not None or not token.user.is_active:
        return None
    if token.expires_at is not None and token.expires_at <= now:
        return None
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
