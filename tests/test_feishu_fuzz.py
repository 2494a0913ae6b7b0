"""Property-based fuzzing of the feishu webhook over the real app, broker and Redis.

Two instances: one with an Encrypt Key (encrypted envelopes, X-Lark-Signature) and one with the
Verification Token only. Bodies range from random bytes (invalid UTF-8 included) over JSON and
near-Feishu shapes to deep nesting and huge strings, sent unauthenticated (forged signatures,
wrong tokens) and authenticated (encrypted and signed, or carrying the right token).

Properties: never a 5xx; unauthenticated input is refused (401, or 413 when too large) and
publishes nothing; authenticated input is answered 2xx (or 413) and the inbound topic and the DLQ
grow by exactly what the answers say. The gateway is served from a background thread as in
tests/test_fuzz.py (tests/fuzz_server.py), so Hypothesis drives it synchronously.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.plugins import PluginRegistry
from plugins.feishu import crypto
from tests.feishu_events import APP_ID, ENCRYPT_KEY, TOKEN, receive_event, with_token
from tests.fuzz_server import Served, record_answer, served_gateway

LIMIT = 64 * 1024  # both instances' body limit: 413 is reachable cheaply
FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
CHANNELS: dict[str, dict[str, Any]] = {
    "lark-enc": {
        "type": "feishu",
        "app_id": APP_ID,
        "verification_token": TOKEN,
        "encrypt_key": ENCRYPT_KEY,
        "max_body_bytes": LIMIT,
        "keep_raw": True,
    },
    "lark-token": {"type": "feishu", "app_id": APP_ID, "verification_token": TOKEN, "max_body_bytes": LIMIT},
}


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> Iterator[Served]:
    with served_gateway(kafka_bootstrap, redis_url, registry, CHANNELS) as gateway:
        yield gateway


# --- strategies ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
message_types = st.sampled_from(
    ["text", "post", "image", "file", "audio", "media", "sticker", "interactive", "location", "share_chat", "x"]
)
contents = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.text(max_size=60),
    st.fixed_dictionaries({}, optional={"text": json_values, "image_key": json_values, "file_key": json_values}).map(
        json.dumps
    ),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # deep nesting inside the content string
    st.integers(1, 3).map(lambda n: json.dumps({"text": "长" * (n * 9000)}, ensure_ascii=False)),  # huge
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """Receive events with fuzzed fields: the path through verify and parse that matters most."""
    payload = receive_event(
        draw(message_types),
        draw(contents),
        message_id=draw(st.sampled_from(["om_1", "om_2", "om_3", "om_4", "", "om_" + "x" * 300, "om_😀"])),
        chat_id=draw(st.sampled_from(["oc_1", "oc_2", "oc_𠮷", ""])),
        chat_type=draw(st.sampled_from(["p2p", "group"])),
        sender_type=draw(st.sampled_from(["user", "app", ""])),
        create_time=draw(st.sampled_from(["1609073151345", "-1", "9" * 40, "", 1609073151345, None])),
    )
    if draw(st.booleans()):
        payload["event"]["message"]["mentions"] = draw(st.lists(json_values, max_size=3))
    if draw(st.booleans()):
        payload["header"]["event_type"] = draw(st.sampled_from(["im.message.message_read_v1", ""]) | json_values)
    if draw(st.booleans()):
        payload[draw(st.sampled_from(["event", "header", "schema", "type", "challenge"]))] = draw(json_values)
    return payload


event_bodies = events().map(lambda v: json.dumps(v, ensure_ascii=False).encode())
plain_bodies = st.one_of(
    st.binary(max_size=2048),  # mostly invalid UTF-8
    json_values.map(lambda v: json.dumps(v).encode()),
    event_bodies,
    event_bodies,  # weighted: the path through parse matters most
    event_bodies,
    st.integers(1, 5).map(lambda n: b"[" * (n * 2000) + b"]" * (n * 2000)),  # deep nesting
    st.integers(LIMIT - 64, LIMIT + 64).map(lambda n: b'{"challenge":"' + b"x" * n + b'"}'),  # around the limit
    st.just(b'{"encrypt": "' + b"A" * 4000 + b'"}'),
)


def post(served: Served, instance: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    status, answer, _ = served.request(
        "POST", f"/webhooks/{instance}", body, {"Content-Type": "application/json", **headers}
    )
    event(f"{instance} status {status}")
    assert status < 500, (status, answer[:300])
    return status, answer


def sign(body: bytes, key: str = ENCRYPT_KEY, skew: int = 0) -> dict[str, str]:
    ts = str(int(time.time()) - skew)
    return {
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": "n-1",
        "X-Lark-Signature": crypto.signature(ts, "n-1", key, body),
    }


# --- properties ---------------------------------------------------------------------------------


@FUZZ
@given(
    instance=st.sampled_from(list(CHANNELS)),
    body=plain_bodies,
    forgery=st.sampled_from(["none", "wrong-key", "stale", "garbage", "wrong-token"]),
)
def test_unauthenticated_requests_are_refused_and_publish_nothing(
    served: Served, instance: str, body: bytes, forgery: str
) -> None:
    headers: dict[str, str] = {}
    if forgery == "wrong-key":
        headers = sign(body, key=ENCRYPT_KEY + "x")
    elif forgery == "stale":
        headers = sign(body, skew=3600)
    elif forgery == "garbage":
        headers = {"X-Lark-Signature": "zz", "X-Lark-Request-Timestamp": "x" * 50, "X-Lark-Request-Nonce": "%00"}
    elif forgery == "wrong-token":
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        if isinstance(payload, dict):
            body = json.dumps(with_token(payload, TOKEN + "x")).encode()
    status, answer = post(served, instance, body, headers)
    assert status in (401, 413), (status, answer[:300])


@FUZZ
@given(instance=st.sampled_from(list(CHANNELS)), body=plain_bodies)
def test_authenticated_input_is_stored_only_where_the_answer_says(served: Served, instance: str, body: bytes) -> None:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict):
        body = json.dumps(with_token(payload, TOKEN), ensure_ascii=False).encode()
    if instance == "lark-enc":
        envelope = json.dumps({"encrypt": crypto.encrypt(ENCRYPT_KEY, body)}).encode()
        body = envelope if len(envelope) <= LIMIT or len(body) > LIMIT else body
        status, answer = post(served, instance, body, sign(body))
        assert status in (200, 413), (status, answer[:300])
    else:
        status, answer = post(served, instance, body, {})
        # Without an encrypt key a body whose token cannot be read is not authenticated.
        assert status in (200, 401, 413), (status, answer[:300])
        if not isinstance(payload, dict):
            assert status in (401, 413)
    record_answer(served, status, answer)


def test_topics_hold_exactly_what_the_answers_promised(served: Served) -> None:
    deadline = time.monotonic() + 60
    while served.sizes() != served.expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert served.sizes() == served.expected
