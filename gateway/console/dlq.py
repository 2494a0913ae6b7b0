"""The DLQ page: browse, inspect (payloads for operators and admins only) and replay, through the
same Replayer as `gateway dlq replay`, each record at most once."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway.console import views
from gateway.console.auth import problem
from gateway.console.core import Console, console_of, json_body
from gateway.dlq.replay import Replayer, payload_bytes
from gateway.dlq.select import DlqEntry, DlqFilter, find, select
from gateway.model import DlqStage

DLQ_STAGES: tuple[DlqStage, ...] = typing.get_args(DlqStage)


class _Replay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ids: list[str]
    force: bool = False


async def _replayed(console: Console, ids: list[str]) -> list[bool]:
    if not ids:
        return []
    store = console.runtime.store
    try:
        found = await store.client.mget([store.key("dlq", "replayed", i) for i in ids])
    except (RedisError, OSError):
        return [False] * len(ids)
    return [value == b"done" for value in found]


def _dlq_view(entry: DlqEntry, replayed: bool) -> dict[str, Any]:
    record = entry.record
    if record is None:
        return {
            "id": f"{entry.partition}:{entry.offset}",
            "undecodable": True,
            "reason": entry.error,
            "replayed": False,
        }
    return {
        "id": record.id,
        "at": views.iso(record.occurred_at),
        "stage": record.stage,
        "reason": record.reason,
        "channel": record.channel,
        "instance": record.instance,
        "component": record.component,
        "error_type": record.error_type,
        "source_topic": record.source_topic,
        "message_id": record.message_id,
        "replayed": replayed,
    }


async def _dlq_entries(console: Console, criteria: DlqFilter) -> list[DlqEntry]:
    return await select(console.runtime.config.kafka, console.runtime.topics.dlq, criteria)


async def dlq_list(request: web.Request) -> web.Response:
    console = console_of(request)
    await console.auth.require(request, "read")
    query = request.query
    criteria = DlqFilter(
        stages=frozenset(stage for stage in DLQ_STAGES if stage == query.get("stage")),
        instances=frozenset(filter(None, [query.get("instance", "")])),
        reason=query.get("reason", ""),
    )
    limit = min(max(int(query.get("limit", "200") or 200), 1), 1000)
    entries = await _dlq_entries(console, DlqFilter())
    size = len(entries)
    chosen = [e for e in entries if criteria.matches(e)]
    chosen.sort(key=lambda e: e.record.occurred_at if e.record else datetime.min.replace(tzinfo=UTC), reverse=True)
    chosen = chosen[:limit]
    replayed = await _replayed(console, [e.record.id for e in chosen if e.record])
    flags = iter(replayed)
    records = [_dlq_view(e, next(flags) if e.record else False) for e in chosen]
    return web.json_response({"size": size, "records": records})


async def dlq_show(request: web.Request) -> web.Response:
    console = console_of(request)
    session = await console.auth.require(request, "read")
    wanted = request.match_info["id"]
    entry = find(await _dlq_entries(console, DlqFilter(ids=frozenset([wanted]))), wanted)
    if entry is None or entry.record is None:
        raise problem(404, f"no DLQ record {wanted!r}")
    record = entry.record
    view = _dlq_view(entry, (await _replayed(console, [record.id]))[0])
    if session.may("unmask"):
        await console.record(request, "dlq_inspect", session, target=record.id)
        payload = payload_bytes(record)
        try:
            text: str | None = payload.decode("utf-8")
            view.update(payload=text, payload_encoding="utf-8")
        except UnicodeDecodeError:
            view.update(payload=record.payload, payload_encoding="base64")
        view["headers"] = record.headers
        view["payload_hidden"] = False
    else:
        view.update(payload=None, payload_encoding=None, headers=None, payload_hidden=True)
    return web.json_response(view)


async def dlq_replay(request: web.Request) -> web.Response:
    console = console_of(request)
    session = await console.auth.require(request, "replay", changes=True)
    body: _Replay = await json_body(request, _Replay)
    if not body.ids or len(body.ids) > 500:
        raise problem(400, "name 1 to 500 DLQ record ids")
    wanted = set(body.ids)
    entries = await _dlq_entries(console, DlqFilter(ids=frozenset(wanted)))
    by_id = {e.record.id: e.record for e in entries if e.record is not None}
    replayer = Replayer(console.runtime)
    results: list[dict[str, object]] = []
    for dlq_id in body.ids:
        record = by_id.get(dlq_id)
        if record is None:
            results.append(
                {
                    "dlq_id": dlq_id,
                    "outcome": "not_found",
                    "stage": None,
                    "target": None,
                    "detail": "",
                    "message_ids": [],
                }
            )
            continue
        result = await replayer.replay(record, force=body.force)
        results.append(result.to_dict())
        done = result.outcome in ("replayed", "duplicate")
        await console.record(
            request, "dlq_replay", session, target=dlq_id, outcome="ok" if done else "failed", detail=result.outcome
        )
    return web.json_response({"results": results})
