"""Property-based fuzzing of the HTTP surface over the real app, the real broker and the real Redis.

The gateway is served from a background thread (its own event loop, a real TCP port on loopback),
so Hypothesis drives it synchronously with the stdlib ``http.client``, which sends exactly the bytes,
methods, headers and query strings it is given (web chat sockets go through aiohttp). Examples are
bounded (``max_examples``) and ``deadline=None`` (a publish waits for the broker's ack; latency is
not the property).

Targets: a webhook instance of every type (api, telegram, whatsapp, messenger, instagram, slack,
line, twilio, mailgun and sendgrid multipart/url-encoded, viber), web chat frames (WebSocket and
REST) and ``POST /api/v1/messages``. Bodies include deep nesting (bare and inside provider-shaped
objects), invalid UTF-8 (raw and inside JSON strings), strings of hundreds of KiB, wrong JSON
types, random bytes and sizes around the body limits. The instances, secrets and signers are
``bench.fuzz``'s, so this and the long campaign (``python -m bench.fuzz``) hit the same gateway.

Properties:

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

Every test counts the topics itself before and after its own requests, so none depends on another
having run first (``pytest tests/test_fuzz.py -k <any one>`` checks the same properties).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import string
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench.fuzz import (
    SECRETS,
    channel_settings,
    mailgun_fields,
    multipart,
    sign_json,
    twilio_signature,
    urlencoded,
)
from gateway.plugins import PluginRegistry
from tests.fuzz_server import Served, served_gateway

API_KEY = SECRETS["api_key"]
SMALL_LIMIT = 4096  # the tg-small instance's body limit, so 413 is reachable cheaply
# Whole run, Hypothesis's own bookkeeping included: 90-140 MiB measured with every target here, most
# of it Hypothesis's record of the large examples it generated (the served gateway alone grows by
# ~0.3 KiB per web chat conversation, measured apart); the per-request bound is the steady test's.
RSS_BOUND = 200 * 1024 * 1024
STEADY_BOUND = 16 * 1024 * 1024  # second identical pass moving ~50 MiB of bodies
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)
CHANNELS: dict[str, dict[str, Any]] = {
    **channel_settings(),
    "tg-small": {"type": "telegram", "secret_token": SECRETS["telegram"], "max_body_bytes": SMALL_LIMIT},
}
JSON_WEBHOOKS = ["api", "telegram", "tg-small", "whatsapp", "messenger", "instagram", "slack", "line", "viber"]
FORM_WEBHOOKS = ["twilio", "mailgun", "sendgrid"]
WEBHOOKS = [*JSON_WEBHOOKS, *FORM_WEBHOOKS]
# Headers http.client or the transport manage, and the ones that authenticate (set by signers only).
RESERVED = {  # set by each test itself (a second Content-Type is refused by aiohttp's parser, before us)
    "host",
    "content-type",
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
    "x-twilio-webhooks-signature-settings",
    "x-viber-content-signature",
    "authorization",
    "x-api-key",
    "origin",
}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> Iterator[Served]:
    assert "viber" in registry.channels, "install contrib/viber-channel (scripts/test does) to fuzz it too"
    with served_gateway(kafka_bootstrap, redis_url, registry, CHANNELS, api={"keys": [API_KEY]}) as result:
        result.rss_start = rss_bytes()
        yield result


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
        "update_id": st.integers(0, 2**40) | json_values,
        "message": json_values,
        "object": st.sampled_from(["whatsapp_business_account", "page", "instagram"]) | json_values,
        "entry": st.lists(json_values, max_size=3),
        "events": st.lists(json_values, max_size=3),
        "destination": st.text(max_size=20) | json_values,
        "event": st.sampled_from(["message", "delivered", "webhook"]) | json_values,
        "message_token": st.integers() | json_values,
        "type": st.sampled_from(["event_callback", "url_verification", "message"]) | json_values,
        "challenge": st.text(max_size=20),
    },
)
DEEP_MARK = "\x00deep\x00"
depths = st.sampled_from([1_000, 3_000, 5_000, 20_000, 100_000])
deep_blobs = st.tuples(depths, st.sampled_from([(b"[", b"]", b""), (b'{"a":', b"}", b"1")])).map(
    lambda d: d[1][0] * d[0] + d[1][2] + d[1][1] * d[0]
)


def _deep_inside(tree: dict[str, Any], blob: bytes, key: str) -> bytes:
    """A provider-shaped object with one field nested ``blob`` deep (unknown fields are decoded too)."""
    return json.dumps({**tree, key: DEEP_MARK}).encode().replace(b'"\\u0000deep\\u0000"', blob)


def _bad_utf8_inside(text: bytes, at: int, junk: bytes) -> bytes:
    """Invalid UTF-8 inside a JSON string (after a quote): msgspec raises UnicodeDecodeError there."""
    quotes = [i for i, c in enumerate(text) if c == ord('"')]
    if not quotes:
        return junk + text
    i = quotes[at % len(quotes)] + 1
    return text[:i] + junk + text[i:]


invalid_utf8 = st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xfe\xfe", b"\x80", b"caf\xe9"])
bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_miss.map(lambda v: json.dumps(v).encode()),
    deep_blobs,  # bare deep nesting
    st.builds(_deep_inside, near_miss, deep_blobs, st.sampled_from(["x", "message", "entry", "event", "update_id"])),
    st.builds(_bad_utf8_inside, near_miss.map(lambda v: json.dumps(v).encode()), st.integers(0, 20), invalid_utf8),
    st.builds(
        lambda tree, n: json.dumps({**tree, "text": "x" * n}).encode(), near_miss, st.integers(100_000, 900_000)
    ),  # huge strings
    st.integers(SMALL_LIMIT - 8, SMALL_LIMIT + 64).map(lambda n: b"x" * n),  # around a body limit
    st.integers(1, 3).map(lambda n: b"{" * (n * 700_000)),  # over the default 1 MiB limit or close
)
queries = st.dictionaries(st.text(max_size=15), st.text(max_size=30), max_size=4).map(
    lambda q: ("?" + urlencode(q)) if q else ""
)
form_values = st.one_of(
    st.text(max_size=80).map(str.encode),
    invalid_utf8,
    deep_blobs,
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(20_000, 150_000).map(lambda n: b"y" * n),  # far past the 8 KiB address-field cap
)
# Field names the email providers and Twilio send, so their parsers read what is fuzzed.
form_names = st.sampled_from(
    [
        "from",
        "sender",
        "recipient",
        "subject",
        "body-plain",
        "body-html",
        "stripped-text",
        "message-headers",
        "body-mime",
        "attachment-count",
        "content-id-map",
        "envelope",
        "charsets",
        "headers",
        "text",
        "html",
        "email",
        "to",
        "attachments",
        "attachment-info",
        "content-ids",
        "spam_score",
        "MessageSid",
        "AccountSid",
        "From",
        "To",
        "Body",
        "NumMedia",
        "MediaUrl0",
        "MediaContentType0",
        "MessageStatus",
    ]
) | st.text(string.ascii_letters + "-_", min_size=1, max_size=12)
forms = st.dictionaries(form_names, form_values, max_size=10)


def signed_form(
    instance: str, base: str, fields: dict[str, bytes], as_multipart: bool
) -> tuple[str, bytes, dict[str, str]]:
    """Path, body and headers of a correctly authenticated form post to a form webhook instance."""
    path = f"/webhooks/{instance}"
    if instance == "mailgun":
        fields = mailgun_fields(fields)
    if instance == "twilio" or not as_multipart:
        body, content_type = urlencoded(fields), "application/x-www-form-urlencoded"
    else:
        body, content_type = multipart(fields)
    request_headers = {"Content-Type": content_type}
    if instance == "twilio":
        request_headers["X-Twilio-Signature"] = twilio_signature(base + path, body)
    if instance == "sendgrid":
        path += f"?key={SECRETS['sendgrid']}"
    return path, body, request_headers


def no_server_error(status: int, answer: bytes) -> None:
    event(f"status {status}")  # shown by --hypothesis-show-statistics: which paths were reached
    assert status < 500, (status, answer[:500])


# --- webhooks -----------------------------------------------------------------------------------


def test_unauthenticated_webhooks_publish_nothing(served: Served) -> None:
    before = served.sizes()

    @FUZZ
    @given(
        instance=st.sampled_from([*WEBHOOKS, "chat", "nope", "api%2F..", "a" * 300]),
        method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH"]),
        body=bodies | forms.map(urlencoded),
        extra=headers,
        content_type=content_types,
        query=queries,
        forged=st.sampled_from([*JSON_WEBHOOKS, "mailgun", "twilio"]) | st.none(),
    )
    def fuzz(
        instance: str,
        method: str,
        body: bytes,
        extra: dict[str, str],
        content_type: str,
        query: str,
        forged: str | None,
    ) -> None:
        request_headers = {**extra, "Content-Type": content_type}
        if forged == "twilio":  # Twilio's scheme over other parameters
            request_headers["X-Twilio-Signature"] = twilio_signature(f"{served.base}/webhooks/{instance}", b"x=1")
        elif forged == "mailgun":  # Mailgun's fields signed with another key
            body, request_headers["Content-Type"] = multipart(mailgun_fields({"x": body}, "another-key-0123456789"))
        elif forged is not None:  # another channel's scheme, or this one's over other bytes
            request_headers.update(sign_json(forged, body + b"tampered"))
            request_headers.pop("X-Telegram-Bot-Api-Secret-Token", None)
        if "key=" in query:
            query = ""  # SendGrid's URL key is its authentication: never guessed right here anyway
        status, answer, _ = served.request(method, f"/webhooks/{instance}{query}", body, request_headers)
        no_server_error(status, answer)
        if method == "POST" and instance in CHANNELS:
            assert status in (401, 403, 413), (status, answer[:300])
        elif method == "GET":
            assert status in (200, 400, 403, 404, 405), status  # handshakes answer only the right token
        else:
            assert status in (404, 405), status

    fuzz()
    assert served.sizes() == before


class Ledger:
    """What the answers of signed requests promise to have stored, to compare with the topics."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.before = served.sizes()
        self.expected = dict(self.before)
        self.at_most_unlisted = 0  # replies that are not JSON (Twilio's TwiML): stored, count unknown

    def answer(self, instance: str, status: int, answer: bytes, response_headers: dict[str, str]) -> None:
        if status // 100 != 2:
            return
        if not response_headers.get("content-type", "").startswith("application/json"):
            self.at_most_unlisted += 1  # a reply of the adapter (TwiML, Slack's challenge): at most one record
            return
        reply = json.loads(answer)
        event(f"{instance}: {reply.get('status')}")
        if reply.get("status") == "quarantined":
            self.expected["dlq"] += 1
            return
        assert reply.get("status") == "accepted", reply
        for message in reply["messages"]:
            if message.get("quarantined"):
                self.expected["dlq"] += 1
            elif not message["duplicate"]:
                self.expected["inbound"] += 1

    def check(self) -> None:
        after = self.served.sizes()
        assert after["dlq"] == self.expected["dlq"] and after["outbound"] == self.expected["outbound"], after
        unlisted = (after["inbound"] - self.expected["inbound"]) + (after["events"] - self.before["events"])
        assert after["inbound"] >= self.expected["inbound"] and 0 <= unlisted <= self.at_most_unlisted, (
            after,
            self.expected,
        )


def test_signed_json_webhooks_store_only_what_the_answers_say(served: Served) -> None:
    ledger = Ledger(served)

    @FUZZ
    @given(
        instance=st.sampled_from(JSON_WEBHOOKS), body=bodies, extra=headers, content_type=content_types, query=queries
    )
    def fuzz(instance: str, body: bytes, extra: dict[str, str], content_type: str, query: str) -> None:
        request_headers = {**extra, "Content-Type": content_type, **sign_json(instance, body)}
        status, answer, response_headers = served.request("POST", f"/webhooks/{instance}{query}", body, request_headers)
        no_server_error(status, answer)
        assert status in (200, 413), (status, answer[:300])
        ledger.answer(instance, status, answer, response_headers)

    fuzz()
    ledger.check()


def test_signed_form_webhooks_store_only_what_the_answers_say(served: Served) -> None:
    """Mailgun and SendGrid (multipart or url-encoded) and Twilio, correctly signed, fuzzed fields."""
    ledger = Ledger(served)

    @FUZZ
    @given(instance=st.sampled_from(FORM_WEBHOOKS), fields=forms, as_multipart=st.booleans(), extra=headers)
    def fuzz(instance: str, fields: dict[str, bytes], as_multipart: bool, extra: dict[str, str]) -> None:
        path, body, request_headers = signed_form(instance, served.base, fields, as_multipart)
        status, answer, response_headers = served.request("POST", path, body, {**extra, **request_headers})
        no_server_error(status, answer)
        # 401: a Twilio form that is not UTF-8 cannot carry a signature; 403: another AccountSid
        allowed = (200, 204, 401, 403, 413) if instance == "twilio" else (200, 413)
        assert status in allowed, (instance, status, answer[:300])
        ledger.answer(instance, status, answer, response_headers)

    fuzz()
    ledger.check()


# --- web chat -----------------------------------------------------------------------------------

# Frames stay near the frame limit (larger ones only get the socket closed with 1009), which also
# keeps Hypothesis's record of every generated example small.
frames = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([1_000, 5_000, 20_000]).map(lambda n: b"[" * n + b"]" * n),
    st.builds(
        _deep_inside, near_miss, st.sampled_from([1_000, 5_000]).map(lambda n: b"[" * n + b"]" * n), st.just("x")
    ),
    st.builds(_bad_utf8_inside, near_miss.map(lambda v: json.dumps(v).encode()), st.integers(0, 20), invalid_utf8),
    st.integers(20_000, 60_000).map(
        lambda n: json.dumps({"type": "message", "client_id": "c", "text": "x" * n}).encode()
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["message", "hello", "typing", "ping"]) | json_values},
        optional={
            "client_id": st.text(string.ascii_letters, min_size=1, max_size=20) | json_values,
            "text": st.text(max_size=300) | json_values,
            "attachments": json_values,
            "state": json_values,
            "token": json_values,
            "visitor": json_values,
            "after": json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
)


async def _converse(base: str, frames: list[bytes], hello: bool) -> list[dict[str, Any]]:
    """Send ``frames`` on one socket (after a hello if ``hello``); the answer to each, in order."""
    answers: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{base}/chat/ws", heartbeat=None) as ws:
        if hello:
            await ws.send_str(json.dumps({"type": "hello"}))
            assert (await ws.receive_json(timeout=30))["type"] == "welcome"
        for frame in frames:
            try:
                await ws.send_str(frame.decode("utf-8"))
            except UnicodeDecodeError:
                await ws.send_bytes(frame)  # not text: a binary frame
            msg = await ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                assert ws.close_code in (1009,), ws.close_code  # only a frame over the size limit closes
                break
            answers.append(json.loads(msg.data))
        if not ws.closed:
            await ws.send_str(json.dumps({"type": "ping"}))
            assert await ws.receive_json(timeout=30) == {"type": "pong"}  # the socket survived
    return answers


def test_webchat_socket_frames(served: Served) -> None:
    """Before a hello nothing is stored; after it, exactly the acked new messages are."""
    before = served.sizes()
    acked = 0

    @FUZZ
    @given(batch=st.lists(frames, min_size=1, max_size=4), hello=st.booleans())
    def fuzz(batch: list[bytes], hello: bool) -> None:
        nonlocal acked
        opened = hello
        for answer in asyncio.run(_converse(served.base, batch, hello)):
            event(f"webchat: {answer.get('type')} {answer.get('code', '')}")
            assert answer.get("code") != "unavailable", answer
            assert answer["type"] in ("ack", "error", "pong", "typing_ack", "welcome"), answer
            opened = opened or answer["type"] == "welcome"  # a fuzzed hello frame opens a session too
            if answer["type"] == "ack":
                assert opened, answer  # no message is stored before a hello
                acked += not answer["duplicate"]

    fuzz()
    after = served.sizes()
    assert after == before | {"inbound": before["inbound"] + acked}


def test_webchat_rest_messages(served: Served) -> None:
    before = served.sizes()
    status, answer, _ = served.request("POST", "/chat/api/session", b"{}", {"Content-Type": "application/json"})
    assert status == 200, answer
    token = json.loads(answer)["token"]
    acked = 0

    @FUZZ
    @given(body=frames, authenticated=st.booleans(), extra=headers, content_type=content_types)
    def fuzz(body: bytes, authenticated: bool, extra: dict[str, str], content_type: str) -> None:
        nonlocal acked
        request_headers = {**extra, "Content-Type": content_type}
        if authenticated:
            request_headers["Authorization"] = f"Bearer {token}"
        status, answer, _ = served.request("POST", "/chat/api/messages", body, request_headers)
        no_server_error(status, answer)
        if not authenticated:
            assert status == 401, (status, answer[:300])
            return
        assert status in (200, 400, 413), (status, answer[:300])
        reply = json.loads(answer)
        if status == 200:
            assert reply["type"] == "ack", reply
            acked += not reply["duplicate"]

    fuzz()
    assert served.sizes() == before | {"inbound": before["inbound"] + acked}


# --- the messages API ---------------------------------------------------------------------------

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


def _messages_api(
    served: Served, payloads: st.SearchStrategy[bytes], fuzz_settings: settings = FUZZ
) -> tuple[Callable[[], None], list[int]]:
    """A Hypothesis test of ``POST /api/v1/messages`` with bodies from ``payloads``, and the list
    it appends to for every new message queued (202, not a duplicate)."""
    queued: list[int] = []

    @fuzz_settings
    @given(
        payload=payloads,
        key=st.sampled_from([API_KEY, None, "wrong-key-0123456789abcdef", API_KEY + " "]),
        scheme=st.sampled_from(["bearer", "x-api-key"]),
        idempotency=st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
        extra=headers,
        content_type=content_types,
    )
    def fuzz(
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
            queued.append(1)

    return fuzz, queued


def test_messages_api_refuses_or_queues_exactly_what_it_answers(served: Served) -> None:
    before = served.sizes()
    fuzz, queued = _messages_api(
        served,
        st.one_of(
            outbound_requests.map(lambda v: json.dumps(v).encode()),
            plausible_outbound.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=2048),
            st.integers(1, 3).map(lambda n: b"{" * (n * 700_000)),
        ),
    )
    fuzz()
    assert served.sizes() == before | {"outbound": before["outbound"] + len(queued)}


def test_messages_api_deep_nesting_and_invalid_utf8_are_4xx(served: Served) -> None:
    before = served.sizes()
    fuzz, queued = _messages_api(
        served,
        st.one_of(
            deep_blobs,
            st.builds(_deep_inside, plausible_outbound, deep_blobs, st.sampled_from(["labels", "unexpected"])),
            st.builds(
                _bad_utf8_inside,
                plausible_outbound.map(lambda v: json.dumps(v).encode()),
                st.integers(0, 9),
                invalid_utf8,
            ),
        ),
    )
    fuzz()
    assert served.sizes() == before | {"outbound": before["outbound"] + len(queued)}


# --- the process ---------------------------------------------------------------------------------


def test_memory_steady_under_repeated_load(served: Served) -> None:
    """The same load twice: the first pass warms caches and allocator arenas up, the second must
    not grow the process by more than a fraction of the bytes it moves (a per-request leak would)."""
    before = served.sizes()
    big = os.urandom(900 * 1024)
    load = [("/webhooks/api", big + bytes([i]), {"Content-Type": "application/json"}) for i in range(60)]
    for i in range(40):
        garbage = b"\x00garbage" + bytes([i]) * 2048
        load.append(("/webhooks/line", garbage, sign_json("line", garbage)))
    quarantined = 0

    def one_pass() -> None:
        nonlocal quarantined
        for path, body, request_headers in load:
            status, answer, _ = served.request("POST", path, body, request_headers)
            assert status in (200, 401), (status, answer[:200])
            quarantined += status == 200

    one_pass()
    warm = rss_bytes()
    one_pass()
    moved = sum(len(body) for _, body, _ in load)
    growth = rss_bytes() - warm
    assert growth < STEADY_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB while {moved / 2**20:.0f} MiB went through"
    assert served.sizes() == before | {"dlq": before["dlq"] + quarantined}


def test_still_serving_and_memory_bounded(served: Served) -> None:
    """Whatever ran before in this module (any subset, any order): the process answers and stayed
    within a generous memory bound."""
    status, _, _ = served.request("GET", "/healthz")
    assert status == 200
    status, _, _ = served.request("GET", "/readyz")
    assert status == 200
    growth = rss_bytes() - served.rss_start
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.0f} MiB over the fuzz run"
