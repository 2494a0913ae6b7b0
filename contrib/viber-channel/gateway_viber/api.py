"""The Viber REST Bot API wire format: callback objects in, ``send_message`` requests and answers out.

Written from the Viber REST Bot API reference (https://developers.viber.com/docs/api/rest-bot-api/).
Inbound structs ignore unknown fields, so fields Viber adds later never break parsing; outbound
structs leave absent optionals out of the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

DEFAULT_API_URL = "https://chatapi.viber.com"
SEND_PATH = "/pa/send_message"
AUTH_HEADER = "X-Viber-Auth-Token"
SIGNATURE_HEADER = "X-Viber-Content-Signature"

# Limits of send_message, from the reference.
MAX_TEXT = 7000  # characters of a text message
MAX_PICTURE_TEXT = 768  # characters of a picture's description
MAX_SENDER_NAME = 28
MAX_URL = 2000  # characters of a url message's media
MAX_FILE_NAME = 256
MAX_TRACKING_DATA = 4096

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Size = Annotated[int, msgspec.Meta(ge=0)]


# -- callbacks ---------------------------------------------------------------------------------------


class _In(msgspec.Struct, kw_only=True):
    """Callback objects; unknown fields are ignored."""


class ViberUser(_In):
    """``sender`` of a message, ``user`` of subscribed / conversation_started."""

    id: NonEmpty
    name: str | None = None
    avatar: str | None = None
    country: str | None = None
    language: str | None = None
    api_version: int | None = None


class ViberLocation(_In):
    # Bounds are checked when normalizing, so an impossible point is kept as unsupported, not lost.
    lat: float | None = None
    lon: float | None = None
    address: str | None = None


class ViberContact(_In):
    name: str | None = None
    phone_number: str | None = None
    avatar: str | None = None


class ViberMessage(_In):
    """Every message type's fields in one tolerant struct; which are needed depends on ``type``."""

    type: str
    text: str | None = None
    media: str | None = None  # picture, video, file, sticker: a download URL (short-lived); url: the link
    thumbnail: str | None = None
    file_name: str | None = None
    file_size: Size | None = None  # how received files state their size
    size: Size | None = None  # how send_message states it; accepted on callbacks too
    duration: Size | None = None  # video length in seconds
    sticker_id: int | str | None = None
    location: ViberLocation | None = None
    contact: ViberContact | None = None
    tracking_data: str | None = None


class ViberCallback(_In):
    """One callback: ``event`` says which of the optional fields are set."""

    event: NonEmpty
    timestamp: Size | None = None  # milliseconds since the epoch
    message_token: int | str | None = None  # 64-bit integer: the event's id, or the sent message's
    chat_hostname: str | None = None
    sender: ViberUser | None = None  # message
    message: ViberMessage | None = None  # message
    user: ViberUser | None = None  # subscribed, conversation_started
    user_id: str | None = None  # unsubscribed, delivered, seen, failed
    type: str | None = None  # conversation_started: "open"
    context: str | None = None  # conversation_started: the deep link's context parameter
    subscribed: bool | None = None  # conversation_started
    desc: str | None = None  # failed: why


callback_decoder = msgspec.json.Decoder()


# -- send_message ------------------------------------------------------------------------------------


class ViberSender(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    avatar: str | None = None


class _Out(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    """A send_message request; ``type`` is its tag."""

    receiver: str
    sender: ViberSender
    min_api_version: int | None = None
    tracking_data: str | None = None


class TextOut(_Out, kw_only=True, tag="text"):
    text: str


class PictureOut(_Out, kw_only=True, tag="picture"):
    text: str  # required by Viber, may be empty
    media: str
    thumbnail: str | None = None


class VideoOut(_Out, kw_only=True, tag="video"):
    media: str
    size: int
    duration: int | None = None
    thumbnail: str | None = None


class FileOut(_Out, kw_only=True, tag="file"):
    media: str
    size: int
    file_name: str


class UrlOut(_Out, kw_only=True, tag="url"):
    media: str


class LocationPoint(msgspec.Struct, kw_only=True):
    lat: float
    lon: float


class LocationOut(_Out, kw_only=True, tag="location"):
    location: LocationPoint


class ContactCard(msgspec.Struct, kw_only=True):
    name: str
    phone_number: str


class ContactOut(_Out, kw_only=True, tag="contact"):
    contact: ContactCard


class StickerOut(_Out, kw_only=True, tag="sticker"):
    sticker_id: int


SendRequest = TextOut | PictureOut | VideoOut | FileOut | UrlOut | LocationOut | ContactOut | StickerOut


class SendAnswer(_In):
    """What send_message answers, with HTTP 200 whether it worked or not."""

    status: int
    status_message: str | None = None
    message_token: int | str | None = None
    chat_hostname: str | None = None
    billing_status: int | None = None


# -- status codes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    name: str  # Viber's name of the status
    code: str  # the delivery error code the gateway reports
    text: str
    retryable: bool = False


# Viber's documented status codes. Only rate limiting and Viber's own failures are worth retrying;
# everything else names a problem with the receiver, the bot account or the request that the same
# request cannot get past.
STATUSES: dict[int, Status] = {
    1: Status("invalidUrl", "invalid_url", "the webhook URL is not valid"),
    2: Status("invalidAuthToken", "invalid_token", "the authentication token is not valid"),
    3: Status("badData", "bad_data", "there is an error in the request itself"),
    4: Status("missingData", "missing_data", "some mandatory data is missing"),
    5: Status("receiverNotRegistered", "receiver_not_registered", "the receiver is not registered to Viber"),
    6: Status("receiverNotSubscribed", "receiver_not_subscribed", "the receiver is not subscribed to the bot"),
    7: Status("publicAccountBlocked", "account_blocked", "the bot account is blocked"),
    8: Status("publicAccountNotFound", "account_not_found", "the token does not belong to a bot account"),
    9: Status("publicAccountSuspended", "account_suspended", "the bot account is suspended"),
    10: Status("webhookNotSet", "webhook_not_set", "no webhook is set for the bot account"),
    11: Status(
        "receiverNoSuitableDevice",
        "receiver_no_suitable_device",
        "the receiver uses a device or Viber version that does not support bots",
    ),
    12: Status("tooManyRequests", "rate_limited", "rate control breach", retryable=True),
    13: Status(
        "apiVersionNotSupported",
        "api_version_not_supported",
        "the receiver's devices support a lower API version than min_api_version",
    ),
    14: Status("incompatibleWithVersion", "incompatible_with_version", "min_api_version does not fit the fields"),
    15: Status("publicAccountNotAuthorized", "account_not_authorized", "the bot account is not authorized"),
    16: Status("inchatReplyMessageNotAllowed", "inchat_reply_not_allowed", "in-chat replies are not allowed"),
    17: Status("publicAccountIsNotInline", "account_not_inline", "the bot account is not inline"),
    18: Status("noPublicChat", "no_public_chat", "the bot has no public chat interface"),
    19: Status("cannotSendBroadcast", "cannot_send_broadcast", "cannot send a broadcast message"),
    20: Status("broadcastNotAllowed", "broadcast_not_allowed", "broadcast messages are not allowed from this bot"),
    21: Status("unsupportedCountry", "unsupported_country", "the message is not supported in the receiver's country"),
    22: Status("paymentUnsupported", "payment_unsupported", "the bot does not support payment messages"),
    23: Status(
        "freeMessagesExceeded",
        "free_messages_exceeded",
        "the bot reached this month's threshold of free messages outside a session",
    ),
    24: Status("noBalance", "no_balance", "the billable bot has no balance for messages outside a session"),
}


def classify(status: int, status_message: str | None) -> tuple[str, str, bool]:
    """A non-zero send_message status as a delivery error: (code, text, retryable).

    Codes Viber does not document (``generalError``, internal failures) are retried."""
    known = STATUSES.get(status)
    if known is None:
        name = status_message or "generalError"
        return f"viber_{status}", f"Viber status {status} ({name})", True
    name = status_message or known.name
    return known.code, f"{known.text} (Viber status {status}: {name})", known.retryable


def describe_http(status: int, body: Any) -> tuple[str, str, bool | None] | None:
    """For a non-2xx answer: Viber's own status when the body carries one, else the HTTP status decides."""
    if not isinstance(body, dict):
        return None
    code = body.get("status")
    if not isinstance(code, int) or isinstance(code, bool) or code == 0:
        return None
    message = body.get("status_message")
    return classify(code, message if isinstance(message, str) else None)
