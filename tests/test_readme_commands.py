"""The ``pytest ... -k EXPR`` examples in README and docs select at least one test: an example
whose expression matches nothing "passes" with no test run, which teaches nothing."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = re.compile(r"`((?:\.venv/bin/)?pytest [^`]*-k [^`]*)`|^((?:\.venv/bin/)?pytest .*-k .*)$", re.MULTILINE)


def examples() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for match in EXAMPLE.finditer(doc.read_text("utf-8")):
            found.append((doc.relative_to(ROOT).as_posix(), match.group(1) or match.group(2)))
    return found


def test_the_readme_has_a_k_example() -> None:
    assert any(doc == "README.md" for doc, _ in examples())


@pytest.mark.parametrize(("doc", "command"), examples())
def test_k_examples_select_tests(doc: str, command: str) -> None:
    args = shlex.split(command)[1:]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{doc}: `{command}` selects nothing or fails:\n{result.stdout[-2000:]}"
    selected = [line for line in result.stdout.splitlines() if "::" in line]
    assert selected, f"{doc}: `{command}` selects no test"
