"""Build the form posts Mailgun and SendGrid send from the JSON field specs in tests/fixtures.

A spec is ``{"content_type": "multipart/form-data" | "application/x-www-form-urlencoded",
"fields": {name: value}, "files": [...]}``. A field value is a string (sent as UTF-8) or
``{"text": ..., "charset": "gbk"}`` (sent encoded in that charset, as SendGrid does for the fields
its ``charsets`` map names). A file is ``{"field", "filename", "content_type"}`` plus ``"text"``
or ``"base64"`` content, optionally ``"headers"`` for extra part headers.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

FIXTURES = Path(__file__).parent / "fixtures"


def load_spec(provider: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((FIXTURES / provider / f"{name}.json").read_text("utf-8"))
    return spec


def field_bytes(value: Any) -> bytes:
    if isinstance(value, dict):
        return str(value["text"]).encode(value.get("charset", "utf-8"))
    return str(value).encode("utf-8")


def file_bytes(spec: dict[str, Any]) -> bytes:
    if "base64" in spec:
        return base64.b64decode(spec["base64"])
    return str(spec.get("text", "")).encode("utf-8")


def multipart(
    fields: dict[str, Any], files: list[dict[str, Any]] | None = None, boundary: str | None = None
) -> tuple[bytes, str]:
    """A multipart/form-data body as providers send it (CRLF lines, quoted names, raw UTF-8)."""
    boundary = boundary or f"----mgsg{uuid.uuid4().hex}"
    out = bytearray()
    for name, value in fields.items():
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += field_bytes(value) + b"\r\n"
    for item in files or []:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{item["field"]}"'
        if item.get("filename") is not None:
            disposition += f'; filename="{item["filename"]}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        out += f"Content-Type: {item.get('content_type', 'application/octet-stream')}\r\n".encode()
        for key, value in item.get("headers", {}).items():
            out += f"{key}: {value}\r\n".encode()
        out += b"\r\n" + file_bytes(item) + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def encode_spec(spec: dict[str, Any], **extra_fields: Any) -> tuple[bytes, str]:
    """The body and Content-Type header for a spec, with extra fields (signatures) appended."""
    fields = {**spec.get("fields", {}), **extra_fields}
    if spec.get("content_type") == "application/x-www-form-urlencoded":
        pairs = [(name, field_bytes(value)) for name, value in fields.items()]
        return urlencode(pairs).encode(), "application/x-www-form-urlencoded"
    return multipart(fields, spec.get("files", []))
