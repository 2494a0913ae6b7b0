"""Fuzz campaign: malformed, hostile and unauthenticated requests against a running `gateway serve`.

Usage: .venv/bin/python -m bench.fuzz [--requests 20000] [--seconds 300] [--concurrency 16] [--seed N]

One `gateway serve` process (embedded Tansu + redis-server, or REDIS_URL) with an instance of every
webhook type (api, telegram, whatsapp, messenger, instagram, slack, line, twilio, mailgun,
sendgrid, viber), a web chat instance (WebSocket frames and the REST fallback) and the messages API.
Requests start from the providers' own sample payloads (tests/fixtures) and are broken on purpose:
nested thousands deep, invalid UTF-8, strings of hundreds of KiB, wrong JSON types, truncated,
random bytes. Rounds alternate:

* **authenticated** rounds sign every request the way its provider does (so the parser is reached),
* **unauthenticated** rounds send the same kind of bodies unsigned, with a wrong key or a signature
  over other bytes. Before and after each such round the end offsets of every gateway topic are
  read: any change means an unauthenticated request led to a publish.

It stops after ``--requests`` or ``--seconds``, whichever comes first, and reports the 5xx answers
(by target and status; a web chat ``unavailable`` frame or a dropped socket counts as one) and the
unauthenticated publishes. Both must be 0; the exit status is 1 otherwise.

``SECRETS``, ``channel_settings`` and the signers are shared with tests/test_fuzz.py, so the
Hypothesis properties and this campaign exercise the same instances the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import GATEWAY, ROOT, base_config, header, processes, services, wait_listening
from gateway.bus.topics import Topics
from gateway.embedded import free_port
from plugins.twilio import compute_signature, form_params

SECRETS = {
    "api": "fuzz-api-secret-0123456789abcdef",
    "telegram": "tg-secret_0123456789abcdefABCDEF",
    "meta": "meta-app-secret-0123456789abcdef",
    "slack": "slack-signing-secret-0123456789ab",
    "line": "line-channel-secret-0123456789ab",
    "twilio": "twilio-auth-token-0123456789abcd",
    "mailgun": "mailgun-signing-key-0123456789ab",
    "sendgrid": "sendgrid-url-key-0123456789abcdef",
    "viber": "viber-auth-token-0123456789abcdef",
    "webchat": "webchat-token-secret-0123456789ab",
    "api_key": "fuzz-api-key-0123456789abcdef",
}
TWILIO_ACCOUNT = "AC0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # the tests' fixtures are from this account
FIXTURES = ROOT / "tests" / "fixtures"
WEBHOOKS = (
    "api",
    "telegram",
    "whatsapp",
    "messenger",
    "instagram",
    "slack",
    "line",
    "twilio",
    "mailgun",
    "sendgrid",
    "viber",
)
TARGETS = (*WEBHOOKS, "webchat-ws", "webchat-rest", "messages-api")


def channel_settings() -> dict[str, dict[str, Any]]:
    """Every instance of the campaign, named after its type (web chat: ``chat``)."""
    meta = {"app_secret": SECRETS["meta"], "verify_token": "verify-me-0123456789"}
    return {
        "api": {"type": "api", "secret": SECRETS["api"]},
        "telegram": {"type": "telegram", "secret_token": SECRETS["telegram"]},
        "whatsapp": {"type": "whatsapp", **meta},
        "messenger": {"type": "messenger", **meta},
        "instagram": {"type": "instagram", **meta},
        "slack": {"type": "slack", "signing_secret": SECRETS["slack"]},
        "line": {"type": "line", "channel_secret": SECRETS["line"]},
        "twilio": {"type": "twilio", "auth_token": SECRETS["twilio"], "account_sid": TWILIO_ACCOUNT},
        "mailgun": {"type": "mailgun", "signing_key": SECRETS["mailgun"]},
        "sendgrid": {"type": "sendgrid", "url_secret": SECRETS["sendgrid"]},
        "viber": {"type": "viber", "auth_token": SECRETS["viber"], "sender_name": "Shop"},
        "chat": {
            "type": "webchat",
            "token_secret": SECRETS["webchat"],
            "visitor_rate_limit": {"rate": 10000.0, "burst": 10000},
            # One client address opens thousands of sessions here: the limits are not what is fuzzed.
            "address_rate_limit": {"rate": 100000.0, "burst": 100000},
            "instance_rate_limit": {"rate": 100000.0, "burst": 100000},
        },
    }


# --- signing: what each provider sends, over exactly the bytes sent ---------------------------------


def _hex(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def sign_json(instance: str, body: bytes) -> dict[str, str]:
    """Authentication headers of a JSON webhook body for ``instance`` (not twilio/mailgun/sendgrid)."""
    if instance == "api":
        return {"X-Gateway-Signature": "sha256=" + _hex(SECRETS["api"], body)}
    if instance.startswith("t"):  # telegram, and the tests' small-limit tg-small
        return {"X-Telegram-Bot-Api-Secret-Token": SECRETS["telegram"]}
    if instance in ("whatsapp", "messenger", "instagram"):
        return {"X-Hub-Signature-256": "sha256=" + _hex(SECRETS["meta"], body)}
    if instance == "slack":
        ts = str(int(time.time()))
        return {
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": "v0=" + _hex(SECRETS["slack"], f"v0:{ts}:".encode() + body),
        }
    if instance == "line":
        digest = hmac.new(SECRETS["line"].encode(), body, hashlib.sha256).digest()
        return {"X-Line-Signature": base64.b64encode(digest).decode()}
    if instance == "viber":
        return {"X-Viber-Content-Signature": _hex(SECRETS["viber"], body)}
    raise ValueError(f"{instance} does not sign JSON bodies")


def twilio_signature(url: str, body: bytes) -> str:
    """``X-Twilio-Signature`` of a form post to ``url`` (the URL as the gateway sees it)."""
    try:
        params = form_params(body)
    except ValueError:  # not UTF-8 form data: Twilio could not have signed it; sign the URL alone
        params = {}
    return compute_signature(SECRETS["twilio"], url, params)


def mailgun_fields(fields: dict[str, bytes], key: str | None = None) -> dict[str, bytes]:
    """``fields`` plus a fresh, correctly signed timestamp/token/signature (each token is used once)."""
    timestamp, token = str(int(time.time())), uuid.uuid4().hex
    signature = _hex(key or SECRETS["mailgun"], (timestamp + token).encode())
    return {**fields, "timestamp": timestamp.encode(), "token": token.encode(), "signature": signature.encode()}


def multipart(fields: dict[str, bytes], boundary: str | None = None) -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def urlencoded(fields: dict[str, bytes]) -> bytes:
    return urlencode({k: v for k, v in fields.items()}).encode()


# --- bodies: provider samples, then broken ------------------------------------------------------


def _samples(directory: Path) -> list[Any]:
    return [json.loads(p.read_text("utf-8")) for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []


def load_samples() -> dict[str, list[Any]]:
    """Real payloads per target, from the tests' fixtures (JSON trees; form specs for email)."""
    meta = _samples(FIXTURES / "meta")
    webchat = _samples(FIXTURES / "webchat")
    return {
        "api": [{"id": "crm-1", "sender": {"id": "c-1", "name": "Ada"}, "text": "Where is my parcel?"}],
        "telegram": _samples(FIXTURES / "telegram"),
        "whatsapp": [m for m in meta if m.get("object") == "whatsapp_business_account"],
        "messenger": [m for m in meta if m.get("object") == "page"],
        "instagram": [m for m in meta if m.get("object") == "instagram"],
        "slack": _samples(FIXTURES / "slack"),
        "line": _samples(FIXTURES / "line"),
        "twilio": _samples(FIXTURES / "twilio"),
        "mailgun": [s.get("fields", {}) for s in _samples(FIXTURES / "mailgun")],
        "sendgrid": [s.get("fields", {}) for s in _samples(FIXTURES / "sendgrid")],
        "viber": _samples(ROOT / "contrib" / "viber-channel" / "tests" / "fixtures"),
        "webchat-ws": [w for w in webchat if w.get("type") == "message"] or [{"type": "message", "text": "hi"}],
        "webchat-rest": [w for w in webchat if w.get("type") == "message"] or [{"text": "hi"}],
        "messages-api": [
            {"instance": "api", "conversation_id": "api:c-1", "content": {"text": "Your refund is on its way"}}
        ],
    }


JUNK_TYPES: list[Callable[[random.Random], Any]] = [
    lambda r: None,
    lambda r: r.choice([True, False]),
    lambda r: r.randint(-(2**70), 2**70),
    lambda r: r.random() * 10 ** r.randint(-5, 300),
    lambda r: [],
    lambda r: {},
    lambda r: "".join(chr(r.randint(0, 0x2FFFF)) for _ in range(r.randint(0, 40))),
    lambda r: "\ud800x",  # a lone surrogate: json.dumps writes it as \\ud800
]


# Provider message ids: made unique per request, so that two workers sending the same sample at once
# do not get the documented 503 "the same delivery is being stored right now" (a real retry signal).
ID_KEYS = frozenset(
    {"id", "mid", "message_id", "update_id", "ts", "event_ts", "event_id", "message_token", "webhookEventId"}
    | {"client_msg_id", "MessageSid", "SmsSid", "SmsMessageSid", "client_id"}
)
MESSAGE_ID = re.compile(rb"<[^<>@\s]+@")


def uniquify(tree: Any, rng: random.Random) -> Any:
    """``tree`` with every provider id replaced by a fresh one of the same shape."""
    if isinstance(tree, dict):
        return {k: _fresh(v, rng) if k in ID_KEYS else uniquify(v, rng) for k, v in tree.items()}
    if isinstance(tree, list):
        return [uniquify(v, rng) for v in tree]
    return tree


def _fresh(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return uniquify(value, rng)
    if isinstance(value, int):
        return rng.randint(1, 2**53)
    if re.fullmatch(r"\d+\.\d+", value):  # Slack timestamps
        return f"{rng.randint(10**9, 2 * 10**9)}.{rng.randint(0, 999_999):06d}"
    if value.isdigit():
        return str(rng.randint(10 ** (len(value) - 1), 10 ** len(value) - 1))
    return f"{value[:40]}{rng.getrandbits(64):016x}"


@dataclass
class Breaker:
    """Turns a sample into something hostile; every method returns bytes ready to send."""

    rng: random.Random
    huge_bytes: int = 300_000
    strategies: Counter[str] = field(default_factory=Counter)

    def deep(self) -> bytes:
        depth = self.rng.choice([1_000, 5_000, 20_000, 100_000])
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        return opener * depth + (b"1" if opener != b"[" else b"") + closer * depth

    def _walk(self, tree: Any, replace: Callable[[], Any]) -> Any:
        """``tree`` with one random leaf (or subtree) replaced by ``replace()``."""
        if isinstance(tree, dict) and tree and self.rng.random() < 0.8:
            key = self.rng.choice(list(tree))
            return {**tree, key: self._walk(tree[key], replace)}
        if isinstance(tree, list) and tree and self.rng.random() < 0.8:
            i = self.rng.randrange(len(tree))
            return [*tree[:i], self._walk(tree[i], replace), *tree[i + 1 :]]
        return replace()

    def json_body(self, sample: Any) -> bytes:
        kind = self.rng.choices(
            ["valid", "deep", "deep-inside", "wrong-type", "huge", "invalid-utf8", "truncated", "bytes", "nulls"],
            weights=[10, 12, 16, 20, 3, 12, 8, 10, 9],
        )[0]
        self.strategies[kind] += 1
        sample = uniquify(sample, self.rng)
        text = json.dumps(sample, ensure_ascii=False).encode()
        if kind == "valid":
            return text
        if kind == "deep":
            return self.deep()
        if kind == "deep-inside":
            marker = "\x00DEEP\x00"
            return json.dumps(self._walk(sample, lambda: marker)).encode().replace(b'"\\u0000DEEP\\u0000"', self.deep())
        if kind == "wrong-type":
            return json.dumps(self._walk(sample, lambda: self.rng.choice(JUNK_TYPES)(self.rng))).encode()
        if kind == "huge":
            big = "x" * self.rng.randint(self.huge_bytes // 2, self.huge_bytes)
            return json.dumps(self._walk(sample, lambda: big)).encode()
        if kind == "invalid-utf8":
            out = bytearray(text)
            for _ in range(self.rng.randint(1, 5)):
                out[self.rng.randrange(len(out) or 1) if out else 0 : 0] = self.rng.choice(
                    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xfe\xfe", b"\x80"]
                )
            return bytes(out)
        if kind == "truncated":
            return text[: self.rng.randrange(len(text) or 1)]
        if kind == "nulls":
            return json.dumps(self._walk(sample, lambda: None)).encode().replace(b"null", b"\x00", 1)
        return self.rng.randbytes(self.rng.randint(0, 4096))

    def fields(self, sample: dict[str, Any]) -> dict[str, bytes]:
        """Form fields (email providers, Twilio) with one or two of them broken."""
        fields = {
            k: MESSAGE_ID.sub(lambda m: b"<%016x@" % self.rng.getrandbits(64), _field(v))
            for k, v in uniquify(sample, self.rng).items()
        }
        for _ in range(self.rng.randint(1, 2)):
            kind = self.rng.choice(["deep-json", "invalid-utf8", "huge", "empty", "drop", "junk", "extra"])
            self.strategies[f"form-{kind}"] += 1
            name = self.rng.choice(list(fields) or ["x"])
            if kind == "deep-json":  # envelope, charsets, attachment-info... are JSON inside the form
                fields[self.rng.choice([name, "envelope", "charsets", "attachment-info", "message-headers"])] = (
                    self.deep()
                )
            elif kind == "invalid-utf8":
                fields[name] = fields.get(name, b"") + self.rng.choice([b"\xff\xfe", b"\xed\xa0\x80", b"\xc0"])
            elif kind == "huge":
                fields[name] = b"y" * self.rng.randint(self.huge_bytes // 2, self.huge_bytes)
            elif kind == "empty":
                fields[name] = b""
            elif kind == "drop":
                fields.pop(name, None)
            elif kind == "junk":
                fields[name] = json.dumps(self.rng.choice(JUNK_TYPES)(self.rng)).encode()
            else:
                fields[f"x-{self.rng.randint(0, 99)}"] = self.rng.randbytes(self.rng.randint(0, 64))
        return fields


def _field(value: Any) -> bytes:
    """A form field spec (tests/email_forms.py format) or value, as the bytes posted."""
    if isinstance(value, dict) and "text" in value:
        return str(value["text"]).encode(str(value.get("charset", "utf-8")), "replace")
    return (value if isinstance(value, str) else json.dumps(value)).encode()


# --- requests -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the campaign saw, per target."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    unauthenticated_publishes: int = 0
    unauthenticated_requests: int = 0
    leaked: Counter[str] = field(default_factory=Counter)
    details: Counter[str] = field(default_factory=Counter)


class Campaign:
    def __init__(self, base: str, session: aiohttp.ClientSession, seed: int, outcome: Outcome) -> None:
        self.base = base
        self.session = session
        self.rng = random.Random(seed)
        self.breaker = Breaker(self.rng)
        self.samples = load_samples()
        self.outcome = outcome
        self.chat_token: str | None = None

    def _sample(self, target: str) -> Any:
        return self.rng.choice(self.samples[target] or [{}])

    def _record(self, target: str, status: int) -> None:
        self.outcome.requests[target] += 1
        self.outcome.statuses[(target, status)] += 1
        if status >= 500:
            self.outcome.server_errors[(target, str(status))] += 1

    async def _post(self, target: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            async with self.session.post(self.base + path, data=body, headers=headers) as response:
                answer = await response.read()
                self._record(target, response.status)
                if response.status >= 500:
                    self.outcome.details[f"{target} {response.status}: {answer[:120]!r}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.outcome.requests[target] += 1
            self.outcome.transport_errors[f"{target}: {type(exc).__name__}"] += 1

    async def one(self, target: str, authenticated: bool) -> None:
        if target in ("webchat-ws", "webchat-rest"):
            await self._webchat(target, authenticated)
        elif target == "messages-api":
            await self._messages_api(authenticated)
        elif target in ("twilio", "mailgun", "sendgrid"):
            await self._form(target, authenticated)
        else:
            await self._json(target, authenticated)

    async def _json(self, instance: str, authenticated: bool) -> None:
        body = self.breaker.json_body(self._sample(instance))
        content_type = self.rng.choice(
            ["application/json"] * 8 + ["text/plain", "", "application/json; charset=latin-1"]
        )
        headers = {"Content-Type": content_type} if content_type else {}
        if authenticated:
            headers |= sign_json(instance, body)
        else:
            how = self.rng.choice(["none", "other-body", "other-instance"])
            if how == "other-body":
                headers |= sign_json(instance, body + b" ")
                if instance == "telegram":
                    headers["X-Telegram-Bot-Api-Secret-Token"] = "not-the-secret-token-0123456789"
            elif how == "other-instance":  # another scheme with another secret (Meta's three share one)
                meta = {"whatsapp", "messenger", "instagram"}
                others = [i for i in ("api", "whatsapp", "slack", "line", "viber") if i != instance]
                headers |= sign_json(self.rng.choice([i for i in others if not {i, instance} <= meta]), body)
        await self._post(instance, f"/webhooks/{instance}", body, headers)

    async def _form(self, instance: str, authenticated: bool) -> None:
        fields = self.breaker.fields(self._sample(instance))
        path = f"/webhooks/{instance}"
        headers: dict[str, str] = {}
        if instance == "twilio":
            body = urlencoded(fields) if self.rng.random() < 0.9 else self.breaker.json_body(self._sample(instance))
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            url = self.base + path
            headers["X-Twilio-Signature"] = twilio_signature(url, body if authenticated else body + b"&x=1")
        elif instance == "mailgun":
            fields = mailgun_fields(fields, None if authenticated else "not-the-signing-key-0123456789")
            body, headers["Content-Type"] = (
                multipart(fields)
                if self.rng.random() < 0.7
                else (
                    urlencoded(fields),
                    "application/x-www-form-urlencoded",
                )
            )
        else:
            body, headers["Content-Type"] = multipart(fields)
            key = SECRETS["sendgrid"] if authenticated else self.rng.choice(["", "wrong-key-0123456789abcdef"])
            path += f"?key={key}" if key else ""
        await self._post(instance, path, body, headers)

    async def _messages_api(self, authenticated: bool) -> None:
        body = self.breaker.json_body(self._sample("messages-api"))
        headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
        if authenticated:
            headers["Authorization"] = f"Bearer {SECRETS['api_key']}"
        elif self.rng.random() < 0.5:
            headers["Authorization"] = "Bearer wrong-key-0123456789abcdef"
        await self._post("messages-api", "/api/v1/messages", body, headers)

    async def _token(self) -> str | None:
        if self.chat_token is None:
            async with self.session.post(self.base + "/chat/api/session", json={}) as response:
                if response.status == 200:
                    self.chat_token = (await response.json())["token"]
        return self.chat_token

    async def _webchat(self, target: str, authenticated: bool) -> None:
        frame = self.breaker.json_body({**self._sample(target), "client_id": uuid.uuid4().hex[:16]})
        if target == "webchat-rest":
            token = await self._token() if authenticated else self.rng.choice([None, "v1.forged.token"])
            headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
            await self._post(target, "/chat/api/messages", frame, headers)
            return
        self.outcome.requests[target] += 1
        try:
            async with self.session.ws_connect(self.base + "/chat/ws", heartbeat=None) as ws:
                if authenticated:
                    await ws.send_str(json.dumps({"type": "hello"}))
                    await ws.receive_json(timeout=30)
                if self.rng.random() < 0.1:
                    await ws.send_bytes(frame)  # frames are JSON text: binary gets an error frame
                else:
                    await ws.send_str(frame.decode("utf-8", "replace"))
                answer = await ws.receive(timeout=30)
                if answer.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(answer.data)
                    code = data.get("code") if data.get("type") == "error" else data.get("type")
                    self.outcome.statuses[(target, 200)] += 1
                    if code == "unavailable":
                        self.outcome.server_errors[(target, "unavailable frame")] += 1
                elif answer.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1011:
                    self.outcome.server_errors[(target, "close 1011")] += 1
                else:
                    self.outcome.statuses[(target, ws.close_code or 0)] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.outcome.transport_errors[f"{target}: {type(exc).__name__}"] += 1


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """End offsets of every partition: any publish moves one (even where Tansu undercounts records)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or set()]
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return offsets
    finally:
        await consumer.stop()


async def published(
    bootstrap: str, before: dict[TopicPartition, int], after: dict[TopicPartition, int]
) -> Counter[str]:
    """The records between two sets of end offsets, as ``topic instance`` counts (what leaked)."""
    found: Counter[str] = Counter()
    moved = {tp: (before.get(tp, 0), end) for tp, end in after.items() if end != before.get(tp, 0)}
    if not moved:
        return found
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(moved))
        for tp, (start, _) in moved.items():
            consumer.seek(tp, start)
        deadline = time.monotonic() + 10
        while moved and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    if record.offset >= moved[tp][1] + 50:  # Tansu: the end offset may undercount a batch
                        continue
                    instance = dict(record.headers).get("instance", b"").decode()
                    found[f"{tp.topic} {instance} {record.value[:80]!r}"] += 1
            positions = [await consumer.position(tp) for tp in moved]
            if all(position >= end for position, (_, end) in zip(positions, moved.values(), strict=True)):
                break
    finally:
        await consumer.stop()
    return found


async def campaign(base: str, bootstrap: str, topics: list[str], args: argparse.Namespace) -> tuple[Outcome, float]:
    outcome = Outcome()
    deadline = time.monotonic() + args.seconds
    started = time.perf_counter()
    sent = 0
    round_no = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workers = [Campaign(base, session, args.seed * 1000 + i, outcome) for i in range(args.concurrency)]
        while sent < args.requests and time.monotonic() < deadline:
            authenticated = round_no % 5 != 4 and round_no % 5 != 2  # 3 signed rounds, 2 unsigned of 5
            size = min(args.round_size, args.requests - sent)
            before = None if authenticated else await end_offsets(bootstrap, topics)
            plan = [TARGETS[(round_no * 7 + i) % len(TARGETS)] for i in range(size)]
            queue = iter(plan)

            async def drain(worker: Campaign, queue: Any = queue, authenticated: bool = authenticated) -> None:
                for target in queue:
                    await worker.one(target, authenticated)

            await asyncio.gather(*(drain(w) for w in workers))
            if not authenticated:
                outcome.unauthenticated_requests += size
                after = await end_offsets(bootstrap, topics)
                if before is not None and after != before:
                    leaked = await published(bootstrap, before, after)
                    outcome.leaked += leaked
                    outcome.unauthenticated_publishes += max(1, leaked.total())
            sent += size
            round_no += 1
        strategies = sum((w.breaker.strategies for w in workers), Counter())
    elapsed = time.perf_counter() - started
    print("strategies: " + ", ".join(f"{k} {v}" for k, v in sorted(strategies.items())))
    return outcome, elapsed


def write_config(path: Path, bootstrap: str, redis_url: str, port: int, prefix: str) -> None:
    lines = [base_config(bootstrap, redis_url, port, prefix), "[api]", f'keys = ["{SECRETS["api_key"]}"]']
    for name, settings in channel_settings().items():
        lines.append(f"[channels.{name}]")
        for key, value in settings.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="stop after this many requests")
    parser.add_argument("--seconds", type=float, default=300.0, help="stop after this long, whatever the count")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--round-size", type=int, default=500, help="requests per (signed or unsigned) round")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()

    with services() as svc, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        prefix = f"fuzz{uuid.uuid4().hex[:6]}."
        config = Path(tmp) / "gateway.toml"
        write_config(config, svc.bootstrap, svc.redis_url, port, prefix)
        with processes([GATEWAY, "serve", "--config", str(config)]) as (server,):
            await wait_listening(port)
            base = f"http://127.0.0.1:{port}"
            topics = Topics(prefix).all()
            outcome, elapsed = await campaign(base, svc.bootstrap, topics, args)
            async with aiohttp.ClientSession() as session, session.get(base + "/healthz") as health:
                alive = health.status == 200 and server.poll() is None

    total = sum(outcome.requests.values())
    print(header())
    rate = total / elapsed
    print(f"seed {args.seed}; {total} requests in {elapsed:.1f} s ({rate:.0f} req/s), concurrency {args.concurrency}")
    print(f"{outcome.unauthenticated_requests} of them unauthenticated; gateway still serving: {alive}")
    for target in TARGETS:
        statuses = sorted((s, n) for (t, s), n in outcome.statuses.items() if t == target)
        shown = ", ".join(f"{s}: {n}" for s, n in statuses)
        print(f"  {target:13} {outcome.requests[target]:6}  {shown}")
    errors = ", ".join(f"{t} {s}: {n}" for (t, s), n in sorted(outcome.server_errors.items())) or "none"
    print(f"5xx answers: {sum(outcome.server_errors.values())} ({errors})")
    for what, n in outcome.details.most_common(10):
        print(f"  {n} x {what}")
    print(f"unauthenticated publishes: {outcome.unauthenticated_publishes}")
    for what, n in outcome.leaked.most_common(20):
        print(f"  {n} x {what}")
    transport = ", ".join(f"{k}: {n}" for k, n in outcome.transport_errors.items()) or "none"
    print(f"transport errors (no HTTP answer): {sum(outcome.transport_errors.values())} ({transport})")
    failed = sum(outcome.server_errors.values()) or outcome.unauthenticated_publishes or not alive
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
