"""Feishu's JSON, as msgspec structs: event envelopes in, im/v1 messages out.

Field names follow the lark-oapi models (``EventHeader``, ``P2ImMessageReceiveV1``, ``EventMessage``,
``EventSender``, ``MentionEvent``, ``CreateMessageRequestBody``). Unknown fields are ignored so a
field Feishu adds never breaks parsing; what must be there is required, so a body that is not a
Feishu event fails with the path that is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Struct(msgspec.Struct, kw_only=True):
    """Feishu's JSON is snake_case; unknown fields are ignored."""


class Envelope(_Struct, kw_only=True):
    """Every body Feishu POSTs: ``{"encrypt"}``, a v1 ``url_verification`` or a v2 ``schema: 2.0`` event."""

    encrypt: str | None = None
    schema: str | None = None  # "2.0"
    header: dict[str, Any] | None = None
    event: dict[str, Any] | None = None
    type: str | None = None  # "url_verification", or "event_callback" for v1 events
    token: str | None = None  # v1 and url_verification: the Verification Token
    challenge: str | None = None
    uuid: str | None = None  # v1 event id


class Header(_Struct, kw_only=True):
    event_id: str | None = None
    token: str | None = None
    create_time: str | int | None = None  # milliseconds, as a string
    event_type: str | None = None
    tenant_key: str | None = None
    app_id: str | None = None


class UserId(_Struct, kw_only=True):
    open_id: str | None = None  # per app: what sending to a person takes (receive_id_type=open_id)
    union_id: str | None = None  # per developer: the same person across this developer's apps
    user_id: str | None = None  # the tenant's employee id (needs a permission to be sent)


class Sender(_Struct, kw_only=True):
    sender_id: UserId | None = None
    sender_type: str | None = None  # "user", or "app" for bots (ours included)
    tenant_key: str | None = None


class Mention(_Struct, kw_only=True):
    key: str | None = None  # "@_user_1": the placeholder in the text
    id: UserId | None = None
    name: str | None = None
    tenant_key: str | None = None


class EventMessage(_Struct, kw_only=True):
    message_id: NonEmpty
    root_id: str | None = None
    parent_id: str | None = None
    create_time: str | int | None = None  # milliseconds, as a string
    update_time: str | int | None = None
    chat_id: NonEmpty
    thread_id: str | None = None
    chat_type: str | None = None  # "p2p" or "group"
    message_type: NonEmpty
    content: str = ""  # a JSON string, shaped by message_type
    mentions: list[Mention] = []
    user_agent: str | None = None


class ReceiveEvent(_Struct, kw_only=True):
    """``im.message.receive_v1``'s ``event``."""

    sender: Sender
    message: EventMessage


class CardActionValue(_Struct, kw_only=True):
    """What a clicked button carries back (its ``value``); ours have ``choice`` and ``title``."""

    choice: str | None = None
    title: str | None = None


class CardAction(_Struct, kw_only=True):
    value: Any = None  # the button's value as sent: ours an object, others' anything
    tag: str | None = None  # "button", "select_static", "input"...
    name: str | None = None
    option: str | None = None


class CardOperator(_Struct, kw_only=True):
    """Who clicked (lark-oapi ``CallBackOperator``)."""

    open_id: str | None = None
    union_id: str | None = None
    user_id: str | None = None
    tenant_key: str | None = None


class CardContext(_Struct, kw_only=True):
    """Where the card is (lark-oapi ``CallBackContext``): the message and its chat."""

    open_message_id: str | None = None
    open_chat_id: str | None = None
    url: str | None = None
    preview_token: str | None = None


class CardActionEvent(_Struct, kw_only=True):
    """``card.action.trigger``'s ``event`` (lark-oapi ``P2CardActionTriggerData``)."""

    operator: CardOperator | None = None
    token: str | None = None  # a card update token (not the verification token)
    action: CardAction | None = None
    host: str | None = None  # "im_message" for a card in a chat
    delivery_type: str | None = None
    context: CardContext | None = None


# -- sending -----------------------------------------------------------------------------------------


class CreateMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Body of ``POST /open-apis/im/v1/messages``; ``content`` is a JSON *string*."""

    receive_id: str
    msg_type: str
    content: str
    uuid: str | None = None  # idempotency: one message per uuid per hour


class ReplyMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Body of ``POST /open-apis/im/v1/messages/{message_id}/reply``."""

    msg_type: str
    content: str
    reply_in_thread: bool = False
    uuid: str | None = None


class TokenRequest(msgspec.Struct, kw_only=True):
    app_id: str
    app_secret: str


class Answer(_Struct, kw_only=True):
    """Every Open API answer: ``code`` 0 is success; ``msg`` explains the others."""

    code: int | None = None
    msg: str | None = None
    data: dict[str, Any] | None = None
    # tenant_access_token/internal answers at the top level
    tenant_access_token: str | None = None
    expire: int | None = None
