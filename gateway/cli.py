"""The `gateway` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from gateway import __version__, heap
from gateway.config import Config, ConfigError, DispatchSection, WorkerSection, config_from_dict, load_config
from gateway.logs import configure_logging
from gateway.plugins import PluginError, PluginRegistry, load_plugins
from gateway.runtime import Runtime
from gateway.service import Roles, run_roles

if TYPE_CHECKING:
    from gateway.admin import AdminServer

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="GATEWAY_CONFIG",
    help="TOML configuration file (or GATEWAY_CONFIG).",
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(2)


def _prepare(config: Config) -> tuple[Config, PluginRegistry]:
    configure_logging(config.logging.level, config.logging.format)
    try:
        registry = load_plugins(fail_fast=config.fail_fast, disabled=config.plugins.disabled)
    except PluginError as exc:
        _fail(str(exc))
    return config, registry


def _load(config_path: Path | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        _fail(f"invalid configuration: {exc}")
        raise  # unreachable; keeps type checkers satisfied


async def _run_until_signal(
    runtime: Runtime, roles: Roles, on_ready: Any = None, admin: AdminServer | None = None
) -> None:
    from gateway.embedded import signal_names

    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signal_names():
        loop.add_signal_handler(sig, stop.set)
    if admin is not None:  # before the broker is reachable: liveness at once, readiness says why not
        await admin.start()
    try:
        main = asyncio.create_task(run_roles(runtime, roles, stop, ready))
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait([main, ready_wait], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            heap.freeze(runtime.config.gateway)  # models and plugins are loaded, connections open
            if on_ready is not None:
                announced = on_ready(runtime)
                if asyncio.iscoroutine(announced):
                    await announced
        ready_wait.cancel()
        await main
    finally:
        if admin is not None:
            await admin.stop()


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``[gateway] event_loop``; None is the standard asyncio loop."""
    if choice == "uvloop":
        with contextlib.suppress(ImportError):  # not installed on Windows: the standard loop
            import uvloop

            return uvloop.new_event_loop
    return None


def _run(config: Config, roles: Roles, on_ready: Any = None, admin: str | None = None) -> None:
    """Run ``roles`` until SIGINT/SIGTERM; ``admin``: the component ("worker", "dispatch") whose
    admin port (``[<admin>] admin_port``, 0: none) serves /metrics, /healthz and /readyz."""
    from gateway.admin import AdminError, AdminServer

    heap.configure(config.gateway)
    config, registry = _prepare(config)
    try:
        runtime = Runtime.create(config, registry)
    except ConfigError as exc:
        _fail(f"invalid configuration: {exc}")
    if runtime.tracing is not None:  # plugins using the OpenTelemetry API join the same traces
        runtime.tracing.install_global()
    server = None
    if admin is not None:
        section: WorkerSection | DispatchSection = config.worker if admin == "worker" else config.dispatch
        if section.admin_port:
            # The dispatcher never sends without its Redis claim, so Redis decides its readiness too.
            server = AdminServer(
                runtime, admin, host=section.admin_host, port=section.admin_port, require_redis=admin == "dispatch"
            )
    with asyncio.Runner(loop_factory=event_loop_factory(config.gateway.event_loop)) as runner:
        try:
            runner.run(_run_until_signal(runtime, roles, on_ready, server))
        except AdminError as exc:
            _fail(str(exc))


def _admin_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--admin-host``/``--admin-port``: override the section's settings (compose sets them here)."""
    command = click.option(
        "--admin-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Admin port (/metrics, /healthz, /readyz); 0: off.",
    )(command)
    return click.option("--admin-host", default=None, help="Address the admin port binds (default 127.0.0.1).")(command)


def _with_admin(section: WorkerSection | DispatchSection, host: str | None, port: int | None) -> None:
    if host is not None:
        section.admin_host = host
    if port is not None:
        section.admin_port = port


@click.group()
@click.version_option(__version__, prog_name="gateway")
def cli() -> None:
    """Multi-channel message gateway: webhooks, email and chat in; Kafka in the middle; replies out."""


@cli.command()
@CONFIG_OPTION
def serve(config_path: Path | None) -> None:
    """HTTP ingress: webhooks, health, readiness and metrics."""
    _run(_load(config_path), Roles(serve=True))


@cli.command()
@CONFIG_OPTION
@_admin_options
def worker(config_path: Path | None, admin_host: str | None, admin_port: int | None) -> None:
    """Run the processor chain on the inbound topic."""
    config = _load(config_path)
    _with_admin(config.worker, admin_host, admin_port)
    _run(config, Roles(worker=True), admin="worker")


@cli.command()
@CONFIG_OPTION
@_admin_options
def dispatch(config_path: Path | None, admin_host: str | None, admin_port: int | None) -> None:
    """Deliver outbound messages through their channel instance."""
    config = _load(config_path)
    _with_admin(config.dispatch, admin_host, admin_port)
    _run(config, Roles(dispatch=True), admin="dispatch")


DEV_SECRET_ENV = "GATEWAY_DEV_API_SECRET"  # noqa: S105 - a variable name, not a secret


@cli.command()
@CONFIG_OPTION
@click.option("--port", type=int, default=None, help="HTTP port (default from config, 8080).")
def dev(config_path: Path | None, port: int | None) -> None:
    """Everything in one process; starts embedded Kafka (Tansu) and Redis unless
    KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set."""
    from gateway.embedded import EmbeddedKafka, EmbeddedRedis, EmbeddedServer, EmbeddedUnavailable

    servers: list[EmbeddedServer] = []
    env = os.environ  # embedded addresses and the dev secret are visible to everything in-process
    try:
        if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            kafka = EmbeddedKafka()
            kafka.start()
            servers.append(kafka)
            env["KAFKA_BOOTSTRAP_SERVERS"] = kafka.address
        if not env.get("REDIS_URL"):
            redis = EmbeddedRedis()
            redis.start()
            servers.append(redis)
            env["REDIS_URL"] = redis.url
    except (EmbeddedUnavailable, RuntimeError) as exc:
        for server in servers:
            server.cleanup()
        _fail(str(exc))

    secret = env.get(DEV_SECRET_ENV) or secrets.token_hex(16)
    env[DEV_SECRET_ENV] = secret
    try:
        if config_path is not None:
            config = load_config(config_path, env)
        else:
            config = config_from_dict(_dev_config(env, port), env)
    except ConfigError as exc:
        for server in servers:
            server.cleanup()
        _fail(f"invalid configuration: {exc}")
        return
    if port is not None:
        config.http.port = port

    async def banner(runtime: Runtime) -> None:
        link = None
        if config_path is None:
            from gateway.console.auth import ConsoleAuth

            auth = ConsoleAuth(config.console, config.http, runtime.store)
            link = await auth.issue_one_time(DEV_CONSOLE_USER, "admin")
        click.echo(_dev_banner(config, servers, secret if config_path is None else None, link), err=True)

    try:
        # One process, one registry: the HTTP port's /metrics has every counter, so no admin ports.
        _run(config, Roles(serve=True, worker=True, dispatch=True), on_ready=banner)
    finally:
        for server in servers:
            server.cleanup()


DEV_CONSOLE_USER = "dev"
DEV_CONSOLE_HASH_ENV = "GATEWAY_DEV_CONSOLE_HASH"
DEV_CHAT_SECRET_ENV = "GATEWAY_DEV_CHAT_SECRET"  # noqa: S105 - a variable name, not a secret


def _dev_config(env: os._Environ[str], port: int | None) -> dict[str, Any]:
    """`gateway dev` without a file: the api instance, a web chat instance with its demo page, and
    the console for one admin whose password nobody knows (the banner's one-time link signs in)."""
    from argon2 import PasswordHasher

    env.setdefault(DEV_CONSOLE_HASH_ENV, PasswordHasher().hash(secrets.token_urlsafe(24)))
    env.setdefault(DEV_CHAT_SECRET_ENV, secrets.token_hex(16))
    http_port = port if port is not None else 8080
    return {
        "logging": {"format": "console"},
        "http": {"port": http_port},
        "kafka": {
            "partitions": 3,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "fetch_max_wait_ms": 50,
        },
        "channels": {
            "api": {"type": "api", "secret": f"env:{DEV_SECRET_ENV}"},
            "chat": {
                "type": "webchat",
                "token_secret": f"env:{DEV_CHAT_SECRET_ENV}",
                "allowed_origins": [f"http://127.0.0.1:{http_port}", f"http://localhost:{http_port}"],
            },
        },
        "console": {
            "enabled": True,
            "stats_interval_s": 2.0,
            "users": {DEV_CONSOLE_USER: {"password_hash": f"env:{DEV_CONSOLE_HASH_ENV}", "role": "admin"}},
        },
    }


def _dev_banner(config: Config, servers: list[Any], secret: str | None, console_link: str | None = None) -> str:
    from gateway.signing import hmac_sha256_hex

    base = f"http://{config.http.host}:{config.http.port}"
    lines = ["", "gateway dev is ready", f"  HTTP      {base}  (webhooks at {base}/webhooks/<instance>)"]
    embedded = {s.name: s.address for s in servers}
    lines.append(
        f"  Kafka     {config.kafka.bootstrap_servers}"
        + ("  (embedded Tansu, in memory)" if "tansu" in embedded else "")
    )
    lines.append(f"  Redis     {config.redis.url}" + ("  (embedded redis-server)" if "redis" in embedded else ""))
    lines.append(f"  Instances {', '.join(sorted(config.channels)) or 'none'}")
    if console_link is not None:
        lines += [
            "",
            "Operator console (this link signs you in once; restart for a new one):",
            f"  {base}/console/auth/one-time?token={console_link}",
            f"Web chat demo: {base}/chat/  (say hello, then watch it arrive on the console's Messages page)",
        ]
    if secret is not None:
        body = json.dumps(
            {
                "id": "demo-1",
                "sender": {"id": "customer-42", "name": "Ada"},
                "text": "Hello! My order #1234 has not arrived yet.",
            },
            separators=(",", ":"),
        )
        signature = "sha256=" + hmac_sha256_hex(secret, body.encode())
        lines += [
            "",
            "Post a message (the api instance's secret is in this process only):",
            f"  curl -sS {base}/webhooks/api -H 'Content-Type: application/json' \\",
            f"    -H 'X-Gateway-Signature: {signature}' \\",
            f"    --data {shlex.quote(body)}",
        ]
    exe = shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0].endswith("gateway") else "gateway"
    tail = f"KAFKA_BOOTSTRAP_SERVERS={config.kafka.bootstrap_servers} {exe} tail {config.gateway.topic_prefix}"
    lines += [
        "",
        "Watch the topics from another terminal:",
        f"  {tail}inbound.v1",
        f"  {tail}processed.v1",
        f"  {tail}conversations.v1",
        "",
        "Ctrl-C stops everything (embedded servers included).",
        "",
    ]
    return "\n".join(lines)


@cli.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(config_path: Path | None, as_json: bool) -> None:
    """List discovered plugins: name, version, source and what each registers."""
    config = _load(config_path)
    configure_logging("error", config.logging.format)
    try:
        registry = load_plugins(fail_fast=False, disabled=config.plugins.disabled)
    except PluginError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps([msgspec.to_builtins(p) for p in registry.plugins], indent=2))
        return
    for info in registry.plugins:
        status = f"FAILED: {info.error}" if info.error else "ok"
        click.echo(f"{info.name} {info.version} ({info.source}) {status}")
        if info.api:
            click.echo(f"  requires API: {info.api}")
        for kind in ("channels", "processors", "commands", "routes"):
            items = getattr(info, kind)
            if items:
                click.echo(f"  {kind}: {', '.join(items)}")
    if registry.failures:
        raise SystemExit(1)


@cli.group()
def schema() -> None:
    """JSON Schemas of the topic records and the AsyncAPI document of the topics."""


@schema.command("print")
@click.argument("schema_id", default="gateway.message/v1")
def schema_print(schema_id: str) -> None:
    """Print one schema (gateway.message/v1, gateway.event/v1, gateway.dlq/v1, gateway.conversation/v1)."""
    from gateway.schema import SCHEMA_FILES, render

    if schema_id not in SCHEMA_FILES:
        _fail(f"unknown schema {schema_id!r}; choose from {', '.join(SCHEMA_FILES)}")
    click.echo(render(schema_id), nl=False)


@schema.command("export")
@click.argument("directory", default="schemas", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the AsyncAPI document's Markdown view here (the repository's is docs/asyncapi.md).",
)
def schema_export(directory: Path, markdown: Path | None) -> None:
    """Write every schema and the AsyncAPI document of the default configuration to DIRECTORY
    (default: schemas/); the environment is ignored, so the files are the same everywhere."""
    from gateway.schema import export, export_asyncapi

    for path in [*export(directory), *export_asyncapi(directory, markdown)]:
        click.echo(str(path))


@schema.command("asyncapi")
@CONFIG_OPTION
@click.option("--format", "output", type=click.Choice(["yaml", "json", "markdown"]), default="yaml", show_default=True)
def schema_asyncapi(config_path: Path | None, output: str) -> None:
    """Print the AsyncAPI 3.0 document of the topics: records, keys, headers, Kafka bindings, who
    publishes and who reads. With --config, that deployment's topic prefix, partitions, groups and
    the topics its routing rules name (docs/consumers.md)."""
    from gateway.asyncapi import build, render
    from gateway.asyncapi.markdown import render as render_markdown

    config = _load(config_path)
    if output == "yaml":
        click.echo(render(config), nl=False)
    elif output == "json":
        click.echo(json.dumps(build(config), indent=2, ensure_ascii=False))
    else:
        click.echo(render_markdown(build(config)), nl=False)


@cli.command()
@CONFIG_OPTION
@click.argument("topic")
@click.option("--from-beginning/--from-end", default=True, help="Start at the oldest record (default).")
@click.option("--max", "limit", type=int, default=None, help="Stop after this many records.")
@click.option("--timeout", type=float, default=None, help="Stop after this many seconds without a record.")
def tail(config_path: Path | None, topic: str, from_beginning: bool, limit: int | None, timeout: float | None) -> None:
    """Print the records of TOPIC as JSON lines (key, headers, value). Joins no consumer group."""
    from gateway.bus.tail import tail_topic

    config = _load(config_path)
    configure_logging("warning", "console")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            tail_topic(
                config.kafka, topic, from_beginning=from_beginning, limit=limit, idle_timeout_s=timeout, out=click.echo
            )
        )


@cli.command()
@CONFIG_OPTION
@click.option(
    "--since", default="24h", show_default=True, help="From this time (2026-12-05T10:00:00Z, a date) or age (30m, 7d)."
)
@click.option("--until", default=None, help="Before this time or age (default: now).")
@click.option("--format", "output", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--instance", "instances", multiple=True, help="Only this channel instance (repeat for several).")
@click.option("--queue", "queues", multiple=True, help="Only conversations of this queue (repeat for several).")
def report(
    config_path: Path | None,
    since: str,
    until: str | None,
    output: str,
    instances: tuple[str, ...],
    queues: tuple[str, ...],
) -> None:
    """Conversation report: volumes, response times, SLA breaches, CSAT and sentiment (docs/report.md)."""
    from datetime import UTC, datetime

    from gateway.bus.topics import Topics
    from gateway.conversations.reader import TopicMissing
    from gateway.conversations.report import collect, empty_message, render
    from gateway.dlq.select import parse_time

    now = datetime.now(UTC).replace(microsecond=0)
    times: dict[str, datetime] = {"--since": now, "--until": now}
    for name, text in (("--since", since), ("--until", until)):
        try:
            times[name] = parse_time(text, now) if text is not None else now
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=name) from None
    start, end = times["--since"], times["--until"]
    if start >= end:
        raise click.BadParameter(
            f"{start:%Y-%m-%dT%H:%M:%SZ} is not before --until ({end:%Y-%m-%dT%H:%M:%SZ})", param_hint="--since"
        )
    config = _load(config_path)
    configure_logging("warning", "console")
    topic = Topics(config.gateway.topic_prefix).conversations
    try:
        result = asyncio.run(collect(config.kafka, topic, since=start, until=end, instances=instances, queues=queues))
    except TopicMissing:
        _fail(f"topic {topic} does not exist (check [gateway] topic_prefix)")
        return
    if result.events.undecodable:
        click.echo(f"warning: {result.events.undecodable} undecodable record(s) skipped", err=True)
    if not result.events.counted:
        if output == "table":
            click.echo(empty_message(result))
            return
        click.echo(empty_message(result), err=True)  # the (empty) report still goes to stdout for scripts
    click.echo(render(result, output), nl=False)


def _add_builtin_commands() -> None:
    from gateway.console.cli import console
    from gateway.dlq.cli import dlq

    cli.add_command(dlq)
    cli.add_command(console)


_add_builtin_commands()


def main() -> None:
    # Plugin commands join the group; failures were already reported by load_plugins.
    configure_logging("error", "console")
    try:
        registry = load_plugins(fail_fast=False)
    except PluginError:
        registry = PluginRegistry()
    for name, command in registry.commands.items():
        if name not in cli.commands:
            cli.add_command(command)
    cli()
