"""`/api/v1/profiles`: link, read and erase profiles over HTTP, on the real broker and Redis."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.embedded import free_port
from gateway.ingress.app import create_app
from gateway.model import decode_conversation_event
from gateway.plugins import PluginRegistry
from gateway.profiles import identity
from gateway.runtime import Runtime
from tests.conftest import make_config, read_records, topic_size

API_KEY = "k" * 32
AUTH = {"Authorization": f"Bearer {API_KEY}"}
Client = TestClient[web.Request, web.Application]


def enable(runtime: Runtime) -> None:
    runtime.config.api.keys = [API_KEY]


async def link(client: Client, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await client.post("/api/v1/profiles/link", json=body, headers=AUTH)
    answer: dict[str, Any] = await response.json()
    assert response.status == status, answer
    return answer


async def test_link_creates_a_profile_and_get_answers_it(client: Client, runtime: Runtime) -> None:
    enable(runtime)
    body = {
        "external_id": "crm-123",
        "identities": [
            {"type": "phone_e164", "value": "+49 30 1234 5678"},
            {"type": "email", "value": "Ada@Example.com"},
            {"instance": "api", "type": "user_id", "value": "cust-1"},
        ],
    }
    created = await link(client, body)
    assert created["created"] is True and created["linked"] == [] and created["merged"] == []
    assert created["external_id"] == "crm-123" and created["merged_into"] is None
    assert {(i["type"], i["value"]) for i in created["identities"]} == {
        ("phone_e164", "+493012345678"),
        ("email", "ada@example.com"),
        ("user_id", "cust-1"),
        ("external_id", "crm-123"),
    }
    assert {"type": "user_id", "value": "cust-1", "scope": "instance:api", "instance": "api"} in created["identities"]
    response = await client.get(f"/api/v1/profiles/{created['id']}", headers=AUTH)
    assert response.status == 200
    profile = await response.json()
    assert profile["id"] == created["id"] and profile["identities"] == created["identities"]
    assert profile["channels"] == []  # no message seen yet: last-seen is per channel instance
    # A message of that customer arrives (as the identity processor resolves it): last seen on "api".
    user = identity("user_id", "cust-1", instance="api")
    assert user is not None
    await runtime.profiles.resolve([user], instance="api")
    seen = await (await client.get(f"/api/v1/profiles/{created['id']}", headers=AUTH)).json()
    assert [c["instance"] for c in seen["channels"]] == ["api"] and seen["last_seen_at"] is not None
    # Creating is not linking: no event.
    assert await topic_size(runtime.config.kafka.bootstrap_servers, runtime.topics.conversations) == 0


async def test_link_joining_two_profiles_merges_and_publishes(client: Client, runtime: Runtime) -> None:
    enable(runtime)
    first = await link(client, {"identities": [{"type": "phone_e164", "value": "+4930111111"}]})
    second = await link(client, {"identities": [{"type": "email", "value": "ada@example.com"}]})
    body = {
        "identities": [
            {"type": "email", "value": "ada@example.com"},
            {"type": "phone_e164", "value": "+4930111111"},
            {"type": "unionid", "value": "o6_bmasdasdsad6_2sgVt7hMZOPfL"},
        ]
    }
    merged = await link(client, body)
    assert merged["id"] == first["id"] and merged["merged"] == [second["id"]]  # the older profile is kept
    assert merged["linked"] == ["unionid:o6_bmasdasdsad6_2sgVt7hMZOPfL"] and merged["merged_ids"] == [second["id"]]
    bootstrap = runtime.config.kafka.bootstrap_servers
    records = await read_records(bootstrap, runtime.topics.conversations, 2)
    events = {e.type: e for e in (decode_conversation_event(r.value) for r in records)}
    assert events["profile_merged"].profile_id == first["id"]
    assert events["profile_merged"].merged_profile_id == second["id"]
    assert events["profile_linked"].identity == "unionid:o6_bmasdasdsad6_2sgVt7hMZOPfL"
    for event in events.values():
        assert (event.conversation_id, event.instance, event.channel) == (f"profile:{first['id']}", "api", "api")
    assert all(r.key == f"profile:{first['id']}".encode() for r in records)

    # The merged id still answers: with the survivor and merged_into.
    old = await (await client.get(f"/api/v1/profiles/{second['id']}", headers=AUTH)).json()
    assert old["id"] == first["id"] and old["merged_into"] == first["id"]

    # The same request again (a client retrying after a 503): the same events, same ids, again.
    assert (await link(client, body))["id"] == first["id"]
    again = await read_records(bootstrap, runtime.topics.conversations, 4)
    assert sorted(decode_conversation_event(r.value).id for r in again) == sorted([e.id for e in events.values()] * 2)


async def test_link_to_a_profile_and_external_id_conflicts(client: Client, runtime: Runtime) -> None:
    enable(runtime)
    crm = await link(client, {"external_id": "crm-1", "identities": [{"type": "phone_e164", "value": "+4930111111"}]})
    extra = {"profile_id": crm["id"], "identities": [{"instance": "api", "type": "user_id", "value": "c-9"}]}
    linked = await link(client, extra)
    assert linked["id"] == crm["id"] and linked["linked"] == ["instance:api/user_id:c-9"]
    other = await link(client, {"external_id": "crm-2", "identities": [{"type": "email", "value": "b@example.com"}]})
    conflict = await link(client, {"profile_id": crm["id"], "external_id": "crm-2"}, status=409)
    assert "different external ids" in conflict["error"]
    missing = await link(client, {"profile_id": "0190-nope", "external_id": "crm-3"}, status=404)
    assert "0190-nope" in missing["error"]
    profile = await (await client.get(f"/api/v1/profiles/{other['id']}", headers=AUTH)).json()
    assert profile["external_id"] == "crm-2" and profile["merged_into"] is None  # untouched


async def test_validation_names_the_field_and_auth_is_required(client: Client, runtime: Runtime) -> None:
    assert (await client.post("/api/v1/profiles/link", json={"external_id": "x"}, headers=AUTH)).status == 403
    enable(runtime)
    assert (await client.post("/api/v1/profiles/link", json={"external_id": "x"})).status == 401
    assert (await client.get("/api/v1/profiles/x", headers={"X-API-Key": "w" * 32})).status == 401
    cases: list[tuple[dict[str, Any], str]] = [
        ({"identities": [{"type": "phone_e164", "value": "030 1234567"}]}, "$.identities[0].value"),
        ({"identities": [{"type": "email", "value": "ada"}]}, "$.identities[0].value"),
        ({"identities": [{"instance": "gone", "type": "user_id", "value": "1"}]}, "$.identities[0].instance"),
        ({"identities": [{"type": "user_id", "value": "1"}]}, "$.identities[0].type"),
        ({"identities": [{"type": "Phone!", "value": "1"}]}, "$.identities[0].type"),
        ({"identities": [{"type": "external_id", "value": "1"}]}, "$.identities[0].type"),
        ({"identities": [{"type": "staff_id", "value": "1", "scope": "instance:api"}]}, "$.identities[0].scope"),
        ({"identities": []}, "$.identities"),
        ({"identities": [{"type": "email", "value": "a@b.co"}], "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        answer = await link(client, body, status=422)
        assert field in answer["error"], (body, answer)
    assert (await client.post("/api/v1/profiles/link", data=b"{", headers=AUTH)).status == 400
    assert await topic_size(runtime.config.kafka.bootstrap_servers, runtime.topics.conversations) == 0


async def test_erasure_removes_the_profile_and_answers_what_was_deleted(client: Client, runtime: Runtime) -> None:
    enable(runtime)
    first = await link(client, {"identities": [{"type": "phone_e164", "value": "+4930111111"}]})
    second = await link(client, {"identities": [{"type": "email", "value": "ada@example.com"}]})
    body = {
        "identities": [{"type": "phone_e164", "value": "+4930111111"}, {"type": "email", "value": "ada@example.com"}]
    }
    await link(client, body)
    response = await client.delete(f"/api/v1/profiles/{second['id']}", headers=AUTH)  # the merged id: same person
    assert response.status == 200
    erased = await response.json()
    assert erased["deleted"] is True and erased["profile_id"] == first["id"]
    assert erased["merged_profile_ids"] == [second["id"]]
    assert {(i["type"], i["value"]) for i in erased["identities"]} == {
        ("phone_e164", "+4930111111"),
        ("email", "ada@example.com"),
    }
    for profile_id in (first["id"], second["id"]):
        assert (await client.get(f"/api/v1/profiles/{profile_id}", headers=AUTH)).status == 404
        assert (await client.delete(f"/api/v1/profiles/{profile_id}", headers=AUTH)).status == 404
    assert [k async for k in runtime.store.client.scan_iter(match=f"{runtime.profiles.base}*")] == []
    # Linking the same identities again starts a new profile (and the stored outcome is gone too).
    fresh = await link(client, body)
    assert fresh["created"] is True and fresh["id"] not in (first["id"], second["id"])


async def test_store_down_is_503_with_retry_after(
    kafka_bootstrap: str, registry: PluginRegistry, aiohttp_client: Any
) -> None:
    config = make_config(kafka_bootstrap, f"redis://127.0.0.1:{free_port()}/0", api={"keys": [API_KEY]})
    config.redis.socket_timeout_s = 0.2
    offline = Runtime.create(config, registry)  # its Redis does not answer
    try:
        client = await aiohttp_client(create_app(offline))
        for method, path, body in (
            ("GET", "/api/v1/profiles/0190abcd", None),
            ("DELETE", "/api/v1/profiles/0190abcd", None),
            ("POST", "/api/v1/profiles/link", {"identities": [{"type": "phone_e164", "value": "+4930111111"}]}),
        ):
            response = await client.request(method, path, json=body, headers=AUTH)
            assert response.status == 503 and "Retry-After" in response.headers, (method, path)
    finally:
        await offline.close()
