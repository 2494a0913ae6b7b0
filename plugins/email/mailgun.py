"""Mailgun inbound routes: a route's ``forward("https://<host>/webhooks/<instance>")`` action posts
each received email here, either parsed into form fields or, when the URL ends in ``mime``, as the
raw MIME message in ``body-mime``.

Mailgun's signature is hex HMAC-SHA256(signing key, timestamp + token) and covers only those two
fields, not the body: what makes a captured post useless to an attacker is the timestamp window
plus using each token once. ``verify`` claims the token atomically (Redis SET NX), so of two
concurrent posts with one token exactly one gets through. The claim is pending (one minute) until
the message is stored (``accepted``: kept while the token's timestamp is inside the window) and
given back when the request fails (``failed``), so Mailgun's retry of a post we answered 503 is not
mistaken for a replay; after a crash the pending claim expires before Mailgun's first retry.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Annotated, Any

import msgspec
import structlog

from gateway.sdk import (
    AuthenticationError,
    Channel,
    IngestError,
    Message,
    ParseResult,
    PayloadError,
    SendResult,
    StoreUnavailable,
    WebhookRequest,
    constant_time_equals,
    hmac_sha256_hex,
    hookimpl,
)
from plugins.email.mime import message_from_mime
from plugins.email.outbound import EmailChannelSettings, remember_request_thread, send_email
from plugins.email.webforms import (
    Form,
    FormPart,
    HeaderList,
    ParsedEmail,
    UploadedFile,
    build_message,
    parse_form,
    raw_fields,
)

log = structlog.get_logger(__name__)

# Token claims live apart from channel instance names (which never contain "/"). Tokens are random
# and shared by every instance, as before: a token used on one instance is refused on all.
REPLAY_NAMESPACE = "mailgun/token"
# How long a claim stays pending while its request is being stored. Longer than a publish can take
# (kafka.publish_timeout_ms, 10 s by default); shorter than Mailgun's first retry (5 min), so after a
# crash between verify and accepted the retry of the same post is still accepted.
TOKEN_PENDING_S = 60
# Where tokens were remembered before they were claimed (once:mailgun:<token>); still consulted so a
# token used just before an upgrade stays refused. Can go once every such key has expired (18 h).
LEGACY_REPLAY_NAMESPACE = "mailgun"
_SIGNATURE_FIELDS = ("signature", "token", "timestamp")


class MailgunSettings(EmailChannelSettings, kw_only=True, forbid_unknown_fields=True):
    signing_key: Annotated[str, msgspec.Meta(min_length=1)]  # "HTTP webhook signing key" in Mailgun
    # How far the timestamp may be from now. Mailgun's retries (5 min to ~8 h later) repeat the original
    # timestamp and signature, so a shorter window would refuse the retry of a post we answered 503.
    replay_window_s: Annotated[int, msgspec.Meta(ge=1)] = 32400


class MailgunChannel(Channel):
    type = "mailgun"
    Settings = MailgunSettings
    secret_settings = frozenset({"signing_key", "smtp.password"})
    description = (
        "Mailgun inbound routes (forward action): parsed fields or raw MIME, signed timestamp+token; replies by SMTP."
    )

    settings: MailgunSettings

    async def verify(self, request: WebhookRequest) -> None:
        try:
            form = parse_form(request)
        except PayloadError as exc:  # the signature travels in the body: unreadable means unsigned
            raise AuthenticationError(f"cannot read Mailgun's signature fields: {exc}") from None
        timestamp, token, signature = form.text("timestamp"), form.text("token"), form.text("signature")
        if not timestamp or not token or not signature:
            raise AuthenticationError("missing timestamp, token or signature")
        expected = hmac_sha256_hex(self.settings.signing_key, (timestamp + token).encode())
        if not constant_time_equals(signature.strip().lower(), expected):
            raise AuthenticationError("signature does not match timestamp and token")
        try:
            age = time.time() - int(timestamp)
        except ValueError:
            raise AuthenticationError("timestamp is not a number") from None
        if abs(age) > self.settings.replay_window_s:
            raise AuthenticationError("timestamp outside the replay window")
        await self._claim_token(token, request.body)

    async def _claim_token(self, token: str, body: bytes) -> None:
        """Take the token, atomically: a second post with it (a replay, concurrent or later) gets 401.
        Redis down follows ``redis.on_failure``, like message dedup."""
        store = self.services.store
        try:
            claim = await store.claim_delivery(REPLAY_NAMESPACE, token, _claim_id(body), TOKEN_PENDING_S)
            # Not new: stored already, or being stored by a concurrent request right now.
            used = claim.status != "new" or await store.seen(LEGACY_REPLAY_NAMESPACE, token)
        except StoreUnavailable as exc:
            if store.settings.on_failure == "reject":
                raise IngestError(503, "store_unavailable", "replay store unavailable, retry later", 5) from exc
            log.warning("replay_check_skipped", instance=self.name, error=type(exc).__name__)
            return
        if used:
            raise AuthenticationError("token already used (replay)")

    async def accepted(self, request: WebhookRequest) -> None:
        """Confirm the token's claim once the message is stored, for as long as the token's timestamp
        stays inside the window (a token outside it is refused by the timestamp check anyway)."""
        form = parse_form(request)
        token, timestamp = form.text("token"), form.text("timestamp")
        if token and timestamp:
            remaining = int(timestamp) + self.settings.replay_window_s - time.time()
            ttl = max(1, math.ceil(remaining) + 1)
            try:
                await self.services.store.confirm_delivery(REPLAY_NAMESPACE, token, _claim_id(request.body), ttl)
            except StoreUnavailable as exc:  # stored already; failing the request now would only cause a retry
                log.warning("replay_token_not_recorded", instance=self.name, error=type(exc).__name__)
        await remember_request_thread(self, self.settings, request)  # threading details for replies

    async def failed(self, request: WebhookRequest) -> None:
        """Give the token back when its message was not stored: Mailgun retries the very same post."""
        token = parse_form(request).text("token")
        if not token:
            return
        try:
            await self.services.store.release_delivery(REPLAY_NAMESPACE, token, _claim_id(request.body))
        except StoreUnavailable as exc:  # the pending claim expires on its own (TOKEN_PENDING_S)
            log.warning("replay_token_not_released", instance=self.name, error=type(exc).__name__)

    async def send(self, message: Message) -> SendResult:
        return await send_email(self, self.settings, message)

    def parse(self, request: WebhookRequest) -> ParseResult:
        form = parse_form(request)
        recipients = [r.strip() for r in (form.text("recipient") or "").split(",") if r.strip()]
        envelope_from = form.text("sender")
        mime = form.fields.get("body-mime")
        if mime is not None:  # a route URL ending in "mime": Mailgun hands over the raw message
            message = message_from_mime(self, mime.data, envelope_to=recipients or None, envelope_from=envelope_from)
            if self.settings.keep_raw:
                message.raw = {**(message.raw or {}), "form": raw_fields(form, skip=(*_SIGNATURE_FIELDS, "body-mime"))}
        else:
            raw = raw_fields(form, skip=_SIGNATURE_FIELDS) if self.settings.keep_raw else None
            message = self._from_fields(form, recipients, envelope_from, raw)
        message.tags.labels["mailgun"] = {
            "recipient": form.text("recipient"),
            "sender": envelope_from,
            "format": "mime" if mime is not None else "parsed",
        }
        return ParseResult(messages=[message])

    def _from_fields(self, form: Form, recipients: list[str], envelope_from: str | None, raw: Any) -> Message:
        if "from" not in form and not envelope_from:
            raise PayloadError("missing required field: from (or sender)")
        headers = HeaderList.from_pairs(form.json("message-headers"))
        content_ids = form.json("content-id-map")
        cid_of: dict[str, str] = {}
        if isinstance(content_ids, dict):  # {"<cid>": "attachment-1"}: inline parts referenced by the HTML
            cid_of = {str(v): str(k).strip().strip("<>") for k, v in content_ids.items()}
        files = [
            UploadedFile(part, content_id=cid_of.get(part.name), inline=part.name in cid_of)
            for part in _mailgun_files(form)
        ]
        header = headers.get if headers is not None else (lambda _name: None)
        parsed = ParsedEmail(
            headers=headers or HeaderList(),
            from_=form.text("from") or header("From"),
            to=header("To") or form.text("To") or form.text("recipient"),
            cc=header("Cc") or form.text("Cc"),
            subject=form.text("subject"),
            text=form.text("body-plain"),
            html=form.text("body-html"),
            stripped_text=form.text("stripped-text"),
            stripped_signature=form.text("stripped-signature"),
            envelope_from=envelope_from,
            envelope_to=recipients,
            files=files,
        )
        message = build_message(self, parsed, raw)
        email = message.tags.labels["email"]
        if headers is None and "message-headers" in form:
            email["headers_unreadable"] = True
        count = form.text("attachment-count")
        if count and count.strip().isdigit() and int(count) != len(files):
            email["attachments_missing"] = int(count) - len(files)
        return message


def _claim_id(body: bytes) -> str:
    """Names a request's claim, so ``failed`` releases only its own pending claim. Derived from the
    body: only an identical post can share it, and that one is the same mail (deduplicated anyway)."""
    return hashlib.sha256(body).hexdigest()[:32]


def _mailgun_files(form: Form) -> list[FormPart]:
    """attachment-1..N in number order; other file parts too, so nothing uploaded goes unnoticed."""

    def order(part: FormPart) -> tuple[int, str]:
        suffix = part.name.rsplit("-", 1)[-1]
        return (int(suffix) if part.name.startswith("attachment-") and suffix.isdigit() else 1 << 30, part.name)

    return sorted((p for p in form.files if p.name != "body-mime"), key=order)


@hookimpl
def register_channels(register: Any) -> None:
    register(MailgunChannel)
