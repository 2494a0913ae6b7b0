"""The JSON frames between the widget and the gateway (see docs/channels/webchat.md).

Client frames are a tagged union on ``type``; unknown fields are tolerated so the widget can evolve
first. Per-instance limits (text length) are checked by the channel, not here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

UPLOAD_ID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
UPLOAD_ID = re.compile(UPLOAD_ID_PATTERN)
ClientId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
UploadId = Annotated[str, msgspec.Meta(pattern=UPLOAD_ID_PATTERN)]
Cursor = Annotated[str, msgspec.Meta(max_length=64)]  # a mailbox seq; anything else means "from the start"
Token = Annotated[str, msgspec.Meta(max_length=1024)]
Page = Annotated[str, msgspec.Meta(max_length=2048)]
MAX_ATTACHMENTS = 10


class VisitorInfo(msgspec.Struct, kw_only=True):
    """What a visitor may tell about themselves (a pre-chat form); never trusted as identity."""

    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    email: Annotated[str, msgspec.Meta(max_length=320)] | None = None


class AttachmentRef(msgspec.Struct, kw_only=True):
    upload_id: UploadId


class Hello(msgspec.Struct, kw_only=True, tag="hello", tag_field="type"):
    token: Token | None = None
    visitor: VisitorInfo | None = None
    page: Page | None = None  # the page the widget runs on: context for the agent
    after: Cursor | None = None  # the last mailbox seq the page shows (a reconnect): only newer come


class ChatMessage(msgspec.Struct, kw_only=True, tag="message", tag_field="type"):
    client_id: ClientId
    text: str = ""
    attachments: Annotated[list[AttachmentRef], msgspec.Meta(max_length=MAX_ATTACHMENTS)] = []


class ChoicePick(msgspec.Struct, kw_only=True, tag="postback", tag_field="type"):
    """A click on a choice button under a reply: which reply, which choice (its id). The gateway
    takes the choice's title from the reply it stored, never from the frame."""

    client_id: ClientId
    reply_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    payload: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # Choice.id


class Typing(msgspec.Struct, kw_only=True, tag="typing", tag_field="type"):
    state: bool


class Ping(msgspec.Struct, kw_only=True, tag="ping", tag_field="type"):
    pass


ClientFrame = Hello | ChatMessage | ChoicePick | Typing | Ping
frame_decoder = msgspec.json.Decoder(ClientFrame)


class _Kind(msgspec.Struct):
    type: str = "message"


kind_decoder = msgspec.json.Decoder(_Kind)  # a REST body's frame type: "message" when absent


class SessionRequest(msgspec.Struct, kw_only=True):
    """``POST /chat/api/session``: the REST twin of the hello frame."""

    token: Token | None = None
    visitor: VisitorInfo | None = None
    page: Page | None = None
    after: Cursor | None = None


session_decoder = msgspec.json.Decoder(SessionRequest)
message_decoder = msgspec.json.Decoder(ChatMessage)
pick_decoder = msgspec.json.Decoder(ChoicePick)


def error_frame(
    code: str, message: str, *, client_id: str | None = None, retry_after: float | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if client_id is not None:
        frame["client_id"] = client_id
    if retry_after is not None:
        frame["retry_after"] = max(1, round(retry_after))
    return frame
