"""Signatures: HMAC-SHA256 over ``timestamp.body``, checked in constant time with a tolerance."""

from __future__ import annotations

import hashlib
import hmac

from webhooks.signing import SECRET_PREFIX, secret_generate, signature_compute, signature_verify

SECRET = "whsec_test-secret"
BODY = b'{"id":"d1","event":"ping","project":1,"created_at":"2026-01-01T00:00:00Z","data":{}}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature_compute(secret=SECRET, timestamp=1700000000, body=BODY) == f"sha256={expected}"


def test_verify_accepts_a_fresh_authentic_delivery() -> None:
    signature = signature_compute(secret=SECRET, timestamp=1700000000, body=BODY)
    assert signature_verify(secret=SECRET, body=BODY, timestamp="1700000000", signature=signature, now=1700000100)


def test_verify_refuses_tampering_wrong_secret_and_malformed_headers() -> None:
    signature = signature_compute(secret=SECRET, timestamp=1700000000, body=BODY)
    ok = {"timestamp": "1700000000", "now": 1700000000.0}
    assert not signature_verify(secret=SECRET, body=BODY + b" ", signature=signature, **ok)
    assert not signature_verify(secret="whsec_other", body=BODY, signature=signature, **ok)
    assert not signature_verify(secret=SECRET, body=BODY, signature=signature.replace("sha256=", ""), **ok)
    assert not signature_verify(secret=SECRET, body=BODY, signature="", **ok)
    # the timestamp is signed: a replay with a fresh timestamp does not verify
    assert not signature_verify(secret=SECRET, body=BODY, timestamp="1700000001", signature=signature, now=1700000001)
    assert not signature_verify(secret=SECRET, body=BODY, timestamp="soon", signature=signature, now=1700000000)


def test_verify_refuses_timestamps_outside_the_tolerance_either_way() -> None:
    signature = signature_compute(secret=SECRET, timestamp=1700000000, body=BODY)
    kwargs = {"secret": SECRET, "body": BODY, "timestamp": "1700000000", "signature": signature}
    assert signature_verify(**kwargs, now=1700000300)
    assert not signature_verify(**kwargs, now=1700000301)  # a replay after 5 minutes
    assert not signature_verify(**kwargs, now=1699999699)  # from the future
    assert signature_verify(**kwargs, now=1700000500, tolerance=600)


def test_secrets_are_random_and_prefixed() -> None:
    first, second = secret_generate(), secret_generate()
    assert first.startswith(SECRET_PREFIX) and len(first) >= len(SECRET_PREFIX) + 43
    assert first != second
