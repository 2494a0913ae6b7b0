"""The plugin walkthroughs in docs/plugins/ work as written.

Each walkthrough marks the files it shows with ``<!-- file: path -->`` before the code block, the
package layout with ``<!-- layout -->`` and the pytest result it promises with
``<!-- expect: pytest -->``. The files are extracted to a temporary directory and the documented
tests run there with pytest in a subprocess, from source (``PYTHONPATH``, the plugin passed as a
local plugin: nothing is installed); they must pass, and exactly as many as the page says, so a
lost or empty code block fails. The documented ``gateway.toml`` must load with the gateway's
config loader, and its channel instances and processor chain must build with the plugin loaded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins"
WALKTHROUGHS = ["writing-a-channel.md", "writing-a-processor.md"]
FILE_BLOCK = re.compile(r"^<!-- file: (?P<path>\S+) -->\n```[a-z]*\n(?P<body>.*?)^```$", re.S | re.M)
LAYOUT_BLOCK = re.compile(r"^<!-- layout -->\n```text\n(?P<body>.*?)^```$", re.S | re.M)
EXPECT_BLOCK = re.compile(r"^<!-- expect: pytest -->\n```text\n(?P<body>.*?)^```$", re.S | re.M)
ENV_REFERENCE = re.compile(r'"env:([A-Z0-9_]+)"')


def extract(doc: str) -> dict[str, str]:
    text = (DOCS / doc).read_text(encoding="utf-8")
    files: dict[str, str] = {}
    for match in FILE_BLOCK.finditer(text):
        assert match["path"] not in files, f"{doc} shows {match['path']} twice"
        files[match["path"]] = match["body"]
    return files


def expected_passed(doc: str) -> int:
    [block] = EXPECT_BLOCK.findall((DOCS / doc).read_text(encoding="utf-8"))
    found = re.search(r"^(\d+) passed in ", block, re.M)
    assert found, f"{doc}: the expected pytest output names no count"
    return int(found.group(1))


def plugin_module(files: dict[str, str]) -> tuple[str, str]:
    """(entry-point name, module) the documented pyproject.toml declares."""
    project = tomllib.loads(files["pyproject.toml"])
    [(name, module)] = project["project"]["entry-points"]["gateway"].items()
    return name, module


def write(files: dict[str, str], root: Path) -> Path:
    for path, body in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    return root


@pytest.mark.parametrize("doc", WALKTHROUGHS)
def test_the_walkthrough_shows_a_complete_package(doc: str) -> None:
    files = extract(doc)
    assert {"pyproject.toml", "gateway.toml"} <= set(files), sorted(files)
    assert any(re.fullmatch(r"tests/test_\w+\.py", path) for path in files), sorted(files)
    _, module = plugin_module(files)
    assert module.replace(".", "/") + ".py" in files, f"the entry point names {module}, which the page does not show"
    [layout] = LAYOUT_BLOCK.findall((DOCS / doc).read_text(encoding="utf-8"))
    for path in files:
        assert re.search(rf"[─ ]{re.escape(Path(path).name)}\b", layout), f"the layout does not show {path}"
    for path, body in files.items():
        if path.endswith(".py"):
            compile(body, f"{doc}:{path}", "exec")
            assert not re.search(r"^from gateway\.(?!sdk\b|testing\b)", body, re.M), f"{path} imports gateway internals"
            if not path.startswith("tests/"):
                assert not re.search(r"^from gateway\.testing", body, re.M), f"{path}: plugins import only gateway.sdk"


@pytest.mark.parametrize("doc", WALKTHROUGHS)
def test_the_documented_config_loads_with_the_plugin(doc: str, tmp_path: Path) -> None:
    files = extract(doc)
    root = write(files, tmp_path)
    name, module = plugin_module(files)
    environ = {ref: f"{ref.lower()}-0123456789abcdef" for ref in ENV_REFERENCE.findall(files["gateway.toml"])}
    check = f"""
import importlib, os
from gateway.channel import ChannelServices
from gateway.config import RedisSection, load_config
from gateway.pipeline.chain import build_chain
from gateway.plugins import load_plugins
from gateway.runtime import build_channels
from gateway.store.redis import RedisStore

config = load_config("gateway.toml", os.environ)
registry = load_plugins(fail_fast=True, extra=[({name!r}, importlib.import_module({module!r}))])
channels = build_channels(config, registry, ChannelServices(store=RedisStore(RedisSection())), os.environ)
print("channels", sorted((n, c.type) for n, c in channels.items()))
print("chain", [p.name for p in build_chain(config, registry, os.environ)] if config.processors else None)
"""
    env = {**os.environ, **environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "channels [" in result.stdout and "channels []" not in result.stdout, result.stdout


@pytest.mark.parametrize("doc", WALKTHROUGHS)
def test_the_documented_tests_pass(doc: str, tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> None:
    files = extract(doc)
    root = write(files, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.fullmatch(rf"{expected_passed(doc)} passed in [\d.]+s", summary), (
        f"{doc} promises {expected_passed(doc)} passed tests; pytest says: {summary}"
    )
