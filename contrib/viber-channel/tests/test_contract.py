"""The gateway's channel contract (gateway.testing.ChannelContract) run against the installed viber plugin:
every fixture in Viber's callback format goes through the real gateway app, a real broker and Redis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from viber_fakes import AUTH_TOKEN, SENDER_NAME, fixture, fixture_names

from gateway.sdk import Message
from gateway.testing import ChannelContract, ProviderRequest, sign_hmac_sha256_hex

# Callbacks that legitimately yield nothing (Viber checking the webhook URL): tested in test_ingress.
SILENT = {"webhook"}


class TestViberChannelContract(ChannelContract):
    channel_type = "viber"

    def config(self) -> dict[str, Any]:
        return {"auth_token": AUTH_TOKEN, "sender_name": SENDER_NAME}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        return {
            name: ProviderRequest(body=fixture(name), headers={"Content-Type": "application/json"})
            for name in fixture_names()
            if name not in SILENT
        }

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["text_chinese"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        # Viber's header carries the bare hex digest, no "sha256=" prefix.
        return sign_hmac_sha256_hex(request, config["auth_token"], "X-Viber-Content-Signature", prefix="")

    def check_message(self, name: str, message: Message) -> None:
        assert message.conversation_id == f"{self.instance}:{message.sender.id}"
        assert message.external_id == message.tags.labels["viber"]["message_token"]
