"""The stats host's seeded model: per-unit events, sums over groups and sets, geography."""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable, Iterator
from datetime import date
from functools import lru_cache
from typing import Any

from harvester.simulator.vocab import ITEM_TYPES

COUNTERS = ("views", "downloads", "shares")
ITEMS = ("article", "author", "collection", "group", "project")
GRANULARITIES = ("year", "month", "day", "total")
SUB_ITEMS = ("category", "item_type")
TOP_SUB_ITEMS = ("category", "item_type", "referral")
# breakdown: with both dates given, end_date is silently clamped to start_date + this many years
BREAKDOWN_MAX_YEARS = {"day": 1, "month": 2, "year": 5, "total": 1}
MAX_CITIES = 10
MAX_COUNTRIES = 200

# item_type ids -> the lower-case names the stats service takes as sub_item_id (SPEC26 mapping)
ITEM_TYPE_NAMES = ITEM_TYPES

# A few countries, some with more than MAX_CITIES cities so that period breakdowns get truncated.
GEO: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("United States", ("New York", "Los Angeles", "Chicago", "Houston", "Boston", "Seattle",
                       "San Francisco", "Austin", "Denver", "Atlanta", "Kansas City", "Orlando",
                       "Phoenix", "Portland")),
    ("United Kingdom", ("London", "Manchester", "Birmingham", "Leeds", "Glasgow", "Edinburgh",
                        "Bristol", "Loughborough", "Oxford", "Cambridge", "Cardiff", "York")),
    ("China", ("Beijing", "Shanghai", "Chengdu", "Fuzhou", "Wuhan", "Guangzhou", "Shenzhen",
               "Nanjing", "Hangzhou", "Xi'an", "Tianjin")),
    ("Germany", ("Berlin", "Munich", "Frankfurt", "Hamburg", "Cologne", "Heidelberg")),
    ("India", ("Mumbai", "Delhi", "Bangalore", "Chennai", "Hyderabad", "Pune")),
    ("Australia", ("Melbourne", "Sydney", "Brisbane", "Perth")),
    ("Spain", ("Madrid", "Seville", "Barcelona", "Valencia")),
    ("Brazil", ("Campinas", "Indaiatuba", "Sao Paulo", "Rio de Janeiro")),
    ("France", ("Paris", "Montpellier", "Lyon")),
    ("Japan", ("Tokyo", "Osaka", "Kyoto")),
    ("Venezuela", ("Caracas",)),
    ("Canada", ("Toronto", "Montreal", "Vancouver")),
)  # fmt: skip
REFERRALS = ("www.google.com", "figshare.com", "scholar.google.com", "www.bing.com", "t.co",
             "duckduckgo.com", "www.researchgate.net", "en.wikipedia.org")  # fmt: skip

KIND_CODE = {kind: i + 1 for i, kind in enumerate(ITEMS)}
COUNTER_CODE = {counter: i + 1 for i, counter in enumerate(COUNTERS)}
_MASK = (1 << 64) - 1


def mix(*parts: int) -> int:
    """A stable 64-bit hash of ints (splitmix64 rounds); Python's hash() is salted per process."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = ((h ^ (part & _MASK)) * 0xBF58476D1CE4E5B9) & _MASK
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK
        h ^= h >> 29
    return h


def _unit(h: int, shift: int) -> float:
    """16 bits of `h` as a float in [0, 1)."""
    return ((h >> shift) & 0xFFFF) / 65536.0


class StatsModel:
    """Deterministic events per (kind, id, counter), built on demand from (seed, kind, id, counter).

    Articles and authors are "units" with their own series. A group, collection or project is the
    sum over its public articles, so its totals, tops and counts agree with per-article numbers.
    Authors have an independent series (their articles are not looked up), with an institution,
    category and item type drawn from the seed.
    """

    def __init__(self, corpus: Any) -> None:
        self.corpus = corpus
        self.seed = corpus.seed
        first, last = _date_range(corpus)
        self.first_ord = first.toordinal()
        self.today = last  # the simulated "today": the corpus's latest publish day
        self.today_ord = last.toordinal()
        self._institutions = {inst.string_id: inst for inst in corpus.institutions}
        self._group_inst = {group.id: group.institution_id for group in corpus.groups}
        self._categories = [c["id"] for c in corpus.categories] or [0]
        self._group_members: dict[int, array[int]] | None = None
        self._table: tuple[array[int], dict[str, array[int]]] | None = None
        self._table_inst: array[int] | None = None
        # (kind, id, counter, inst, generation) -> total / merged series of a group etc.
        self._composite: dict[tuple[Any, ...], Any] = {}
        self.series = lru_cache(maxsize=16_384)(self._series)

    # --- one unit (an article or an author) -------------------------------------------------

    def start_ord(self, kind: str, uid: int) -> int:
        """The first day a unit can have events: publish day of an article, else seeded."""
        if kind == "article":
            return self.corpus.published(uid).date().toordinal()
        span = max(1, self.today_ord - self.first_ord + 1)
        return self.first_ord + mix(self.seed, KIND_CODE[kind], uid, 99) % span

    def unit_totals(self, kind: str, uid: int, start: int | None = None) -> tuple[int, int, int]:
        """All-time (views, downloads, shares) of a unit in O(1); series only distribute them."""
        h = mix(self.seed, KIND_CODE[kind], uid)
        if _unit(h, 0) < 0.06:  # some items are never seen
            return 0, 0, 0
        start = self.start_ord(kind, uid) if start is None else start
        age = self.today_ord - start + 1
        if age <= 0:
            return 0, 0, 0
        maturity = min(1.0, age / 365.0) ** 0.5
        popularity = (_unit(h, 16) + 1 / 65536) ** -0.9 - 1.0  # heavy tail
        views = min(500_000, int((4 + 25 * popularity) * maturity))
        downloads = int(views * (0.05 + 0.5 * _unit(h, 32)))
        shares = int(views * 0.03 * _unit(h, 48) ** 2)  # small, often zero
        return views, downloads, shares

    def unit_total(self, kind: str, uid: int, counter: str) -> int:
        return self.unit_totals(kind, uid)[COUNTER_CODE[counter] - 1]

    def _series(self, kind: str, uid: int, counter: str) -> tuple[tuple[int, int], ...]:
        """(day ordinal, count) pairs, ascending, summing to the unit's total; early days busier."""
        start = self.start_ord(kind, uid)
        total = self.unit_totals(kind, uid, start)[COUNTER_CODE[counter] - 1]
        if total <= 0:
            return ()
        rng = random.Random(mix(self.seed, KIND_CODE[kind], uid, COUNTER_CODE[counter]))
        span = self.today_ord - start + 1
        k = min(total, span, 3 + int(4 * total**0.5), 366)
        days: set[int] = set()
        for _ in range(4 * k):
            days.add(start + int(span * rng.random() ** 2))
            if len(days) == k:
                break
        weights = [rng.random() ** 3 + 0.01 for _ in days]
        rest, scale = total - len(days), sum(weights)
        counts = [1 + int(rest * w / scale) for w in weights]
        counts[0] += total - sum(counts)  # the rounding remainder lands on the earliest day
        return tuple(zip(sorted(days), counts, strict=True))

    def attributes(self, kind: str, uid: int) -> tuple[list[int], int]:
        """(category ids, item type) of a unit, for sub_item filters."""
        if kind == "article":
            return self.corpus.category_ids_of(uid), self.corpus.item_type_of(uid)
        h = mix(self.seed, KIND_CODE[kind], uid, 77)
        types = list(ITEM_TYPE_NAMES)
        return [self._categories[h % len(self._categories)]], types[(h >> 20) % len(types)]

    def unit_institution(self, kind: str, uid: int) -> int | None:
        if kind == "article":
            return self.corpus.institution_of(uid) or None
        insts = self.corpus.institutions
        # about a third of authors belong to no institution
        pick = mix(self.seed, KIND_CODE[kind], uid, 55) % (len(insts) + max(1, len(insts) // 2))
        return insts[pick].id if pick < len(insts) else None

    # --- items and scopes -------------------------------------------------------------------

    def institution_id(self, string_id: str | None) -> int | None:
        """The numeric id of an institution string id; -1 for an unknown one (matches nothing)."""
        if string_id is None:
            return None
        inst = self._institutions.get(string_id)
        return inst.id if inst is not None else -1

    def members(self, kind: str, item_id: int) -> Iterable[int] | None:
        """Article ids of a group, collection or project; None for a unit kind."""
        if kind == "group":
            if self._group_members is None:
                index: dict[int, array[int]] = {}
                for aid in self.corpus.ids:  # later withdrawals are filtered by exists()
                    index.setdefault(self.corpus.group_of(aid), array("q")).append(aid)
                self._group_members = index
            return self._group_members.get(item_id, ()) if item_id in self._group_inst else ()
        if kind in ("collection", "project"):
            try:
                return getattr(self.corpus, f"{kind}_articles")(item_id)  # type: ignore[no-any-return]
            except KeyError:
                return ()
        return None

    def units(
        self, kind: str, item_id: int, inst: int | None, sub: tuple[str, str] | None = None
    ) -> Iterator[tuple[str, int]]:
        """The (kind, id) units counted for an item in a scope, sub_item filter applied."""
        members = self.members(kind, item_id)
        candidates: Iterable[int] = (item_id,) if members is None else members
        unit_kind = kind if members is None else "article"
        for uid in candidates:
            if unit_kind == "article" and not self.corpus.exists(uid):
                continue
            if inst is not None and self.unit_institution(unit_kind, uid) != inst:
                continue
            if sub is not None and not self._matches(unit_kind, uid, sub):
                continue
            yield unit_kind, uid

    def _matches(self, kind: str, uid: int, sub: tuple[str, str]) -> bool:
        categories, item_type = self.attributes(kind, uid)
        what, value = sub
        if what == "category":
            return value.isdigit() and int(value) in categories
        return value in (str(item_type), ITEM_TYPE_NAMES.get(item_type, ""))

    def _cached(self, key: tuple[Any, ...], build: Any) -> Any:
        key = (*key, getattr(self.corpus, "generation", 0))
        if key not in self._composite:
            if len(self._composite) >= 512:  # merged series of big groups are large
                self._composite.clear()
            self._composite[key] = build()
        return self._composite[key]

    # --- queries ----------------------------------------------------------------------------

    def total(self, kind: str, item_id: int, counter: str, inst: int | None) -> int:
        """All-time count of an item in a scope (a group's is the sum over its articles)."""
        if kind in ("article", "author"):
            units = self.units(kind, item_id, inst)
            return sum(self.unit_total(k, u, counter) for k, u in units)
        return self._cached(
            ("total", kind, item_id, counter, inst),
            lambda: sum(self.unit_total(k, u, counter) for k, u in self.units(kind, item_id, inst)),
        )  # type: ignore[no-any-return]

    def day_counts(
        self, kind: str, item_id: int, counter: str, inst: int | None,
        sub: tuple[str, str] | None, start: int, end: int,
    ) -> list[tuple[int, int]]:  # fmt: skip
        """(day, count) with a nonzero count within [start, end], ascending."""
        if kind in ("article", "author"):
            merged: Iterable[tuple[int, int]] = (
                pair for _, uid in self.units(kind, item_id, inst, sub)
                for pair in self.series(kind, uid, counter)
            )  # fmt: skip
        else:
            merged = self._cached(
                ("days", kind, item_id, counter, inst, sub),
                lambda: self._merge(self.units(kind, item_id, inst, sub), counter),
            )
        return [(day, n) for day, n in merged if start <= day <= end]

    def _merge(self, units: Iterable[tuple[str, int]], counter: str) -> tuple[tuple[int, int], ...]:
        out: dict[int, int] = {}
        for kind, uid in units:
            for day, n in self.series(kind, uid, counter):
                out[day] = out.get(day, 0) + n
        return tuple(sorted(out.items()))

    def window_total(self, kind: str, uid: int, counter: str, start: int, end: int) -> int:
        if start <= self.first_ord and end >= self.today_ord:
            return self.unit_total(kind, uid, counter)
        return sum(n for day, n in self.series(kind, uid, counter) if start <= day <= end)

    def geo(
        self, kind: str, item_id: int, counter: str, day: int, n: int
    ) -> list[tuple[int, int, int]]:
        """One day's count of an item split into (country index, city index, count)."""
        rng = random.Random(mix(self.seed, KIND_CODE[kind], item_id, COUNTER_CODE[counter], day))
        out: list[tuple[int, int, int]] = []
        countries = rng.sample(range(len(GEO)), min(n, 1 + int(rng.random() * 3)))
        for country, share in zip(countries, split_count(rng, n, len(countries)), strict=True):
            cities = GEO[country][1]
            many = min(share, len(cities), 1 + int(rng.random() * 4))
            picked = rng.sample(range(len(cities)), many)
            for city, m in zip(picked, split_count(rng, share, many), strict=True):
                out.append((country, city, m))
        return out

    def article_totals(self, counter: str, inst: int | None) -> Iterator[tuple[int, int]]:
        """(id, all-time count) of every public article in a scope with a nonzero count."""
        if self._table is None:
            ids = array("q", self.corpus.ids)
            columns = [array("q") for _ in COUNTERS]
            for aid in ids:
                for column, n in zip(columns, self.unit_totals("article", aid), strict=True):
                    column.append(n)
            self._table = (ids, dict(zip(COUNTERS, columns, strict=True)))
        ids, totals = self._table
        if inst is not None and self._table_inst is None:
            self._table_inst = array("q", (self.corpus.institution_of(a) for a in ids))
        by_inst = self._table_inst if inst is not None else None
        withdrawn = len(self.corpus.ids) != len(ids)  # withdrawals only ever remove ids
        for aid, n, where in zip(ids, totals[counter], by_inst or ids, strict=True):
            in_scope = n > 0 and (by_inst is None or where == inst)
            if in_scope and (not withdrawn or self.corpus.exists(aid)):
                yield aid, n


def split_count(rng: random.Random, n: int, parts: int) -> list[int]:
    """n split into `parts` positive counts (n >= parts), uneven like real traffic."""
    weights = [rng.random() + 0.05 for _ in range(parts)]
    scale = sum(weights)
    counts = [1 + int((n - parts) * w / scale) for w in weights]
    counts[0] += n - sum(counts)
    return counts


def _date_range(corpus: Any) -> tuple[date, date]:
    """(earliest, latest) publish day of the corpus."""
    ordered = corpus.ids_by_published()
    if not len(ordered):
        return date(2010, 1, 8), date(2010, 1, 8)
    return corpus.published(ordered[0]).date(), corpus.published(ordered[-1]).date()
