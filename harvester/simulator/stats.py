"""Stats host routes (totals, timeline, breakdown, tops, count) over a seeded, on-demand model.

Choices where NOTES.md §10 is silent, and fidelity limits:
- "Today" is the corpus's latest publish day; default ranges (1st of the month -> today) use it.
- The public timeline, breakdown and top are open; only the /{institution}/ forms of those three
  need Basic auth (totals and count never do). One credential pair opens every institution, and
  auth is checked before the path's parameters. An unknown institution string id counts nothing.
- Groups, collections and projects are sums over their public articles; authors have independent
  series, so an author's numbers are not the sum of their articles and any author id has stats.
  Tops over authors are empty (authors are not enumerable here).
- Breakdowns of a group/collection/project split the item's daily count into places, so they are
  not the sum of its articles' breakdowns (periods and totals still agree with the timeline).
- Tops with sub_item: "category" is wrapped in {"top": ...}, "item_type"/"referral" are flat, as
  in the docs' examples. Referrers, countries and cities are small fixed lists.
- No range limits on timelines; breakdown end dates are clamped only when both dates are given.
- Unknown paths get aiohttp's plain-text 404; Figshare's 404 body is not documented.
- The corpus's pseudo_count (REST order=views etc.) is its own number, not these totals.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import random
import re
from array import array
from collections.abc import Iterable, Iterator
from datetime import date
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from harvester.simulator.appkeys import SIMULATOR
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

_KIND = {kind: i + 1 for i, kind in enumerate(ITEMS)}
_COUNTER = {counter: i + 1 for i, counter in enumerate(COUNTERS)}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MASK = (1 << 64) - 1
_MODELS: web.AppKey[dict[int, StatsModel]] = web.AppKey("stats_models", dict)


def _mix(*parts: int) -> int:
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
        return self.first_ord + _mix(self.seed, _KIND[kind], uid, 99) % span

    def unit_totals(self, kind: str, uid: int, start: int | None = None) -> tuple[int, int, int]:
        """All-time (views, downloads, shares) of a unit in O(1); series only distribute them."""
        h = _mix(self.seed, _KIND[kind], uid)
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
        return self.unit_totals(kind, uid)[_COUNTER[counter] - 1]

    def _series(self, kind: str, uid: int, counter: str) -> tuple[tuple[int, int], ...]:
        """(day ordinal, count) pairs, ascending, summing to the unit's total; early days busier."""
        start = self.start_ord(kind, uid)
        total = self.unit_totals(kind, uid, start)[_COUNTER[counter] - 1]
        if total <= 0:
            return ()
        rng = random.Random(_mix(self.seed, _KIND[kind], uid, _COUNTER[counter]))
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
        h = _mix(self.seed, _KIND[kind], uid, 77)
        types = list(ITEM_TYPE_NAMES)
        return [self._categories[h % len(self._categories)]], types[(h >> 20) % len(types)]

    def unit_institution(self, kind: str, uid: int) -> int | None:
        if kind == "article":
            return self.corpus.institution_of(uid) or None
        insts = self.corpus.institutions
        # about a third of authors belong to no institution
        pick = _mix(self.seed, _KIND[kind], uid, 55) % (len(insts) + max(1, len(insts) // 2))
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
        rng = random.Random(_mix(self.seed, _KIND[kind], item_id, _COUNTER[counter], day))
        out: list[tuple[int, int, int]] = []
        countries = rng.sample(range(len(GEO)), min(n, 1 + int(rng.random() * 3)))
        for country, share in zip(countries, _split(rng, n, len(countries)), strict=True):
            cities = GEO[country][1]
            many = min(share, len(cities), 1 + int(rng.random() * 4))
            picked = rng.sample(range(len(cities)), many)
            for city, m in zip(picked, _split(rng, share, many), strict=True):
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


def _split(rng: random.Random, n: int, parts: int) -> list[int]:
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


def model_for(request: web.Request) -> StatsModel:
    """The stats model of the simulator's current corpus (built on first use, then reused)."""
    sim = request.app[SIMULATOR]
    corpus = sim.corpus
    models = request.app[_MODELS]
    model = models.get(id(corpus))
    if model is None or model.corpus is not corpus:
        models.clear()  # one corpus at a time: keep memory bounded when tests swap corpora
        model = models[id(corpus)] = StatsModel(corpus)
    return model


# --- HTTP -------------------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", charset="UTF-8"
    )


class _StatsError(Exception):
    def __init__(self, status: int, code: str, message: str, data: Any) -> None:
        super().__init__(message)
        self.response = _json({"data": data, "code": code, "message": message}, status)


def _invalid(param: str, extra: str) -> _StatsError:
    return _StatsError(
        400, "InvalidParams", f"Invalid or unsupported params: {param}",
        {"extra": extra, "invalid_params": param},
    )  # fmt: skip


def _forbidden() -> _StatsError:
    return _StatsError(403, "Forbidden", "Unauthorized request", None)


def _check_path(request: web.Request, *, granularity: bool = False) -> None:
    info = request.match_info
    if info["counter"] not in COUNTERS:
        raise _invalid("counter", f"Counter type not supported: {info['counter']}")
    if info["item"] not in ITEMS:
        raise _invalid("item", f"Item type not supported: {info['item']}")
    if granularity and info["granularity"] not in GRANULARITIES:
        raise _invalid("granularity", f"Granularity not supported: {info['granularity']}")


def _check_auth(request: web.Request) -> None:
    """Institution-scoped timeline/breakdown/top need HTTP Basic with the stats credentials."""
    settings = request.app[SIMULATOR].settings
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise _forbidden()
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _forbidden() from None
    if (user, password) != (settings.stats_user, settings.stats_password):
        raise _forbidden()


def _parse_date(request: web.Request, name: str) -> date | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        if not _DATE.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise _invalid(name, f"Invalid date: {raw}") from None


def _sub_item(request: web.Request, allowed: tuple[str, ...]) -> tuple[str, str] | None:
    sub = request.query.get("sub_item")
    if sub is None:
        return None
    if sub not in allowed:
        raise _invalid("sub_item", f"Sub item type not supported: {sub}")
    sub_id = request.query.get("sub_item_id")
    if sub_id is None and sub != "referral":
        raise _StatsError(
            400, "MissingParams", "Missing required params: sub_item_id",
            {"missing_params": "sub_item_id", "parameters": dict(sorted(request.query.items())),
             "path": request.path},
        )  # fmt: skip
    return sub, (sub_id or "").lower()


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _range(request: web.Request, model: StatsModel, granularity: str | None) -> tuple[int, int]:
    """[start, end] day ordinals; granularity set = breakdown, whose end_date gets clamped."""
    start, end = _parse_date(request, "start_date"), _parse_date(request, "end_date")
    if granularity is not None and start is not None and end is not None:
        end = min(end, _add_years(start, BREAKDOWN_MAX_YEARS[granularity]))  # silently
    start = start or model.today.replace(day=1)
    end = end or model.today
    return start.toordinal(), end.toordinal()


def _period(day: int, granularity: str) -> str:
    if granularity == "total":
        return "total"
    d = date.fromordinal(day)
    if granularity == "day":
        return d.isoformat()
    return f"{d.year:04d}-{d.month:02d}" if granularity == "month" else f"{d.year:04d}"


def _scope(request: web.Request, model: StatsModel) -> int | None:
    return model.institution_id(request.match_info.get("institution"))


def _item_id(request: web.Request) -> int:
    return int(request.match_info["item_id"])


def _guarded(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _StatsError as err:
            return err.response

    return wrapped


async def total(request: web.Request) -> web.Response:
    _check_path(request)
    model = model_for(request)
    info = request.match_info
    n = model.total(info["item"], _item_id(request), info["counter"], _scope(request, model))
    return _json({"totals": n})


async def timeline(request: web.Request) -> web.Response:
    if "institution" in request.match_info:
        _check_auth(request)
    _check_path(request, granularity=True)
    model = model_for(request)
    info = request.match_info
    sub = _sub_item(request, SUB_ITEMS)
    start, end = _range(request, model, None)
    days = model.day_counts(
        info["item"], _item_id(request), info["counter"], _scope(request, model), sub, start, end
    )
    out: dict[str, int] = {}
    for day, n in days:
        key = _period(day, info["granularity"])
        out[key] = out.get(key, 0) + n
    return _json({"timeline": out})


async def breakdown(request: web.Request) -> web.Response:
    if "institution" in request.match_info:
        _check_auth(request)
    _check_path(request, granularity=True)
    model = model_for(request)
    info = request.match_info
    kind, item_id, counter = info["item"], _item_id(request), info["counter"]
    sub = _sub_item(request, SUB_ITEMS)
    start, end = _range(request, model, info["granularity"])
    periods: dict[str, dict[int, dict[int, int]]] = {}
    for day, n in model.day_counts(kind, item_id, counter, _scope(request, model), sub, start, end):
        countries = periods.setdefault(_period(day, info["granularity"]), {})
        for country, city, m in model.geo(kind, item_id, counter, day, n):
            cities = countries.setdefault(country, {})
            cities[city] = cities.get(city, 0) + m
    return _json({"breakdown": {key: _geo_body(countries) for key, countries in periods.items()}})


def _geo_body(countries: dict[int, dict[int, int]]) -> dict[str, dict[str, int]]:
    """Top MAX_CITIES cities per country plus its full total; at most MAX_COUNTRIES countries."""
    ranked = sorted(countries.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    out: dict[str, dict[str, int]] = {}
    for country, cities in ranked[:MAX_COUNTRIES]:
        names = GEO[country][1]
        top = sorted(cities.items(), key=lambda kv: (-kv[1], names[kv[0]]))[:MAX_CITIES]
        entry = {names[city]: n for city, n in top}
        entry["total"] = sum(cities.values())
        out[GEO[country][0]] = entry
    return out


async def top(request: web.Request) -> web.Response:
    if "institution" in request.match_info:
        _check_auth(request)
    _check_path(request)
    model = model_for(request)
    counter, kind = request.match_info["counter"], request.match_info["item"]
    inst = _scope(request, model)
    try:
        count = int(request.query.get("count", "10"))
        item_id = int(request.query["item_id"]) if "item_id" in request.query else None
    except ValueError:
        raise _invalid("count" if "count" in request.query else "item_id", "Not a number") from None
    sub = request.query.get("sub_item")
    if sub is not None:
        if sub not in TOP_SUB_ITEMS:
            raise _invalid("sub_item", f"Sub item type not supported: {sub}")
        start, end = _range(request, model, None)
        ranking = _top_sub_items(model, kind, item_id, counter, inst, sub, start, end)
        ranked = heapq.nsmallest(count, ranking.items(), key=lambda kv: (-kv[1], kv[0]))
        flat = {key: n for key, n in ranked}
        # The docs show the category ranking wrapped in "top" but referral and item_type flat.
        return _json({"top": flat} if sub == "category" else flat)
    dates = "start_date" in request.query or "end_date" in request.query
    window = _range(request, model, None) if dates else None
    scored = _top_items(model, kind, counter, inst, window)
    best = heapq.nsmallest(count, ((-n, uid) for uid, n in scored if n > 0))
    return _json({"top": {str(uid): -neg for neg, uid in best}})


def _candidates(model: StatsModel, kind: str) -> Iterable[int]:
    """Every id of a kind that a ranking considers (authors are not enumerable here)."""
    corpus = model.corpus
    if kind == "article":
        return corpus.ids
    if kind == "group":
        return [group.id for group in corpus.groups]
    if kind in ("collection", "project"):
        return getattr(corpus, f"{kind}_ids")  # type: ignore[no-any-return]
    return ()


def _top_items(
    model: StatsModel, kind: str, counter: str, inst: int | None, window: tuple[int, int] | None
) -> Iterator[tuple[int, int]]:
    """(item id, count) for every rankable item of a kind in the scope."""
    if kind == "article" and window is None:
        yield from model.article_totals(counter, inst)
        return
    start, end = window or (model.first_ord, model.today_ord)
    for item_id in _candidates(model, kind):
        if window is None:
            yield item_id, model.total(kind, item_id, counter, inst)
        else:
            units = model.units(kind, item_id, inst)
            yield item_id, sum(model.window_total(k, u, counter, start, end) for k, u in units)


def _top_sub_items(
    model: StatsModel, kind: str, item_id: int | None, counter: str, inst: int | None,
    sub: str, start: int, end: int,
) -> dict[str, int]:  # fmt: skip
    """Counts in [start, end] per category id, item type name or referrer of an item."""
    ids = _candidates(model, kind) if item_id is None else (item_id,)
    out: dict[str, int] = {}
    for one in ids:
        for ukind, uid in model.units(kind, one, inst):
            n = model.window_total(ukind, uid, counter, start, end)
            if n <= 0:
                continue
            if sub == "referral":
                rng = random.Random(_mix(model.seed, _KIND[ukind], uid, _COUNTER[counter], 3))
                picked = rng.sample(REFERRALS, min(n, 1 + int(rng.random() * 4)))
                keys = list(zip(picked, _split(rng, n, len(picked)), strict=True))
            else:
                categories, item_type = model.attributes(ukind, uid)
                if sub == "category":
                    keys = [(str(c), n) for c in categories]
                else:
                    keys = [(ITEM_TYPE_NAMES.get(item_type, str(item_type)), n)]
            for key, m in keys:
                out[key] = out.get(key, 0) + m
    return out


async def count_articles(request: web.Request) -> web.Response:
    """POST /count/articles {"groups": [{"id": n}, ...]} -> {"n": public articles in group n}."""
    try:
        body = orjson.loads(await request.read())
        groups = [int(g["id"]) for g in body["groups"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise _invalid("groups", 'Expected a body like {"groups": [{"id": 1}]}') from None
    model = model_for(request)
    return _json({str(gid): sum(1 for _ in model.units("group", gid, None)) for gid in groups})


def add_routes(app: web.Application) -> None:
    """Register the stats service on the stats host's app (paths at the root, no /v2)."""
    app[_MODELS] = {}
    item = r"{counter}/{item}/{item_id:\d+}"
    for prefix in ("", "/{institution}"):
        app.router.add_get(f"{prefix}/total/{item}", _guarded(total))
        app.router.add_get(f"{prefix}/timeline/{{granularity}}/{item}", _guarded(timeline))
        app.router.add_get(f"{prefix}/breakdown/{{granularity}}/{item}", _guarded(breakdown))
        app.router.add_get(f"{prefix}/top/{{counter}}/{{item}}", _guarded(top))
    app.router.add_post("/count/articles", _guarded(count_articles))
