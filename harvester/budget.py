"""A run's budget, pure: what fits tonight, the order it is spent in, nights to a full refresh.

A time budget (`--budget 8h`, `--until 06:00`, `incremental.budget`) becomes requests at the
configured rate, as the transport paces them, less MARGIN kept for writing and publishing. The
run spends it in `journal.Priority` order and stops fetching when it is spent (`Spend`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from harvester.client import RateLimit
from harvester.config import (
    INCREMENTAL_KINDS,
    Config,
    Incremental,
    Source,
    parse_duration,
    public_view,
)
from harvester.periods import breakdown_windows, parse_date

MARGIN = 0.03  # of a time budget, kept for writing and publishing the snapshot
WRITE_RATE = 1_000  # records a second the writing is planned at (on top of MARGIN): low, so
#                     a night whose snapshot holds many records starts writing in time
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})\s*(.*)$")
STAMP = "%Y-%m-%dT%H:%M:%SZ"  # the UTC times the journal and catalog keep


@dataclass(frozen=True)
class Budget:
    """What a run may spend: seconds (of which MARGIN is kept back), or requests as such."""

    seconds: float | None = None
    requests: int | None = None
    said: str = ""  # as the user gave it, for messages and the manifest

    def allowance(self, rate: RateLimit, records: int = 0) -> int:
        """Requests the fetching may send: the budget's time at the paced rate, less the time
        to write a snapshot of `records` records."""
        if self.requests is not None:
            return self.requests
        return max(0, math.floor((self.fetch_seconds(records) or 0) / rate.interval))

    def fetch_seconds(self, records: int = 0) -> float | None:
        """When fetching must stop, counted from the start of the run (None: no clock)."""
        if self.seconds is None:
            return None
        return max(0.0, self.seconds * (1 - MARGIN) - records / WRITE_RATE)


def parse_until(text: str, now: dt.datetime | None = None) -> float:
    """'06:00' (local time), '06:00 Europe/Berlin', '06:00 UTC' or '06:00+02:00' -> seconds
    from `now` to the next such time (ValueError naming what is wrong)."""
    match = _CLOCK.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a time of day such as 06:00 or 06:00 Europe/Berlin")
    hour, minute, zone_text = int(match[1]), int(match[2]), match[3].strip()
    if hour > 23 or minute > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59)")
    zone: dt.tzinfo | None
    if not zone_text:
        zone = None  # local time
    elif zone_text.upper() in ("Z", "UTC"):
        zone = dt.UTC
    elif re.fullmatch(r"[+-]\d{2}:?\d{2}", zone_text):
        sign = -1 if zone_text[0] == "-" else 1
        digits = zone_text[1:].replace(":", "")
        zone = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    else:
        try:
            zone = zoneinfo.ZoneInfo(zone_text)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{text!r}: {zone_text!r} is not a time zone such as "
                             "Europe/Berlin, UTC or +02:00") from None
    now = now or dt.datetime.now(dt.UTC)
    here = now.astimezone(zone)  # zone None: the machine's local time
    end = here.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if end <= here:
        end += dt.timedelta(days=1)
    return (end - here).total_seconds()


def budget_of(budget: str | None, until: str | None, configured: str | None,
              now: dt.datetime | None = None) -> Budget | None:
    """The run's budget: --budget or --until (not both), else incremental.budget."""
    if budget and until:
        raise ValueError("give --budget or --until, not both")
    if until:
        return Budget(seconds=parse_until(until, now), said=f"until {until}")
    text = budget or configured
    return Budget(seconds=parse_duration(text), said=text) if text else None


class Spend:
    """The fetching's side of a budget: an item starts only if its estimated cost still fits
    beside the requests already sent and those reserved by items in flight; once one does
    not fit, or the clock says stop, nothing else starts (spending order is kept)."""

    def __init__(self, allowance: int | None, stop_at: float | None,
                 sent: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self.allowance, self.stop_at, self.sent, self.clock = allowance, stop_at, sent, clock
        self.reserved = 0
        self.spent = False

    def admit(self, cost: int) -> bool:
        if not self.spent:
            over = self.allowance is not None and \
                self.sent() + self.reserved + cost > self.allowance
            late = self.stop_at is not None and self.clock() >= self.stop_at
            self.spent = over or late
        if self.spent:
            return False
        self.reserved += cost
        return True

    def release(self, cost: int) -> None:
        self.reserved -= cost


def series_requests(cfg: Config, today: dt.date | None = None) -> int:
    """Timeline and breakdown requests one article costs: one per counter for a timeline,
    one per allowed window per counter for a breakdown (long ranges are split)."""
    series = 0
    today = today or dt.datetime.now(dt.UTC).date()
    for kind, s in (("timeline", cfg.stats.timeline), ("breakdown", cfg.stats.breakdown)):
        if s is None or "article" not in s.items:
            continue
        start = parse_date(s.start)
        end = parse_date(s.end) if s.end else max(start, today)
        windows = 1 if kind == "timeline" else len(breakdown_windows(start, end, s.granularity))
        series += windows * len(s.counters)
    return series


@dataclass(frozen=True)
class Costs:
    """Requests one item costs: its record with everything asked of it, or a stats refresh."""

    record: int
    stats: int
    once: int = 0  # per run, not per item: the tops rankings

    @classmethod
    def of(cls, cfg: Config, today: dt.date | None = None) -> Costs:
        series = series_requests(cfg, today)
        counters = len(cfg.stats.counters)
        tops = cfg.stats.method == "tops"
        totals = 0 if tops else counters  # tops: a ranking per counter serves every item
        versions = 1 if cfg.versions == "all" else 0
        return cls(record=1 + totals + series + versions, stats=max(totals + series, 1),
                   once=counters if tops else 0)


@dataclass(frozen=True)
class Workload:
    """Tonight's work, in spending order (journal.Priority), as `plan` and the run see it."""

    listing: int  # requests the listing took
    records: int  # records to fetch: carried from last night, listed tonight, retried
    stats_times: Sequence[str]  # each stats-only item's last fetched_at, stalest first
    known: int  # items the catalog knows (the ones a full refresh covers)
    costs: Costs
    full: bool = False


@dataclass(frozen=True)
class Schedule:
    """What fits tonight, and where the nightly schedule settles at this budget."""

    allowance: int | None
    requests: int  # predicted for tonight, listing included
    seconds: float  # at the paced rate
    records: int
    records_deferred: int
    stats: int  # stats-only refreshes
    stats_deferred: int
    per_night: int  # stats refreshes a night holds beside tonight's records
    nights_to_full: int | None  # None: the budget holds no stats refresh at all
    settle_age: int | None  # nights: the oldest totals once the schedule settles


def schedule(work: Workload, allowance: int | None, rate: RateLimit) -> Schedule:
    """Spend `allowance` in order: records first, then stats stalest first."""
    c = work.costs
    left = None if allowance is None else allowance - work.listing - c.once
    records = work.records if left is None else max(0, min(work.records, left // c.record))
    if left is not None:
        left -= records * c.record
    wanted = len(work.stats_times)
    stats = wanted if left is None else max(0, min(wanted, left // c.stats))
    requests = work.listing + c.once + records * c.record + stats * c.stats
    per_night = stats if left is None else max(0, left // c.stats)
    if work.full:  # a full run refreshes every item's stats with its record
        nights = None if allowance is None or allowance <= work.listing else \
            math.ceil((work.listing + c.once + work.records * c.record) /
                      (allowance - work.listing))
        return Schedule(allowance, requests, requests * rate.interval, records,
                        work.records - records, 0, 0, 0, nights, nights)
    refreshed = per_night + min(records, work.known)  # changed records come with their stats
    return Schedule(
        allowance=allowance, requests=requests, seconds=requests * rate.interval,
        records=records, records_deferred=work.records - records,
        stats=stats, stats_deferred=wanted - stats, per_night=per_night,
        nights_to_full=math.ceil(work.known / refreshed) if refreshed else None,
        settle_age=settle_age(work.known, per_night, records),
    )


def settle_age(known: int, stale_per_night: int, changed_per_night: int) -> int | None:
    """The oldest totals (in nights since their refresh) once stalest-first refreshing settles,
    with `changed_per_night` items refreshed anyway (their records changed, at random)."""
    if known <= 0:
        return 0
    if stale_per_night <= 0:
        return None  # an item that never changes is never refreshed
    p = min(changed_per_night / known, 1.0)
    fresh = stale_per_night + changed_per_night * (1 - min(stale_per_night / known, 1.0))
    # after each night, n(a) = fresh * (1 - p)^a items are a nights old, up to the oldest age
    covered = 0.0
    for age in range(100_000):
        covered += fresh * (1 - p) ** age
        if covered >= known - 1e-9:
            return age
    return None


# -- which run tonight ---------------------------------------------------------------------


def choose_kind(inc: Incremental, sources: Sequence[Source], now: dt.datetime,
                last_full: str | None, marks: dict[str, tuple[str, str]],
                ) -> tuple[str, dict[str, str], str]:
    """(full or incremental, per list source the modified_since bound to ask with, why)."""
    if last_full is None:
        return "full", {}, "no earlier full run: this one is full"
    age = now - _parse(last_full)
    if age > dt.timedelta(days=inc.full_every_days):
        return "full", {}, (f"last full run is {age.total_seconds() / 86400:.1f} days old "
                            f"(full_every_days: {inc.full_every_days:g}): this one is full")
    since: dict[str, str] = {}
    overlap = dt.timedelta(hours=inc.overlap_hours)
    for source in sources:
        mark = marks.get(source.name)
        if source.kind in INCREMENTAL_KINDS and mark and mark[0] == source_fp(source):
            since[source.name] = (_parse(mark[1]) - overlap).strftime(STAMP)
    return "incremental", since, ""


def narrowed(source: Source, since: dict[str, str]) -> Source:
    """In an incremental run, a list source asks only for what changed since its mark."""
    bound = since.get(source.name)
    own = source.params.get("modified_since")
    if bound is None or (own and own > bound):
        return source
    return replace(source, params={**source.params, "modified_since": bound})


def source_fp(source: Source) -> str:
    """A source's identity for its high-water mark: change its parameters, lose its mark."""
    return hashlib.sha256(orjson.dumps(
        {"kind": source.kind, "params": public_view(source.params)}, option=orjson.OPT_SORT_KEYS
    )).hexdigest()[:16]


def stats_age(oldest: str | None, now: dt.datetime) -> dict[str, Any]:
    """The oldest totals a snapshot holds: when they were fetched, and how many days ago."""
    if not oldest:
        return {"oldest_stats_at": None, "oldest_stats_age_days": None}
    age = (now - _parse(oldest)).total_seconds() / 86400
    return {"oldest_stats_at": oldest, "oldest_stats_age_days": round(age, 3)}


def _parse(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, STAMP).replace(tzinfo=dt.UTC)


def manifest_view(budget: Budget | None, spend: Spend, plan: Schedule | None,
                  spent: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `budget`: what was allowed, what tonight's schedule held, and how it
    went (`spent`: refreshed, deferred, the oldest totals left)."""
    return {
        "said": budget.said if budget else None,
        "requests": spend.allowance,
        "stopped_fetching": spend.spent,  # the budget ran out before the work did
        "predicted_requests": plan.requests if plan else None,
        "nights_to_full_refresh": plan.nights_to_full if plan else None,
        "settles_at_age_nights": plan.settle_age if plan else None,
        **spent,
    }


def requests_total(meta: dict[str, str], metrics: dict[str, Any]) -> dict[str, int]:
    """Requests per host of the runs this journal saw before, plus this run's."""
    total: dict[str, int] = dict(orjson.loads(meta.get("requests_earlier", "{}")))
    for host, n in metrics.get("requests", {}).items():
        total[host] = total.get(host, 0) + n
    return dict(sorted(total.items()))
