"""Business-hours calendars: opening checks, next opening, SLA arithmetic, DST days, validation."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from gateway.sdk import BusinessHours, load_calendars

WEEKDAYS_9_TO_6 = {d: ["09:00-12:00", "13:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}


def calendar(**fields: Any) -> BusinessHours:
    return msgspec.convert({"timezone": "Europe/Berlin", "weekly": WEEKDAYS_9_TO_6, **fields}, BusinessHours)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- is_open ---------------------------------------------------------------------------------


def test_open_hours_in_local_time_with_lunch_break_and_boundaries() -> None:
    cal = calendar()
    # Wednesday 2026-01-14, Berlin is UTC+1 in winter.
    assert not cal.is_open(utc(2026, 1, 14, 7, 59))  # 08:59 local
    assert cal.is_open(utc(2026, 1, 14, 8, 0))  # 09:00 local: start is inclusive
    assert not cal.is_open(utc(2026, 1, 14, 11, 0))  # 12:00 local: end is exclusive (lunch)
    assert cal.is_open(utc(2026, 1, 14, 12, 0))  # 13:00 local
    assert not cal.is_open(utc(2026, 1, 14, 17, 0))  # 18:00 local
    assert not cal.is_open(utc(2026, 1, 17, 10, 0))  # Saturday
    # Summer: UTC+2, so 09:00 local is 07:00 UTC.
    assert cal.is_open(utc(2026, 7, 15, 7, 0))
    assert not cal.is_open(utc(2026, 7, 15, 6, 59))


def test_any_aware_offset_is_accepted_and_naive_is_refused() -> None:
    cal = calendar()
    tokyo = timezone(timedelta(hours=9))
    assert cal.is_open(datetime(2026, 1, 14, 17, 30, tzinfo=tokyo))  # 09:30 Berlin
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.is_open(datetime(2026, 1, 14, 10, 0))


def test_holidays_close_whole_local_days() -> None:
    cal = calendar(holidays=["2026-12-24", "2026-12-25"])
    assert cal.holidays == [date(2026, 12, 24), date(2026, 12, 25)]
    assert not cal.is_open(utc(2026, 12, 24, 10, 0))
    assert cal.is_open(utc(2026, 12, 23, 10, 0))


def test_full_day_and_adjacent_ranges_across_midnight() -> None:
    cal = msgspec.convert(
        {"timezone": "UTC", "weekly": {"fri": ["20:00-24:00"], "sat": ["00:00-02:00", "10:00-11:00"]}}, BusinessHours
    )
    assert cal.is_open(utc(2026, 1, 16, 23, 59))
    assert cal.is_open(utc(2026, 1, 17, 0, 0))
    assert not cal.is_open(utc(2026, 1, 17, 2, 0))
    # Friday 20:00 to Saturday 02:00 is one opening.
    assert cal.next_close(utc(2026, 1, 16, 21, 0)) == utc(2026, 1, 17, 2, 0)
    assert cal.next_close(utc(2026, 1, 17, 5, 0)) is None


# --- DST -------------------------------------------------------------------------------------


def test_spring_forward_day_is_23_hours_long() -> None:
    # Berlin switches to summer time on Sunday 2026-03-29 at 02:00 local (01:00 UTC).
    cal = msgspec.convert({"timezone": "Europe/Berlin", "weekly": {"sun": ["00:00-24:00"]}}, BusinessHours)
    sunday_start = utc(2026, 3, 28, 23, 0)  # 00:00 CET
    sunday_end = utc(2026, 3, 29, 22, 0)  # 00:00 CEST on Monday
    assert cal.is_open(sunday_start)
    assert cal.is_open(sunday_end - timedelta(seconds=1))
    assert not cal.is_open(sunday_end)
    assert cal.add_business_time(sunday_start, timedelta(hours=23)) == sunday_end
    # One hour more spills over to the next Sunday, 00:00 CEST = 22:00 UTC Saturday, plus one hour.
    assert cal.add_business_time(sunday_start, timedelta(hours=24)) == utc(2026, 4, 4, 23, 0)


def test_range_starting_inside_the_spring_forward_gap() -> None:
    # 02:30 does not exist on 2026-03-29 in Berlin; like zoneinfo, it means 02:30 at the old
    # offset (+01:00), i.e. 01:30 UTC = 03:30 CEST, so the range lasts 30 real minutes.
    cal = msgspec.convert({"timezone": "Europe/Berlin", "weekly": {"sun": ["02:30-04:00"]}}, BusinessHours)
    assert not cal.is_open(utc(2026, 3, 29, 1, 29))
    assert cal.is_open(utc(2026, 3, 29, 1, 30))
    assert not cal.is_open(utc(2026, 3, 29, 2, 0))  # 04:00 CEST
    assert cal.next_open(utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 30)
    assert cal.add_business_time(utc(2026, 3, 29, 0, 0), timedelta(minutes=30)) == utc(2026, 3, 29, 2, 0)


def test_fall_back_day_is_25_hours_long_and_office_hours_stay_local() -> None:
    # Berlin returns to winter time on Sunday 2026-10-25 at 03:00 local (01:00 UTC).
    full = msgspec.convert({"timezone": "Europe/Berlin", "weekly": {"sun": ["00:00-24:00"]}}, BusinessHours)
    start = utc(2026, 10, 24, 22, 0)  # 00:00 CEST
    assert full.add_business_time(start, timedelta(hours=25)) == utc(2026, 10, 25, 23, 0)  # 00:00 CET Monday
    assert not full.is_open(utc(2026, 10, 25, 23, 0))
    # Weekday hours follow the wall clock: Friday before opens at 07:00 UTC, Monday after at 08:00 UTC.
    office = calendar()
    assert office.next_open(utc(2026, 10, 23, 5, 0)) == utc(2026, 10, 23, 7, 0)
    assert office.next_open(utc(2026, 10, 24, 12, 0)) == utc(2026, 10, 26, 8, 0)


def test_us_dst_transition() -> None:
    # New York springs forward on Sunday 2026-03-08: 09:00 EST is 14:00 UTC, 09:00 EDT 13:00 UTC.
    cal = msgspec.convert(
        {"timezone": "America/New_York", "weekly": {"fri": ["09:00-17:00"], "mon": ["09:00-17:00"]}}, BusinessHours
    )
    assert cal.next_open(utc(2026, 3, 6, 13, 0)) == utc(2026, 3, 6, 14, 0)
    assert cal.next_open(utc(2026, 3, 6, 23, 0)) == utc(2026, 3, 9, 13, 0)


# --- next_open -------------------------------------------------------------------------------


def test_next_open_is_now_when_open_and_skips_lunch_weekend_and_holidays() -> None:
    cal = calendar(holidays=["2026-12-25"])  # a Friday
    now = utc(2026, 1, 14, 9, 0)
    assert cal.next_open(now) == now
    assert cal.next_open(utc(2026, 1, 14, 11, 30)) == utc(2026, 1, 14, 12, 0)  # after lunch
    assert cal.next_open(utc(2026, 1, 16, 17, 30)) == utc(2026, 1, 19, 8, 0)  # Friday evening -> Monday
    assert cal.next_open(utc(2026, 12, 24, 17, 30)) == utc(2026, 12, 28, 8, 0)  # Thu -> holiday -> weekend
    result = cal.next_open(datetime(2026, 1, 17, 12, 0, tzinfo=timezone(timedelta(hours=-5))))
    assert result is not None and result.tzinfo is UTC


def test_next_open_through_a_long_holiday_season() -> None:
    closed = [str(date(2026, 12, 21) + timedelta(days=n)) for n in range(15)]  # through Mon 2027-01-04
    cal = calendar(holidays=closed)
    assert cal.next_open(utc(2026, 12, 18, 17, 0)) == utc(2027, 1, 5, 8, 0)


# --- add_business_time -----------------------------------------------------------------------


def test_business_time_skips_lunch_nights_and_weekends() -> None:
    cal = calendar()
    friday_4pm = utc(2026, 1, 16, 15, 0)
    # Friday 16:00-18:00 (2h), then Monday 09:00 + 2h.
    assert cal.add_business_time(friday_4pm, timedelta(hours=4)) == utc(2026, 1, 19, 10, 0)
    # Wednesday 11:00 + 2h: 1h before lunch, 1h after -> 14:00 local.
    assert cal.add_business_time(utc(2026, 1, 14, 10, 0), timedelta(hours=2)) == utc(2026, 1, 14, 13, 0)
    # A deadline that lands on closing time is that closing time.
    assert cal.add_business_time(friday_4pm, timedelta(hours=2)) == utc(2026, 1, 16, 17, 0)
    # Received while closed: the clock starts at the next opening; zero duration is that opening.
    assert cal.add_business_time(utc(2026, 1, 17, 10, 0), timedelta(0)) == utc(2026, 1, 19, 8, 0)
    assert cal.add_business_time(utc(2026, 1, 17, 10, 0), timedelta(minutes=30)) == utc(2026, 1, 19, 8, 30)
    # A five-day week has 40 business hours.
    assert cal.add_business_time(utc(2026, 1, 19, 8, 0), timedelta(hours=40)) == utc(2026, 1, 23, 17, 0)
    with pytest.raises(ValueError, match="negative"):
        cal.add_business_time(friday_4pm, timedelta(hours=-1))


def test_business_time_skips_holidays() -> None:
    cal = calendar(holidays=["2026-01-19"])
    assert cal.add_business_time(utc(2026, 1, 16, 15, 0), timedelta(hours=4)) == utc(2026, 1, 20, 10, 0)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone: unknown IANA time zone 'Mars/Olympus'"),
        ({"timezone": "../etc/passwd"}, "unknown IANA time zone"),
        ({"weekly": {"monday": ["09:00-10:00"]}}, "unknown weekday 'monday'"),
        ({"weekly": {"mon": ["9-17"]}}, "'9-17' is not a time range"),
        ({"weekly": {"mon": ["09:00-25:00"]}}, "24:00 allowed as an end"),
        ({"weekly": {"mon": ["09:60-10:00"]}}, "times must be"),
        ({"weekly": {"mon": ["18:00-09:00"]}}, "overnight ranges are not supported"),
        ({"weekly": {"mon": ["09:00-09:00"]}}, "empty range"),
        ({"weekly": {"mon": ["09:00-12:00", "11:00-13:00"]}}, "weekly.mon: overlapping ranges"),
        ({"weekly": {"mon": [], "sun": []}}, "no opening hours"),
    ],
)
def test_invalid_calendars_are_refused_with_the_reason(fields: dict[str, Any], message: str) -> None:
    raw = {"timezone": "UTC", "weekly": {"mon": ["09:00-17:00"]}, **fields}
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(raw, BusinessHours)


def test_named_calendars_from_toml_name_the_calendar_in_errors() -> None:
    good = tomllib.loads(
        """
        [calendars.support]
        timezone = "Asia/Shanghai"
        weekly = { mon = ["09:00-18:00"], sat = ["10:00-16:00"] }
        holidays = [2026-10-01, 2026-10-02]
        """
    )
    calendars = load_calendars(good["calendars"])
    assert calendars["support"].holidays == [date(2026, 10, 1), date(2026, 10, 2)]
    assert calendars["support"].is_open(utc(2026, 1, 17, 3, 0))  # Saturday 11:00 in Shanghai
    with pytest.raises(ValueError, match=r"^calendars\.sales: timezone: unknown IANA time zone"):
        load_calendars({"support": good["calendars"]["support"], "sales": {"timezone": "Nowhere", "weekly": {}}})
    with pytest.raises(ValueError, match=r"^calendars\.sales\.holiday: Object contains unknown field"):
        load_calendars({"sales": {"timezone": "UTC", "weekly": {"mon": ["09:00-10:00"]}, "holiday": []}})
    with pytest.raises(ValueError, match=r"^calendars\.sales\.holidays\[0\]: Invalid RFC3339"):
        load_calendars({"sales": {"timezone": "UTC", "weekly": {"mon": ["09:00-10:00"]}, "holidays": ["soon"]}})
