"""Meta's JSON bodies as lenient msgspec structs: the webhooks the Graph API POSTs to us (WhatsApp
``changes[]``, Messenger and Instagram ``messaging[]``) and the send requests, responses and errors
of the Graph API.

Unknown fields are ignored and optional fields defaulted, so a wrong type is reported with its JSON
path and new Meta fields never break us. No behaviour lives here beyond small label helpers.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values so labels stay small and readable."""
    return {k: v for k, v in values.items() if v not in (None, "", [], {}, False)}


# The errors Meta documents as transient (rate limits, temporary outages): a retry can succeed.
_RETRYABLE_WA_ERRORS = frozenset({"130429", "131000", "131016", "131048", "131056", "133004"})


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


class WaOutBody(msgspec.Struct):
    text: str


class WaOutReplyButton(msgspec.Struct):
    id: str  # comes back as interactive.button_reply.id
    title: str  # at most 20 characters


class WaOutButton(msgspec.Struct, kw_only=True):
    type: Literal["reply"] = "reply"
    reply: WaOutReplyButton


class WaOutRow(msgspec.Struct, omit_defaults=True):
    id: str  # comes back as interactive.list_reply.id
    title: str  # at most 24 characters
    description: str | None = None  # at most 72 characters


class WaOutSection(msgspec.Struct):
    rows: list[WaOutRow]  # one section needs no title


class WaOutAction(msgspec.Struct, omit_defaults=True):
    buttons: list[WaOutButton] | None = None  # type "button"
    button: str | None = None  # type "list": the label of the button that opens the list
    sections: list[WaOutSection] | None = None


class WaOutInteractive(msgspec.Struct):
    """Reply buttons (``type`` "button") or a list message (``type`` "list")."""

    type: Literal["button", "list"]
    body: WaOutBody
    action: WaOutAction


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
    interactive: WaOutInteractive | None = None


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


class MxOutQuickReply(msgspec.Struct, kw_only=True):
    content_type: Literal["text"] = "text"
    title: str  # at most 20 characters
    payload: str  # comes back as message.quick_reply.payload


class MxOutMessage(msgspec.Struct, omit_defaults=True):
    text: str | None = None
    attachment: MxOutAttachment | None = None
    quick_replies: list[MxOutQuickReply] | None = None


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
