"""Finding personal data in free text: each detector returns spans, validated, not just pattern-matched.

Validation keeps false positives (order numbers, timestamps) out: card numbers must pass the Luhn
check, Chinese resident ID numbers the GB 11643-1999 checksum and a real birth date, phone numbers
libphonenumber's validity rules for the configured regions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import phonenumbers


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    kind: str  # email | phone | card | cn_id


EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?![\w-])", re.UNICODE)
# 13-19 digits, optionally grouped by single spaces or dashes, not glued to other digits.
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
CN_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CN_ID_CHECK = "10X98765432"


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def cn_id_valid(number: str) -> bool:
    """GB 11643-1999: 6-digit area, 8-digit birth date, 3-digit sequence, MOD 11-2 check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        born = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not date(1900, 1, 1) <= born <= date.today():
        return False
    checksum = sum(int(d) * w for d, w in zip(number[:17], CN_ID_WEIGHTS, strict=True)) % 11
    return CN_ID_CHECK[checksum] == number[17].upper()


def find_emails(text: str) -> Iterable[Span]:
    for match in EMAIL.finditer(text):
        yield Span(match.start(), match.end(), "email")


def find_cards(text: str) -> Iterable[Span]:
    for match in CARD.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield Span(match.start(), match.end(), "card")


def find_cn_ids(text: str) -> Iterable[Span]:
    for match in CN_ID.finditer(text):
        if cn_id_valid(match.group()):
            yield Span(match.start(), match.end(), "cn_id")


def find_phones(text: str, regions: Iterable[str]) -> Iterable[Span]:
    """Numbers written with a +country code are found whatever the region; national formats only
    for the listed regions (libphonenumber needs a region to read them)."""
    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            yield Span(match.start, match.end, "phone")


def find_all(text: str, kinds: Iterable[str], regions: Iterable[str]) -> list[Span]:
    """Non-overlapping spans, in text order; a longer validated span wins over one inside it
    (an ID number is not also masked as a phone number)."""
    wanted = set(kinds)
    found: list[Span] = []
    if "email" in wanted:
        found.extend(find_emails(text))
    if "cn_id" in wanted:
        found.extend(find_cn_ids(text))
    if "card" in wanted:
        found.extend(find_cards(text))
    if "phone" in wanted:
        found.extend(find_phones(text, regions))
    found.sort(key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for span in found:
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return kept
