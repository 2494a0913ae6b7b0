"""Unit tests of plugin discovery (gateway/plugins.py) and channel instantiation (gateway/runtime.py)."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import click
import msgspec
import pytest
from aiohttp import web

from gateway import plugins as plugins_module
from gateway.channel import Channel, ChannelServices, ChannelSettings, ParseResult, WebhookRequest
from gateway.config import ConfigError, RedisSection, config_from_dict
from gateway.plugins import PluginError, PluginRegistry, Route, load_plugins
from gateway.processor import Processor
from gateway.runtime import build_channels
from gateway.sdk import hookimpl
from gateway.store.redis import RedisStore
from plugins.api_channel import ApiChannel, ApiSettings
from plugins.passthrough import Passthrough

GOOD_SECRET = "0123456789abcdef0123"


# --- plugin fixtures: plain objects with hookimpl functions ---------------------------------------------


class EchoSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    token: str
    greeting: str = "hi"
    retries: int = 1


class EchoChannel(Channel):
    type = "echo"
    Settings = EchoSettings
    secret_settings = frozenset({"token"})

    async def verify(self, request: WebhookRequest) -> None:
        return None

    def parse(self, request: WebhookRequest) -> ParseResult:
        return ParseResult()


class UpperProcessor(Processor):
    name = "upper"

    async def process(self, message: Any, ctx: Any) -> Any:
        return message


async def hello_handler(request: web.Request) -> web.StreamResponse:
    return web.Response(text="hello")


@click.command("hello")
def hello_command() -> None:
    """Say hello."""


HELLO_ROUTE = Route("GET", "/hello", hello_handler)


class GoodPlugin:
    """A class instance whose methods are hook implementations."""

    @hookimpl
    def register_channels(self, register: Callable[[Any], None]) -> None:
        register(EchoChannel)

    @hookimpl
    def register_processors(self, register: Callable[[Any], None]) -> None:
        register(UpperProcessor)

    @hookimpl
    def register_commands(self, register: Callable[[Any], None]) -> None:
        register(hello_command)

    @hookimpl
    def register_routes(self, register: Callable[[Any], None]) -> None:
        register(HELLO_ROUTE)


def namespace_plugin(**hooks: Callable[..., None]) -> types.SimpleNamespace:
    """A plugin made of plain functions: pluggy accepts any object with hookimpl attributes."""
    return types.SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def channel_plugin(cls: Any) -> types.SimpleNamespace:
    return namespace_plugin(register_channels=lambda register: register(cls))


def failing_plugin(message: str = "boom") -> types.SimpleNamespace:
    class Half(Channel):
        type = "half"

    def register_processors(register: Callable[[Any], None]) -> None:
        raise RuntimeError(message)

    # registers a channel first, then fails: nothing of it may end up in the registry
    return namespace_plugin(register_channels=lambda register: register(Half), register_processors=register_processors)


def info(registry: PluginRegistry, name: str) -> plugins_module.PluginInfo:
    (found,) = [p for p in registry.plugins if p.name == name]
    return found


# --- built-ins via entry points ----------------------------------------------------------------------------


def test_builtins_are_discovered_through_entry_points() -> None:
    registry = load_plugins()
    assert registry.channels["api"] is ApiChannel
    assert registry.processors["passthrough"] is Passthrough
    api = info(registry, "api")
    passthrough = info(registry, "passthrough")
    assert api.source == "built-in"
    assert passthrough.source == "built-in"
    assert api.channels == ["api"]
    assert passthrough.processors == ["passthrough"]
    assert api.version != "unknown"
    assert registry.failures == []


def test_disabled_plugins_are_not_loaded() -> None:
    registry = load_plugins(disabled=["passthrough"])
    assert "passthrough" not in registry.processors
    names = [p.name for p in registry.plugins]
    assert "passthrough" not in names and "api" in names


# --- local plugins -----------------------------------------------------------------------------------------


def test_local_plugin_registers_channel_processor_command_and_route() -> None:
    registry = load_plugins(extra=[("good", GoodPlugin())])
    assert registry.channels["echo"] is EchoChannel
    assert registry.processors["upper"] is UpperProcessor
    assert registry.commands["hello"] is hello_command
    assert HELLO_ROUTE in registry.routes
    good = info(registry, "good")
    assert (good.source, good.version, good.error) == ("local", "local", None)
    assert good.channels == ["echo"]
    assert good.processors == ["upper"]
    assert good.commands == ["hello"]
    assert good.routes == ["GET /hello"]
    # built-ins are still there, before the local plugin
    assert registry.channels["api"] is ApiChannel
    names = [p.name for p in registry.plugins]
    assert names[-1] == "good" and {"api", "passthrough"} <= set(names[:-1])


def test_module_and_namespace_plugins_are_accepted() -> None:
    module = types.ModuleType("acme_plugin")
    module.register_channels = hookimpl(lambda register: register(EchoChannel))  # type: ignore[attr-defined]
    namespace = namespace_plugin(register_processors=lambda register: register(UpperProcessor))
    registry = load_plugins(extra=[("mod", module), ("ns", namespace)])
    assert registry.channels["echo"] is EchoChannel
    assert registry.processors["upper"] is UpperProcessor
    assert registry.failures == []


def test_plugin_whose_hook_raises_is_reported_and_others_still_load() -> None:
    registry = load_plugins(extra=[("bad", failing_plugin("boom")), ("good", GoodPlugin())])
    (failure,) = registry.failures
    assert failure.name == "bad"
    assert failure.source == "local"
    assert failure.error == "RuntimeError: boom"
    # registrations of the failing plugin are all-or-nothing
    assert "half" not in registry.channels
    assert failure.channels == []
    # the plugin after it loaded normally
    assert registry.channels["echo"] is EchoChannel
    assert info(registry, "good").error is None


def test_fail_fast_raises_plugin_error_naming_the_plugin() -> None:
    with pytest.raises(PluginError) as raised:
        load_plugins(fail_fast=True, extra=[("bad", failing_plugin("boom")), ("good", GoodPlugin())])
    message = str(raised.value)
    assert "'bad'" in message
    assert "boom" in message


def test_fail_fast_does_not_trip_on_healthy_plugins() -> None:
    registry = load_plugins(fail_fast=True, extra=[("good", GoodPlugin())])
    assert registry.failures == []
    assert "echo" in registry.channels


def test_misspelled_hook_is_reported_instead_of_registering_nothing() -> None:
    class Typo:
        @hookimpl
        def register_channel(self, register: Any) -> None:  # missing "s"
            register(EchoChannel)

    registry = load_plugins(extra=[("typo", Typo())])
    failure = info(registry, "typo")
    assert failure.error is not None and "register_channel" in failure.error
    assert "echo" not in registry.channels


class NoType(Channel):
    pass


class NoName(Processor):
    pass


@pytest.mark.parametrize(
    ("hook", "obj", "expected"),
    [
        ("register_channels", object(), "register_channels expects a Channel subclass"),
        ("register_channels", dict, "register_channels expects a Channel subclass"),
        ("register_channels", UpperProcessor, "register_channels expects a Channel subclass"),
        ("register_channels", NoType, "register_channels expects a Channel subclass with a `type`"),
        ("register_processors", EchoChannel, "register_processors expects a Processor subclass"),
        ("register_processors", NoName, "register_processors expects a Processor subclass with a `name`"),
        ("register_commands", print, "register_commands expects a named click.Command"),
        ("register_routes", ("GET", "/x", hello_handler), "register_routes expects a gateway.sdk.Route"),
    ],
    ids=[
        "object",
        "non-channel-class",
        "processor-as-channel",
        "no-type",
        "channel-as-processor",
        "no-name",
        "function-as-command",
        "tuple-as-route",
    ],
)
def test_invalid_registrations_are_reported(hook: str, obj: Any, expected: str) -> None:
    plugin = namespace_plugin(**{hook: lambda register: register(obj)})
    registry = load_plugins(extra=[("weird", plugin)])
    (failure,) = registry.failures
    assert failure.name == "weird"
    assert failure.error is not None
    assert failure.error.startswith("PluginError: ")
    assert expected in failure.error


def test_hookimpl_with_wrong_arguments_is_reported() -> None:
    plugin = namespace_plugin(register_channels=lambda reg: reg(EchoChannel))
    registry = load_plugins(extra=[("typo", plugin)])
    (failure,) = registry.failures
    assert failure.name == "typo"
    assert failure.error is not None
    assert failure.error.startswith("PluginValidationError: ")
    assert "{'reg'}" in failure.error
    assert "echo" not in registry.channels


def test_duplicate_channel_type_is_rejected_and_attributed_to_the_second_plugin() -> None:
    class OtherEcho(EchoChannel):
        pass

    registry = load_plugins(extra=[("first", channel_plugin(EchoChannel)), ("second", channel_plugin(OtherEcho))])
    assert registry.channels["echo"] is EchoChannel
    (failure,) = registry.failures
    assert failure.name == "second"
    assert failure.error is not None and "'echo' is already registered" in failure.error
    assert info(registry, "first").error is None


def test_local_plugin_cannot_shadow_a_builtin_channel_type() -> None:
    class FakeApi(ApiChannel):
        pass

    registry = load_plugins(extra=[("shadow", channel_plugin(FakeApi))])
    assert registry.channels["api"] is ApiChannel
    assert [f.name for f in registry.failures] == ["shadow"]


def test_duplicate_processor_and_command_are_rejected() -> None:
    class OtherPassthrough(Processor):
        name = "passthrough"

    dup_processor = namespace_plugin(register_processors=lambda register: register(OtherPassthrough))
    dup_command = namespace_plugin(register_commands=lambda register: register(click.Command("hello")))
    registry = load_plugins(extra=[("good", GoodPlugin()), ("p", dup_processor), ("c", dup_command)])
    assert registry.processors["passthrough"] is Passthrough
    assert registry.commands["hello"] is hello_command
    errors = {f.name: f.error for f in registry.failures}
    assert set(errors) == {"p", "c"}
    assert "processor 'passthrough' is already registered" in str(errors["p"])
    assert "command 'hello' is already registered" in str(errors["c"])


class FakeEntryPoint:
    def __init__(self, name: str, dist_name: str, load: Callable[[], object]) -> None:
        self.name = name
        self.dist = types.SimpleNamespace(name=dist_name, version="9.9")
        self.load = load


def _broken_import() -> object:
    raise ImportError("No module named 'acme_missing'")


def test_third_party_distribution_failing_to_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        plugins_module, "_entry_points", lambda: [FakeEntryPoint("acme", "acme-gateway-plugin", _broken_import)]
    )
    registry = load_plugins()
    (failure,) = registry.failures
    assert failure.name == "acme"
    assert failure.source == "distribution acme-gateway-plugin"
    assert failure.version == "9.9"
    assert failure.error == "ImportError: No module named 'acme_missing'"


def test_builtin_failure_always_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        plugins_module,
        "_entry_points",
        lambda: [FakeEntryPoint("core-broken", plugins_module.OWN_DISTRIBUTION, _broken_import)],
    )
    with pytest.raises(PluginError, match="'core-broken' \\(built-in\\)"):
        load_plugins(fail_fast=False)


def test_entry_points_put_builtins_first() -> None:
    eps = list(plugins_module._entry_points())
    names = [ep.name for ep in eps]
    assert {"api", "passthrough"} <= set(names)
    builtin_flags = [ep.dist is not None and ep.dist.name == plugins_module.OWN_DISTRIBUTION for ep in eps]
    assert builtin_flags == sorted(builtin_flags, reverse=True)


# --- runtime.build_channels --------------------------------------------------------------------------------


@pytest.fixture
def services() -> ChannelServices:
    return ChannelServices(store=RedisStore(RedisSection()))  # does not connect until used


@pytest.fixture
def registry() -> PluginRegistry:
    return load_plugins(extra=[("echo", channel_plugin(EchoChannel))])


def build(
    raw: dict[str, Any], registry: PluginRegistry, services: ChannelServices, environ: dict[str, str] | None = None
) -> dict[str, Channel]:
    return build_channels(config_from_dict(raw, {}), registry, services, environ=environ or {})


def test_instance_name_defaults_to_its_type(registry: PluginRegistry, services: ChannelServices) -> None:
    channels = build({"channels": {"api": {"secret": "env:API_SECRET"}}}, registry, services, {"API_SECRET": "s" * 20})
    channel = channels["api"]
    assert isinstance(channel, ApiChannel)
    assert channel.name == "api"
    assert channel.settings.type == "api"
    assert channel.services is services


def test_env_secret_is_resolved_into_settings(registry: PluginRegistry, services: ChannelServices) -> None:
    raw = {
        "gateway": {"environment": "production"},
        "channels": {"partner-x": {"type": "api", "secret": "env:PARTNER_SECRET", "keep_raw": True}},
    }
    channels = build(raw, registry, services, {"PARTNER_SECRET": GOOD_SECRET})
    settings = channels["partner-x"].settings
    assert isinstance(settings, ApiSettings)
    assert settings.secret == GOOD_SECRET
    assert settings.keep_raw is True
    assert channels["partner-x"].name == "partner-x"


def test_missing_env_secret_names_the_channel_key(registry: PluginRegistry, services: ChannelServices) -> None:
    with pytest.raises(ConfigError) as raised:
        build({"channels": {"partner-x": {"type": "api", "secret": "env:PARTNER_SECRET"}}}, registry, services)
    assert str(raised.value).startswith("channels.partner-x.secret: ")
    assert "PARTNER_SECRET" in str(raised.value)


def test_unknown_channel_type_names_the_key_and_lists_available(
    registry: PluginRegistry, services: ChannelServices
) -> None:
    with pytest.raises(ConfigError) as raised:
        build({"channels": {"support": {"type": "carrier-pigeon"}}}, registry, services)
    message = str(raised.value)
    assert message.startswith("channels.support.type: ")
    assert "'carrier-pigeon'" in message
    available = message.split("(available: ", 1)[1].rstrip(")").split(", ")
    assert available == sorted(available) and {"api", "echo"} <= set(available)


def test_unknown_type_from_instance_name_default(registry: PluginRegistry, services: ChannelServices) -> None:
    with pytest.raises(ConfigError, match=r"^channels\.telegraph\.type: unknown channel type 'telegraph'"):
        build({"channels": {"telegraph": {}}}, registry, services)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"type": "api", "secret": "too-short"}, "channels.partner.secret"),
        ({"type": "api", "secret": GOOD_SECRET, "keep_raw": "yes"}, "channels.partner.keep_raw"),
        (
            {"type": "api", "secret": GOOD_SECRET, "rate_limit": {"rate": 0, "burst": 1}},
            "channels.partner.rate_limit.rate",
        ),
        ({"type": "echo", "token": "t", "retries": "many"}, "channels.partner.retries"),
    ],
)
def test_invalid_channel_settings_name_the_key(
    settings: dict[str, Any], key: str, registry: PluginRegistry, services: ChannelServices
) -> None:
    with pytest.raises(ConfigError) as raised:
        build({"channels": {"partner": settings}}, registry, services)
    assert str(raised.value).startswith(f"{key}: ")


def test_unknown_and_missing_channel_settings_name_the_instance(
    registry: PluginRegistry, services: ChannelServices
) -> None:
    with pytest.raises(ConfigError) as unknown:
        build({"channels": {"partner": {"type": "api", "secret": GOOD_SECRET, "sekret": "x"}}}, registry, services)
    assert str(unknown.value).startswith("channels.partner")
    assert "sekret" in str(unknown.value)
    with pytest.raises(ConfigError) as missing:
        build({"channels": {"partner": {"type": "api"}}}, registry, services)
    assert str(missing.value).startswith("channels.partner")
    assert "`secret`" in str(missing.value)


def test_inline_secret_is_rejected_in_production(registry: PluginRegistry, services: ChannelServices) -> None:
    raw = {"gateway": {"environment": "production"}, "channels": {"partner": {"type": "api", "secret": GOOD_SECRET}}}
    with pytest.raises(ConfigError) as raised:
        build(raw, registry, services)
    message = str(raised.value)
    assert message.startswith("channels.partner.secret: ")
    assert "env:NAME" in message
    assert GOOD_SECRET not in message  # the error must not leak the secret


def test_inline_secret_is_allowed_in_development(registry: PluginRegistry, services: ChannelServices) -> None:
    channels = build({"channels": {"partner": {"type": "api", "secret": GOOD_SECRET}}}, registry, services)
    assert isinstance(channels["partner"].settings, ApiSettings)
    assert channels["partner"].settings.secret == GOOD_SECRET


def test_disabled_channel_is_not_instantiated(registry: PluginRegistry, services: ChannelServices) -> None:
    raw = {
        "channels": {
            "on": {"type": "echo", "token": "env:T"},
            "off": {"type": "echo", "token": "env:T", "enabled": False},
        }
    }
    channels = build(raw, registry, services, {"T": "tok"})
    assert set(channels) == {"on"}
    assert isinstance(channels["on"], EchoChannel)
    assert msgspec.structs.asdict(channels["on"].settings)["token"] == "tok"


def test_several_instances_of_one_type(registry: PluginRegistry, services: ChannelServices) -> None:
    raw = {"channels": {"a": {"type": "api", "secret": "env:A"}, "b": {"type": "api", "secret": "env:B"}}}
    channels = build(raw, registry, services, {"A": "a" * 16, "B": "b" * 16})
    assert {name: ch.settings.secret for name, ch in channels.items()} == {"a": "a" * 16, "b": "b" * 16}  # type: ignore[attr-defined]
