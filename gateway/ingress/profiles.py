"""`/api/v1/profiles`: link identities into one customer profile, read a profile, erase it.

The same API keys as the messages API (``authorize``). Links and merges made here are published as
``profile_linked`` / ``profile_merged`` conversation events on ``gateway.conversations.v1`` with
``conversation_id = "profile:<id>"`` and ``instance = channel = "api"`` (docs/profiles.md). The store
keeps the outcome of a link that changed something, keyed by the API key and the request, so a
client retrying after a 503 (the broker was down after the store changed) gets the same events
published again, with the same ids, instead of none.

Profiles only describe a customer: nothing here changes where replies go.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
import structlog
from aiohttp import web

from gateway.bus.producer import BrokerUnavailable, record_for
from gateway.channel import IngestError
from gateway.ingress.api import authorize, key_identity
from gateway.ingress.webhook import RUNTIME, error_response, read_body
from gateway.model import ConversationEvent
from gateway.profiles import (
    Identity,
    LinkOutcome,
    Profile,
    ProfileConflict,
    ProfileNotFound,
    derived_event_id,
    identity,
)
from gateway.profiles.identity import DEFAULT_SCOPES, EXTERNAL_ID, ID_TYPE, INSTANCE_SCOPE_PREFIX, SCOPE
from gateway.runtime import Runtime
from gateway.store.redis import StoreUnavailable
from gateway.tracing import record_traceparent

log = structlog.get_logger(__name__)

MAX_IDENTITIES = 50
PROFILE_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
ProfileId = Annotated[str, msgspec.Meta(pattern=PROFILE_ID.pattern)]


class IdentityIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``{"type", "value"}`` for global types (phone_e164, email, unionid, union_id), plus
    ``instance`` for a channel-native id on that instance or ``scope`` for any other namespace."""

    type: Annotated[str, msgspec.Meta(pattern=ID_TYPE.pattern)]
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    instance: str | None = None
    scope: Annotated[str, msgspec.Meta(pattern=SCOPE.pattern)] | None = None


class LinkRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    profile_id: ProfileId | None = None
    external_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    identities: Annotated[list[IdentityIn], msgspec.Meta(max_length=MAX_IDENTITIES)] = []


class IdentityOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    value: str
    scope: str
    instance: str | None = None


class ChannelSeen(msgspec.Struct, kw_only=True):
    instance: str
    last_seen_at: datetime


class ProfileOut(msgspec.Struct, kw_only=True):
    id: str
    created_at: datetime
    last_seen_at: datetime | None
    external_id: str | None
    identities: list[IdentityOut]
    channels: list[ChannelSeen]  # last message per channel instance
    merged_ids: list[str]  # profiles merged into this one (their ids still answer, with merged_into)
    merged_into: str | None = None  # the id asked for was merged into this profile


class LinkOut(ProfileOut, kw_only=True):
    created: bool
    linked: list[str]  # identities newly attached to a profile that existed before
    merged: list[str]  # profiles merged into this one by this request


class ErasedOut(msgspec.Struct, kw_only=True):
    deleted: bool
    profile_id: str
    identities: list[IdentityOut]
    merged_profile_ids: list[str]


_decoder = msgspec.json.Decoder(LinkRequest)


def _identity_out(item: Identity) -> IdentityOut:
    return IdentityOut(type=item.id_type, value=item.id_value, scope=item.scope, instance=item.instance)


def _profile_out(profile: Profile) -> ProfileOut:
    return ProfileOut(
        id=profile.id,
        created_at=profile.created_at,
        last_seen_at=profile.last_seen_at,
        external_id=profile.external_id,
        identities=[_identity_out(i) for i in profile.identities],
        channels=[ChannelSeen(instance=name, last_seen_at=when) for name, when in profile.seen.items()],
        merged_ids=profile.merged_ids,
        merged_into=profile.merged_into,
    )


def _json(struct: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(struct), status=status, content_type="application/json")


def _invalid(problem: str, path: str) -> web.Response:
    return error_response(422, f"invalid link: {problem} - at `{path}`")


def _identities(payload: LinkRequest, runtime: Runtime) -> list[Identity] | web.Response:
    """The request's identities, normalized, or the 422 naming the first offending field."""
    found: list[Identity] = []
    for n, item in enumerate(payload.identities):
        path = f"$.identities[{n}]"
        if item.type == EXTERNAL_ID:
            return _invalid("give the CRM id as the top-level external_id", f"{path}.type")
        if item.instance is not None and item.scope is not None:
            return _invalid("give instance or scope, not both", f"{path}.scope")
        if item.instance is not None and item.instance not in runtime.channels:
            return _invalid(f"no channel instance named {item.instance!r}", f"{path}.instance")
        if item.scope is not None and item.scope.startswith(INSTANCE_SCOPE_PREFIX):
            return _invalid("name a channel instance with instance, not scope", f"{path}.scope")
        if item.instance is None and item.scope is None and item.type not in DEFAULT_SCOPES:
            return _invalid(f"type {item.type!r} needs an instance or a scope", f"{path}.type")
        made = identity(item.type, item.value, scope=item.scope, instance=item.instance)
        if made is None:
            what = {"phone_e164": "an E.164 phone number (+ and country code)", "email": "an e-mail address"}
            return _invalid(f"not {what.get(item.type, 'a usable value')}", f"{path}.value")
        found.append(made)
    if payload.external_id is not None:
        external = identity(EXTERNAL_ID, payload.external_id)
        if external is None:
            return _invalid("not a usable id", "$.external_id")
        found.append(external)
    if not found:
        return _invalid("give identities or an external_id to link", "$.identities")
    return found


def _events(outcome: LinkOutcome, request_id: str) -> list[ConversationEvent]:
    common: dict[str, Any] = {
        "conversation_id": f"profile:{outcome.profile_id}",
        "instance": "api",
        "channel": "api",
        "profile_id": outcome.profile_id,
    }
    events = [
        ConversationEvent(
            id=derived_event_id("api", request_id, "profile_linked", item.key),
            type="profile_linked",
            identity=item.label,
            **common,
        )
        for item in outcome.linked
    ]
    events += [
        ConversationEvent(
            id=derived_event_id("api", request_id, "profile_merged", merged),
            type="profile_merged",
            merged_profile_id=merged,
            **common,
        )
        for merged in outcome.merged
    ]
    return events


async def link_profiles(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    given = authorize(request)
    if isinstance(given, web.Response):
        return given
    try:
        body = await read_body(request, runtime.config.api.max_body_bytes)
    except IngestError as exc:
        return error_response(exc.status, exc.detail)
    try:
        payload = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        return error_response(422, f"invalid link: {exc}")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return error_response(400, f"body is not valid UTF-8 JSON: {exc}")
    identities = _identities(payload, runtime)
    if isinstance(identities, web.Response):
        return identities
    # The same request from the same API key is the same link: its outcome (and events) repeat.
    request_id = hashlib.sha256(
        key_identity(given).encode() + b"\x00" + msgspec.json.encode(payload, order="sorted")
    ).hexdigest()
    retry_after = runtime.config.http.retry_after_s
    try:
        outcome = await runtime.profiles.link(identities, profile_id=payload.profile_id, outcome="api:" + request_id)
        profile = await runtime.profiles.get(outcome.profile_id)
    except ProfileNotFound:
        return error_response(404, f"no profile {payload.profile_id!r} (never existed, expired or erased)")
    except ProfileConflict as exc:
        return error_response(409, f"{exc}: two customers, not merged")
    except StoreUnavailable:
        return error_response(503, "profile store unavailable, retry later", retry_after)
    if profile is None:  # erased between the two calls
        return error_response(409, "the profile was erased while it was being linked; retry")
    traceparent = record_traceparent(runtime.tracing, request.headers.get("traceparent"))
    try:
        for event in _events(outcome, request_id):
            await runtime.publisher.send(
                record_for(runtime.topics.conversations, event, traceparent=traceparent, key=event.conversation_id)
            )
    except BrokerUnavailable:
        return error_response(503, "event store unavailable, retry the same request later", retry_after)
    log.info(
        "profile_linked_via_api",
        profile_id=profile.id,
        created=outcome.created,
        linked=len(outcome.linked),
        merged=outcome.merged,
    )
    answer = LinkOut(
        **msgspec.structs.asdict(_profile_out(profile)),
        created=outcome.created,
        linked=[i.label for i in outcome.linked],
        merged=outcome.merged,
    )
    return _json(answer)


async def get_profile(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    given = authorize(request)
    if isinstance(given, web.Response):
        return given
    profile_id = request.match_info["profile_id"]
    try:
        profile = await runtime.profiles.get(profile_id) if PROFILE_ID.match(profile_id) else None
    except StoreUnavailable:
        return error_response(503, "profile store unavailable, retry later", runtime.config.http.retry_after_s)
    if profile is None:
        return error_response(404, f"no profile {profile_id!r} (never existed, expired or erased)")
    return _json(_profile_out(profile))


async def delete_profile(request: web.Request) -> web.Response:
    """Erasure: the profile (or, for a merged id, the profile it became), its identities and index
    entries. Records already published to Kafka are not touched (docs/profiles.md, privacy)."""
    runtime = request.app[RUNTIME]
    given = authorize(request)
    if isinstance(given, web.Response):
        return given
    profile_id = request.match_info["profile_id"]
    try:
        erased = await runtime.profiles.delete(profile_id) if PROFILE_ID.match(profile_id) else None
    except StoreUnavailable:
        return error_response(503, "profile store unavailable, retry later", runtime.config.http.retry_after_s)
    if erased is None:
        return error_response(404, f"no profile {profile_id!r} (never existed, expired or erased)")
    log.info("profile_erased", profile_id=erased.profile_id, identities=len(erased.identities))
    answer = ErasedOut(
        deleted=True,
        profile_id=erased.profile_id,
        identities=[_identity_out(i) for i in erased.identities],
        merged_profile_ids=erased.merged_ids,
    )
    return _json(answer)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/profiles/link", link_profiles)
    app.router.add_get("/api/v1/profiles/{profile_id}", get_profile)
    app.router.add_delete("/api/v1/profiles/{profile_id}", delete_profile)
