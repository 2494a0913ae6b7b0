"""The identity processor with a real Redis, and end to end in the worker on the real broker:
profile labels, profile_linked/profile_merged events with stable ids, and replies that keep going
to their own conversation's recipient after a merge."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.model import ConversationEvent, Message, Party, decode_conversation_event, decode_event
from gateway.pipeline.chain import build_chain
from gateway.plugins import PluginRegistry
from gateway.processor import ProcessorContext
from gateway.profiles import ATTR_PHONE_E164, DEFAULT_RETENTION_DAYS, ProfileStore, identity
from gateway.store.redis import RedisStore, StoreUnavailable
from gateway.testing import inbound_message, running_gateway, sign_hmac_sha256_hex
from gateway.testing.harness import json_request
from plugins.identity import IdentityProcessor, IdentitySettings
from tests.conftest import make_config, read_records
from tests.test_dispatch import Provider, dispatching, enqueue

APP_SECRET = "meta-app-secret-0123456789abcdef"


class Recorder:
    """A context on the test Redis that keeps the conversation events a processor emits."""

    def __init__(self, store: RedisStore) -> None:
        self.events: list[ConversationEvent] = []
        self.profiles = ProfileStore(store)

        async def never(item: Any) -> None:
            raise AssertionError(f"identity emits no replies or delivery events (got {item!r})")

        async def record(event: ConversationEvent) -> None:
            self.events.append(event)

        self.ctx = ProcessorContext(
            store=store, emit=never, emit_event=never, emit_conversation=record, profiles=self.profiles
        )


@pytest.fixture
def recorder(store: RedisStore) -> Recorder:
    return Recorder(store)


def processor(**settings: Any) -> IdentityProcessor:
    return IdentityProcessor(IdentitySettings(enabled=True, **settings))


def whatsapp_like(instance: str, number: str, *, channel: str = "whatsapp", name: str = "Ada") -> Message:
    """A message as a phone channel produces it: the sender id and its E.164 number."""
    sender = Party(id=number.removeprefix("+"), name=name, attributes={ATTR_PHONE_E164: number})
    return inbound_message(
        "hello", channel=channel, instance=instance, sender=sender, conversation_id=f"{instance}:{sender.id}"
    )


async def test_first_message_creates_a_profile_and_labels_the_message(recorder: Recorder) -> None:
    message = await processor().process(whatsapp_like("wa-main", "+4930123456"), recorder.ctx)
    profile_id = message.sender.attributes["profile_id"]
    assert message.tags.labels["profile"] == {"id": profile_id, "identities": 2, "linked": False}
    assert recorder.events == []  # a new profile links nothing to an existing one
    profile = await recorder.profiles.get(profile_id)
    assert profile is not None and list(profile.seen) == ["wa-main"]


async def test_a_context_without_a_profile_store_uses_the_default_retention(store: RedisStore) -> None:
    ctx = Recorder(store).ctx
    ctx.profiles = None  # e.g. a plugin author's own test context
    message = await processor().process(whatsapp_like("wa-main", "+4930123456"), ctx)
    key = f"{store.prefix}pf:p:{message.sender.attributes['profile_id']}"
    assert 399 * 86400 < await store.client.ttl(key) <= DEFAULT_RETENTION_DAYS * 86400


async def test_the_same_phone_on_another_channel_links_and_emits_profile_linked(recorder: Recorder) -> None:
    first = await processor().process(whatsapp_like("wa-main", "+4930123456"), recorder.ctx)
    sms = whatsapp_like("sms", "+4930123456", channel="twilio")
    second = await processor().process(sms, recorder.ctx)
    profile_id = first.sender.attributes["profile_id"]
    assert second.sender.attributes["profile_id"] == profile_id
    assert second.tags.labels["profile"] == {"id": profile_id, "identities": 3, "linked": True}
    [event] = recorder.events
    assert event.type == "profile_linked" and event.profile_id == profile_id
    assert event.identity == "instance:sms/user_id:4930123456"
    assert (event.conversation_id, event.instance, event.channel) == (sms.conversation_id, "sms", "twilio")
    assert event.message_id == sms.id
    # Processed again (the worker crashed before committing): the same event, same id.
    recorder.events.clear()
    await processor().process(sms, recorder.ctx)
    assert [(e.id, e.type, e.identity) for e in recorder.events] == [(event.id, event.type, event.identity)]


async def test_same_name_without_a_strong_key_is_another_profile(recorder: Recorder) -> None:
    a = await processor().process(inbound_message("hi", instance="tg", sender=Party(id="1", name="Ada")), recorder.ctx)
    b = await processor().process(
        inbound_message("hi", instance="line", sender=Party(id="U1", name="Ada")), recorder.ctx
    )
    assert a.sender.attributes["profile_id"] != b.sender.attributes["profile_id"]
    assert recorder.events == []


async def test_a_message_joining_two_profiles_merges_them_and_says_so(recorder: Recorder) -> None:
    older = await processor().process(whatsapp_like("sms", "+4930123456", channel="twilio"), recorder.ctx)
    newer = await processor().process(
        inbound_message("hi", instance="tg", sender=Party(id="777")), recorder.ctx
    )  # another profile, then a message of the same sender carrying the phone joins them
    joined = await processor().process(
        inbound_message("hi", instance="tg", sender=Party(id="777", attributes={ATTR_PHONE_E164: "+4930123456"})),
        recorder.ctx,
    )
    kept, gone = older.sender.attributes["profile_id"], newer.sender.attributes["profile_id"]
    assert joined.sender.attributes["profile_id"] == kept
    [merged] = recorder.events
    assert merged.type == "profile_merged" and merged.profile_id == kept and merged.merged_profile_id == gone
    profile = await recorder.profiles.get(gone)
    assert profile is not None and profile.merged_into == kept


async def test_messages_without_a_sender_identity_are_left_alone(recorder: Recorder) -> None:
    message = inbound_message("hi", instance="feishu", sender=Party(id="unknown"))
    result = await processor().process(message, recorder.ctx)
    assert "profile" not in result.tags.labels and "profile_id" not in result.sender.attributes


async def test_redis_down_skips_or_fails_as_configured() -> None:
    from gateway.config import RedisSection
    from gateway.embedded import free_port

    dead = RedisStore(RedisSection(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.2))
    try:
        ctx = Recorder(dead).ctx
        skipped = await processor().process(whatsapp_like("wa-main", "+4930123456"), ctx)
        assert skipped.tags.labels["profile"] == {"skipped": "store_unavailable"}
        assert "profile_id" not in skipped.sender.attributes
        with pytest.raises(StoreUnavailable):
            await processor(on_store_error="fail").process(whatsapp_like("wa-main", "+4930123456"), ctx)
    finally:
        await dead.close()


def test_off_by_default_and_runs_before_routing_and_autoreply(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry
) -> None:
    assert "identity" not in [p.name for p in build_chain(make_config(kafka_bootstrap, redis_url), registry)]
    config = make_config(kafka_bootstrap, redis_url, processors={"identity": {"enabled": True, "instances": ["wa"]}})
    names = [p.name for p in build_chain(config, registry)]
    assert names.index("identity") < names.index("routing") and names.index("identity") < names.index("autoreply")
    bad = make_config(kafka_bootstrap, redis_url, processors={"identity": {"enabled": True, "nope": 1}})
    with pytest.raises(ConfigError, match="unknown field `nope`"):
        build_chain(bad, registry)


def test_the_documented_configuration_loads(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "profiles.md").read_text(encoding="utf-8")
    snippet = tomllib.loads(text.split("```toml\n", 1)[1].split("```", 1)[0])
    config = make_config(kafka_bootstrap, redis_url, **snippet)
    [identity_processor] = [p for p in build_chain(config, registry) if p.name == "identity"]
    assert isinstance(identity_processor, IdentityProcessor) and identity_processor.config.on_store_error == "skip"
    assert config.profiles.retention_days == 400


def whatsapp_webhook(number: str, message_id: str, name: str = "Ada") -> Any:
    item = {"from": number, "id": message_id, "timestamp": "1749416383", "type": "text", "text": {"body": "hi"}}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": name}, "wa_id": number}],
        "messages": [item],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    return sign_hmac_sha256_hex(json_request(body), APP_SECRET, "X-Hub-Signature-256")


async def test_worker_links_whatsapp_senders_of_two_instances_by_phone(kafka_bootstrap: str, redis_url: str) -> None:
    meta = {"type": "whatsapp", "app_secret": APP_SECRET, "verify_token": "verify-me-please"}
    async with running_gateway(
        kafka_bootstrap,
        redis_url,
        channels={"wa-sales": meta, "wa-support": meta},
        worker={"processors": ["identity"]},
        processors={"identity": {"enabled": True}},
    ) as gateway:
        assert (await gateway.post("wa-sales", whatsapp_webhook("4930123456", "wamid.1"))).status == 200
        assert (await gateway.post("wa-support", whatsapp_webhook("4930123456", "wamid.2"))).status == 200
        async with gateway.worker():
            processed = await gateway.processed(2)
            # Each message also opened its conversation (the core's events): three records in all.
            records = await read_records(kafka_bootstrap, gateway.topics.conversations, 3)
    [record] = [r for r in records if decode_conversation_event(r.value).type == "profile_linked"]
    by_instance = {m.instance: m for m in processed}
    profile_id = by_instance["wa-sales"].sender.attributes["profile_id"]
    assert by_instance["wa-support"].sender.attributes["profile_id"] == profile_id
    assert by_instance["wa-support"].tags.labels["profile"] == {"id": profile_id, "identities": 3, "linked": True}
    event = decode_conversation_event(record.value)
    assert event.type == "profile_linked" and event.profile_id == profile_id
    assert event.identity == "instance:wa-support/user_id:4930123456"
    assert record.key == by_instance["wa-support"].conversation_id.encode()


async def test_replies_never_route_by_profile(
    kafka_bootstrap: str, redis_url: str, registry: PluginRegistry, aiohttp_server: Any
) -> None:
    """chatwoot#15359: after two identities of one customer were merged, a reply to conversation A
    went to B's recipient. Here the two WhatsApp-like identities share a profile, and each reply
    still goes to its own conversation's recipient: the dispatcher knows no profiles."""
    provider = Provider([])
    async with dispatching(provider, kafka_bootstrap, redis_url, registry, aiohttp_server) as runtime:
        recorder = Recorder(runtime.store)
        recorder.ctx.profiles = runtime.profiles
        a = await processor().process(whatsapp_like("api", "+4930111111", channel="api"), recorder.ctx)
        b = await processor().process(whatsapp_like("api", "+4930222222", channel="api"), recorder.ctx)
        numbers = [identity("phone_e164", n) for n in ("+4930111111", "+4930222222")]
        merged = await runtime.profiles.link([i for i in numbers if i is not None])
        assert merged.merged == [b.sender.attributes["profile_id"]]
        profile = await runtime.profiles.get(b.sender.attributes["profile_id"])
        assert profile is not None and profile.id == a.sender.attributes["profile_id"]  # one customer now

        for inbound in (a, b):  # an agent answers each conversation; the recipient carries the profile id
            answer = inbound_message("Your parcel left today", channel="api", instance="api")
            answer.direction, answer.conversation_id, answer.recipient = (
                "outbound",
                inbound.conversation_id,
                inbound.sender,
            )
            answer.in_reply_to = inbound.id
            await enqueue(runtime, answer)
        events = [decode_event(r.value) for r in await read_records(kafka_bootstrap, runtime.topics.events, 2)]
    sent = {body["conversation_id"]: body["recipient"]["id"] for body, _ in provider.received}
    assert sent == {a.conversation_id: "4930111111", b.conversation_id: "4930222222"}
    # The profile travelled along (informational) and changed nothing about where the replies went.
    assert all("profile_id" in body["recipient"]["attributes"] for body, _ in provider.received)
    assert {e.conversation_id for e in events} == {a.conversation_id, b.conversation_id}
