"""Stats requests: totals, timelines, breakdowns (window by window, summed), tops, counts."""

from __future__ import annotations

import asyncio
import bisect
import logging
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harvester.budget import count_estimated
from harvester.client import Client
from harvester.config import Config, Series
from harvester.errors import BadResponse
from harvester.figshare import stats_total_path
from harvester.periods import (
    Breakdown,
    breakdown_windows,
    merge_breakdowns,
    merge_counts,
    parse_date,
    utc_now,
)

log = logging.getLogger("harvester")


def _bad(url: str, what: str, method: str = "GET") -> BadResponse:
    return BadResponse(f"{method} {url} -> 200 {what}"[:300], url=url, status=200,
                       reason="bad-stats")


def _count(value: Any, url: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(url, f"with a non-integer {what}: {value!r}")
    return value


def _object(body: Any, key: str, url: str) -> dict[Any, Any]:
    """The answer's `key` object; a null one is no events."""
    value = body.get(key) if isinstance(body, dict) else None
    if value is None and isinstance(body, dict) and key in body:
        return {}
    if not isinstance(value, dict):
        raise _bad(url, f"without a '{key}' object")
    return value


def timeline_answer(body: Any, url: str) -> dict[str, int]:
    """{"timeline": {period: n}} -> {period: n}."""
    return {str(k): _count(n, url, "timeline count")
            for k, n in _object(body, "timeline", url).items()}


def breakdown_answer(body: Any, url: str) -> Breakdown:
    """{"breakdown": {period: {country: {city: n, "total": n}}}} checked and copied."""
    out: Breakdown = {}
    for period, countries in _object(body, "breakdown", url).items():
        if not isinstance(countries, dict):
            raise _bad(url, "with a malformed breakdown period")
        out[str(period)] = {
            str(country): {str(c): _count(n, url, "breakdown count") for c, n in cities.items()}
            for country, cities in countries.items() if isinstance(cities, dict)
        }
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
        self._tops: dict[str, Tops] | None = None
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
        # a total past int64 would be a silent null in the stats table: the part fails instead
        if isinstance(total, bool) or not isinstance(total, int) or not -(2**63) <= total < 2**63:
            raise _bad(url, "without an integer 'totals' in int64")
        return total

    async def _rankings(self) -> dict[str, Tops]:
        """GET /{institution}/top/{counter}/article?count=N once per counter, on first use."""
        async with self._tops_lock:
            if self._tops is None:
                self._tops = {counter: await self._top(counter)
                              for counter in self.cfg.stats.counters}
        return self._tops

    async def _top(self, counter: str) -> Tops:
        n = self.cfg.stats.top_count
        url = f"{self.cfg.stats.url}{_prefix(self.cfg.stats.institution)}/top/{counter}/article"
        self.requests["stats_top"] += 1
        body = (await self.client.get(url, params={"count": n})).data
        top = body.get("top") if isinstance(body, dict) else None
        if not isinstance(top, dict):
            raise _bad(url, "without a 'top' object")
        pairs = sorted((int(k), _count(v, url, "top count")) for k, v in top.items()
                       if str(k).isdigit())
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
            bodies = []
            for s, e in windows:
                count_estimated(self.requests, f"stats_{kind}")
                params = {"start_date": s.isoformat(), "end_date": e.isoformat()}
                bodies.append((await self.client.get(url, params=params)).data)
            if kind == "timeline":
                counters[counter] = merge_counts(timeline_answer(b, url) for b in bodies)
            else:
                counters[counter] = merge_breakdowns(breakdown_answer(b, url) for b in bodies)
        return {
            "kind": kind, "item": item, "item_id": item_id, "scope": self.scope, "granularity": g,
            "start": start.isoformat(), "end": end.isoformat(), "counters": counters,
        }

    async def entities(self, wanted: dict[str, list[int]]) -> list[dict[str, Any]]:
        """Series payloads of the entities `entity_ids` names, in (item, id) order."""
        out: list[dict[str, Any]] = []
        for item, ids in wanted.items():
            for item_id in ids:
                out.extend((await self.item_series(item, item_id)).values())
        return out

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
        return {str(k): _count(v, url, "article count") for k, v in sorted(body.items())}
