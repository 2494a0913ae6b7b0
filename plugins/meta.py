"""Meta webhook channels: WhatsApp Cloud API, Messenger Platform and Instagram Messaging.

All three share Meta's webhook transport, so they share this module: a GET handshake echoing
``hub.challenge`` when ``hub.verify_token`` matches, and POSTs signed with
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>``. Meta batches: one POST
may carry several ``entry[]``, each with several ``changes[]`` (WhatsApp) or ``messaging[]``
(Messenger, Instagram) items, so one request becomes any number of messages and delivery events.

Provider payloads are decoded into lenient msgspec structs (unknown fields ignored, optional fields
defaulted) so that a wrong type is reported with its JSON path, and new Meta fields never break us.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
import structlog

from gateway.sdk import (
    Attachment,
    AuthenticationError,
    Channel,
    ChannelSettings,
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
    SendError,
    SendResult,
    StoreUnavailable,
    WebhookRequest,
    call_provider,
    constant_time_equals,
    decode_json,
    hookimpl,
    verify_prefixed_hex,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

SIGNATURE_HEADER = "X-Hub-Signature-256"
Secret = Annotated[str, msgspec.Meta(min_length=1)]


MessageTag = Literal[
    "HUMAN_AGENT", "ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "CUSTOMER_FEEDBACK", "POST_PURCHASE_UPDATE"
]


class MetaSettings(ChannelSettings, kw_only=True, forbid_unknown_fields=True):
    """One Meta app subscription: the app secret signs POSTs, the verify token guards the handshake.

    ``access_token`` (WhatsApp system-user token, Page or Instagram token) is only needed to send,
    not to receive. ``base_url`` defaults to the Graph API (``https://graph.facebook.com``).
    """

    app_secret: Secret
    verify_token: Secret
    access_token: Secret | None = None
    api_version: Annotated[str, msgspec.Meta(pattern=r"^v\d+\.\d+$")] = "v21.0"
    # WhatsApp: the sending number when a conversation id does not name one (business-initiated).
    phone_number_id: str | None = None
    link_preview: bool = True  # WhatsApp text with a URL gets preview_url (a rendered preview)
    # Messenger / Instagram: POST /{page_id}/messages instead of /me/messages.
    page_id: str | None = None
    # Messenger / Instagram: send with messaging_type MESSAGE_TAG and this tag (HUMAN_AGENT allows
    # agent replies up to 7 days after the customer's last message) instead of RESPONSE.
    message_tag: MessageTag | None = None


# --- provider payloads: WhatsApp Cloud API -------------------------------------------------------


class _Envelope(msgspec.Struct):
    """Just enough to refuse a payload meant for another product before decoding the rest."""

    object: str


class WaError(msgspec.Struct):
    code: int | str | None = None
    title: str | None = None
    message: str | None = None
    error_data: dict[str, Any] | None = None
    href: str | None = None

    @property
    def details(self) -> str | None:
        detail = (self.error_data or {}).get("details")
        return str(detail) if detail is not None else None

    def as_label(self) -> dict[str, Any]:
        return _compact({"code": self.code, "title": self.title, "details": self.details})


class WaText(msgspec.Struct):
    body: str = ""


class WaMedia(msgspec.Struct):
    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    url: str | None = None  # newer API versions add an (authenticated) download URL
    voice: bool = False  # audio recorded in the app as a voice note
    animated: bool = False  # stickers


class WaLocation(msgspec.Struct):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


class WaContactName(msgspec.Struct):
    formatted_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class WaContactPhone(msgspec.Struct):
    phone: str | None = None
    wa_id: str | None = None
    type: str | None = None


class WaContactEmail(msgspec.Struct):
    email: str | None = None
    type: str | None = None


class WaContactOrg(msgspec.Struct):
    company: str | None = None
    department: str | None = None
    title: str | None = None


class WaContactCard(msgspec.Struct):
    name: WaContactName | None = None
    phones: list[WaContactPhone] = []
    emails: list[WaContactEmail] = []
    org: WaContactOrg | None = None

    def as_label(self) -> dict[str, Any]:
        name = self.name.formatted_name if self.name else None
        return _compact(
            {
                "name": name,
                "phones": [_compact({"phone": p.phone, "wa_id": p.wa_id, "type": p.type}) for p in self.phones],
                "emails": [_compact({"email": e.email, "type": e.type}) for e in self.emails],
                "company": self.org.company if self.org else None,
            }
        )


class WaReply(msgspec.Struct):
    id: str
    title: str | None = None
    description: str | None = None


class WaFlowReply(msgspec.Struct):
    response_json: str = ""
    body: str | None = None
    name: str | None = None


class WaInteractive(msgspec.Struct):
    type: str = ""
    button_reply: WaReply | None = None
    list_reply: WaReply | None = None
    nfm_reply: WaFlowReply | None = None


class WaButton(msgspec.Struct):
    payload: str | None = None
    text: str | None = None


class WaReaction(msgspec.Struct):
    message_id: str
    emoji: str | None = None  # absent when the customer removes the reaction


class WaReferredProduct(msgspec.Struct):
    catalog_id: str | None = None
    product_retailer_id: str | None = None


class WaContext(msgspec.Struct):
    id: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: WaReferredProduct | None = None


class WaReferral(msgspec.Struct):
    """Click-to-WhatsApp ad the conversation started from."""

    source_url: str | None = None
    source_id: str | None = None
    source_type: str | None = None
    headline: str | None = None
    body: str | None = None
    media_type: str | None = None
    image_url: str | None = None
    video_url: str | None = None
    thumbnail_url: str | None = None
    ctwa_clid: str | None = None


class WaSystem(msgspec.Struct):
    body: str | None = None
    type: str | None = None
    wa_id: str | None = None
    customer: str | None = None


class WaMessage(msgspec.Struct):
    from_: str = msgspec.field(name="from")
    id: str
    timestamp: str | int | None = None
    type: str = "unknown"
    text: WaText | None = None
    image: WaMedia | None = None
    audio: WaMedia | None = None
    video: WaMedia | None = None
    document: WaMedia | None = None
    sticker: WaMedia | None = None
    location: WaLocation | None = None
    contacts: list[WaContactCard] = []
    interactive: WaInteractive | None = None
    button: WaButton | None = None
    reaction: WaReaction | None = None
    system: WaSystem | None = None
    context: WaContext | None = None
    referral: WaReferral | None = None
    errors: list[WaError] = []


class WaProfile(msgspec.Struct):
    name: str | None = None


class WaContact(msgspec.Struct):
    wa_id: str | None = None
    profile: WaProfile | None = None


class WaMetadata(msgspec.Struct):
    phone_number_id: str
    display_phone_number: str | None = None


class WaStatus(msgspec.Struct):
    id: str
    status: str
    timestamp: str | int | None = None
    recipient_id: str | None = None
    errors: list[WaError] = []


class WaValue(msgspec.Struct):
    metadata: WaMetadata
    messaging_product: str | None = None
    contacts: list[WaContact] = []
    messages: list[WaMessage] = []
    statuses: list[WaStatus] = []
    errors: list[WaError] = []


class WaChange(msgspec.Struct):
    field: str = ""
    value: msgspec.Raw = msgspec.Raw()  # decoded as WaValue only for field "messages"


class WaEntry(msgspec.Struct):
    id: str | None = None
    changes: list[WaChange] = []


class WaPayload(msgspec.Struct):
    object: str
    entry: list[WaEntry] = []


# --- provider payloads: Messenger Platform and Instagram Messaging --------------------------------


class MxParty(msgspec.Struct):
    id: str | None = None
    user_ref: str | None = None  # chat plugin visitors without a PSID yet

    @property
    def key(self) -> str | None:
        return self.id or self.user_ref


class MxCoordinates(msgspec.Struct):
    lat: float
    long: float


class MxAttachmentPayload(msgspec.Struct):
    url: str | None = None
    title: str | None = None
    sticker_id: int | str | None = None
    coordinates: MxCoordinates | None = None


class MxAttachment(msgspec.Struct):
    type: str = "unknown"
    payload: MxAttachmentPayload | None = None
    title: str | None = None
    url: str | None = None  # "fallback" attachments carry it here


class MxQuickReply(msgspec.Struct):
    payload: str


class MxStory(msgspec.Struct):
    id: str | None = None
    url: str | None = None


class MxReplyTo(msgspec.Struct):
    mid: str | None = None
    story: MxStory | None = None  # Instagram: a reply to the business's story


class MxReferral(msgspec.Struct):
    ref: str | None = None
    source: str | None = None
    type: str | None = None
    ad_id: str | None = None


class MxMessage(msgspec.Struct):
    mid: str | None = None
    text: str | None = None
    attachments: list[MxAttachment] = []
    quick_reply: MxQuickReply | None = None
    reply_to: MxReplyTo | None = None
    referral: MxReferral | None = None
    is_echo: bool = False
    is_deleted: bool = False
    is_unsupported: bool = False


class MxPostback(msgspec.Struct):
    mid: str | None = None
    title: str | None = None
    payload: str | None = None
    referral: MxReferral | None = None


class MxReaction(msgspec.Struct):
    mid: str
    action: str = "react"
    emoji: str | None = None
    reaction: str | None = None


class MxDelivery(msgspec.Struct):
    mids: list[str] = []
    watermark: int | None = None


class MxRead(msgspec.Struct):
    watermark: int | None = None
    mid: str | None = None  # Instagram's messaging_seen names the message


class MxEvent(msgspec.Struct):
    sender: MxParty | None = None
    recipient: MxParty | None = None
    timestamp: int | None = None
    message: MxMessage | None = None
    postback: MxPostback | None = None
    reaction: MxReaction | None = None
    delivery: MxDelivery | None = None
    read: MxRead | None = None
    referral: MxReferral | None = None


class MxEntry(msgspec.Struct):
    id: str | None = None
    time: int | None = None
    messaging: list[MxEvent] = []
    standby: list[MxEvent] = []  # handover protocol: our app is not the thread owner


class MxPayload(msgspec.Struct):
    object: str
    entry: list[MxEntry] = []


_MX_KNOWN_KEYS = frozenset(
    {"sender", "recipient", "timestamp", "message", "postback", "reaction", "delivery", "read", "referral"}
)


# --- helpers ---------------------------------------------------------------------------------------


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values so labels stay small and readable."""
    return {k: v for k, v in values.items() if v not in (None, "", [], {}, False)}


def _from_unix(value: str | int | float | None, *, millis: bool) -> datetime | None:
    """Meta's timestamps: WhatsApp sends unix seconds as strings, Messenger milliseconds as ints."""
    if value is None:
        return None
    try:
        number = float(value)
        return datetime.fromtimestamp(number / 1000 if millis else number, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _phone_handle(number: str | None) -> str | None:
    """What a person would type: WhatsApp numbers come as bare digits, in E.164 without the plus."""
    if not number:
        return None
    return f"+{number}" if number.isdigit() else number


def _decode(body: bytes | msgspec.Raw, kind: type[T], what: str) -> T:
    return decode_json(body, kind, what=what)


# The errors Meta documents as transient (rate limits, temporary outages): a retry can succeed.
_RETRYABLE_WA_ERRORS = frozenset({"130429", "131000", "131016", "131048", "131056", "133004"})
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


# --- sending: Graph API request and response bodies -------------------------------------------


class WaOutText(msgspec.Struct, omit_defaults=True):
    body: str
    preview_url: bool = False


class WaOutMedia(msgspec.Struct, omit_defaults=True):
    """A media object by uploaded media ``id`` or by public ``link`` (Meta fetches it)."""

    id: str | None = None
    link: str | None = None
    caption: str | None = None
    filename: str | None = None


class WaOutLocation(msgspec.Struct, omit_defaults=True):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class WaOutReaction(msgspec.Struct):
    message_id: str
    emoji: str  # "" removes the reaction


class WaOutContext(msgspec.Struct):
    message_id: str  # the wamid answered: shown as a quoted reply


class WaOutMessage(msgspec.Struct, omit_defaults=True):
    """POST /{version}/{phone_number_id}/messages."""

    messaging_product: Literal["whatsapp"]
    recipient_type: Literal["individual"]
    to: str
    type: str
    context: WaOutContext | None = None
    text: WaOutText | None = None
    image: WaOutMedia | None = None
    audio: WaOutMedia | None = None
    video: WaOutMedia | None = None
    document: WaOutMedia | None = None
    sticker: WaOutMedia | None = None
    location: WaOutLocation | None = None
    reaction: WaOutReaction | None = None


class WaSentMessage(msgspec.Struct):
    id: str
    message_status: str | None = None


class WaSendResponse(msgspec.Struct):
    messages: list[WaSentMessage] = []


class MxOutRecipient(msgspec.Struct):
    id: str


class MxOutPayload(msgspec.Struct, omit_defaults=True):
    url: str | None = None
    attachment_id: str | None = None  # uploaded through the Attachment Upload API


class MxOutAttachment(msgspec.Struct):
    type: str
    payload: MxOutPayload


class MxOutMessage(msgspec.Struct, omit_defaults=True):
    text: str | None = None
    attachment: MxOutAttachment | None = None


class MxOutReplyTo(msgspec.Struct):
    mid: str


class MxOutReactionPayload(msgspec.Struct, omit_defaults=True):
    message_id: str
    reaction: str | None = None


class MxOutRequest(msgspec.Struct, omit_defaults=True):
    """POST /{version}/me/messages (or /{page_id}/messages): a message or a sender action."""

    recipient: MxOutRecipient
    messaging_type: str | None = None
    tag: str | None = None
    message: MxOutMessage | None = None
    reply_to: MxOutReplyTo | None = None
    sender_action: str | None = None
    payload: MxOutReactionPayload | None = None


class MxSendResponse(msgspec.Struct):
    recipient_id: str | None = None
    message_id: str | None = None


class GraphError(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: int | str | None = None
    error_subcode: int | str | None = None
    error_user_title: str | None = None
    error_user_msg: str | None = None
    error_data: Any = None  # WhatsApp: {"messaging_product", "details"}; elsewhere sometimes a string
    is_transient: bool | None = None
    fbtrace_id: str | None = None


class GraphErrorBody(msgspec.Struct):
    error: GraphError


DEFAULT_GRAPH_URL = "https://graph.facebook.com"
PARTS_TTL_S = 24 * 3600  # parts of a multi-part message already sent, skipped on a retry
LINK_TTL_S = 7 * 24 * 3600  # status webhooks of extra parts name the outbound message for this long
EMPTY_MESSAGE = "nothing to send: no text, attachment, location or reaction"
WA_TEXT_MAX = 4096
WA_CAPTION_MAX = 1024
# Graph API codes worth retrying: throttling (4, 17, 32, 341, 613, 80007, 130429, 131056), and
# temporary failures (1, 2, 1200 Messenger "temporary send failure", 131000, 131016, 131057, 133004).
_RETRYABLE_GRAPH_ERRORS = _RETRYABLE_WA_ERRORS | frozenset(
    {"1", "2", "4", "17", "32", "341", "613", "1200", "80007", "130429", "131057"}
)
# Codes a retry cannot fix even when they come with a 5xx: authentication and permissions
# (0, 3, 10, 190, 200, 230), bad requests (100), policy (368), unavailable or unknown recipients and
# closed customer-service windows (551, 131026, 131047, 131021), unsupported content (131051-131053).
_PERMANENT_GRAPH_ERRORS = frozenset(
    {
        "0", "3", "10", "100", "190", "200", "230", "368", "551",
        "131005", "131008", "131009", "131021", "131026", "131031", "131047", "131051", "131052",
        "131053", "133010",
    }
)  # fmt: skip
_WA_OUT_KINDS = {
    "image": "image",
    "audio": "audio",
    "voice": "audio",
    "video": "video",
    "document": "document",
    "sticker": "sticker",
    "file": "document",
    "contact": "document",
    "other": "document",
}
_MX_OUT_KINDS = {
    "image": "image",
    "sticker": "image",
    "audio": "audio",
    "voice": "audio",
    "video": "video",
    "document": "file",
    "file": "file",
    "contact": "file",
    "other": "file",
}
# Messenger and Instagram react with named reactions, not arbitrary emoji.
_MX_REACTIONS = {
    "\u2764\ufe0f": "love",
    "\u2764": "love",
    "\U0001f60d": "love",
    "\U0001f606": "smile",
    "\U0001f604": "smile",
    "\U0001f602": "smile",
    "\U0001f62e": "wow",
    "\U0001f622": "sad",
    "\U0001f620": "angry",
    "\U0001f621": "angry",
    "\U0001f44d": "like",
    "\U0001f44e": "dislike",
}
_MX_REACTION_NAMES = frozenset(_MX_REACTIONS.values())


def describe_graph_error(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """The Graph API's own error (``error.code``, ``error_subcode``, ``message``, WhatsApp's
    ``error_data.details``) for ``call_provider``, with Meta's retryable and permanent codes
    overriding what the HTTP status alone would say (Graph answers rate limits with a 400)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    try:
        error = msgspec.convert(body, GraphErrorBody).error
    except msgspec.ValidationError:
        return None
    code = str(error.code) if error.code is not None else f"http_{status}"
    text = error.message or error.error_user_msg or error.type or f"Graph API answered HTTP {status}"
    details = error.error_data.get("details") if isinstance(error.error_data, dict) else None
    if details and details not in text:
        text = f"{text}: {details}"
    if error.error_subcode is not None:
        text = f"{text} (subcode {error.error_subcode})"
    if error.fbtrace_id:
        text = f"{text} [fbtrace_id {error.fbtrace_id}]"
    retryable: bool | None = None
    if code in _RETRYABLE_GRAPH_ERRORS:
        retryable = True
    elif code in _PERMANENT_GRAPH_ERRORS or (code.startswith("132") and len(code) == 6):  # 132xxx: templates
        retryable = False
    elif error.is_transient:
        retryable = True
    return code, text, retryable


def _has_url(text: str) -> bool:
    return "http://" in text or "https://" in text


def _split_text(text: str, limit: int, *, utf8: bool = False) -> list[str]:
    """Cut a text longer than the provider accepts into messages, preferably at line or word ends
    (Instagram counts UTF-8 bytes, the others characters)."""

    def size(value: str) -> int:
        return len(value.encode()) if utf8 else len(value)

    chunks: list[str] = []
    rest = text
    while size(rest) > limit:
        low, high = 1, min(len(rest), limit)  # the longest prefix that fits: binary search
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if size(rest[:middle]) <= limit else (low, middle - 1)
        cut = low
        space = max(rest.rfind("\n", 0, cut), rest.rfind(" ", 0, cut))
        if space > cut // 2:
            cut = space + 1
        chunk, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if chunk:
            chunks.append(chunk)
    if rest.strip():
        chunks.append(rest)
    return chunks


def _location_text(location: Location) -> str:
    """Where a channel cannot send a location: its name, address and a map link."""
    link = f"https://www.google.com/maps/search/?api=1&query={location.latitude},{location.longitude}"
    return "\n".join(part for part in (location.name, location.address, link) if part)


# --- channels ----------------------------------------------------------------------------------------


class MetaChannel(Channel):
    """What every Meta product shares: settings, handshake, signature, envelope check."""

    Settings = MetaSettings
    secret_settings = frozenset({"app_secret", "verify_token", "access_token"})
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

    # --- sending ------------------------------------------------------------------------------

    async def send(self, message: Message) -> SendResult:
        """Deliver one outbound message as one or more Graph API send requests (text, media,
        location...), in order. The first request's provider id is the message's ``external_id``."""
        token = self.settings.access_token
        if not token:
            raise SendError("no_access_token", f"instance {self.name} has no access_token", retryable=False)
        node, requests = self._requests(message)
        url = f"{(self.settings.base_url or DEFAULT_GRAPH_URL).rstrip('/')}/{self.settings.api_version}/{node}/messages"
        headers = {"Authorization": f"Bearer {token}"}
        ids = await self._send_parts(message, url, requests, headers)
        log.debug("meta_sent", instance=self.name, message_id=message.id, parts=len(ids), external_ids=ids)
        return SendResult(external_id=ids[0])

    def _requests(self, message: Message) -> tuple[str, list[msgspec.Struct]]:
        """The Graph node to POST to (``{node}/messages``) and the request bodies, in order."""
        raise NotImplementedError

    def _sent_id(self, body: Any) -> str | None:
        """The provider message id in a successful send response."""
        raise NotImplementedError

    def _conversation(self, message: Message) -> tuple[str, str] | None:
        """(business account id, customer id) of a conversation id built by ``parse``:
        ``<instance>:<phone_number_id>:<wa_id>`` or ``<instance>:<page or IG id>:<PSID / IGSID>``."""
        prefix = f"{self.name}:"
        if not message.conversation_id.startswith(prefix):
            return None
        parts = message.conversation_id[len(prefix) :].split(":")
        if len(parts) != 2 or not all(parts):
            return None
        return parts[0], parts[1]

    def _customer(self, message: Message, conversation: tuple[str, str] | None) -> str:
        if message.recipient is not None:
            return message.recipient.id
        if conversation is not None:
            return conversation[1]
        raise SendError(
            "no_recipient",
            f"no recipient: neither recipient.id nor a conversation id of the form {self.name}:<account>:<customer>",
            retryable=False,
        )

    async def _post(self, url: str, body: msgspec.Struct, headers: dict[str, str]) -> str | None:
        response = await call_provider(
            self.services.http,
            "POST",
            url,
            provider="Graph API",
            json=body,
            headers=headers,
            describe=describe_graph_error,
        )
        return self._sent_id(response.json())

    async def _send_parts(
        self, message: Message, url: str, requests: list[msgspec.Struct], headers: dict[str, str]
    ) -> list[str | None]:
        """Send the requests in order. With several, each sent part is recorded in Redis, so that
        a retry after a failure in the middle sends only the parts that did not go out."""
        if len(requests) == 1:
            return [await self._post(url, requests[0], headers)]
        store = self.services.store
        state_key = f"meta-parts:{self.name}:{message.id}"
        try:
            recorded = await store.get_state(state_key, "ids")
        except StoreUnavailable as exc:
            raise SendError("store_unavailable", f"cannot read the parts already sent: {exc}", retryable=True) from exc
        done: dict[str, str | None] = recorded if isinstance(recorded, dict) else {}
        ids: list[str | None] = []
        for index, request in enumerate(requests):
            if str(index) in done:
                ids.append(done[str(index)])
                continue
            external_id = await self._post(url, request, headers)
            ids.append(external_id)
            done[str(index)] = external_id
            try:
                await store.set_state(state_key, "ids", done, PARTS_TTL_S)
                if index > 0 and external_id:  # the dispatcher links the first one
                    await store.link_outbound(self.name, external_id, message.id, LINK_TTL_S)
            except StoreUnavailable as exc:
                # Sent regardless; only a failure of a later part followed by a retry could repeat it.
                log.warning("meta_part_not_recorded", instance=self.name, message_id=message.id, error=str(exc))
        return ids


class WhatsAppChannel(MetaChannel):
    type = "whatsapp"
    object_type = "whatsapp_business_account"
    description = "WhatsApp Cloud API webhooks (messages and delivery statuses)."

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
            sender=Party(id=item.from_, name=name, handle=_phone_handle(item.from_)),
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
                return Content(
                    type="postback", text=reply.title, postback=Postback(payload=reply.id, title=reply.title)
                )
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

    def _requests(self, message: Message) -> tuple[str, list[msgspec.Struct]]:
        conversation = self._conversation(message)
        phone_number_id = conversation[0] if conversation else self.settings.phone_number_id
        if not phone_number_id:
            raise SendError(
                "no_phone_number_id",
                f"conversation {message.conversation_id!r} names no number and {self.name} has no phone_number_id",
                retryable=False,
            )
        to = self._customer(message, conversation)
        content = message.content

        def request(kind: str, **fields: Any) -> WaOutMessage:
            return WaOutMessage(messaging_product="whatsapp", recipient_type="individual", to=to, type=kind, **fields)

        if content.reaction is not None:
            reaction = WaOutReaction(message_id=content.reaction.message_external_id, emoji=content.reaction.emoji)
            return phone_number_id, [request("reaction", reaction=reaction)]

        text = content.text or None
        location = content.location
        if text is not None and location is not None:
            derived = {"\n".join(p for p in (location.name, location.address) if p), location.name, location.address}
            if text in derived:
                text = None  # the text an inbound location carries: the location part says it
        media: list[WaOutMessage] = []
        for attachment in content.attachments:
            kind = _WA_OUT_KINDS[attachment.kind]
            caption = attachment.caption
            captionable = kind in ("image", "video", "document")
            single = len(content.attachments) == 1
            if caption is None and captionable and single and text is not None and len(text) <= WA_CAPTION_MAX:
                caption, text = text, None
            item = WaOutMedia(
                id=attachment.media_id,
                link=None if attachment.media_id else attachment.url,
                caption=caption if captionable else None,
                filename=attachment.filename if kind == "document" else None,
            )
            media.append(request(kind, **{kind: item}))
        parts: list[WaOutMessage] = []
        if text is not None:
            for chunk in _split_text(text, WA_TEXT_MAX):
                preview = self.settings.link_preview and _has_url(chunk)
                parts.append(request("text", text=WaOutText(body=chunk, preview_url=preview)))
        parts.extend(media)
        if location is not None:
            out = WaOutLocation(
                latitude=location.latitude, longitude=location.longitude, name=location.name, address=location.address
            )
            parts.append(request("location", location=out))
        if not parts:
            raise SendError(
                "empty_message", "nothing to send: no text, attachment, location or reaction", retryable=False
            )
        if content.reply_to:
            parts[0].context = WaOutContext(message_id=content.reply_to)
        return phone_number_id, list(parts)

    def _sent_id(self, body: Any) -> str | None:
        try:
            sent = msgspec.convert(body, WaSendResponse)
        except msgspec.ValidationError:
            return None
        return sent.messages[0].id if sent.messages else None

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


class MessagingChannel(MetaChannel):
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

    text_limit: ClassVar[int] = 2000
    text_limit_utf8: ClassVar[bool] = False

    def _requests(self, message: Message) -> tuple[str, list[msgspec.Struct]]:
        conversation = self._conversation(message)
        recipient = MxOutRecipient(id=self._customer(message, conversation))
        node = self.settings.page_id or "me"
        content = message.content

        if content.reaction is not None:
            target, emoji = content.reaction.message_external_id, content.reaction.emoji
            if not emoji:
                unreact = MxOutReactionPayload(message_id=target)
                return node, [MxOutRequest(recipient=recipient, sender_action="unreact", payload=unreact)]
            name = _MX_REACTIONS.get(emoji) or (emoji if emoji in _MX_REACTION_NAMES else None)
            if name is None:
                raise SendError(
                    "unsupported_reaction",
                    f"{self.type} reacts with {', '.join(sorted(_MX_REACTION_NAMES))}, not {emoji!r}",
                    retryable=False,
                )
            react = MxOutReactionPayload(message_id=target, reaction=name)
            return node, [MxOutRequest(recipient=recipient, sender_action="react", payload=react)]

        tag = self.settings.message_tag

        def request(body: MxOutMessage) -> MxOutRequest:
            kind = "MESSAGE_TAG" if tag else "RESPONSE"
            return MxOutRequest(recipient=recipient, messaging_type=kind, tag=tag, message=body)

        # No captions here: the text (else the attachments' captions) goes first, as its own message.
        texts = [content.text] if content.text else [a.caption for a in content.attachments if a.caption]
        if content.location is not None:
            texts.append(_location_text(content.location))
        parts: list[MxOutRequest] = []
        for chunk in _split_text("\n\n".join(texts), self.text_limit, utf8=self.text_limit_utf8):
            parts.append(request(MxOutMessage(text=chunk)))
        for attachment in content.attachments:
            payload = (
                MxOutPayload(attachment_id=attachment.media_id)
                if attachment.media_id
                else MxOutPayload(url=attachment.url)
            )
            body = MxOutMessage(attachment=MxOutAttachment(type=_MX_OUT_KINDS[attachment.kind], payload=payload))
            parts.append(request(body))
        if not parts:
            raise SendError(
                "empty_message", "nothing to send: no text, attachment, location or reaction", retryable=False
            )
        if content.reply_to:
            parts[0].reply_to = MxOutReplyTo(mid=content.reply_to)
        return node, list(parts)

    def _sent_id(self, body: Any) -> str | None:
        try:
            return msgspec.convert(body, MxSendResponse).message_id
        except msgspec.ValidationError:
            return None


class MessengerChannel(MessagingChannel):
    type = "messenger"
    object_type = "page"
    description = "Facebook Messenger Platform webhooks (messages, postbacks, reactions, receipts)."


class InstagramChannel(MessagingChannel):
    type = "instagram"
    object_type = "instagram"
    description = "Instagram Messaging (Messenger API for Instagram) webhooks."
    text_limit = 1000  # bytes of UTF-8
    text_limit_utf8 = True


@hookimpl
def register_channels(register: Any) -> None:
    register(WhatsAppChannel)
    register(MessengerChannel)
    register(InstagramChannel)
