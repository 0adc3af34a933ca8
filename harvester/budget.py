"""A night's request budget, pure: what fits, the spend order, nights to a full refresh.

A time budget becomes requests at the paced rate, less MARGIN kept for writing and publishing;
the run spends it in `journal.Priority` order and stops fetching once it is spent (`Spend`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import time
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import orjson

from harvester.config import (
    INCREMENTAL_KINDS,
    Config,
    Incremental,
    Source,
    parse_duration,
    public_view,
)
from harvester.errors import BudgetSpent
from harvester.periods import breakdown_windows, parse_date, parse_stamp, stamp, utc_now
from harvester.policy import RateLimit

MARGIN = 0.03  # of a time budget, kept for writing and publishing the snapshot
WRITE_RATE = 1_000  # records a second the writing is planned at (on top of MARGIN): low, so
#                     a night whose snapshot holds many records starts writing in time
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})\s*(.*)$")


@dataclass(frozen=True)
class Budget:
    """What a run may spend: seconds (of which MARGIN is kept back), or requests as such."""

    seconds: float | None = None
    requests: int | None = None
    said: str = ""  # as the user gave it, for messages and the manifest

    def allowance(self, rate: RateLimit, records: int = 0) -> int:
        """Requests the fetching may send, leaving time to write `records` records."""
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
    zone: dt.tzinfo | None = None  # None: the machine's local time
    if zone_text.upper() in ("Z", "UTC"):
        zone = dt.UTC
    elif offset := re.fullmatch(r"([+-])(\d{2}):?(\d{2})", zone_text):
        hours, minutes = int(offset[2]), int(offset[3])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{text!r}: {zone_text!r} is not a UTC offset (-23:59 to +23:59)")
        sign = -1 if offset[1] == "-" else 1
        zone = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    elif zone_text:
        try:
            zone = zoneinfo.ZoneInfo(zone_text)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{text!r}: {zone_text!r} is not a time zone such as "
                             "Europe/Berlin, UTC or +02:00") from None
    here = (now or utc_now()).astimezone(zone)
    end = here.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if end <= here:
        end += dt.timedelta(days=1)
    return (end - here).total_seconds()


def budget_of(budget: str | None, until: str | None, configured: str | None) -> Budget | None:
    """The run's budget: --budget or --until (not both), else incremental.budget."""
    if budget and until:
        raise ValueError("give --budget or --until, not both")
    if until:
        return Budget(seconds=parse_until(until), said=f"until {until}")
    text = budget or configured
    return Budget(seconds=parse_duration(text), said=text) if text else None


@dataclass(eq=False)  # each item is itself, whatever it has left
class _InFlight:
    left: int  # requests of the item's estimated cost not sent yet


_ITEM: ContextVar[_InFlight | None] = ContextVar("budget_item", default=None)


def count_estimated(requests: Counter[str], kind: str) -> None:
    """Count a request `Costs` estimates, and take it off what this task's item has left."""
    requests[kind] += 1
    item = _ITEM.get()
    if item is not None:
        item.left -= 1


class Spend:
    """The fetching's side of a budget: an item starts only if its estimated cost fits beside
    the requests sent and those the items in flight have yet to send; from the first that does
    not fit, once the clock says stop, or once an item's wait would pass the stop (BudgetSpent,
    the client's deadline), none starts (spending order is kept)."""

    def __init__(self, allowance: int | None, stop_at: float | None,
                 sent: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self.allowance, self.stop_at, self.sent, self.clock = allowance, stop_at, sent, clock
        self.spent = False
        self.cut = ""  # why the first item cut short by the stop was (BudgetSpent), if one was
        self._flying: list[_InFlight] = []

    @classmethod
    def of(cls, budget: Budget | None, rate: RateLimit, records: int, started: float,
           sent: Callable[[], int]) -> Spend:
        """A run's spend of `budget` (None: unlimited), its clock counted from `started`."""
        stop = budget.fetch_seconds(records) if budget else None
        return cls(budget.allowance(rate, records) if budget else None,
                   None if stop is None else started + stop, sent)

    def admit(self, cost: int) -> bool:
        if not self.spent:
            expected = sum(max(0, item.left) for item in self._flying)
            over = self.allowance is not None and \
                self.sent() + expected + cost > self.allowance
            self.spent = over or (self.stop_at is not None and self.clock() >= self.stop_at)
        return not self.spent

    @contextmanager
    def fetching(self, cost: int) -> Iterator[None]:
        """An admitted item in flight (in this task): what it has yet to send stays reserved."""
        item = _InFlight(cost)
        self._flying.append(item)
        token = _ITEM.set(item)
        try:
            yield
        except BudgetSpent as exc:
            self.spent, self.cut = True, self.cut or str(exc)
            raise
        finally:
            _ITEM.reset(token)
            self._flying.remove(item)

    def view(self, budget: Budget | None, plan: Schedule | None,
             spent: dict[str, Any]) -> dict[str, Any]:
        """The manifest's `budget`: what was allowed, what tonight's schedule held, how it went."""
        return {
            "said": budget.said if budget else None,
            "requests": self.allowance,
            "stopped_fetching": self.spent,  # the budget ran out before the work did
            "predicted_requests": plan.requests if plan else None,
            "nights_to_full_refresh": plan.nights_to_full if plan else None,
            "settles_at_age_nights": plan.settle_age if plan else None,
            **spent,
        }


def series_requests(cfg: Config) -> int:
    """Timeline and breakdown requests one article costs (long breakdowns are split)."""
    series = 0
    today = utc_now().date()
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
    def of(cls, cfg: Config) -> Costs:
        series = series_requests(cfg)
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
    stats: int  # stats-only refreshes waiting (spent stalest first)
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

    def __str__(self) -> str:
        held = "no budget" if self.allowance is None else f"budget {self.allowance:,} requests"
        return (f"{self.requests:,} requests ({held}): {self.records:,} records "
                f"({self.records_deferred:,} deferred), {self.stats:,} stats refreshes "
                f"({self.stats_deferred:,} deferred)")


def schedule(work: Workload, allowance: int | None, rate: RateLimit) -> Schedule:
    """Spend `allowance` in order: records first, then stats stalest first."""
    c = work.costs
    left = None if allowance is None else allowance - work.listing - c.once
    records = work.records if left is None else max(0, min(work.records, left // c.record))
    if left is not None:
        left -= records * c.record
    stats = work.stats if left is None else max(0, min(work.stats, left // c.stats))
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
        stats=stats, stats_deferred=work.stats - stats, per_night=per_night,
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


def choose_kind(inc: Incremental, sources: Sequence[Source], now: dt.datetime,
                last_full: str | None, marks: dict[str, tuple[str, str]],
                ) -> tuple[str, dict[str, str], str]:
    """(full or incremental, per list source the modified_since bound to ask with, why)."""
    if last_full is None:
        return "full", {}, "no earlier full run: this one is full"
    age = now - parse_stamp(last_full)
    if age > dt.timedelta(days=inc.full_every_days):
        return "full", {}, (f"last full run is {age.total_seconds() / 86400:.1f} days old "
                            f"(full_every_days: {inc.full_every_days:g}): this one is full")
    since: dict[str, str] = {}
    overlap = dt.timedelta(hours=inc.overlap_hours)
    for source in sources:
        mark = marks.get(source.name)
        if source.kind in INCREMENTAL_KINDS and mark and mark[0] == source_fp(source):
            since[source.name] = stamp(parse_stamp(mark[1]) - overlap)
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
    age = (now - parse_stamp(oldest)).total_seconds() / 86400
    return {"oldest_stats_at": oldest, "oldest_stats_age_days": round(age, 3)}


def requests_total(meta: dict[str, str], metrics: dict[str, Any]) -> dict[str, int]:
    """Requests per host of the runs this journal saw before, plus this run's."""
    total: Counter[str] = Counter(orjson.loads(meta.get("requests_earlier", "{}")))
    total.update(metrics.get("requests", {}))
    return dict(sorted(total.items()))
