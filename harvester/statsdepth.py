"""Stats requests: totals, timelines, breakdowns (window by window, summed), tops, counts."""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
from array import array
from collections import Counter
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from harvester.budget import count_estimated
from harvester.client import Client
from harvester.config import Config, Series
from harvester.errors import Abort, BadResponse, RequestError
from harvester.figshare import stats_total_path
from harvester.periods import (
    Breakdown,
    breakdown_windows,
    merge_breakdowns,
    parse_date,
    periods,
    utc_now,
)

log = logging.getLogger("harvester")


def _bad(url: str, what: str, method: str = "GET") -> BadResponse:
    return BadResponse(f"{method} {url} -> 200 {what}"[:300], url=url, status=200,
                       reason="bad-stats")


def _count(value: Any, url: str, what: str, method: str = "GET") -> int:
    """A count is an integer in [0, 2**63): past int64 the tables would hold a null or a 0."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _bad(url, f"with a {what} that is not a count: {value!r}", method)
    return value


def _period(key: str, url: str, asked: Container[str]) -> str:
    """A period key of the range asked for; any other would be filed under a wrong period."""
    if key not in asked:
        raise _bad(url, f"with a period outside the range asked for: {key!r}")
    return key


def _past_int64(places: dict[str, int]) -> bool:
    """A row of a country would not fit int64: a city, or its total (the cities summed when
    the total is not served), windows summed."""
    cities = [n for city, n in places.items() if city != "total"]
    return max([places.get("total", sum(cities)), *cities]) >= 2**63


_ARTICLE_ID = re.compile(r"[1-9][0-9]{0,18}")  # ASCII, canonical: one spelling per id


def _object(body: Any, key: str, url: str) -> dict[Any, Any]:
    """The answer's `key` object; a null one is no events."""
    value = body.get(key) if isinstance(body, dict) else None
    if value is None and isinstance(body, dict) and key in body:
        return {}
    if not isinstance(value, dict):
        raise _bad(url, f"without a '{key}' object")
    return value


def timeline_answer(body: Any, url: str, asked: Container[str]) -> dict[str, int]:
    """{"timeline": {period: n}} -> {period: n}, every period one of `asked`."""
    return {_period(k, url, asked): _count(n, url, "timeline count")
            for k, n in _object(body, "timeline", url).items()}


def breakdown_answer(body: Any, url: str, asked: Container[str]) -> Breakdown:
    """{"breakdown": {period: {country: {city: n, "total": n}}}} checked and copied, every
    period one of `asked`."""
    out: Breakdown = {}
    for period, countries in _object(body, "breakdown", url).items():
        if not isinstance(countries, dict):
            raise _bad(url, "with a malformed breakdown period")
        places = out[_period(period, url, asked)] = {}
        for country, cities in countries.items():
            if not country or not isinstance(cities, dict):
                raise _bad(url, f"with a malformed breakdown country {country!r}: {cities!r}")
            places[country] = {c: _count(n, url, "breakdown count") for c, n in cities.items()}
    return out


def _prefix(institution: str | None) -> str:
    return f"/{institution}" if institution else ""


def series_path(kind: str, granularity: str, counter: str, item: str, item_id: int,
                institution: str | None) -> str:
    """/timeline/... or /breakdown/... (the docs' institutional form lacks a slash: a typo)."""
    return f"{_prefix(institution)}/{kind}/{granularity}/{counter}/{item}/{item_id}"


@dataclass
class Tops:
    """One counter's ranking as compact sorted arrays, and what is known of its end.

    A ranking shorter than the `count` asked may still be cut (no maximum `count` is
    documented): an unranked item counts 0 only once `confirmed` per-item totals of unranked
    items said 0 (stats.top_verify); one that is not 0 proves it `cut`.
    """

    ids: array[int]
    counts: array[int]
    short: bool  # fewer entries than asked
    verify: int  # stats.top_verify
    confirmed: int = 0
    cut: bool = False

    def get(self, item_id: int) -> int | None:
        """The count, 0 for an absent id of a ranking known to be complete, None when unknown."""
        i = bisect.bisect_left(self.ids, item_id)
        if i < len(self.ids) and self.ids[i] == item_id:
            return self.counts[i]
        return 0 if self.short and not self.cut and self.confirmed >= self.verify else None

    def check(self, total: int) -> bool:
        """Take the per-item total of an item `get` did not know; True when it proves a cut."""
        if not self.short or self.cut:
            return False
        if total:
            self.cut = True
            return True
        self.confirmed += 1
        return False


class StatsFetcher:
    """Requests to the stats host, in the institution scope (stats.institution) throughout;
    `requests` counts them by kind for the manifest."""

    def __init__(self, cfg: Config, client: Client, requests: Counter[str]) -> None:
        self.cfg = cfg
        self.client = client
        self.requests = requests
        self.scope = cfg.stats.institution or "public"
        self.today = utc_now().date()
        self._tops: dict[str, Tops | None] | None = None
        self._tops_lock = asyncio.Lock()

    async def totals(self, aid: int) -> dict[str, int]:
        """All-time totals of one article per configured counter (tops first when asked)."""
        tops = await self._rankings() if self.cfg.stats.method == "tops" else {}
        stats: dict[str, int] = {}
        for counter in self.cfg.stats.counters:
            top = tops.get(counter)
            known = top.get(aid) if top is not None else None
            if known is None:
                known = await self.total(counter, "article", aid)
                if top is not None and top.check(known):
                    log.warning("stats: the %s ranking gave %d of the %d asked, yet article %d, "
                                "not in it, has %d: the ranking is cut; unranked items get "
                                "per-item totals", counter, len(top.ids),
                                self.cfg.stats.top_count, aid, known)
            stats[counter] = known
        return stats

    async def total(self, counter: str, item: str, item_id: int) -> int:
        url = self.cfg.stats.url + stats_total_path(counter, item, item_id,
                                                    self.cfg.stats.institution)
        count_estimated(self.requests, "stats_total")
        body = (await self.client.get(url)).data
        total = body.get("totals") if isinstance(body, dict) else None
        return _count(total, url, "'totals'")

    async def _rankings(self) -> dict[str, Tops | None]:
        """GET /{institution}/top/{counter}/article?count=N once per counter, on first use. A
        failed one fails the item that asked; the rest get per-item totals for that counter."""
        async with self._tops_lock:
            if self._tops is None:
                tops: dict[str, Tops | None] = {}
                failed: RequestError | None = None
                for counter in self.cfg.stats.counters:
                    try:
                        tops[counter] = await self._top(counter)
                    except Abort:
                        raise
                    except RequestError as exc:
                        tops[counter], failed = None, failed or exc
                        log.warning("stats: the %s ranking failed (%s); every item gets "
                                    "per-item totals instead", counter, exc)
                self._tops = tops
                if failed is not None:
                    raise failed
        return self._tops

    async def _top(self, counter: str) -> Tops:
        n = self.cfg.stats.top_count
        url = f"{self.cfg.stats.url}{_prefix(self.cfg.stats.institution)}/top/{counter}/article"
        self.requests["stats_top"] += 1
        body = (await self.client.get(url, params={"count": n})).data
        top = body.get("top") if isinstance(body, dict) else None
        if not isinstance(top, dict):
            raise _bad(url, "without a 'top' object")
        for k in top:
            if not _ARTICLE_ID.fullmatch(k) or int(k) >= 2**63:
                raise _bad(url, f"with a ranking key that is not an article id: {k!r}")
        pairs = sorted((int(k), _count(v, url, "top count")) for k, v in top.items())
        return Tops(array("q", (k for k, _ in pairs)), array("q", (v for _, v in pairs)),
                    short=len(pairs) < n, verify=self.cfg.stats.top_verify)

    async def item_series(self, item: str, item_id: int) -> dict[str, Any]:
        """{"timeline": payload, "breakdown": payload} for what the config asks of this item."""
        out: dict[str, Any] = {}
        for kind in ("timeline", "breakdown"):
            series: Series | None = getattr(self.cfg.stats, kind)
            if series is not None and item in series.items:
                out[kind] = await self._series(kind, series, item, item_id)
        return out

    async def _series(self, kind: str, series: Series, item: str, item_id: int) -> dict[str, Any]:
        start = parse_date(series.start)
        end = parse_date(series.end) if series.end else max(start, self.today)
        g = series.granularity
        windows = [(start, end)] if kind == "timeline" else breakdown_windows(start, end, g)
        counters: dict[str, Any] = {}
        for counter in series.counters:
            url = self.cfg.stats.url + series_path(kind, g, counter, item, item_id,
                                                   self.cfg.stats.institution)
            answers: list[Breakdown] = []
            for s, e in windows:
                count_estimated(self.requests, f"stats_{kind}")
                params = {"start_date": s.isoformat(), "end_date": e.isoformat()}
                body = (await self.client.get(url, params=params)).data
                asked = {key for key, _ in periods(s, e, g)}
                if kind == "timeline":  # one window: timelines have no range limit
                    counters[counter] = timeline_answer(body, url, asked)
                else:
                    answers.append(breakdown_answer(body, url, asked))
            if kind == "breakdown":
                counters[counter] = merged = merge_breakdowns(answers)
                if any(_past_int64(c) for p in merged.values() for c in p.values()):
                    raise _bad(url, "whose counts sum past int64")
        return {
            "kind": kind, "item": item, "item_id": item_id, "scope": self.scope, "granularity": g,
            "start": start.isoformat(), "end": end.isoformat(), "counters": counters,
        }

    def entity_ids(self, discovered_groups: Iterable[int]) -> dict[str, list[int]]:
        """Ids per entity kind the series ask for; groups default to `discovered_groups`."""
        stats = self.cfg.stats
        kinds = {i for s in (stats.timeline, stats.breakdown) if s is not None for i in s.items}
        wanted: dict[str, list[int]] = {}
        for kind in sorted(kinds - {"article"}):
            ids = getattr(stats.entities, kind)
            if kind == "group" and ids is None:
                ids = discovered_groups
            wanted[kind] = sorted(set(ids or ()))
        return wanted

    async def group_counts(self, ids: list[int]) -> dict[str, int]:
        """POST /count/articles: public articles per group, all groups in one request."""
        if not ids:
            return {}
        url = self.cfg.stats.url + "/count/articles"
        self.requests["stats_count"] += 1
        body = (await self.client.post(url, json={"groups": [{"id": g} for g in ids]})).data
        if not isinstance(body, dict):
            raise _bad(url, "without an object", "POST")
        asked = {str(g) for g in ids}
        if not set(body) <= asked:
            raise _bad(url, f"with groups not asked for: {sorted(set(body) - asked)[:5]}", "POST")
        return {k: _count(v, url, "article count", "POST") for k, v in sorted(body.items())}
