"""First-party plugins use only the public plugin API, exactly like a third-party plugin must."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.sdk

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def gateway_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.extend((node.lineno, name) for name in names if name == "gateway" or name.startswith("gateway."))
    return found


def test_plugins_import_only_gateway_sdk() -> None:
    offenders = [
        f"{path.relative_to(PLUGINS.parent)}:{line} imports {name}"
        for path in sorted(PLUGINS.rglob("*.py"))
        for line, name in gateway_imports(path)
        if name != "gateway.sdk"
    ]
    assert offenders == [], "plugins must import only gateway.sdk:\n" + "\n".join(offenders)


def plugin_of(path: Path) -> str:
    """The first-party plugin a file belongs to: its top-level module or package under plugins/."""
    return path.relative_to(PLUGINS).parts[0].removesuffix(".py")


def plugin_imports(path: Path) -> list[tuple[int, str]]:
    """Imports of first-party plugin modules (absolute ``plugins.x`` or relative beyond the package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.extend((node.lineno, name) for name in names if name.startswith("plugins."))
    return found


def test_no_plugin_imports_another() -> None:
    """Each plugin can be disabled or replaced alone: what several need lives in gateway.sdk."""
    offenders = [
        f"{path.relative_to(PLUGINS.parent)}:{line} imports {name}"
        for path in sorted(PLUGINS.rglob("*.py"))
        for line, name in plugin_imports(path)
        if name.split(".")[1] != plugin_of(path)
    ]
    assert offenders == [], "a plugin must not import another plugin:\n" + "\n".join(offenders)


def test_the_plugin_check_sees_cross_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import plugins.escalation\nfrom plugins.email.mime import html_to_text\nimport os\n")
    assert plugin_imports(sample) == [(1, "plugins.escalation"), (2, "plugins.email.mime")]


def test_the_check_sees_internal_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import gateway.config\nfrom gateway.sdk import Channel\nfrom gateway import model\n")
    assert gateway_imports(sample) == [(1, "gateway.config"), (2, "gateway.sdk"), (3, "gateway")]


def test_sdk_exports_what_it_declares() -> None:
    missing = [name for name in gateway.sdk.__all__ if not hasattr(gateway.sdk, name)]
    assert missing == []
