"""The `gateway` command as a user runs it: real processes, real ports, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import event_loop_factory
from gateway.embedded import free_port

GATEWAY = str(Path(sys.executable).with_name("gateway"))
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, *args], capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ), check=False
    )


def test_plugins_lists_builtins_with_source_and_registrations() -> None:
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^api \S+ \(built-in\) ok$", result.stdout, re.M)
    assert "  channels: api" in result.stdout
    assert "  processors: passthrough" in result.stdout
    listed = json.loads(run("plugins", "--json").stdout)
    assert {p["name"] for p in listed} >= {"api", "passthrough"}


def test_schema_print_and_export_match_committed(tmp_path: Path) -> None:
    printed = run("schema", "print", "gateway.event/v1")
    assert printed.returncode == 0
    assert json.loads(printed.stdout)["title"] == "gateway.event/v1"
    assert run("schema", "export", str(tmp_path)).returncode == 0
    for path in (ROOT / "schemas").glob("*.json"):
        assert (tmp_path / path.name).read_text() == path.read_text(), f"{path.name} drifted: run gateway schema export"


def test_schema_export_writes_the_asyncapi_document_and_asyncapi_prints_a_deployments(tmp_path: Path) -> None:
    exported = run("schema", "export", str(tmp_path), "--markdown", str(tmp_path / "asyncapi.md"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "asyncapi.yaml").read_text() == (ROOT / "schemas" / "asyncapi.yaml").read_text()
    assert (tmp_path / "asyncapi.md").read_text() == (ROOT / "docs" / "asyncapi.md").read_text()
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\ntopic_prefix = "shop."\n'
        '[[processors.routing.rules]]\nname = "vip"\nwhen = { tier = "gold" }\nthen = { topic = "shop.vip.v1" }\n'
    )
    printed = run("schema", "asyncapi", "--config", str(config))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("asyncapi: 3.0.0\n")
    assert "address: shop.inbound.v1" in printed.stdout and "address: shop.vip.v1" in printed.stdout
    as_json = json.loads(run("schema", "asyncapi", "--config", str(config), "--format", "json").stdout)
    assert as_json["channels"]["routed_shop_vip_v1"]["address"] == "shop.vip.v1"
    markdown = run("schema", "asyncapi", "--config", str(config), "--format", "markdown").stdout
    assert "### shop.vip.v1" in markdown


def test_invalid_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[kafka]\nlinger_ms = "soon"\n')
    result = run("serve", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert "kafka.linger_ms" in result.stderr and "Expected `int`" in result.stderr

    config.write_text('[channels.shop]\ntype = "api"\nsecret = "env:SHOP_SECRET_NOT_SET"\n')
    result = run("serve", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert "channels.shop.secret: environment variable SHOP_SECRET_NOT_SET is not set" in result.stderr


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def assert_console_link_signs_in_once(banner: str, port: int) -> None:
    """The banner's console link: a 303 with a session cookie the first time, refused the second."""
    link = re.search(r"(http://\S+/console/auth/one-time\?token=\S+)", banner)
    assert link, banner
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as first:
        opener.open(link.group(1), timeout=30)
    assert first.value.code == 303 and first.value.headers["Location"] == "/console/"
    cookie = first.value.headers["Set-Cookie"].split(";")[0]
    session = urllib.request.Request(f"http://127.0.0.1:{port}/console/api/session", headers={"Cookie": cookie})
    with urllib.request.urlopen(session, timeout=30) as response:  # noqa: S310
        assert json.loads(response.read())["role"] == "admin"
    with pytest.raises(urllib.error.HTTPError) as second:
        opener.open(link.group(1), timeout=30)
    assert "expired" in second.value.headers["Location"]


def test_dev_runs_everything_and_the_banner_example_works(tmp_path: Path) -> None:
    """The README's first command: embedded broker and Redis, the example request, the tail command."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    port = free_port()
    log = (tmp_path / "dev.log").open("w+")
    process = subprocess.Popen([GATEWAY, "dev", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        banner = ""
        while "Ctrl-C stops everything" not in banner:
            assert process.poll() is None, f"gateway dev exited: {Path(log.name).read_text()}"
            assert time.monotonic() < deadline, f"no banner: {banner}"
            time.sleep(0.2)
            banner = Path(log.name).read_text()
        signature = re.search(r"X-Gateway-Signature: (sha256=[0-9a-f]{64})", banner)
        body = re.search(r"--data '(.+)'", banner)
        bootstrap = re.search(r"Kafka\s+(127\.0\.0\.1:\d+)\s+\(embedded Tansu", banner)
        assert signature and body and bootstrap, banner
        assert "embedded redis-server" in banner

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/api",
            data=body.group(1).encode(),
            headers={"Content-Type": "application/json", "X-Gateway-Signature": signature.group(1)},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            accepted = json.loads(response.read())
        message_id = accepted["messages"][0]["id"]

        tail_env = {**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap.group(1)}
        for topic in ("gateway.inbound.v1", "gateway.processed.v1"):
            result = run("tail", topic, "--max", "1", "--timeout", "60", env=tail_env, timeout=90)
            assert result.returncode == 0, result.stderr
            [line] = result.stdout.splitlines()
            record = json.loads(line)
            assert record["value"]["id"] == message_id
            assert record["headers"]["schema"] == "gateway.message/v1"
        processors = record["value"]["trace"]["processors"].split(",")
        assert {"passthrough", "escalation", "routing"} <= set(processors)
        assert processors.index("escalation") < processors.index("routing")
        assert record["value"]["routing"]["rule"] == "default" and record["value"]["routing"]["queue"] == "general"
        assert_console_link_signs_in_once(banner, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/chat/", timeout=30) as response:
            assert b"widget.js" in response.read()  # the web chat demo instance's page
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("gateway dev did not stop on SIGINT")
        log.close()
    assert code == 0, Path(log.name).read_text()
    output = Path(log.name).read_text()
    assert "stopped" in output
    assert "event_loop=uvloop" in output  # the default loop, everything above ran on it
    # [gateway] gc_* defaults applied once the process was ready (gateway/heap.py).
    settings = re.search(r"gc_settings\s.*frozen=(\d+).*", output)
    assert settings and int(settings.group(1)) > 10_000, output
    assert "threshold=[50000, 20, 100]" in settings.group(0)
    # The embedded broker is gone with it: nothing listens on its port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(bootstrap.group(1).split(":")[1])), timeout=5).close()


def test_event_loop_choice() -> None:
    import uvloop

    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None  # asyncio.Runner's default: the standard loop


@pytest.mark.parametrize("command", ["worker", "dispatch"])
def test_sigterm_stops_a_consumer_whose_broker_never_answered(command: str, tmp_path: Path) -> None:
    """A worker or dispatcher started before its broker (compose, Kubernetes) must still stop on
    SIGTERM while it waits, instead of being killed after the grace period."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}  # nothing listens there
    log = (tmp_path / f"{command}.log").open("w+")
    process = subprocess.Popen([GATEWAY, command], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "producer_connect_failed" not in Path(log.name).read_text():
            assert process.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert code == 0, Path(log.name).read_text()
    assert "stopped" in Path(log.name).read_text()
