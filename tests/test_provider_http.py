"""The provider-call helper against a real local HTTP server: every outcome becomes the right SendError."""

from __future__ import annotations

import asyncio
import email.utils
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.channel import SendError
from gateway.provider_http import basic_auth, call_provider, retry_after_seconds


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(date, now=1_000_000) == pytest.approx(30.0)
    assert retry_after_seconds(date, now=2_000_000) == 0.0  # in the past: retry now


async def provider(aiohttp_server: Any) -> Any:
    async def handle(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "ok":
            return web.json_response({"echo": await request.json(), "auth": request.headers.get("Authorization")})
        if kind == "limited":
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "3"})
        if kind == "broken":
            return web.Response(status=502, text="<html>bad gateway</html>")
        if kind == "token":
            return web.json_response({"error": {"code": 190, "message": "Invalid OAuth access token"}}, status=401)
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{kind}", handle)
    return await aiohttp_server(app)


async def test_success_returns_the_body(aiohttp_server: Any) -> None:
    server = await provider(aiohttp_server)
    async with aiohttp.ClientSession() as http:
        response = await call_provider(
            http,
            "POST",
            str(server.make_url("/ok")),
            provider="demo",
            json={"text": "你好 👋"},
            headers={"Authorization": basic_auth("user", "pass")},
        )
    assert response.status == 200
    assert response.json()["echo"] == {"text": "你好 👋"}
    assert response.json()["auth"] == "Basic dXNlcjpwYXNz"


async def test_failures_are_classified(aiohttp_server: Any) -> None:
    server = await provider(aiohttp_server)

    def describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return f"demo_{body['error']['code']}", body["error"]["message"], None
        return None

    async with aiohttp.ClientSession() as http:
        with pytest.raises(SendError) as limited:
            await call_provider(http, "POST", str(server.make_url("/limited")), provider="demo", json={})
        assert limited.value.retryable and limited.value.retry_after_s == 3.0 and limited.value.code == "http_429"

        with pytest.raises(SendError) as broken:
            await call_provider(http, "POST", str(server.make_url("/broken")), provider="demo", json={})
        assert broken.value.retryable and broken.value.code == "http_502"

        with pytest.raises(SendError) as token:
            await call_provider(
                http, "POST", str(server.make_url("/token")), provider="demo", json={}, describe=describe
            )
        assert not token.value.retryable
        assert token.value.code == "demo_190" and "Invalid OAuth" in token.value.message

        with pytest.raises(SendError) as slow:
            await call_provider(http, "GET", str(server.make_url("/slow")), provider="demo", timeout_s=0.2)
        assert slow.value.retryable and slow.value.code == "timeout"

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        with pytest.raises(SendError) as refused:
            await call_provider(http, "GET", f"http://127.0.0.1:{closed_port}/", provider="demo")
        assert refused.value.retryable and refused.value.code == "connection"

    with pytest.raises(SendError) as no_session:
        await call_provider(None, "GET", "http://127.0.0.1/", provider="demo")
    assert not no_session.value.retryable


async def test_secrets_are_redacted_from_errors(aiohttp_server: Any) -> None:
    """A provider (or aiohttp) quoting the request's token in an error never lets it reach events or logs."""
    server = await provider(aiohttp_server)
    token = "ACCESS-TOKEN-0123456789"

    def describe(status: int, body: Any) -> tuple[str, str, bool | None] | None:
        return "demo_190", f"{body['error']['message']} for access_token={token}", None

    async with aiohttp.ClientSession() as http:
        url = str(server.make_url("/token").with_query(access_token=token))
        with pytest.raises(SendError) as redacted:
            await call_provider(http, "POST", url, provider="demo", json={}, describe=describe, secrets=(token,))
        with pytest.raises(SendError) as plain:
            await call_provider(http, "POST", url, provider="demo", json={}, describe=describe)
    assert redacted.value.message == "Invalid OAuth access token for access_token=***"
    assert (redacted.value.code, redacted.value.retryable) == ("demo_190", False)
    assert token in plain.value.message  # nothing is redacted unless named
