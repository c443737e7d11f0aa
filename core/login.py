"""Password logins, throttled per user name and per client address."""

from __future__ import annotations

import hashlib
from typing import cast

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.cache import cache

from core.errors import RateLimitedError, ServiceValidationError


def _login_keys(username: str, ip: str) -> tuple[str, str]:
    user_key = hashlib.sha256(username.lower().encode()).hexdigest()[:32]
    return f"login-fail:user:{user_key}", f"login-fail:ip:{ip}"


def user_login_check(*, username: str, password: str, ip: str) -> User:
    """Authenticate, rate limited per user name and per client address.

    After LOGIN_MAX_FAILURES failures (per name, or 4x that per address) further attempts are
    refused for LOGIN_LOCKOUT_SECONDS, even with the right password.
    """
    limit, lockout = settings.LOGIN_MAX_FAILURES, settings.LOGIN_LOCKOUT_SECONDS
    user_key, ip_key = _login_keys(username, ip)
    if cache.get(user_key, 0) >= limit or cache.get(ip_key, 0) >= 4 * limit:
        raise RateLimitedError("Too many failed logins; try again later.", retry_after=lockout)
    user = cast(User | None, authenticate(username=username, password=password))
    if user is None:
        for key in (user_key, ip_key):
            if not cache.add(key, 1, timeout=lockout):
                try:
                    cache.incr(key)
                except ValueError:
                    cache.set(key, 1, timeout=lockout)
        raise ServiceValidationError("Wrong user name or password.", {"password": "wrong user name or password"})
    cache.delete(user_key)
    return user
