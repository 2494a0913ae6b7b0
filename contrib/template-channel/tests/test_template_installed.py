"""The installed distribution, as an operator meets it: ``gateway plugins`` and ``gateway dev``.

Both run the real ``gateway`` command of this environment in a subprocess, so they check what
pyproject.toml declares: the entry point, the distribution name, the API version. Install the
package first (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from gateway.testing import ProviderRequest, messages_of, read_records, sign_hmac_sha256_hex, topic_size

DISTRIBUTION = "gateway-channel-template"
CHANNEL_TYPE = "template"
GATEWAY = str(Path(sys.executable).with_name("gateway"))
PAYLOADS = Path(__file__).parent / "payloads"


def test_gateway_plugins_lists_the_distribution() -> None:
    version = importlib.metadata.version(DISTRIBUTION)  # fails when the package is not installed
    result = subprocess.run([GATEWAY, "plugins"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    entry = re.search(
        rf"^{CHANNEL_TYPE} {re.escape(version)} \(distribution {DISTRIBUTION}\) ok\n((?:  .*\n)*)", result.stdout, re.M
    )
    assert entry, result.stdout
    assert "  requires API: 1.0\n" in entry.group(1)
    assert f"  channels: {CHANNEL_TYPE}\n" in entry.group(1)

    listed = subprocess.run([GATEWAY, "plugins", "--json"], capture_output=True, text=True, timeout=60, check=False)
    [plugin] = [p for p in json.loads(listed.stdout) if p["name"] == CHANNEL_TYPE]
    assert plugin["source"] == f"distribution {DISTRIBUTION}" and plugin["error"] is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_gateway_dev_receives_a_signed_message(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    """An instance named in gateway.toml is built from the entry point; a signed post reaches the topics."""
    tag = uuid.uuid4().hex[:10]
    prefix = f"t{tag}."
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
topic_prefix = "{prefix}"

[kafka]
partitions = 1
session_timeout_ms = 2000
heartbeat_interval_ms = 500
fetch_max_wait_ms = 50

[redis]
key_prefix = "gwtest:{tag}:"

[worker]
group_id = "worker-{tag}"
processors = ["passthrough"]

[dispatch]
group_id = "dispatch-{tag}"

[channels.acme-support]
type = "{CHANNEL_TYPE}"
signing_secret = "env:ACME_SIGNING_SECRET"
"""
    )
    secret = "dev-signing-secret-0123456789"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url}
    env["ACME_SIGNING_SECRET"] = secret
    port = free_port()
    log_path = tmp_path / "dev.log"
    command = [GATEWAY, "dev", "--config", str(config), "--port", str(port)]
    with log_path.open("w") as log:
        process = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = asyncio.get_running_loop().time() + 90
        while "Ctrl-C stops everything" not in log_path.read_text():
            assert process.returncode is None, f"gateway dev exited:\n{log_path.read_text()}"
            assert asyncio.get_running_loop().time() < deadline, f"gateway dev never got ready:\n{log_path.read_text()}"
            await asyncio.sleep(0.1)
        assert "Instances acme-support" in log_path.read_text()

        text = ProviderRequest(body=(PAYLOADS / "text.json").read_bytes(), headers={"Content-Type": "application/json"})
        signed = sign_hmac_sha256_hex(text, secret, "X-Acme-Signature")
        url = f"http://127.0.0.1:{port}/webhooks/acme-support"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=text.body, headers=dict(text.headers)) as unsigned:
                assert unsigned.status == 401
            answers = []
            for _ in ("delivery", "redelivery"):
                async with http.post(url, data=signed.body, headers=dict(signed.headers)) as response:
                    assert response.status == 200, await response.text()
                    answers.append(await response.json())
        assert [a["messages"][0]["duplicate"] for a in answers] == [False, True]
        assert answers[0]["messages"][0]["id"] == answers[1]["messages"][0]["id"]

        [message] = messages_of(await read_records(kafka_bootstrap, f"{prefix}inbound.v1", 1))
        assert (message.channel, message.instance, message.external_id) == (CHANNEL_TYPE, "acme-support", "msg_1001")
        assert message.id == answers[0]["messages"][0]["id"]
        assert await topic_size(kafka_bootstrap, f"{prefix}inbound.v1") == 1  # the redelivery published nothing
        [processed] = messages_of(await read_records(kafka_bootstrap, f"{prefix}processed.v1", 1))
        assert processed.id == message.id and processed.trace["processors"] == "passthrough"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            pytest.fail("gateway dev did not stop on SIGINT")
    assert code == 0, log_path.read_text()
