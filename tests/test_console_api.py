"""The console's JSON API on the real broker and Redis: sign-in, roles, CSRF, audit, and each page's
data coming from what the gateway really did (docs/console.md)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from gateway.config import Config, ConfigError, config_from_dict
from gateway.console.core import CONSOLE, Console
from gateway.console.stats import StatsWriter
from gateway.ingress.app import create_app
from gateway.model import AUDIT_SCHEMA, ConversationEvent, decode_message
from gateway.pipeline.worker import Worker
from gateway.processor import ProcessorSettings
from gateway.runtime import Runtime
from gateway.testing.records import read_records
from plugins.passthrough import Passthrough
from tests.conftest import api_body, headers_of, make_config, running, sign

PASSWORDS = {"vera": "viewer-password-1", "otto": "operator-password-1", "ada": "admin-password-01"}
ROLES = {"vera": "viewer", "otto": "operator", "ada": "admin"}
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)  # fast hashes: verify reads the cost from them
HASHES = {name: _hasher.hash(password) for name, password in PASSWORDS.items()}


def console_section(**extra: Any) -> dict[str, Any]:
    users = {name: {"password_hash": HASHES[name], "role": ROLES[name]} for name in PASSWORDS}
    return {"enabled": True, "users": users, "login_attempts": 3, **extra}


@pytest.fixture
def config(kafka_bootstrap: str, redis_url: str) -> Config:
    return make_config(kafka_bootstrap, redis_url, console=console_section())


@pytest.fixture
async def client(runtime: Runtime, aiohttp_client: Any) -> TestClient[Any, Any]:
    result: TestClient[Any, Any] = await aiohttp_client(create_app(runtime))
    return result


def console_of(client: TestClient[Any, Any]) -> Console:
    app = client.server.app
    assert app is not None
    for sub in app._subapps:
        if CONSOLE in sub:
            return sub[CONSOLE]
    raise AssertionError("the console is not mounted")


async def sign_in(client: TestClient[Any, Any], user: str) -> dict[str, str]:
    """Sign ``user`` in; the client keeps the cookie. Returns the headers a POST needs."""
    response = await client.post("/console/api/login", json={"username": user, "password": PASSWORDS[user]})
    assert response.status == 200, await response.text()
    session = await response.json()
    assert session["user"] == user and session["role"] == ROLES[user]
    return {"X-CSRF-Token": session["csrf"]}


async def test_sign_in_sets_a_strict_http_only_cookie_and_the_session_names_the_role(client: Any) -> None:
    response = await client.post("/console/api/login", json={"username": "otto", "password": PASSWORDS["otto"]})
    assert response.status == 200
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; behind TLS the flag is set (next test)
    session = await (await client.get("/console/api/session")).json()
    assert session["permissions"] == ["read", "unmask", "replay", "send_test"]
    assert session["via"] == "password"


async def test_cookies_are_secure_behind_a_trusted_tls_proxy(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    config = make_config(kafka_bootstrap, redis_url, console=console_section(), http={"trust_forwarded_headers": True})
    runtime = Runtime.create(config, registry)
    try:
        client = await aiohttp_client(create_app(runtime))
        response = await client.post(
            "/console/api/login",
            json={"username": "vera", "password": PASSWORDS["vera"]},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert response.status == 200
        assert "Secure" in response.headers["Set-Cookie"]
    finally:
        await runtime.close()


async def test_behind_a_trusted_proxy_failed_sign_ins_count_per_client_not_per_proxy(
    kafka_bootstrap: str, redis_url: str, registry: Any, aiohttp_client: Any
) -> None:
    config = make_config(kafka_bootstrap, redis_url, console=console_section(), http={"trust_forwarded_headers": True})
    runtime = Runtime.create(config, registry)
    try:
        client = await aiohttp_client(create_app(runtime))
        attacker = {"X-Forwarded-For": "203.0.113.9"}
        for name in ("x1", "x2", "x3"):  # three names, so only the address limit can trip
            response = await client.post(
                "/console/api/login", json={"username": name, "password": "no"}, headers=attacker
            )
            assert response.status == 401
        blocked = await client.post("/console/api/login", json={"username": "x4", "password": "no"}, headers=attacker)
        assert blocked.status == 429
        colleague = await client.post(
            "/console/api/login",
            json={"username": "vera", "password": PASSWORDS["vera"]},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert colleague.status == 200  # same proxy, another client: not locked out
        [entry, *_] = await console_of(client).audit.latest(1)
        assert entry.action == "login" and entry.remote == "198.51.100.7"
    finally:
        await runtime.close()


async def test_wrong_passwords_are_refused_then_limited_and_audited(client: Any) -> None:
    for _ in range(3):
        response = await client.post("/console/api/login", json={"username": "ada", "password": "wrong"})
        assert response.status == 401
        assert await response.json() == {"error": "invalid username or password"}
    # The limit holds even for the right password now.
    response = await client.post("/console/api/login", json={"username": "ada", "password": PASSWORDS["ada"]})
    assert response.status == 429
    unknown = await client.post("/console/api/login", json={"username": "nobody", "password": "x"})
    assert unknown.status in (401, 429)  # the address is limited too after three failures
    entries = await console_of(client).audit.latest(10)
    assert [e.action for e in entries[:2]] == ["login_failed", "login_failed"]
    assert all(e.outcome == "denied" and "wrong" not in (e.detail or "") for e in entries)


async def test_the_api_needs_a_session_and_posts_need_the_csrf_token(client: Any) -> None:
    assert (await client.get("/console/api/overview")).status == 401
    headers = await sign_in(client, "otto")
    no_token = await client.post("/console/api/dlq/replay", json={"ids": ["x"]})
    assert no_token.status == 403 and "CSRF" in (await no_token.json())["error"]
    cross_site = await client.post(
        "/console/api/dlq/replay", json={"ids": ["x"]}, headers={**headers, "Origin": "https://evil.example"}
    )
    assert cross_site.status == 403
    ok = await client.post("/console/api/dlq/replay", json={"ids": ["x"]}, headers=headers)
    assert ok.status == 200
    assert (await ok.json())["results"][0]["outcome"] == "not_found"
    logout = await client.post("/console/api/logout", headers=headers)
    assert logout.status == 204
    assert (await client.get("/console/api/session")).status == 401


async def test_pages_and_assets_carry_a_strict_content_security_policy(client: Any) -> None:
    response = await client.get("/console/api/login-options")
    assert await response.json() == {"password": True, "oidc": None}
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert (await client.get("/console/static/../auth.py")).status == 404
    assert (await client.get("/console/static/vendor/..%2F..%2Fauth.py")).status == 404
    page = await client.get("/console/")
    assert page.headers["Content-Security-Policy"] == csp
    # Every asset the page names is served, with a type the browser accepts under nosniff.
    html = await page.text()
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', html)
    assert len(assets) >= 4
    for asset in assets:
        response = await client.get(f"/console/{asset}")
        assert response.status == 200, asset
        assert response.content_type in ("text/javascript", "text/css"), asset
    bare = await client.get("/console", allow_redirects=False)
    assert bare.status == 308, bare.status
    assert bare.headers["Location"] == "/console/"


async def test_a_viewer_sees_masked_texts_and_cannot_unmask_replay_or_read_the_audit(
    client: Any, runtime: Runtime, config: Config
) -> None:
    body = api_body("mask-1", "my card number is 4111", conversation_id="c-mask")
    assert (await client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
    async with running(Worker(runtime, [Passthrough(ProcessorSettings())])):
        await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 1)
    headers = await sign_in(client, "vera")
    listing = await (await client.get("/console/api/messages")).json()
    [view] = listing["messages"]
    assert view["masked"] is True and "4111" not in json.dumps(view)
    assert view["text"] == "•• •••• •••••• •• ••••"
    assert (await client.get("/console/api/messages?unmask=1")).status == 403
    assert (await client.post("/console/api/dlq/replay", json={"ids": ["x"]}, headers=headers)).status == 403
    assert (await client.get("/console/api/audit")).status == 403
    timeline = await (await client.get("/console/api/conversations/c-mask")).json()
    assert {item["kind"] for item in timeline["items"]} == {"inbound", "processed", "conversation"}
    assert "4111" not in json.dumps(timeline)


async def test_an_operator_unmasks_and_the_unmasking_is_audited(client: Any, runtime: Runtime, config: Config) -> None:
    body = api_body("unmask-1", "call me at noon", conversation_id="c-unmask")
    assert (await client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
    async with running(Worker(runtime, [Passthrough(ProcessorSettings())])):
        await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 1)
    await sign_in(client, "otto")
    listing = await (await client.get("/console/api/messages?unmask=1&instance=api")).json()
    assert [m["text"] for m in listing["messages"]] == ["call me at noon"]
    assert (await (await client.get("/console/api/messages?instance=other")).json())["messages"] == []
    [entry] = [e for e in await console_of(client).audit.latest(5) if e.action == "unmask"]
    assert entry.actor == "otto" and entry.role == "operator"
    # The audit record is on the events topic too, with its own schema header.
    records = await read_records(config.kafka.bootstrap_servers, runtime.topics.events, 2)
    audits = [json.loads(r.value) for r in records if headers_of(r)["schema"] == AUDIT_SCHEMA]
    assert {a["action"] for a in audits} == {"login", "unmask"}


async def test_channels_and_overview_show_what_the_processes_counted(client: Any, runtime: Runtime) -> None:
    good = api_body("ov-1", "hello")
    assert (await client.post("/webhooks/api", data=good, headers=sign(good))).status == 200
    bad = await client.post("/webhooks/api", data=good, headers=sign(good, "wrong-secret-0123456789"))
    assert bad.status == 401
    await StatsWriter(runtime).flush()
    await sign_in(client, "vera")
    [channel] = (await (await client.get("/console/api/channels")).json())["instances"]
    assert channel["name"] == "api" and channel["type"] == "api"
    assert channel["webhook_url"].endswith("/webhooks/api")
    assert channel["last_verified_at"] is not None
    assert channel["last_rejection"]["status"] == 401
    assert channel["messages_last_hour"] == 1
    assert channel["rejected_last_hour"] == {"unauthenticated": 1}
    assert channel["can_send_test"] is True
    overview = await (await client.get("/console/api/overview")).json()
    [instance] = overview["instances"]
    assert sum(instance["messages"]) == 1 and len(instance["messages"]) == 60
    assert instance["webhook"]["requests"] == 2 and instance["webhook"]["errors_4xx"] == 1
    assert instance["webhook"]["p50_ms"] is not None
    assert overview["totals"]["webhook_error_rate"] == 0.5
    assert overview["dlq"]["size"] == 0
    assert {lag["component"] for lag in overview["lag"]} == {"worker", "dispatch"}


async def test_stats_of_several_processes_add_up_and_a_failed_flush_loses_nothing(
    client: Any, runtime: Runtime, config: Config, registry: Any
) -> None:
    other = Runtime.create(config, registry)  # a second replica with its own counters
    try:
        runtime.metrics.published.labels("api", "api", runtime.topics.inbound).inc(3)
        other.metrics.published.labels("api", "api", runtime.topics.inbound).inc(4)
        writer = StatsWriter(runtime)
        await writer.flush()
        await writer.flush()  # nothing new: nothing added twice
        await StatsWriter(other).flush()
    finally:
        await other.close()
    await sign_in(client, "vera")
    overview = await (await client.get("/console/api/overview")).json()
    assert overview["totals"]["messages_last_hour"] == 7


async def test_dlq_replay_by_an_operator_arrives_on_processed_once(
    client: Any, runtime: Runtime, config: Config
) -> None:
    record = await runtime.quarantine(
        stage="process",
        reason="processor flaky failed: RuntimeError",
        payload=api_inbound(runtime),
        channel="api",
        instance="api",
        source_topic=runtime.topics.inbound,
        message_id="replay-me",
    )
    headers = await sign_in(client, "otto")
    listing = await (await client.get("/console/api/dlq?stage=process")).json()
    assert listing["size"] == 1 and listing["records"][0]["id"] == record.id
    detail = await (await client.get(f"/console/api/dlq/{record.id}")).json()
    assert detail["payload_hidden"] is False and "replay-me" in detail["payload"]
    first = await client.post("/console/api/dlq/replay", json={"ids": [record.id]}, headers=headers)
    assert (await first.json())["results"][0]["outcome"] == "replayed"
    again = await client.post("/console/api/dlq/replay", json={"ids": [record.id]}, headers=headers)
    assert (await again.json())["results"][0]["outcome"] == "already_replayed"
    async with running(Worker(runtime, [Passthrough(ProcessorSettings())])):
        [processed] = await read_records(config.kafka.bootstrap_servers, runtime.topics.processed, 1)
    assert decode_message(processed.value).id == "replay-me"
    assert (await (await client.get("/console/api/dlq")).json())["records"][0]["replayed"] is True
    actions = [(e.action, e.outcome, e.detail) for e in await console_of(client).audit.latest(10)]
    assert ("dlq_replay", "ok", "replayed") in actions and ("dlq_replay", "failed", "already_replayed") in actions


def api_inbound(runtime: Runtime) -> bytes:
    from gateway.model import Content, Message, Party, encode

    message = Message(
        id="replay-me",
        direction="inbound",
        channel="api",
        instance="api",
        conversation_id="c-replay",
        sender=Party(id="cust"),
        content=Content(text="please replay"),
    )
    return encode(message)


async def test_a_test_message_is_queued_on_outbound_as_automatic(client: Any, runtime: Runtime, config: Config) -> None:
    headers = await sign_in(client, "otto")
    response = await client.post(
        "/console/api/channels/api/test", json={"recipient": "cust-9", "text": "test from the console"}, headers=headers
    )
    assert response.status == 202
    [record] = await read_records(config.kafka.bootstrap_servers, runtime.topics.outbound, 1)
    message = decode_message(record.value)
    assert message.id == (await response.json())["message_id"]
    assert message.recipient is not None and message.recipient.id == "cust-9"
    assert message.author is not None and message.author.kind == "automatic"
    viewer = await client.post("/console/api/logout", headers=headers)
    assert viewer.status == 204
    headers = await sign_in(client, "vera")
    refused = await client.post("/console/api/channels/api/test", json={"recipient": "x", "text": "y"}, headers=headers)
    assert refused.status == 403


async def test_insights_series_come_from_the_conversation_events(client: Any, runtime: Runtime) -> None:
    from gateway.bus.producer import record_for

    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)

    def event(kind: str, conversation: str, minutes: int, **fields: Any) -> ConversationEvent:
        at = now + timedelta(minutes=minutes)
        return ConversationEvent(
            type=kind, conversation_id=conversation, instance="api", channel="api", occurred_at=at, cycle=1, **fields
        )

    events = [
        event("opened", "c1", 0, queue="billing", sentiment="negative"),
        event("first_response", "c1", 2, value_s=120.0, queue="billing"),
        event("sla_breached", "c1", 3, queue="billing"),
        event("csat_received", "c1", 9, rating=4, survey_id="s1", queue="billing"),
        event("opened", "c2", 0, queue="sales", sentiment="positive"),
    ]
    await runtime.publisher.send_many(
        [
            record_for(
                runtime.topics.conversations,
                e,
                traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                key=e.conversation_id,
            )
            for e in events
        ]
    )
    await sign_in(client, "vera")
    data = await (await client.get("/console/api/insights?since=3h&bucket=hour")).json()
    assert data["queues"] == ["billing", "sales"]
    busy = [bucket for bucket in data["series"] if bucket["opened"]]
    assert len(busy) == 1
    [bucket] = busy
    assert bucket["opened"] == 2 and bucket["first_response_p50_s"] == 120.0 and bucket["sla_breaches"] == 1
    assert bucket["csat_average"] == 4 and bucket["sentiment"] == {"positive": 1, "neutral": 0, "negative": 1}
    assert data["report"]["volumes"]["total"]["opened"] == 2
    billing = await (await client.get("/console/api/insights?since=3h&bucket=hour&queue=sales")).json()
    assert sum(b["opened"] for b in billing["series"]) == 1


async def test_the_audit_page_is_for_admins(client: Any) -> None:
    await sign_in(client, "ada")
    entries = (await (await client.get("/console/api/audit")).json())["entries"]
    assert entries[0]["action"] == "login" and entries[0]["actor"] == "ada" and entries[0]["role"] == "admin"


async def test_a_one_time_link_signs_in_once(client: Any) -> None:
    console = console_of(client)
    token = await console.auth.issue_one_time("ada", "admin")
    first = await client.get(f"/console/auth/one-time?token={token}", allow_redirects=False)
    assert first.status == 303 and first.headers["Location"] == "/console/"
    session = await (await client.get("/console/api/session")).json()
    assert session["user"] == "ada" and session["via"] == "one-time"
    client.session.cookie_jar.clear()
    second = await client.get(f"/console/auth/one-time?token={token}", allow_redirects=False)
    assert second.status == 303 and "expired" in second.headers["Location"]
    assert (await client.get("/console/api/session")).status == 401


async def test_live_stream_sends_the_overview_and_new_messages(client: Any, runtime: Runtime, config: Config) -> None:
    await sign_in(client, "otto")
    response = await client.get("/console/api/stream?overview=1&messages=1&unmask=1")
    assert response.headers["Content-Type"] == "text/event-stream"
    events: dict[str, Any] = {}

    async def read_until_message() -> None:
        event = None
        async for line in response.content:
            text = line.decode().strip()
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: ") and event:
                events[event] = json.loads(text[6:])
                if event == "ready":
                    body = api_body("live-1", "live hello", conversation_id="c-live")
                    assert (await client.post("/webhooks/api", data=body, headers=sign(body))).status == 200
                if event == "message":
                    return

    async with running(Worker(runtime, [Passthrough(ProcessorSettings())])):
        await asyncio.wait_for(read_until_message(), 60)
    response.close()
    assert events["message"]["text"] == "live hello" and events["message"]["conversation_id"] == "c-live"
    assert "instances" in events["overview"]


def test_the_console_needs_a_way_to_sign_in_and_production_wants_hash_references() -> None:
    with pytest.raises(ConfigError, match=r"console: enabled, but no way to sign in"):
        config_from_dict({"console": {"enabled": True}}, {})
    raw = {"gateway": {"environment": "production"}, "console": console_section()}
    with pytest.raises(ConfigError, match=r"console\.users\.ada\.password_hash"):
        config_from_dict(raw, {})
    with pytest.raises(ConfigError, match="password_hash"):
        config_from_dict({"console": {"enabled": True, "users": {"x": {"password_hash": "plain"}}}}, {})
    config = config_from_dict(
        {"console": {"enabled": True, "users": {"x": {"password_hash": "env:X_HASH", "role": "admin"}}}},
        {"X_HASH": HASHES["ada"]},
    )
    assert config.console.users["x"].role == "admin"


def test_timeline_times_sort_as_times_not_as_strings() -> None:
    from gateway.console.views import moment

    stamps = ["2026-12-06T00:33:58Z", "2026-12-06T00:33:58.500000Z", "2026-12-06T00:33:57.900000+00:00"]
    assert sorted(stamps) != sorted(stamps, key=moment)  # as strings "58.5Z" would come before "58Z"
    assert sorted(stamps, key=moment) == [stamps[2], stamps[0], stamps[1]]
    assert moment("not a time") == 0.0
