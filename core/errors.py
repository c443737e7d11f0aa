"""The project's own errors. Services and selectors raise these (never HTTP or DRF exceptions);
``core.api.errors.exception_handler`` is the one place that maps them to HTTP."""

from __future__ import annotations

from typing import Any


class ServiceValidationError(Exception):
    """Bad input (HTTP 400). ``errors`` maps field names (or ``cells.3``) to messages."""

    def __init__(self, detail: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or {}


class ConflictError(Exception):
    """The write was based on stale state or the object is in the wrong state (HTTP 409).
    ``payload`` carries the current state so the client can resolve the conflict."""

    def __init__(self, detail: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.payload = payload or {}


class PermissionDeniedError(Exception):
    """The caller may see the object but their role may not do this (HTTP 403)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(Exception):
    """No such object, or one the caller may not know exists (HTTP 404)."""

    def __init__(self, detail: str = "Not found.") -> None:
        super().__init__(detail)
        self.detail = detail


class GoneError(Exception):
    """The object existed but is no longer available, e.g. an expired download (HTTP 410)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RateLimitedError(Exception):
    """Too many attempts (HTTP 429)."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class UnavailableError(Exception):
    """The work is under way elsewhere and did not finish in time; the same request may be
    sent again after ``retry_after`` seconds (HTTP 503)."""

    def __init__(self, detail: str, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
