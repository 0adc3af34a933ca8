"""Nightly operation: incremental runs, crash-safe resume, one run at a time, retention."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import email.utils
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from aiohttp import web

from harvester import budget as bud
from harvester import cli, warehouse
from harvester.catalog import Catalog
from harvester.client import Client
from harvester.errors import GiveUp, OutputError
from harvester.pipeline import Harvest
from harvester.render import render
from harvester.schema import SCHEMAS
from harvester.simulator import Simulator, SimulatorThread
from harvester.simulator.settings import SimSettings
from harvester.store import list_snapshots
from tests.conftest import serving, write_config

ROOT = Path(__file__).resolve().parent.parent


def biggest_group(corpus: Any) -> int:
    counts = collections.Counter(corpus.group_of(i) for i in corpus.ids)
    counts.pop(0, None)
    return max(counts, key=lambda g: (counts[g], g))


def table_ids(snapshot: Path, table: str = "articles") -> list[int]:
    return pq.read_table(snapshot / table).column("article_id").to_pylist()


async def test_incremental_run_fetches_exactly_the_changed_records(
    sim: Simulator, tmp_path: Path
) -> None:
    group = biggest_group(sim.corpus)
    members = sorted(i for i in sim.corpus.ids if sim.corpus.group_of(i) == group)
    cfg = write_config(tmp_path, sim, [{"kind": "group", "group": group}],
                       incremental={"overlap_hours": 1, "stats": "all"})
    first = await Harvest(cfg).run()
    assert first.manifest["kind"] == "full"
    assert table_ids(first.snapshot) == members

    changed = members[3:6]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for aid in changed:
        sim.corpus.modify(aid, now)
    sim.log.clear()
    second = await Harvest(cfg).run()
    m = second.manifest
    assert m["kind"] == "incremental"
    assert table_ids(second.snapshot) == changed  # exactly the changed records
    assert m["covers"]["stats_refreshed"] == len(members) - len(changed)
    assert sorted(set(table_ids(second.snapshot, "stats"))) == members  # stats for every item
    bound = m["covers"]["modified_since"][cfg.sources[0].name]
    assert bound < first.manifest["started_at"]  # the overlap reaches back before the mark
    detail_requests = sim.log.count(host="api", route="/v2/articles/{article_id}")
    assert detail_requests == len(changed)

    forced = await Harvest(cfg, full=True).run()
    assert forced.manifest["kind"] == "full"
    assert table_ids(forced.snapshot) == members


class FailOne(Client):
    """The real client, except that one URL keeps failing as if retries ran out."""

    fail_suffix = ""

    async def get(self, url: str, **kw: Any) -> Any:
        if self.fail_suffix and url.endswith(self.fail_suffix):
            raise GiveUp(f"GET {url} -> 503 (test)", url=url, status=503, reason="503")
        return await super().get(url, **kw)


async def test_a_run_with_failures_does_not_advance_the_marks(
    sim: Simulator, tmp_path: Path
) -> None:
    group = biggest_group(sim.corpus)
    members = sorted(i for i in sim.corpus.ids if sim.corpus.group_of(i) == group)
    cfg = write_config(tmp_path, sim, [{"kind": "group", "group": group}],
                       incremental={"overlap_hours": 0, "stats": "none"}, max_errors=100)
    first = await Harvest(cfg).run()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    sim.corpus.modify(members[0], now)

    FailOne.fail_suffix = f"/articles/{members[0]}"
    try:
        failing = await Harvest(cfg, client_factory=FailOne).run()
    finally:
        FailOne.fail_suffix = ""
    assert failing.errors == 1 and failing.manifest["kind"] == "incremental"
    mark = failing.manifest["covers"]["modified_since"]

    again = await Harvest(cfg).run()  # asks from the same mark, so the item is not lost
    assert again.manifest["covers"]["modified_since"] == mark
    assert table_ids(again.snapshot) == [members[0]]
    assert first.manifest["kind"] == "full"


async def test_a_record_left_out_of_the_snapshot_does_not_advance_the_marks(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record the tables cannot hold (a journal row from an older release) makes the
    snapshot partial: like a failed id, it keeps the marks, so the next night asks again."""
    group = biggest_group(sim.corpus)
    members = sorted(i for i in sim.corpus.ids if sim.corpus.group_of(i) == group)
    cfg = write_config(tmp_path, sim, [{"kind": "group", "group": group}],
                       incremental={"overlap_hours": 0, "stats": "none"})
    await Harvest(cfg).run()
    sim.corpus.modify(members[0], dt.datetime.now(dt.UTC).replace(microsecond=0))

    def older_row(spec: Any, rows: list[Any]) -> Any:
        return render(spec, [r._replace(body=b'{"id": true}') if r.article_id == members[0]
                             else r for r in rows])

    monkeypatch.setattr("harvester.pipeline.render", older_row)
    partial = await Harvest(cfg).run()
    monkeypatch.undo()
    assert partial.manifest["status"] == "partial" and partial.errors == 1
    again = await Harvest(cfg).run()  # asks from the same mark, so the item is not lost
    assert again.manifest["covers"]["modified_since"] == \
        partial.manifest["covers"]["modified_since"]
    assert members[0] in table_ids(again.snapshot)


def test_retention_keeps_the_newest_and_never_latest(tmp_path: Path) -> None:
    with SimulatorThread(SimSettings(items=60, seed=3)) as sim:
        ids = sorted(sim.corpus.ids)[:3]
        cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}],
                           output={"dir": str(tmp_path / "out"), "keep": 2})
        for _ in range(4):
            assert cli.main(["run", cfg.path, "--quiet"]) == 0
            time.sleep(1.05)  # snapshot ids are per second
    kept = list_snapshots(tmp_path / "out", "t")
    assert len(kept) == 2
    latest = (tmp_path / "out" / "t" / "LATEST").read_text().strip()
    assert kept[-1].name == latest


# ---------------------------------------------------------------- subprocess runs


@pytest.fixture
def threaded_sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimSettings(items=400, seed=5)) as s:
        yield s


class Ran:
    def __init__(self, returncode: int, stderr: bytes) -> None:
        self.returncode, self.stderr = returncode, stderr


def start_cli(config_path: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "harvester", "run", config_path, "--quiet", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def run_cli(config_path: str, *extra: str, env: dict[str, str] | None = None) -> Ran:
    proc = subprocess.run(
        [sys.executable, "-m", "harvester", "run", config_path, "--quiet", *extra],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, timeout=120,
        check=False,
    )
    return Ran(proc.returncode, proc.stderr)


def comparable(snapshot: Path) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows without the columns that differ between two runs by design."""
    out = {}
    for table in SCHEMAS:
        t = pq.read_table(snapshot / table)
        keep = [c for c in t.column_names if c not in ("snapshot_id", "fetched_at")]
        out[table] = t.select(keep).to_pylist()
    return out


def journal_count(state: Path, table: str) -> int:
    """Rows in a table of a running harvest's journal (0 while it is not there yet)."""
    path = state / "journal.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05)
        try:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def kill_when(config_path: str, ready: Callable[[], bool]) -> int:
    """Start a run and SIGKILL it, from outside, as soon as `ready()` holds; its exit code."""
    proc = start_cli(config_path)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return proc.returncode


@pytest.mark.parametrize("point", ["listing", "fetch", "write"])
def test_killed_run_resumes_to_the_same_snapshot(
    threaded_sim: SimulatorThread, tmp_path: Path, point: str
) -> None:
    sim = threaded_sim
    group = biggest_group(sim.corpus)
    sources = [{"kind": "group", "group": group},
               {"kind": "ids", "ids": sorted(sim.corpus.ids)[:5]}]
    http = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 4}

    clean = write_config(tmp_path / "clean", sim, sources, http=http)
    assert run_cli(clean.path).returncode == 0
    reference = list_snapshots(tmp_path / "clean" / "out", "t")[-1]

    cfg = write_config(tmp_path / "crash", sim, sources, http=http)
    out = tmp_path / "crash" / "out"
    state = out / "t" / ".state"
    ready = {
        "listing": lambda: journal_count(state, "ids") > 0,
        "fetch": lambda: journal_count(state, "records") >= 20,
        "write": lambda: any((out / "t" / ".staging").glob("*/articles.ndjson")),
    }[point]
    sim.log.clear()
    sim.update(latency_ms=20)  # the kill lands inside the phase, not after the run
    try:
        killed = kill_when(cfg.path, ready)
    finally:
        sim.update(latency_ms=0)
    assert killed == -signal.SIGKILL
    assert list_snapshots(out, "t") == []
    assert not (out / "t" / "LATEST").exists()
    assert not list((out / "t").glob("snapshot=*"))  # nothing that looks complete

    resumed = run_cli(cfg.path)
    assert resumed.returncode == 0, resumed.stderr.decode()
    snap = list_snapshots(out, "t")[-1]
    assert comparable(snap) == comparable(reference)

    fetched = collections.Counter(
        e.path for e in sim.log.entries
        if e.route == "/v2/articles/{article_id}" and e.status == 200
    )
    refetched = sum(n - 1 for n in fetched.values())
    assert refetched <= 4 * 3  # bounded by concurrency (workers + queued results)
    assert not (out / "t" / ".staging").exists()  # the killed write's files went with it


def test_a_killed_writes_leftovers_go_even_when_the_journal_starts_over(
    threaded_sim: SimulatorThread, tmp_path: Path
) -> None:
    """The config changed after the kill: a new snapshot id, so no writer ever reopens the
    old staging directory; the next run removes it all the same."""
    sim = threaded_sim
    ids = sorted(sim.corpus.ids)
    out = tmp_path / "out"
    http = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 4}
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids[:30]}], http=http)
    sim.update(latency_ms=20)
    try:
        killed = kill_when(cfg.path, lambda: any((out / "t" / ".staging").glob(
            "*/articles.ndjson")))
    finally:
        sim.update(latency_ms=0)
    assert killed == -signal.SIGKILL
    [left] = [p for p in (out / "t" / ".staging").iterdir() if p.is_dir()]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids[:31]}], http=http)
    done = run_cli(cfg.path)
    assert done.returncode == 0, done.stderr.decode()
    assert not (out / "t" / ".staging").exists()
    [snapshot] = list_snapshots(out, "t")
    assert snapshot.name != f"snapshot={left.name}"
    assert len(pq.read_table(snapshot / "articles")) == 31


def test_killed_after_publishing_the_rerun_finishes_that_snapshot(
    threaded_sim: SimulatorThread, tmp_path: Path
) -> None:
    """Killed between publishing and forgetting the journal: the next run must not try to
    write the published snapshot again (it once failed with "it already exists" forever).
    That state is made from outside: the journal and catalog of a run killed once every
    record was in are put back after the resumed run published."""
    sim = threaded_sim
    ids = sorted(sim.corpus.ids)[:40]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}],
                       http={"rate": {"requests": 10_000, "per": 1}, "concurrency": 4})
    out = tmp_path / "out"
    state = out / "t" / ".state"
    killed = kill_when(cfg.path, lambda: journal_count(state, "records") >= 40)
    assert killed == -signal.SIGKILL
    kept = tmp_path / "kept"
    shutil.copytree(state, kept, ignore=shutil.ignore_patterns("lock"))
    assert run_cli(cfg.path).returncode == 0
    [snapshot] = list_snapshots(out, "t")
    for f in kept.iterdir():
        shutil.copy2(f, state / f.name)
    assert (state / "journal.sqlite").exists()
    sim.log.clear()

    resumed = run_cli(cfg.path, "--report", str(tmp_path / "report.json"))
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert list_snapshots(out, "t") == [snapshot]  # the same one, not written again
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["outcome"] == "ok" and report["manifest"]["ids"]["fetched"] == 40
    assert not any(e.route.startswith("/v2/articles") for e in sim.log.entries)
    assert not (state / "journal.sqlite").exists()
    catalog = Catalog(state / "catalog.sqlite")
    try:
        assert catalog.last_run()["snapshot_id"] == snapshot.name.removeprefix("snapshot=")
        assert catalog.known_count() == 40
    finally:
        catalog.close()
    again = run_cli(cfg.path)  # and the harvest goes on as usual
    assert again.returncode == 0, again.stderr.decode()
    assert len(list_snapshots(out, "t")) == 2


def test_two_runs_of_one_harvest_one_waits_out_with_the_lock_code(
    threaded_sim: SimulatorThread, tmp_path: Path
) -> None:
    sim = threaded_sim
    ids = sorted(sim.corpus.ids)[:30]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}],
                       http={"rate": {"requests": 20, "per": 1}, "concurrency": 2})
    first = start_cli(cfg.path)
    lock = tmp_path / "out" / "t" / ".state" / "lock"
    deadline = time.monotonic() + 20
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_cli(cfg.path, "--report", str(tmp_path / "report.json"))
    assert second.returncode == cli.LOCKED
    assert b"another run of this harvest is in progress" in second.stderr
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["exit_code"] == cli.LOCKED and report["outcome"] == "locked"
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == cli.INTERRUPTED, err.decode()
    assert b"run the same command again to resume" in err
    resumed = run_cli(cfg.path, "--report", str(tmp_path / "report.json"))
    assert resumed.returncode == 0, resumed.stderr.decode()
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["outcome"] == "ok" and report["manifest"]["ids"]["fetched"] == 30
    assert report["manifest"]["runs"] == 2


def test_config_written_to_disk_for_cli(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "sources": [{"kind": "ids", "ids": [1]}]}))
    assert cli.main(["validate", str(path)]) == 0


@contextlib.asynccontextmanager
async def _listing_without(sim: Simulator, hidden: set[int]) -> Any:
    """The simulator behind a loopback proxy whose GET /articles pages leave out `hidden`
    (as a page that shifted under a deletion does); records themselves are served as they are."""
    origin, path = re.match(r"(https?://[^/]+)(.*)", sim.api_url).groups()  # type: ignore[union-attr]
    async with aiohttp.ClientSession(auto_decompress=True) as session:
        async def proxy(request: web.Request) -> web.Response:
            async with session.get(f"{origin}{request.path_qs}") as resp:
                body = await resp.read()
                if resp.status == 200 and request.path == f"{path}/articles":
                    body = orjson.dumps([i for i in orjson.loads(body) if i["id"] not in hidden])
                headers = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-")}
                return web.Response(body=body, status=resp.status, headers=headers,
                                    content_type=resp.content_type)

        app = web.Application()
        app.router.add_get("/{tail:.*}", proxy)
        async with serving(app) as url:
            yield SimpleNamespace(api_url=f"{url}{path}", stats_url=sim.stats_url)


async def test_an_item_a_listing_skips_is_asked_for_by_id_never_taken_for_deleted(
        tmp_path: Path) -> None:
    """Only the record endpoint says an item is gone: one the listing skipped stays in the
    snapshot (and current in the warehouse); skipped two full runs running, it is withdrawn."""
    async with Simulator(SimSettings(items=60, seed=5)) as sim:
        ids = sorted(sim.corpus.ids)
        skipped, deleted = {ids[3], ids[40]}, ids[7]
        first = write_config(tmp_path, sim, [{"kind": "articles"}])
        assert (await Harvest(first).run()).manifest["status"] == "complete"
        sim.corpus.withdraw(deleted)
        async with _listing_without(sim, skipped) as shifted:
            cfg = write_config(tmp_path, shifted, [{"kind": "articles"}])
            second = await Harvest(cfg).run()
            third = await Harvest(cfg).run()
    assert second.manifest["status"] == "complete"
    assert second.manifest["ids"]["unlisted"] == 2
    assert second.manifest["ids"]["gone"] == 1
    assert set(table_ids(second.snapshot)) == set(ids) - {deleted}  # type: ignore[arg-type]
    assert third.manifest["ids"]["unlisted"] == 0  # unlisted twice: not known any more
    assert set(table_ids(third.snapshot)) == set(ids) - {deleted} - skipped  # type: ignore[arg-type]

    report = warehouse.load(tmp_path / "out", "t", tmp_path / "wh.duckdb")
    assert [r.changes for r in report.loaded][1:] == [
        {"added": 0, "changed": 0, "withdrawn": 0, "tombstone": 1},
        {"added": 0, "changed": 0, "withdrawn": 2, "tombstone": 0}]


@pytest.mark.parametrize(("key", "value"), [("ids", "x"), ("ids", {"fetched": True}),
                                            ("config", "x")])
async def test_a_last_manifest_of_another_shape_is_not_compared_with_and_never_crashes(
    sim: Simulator, tmp_path: Path, key: str, value: Any
) -> None:
    """The publish guard read the last full manifest's ids.fetched: `"ids": "x"` crashed
    every later run once it had fetched everything."""
    ids = sorted(sim.corpus.ids)[:12]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    first = await Harvest(cfg).run()
    manifest = orjson.loads((first.snapshot / "manifest.json").read_bytes())
    (first.snapshot / "manifest.json").write_bytes(orjson.dumps({**manifest, key: value}))
    second = await Harvest(cfg).run()
    assert second.published and second.manifest["status"] == "complete"
    assert table_ids(second.snapshot) == ids
    assert list_snapshots(tmp_path / "out", "t")[-1] == second.snapshot


@pytest.mark.parametrize(("key", "value"), [
    ("runs", "abc"), ("since", "{not json"), ("since", '{"a": "yesterday"}'),
    ("snapshot_id", "../.."), ("started_at", "x"), ("kind", "weird"),
    ("requests_earlier", "[1]")])
async def test_damaged_journal_meta_stops_the_run_naming_the_journal(
    sim: Simulator, tmp_path: Path, key: str, value: str
) -> None:
    """Each once crashed (exit 1) or published a wrong kind, started_at or folder."""
    ids = sorted(sim.corpus.ids)[:12]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    unfinished = await Harvest(cfg, budget=bud.Budget(requests=8)).run()
    assert not unfinished.published
    journal = tmp_path / "out" / "t" / ".state" / "journal.sqlite"
    with contextlib.closing(sqlite3.connect(journal)) as db, db:
        db.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, value))
    sim.log.clear()
    with pytest.raises(OutputError, match=rf"^{re.escape(str(journal))}: cannot resume the "
                       rf"interrupted run: its {key} is .* \(move journal\.sqlite\* aside"):
        await Harvest(cfg).run()
    assert sim.log.count() == 0 and list_snapshots(tmp_path / "out", "t") == []
    for f in journal.parent.glob("journal.sqlite*"):  # as the message says
        f.rename(f.with_name(f.name + ".damaged"))
    result = await Harvest(cfg).run()
    assert result.manifest["kind"] == "full" and table_ids(result.snapshot) == ids


async def test_a_catalog_locked_by_another_process_says_the_snapshot_is_published(
    sim: Simulator, tmp_path: Path
) -> None:
    """The run published, then could not record it: it says so, and the next run finishes
    recording that snapshot without fetching it again."""
    ids = sorted(sim.corpus.ids)[:12]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    catalog = tmp_path / "out" / "t" / ".state" / "catalog.sqlite"
    harvest = Harvest(cfg)
    run = asyncio.create_task(harvest.run())
    while harvest.progress.phase not in ("fetching", "writing"):  # the catalog is read first
        await asyncio.sleep(0)
    holder = sqlite3.connect(catalog, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OutputError, match=r"catalog\.sqlite: cannot open the harvest "
                           r"catalog: database is locked \(snapshot (\S+) is published; the "
                           "next run finishes recording it"):
            await run
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    [published] = list_snapshots(tmp_path / "out", "t")
    sim.log.clear()
    again = await Harvest(cfg).run()
    assert again.snapshot == published and sim.log.count() == 0
    with contextlib.closing(Catalog(catalog)) as recorded:
        assert recorded.last_run()["snapshot_id"] == published.name.removeprefix("snapshot=")
        assert recorded.known_count() == len(ids)


def test_known_and_queued_ids_keep_their_sources_when_the_config_reorders_them(
        tmp_path: Path) -> None:
    """Bits by config position: reordered sources move them, a removed source's ids are
    forgotten (a public id read as the account's own was asked at /account/ and tombstoned)."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    try:
        catalog.db.executemany(
            "INSERT INTO known(article_id, sources, last_snapshot) VALUES(?, ?, 's')",
            [(1, 0b001), (2, 0b010), (3, 0b100), (4, 0b011)])
        catalog.db.executemany("INSERT INTO queue VALUES(?, ?, 'deferred')",
                               [(1, 0b001), (2, 0b010), (5, 0b110)])
        catalog.adopt_sources(["ids", "institution", "account"])  # a catalog that never said
        catalog.adopt_sources(["ids", "institution", "account"])  # the same: nothing moves
        known = "SELECT article_id, sources FROM known ORDER BY 1"
        assert catalog.db.execute(known).fetchall() == [(1, 1), (2, 2), (3, 4), (4, 3)]
        catalog.adopt_sources(["account", "ids"])  # institution removed, the rest reordered
        assert catalog.db.execute(known).fetchall() == [(1, 0b10), (3, 0b01), (4, 0b10)]
        assert catalog.db.execute("SELECT article_id, sources FROM queue ORDER BY 1"
                                  ).fetchall() == [(1, 0b10), (5, 0b01)]
    finally:
        catalog.close()


def _dated(date: Callable[[], str]) -> Any:
    """A middleware that gives every answer the Date header `date()` makes."""
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Date"] = date()
        return response

    return middleware


async def test_the_marks_follow_the_apis_clock_when_it_runs_behind(tmp_path: Path) -> None:
    """Modified dates are the API's: an edit made just after a run started, on a server three
    hours behind, must still be after the next run's bound (overlap: 1 h)."""
    sim = Simulator(SimSettings(items=30, seed=3))
    sim.api_app.middlewares.append(
        _dated(lambda: email.utils.formatdate(time.time() - 3 * 3600, usegmt=True)))
    async with sim:
        cfg = write_config(tmp_path, sim, [{"kind": "articles"}],
                           incremental={"overlap_hours": 1})
        result = await Harvest(cfg).run()
        api, stats = sim.api_url.split("/v2")[0], sim.stats_url
    behind = result.manifest["http"]["clock_behind_s"]
    assert abs(behind[api] - 3 * 3600) <= 2
    assert abs(behind[stats]) <= 2  # the stats host's clock is right
    with contextlib.closing(Catalog(cfg.state_path() / "catalog.sqlite")) as catalog:
        [(_, mark)] = catalog.marks().values()
    started = dt.datetime.fromisoformat(result.manifest["started_at"])
    assert abs((started - dt.datetime.fromisoformat(mark)).total_seconds() - 3 * 3600) <= 2


async def test_a_date_header_no_clock_could_show_moves_no_mark(tmp_path: Path) -> None:
    """A Date from the year 100 is a broken header, not a slow clock: the marks stay the run's
    start, and the next night reads them back (a mark stamped '99-12-31...' stopped every run)."""
    sim = Simulator(SimSettings(items=30, seed=3))
    sim.api_app.middlewares.append(_dated(lambda: "Mon, 01 Jan 0100 00:00:00 GMT"))
    async with sim:
        cfg = write_config(tmp_path, sim, [{"kind": "articles"}],
                           incremental={"overlap_hours": 1})
        first = await Harvest(cfg).run()
        second = await Harvest(cfg).run()
        api = sim.api_url.split("/v2")[0]
    assert api not in first.manifest["http"]["clock_behind_s"]  # the stats host's is there
    assert second.manifest["kind"] == "incremental"
    with contextlib.closing(Catalog(cfg.state_path() / "catalog.sqlite")) as catalog:
        assert [m for _, m in catalog.marks().values()] == [second.manifest["started_at"]]
