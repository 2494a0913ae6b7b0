"""Loop guards: messages that an automatic message (an auto-reply, a survey) must never answer.

Answering a machine starts a loop (two autoresponders writing to each other forever) or spams a
mailing list, and answering our own messages (an echo of what the business sent) is nonsense.
Every processor that sends something on its own applies the same rules, so they live here.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.model import Message

# Flags the email channels set in ``tags.labels["email"]`` for mail no person wrote.
EMAIL_AUTOMATION_FLAGS = ("bounce", "auto_submitted", "mailing_list", "bulk")
# Content that is not something a person wrote to us (reactions, joins, follows, read receipts).
NON_MESSAGE_CONTENT = frozenset({"reaction", "event"})


class LoopGuard:
    """The loop-guard rules, in three parts so a caller can put its own checks in between.

    ``own_ids``: sender ids or handles that are us (no-reply addresses, our bots), compared
    case-insensitively, in addition to the instance itself and the message's own recipient.
    """

    def __init__(self, own_ids: Iterable[str] = ()) -> None:
        self._own = frozenset(i.casefold() for i in own_ids)

    def automated(self, message: Message) -> str | None:
        """Why the sender is not a person to answer (``outbound``, ``no_auto_reply``, ``from_bot``,
        ``bounce``, ``auto_submitted``, ``mailing_list``, ``bulk``), or None."""
        if message.direction != "inbound":
            return "outbound"
        labels = message.tags.labels
        if labels.get("no_auto_reply"):
            return "no_auto_reply"
        if labels.get("from_bot"):
            return "from_bot"
        email = labels.get("email")
        if isinstance(email, dict):
            for flag in EMAIL_AUTOMATION_FLAGS:
                if email.get(flag):
                    return flag
        return None

    def own_message(self, message: Message) -> bool:
        """Whether we sent it: the sender is the recipient, the instance, or one of ``own_ids``."""
        sender = message.sender
        own = self._own
        return (
            (message.recipient is not None and sender.id == message.recipient.id)
            or sender.id == message.instance
            or sender.id.casefold() in own
            or (sender.handle is not None and sender.handle.casefold() in own)
        )

    @staticmethod
    def not_answerable(message: Message) -> str | None:
        """``not_a_message`` (a reaction, a channel event) or ``empty`` (no text), or None."""
        if message.content.type in NON_MESSAGE_CONTENT:
            return "not_a_message"
        if not (message.content.text or "").strip():
            return "empty"
        return None

    def __call__(self, message: Message) -> str | None:
        """The first rule that applies (automated, ``own_message``, not answerable), or None."""
        reason = self.automated(message)
        if reason is not None:
            return reason
        if self.own_message(message):
            return "own_message"
        return self.not_answerable(message)
