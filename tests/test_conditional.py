"""Nightly runs ask for known records conditionally; a 304 is an unchanged record (issue 25)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from harvester import warehouse
from harvester.config import Config
from harvester.fetch import ItemFetcher
from harvester.pipeline import Harvest, RunResult
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings
from harvester.sources import SourceReport
from tests.conftest import write_config
from tests.test_nightly import biggest_group, table_ids
from tests.test_sources import fast_client

RECORD = "/v2/articles/{article_id}"


def members_of(sim: Simulator) -> list[int]:
    group = biggest_group(sim.corpus)
    return sorted(i for i in sim.corpus.ids if sim.corpus.group_of(i) == group)


def nightly_config(tmp_path: Path, sim: Simulator, **incremental: Any) -> Config:
    return write_config(tmp_path, sim, [{"kind": "group", "group": biggest_group(sim.corpus)}],
                        versions="all",
                        incremental={"overlap_hours": 1, "stats": "all", **incremental})


def record_statuses(sim: Simulator, ids: list[int]) -> dict[int, list[int]]:
    """The record GETs the simulator answered since the log was cleared, per id."""
    out: dict[int, list[int]] = {aid: [] for aid in ids}
    for e in sim.log.entries:
        if e.route == RECORD and int(e.path.rsplit("/", 1)[1]) in out:
            out[int(e.path.rsplit("/", 1)[1])].append(e.status)
    return out


def part_requests(sim: Simulator, ids: list[int]) -> int:
    """Files and versions requests the simulator saw for these ids since the log was cleared."""
    prefixes = tuple(f"/v2/articles/{aid}/" for aid in ids)
    return sum(1 for e in sim.log.entries
               if e.path.startswith(prefixes) and ("/files" in e.path or "/versions" in e.path))


def overlapped(sim: Simulator, members: list[int], n: int) -> list[int]:
    """`n` members, those with a capped file list (paged /files) first, made modified ten
    minutes ago: a nightly run's overlap window lists them again, unchanged since."""
    capped = [a for a in members if len(sim.corpus.files(a)) > 10]
    chosen = sorted((capped + [a for a in members if a not in capped])[:n])
    recent = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    for aid in chosen:
        sim.corpus.modify(aid, recent)
    return chosen


async def full_then_nightly(sim: Simulator, tmp_path: Path, cfg: Config, unchanged: list[int],
                            changed: list[int]) -> tuple[RunResult, RunResult, int]:
    """A full run, then `changed` modified now, then a nightly run with a clean log. Returns
    both runs and the files/versions requests the full run spent on `unchanged`."""
    sim.log.clear()
    first = await Harvest(cfg).run()
    assert first.manifest["kind"] == "full"
    parts_in_full = part_requests(sim, unchanged)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for aid in changed:
        sim.corpus.modify(aid, now)
    sim.log.clear()
    second = await Harvest(cfg).run()
    assert second.manifest["kind"] == "incremental"
    return first, second, parts_in_full


def known(cfg: Config) -> dict[int, tuple[Any, ...]]:
    with sqlite3.connect(cfg.state_path() / "catalog.sqlite") as db:
        return {row[0]: row[1:] for row in db.execute(
            "SELECT article_id, published, etag, record_url FROM known")}


async def test_overlap_relisted_unchanged_records_answer_304_and_keep_their_rows(
    sim: Simulator, tmp_path: Path
) -> None:
    members = members_of(sim)
    unchanged = overlapped(sim, members, 6)
    changed = [a for a in members if a not in unchanged][:2]
    cfg = nightly_config(tmp_path, sim)
    first, second, parts_in_full = await full_then_nightly(sim, tmp_path, cfg, unchanged,
                                                           changed)
    catalog_after_full = known(cfg)

    # the overlap re-listed the unchanged records; each record GET answered 304 ...
    assert record_statuses(sim, unchanged) == {aid: [304] for aid in unchanged}
    assert record_statuses(sim, changed) == {aid: [200] for aid in changed}
    # ... and their files and versions were not asked for (the full run asked for them)
    assert parts_in_full >= 2 * len(unchanged) and part_requests(sim, unchanged) == 0
    assert part_requests(sim, changed) >= len(changed)
    fetch = second.manifest["fetch"]
    assert fetch["not_modified"] == len(unchanged)
    assert fetch["requests"]["record"] == len(unchanged) + len(changed)
    assert second.manifest["budget"]["refreshed"]["records"] == len(changed)
    assert first.manifest["fetch"]["not_modified"] == 0

    # the incremental snapshot holds the changed records whole, the unchanged ones' stats
    assert table_ids(second.snapshot) == changed
    assert set(unchanged) <= set(table_ids(second.snapshot, "stats"))
    # the catalog keeps what it knew of them: published mark, validators
    catalog = known(cfg)
    assert {a: catalog[a] for a in unchanged} == {a: catalog_after_full[a] for a in unchanged}
    assert all(catalog[a][1] for a in unchanged)  # an ETag kept for each

    # the warehouse still holds their records and versions from the full snapshot, with
    # tonight's stats
    db = tmp_path / "wh.duckdb"
    warehouse.load(cfg.output.dir, cfg.name, db)
    full_articles = pq.read_table(first.snapshot / "articles").to_pylist()
    hashes = {r["article_id"]: r["content_hash"] for r in full_articles}
    sid_full = first.manifest["snapshot_id"]
    sid_night = second.manifest["snapshot_id"]
    ids = ", ".join(map(str, unchanged))
    with duckdb.connect(str(db), read_only=True) as con:
        current = con.execute(f"SELECT article_id, content_hash, snapshot_id, withdrawn FROM "
                              f"articles_current WHERE article_id IN ({ids}) "
                              "ORDER BY article_id").fetchall()
        versions = con.execute(f"SELECT DISTINCT snapshot_id FROM versions_current WHERE "
                               f"article_id IN ({ids})").fetchall()
        stats = con.execute(f"SELECT DISTINCT snapshot_id FROM stats_current WHERE "
                            f"article_id IN ({ids})").fetchall()
    assert current == [(a, hashes[a], sid_full, False) for a in unchanged]
    assert versions == [(sid_full,)]
    assert stats == [(sid_night,)]


async def test_if_modified_since_when_no_etag_was_kept(sim: Simulator, tmp_path: Path) -> None:
    """A record served without an ETag is asked for with its Last-Modified instead."""
    members = members_of(sim)
    unchanged = overlapped(sim, members, 3)
    cfg = nightly_config(tmp_path, sim)
    sim.log.clear()
    await Harvest(cfg).run()
    with sqlite3.connect(cfg.state_path() / "catalog.sqlite") as db:
        assert db.execute("UPDATE known SET etag=NULL WHERE last_modified IS NOT NULL"
                          ).rowcount == len(members)
    sim.log.clear()
    second = await Harvest(cfg).run()
    assert record_statuses(sim, unchanged) == {aid: [304] for aid in unchanged}
    assert second.manifest["fetch"]["not_modified"] == len(unchanged)


async def test_conditional_off_and_full_runs_fetch_every_record_whole(
    sim: Simulator, tmp_path: Path
) -> None:
    members = members_of(sim)
    unchanged = overlapped(sim, members, 4)
    cfg = nightly_config(tmp_path, sim, conditional=False)
    _, second, _ = await full_then_nightly(sim, tmp_path, cfg, unchanged, [])
    assert record_statuses(sim, unchanged) == {aid: [200] for aid in unchanged}
    assert part_requests(sim, unchanged) >= 2 * len(unchanged)
    assert second.manifest["fetch"]["not_modified"] == 0
    assert table_ids(second.snapshot) == unchanged

    # a full run detects deletions and publishes every record: it never asks conditionally,
    # even with validators in the catalog
    cfg = nightly_config(tmp_path / "on", sim)
    await Harvest(cfg).run()
    sim.log.clear()
    forced = await Harvest(cfg, full=True).run()
    assert forced.manifest["kind"] == "full"
    assert {e.status for e in sim.log.entries if e.route == RECORD} == {200}
    assert table_ids(forced.snapshot) == members


async def test_an_ids_source_is_fetched_every_night_and_unchanged_ids_cost_one_304(
    sim: Simulator, tmp_path: Path
) -> None:
    """Sources that cannot filter by date are listed whole each night: conditional requests
    save the most there."""
    ids = sorted(sim.corpus.ids)[:12]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}],
                       incremental={"stats": "none"})
    await Harvest(cfg).run()
    sim.corpus.modify(ids[0], dt.datetime.now(dt.UTC).replace(microsecond=0))
    sim.log.clear()
    second = await Harvest(cfg).run()
    assert second.manifest["kind"] == "incremental"
    statuses = record_statuses(sim, ids)
    assert statuses == {aid: [200] if aid == ids[0] else [304] for aid in ids}
    assert second.manifest["fetch"]["not_modified"] == len(ids) - 1
    assert table_ids(second.snapshot) == [ids[0]]
    assert second.manifest["status"] == "complete"


FROZEN = "Wed, 01 Jan 2020 00:00:00 GMT"


def lying_validators(mode: str, target: list[int]) -> Any:
    """Record validators that lie: `etag`, an ETag that never changes; `last-modified`, no
    ETag and a Last-Modified frozen in 2020 (any If-Modified-Since answers 304); `unasked`,
    a 304 for the ids in `target` to a request that asked nothing."""
    @web.middleware
    async def lie(request: web.Request, handler: Any) -> web.StreamResponse:
        head, _, tail = request.path.rpartition("/")
        if head != "/v2/articles" or not tail.isdigit():
            return await handler(request)
        stuck = f'"stuck-{tail}"'
        if mode == "etag" and request.headers.get("If-None-Match") == stuck:
            return web.Response(status=304, headers={"ETag": stuck})
        if mode == "last-modified" and request.headers.get("If-Modified-Since"):
            return web.Response(status=304)
        if mode == "unasked" and int(tail) in target:
            return web.Response(status=304)
        response = await handler(request)
        if mode == "etag":
            response.headers["ETag"] = stuck
        elif mode == "last-modified":
            response.headers.pop("ETag", None)
            response.headers["Last-Modified"] = FROZEN
        return response
    return lie


def before_2020(sim: Simulator, ids: list[int], n: int) -> list[int]:
    """`n` of `ids` last modified before the frozen Last-Modified: it looks current for them."""
    frozen = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    return [a for a in ids if sim.corpus.modified(a) < frozen][:n]


def modified_dates(snapshot: Path, ids: list[int]) -> dict[int, str]:
    rows = pq.read_table(snapshot / "articles").to_pylist()
    return {r["article_id"]: r["modified_date"].strftime("%Y-%m-%dT%H:%M:%SZ")
            for r in rows if r["article_id"] in ids}


@pytest.mark.parametrize("mode", ["etag", "last-modified"])
async def test_a_304_never_keeps_a_record_the_listing_shows_edited(
    tmp_path: Path, mode: str
) -> None:
    """A server whose ETag never changes, or whose Last-Modified is frozen, answers 304 for
    edited records: the listing's modified_date is later than the record held, so each is
    asked for again whole (counted); an overlap re-listing of a record held current still
    costs one 304."""
    sim = Simulator(SimSettings(items=400, seed=11))
    sim.api_app.middlewares.append(lying_validators(mode, []))
    async with sim:
        members = members_of(sim)
        unchanged = overlapped(sim, members, 3)
        changed = before_2020(sim, [a for a in members if a not in unchanged], 3)
        assert len(changed) == 3
        cfg = nightly_config(tmp_path, sim)
        _, second, _ = await full_then_nightly(sim, tmp_path, cfg, unchanged, changed)
        served = {a: sim.corpus.modified(a).strftime("%Y-%m-%dT%H:%M:%SZ") for a in changed}
    assert modified_dates(second.snapshot, changed) == served
    fetch = second.manifest["fetch"]
    assert fetch["not_modified_refused"] == len(changed)
    if mode == "etag":  # held with the Last-Modified the listing shows: the 304 is kept
        assert table_ids(second.snapshot) == changed
        assert fetch["not_modified"] == len(unchanged)
    else:  # a Last-Modified older than its record's modified_date is no validator: asked whole
        assert table_ids(second.snapshot) == sorted(changed + unchanged)
        assert fetch["not_modified"] == 0
        with sqlite3.connect(cfg.state_path() / "catalog.sqlite") as db:
            kept = dict(db.execute("SELECT article_id, last_modified FROM known"))
        assert {kept[a] for a in unchanged} == {None}


async def test_the_listed_date_and_lost_dates_decide_which_304s_the_fetcher_keeps(
    tmp_path: Path,
) -> None:
    """With the stuck ETag, the fetcher keeps a 304 only for an id whose listed date is not
    after the Last-Modified it holds; a listing whose dates are lost (a resumed run) keeps
    none of its ids' 304s."""
    sim = Simulator(SimSettings(items=400, seed=11))
    sim.api_app.middlewares.append(lying_validators("etag", []))
    async with sim:
        members = members_of(sim)
        cfg = nightly_config(tmp_path, sim)
        await Harvest(cfg).run()
        edited, same, other = members[:2], members[2], members[3]
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        for aid in edited:
            sim.corpus.modify(aid, now)
        listing = SourceReport("g", "group")
        listing.modified = {edited[0]: int(now.timestamp()), edited[1]: 1 << 62,
                            same: int(sim.corpus.modified(same).timestamp())}
        lost = SourceReport("lost", "group")
        lost.modified = None
        async with fast_client() as client:
            fetcher = ItemFetcher(cfg, client, catalog=cfg.state_path() / "catalog.sqlite")
            fetcher.note_listing([listing, lost])
            got = {aid: await fetcher.fetch(aid, 1) for aid in [*edited, same]}
            unproven = await fetcher.fetch(other, 0b10)
    for aid in edited:
        assert not got[aid].not_modified
        assert orjson.loads(got[aid].body)["modified_date"] == now.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert got[same].not_modified and not got[same].body
    assert not unproven.not_modified and orjson.loads(unproven.body)["id"] == other
    assert fetcher.report()["not_modified_refused"] == 3
    assert fetcher.report()["requests"]["record"] == 4 + 3


async def test_a_304_to_a_request_that_asked_nothing_fails_the_item_saying_so(
    tmp_path: Path,
) -> None:
    sim = Simulator(SimSettings(items=400, seed=11))
    target: list[int] = []
    sim.api_app.middlewares.append(lying_validators("unasked", target))
    async with sim:
        members = members_of(sim)
        target.append(members[4])
        result = await Harvest(nightly_config(tmp_path, sim)).run()
    [error] = [orjson.loads(line) for line in
               (result.snapshot / "errors.ndjson").read_bytes().splitlines()]
    assert (error["id"], error["status"], error["reason"]) == (members[4], 304, "bad-record")
    assert error["message"].endswith(
        f"/articles/{members[4]} -> 304 Not Modified to a request that was not conditional")
    assert members[4] not in table_ids(result.snapshot)
