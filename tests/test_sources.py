"""Enumeration past the 9,000 cap, on loopback: an inline list server whose bound semantics,
refusals and duplicates are set per test, and the simulator for every source kind."""

from __future__ import annotations

import bisect
import datetime as dt
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from harvester import config, figshare, sources
from harvester.client import Client, ClientSettings, RateLimit, RetryPolicy
from harvester.config import Source
from harvester.errors import AuthError, ConfigError, NotFound
from harvester.figshare import ListQuery, list_query
from harvester.partition import Exhauster, IdSet, Limits, parse_stamp
from harvester.simulator import Simulator, SimulatorThread
from harvester.simulator.settings import SimSettings
from harvester.simulator.vocab import ITEM_TYPES
from harvester.sources import DOI_FIELDS, SourceReport, enumerate_source
from tests.conftest import serving

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
    cap: int = 0  # page_size silently served at most this (0: as asked)
    reverse: bool = False  # `order_direction` ignored: newest first
    shown: dict[int, str] = field(default_factory=dict)  # id -> published_date listed instead
    item_types: tuple[int, ...] = figshare.ITEM_TYPES  # what GET /item_types lists
    project: list[dict[str, Any]] | None = None  # what project 7 lists (None: `items`)
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
        if request.method == "POST":  # a search: filters in the JSON body
            q.update({k: str(v) for k, v in orjson.loads(await request.read()).items()})
        self.requests.append(q)
        assert q.get("order") == "published_date" and q.get("order_direction") == "asc"
        page, size = int(q.get("page", 1)), int(q.get("page_size", 10))
        size = min(size, self.cap or size)
        if page * size > self.window:
            body = ({"message": "Max page reached. Please narrow down your search"}
                    if self.refuse == 400
                    else {"message": "Invalid offset", "code": "InvalidParams"})
            return web.json_response(body, status=self.refuse)
        served = self.select(q)
        if self.duplicates:  # like Figshare's search: some records come twice in a row
            served = [x for n, i in enumerate(served, 1)
                      for x in ([i, i] if n % self.duplicates == 0 else [i])]
        served = served[::-1] if self.reverse else served
        chunk = [{**i, "published_date": self.shown.get(i["id"], i["published_date"])}
                 for i in served[(page - 1) * size : page * size]]
        return web.Response(body=orjson.dumps(chunk), content_type="application/json")

    async def handle_item_types(self, request: web.Request) -> web.Response:
        """GET /item_types: the item types the service has (`item_types`; default documented)."""
        return web.json_response([{"id": t} for t in self.item_types])

    async def handle_project(self, request: web.Request) -> web.Response:
        """GET /projects/{id}/articles: paging only, no order, no filters (SPEC26)."""
        page, size = int(request.query.get("page", 1)), int(request.query.get("page_size", 10))
        self.requests.append({"project": "7", **request.query})
        if page * size > self.window:
            return web.json_response({"message": "Max page reached. Please narrow down your "
                                                 "search"}, status=400)
        listed = self.items if self.project is None else self.project
        chunk = listed[(page - 1) * size : page * size]
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
        app.router.add_post("/v2/articles/search", server.handle)
        app.router.add_get("/v2/projects/7/articles", server.handle_project)
        app.router.add_get("/v2/item_types", server.handle_item_types)
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


@pytest.mark.parametrize(("types", "why"), [
    ((), "GET /item_types could not be read"),  # answered no type: the documented codes serve
    ((1, 3, 9), "the window held items outside its 3 values"),  # type 6 is in the window
])
async def test_a_split_by_item_types_not_confirmed_is_truncated(
    serve: Any, types: tuple[int, ...], why: str
) -> None:
    """No count says what the pieces of a busy second add up to: types never asked for
    would be lost silently, so a list that cannot be confirmed makes the source truncated."""
    items = corpus(BUSY_SECOND)
    server = ListServer(items, item_types=types)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert walker.truncated
    assert any(why in p.note and p.truncated for p in walker.partitions)
    assert set(got) == {i["id"] for i in items}  # the values seen were split by all the same


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
    _, walker = await exhaust(await serve(server), GET_ALL)
    assert walker.truncated  # loudly incomplete, not silently short
    assert len(walker.seen) < len(items)
    assert "does not honour the date bound" in walker.partitions[-1].note


async def test_a_silent_page_size_cap_is_learned_not_taken_for_the_end(serve: Any) -> None:
    items = corpus([(2_500, BASE, 100 * DAY, 0)])
    server = ListServer(items, cap=100)  # asked 1,000 a page, serves 100 (Figshare in 2017)
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert sorted(set(got)) == [i["id"] for i in items] and not walker.truncated
    assert walker.limits.page_size == 100
    assert "serves at most 100 items a page" in walker.partitions[0].note
    # the short page and the one after it that shows the cap; then 25 full pages and the end
    assert len(server.requests) == 2 + 26


@pytest.mark.parametrize("disorder", ["order-ignored", "one-date-out-of-place"])
async def test_dates_out_of_order_stop_the_moving_bound_as_truncated(
    serve: Any, disorder: str
) -> None:
    items = corpus([(3_000, BASE, 100 * DAY, 0)])
    server = ListServer(items, window=1_000, reverse=disorder == "order-ignored")
    if disorder == "one-date-out-of-place":  # listed at its place with a later item's date
        server.shown[items[500]["id"]] = items[1_500]["published_date"]
    got, walker = await exhaust(await serve(server), GET_ALL)
    assert walker.truncated and len(set(got)) < len(items)  # never a jump past unlisted items
    assert "does not list in published_date order" in walker.partitions[-1].note


async def test_a_project_over_the_window_falls_back_to_a_partitioned_search(serve: Any) -> None:
    items = corpus([(12_000, BASE, 200 * DAY, 0)])
    server = ListServer(items)  # every item belongs to project 7 here
    got, walker = await exhaust(await serve(server), list_query("project", {"project": 7}))
    assert set(got) == {i["id"] for i in items} and not walker.truncated
    assert walker.partitions[0].note == "window full: listed by the fallback query instead"
    assert all(q.get("project_id") == "7" for q in server.requests if "project" not in q)
    assert walker.partitions[1].query.startswith("POST /articles/search [order=published_date")


async def test_a_fallback_search_missing_ids_the_window_listed_is_truncated(serve: Any) -> None:
    items = corpus([(9_500, BASE, 200 * DAY, 0)])
    server = ListServer(items[:37], project=items)  # the search knows 37 of the project's
    got, walker = await exhaust(await serve(server), list_query("project", {"project": 7}))
    assert len(set(got)) == 9_000 and walker.truncated  # was trusted: 500 silently missing
    assert "the fallback query missed 8963 ids the window listed" in walker.partitions[0].note


async def test_a_repeated_page_is_the_reason_given_when_nothing_narrows() -> None:
    async def repeat(request: web.Request) -> web.Response:
        size = int(request.query["page_size"])  # every page the same full page: a loop
        return web.json_response([{"id": i} for i in range(1, size + 1)])

    app = web.Application()
    app.router.add_get("/v2/collections/3/articles", repeat)
    async with serving(app) as url:
        got, walker = await exhaust(f"{url}/v2", list_query("collection", {"collection": 3}))
    assert got == list(range(1, 1_001)) and walker.truncated
    assert walker.partitions[0].note == ("page 2 repeats the page before: paging stopped; "
                                         "the endpoint offers no way to narrow it")


def test_id_set_is_a_compact_bitmap() -> None:
    s = IdSet()
    assert s.add(45_000_000) and not s.add(45_000_000)
    assert s.add(7) and s.add(1 << 40) and 7 in s and 8 not in s and (1 << 40) in s
    assert list(s) == [7, 45_000_000, 1 << 40] and len(s) == 3


# ---- every source kind against the simulator ------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimSettings(items=2_000, seed=21)) as s:
        yield s


async def run_source(sim: Simulator, kind: str, token: str | None = None,
                     limits: Limits | None = None, **params: Any) -> tuple[list[int], SourceReport]:
    creds = {origin(sim.api_url): f"token {token}"} if token else {}
    report = SourceReport(kind, kind)
    async with fast_client(**creds) as client:
        got = [i async for b in enumerate_source(client, sim.api_url, Source(kind, kind, params),
                                                 report, limits) for i in b]
    return got, report


def origin(url: str) -> str:
    return url.split("/v2")[0]


def ids_of(sim: Simulator, indices: set[int]) -> list[int]:
    return sorted(sim.corpus.index_to_id(k) for k in indices)


async def test_author_by_name_and_by_orcid(sim: Simulator) -> None:
    c = sim.corpus
    author = next(a for i in c.ids for a in c.article(i)["authors"] if a["orcid_id"])
    got, report = await run_source(sim, "author", full_name=author["full_name"])
    assert sorted(set(got)) == ids_of(sim, c.match_author(author["full_name"])) and got
    got, _ = await run_source(sim, "author", orcid=author["orcid_id"])
    assert sorted(set(got)) == ids_of(sim, c.match_orcid(author["orcid_id"])) and got
    search = [e for e in sim.log.entries if e.route == "/v2/articles/search"]
    # each: one short page, and the empty page after it that proves it the end (not a cap)
    assert len(search) == 4 and report.partitions[0].query.startswith("POST /articles/search")
    assert f'search_for=:author: "{author["full_name"]}"' in report.partitions[0].query


async def test_a_modified_since_listing_keeps_each_ids_listed_date_for_the_fetcher(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a 304 must not contradict (fetch.ItemFetcher.note_listing); only a date-bounded
    listing keeps dates, and one over the cap or restored keeps none (None: dates lost)."""
    since = "2023-01-01T00:00:00Z"
    got, report = await run_source(sim, "articles", modified_since=since)
    assert got and report.modified == {
        a: int(sim.corpus.modified(a).timestamp()) for a in got}
    _, whole = await run_source(sim, "group", group=sim.corpus.groups[0].id)
    assert whole.modified == {}
    monkeypatch.setattr(sources, "MAX_LISTED_DATES", len(set(got)) - 1)
    _, over = await run_source(sim, "articles", modified_since=since)
    assert over.modified is None
    report.restore(report.as_dict())
    assert report.modified is None
    whole.restore(whole.as_dict())  # a listing without dates lost none: its 304s stay trusted
    assert whole.modified == {}


async def test_account_items_with_the_users_token(sim: Simulator) -> None:
    got, _ = await run_source(sim, "account", token=sim.settings.user_token)
    assert sorted(got) == sorted(sim.corpus.account_article_ids(sim.corpus.user))


async def test_account_search_splits_past_its_window_and_asks_for_changes_only() -> None:
    async with Simulator(SimSettings(items=2_000, seed=21, window=10)) as small:
        c, token = small.corpus, small.settings.user_token
        rows = c.account_items(c.user)
        assert len(rows) > 10 and any(not r[1] for r in rows)  # past the window, drafts too
        got, report = await run_source(small, "account", token, Limits(page_size=5))
        assert sorted(set(got)) == sorted(r[0] for r in rows) and not report.truncated
        assert len(report.partitions) > 1  # continued by a moving modified_date bound
        assert {e.route for e in small.log.entries} == {"/v2/account/articles/search"}
        assert report.partitions[0].query.startswith("POST /account/articles/search")
        # the plain listing cannot be narrowed: it stops at the window, and says so
        listed, plain = await run_source(small, "account", token, Limits(page_size=5),
                                         listing="list")
        assert plain.truncated and len(set(listed)) == 10
        # an incremental run's bound (budget.narrowed) lists what changed since, even with
        # listing: list
        changed = sorted(i for i in c.account_article_ids(c.user) if c.exists(i))[:2]
        for aid in changed:
            c.modify(aid, dt.datetime.now(dt.UTC).replace(microsecond=0))
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for listing in ("search", "list"):
            got, _ = await run_source(small, "account", token, Limits(page_size=5),
                                      listing=listing, modified_since=since)
            assert sorted(set(got)) == changed


async def test_item_types_are_asked_once_per_run_and_fall_back_when_refused() -> None:
    # days fuller than the window, bounds read as days, no cursor: splits by item type
    settings = SimSettings(items=2_000, seed=21, window=100, busy_day_share=0.3,
                           date_bounds="day", cursor=False)
    async with Simulator(settings) as small:
        c = small.corpus
        api = small.api_url
        # GET /item_types asks for a token (swagger: OAuth2): scoped to it alone here
        creds = {api + "/item_types": f"token {small.settings.user_token}"}
        limits = Limits(page_size=50)
        async with fast_client(**creds) as client:
            for inst in (c.institutions[0].id, None):
                params = {"institution": inst} if inst else {}
                report = SourceReport("s", "articles")
                got = {i async for b in enumerate_source(
                    client, api, Source("articles", "s", params), report, limits) for i in b}
                assert got == {i for i in c.ids if inst is None or c.institution_of(i) == inst}
        asked = [e for e in small.log.entries if e.route == "/v2/item_types"]
        assert len(asked) == 1 and asked[0].status == 200 and asked[0].authorization
        assert limits.item_types == tuple(sorted(ITEM_TYPES))
        # refused (a token the service does not know): the documented codes serve and the run
        # goes on, but a split by a list not confirmed cannot be proven complete: the source
        # is truncated and says why
        small.log.clear()
        report = SourceReport("articles", "articles")
        async with fast_client(**{api + "/item_types": "token wrong-token"}) as client:
            got = [i async for b in enumerate_source(client, api, Source("articles", "s", {}),
                                                     report, Limits(page_size=50)) for i in b]
        assert set(got) == set(c.ids) and report.truncated
        assert small.log.count("api", "/v2/item_types") == 1
        (part,) = [p for p in report.partitions if p.query == "GET /item_types"]
        assert "401" in part.note and "documented codes serve instead" in part.note
        assert any("GET /item_types could not be read" in p.note and p.truncated
                   for p in report.partitions)


async def test_institution_articles_for_an_admin_include_drafts(sim: Simulator) -> None:
    got, report = await run_source(sim, "institution_articles", token=sim.settings.admin_token)
    rows = sim.corpus.institution_items()
    assert sorted(got) == sorted(r[0] for r in rows)
    assert any(not r[6] for r in rows)  # non-public items are among them
    assert "order=modified_date" in report.partitions[0].query


@pytest.mark.parametrize("kind", ["institution_articles", "reviews"])
async def test_admin_sources_refuse_a_users_token_in_one_clear_line(
    sim: Simulator, kind: str
) -> None:
    with pytest.raises(AuthError) as info:
        await run_source(sim, kind, token=sim.settings.user_token)
    message = str(info.value)
    assert "\n" not in message and "403" in message
    assert f"kind {kind}" in message and "institution administrator's token" in message
    assert sim.settings.user_token not in message
    with pytest.raises(AuthError, match="401"):
        await run_source(sim, kind, token="wrong-token")


async def test_reviews_list_their_articles_and_keep_the_review_records(sim: Simulator) -> None:
    got, report = await run_source(sim, "reviews", token=sim.settings.admin_token)
    reviews = sim.corpus.reviews
    assert sorted(got) == sorted(r["article_id"] for r in reviews)
    side = [s for s in report.side if s.kind == "review"]
    assert sorted(s.key for s in side) == sorted(r["id"] for r in reviews)
    assert side[0].body == next(r for r in reviews if r["id"] == side[0].key)
    pending, _ = await run_source(sim, "reviews", token=sim.settings.admin_token,
                                  status="pending")
    assert sorted(pending) == sorted(r["article_id"] for r in reviews if r["status"] == "pending")
    assert "offset=" in sim.log.entries[-1].query  # the endpoint pages by limit/offset


@pytest.mark.parametrize("kind", ["collection", "project"])
async def test_collections_and_projects_yield_their_record_and_articles(
    sim: Simulator, kind: str
) -> None:
    c = sim.corpus
    key = (c.collection_ids if kind == "collection" else c.project_ids)[1]
    members = c.collection_articles(key) if kind == "collection" else c.project_articles(key)
    got, report = await run_source(sim, kind, **{kind: key})
    assert sorted(got) == sorted(members)
    (side,) = report.side
    assert side.kind == kind and side.key == key
    assert side.body["record"]["id"] == key and sorted(side.body["articles"]) == sorted(members)
    # the record, one page of articles, and the empty page that proves it the end
    assert report.requests == 3


@pytest.mark.parametrize("by", ["institution", "group"])
async def test_collections_of_an_institution_or_a_group(sim: Simulator, by: str) -> None:
    c = sim.corpus
    metas = [c.collection_meta(i) for i in c.collection_ids]
    index = "inst" if by == "institution" else "gidx"
    owners = c.institutions if by == "institution" else c.groups
    chosen = max({m[index] for m in metas} - {255},
                 key=lambda x: sum(m[index] == x for m in metas))
    expected = [m["id"] for m in metas if m[index] == chosen]
    got, report = await run_source(sim, "collections", **{by: owners[chosen].id})
    members = {a for cid in expected for a in c.collection_articles(cid)}
    assert set(got) == members and report.distinct == len(members)
    assert sorted(s.key for s in report.side) == sorted(expected)
    assert all(s.kind == "collection" and sorted(s.body["articles"]) ==
               sorted(c.collection_articles(s.key)) for s in report.side)
    assert report.partitions[0].query.startswith(f"GET /collections [{by}=")
    assert "minimum_requests" not in report.as_dict()


async def test_an_unknown_collection_is_a_clear_error(sim: Simulator) -> None:
    with pytest.raises(NotFound, match="collection 1 does not exist or is not public"):
        await run_source(sim, "collection", collection=1)


async def test_ids_file_with_ids_and_dois(sim: Simulator, tmp_path: Path) -> None:
    c = sim.corpus
    a, b, d = c.ids[5], c.ids[50], c.ids[500]
    doi_b = c.article(b)["doi"]  # version-specific, e.g. 10.6084/m9.figshare.<id>.v1
    path = tmp_path / "ids.txt"
    path.write_text(f"# my list\n{a}\n\n{doi_b}\nhttps://doi.org/{c.article(d)['doi']}  # d\n"
                    "10.9999/not.on.figshare\n")
    got, report = await run_source(sim, "ids_file", path=str(path))
    assert sorted(got) == sorted([a, b, d])
    assert report.unresolved == ["10.9999/not.on.figshare"] and report.unresolved_count == 1
    assert report.as_dict()["unresolved"] == 1
    assert sim.log.count(route="/v2/articles") == 3  # one lookup per DOI
    path.write_text(f"{a}\nnot an id\n")
    with pytest.raises(ConfigError, match=r"ids.txt:2: 'not an id' is neither"):
        await run_source(sim, "ids_file", path=str(path))


async def test_ids_file_dois_resolve_as_a_supplemented_paper_with_doi_match_any(
        sim: Simulator, tmp_path: Path) -> None:
    c = sim.corpus
    paper = next(c.article(i)["resource_doi"] for i in c.ids if c.article(i)["resource_doi"])
    supplements = sorted(i for i in c.ids if c.article(i)["resource_doi"] == paper)
    a = c.ids[5]
    path = tmp_path / "ids.txt"
    path.write_text(f"{c.article(a)['doi']}\n{paper}\n10.9999/nowhere\n")
    got, report = await run_source(sim, "ids_file", path=str(path))
    assert got == [a] and report.unresolved_count == 2  # doi only, by default
    sim.log.clear()
    got, report = await run_source(sim, "ids_file", path=str(path), doi_match="any")
    assert sorted(got) == sorted([a, *supplements]) and report.unresolved == ["10.9999/nowhere"]
    asked = [q for e in sim.log.entries if e.route == "/v2/articles" for q in [e.query]]
    # doi first; resource_doi when doi knows nothing; handle last
    assert len(asked) == report.requests == 1 + 2 + 3
    assert sum("resource_doi=" in q for q in asked) == 2 and sum("handle=" in q for q in asked) == 1


@pytest.mark.parametrize("server", ["ignores-the-filter", "pages-the-hits"])
async def test_ids_file_dois_take_only_hits_that_carry_them_and_every_page(
        server: str, tmp_path: Path) -> None:
    """40 items; 5..19 supplement one paper. A server ignoring `doi` resolves nothing (each
    hit is checked); 15 items sharing a resource_doi take two pages of 10, all read."""
    paper = "10.1371/journal.pone.1"
    items = [{"id": i, "doi": f"10.6084/m9.figshare.{i}.v1", "handle": "",
              "resource_doi": paper if 5 <= i <= 19 else ""} for i in range(1, 41)]

    def bare(doi: str) -> str:
        return re.sub(r"\.v[0-9]+$", "", doi.lower())

    async def handle(request: web.Request) -> web.Response:
        q = request.query
        chosen = items if server == "ignores-the-filter" else [
            i for i in items if all(bare(i[k]) == bare(q[k]) for k in DOI_FIELDS if k in q)]
        page, size = int(q.get("page", 1)), int(q.get("page_size", 10))
        return web.json_response(chosen[(page - 1) * size: page * size])

    app = web.Application()
    app.router.add_get("/v2/articles", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    path = tmp_path / "ids.txt"
    path.write_text(f"10.6084/m9.figshare.999\n{paper}\n10.6084/M9.FIGSHARE.7\n")
    report = SourceReport("f", "ids_file")
    try:
        async with fast_client() as client:
            source = Source("ids_file", "f", {"path": str(path), "doi_match": "any"})
            got = [i async for b in enumerate_source(
                client, f"http://127.0.0.1:{runner.addresses[0][1]}/v2", source, report)
                for i in b]
    finally:
        await runner.cleanup()
    assert report.unresolved == ["10.6084/m9.figshare.999"]  # never "resolved" to others
    if server == "ignores-the-filter":  # hits that carry the DOI, found by chance: not all
        assert sorted(set(got)) == [5, 6, 7, 8, 9, 10] and report.truncated
    else:  # the paper's 15 supplements in two pages (and item 7 by its unversioned DOI)
        assert sorted(set(got)) == list(range(5, 20)) and not report.truncated
        # 999 by each field; the paper by doi, then two pages by resource_doi; 7 by doi
        assert report.requests == 3 + 3 + 1


async def test_oai_source_by_set_and_dates(sim: Simulator) -> None:
    c = sim.corpus
    got, report = await run_source(sim, "oai", set="item_type_3", **{"from": "2019-01-01"})
    since = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)
    assert sorted(got) == sorted(i for i in c.ids
                                 if c.item_type_of(i) == 3 and c.published(i) >= since)
    assert report.partitions[0].query.startswith("OAI-PMH ListIdentifiers")


async def test_a_descending_query_over_the_window_restarts_ascending() -> None:
    async with Simulator(SimSettings(items=12_000, seed=4, cursor=False)) as big:
        got, report = await run_source(big, "articles", order_direction="desc")
        assert sorted(set(got)) == sorted(big.corpus.ids) and not report.truncated
        assert "order_direction=desc" in report.partitions[0].query
        assert "order_direction=asc" in report.partitions[1].query


def test_plan_with_a_users_token_on_an_admin_source_exits_5_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from harvester import cli
    from tests.test_cli import config_file, one_error_line

    with SimulatorThread(SimSettings(items=300, seed=2)) as s:
        monkeypatch.setenv("FIGSHARE_TOKEN", s.settings.user_token)
        path = config_file(tmp_path, s.api_url, s.stats_url, [{"kind": "institution_articles"}],
                           api={"token": "${FIGSHARE_TOKEN}"})
        assert cli.main(["plan", path]) == cli.ABORTED
    line = one_error_line(capsys.readouterr().err)
    assert "403" in line and "institution administrator's token" in line
    assert s.settings.user_token not in line


def test_admin_and_account_kinds_need_a_token_at_validation() -> None:
    for kind in ("institution_articles", "reviews", "account"):
        with pytest.raises(ConfigError, match=f"kind '{kind}' needs api.token"):
            config.parse(f"name: t\nsources:\n  - kind: {kind}\n", "c.yaml", {})


@pytest.mark.parametrize(("source", "problem"), [
    ("{kind: author}", "give exactly one of full_name"),
    ("{kind: author, full_name: A B, orcid: 0000-0001}", "give exactly one of full_name"),
    ("{kind: institution, institution: 1, reconcile: rest}", "must be 'oai'"),
    ("{kind: institution, institution: 1, reconcile: oai, group: 5}", "group narrows"),
    ("{kind: oai, set: portal}", "is not an OAI-PMH set"),
    ("{kind: collection}", "collection: required"),
    ("{kind: collections}", "give institution or group"),
    ("{kind: account, listing: list, item_type: 3}", "takes no filters"),
    ("{kind: account, listing: all}", "is not one of"),
    ("{kind: ids_file, path: /nonexistent/ids.txt}", "is not a readable file"),
])
def test_new_kinds_are_validated(source: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config.parse(f"name: t\nsources:\n  - {source}\n", "c.yaml", {})


async def test_collection_project_and_review_records_reach_the_snapshot(
    sim: Simulator, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from harvester.pipeline import Harvest
    from tests.conftest import write_config

    c = sim.corpus
    cid, pid = c.collection_ids[0], c.project_ids[0]
    cfg = write_config(tmp_path, sim, [
        {"kind": "collection", "collection": cid},
        {"kind": "project", "project": pid},
        {"kind": "reviews", "status": "approved"},
    ], env={"FIGSHARE_TOKEN": sim.settings.admin_token}, api={"token": "${FIGSHARE_TOKEN}"},
        stats={"counters": []})
    result = await Harvest(cfg).run()
    snap = result.snapshot
    assert snap is not None and result.manifest["status"] == "complete"
    (coll,) = pq.read_table(snap / "collections").to_pylist()
    assert coll["collection_id"] == cid and coll["title"] == c.collection(cid)["title"]
    members = pq.read_table(snap / "collection_articles").column("article_id").to_pylist()
    assert sorted(members) == sorted(c.collection_articles(cid))
    (proj,) = pq.read_table(snap / "projects").to_pylist()
    assert proj["project_id"] == pid
    reviews = pq.read_table(snap / "reviews").to_pylist()
    approved = [r for r in c.reviews if r["status"] == "approved"]
    assert sorted(r["review_id"] for r in reviews) == sorted(r["id"] for r in approved)
    assert all(r["status"] == "approved" and r["review_date"] is not None for r in reviews)
    articles = set(pq.read_table(snap / "articles").column("article_id").to_pylist())
    assert articles == set(c.collection_articles(cid)) | set(c.project_articles(pid)) | {
        r["article_id"] for r in approved}
    # the manifest says what each source took
    by_name = {s["name"]: s for s in result.manifest["sources"]}
    assert by_name["reviews-3"]["partitions"][0]["query"].startswith(
        "GET /account/institution/reviews")


async def test_reviews_without_a_valid_id_are_skipped_counted_and_publish_the_rest(
    sim: Simulator, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from harvester.pipeline import Harvest
    from tests.conftest import write_config

    reviews = sim.corpus.reviews
    for review, bad in zip(reviews, [True, "900009", -5], strict=False):
        review["id"] = bad
    cfg = write_config(tmp_path, sim, [{"kind": "reviews"}], stats={"counters": []},
                       env={"FIGSHARE_TOKEN": sim.settings.admin_token},
                       api={"token": "${FIGSHARE_TOKEN}"})
    result = await Harvest(cfg).run()  # a bool id crashed the publish, and every resume
    assert result.snapshot is not None
    got = pq.read_table(result.snapshot / "reviews").column("review_id").to_pylist()
    assert sorted(got) == sorted(r["id"] for r in reviews[3:])
    (source,) = result.manifest["sources"]
    assert source["truncated"] and source["skipped"] == 3
    assert source["skipped_sample"] == ["id=True", "id=900009", "id=-5"]


async def test_reconcile_is_skipped_when_an_incremental_run_narrows_the_source(
    sim: Simulator,
) -> None:
    inst = sim.corpus.institutions[0].id
    _, report = await run_source(sim, "institution", institution=inst, reconcile="oai",
                                 modified_since="2026-01-01")
    assert report.reconcile == {"against": "oai", "skipped": "incremental run (modified_since)"}
    assert sim.log.count(route="/v2/oai") == 0
