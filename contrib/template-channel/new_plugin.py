#!/usr/bin/env python3
"""Start a channel plugin: copy this package to a new directory, renamed for your channel.

    python new_plugin.py zendesk-chat                 # -> ./zendesk-chat-channel/
    python new_plugin.py zendesk-chat --dest ~/src/gateway-channel-zendesk-chat

For NAME "zendesk-chat" the copy has the distribution ``gateway-channel-zendesk-chat``, the import
package ``gateway_channel_zendesk_chat``, the channel type (and entry-point name)
``zendesk_chat`` and the classes ``ZendeskChatChannel`` / ``ZendeskChatSettings``; test files
and every reference in code, config examples and the README follow. The copy is a working,
tested channel for the fictional Acme provider: install it, run its tests, then replace the
Acme specifics with your provider's (the README says where).

Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent
PLACEHOLDER = "template"  # the placeholder name used throughout this package
NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist", ".venv"}
# Not part of a new plugin: this script and its own test.
SKIP_FILES = {Path("new_plugin.py"), Path("tests/test_new_plugin.py")}
TEXT_SUFFIXES = {".py", ".toml", ".md", ".json", ".txt", ".cfg", ".ini", ".typed", ".yaml", ".yml"}
# The README's instructions for copying this package are cut from the copy.
README_CUT = re.compile(r"<!-- new-plugin:remove-start -->.*?<!-- new-plugin:remove-end -->\n*", re.S)
# Channel types of the gateway's own plugins (a plugin cannot register a type that already exists).
BUILTIN_TYPES = {
    "api",
    "whatsapp",
    "messenger",
    "instagram",
    "telegram",
    "slack",
    "twilio",
    "line",
    "smtp",
    "mailgun",
    "sendgrid",
    "webchat",
}


class Names:
    """Every spelling of the new name, derived from one NAME such as ``zendesk-chat``."""

    def __init__(self, name: str) -> None:
        self.snake = name.replace("-", "_")  # package suffix, channel type, entry point
        self.kebab = self.snake.replace("_", "-")  # distribution suffix, directory
        self.camel = "".join(part.capitalize() for part in self.snake.split("_"))  # class prefix
        self.upper = self.snake.upper()

    def rename(self, text: str) -> str:
        text = text.replace(f"gateway-channel-{PLACEHOLDER}", f"gateway-channel-{self.kebab}")
        text = text.replace(f"{PLACEHOLDER}-channel", f"{self.kebab}-channel")
        text = text.replace(PLACEHOLDER.upper(), self.upper)
        text = text.replace(PLACEHOLDER.capitalize(), self.camel)
        return text.replace(PLACEHOLDER, self.snake)


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be used, or None."""
    if not NAME.match(name) or len(name) > 40:
        return "use lowercase letters and digits, words separated by '-' or '_', starting with a letter"
    snake = name.replace("-", "_")
    if snake == PLACEHOLDER:
        return f"{name!r} is the placeholder name itself"
    if snake in BUILTIN_TYPES:
        return f"channel type {snake!r} is one of the gateway's own"
    installed = {ep.name for ep in importlib.metadata.entry_points(group="gateway")} - {PLACEHOLDER}
    if snake in installed:
        return f"a plugin named {snake!r} is already installed"
    return None


def files(root: Path) -> list[Path]:
    """The package's files, relative to ``root``, without caches, build output and this script."""
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in relative.parts):
            continue
        if path.is_file() and relative not in SKIP_FILES:
            found.append(relative)
    return found


def create(name: str, dest: Path) -> list[Path]:
    """Write the renamed copy to ``dest`` (which must not exist or be empty); return its files."""
    problem = check_name(name)
    if problem:
        raise ValueError(f"invalid name {name!r}: {problem}")
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} exists and is not empty")
    names = Names(name)
    written = []
    for relative in files(SOURCE):
        target = dest / names.rename(relative.as_posix())
        target.parent.mkdir(parents=True, exist_ok=True)
        source = SOURCE / relative
        if source.suffix in TEXT_SUFFIXES:
            text = source.read_text(encoding="utf-8")
            if relative == Path("README.md"):
                text = README_CUT.sub("", text)
            target.write_text(names.rename(text), encoding="utf-8")
        else:
            shutil.copyfile(source, target)
        shutil.copymode(source, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the channel type, e.g. zendesk or zendesk-chat")
    parser.add_argument("--dest", type=Path, help="directory to create (default: ./<name>-channel)")
    args = parser.parse_args(argv)
    names = Names(args.name)
    dest: Path = args.dest or Path.cwd() / f"{names.kebab}-channel"
    try:
        written = create(args.name, dest)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {dest} ({len(written)} files)")
    print(f"  distribution  gateway-channel-{names.kebab}")
    print(f"  package       gateway_channel_{names.snake}")
    print(f"  channel type  {names.snake}  (class {names.camel}Channel)")
    print("next:")
    print(f"  pip install -e '{dest}[test]'   # in the gateway's environment")
    print(f"  pytest {dest / 'tests'}")
    print("  gateway plugins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
