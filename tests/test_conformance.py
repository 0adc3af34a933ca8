"""Every request a matrix of harvests sends, checked against Figshare's documentation (issue 25).

Each case runs real harvests against the simulator and checks every request it logged with
tests/spec.py: the operation exists, its parameters and body fields are declared and within their
ranges and enums, and a credential goes only to an operation that needs it, on its own host.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from harvester.client import Client
from harvester.partition import Limits
from harvester.pipeline import Harvest, client_settings
from harvester.simulator import Simulator
from harvester.simulator.behaviour import LogEntry
from harvester.simulator.settings import SimSettings
from harvester.sources import SourceReport, enumerate_source
from tests import spec
from tests.conftest import serving, write_config

pytestmark = pytest.mark.skipif(not spec.SWAGGER.is_file(),
                                reason=f"the Figshare spec is not at {spec.SWAGGER}")

# A small corpus with a small window, so paging, window refusals and cursors all happen.
SETTINGS = SimSettings(items=400, seed=11, window=60)
HTTP = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 8, "page_size": 20,
        "retry": {"attempts": 3, "backoff_base": 0.01, "backoff_max": 0.05}}
ENV = {"TOKEN": SETTINGS.user_token, "ADMIN": SETTINGS.admin_token,
       "SU": SETTINGS.stats_user, "SP": SETTINGS.stats_password}
TOKEN = f"token {SETTINGS.user_token}"
ADMIN = f"token {SETTINGS.admin_token}"
BASIC = "Basic " + base64.b64encode(
    f"{SETTINGS.stats_user}:{SETTINGS.stats_password}".encode()).decode()
# the institution-scoped stats every case configures, so Basic could leak to public totals
STATS_SCOPE = {"institution": "lboro", "user": "${SU}", "password": "${SP}"}


async def harvest(sim: Simulator, tmp_path: Path, name: str, sources: list[dict[str, Any]],
                  *, api_url: str | None = None, token: str = "${TOKEN}",
                  **top: Any) -> dict[str, Any]:
    """One harvest with a token and stats credentials configured; its manifest."""
    top.setdefault("stats", {"counters": [], **STATS_SCOPE})
    urls = SimpleNamespace(api_url=api_url or sim.api_url, stats_url=sim.stats_url)
    cfg = write_config(tmp_path / name, urls, sources, env=ENV, name=name, http=HTTP,
                       api={"token": token}, **top)
    result = await Harvest(cfg).run()
    assert result.snapshot is not None, f"{name}: nothing published"
    # a request the simulator misread would show here: lost pages, failed ids
    assert result.manifest["status"] == "complete", (name, result.manifest["ids"])
    return result.manifest


# ---- the matrix -----------------------------------------------------------------------------

Case = Callable[[Simulator, Path], Awaitable[set[tuple[str, str, str]]]]


async def lists(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Every public source kind, with filters; no stats, so the lists dominate."""
    c = sim.corpus
    cid = next(x for x in c.collection_ids if len(c.collection_articles(x)) < 10)
    pid = min(c.project_ids, key=lambda x: len(c.project_articles(x)))
    a, b, d = c.ids[5], c.ids[50], c.ids[300]
    ids_file = tmp_path / "ids.txt"
    ids_file.parent.mkdir(parents=True, exist_ok=True)
    paper = next(c.article(i)["resource_doi"] for i in c.ids if c.article(i)["resource_doi"])
    ids_file.write_text(f"{a}\n{c.article(b)['doi']}\nhttps://doi.org/{c.article(d)['doi']}\n"
                        f"{paper}\n")
    author = next(x for i in c.ids for x in c.article(i)["authors"] if x["orcid_id"])
    manifest = await harvest(sim, tmp_path, "lists", [
        {"kind": "search", "search_for": "data", "item_type": 3,
         "published_since": "2019-01-01", "order": "published_date", "order_direction": "asc"},
        {"kind": "search", "institution": 319, "item_type": 3},  # past the window: a cursor
        {"kind": "author", "orcid": author["orcid_id"]},
        {"kind": "articles", "item_type": 7, "published_since": "2020-01-01T00:00:00Z"},
        {"kind": "group", "group": 13445},
        {"kind": "institution", "institution": 11, "modified_since": "2015-01-01"},
        {"kind": "institution", "institution": 2, "reconcile": "oai"},
        {"kind": "collection", "collection": cid},
        {"kind": "project", "project": pid},
        {"kind": "ids", "ids": [a, b]},
        {"kind": "ids_file", "path": str(ids_file)},
        {"kind": "ids_file", "path": str(ids_file), "doi_match": "any", "name": "by-any"},
        {"kind": "oai", "set": "item_type_5", "from": "2018-01-01", "until": "2024-12-31"},
    ])
    # paging in the POST body is honoured: every item past the window is listed
    deep = next(s for s in manifest["sources"] if s["name"] == "search-2")
    assert deep["distinct"] == sum(1 for i in c.ids if c.institution_of(i) == 319
                                   and c.item_type_of(i) == 3) > 60
    return {("api", "POST", "/articles/search"), ("api", "GET", "/articles"),
            ("api", "GET", "/collections/{collection_id}"),
            ("api", "GET", "/collections/{collection_id}/articles"),
            ("api", "GET", "/projects/{project_id}"),
            ("api", "GET", "/projects/{project_id}/articles"),
            ("api", "GET", "/oai"), ("api", "GET", "/articles/{article_id}")}


async def admin(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """The admin's sources: the institution's items, drafts included, and the review queue;
    public records from the public endpoint, private ones as their owner (impersonate)."""
    await harvest(sim, tmp_path, "admin", [
        {"kind": "institution_articles", "item_type": 3, "modified_since": "2016-01-01"},
        {"kind": "reviews", "status": "pending"},
        {"kind": "reviews"},
    ], token="${ADMIN}")
    impersonated = [e for e in sim.log.entries if "impersonate=" in e.query]
    assert impersonated and all(e.authorization == ADMIN for e in impersonated)
    return {("api", "GET", "/account/institution/articles"),
            ("api", "GET", "/account/institution/reviews"),
            ("api", "GET", "/articles/{article_id}"),
            ("api", "GET", "/account/articles/{article_id}")}


async def stats_per_item(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Totals, timelines and breakdowns per item and per entity, every version's record."""
    c = sim.corpus
    ids = [i for i in c.ids if c.versions_of(i) > 1][:6]
    series = {"start": "2022-01-01", "end": "2024-06-30",
              "items": ["article", "group", "collection", "project", "author"]}
    await harvest(sim, tmp_path, "per-item", [{"kind": "ids", "ids": ids}], versions="all", stats={
        **STATS_SCOPE, "counters": ["views", "downloads", "shares"],
        "timeline": {**series, "granularity": "month"},
        "breakdown": {**series, "granularity": "day", "counters": ["views"]},
        "entities": {"group": [c.group_of(ids[0])], "collection": [c.collection_ids[0]],
                     "project": [c.project_ids[0]],
                     "author": [c.article(ids[0])["authors"][0]["id"]]},
    })
    await harvest(sim, tmp_path, "public-scope", [{"kind": "ids", "ids": ids[:2]}], stats={
        "counters": ["views"], "timeline": {**series, "granularity": "year", "items": ["article"]},
        "breakdown": {**series, "granularity": "total", "items": ["article"]}})
    return {("stats", "GET", "/{institution}/total/{counter}/{item}/{item_id}"),
            ("stats", "GET", "/{institution}/timeline/{granularity}/{counter}/{item}/{item_id}"),
            ("stats", "GET", "/{institution}/breakdown/{granularity}/{counter}/{item}/{item_id}"),
            ("stats", "GET", "/total/{counter}/{item}/{item_id}"),
            ("stats", "GET", "/timeline/{granularity}/{counter}/{item}/{item_id}"),
            ("stats", "GET", "/breakdown/{granularity}/{counter}/{item}/{item_id}"),
            ("stats", "POST", "/count/articles"),
            ("api", "GET", "/articles/{article_id}/versions"),
            ("api", "GET", "/articles/{article_id}/versions/{version_id}")}


async def stats_tops(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Tops for an institution, with a timeline and a breakdown, and the group counts."""
    await harvest(sim, tmp_path, "tops", [{"kind": "group", "group": 13439}], stats={
        **STATS_SCOPE, "method": "tops", "top_count": 50,
        "timeline": {"granularity": "day", "start": "2024-01-01", "end": "2024-03-31",
                     "counters": ["downloads"], "items": ["article", "group"]},
        "breakdown": {"granularity": "month", "start": "2021-01-01", "end": "2025-12-31",
                      "counters": ["views"]},
        "entities": {}})
    return {("stats", "GET", "/{institution}/top/{counter}/{item}"),
            ("stats", "POST", "/count/articles")}


async def incremental(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """A full run, then a nightly one that asks only for what changed."""
    c = sim.corpus
    members = sorted(i for i in c.ids if c.group_of(i) == 12699)
    stats = {**STATS_SCOPE, "counters": ["views"]}
    inc = {"overlap_hours": 1, "stats": "recent", "recent_days": 4000}
    first = await harvest(sim, tmp_path, "nightly", [{"kind": "group", "group": 12699}],
                          stats=stats, incremental=inc)
    assert first["kind"] == "full"
    for aid in members[:2]:
        c.modify(aid, dt.datetime.now(dt.UTC).replace(microsecond=0))
    second = await harvest(sim, tmp_path, "nightly", [{"kind": "group", "group": 12699}],
                           stats=stats, incremental=inc)
    assert second["kind"] == "incremental"
    return {("api", "GET", "/articles")}


@contextlib.asynccontextmanager
async def link_hosts_moved(sim: Simulator, third: str) -> AsyncIterator[str]:
    """The simulator's API behind a pass-through that points link-only files at `third`
    (they name zenodo.org and github.com); the simulator still logs what the harvester sent."""
    moved = [(b"https://zenodo.org/records", f"{third}/records".encode()),
             (b"https://github.com/example-lab", f"{third}/example-lab".encode())]
    hop = {"host", "content-length", "transfer-encoding", "content-encoding", "accept-encoding"}
    api_origin = sim.api_url.removesuffix("/v2")

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        url = URL(api_origin + request.raw_path, encoded=True)
        async with http.request(request.method, url, headers=headers,
                                data=await request.read() or None) as resp:
            body = await resp.read()
            for old, new in moved:
                body = body.replace(old, new)
            kept = {k: v for k, v in resp.headers.items() if k.lower() not in hop}
            return web.Response(status=resp.status, body=body, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    async with aiohttp.ClientSession(auto_decompress=True) as http, serving(app) as proxy:
        yield proxy + "/v2"


async def files(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Downloads of drafts' and public files with private_token and link_only: link-only files
    live on a third host that records what reaches it, and no credential may (issue 25)."""
    c = sim.corpus
    seen: list[dict[str, str]] = []

    async def third_host(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=b"bytes kept elsewhere")

    drafts = [a for a in c.account_article_ids(c.user)
              if any(f["is_link_only"] for f in c.private_files(c.user, a))
              and not c.private_article(c.user, a)["is_public"]]
    public = [i for i in c.ids if any(f["is_link_only"] for f in c.files(i))][:3]
    assert drafts and public  # the corpus has what this case is about
    app = web.Application()
    app.router.add_get("/{tail:.*}", third_host)
    async with serving(app) as third, link_hosts_moved(sim, third) as api_url:
        await harvest(sim, tmp_path, "files", [{"kind": "account"}, {"kind": "ids", "ids": public}],
                      api_url=api_url, files={
                          "download": True, "url": sim.download_url, "private_token": True,
                          "link_only": True, "max_size": 100_000, "max_failures": 1_000})
    links = sum(1 for a in drafts for f in c.private_files(c.user, a) if f["is_link_only"])
    private = {f["id"] for a in c.account_article_ids(c.user)
               for r in [c.private_article(c.user, a)]
               if not r["is_public"] or r["is_embargoed"] or r["is_confidential"]
               for f in c.private_files(c.user, a)}
    carried = {int(e.path.rsplit("/", 1)[1]) for e in sim.log.entries
               if e.host == "download" and e.authorization is not None}
    assert carried and carried <= private  # the token goes with private files only
    assert len(seen) >= links  # the drafts' link-only files were fetched from the third host
    assert [h for h in seen if {"authorization", "cookie"} & {k.lower() for k in h}] == []
    return {("api", "POST", "/account/articles/search"),
            ("api", "GET", "/account/articles/{article_id}"),
            ("download", "GET", "/files/{file_id}")}


async def redirected_files(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """The download host sends every file on to another origin, as ndownloader does to its
    storage: the token given for a draft's file stays behind at the first hop."""
    at_first_hop: list[str | None] = []

    async def redirect(request: web.Request) -> web.Response:
        at_first_hop.append(request.headers.get("Authorization"))
        raise web.HTTPFound(f"{sim.download_url}{request.path}")

    app = web.Application()
    app.router.add_get("/files/{file_id}", redirect)
    async with serving(app) as download_host:
        await harvest(sim, tmp_path, "redirected", [{"kind": "account"}], files={
            "download": True, "url": download_host, "private_token": True,
            "max_size": 100_000, "max_failures": 1_000})
    assert TOKEN in at_first_hop  # the configured download host got it, for drafts' files
    assert sim.log.count("download") >= len(at_first_hop) > 0  # every hop reached the storage
    assert sim.log.credentials_seen("download") == set()
    return {("download", "GET", "/files/{file_id}")}


async def deep_review_queue(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """A review queue longer than the declared offset maximum (5000) is listed in full within
    it, split by status (issue 25: it paged to offset 6000 and got a 422). Listing only: a
    harvest would fetch thousands of records."""
    cfg = write_config(tmp_path, sim, [{"kind": "reviews"}], env=ENV, api={"token": "${ADMIN}"},
                       http={**HTTP, "page_size": 1_000})
    source = cfg.sources[0]
    report = SourceReport(source.name, source.kind)
    async with Client(client_settings(cfg)) as client:
        got = {i async for batch in enumerate_source(client, cfg.api.url, source, report,
                                                     Limits(page_size=1_000)) for i in batch}
    assert len(sim.corpus.reviews) > 6_000 and not report.truncated
    assert got == {r["article_id"] for r in sim.corpus.reviews}
    return {("api", "GET", "/account/institution/reviews")}


async def account(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """The account's items by POST /account/articles/search, filtered, then a nightly run that
    asks it for changes only; `listing: list` keeps GET /account/articles (issue 25 item 5)."""
    c = sim.corpus
    sources = [{"kind": "account"}, {"kind": "account", "listing": "list", "name": "listed"},
               {"kind": "account", "item_type": 3, "published_since": "2015-01-01T00:00:00Z",
                "group": c.groups[0].id, "name": "narrowed"}]
    inc = {"overlap_hours": 1, "stats": "none"}
    first = await harvest(sim, tmp_path, "account", sources, incremental=inc)
    assert first["kind"] == "full"
    c.modify(next(i for i in c.account_article_ids(c.user) if c.exists(i)),
             dt.datetime.now(dt.UTC).replace(microsecond=0))
    second = await harvest(sim, tmp_path, "account", sources, incremental=inc)
    assert second["kind"] == "incremental"
    nightly = [e for e in sim.log.entries if e.route == "/v2/account/articles/search"
               and b'"modified_since"' in (e.body or b"")]
    assert len(nightly) >= 3  # every account source asked for changes only
    return {("api", "POST", "/account/articles/search"), ("api", "GET", "/account/articles")}


async def collections(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Every collection of an institution, and of a group, with their articles."""
    c = sim.corpus
    metas = [c.collection_meta(i) for i in c.collection_ids]
    inst = next(c.institutions[m["inst"]].id for m in metas if m["inst"] != 255)
    group = next(c.groups[m["gidx"]].id for m in metas if m["gidx"] != 255)
    await harvest(sim, tmp_path, "collections", [{"kind": "collections", "institution": inst},
                                                 {"kind": "collections", "group": group}])
    return {("api", "GET", "/collections"), ("api", "GET", "/collections/{collection_id}"),
            ("api", "GET", "/collections/{collection_id}/articles")}


async def version_files(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Older versions whose records list 10 files: each version's own /files, paged."""
    c = sim.corpus
    ids = [i for i in c.ids if c.versions_of(i) > 1 and len(c.files(i, 1)) >= 10][:3]
    assert ids  # the corpus has what this case is about
    await harvest(sim, tmp_path, "version-files", [{"kind": "ids", "ids": ids}], versions="all")
    return {("api", "GET", "/articles/{article_id}/versions/{version_id}"),
            ("api", "GET", "/articles/{article_id}/versions/{version_id}/files")}


async def item_types(sim: Simulator, tmp_path: Path) -> set[tuple[str, str, str]]:
    """Days fuller than the window are split by the types GET /item_types lists: asked once per
    run, with no credential (the client scopes the token to /account/); it falls back here."""
    await harvest(sim, tmp_path, "types", [
        {"kind": "articles"}, {"kind": "articles", "published_since": "2019-01-01",
                               "name": "since"}])
    assert sim.log.count("api", "/v2/item_types") == 1
    return {("api", "GET", "/item_types"), ("api", "GET", "/articles")}


CASES: dict[str, tuple[SimSettings, Case]] = {
    **{f.__name__: (SETTINGS, f) for f in (lists, admin, stats_per_item, stats_tops, incremental,
                                           files, redirected_files, account, collections,
                                           version_files)},
    "deep_review_queue": (SETTINGS.with_(private_items=12_000), deep_review_queue),
    # a few days over the window on a server that reads dates as days and offers no cursor
    "item_types": (SETTINGS.with_(window=40, busy_day_share=0.3, date_bounds="day",
                                  cursor=False), item_types),
}


def failures(entries: list[LogEntry]) -> dict[str, tuple[str, ...]]:
    """Nonconforming shapes -> their problems (one example request each)."""
    bad: dict[str, tuple[str, ...]] = {}
    for e in entries:
        found = spec.check(e)
        if found.problems and found.shape not in bad:
            bad[found.shape] = (*found.problems, f"e.g. {e.method} {e.path}?{e.query}")
    return bad


def credentials_in_place(entries: list[LogEntry], tokens: set[str]) -> list[str]:
    """Each host saw only its own kind of secret, and only the configured one."""
    allowed = {"api": tokens, "stats": {BASIC}, "download": tokens}
    return sorted({f"{e.host}: {e.authorization.split(' ', 1)[0]} credential not its own"
                   for e in entries if e.authorization is not None
                   and e.authorization not in allowed[e.host]})


def shapes(entries: list[LogEntry]) -> set[str]:
    return {spec.shape(e) for e in entries}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_every_request_is_as_documented(case: str, tmp_path: Path) -> None:
    settings, run = CASES[case]
    async with Simulator(settings) as sim:
        expected = await run(sim, tmp_path)
        entries = list(sim.log.entries)
    reached = {(o.host, o.method, o.template) for e in entries
               for o in [spec.match(e.host, e.method, e.path)[0]] if o is not None}
    assert expected <= reached, f"{case} never sent {sorted(expected - reached)}"
    print(f"{case}: {len(entries)} requests, {len(shapes(entries))} shapes")
    assert credentials_in_place(entries, {TOKEN, ADMIN}) == []
    bad = failures(entries)
    assert not bad, "\n" + "\n".join(f"{s}\n    " + "\n    ".join(p) for s, p in bad.items())


# ---- the checker itself: each departure it must name ------------------------------------------


def sent(host: str, method: str, path: str, query: str = "", authorization: str | None = None,
         body: bytes | None = None, cursor: str | None = None) -> LogEntry:
    return LogEntry(t=0.0, host=host, method=method, path=path, query=query, route="",
                    status=200, authorization=authorization, fault=None, body=body,
                    cursor=cursor)


@pytest.mark.parametrize(("entry", "problem"), [
    (sent("api", "GET", "/v2/articles", "page_size=1001"), "above the declared maximum 1000"),
    (sent("api", "GET", "/v2/articles", "page=0"), "below the declared minimum 1"),
    (sent("api", "GET", "/v2/articles", "order=title"), "is not one of"),
    (sent("api", "GET", "/v2/articles", "access_token=x"), "access_token is not declared"),
    (sent("api", "GET", "/v2/articles", "page=1&page=2"), "page given twice"),
    (sent("api", "GET", "/v2/articles", "page=2&limit=10"), "mixes page/page_size"),
    (sent("api", "GET", "/v2/articles", "offset=10", cursor="c"), "offset sent with X-Cursor"),
    (sent("api", "GET", "/v2/articles", "published_since=01/02/2020"), "documented format"),
    (sent("api", "GET", "/v2/collections", "published_since=2020-01-01T00:00:00Z"),
     "documented format"),  # collections document a day only
    (sent("api", "GET", "/v2/account/institution/reviews", "offset=6000&limit=1000", ADMIN),
     "offset=6000 is above the declared maximum 5000"),
    (sent("api", "GET", "/v2/account/institution/reviews", "status=open", ADMIN), "not one of"),
    (sent("api", "GET", "/v2/articles/12", authorization=TOKEN), "to a public operation"),
    (sent("api", "GET", "/v2/oai", "verb=Identify", TOKEN), "to a public operation"),
    (sent("api", "GET", "/v2/account/articles/12", authorization=BASIC),
     "basic credential sent where only token belongs"),
    (sent("api", "GET", "/v2/account/articles/search"), "not an integer"),
    (sent("api", "GET", "/v2/articles/12", "impersonate=5"), "impersonate is not declared"),
    (sent("api", "GET", "/v2/account/articles/12", "impersonate=0", ADMIN), "below the declared"),
    (sent("api", "POST", "/v2/articles/search", body=b'{"page_size": 2000}'),
     "above the declared maximum 1000"),
    (sent("api", "POST", "/v2/articles/search", body=b'{"order": "title"}'), "is not one of"),
    (sent("api", "POST", "/v2/articles/search", body=b'{"item_type": "3"}'), "not an integer"),
    (sent("api", "POST", "/v2/articles/search", body=b'{"title": "x"}'),
     "body field title is not declared"),
    (sent("api", "POST", "/v2/articles/search", "page=2", body=b"{}"),
     "query parameter page is not declared"),
    (sent("api", "POST", "/v2/articles/search", body=b"[1]"), "not a JSON object"),
    (sent("api", "GET", "/v2/articles/12", body=b"{}"), "a request body where none"),
    (sent("api", "GET", "/v2/articles/12/files", cursor="c"), "X-Cursor is not declared"),
    (sent("api", "GET", "/v2/articles/12/citations"), "no documented operation"),
    (sent("api", "GET", "/articles/12"), "no documented operation"),  # outside /v2
    (sent("stats", "GET", "/total/views/article/1", authorization=BASIC),
     "to a public operation"),
    (sent("stats", "GET", "/lboro/total/views/article/1", authorization=BASIC),
     "to a public operation"),
    (sent("stats", "POST", "/count/articles", authorization=BASIC,
          body=b'{"groups": [{"id": 1}]}'), "to a public operation"),
    (sent("stats", "POST", "/count/articles", body=b'{"groups": [1]}'), "not a list of"),
    (sent("stats", "GET", "/lboro/timeline/day/views/article/1", authorization=TOKEN),
     "token credential sent where only basic belongs"),
    (sent("stats", "GET", "/breakdown/day/views/article/1",
          "start_date=2020-01-01&end_date=2021-01-01"), "longer than 1 year(s) at day"),
    (sent("stats", "GET", "/breakdown/month/views/article/1",
          "start_date=2020-01-01&end_date=2022-01-01"), "longer than 2 year(s) at month"),
    (sent("stats", "GET", "/timeline/week/views/article/1"), "granularity='week'"),
    (sent("stats", "GET", "/timeline/day/likes/article/1"), "counter='likes'"),
    (sent("stats", "GET", "/timeline/day/views/article/1", "start_date=2020-1-1"),
     "documented format"),
    (sent("stats", "GET", "/timeline/day/views/article/1", "sub_item=category"),
     "sub_item without sub_item_id"),
    (sent("stats", "GET", "/top/views/article", "count=0"), "below the declared minimum 1"),
    (sent("api", "GET", "/v2/oai", "verb=ListIdentifiers&resumptionToken=x&set=portal_1"),
     "resumptionToken with other arguments"),
    (sent("api", "GET", "/v2/oai", "verb=ListIdentifiers&metadataPrefix=mods"), "not one of"),
    (sent("api", "GET", "/v2/oai", "verb=ListIdentifiers"), "metadataPrefix is required"),
    (sent("api", "GET", "/v2/oai", "verb=ListSets&set=portal_1"), "not an argument"),
    (sent("api", "GET", "/v2/oai", "verb=ListRecords&metadataPrefix=oai_dc&set=portal"),
     "documented format"),
    (sent("download", "GET", "/files/12", authorization=BASIC), "basic credential"),
    (sent("api", "POST", "/v2/account/articles/search", authorization=TOKEN,
          body=b'{"page_size": 1000, "order": "title"}'), "is not one of"),
    (sent("api", "POST", "/v2/account/articles/search", authorization=TOKEN,
          body=b'{"modified_since": "2020-01-01 00:00"}'), "documented format"),
    (sent("api", "GET", "/v2/articles/12/versions/2/files", "page_size=2000"),
     "above the declared maximum 1000"),
    (sent("api", "GET", "/v2/articles/12/versions/2/files", authorization=TOKEN),
     "to a public operation"),
    (sent("api", "GET", "/v2/collections", "item_type=3"), "item_type is not declared"),
    (sent("api", "GET", "/v2/item_types", "group_id=-1"), "below the declared minimum 0"),
])
def test_the_checker_names_each_departure(entry: LogEntry, problem: str) -> None:
    found = spec.check(entry)
    assert any(problem in p for p in found.problems), found.problems


@pytest.mark.parametrize("entry", [
    sent("api", "GET", "/v2/articles", "page=9&page_size=1000&order=published_date"
         "&order_direction=asc&published_since=2020-01-01T00:00:00Z&item_type=3"),
    sent("api", "GET", "/v2/articles", "limit=1000", cursor="c"),
    sent("api", "GET", "/v2/account/institution/reviews", "offset=5000&limit=1000", ADMIN),
    sent("api", "GET", "/v2/account/articles/12/files", "page=1&page_size=10", TOKEN),
    sent("api", "GET", "/v2/account/articles/12", "impersonate=1000512", ADMIN),
    sent("api", "POST", "/v2/articles/search",
         body=b'{"search_for": ":title: x", "project_id": 5, "page": 2, "page_size": 1000}'),
    sent("api", "POST", "/v2/articles/search"),  # the body is optional
    sent("stats", "GET", "/lboro/breakdown/day/views/article/1",
         "start_date=2020-01-01&end_date=2020-12-31", BASIC),
    sent("stats", "GET", "/lboro/top/views/article", "count=10000", BASIC),
    sent("stats", "POST", "/count/articles", body=b'{"groups": [{"id": 327}]}'),
    sent("api", "GET", "/v2/oai", "verb=ListIdentifiers&metadataPrefix=oai_dc"
         "&set=month_year_10_2016&from=2016-10-01T00:00:00Z"),
    sent("api", "GET", "/v2/oai", "verb=ListIdentifiers&resumptionToken=abc"),
    sent("download", "GET", "/files/12", authorization=TOKEN),
    sent("api", "POST", "/v2/account/articles/search", authorization=TOKEN,
         body=b'{"order": "modified_date", "order_direction": "asc", "item_type": 3, '
              b'"modified_since": "2020-01-01T00:00:00Z", "page": 9, "page_size": 1000}'),
    sent("api", "GET", "/v2/articles/12/versions/2/files", "page=1&page_size=1000"),
    sent("api", "GET", "/v2/item_types"),
    sent("api", "GET", "/v2/item_types", authorization=TOKEN),
    sent("api", "GET", "/v2/collections", "institution=319&order=published_date"
         "&order_direction=asc&page=2&page_size=1000"),
    sent("api", "GET", "/v2/collections", "group=12&limit=1000", cursor="c"),
])
def test_the_checker_passes_documented_requests(entry: LogEntry) -> None:
    assert spec.check(entry).problems == ()
