"""Text helpers several plugins need: what a customer wrote, HTML bodies as text, language tags.

They live in the core (and are exported by ``gateway.sdk``) so that no plugin imports another:
language detection, sentiment, escalation and routing all read a message's text the same way.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from gateway.model import Message


def message_text(message: Message) -> str:
    """What a human wrote: subject and text (captions of attachments too)."""
    content = message.content
    if not content.subject and not content.attachments:  # the usual case, on every processor's path
        return content.text or ""
    parts = [content.subject, content.text]
    parts.extend(a.caption for a in content.attachments)
    return "\n".join(p for p in parts if p)


def readable_text(message: Message) -> str:
    """:func:`message_text`, or the HTML body as text when there is nothing else (HTML-only mail)."""
    text = message_text(message)
    if not text.strip() and message.content.html:
        return html_to_text(message.content.html)
    return text


def primary_language(tag: str | None) -> str | None:
    """The primary subtag of a language tag, lower-cased: "pt-BR", "zh_CN" -> "pt", "zh"."""
    return tag.replace("_", "-").split("-")[0].strip().lower() if tag else None


# --- HTML to text ------------------------------------------------------------------------------


class _TextExtractor(HTMLParser):
    """Readable text from an HTML body; blockquote content comes out "> "-quoted so that the reply
    trimmer removes quoted history from HTML-only mail the same way as from plain text."""

    _BLOCK = frozenset(
        {"p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "pre"}
    )
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.quote_depth = 0
        self.skip_depth = 0
        self.line_depth = 0

    def _break(self) -> None:
        text = re.sub(r"[ \t\r\n\u00a0]+", " ", "".join(self.current)).strip()
        self.current = []
        if text or (self.lines and self.lines[-1] != ""):
            self.lines.append(("> " * self.line_depth) + text if text else "")
        self.line_depth = self.quote_depth

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip_depth += 1
        elif tag == "blockquote":
            self._break()
            self.quote_depth += 1
            self.line_depth = self.quote_depth
        elif tag in self._BLOCK:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "blockquote":
            self._break()
            self.quote_depth = max(0, self.quote_depth - 1)
            self.line_depth = self.quote_depth
        elif tag in self._BLOCK:
            self._break()

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.current.append(data)

    def text(self) -> str:
        self._break()
        return "\n".join(self.lines).strip()


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # pathological markup: keep what was read
        pass
    return parser.text()
