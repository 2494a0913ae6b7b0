"""Property-based fuzzing of the HTTP surface over the real app, the real broker and the real Redis.

The gateway is served from a background thread (its own event loop, a real TCP port on loopback),
so Hypothesis drives it synchronously with the stdlib ``http.client``, which sends exactly the bytes,
methods, headers and query strings it is given. Examples are bounded (``max_examples``) and
``deadline=None`` (a publish waits for the broker's ack; latency is not the property), keeping the
module well under a minute.

Properties, for webhook instances of several channel types and ``POST /api/v1/messages``:

* No 5xx at all (there is no outage here, so not even 503), and the process keeps serving.
* Unauthenticated input publishes nothing: every topic stays exactly as it was.
* Correctly signed garbage is answered 2xx (or 413 when too large) and stored only where the answer
  says: the inbound topic grows by exactly the new messages the answers list, the DLQ by exactly
  the quarantined ones; with a valid API key, the outbound topic grows only by the 202s.
* Memory: a fixed load (~50 MiB of bodies, refused and quarantined) is sent twice; the second pass
  may grow the resident set by less than ``STEADY_BOUND``. A leak per request (a cache keyed by
  request data, bodies kept alive by logs, tasks or metrics labels) would grow it by a good part of
  what moved; the first pass absorbs warm-up (allocator arenas, connection pools). The whole run,
  Hypothesis's own bookkeeping included, stays under ``RSS_BOUND``, a generous backstop. RSS is
  read from /proc (Linux; getrusage's peak elsewhere): it is what an operator sees, unlike
  tracemalloc, which misses memory held by C extensions (aiohttp, hiredis, aiokafka).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import resource
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.config import Config
from gateway.embedded import free_port
from gateway.ingress.app import create_app
from gateway.plugins import PluginRegistry
from gateway.runtime import Runtime
from tests.conftest import API_SECRET, make_config, topic_size

TG_SECRET = "tg-secret_0123456789abcdefABCDEF"
META_SECRET = "meta-app-secret-0123456789abcdef"
SLACK_SECRET = "slack-signing-secret-0123456789ab"
LINE_SECRET = "line-channel-secret-0123456789ab"
API_KEY = "fuzz-api-key-0123456789abcdef"
SMALL_LIMIT = 4096  # the telegram instance's body limit, so 413 is reachable cheaply
RSS_BOUND = 150 * 1024 * 1024  # whole run, Hypothesis's own bookkeeping included
STEADY_BOUND = 16 * 1024 * 1024  # second identical pass moving ~50 MiB of bodies
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
CHANNELS: dict[str, dict[str, Any]] = {
    "api": {"type": "api", "secret": API_SECRET},
    "telegram": {"type": "telegram", "secret_token": TG_SECRET, "max_body_bytes": SMALL_LIMIT},
    "whatsapp": {"type": "whatsapp", "app_secret": META_SECRET, "verify_token": "verify-me-0123456789"},
    "slack": {"type": "slack", "signing_secret": SLACK_SECRET},
    "line": {"type": "line", "channel_secret": LINE_SECRET},
    "twilio": {"type": "twilio", "auth_token": "twilio-auth-token-0123456789ab", "account_sid": "AC" + "0" * 32},
}
# Headers http.client or the transport manage, and the ones that authenticate (set by signers only).
RESERVED = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "content-encoding",
    "x-gateway-signature",
    "x-telegram-bot-api-secret-token",
    "x-hub-signature-256",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-line-signature",
    "x-twilio-signature",
    "authorization",
    "x-api-key",
}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Served:
    """The gateway running in a background thread, and what the fuzzers expect on its topics."""

    port: int
    runtime: Runtime
    config: Config
    loop: asyncio.AbstractEventLoop
    rss_start: int = 0
    expected: dict[str, int] = field(default_factory=dict)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def sizes(self) -> dict[str, int]:
        topics = self.runtime.topics
        bootstrap = self.config.kafka.bootstrap_servers

        async def count() -> dict[str, int]:
            names = {"inbound": topics.inbound, "dlq": topics.dlq, "outbound": topics.outbound, "events": topics.events}
            return {key: await topic_size(bootstrap, topic) for key, topic in names.items()}

        return asyncio.run(count())


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> Iterator[Served]:
    config = make_config(kafka_bootstrap, redis_url, channels=CHANNELS, api={"keys": [API_KEY]})
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    port = free_port()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        runtime = Runtime.create(config, registry)
        await runtime.publisher.start()
        await runtime.ensure_topics()
        runner = web.AppRunner(create_app(runtime))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        holder["runtime"] = runtime
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            await runtime.close()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # surfaced to the test thread below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="gateway-under-fuzz", daemon=True)
    thread.start()
    assert ready.wait(60), "the gateway did not start"
    if "error" in holder:
        raise holder["error"]
    result = Served(port, holder["runtime"], config, loop)
    result.expected = result.sizes()
    result.rss_start = rss_bytes()
    try:
        yield result
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


# --- strategies ---------------------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
header_names = st.text(TOKEN, min_size=1, max_size=30).filter(lambda n: n.lower() not in RESERVED)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).map(str.strip)
headers = st.dictionaries(header_names, header_values, max_size=8)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "text/plain",
            "application/octet-stream",
            "",
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=5),
    max_leaves=25,
)
# Shapes close to what the providers send, so parsing gets past the first check more often.
near_miss = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "sender": st.fixed_dictionaries({}, optional={"id": json_values, "name": json_values}),
        "text": json_values,
        "update_id": json_values,
        "message": json_values,
        "object": st.sampled_from(["whatsapp_business_account", "page", "instagram"]) | json_values,
        "entry": st.lists(json_values, max_size=3),
        "events": st.lists(json_values, max_size=3),
        "type": st.sampled_from(["event_callback", "url_verification", "message"]) | json_values,
        "event": json_values,
        "challenge": st.text(max_size=20),
    },
)
bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_miss.map(lambda v: json.dumps(v).encode()),
    st.integers(SMALL_LIMIT - 8, SMALL_LIMIT + 64).map(lambda n: b"x" * n),  # around a body limit
    st.integers(1, 3).map(lambda n: b"{" * (n * 700_000)),  # over the default 1 MiB limit or close
)
queries = st.dictionaries(st.text(max_size=15), st.text(max_size=30), max_size=4).map(
    lambda q: ("?" + urlencode(q)) if q else ""
)


def _hex(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


SIGNERS: dict[str, Callable[[bytes], dict[str, str]]] = {
    "api": lambda body: {"X-Gateway-Signature": "sha256=" + _hex(API_SECRET, body)},
    "telegram": lambda body: {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET},
    "whatsapp": lambda body: {"X-Hub-Signature-256": "sha256=" + _hex(META_SECRET, body)},
    "slack": lambda body: {
        "X-Slack-Request-Timestamp": (ts := str(int(time.time()))),
        "X-Slack-Signature": "v0=" + _hex(SLACK_SECRET, b"v0:" + ts.encode() + b":" + body),
    },
    "line": lambda body: {
        "X-Line-Signature": base64.b64encode(hmac.new(LINE_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    },
}


def no_server_error(status: int, answer: bytes) -> None:
    event(f"status {status}")  # shown by --hypothesis-show-statistics: which paths were reached
    assert status < 500, (status, answer[:500])


# --- properties ---------------------------------------------------------------------------------


@FUZZ
@given(
    instance=st.sampled_from([*CHANNELS, "nope", "api%2F..", "a" * 300]),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH"]),
    body=bodies,
    extra=headers,
    content_type=content_types,
    query=queries,
    forged=st.sampled_from(list(SIGNERS)) | st.none(),
)
def test_unauthenticated_webhooks_publish_nothing(
    served: Served,
    instance: str,
    method: str,
    body: bytes,
    extra: dict[str, str],
    content_type: str,
    query: str,
    forged: str | None,
) -> None:
    request_headers = {**extra, "Content-Type": content_type}
    if forged is not None:  # another channel's signature scheme, or this one's with the wrong key
        signed = SIGNERS[forged](body + b"tampered")
        request_headers.update(signed)
    status, answer, _ = served.request(method, f"/webhooks/{instance}{query}", body, request_headers)
    no_server_error(status, answer)
    if method == "POST" and instance in CHANNELS:
        assert status in (401, 403, 413), (status, answer[:300])
    elif method == "GET":
        assert status in (200, 400, 403, 404, 405), status  # handshakes answer only the right token
    else:
        assert status in (404, 405), status


def test_unauthenticated_input_left_every_topic_untouched(served: Served) -> None:
    assert served.sizes() == served.expected


@FUZZ
@given(
    instance=st.sampled_from(list(SIGNERS)),
    body=bodies,
    extra=headers,
    content_type=content_types,
    query=queries,
)
def test_signed_garbage_is_stored_only_where_the_answer_says(
    served: Served, instance: str, body: bytes, extra: dict[str, str], content_type: str, query: str
) -> None:
    request_headers = {**extra, "Content-Type": content_type, **SIGNERS[instance](body)}
    status, answer, response_headers = served.request("POST", f"/webhooks/{instance}{query}", body, request_headers)
    no_server_error(status, answer)
    assert status in (200, 413), (status, answer[:300])
    if status != 200 or not response_headers.get("content-type", "").startswith("application/json"):
        return  # 413, or a handshake-style reply (Slack's url_verification challenge): nothing stored
    reply = json.loads(answer)
    event(f"{instance}: {reply.get('status')}")
    if reply.get("status") == "quarantined":
        served.expected["dlq"] += 1
        return
    assert reply.get("status") == "accepted", reply
    for message in reply["messages"]:
        if message.get("quarantined"):
            served.expected["dlq"] += 1
        elif not message["duplicate"]:
            served.expected["inbound"] += 1


outbound_requests = st.fixed_dictionaries(
    {},
    optional={
        "instance": st.sampled_from([*CHANNELS, "nope"]) | json_values,
        "conversation_id": st.text(max_size=40) | json_values,
        "content": st.fixed_dictionaries(
            {}, optional={"text": st.text(max_size=100) | json_values, "attachments": json_values}
        )
        | json_values,
        "recipient": json_values,
        "in_reply_to": json_values,
        "labels": json_values,
        "unexpected": json_values,
    },
)


# Valid enough to be queued, with fuzzed extras, so the 202 and Idempotency-Key paths are reached too.
plausible_outbound = st.fixed_dictionaries(
    {
        "instance": st.sampled_from(list(CHANNELS)),
        "conversation_id": st.text(min_size=1, max_size=40),
        "content": st.fixed_dictionaries({"text": st.text(min_size=1, max_size=200)}),
    },
    optional={"recipient": st.fixed_dictionaries({"id": st.text(max_size=20)}), "labels": json_values},
)


@FUZZ
@given(
    payload=st.one_of(
        outbound_requests.map(lambda v: json.dumps(v).encode()),
        plausible_outbound.map(lambda v: json.dumps(v).encode()),
        bodies,
    ),
    key=st.sampled_from([API_KEY, None, "wrong-key-0123456789abcdef", API_KEY + " "]),
    scheme=st.sampled_from(["bearer", "x-api-key"]),
    idempotency=st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    extra=headers,
    content_type=content_types,
)
def test_messages_api_refuses_or_queues_exactly_what_it_answers(
    served: Served,
    payload: bytes,
    key: str | None,
    scheme: str,
    idempotency: str | None,
    extra: dict[str, str],
    content_type: str,
) -> None:
    request_headers = {**extra, "Content-Type": content_type}
    if key is not None:
        request_headers["Authorization" if scheme == "bearer" else "X-API-Key"] = (
            f"Bearer {key}" if scheme == "bearer" else key
        )
    if idempotency is not None:
        request_headers["Idempotency-Key"] = idempotency
    status, answer, _ = served.request("POST", "/api/v1/messages", payload, request_headers)
    no_server_error(status, answer)
    if key is None or key.strip() != API_KEY:
        assert status == 401, (status, answer[:300])
        return
    assert status in (202, 400, 409, 413, 422), (status, answer[:300])
    event(f"api: {status}")
    if status == 202 and not json.loads(answer)["duplicate"]:
        served.expected["outbound"] += 1


def test_topics_hold_exactly_what_the_answers_promised(served: Served) -> None:
    assert served.sizes() == served.expected


def test_memory_steady_under_repeated_load(served: Served) -> None:
    """The same load twice: the first pass warms caches and allocator arenas up, the second must
    not grow the process by more than a fraction of the bytes it moves (a per-request leak would)."""
    big = os.urandom(900 * 1024)
    load = [("/webhooks/api", big + bytes([i]), {"Content-Type": "application/json"}) for i in range(60)]
    for i in range(40):
        garbage = b"\x00garbage" + bytes([i]) * 2048
        load.append(("/webhooks/line", garbage, SIGNERS["line"](garbage)))

    def one_pass() -> None:
        for path, body, request_headers in load:
            status, answer, _ = served.request("POST", path, body, request_headers)
            assert status in (200, 401), (status, answer[:200])
            if status == 200:
                served.expected["dlq"] += 1

    one_pass()
    warm = rss_bytes()
    one_pass()
    moved = sum(len(body) for _, body, _ in load)
    growth = rss_bytes() - warm
    assert growth < STEADY_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB while {moved / 2**20:.0f} MiB went through"
    assert served.sizes() == served.expected


def test_still_serving_and_memory_bounded(served: Served) -> None:
    status, _, _ = served.request("GET", "/healthz")
    assert status == 200
    status, _, _ = served.request("GET", "/readyz")
    assert status == 200
    growth = rss_bytes() - served.rss_start
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.0f} MiB over the fuzz run"
