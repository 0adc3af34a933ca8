"""End-to-end harvests against the simulator over loopback, read back with pyarrow and DuckDB."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from harvester.catalog import Catalog
from harvester.errors import Blocked, OutputError
from harvester.journal import Journal
from harvester.pipeline import Harvest, PublishGuarded
from harvester.schema import SCHEMAS
from harvester.simulator import Simulator, SimulatorThread
from harvester.simulator.settings import SimSettings
from harvester.sinks import SnapshotWriter
from harvester.store import list_snapshots
from tests.conftest import write_config


def biggest_group(sim: Simulator) -> tuple[int, list[int]]:
    counts = collections.Counter(sim.corpus.group_of(i) for i in sim.corpus.ids)
    group = max(counts, key=lambda g: (counts[g], g))
    return group, sorted(i for i in sim.corpus.ids if sim.corpus.group_of(i) == group)


def read_errors(snapshot: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in (snapshot / "errors.ndjson").read_bytes().splitlines()]


def article_ids(snapshot: Path) -> list[int]:
    return pq.read_table(snapshot / "articles").column("article_id").to_pylist()


async def served(sim: Simulator, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(sim.api_url + path) as resp:
        return orjson.loads(await resp.read())


async def test_group_harvest_every_id_once_lossless_ndjson_typed_parquet(
    sim: Simulator, tmp_path: Path
) -> None:
    group, expected = biggest_group(sim)
    cfg = write_config(tmp_path, sim, [{"kind": "group", "group": group}])
    result = await Harvest(cfg).run()
    snap = result.snapshot
    assert snap is not None and snap.name.startswith("snapshot=")
    assert (snap.parent / "LATEST").read_text().strip() == snap.name

    ids = article_ids(snap)
    assert ids == expected  # every id of the query, once, in id order

    lines = (snap / "articles.ndjson").read_bytes().splitlines()
    assert len(lines) == len(expected)
    for line in lines[:25]:
        record = orjson.loads(line)
        assert record == await served(sim, f"/articles/{record['id']}")

    for table, schema in SCHEMAS.items():
        got = pq.read_schema(snap / table / "part-00000.parquet")
        assert got.remove_metadata().equals(schema.remove_metadata()), table

    con = duckdb.connect()
    n, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT article_id) "
        f"FROM read_parquet('{snap}/articles/*.parquet')"
    ).fetchone()
    assert n == distinct == len(expected)
    stats = con.execute(
        f"SELECT counter, count(*) FROM read_parquet('{snap}/stats/*.parquet') "
        f"GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert stats == [("downloads", n), ("shares", n), ("views", n)]

    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    assert manifest["status"] == "complete"
    assert manifest["sources"][0]["ids"] == len(expected)
    assert manifest["ids"] == {"total": n, "fetched": n, "failed": 0, "gone": 0, "incomplete": 0,
                               "unlisted": 0}
    assert manifest["tables"]["articles"]["rows"] == n


async def test_stats_totals_match_the_stats_host(sim: Simulator, tmp_path: Path) -> None:
    ids = sorted(sim.corpus.ids)[:5]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    snap = (await Harvest(cfg).run()).snapshot
    assert snap is not None
    rows = pq.read_table(snap / "stats").to_pylist()
    async with aiohttp.ClientSession() as http:
        for row in rows:
            url = f"{sim.stats_url}/total/{row['counter']}/article/{row['article_id']}"
            async with http.get(url) as resp:
                assert row["total"] == (await resp.json())["totals"]


async def test_rows_carry_the_utc_time_they_were_fetched_at(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # the machine's zone must not leak in
    time.tzset()
    try:
        ids = sorted(sim.corpus.ids)[:4]
        cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        snap = (await Harvest(cfg).run()).snapshot
        after = dt.datetime.now(dt.UTC)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert snap is not None
    for table in ("articles", "stats"):
        stamps = pq.read_table(snap / table).column("fetched_at").to_pylist()
        assert stamps and all(before <= t <= after for t in stamps), (table, stamps)


async def test_sources_are_deduplicated_and_keep_provenance(sim: Simulator, tmp_path: Path) -> None:
    group, members = biggest_group(sim)
    outsider = next(i for i in sim.corpus.ids if sim.corpus.group_of(i) != group)
    cfg = write_config(tmp_path, sim, [
        {"kind": "group", "group": group, "name": "g"},
        {"kind": "ids", "ids": [members[0], outsider], "name": "picked"},
    ])
    snap = (await Harvest(cfg).run()).snapshot
    assert snap is not None
    table = pq.read_table(snap / "articles", columns=["article_id", "sources"]).to_pylist()
    prov = {r["article_id"]: r["sources"] for r in table}
    assert len(prov) == len(members) + 1
    assert prov[members[0]] == ["g", "picked"]
    assert prov[outsider] == ["picked"]
    assert prov[members[-1]] == ["g"]


async def test_gone_and_failed_ids_land_in_errors(sim: Simulator, tmp_path: Path) -> None:
    ok = sorted(sim.corpus.ids)[:3]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": [*ok, 999]}])
    result = await Harvest(cfg).run()
    assert result.snapshot is not None and result.errors == 0
    errors = read_errors(result.snapshot)
    assert [(e["id"], e["reason"], e["status"]) for e in errors] == [(999, "not-found", 404)]
    assert errors[0]["source"] == ["ids-1"]
    assert article_ids(result.snapshot) == ok
    assert result.manifest["ids"]["gone"] == 1
    assert result.manifest["errors_by_reason"] == {}  # gone is not a failure

    sim.update(fault_rate=1.0, fault_kinds=("503",))
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ok}], name="failing",
                       http={"rate": {"requests": 10_000, "per": 1},
                             "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.01}})
    # nothing fetched: the publish guard holds it back; --accept-drop publishes the failures
    with pytest.raises(PublishGuarded, match="fetched 0 records of the 3 ids"):
        await Harvest(cfg).run()
    result = await Harvest(cfg, accept_drop=True).run()
    assert result.errors == 3
    assert result.manifest["status"] == "partial"
    errors = read_errors(result.snapshot)
    assert sorted(e["id"] for e in errors) == ok
    assert all(e["attempts"] == 2 for e in errors)
    assert all(e["status"] == 503 for e in errors)
    assert result.manifest["errors_by_reason"] == {"503": 3}


@pytest.mark.timing
@pytest.mark.parametrize("faults", [0.0, 0.15])
async def test_rate_guarantee_holds_with_and_without_faults(
    tmp_path: Path, faults: float
) -> None:
    # The simulator runs on its own loop in a thread: a busy harvest loop cannot delay its
    # arrival stamps, so the count below is the server's view, not an artefact of sharing.
    with SimulatorThread(SimSettings(items=400, seed=11)) as sim:
        await _rate_run(sim, tmp_path, faults)


async def _rate_run(sim: SimulatorThread, tmp_path: Path, faults: float) -> None:
    sim.update(fault_rate=faults, fault_kinds=("500", "503", "reset", "truncate", "stall"),
               stall_seconds=0.3)
    ids = sorted(sim.corpus.ids)[:25]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], http={
        "rate": {"requests": 60, "per": 2.0},
        "concurrency": 6,
        "timeout": {"read": 0.15},
        "retry": {"attempts": 8, "backoff_base": 0.01, "backoff_max": 0.05},
    })
    result = await Harvest(cfg).run()
    assert result.errors == 0
    assert article_ids(result.snapshot) == ids
    assert sim.log.count() > 60  # the run spans more than one window
    assert sim.log.peak_in_window(None, 2.0) <= 60  # api and stats share one budget by default
    if faults:
        assert sum(1 for e in sim.log.entries if e.fault) > 0


async def test_retry_after_is_honoured(sim: Simulator, tmp_path: Path) -> None:
    sim.update(fault_rate=0.2, fault_kinds=("429",), fault_retry_after=1.0)
    ids = sorted(sim.corpus.ids)[:6]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    result = await Harvest(cfg).run()
    assert result.errors == 0
    assert sum(1 for e in sim.log.entries if e.status == 429) > 0
    assert sim.log.retry_after_violations("api") == 0
    assert sim.log.retry_after_violations("stats") == 0


async def test_blocked_client_stops_and_keeps_the_journal(sim: Simulator, tmp_path: Path) -> None:
    sim.update(rate_limit=(2, 1.0), abuse_after=1)
    ids = sorted(sim.corpus.ids)[:20]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    with pytest.raises(Blocked):
        await Harvest(cfg).run()
    sent = sim.log.count()
    root = tmp_path / "out" / "t"
    assert (root / ".state" / "journal.sqlite").exists()
    assert list_snapshots(tmp_path / "out", "t") == []
    assert not (root / "LATEST").exists()
    assert sent < 10  # the circuit opened: no hammering after the block


async def test_a_run_cancelled_while_it_writes_stops_at_once_and_publishes_nothing(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT/SIGTERM cancel the run's task; the snapshot is written on the journal's thread,
    which a cancelled await does not stop: it must give up by itself, not finish and publish."""
    monkeypatch.setattr("harvester.pipeline.CHUNK_RECORDS", 10)  # many chunks: a long write
    ids = sorted(sim.corpus.ids)[:200]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    loop = asyncio.get_running_loop()
    writing = asyncio.Event()
    added: list[int] = []
    original = SnapshotWriter.add_rendered

    def slow_add(self: SnapshotWriter, chunk: Any) -> None:  # on the journal thread
        added.append(chunk.articles)
        loop.call_soon_threadsafe(writing.set)
        time.sleep(0.05)  # 20 chunks: a write of a second or more
        original(self, chunk)

    monkeypatch.setattr(SnapshotWriter, "add_rendered", slow_add)
    run = asyncio.create_task(Harvest(cfg).run())
    await writing.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert len(added) <= 2  # it stopped at the next chunk, not after all twenty
    root = tmp_path / "out" / "t"
    assert list_snapshots(tmp_path / "out", "t") == [] and not (root / "LATEST").exists()
    assert not (root / ".staging").exists()  # the half-written snapshot is gone, and its folder
    assert (root / ".state" / "journal.sqlite").exists()

    monkeypatch.setattr(SnapshotWriter, "add_rendered", original)
    sent = sim.log.count()
    result = await Harvest(cfg).run()  # the same command again: the write only
    assert sim.log.count() == sent
    assert article_ids(result.snapshot) == ids


async def test_a_full_disk_under_the_journal_stops_the_run_with_one_error_and_loses_nothing(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = sorted(sim.corpus.ids)[:300]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    connect = Journal._connect

    def small_disk(self: Journal) -> None:  # SQLite's own limit: SQLITE_FULL, as on a full disk
        connect(self)
        self.db.execute("PRAGMA max_page_count=60")

    monkeypatch.setattr(Journal, "_connect", small_disk)
    with pytest.raises(OutputError, match=r"/t/\.state: cannot write the run's state .*: "
                       "database or disk is full; what was fetched is kept"):
        await Harvest(cfg).run()
    assert list_snapshots(tmp_path / "out", "t") == []
    monkeypatch.setattr(Journal, "_connect", connect)  # room again
    sent = sim.log.count()
    result = await Harvest(cfg).run()
    assert article_ids(result.snapshot) == ids
    assert sim.log.count() - sent < 4 * len(ids)  # what was stored was not fetched again


async def test_a_catalog_that_cannot_record_the_run_keeps_the_journal_to_finish_it(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = sorted(sim.corpus.ids)[:20]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    add_run = Catalog.add_run

    def full(self: Catalog, *args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Catalog, "add_run", full)
    with pytest.raises(OutputError, match=r"catalog\.sqlite: cannot record the run: database or "
                       r"disk is full \(snapshot \S+ is published; the next run finishes"):
        await Harvest(cfg).run()
    published = list_snapshots(tmp_path / "out", "t")
    assert len(published) == 1
    monkeypatch.setattr(Catalog, "add_run", add_run)
    sent = sim.log.count()
    result = await Harvest(cfg).run()  # finishes recording, fetches nothing
    assert result.snapshot == published[0] and sim.log.count() == sent
    catalog = Catalog(tmp_path / "out" / "t" / ".state" / "catalog.sqlite")
    try:
        assert catalog.last_run() is not None
    finally:
        catalog.close()
