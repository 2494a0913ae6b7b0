"""The channel contract: what every channel adapter must do, as a test class to subclass.

A channel author writes::

    class TestAcmeContract(ChannelContract):
        channel_type = "acme"

        def config(self): return {"token": "tok-0123456789abcdef"}
        def valid_payloads(self): return {"text": json_request({...})}
        def sign(self, request, config): return request.with_headers({"X-Acme-Token": config["token"]})

and pytest runs every ``test_*`` below against the adapter, through the real gateway app, a real
broker and a real Redis. Override the other hooks where the defaults do not fit the provider.

What it checks, for a channel that receives HTTP webhooks (``/webhooks/<instance>``):

- ``registered``: a plugin registers the channel type;
- ``round_trip``: each of its fixtures (``valid_payloads``), signed, is answered 2xx and lands on the
  inbound topic exactly once per message, valid against ``gateway.message/v1``, keyed by conversation;
- ``duplicates``: the same delivery twice (signed afresh each time) gives one record;
- ``unsigned``, ``forged_signature``: a request without credentials, or signed with slightly wrong
  secrets, is answered 401/403 and publishes nothing (not even to the DLQ);
- ``tampered_body``: a body changed after signing is refused the same way;
- ``unknown_fields``: fields the adapter has never seen are tolerated.

A channel with a transport of its own (SMTP, WebSocket) sets ``webhook_transport`` to say what it is
and overrides ``deliver()`` to hand a request over that transport: ``round_trip``, ``duplicates`` and
``unknown_fields`` then run through it, ``unsigned`` checks that a webhook POST to its instance is
refused and publishes nothing (it must not become a second, unauthenticated way in), and
``forged_signature`` and ``tampered_body`` are skipped with that reason. A check that does not
apply to a channel is named in ``not_applicable`` with the reason. Either way the skip says why,
naming the channel type, in pytest's output (``-rs``): the contract never passes silently over a check.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

import pytest
import pytest_asyncio

from gateway.channel import ParseResult
from gateway.model import decode_message, encode
from gateway.testing.builders import webhook_request
from gateway.testing.harness import ProviderRequest, RunningGateway, load_test_plugins, running_gateway
from gateway.testing.records import headers_of

REJECTED = (401, 403)
UNKNOWN_FIELD = "x_gateway_contract_unknown"


def _other_char(char: str) -> str:
    for alphabet in (string.digits, string.ascii_lowercase, string.ascii_uppercase):
        if char in alphabet:
            return alphabet[(alphabet.index(char) + 1) % len(alphabet)]
    return "x"


def forge_secret(value: str) -> str:
    """The same secret with its last character changed (same length, same character class)."""
    return value[:-1] + _other_char(value[-1]) if value else "x"


def add_form_fields(request: ProviderRequest, fields: Mapping[str, str]) -> ProviderRequest:
    """The request with ``fields`` appended to its form body (urlencoded or multipart/form-data):
    what providers that sign inside the form (Mailgun) do, and how a provider adds fields."""
    content_type = request.headers.get("Content-Type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        pairs = [*parse_qsl(request.body.decode(), keep_blank_values=True), *fields.items()]
        return request.with_body(urlencode(pairs).encode())
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if media_type != "multipart/form-data" or boundary is None:
        raise NotImplementedError(f"not a form body ({content_type or 'no Content-Type'})")
    closing = f"--{boundary.group(1)}--".encode()
    end = request.body.rfind(closing)
    if end < 0:
        raise ValueError("multipart body without its closing boundary")
    parts = b"".join(
        f'--{boundary.group(1)}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value.encode()
        + b"\r\n"
        for name, value in fields.items()
    )
    return request.with_body(request.body[:end] + parts + request.body[end:])


class ChannelContract:
    """Subclass as ``Test<Something>`` and fill in the hooks; the tests are inherited."""

    channel_type: ClassVar[str]
    """The ``type`` your Channel subclass declares."""
    instance: ClassVar[str] = "contract"
    """The instance name the contract configures (``/webhooks/contract``)."""
    plugins: ClassVar[Sequence[tuple[str, object]]] = ()
    """Local (name, module) plugins to load, so the suite runs without installing the package; a
    module that is installed as well (its entry point names it) is loaded once."""
    signs_body: ClassVar[bool] = True
    """False for providers whose credential does not cover the body (a static token header)."""
    webhook_transport: ClassVar[str | None] = None
    """For a channel that does not receive HTTP webhooks: how messages arrive (e.g. "mail arrives over
    the channel's own SMTP listener"). The signature checks are skipped with this reason, ``unsigned``
    checks that webhooks are refused, the others run through ``deliver()``."""
    not_applicable: ClassVar[Mapping[str, str]] = {}
    """Checks (``round_trip``, ``duplicates``, ``unsigned``, ``forged_signature``, ``tampered_body``,
    ``unknown_fields``) that do not apply to this channel, each with the reason (shown in the skip)."""

    DATA_CHECKS: ClassVar[tuple[str, ...]] = ("round_trip", "duplicates", "unknown_fields")
    AUTH_CHECKS: ClassVar[tuple[str, ...]] = ("unsigned", "forged_signature", "tampered_body")
    WEBHOOK_CHECKS: ClassVar[tuple[str, ...]] = DATA_CHECKS + AUTH_CHECKS

    # --- hooks -------------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The instance's settings (without ``type``), secrets inline: tests run as development."""
        raise NotImplementedError(f"{type(self).__name__} must define config()")

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        """Named, unsigned requests in the provider's real format; each must yield messages."""
        raise NotImplementedError(f"{type(self).__name__} must define valid_payloads()")

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        """Authenticate ``request`` the way the provider does, with the secrets in ``config``."""
        raise NotImplementedError(f"{type(self).__name__} must define sign()")

    def with_unknown_fields(self, request: ProviderRequest) -> ProviderRequest:
        """The same request with fields the adapter has never seen (a provider adding fields).

        Default: an extra top-level key in a JSON object body or an extra form field (urlencoded or
        multipart).
        """
        content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return add_form_fields(request, {UNKNOWN_FIELD: "surprise"})
        payload = json.loads(request.body)
        if not isinstance(payload, dict):
            raise NotImplementedError("override with_unknown_fields(): the body is not a JSON object or a form")
        payload[UNKNOWN_FIELD] = {"added": "by a future provider version", "list": [1, "two", None]}
        return request.with_body(json.dumps(payload, ensure_ascii=False).encode())

    def forged_config(self, config: Mapping[str, Any], secret_settings: frozenset[str]) -> dict[str, Any]:
        """Settings an attacker would sign with: every secret setting slightly wrong."""
        forged = dict(config)
        for key in secret_settings:
            if isinstance(forged.get(key), str):
                forged[key] = forge_secret(forged[key])
        return forged

    def duplicate_payload(self) -> ProviderRequest:
        """The request delivered twice in the duplicates test. Default: the first valid payload."""
        return next(iter(self.valid_payloads().values()))

    def check_message(self, name: str, message: Any) -> None:
        """Extra assertions on each message a fixture produced (``message`` is a gateway.sdk.Message)."""

    async def deliver(self, gateway: RunningGateway, request: ProviderRequest) -> tuple[bool, str]:
        """Hand a signed request to the channel as the provider does: (accepted, the answer, for messages).

        Default: POST to ``/webhooks/<instance>``, accepted when 2xx. A channel with its own transport
        (``webhook_transport``) overrides this, e.g. to send ``request.body`` as a mail over SMTP.
        """
        response = await gateway.post(self.instance, request)
        return 200 <= response.status < 300, f"{response.status} {await response.text()}"

    # --- machinery ---------------------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "payload_name" in metafunc.fixturenames:
            try:
                names = list(self.valid_payloads())
            except NotImplementedError:
                if not self.webhook_transport:
                    raise
                names = ["no-payloads"]  # its own transport, no fixtures: one (skipped) case says why
            metafunc.parametrize("payload_name", names)

    def skip_reason(self, check: str) -> str | None:
        """Why ``check`` does not apply to this channel (None: it applies). Names the channel type."""
        if check in self.not_applicable:
            return f"{self.channel_type}: {self.not_applicable[check]}"
        if check in ("forged_signature", "tampered_body") and self.webhook_transport:
            return f"{self.channel_type}: {self.webhook_transport}, not HTTP webhooks: no request signature to check"
        if check in self.DATA_CHECKS and self.webhook_transport and type(self).deliver is ChannelContract.deliver:
            return (
                f"{self.channel_type}: {self.webhook_transport}, and the contract subclass does not override deliver()"
            )
        if check == "tampered_body" and not self.signs_body:
            return f"{self.channel_type}: the provider's credential does not cover the body (signs_body = False)"
        return None

    def applies(self, check: str) -> None:
        """Skip the running test, with the reason, when ``check`` does not apply to this channel."""
        reason = self.skip_reason(check)
        if reason is not None:
            pytest.skip(reason)

    @pytest_asyncio.fixture
    async def contract_gateway(self, kafka_bootstrap: str, redis_url: str) -> AsyncIterator[RunningGateway]:
        channels = {self.instance: {"type": self.channel_type, **self.config()}}
        async with running_gateway(kafka_bootstrap, redis_url, channels=channels, plugins=self.plugins) as gateway:
            yield gateway

    def signed(
        self, gateway: RunningGateway, request: ProviderRequest, config: Mapping[str, Any] | None = None
    ) -> ProviderRequest:
        request = request.with_url(gateway.url(self.instance, request.query))
        return self.sign(request, self.config() if config is None else config)

    def parse(self, gateway: RunningGateway, request: ProviderRequest) -> ParseResult:
        """What the adapter makes of a request, called directly (adapters' parse is pure)."""
        channel = gateway.runtime.channels[self.instance]
        return channel.parse(webhook_request(request, self.instance))

    async def assert_nothing_published(self, gateway: RunningGateway) -> None:
        assert await gateway.count(gateway.topics.inbound) == 0, "a rejected request must publish nothing"
        assert await gateway.count(gateway.topics.dlq) == 0, "a rejected request must not reach the DLQ"

    async def assert_lands_once(self, gateway: RunningGateway, name: str, request: ProviderRequest) -> None:
        """Each message the adapter parses from ``request`` is on the inbound topic exactly once, valid."""
        expected = self.parse(gateway, request)
        assert expected.messages or expected.events, f"payload {name!r} yields no message and no event"
        external_ids = [m.external_id for m in expected.messages]
        assert all(external_ids), f"payload {name!r}: every message needs an external_id (the dedup key)"
        distinct = set(external_ids)
        inbound = gateway.topics.inbound
        records = await gateway.records(inbound, len(distinct)) if distinct else []
        assert await gateway.count(inbound) == len(distinct), f"payload {name!r}: wrong number of inbound records"
        assert await gateway.count(gateway.topics.dlq) == 0, f"payload {name!r} was quarantined"
        seen = set()
        for record in records:
            message = decode_message(record.value)  # strict: validates against gateway.message/v1
            assert encode(message) == record.value, "the record does not round-trip through the model"
            assert message.direction == "inbound"
            assert (message.channel, message.instance) == (self.channel_type, self.instance)
            assert message.conversation_id, "conversation_id must be set (it is the partition key)"
            assert record.key == message.conversation_id.encode()
            headers = headers_of(record)
            assert headers["schema"] == "gateway.message/v1"
            assert (headers["channel"], headers["instance"]) == (self.channel_type, self.instance)
            self.check_message(name, message)
            seen.add(message.external_id)
        assert seen == distinct

    # --- the contract ------------------------------------------------------------------------------------

    def test_channel_is_registered(self) -> None:
        registry = load_test_plugins(self.plugins)
        assert self.channel_type in registry.channels, f"no plugin registers channel type {self.channel_type!r}"
        unknown = set(self.not_applicable) - set(self.WEBHOOK_CHECKS)
        assert not unknown, f"not_applicable names no check of the contract: {sorted(unknown)}"
        if any(self.skip_reason(check) is None for check in self.DATA_CHECKS):
            assert self.valid_payloads(), "valid_payloads() must name at least one request"

    @pytest.mark.asyncio
    async def test_fixture_round_trips(self, contract_gateway: RunningGateway, payload_name: str) -> None:
        self.applies("round_trip")
        request = self.signed(contract_gateway, self.valid_payloads()[payload_name])
        accepted, answer = await self.deliver(contract_gateway, request)
        assert accepted, f"{payload_name}: {answer}"
        await self.assert_lands_once(contract_gateway, payload_name, request)

    @pytest.mark.asyncio
    async def test_duplicate_delivery_gives_one_record(self, contract_gateway: RunningGateway) -> None:
        self.applies("duplicates")
        for attempt in ("first", "redelivery"):
            # Signed for each delivery, as the provider does (fresh timestamps and nonces where it uses them).
            request = self.signed(contract_gateway, self.duplicate_payload())
            accepted, answer = await self.deliver(contract_gateway, request)
            assert accepted, f"{attempt}: {answer}"
        await self.assert_lands_once(contract_gateway, "duplicate", request)

    @pytest.mark.asyncio
    async def test_unsigned_request_is_rejected(self, contract_gateway: RunningGateway) -> None:
        """Without credentials nothing gets in; for a channel with its own transport, no webhook at all."""
        self.applies("unsigned")
        try:
            payload = self.duplicate_payload()
        except NotImplementedError:  # a channel with its own transport and no fixtures: any body will do
            payload = ProviderRequest(body=b'{"text": "hello"}', headers={"Content-Type": "application/json"})
        request = payload.with_url(contract_gateway.url(self.instance))
        response = await contract_gateway.post(self.instance, request)
        assert response.status in REJECTED, f"unsigned request answered {response.status}"
        await self.assert_nothing_published(contract_gateway)

    @pytest.mark.asyncio
    async def test_forged_signature_is_rejected(self, contract_gateway: RunningGateway) -> None:
        self.applies("forged_signature")
        secret_settings = contract_gateway.runtime.registry.channels[self.channel_type].secret_settings
        assert secret_settings, "the channel declares no secret_settings, so nothing authenticates callers"
        forged = self.forged_config(self.config(), secret_settings)
        request = self.signed(contract_gateway, self.duplicate_payload(), forged)
        response = await contract_gateway.post(self.instance, request)
        assert response.status in REJECTED, f"request signed with wrong secrets answered {response.status}"
        await self.assert_nothing_published(contract_gateway)

    @pytest.mark.asyncio
    async def test_body_changed_after_signing_is_rejected(self, contract_gateway: RunningGateway) -> None:
        self.applies("tampered_body")
        request = self.signed(contract_gateway, self.duplicate_payload())
        tampered = request.with_body(request.body + b" ")
        response = await contract_gateway.post(self.instance, tampered)
        assert response.status in REJECTED, f"tampered body answered {response.status}"
        await self.assert_nothing_published(contract_gateway)

    @pytest.mark.asyncio
    async def test_unknown_fields_are_tolerated(self, contract_gateway: RunningGateway, payload_name: str) -> None:
        self.applies("unknown_fields")
        original = self.valid_payloads()[payload_name]
        request = self.signed(contract_gateway, self.with_unknown_fields(original))
        assert request.body != original.body, "with_unknown_fields() changed nothing"
        accepted, answer = await self.deliver(contract_gateway, request)
        assert accepted, f"{payload_name}: {answer}"
        await self.assert_lands_once(contract_gateway, payload_name, request)
