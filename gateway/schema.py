"""JSON Schemas of the topic records, generated from the msgspec models (the single source), and
the AsyncAPI document of the topics (gateway/asyncapi/) that embeds them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from gateway.model import RECORD_TYPES

SCHEMA_FILES = {
    "gateway.message/v1": "message.v1.json",
    "gateway.event/v1": "event.v1.json",
    "gateway.dlq/v1": "dlq.v1.json",
    "gateway.conversation/v1": "conversation.v1.json",
    "gateway.audit/v1": "audit.v1.json",
}


def schema_urn(schema_id: str) -> str:
    """The ``$id`` of a record's JSON Schema (also its CloudEvents ``dataschema``)."""
    return f"urn:message-gateway:schema:{SCHEMA_FILES[schema_id].removesuffix('.json')}"


def schema_for(schema_id: str) -> dict[str, Any]:
    record_type = RECORD_TYPES[schema_id]
    schema: dict[str, Any] = msgspec.json.schema(record_type)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_urn(schema_id),
        "title": schema_id,
        **schema,
    }


def render(schema_id: str) -> str:
    return json.dumps(schema_for(schema_id), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for schema_id, filename in SCHEMA_FILES.items():
        path = directory / filename
        path.write_text(render(schema_id), encoding="utf-8")
        written.append(path)
    return written


ASYNCAPI_FILE = "asyncapi.yaml"


def export_asyncapi(directory: Path, markdown: Path | None = None) -> list[Path]:
    """Write the AsyncAPI document of the default configuration (no file, no environment: the
    same everywhere), and its Markdown view when ``markdown`` names a file."""
    from gateway.asyncapi import build, render
    from gateway.asyncapi.markdown import render as render_markdown
    from gateway.config import config_from_dict

    config = config_from_dict({}, {})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ASYNCAPI_FILE
    path.write_text(render(config), encoding="utf-8")
    written = [path]
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(render_markdown(build(config)), encoding="utf-8")
        written.append(markdown)
    return written
