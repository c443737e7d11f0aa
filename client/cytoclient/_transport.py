"""HTTP underneath the client: the token, the API's address, error answers as exceptions,
waiting out rate limits, and the API version check before the first call."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from cytoclient._version import API_VERSION, __version__
from cytoclient.endpoints import SCHEMA, Endpoint
from cytoclient.errors import (
    CompatibilityWarning,
    IncompatibleServerError,
    ProtocolError,
    ThrottledError,
    TransportError,
    error_from_response,
)

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Uploads, imports and exports may take the server minutes (decoding images, writing zips).
LONG_TIMEOUT = httpx.Timeout(600.0, connect=10.0)

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def api_root(url: str) -> str:
    """The API's address (``.../api/v1/``) from the server's (``https://host``, ``https://host/``
    or the API's own address)."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise ValueError(f"not an http(s) URL: {url!r}")
    url = re.sub(r"/api/v1$", "", url)
    return url + "/api/v1/"


def version_tuple(version: str) -> tuple[int, int, int]:
    match = _VERSION.match(version.strip())
    if not match:
        raise ValueError(f"not a version number: {version!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def check_compatibility(server_version: str, client_version: str = API_VERSION) -> str:
    """Whether this client may talk to a server of ``server_version`` (its schema's ``info.version``).

    Another major version raises :class:`IncompatibleServerError` (the API changed in ways this
    client does not know); an older minor version warns (:class:`CompatibilityWarning`: calls
    added since may be missing there); a newer one is fine (it only adds). Returns ``"same"``,
    ``"newer server"`` or ``"older server"``.
    """
    try:
        server, client = version_tuple(server_version), version_tuple(client_version)
    except ValueError as exc:
        raise ProtocolError(f"the server's API version is not understood: {exc}") from exc
    if server[0] != client[0]:
        raise IncompatibleServerError(
            f"the server speaks API {server_version} and this client (cytoclient {__version__}) API "
            f"{client_version}: install a cytoclient {server[0]}.x (pip install ./client from the server's repository)",
            server_version=server_version,
            client_version=client_version,
        )
    if server[:2] < client[:2]:
        warnings.warn(
            f"the server's API {server_version} is older than this client's {client_version}: "
            "calls added since may fail with 404",
            CompatibilityWarning,
            stacklevel=4,
        )
        return "older server"
    return "same" if server[:2] == client[:2] else "newer server"


class Transport:
    """One HTTP connection pool to the API with the token.

    ``max_throttle_retries``: a 429 is waited out (its ``Retry-After``, at most
    ``max_throttle_wait`` seconds) and the request sent again that many times before
    :class:`ThrottledError` is raised; a throttled request did nothing on the server, so this is
    safe for writes too.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        check_version: bool = True,
        max_throttle_retries: int = 3,
        max_throttle_wait: float = 60.0,
        verify: bool | str = True,
        http: httpx.Client | None = None,
    ) -> None:
        self.root = api_root(url)
        headers = {"User-Agent": f"cytoclient/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = http or httpx.Client(timeout=timeout, verify=verify, follow_redirects=False)
        self.http.headers.update(headers)
        self.check_version = check_version
        self.max_throttle_retries = max_throttle_retries
        self.max_throttle_wait = max_throttle_wait
        self.server_version: str | None = None
        self._checked = False

    def close(self) -> None:
        self.http.close()

    # --- the version check -------------------------------------------------------------------

    def server_api_version(self) -> str:
        """The server's API version (its OpenAPI schema's ``info.version``), fetched once."""
        if self.server_version is None:
            response = self._send(SCHEMA, {}, headers={"Accept": "application/vnd.oai.openapi+json"})
            try:
                version = response.json()["info"]["version"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ProtocolError(f"{self.root}schema is not an OpenAPI schema: is this the platform's URL?") from exc
            self.server_version = str(version)
        return self.server_version

    def ensure_compatible(self) -> None:
        """Check the server's API version against the client's once, before the first call."""
        if self.check_version and not self._checked:
            check_compatibility(self.server_api_version(), API_VERSION)
            self._checked = True  # only once it passed: an incompatible server is refused every call

    # --- requests ----------------------------------------------------------------------------

    def url(self, endpoint: Endpoint, path: Mapping[str, Any]) -> str:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in path:
                raise TypeError(f"{endpoint}: no value for {{{name}}}")
            return quote(str(path[name]), safe="")

        return self.root + re.sub(r"\{(\w+)\}", fill, endpoint.path)

    def call(
        self,
        endpoint: Endpoint,
        path: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, Any] | None = None,
        json: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        files: Sequence[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        """Send one request of ``endpoint`` and return its (successful) answer; an error answer
        raises the matching :class:`~cytoclient.errors.ApiError`."""
        self.ensure_compatible()
        return self._send(
            endpoint, path or {}, query=query, json=json, data=data, files=files, headers=headers, timeout=timeout
        )

    def json(self, endpoint: Endpoint, path: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """:meth:`call`, the answer's JSON body."""
        response = self.call(endpoint, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(f"{endpoint}: the answer is not JSON ({response.headers.get('content-type')})") from exc

    @contextmanager
    def stream(
        self,
        endpoint: Endpoint,
        path: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, Any] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> Iterator[httpx.Response]:
        """A GET whose (successful) answer is read as it arrives (``iter_bytes``); closed on exit."""
        self.ensure_compatible()
        response = self._send(endpoint, path or {}, query=query, timeout=timeout, stream=True)
        try:
            yield response
        finally:
            response.close()

    def _send(
        self,
        endpoint: Endpoint,
        path: Mapping[str, Any],
        *,
        query: Mapping[str, Any] | None = None,
        json: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        files: Sequence[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        params = _query(endpoint, query)
        _check_body(endpoint, json=json, data=data, files=files)
        url = self.url(endpoint, path)
        attempt = 0
        while True:
            request = self.http.build_request(
                endpoint.method.upper(),
                url,
                params=params,
                json=dict(json) if json is not None else None,
                data=_form(data) if data is not None else None,
                files=list(files) if files is not None else None,
                headers=dict(headers or {}),
                timeout=timeout if timeout is not None else self.http.timeout,
            )
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                raise TransportError(f"{endpoint}: no answer from {self.root} in time ({exc})") from exc
            except httpx.TransportError as exc:
                raise TransportError(f"{endpoint}: cannot reach {self.root}: {exc}") from exc
            if response.status_code < 400:
                return response
            error = _error(response, endpoint, url)
            if (
                isinstance(error, ThrottledError)
                and attempt < self.max_throttle_retries
                and (error.retry_after or 1.0) <= self.max_throttle_wait
            ):
                attempt += 1
                time.sleep(error.retry_after or 1.0)
                continue  # multipart files are read again from the start (httpx seeks them to 0)
            raise error


def _error(response: httpx.Response, endpoint: Endpoint, url: str) -> Exception:
    try:
        response.read()
        body: Any = response.json()
    except ValueError:
        body = response.text
    finally:
        response.close()
    return error_from_response(
        response.status_code, body, headers=response.headers, method=endpoint.method.upper(), url=url
    )


def _query(endpoint: Endpoint, query: Mapping[str, Any] | None) -> dict[str, str]:
    """The query string's parameters (None left out; booleans as 1/0; lists comma-joined), each
    one the endpoint lists."""
    params: dict[str, str] = {}
    for key, value in (query or {}).items():
        if value is None:
            continue
        if key not in endpoint.query:
            raise TypeError(f"{endpoint} takes no query parameter {key!r} (cytoclient/endpoints.py)")
        if isinstance(value, bool):
            params[key] = "1" if value else "0"
        elif isinstance(value, list | tuple | set | frozenset):
            params[key] = ",".join(str(v) for v in value)
        else:
            params[key] = str(value)
    return params


def _check_body(
    endpoint: Endpoint,
    *,
    json: Mapping[str, Any] | None,
    data: Mapping[str, Any] | None,
    files: Sequence[tuple[str, Any]] | None,
) -> None:
    """Refuse a body field the endpoint does not list, or a missing one it always sends: the
    endpoint table is what the drift test checks against the server's schema."""
    sent = set(json or {}) | {k for k, v in (data or {}).items() if v is not None} | {name for name, _ in files or ()}
    unknown = sent - endpoint.body
    if unknown:
        raise TypeError(f"{endpoint} takes no body field {', '.join(sorted(unknown))} (cytoclient/endpoints.py)")
    missing = endpoint.body_required - sent
    if missing:
        raise TypeError(f"{endpoint} needs {', '.join(sorted(missing))}")


def _form(data: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
