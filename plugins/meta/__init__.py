"""Meta webhook channels: WhatsApp Cloud API, Messenger Platform and Instagram Messaging.

All three share Meta's webhook transport, so they share this package: a GET handshake echoing
``hub.challenge`` when ``hub.verify_token`` matches, and POSTs signed with
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>``. Meta batches: one POST
may carry several ``entry[]``, each with several ``changes[]`` (WhatsApp) or ``messaging[]``
(Messenger, Instagram) items, so one request becomes any number of messages and delivery events.

The package is split by role:

- :mod:`plugins.meta.payloads`: Meta's webhook and Graph API bodies as lenient msgspec structs
- :mod:`plugins.meta.inbound`: handshake, signature check and webhook parsing
- :mod:`plugins.meta.outbound`: send requests, the Graph API call and error classification
- :mod:`plugins.meta.settings`: the instance settings (:class:`MetaSettings`)
- :mod:`plugins.meta.channel`: the channel classes, each an inbound and an outbound half

This module registers the channels and re-exports the public names, so ``from plugins.meta import X``
works for all of them. See docs/channels/whatsapp.md and docs/channels/messenger-instagram.md.
"""

from __future__ import annotations

from typing import Any

from gateway.sdk import hookimpl
from plugins.meta.channel import (
    InstagramChannel,
    MessagingChannel,
    MessengerChannel,
    MetaChannel,
    WhatsAppChannel,
)
from plugins.meta.inbound import (
    SIGNATURE_HEADER,
)
from plugins.meta.outbound import (
    DEFAULT_GRAPH_URL,
    EMPTY_MESSAGE,
    LINK_TTL_S,
    PARTS_TTL_S,
    WA_CAPTION_MAX,
    WA_TEXT_MAX,
    describe_graph_error,
)
from plugins.meta.payloads import (
    GraphError,
    GraphErrorBody,
    MxAttachment,
    MxAttachmentPayload,
    MxCoordinates,
    MxDelivery,
    MxEntry,
    MxEvent,
    MxMessage,
    MxOutAttachment,
    MxOutMessage,
    MxOutPayload,
    MxOutQuickReply,
    MxOutReactionPayload,
    MxOutRecipient,
    MxOutReplyTo,
    MxOutRequest,
    MxParty,
    MxPayload,
    MxPostback,
    MxQuickReply,
    MxReaction,
    MxRead,
    MxReferral,
    MxReplyTo,
    MxSendResponse,
    MxStory,
    WaButton,
    WaChange,
    WaContact,
    WaContactCard,
    WaContactEmail,
    WaContactName,
    WaContactOrg,
    WaContactPhone,
    WaContext,
    WaEntry,
    WaError,
    WaFlowReply,
    WaInteractive,
    WaLocation,
    WaMedia,
    WaMessage,
    WaMetadata,
    WaOutAction,
    WaOutBody,
    WaOutButton,
    WaOutContext,
    WaOutInteractive,
    WaOutLocation,
    WaOutMedia,
    WaOutMessage,
    WaOutReaction,
    WaOutReplyButton,
    WaOutRow,
    WaOutSection,
    WaOutText,
    WaPayload,
    WaProfile,
    WaReaction,
    WaReferral,
    WaReferredProduct,
    WaReply,
    WaSendResponse,
    WaSentMessage,
    WaStatus,
    WaSystem,
    WaText,
    WaValue,
)
from plugins.meta.settings import (
    MessageTag,
    MetaSettings,
    Secret,
)

__all__ = [
    "DEFAULT_GRAPH_URL",
    "EMPTY_MESSAGE",
    "LINK_TTL_S",
    "PARTS_TTL_S",
    "SIGNATURE_HEADER",
    "WA_CAPTION_MAX",
    "WA_TEXT_MAX",
    "GraphError",
    "GraphErrorBody",
    "InstagramChannel",
    "MessageTag",
    "MessagingChannel",
    "MessengerChannel",
    "MetaChannel",
    "MetaSettings",
    "MxAttachment",
    "MxAttachmentPayload",
    "MxCoordinates",
    "MxDelivery",
    "MxEntry",
    "MxEvent",
    "MxMessage",
    "MxOutAttachment",
    "MxOutMessage",
    "MxOutPayload",
    "MxOutQuickReply",
    "MxOutReactionPayload",
    "MxOutRecipient",
    "MxOutReplyTo",
    "MxOutRequest",
    "MxParty",
    "MxPayload",
    "MxPostback",
    "MxQuickReply",
    "MxReaction",
    "MxRead",
    "MxReferral",
    "MxReplyTo",
    "MxSendResponse",
    "MxStory",
    "Secret",
    "WaButton",
    "WaChange",
    "WaContact",
    "WaContactCard",
    "WaContactEmail",
    "WaContactName",
    "WaContactOrg",
    "WaContactPhone",
    "WaContext",
    "WaEntry",
    "WaError",
    "WaFlowReply",
    "WaInteractive",
    "WaLocation",
    "WaMedia",
    "WaMessage",
    "WaMetadata",
    "WaOutAction",
    "WaOutBody",
    "WaOutButton",
    "WaOutContext",
    "WaOutInteractive",
    "WaOutLocation",
    "WaOutMedia",
    "WaOutMessage",
    "WaOutReaction",
    "WaOutReplyButton",
    "WaOutRow",
    "WaOutSection",
    "WaOutText",
    "WaPayload",
    "WaProfile",
    "WaReaction",
    "WaReferral",
    "WaReferredProduct",
    "WaReply",
    "WaSendResponse",
    "WaSentMessage",
    "WaStatus",
    "WaSystem",
    "WaText",
    "WaValue",
    "WhatsAppChannel",
    "describe_graph_error",
]


@hookimpl
def register_channels(register: Any) -> None:
    register(WhatsAppChannel)
    register(MessengerChannel)
    register(InstagramChannel)
