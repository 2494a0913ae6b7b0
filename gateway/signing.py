"""Signature helpers for channel adapters. Every comparison is constant-time."""

from __future__ import annotations

import base64
import hashlib
import hmac


def hmac_sha256_hex(secret: str | bytes, payload: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def hmac_sha256_b64(secret: str | bytes, payload: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, payload, hashlib.sha256).digest()).decode()


def hmac_sha1_b64(secret: str | bytes, payload: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, payload, hashlib.sha1).digest()).decode()


def constant_time_equals(given: str | bytes | None, expected: str | bytes) -> bool:
    if given is None:
        return False
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def verify_prefixed_hex(header: str | None, secret: str | bytes, payload: bytes, prefix: str = "sha256=") -> bool:
    """Check headers like ``sha256=<hex>`` (Meta, our API channel); hex case-insensitive."""
    if not header or not header.startswith(prefix):
        return False
    return constant_time_equals(header[len(prefix) :].strip().lower(), hmac_sha256_hex(secret, payload))
