# ruff: noqa: RUF001  (Chinese texts use full-width punctuation on purpose)
"""Detectors: validated matches are found, look-alikes (order numbers, dates, bad checksums) are not."""

from __future__ import annotations

from gateway_pii.detect import cn_id_valid, find_all, luhn_valid

KINDS = ["email", "phone", "card", "cn_id"]


def kinds_in(text: str, regions: list[str] | None = None) -> list[tuple[str, str]]:
    return [(s.kind, text[s.start : s.end]) for s in find_all(text, KINDS, regions or ["CN", "US"])]


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("5555555555554444") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def test_chinese_id_checksum_and_birth_date() -> None:
    assert cn_id_valid("11010519491231002X") and cn_id_valid("110105194912310021") is False
    assert cn_id_valid("440524188001010014") is False  # born 1880: not a plausible resident
    assert cn_id_valid("110105194913310029") is False  # month 13


def test_finds_each_kind_in_english_text() -> None:
    text = "Card 4111 1111 1111 1111, mail ada.l@example.co.uk or call +1 650-253-0000. Order #123456789."
    assert kinds_in(text) == [
        ("card", "4111 1111 1111 1111"),
        ("email", "ada.l@example.co.uk"),
        ("phone", "+1 650-253-0000"),
    ]


def test_finds_chinese_mobile_and_id_in_chinese_text() -> None:
    text = "我的手机是13812345678，身份证号11010519491231002X，订单号202611220001。"
    found = kinds_in(text)
    assert ("phone", "13812345678") in found and ("cn_id", "11010519491231002X") in found
    assert all("202611220001" not in value for _, value in found)  # an order number is no phone


def test_rejects_lookalikes() -> None:
    assert kinds_in("tracking 4111111111111112 and ID 110105194912310021 on 2026-11-22") == []
    assert kinds_in("version 1.2.3 at 10:30, user@localhost") == []


def test_national_formats_need_their_region() -> None:
    assert kinds_in("ring 020 7946 0018", ["US"]) == []
    assert kinds_in("ring 020 7946 0018", ["GB"]) == [("phone", "020 7946 0018")]
