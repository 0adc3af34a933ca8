"""warehouse.py: snapshots into DuckDB; `*_current`, `stats_history`, `changes`, idempotence."""

from __future__ import annotations

import glob
import hashlib
import logging
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from harvester import cli
from harvester.errors import ConfigError, OutputError
from harvester.readback import open_target
from harvester.records import RowContext, article_rows, stats_rows
from harvester.schema import SCHEMA_VERSION, SCHEMAS
from harvester.simulator import SimulatorThread
from harvester.simulator.settings import SimSettings
from harvester.sinks import SnapshotWriter
from harvester.warehouse import FIXED, FROM_RECORD, KEYS, WITHDRAWN_COLUMNS, Warehouse, load

NAME = "nightly"
DOCS = Path(__file__).parents[1] / "docs" / "TABLES.md"
S1, S2 = "20240501T020000Z", "20240502T020000Z"


def record(aid: int, **changes: Any) -> dict[str, Any]:
    """A small full record with a row in every child table."""
    rec: dict[str, Any] = {
        "id": aid,
        "version": 1,
        "title": f"Item {aid}",
        "group_id": 100 + aid % 2,
        "published_date": f"2023-0{1 + aid % 9}-01T10:00:00Z",
        "authors": [{"id": aid * 10, "full_name": f"Author {aid}"}],
        "files": [{"id": aid * 100, "name": "data.csv", "size": 10}],
        "categories": [{"id": 13, "title": "Genetics"}],
        "tags": ["frogs"],
        "keywords": ["frogs"],
        "funding_list": [{"id": 1, "title": "Grant", "funder_name": "UKRI"}],
        "custom_fields": [{"name": "Sites", "value": ["Keswick", "Ambleside"]}],
        "related_materials": [{"id": 5, "identifier": "10.1/x", "relation": "IsCitedBy"}],
        "references": [f"https://doi.org/10.1/ref{aid}"],
    }
    rec.update(changes)
    return rec


def publish(root: Path, sid: str, records: list[dict[str, Any]], *,
            views: dict[int, int] | None = None, not_found: tuple[int, ...] = (),
            kind: str = "full", status: str = "complete",
            stats_only: dict[int, int] | None = None, **writer: Any) -> Path:
    """One snapshot written the way the pipeline writes it (records, stats, errors)."""
    ctx = RowContext(sid, datetime.strptime(sid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC),
                     ("ids",))
    views = views or {}
    with SnapshotWriter(root, NAME, snapshot_id=sid, **writer) as w:
        for rec in records:
            w.add_article(rec, article_rows(rec, ctx, versions=[{"version": 1, "url": "u"}]))
            total = views.get(rec["id"], rec["id"] % 1000)
            w.add_stats(stats_rows(rec["id"], {"views": total, "downloads": total // 10}, ctx))
        for aid, total in (stats_only or {}).items():  # an incremental stats refresh
            w.add_stats(stats_rows(aid, {"views": total, "downloads": total // 10}, ctx))
        for aid in not_found:
            w.add_error({"id": aid, "source": "ids", "url": f"https://api/v2/articles/{aid}",
                         "status": 404, "reason": "not-found", "message": "gone", "attempts": 1})
        return Path(w.publish({"name": NAME, "kind": kind, "status": status}))


def q(con: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return con.execute(sql, list(params)).fetchall()


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's content (loaded_at aside), ordered: equal dumps mean nothing changed."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [t for (t,) in q(con, "SELECT table_name FROM information_schema.tables "
                                       "WHERE table_schema = 'main' ORDER BY 1")]
        out = {}
        for t in tables:
            cols = [c for (c,) in q(con, "SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = ? ORDER BY ordinal_position", t)
                    if c != "loaded_at"]
            names = ", ".join(f'"{c}"' for c in cols)
            out[t] = q(con, f"SELECT {names} FROM {t} ORDER BY ALL")
        return out
    finally:
        con.close()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # cli.main points the "harvester" logger at the stderr of its moment (a capture)
    logger = logging.getLogger("harvester")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.fixture
def two(tmp_path: Path) -> Path:
    return write_two(tmp_path / "out")


def write_two(root: Path, **writer: Any) -> Path:
    """Day 1: items 1-4. Day 2: 1 unchanged, 2 changed, 3 gone, 4 answers 404, 5 added."""
    publish(root, S1, [record(i) for i in (1, 2, 3, 4)], views={1: 100, 2: 200, 3: 300, 4: 400},
            **writer)
    two_authors = [{"id": 20, "full_name": "Author 2"}, {"id": 21, "full_name": "New Coauthor"}]
    publish(root, S2, [record(1), record(2, title="Item 2, revised", authors=two_authors),
                       record(5)],
            views={1: 150, 2: 260, 5: 7}, not_found=(4,), **writer)
    return root


def to_schema_version_1(snapshot: Path) -> None:
    """Rewrite a snapshot the way harvesters before schema version 2 wrote it: one
    TABLE.parquet a table, the manifest listing those."""
    manifest = orjson.loads((snapshot / "manifest.json").read_bytes())
    for table in manifest.pop("tables"):
        folder = snapshot / table
        for name in manifest["files"]:
            if name.startswith(f"{table}/"):
                manifest["files"][name] = None
        pq.write_table(pq.read_table(folder), snapshot / f"{table}.parquet")
        shutil.rmtree(folder)
        data = (snapshot / f"{table}.parquet").read_bytes()
        manifest["files"][f"{table}.parquet"] = {
            "rows": pq.read_metadata(snapshot / f"{table}.parquet").num_rows,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest["files"] = {k: v for k, v in manifest["files"].items() if v is not None}
    manifest["schema_version"] = 1
    (snapshot / "manifest.json").write_bytes(orjson.dumps(manifest))


# --- two consecutive snapshots ----------------------------------------------------------------


def test_two_snapshots_current_tables_withdrawals_changes_and_stats_history(two, tmp_path):
    db = tmp_path / "wh.duckdb"
    report = load(two, NAME, db)
    assert [s.snapshot_id for s in report.loaded] == [S1, S2]
    assert report.loaded[0].changes == {"added": 4, "changed": 0, "withdrawn": 0, "tombstone": 0}
    assert report.loaded[1].changes == {"added": 1, "changed": 1, "withdrawn": 1, "tombstone": 1}
    assert (report.current, report.withdrawn) == (5, 2)

    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT article_id, title, snapshot_id, withdrawn, withdrawn_at "
                  "FROM articles_current ORDER BY article_id") == [
        (1, "Item 1", S2, False, None),
        (2, "Item 2, revised", S2, False, None),
        (3, "Item 3", S1, True, S2),   # absent from a full, complete snapshot
        (4, "Item 4", S1, True, S2),   # answered 404: a tombstone, not a silent drop
        (5, "Item 5", S2, False, None),
    ]
    # child tables follow their article: replaced rows, the same withdrawal marks
    assert q(con, "SELECT article_id, position, full_name, snapshot_id, withdrawn "
                  "FROM authors_current ORDER BY ALL") == [
        (1, 0, "Author 1", S2, False), (2, 0, "Author 2", S2, False),
        (2, 1, "New Coauthor", S2, False), (3, 0, "Author 3", S1, True),
        (4, 0, "Author 4", S1, True), (5, 0, "Author 5", S2, False)]
    for table in sorted(FROM_RECORD | {"versions", "stats"}):
        rows = q(con, f"SELECT article_id, bool_and(withdrawn), count(DISTINCT snapshot_id) "
                      f"FROM {table}_current GROUP BY 1 ORDER BY 1")
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5], table
        assert [r[1] for r in rows] == [False, False, True, True, False], table
        assert all(r[2] == 1 for r in rows), table  # never a mix of two snapshots' rows
    assert q(con, "SELECT count(*) FROM custom_fields_current WHERE article_id = 2") == [(2,)]
    assert q(con, "SELECT tag, kind FROM tags_current WHERE article_id = 5 ORDER BY 2") == [
        ("frogs", "keyword"), ("frogs", "tag")]
    assert q(con, "SELECT article_id, counter, total FROM stats_current "
                  "WHERE counter = 'views' ORDER BY 1") == [
        (1, "views", 150), (2, "views", 260), (3, "views", 300), (4, "views", 400),
        (5, "views", 7)]

    hashes = dict(q(con, "SELECT snapshot_id || '/' || article_id, content_hash FROM "
                         "read_parquet(?, hive_partitioning = true, union_by_name = true)",
                    str(two / NAME / "snapshot=*" / "articles" / "*.parquet")))
    assert q(con, "SELECT snapshot_id, article_id, change, previous_hash, content_hash "
                  "FROM changes ORDER BY snapshot_id, article_id") == [
        (S1, 1, "added", None, hashes[f"{S1}/1"]),
        (S1, 2, "added", None, hashes[f"{S1}/2"]),
        (S1, 3, "added", None, hashes[f"{S1}/3"]),
        (S1, 4, "added", None, hashes[f"{S1}/4"]),
        (S2, 2, "changed", hashes[f"{S1}/2"], hashes[f"{S2}/2"]),
        (S2, 3, "withdrawn", hashes[f"{S1}/3"], None),
        (S2, 4, "tombstone", hashes[f"{S1}/4"], None),
        (S2, 5, "added", None, hashes[f"{S2}/5"]),
    ]
    assert hashes[f"{S1}/1"] == hashes[f"{S2}/1"]  # unchanged, so not in `changes`

    d1, d2 = date(2024, 5, 1), date(2024, 5, 2)
    assert q(con, "SELECT article_id, snapshot_date, snapshot_id, total FROM stats_history "
                  "WHERE counter = 'views' ORDER BY 1, 2") == [
        (1, d1, S1, 100), (1, d2, S2, 150), (2, d1, S1, 200), (2, d2, S2, 260),
        (3, d1, S1, 300), (4, d1, S1, 400), (5, d2, S2, 7)]
    # views over time from nightly totals alone
    assert q(con, """
        SELECT article_id, snapshot_date,
               total - lag(total) OVER (PARTITION BY article_id ORDER BY snapshot_date)
        FROM stats_history WHERE counter = 'views' AND article_id = 2 ORDER BY 2""") == [
        (2, d1, None), (2, d2, 60)]
    assert q(con, "SELECT snapshot_id, name, kind, status, articles FROM loaded_snapshots "
                  "ORDER BY 1") == [(S1, NAME, "full", "complete", 4),
                                    (S2, NAME, "full", "complete", 3)]
    con.close()


def test_loading_again_changes_nothing(two, tmp_path):
    db = tmp_path / "wh.duckdb"
    load(two, NAME, db)
    before = dump(db)
    assert sum(len(rows) for rows in before.values()) > 80
    report = load(two, NAME, db)
    assert report.loaded == [] and report.already == 2
    assert dump(db) == before
    # and through the command line
    assert cli.main(["load", str(two / NAME), "--duckdb", str(db), "--quiet"]) == 0
    assert dump(db) == before


INTERRUPTED_LOAD = """
import sys, time
from pathlib import Path
from harvester import cli, warehouse
apply, ready = warehouse.Warehouse._apply, Path(sys.argv[3])
def slow(self, *args):
    apply(self, *args)  # the snapshot's rows are in, not committed
    ready.touch()
    if sys.argv[4] == "query":  # DuckDB reports an interrupt in a query as its own error
        self.con.execute("SELECT count(*) FROM range(10000000000000)").fetchall()
    time.sleep(30)
warehouse.Warehouse._apply = slow
sys.exit(cli.main(["load", sys.argv[1], "--duckdb", sys.argv[2]]))
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_a_load_interrupted_mid_snapshot_rolls_it_back(two, tmp_path, sig, code):
    db, ready = tmp_path / "wh.duckdb", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_LOAD, str(two / NAME), str(db),
                             str(ready), "python"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == code, err  # SIGINT: one line and 130; SIGTERM: ended by it
    assert "Traceback" not in err
    if sig == signal.SIGINT:
        assert "interrupted" in one_line(err)
    with duckdb.connect(str(db)) as con:  # the first snapshot was rolled back whole
        assert q(con, "SELECT count(*) FROM loaded_snapshots") == [(0,)]
        assert q(con, "SELECT count(*) FROM articles_current") == [(0,)]
    report = load(two, NAME, db)  # the same command again loads both
    assert [s.snapshot_id for s in report.loaded] == [S1, S2]


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if " ERROR " in x]
    assert len(lines) == 1, err
    return lines[0]


def test_snapshots_loaded_one_night_at_a_time_match_a_single_catch_up(tmp_path):
    root = tmp_path / "out"
    publish(root, S1, [record(i) for i in (1, 2, 3, 4)])
    nightly = tmp_path / "nightly.duckdb"
    assert [s.snapshot_id for s in load(root, NAME, nightly).loaded] == [S1]
    publish(root, S2, [record(1), record(2, title="new"), record(5)], not_found=(4,))
    assert [s.snapshot_id for s in load(root, NAME, nightly).loaded] == [S2]
    at_once = tmp_path / "at_once.duckdb"
    load(root, NAME, at_once)
    assert dump(nightly) == dump(at_once)


def test_incremental_snapshot_touches_only_what_it_holds(tmp_path):
    root = tmp_path / "out"
    publish(root, S1, [record(i) for i in (1, 2, 3)], views={1: 10, 2: 20, 3: 30})
    # changed item 2, a stats-only refresh of item 1, item 3 answered 404, nothing else listed
    publish(root, S2, [record(2, title="edited")], views={2: 25}, stats_only={1: 11},
            not_found=(3,), kind="incremental")
    db = tmp_path / "wh.duckdb"
    report = load(root, NAME, db)
    assert report.loaded[1].changes == {"added": 0, "changed": 1, "withdrawn": 0,
                                        "tombstone": 1}
    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT article_id, title, snapshot_id, withdrawn FROM articles_current "
                  "ORDER BY 1") == [(1, "Item 1", S1, False), (2, "edited", S2, False),
                                    (3, "Item 3", S1, True)]
    # the refreshed totals replace the old ones (no duplicates) and enter the history
    assert q(con, "SELECT article_id, total, snapshot_id FROM stats_current "
                  "WHERE counter = 'views' ORDER BY 1") == [(1, 11, S2), (2, 25, S2), (3, 30, S1)]
    assert q(con, "SELECT article_id, total FROM stats_history WHERE counter = 'views' "
                  "AND snapshot_id = ? ORDER BY 1", S2) == [(1, 11), (2, 25)]


def test_partial_full_snapshot_does_not_withdraw_absent_items(tmp_path):
    root = tmp_path / "out"
    publish(root, S1, [record(i) for i in (1, 2)])
    publish(root, S2, [record(1)], status="partial")  # item 2 failed to fetch, say
    db = tmp_path / "wh.duckdb"
    load(root, NAME, db)
    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT article_id, withdrawn FROM articles_current ORDER BY 1") == [
        (1, False), (2, False)]
    assert q(con, "SELECT count(*) FROM changes WHERE snapshot_id = ?", S2) == [(0,)]


def test_a_withdrawn_item_that_returns_is_added_again(tmp_path):
    root = tmp_path / "out"
    publish(root, S1, [record(1), record(2)])
    publish(root, S2, [record(1)])
    publish(root, "20240503T020000Z", [record(1), record(2)])
    db = tmp_path / "wh.duckdb"
    load(root, NAME, db)
    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT article_id, withdrawn, withdrawn_at, snapshot_id FROM articles_current "
                  "ORDER BY 1") == [(1, False, None, "20240503T020000Z"),
                                    (2, False, None, "20240503T020000Z")]
    assert q(con, "SELECT snapshot_id, change, previous_hash IS NOT NULL FROM changes "
                  "WHERE article_id = 2 ORDER BY 1") == [
        (S1, "added", False), (S2, "withdrawn", True), ("20240503T020000Z", "added", True)]


def test_two_snapshots_on_one_day_the_later_wins_in_stats_history(tmp_path):
    root = tmp_path / "out"
    publish(root, "20240501T020000Z", [record(1), record(2)], views={1: 5, 2: 6})
    publish(root, "20240501T140000Z", [record(1)], views={1: 9}, kind="incremental")
    db = tmp_path / "wh.duckdb"
    load(root, NAME, db)
    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT article_id, snapshot_date, snapshot_id, total FROM stats_history "
                  "WHERE counter = 'views' ORDER BY 1") == [
        (1, date(2024, 5, 1), "20240501T140000Z", 9),
        (2, date(2024, 5, 1), "20240501T020000Z", 6)]


def test_tables_of_many_part_files_and_schema_version_1_snapshots_load_the_same(two, tmp_path):
    # the same two days, written in part files of one two-row row group each, day 1 then
    # rewritten as a schema version 1 snapshot (one TABLE.parquet a table): the same warehouse
    other = write_two(tmp_path / "other", row_group_size=2, narrow_row_group_size=2,
                      file_row_groups=1)
    assert len(list((other / NAME / f"snapshot={S2}" / "authors").iterdir())) == 2
    assert len(list((other / NAME / f"snapshot={S1}" / "articles").iterdir())) == 2
    to_schema_version_1(other / NAME / f"snapshot={S1}")
    assert (other / NAME / f"snapshot={S1}" / "articles.parquet").is_file()
    load(two, NAME, tmp_path / "parts.duckdb")
    report = load(other, NAME, tmp_path / "mixed.duckdb")
    assert [s.snapshot_id for s in report.loaded] == [S1, S2]
    parts, mixed = dump(tmp_path / "parts.duckdb"), dump(tmp_path / "mixed.duckdb")
    assert [r[4] for r in mixed.pop("loaded_snapshots")] == [1, SCHEMA_VERSION]  # the versions
    parts.pop("loaded_snapshots")
    assert parts == mixed
    assert mixed["authors_current"] and mixed["stats_history"]


# --- what the loader refuses or ignores -------------------------------------------------------


def test_a_file_that_does_not_match_its_manifest_is_not_loaded(two, tmp_path, capsys):
    bad = two / NAME / f"snapshot={S2}" / "authors" / "part-00000.parquet"
    pq.write_table(pa.table({"x": [1]}), bad)  # a valid Parquet file, but not the one listed
    db = tmp_path / "wh.duckdb"
    with pytest.raises(OutputError, match=r"authors/part-00000\.parquet: sha256 .* does not match"):
        load(two, NAME, db)
    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT snapshot_id FROM loaded_snapshots") == [(S1,)]  # S1 stays loaded
    assert q(con, "SELECT count(*), max(snapshot_id) FROM articles_current") == [(4, S1)]
    con.close()
    capsys.readouterr()  # only what the command prints below counts
    code = cli.main(["load", str(two / NAME), "--duckdb", str(db)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.ABORTED
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "authors/part-00000.parquet: sha256" in err[0]


def test_incomplete_snapshots_and_staging_are_ignored(two, tmp_path):
    partial = two / NAME / "snapshot=20240503T020000Z" / "articles"  # no manifest: not a snapshot
    partial.mkdir(parents=True)
    (partial / "part-00000.parquet").write_bytes(b"partial")
    (two / NAME / ".staging" / "20240504T020000Z").mkdir(parents=True)
    report = load(two, NAME, tmp_path / "wh.duckdb")
    assert [s.snapshot_id for s in report.loaded] == [S1, S2]


def test_a_snapshot_older_than_one_already_loaded_is_refused(tmp_path):
    root = tmp_path / "out"
    publish(root, S2, [record(1)])
    db = tmp_path / "wh.duckdb"
    load(root, NAME, db)
    publish(root, S1, [record(1)])
    with pytest.raises(OutputError, match=f"snapshot={S1} is older than snapshot {S2}"):
        load(root, NAME, db)


def test_one_file_holds_one_harvest(two, tmp_path):
    db = tmp_path / "wh.duckdb"
    load(two, NAME, db)
    (two / "other").mkdir()
    # a user's mistake (exit 2), stated with its reason and its fix where it bites
    with pytest.raises(ConfigError, match="holds harvest 'nightly', and one DuckDB file holds "
                       r"one harvest \(.*\): load 'other' into another file"):
        load(two, "other", db)


def test_a_file_that_is_not_a_warehouse_is_refused_untouched_and_offline(two, tmp_path,
                                                                        capsys):
    other = tmp_path / "other.duckdb"  # someone else's DuckDB database
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE articles_current (x INTEGER)")
    con.execute("CREATE TABLE loaded_snapshots (a INTEGER, b VARCHAR)")
    con.close()
    lite = tmp_path / "lite.duckdb"  # a SQLite file: DuckDB would fetch sqlite_scanner for it
    sqlite = sqlite3.connect(lite)
    sqlite.execute("CREATE TABLE t (x)")
    sqlite.commit()
    sqlite.close()
    before = dump(other), lite.read_bytes()
    capsys.readouterr()
    for argv, says in ((["load", str(two / NAME), "--duckdb", str(other)],
                        "a DuckDB file of other tables, not a harvester warehouse"),
                       (["report", f"warehouse:{other}"], "not a harvester warehouse"),
                       (["load", str(two / NAME), "--duckdb", str(lite)], "not a DuckDB file"),
                       (["report", f"warehouse:{lite}"], "not a DuckDB file"),
                       (["export", f"warehouse:{lite}", "--csv", str(tmp_path / "c")],
                        "not a DuckDB file")):
        assert cli.main(argv) == cli.USAGE, argv
        assert says in one_line(capsys.readouterr().err)
    assert (dump(other), lite.read_bytes()) == before
    offline = ("SELECT current_setting('autoinstall_known_extensions') OR "
               "current_setting('autoload_known_extensions')")
    load(two, NAME, tmp_path / "wh.duckdb")
    with Warehouse(tmp_path / "wh.duckdb") as wh:
        assert wh.con.execute(offline).fetchone() == (False,)
    opened = open_target(f"warehouse:{tmp_path / 'wh.duckdb'}")
    assert opened.one(offline) is False
    opened.close()


def test_a_stray_folder_is_skipped_and_a_malformed_manifest_named(two, tmp_path, capsys):
    db = tmp_path / "wh.duckdb"
    load(two, NAME, db)
    stray = two / NAME / "snapshot=2026"  # not an id the harvester writes, sorted first
    stray.mkdir()
    (stray / "manifest.json").write_text("not JSON")
    publish(two, "20240503T020000Z", [record(1)], kind="incremental")
    capsys.readouterr()
    assert cli.main(["load", str(two / NAME), "--duckdb", str(db)]) == cli.OK
    assert "snapshot=2026: not a snapshot id (YYYYMMDDTHHMMSSZ); skipped" in \
        capsys.readouterr().err
    bad = two / NAME / "snapshot=20240504T020000Z"
    shutil.copytree(two / NAME / f"snapshot={S2}", bad)
    (bad / "manifest.json").write_text('{"files": null}')
    assert cli.main(["load", str(two / NAME), "--duckdb", str(db)]) == cli.ABORTED
    assert f"malformed manifest {bad / 'manifest.json'}: files is not an object" in \
        one_line(capsys.readouterr().err)
    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT max(snapshot_id) FROM loaded_snapshots") == [("20240503T020000Z",)]
    con.close()


def test_cli_load_errors_are_one_line_with_documented_exit_codes(two, tmp_path, capsys):
    db = tmp_path / "wh.duckdb"
    assert cli.main(["load", str(tmp_path / "nope" / NAME), "--duckdb", str(db)]) == cli.USAGE
    assert cli.main(["load", str(two / NAME)]) == cli.USAGE  # --duckdb is required
    # another process holds the DuckDB file
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('ready', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        capsys.readouterr()
        assert cli.main(["load", str(two / NAME), "--duckdb", str(db)]) == cli.LOCKED
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another process is using this DuckDB file" in err[0]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert cli.main(["load", str(two / NAME), "--duckdb", str(db)]) == cli.OK
    out = capsys.readouterr().out
    assert f"loaded    {S2} (full, complete)" in out and "1 tombstone" in out
    assert "current   5 articles, 2 withdrawn" in out


# --- schemas: derived from the Arrow ones, documented, migrated -------------------------------


def documented_tables() -> dict[str, list[tuple[str, str, bool]]]:
    """The warehouse section of docs/TABLES.md -> {table: [(column, DuckDB type, nullable)]}."""
    text = DOCS.read_text(encoding="utf-8").split("## The warehouse (DuckDB)", 1)[1]
    mapping = dict(re.findall(r"^\| ([a-z][^|`]*?) \| ([A-Z][A-Z \[\]]+) \|$", text, flags=re.M))
    sections = re.split(r"^#### `([<>\w]+)`", text, flags=re.M)
    docs = {}
    for name, body in zip(sections[1::2], sections[2::2], strict=True):
        rows = re.findall(r"^\| `(\w+)` \| ([A-Z][A-Z \[\]]*?)( NOT NULL)? \| ", body, flags=re.M)
        docs[name] = [(c, t, not_null == "") for c, t, not_null in rows]
    extra = docs.pop("<table>_current")
    for table, schema in SCHEMAS.items():
        arrow = [(f.name, "list<string>" if pa.types.is_list(f.type) else str(f.type),
                  f.nullable) for f in schema]
        cols = [(n, mapping[t], null) for n, t, null in arrow]
        docs[f"{table}_current"] = cols + (extra if KEYS[table] == ("article_id",) else [])
    return docs


def test_every_warehouse_table_has_the_documented_schema(two, tmp_path):
    db = tmp_path / "wh.duckdb"
    load(two, NAME, db)
    docs = documented_tables()
    con = duckdb.connect(str(db), read_only=True)
    tables = {t for (t,) in q(con, "SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = 'main'")}
    assert tables - {"_meta"} == set(docs)
    assert len(docs) == len(SCHEMAS) + len(FIXED)
    for table, want in docs.items():
        got = [(name, typ, null == "YES")
               for name, typ, null, *_ in q(con, f'DESCRIBE "{table}"')]
        assert got == want, table
    assert dict(q(con, "SELECT key, value FROM _meta")) == {
        "schema_version": str(SCHEMA_VERSION), "warehouse_version": "1", "harvest": NAME}
    assert docs["articles_current"][-2:] == WITHDRAWN_COLUMNS


def test_an_older_warehouse_gains_the_new_columns_and_keeps_its_rows(two, tmp_path):
    db = tmp_path / "wh.duckdb"
    load(two, NAME, db)
    con = duckdb.connect(str(db))
    # as if written before `mimetype` and `withdrawn_at` existed
    con.execute("ALTER TABLE files_current DROP COLUMN mimetype")
    con.execute("ALTER TABLE files_current DROP COLUMN withdrawn_at")
    con.close()
    with Warehouse(db) as wh:
        cols = [c for c, *_ in wh.con.execute("DESCRIBE files_current").fetchall()]
        assert cols[-3:] == ["withdrawn", "mimetype", "withdrawn_at"]
        assert wh.con.execute("SELECT count(*), count(mimetype) FROM files_current"
                              ).fetchone() == (5, 0)
    publish(two, "20240503T020000Z", [record(1)], kind="incremental")
    load(two, NAME, db)  # loads by column name, whatever the order
    con = duckdb.connect(str(db), read_only=True)
    assert q(con, "SELECT name FROM files_current WHERE article_id = 1") == [("data.csv",)]


def test_a_warehouse_from_a_newer_harvester_is_refused(tmp_path):
    db = tmp_path / "wh.duckdb"
    Warehouse(db).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE _meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(OutputError, match=r"newer harvester .*schema_version 99"):
        Warehouse(db)


# --- end to end: nightly runs against the simulator load themselves ---------------------------


def test_nightly_runs_load_the_configured_warehouse_and_harvester_load_agrees(tmp_path):
    with SimulatorThread(SimSettings(items=60, seed=5)) as sim:
        ids = sorted(sim.corpus.ids)[:6]
        db = tmp_path / "nightly.duckdb"
        body = {
            "name": NAME,
            "sources": [{"kind": "ids", "ids": ids}],
            "api": {"url": sim.api_url},
            "stats": {"url": sim.stats_url},
            "http": {"rate": {"requests": 10_000, "per": 1}, "concurrency": 8,
                     "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.05}},
            "output": {"dir": str(tmp_path / "out")},
            "warehouse": {"duckdb": str(db)},
        }
        cfg = tmp_path / "nightly.yaml"
        cfg.write_text(yaml.safe_dump(body))
        assert cli.main(["run", str(cfg), "--quiet"]) == 0
        sim.corpus.modify(ids[1], datetime.now(UTC).replace(microsecond=0))
        sim.corpus.withdraw(ids[2])  # answers 404 from now on
        assert cli.main(["run", str(cfg), "--quiet"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    snaps = [s for (s,) in q(con, "SELECT snapshot_id FROM loaded_snapshots ORDER BY 1")]
    assert len(snaps) == 2
    assert q(con, "SELECT article_id, change FROM changes WHERE snapshot_id = ? ORDER BY 1",
             snaps[1]) == [(ids[1], "changed"), (ids[2], "tombstone")]
    assert q(con, "SELECT article_id FROM articles_current WHERE withdrawn") == [(ids[2],)]
    assert q(con, "SELECT count(*) FROM articles_current") == [(6,)]
    assert q(con, "SELECT count(DISTINCT snapshot_date), count(*) FROM stats_history") == [
        (1, 6 * 3)]  # both runs were today: the later one's totals stand
    con.close()
    again = tmp_path / "again.duckdb"
    assert cli.main(["load", str(tmp_path / "out" / NAME), "--duckdb", str(again),
                     "--quiet"]) == 0
    assert dump(again) == dump(db)


# --- the guide's warehouse recipes run as written ----------------------------------------------


def readme_section() -> str:
    text = (Path(__file__).parents[1] / "docs" / "GUIDE.md").read_text(encoding="utf-8")
    return text.split("\n## Warehouse\n", 1)[1].split("\n## ", 1)[0]


def test_readme_example_queries_answer_on_a_loaded_warehouse(two, tmp_path):
    db = tmp_path / "wh.duckdb"
    load(two, NAME, db)
    blocks = re.findall(r"```sql\n(.*?)```", readme_section(), flags=re.S)
    queries = next(b for b in blocks if "top items by views this month" in b)
    # "this month" as seen on the day of the second snapshot
    statements = [s for s in queries.replace("current_date", "DATE '2024-05-02'").split(";\n")
                  if s.strip()]
    con = duckdb.connect(str(db), read_only=True)
    results = [con.execute(s).fetchall() for s in statements]
    assert len(results) == 6  # SET TimeZone, then five queries
    top, per_group, authors, per_day, last_night = results[1:]
    assert top == [(2, "Item 2, revised", 60), (1, "Item 1", 50), (5, "Item 5", 0)]
    assert per_group == [(100, 2023, 1), (101, 2023, 2)]
    assert sorted(authors[:2]) == [(20, "Author 2", 1, 26), (21, "New Coauthor", 1, 26)]
    assert authors[2:] == [(10, "Author 1", 1, 15), (50, "Author 5", 1, 0)]
    assert per_day == [(date(2024, 5, 1), None), (date(2024, 5, 2), 110)]
    assert [(c, a, t) for c, a, t, _ in last_night] == [
        ("changed", 2, "Item 2, revised"), ("withdrawn", 3, None), ("tombstone", 4, None),
        ("added", 5, "Item 5")]


def test_readme_one_line_reads_see_every_snapshot(two, monkeypatch):
    monkeypatch.chdir(two)
    section = readme_section().replace("my-harvest", NAME)
    sql = re.search(r"```sql\n(SELECT \* FROM read_parquet.*?);\n```", section, flags=re.S)
    python = re.search(r"```python\n(ds\.dataset\(.*?\))\n```", section, flags=re.S)
    assert sql and python
    sql_text = sql.group(1).replace("output/", "")
    got = duckdb.sql(f"SELECT snapshot, count(*) FROM ({sql_text}) GROUP BY 1 ORDER BY 1")
    assert got.fetchall() == [(S1, 4), (S2, 4)]
    # the README's line, evaluated as written
    table = eval(python.group(1).replace("output/", ""), {"ds": ds, "glob": glob}).to_table()
    assert sorted(set(table.column("snapshot").to_pylist())) == [S1, S2]
    assert table.num_rows == 8 and table.column("snapshot").to_pylist() == table.column(
        "snapshot_id").to_pylist()


def test_a_partial_snapshot_adds_members_and_never_removes_them(tmp_path):
    """A truncated member list (status partial) may add a collection's or project's members,
    never drop the ones it did not list; a complete snapshot replaces the list whole."""
    root = tmp_path / "out"

    def night(sid: str, members: list[int], status: str) -> None:
        ctx = RowContext(sid, datetime.strptime(sid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC),
                         ("collections",))
        with SnapshotWriter(root, NAME, snapshot_id=sid) as w:
            for aid in members:
                w.add_article(record(aid), article_rows(record(aid), ctx))
            w.add_rows("collections", [{**dict.fromkeys(SCHEMAS["collections"].names),
                                        "snapshot_id": sid, "collection_id": 7, "raw": b"{}",
                                        "content_hash": "h", "fetched_at": ctx.fetched_at}])
            w.add_rows("collection_articles", [{"snapshot_id": sid, "collection_id": 7,
                                                "article_id": a} for a in members])
            w.add_rows("projects", [{**dict.fromkeys(SCHEMAS["projects"].names),
                                     "snapshot_id": sid, "project_id": 8, "raw": b"{}",
                                     "content_hash": "h", "fetched_at": ctx.fetched_at}])
            w.add_rows("project_articles", [{"snapshot_id": sid, "project_id": 8,
                                             "article_id": a} for a in members])
            w.publish({"name": NAME, "kind": "full", "status": status})

    db = tmp_path / "wh.duckdb"

    def members() -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(db), read_only=True)
        try:
            return q(con, "SELECT 'c', article_id, snapshot_id FROM collection_articles_current "
                          "UNION ALL SELECT 'p', article_id, snapshot_id "
                          "FROM project_articles_current ORDER BY ALL")
        finally:
            con.close()

    night(S1, [1, 2, 3, 4], "complete")
    night(S2, [2, 5], "partial")  # the list was cut short: 1, 3, 4 are still members
    load(root, NAME, db)
    assert members() == [(t, a, S2 if a in (2, 5) else S1) for t in "cp" for a in (1, 2, 3, 4, 5)]
    night("20240503T020000Z", [2, 5], "complete")  # a whole list: the others left
    load(root, NAME, db)
    assert members() == [(t, a, "20240503T020000Z") for t in "cp" for a in (2, 5)]
