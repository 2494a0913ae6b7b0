"""Plugin API versioning: a plugin declaring a ``GATEWAY_API`` this gateway cannot serve is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gateway import plugins as plugins_module
from gateway.plugins import PluginError, check_api, load_plugins
from gateway.sdk import API_VERSION, Channel, ParseResult, WebhookRequest, hookimpl

GATEWAY = str(Path(sys.executable).with_name("gateway"))
MAJOR, MINOR = (int(part) for part in API_VERSION.split("."))


class FutureChannel(Channel):
    type = "future"

    async def verify(self, request: WebhookRequest) -> None:
        return None

    def parse(self, request: WebhookRequest) -> ParseResult:
        return ParseResult()


def plugin(api: object | None) -> types.ModuleType:
    module = types.ModuleType("future_plugin")
    if api is not None:
        module.GATEWAY_API = api  # type: ignore[attr-defined]
    module.register_channels = hookimpl(lambda register: register(FutureChannel))  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("api", [API_VERSION, f"{MAJOR}.0", None], ids=["current", "older-minor", "undeclared"])
def test_compatible_plugin_loads_and_records_its_api(api: str | None) -> None:
    registry = load_plugins(fail_fast=True, extra=[("future", plugin(api))])
    assert registry.channels["future"] is FutureChannel
    (info,) = [p for p in registry.plugins if p.name == "future"]
    assert info.api == api and info.error is None


@pytest.mark.parametrize(
    "api",
    [f"{MAJOR}.{MINOR + 1}", f"{MAJOR + 1}.0", f"{MAJOR - 1}.9"],
    ids=["newer-minor", "newer-major", "older-major"],
)
def test_incompatible_plugin_is_refused_naming_plugin_and_both_versions(api: str) -> None:
    registry = load_plugins(extra=[("future", plugin(api))])
    (failure,) = registry.failures
    assert failure.name == "future"
    assert failure.error is not None
    assert failure.error.startswith("PluginError: plugin 'future' requires gateway plugin API ")
    assert f"API {api}, but this gateway provides {API_VERSION}" in failure.error
    assert "future" not in registry.channels  # refused before any of its hooks ran
    assert failure.channels == []
    assert registry.channels["api"]  # the rest still loaded


def test_incompatible_plugin_fails_fast_in_production() -> None:
    with pytest.raises(PluginError, match=rf"'future' requires gateway plugin API {MAJOR + 1}\.0"):
        load_plugins(fail_fast=True, extra=[("future", plugin(f"{MAJOR + 1}.0"))])


@pytest.mark.parametrize(
    "api", ["1", "v1.0", "1.0.0", "latest", 1.0], ids=["major-only", "v", "patch", "word", "float"]
)
def test_malformed_declaration_is_reported(api: object) -> None:
    registry = load_plugins(extra=[("future", plugin(api))])
    (failure,) = registry.failures
    assert failure.error is not None and "GATEWAY_API" in failure.error and "'future'" in failure.error


def test_check_api_against_another_core_version() -> None:
    assert check_api("p", plugin("2.3"), provided="2.5") == "2.3"
    with pytest.raises(PluginError, match=r"requires gateway plugin API 2\.6, but this gateway provides 2\.5"):
        check_api("p", plugin("2.6"), provided="2.5")


def test_builtins_declare_nothing_newer_than_the_core() -> None:
    registry = load_plugins(fail_fast=True)
    assert registry.failures == []
    assert plugins_module.API_ATTRIBUTE == "GATEWAY_API"


def installed_distribution(root: Path, name: str, module_source: str) -> dict[str, str]:
    """A real installed distribution (dist-info with an entry point) on PYTHONPATH, as pip would leave it."""
    (root / f"{name}.py").write_text(module_source)
    dist_info = root / f"{name}-3.1.dist-info"  # pip's naming: underscores in the name part
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 3.1\n")
    (dist_info / "entry_points.txt").write_text(f"[gateway]\n{name} = {name}\n")
    return {**os.environ, "PYTHONPATH": str(root)}


def test_gateway_plugins_shows_the_refusal_and_the_declared_versions(tmp_path: Path) -> None:
    source = f"GATEWAY_API = '{MAJOR + 1}.0'\n"
    env = installed_distribution(tmp_path, "acme_future", source)
    ok_dir = tmp_path / "ok"
    ok_dir.mkdir()
    ok_env = installed_distribution(ok_dir, "acme_current", f"GATEWAY_API = '{API_VERSION}'\n")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ok_env['PYTHONPATH']}"

    result = subprocess.run([GATEWAY, "plugins"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 1  # a failed plugin makes the listing fail, like an import error
    assert (
        f"acme_future 3.1 (distribution acme-future) FAILED: PluginError: plugin 'acme_future' requires gateway"
        f" plugin API {MAJOR + 1}.0, but this gateway provides {API_VERSION}"
    ) in result.stdout
    assert f"acme_current 3.1 (distribution acme-current) ok\n  requires API: {API_VERSION}\n" in result.stdout

    listed = subprocess.run(
        [GATEWAY, "plugins", "--json"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    by_name = {p["name"]: p for p in json.loads(listed.stdout)}
    assert by_name["acme_current"]["api"] == API_VERSION and by_name["acme_current"]["error"] is None
    assert by_name["acme_future"]["api"] is None and "requires gateway plugin API" in by_name["acme_future"]["error"]
