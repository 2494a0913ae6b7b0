"""The Meta channel classes registered with the gateway: WhatsApp Cloud API, Messenger Platform and
Instagram Messaging. Each combines its receiving half (:mod:`plugins.meta.inbound`) with its sending
half (:mod:`plugins.meta.outbound`) and names its ``type``, webhook ``object`` and description.
"""

from __future__ import annotations

from plugins.meta.inbound import MessagingInbound, MetaInbound, WhatsAppInbound
from plugins.meta.outbound import MessagingOutbound, MetaOutbound, WhatsAppOutbound
from plugins.meta.settings import MetaSettings


class MetaChannel(MetaInbound, MetaOutbound):
    """What every Meta product shares: settings, handshake, signature, envelope check, sending."""

    Settings = MetaSettings
    secret_settings = frozenset({"app_secret", "verify_token", "access_token"})

    settings: MetaSettings


class WhatsAppChannel(WhatsAppInbound, WhatsAppOutbound, MetaChannel):
    type = "whatsapp"
    object_type = "whatsapp_business_account"
    description = "WhatsApp Cloud API webhooks (messages and delivery statuses)."


class MessagingChannel(MessagingInbound, MessagingOutbound, MetaChannel):
    """Messenger and Instagram share the Messenger Platform's ``entry[].messaging[]`` events."""


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
    choices_in_text = True  # quick replies are not shown on desktop: the text lists the choices too
