"""The widget in a real headless Chromium against the real gateway app, broker and Redis.

Uses Debian's /usr/bin/chromium (or ``GATEWAY_TEST_CHROMIUM``) through Playwright (no browser
downloads). When that binary is absent the tests are skipped with the reason, except under
``CI=true``: there a missing browser fails the run, so CI can never pass without running them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.bus.producer import record_for
from gateway.embedded import free_port
from gateway.ingress.app import create_app
from gateway.model import Attachment, Choice, Content, Message, Party, decode_event
from gateway.outbound.dispatcher import Dispatcher
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.tracing import child_traceparent
from tests.conftest import make_config, messages_of, read_records, topic_size
from tests.test_webchat import SECRET, png

CHROMIUM = Path(os.environ.get("GATEWAY_TEST_CHROMIUM") or "/usr/bin/chromium")
SCREENSHOT = Path("/tmp/webchat.png")  # noqa: S108  # a fixed place for a human to look at the widget
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def running_in_ci() -> bool:
    """CI services (GitHub Actions, GitLab, ...) set CI=true; a skip there would hide untested code."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


if not CHROMIUM.exists() and running_in_ci():
    # A collection error: the run fails (exit status non-zero) and says why, before any broker starts.
    pytest.fail(
        f"CI=true but Chromium is not installed at {CHROMIUM}: the web chat browser tests must run in CI. "
        "Install it (apt-get install chromium; scripts/test does so when run as root) "
        "or point GATEWAY_TEST_CHROMIUM at a Chromium binary.",
        pytrace=False,
    )
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"Chromium is not installed at {CHROMIUM} (set GATEWAY_TEST_CHROMIUM; under CI=true this fails instead)",
)


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    others = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {"webchat"}
    return load_plugins(fail_fast=True, disabled=others)


@pytest.fixture
async def served(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> AsyncIterator[tuple[str, Runtime]]:
    """The gateway app on a real loopback port, as `gateway serve` runs it."""
    config = make_config(
        kafka_bootstrap,
        redis_url,
        channels={"support": {"type": "webchat", "token_secret": SECRET, "title": "Acme Support"}},
    )
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    await runtime.ensure_topics()
    for channel in runtime.channels.values():  # as `gateway serve` does: listen for replies
        await channel.start()
    runner = web.AppRunner(create_app(runtime), access_log=None, shutdown_timeout=2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", runtime
    finally:
        for channel in runtime.channels.values():
            await channel.stop()
        await runner.cleanup()
        await runtime.close()


async def test_widget_sends_acknowledged_messages_and_resumes_after_reload(
    served: tuple[str, Runtime], kafka_bootstrap: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    base, runtime = served
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/chat/")

            await page.locator(".btn").click()  # Playwright's CSS engine pierces the open shadow root
            await expect(page.locator(".head b")).to_have_text("Acme Support")
            await expect(page.locator(".welcome")).to_be_visible()
            await page.locator("textarea.input").fill("Hello from the browser 👋 我的订单")
            await page.locator("button.send").click()

            acked = page.locator('.msg.in[data-status="acked"]')
            await expect(acked).to_have_count(1, timeout=15_000)
            await expect(acked.locator(".st")).to_have_text("Sent ✓")
            [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
            [first] = messages_of([record])
            assert first.content.text == "Hello from the browser 👋 我的订单"
            assert first.channel == "webchat" and first.instance == "support"
            assert await acked.get_attribute("data-id") == first.id  # the widget shows the stored message's ack
            assert first.tags.labels["webchat"]["page"] == f"{base}/chat/"
            state: dict[str, Any] = await page.evaluate("GatewayChat.state()")
            assert state["conversation_id"] == first.conversation_id and state["unacked"] == 0

            await page.locator("textarea.input").fill("Where is my parcel?")  # a second, so the list shows a thread
            await page.locator("button.send").click()
            await expect(acked).to_have_count(2, timeout=15_000)

            # Reload: the stored token resumes the visitor; history comes back; same conversation continues.
            await page.reload()
            await page.locator(".btn").click()
            await expect(page.locator('.msg.in[data-status="acked"]')).to_have_count(2, timeout=15_000)
            image = tmp_path / "receipt.png"
            image.write_bytes(png(4, 4))
            await page.locator('input[type="file"]').set_input_files(str(image))
            await expect(page.locator(".chip")).to_have_text("receipt.png", timeout=15_000)
            await page.locator("textarea.input").fill("After reload, with the receipt")
            await page.locator("button.send").click()
            await expect(page.locator('.msg.in[data-status="acked"]')).to_have_count(3, timeout=15_000)
            await page.screenshot(path=str(SCREENSHOT))

            records = await read_records(kafka_bootstrap, runtime.topics.inbound, 3)
            messages = {m.content.text: m for m in messages_of(records)}
            third = messages["After reload, with the receipt"]
            assert third.conversation_id == first.conversation_id
            assert third.sender.id == first.sender.id
            [attachment] = third.content.attachments
            assert attachment.kind == "image" and attachment.filename == "receipt.png"
            assert attachment.size == len(png(4, 4))
            assert errors == []
        finally:
            await browser.close()


async def test_widget_resends_an_unacknowledged_message_after_reconnect(
    served: tuple[str, Runtime], kafka_bootstrap: str
) -> None:
    """The connection drops after the gateway stored a message but before the ack reached the page:
    the widget resends it on reconnect and the gateway's dedup keeps it one record."""
    from playwright.async_api import WebSocketRoute, async_playwright, expect

    base, runtime = served
    dropped: list[dict[str, Any]] = []

    async def drop_first_ack(page_side: WebSocketRoute) -> None:
        server_side = page_side.connect_to_server()

        async def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "ack" and not dropped:
                dropped.append(frame)
                await page_side.close(code=1011, reason="simulated network drop")
                return
            page_side.send(message)

        server_side.on_message(from_server)

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.route_web_socket(re.compile(r".*/chat/ws.*"), drop_first_ack)
            await page.goto(f"{base}/chat/")
            await page.locator(".btn").click()
            await page.locator("textarea.input").fill("Is anyone there?")
            await page.locator("button.send").click()

            acked = page.locator('.msg.in[data-status="acked"]')
            await expect(acked).to_have_count(1, timeout=20_000)
            await page.wait_for_function("GatewayChat.state().unacked === 0", timeout=20_000)
            [record] = await read_records(kafka_bootstrap, runtime.topics.inbound, 1)
            [message] = messages_of([record])
            assert dropped and dropped[0]["id"] == message.id  # the lost ack was for the stored record
            assert await acked.get_attribute("data-id") == message.id  # the resend was acked with the same id
            assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 1
            assert await page.locator(".msg.in").count() == 1  # shown once, not duplicated by the history
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def dispatch_process(config: Any, registry: PluginRegistry) -> AsyncIterator[Runtime]:
    """`gateway dispatch` beside the served app: its own Runtime and channel objects, same config."""
    runtime = Runtime.create(config, registry)
    await runtime.publisher.start()
    dispatcher = Dispatcher(runtime)
    task = asyncio.create_task(dispatcher.run())
    started = asyncio.create_task(dispatcher.runner.started.wait())
    done, _ = await asyncio.wait([task, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    assert started in done
    try:
        yield runtime
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 30)
        await runtime.close()


async def enqueue_reply(runtime: Runtime, conversation_id: str, content: Content) -> Message:
    message = Message(
        direction="outbound",
        channel="webchat",
        instance="support",
        conversation_id=conversation_id,
        sender=Party(id="agent-7", name="Sam"),
        recipient=Party(id=conversation_id.split(":", 1)[1]),
        content=content,
    )
    record = record_for(runtime.topics.outbound, message, traceparent=child_traceparent(None), key=conversation_id)
    await runtime.publisher.send(record)
    return message


async def test_agent_replies_and_typing_appear_in_the_open_page(
    served: tuple[str, Runtime], registry: PluginRegistry, kafka_bootstrap: str
) -> None:
    """Replies go through the outbound topic and a separate dispatcher; the page shows them live,
    counts them while closed, and shows each once after a reload."""
    from playwright.async_api import async_playwright, expect

    base, runtime = served
    async with dispatch_process(runtime.config, registry) as dispatch, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/chat/")
            await page.locator(".btn").click()
            await page.locator("textarea.input").fill("Do you ship to Norway?")
            await page.locator("button.send").click()
            await expect(page.locator('.msg.in[data-status="acked"]')).to_have_count(1, timeout=15_000)
            conversation: str = (await page.evaluate("GatewayChat.state()"))["conversation_id"]

            await enqueue_reply(dispatch, conversation, Content(type="event", text="typing_on"))
            await expect(page.locator(".typing span")).to_be_visible(timeout=20_000)
            answer = await enqueue_reply(dispatch, conversation, Content(text="Yes, we ship to Norway 🇳🇴"))
            replies = page.locator(".msg.out")
            await expect(replies).to_have_count(1, timeout=20_000)
            await expect(replies.locator(".text")).to_have_text("Yes, we ship to Norway 🇳🇴")
            await expect(replies.locator(".who")).to_have_text("Sam")
            assert await replies.get_attribute("data-id") == answer.id
            await expect(page.locator(".typing span")).to_be_hidden()  # a reply ends the agent's typing

            await page.locator(".x").click()  # closed panel: the next reply shows as unread
            link = Attachment(kind="document", url="https://shop.example.com/rates.pdf", filename="rates.pdf")
            await enqueue_reply(dispatch, conversation, Content(type="media", text="Our rates:", attachments=[link]))
            await expect(page.locator(".badge")).to_have_text("1", timeout=20_000)
            await page.locator(".btn").click()
            await expect(page.locator(".badge")).to_be_hidden()
            await expect(replies).to_have_count(2)
            anchor = replies.nth(1).locator("a.file")
            await expect(anchor).to_have_text("rates.pdf")
            assert await anchor.get_attribute("href") == "https://shop.example.com/rates.pdf"
            assert await anchor.get_attribute("rel") == "noopener noreferrer"
            await page.screenshot(path=str(SCREENSHOT.with_name("webchat-replies.png")))

            sent = [decode_event(r.value) for r in await read_records(kafka_bootstrap, dispatch.topics.events, 3)]
            assert [e.status for e in sent] == ["sent"] * 3

            await page.reload()  # the conversation comes back from the mailbox, each message once
            await page.locator(".btn").click()
            await expect(page.locator(".msg.out")).to_have_count(2, timeout=15_000)
            await expect(page.locator(".msg.in")).to_have_count(1)
            await expect(page.locator(".badge")).to_be_hidden()
            assert errors == []
        finally:
            await browser.close()


async def test_choices_are_buttons_and_a_pick_arrives_as_a_postback(
    served: tuple[str, Runtime], registry: PluginRegistry, kafka_bootstrap: str
) -> None:
    """A reply's choices are buttons under it; picked with the keyboard, the pick is stored as a
    postback on the inbound topic, and the buttons are disabled, also after a reload."""
    from playwright.async_api import async_playwright, expect

    base, runtime = served
    choices = [
        Choice(id="csat:s-42:5", title="😀 Very satisfied", key="5"),
        Choice(id="csat:s-42:4", title="🙂 Satisfied", key="4"),
        Choice(id="csat:s-42:1", title="🙁 Not satisfied", key="1"),
    ]
    async with dispatch_process(runtime.config, registry) as dispatch, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 720})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/chat/")
            await page.locator(".btn").click()
            await page.locator("textarea.input").fill("Thanks, that solved it")
            await page.locator("button.send").click()
            await expect(page.locator('.msg.in[data-status="acked"]')).to_have_count(1, timeout=15_000)
            conversation: str = (await page.evaluate("GatewayChat.state()"))["conversation_id"]

            survey = await enqueue_reply(
                dispatch, conversation, Content(text="How satisfied are you?", choices=choices)
            )
            buttons = page.locator('.msg.out [role="group"] button.choice')
            await expect(buttons).to_have_count(3, timeout=20_000)
            await expect(buttons).to_have_text([c.title for c in choices])
            await expect(page.locator(".msg.out .text")).to_have_text("How satisfied are you?")  # no numbered list
            await expect(buttons.nth(1)).to_be_enabled()

            await buttons.nth(1).focus()  # keyboard: a real <button>, activated with Enter
            await page.keyboard.press("Enter")
            picked = page.locator('.msg.in[data-status="acked"]')
            await expect(picked).to_have_count(2, timeout=15_000)
            await expect(picked.nth(1).locator(".text")).to_have_text("🙂 Satisfied")
            for index in range(3):
                await expect(buttons.nth(index)).to_be_disabled()
            await expect(buttons.nth(1)).to_have_attribute("aria-pressed", "true")
            await expect(buttons.nth(0)).to_have_attribute("aria-pressed", "false")
            await page.screenshot(path=str(SCREENSHOT.with_name("webchat-choices.png")))

            records = await read_records(kafka_bootstrap, runtime.topics.inbound, 2)
            [pick] = [m for m in messages_of(records) if m.content.type == "postback"]
            assert pick.content.postback is not None
            assert (pick.content.postback.payload, pick.content.postback.title) == ("csat:s-42:4", "🙂 Satisfied")
            assert pick.content.reply_to == survey.id and pick.conversation_id == conversation
            assert await picked.nth(1).get_attribute("data-id") == pick.id

            await page.reload()  # the history brings the reply back with its buttons, still answered
            await page.locator(".btn").click()
            await expect(buttons).to_have_count(3, timeout=15_000)
            for index in range(3):
                await expect(buttons.nth(index)).to_be_disabled()
            await expect(buttons.nth(1)).to_have_attribute("aria-pressed", "true")
            assert await topic_size(kafka_bootstrap, runtime.topics.inbound) == 2
            assert errors == []
        finally:
            await browser.close()
