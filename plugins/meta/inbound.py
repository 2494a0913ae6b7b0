"""Receiving from Meta: the webhook handshake, the ``X-Hub-Signature-256`` check and the parsing
of WhatsApp ``entry[].changes[]`` and Messenger / Instagram ``entry[].messaging[]`` batches into
gateway messages and delivery events.

The classes here are mixins of the channels in :mod:`plugins.meta.channel`; they hold the inbound
half of each channel, :mod:`plugins.meta.outbound` the sending half.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import msgspec
import structlog

from gateway.sdk import (
    ATTR_PHONE_E164,
    Attachment,
    AuthenticationError,
    Channel,
    Content,
    DeliveryError,
    DeliveryEvent,
    HttpReply,
    Location,
    Message,
    ParseResult,
    Party,
    PayloadError,
    Postback,
    Reaction,
    WebhookRequest,
    constant_time_equals,
    decode_json,
    normalize_e164,
    verify_prefixed_hex,
)
from plugins.meta.payloads import (
    _RETRYABLE_WA_ERRORS,
    MxAttachmentPayload,
    MxEntry,
    MxEvent,
    MxMessage,
    MxPayload,
    WaEntry,
    WaMedia,
    WaMessage,
    WaPayload,
    WaReply,
    WaStatus,
    WaValue,
    _compact,
    _Envelope,
)
from plugins.meta.settings import MetaSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")

SIGNATURE_HEADER = "X-Hub-Signature-256"

_MX_KNOWN_KEYS = frozenset(
    {"sender", "recipient", "timestamp", "message", "postback", "reaction", "delivery", "read", "referral"}
)
_WA_STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}
_WA_MEDIA_KINDS = {"image": "image", "audio": "audio", "video": "video", "document": "document", "sticker": "sticker"}
_MX_ATTACHMENT_KINDS = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "file": "file",
    "ig_reel": "video",
    "reel": "video",
}


def _from_unix(value: str | int | float | None, *, millis: bool) -> datetime | None:
    """Meta's timestamps: WhatsApp sends unix seconds as strings, Messenger milliseconds as ints."""
    if value is None:
        return None
    try:
        number = float(value)
        return datetime.fromtimestamp(number / 1000 if millis else number, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _choice_title(reply: WaReply) -> str | None:
    """The title of the picked button or row. A list row shows at most 24 characters, so the
    gateway sends a longer choice title shortened ("…") and spelled out in the description: the
    description is then the better title."""
    title, description = reply.title, reply.description
    if title and description and title.endswith("…") and description.startswith(title[:-1]):
        return description
    return title


def _phone_handle(number: str | None) -> str | None:
    """What a person would type: WhatsApp numbers come as bare digits, in E.164 without the plus."""
    if not number:
        return None
    return f"+{number}" if number.isdigit() else number


def _phone(wa_id: str) -> dict[str, str]:
    """The strong identity of a WhatsApp sender: its wa_id is the phone number in E.164 without the
    plus, when it is a number at all (not a business-scoped user id) and a valid one (the legacy
    Mexican "521..." form is not: such senders are not linked by phone, see docs/profiles.md)."""
    number = normalize_e164(f"+{wa_id}") if wa_id.isdigit() else None
    return {ATTR_PHONE_E164: number} if number else {}


def _decode(body: bytes | msgspec.Raw, kind: type[T], what: str) -> T:
    return decode_json(body, kind, what=what)


class MetaInbound(Channel):
    """What every Meta product shares on the way in: handshake, signature, envelope check."""

    object_type: ClassVar[str]

    settings: MetaSettings

    async def handshake(self, request: WebhookRequest) -> HttpReply:
        """Meta's subscription check: echo hub.challenge only to the holder of the verify token."""
        mode = request.query.get("hub.mode")
        token = request.query.get("hub.verify_token")
        if mode != "subscribe" or not constant_time_equals(token, self.settings.verify_token):
            return HttpReply(status=403, body="verification failed")
        challenge = request.query.get("hub.challenge")
        if not challenge:
            return HttpReply(status=400, body="missing hub.challenge")
        return HttpReply(status=200, body=challenge, content_type="text/plain")

    async def verify(self, request: WebhookRequest) -> None:
        header = request.headers.get(SIGNATURE_HEADER)
        if header is None:
            raise AuthenticationError(f"missing {SIGNATURE_HEADER} header")
        if not verify_prefixed_hex(header, self.settings.app_secret, request.body):
            raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the body")

    def parse(self, request: WebhookRequest) -> ParseResult:
        if request.content_type not in ("application/json", ""):
            raise PayloadError(f"expected application/json, got {request.content_type}")
        envelope = _decode(request.body, _Envelope, "webhook")
        if envelope.object != self.object_type:
            raise PayloadError(f"object {envelope.object!r} is not {self.object_type!r} (wrong product subscribed?)")
        tree: dict[str, Any] = decode_json(request.body)  # for raw copies and unknown event kinds
        return self._parse(request.body, tree)

    def _parse(self, body: bytes, tree: dict[str, Any]) -> ParseResult:
        raise NotImplementedError


class WhatsAppInbound(MetaInbound):
    """WhatsApp Cloud API webhooks: messages and delivery statuses in ``entry[].changes[].value``."""

    def _parse(self, body: bytes, tree: dict[str, Any]) -> ParseResult:
        payload = _decode(body, WaPayload, "WhatsApp webhook")
        raw = tree if self.settings.keep_raw else None
        result = ParseResult()
        for e, entry in enumerate(payload.entry):
            for c, change in enumerate(entry.changes):
                if change.field != "messages" or not change.value:
                    log.info("meta_change_ignored", instance=self.name, field=change.field)
                    continue
                value = _decode(change.value, WaValue, f"WhatsApp value at entry[{e}].changes[{c}]")
                names = {ct.wa_id: ct.profile.name for ct in value.contacts if ct.wa_id and ct.profile}
                for m, item in enumerate(value.messages):
                    node: dict[str, Any] = tree["entry"][e]["changes"][c]["value"]["messages"][m]
                    raw_item = self._raw_item(raw, e, c, "messages", m)
                    result.messages.append(self._message(entry, value, item, node, names, raw_item))
                for status in value.statuses:
                    event = self._event(value, status)
                    if event is not None:
                        result.events.append(event)
                if value.errors and not value.messages and not value.statuses:
                    codes = [err.code for err in value.errors]
                    log.warning("meta_account_errors", instance=self.name, codes=codes)
        return result

    @staticmethod
    def _raw_item(raw: dict[str, Any] | None, e: int, c: int, key: str, index: int) -> dict[str, Any] | None:
        """A self-contained webhook holding just this one item, for instances with keep_raw."""
        if raw is None:
            return None
        entry = raw["entry"][e]
        change = entry["changes"][c]
        value = {k: v for k, v in change["value"].items() if k not in ("messages", "statuses")}
        value[key] = [change["value"][key][index]]
        one_change = {**{k: v for k, v in change.items() if k != "value"}, "value": value}
        one_entry = {**{k: v for k, v in entry.items() if k != "changes"}, "changes": [one_change]}
        return {"object": raw["object"], "entry": [one_entry]}

    def _message(
        self,
        entry: WaEntry,
        value: WaValue,
        item: WaMessage,
        node: dict[str, Any],
        names: dict[str, str | None],
        raw: dict[str, Any] | None,
    ) -> Message:
        phone_number_id = value.metadata.phone_number_id
        labels: dict[str, Any] = {"type": item.type, "waba_id": entry.id}
        content = self._content(item, labels)
        if content.type == "unsupported" and isinstance(node.get(item.type), dict):
            labels[item.type] = node[item.type]  # e.g. an order: not normalized, but not lost either
        if item.context is not None:
            content.reply_to = item.context.id
            labels["forwarded"] = item.context.forwarded or None
            labels["frequently_forwarded"] = item.context.frequently_forwarded or None
            if item.context.referred_product is not None:
                labels["referred_product"] = _compact(msgspec.structs.asdict(item.context.referred_product))
        if item.referral is not None:
            labels["referral"] = _compact(msgspec.structs.asdict(item.referral))
        if item.errors:
            labels["errors"] = [err.as_label() for err in item.errors]
        name = names.get(item.from_)
        if name is None and len(names) == 1 and item.from_ not in names:
            name = next(iter(names.values()))  # older payloads: one contact, keyed differently
        message = self.message(
            external_id=item.id,
            conversation_id=f"{self.name}:{phone_number_id}:{item.from_}",
            sender=Party(id=item.from_, name=name, handle=_phone_handle(item.from_), attributes=_phone(item.from_)),
            recipient=Party(id=phone_number_id, handle=_phone_handle(value.metadata.display_phone_number)),
            content=content,
            sent_at=_from_unix(item.timestamp, millis=False),
            raw=raw,
        )
        message.tags.labels["whatsapp"] = _compact(labels)
        return message

    def _content(self, item: WaMessage, labels: dict[str, Any]) -> Content:
        kind = item.type
        media = getattr(item, kind, None) if kind in _WA_MEDIA_KINDS else None
        if kind == "text" and item.text is not None:
            return Content(type="text", text=item.text.body)
        if isinstance(media, WaMedia) and (media.id or media.url):
            attachment_kind = "voice" if kind == "audio" and media.voice else _WA_MEDIA_KINDS[kind]
            if kind == "sticker" and media.animated:
                labels["animated"] = True
            attachment = Attachment(
                kind=attachment_kind,  # type: ignore[arg-type]
                media_id=media.id,
                url=media.url,
                mime_type=media.mime_type,
                sha256=media.sha256,
                caption=media.caption,
                filename=media.filename,
            )
            return Content(type="media", text=media.caption, attachments=[attachment])
        if kind == "location" and item.location is not None:
            loc = item.location
            location = Location(latitude=loc.latitude, longitude=loc.longitude, name=loc.name, address=loc.address)
            text = "\n".join(part for part in (loc.name, loc.address) if part) or None
            return Content(type="location", location=location, text=text)
        if kind == "contacts" and item.contacts:
            cards = [card.as_label() for card in item.contacts]
            labels["contacts"] = cards
            lines = [" ".join([c.get("name", ""), *(p.get("phone", "") for p in c.get("phones", []))]) for c in cards]
            return Content(type="contacts", text="\n".join(line.strip() for line in lines) or None)
        if kind == "interactive" and item.interactive is not None:
            interactive = item.interactive
            labels["interactive_type"] = interactive.type
            reply = interactive.button_reply or interactive.list_reply
            if reply is not None:
                labels["description"] = reply.description
                postback = Postback(payload=reply.id, title=_choice_title(reply))
                return Content(type="postback", text=reply.title, postback=postback)
            if interactive.nfm_reply is not None:  # a WhatsApp Flow was submitted
                flow = interactive.nfm_reply
                return Content(
                    type="postback", text=flow.body, postback=Postback(payload=flow.response_json, title=flow.name)
                )
        if kind == "button" and item.button is not None:
            button = item.button
            payload = button.payload if button.payload is not None else (button.text or "")
            return Content(type="postback", text=button.text, postback=Postback(payload=payload, title=button.text))
        if kind == "reaction" and item.reaction is not None:
            reaction = Reaction(emoji=item.reaction.emoji or "", message_external_id=item.reaction.message_id)
            return Content(type="reaction", reaction=reaction)
        if kind == "system" and item.system is not None:  # e.g. the customer changed their number
            labels["system"] = _compact(msgspec.structs.asdict(item.system))
            return Content(type="event", text=item.system.body)
        return Content(type="unsupported")

    def _event(self, value: WaValue, status: WaStatus) -> DeliveryEvent | None:
        mapped = _WA_STATUSES.get(status.status)
        if mapped is None:
            log.info("meta_status_ignored", instance=self.name, status=status.status)
            return None
        error = None
        if status.errors:
            first = status.errors[0]
            code = str(first.code) if first.code is not None else "unknown"
            error = DeliveryError(
                code=code,
                message=first.details or first.message or first.title or "delivery failed",
                retryable=code in _RETRYABLE_WA_ERRORS,
            )
        elif mapped == "failed":
            error = DeliveryError(code="unknown", message="delivery failed")
        phone_number_id = value.metadata.phone_number_id
        recipient = status.recipient_id
        return DeliveryEvent(
            status=mapped,  # type: ignore[arg-type]
            channel=self.type,
            instance=self.name,
            external_id=status.id,
            conversation_id=f"{self.name}:{phone_number_id}:{recipient}" if recipient else None,
            recipient=Party(id=recipient, handle=_phone_handle(recipient)) if recipient else None,
            occurred_at=_from_unix(status.timestamp, millis=False) or datetime.now(UTC),
            error=error,
        )


class MessagingInbound(MetaInbound):
    """Messenger and Instagram share the Messenger Platform's ``entry[].messaging[]`` events."""

    def _parse(self, body: bytes, tree: dict[str, Any]) -> ParseResult:
        payload = _decode(body, MxPayload, f"{self.type} webhook")
        raw = tree if self.settings.keep_raw else None
        result = ParseResult()
        for e, entry in enumerate(payload.entry):
            for key, events in (("messaging", entry.messaging), ("standby", entry.standby)):
                for i, event in enumerate(events):
                    fields = frozenset(tree["entry"][e][key][i])
                    raw_event = self._raw_item(raw, e, key, i)
                    self._event(entry, event, fields, raw_event, result, standby=key == "standby")
        return result

    @staticmethod
    def _raw_item(raw: dict[str, Any] | None, e: int, key: str, index: int) -> dict[str, Any] | None:
        if raw is None:
            return None
        entry = raw["entry"][e]
        one_entry = {k: v for k, v in entry.items() if k not in ("messaging", "standby")}
        one_entry[key] = [entry[key][index]]
        return {"object": raw["object"], "entry": [one_entry]}

    def _event(
        self,
        entry: MxEntry,
        event: MxEvent,
        fields: frozenset[str],
        raw: dict[str, Any] | None,
        result: ParseResult,
        *,
        standby: bool,
    ) -> None:
        if event.message is not None and event.message.is_echo:
            # Echoes are the page's own outbound messages (ours, or an agent's in Meta's inbox): not
            # customer messages, and outbound ones are already recorded by the gateway.
            return
        sender_id = event.sender.key if event.sender else None
        recipient_id = (event.recipient.key if event.recipient else None) or entry.id
        if not sender_id or not recipient_id:
            raise PayloadError(f"{self.type} event without sender or recipient id")
        conversation_id = f"{self.name}:{recipient_id}:{sender_id}"
        at = _from_unix(event.timestamp, millis=True)

        if event.delivery is not None or event.read is not None:
            result.events.extend(self._receipts(event, conversation_id, sender_id, at))
            if event.message is None and event.postback is None and event.reaction is None:
                return

        labels: dict[str, Any] = {"account_id": entry.id, "standby": standby}
        external_id: str | None
        if event.message is not None:
            external_id, content = self._message_content(event.message, labels)
        elif event.postback is not None:
            postback = event.postback
            external_id = postback.mid or f"postback:{sender_id}:{event.timestamp}"
            if postback.referral is not None:
                labels["referral"] = _compact(msgspec.structs.asdict(postback.referral))
            content = Content(
                type="postback",
                text=postback.title,
                postback=Postback(payload=postback.payload or postback.title or "", title=postback.title),
            )
        elif event.reaction is not None:
            reaction = event.reaction
            # A reaction has no id of its own: key it on the target, the person, the action and time.
            external_id = f"reaction:{reaction.mid}:{sender_id}:{reaction.action}:{event.timestamp}"
            labels["action"] = reaction.action
            labels["reaction"] = reaction.reaction
            emoji = "" if reaction.action == "unreact" else (reaction.emoji or reaction.reaction or "")
            content = Content(type="reaction", reaction=Reaction(emoji=emoji, message_external_id=reaction.mid))
        elif event.referral is not None:  # m.me / ig.me link or ad opened in an existing thread
            external_id = f"referral:{sender_id}:{event.timestamp}"
            labels["referral"] = _compact(msgspec.structs.asdict(event.referral))
            content = Content(type="event", text=event.referral.ref)
        else:
            # optin, account_linking, handover, message_edit...: kept, marked with the event kind
            kinds = sorted(fields - _MX_KNOWN_KEYS)
            labels["event"] = ",".join(kinds) or "unknown"
            external_id = f"event:{labels['event']}:{sender_id}:{event.timestamp}"
            content = Content(type="unsupported")

        message = self.message(
            external_id=external_id,
            conversation_id=conversation_id,
            sender=Party(id=sender_id),
            recipient=Party(id=recipient_id),
            content=content,
            sent_at=at,
            raw=raw,
        )
        message.tags.labels[self.type] = _compact(labels)
        result.messages.append(message)

    def _receipts(
        self, event: MxEvent, conversation_id: str, customer: str, at: datetime | None
    ) -> Iterable[DeliveryEvent]:
        """Delivery receipts name messages (mids) when the client supports it, else only a watermark:
        then one event without external_id whose occurred_at is the watermark (all before it)."""

        def receipt(status: str, external_id: str | None, when: datetime | None) -> DeliveryEvent:
            return DeliveryEvent(
                status=status,  # type: ignore[arg-type]
                channel=self.type,
                instance=self.name,
                external_id=external_id,
                conversation_id=conversation_id,
                recipient=Party(id=customer),
                occurred_at=when or at or datetime.now(UTC),
            )

        if event.delivery is not None:
            watermark = _from_unix(event.delivery.watermark, millis=True)
            if event.delivery.mids:
                yield from (receipt("delivered", mid, at or watermark) for mid in event.delivery.mids)
            else:
                yield receipt("delivered", None, watermark)
        if event.read is not None:
            watermark = _from_unix(event.read.watermark, millis=True)
            yield receipt("read", event.read.mid, watermark if event.read.mid is None else at)

    def _message_content(self, message: MxMessage, labels: dict[str, Any]) -> tuple[str | None, Content]:
        mid = message.mid
        if message.reply_to is not None and message.reply_to.story is not None:
            labels["story_reply"] = _compact(msgspec.structs.asdict(message.reply_to.story))
        if message.referral is not None:
            labels["referral"] = _compact(msgspec.structs.asdict(message.referral))
        reply_to = message.reply_to.mid if message.reply_to else None
        if message.is_deleted:
            # Same mid as the original: a distinct id keeps dedup from swallowing the notice.
            labels["deleted"] = True
            return (f"{mid}:deleted" if mid else None), Content(type="event", reply_to=mid)
        if message.is_unsupported:
            labels["unsupported"] = True
            return mid, Content(type="unsupported", text=message.text, reply_to=reply_to)
        if message.quick_reply is not None:
            postback = Postback(payload=message.quick_reply.payload, title=message.text)
            return mid, Content(type="postback", text=message.text, postback=postback, reply_to=reply_to)

        attachments: list[Attachment] = []
        location: Location | None = None
        skipped: list[str] = []
        for item in message.attachments:
            payload = item.payload or MxAttachmentPayload()
            url = payload.url or item.url
            if item.type == "location" and payload.coordinates is not None:
                coords = payload.coordinates
                location = Location(latitude=coords.lat, longitude=coords.long, name=item.title or payload.title)
                continue
            if url is None:
                skipped.append(item.type)
                continue
            kind = _MX_ATTACHMENT_KINDS.get(item.type, "other")
            if item.type == "image" and payload.sticker_id is not None:
                kind = "sticker"
            if item.type not in ("image", "video", "audio", "file"):  # story_mention, share, fallback...
                labels.setdefault("attachment_types", []).append(item.type)
            attachments.append(Attachment(kind=kind, url=url, caption=item.title or payload.title))  # type: ignore[arg-type]
        if skipped:
            labels["skipped_attachments"] = skipped
        if location is not None and not attachments:
            content = Content(type="location", location=location, text=message.text or location.name)
            content.reply_to = reply_to
            return mid, content
        if attachments:
            content = Content(type="media", text=message.text, attachments=attachments, location=location)
            content.reply_to = reply_to
            return mid, content
        if message.text is not None:
            return mid, Content(type="text", text=message.text, reply_to=reply_to)
        return mid, Content(type="unsupported", reply_to=reply_to)
