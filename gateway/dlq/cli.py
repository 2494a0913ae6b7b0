"""`gateway dlq list|show|replay`: look into the dead-letter topic and put records back after a fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import click
import msgspec

from gateway.dlq.replay import Replayer, ReplayResult, payload_bytes
from gateway.dlq.select import DlqEntry, DlqFilter, find, parse_time, select
from gateway.model import DlqStage

STAGES = list(get_args(DlqStage))
# As gateway.cli's (that module registers this one, so it is not imported from there).
CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="GATEWAY_CONFIG",
    help="TOML configuration file (or GATEWAY_CONFIG).",
)


def _time(_: click.Context, __: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The selection options every subcommand shares (repeat an option to accept several values)."""
    options = [
        click.option("--stage", "stages", multiple=True, type=click.Choice(STAGES), help="Where it failed."),
        click.option("--instance", "instances", multiple=True, help="Channel instance name."),
        click.option("--channel", "channels", multiple=True, help="Channel type."),
        click.option("--component", "components", multiple=True, help="The processor or adapter that failed."),
        click.option("--reason", default="", help="Text the reason contains (case-insensitive)."),
        click.option("--since", callback=_time, help="From this time (2026-12-05T10:00:00Z) or age (30m, 2h, 7d)."),
        click.option("--until", callback=_time, help="Before this time or age."),
        click.option("--id", "ids", multiple=True, help="A DLQ record id or the id of its message."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _criteria(options: dict[str, Any]) -> DlqFilter:
    return DlqFilter(
        stages=frozenset(options["stages"]),
        instances=frozenset(options["instances"]),
        channels=frozenset(options["channels"]),
        components=frozenset(options["components"]),
        reason=options["reason"],
        since=options["since"],
        until=options["until"],
        ids=frozenset(options["ids"]),
    )


def _config(config_path: Path | None) -> Any:
    from gateway.cli import _load  # the command group imports this module: no cycle at import time
    from gateway.logs import configure_logging

    config = _load(config_path)
    configure_logging("warning", "console")
    return config


def _entry_json(entry: DlqEntry) -> dict[str, Any]:
    if entry.record is None:
        return {"partition": entry.partition, "offset": entry.offset, "error": entry.error}
    return {"partition": entry.partition, "offset": entry.offset, **msgspec.to_builtins(entry.record)}


def _summary_line(entry: DlqEntry) -> str:
    record = entry.record
    if record is None:
        return f"(undecodable at partition {entry.partition} offset {entry.offset}: {entry.error})"
    reason = record.reason if len(record.reason) <= 80 else record.reason[:79] + "…"
    when = record.occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    where = record.instance or record.channel or "-"
    return f"{record.id}  {when}  {record.stage:<9}  {where:<16}  {record.component or '-':<12}  {reason}"


@click.group()
def dlq() -> None:
    """Inspect the dead-letter topic and replay records after fixing their cause."""


@dlq.command("list")
@CONFIG_OPTION
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record (payload included).")
@click.option("--limit", type=int, default=None, help="At most this many records (the oldest first).")
def list_records(config_path: Path | None, as_json: bool, limit: int | None, **options: Any) -> None:
    """List DLQ records, oldest first, with their id, time, stage, instance, component and reason."""
    config = _config(config_path)
    entries = asyncio.run(select(config.kafka, f"{config.gateway.topic_prefix}dlq.v1", _criteria(options)))
    for entry in entries[:limit]:
        click.echo(json.dumps(_entry_json(entry), ensure_ascii=False) if as_json else _summary_line(entry))
    if not as_json:
        click.echo(f"{len(entries)} record(s)", err=True)


@dlq.command("show")
@CONFIG_OPTION
@click.argument("record_id")
@click.option("--raw", is_flag=True, help="Print only the stored payload, as it was received (bytes).")
def show(config_path: Path | None, record_id: str, raw: bool) -> None:
    """Print one DLQ record (by its id or its message's id) as JSON, its payload decoded when it is JSON."""
    config = _config(config_path)
    entries = asyncio.run(select(config.kafka, f"{config.gateway.topic_prefix}dlq.v1", DlqFilter()))
    entry = find(entries, record_id)
    if entry is None or entry.record is None:
        click.echo(f"error: no DLQ record {record_id}", err=True)
        raise SystemExit(1)
    if raw:
        sys.stdout.buffer.write(payload_bytes(entry.record))
        return
    shown = _entry_json(entry)
    if entry.record.payload_encoding == "utf-8":
        with contextlib.suppress(ValueError):  # not JSON (a form, a mail): the text as it is
            shown["payload"] = json.loads(entry.record.payload)
    click.echo(json.dumps(shown, ensure_ascii=False, indent=2))


@dlq.command("replay")
@CONFIG_OPTION
@filter_options
@click.option("--all", "everything", is_flag=True, help="Replay every record (needed when no filter is given).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed, change nothing.")
@click.option("--force", is_flag=True, help="Replay records that were replayed before.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record with its outcome.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def replay(
    config_path: Path | None, everything: bool, dry_run: bool, force: bool, as_json: bool, yes: bool, **options: Any
) -> None:
    """Put DLQ records back: raw payloads through their channel again, process records back to
    inbound, dispatch records back to outbound, keeping their ids (dedup and send claims still
    prevent doubles). Each record is replayed once unless --force. Exit status 1 when a record is
    still failing or the broker/Redis was unavailable."""
    criteria = _criteria(options)
    if criteria.empty and not everything:
        raise click.UsageError("choose records with a filter (--stage, --instance, --id, ...) or pass --all")
    config = _config(config_path)
    results = asyncio.run(_replay(config, criteria, dry_run=dry_run, force=force, as_json=as_json, yes=yes))
    counts = Counter(result.outcome for result in results)
    click.echo(", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items())) or "nothing selected", err=True)
    if counts["still_failing"] or counts["unavailable"]:
        raise SystemExit(1)


async def _replay(
    config: Any, criteria: DlqFilter, *, dry_run: bool, force: bool, as_json: bool, yes: bool
) -> list[ReplayResult]:
    from gateway.cli import _prepare
    from gateway.logs import configure_logging
    from gateway.runtime import Runtime

    entries = await select(config.kafka, f"{config.gateway.topic_prefix}dlq.v1", criteria)
    records = [entry.record for entry in entries if entry.record is not None]
    if not records:
        return []
    ask = not (dry_run or yes or as_json) and sys.stdin.isatty()
    if ask and not click.confirm(f"Replay {len(records)} DLQ record(s)?", err=True):
        raise SystemExit(1)
    config, registry = _prepare(config)  # the channels, to parse raw payloads again
    configure_logging("warning", "console")  # stdout is for results
    runtime = Runtime.create(config, registry)
    results: list[ReplayResult] = []
    try:
        if not dry_run:
            await runtime.publisher.start()
        replayer = Replayer(runtime)
        with click.progressbar(records, label="replaying", file=sys.stderr, show_pos=True) as bar:
            for record in bar:
                results.append(await replayer.replay(record, dry_run=dry_run, force=force))
    finally:
        await runtime.close()
    for result in results:
        if as_json:
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            click.echo(f"{result.dlq_id}  {result.stage:<9}  {result.outcome:<16}  {result.target}  {result.detail}")
    return results
