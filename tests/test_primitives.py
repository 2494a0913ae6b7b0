# ruff: noqa: RUF001  (keyword tests use full-width letters and punctuation on purpose)
"""Unit tests of small building blocks: ids (UUIDv7), W3C traceparent, signature helpers, keyword matching."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import unicodedata
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.helpers.keywords import KeywordMatcher, _pattern, normalize
from gateway.ids import new_id
from gateway.signing import (
    constant_time_equals,
    hmac_sha1_b64,
    hmac_sha256_b64,
    hmac_sha256_hex,
    verify_prefixed_hex,
)
from gateway.tracing import child_traceparent, trace_id

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

# --- ids ------------------------------------------------------------------------------------------------


def test_new_id_is_a_canonical_uuid_v7() -> None:
    value = new_id()
    parsed = uuid.UUID(value)
    assert str(parsed) == value  # canonical lowercase 8-4-4-4-12 form
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_new_id_embeds_the_current_unix_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(new_id())
    after = time.time_ns() // 1_000_000
    embedded_ms = value.int >> 80
    # milliseconds since the epoch (not seconds or microseconds); the generator may run slightly
    # ahead of the clock when it borrows the next millisecond after a counter overflow
    assert before <= embedded_ms <= after + 1000


def test_new_ids_are_unique_and_sorted_across_10k_calls() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # string order is creation order
    assert all(uuid.UUID(i).version == 7 for i in ids[::997])


# --- tracing --------------------------------------------------------------------------------------------

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def test_child_continues_a_valid_parent_trace_with_a_new_span() -> None:
    parent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    child = child_traceparent(parent)
    assert TRACEPARENT.match(child)
    _, trace, span, flags = child.split("-")
    assert trace == PARENT_TRACE
    assert span != PARENT_SPAN
    assert span != "0" * 16
    assert flags == "01"
    assert child_traceparent(parent).split("-")[2] != span  # every child gets its own span


def test_child_keeps_the_parent_flags_and_tolerates_case_and_whitespace() -> None:
    child = child_traceparent(f"  00-{PARENT_TRACE.upper()}-{PARENT_SPAN}-00 ")
    assert child.startswith(f"00-{PARENT_TRACE}-")
    assert child.endswith("-00")


@pytest.mark.parametrize(
    "parent",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{PARENT_SPAN}-01",  # all-zero trace id is invalid
        f"00-{PARENT_TRACE}-{'0' * 16}-01",  # all-zero span id is invalid
        f"00-{PARENT_TRACE[:-1]}-{PARENT_SPAN}-01",  # too short
        f"00-{PARENT_TRACE}-{PARENT_SPAN}",  # no flags
        f"00-{PARENT_TRACE[:-1]}g-{PARENT_SPAN}-01",  # not hex
    ],
)
def test_invalid_parent_starts_a_new_trace(parent: str | None) -> None:
    child = child_traceparent(parent)
    assert TRACEPARENT.match(child)
    _, trace, span, flags = child.split("-")
    assert trace != PARENT_TRACE
    assert trace != "0" * 32
    assert span != "0" * 16
    assert flags == "01"  # sampled


def test_new_traces_are_distinct() -> None:
    assert trace_id(child_traceparent(None)) != trace_id(child_traceparent(None))


def test_trace_id_extracts_or_returns_none() -> None:
    assert trace_id(f"00-{PARENT_TRACE}-{PARENT_SPAN}-01") == PARENT_TRACE
    assert trace_id("nope") is None


# --- signing --------------------------------------------------------------------------------------------

SECRET = "It's a Secret to Everybody"
BODY = b"Hello, World!"
# GitHub's documented webhook test vector (X-Hub-Signature-256 for this secret and payload)
GITHUB_VECTOR = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_hmac_sha256_hex_matches_a_published_vector_and_hmac() -> None:
    assert hmac_sha256_hex(SECRET, BODY) == GITHUB_VECTOR
    assert hmac_sha256_hex(SECRET.encode(), BODY) == hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_hmac_sha256_b64_matches_hmac() -> None:
    expected = base64.b64encode(hmac.new(b"line-secret", BODY, hashlib.sha256).digest()).decode()
    assert hmac_sha256_b64("line-secret", BODY) == expected
    assert hmac_sha256_b64(b"line-secret", BODY) == expected


def test_hmac_sha1_b64_matches_hmac() -> None:
    payload = b"https://example.com/webhooks/twilioBodyHelloFrom+15551234567"
    expected = base64.b64encode(hmac.new(b"twilio-token", payload, hashlib.sha1).digest()).decode()
    assert hmac_sha1_b64("twilio-token", payload) == expected
    # RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?")
    rfc = bytes.fromhex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
    assert hmac_sha1_b64("Jefe", b"what do ya want for nothing?") == base64.b64encode(rfc).decode()


def test_non_ascii_secret_is_utf8_encoded() -> None:
    assert hmac_sha256_hex("sécret-密钥", BODY) == hmac.new("sécret-密钥".encode(), BODY, hashlib.sha256).hexdigest()


def test_constant_time_equals() -> None:
    assert constant_time_equals("abc", "abc")
    assert constant_time_equals(b"abc", "abc")
    assert not constant_time_equals("abd", "abc")
    assert not constant_time_equals("", "abc")
    assert not constant_time_equals(None, "abc")


def test_verify_prefixed_hex_accepts_the_right_signature() -> None:
    assert verify_prefixed_hex(f"sha256={GITHUB_VECTOR}", SECRET, BODY)


def test_verify_prefixed_hex_accepts_uppercase_hex() -> None:
    assert verify_prefixed_hex(f"sha256={GITHUB_VECTOR.upper()}", SECRET, BODY)


def test_verify_prefixed_hex_supports_other_prefixes() -> None:
    signature = hmac_sha256_hex(SECRET, BODY)
    assert verify_prefixed_hex(f"v1={signature}", SECRET, BODY, prefix="v1=")
    assert not verify_prefixed_hex(f"sha256={signature}", SECRET, BODY, prefix="v1=")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        GITHUB_VECTOR,  # no prefix
        f"sha1={GITHUB_VECTOR}",  # wrong prefix
        f"SHA256={GITHUB_VECTOR}",  # prefix is case-sensitive
        "sha256=",
        f"sha256={GITHUB_VECTOR[:-2]}",  # truncated
        f"sha256={GITHUB_VECTOR[:-1]}0",  # one nibble off
    ],
)
def test_verify_prefixed_hex_rejects_bad_headers(header: str | None) -> None:
    assert not verify_prefixed_hex(header, SECRET, BODY)


def test_verify_prefixed_hex_rejects_tampered_body_and_wrong_secret() -> None:
    header = f"sha256={GITHUB_VECTOR}"
    assert not verify_prefixed_hex(header, SECRET, BODY + b" ")
    assert not verify_prefixed_hex(header, SECRET, b"Hello, World?")
    assert not verify_prefixed_hex(header, SECRET + "!", BODY)


# --- keyword matching -----------------------------------------------------------------------------------

COMPLAINTS = [
    "complaint", "complain", "unacceptable", "lawyer", "legal action", "sue you", "refund", "chargeback",
    "scam", "fraud", "disgusting", "worst service", "cancel my account",
    "投诉", "差评", "退款", "骗子", "欺诈", "律师", "起诉", "消协", "太差", "垃圾", "曝光", "举报",
]  # fmt: skip
# Overlapping, nested, punctuation-only, multi-word, full-width, folding (ß) and mixed-script keywords.
TRICKY = [
    "sue", "sue you", "you", "!!!", "c++", "c", "money back", "Straße", "ＲＥＦＵＮＤ", "退款", "退",
    "refund退款", "a b c", "ab", "b", "é", "e\u0301", "ǅ", "k", "\u212a",
]  # fmt: skip
SAMPLES = [
    "I want a refund!!! now",
    "Sue you? I will SUE YOU and my lawyer agrees",
    "refunded already, no complaints",
    "我要退款，太差了，投诉！",
    "refund退款 please",
    "ＲＥＦＵＮＤ and STRASSE",
    "c++ or c# or c",
    "money\n\t back",
    "a  b\u00a0c ab b",
    "",
    "nothing to see here",
    "\u212a is Kelvin, ǆ is a digraph, e\u0301 and é",
]


def reference_find(keywords: list[str], text: str) -> list[str]:
    """The matcher's definition: every keyword's own pattern searched in the normalized text."""
    haystack = normalize(text)
    unique = dict.fromkeys(k for k in keywords if k.strip())
    return [k for k in unique if _pattern(k).search(haystack)]


@pytest.mark.parametrize("keywords", [COMPLAINTS, TRICKY, COMPLAINTS + TRICKY, ["refund"], []])
@pytest.mark.parametrize("text", SAMPLES)
def test_keyword_matcher_equals_searching_every_pattern(keywords: list[str], text: str) -> None:
    matcher = KeywordMatcher(keywords)
    assert matcher.find(text) == reference_find(keywords, text)
    assert matcher.find(normalize(text), normalized=True) == reference_find(keywords, text)


def test_keyword_matcher_documented_semantics() -> None:
    matcher = KeywordMatcher(["refund", "退款", "money back", "Straße", "!!!", "sue you", "sue"])
    assert matcher.find("ＲＥＦＵＮＤ now") == ["refund"]
    assert matcher.find("refunded") == []
    assert matcher.find("refund退款") == ["refund", "退款"]
    assert matcher.find("我要退款") == ["退款"]
    assert matcher.find("MONEY \n back") == ["money back"]
    assert matcher.find("STRASSE") == ["Straße"]
    assert matcher.find("what!!!") == ["!!!"]
    assert matcher.find("I will sue you") == ["sue you", "sue"]  # overlapping keywords are each found


_ALPHABET = st.sampled_from(list("abcefkorsuynd !+#\n\t\u00a0\u3000退款投诉太差ßSSＲé\u0301ǅ\u212aK-_.,"))


@settings(max_examples=300, deadline=None)
@given(
    keywords=st.lists(st.text(_ALPHABET, min_size=0, max_size=6), max_size=6)
    | st.lists(st.sampled_from(COMPLAINTS + TRICKY), max_size=8),
    text=st.text(_ALPHABET, max_size=40) | st.sampled_from(SAMPLES),
)
def test_keyword_matcher_equals_searching_every_pattern_on_any_text(keywords: list[str], text: str) -> None:
    assert KeywordMatcher(keywords).find(text) == reference_find(keywords, text)


def test_normalize_is_nfkc_then_casefold_for_short_and_long_texts() -> None:
    for text in ("ＲＥＦＵＮＤ Straße", "ＲＥＦＵＮＤ Straße " * 1000):
        assert normalize(text) == unicodedata.normalize("NFKC", text).casefold()
        assert normalize(text) == normalize(text)  # cached or not, the same answer


def test_normalize_equals_nfkc_casefold_for_every_code_point() -> None:
    mismatches = [
        hex(cp)
        for cp in range(0x110000)
        if not 0xD800 <= cp < 0xE000
        and normalize(chr(cp) + "x") != unicodedata.normalize("NFKC", chr(cp) + "x").casefold()
    ]
    assert mismatches == []


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=12))
def test_normalize_equals_nfkc_casefold_on_any_text(text: str) -> None:
    assert normalize(text) == unicodedata.normalize("NFKC", text).casefold()
