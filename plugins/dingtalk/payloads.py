"""DingTalk's JSON, as msgspec structs: robot callbacks in (HTTP mode), robot messages out.

Field names follow DingTalk's robot "receive message" reference and dingtalk-stream's
``ChatbotMessage`` (camelCase). Unknown fields are ignored; what identifies a message is required.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _Struct(msgspec.Struct, kw_only=True, rename="camel"):
    """DingTalk's JSON is camelCase; unknown fields are ignored."""


class AtUser(_Struct, kw_only=True):
    dingtalk_id: str | None = None
    staff_id: str | None = None


class RobotMessage(_Struct, kw_only=True):
    """One message a person sent the robot (1:1, ``conversationType`` 1, or group, 2)."""

    msgtype: NonEmpty
    msg_id: NonEmpty
    conversation_id: NonEmpty
    create_at: int | None = None  # milliseconds
    conversation_type: str | int | None = None
    conversation_title: str | None = None
    sender_id: str | None = None  # encrypted, stable per sender
    sender_nick: str | None = None
    sender_staff_id: str | None = None  # the organization's userid (absent for external users)
    sender_corp_id: str | None = None
    chatbot_user_id: str | None = None
    chatbot_corp_id: str | None = None
    robot_code: str | None = None
    is_admin: bool | None = None
    is_in_at_list: bool | None = None
    at_users: list[AtUser] = []
    session_webhook: str | None = None
    session_webhook_expired_time: int | None = None  # milliseconds
    text: dict[str, Any] | None = None
    content: Any = None


class Session(msgspec.Struct, kw_only=True):
    """A conversation's sessionWebhook, kept in Redis until it expires."""

    url: str
    expires_ms: int


class Route(msgspec.Struct, kw_only=True):
    """How to reach a conversation through the OpenAPI once its sessionWebhook expired."""

    conversation_type: str  # "1" (1:1) or "2" (group)
    staff_id: str | None = None  # 1:1: the userid batchSend takes


class TokenAnswer(_Struct, kw_only=True):
    access_token: str | None = None
    expire_in: int | None = None
    code: str | None = None
    message: str | None = None


class OpenApiError(_Struct, kw_only=True):
    code: str | None = None
    message: str | None = None
    requestid: str | None = None


class WebhookAnswer(msgspec.Struct, kw_only=True):
    errcode: int | None = None
    errmsg: str | None = None


class GroupSend(_Struct, kw_only=True, omit_defaults=True):
    robot_code: str
    open_conversation_id: str
    msg_key: str
    msg_param: str  # a JSON string


class BatchSend(_Struct, kw_only=True, omit_defaults=True):
    robot_code: str
    user_ids: list[str]
    msg_key: str
    msg_param: str
