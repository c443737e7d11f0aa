"""DRF request throttles (``API_THROTTLE_ANON`` / ``API_THROTTLE_USER``), failing open.

The counters live in the cache (Redis in production). When the cache cannot be reached the
request goes through and the fault is logged: a Redis outage must not stop doctors saving their
contours (the saves themselves need only the database)."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)


class _FailOpen:
    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return bool(super().allow_request(request, view))  # type: ignore[misc]
        except Exception:
            logger.warning("API throttle: cache unavailable, request not throttled", exc_info=True)
            return True


class AnonThrottle(_FailOpen, AnonRateThrottle):
    """Requests without a session or token, per client address."""


class UserThrottle(_FailOpen, UserRateThrottle):
    """Requests of a signed-in user or token, per user."""


class TileThrottle(_FailOpen, UserRateThrottle):
    """Tiles of a slide, per user: one pan of the viewer asks for dozens of them, so they have
    a budget of their own (``API_THROTTLE_TILES``) instead of eating the user's."""

    scope = "tiles"
