"""Typed exceptions for the server's error answers.

The server answers every error in one JSON shape, ``{"detail": "...", "errors": {field: message}}``
(core/api/errors.py); a 409 adds the server's current state (``revision`` and ``cells`` for a stale
cell save, ``status`` and ``allowed_actions`` for a refused transition), a 429 a ``Retry-After``
header. :func:`error_from_response` turns such an answer into the exception of its kind, each
carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cytoclient.models import Cell, CellConflict


class CytoError(Exception):
    """Base of every error this package raises."""


class ConfigurationError(CytoError):
    """No server URL or token, or a configuration file that may not be read (its permissions)."""


class TransportError(CytoError):
    """The server could not be reached or the connection broke (no HTTP answer)."""


class ProtocolError(CytoError):
    """The server answered something this client does not understand (not the API, or a drifted one)."""


class IncompatibleServerError(CytoError):
    """The server speaks an API version this client cannot use (another major version)."""

    def __init__(self, message: str, *, server_version: str, client_version: str) -> None:
        super().__init__(message)
        self.server_version = server_version
        self.client_version = client_version


class CompatibilityWarning(UserWarning):
    """The server's API is older than the client's: some calls may not exist there."""


class ApiError(CytoError):
    """An HTTP error answer from the API. ``detail`` is the server's message, ``payload`` its whole
    JSON body (empty when the body was not JSON)."""

    status_code: int = 0

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        payload: Mapping[str, Any] | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.payload: dict[str, Any] = dict(payload or {})
        self.method = method
        self.url = url
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.status_code} {self.detail}" if self.status_code else self.detail


class ValidationError(ApiError):
    """HTTP 400 (or 413/415): the request was refused as invalid and nothing changed.

    ``errors`` maps each offending field, as a dotted path (``name``, ``cells.3``,
    ``config.cellpose.n_epoch``, ``files.0``), to the server's message about it; ``field`` is the
    first of them; ``raw_errors`` is the server's ``errors`` object as it came.
    """

    status_code = 400

    def __init__(self, detail: str, **kwargs: Any) -> None:
        payload = kwargs.get("payload") or {}
        raw = payload.get("errors")
        self.raw_errors: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        self.errors: dict[str, str] = flatten_errors(raw) if raw is not None else {}
        self.field: str | None = next(iter(self.errors), None)
        super().__init__(detail, **kwargs)

    def _message(self) -> str:
        base = super()._message()
        if not self.errors:
            return base
        shown = list(self.errors.items())[:10]
        more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
        return base + ": " + "; ".join(f"{k}: {v}" for k, v in shown) + more


class UploadError(ValidationError):
    """A batch of an image upload was refused (nothing of that batch was stored).

    ``errors`` is keyed by the refused file's path (the server's ``files.<n>`` of the batch);
    ``uploaded`` lists the images the earlier batches stored (:class:`~cytoclient.models.Image`),
    so that a run can be resumed (uploads skip files already in the project by default).
    """

    def __init__(self, detail: str, *, uploaded: list[Any] | None = None, **kwargs: Any) -> None:
        self.uploaded: list[Any] = list(uploaded or [])
        super().__init__(detail, **kwargs)


class AuthenticationError(ApiError):
    """HTTP 401: no token, or one that is wrong, revoked or expired."""

    status_code = 401


class PermissionDeniedError(ApiError):
    """HTTP 403: the token's user may see the object but their role may not do this."""

    status_code = 403


class NotFoundError(ApiError):
    """HTTP 404: no such object, or one the user is not a member of."""

    status_code = 404


class ConflictError(ApiError):
    """HTTP 409: a write based on a stale revision, or an object in the wrong state; nothing changed.

    For a cell save (or restore, or proposal accept) ``revision`` and ``cells`` are the server's
    current annotation layer: merge your change into them and save again with that revision.
    For a delta save (``cells.patch``) ``revision`` is the layer's revision now, ``conflicts`` the
    edits that met others' (:class:`~cytoclient.models.CellConflict`: item, id, reason, revision),
    ``cells`` the server's current version of only the cells concerned and ``deleted`` the ids
    concerned that no longer exist: take those, drop your edits of them, and send the rest again.
    For a refused transition (or a locked image) ``status`` and ``allowed_actions`` say where the
    image is.
    """

    status_code = 409

    def __init__(self, detail: str, **kwargs: Any) -> None:
        from cytoclient.models import Cell, CellConflict

        payload = kwargs.get("payload") or {}
        revision = payload.get("revision")
        self.revision: int | None = revision if isinstance(revision, int) else None
        cells = payload.get("cells")
        self.cells: list[Cell] | None = (
            [Cell.from_api(c) for c in cells if isinstance(c, Mapping)] if isinstance(cells, list) else None
        )
        conflicts = payload.get("conflicts")
        self.conflicts: list[CellConflict] | None = (
            [CellConflict.from_api(c) for c in conflicts if isinstance(c, Mapping)]
            if isinstance(conflicts, list)
            else None
        )
        deleted = payload.get("deleted")
        self.deleted: list[int] | None = (
            [d for d in deleted if isinstance(d, int)] if isinstance(deleted, list) else None
        )
        status = payload.get("status")
        self.status: str | None = status if isinstance(status, str) else None
        actions = payload.get("allowed_actions")
        self.allowed_actions: list[str] | None = list(actions) if isinstance(actions, list) else None
        super().__init__(detail, **kwargs)

    def _message(self) -> str:
        base = super()._message()
        if self.revision is not None:
            return f"{base} (the server's revision is {self.revision})"
        return base


class GoneError(ApiError):
    """HTTP 410: the object existed but is no longer available (an expired export download)."""

    status_code = 410


class ThrottledError(ApiError):
    """HTTP 429: too many requests; ``retry_after`` is the seconds the server asks to wait."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(detail, **kwargs)

    def _message(self) -> str:
        base = super()._message()
        return f"{base} (retry after {self.retry_after:g} s)" if self.retry_after is not None else base


class ServerError(ApiError):
    """HTTP 5xx: the server failed (it logged the traceback; the answer says no more)."""

    status_code = 500


class UnavailableError(ServerError):
    """HTTP 503: the work is under way on the server and did not finish in time (a first click
    waiting for the model's maps); the same request may be sent again after ``retry_after``
    seconds."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(detail, **kwargs)


class JobFailedError(CytoError):
    """A training or export job the client waited for ended failed or cancelled. ``job`` is its
    last state (a :class:`~cytoclient.models.TrainingJob` or :class:`~cytoclient.models.ExportJob`)."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


class WaitTimeoutError(CytoError):
    """A job did not finish within the time the caller allowed; ``job`` is its last state."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: ValidationError,
    415: ValidationError,
    429: ThrottledError,
}


def flatten_errors(errors: Any, prefix: str = "") -> dict[str, str]:
    """The server's ``errors`` object as ``{dotted path: message}``.

    The server nests them as DRF does (``{"classes": [{}, {"name": ["..."]}]}``) or keys them
    by path already (``{"cells": {"3": ["..."]}}``, ``{"config.cellpose.n_epoch": "..."}``);
    lists of messages are joined with ``; ``.
    """
    out: dict[str, str] = {}
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            out.update(flatten_errors(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(errors, list | tuple):
        if all(isinstance(item, str | int | float) for item in errors):
            if errors:
                out[prefix or "non_field_errors"] = "; ".join(str(item) for item in errors)
        else:
            for index, item in enumerate(errors):
                if item in ({}, [], None):
                    continue  # DRF lists a valid item of a many-list as {}
                out.update(flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)))
    elif errors is not None:
        out[prefix or "non_field_errors"] = str(errors)
    return out


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: not sent by this server


def error_from_response(
    status_code: int,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    method: str = "",
    url: str = "",
) -> ApiError:
    """The exception for an error answer: its class by status code, the server's ``detail``."""
    payload: dict[str, Any] = dict(body) if isinstance(body, Mapping) else {}
    detail = payload.get("detail")
    if not isinstance(detail, str) or not detail:
        text = body if isinstance(body, str) else ""
        detail = text.strip()[:500] or f"HTTP {status_code}"
    kwargs: dict[str, Any] = {"status_code": status_code, "payload": payload, "method": method, "url": url}
    if status_code == 503:
        return UnavailableError(detail, retry_after=_retry_after((headers or {}).get("Retry-After")), **kwargs)
    if status_code >= 500:
        return ServerError(detail, **kwargs)
    cls = _BY_STATUS.get(status_code, ApiError)
    if cls is ThrottledError:
        return ThrottledError(detail, retry_after=_retry_after((headers or {}).get("Retry-After")), **kwargs)
    return cls(detail, **kwargs)
