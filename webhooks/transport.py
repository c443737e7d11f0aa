"""One HTTP POST of a delivery, to an address that ``webhooks.targets`` checked.

urllib3 (already installed with botocore) is given the checked IP address as the host to
connect to, the URL's host as the ``Host`` header, and for https the URL's host for SNI and
the certificate check: no second DNS lookup happens between the check and the connection.
Redirects are never followed (a 3xx is a failed attempt: following one would leave the
checked address), nothing is retried here (the delivery's attempts are), and the timeouts
bound every connect and read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import urllib3
from django.conf import settings
from urllib3.exceptions import HTTPError as Urllib3Error

from webhooks.targets import Target

EXCERPT_BYTES = 1024  # of a response body, kept in the delivery log


@dataclass
class PostResult:
    address: str = ""
    status_code: int | None = None
    ok: bool = False
    error: str = ""
    excerpt: str = ""
    duration_ms: float = 0.0


def _pool(target: Target, address: str) -> urllib3.HTTPConnectionPool:
    timeout = urllib3.Timeout(connect=settings.WEBHOOK_CONNECT_TIMEOUT, read=settings.WEBHOOK_READ_TIMEOUT)
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            target.port,
            timeout=timeout,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            assert_hostname=target.host,
            server_hostname=target.host,
        )
    return urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, retries=False)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def post(*, target: Target, addresses: list[str], body: bytes, headers: dict[str, str]) -> PostResult:
    """POST ``body`` to ``target`` at the first of ``addresses`` that takes the connection
    (each one checked). 2xx is success; anything else, or no answer, is a failure."""
    result = PostResult()
    started = time.perf_counter()
    sent_headers = {**headers, "Host": target.host_header}
    for address in addresses:
        result.address = address
        pool = _pool(target, address)
        try:
            try:
                response = pool.urlopen(
                    "POST",
                    target.path,
                    body=body,
                    headers=sent_headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    assert_same_host=False,
                )
            except urllib3.exceptions.NewConnectionError as exc:
                result.error = _error(exc)
                continue  # refused: the next address of the name, if any
            except (Urllib3Error, OSError) as exc:
                result.error = _error(exc)
                break
            try:
                result.status_code = response.status
                try:
                    raw = response.read(EXCERPT_BYTES)
                except (Urllib3Error, OSError):
                    raw = b""
                # PostgreSQL text holds no NUL character
                result.excerpt = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
                if 200 <= response.status < 300:
                    result.ok, result.error = True, ""
                elif 300 <= response.status < 400:
                    location = response.headers.get("Location", "")[:200]
                    result.error = f"HTTP {response.status}: redirects are not followed (Location: {location})"
                else:
                    result.error = f"HTTP {response.status}"
            finally:
                response.close()
            break
        finally:
            pool.close()
    result.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return result
