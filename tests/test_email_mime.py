# ruff: noqa: RUF001, RUF002
"""Unit tests of the MIME normalizer (plugins/email/mime.py) with real-world style messages.

The fixtures under tests/fixtures/email/ imitate what common clients and MTAs produce: Gmail
(multipart/alternative, "On ... wrote:"), Outlook/Exchange ("-----Original Message-----",
Thread-Index), Foxmail/QQ Mail (GB2312-labelled GBK, "在 ... 写道："), Postfix DSNs, out-of-office
replies and list mail. Every normalized message is also round-tripped through the topic schema.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.channel import ChannelServices, PayloadError
from gateway.config import RedisSection
from gateway.model import Message, decode_message, encode
from gateway.store.redis import RedisStore
from plugins.email.mime import decode_bytes, decode_header_value, html_to_text, message_from_mime, trim_reply
from plugins.email.smtp import SmtpChannel, SmtpSettings

FIXTURES = Path(__file__).parent / "fixtures" / "email"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def make_channel(name: str = "mail", **settings: Any) -> SmtpChannel:
    return SmtpChannel(
        name,
        SmtpSettings(type="smtp", domains=["shop.example.com"], **settings),
        ChannelServices(store=RedisStore(RedisSection())),  # never used by the normalizer
    )


def parse(name: str, channel: SmtpChannel | None = None, **envelope: Any) -> Message:
    message = message_from_mime(channel or make_channel(), fixture(name), **envelope)
    assert decode_message(encode(message)) == message  # valid against the topic contract
    return message


def email_labels(message: Message) -> dict[str, Any]:
    labels: dict[str, Any] = message.tags.labels["email"]
    return labels


def test_plain_message() -> None:
    message = parse("plain.eml", envelope_to=["support@shop.example.com"], envelope_from="ada@example.org")
    assert message.channel == "smtp" and message.instance == "mail"
    assert message.external_id == "CAH3xq7a1Bz9=orig@mail.example.org"
    assert message.conversation_id == "mail:CAH3xq7a1Bz9=orig@mail.example.org"
    assert message.sender.id == "ada@example.org" and message.sender.handle == "ada@example.org"
    assert message.sender.name == "Ada Lovelace"
    assert message.recipient is not None
    assert message.recipient.id == "support@shop.example.com" and message.recipient.name == "Shop Support"
    assert message.sent_at == datetime(2024, 11, 12, 9, 13, 58, tzinfo=UTC)
    assert message.content.type == "email"
    assert message.content.subject == "Order 1234 has not arrived"
    assert message.content.text is not None
    assert message.content.text.startswith("Hello,\n\nmy order 1234 was due")
    assert message.content.text.endswith("Thanks,\nAda")
    assert message.content.html is None and message.content.attachments == []
    labels = email_labels(message)
    assert labels["quoted_trimmed"] is False and "full_text" not in labels
    assert labels["envelope_to"] == ["support@shop.example.com"]
    assert "no_auto_reply" not in message.tags.labels
    assert message.raw is None


def test_multipart_alternative_keeps_text_and_html_and_decodes_encoded_subject() -> None:
    message = parse("alternative.eml")
    assert message.content.subject == "Café order ☕"
    assert message.content.text == "Hi, the café beans I ordered arrived crushed 😞\nCan I get a replacement?"
    assert message.content.html is not None and message.content.html.startswith('<div dir="ltr">Hi, the café')
    assert message.sender.name == "Grace Hopper"
    assert message.sent_at == datetime(2024, 11, 13, 13, 1, 12, tzinfo=UTC)  # -0500 converted to UTC


def test_gbk_chinese_reply_with_encoded_word_subject_and_quote_trimmed() -> None:
    message = parse("gbk_chinese.eml")
    # Labelled GB2312, but 喆 exists only in GBK/GB18030: the alias reads it anyway.
    assert message.sender.name == "王喆"
    assert message.content.subject == "回复: 订单 8842 还没有发货"  # reply prefix kept
    assert message.content.text == "您好：\n\n我的订单 8842 已经付款三天了，还没有发货，请尽快处理。\n谢谢！\n\n王喆"
    labels = email_labels(message)
    assert labels["quoted_trimmed"] is True
    assert "写道：" in labels["full_text"] and "48小时内发货" in labels["full_text"]
    assert labels["charsets"] == ["gb18030"]
    # References' first id is the thread root, so the whole exchange is one conversation.
    assert message.conversation_id == "mail:order-8842-confirm@shop.example.com"
    assert message.content.reply_to == "reply-1731202212@shop.example.com"
    assert message.sent_at == datetime(2024, 11, 11, 2, 5, 41, tzinfo=UTC)


def test_iso_8859_1_headers_and_body() -> None:
    message = parse("iso_8859_1.eml")
    assert message.sender.name == "François Müller"
    assert message.content.subject == "Problème de livraison à Besançon"
    assert message.content.text is not None
    assert "arrivé à Besançon" in message.content.text
    assert "“livré”" in message.content.text  # cp1252 quotes in a body labelled ISO-8859-1
    assert message.recipient is not None and message.recipient.name == "Service Clientèle"
    assert email_labels(message)["cc"] == ["compta@example.fr"]


def test_html_only_mail_gets_text_without_quoted_blockquote() -> None:
    message = parse("html_only.eml")
    assert message.content.text == "Thanks, the refund arrived — all good now!"
    assert message.content.html is not None and "<blockquote" in message.content.html
    labels = email_labels(message)
    assert labels["text_from_html"] is True and labels["quoted_trimmed"] is True
    assert "> We have issued a refund of €42.00" in labels["full_text"]
    assert "color: red" not in labels["full_text"]  # style content is not text
    assert message.conversation_id == "mail:refund-5521@shop.example.com"  # In-Reply-To without References


def test_attachments_and_inline_image_are_metadata_only() -> None:
    raw = fixture("attachments.eml")
    message = parse("attachments.eml")
    assert message.content.text == "The parcel arrived damaged, see the photo below and the invoice attached."
    assert message.content.html is not None and "cid:photo1@example.de" in message.content.html
    image, pdf, sheet = message.content.attachments
    png = msgspec.json.decode(encode(message))["content"]["attachments"][0]
    assert "data" not in png and "content" not in png  # no bytes on the topic

    assert image.kind == "image" and image.mime_type == "image/png" and image.filename == "parcel.png"
    assert image.caption == "cid:photo1@example.de"
    assert image.size == 70 and image.media_id == "b7c1e2f0-attach@mail.example.de/5"
    assert image.sha256 == hashlib.sha256(image_bytes(raw)).hexdigest()

    assert pdf.kind == "document" and pdf.mime_type == "application/pdf"
    assert pdf.filename == "Rechnung Nº 1801.pdf"  # RFC 2231 filename* wins over the encoded-word name
    assert pdf.size == len(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    assert sheet.filename == "发票清单.xlsx"  # RFC 2231 continuation in UTF-8
    assert sheet.kind == "file"

    parts = email_labels(message)["attachments"]
    assert [p["disposition"] for p in parts] == ["inline", "attachment", "attachment"]
    assert parts[0]["content_id"] == "photo1@example.de"
    assert [p["media_id"] for p in parts] == [a.media_id for a in message.content.attachments]


def image_bytes(raw: bytes) -> bytes:
    """The PNG's decoded bytes, found independently of the normalizer's walk."""
    import email

    msg = email.message_from_bytes(raw)
    for part in msg.walk():
        if part.get_content_type() == "image/png":
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            return data
    raise AssertionError("no png part")


def test_reply_lands_in_the_conversation_of_the_original() -> None:
    original = parse("plain.eml")
    reply = parse("reply_references.eml")
    assert reply.conversation_id == original.conversation_id
    assert reply.external_id != original.external_id
    assert reply.content.subject == "Re: Order 1234 has not arrived"
    # New text only: the signature ("-- ") and the two-line Gmail attribution with its quote are cut.
    assert reply.content.text == "It's still not here. Can you send a replacement?"
    labels = email_labels(reply)
    assert labels["quoted_trimmed"] is True and labels["signature_trimmed"] is True
    assert "Analytical Engines Ltd." in labels["full_text"]
    assert labels["references"] == ["CAH3xq7a1Bz9=orig@mail.example.org", "support-reply-1@shop.example.com"]
    assert labels["thread_root"] == "CAH3xq7a1Bz9=orig@mail.example.org"


def test_outlook_reply_is_trimmed_at_original_message() -> None:
    message = parse("outlook_reply.eml")
    assert message.sender.name == "Smith, John"  # quoted comma does not split the address
    assert message.sender.id == "john.smith@contoso.example"
    assert message.content.subject == "RE: Invoice 7781 - wrong VAT number"
    assert message.content.text is not None
    assert message.content.text.endswith("Kind regards,\nJohn")
    assert "Original Message" not in message.content.text
    assert "Please find attached invoice 7781" in email_labels(message)["full_text"]
    assert message.conversation_id == "mail:inv-7781@shop.example.com"


def test_dsn_bounce_is_tagged_and_never_auto_answered() -> None:
    message = parse("dsn_bounce.eml", envelope_from="<>")
    labels = email_labels(message)
    assert labels["bounce"] is True and labels["auto_reply"] == "bounce"
    assert message.tags.labels["no_auto_reply"] is True
    assert message.sender.id == "mailer-daemon@mx.example.org"
    assert message.content.text is not None and "550 5.1.1 User unknown" in message.content.text
    assert labels["delivery_status"] == [
        {
            "recipient": "rfc822; nobody@example.org",
            "action": "failed",
            "status": "5.1.1",
            "diagnostic": "smtp; 550 5.1.1 User unknown",
        }
    ]
    assert labels["returned_message_id"] == "ship-9001@shop.example.com"
    [returned] = message.content.attachments
    assert returned.mime_type == "message/rfc822" and returned.filename == "Your order has shipped.eml"


@pytest.mark.parametrize("envelope_from", ["<>", ""])
def test_null_envelope_sender_marks_a_bounce(envelope_from: str) -> None:
    raw = b"From: Someone <someone@example.com>\r\nSubject: hi\r\nMessage-ID: <n1@example.com>\r\n\r\nhello\r\n"
    message = message_from_mime(make_channel(), raw, envelope_from=envelope_from)
    assert email_labels(message)["bounce"] is True
    assert message.tags.labels["no_auto_reply"] is True


def test_auto_reply_is_tagged() -> None:
    message = parse("auto_reply.eml")
    labels = email_labels(message)
    assert labels["auto_submitted"] is True and labels["bounce"] is False
    assert message.tags.labels["no_auto_reply"] is True
    assert message.conversation_id == "mail:ticket-4411@shop.example.com"


def test_mailing_list_is_tagged() -> None:
    message = parse("mailing_list.eml")
    labels = email_labels(message)
    assert labels["mailing_list"] is True and labels["bulk"] is True
    assert labels["list_id"] == "Courier customer news <news.courier.example>"
    assert message.tags.labels["no_auto_reply"] is True


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("X-Autoreply: yes", "auto_submitted"),
        ("X-Autorespond: vacation", "auto_submitted"),
        ("Precedence: junk", "bulk"),
        ("Precedence: list", "mailing_list"),
        ("List-Unsubscribe: <mailto:u@lists.example>", "mailing_list"),
        ("X-Auto-Response-Suppress: OOF, AutoReply", None),
        ("Auto-Submitted: no", "person"),
    ],
)
def test_machine_mail_headers(header: str, expected: str | None) -> None:
    raw = f"From: a@example.com\r\nMessage-ID: <h@example.com>\r\n{header}\r\n\r\nbody\r\n".encode()
    message = message_from_mime(make_channel(), raw)
    labels = email_labels(message)
    if expected == "person":
        assert "no_auto_reply" not in message.tags.labels and labels["auto_reply"] is None
        return
    assert message.tags.labels["no_auto_reply"] is True
    if expected is not None:
        assert labels[expected] is True


def test_missing_message_id_gets_a_stable_synthesized_one() -> None:
    raw = fixture("missing_message_id.eml")
    first = message_from_mime(make_channel(), raw)
    assert first.external_id is not None and first.external_id.startswith("sha256:")
    assert email_labels(first)["message_id"] is None
    assert first.conversation_id == f"mail:{first.external_id}"
    # The same mail relayed once more (another Received line) keeps its id: dedup still works.
    relayed = b"Received: from relay2.example.net by mx.shop.example.com; Thu, 21 Nov 2024 06:05:00 +0000\n" + raw
    assert message_from_mime(make_channel(), relayed).external_id == first.external_id
    changed = raw.replace(b"out of stock", b"back in stock")
    assert message_from_mime(make_channel(), changed).external_id != first.external_id
    # Attachments of such mail are addressed by the synthesized id too.
    assert first.content.text == "Item 7781 is out of stock."


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \r\n\r\n", fixture("garbage.eml"), b"just some words\nwithout any header\n", b"\x00\xff\xfe\x00"],
)
def test_garbage_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        message_from_mime(make_channel(), raw)


def test_absurdly_nested_mime_is_a_payload_error_not_a_crash() -> None:
    parts = [b"From: a@example.com\r\nMessage-ID: <deep@x>\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"]
    for depth in range(1, 5000):
        parts.append(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (depth - 1, depth))
    with pytest.raises(PayloadError):
        message_from_mime(make_channel(), b"".join(parts) + b"--b4999\r\n\r\ndeep\r\n")


def test_huge_bodies_are_capped() -> None:
    raw = b"From: a@example.com\r\nMessage-ID: <big@x>\r\n\r\n" + b"All work and no play.\r\n" * 20000
    message = message_from_mime(make_channel(), raw)
    assert message.content.text is not None and len(message.content.text) <= 200_000
    assert email_labels(message)["truncated"] is True
    assert len(encode(message)) < 500_000  # fits a default Kafka record


def test_damaged_encoded_words_do_not_spoil_the_rest() -> None:
    raw = b"From: a@example.com\r\nSubject: =?utf-8?B?5L2g5aW9?= =?utf-8?B?!!bad?=\r\n\r\nx\r\n"
    subject = message_from_mime(make_channel(), raw).content.subject
    assert subject is not None and subject.startswith("你好")
    unpadded = b"From: a@example.com\r\nSubject: Re: =?utf-8?B?5L2g5aW9?= =?utf-8?B?5L2g5a?=\r\n\r\nx\r\n"
    subject = message_from_mime(make_channel(), unpadded).content.subject
    assert subject is not None and subject.startswith("Re: 你好")


def test_mail_without_any_sender_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="no sender"):
        message_from_mime(make_channel(), b"To: support@shop.example.com\r\nSubject: x\r\n\r\nhi\r\n")


def test_envelope_sender_stands_in_for_a_missing_from() -> None:
    raw = b"To: support@shop.example.com\r\nSubject: x\r\nMessage-ID: <e@x>\r\n\r\nhi\r\n"
    message = message_from_mime(make_channel(), raw, envelope_from="Robot@Example.com")
    assert message.sender.id == "robot@example.com"


def test_recipient_prefers_the_envelope_and_instances_namespace_conversations() -> None:
    raw = fixture("plain.eml")
    one = message_from_mime(make_channel("mail-eu"), raw, envelope_to=["Orders@Shop.Example.com"])
    two = message_from_mime(make_channel("mail-us"), raw)
    assert one.recipient is not None and one.recipient.id == "orders@shop.example.com"
    assert two.recipient is not None and two.recipient.id == "support@shop.example.com"
    assert one.conversation_id == "mail-eu:CAH3xq7a1Bz9=orig@mail.example.org"
    assert two.conversation_id == "mail-us:CAH3xq7a1Bz9=orig@mail.example.org"
    assert one.instance == "mail-eu" and two.instance == "mail-us"


def test_keep_raw_keeps_headers_not_bodies() -> None:
    message = message_from_mime(make_channel(keep_raw=True), fixture("alternative.eml"))
    assert message.raw is not None
    headers = dict((name, value) for name, value in message.raw["headers"])
    assert headers["Subject"] == "Café order ☕"
    assert "replacement" not in str(message.raw)


def test_mislabeled_and_unknown_charsets_never_crash() -> None:
    utf8_labelled_latin1 = (
        b"From: a@example.com\r\nMessage-ID: <c1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + "Grüße".encode("latin-1")
    )
    message = message_from_mime(make_channel(), utf8_labelled_latin1)
    assert message.content.text is not None and message.content.text.startswith("Gr")
    unknown = (
        b"From: a@example.com\r\nMessage-ID: <c2@x>\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\n"
        + "中文内容".encode()
    )
    assert message_from_mime(make_channel(), unknown).content.text == "中文内容"
    raw_8bit_subject = b"From: a@example.com\r\nSubject: " + "发票问题".encode("gbk") + b"\r\n\r\nx\r\n"
    assert message_from_mime(make_channel(), raw_8bit_subject).content.subject == "发票问题"
    big5 = (
        b"From: =?big5?B?" + __import__("base64").b64encode("陳小姐".encode("big5")) + b"?= <chen@example.tw>\r\n"
        b"Message-ID: <b5@x>\r\nContent-Type: text/plain; charset=big5\r\n\r\n" + "請問運費多少？".encode("big5")
    )
    message = message_from_mime(make_channel(), big5)
    assert message.sender.name == "陳小姐" and message.content.text == "請問運費多少？"
    broken_base64 = (
        b"From: a@example.com\r\nMessage-ID: <c3@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64***\r\n"
    )
    message_from_mime(make_channel(), broken_base64)  # tolerated


@pytest.mark.parametrize(
    ("data", "charset", "text"),
    [
        ("价格".encode("gb18030"), "gb2312", "价格"),
        ("€100".encode("cp1252"), "iso-8859-1", "€100"),
        ("€100".encode("iso-8859-15"), "iso-8859-15", "€100"),
        ("Zürich".encode("cp1250"), "windows-1250", "Zürich"),
        ("хорошо".encode("cp1251"), "windows-1251", "хорошо"),
        ("你好".encode(), "gb2312", "你好"),  # labelled GB2312 but UTF-8: falls back to UTF-8
        ("你好".encode("gbk"), None, "你好"),
    ],
)
def test_decode_bytes(data: bytes, charset: str | None, text: str) -> None:
    assert decode_bytes(data, charset)[0] == text


def test_decode_header_value() -> None:
    assert decode_header_value("=?UTF-8?B?5L2g5aW9?= =?UTF-8?B?5LiW55WM?=") == "你好世界"  # adjacent words join
    assert decode_header_value("Re: =?utf-8?q?Order_=231234?= status") == "Re: Order #1234 status"
    assert decode_header_value("=?GB2312?B?1tC5+g==?=") == "中国"
    assert decode_header_value("=?x-unknown?B?5Lit?=") == "中"  # unknown label: UTF-8 guess
    assert decode_header_value("plain\r\n folded") == "plain folded"


@pytest.mark.parametrize(
    ("body", "new"),
    [
        ("Yes please.\n\nOn Mon, 4 Nov 2024 at 10:00, Shop <s@shop.example> wrote:\n> Want a refund?", "Yes please."),
        ("好的，谢谢\n\n在 2024年11月4日 星期一 10:00，客服 <s@shop.example> 写道：\n> 需要退款吗？", "好的，谢谢"),
        ("OK\n\n------------------ 原始邮件 ------------------\n发件人: 客服\n发送时间: 2024年11月4日", "OK"),
        ("Fine.\n\n________________________________\nFrom: Shop\nSent: Monday\nTo: me", "Fine."),
        ("Danke\n\nVon: Shop <s@shop.example>\nGesendet: Montag\nAn: mich", "Danke"),
        ("Sure\n\nSent from my iPhone", "Sure"),
        ("Only text\n> quoted tail\n> more", "Only text"),
        ("On Mon, Shop wrote:\n> question?\n\nMy answer below the quote.", "My answer below the quote."),
    ],
)
def test_trim_reply(body: str, new: str) -> None:
    trimmed = trim_reply(body)
    assert trimmed.text == new


def test_trim_reply_keeps_inline_answers_and_forwards() -> None:
    inline = "> Which size?\nM please.\n> Which colour?\nBlue."
    assert trim_reply(inline).text == inline
    forward = "See below.\n\n---------- Forwarded message ---------\nFrom: Bob\nDate: Mon\n\nThe original."
    assert trim_reply(forward).text == forward


def test_html_to_text() -> None:
    html = "<p>Hi&nbsp;there</p><script>x()</script><ul><li>one</li><li>two</li></ul><blockquote>old</blockquote>"
    assert html_to_text(html) == "Hi there\n\none\n\ntwo\n\n> old"


def test_quotes_in_headers_survive_next_to_encoded_words() -> None:
    from plugins.email.mime import decode_header_value

    assert decode_header_value('=?UTF-8?Q?caf=C3=A9?= "special" offer') == 'café "special" offer'
    # Some clients quote the encoded display name itself: those quotes go.
    assert decode_header_value('"=?UTF-8?B?5byg5LiJ?=" <zhang@example.cn>') == "张三 <zhang@example.cn>"
