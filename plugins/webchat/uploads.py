"""Files visitors upload: kept in Redis with a TTL, bound to the visitor, within the instance's quota.

``save`` stores a file through one script that frees the quota of expired files and refuses (413
``quota_exceeded``, with the time until enough space frees up) when the instance's stored bytes
would exceed ``upload_quota_bytes``; see ``limits.py``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import mimetypes
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from plugins.webchat.limits import Limiter

if TYPE_CHECKING:
    from plugins.webchat.channel import Session, WebchatSettings

log = structlog.get_logger(__name__)

_STORE_ERRORS = (RedisError, OSError)

DEFAULT_UPLOAD_TYPES = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "audio/*",
    "video/*",
]
# Served inline by GET /chat/files/<id>; everything else is a download (no script can run).
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"})


@dataclass(frozen=True, slots=True)
class StoredUpload:
    upload_id: str
    visitor_id: str
    filename: str
    mime_type: str
    size: int
    kind: str
    data: bytes = b""


class UploadRejected(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def attachment_kind(mime_type: str) -> str:
    major = mime_type.split("/", 1)[0]
    if major in ("image", "audio", "video"):
        return major
    if mime_type in ("application/pdf", "application/msword", "text/plain", "text/csv") or mime_type.startswith(
        "application/vnd.openxmlformats-officedocument."
    ):
        return "document"
    return "file"


def clean_filename(name: str | None) -> str:
    """Keep the base name, printable characters only, at most 200 characters. Some clients
    percent-encode non-ASCII names (aiohttp does); browsers send UTF-8: accept both."""
    name = name or ""
    if name.isascii() and "%" in name:
        with contextlib.suppress(UnicodeDecodeError):
            decoded = unquote(name, errors="strict")
            name = decoded if not decoded.isascii() else name
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip(" .")
    return base[:200] or "upload"


class Uploads:
    """The upload operations of one webchat instance; ``key_of`` builds the instance's Redis keys."""

    def __init__(
        self,
        name: str,
        settings: WebchatSettings,
        client: aioredis.Redis,
        limiter: Limiter,
        key_of: Callable[..., str],
    ) -> None:
        self.name = name
        self._settings = settings
        self._client = client
        self._limiter = limiter
        self._key_of = key_of

    def file_url(self, upload_id: str) -> str:
        base = (self._settings.public_url or "").rstrip("/")
        return f"{base}/chat/files/{upload_id}?instance={quote(self.name, safe='')}"

    def upload_type(self, filename: str, declared: str | None) -> str:
        """The declared type, or a guess from the name; UploadRejected (415) unless allowed."""
        mime = (declared or "").split(";", 1)[0].strip().lower()
        if not mime or mime == "application/octet-stream":
            mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if not any(fnmatch.fnmatchcase(mime, pattern.lower()) for pattern in self._settings.upload_types):
            raise UploadRejected(415, "unsupported_type", f"files of type {mime} are not accepted")
        return mime

    async def save(self, session: Session, filename: str, mime_type: str, data: bytes) -> dict[str, Any]:
        if len(data) > self._settings.max_upload_bytes:
            raise UploadRejected(413, "too_large", f"file larger than {self._settings.max_upload_bytes} bytes")
        if not data:
            raise UploadRejected(400, "invalid", "empty file")
        upload_id = secrets.token_urlsafe(18)
        kind = attachment_kind(mime_type)
        key = self._key_of("upload", upload_id)
        fields: dict[str, str | bytes] = {
            "visitor": session.visitor_id,
            "filename": filename,
            "mime": mime_type,
            "size": str(len(data)),
            "kind": kind,
            "data": data,
        }
        try:
            decision = await self._limiter.store_upload(
                (key, self._key_of("uploads"), self._key_of("upload-bytes")),
                upload_id,
                fields,
                size=len(data),
                quota=self._settings.upload_quota_bytes,
                ttl_s=self._settings.upload_ttl_s,
            )
        except _STORE_ERRORS as exc:
            raise UploadRejected(503, "unavailable", "file store unavailable, retry later", 5) from exc
        if not decision.stored:
            log.info("webchat_upload_quota_exceeded", instance=self.name, size=len(data), used=decision.used_bytes)
            raise UploadRejected(
                413,
                "quota_exceeded",
                "the chat's file storage is full, try again later",
                max(1.0, decision.retry_after_s),
            )
        log.info("webchat_upload", instance=self.name, size=len(data), kind=kind)
        return {
            "upload_id": upload_id,
            "url": self.file_url(upload_id),
            "filename": filename,
            "mime_type": mime_type,
            "size": len(data),
            "kind": kind,
        }

    async def load(self, session: Session, upload_id: str, *, with_data: bool) -> StoredUpload | None:
        """An upload of this visitor (None for unknown, expired, or somebody else's)."""
        names = ["visitor", "filename", "mime", "size", "kind", *(["data"] if with_data else [])]
        try:
            values = await self._client.hmget(self._key_of("upload", upload_id), names)
        except _STORE_ERRORS as exc:
            raise UploadRejected(503, "unavailable", "file store unavailable, retry later", 5) from exc
        raw = [v.encode() if isinstance(v, str) else v for v in values]
        if raw[0] is None or raw[0].decode() != session.visitor_id or any(v is None for v in raw):
            return None  # unknown, expired, somebody else's, or half-written
        fields = [v or b"" for v in raw]
        return StoredUpload(
            upload_id=upload_id,
            visitor_id=session.visitor_id,
            filename=fields[1].decode("utf-8", "replace"),
            mime_type=fields[2].decode(),
            size=int(fields[3]),
            kind=fields[4].decode(),
            data=fields[5] if with_data else b"",
        )
