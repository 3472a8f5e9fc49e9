"""Business-time arithmetic: pure functions, no servers needed."""

import random
import time as clock
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.tickets.sla.calendar import (
    BusinessCalendar,
    CalendarError,
    add_business_minutes,
    business_minutes_between,
    format_business_hours,
    parse_business_hours,
)

WEEKDAYS_9_TO_6 = {day: [["09:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")


def calendar(time_zone="UTC", hours=None, holidays=()):
    return BusinessCalendar.from_settings(time_zone, WEEKDAYS_9_TO_6 if hours is None else hours, holidays)


def local(zone, *args):
    return datetime(*args, tzinfo=zone)


def test_seoul_deadline_continues_next_morning_in_local_time():
    seoul = calendar("Asia/Seoul")
    start = local(SEOUL, 2025, 3, 4, 17, 0)  # Tuesday 17:00 KST = 08:00 UTC
    due = add_business_minutes(start, 120, seoul)
    assert due == local(SEOUL, 2025, 3, 5, 10, 0)
    assert due.tzinfo == UTC and due.hour == 1  # 10:00 KST is 01:00 UTC


def test_friday_evening_rolls_over_the_weekend_to_monday_morning():
    start = datetime(2025, 3, 7, 17, 30, tzinfo=UTC)  # Friday
    assert add_business_minutes(start, 60, calendar()) == datetime(2025, 3, 10, 9, 30, tzinfo=UTC)
    assert business_minutes_between(start, datetime(2025, 3, 10, 9, 30, tzinfo=UTC), calendar()) == 60


def test_us_spring_forward_keeps_local_opening_hours():
    # Friday 16:00 EST; the clocks go forward on Sunday, so Monday 10:00 is EDT (UTC-4).
    start = local(NEW_YORK, 2025, 3, 7, 16, 0)
    due = add_business_minutes(start, 180, calendar("America/New_York"))
    assert due == local(NEW_YORK, 2025, 3, 10, 10, 0)
    assert due == datetime(2025, 3, 10, 14, 0, tzinfo=UTC)


def test_us_dst_days_count_real_elapsed_minutes():
    all_day = calendar("America/New_York", {day: [["00:00", "24:00"]] for day in ("sat", "sun", "mon")})
    spring_sunday = (local(NEW_YORK, 2025, 3, 9, 0, 0), local(NEW_YORK, 2025, 3, 10, 0, 0))
    assert business_minutes_between(*spring_sunday, all_day) == 23 * 60
    start = local(NEW_YORK, 2025, 3, 8, 12, 0)  # Saturday noon EST
    due = add_business_minutes(start, 24 * 60, all_day)
    assert due - start == timedelta(hours=24)
    assert due.astimezone(NEW_YORK).hour == 13  # an hour of wall clock vanished overnight

    # Fall back: 00:00-03:00 local on that Sunday lasts four real hours.
    early = calendar("America/New_York", {"sun": [["00:00", "03:00"]]})
    fall = (local(NEW_YORK, 2025, 11, 1, 12, 0), local(NEW_YORK, 2025, 11, 3, 12, 0))
    assert business_minutes_between(*fall, early) == 4 * 60
    assert add_business_minutes(fall[0], 210, early) == datetime(2025, 11, 2, 7, 30, tzinfo=UTC)


def test_hours_inside_the_spring_forward_gap_do_not_count():
    gap_day = calendar("America/New_York", {"sun": [["01:00", "04:00"]]})
    sunday = (local(NEW_YORK, 2025, 3, 9, 0, 0), local(NEW_YORK, 2025, 3, 10, 0, 0))
    assert business_minutes_between(*sunday, gap_day) == 2 * 60  # 02:00-03:00 never happened


def test_holiday_is_skipped():
    seoul = calendar("Asia/Seoul", holidays=["2025-03-03"])  # substitute holiday for 삼일절
    start = local(SEOUL, 2025, 2, 28, 17, 0)  # Friday
    assert add_business_minutes(start, 120, seoul) == local(SEOUL, 2025, 3, 4, 10, 0)
    without_holiday = calendar("Asia/Seoul")
    assert add_business_minutes(start, 120, without_holiday) == local(SEOUL, 2025, 3, 3, 10, 0)


def test_holidays_are_local_dates_not_utc_dates():
    # 2025-03-04 00:30 KST is still 2025-03-03 in UTC; the Seoul holiday on the 4th must apply.
    seoul = calendar("Asia/Seoul", {"tue": [["00:00", "02:00"]], "wed": [["09:00", "10:00"]]}, ["2025-03-04"])
    start = local(SEOUL, 2025, 3, 4, 0, 30)
    assert add_business_minutes(start, 30, seoul) == local(SEOUL, 2025, 3, 5, 9, 30)


def test_start_outside_hours_counts_from_the_next_opening():
    early = datetime(2025, 3, 4, 7, 0, tzinfo=UTC)  # Tuesday before opening
    assert add_business_minutes(early, 30, calendar()) == datetime(2025, 3, 4, 9, 30, tzinfo=UTC)
    saturday = datetime(2025, 3, 8, 11, 0, tzinfo=UTC)
    assert add_business_minutes(saturday, 30, calendar()) == datetime(2025, 3, 10, 9, 30, tzinfo=UTC)
    late = datetime(2025, 3, 4, 20, 0, tzinfo=UTC)
    assert add_business_minutes(late, 9 * 60, calendar()) == datetime(2025, 3, 5, 18, 0, tzinfo=UTC)


def test_multi_interval_day_skips_the_lunch_break():
    split = calendar(hours={"mon": [["13:00", "18:00"], ["09:00", "12:00"]]})
    start = datetime(2025, 3, 3, 11, 30, tzinfo=UTC)  # Monday
    assert add_business_minutes(start, 60, split) == datetime(2025, 3, 3, 13, 30, tzinfo=UTC)
    assert (
        business_minutes_between(
            datetime(2025, 3, 3, 11, 0, tzinfo=UTC), start.replace(hour=14, minute=0), split
        )
        == 120
    )
    # A whole Monday (8 h) plus one minute lands on the next Monday.
    assert add_business_minutes(start.replace(hour=9, minute=0), 8 * 60 + 1, split) == datetime(
        2025, 3, 10, 9, 1, tzinfo=UTC
    )


def test_no_calendar_means_round_the_clock():
    start = datetime(2025, 3, 8, 23, 0, tzinfo=UTC)
    assert add_business_minutes(start, 90, None) == datetime(2025, 3, 9, 0, 30, tzinfo=UTC)
    assert business_minutes_between(start, start + timedelta(hours=3), None) == 180
    assert business_minutes_between(start, start - timedelta(hours=3), None) == 0
    assert add_business_minutes(start, 0, calendar()) == start


def test_adding_then_measuring_gives_back_the_minutes():
    rng = random.Random(7)
    cal = calendar("America/New_York", {**WEEKDAYS_9_TO_6, "sat": [["10:00", "12:30"]]}, ["2025-03-12"])
    for _ in range(300):
        start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(0, 400 * 24 * 60))
        minutes = rng.randrange(1, 20_000)
        due = add_business_minutes(start, minutes, cal)
        assert due > start
        assert business_minutes_between(start, due, cal) == pytest.approx(minutes)


def test_calendar_without_business_hours_is_rejected_not_looped():
    with pytest.raises(CalendarError) as error:
        calendar(hours={})
    assert error.value.field == "business_hours"
    with pytest.raises(CalendarError):
        calendar(hours={"mon": []})


def test_a_target_the_calendar_cannot_reach_fails_fast():
    sparse = calendar(hours={"mon": [["09:00", "09:01"]]})
    started = clock.monotonic()
    with pytest.raises(CalendarError):
        add_business_minutes(datetime(2025, 3, 3, tzinfo=UTC), 525_600, sparse)
    assert clock.monotonic() - started < 5


@pytest.mark.parametrize(
    ("hours", "field", "fragment"),
    [
        ({"mon": [["09:00", "12:00"], ["11:00", "13:00"]]}, "business_hours.mon", "overlap"),
        ({"mon": [["25:00", "26:00"]]}, "business_hours.mon", "not a time of day"),
        ({"mon": [["09:60", "10:00"]]}, "business_hours.mon", "not a time of day"),
        ({"mon": [["9:00", "10:00"]]}, "business_hours.mon", "HH:MM"),
        ({"mon": [["18:00", "09:00"]]}, "business_hours.mon", "ends before it starts"),
        ({"mon": [["24:00", "24:00"]]}, "business_hours.mon", "not a time of day"),
        ({"funday": [["09:00", "10:00"]]}, "business_hours.funday", "unknown weekday"),
        ({"mon": "09:00-18:00"}, "business_hours.mon", "list"),
        ({"mon": [["09:00"]]}, "business_hours.mon", "interval"),
    ],
)
def test_bad_business_hours_name_the_field(hours, field, fragment):
    with pytest.raises(CalendarError) as error:
        parse_business_hours(hours)
    assert error.value.field == field
    assert fragment in error.value.message


def test_bad_zone_and_holiday_are_rejected():
    for zone in ("Mars/Olympus", "", "../etc/passwd", "Asia/Seoul/"):
        with pytest.raises(CalendarError) as error:
            calendar(zone)
        assert error.value.field == "time_zone"
    with pytest.raises(CalendarError) as error:
        calendar(holidays=["2025-13-01"])
    assert error.value.field == "holidays"


def test_single_pair_shorthand_touching_intervals_and_midnight_end():
    parsed = parse_business_hours(
        {
            "mon": ["09:00", "18:00"],
            "tue": [["13:00", "18:00"], ["09:00", "13:00"]],
            "sun": [["20:00", "24:00"]],
        }
    )
    assert format_business_hours(parsed) == {
        "mon": [["09:00", "18:00"]],
        "tue": [["09:00", "18:00"]],
        "sun": [["20:00", "24:00"]],
    }
    late = calendar(hours={"sun": [["20:00", "24:00"]]})
    sunday = datetime(2025, 3, 9, 23, 0, tzinfo=UTC)
    assert add_business_minutes(sunday, 60, late) == datetime(2025, 3, 10, 0, 0, tzinfo=UTC)
    assert add_business_minutes(sunday, 61, late) == datetime(2025, 3, 16, 20, 1, tzinfo=UTC)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError):
        add_business_minutes(datetime(2025, 3, 3, 9, 0), 10, calendar())
    with pytest.raises(ValueError):
        add_business_minutes(datetime(2025, 3, 3, 9, 0, tzinfo=UTC), -1, calendar())


def test_holiday_dates_accept_date_objects():
    cal = BusinessCalendar.from_settings("UTC", WEEKDAYS_9_TO_6, [date(2025, 3, 3)])
    assert add_business_minutes(datetime(2025, 3, 3, 9, 0, tzinfo=UTC), 1, cal) == datetime(
        2025, 3, 4, 9, 1, tzinfo=UTC
    )
