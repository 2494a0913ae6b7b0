"""Settings of a Meta channel instance (``[channels.<name>]`` in the config), shared by WhatsApp,
Messenger and Instagram."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.sdk import ChannelSettings

Secret = Annotated[str, msgspec.Meta(min_length=1)]
ButtonLabel = Annotated[str, msgspec.Meta(min_length=1, max_length=20)]


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
    # WhatsApp: the label of the button that opens a list of 4-10 choices (Meta requires one, of at
    # most 20 characters); a message's tags.labels.whatsapp.choices_button overrides it.
    choices_button: ButtonLabel = "Choose"
