"""Visitor resume tokens: a signed (visitor id, instance, expiry) so that sessions need no server state.

Format: ``v1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(token_secret, "v1." + payload part))>``.
A page reload or reconnect presents the token and gets the same visitor (hence the same
conversation) back; a token of another instance, another secret, or past its expiry is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets

from gateway.sdk import constant_time_equals

VERSION = "v1"
VISITOR_ID = re.compile(r"^v_[A-Za-z0-9_-]{16,64}$")
MAX_TOKEN_CHARS = 1024


class TokenError(Exception):
    """The token is malformed, forged, expired or belongs to another instance."""


def new_visitor_id() -> str:
    """Random and unguessable: the visitor id doubles as the conversation key."""
    return "v_" + secrets.token_urlsafe(18)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, signed: str) -> str:
    return _b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())


def issue_token(secret: str, visitor_id: str, instance: str, expires_at: int) -> str:
    payload = json.dumps({"v": visitor_id, "i": instance, "e": expires_at}, separators=(",", ":"))
    signed = f"{VERSION}.{_b64(payload.encode())}"
    return f"{signed}.{_mac(secret, signed)}"


def read_token(secret: str, token: str, instance: str, now: float) -> str:
    """The visitor id of a valid token; TokenError otherwise. The MAC is checked before parsing."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenError("malformed token")
    signed = f"{parts[0]}.{parts[1]}"
    if not constant_time_equals(parts[2], _mac(secret, signed)):
        raise TokenError("bad token signature")
    try:
        payload = json.loads(_unb64(parts[1]))
        visitor_id, bound_instance, expires_at = payload["v"], payload["i"], payload["e"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise TokenError("malformed token payload") from exc
    if not isinstance(visitor_id, str) or not VISITOR_ID.match(visitor_id):
        raise TokenError("malformed visitor id")
    if bound_instance != instance:
        raise TokenError("token of another instance")
    if not isinstance(expires_at, int) or expires_at <= now:
        raise TokenError("token expired")
    return visitor_id
