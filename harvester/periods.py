"""Pure dates: period keys, breakdown windows, summing stats answers; the UTC stamps we keep.

The stats host silently clamps an over-long breakdown range (NOTES §10), so a long range is
split into windows cut at period boundaries.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping

STAMP = "%Y-%m-%dT%H:%M:%SZ"  # the UTC times the journal, catalog and errors keep
BREAKDOWN_MAX_YEARS = {"day": 1, "month": 2, "year": 5, "total": 1}
ONE_DAY = dt.timedelta(days=1)

Breakdown = dict[str, dict[str, dict[str, int]]]  # period -> country -> city (or "total") -> n


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stamp(t: dt.datetime) -> str:
    return f"{t.year:04d}{t.strftime(STAMP[2:])}"  # strftime's %Y does not pad years < 1000


def stamp_now() -> str:
    return stamp(utc_now())


def parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, STAMP).replace(tzinfo=dt.UTC)


def parse_date(text: str) -> dt.date:
    return dt.date.fromisoformat(text[:10])


def add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def next_period(day: dt.date, granularity: str) -> dt.date:
    """First day of the period after the one containing `day`."""
    if granularity == "month":
        return dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
    if granularity == "year":
        return dt.date(day.year + 1, 1, 1)
    return day + ONE_DAY


def period_key(day: dt.date, granularity: str) -> str:
    """The stats host's key for the period holding `day`: 2024-03-05, 2024-03, 2024 or total."""
    length = {"day": 10, "month": 7, "year": 4}.get(granularity)
    return day.isoformat()[:length] if length else "total"


def periods(start: dt.date, end: dt.date, granularity: str) -> list[tuple[str, dt.date]]:
    """Every period key in [start, end] with the first day it covers (clipped to start)."""
    if granularity == "total":
        return [("total", start)]
    out: list[tuple[str, dt.date]] = []
    day = start
    while day <= end:
        out.append((period_key(day, granularity), day))
        day = next_period(day, granularity)
    return out


def breakdown_windows(
    start: dt.date, end: dt.date, granularity: str
) -> list[tuple[dt.date, dt.date]]:
    """[start, end] as consecutive windows the stats host answers without clamping.

    A window stays a day short of start + N years and, for month and year, ends at a period
    end while the range goes on: a period split over two answers (top-10 city lists) could
    not be merged exactly.
    """
    windows: list[tuple[dt.date, dt.date]] = []
    s = start
    while s <= end:
        e = min(end, add_years(s, BREAKDOWN_MAX_YEARS[granularity]) - ONE_DAY)
        if e < end and granularity in ("month", "year"):  # back to the last period end
            after = e + ONE_DAY
            e = after.replace(day=1) if granularity == "month" else after.replace(month=1, day=1)
            e -= ONE_DAY
        windows.append((s, e))
        s = e + ONE_DAY
    return windows


def merge_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum {key: n} answers; a key missing from one answer counts 0 there."""
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


def merge_breakdowns(parts: Iterable[Breakdown]) -> Breakdown:
    """Sum breakdown answers period by period, country by country, city by city."""
    out: Breakdown = {}
    for part in parts:
        for period, countries in part.items():
            into = out.setdefault(period, {})
            for country, cities in countries.items():
                into[country] = merge_counts([into.get(country, {}), cities])
    return out
