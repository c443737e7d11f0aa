"""Webhook signatures: HMAC-SHA256 with the subscription's secret over ``f"{timestamp}.{body}"``.

The timestamp (Unix seconds, ``X-Cyto-Timestamp``) is inside the signed text, so a receiver
that refuses timestamps older than its tolerance refuses replays of an old delivery too; within
the tolerance it may also remember ``X-Cyto-Delivery`` ids it has handled. Standard library
only: receivers may copy :func:`signature_verify` as it is (docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SECRET_PREFIX = "whsec_"
SIGNATURE_SCHEME = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300


def secret_generate() -> str:
    """A new subscription secret (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature_compute(*, secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Cyto-Signature`` header's value: ``sha256=<hex>``."""
    signed = str(int(timestamp)).encode() + b"." + body
    return SIGNATURE_SCHEME + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_verify(
    *,
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a delivery is authentic and fresh: ``signature`` (the ``X-Cyto-Signature``
    header) is the HMAC of ``timestamp`` (``X-Cyto-Timestamp``) and the raw ``body`` bytes, and
    the timestamp is within ``tolerance`` seconds of ``now`` (either way: clocks drift).

    Compare in constant time, over the body as received (never a re-serialised JSON)."""
    try:
        stamp = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        return False
    expected = signature_compute(secret=secret, timestamp=stamp, body=body)
    return hmac.compare_digest(expected.encode(), (signature or "").strip().encode())
