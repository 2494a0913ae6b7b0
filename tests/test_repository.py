"""What the repository itself promises: it is self-contained and names no machine's paths."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".json", ".txt", ".cfg", ".ini", ".sh", ".js", ".html", ".css"}
# Absolute paths of a developer's or a CI machine's file system (not URLs, not /usr/bin tools).
MACHINE_PATH = re.compile(r"(?<![\w.:/])(?:/work/|/home/\w|/Users/\w|/root/|/tmp/pytest-)")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    paths = [ROOT / line for line in listed.splitlines()]
    return [p for p in paths if p.suffix in TEXT_SUFFIXES or p.name in {"Dockerfile", "run", "test"}]


def test_no_machine_paths_in_code_or_docs() -> None:
    files = tracked_text_files()
    assert len(files) > 100  # the listing worked
    offenders = []
    for path in files:
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "absolute machine paths:\n" + "\n".join(offenders)


def test_contracts_are_documented_inside_the_repository() -> None:
    """Code and docs point at docs/architecture.md, never at a design file outside the repository."""
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for heading in ("### Ingress semantics", "### Topics", "### Message fields", "### Configuration shape"):
        assert heading in architecture
    outside = [
        str(path.relative_to(ROOT))
        for path in tracked_text_files()
        if path.is_file()
        and path != Path(__file__).resolve()
        and "DESIGN.md" in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert outside == []
