"""Business-hours calendars shared by processors (routing SLAs, out-of-hours auto-replies).

A calendar is weekly opening ranges in wall-clock time of one IANA time zone, minus whole-day
holidays. Every computation goes through concrete UTC intervals per local day, so ``is_open``,
``next_open`` and ``add_business_time`` always agree, including on DST transition days (a
"09:00-17:00" day is 8 real hours long, an "00:00-24:00" day is 23 or 25 hours long).

Ranges are ``"HH:MM-HH:MM"`` with the start before the end; ``24:00`` is allowed as an end.
Overnight ranges such as ``"22:00-06:00"`` are rejected: write ``"22:00-24:00"`` on one day and
``"00:00-06:00"`` on the next (adjacent intervals count as one continuous opening).
A wall-clock time that does not exist (inside a spring-forward gap) maps to the instant the
clock shows that time with the pre-transition offset, as Python's ``zoneinfo`` does; an ambiguous
time (fall-back) means its first occurrence.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^\s*(\d{2}):(\d{2})\s*-\s*(\d{2}):(\d{2})\s*$")

# (start minute, end minute) of the local day, end exclusive, 1..1440.
Span = tuple[int, int]
Interval = tuple[datetime, datetime]


def _parse_range(text: str) -> Span:
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a time range like '09:00-17:30'")
    sh, sm, eh, em = (int(g) for g in match.groups())
    if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em != 0):
        raise ValueError(f"{text!r}: times must be 00:00..23:59 (24:00 allowed as an end)")
    start, end = sh * 60 + sm, eh * 60 + em
    if end == start:
        raise ValueError(f"{text!r}: empty range")
    if end < start:
        raise ValueError(
            f"{text!r}: overnight ranges are not supported; split it as 'HH:MM-24:00' on this day "
            "and '00:00-HH:MM' on the next"
        )
    return start, end


@functools.lru_cache(maxsize=256)
def _parse_weekly(items: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[int, tuple[Span, ...]]:
    """Validated, sorted, merged spans per weekday (0 = Monday). Cached: configs are immutable in practice."""
    result: dict[int, tuple[Span, ...]] = {}
    for day, ranges in items:
        key = day.strip().lower()
        if key not in WEEKDAYS:
            raise ValueError(f"weekly: unknown weekday {day!r} (use {', '.join(WEEKDAYS)})")
        spans = sorted(_parse_range(r) for r in ranges)
        merged: list[Span] = []
        for span in spans:
            if merged and span[0] < merged[-1][1]:
                raise ValueError(f"weekly.{day}: overlapping ranges {ranges!r}")
            if merged and span[0] == merged[-1][1]:  # adjacent: one opening
                merged[-1] = (merged[-1][0], span[1])
            else:
                merged.append(span)
        weekday = WEEKDAYS.index(key)
        if weekday in result:
            raise ValueError(f"weekly: weekday {key!r} given twice")
        result[weekday] = tuple(merged)
    return result


def _at_minute(day: date, minute: int, tz: ZoneInfo) -> datetime:
    if minute == 1440:
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return datetime.combine(day, time(minute // 60, minute % 60), tzinfo=tz).astimezone(UTC)


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


class BusinessHours(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Opening hours of a team: ``weekly`` ranges per weekday in ``timezone``, closed on ``holidays``.

    Days missing from ``weekly`` (or with an empty list) are closed. Holidays are local dates.
    """

    timezone: str
    weekly: dict[str, list[str]]
    holidays: list[date] = []

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"timezone: unknown IANA time zone {self.timezone!r} (e.g. 'Europe/Berlin')") from None
        spans = self._spans()
        if not any(spans.values()):
            raise ValueError("weekly: no opening hours at all (give at least one range, e.g. mon = ['09:00-17:00'])")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances per key

    def _spans(self) -> dict[int, tuple[Span, ...]]:
        return _parse_weekly(tuple((day, tuple(ranges)) for day, ranges in self.weekly.items()))

    def _day_intervals(self, day: date, tz: ZoneInfo, spans: dict[int, tuple[Span, ...]]) -> list[Interval]:
        if day in self.holidays:
            return []
        return [(_at_minute(day, s, tz), _at_minute(day, e, tz)) for s, e in spans.get(day.weekday(), ())]

    def _intervals_from(self, at: datetime) -> list[Interval]:
        """UTC intervals of the local days around ``at`` (yesterday, today, tomorrow), in order."""
        tz, spans = self.tz, self._spans()
        today = at.astimezone(tz).date()
        return [iv for offset in (-1, 0, 1) for iv in self._day_intervals(today + timedelta(days=offset), tz, spans)]

    def _iter_intervals(self, at: datetime, max_days: int) -> list[Interval]:
        tz, spans = self.tz, self._spans()
        first = at.astimezone(tz).date() - timedelta(days=1)
        return [iv for n in range(max_days) for iv in self._day_intervals(first + timedelta(days=n), tz, spans)]

    def _horizon_days(self) -> int:
        # Within any 7 non-holiday days the calendar opens (validated), so this bounds every search.
        return 9 + len(self.holidays)

    def is_open(self, at: datetime) -> bool:
        """Whether the team is open at the (aware) instant ``at``."""
        instant = _utc(at, "at")
        return any(start <= instant < end for start, end in self._intervals_from(instant))

    def next_open(self, at: datetime) -> datetime | None:
        """The earliest instant >= ``at`` when the team is open (``at`` itself when open), in UTC.

        None only when no opening is found within the search horizon (cannot happen for a valid
        calendar, kept in the signature for callers that treat "never" explicitly).
        """
        instant = _utc(at, "at")
        for start, end in self._iter_intervals(instant, self._horizon_days()):
            if end > instant:
                return max(start, instant)
        return None

    def next_close(self, at: datetime) -> datetime | None:
        """When the current opening ends (adjacent ranges across midnight count as one); None when closed."""
        instant = _utc(at, "at")
        current: datetime | None = None
        for start, end in self._iter_intervals(instant, self._horizon_days()):
            if current is None:
                if start <= instant < end:
                    current = end
            elif start == current:
                current = end
            elif start > current:
                break
        return current

    def add_business_time(self, start: datetime, duration: timedelta) -> datetime:
        """``start`` plus ``duration`` counted only while open (SLA due times), in UTC.

        The clock starts at ``next_open(start)``; a deadline that falls exactly on a closing time
        is that closing time (not the next opening).
        """
        if duration < timedelta(0):
            raise ValueError("duration must not be negative")
        instant = _utc(start, "start")
        remaining = duration
        tz, spans = self.tz, self._spans()
        day = instant.astimezone(tz).date() - timedelta(days=1)
        idle_days = 0
        while True:
            intervals = self._day_intervals(day, tz, spans)
            idle_days = idle_days + 1 if not intervals else 0
            if idle_days > self._horizon_days():  # unreachable for a validated calendar; guards the loop
                raise ValueError("calendar never opens")
            for iv_start, iv_end in intervals:
                if iv_end <= instant:
                    continue
                begin = max(iv_start, instant)
                available = iv_end - begin
                if remaining <= available:
                    return begin + remaining
                remaining -= available
            day += timedelta(days=1)

    def business_time_between(self, start: datetime, end: datetime) -> timedelta:
        """How much of ``start``..``end`` falls in opening hours (response times in business time).

        Zero when ``end`` is not after ``start``. Walks the local days in between, so the cost
        grows with the length of the span (a day per opening interval), not with its seconds.
        """
        begin, finish = _utc(start, "start"), _utc(end, "end")
        total = timedelta(0)
        if finish <= begin:
            return total
        tz, spans = self.tz, self._spans()
        day = begin.astimezone(tz).date() - timedelta(days=1)
        last = finish.astimezone(tz).date() + timedelta(days=1)
        while day <= last:
            for iv_start, iv_end in self._day_intervals(day, tz, spans):
                overlap = min(iv_end, finish) - max(iv_start, begin)
                if overlap > timedelta(0):
                    total += overlap
            day += timedelta(days=1)
        return total


def format_error(exc: msgspec.ValidationError, root: str = "") -> str:
    """``problem - at `$.weekly.mon`'' -> ``<root>.weekly.mon: problem``: the key as an operator writes it."""
    text = str(exc)
    match = re.search(r" - at `\$\.?([^`]*)`$", text)
    path, problem = (match.group(1), text[: match.start()]) if match else ("", text)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", problem)
    if unknown:  # point at the offending key itself, not its table
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    key = ".".join(p for p in (root, path) if p)
    return f"{key}: {problem}" if key else problem


def load_calendars(raw: Mapping[str, Any], where: str = "calendars") -> dict[str, BusinessHours]:
    """Validate named calendars from a config table, naming the calendar in every error.

    msgspec renders dict keys as ``[...]`` in error paths, so a settings struct that declares
    ``calendars: dict[str, Any]`` and calls this from ``__post_init__`` gets messages like
    ``calendars.support.weekly: unknown weekday 'mox'``.
    """
    calendars: dict[str, BusinessHours] = {}
    for name, table in raw.items():
        if isinstance(table, BusinessHours):
            calendars[name] = table
            continue
        try:
            calendars[name] = msgspec.convert(table, BusinessHours)
        except msgspec.ValidationError as exc:
            raise ValueError(format_error(exc, f"{where}.{name}")) from None
    return calendars
