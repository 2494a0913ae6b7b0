"""Signing in and out with a password or a one-time link (OIDC: oidc.py)."""

from __future__ import annotations

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway.console.auth import problem
from gateway.console.core import console_of, json_body, remote


class _Login(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    username: str
    password: str


async def login_options(request: web.Request) -> web.Response:
    console = console_of(request)
    oidc = console.settings.oidc
    return web.json_response(
        {"password": bool(console.settings.users), "oidc": {"label": oidc.label} if oidc is not None else None}
    )


async def login(request: web.Request) -> web.Response:
    console, auth = console_of(request), console_of(request).auth
    if not auth.same_origin(request):
        raise problem(403, "sign in from the console's own page")
    body: _Login = await json_body(request, _Login)
    address = remote(request)
    try:
        if await auth.login_blocked(body.username, address):
            await console.record(
                request, "login_failed", None, actor=body.username[:64], outcome="denied", detail="too many attempts"
            )
            raise problem(429, "too many failed sign-ins, try again later")
        role = await auth.check_password(body.username, body.password)
        if role is None:
            await auth.login_failed(body.username, address)
            await console.record(request, "login_failed", None, actor=body.username[:64], outcome="denied")
            raise problem(401, "invalid username or password")
        return await console.start_session(request, body.username, role, "password", None)
    except (RedisError, OSError):
        raise problem(503, "sign-in is unavailable (Redis), retry later") from None


async def one_time(request: web.Request) -> web.Response:
    console = console_of(request)
    grant = await console.auth.redeem_one_time(request.query.get("token", ""))
    if grant is None or grant.user not in console.settings.users:
        raise web.HTTPSeeOther("/console/#/login?expired=1")
    return await console.start_session(request, grant.user, grant.role, "one-time", "/console/")


async def session_info(request: web.Request) -> web.Response:
    session = await console_of(request).auth.require(request, "read")
    return web.json_response(session.to_json())


async def logout(request: web.Request) -> web.Response:
    console = console_of(request)
    session = await console.auth.require(request, "read", changes=True)
    await console.auth.end_session(request)
    await console.record(request, "logout", session)
    response = web.Response(status=204)
    console.auth.clear_cookie(response, request)
    return response
