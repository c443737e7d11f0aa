"""Password logins, throttled on every login path (the API's and the admin's) by one backend.

Why our own and not django-axes: the policy is three cache counters and fits here, and axes'
default keys lock a user name out for everyone, the fault this module replaces. Failures count
per (user name, client address) and per client address:

* ``LOGIN_MAX_FAILURES`` wrong passwords for one name from one address lock that pair for
  ``LOGIN_LOCKOUT_SECONDS``, even with the right password: the guesser is stopped, while the
  real user, from another address, still logs in (a lock per name alone let anyone lock any
  user out);
* 4x that many failures from one address, whatever the names (password spraying), lock the
  address for the same time.

Guessing from many addresses at once is bounded by these per-address limits and by the
password validators. The counters live in the cache (Redis in production); when the cache
cannot be reached the check lets the attempt through and logs it, so that a Redis outage does
not lock every user out.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from core.errors import RateLimitedError, ServiceValidationError

logger = logging.getLogger(__name__)


def _keys(username: str, address: str) -> tuple[str, str]:
    name = hashlib.sha256(f"{username.lower()}\x00{address}".encode()).hexdigest()[:32]
    return f"login-fail:pair:{name}", f"login-fail:ip:{address}"


def request_address(request: HttpRequest | None) -> str:
    """The client address of a request (``REMOTE_ADDR``; a proxy in front must set it)."""
    if request is None:
        return "unknown"
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def login_locked(*, username: str, address: str) -> bool:
    """Whether logins of ``username`` from ``address`` are locked now."""
    limit = settings.LOGIN_MAX_FAILURES
    pair, ip = _keys(username, address)
    try:
        counts = cache.get_many([pair, ip])
    except Exception:  # the cache is down: let the attempt through (see the module docstring)
        logger.warning("login throttle: cache unavailable, not checked", exc_info=True)
        return False
    return int(counts.get(pair, 0)) >= limit or int(counts.get(ip, 0)) >= 4 * limit


def _count_failure(username: str, address: str) -> None:
    lockout = settings.LOGIN_LOCKOUT_SECONDS
    try:
        for key in _keys(username, address):
            if not cache.add(key, 1, timeout=lockout):
                try:
                    cache.incr(key)
                except ValueError:  # expired between add and incr
                    cache.set(key, 1, timeout=lockout)
    except Exception:
        logger.warning("login throttle: cache unavailable, failure not counted", exc_info=True)


def _clear(username: str, address: str) -> None:
    try:
        cache.delete(_keys(username, address)[0])
    except Exception:
        logger.warning("login throttle: cache unavailable", exc_info=True)


class ThrottledModelBackend(ModelBackend):
    """Django's model backend behind the login throttle: every ``authenticate`` call with a
    password (API login, admin login) is checked and counted here."""

    def authenticate(  # type: ignore[override]
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        client_address: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if username is None or password is None:
            return None
        address = client_address or request_address(request)
        if login_locked(username=username, address=address):
            # PermissionDenied stops Django trying other backends: the answer is "no login"
            raise PermissionDenied("too many failed logins")
        user = cast(User | None, super().authenticate(request, username=username, password=password, **kwargs))
        if user is None:
            _count_failure(username, address)
        else:
            _clear(username, address)
        return user


def user_login_check(*, username: str, password: str, ip: str) -> User:
    """Authenticate through the throttled backend: 429 (``RateLimitedError``, Retry-After
    ``LOGIN_LOCKOUT_SECONDS``) while this name is locked from this address, 400 on a wrong
    name or password."""
    if login_locked(username=username, address=ip):
        raise RateLimitedError("Too many failed logins; try again later.", retry_after=settings.LOGIN_LOCKOUT_SECONDS)
    user = cast(User | None, authenticate(None, username=username, password=password, client_address=ip))
    if user is None:
        raise ServiceValidationError("Wrong user name or password.", {"password": "wrong user name or password"})
    return user
