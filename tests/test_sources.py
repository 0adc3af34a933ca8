"""Enumeration past the 9,000 cap, on loopback: an inline list server whose bound semantics,
refusals and duplicates are set per test, and the simulator for every source kind."""

from __future__ import annotations

import bisect
import datetime as dt
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from harvester.client import Client, ClientSettings, RateLimit, RetryPolicy
from harvester.config import Source
from harvester.errors import AuthError
from harvester.figshare import ListQuery, list_query
from harvester.partition import Exhauster, IdSet, parse_stamp
from harvester.sources import SourceReport, enumerate_source

BASE = int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp())
DAY = 86_400


# ---- an inline Figshare-like list server --------------------------------------------------


@dataclass
class ListServer:
    """GET /v2/articles over a fixed item list, with the knobs the real service leaves open."""

    items: list[dict[str, Any]]  # sorted by (published, id)
    since: str = "inclusive"  # inclusive | exclusive | day | day-exclusive | ignore
    window: int = 9_000
    refuse: int = 400  # status past the window: 400 "Max page reached" or 422
    duplicates: int = 0  # every n-th item of a page is served twice
    requests: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stamps = [parse_stamp(i["published_date"]) for i in self.items]

    def select(self, q: Any) -> list[dict[str, Any]]:
        start = 0
        if "published_since" in q and self.since != "ignore":
            raw = q["published_since"]
            t = parse_stamp(raw)
            assert t is not None
            if self.since in ("day", "day-exclusive"):
                t -= t % DAY
            if self.since == "day-exclusive":
                t += DAY
            start = bisect.bisect_right(self.stamps, t) if self.since == "exclusive" \
                else bisect.bisect_left(self.stamps, t)
        out = self.items[start:]
        for key, field_ in (("item_type", "defined_type"), ("group", "group_id")):
            if key in q:
                out = [i for i in out if i[field_] == int(q[key])]
        return out

    async def handle(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.requests.append(q)
        assert q.get("order") == "published_date" and q.get("order_direction") == "asc"
        page, size = int(q.get("page", 1)), int(q.get("page_size", 10))
        if page * size > self.window:
            body = ({"message": "Max page reached. Please narrow down your search"}
                    if self.refuse == 400 else {"message": "Invalid offset", "code": "InvalidParams"})
            return web.json_response(body, status=self.refuse)
        served = self.select(q)
        if self.duplicates:  # like Figshare's search: some records come twice in a row
            served = [x for n, i in enumerate(served, 1)
                      for x in ([i, i] if n % self.duplicates == 0 else [i])]
        chunk = served[(page - 1) * size : page * size]
        return web.Response(body=orjson.dumps(chunk), content_type="application/json")


def corpus(spec: list[tuple[int, int, int, int]], seed: int = 5) -> list[dict[str, Any]]:
    """Items from (count, first second, spread in seconds, item_type or 0 for mixed)."""
    rng = random.Random(seed)
    rows = []
    for count, first, spread, itype in spec:
        for _ in range(count):
            rows.append((first + rng.randrange(max(1, spread)),
                         itype or rng.choice([1, 3, 3, 6, 9]), rng.choice([11, 12, 13])))
    rows.sort()
    out = []
    for n, (stamp, itype, group) in enumerate(rows):
        out.append({"id": 1_000_000 + n * 3, "defined_type": itype, "group_id": group,
                    "published_date": dt.datetime.fromtimestamp(stamp, dt.UTC)
                    .strftime("%Y-%m-%dT%H:%M:%SZ")})
    return out


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(server: ListServer) -> str:
        app = web.Application()
        app.router.add_get("/v2/articles", server.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v2"

    yield start
    for r in runners:
        await r.cleanup()


def fast_client(**credentials: str) -> Client:
    return Client(ClientSettings(
        user_agent="test", default_rate=RateLimit(100_000, 1.0), concurrency=8,
        retry=RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02),
        credentials=credentials))


async def exhaust(api: str, query: ListQuery) -> tuple[list[int], Exhauster]:
    async with fast_client() as client:
        walker = Exhauster(client, api)
        got: list[int] = []
        async for batch in walker.ids(query):
            got.extend(batch)
    return got, walker


GET_ALL = list_query("articles", {})
SPREAD = [(30_000, BASE, 400 * DAY, 0)]  # 30,000 items over 400 days
BUSY_SECOND = [(20_000, BASE, 300 * DAY, 0), (12_000, BASE + 100 * DAY, 1, 0)]  # 12,000 at once
BUSY_DAY = [(20_000, BASE, 300 * DAY, 0), (15_000, BASE + 100 * DAY, DAY, 0)]  # 15,000 in a day


@pytest.mark.parametrize("semantics", ["inclusive", "exclusive", "day", "day-exclusive"])
async def test_every_bound_semantics_lists_every_id_once(serve: Any, semantics: str) -> None:
    items = corpus(SPREAD)
    server = ListServer(items, since=semantics)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert set(got) == {i["id"] for i in items}
    assert len(walker.seen) == len(items) and not walker.truncated
    assert sum(p.new for p in walker.partitions) == len(items)
    # a window per 9,000 (less the overlap), each 9 pages: close to one request per 1,000
    assert walker.requests <= len(items) // 1000 + 1 + 2 * 9 * (len(items) // 9000 + 1) // 9


@pytest.mark.parametrize("refuse", [400, 422])
async def test_a_refused_page_is_a_cap_to_split_not_the_end(serve: Any, refuse: int) -> None:
    # a 2015-style server that stops at 2,000 items; the harvester still asks for 9 pages
    items = corpus(SPREAD)
    server = ListServer(items, window=2_000, refuse=refuse)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert set(got) == {i["id"] for i in items} and not walker.truncated
    assert any(int(q["page"]) == 3 for q in server.requests)  # refused, then narrowed


async def test_duplicates_within_a_response_are_absorbed(serve: Any) -> None:
    items = corpus(SPREAD)
    server = ListServer(items, duplicates=7)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert len(got) > len(items)  # served twice ...
    assert len(walker.seen) == len(items) == len(set(got))  # ... counted once


@pytest.mark.parametrize("semantics", ["inclusive", "exclusive"])
async def test_more_than_a_window_in_one_second_is_split_by_item_type(
    serve: Any, semantics: str
) -> None:
    items = corpus(BUSY_SECOND)
    server = ListServer(items, since=semantics)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert set(got) == {i["id"] for i in items} and not walker.truncated
    typed = [p for p in walker.partitions if "item_type=" in p.query]
    assert {p.query.split("item_type=")[1].split(",")[0] for p in typed} >= {"1", "3", "6", "9"}
    assert all(not p.truncated for p in walker.partitions)


@pytest.mark.parametrize("semantics", ["day", "day-exclusive"])
async def test_a_day_over_the_window_on_a_server_that_reads_dates_only(
    serve: Any, semantics: str
) -> None:
    items = corpus(BUSY_DAY)
    server = ListServer(items, since=semantics)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert set(got) == {i["id"] for i in items} and not walker.truncated
    assert any("item_type=" in p.query for p in walker.partitions)
    # the bound is re-sent as a whole day once the server shows it reads it so
    assert walker.form >= 1


async def test_one_item_type_over_the_window_is_split_by_group_and_says_so(serve: Any) -> None:
    items = corpus([(5_000, BASE, 50 * DAY, 0), (11_000, BASE + 10 * DAY, 1, 3)])
    server = ListServer(items)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert set(got) == {i["id"] for i in items}
    groups = [p for p in walker.partitions if "group=" in p.query]
    assert {p.query.split("group=")[1].split(",")[0] for p in groups} == {"11", "12", "13"}
    # groups are learned from the items seen: the harvester cannot prove there are no others
    assert walker.truncated
    assert any("group values seen" in p.note for p in walker.partitions)


async def test_a_server_that_ignores_the_bound_is_reported_truncated(serve: Any) -> None:
    items = corpus(SPREAD)
    server = ListServer(items, since="ignore")
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert walker.truncated  # loudly incomplete, not silently short
    assert len(walker.seen) < len(items)
    assert "does not honour the date bound" in walker.partitions[-1].note


def test_id_set_is_a_compact_bitmap() -> None:
    s = IdSet()
    assert s.add(45_000_000) and not s.add(45_000_000)
    assert s.add(7) and s.add(1 << 40) and 7 in s and 8 not in s and (1 << 40) in s
    assert list(s) == [7, 45_000_000, 1 << 40] and len(s) == 3
