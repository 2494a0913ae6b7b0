"""What every console handler shares: the per-process ``Console`` (auth, audit, live feed, a short
overview cache), how handlers find it, read JSON bodies, and decide whether to show customer text."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from gateway.config import ConsoleRole
from gateway.console.audit import AuditLog
from gateway.console.auth import ConsoleAuth, Session, Via, problem
from gateway.console.live import MessageFeed
from gateway.model import AuditAction, AuditOutcome, AuditRecord
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.console.oidc import OidcLogin

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def remote(request: web.Request) -> str:
    """The client's address: behind a trusted proxy (``http.trust_forwarded_headers``) the last
    X-Forwarded-For entry, the one that proxy added; otherwise the TCP peer. Sign-in limits count
    per address, so behind a proxy the proxy's own address must not stand for everyone."""
    runtime: Runtime = request.app[CONSOLE].runtime
    if runtime.config.http.trust_forwarded_headers:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if forwarded:
            return forwarded
    return request.remote or "?"


async def json_body(request: web.Request, kind: type[Any]) -> Any:
    body = await request.read()
    if len(body) > 64 * 1024:
        raise problem(400, "request body too large")
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise problem(400, f"invalid request: {exc}") from None


class Console:
    """The console's state in one process: auth, audit, the live feed and a short overview cache."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.config.console
        self.auth = ConsoleAuth(self.settings, runtime.config.http, runtime.store)
        self.audit = AuditLog(runtime)
        self.feed = MessageFeed(runtime.config.kafka, runtime.topics.processed)
        self.oidc: OidcLogin | None = None
        if self.settings.oidc is not None:
            from gateway.console.oidc import OidcLogin

            self.oidc = OidcLogin(self, self.settings.oidc)
        # The Overview of this process, computed at most every few seconds however many pages listen.
        self.overview_cache: tuple[float, dict[str, Any]] | None = None
        self.overview_lock = asyncio.Lock()

    async def record(
        self,
        request: web.Request,
        action: AuditAction,
        session: Session | None,
        *,
        actor: str | None = None,
        target: str | None = None,
        outcome: AuditOutcome = "ok",
        detail: str | None = None,
    ) -> None:
        await self.audit.record(
            AuditRecord(
                actor=actor if actor is not None else (session.user if session else ""),
                role=session.role if session else None,
                via=session.via if session else None,
                action=action,
                target=target,
                outcome=outcome,
                detail=detail,
                remote=remote(request),
            )
        )

    async def start_session(
        self, request: web.Request, user: str, role: ConsoleRole, via: Via, location: str | None
    ) -> web.Response:
        """Sign the browser in: a new session, its cookie, and an audit entry (``location``: answer
        with a redirect there instead of the session's JSON)."""
        token, session = await self.auth.create_session(user, role, via)
        if location is None:
            response = web.json_response(session.to_json())
        else:
            response = web.Response(status=303, headers={"Location": location})
        self.auth.set_cookie(response, request, token)
        await self.record(request, "one_time_login" if via == "one-time" else "login", session)
        return response


CONSOLE: web.AppKey[Console] = web.AppKey("console")


def console_of(request: web.Request) -> Console:
    console: Console = request.app[CONSOLE]
    return console


async def unmasked(request: web.Request, console: Console, session: Session, target: str) -> bool:
    """Whether to show customer text: asked for with ``unmask=1`` and allowed (and audited)."""
    if request.query.get("unmask") != "1":
        return False
    if not session.may("unmask"):
        raise problem(403, f"the {session.role} role may not see message texts")
    await console.record(request, "unmask", session, target=target)
    return True
