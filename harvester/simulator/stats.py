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
from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any

import orjson
from aiohttp import web

from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.statsmodel import (
    BREAKDOWN_MAX_YEARS,
    COUNTER_CODE,
    COUNTERS,
    GEO,
    GRANULARITIES,
    ITEM_TYPE_NAMES,
    ITEMS,
    KIND_CODE,
    MAX_CITIES,
    MAX_COUNTRIES,
    REFERRALS,
    SUB_ITEMS,
    TOP_SUB_ITEMS,
    StatsModel,
    mix,
    split_count,
)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MODELS: web.AppKey[dict[int, StatsModel]] = web.AppKey("stats_models", dict)


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
    cap = request.app[SIMULATOR].settings.top_cap  # a silent server-side cap, if set
    best = heapq.nsmallest(min(count, cap) if cap else count,
                           ((-n, uid) for uid, n in scored if n > 0))
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
                salt = mix(model.seed, KIND_CODE[ukind], uid, COUNTER_CODE[counter], 3)
                rng = random.Random(salt)
                picked = rng.sample(REFERRALS, min(n, 1 + int(rng.random() * 4)))
                keys = list(zip(picked, split_count(rng, n, len(picked)), strict=True))
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

