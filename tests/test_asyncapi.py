"""The AsyncAPI document: committed equal to the models, valid for two independent AsyncAPI tools,
true to what the producer sends, and complete for a deployment's own configuration.

The tools (tests/asyncapi/README.md): the official AsyncAPI 3.0.0 JSON Schema (vendored, always
checked) and the official parser ``@asyncapi/parser`` on Node.js, which ``scripts/test`` installs;
without it that test skips with the reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.asyncapi import build, render, routing_topics
from gateway.asyncapi.markdown import render as render_markdown
from gateway.bus.cloudevents import CloudEventsBinding
from gateway.bus.producer import Publisher, record_for
from gateway.bus.topics import Topics, ensure_topics
from gateway.config import Config, config_from_dict
from gateway.model import ConversationEvent, DeliveryEvent, DlqRecord, Message, encode
from gateway.schema import export_asyncapi
from gateway.tracing import child_traceparent
from tests.conftest import make_config, read_records
from tests.test_schema import full_message

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schemas" / "asyncapi.yaml"
MARKDOWN = ROOT / "docs" / "asyncapi.md"
CHECKS = ROOT / "tests" / "asyncapi"
OFFICIAL_SCHEMA = CHECKS / "asyncapi-3.0.0.schema.json"
PARSER = CHECKS / "node_modules" / "@asyncapi" / "parser"
NODE = shutil.which("node")
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")

DEPLOYMENT = {
    "gateway": {"topic_prefix": "acme.", "cloudevents": True},
    "kafka": {
        "bootstrap_servers": "kafka-1.internal:9093, kafka-2.internal:9093",
        "partitions": 12,
        "replication_factor": 3,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "gateway",
        "sasl_password": "env:KAFKA_PASSWORD",
        "extra_topics": ["acme.vip.v1", "acme.audit.v1"],
    },
    "worker": {"group_id": "acme-worker"},
    "processors": {
        "routing": {
            "rules": [
                {"name": "vip", "when": {"tier": "gold"}, "then": {"queue": "vip", "topic": "acme.vip.v1"}},
                {"name": "off", "enabled": False, "then": {"topic": "acme.never.v1"}},
                {"name": "legal", "when": {"keywords": ["lawyer"]}, "then": {"topic": "acme.legal.v1"}},
            ],
            "default": {"queue": "general"},
        }
    },
}


def default_document() -> dict[str, Any]:
    return build(config_from_dict({}, {}))


def deployment() -> Config:
    return config_from_dict(json.loads(json.dumps(DEPLOYMENT)), {"KAFKA_PASSWORD": "secret-password"})


def official_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(OFFICIAL_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(document)]


def pointer(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def payload_validator(document: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    """The message's payload schema with the document's components, so its refs resolve."""
    payload = document["components"]["messages"][message]["payload"]
    return jsonschema.Draft7Validator({**payload, "components": document["components"]})


# --- the committed files ----------------------------------------------------------------------


def test_committed_document_matches_the_models() -> None:
    assert COMMITTED.exists(), "schemas/asyncapi.yaml is missing: run `gateway schema export` and commit it"
    assert COMMITTED.read_text(encoding="utf-8") == render(config_from_dict({}, {})), (
        "schemas/asyncapi.yaml is out of date with gateway/model.py or gateway/asyncapi/: run "
        "`gateway schema export --markdown docs/asyncapi.md` and commit both files"
    )


def test_committed_markdown_view_matches_the_document() -> None:
    assert MARKDOWN.read_text(encoding="utf-8") == render_markdown(yaml.safe_load(COMMITTED.read_text("utf-8"))), (
        "docs/asyncapi.md is out of date: run `gateway schema export --markdown docs/asyncapi.md` and commit it"
    )


def test_export_ignores_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")
    [path, markdown] = export_asyncapi(tmp_path / "out", tmp_path / "view.md")
    assert path.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    assert markdown.read_text(encoding="utf-8") == MARKDOWN.read_text(encoding="utf-8")


# --- validity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "deployment"])
def test_document_is_valid_against_the_official_asyncapi_schema(which: str) -> None:
    document = default_document() if which == "default" else build(deployment())
    assert document["asyncapi"] == "3.0.0"
    assert official_errors(document) == []


def test_the_official_schema_check_is_not_vacuous() -> None:
    document = default_document()
    document["operations"]["worker_receive_inbound"]["action"] = "subscribe"  # AsyncAPI 2 wording
    document["channels"]["dlq"]["bindings"]["kafka"]["partitions"] = 0
    errors = official_errors(document)
    assert any("operations" in error and "worker_receive_inbound" in error for error in errors), errors
    assert any("'channels', 'dlq'" in error for error in errors), errors


@pytest.mark.parametrize("which", ["default", "deployment"])
def test_every_reference_resolves_and_operations_use_their_channels_messages(which: str) -> None:
    document = default_document() if which == "default" else build(deployment())
    for ref in refs(document):
        pointer(document, ref)  # KeyError names a dangling reference
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name


def _parse_with_official_parser(path: Path) -> dict[str, Any]:
    if NODE is None or not PARSER.exists():
        reason = (
            "the official AsyncAPI parser is not installed (needs node and "
            "`npm ci --prefix tests/asyncapi`, which scripts/test runs)"
        )
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    result = subprocess.run(
        [NODE, str(CHECKS / "parse.mjs"), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_the_official_asyncapi_parser_accepts_the_document(tmp_path: Path) -> None:
    committed = _parse_with_official_parser(COMMITTED)
    # Information-level notes (such as "3.1.0 exists") are fine; errors and warnings are not.
    assert [d for d in committed["diagnostics"] if d["severity"] <= 1] == []
    found = committed["document"]
    assert found["version"] == "3.0.0"
    assert found["channels"] == Topics().all()
    assert sorted(found["messages"]) == sorted(
        ["gateway.message/v1", "gateway.event/v1", "gateway.dlq/v1", "gateway.conversation/v1", "gateway.audit/v1"]
    )
    path = tmp_path / "deployment.yaml"
    path.write_text(render(deployment()), encoding="utf-8")
    parsed = _parse_with_official_parser(path)
    assert [d for d in parsed["diagnostics"] if d["severity"] <= 1] == []
    assert "acme.legal.v1" in parsed["document"]["channels"]


def test_the_official_parser_reports_a_broken_reference(tmp_path: Path) -> None:
    document = default_document()
    document["operations"]["worker_receive_inbound"]["channel"]["$ref"] = "#/channels/nowhere"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    parsed = _parse_with_official_parser(path)
    errors = [d for d in parsed["diagnostics"] if d["severity"] == 0]
    assert errors and any("nowhere" in json.dumps(d) for d in errors), parsed["diagnostics"]


def test_vendored_schema_is_the_one_the_specs_package_ships() -> None:
    shipped = CHECKS / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
    if not shipped.exists():
        if IN_CI:
            pytest.fail("CI=true but @asyncapi/specs is not installed (npm ci --prefix tests/asyncapi)")
        pytest.skip("@asyncapi/specs is not installed (npm ci --prefix tests/asyncapi, which scripts/test runs)")
    assert json.loads(shipped.read_text("utf-8")) == json.loads(OFFICIAL_SCHEMA.read_text("utf-8"))


# --- content ----------------------------------------------------------------------------------


def test_default_document_lists_the_six_topics_with_keys_and_who_reads_and_writes() -> None:
    document = default_document()
    channels = document["channels"]
    assert [c["address"] for c in channels.values()] == Topics().all()
    for channel in channels.values():
        assert channel["bindings"]["kafka"] == {
            "topic": channel["address"],
            "partitions": 6,
            "replicas": 1,
            "bindingVersion": "0.5.0",
        }
    operations = document["operations"]
    assert operations["worker_receive_inbound"]["bindings"]["kafka"]["groupId"]["const"] == "gateway-worker"
    assert operations["dispatch_receive_outbound"]["bindings"]["kafka"]["groupId"]["const"] == "gateway-dispatch"
    for name in ("downstream_receive_processed", "downstream_send_outbound", "downstream_receive_events"):
        assert name in operations
    messages = document["components"]["messages"]
    assert "conversation id" in messages["message"]["bindings"]["kafka"]["key"]["description"]
    assert "instance" in messages["dlqRecord"]["bindings"]["kafka"]["key"]["description"]
    headers = messages["message"]["headers"]
    assert headers["required"] == ["schema", "content-type", "channel", "instance", "traceparent", "record-id"]
    assert headers["properties"]["schema"]["const"] == "gateway.message/v1"
    assert document["servers"]["kafka"] == {
        "host": "127.0.0.1:9092",
        "protocol": "kafka",
        "description": "The Kafka cluster (`[kafka] bootstrap_servers`: 127.0.0.1:9092).",
    }


def test_a_deployments_document_has_its_prefix_routed_topics_groups_and_security() -> None:
    config = deployment()
    assert routing_topics(config) == {"acme.vip.v1", "acme.legal.v1"}
    document = build(config)
    addresses = [c["address"] for c in document["channels"].values()]
    assert addresses[:6] == Topics("acme.").all()
    # Routed topics carry processed messages; an extra topic no rule names carries nothing.
    assert addresses[6:] == ["acme.legal.v1", "acme.vip.v1", "acme.audit.v1"]
    assert "acme.never.v1" not in addresses  # its rule is disabled
    routed = document["channels"]["routed_acme_vip_v1"]
    assert routed["messages"] == {"message": {"$ref": "#/components/messages/message"}}
    assert routed["bindings"]["kafka"]["partitions"] == 12 and routed["bindings"]["kafka"]["replicas"] == 3
    assert document["operations"]["worker_send_routed_acme_vip_v1"]["action"] == "send"
    assert document["operations"]["downstream_receive_routed_acme_legal_v1"]["action"] == "receive"
    assert document["channels"]["routed_acme_audit_v1"]["messages"] == {}
    assert not any(op["channel"]["$ref"].endswith("audit_v1") for op in document["operations"].values())
    assert document["operations"]["worker_receive_inbound"]["bindings"]["kafka"]["groupId"]["const"] == "acme-worker"
    server = document["servers"]["kafka"]
    assert server["host"] == "kafka-1.internal:9093" and server["protocol"] == "kafka-secure"
    assert "kafka-2.internal:9093" in server["description"]
    assert document["components"]["securitySchemes"]["sasl"]["type"] == "scramSha512"
    assert "secret-password" not in render(config)
    # With CloudEvents on, the binding's headers are required.
    required = document["components"]["messages"]["deliveryEvent"]["headers"]["required"]
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_dataschema"} <= set(required)


def test_payload_schemas_accept_real_records_and_refuse_bad_ones() -> None:
    document = default_document()
    message = json.loads(encode(full_message()))
    assert list(payload_validator(document, "message").iter_errors(message)) == []
    event = json.loads(encode(DeliveryEvent(status="read", channel="api", instance="api", message_id="m")))
    assert list(payload_validator(document, "deliveryEvent").iter_errors(event)) == []
    message["direction"] = "sideways"
    assert list(payload_validator(document, "message").iter_errors(message)) != []


def _records() -> list[tuple[str, str, Message | DeliveryEvent | DlqRecord | ConversationEvent]]:
    message = full_message()
    return [
        ("message", "inbound", message),
        ("deliveryEvent", "events", DeliveryEvent(status="delivered", channel="api", instance="api", message_id="x")),
        ("dlqRecord", "dlq", DlqRecord(stage="process", reason="boom", instance="api", payload="{}")),
        (
            "conversationEvent",
            "conversations",
            ConversationEvent(type="opened", conversation_id="c-1", instance="api", channel="api"),
        ),
    ]


@pytest.mark.parametrize("cloudevents", [False, True], ids=["plain", "cloudevents"])
async def test_headers_on_the_broker_match_the_document(
    kafka_bootstrap: str, redis_url: str, cloudevents: bool
) -> None:
    """What the producer really writes, read back from the broker, fits the document of the same
    configuration (with CloudEvents on, its headers are required there)."""
    config = make_config(kafka_bootstrap, redis_url, gateway={"cloudevents": cloudevents})
    document = build(config)
    topics = Topics(config.gateway.topic_prefix)
    await ensure_topics(config.kafka, topics.all())
    binding = CloudEventsBinding.for_prefix(config.gateway.topic_prefix) if cloudevents else None
    publisher = Publisher(config.kafka, binding)
    records = _records()
    await publisher.start()
    try:
        for _, topic, record in records:
            key = getattr(record, "conversation_id", None) or getattr(record, "instance", None)
            outgoing = record_for(getattr(topics, topic), record, traceparent=child_traceparent(None), key=key)
            await publisher.send(outgoing)
    finally:
        await publisher.stop()
    for message, topic, record in records:
        [consumed] = await read_records(kafka_bootstrap, getattr(topics, topic), 1)
        headers = {name: value.decode() for name, value in consumed.headers}
        schema = document["components"]["messages"][message]["headers"]
        assert list(jsonschema.Draft7Validator(schema).iter_errors(headers)) == [], headers
        assert set(headers) <= set(schema["properties"]), "a header the document does not describe"
        assert any(name.startswith("ce_") for name in headers) is cloudevents
        assert record.id == headers["record-id"]
