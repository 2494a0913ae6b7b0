"""Property-based fuzzing of the dingtalk webhook over the real app, broker and Redis.

Bodies range from random bytes (invalid UTF-8 included) over JSON and near-DingTalk robot
messages to deep nesting and huge strings; requests go unauthenticated (no headers, a wrong
secret, a timestamp outside the hour, garbage headers) and authenticated (a fresh timestamp and
its sign). Properties: never a 5xx; unauthenticated input is refused (401, or 413 when too large)
and publishes nothing; authenticated input is answered 2xx (or 413) and the inbound topic and the
DLQ grow by exactly what the answers say; a sessionWebhook off DingTalk's origin is never kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.plugins import PluginRegistry
from plugins.dingtalk import sign
from tests.dingtalk_events import APP_KEY, APP_SECRET, robot_message
from tests.fuzz_server import Served, record_answer, served_gateway

LIMIT = 64 * 1024
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
CHANNELS: dict[str, dict[str, Any]] = {
    "dingtalk": {"type": "dingtalk", "app_key": APP_KEY, "app_secret": APP_SECRET, "max_body_bytes": LIMIT}
}


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> Iterator[Served]:
    with served_gateway(kafka_bootstrap, redis_url, registry, CHANNELS) as gateway:
        yield gateway


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    msgtype = draw(st.sampled_from(["text", "picture", "richText", "audio", "video", "file", "markdown", ""]))
    payload = robot_message(
        msgtype,
        text=draw(st.text(max_size=80) | st.integers(1, 3).map(lambda n: "长" * (n * 9000))),
        content=draw(
            json_values
            | st.fixed_dictionaries({}, optional={"downloadCode": json_values, "richText": st.lists(json_values)})
        ),
        msg_id=draw(st.sampled_from(["msg-1", "msg-2", "msg-3", "", "msg-😀"])),
        group=draw(st.booleans()),
        session_webhook=draw(
            st.sampled_from(
                [
                    "https://oapi.dingtalk.com/robot/sendBySession?session=1",
                    "http://169.254.169.254/latest/meta-data",
                    "https://oapi.dingtalk.com.evil.example/robot/sendBySession",
                    "",
                ]
            )
        ),
        expires_ms=draw(st.sampled_from([0, 2**62, int(time.time() * 1000) + 3_600_000])),
    )
    if draw(st.booleans()):
        payload[draw(st.sampled_from(["conversationType", "createAt", "atUsers", "text", "senderStaffId"]))] = draw(
            json_values
        )
    return payload


message_bodies = messages().map(lambda v: json.dumps(v, ensure_ascii=False).encode())
bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    message_bodies,
    message_bodies,
    message_bodies,
    st.integers(1, 5).map(lambda n: b'{"content":' + b"[" * (n * 2000) + b"]" * (n * 2000) + b"}"),
    st.integers(LIMIT - 64, LIMIT + 64).map(lambda n: b'{"msgId":"' + b"x" * n + b'"}'),
)


def post(served: Served, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    status, answer, _ = served.request(
        "POST", "/webhooks/dingtalk", body, {"Content-Type": "application/json", **headers}
    )
    event(f"status {status}")
    assert status < 500, (status, answer[:300])
    return status, answer


def signed_headers(secret: str = APP_SECRET, skew_ms: int = 0) -> dict[str, str]:
    timestamp = str(int(time.time() * 1000) - skew_ms)
    return {"timestamp": timestamp, "sign": sign(timestamp, secret)}


@FUZZ
@given(body=bodies, forgery=st.sampled_from(["none", "wrong-secret", "stale", "future", "garbage"]))
def test_unauthenticated_requests_are_refused_and_publish_nothing(served: Served, body: bytes, forgery: str) -> None:
    headers = {
        "none": {},
        "wrong-secret": signed_headers(APP_SECRET + "x"),
        "stale": signed_headers(skew_ms=3_601_000),
        "future": signed_headers(skew_ms=-3_700_000),
        "garbage": {"timestamp": "9" * 40, "sign": "=" * 44},
    }[forgery]
    status, answer = post(served, body, headers)
    assert status in (401, 413), (status, answer[:300])


@FUZZ
@given(body=bodies)
def test_authenticated_input_is_stored_only_where_the_answer_says(served: Served, body: bytes) -> None:
    status, answer = post(served, body, signed_headers())
    assert status in (200, 413), (status, answer[:300])
    record_answer(served, status, answer)


def test_topics_hold_exactly_what_the_answers_promised(served: Served) -> None:
    deadline = time.monotonic() + 60
    while served.sizes() != served.expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served.sizes() == served.expected


def test_no_session_webhook_off_dingtalks_origin_was_kept(served: Served) -> None:
    store = served.runtime.store

    async def kept() -> list[str]:
        urls = []
        async for key in store.client.scan_iter(match=store.key("conv", "dingtalk-session:*")):
            raw = await store.client.hget(key, "session")
            if raw is not None:
                urls.append(json.loads(raw)["url"])
        return urls

    urls = asyncio.run_coroutine_threadsafe(kept(), served.loop).result(30)
    assert all(url.startswith("https://oapi.dingtalk.com/robot/sendBySession") for url in urls), urls
