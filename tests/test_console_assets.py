"""The operator console's static files (gateway/console/static): strings, assets, and CSP hygiene.

- lib/strings.js holds the English and Chinese dictionaries: the same keys, no empty values, the
  same {placeholders}; every key the pages use exists and every key is used;
- the console loads nothing from another origin (it works offline, under ``default-src 'self'``);
- index.html has no inline script or event handler attribute (the CSP allows neither), and the
  scripts build no HTML from strings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "gateway" / "console" / "static"
STRINGS = STATIC / "lib" / "strings.js"
INDEX = STATIC / "index.html"
VENDOR = STATIC / "vendor"
LANGUAGES = ("en", "zh-CN")

ENTRY = re.compile(r'^\s*"(?P<key>[^"\\]+)":\s*"(?P<value>(?:[^"\\]|\\.)*)",?\s*$')
BLOCK_START = re.compile(r'^\s*"?(?P<lang>[A-Za-z-]+)"?:\s*\{\s*$')
BLOCK_END = re.compile(r"^\s*\},?\s*$")
URL = re.compile(r"\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
T_CALL = re.compile(r"(?<![\w.$])t\(")
I18N_ATTR = re.compile(r'data-i18n(?:-[a-z-]+)?="(?P<key>[^"]+)"')
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def own_scripts() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*.js") if VENDOR not in p.parents)


def t_arguments(text: str) -> list[str]:
    """The first argument of every t(...) call, as written."""
    found = []
    for match in T_CALL.finditer(text):
        depth, end = 0, match.end()
        while end < len(text):
            char = text[end]
            if char in "([{":
                depth += 1
            elif char in ")]}" and depth:
                depth -= 1
            elif char in ",)" and not depth:
                break
            end += 1
        found.append(text[match.end() : end].strip())
    return found


def dictionaries() -> dict[str, dict[str, str]]:
    """The dictionaries of strings.js, one "key": "value" per line, every line accounted for."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    lines = STRINGS.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if current is None:
            start = BLOCK_START.match(line)
            if start:
                current = found.setdefault(start.group("lang"), {})
            continue
        if BLOCK_END.match(line):
            current = None
            continue
        if not stripped or stripped.startswith("//"):
            continue
        entry = ENTRY.match(line)
        assert entry, f"strings.js:{number}: not a one-line string entry: {line!r}"
        key = entry.group("key")
        assert key not in current, f"strings.js:{number}: {key} twice"
        current[key] = entry.group("value")
    return found


def namespaces(keys: set[str]) -> set[str]:
    return {key.split(".", 1)[0] for key in keys}


def used_keys() -> tuple[set[str], set[str]]:
    """(keys passed to t() or named by data-i18n*, every string literal shaped like a key)."""
    keys = set(dictionaries()["en"])
    prefixes = "|".join(sorted(re.escape(ns) for ns in namespaces(keys)))
    literal = re.compile(r'"((?:' + prefixes + r')\.[a-z0-9_]+)"')
    called: set[str] = set()
    mentioned: set[str] = set()
    for path in own_scripts():
        if path == STRINGS:
            continue
        text = path.read_text(encoding="utf-8")
        called.update(arg.strip('"') for arg in t_arguments(text) if re.fullmatch(r'"[^"]*"', arg))
        mentioned.update(literal.findall(text))
    html = INDEX.read_text(encoding="utf-8")
    called.update(match.group("key") for match in I18N_ATTR.finditer(html))
    return called, mentioned | called


def test_both_languages_have_the_same_keys_and_no_empty_values() -> None:
    found = dictionaries()
    assert set(found) == set(LANGUAGES)
    english, chinese = found["en"], found["zh-CN"]
    assert len(english) > 200
    assert sorted(set(english) - set(chinese)) == [], "missing in zh-CN"
    assert sorted(set(chinese) - set(english)) == [], "missing in en"
    for lang, strings in found.items():
        empty = [key for key, value in strings.items() if not value.strip()]
        assert empty == [], f"empty {lang} strings: {empty}"


def test_both_languages_fill_in_the_same_placeholders() -> None:
    found = dictionaries()
    differ = [
        key
        for key, value in found["en"].items()
        if set(PLACEHOLDER.findall(value)) != set(PLACEHOLDER.findall(found["zh-CN"][key]))
    ]
    assert differ == []


def test_the_chinese_strings_are_translated() -> None:
    """Apart from names and units that read the same in both, zh-CN is not a copy of en."""
    found = dictionaries()
    same = sorted(key for key, value in found["en"].items() if found["zh-CN"][key] == value)
    assert same == ["common.json", "insights.p90_is"], same


def test_every_key_the_console_uses_exists_and_every_key_is_used() -> None:
    keys = set(dictionaries()["en"])
    called, mentioned = used_keys()
    assert len(called) > 150  # the scan found the calls
    assert sorted(mentioned - keys) == [], "keys used but not in the dictionaries"
    assert sorted(keys - mentioned) == [], "keys in the dictionaries that nothing uses"


def test_t_is_only_called_with_a_literal_key_or_a_mapped_variable() -> None:
    """t(variable) is allowed only where the variable's keys are literals nearby (checked above)."""
    allowed = {
        ("console.js", "page.title"),
        ("lib/dom.js", "key"),
        ("lib/dom.js", "nextKey"),
        ("lib/i18n.js", 'el.getAttribute("data-i18n")'),
        ("lib/i18n.js", 'el.getAttribute("data-i18n-" + attr)'),
        ("lib/i18n.js", "key"),
    }
    dynamic = set()
    for path in own_scripts():
        if path == STRINGS:
            continue
        for arg in t_arguments(path.read_text(encoding="utf-8")):
            if not re.fullmatch(r'"[^"]*"', arg):
                dynamic.add((path.relative_to(STATIC).as_posix(), arg))
    assert dynamic <= allowed, sorted(dynamic - allowed)


@pytest.mark.parametrize("path", sorted(p for p in STATIC.rglob("*") if p.is_file()), ids=lambda p: p.name)
def test_no_other_origin_is_referenced(path: Path) -> None:
    """Our files name no URL at all; vendored files only in their licence text (the banner comment)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.parent == VENDOR:
        if path.name.endswith(".LICENSE") or path.name == "README.md":
            return
        text = re.sub(r"^/\*!.*?\*/", "", text, flags=re.DOTALL)  # the licence banner
    assert URL.findall(text) == [], f"{path.relative_to(STATIC)} names another origin"


def test_index_html_loads_only_same_origin_assets() -> None:
    html = INDEX.read_text(encoding="utf-8")
    references = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert references, "the scan found the references"
    for ref in references:
        assert ref.startswith(("static/", "#")) or ref == "data:,", ref
        if ref.startswith("static/"):
            assert (STATIC / ref.removeprefix("static/")).is_file(), f"{ref} does not exist"


def test_index_html_has_no_inline_script_style_or_handler() -> None:
    html = INDEX.read_text(encoding="utf-8")
    for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.DOTALL | re.IGNORECASE):
        assert "src=" in match.group(1), "a script without src"
        assert match.group(2).strip() == "", "an inline script body"
    assert re.search(r"\son[a-z]+\s*=", html, flags=re.IGNORECASE) is None, "an inline event handler"
    assert re.search(r"<style\b", html, flags=re.IGNORECASE) is None
    assert re.search(r"\sstyle\s*=", html, flags=re.IGNORECASE) is None
    assert "javascript:" not in html.lower()


def test_scripts_build_no_html_from_strings_and_evaluate_no_code() -> None:
    """Message texts, DLQ payloads and reasons are attacker-controlled: text goes in as text."""
    risky = re.compile(
        r"\.innerHTML\b|\.outerHTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function\(|"
        r"setTimeout\(\s*[\"'`]|setInterval\(\s*[\"'`]|\.setAttribute\(\s*[\"']on|\bstyle=|<style"
    )
    offenders = [
        f"{path.relative_to(STATIC)}:{number}: {line.strip()}"
        for path in own_scripts()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if risky.search(line)
    ]
    assert offenders == []


def test_every_module_import_resolves() -> None:
    """ES modules are loaded as they are (no build step): each relative import names a file."""
    imports = re.compile(r'^\s*(?:import|export)\b[^"]*?from\s+"([^"]+)"', re.MULTILINE)
    for path in own_scripts():
        for spec in imports.findall(path.read_text(encoding="utf-8")):
            assert spec.startswith("./") or spec.startswith("../"), f"{path.name}: bare import {spec}"
            assert (path.parent / spec).resolve().is_file(), f"{path.name}: {spec} does not exist"


def test_the_vendored_chart_library_is_described() -> None:
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    assert "npm pack uplot@1.6.32" in readme
    assert "MIT" in readme
    assert (VENDOR / "uPlot.LICENSE").read_text(encoding="utf-8").startswith("The MIT License")
    banner = (VENDOR / "uPlot.iife.min.js").read_text(encoding="utf-8").split("*/", 1)[0]
    assert "uPlot (v1.6.32)" in banner


def test_the_wheel_ships_every_console_asset() -> None:
    """pyproject's package-data globs cover every file under static/ (the wheel holds what they match)."""
    import fnmatch
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = project["tool"]["setuptools"]["package-data"]["gateway"]
    package = ROOT / "gateway"
    for path in STATIC.rglob("*"):
        if path.is_file():
            name = path.relative_to(package).as_posix()
            assert any(fnmatch.fnmatch(name, pattern) and name.count("/") == pattern.count("/") for pattern in globs), (
                name
            )
