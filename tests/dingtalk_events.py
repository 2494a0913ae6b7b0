"""DingTalk robot callbacks (HTTP mode) in the platform's real format, for the dingtalk channel's tests."""

from __future__ import annotations

import base64
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from gateway.testing import ProviderRequest, json_request

APP_KEY = "dingabcdefghijklmnop"
APP_SECRET = "dingtalk-app-secret-0123456789abcdefABCDEF"
GROUP_CID = "cidQ9Ye+JqiTx0Mx5XN3xXw=="
SINGLE_CID = "cid2xk1L4DeoTSa1+KGy2LEzg=="
STAFF = "manager4501"
CHINESE = "你好，退款什么时候到账？🙏💰 𠀀𪚥 订单 #8812"  # noqa: RUF001


def independent_sign(timestamp: str, secret: str) -> str:
    """The documented algorithm with another HMAC implementation (cryptography's, not hashlib's)."""
    mac = HMAC(secret.encode(), hashes.SHA256())
    mac.update(f"{timestamp}\n{secret}".encode())
    return base64.b64encode(mac.finalize()).decode()


def robot_message(
    msgtype: str = "text",
    *,
    text: str = CHINESE,
    content: Any = None,
    msg_id: str = "msgXa2SL7bOVqBf0sQzoAAhq4Q==",
    group: bool = False,
    session_webhook: str = "https://oapi.dingtalk.com/robot/sendBySession?session=c5bd1",
    expires_ms: int | None = None,
    staff_id: str | None = STAFF,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "msgtype": msgtype,
        "msgId": msg_id,
        "createAt": 1613630252678,
        "conversationType": "2" if group else "1",
        "conversationId": GROUP_CID if group else SINGLE_CID,
        "senderId": "$:LWCP_v1:$Fh1cbOEqxBbq9Au7j8wNzQ==",
        "senderNick": "张三",
        "senderCorpId": "dingcorp0123",
        "chatbotUserId": "$:LWCP_v1:$bot0Fh1cbOEqxBb==",
        "chatbotCorpId": "dingcorp0123",
        "robotCode": APP_KEY,
        "isAdmin": False,
        "sessionWebhook": session_webhook,
        "sessionWebhookExpiredTime": expires_ms if expires_ms is not None else int(time.time() * 1000) + 5_400_000,
    }
    if staff_id is not None:
        body["senderStaffId"] = staff_id
    if group:
        body.update({"conversationTitle": "售后服务群", "isInAtList": True, "atUsers": [{"dingtalkId": "$:bot"}]})
    if msgtype == "text":
        body["text"] = {"content": " " + text}
    else:
        body["content"] = content
    return body


def signed(request: ProviderRequest, secret: str = APP_SECRET, *, skew_ms: int = 0) -> ProviderRequest:
    timestamp = str(int(time.time() * 1000) - skew_ms)
    return request.with_headers({"timestamp": timestamp, "sign": independent_sign(timestamp, secret)})


def dingtalk_request(payload: dict[str, Any], secret: str = APP_SECRET) -> ProviderRequest:
    return signed(json_request(payload), secret)
