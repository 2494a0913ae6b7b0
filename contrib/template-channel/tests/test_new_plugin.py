"""``new_plugin.py``: the renamed copy is complete, consistent, installable, and its tests pass.

This file is not copied into new plugins (nor is the script).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "new_plugin.py"
README_CUT = re.compile(r"<!-- new-plugin:remove-start -->.*?<!-- new-plugin:remove-end -->", re.S)
SKIP = {"new_plugin.py", "test_new_plugin.py"}
# What the script renames: snake_case parts, CamelCase parts, UPPER_CASE parts.
WHOLE_NAME = re.compile(r"(?<![A-Za-z])template(?![a-z])|Template(?![a-z])|(?<![A-Z])TEMPLATE(?![A-Z])")


def source_files() -> list[Path]:
    return [
        path
        for path in sorted(ROOT.rglob("*"))
        if path.is_file()
        and path.name not in SKIP
        and not any(p in {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"} for p in path.parts)
        and not any(p.endswith(".egg-info") for p in path.parts)
    ]


def new_plugin(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def all_text(root: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*")) if p.is_file())


def test_the_placeholder_is_only_ever_a_whole_name() -> None:
    """Renaming replaces every 'template': the word must not occur inside other words ('templates')."""
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        if path.name == "README.md":
            text = README_CUT.sub("", text)
        every = [m.start() for m in re.finditer(r"(?i)templat", text)]
        names = [m.start() for m in WHOLE_NAME.finditer(text)]
        assert every == names, f"{path.relative_to(ROOT)}: {[text[i - 10 : i + 18] for i in set(every) - set(names)]}"


def test_the_copy_is_renamed_consistently(tmp_path: Path) -> None:
    result = new_plugin("zendesk-chat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "zendesk-chat-channel"
    assert f"created {dest}" in result.stdout

    expected = {re.sub("template", "zendesk_chat", path.relative_to(ROOT).as_posix()) for path in source_files()}
    copied = {path.relative_to(dest).as_posix() for path in dest.rglob("*") if path.is_file()}
    assert copied == expected
    assert "gateway_channel_zendesk_chat/channel.py" in copied
    assert "tests/test_zendesk_chat_contract.py" in copied
    assert not re.search(r"(?i)templat", all_text(dest)), "a placeholder survived the renaming"
    assert "new-plugin:remove" not in (dest / "README.md").read_text()
    assert (dest / "README.md").read_text().startswith("# gateway-channel-zendesk-chat\n")

    project = tomllib.loads((dest / "pyproject.toml").read_text())
    assert project["project"]["name"] == "gateway-channel-zendesk-chat"
    assert project["project"]["entry-points"]["gateway"] == {"zendesk_chat": "gateway_channel_zendesk_chat.channel"}
    assert project["tool"]["setuptools"]["packages"] == ["gateway_channel_zendesk_chat"]

    check = """
import gateway_channel_zendesk_chat.channel as module
from gateway.plugins import load_plugins
assert module.ZendeskChatChannel.type == "zendesk_chat", module.ZendeskChatChannel.type
assert module.ZendeskChatChannel.Settings is module.ZendeskChatSettings
registry = load_plugins(fail_fast=True, extra=[("zendesk_chat", module)])
assert registry.channels["zendesk_chat"] is module.ZendeskChatChannel
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(dest)}
    imported = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=60)
    assert imported.stdout == "ok\n", imported.stderr


def test_the_installed_copy_passes_its_own_tests(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> None:
    """pip-installed into a directory of its own (a real dist-info with the entry point), the copy
    passes its whole suite: contract, parse, send, `gateway plugins` and `gateway dev`."""
    assert new_plugin("acme2", "--dest", str(tmp_path / "plugin"), cwd=tmp_path).returncode == 0
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    install = subprocess.run(
        [*pip, "--target", str(site), str(tmp_path / "plugin")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert (site / "gateway_channel_acme2-0.1.0.dist-info" / "entry_points.txt").read_text().split() == [
        "[gateway]",
        "acme2",
        "=",
        "gateway_channel_acme2.channel",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
    }
    ours = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
        timeout=120,
        check=False,
    )
    expected = len([line for line in ours.stdout.splitlines() if "::" in line and "test_new_plugin.py" not in line])
    assert expected > 40, ours.stdout
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
        cwd=tmp_path / "plugin",
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert re.search(rf"^{expected} passed", result.stdout.splitlines()[-1]), result.stdout[-2000:]


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("Zendesk", "use lowercase letters"),
        ("1chat", "use lowercase letters"),
        ("zen--desk", "use lowercase letters"),
        ("template", "placeholder name itself"),
        ("telegram", "one of the gateway's own"),
    ],
)
def test_unusable_names_are_refused(tmp_path: Path, name: str, error: str) -> None:
    result = new_plugin(name, cwd=tmp_path)
    assert result.returncode == 2 and error in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "acme-channel").mkdir()
    (tmp_path / "acme-channel" / "mine.txt").write_text("keep me")
    result = new_plugin("acme", cwd=tmp_path)
    assert result.returncode == 2 and "exists and is not empty" in result.stderr
    assert [p.name for p in (tmp_path / "acme-channel").iterdir()] == ["mine.txt"]
