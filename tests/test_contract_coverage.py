"""Every channel type installed here (built-in and contrib) runs the channel contract.

The contract subclasses are found by reading the test sources (tests/test_contract_builtin.py and each
contrib package's tests), so a new channel without a contract subclass fails here, naming the type.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.plugins import PluginRegistry

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_CLASS = re.compile(
    r"^class (\w+)\((?:\w+)\):\n(?:    .*\n|\n)*?    channel_type = \"([\w.-]+)\"", re.MULTILINE
)


def contract_types() -> dict[str, list[str]]:
    """Channel type -> the test files with a contract subclass for it."""
    files = [ROOT / "tests" / "test_contract_builtin.py", *sorted(ROOT.glob("contrib/*/tests/*.py"))]
    found: dict[str, list[str]] = {}
    for path in files:
        text = path.read_text("utf-8")
        if "ChannelContract" not in text:
            continue
        for _, channel_type in CONTRACT_CLASS.findall(text):
            found.setdefault(channel_type, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_installed_channel_type_runs_the_contract(registry: PluginRegistry) -> None:
    covered = contract_types()
    missing = sorted(set(registry.channels) - set(covered))
    assert not missing, f"channel types without a ChannelContract subclass: {missing}"


def test_every_contrib_channel_package_tests_its_own_contract(registry: PluginRegistry) -> None:
    """A contrib channel's contract lives with the package (its own tests), not only here."""
    contrib = {info.name: info.channels for info in registry.plugins if info.source != "built-in" and info.channels}
    assert contrib, "no contrib channel plugin is installed (scripts/test installs contrib/*)"
    covered = contract_types()
    for plugin, channels in contrib.items():
        for channel_type in channels:
            files = [f for f in covered.get(channel_type, []) if f.startswith("contrib/")]
            assert files, f"contrib plugin {plugin}: no contract subclass for {channel_type!r} under contrib/*/tests"
