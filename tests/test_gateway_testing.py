"""gateway.testing's helpers for plugin authors: builders, the recording processor context, the
processor chain on a running gateway, and local plugins that are installed as well."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import plugins.passthrough
from gateway.config import ConfigError
from gateway.plugins import PluginError, load_plugins
from gateway.sdk import Content, Message, Party, Processor, ProcessorContext, ProcessorSettings, hookimpl
from gateway.store.redis import RedisStore
from gateway.testing import (
    RecordingContext,
    RunningGateway,
    inbound_message,
    isolated_store,
    json_request,
    load_test_plugins,
    make_channel,
    make_processor,
    recording_context,
    running_gateway,
    sign_hmac_sha256_hex,
    webhook_request,
)
from plugins.api_channel import ApiChannel
from plugins.autoreply import AutoReply

SECRET = "testing-secret-0123456789"


class Echo(Processor):
    """Emits a reply and an event for every message, labelled with the time it was given."""

    name = "echo_for_tests"
    after = ("passthrough",)

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        reply = Message(
            direction="outbound",
            channel=message.channel,
            instance=message.instance,
            conversation_id=message.conversation_id,
            sender=Party(id="bot"),
            recipient=message.sender,
            content=Content(text=f"echo: {message.content.text}"),
        )
        await ctx.emit(reply)
        message.tags.labels["echoed_at"] = ctx.clock().isoformat()
        return message


@hookimpl
def register_processors(register: Any) -> None:
    register(Echo)


ECHO_PLUGIN = types.ModuleType("echo_for_tests")
ECHO_PLUGIN.register_processors = register_processors  # type: ignore[attr-defined]


def test_a_local_plugin_that_is_also_installed_is_loaded_once() -> None:
    local = [("passthrough", plugins.passthrough), ("echo_for_tests", ECHO_PLUGIN)]
    with pytest.raises(PluginError, match="already registered"):
        load_plugins(fail_fast=True, extra=local)  # what the filter prevents
    registry = load_test_plugins(local)
    assert registry.processors["passthrough"] is plugins.passthrough.Passthrough
    assert registry.processors["echo_for_tests"] is Echo
    sources = {p.name: p.source for p in registry.plugins if p.name in ("passthrough", "echo_for_tests")}
    assert sources == {"passthrough": "built-in", "echo_for_tests": "local"}


async def test_make_channel_validates_settings_and_webhook_request_is_case_insensitive() -> None:
    channel = make_channel(ApiChannel, {"secret": SECRET})
    assert (channel.name, channel.settings.type) == ("api", "api")
    request = sign_hmac_sha256_hex(
        json_request({"id": "m-1", "sender": {"id": "c-1"}, "text": "hi"}), SECRET, "X-Gateway-Signature"
    )
    seen = webhook_request(request.with_headers({"x-gateway-signature": request.headers["X-Gateway-Signature"]}))
    assert seen.path == "/webhooks/test" and seen.headers["X-GATEWAY-SIGNATURE"].startswith("sha256=")
    await channel.verify(seen)
    [message] = channel.parse(seen).messages
    assert message.external_id == "m-1"
    with pytest.raises(ValueError, match=r"channels\.shop\.secret"):
        make_channel(ApiChannel, {"secret": "short"}, name="shop")
    with pytest.raises(ValueError, match="unknown field `secrett`"):
        make_channel(ApiChannel, {"secret": SECRET, "secrett": SECRET})


def test_make_processor_validates_its_table() -> None:
    assert make_processor(Echo).settings == ProcessorSettings()
    assert make_processor(Echo, {"instances": ["shop"]}).settings.instances == ["shop"]
    with pytest.raises(ValueError, match=r"processors\.autoreply\.cooldown_s: Expected `int`"):
        make_processor(AutoReply, {"cooldown_s": "soon"})


async def test_the_recording_context_keeps_what_was_emitted(gateway_store: RedisStore) -> None:
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    ctx = recording_context(gateway_store, clock=lambda: noon)
    message = await make_processor(Echo).process(inbound_message("ping", sender="cust-9"), ctx)
    [reply] = ctx.emitted
    assert reply.content.text == "echo: ping" and reply.conversation_id == "api:cust-9"
    assert message.tags.labels["echoed_at"] == "2026-03-01T12:00:00+00:00" and ctx.events == []


async def test_each_store_has_its_own_keys(processor_context: RecordingContext, redis_url: str) -> None:
    await processor_context.store.set_state("conv-1", "field", {"n": 1}, 60)
    assert await processor_context.store.get_state("conv-1", "field") == {"n": 1}
    other = isolated_store(redis_url)
    try:
        assert other.prefix != processor_context.store.prefix
        assert await other.get_state("conv-1", "field") is None
    finally:
        await other.close()


@pytest.fixture
def gateway_plugins() -> list[tuple[str, object]]:
    return [("echo_for_tests", ECHO_PLUGIN)]


@pytest.fixture
def gateway_channels() -> dict[str, dict[str, Any]]:
    return {"shop": {"type": "api", "secret": SECRET}}


@pytest.fixture
def gateway_config() -> dict[str, dict[str, Any]]:
    return {"worker": {"processors": ["echo_for_tests", "passthrough"]}}


async def test_the_worker_runs_the_configured_chain(gateway_app: RunningGateway) -> None:
    request = json_request({"id": "m-7", "sender": {"id": "cust-7"}, "text": "hello"})
    response = await gateway_app.post("shop", sign_hmac_sha256_hex(request, SECRET, "X-Gateway-Signature"))
    assert response.status == 200, await response.text()
    async with gateway_app.worker() as chain:
        assert [p.name for p in chain] == ["passthrough", "echo_for_tests"]
        [message] = await gateway_app.processed(1)
        [reply] = await gateway_app.records(gateway_app.topics.outbound, 1)
    assert message.external_id == "m-7" and message.trace["processors"] == "passthrough,echo_for_tests"
    assert b"echo: hello" in reply.value


async def test_a_chain_that_cannot_be_built_fails_the_worker_at_once(kafka_bootstrap: str, redis_url: str) -> None:
    async with running_gateway(kafka_bootstrap, redis_url, channels={}, worker={"processors": ["nope"]}) as gateway:
        with pytest.raises(ConfigError, match="unknown processor 'nope'"):
            async with gateway.worker():
                pass


def _pytest_fixtures(directory: Path, *, without_pytest_asyncio: bool) -> subprocess.CompletedProcess[str]:
    """``pytest --fixtures`` over a plain test module in a fresh interpreter; optionally as if
    pytest-asyncio (and the plugins needing it) were not installed."""
    (directory / "test_plain.py").write_text("def test_plain():\n    assert sum([1, 2]) == 3\n")
    env = dict(os.environ)
    blocked: list[str] = []
    if without_pytest_asyncio:
        # Shadows the installed package: importing it fails as if it were not there.
        shadow = directory / "shadow" / "pytest_asyncio"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'pytest_asyncio'\")\n")
        env["PYTHONPATH"] = str(shadow.parent)
        blocked = ["-p", "no:asyncio", "-p", "no:aiohttp"]  # their own plugins need it
    return subprocess.run(
        [sys.executable, "-m", "pytest", *blocked, "-p", "no:cacheprovider", "--fixtures", "test_plain.py"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pytest_plugin_adds_fixtures_only_where_its_test_dependencies_are(tmp_path: Path) -> None:
    """pytest loads every installed pytest11 plugin: without the ``testing`` extra ours must stay out
    of the way of other projects' test runs instead of failing to import."""
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    installed = _pytest_fixtures(tmp_path / "with", without_pytest_asyncio=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "gateway_app" in installed.stdout and "kafka_bootstrap" in installed.stdout
    missing = _pytest_fixtures(tmp_path / "without", without_pytest_asyncio=True)
    assert missing.returncode == 0, missing.stdout + missing.stderr
    assert "gateway_app" not in missing.stdout
