"""Who may use the console: named users with Argon2 hashes, OIDC (oidc.py) and one-time links, all
ending in one kind of session.

Sessions live in Redis under the SHA-256 of their cookie token, so every `serve` replica knows
every session and a copy of Redis holds nothing a browser could present. Each session carries its
own CSRF token: a state-changing request must send it in ``X-CSRF-Token`` (on top of the
``SameSite=Strict`` cookie and an ``Origin`` check), which a page of another site cannot read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from typing import Literal
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.exceptions import RedisError

from gateway.config import ConsoleRole, ConsoleSection, HttpSection
from gateway.store.redis import RedisStore

COOKIE = "gw_console"
CSRF_HEADER = "X-CSRF-Token"
ONE_TIME_TTL_S = 3600
Via = Literal["password", "oidc", "one-time"]
Permission = Literal["read", "unmask", "replay", "send_test", "audit"]
ROLES: tuple[ConsoleRole, ...] = ("viewer", "operator", "admin")
PERMISSIONS: dict[ConsoleRole, tuple[Permission, ...]] = {
    "viewer": ("read",),
    "operator": ("read", "unmask", "replay", "send_test"),
    "admin": ("read", "unmask", "replay", "send_test", "audit"),
}


class Session(msgspec.Struct, kw_only=True):
    user: str
    role: ConsoleRole
    via: Via
    csrf: str
    created_at: float
    expires_at: float

    @property
    def permissions(self) -> tuple[Permission, ...]:
        return PERMISSIONS[self.role]

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    def to_json(self) -> dict[str, object]:
        return {
            "user": self.user,
            "role": self.role,
            "via": self.via,
            "csrf": self.csrf,
            "permissions": list(self.permissions),
            "expires_at": self.expires_at,
        }


class OneTimeGrant(msgspec.Struct, kw_only=True):
    user: str
    role: ConsoleRole


def problem(status: int, detail: str) -> web.HTTPException:
    """A JSON error the console's pages show as is."""
    error_class: type[web.HTTPException] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        429: web.HTTPTooManyRequests,
        503: web.HTTPServiceUnavailable,
    }[status]
    return error_class(text=msgspec.json.encode({"error": detail}).decode(), content_type="application/json")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def highest_role(roles: list[ConsoleRole]) -> ConsoleRole | None:
    return max(roles, key=ROLES.index) if roles else None


class ConsoleAuth:
    """Password checks, sessions, CSRF and the failed-login limit; Redis is the only state."""

    def __init__(self, settings: ConsoleSection, http: HttpSection, store: RedisStore) -> None:
        self.settings = settings
        self.http = http
        self.store = store
        self.hasher = PasswordHasher()
        # Unknown user names are checked against this, so they take as long as known ones.
        self._decoy = self.hasher.hash(secrets.token_hex(16))
        self._session_codec = msgspec.json.Decoder(Session)
        self._grant_codec = msgspec.json.Decoder(OneTimeGrant)

    # Passwords -------------------------------------------------------------------------------

    async def check_password(self, username: str, password: str) -> ConsoleRole | None:
        """The user's role when the password matches its hash (Argon2 runs in a thread: ~50 ms of CPU)."""
        user = self.settings.users.get(username)
        digest = user.password_hash if user is not None else self._decoy
        try:
            await asyncio.to_thread(self.hasher.verify, digest, password)
        except (VerificationError, InvalidHashError):
            return None
        return user.role if user is not None else None

    async def login_blocked(self, username: str, remote: str) -> bool:
        """Too many failed sign-ins for this name or from this address within the window."""
        keys = [self._failures_key("user", username), self._failures_key("remote", remote)]
        counts = await self.store.client.mget(keys)
        return any(int(count or 0) >= self.settings.login_attempts for count in counts)

    async def login_failed(self, username: str, remote: str) -> None:
        pipe = self.store.client.pipeline(transaction=False)
        for key in (self._failures_key("user", username), self._failures_key("remote", remote)):
            pipe.incr(key)
            pipe.expire(key, self.settings.login_window_s, nx=True)
        await pipe.execute()

    def _failures_key(self, kind: str, value: str) -> str:
        return self.store.key("console", "login-failures", kind, _digest(value.lower()))

    # Sessions --------------------------------------------------------------------------------

    async def create_session(self, user: str, role: ConsoleRole, via: Via) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(
            user=user,
            role=role,
            via=via,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.settings.session_ttl_s,
        )
        key = self.store.key("console", "session", _digest(token))
        await self.store.client.set(key, msgspec.json.encode(session), ex=self.settings.session_ttl_s)
        return token, session

    async def session(self, request: web.Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 128:
            return None
        raw = await self.store.client.get(self.store.key("console", "session", _digest(token)))
        if raw is None:
            return None
        session = self._session_codec.decode(raw)
        # Roles come from the configuration at every request: a user removed or demoted there
        # loses the access at once, not when the session expires.
        if session.via != "oidc":
            configured = self.settings.users.get(session.user)
            if configured is None:
                return None
            session.role = configured.role
        return session

    async def end_session(self, request: web.Request) -> None:
        token = request.cookies.get(COOKIE)
        if token:
            await self.store.client.delete(self.store.key("console", "session", _digest(token)))

    def secure(self, request: web.Request) -> bool:
        mode = self.settings.secure_cookies
        if mode != "auto":
            return mode == "always"
        if request.secure:
            return True
        if self.http.trust_forwarded_headers:
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto == "https":
                return True
        return bool(self.http.public_url and self.http.public_url.lower().startswith("https://"))

    def set_cookie(self, response: web.StreamResponse, request: web.Request, token: str) -> None:
        response.set_cookie(
            COOKIE,
            token,
            max_age=self.settings.session_ttl_s,
            path="/console",
            httponly=True,
            secure=self.secure(request),
            samesite="Strict",
        )

    def clear_cookie(self, response: web.StreamResponse, request: web.Request) -> None:
        response.del_cookie(COOKIE, path="/console", secure=self.secure(request), samesite="Strict")

    # CSRF ------------------------------------------------------------------------------------

    def origin(self, request: web.Request) -> str:
        """The console's own origin, as the browser sees it."""
        if self.http.public_url:
            parts = urlsplit(self.http.public_url)
            return f"{parts.scheme}://{parts.netloc}".lower()
        scheme, host = request.scheme, request.host
        if self.http.trust_forwarded_headers:
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{scheme}://{host}".lower()

    def same_origin(self, request: web.Request) -> bool:
        """False for a request a browser marked as coming from another site."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        return origin is None or origin.lower() == self.origin(request)

    def csrf_ok(self, request: web.Request, session: Session) -> bool:
        sent = request.headers.get(CSRF_HEADER, "")
        return self.same_origin(request) and hmac.compare_digest(sent.encode(), session.csrf.encode())

    async def require(self, request: web.Request, permission: Permission, *, changes: bool = False) -> Session:
        """The request's session when it may do this; 401/403 otherwise (503 when Redis is down)."""
        try:
            session = await self.session(request)
        except (RedisError, OSError):
            raise problem(503, "sessions are unavailable (Redis)") from None
        if session is None:
            raise problem(401, "sign in first")
        if changes and not self.csrf_ok(request, session):
            raise problem(403, "missing or wrong CSRF token")
        if not session.may(permission):
            raise problem(403, f"the {session.role} role may not {permission.replace('_', ' ')}")
        return session

    # One-time links --------------------------------------------------------------------------

    async def issue_one_time(self, user: str, role: ConsoleRole, ttl_s: int = ONE_TIME_TTL_S) -> str:
        """A token that signs its holder in once (`gateway dev`'s banner, `gateway console login-link`)."""
        token = secrets.token_urlsafe(32)
        key = self.store.key("console", "one-time", _digest(token))
        await self.store.client.set(key, msgspec.json.encode(OneTimeGrant(user=user, role=role)), ex=ttl_s)
        return token

    async def redeem_one_time(self, token: str) -> OneTimeGrant | None:
        if not token or len(token) > 128:
            return None
        raw = await self.store.client.getdel(self.store.key("console", "one-time", _digest(token)))
        return self._grant_codec.decode(raw) if raw is not None else None
