"""The operator console in real headless Chromium against a running gateway (serve, worker and
dispatch with the default processors) on the real broker and Redis: sign-in, every page showing
what really happened, a DLQ replay from the UI arriving on processed once, a viewer unable to
replay, the Chinese UI and the phone layout.

``GATEWAY_CONSOLE_SCREENSHOTS=docs/console`` writes the screenshots docs/console.md shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from gateway.embedded import free_port
from gateway.model import Content, Message, Party, encode
from gateway.plugins import PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.service import Roles, run_roles
from tests.conftest import api_body, make_config, messages_of, sign, topic_size
from tests.test_webchat_browser import CHROMIUM, LAUNCH_ARGS, pytestmark  # noqa: F401 - the same skip/fail rule

SHOTS = os.environ.get("GATEWAY_CONSOLE_SCREENSHOTS")
PASSWORDS = {"vera": "viewer-password-1", "otto": "operator-password-1", "ada": "admin-password-001"}
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@dataclass
class Gateway:
    base: str
    runtime: Runtime
    dlq_id: str  # a record a processor failed on, waiting in the DLQ
    dlq_message_id: str


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return load_plugins(fail_fast=True)


@pytest.fixture
async def gateway(kafka_bootstrap: str, redis_url: str, registry: PluginRegistry) -> AsyncIterator[Gateway]:
    """`gateway serve`, `worker` and `dispatch` in one process, as `gateway dev` runs them."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = make_config(
        kafka_bootstrap,
        redis_url,
        channels={
            "api": {"type": "api", "secret": "console-browser-secret-0123"},
            "chat": {"type": "webchat", "token_secret": "chat-secret-0123456789", "allowed_origins": [base]},
        },
        http={"port": port},
        console={
            "enabled": True,
            "stats_interval_s": 0.5,
            "users": {
                "vera": {"password_hash": _hasher.hash(PASSWORDS["vera"]), "role": "viewer"},
                "otto": {"password_hash": _hasher.hash(PASSWORDS["otto"]), "role": "operator"},
                "ada": {"password_hash": _hasher.hash(PASSWORDS["ada"]), "role": "admin"},
            },
        },
    )
    runtime = Runtime.create(config, registry)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_roles(runtime, Roles(serve=True, worker=True, dispatch=True), stop, ready))
    started = asyncio.create_task(ready.wait())
    await asyncio.wait([task, started], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    assert ready.is_set(), "the gateway did not start"
    failed = Message(
        id="dlq-browser-1",
        direction="inbound",
        channel="api",
        instance="api",
        conversation_id="c-dlq",
        sender=Party(id="customer-7", name="Grace"),
        content=Content(text="Where is my refund?"),
    )
    record = await runtime.quarantine(
        stage="process",
        reason="processor routing failed: KeyError: 'queue'",
        payload=encode(failed),
        channel="api",
        instance="api",
        source_topic=runtime.topics.inbound,
        message_id=failed.id,
        component="routing",
        error_type="KeyError",
    )
    try:
        yield Gateway(base, runtime, record.id, failed.id)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@contextlib.asynccontextmanager
async def browser_page(width: int = 1280, height: int = 800) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": width, "height": height}, locale="en-US")
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert errors == [], errors
        finally:
            await browser.close()


async def sign_in(page: Any, base: str, user: str) -> None:
    from playwright.async_api import expect

    await page.goto(f"{base}/console/")
    await page.get_by_test_id("login-username").fill(user)
    await page.get_by_test_id("login-password").fill(PASSWORDS[user])
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("page-overview")).to_be_visible(timeout=20_000)
    await expect(page.get_by_test_id("user-name")).to_have_text(user)


async def shot(page: Any, name: str) -> None:
    if SHOTS:
        await asyncio.to_thread(Path(SHOTS).mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=False)


async def chat(page: Any, base: str, text: str) -> None:
    """A customer says ``text`` in the web chat demo page, and the gateway acknowledges it."""
    from playwright.async_api import expect

    await page.goto(f"{base}/chat/")
    await page.locator(".btn").click()
    await page.locator("textarea.input").fill(text)
    await page.locator("button.send").click()
    await expect(page.locator('.msg.in[data-status="acked"]')).to_have_count(1, timeout=20_000)


async def test_an_operator_watches_a_chat_arrive_inspects_it_and_replays_the_dlq(
    gateway: Gateway, kafka_bootstrap: str
) -> None:
    from aiohttp import ClientSession
    from playwright.async_api import expect

    base, runtime = gateway.base, gateway.runtime
    async with browser_page() as page:
        await sign_in(page, base, "otto")

        # Messages: the live stream shows the customer's chat as it passes the processors, masked.
        await page.goto(f"{base}/console/#/messages")
        await expect(page.get_by_test_id("message-table")).to_be_visible()
        customer = await page.context.new_page()
        await chat(customer, base, "Hello, my parcel never arrived")
        row = page.get_by_test_id("message-row").filter(has_text="chat")
        await expect(row).to_have_count(1, timeout=30_000)
        await expect(row.get_by_test_id("message-text")).not_to_contain_text("parcel")
        await page.get_by_test_id("unmask-toggle").check()
        await expect(row.get_by_test_id("message-text")).to_have_text("Hello, my parcel never arrived", timeout=20_000)
        await shot(page, "messages")

        # The conversation's timeline: what arrived, what the processors decided and why.
        await row.get_by_test_id("message-link").click()
        timeline = page.get_by_test_id("timeline-item")
        await expect(page.locator('[data-testid=timeline-item][data-kind="processed"]')).to_have_count(
            1, timeout=20_000
        )
        await expect(page.locator('[data-testid=timeline-item][data-kind="inbound"]')).to_have_count(1)
        await expect(page.locator('[data-testid=timeline-item][data-kind="conversation"]').first).to_be_visible()
        assert await timeline.count() >= 3
        await shot(page, "conversation")

        # A webhook, verified and stored, and a refused one: the Overview and Channels count them.
        body = api_body("browser-api-1", "Order #77 is late", conversation_id="c-api")
        async with ClientSession() as http:
            ok = await http.post(f"{base}/webhooks/api", data=body, headers=sign(body, "console-browser-secret-0123"))
            assert ok.status == 200
            refused = await http.post(f"{base}/webhooks/api", data=body, headers=sign(body, "not-the-secret-0123"))
            assert refused.status == 401
        await page.goto(f"{base}/console/#/overview")
        messages_card = page.locator('[data-testid=overview-card][data-metric="messages"]')
        await expect(messages_card.get_by_test_id("overview-value")).to_have_text("2", timeout=30_000)
        await expect(page.get_by_test_id("chart-overview-messages").locator("canvas").first).to_be_visible()
        await expect(page.get_by_test_id("overview-webhooks")).to_contain_text("api")
        await shot(page, "overview")

        await page.goto(f"{base}/console/#/channels")
        api_card = page.locator('[data-testid=channel-card][data-name="api"]')
        await expect(api_card.get_by_test_id("channel-webhook-url")).to_have_value(f"{base}/webhooks/api")
        await expect(api_card.get_by_test_id("channel-last-rejection")).to_contain_text("401")
        await expect(page.locator('[data-testid=channel-card][data-name="chat"]')).to_be_visible()
        await shot(page, "channels")

        # DLQ: inspect the record a processor failed on, replay it from the page, see the outcome.
        await page.goto(f"{base}/console/#/dlq")
        dlq_row = page.locator(f'[data-testid=dlq-row][data-id="{gateway.dlq_id}"]')
        await expect(dlq_row).to_be_visible(timeout=20_000)
        await dlq_row.get_by_test_id("dlq-inspect").click()
        await expect(page.get_by_test_id("dlq-reason")).to_contain_text("KeyError")
        await expect(page.get_by_test_id("dlq-payload")).to_contain_text("Where is my refund?")
        await shot(page, "dlq")
        await page.get_by_test_id("dlq-detail-close").click()
        await dlq_row.get_by_test_id("dlq-replay-one").click()
        await expect(dlq_row.get_by_test_id("dlq-outcome")).to_contain_text("eplayed", timeout=20_000)
        await shot(page, "dlq-replayed")

        # Insights: the conversations just opened are on the charts.
        await page.goto(f"{base}/console/#/insights")
        await expect(page.get_by_test_id("chart-sentiment").locator("canvas").first).to_be_visible(timeout=20_000)
        opened = page.locator('[data-testid=insights-card][data-metric="opened"]')
        await expect(opened).to_contain_text("3", timeout=20_000)
        await shot(page, "insights")

        await page.goto(f"{base}/console/#/audit")
        await expect(page.get_by_test_id("page-forbidden")).to_be_visible()  # operators are not admins

    # The replayed record reached processed exactly once (the worker processed it after the replay).
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        records = await _all_records(kafka_bootstrap, runtime.topics.processed)
        replayed = [m for m in messages_of(records) if m.id == gateway.dlq_message_id]
        if replayed or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(replayed) == 1
    marker = await runtime.store.client.get(runtime.store.key("dlq", "replayed", gateway.dlq_id))
    assert marker == b"done"


async def _all_records(bootstrap: str, topic: str) -> list[Any]:
    from tests.conftest import read_records

    return await read_records(bootstrap, topic, await topic_size(bootstrap, topic))


async def test_a_viewer_cannot_replay_and_the_server_refuses_it_too(gateway: Gateway) -> None:
    from playwright.async_api import expect

    async with browser_page() as page:
        await sign_in(page, gateway.base, "vera")
        await page.goto(f"{gateway.base}/console/#/dlq")
        row = page.locator(f'[data-testid=dlq-row][data-id="{gateway.dlq_id}"]')
        await expect(row).to_be_visible(timeout=20_000)
        await expect(page.get_by_test_id("dlq-readonly")).to_be_visible()
        await expect(page.get_by_test_id("dlq-replay-one")).to_have_count(0)
        await row.get_by_test_id("dlq-inspect").click()
        await expect(page.get_by_test_id("dlq-payload-hidden")).to_be_visible()  # no customer text either
        # Even a hand-made request with the session's CSRF token is refused.
        status = await page.evaluate(
            """async (id) => {
                const session = await (await fetch('/console/api/session')).json();
                const response = await fetch('/console/api/dlq/replay', {
                    method: 'POST',
                    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf},
                    body: JSON.stringify({ids: [id]}),
                });
                return response.status;
            }""",
            gateway.dlq_id,
        )
        assert status == 403
    runtime = gateway.runtime
    assert await runtime.store.client.get(runtime.store.key("dlq", "replayed", gateway.dlq_id)) is None


async def test_an_admin_reads_the_audit_log_in_chinese_on_a_phone_with_the_keyboard(gateway: Gateway) -> None:
    from playwright.async_api import expect

    async with browser_page(390, 844) as page:
        await sign_in(page, gateway.base, "ada")
        await page.get_by_test_id("lang-select").select_option("zh-CN")
        await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        toggle = page.get_by_test_id("nav-toggle")
        await expect(toggle).to_be_visible()  # the phone layout collapses the navigation
        await toggle.click()
        dlq_link = page.get_by_test_id("nav-dlq")
        await expect(dlq_link).to_be_visible()
        assert any("\u4e00" <= ch <= "\u9fff" for ch in await dlq_link.inner_text())  # 死信… in Chinese
        await shot(page, "phone-zh")
        # The choice is remembered across a reload.
        await page.reload()
        await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        await expect(page.get_by_test_id("page-overview")).to_be_visible()
        # Keyboard: from the top of a freshly loaded page, Tab reaches the skip link first.
        await page.evaluate("document.activeElement && document.activeElement.blur()")
        await page.keyboard.press("Tab")
        await expect(page.get_by_test_id("skip-link")).to_be_focused()
        # The audit page (admins only) lists this sign-in.
        await page.goto(f"{gateway.base}/console/#/audit")
        login = page.locator('[data-testid=audit-row][data-action="login"]')
        await expect(login.first).to_contain_text("ada", timeout=20_000)
