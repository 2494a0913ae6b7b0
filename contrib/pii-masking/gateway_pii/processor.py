"""The ``pii_masking`` processor: personal data is masked before a message leaves the worker.

It runs after the built-in processors (language, sentiment, escalation, routing, auto-replies),
so they still see the customer's words; what reaches ``gateway.processed.v1`` (or a routed
topic) is masked. The unmasked content is kept only where configured: ``keep_original = "redis"``
stores it in the conversation state with a TTL, for the services allowed to read it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import msgspec

from gateway.sdk import Message, Processor, ProcessorContext, ProcessorSettings, hookimpl
from gateway_pii.detect import Span, find_all

Kind = Literal["email", "phone", "card", "cn_id"]
ALL_KINDS: list[Kind] = ["email", "phone", "card", "cn_id"]
ORIGINAL_FIELD = "pii-original:"

GATEWAY_API = "1.0"  # the plugin API this plugin was written against (checked when it loads)


class PiiSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    kinds: list[Kind] = msgspec.field(default_factory=lambda: list(ALL_KINDS))
    # Regions whose national phone formats are recognised (numbers with +country code always are).
    regions: list[str] = msgspec.field(default_factory=lambda: ["CN", "US", "GB"])
    style: Literal["label", "partial"] = "label"  # "[phone]" or "********1234"
    keep_original: Literal["none", "redis"] = "none"
    original_ttl_s: int = 7 * 24 * 3600
    drop_raw: bool = True  # the provider payload (kept with keep_raw) holds the same data unmasked


def mask(text: str, spans: list[Span], style: str) -> str:
    parts: list[str] = []
    cursor = 0
    for span in spans:
        parts.append(text[cursor : span.start])
        found = text[span.start : span.end]
        if style == "partial":
            tail = found[-4:] if span.kind != "email" else found[found.index("@") :]
            parts.append("*" * (len(found) - len(tail)) + tail)
        else:
            parts.append(f"[{span.kind}]")
        cursor = span.end
    parts.append(text[cursor:])
    return "".join(parts)


class PiiMasking(Processor):
    name = "pii_masking"
    description = "Masks phone numbers, e-mail addresses, card numbers (Luhn) and Chinese ID numbers (checksum)."
    Settings = PiiSettings
    after = ("language", "sentiment", "escalation", "routing", "autoreply")

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        assert isinstance(settings, PiiSettings)
        self.config = settings
        self.regions = [r.upper() for r in settings.regions]

    def _mask_field(self, value: str | None, counts: Counter[str]) -> str | None:
        if not value:
            return value
        spans = find_all(value, self.config.kinds, self.regions)
        counts.update(span.kind for span in spans)
        return mask(value, spans, self.config.style) if spans else value

    async def process(self, message: Message, ctx: ProcessorContext) -> Message:
        content = message.content
        original = {"text": content.text, "subject": content.subject, "html": content.html}
        counts: Counter[str] = Counter()
        content.text = self._mask_field(content.text, counts)
        content.subject = self._mask_field(content.subject, counts)
        content.html = self._mask_field(content.html, counts)
        if self.config.drop_raw:
            message.raw = None
        if not counts:
            return message
        label: dict[str, Any] = {"masked": dict(sorted(counts.items()))}
        if self.config.keep_original == "redis":
            field = ORIGINAL_FIELD + message.id
            await ctx.store.set_state(message.conversation_id, field, original, self.config.original_ttl_s)
            label["original"] = {"store": "redis", "conversation": message.conversation_id, "field": field}
        message.tags.labels["pii"] = label
        return message


@hookimpl
def register_processors(register: Any) -> None:
    register(PiiMasking)
