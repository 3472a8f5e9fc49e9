"""Business-time arithmetic for SLA deadlines: pure functions, no I/O.

A calendar is weekly opening hours (several intervals a day allowed) and holidays, both in the
tenant's wall-clock time zone. Each interval is turned into real instants (UTC) for the local
date it falls on, so a DST change shortens or lengthens only the interval that spans it, and
minutes are always counted as real elapsed minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
MINUTES_PER_DAY = 24 * 60
# Walking further than this means the calendar can never satisfy the request (e.g. one minute
# a week against a year-long target): refuse instead of spinning.
MAX_HORIZON_DAYS = 20 * 366


class CalendarError(ValueError):
    """Invalid calendar data; `field` names the offending input (e.g. "business_hours.mon")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# The zone database's names, less the files that are not zones of a place: "localtime" (the
# host's own zone), "posixrules", "Factory".
_IANA_ZONES = frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


def parse_time_zone(name: str) -> ZoneInfo:
    """An IANA zone by name ("Asia/Seoul"); anything else is a CalendarError."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise CalendarError("time_zone", "must be an IANA time zone name such as 'Asia/Seoul'")
    # A deadline must not depend on the host the service runs on.
    if name not in _IANA_ZONES:
        raise CalendarError("time_zone", f"unknown IANA time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CalendarError("time_zone", f"unknown IANA time zone {name!r}") from None


def _parse_clock(value: object, field: str, *, allow_24: bool) -> int:
    """'HH:MM' -> minutes after local midnight; '24:00' only as an interval end."""
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        raise CalendarError(field, f"times are 'HH:MM', got {value!r}")
    hours, minutes = value[:2], value[3:]
    if not (hours.isdigit() and minutes.isdigit()):
        raise CalendarError(field, f"times are 'HH:MM', got {value!r}")
    total = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or total > MINUTES_PER_DAY or (total == MINUTES_PER_DAY and not allow_24):
        raise CalendarError(field, f"{value!r} is not a time of day")
    return total


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_business_hours(raw: Mapping[str, object]) -> dict[int, tuple[tuple[int, int], ...]]:
    """{"mon": [["09:00","12:00"], ["13:00","18:00"]], ...} -> {0: ((540, 720), (780, 1080))}.

    A day may also be given as a single pair (["09:00", "18:00"]); an empty list or a missing
    day is closed. Intervals must not overlap (touching is fine and merges).
    """
    if not isinstance(raw, Mapping):
        raise CalendarError("business_hours", "must be an object keyed by weekday (mon..sun)")
    parsed: dict[int, tuple[tuple[int, int], ...]] = {}
    for day, intervals in raw.items():
        field = f"business_hours.{day}"
        if day not in WEEKDAYS:
            raise CalendarError(field, f"unknown weekday; use one of {', '.join(WEEKDAYS)}")
        if not isinstance(intervals, list | tuple):
            raise CalendarError(field, "must be a list of ['HH:MM', 'HH:MM'] intervals")
        if len(intervals) == 2 and all(isinstance(item, str) for item in intervals):
            intervals = [intervals]
        if len(intervals) > 24:
            raise CalendarError(field, "at most 24 intervals a day")
        spans: list[tuple[int, int]] = []
        for interval in intervals:
            if not isinstance(interval, list | tuple) or len(interval) != 2:
                raise CalendarError(field, f"an interval is ['HH:MM', 'HH:MM'], got {interval!r}")
            start = _parse_clock(interval[0], field, allow_24=False)
            end = _parse_clock(interval[1], field, allow_24=True)
            if end <= start:
                raise CalendarError(field, f"interval {interval[0]}-{interval[1]} ends before it starts")
            spans.append((start, end))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start < merged[-1][1]:
                previous = merged[-1]
                raise CalendarError(
                    field,
                    f"intervals {_clock(previous[0])}-{_clock(previous[1])} and "
                    f"{_clock(start)}-{_clock(end)} overlap",
                )
            if merged and start == merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        if merged:
            parsed[WEEKDAYS.index(day)] = tuple(merged)
    return parsed


def format_business_hours(hours: Mapping[int, Iterable[tuple[int, int]]]) -> dict[str, list[list[str]]]:
    """The canonical stored/returned form: every open weekday, list of [start, end] pairs."""
    return {
        WEEKDAYS[day]: [[_clock(start), _clock(end)] for start, end in hours[day]]
        for day in sorted(hours)
        if hours[day]
    }


ROUND_THE_CLOCK = {day: ((0, MINUTES_PER_DAY),) for day in range(7)}


@dataclass(frozen=True)
class BusinessCalendar:
    """Weekly business hours and holidays in one IANA time zone."""

    time_zone: ZoneInfo
    hours: Mapping[int, tuple[tuple[int, int], ...]]
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        # Without a single open interval no deadline could ever be reached.
        if not any(self.hours.get(day) for day in range(7)):
            raise CalendarError("business_hours", "at least one weekday needs business hours")

    @classmethod
    def from_settings(
        cls, time_zone: str, business_hours: Mapping[str, object], holidays: Iterable[date | str] = ()
    ) -> BusinessCalendar:
        """Build from stored/API values; raises CalendarError naming the bad field."""
        zone = parse_time_zone(time_zone)
        hours = parse_business_hours(business_hours)
        days: set[date] = set()
        for holiday in holidays:
            if isinstance(holiday, date):
                days.add(holiday)
                continue
            try:
                days.add(date.fromisoformat(str(holiday)))
            except ValueError:
                raise CalendarError("holidays", f"dates are 'YYYY-MM-DD', got {holiday!r}") from None
        return cls(zone, hours, frozenset(days))

    def open_intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Business intervals as UTC instants, in order, from the local day containing `start`.

        Yields intervals that may end before `start`; callers clip. Stops after MAX_HORIZON_DAYS.
        """
        day = start.astimezone(self.time_zone).date()
        for _ in range(MAX_HORIZON_DAYS):
            if day not in self.holidays:
                for begin, end in self.hours.get(day.weekday(), ()):
                    yield self._instant(day, begin), self._instant(day, end)
            day += timedelta(days=1)

    def _instant(self, day: date, minute: int) -> datetime:
        if minute >= MINUTES_PER_DAY:
            return datetime.combine(day + timedelta(days=1), time(), self.time_zone).astimezone(UTC)
        # A wall time inside a spring-forward gap maps (fold=0) to the offset before the change,
        # i.e. just after the gap in real time; an ambiguous one to its first occurrence.
        return datetime.combine(day, time(minute // 60, minute % 60), self.time_zone).astimezone(UTC)


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def add_business_minutes(start: datetime, minutes: float, calendar: BusinessCalendar | None) -> datetime:
    """The instant `minutes` of business time after `start` (UTC). None = round the clock.

    Starting outside business hours counts from the next opening. Zero minutes returns `start`.
    Raises CalendarError when the calendar cannot supply that much time within MAX_HORIZON_DAYS.
    """
    start = _aware(start, "start")
    if minutes < 0:
        raise ValueError("minutes must not be negative")
    if calendar is None or minutes == 0:
        return start + timedelta(minutes=minutes)
    remaining = timedelta(minutes=minutes)
    for begin, end in calendar.open_intervals(start):
        if end <= start:
            continue
        begin = max(begin, start)
        available = end - begin
        if remaining <= available:
            return begin + remaining
        remaining -= available
    raise CalendarError(
        "business_hours", f"no deadline within {MAX_HORIZON_DAYS} days of {start.isoformat()}"
    )


def business_minutes_between(start: datetime, end: datetime, calendar: BusinessCalendar | None) -> float:
    """Business minutes in [start, end); 0 when end is not after start. None = round the clock."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if end <= start:
        return 0.0
    if calendar is None:
        return (end - start).total_seconds() / 60
    total = timedelta()
    for begin, finish in calendar.open_intervals(start):
        if begin >= end:
            break
        overlap = min(finish, end) - max(begin, start)
        if overlap > timedelta():
            total += overlap
    return total.total_seconds() / 60
