"""Email form fields from Mailgun and SendGrid are attacker-sized: address parsing must stay bounded.

``email.utils.getaddresses`` is quadratic in the field length and recursive on some shapes; the
fuzz tests found a signed 300 KB ``from`` field holding the event loop for minutes.
"""

from __future__ import annotations

from plugins.email.webforms import MAX_ADDRESS_CHARS, addresses


def test_an_overlong_address_field_is_parsed_up_to_the_cap() -> None:
    field = "customer@example.com, " * 20_000  # 440 KB
    found = addresses(field)
    assert found[0] == (None, "customer@example.com")
    assert len(found) <= MAX_ADDRESS_CHARS // len("customer@example.com, ") + 1


def test_a_field_that_makes_the_parser_recurse_yields_no_address() -> None:
    assert addresses('{"a":' * 5_000) == []


def test_ordinary_fields_are_unchanged() -> None:
    assert addresses('"Zoë" <Zoe@Example.com>, bob@example.com') == [
        ("Zoë", "zoe@example.com"),
        (None, "bob@example.com"),
    ]
