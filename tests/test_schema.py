"""The committed JSON Schemas under schemas/ are generated from the models and must not drift."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.model import (
    Attachment,
    Content,
    DeliveryEvent,
    DlqRecord,
    Location,
    Message,
    Party,
    Postback,
    Reaction,
    Routing,
    Sentiment,
    Tags,
    encode,
)
from gateway.schema import SCHEMA_FILES, export, render, schema_for

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def full_message() -> Message:
    return Message(
        direction="inbound",
        channel="whatsapp",
        instance="support-wa",
        external_id="wamid.1",
        conversation_id="support-wa:+15551234567",
        sender=Party(id="+15551234567", name="Zoë", handle="+15551234567", attributes={"locale": "en"}),
        recipient=Party(id="15550001111"),
        sent_at=datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
        content=Content(
            type="media",
            text="broken 😡",
            subject="s",
            html="<p>h</p>",
            attachments=[
                Attachment(kind="image", url="https://x/a.jpg", size=1),
                Attachment(kind="file", media_id="m"),
            ],
            location=Location(latitude=1.5, longitude=-2.5),
            reaction=Reaction(emoji="👍", message_external_id="wamid.0"),
            postback=Postback(payload="P"),
            reply_to="wamid.0",
        ),
        language="en",
        tags=Tags(sentiment=Sentiment(label="negative", score=0.9, model="m"), labels={"vip": True, "n": [1]}),
        routing=Routing(rule="r", queue="q", priority="high", sla_due_at=datetime(2024, 5, 1, 9, tzinfo=UTC)),
        raw={"k": "v"},
    )


def load_schema(schema_id: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMAS_DIR / SCHEMA_FILES[schema_id]).read_text(encoding="utf-8"))
    return result


def validator(schema_id: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(schema_id))


def test_every_record_type_has_a_schema_file() -> None:
    assert set(SCHEMA_FILES) == {
        "gateway.message/v1",
        "gateway.event/v1",
        "gateway.dlq/v1",
        "gateway.conversation/v1",
        "gateway.audit/v1",
    }
    assert sorted(p.name for p in SCHEMAS_DIR.glob("*.json")) == sorted(SCHEMA_FILES.values())


@pytest.mark.parametrize("schema_id", sorted(SCHEMA_FILES))
def test_committed_schema_matches_the_models(schema_id: str) -> None:
    path = SCHEMAS_DIR / SCHEMA_FILES[schema_id]
    assert path.exists(), f"{path} is missing: run `gateway schema export` and commit the result"
    committed = path.read_text(encoding="utf-8")
    assert committed == render(schema_id), (
        f"{path.name} is out of date with gateway/model.py: run `gateway schema export` and commit schemas/"
    )


@pytest.mark.parametrize("schema_id", sorted(SCHEMA_FILES))
def test_schema_is_valid_draft_2020_12_with_id_and_title(schema_id: str) -> None:
    schema = load_schema(schema_id)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == schema_id
    assert schema["$id"] == f"urn:message-gateway:schema:{SCHEMA_FILES[schema_id].removesuffix('.json')}"


def test_export_writes_the_rendered_schemas(tmp_path: Path) -> None:
    written = export(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(SCHEMA_FILES.values())
    for schema_id, filename in SCHEMA_FILES.items():
        assert (tmp_path / "out" / filename).read_text(encoding="utf-8") == render(schema_id)


def test_render_is_deterministic_and_ends_with_newline() -> None:
    text = render("gateway.message/v1")
    assert text == render("gateway.message/v1")
    assert text.endswith("}\n")
    assert json.loads(text) == schema_for("gateway.message/v1")


def test_encoded_message_validates_against_the_committed_schema() -> None:
    instance = json.loads(encode(full_message()))
    errors = list(validator("gateway.message/v1").iter_errors(instance))
    assert errors == []


def test_encoded_event_and_dlq_records_validate() -> None:
    event = json.loads(encode(DeliveryEvent(status="delivered", channel="api", instance="api", external_id="x")))
    dlq = json.loads(encode(DlqRecord(stage="ingress", reason="bad", payload="\x00", payload_encoding="utf-8")))
    assert list(validator("gateway.event/v1").iter_errors(event)) == []
    assert list(validator("gateway.dlq/v1").iter_errors(dlq)) == []


@pytest.mark.parametrize(
    ("mutate", "path", "text"),
    [
        (lambda d: d.update(direction="sideways"), ["direction"], "sideways"),
        (lambda d: d.pop("sender"), [], "'sender' is a required property"),
        (lambda d: d.update(channel=""), ["channel"], "non-empty"),
        (lambda d: d["tags"]["sentiment"].update(score=1.5), ["tags", "sentiment", "score"], "maximum"),
        (lambda d: d["routing"].update(priority="asap"), ["routing", "priority"], "asap"),
        (lambda d: d["content"]["attachments"][0].update(size=-1), ["content", "attachments", 0, "size"], "minimum"),
        (lambda d: d.update(schema="gateway.message/v2"), ["schema"], "gateway.message/v1"),
    ],
    ids=["direction", "missing-sender", "empty-channel", "score", "priority", "attachment-size", "schema-id"],
)
def test_bad_message_fails_schema_validation(mutate: Any, path: list[Any], text: str) -> None:
    instance = json.loads(encode(full_message()))
    mutate(instance)
    error = jsonschema.exceptions.best_match(validator("gateway.message/v1").iter_errors(instance))
    assert error is not None, "the schema accepted an invalid record"
    assert list(error.absolute_path) == path
    assert text in error.message
