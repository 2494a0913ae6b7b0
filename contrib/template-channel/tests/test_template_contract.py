"""The gateway's channel contract (gateway.testing.ChannelContract) against this adapter.

Every payload in ``payloads/`` is posted, signed, to a real gateway app on a loopback port with a
real broker and Redis; the inherited tests check it lands exactly once and valid, that a
redelivery is absorbed, that unsigned, forged and tampered requests are refused with nothing
published, and that fields Acme may add later are tolerated. The plugin is found through its
entry point, so install the package first (``pip install -e '.[test]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.sdk import Message
from gateway.testing import ChannelContract, ProviderRequest, sign_hmac_sha256_hex

PAYLOADS = Path(__file__).parent / "payloads"


class TestTemplateChannelContract(ChannelContract):
    channel_type = "template"

    def config(self) -> dict[str, Any]:
        return {"signing_secret": "acme-signing-secret-0123456789", "api_key": "acme-api-key-0123456789"}

    def valid_payloads(self) -> Mapping[str, ProviderRequest]:
        # The exact bytes Acme sends: what the signature covers.
        return {
            path.stem: ProviderRequest(body=path.read_bytes(), headers={"Content-Type": "application/json"})
            for path in sorted(PAYLOADS.glob("*.json"))
        }

    def duplicate_payload(self) -> ProviderRequest:
        return self.valid_payloads()["text"]

    def sign(self, request: ProviderRequest, config: Mapping[str, Any]) -> ProviderRequest:
        return sign_hmac_sha256_hex(request, config["signing_secret"], "X-Acme-Signature")

    def check_message(self, name: str, message: Message) -> None:
        assert message.conversation_id.startswith(f"{self.instance}:conv_")
        assert message.tags.labels[self.channel_type]["event_id"].startswith("evt_")
