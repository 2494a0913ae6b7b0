# ruff: noqa: RUF001  (the Chinese template uses full-width punctuation on purpose)
"""``[processors.csat]``: survey templates, reply windows, expiry and the comment window."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.sdk import ProcessorSettings, check_template, pick_language

DAY_S = 86400
DEFAULT = "default"

Seconds = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]  # Choice.title's limits

# How long after the customer's last message a business may still write to them on its own, per
# channel type (0: no limit). Outside it the provider refuses the send, so a survey there would
# only fail: WhatsApp (Cloud API, and Twilio's WhatsApp senders), Messenger and Instagram allow
# 24 h (Meta's "human agent" 7-day tag is for people, not for automatic messages); WeChat
# Official Accounts and WeCom 微信客服 48 h (and 5 messages: the survey takes one). Telegram,
# Slack, LINE (push), SMS, e-mail and web chat have no such window.
DEFAULT_WINDOWS_S: dict[str, int] = {
    "whatsapp": DAY_S,
    "messenger": DAY_S,
    "instagram": DAY_S,
    "wechat": 2 * DAY_S,
    "wecom_kf": 2 * DAY_S,
}


class SurveyTemplate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The survey in one language: the question and the five choices' titles, rating 5 first."""

    question: Annotated[str, msgspec.Meta(min_length=1)]  # placeholders: {name}
    choices: Annotated[list[Title], msgspec.Meta(min_length=5, max_length=5)]


def _default_templates() -> dict[str, SurveyTemplate]:
    en = SurveyTemplate(
        question="How satisfied are you with the help you received?",
        choices=["Very satisfied", "Satisfied", "Neutral", "Dissatisfied", "Very dissatisfied"],
    )
    return {
        "en": en,
        "zh": SurveyTemplate(
            question="您对本次服务满意吗？", choices=["非常满意", "满意", "一般", "不满意", "非常不满意"]
        ),
        DEFAULT: msgspec.structs.replace(en),
    }


class CsatSettings(ProcessorSettings, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False  # surveys are opt-in: `enabled = true` (and `instances` to limit them)
    templates: dict[str, SurveyTemplate] = msgspec.field(default_factory=_default_templates)
    windows_s: dict[str, Seconds] = msgspec.field(default_factory=dict)  # merged over DEFAULT_WINDOWS_S
    expiry_s: Positive = 3 * DAY_S  # answers are taken this long after the survey was sent
    comment_window_s: Seconds = 600  # a text this soon after the rating is its comment (0: none)
    max_comment_chars: Positive = 2000
    own_ids: list[str] = msgspec.field(default_factory=list)  # our sender ids/handles (never surveyed)
    state_ttl_s: Positive = 30 * DAY_S  # a conversation silent longer than this is forgotten
    on_store_error: Literal["skip", "fail"] = "skip"  # Redis down: no survey / no answer taken, or fail

    def __post_init__(self) -> None:
        templates = {key.strip().lower().replace("_", "-"): value for key, value in self.templates.items()}
        if DEFAULT not in templates:
            raise ValueError("templates need a `default` entry (used when the conversation's language has none)")
        for language, template in templates.items():
            check_template(template.question, f"templates.{language}.question")
            if len({title.strip().casefold() for title in template.choices}) != 5:
                raise ValueError(f"templates.{language}.choices: the five titles must differ")
        self.templates = templates
        self.windows_s = {**DEFAULT_WINDOWS_S, **self.windows_s}

    def template_for(self, language: str | None) -> tuple[str, SurveyTemplate]:
        """The template for the conversation's language (zh-Hant-TW tries zh-hant-tw, zh-hant, zh)."""
        return pick_language(self.templates, language)

    def window_for(self, channel: str, customer_id: str | None) -> int:
        """The reply window of a channel type in seconds (0: none). Twilio carries SMS and WhatsApp
        alike; its WhatsApp addresses (``whatsapp:+49...``) have WhatsApp's window."""
        if channel == "twilio" and customer_id is not None and customer_id.startswith("whatsapp:"):
            return self.windows_s.get("whatsapp", 0)
        return self.windows_s.get(channel, 0)
