"""sinks.py: snapshots written, read back with pyarrow and DuckDB, published atomically or not."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from harvester import sinks
from harvester.errors import OutputError
from harvester.records import RowContext, article_rows, side_rows, stats_rows
from harvester.schema import NO_STATISTICS, SCHEMA_VERSION, SCHEMAS
from harvester.sinks import SnapshotWriter, clean_staging, rows_to_table
from harvester.store import Store, latest_snapshot, list_snapshots, read_manifest, table_files
from harvester.urls import sanitize_url

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NAME = "demo"
ROOT_DIR = Path(__file__).parents[1]


def record(i: int) -> dict:
    """A realistic full record; every tenth is under file embargo (no `files` key)."""
    aid = 10_000_000 + i
    rec = {
        "id": aid,
        "version": 1 + i % 3,
        "title": f"Dataset {i} \u2014 caf\u00e9 <em>\u6c34</em>",
        "doi": f"10.6084/m9.figshare.{aid}.v1",
        "handle": "",
        "url_public_api": f"https://api.figshare.com/v2/articles/{aid}",
        "published_date": f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}T10:{i % 60:02d}:00Z",
        "created_date": "2023-01-01T00:00:00Z",
        "modified_date": "2023-06-01T00:00:00Z",
        "defined_type": 3,
        "defined_type_name": "dataset",
        "group_id": 0 if i % 5 == 0 else 100 + i % 7,
        "timeline": {"posted": "2023-01-01T00:00:00",
                     "firstOnline": "2021-07-07" if i % 2 else "2021-07-07T10:00:00"},
        "authors": [
            {"id": aid * 10 + k, "full_name": f"Author {k} of {i}", "is_active": k == 0,
             "url_name": "_", "orcid_id": "" if k else "0000-0002-1825-0097"}
            for k in range(1 + i % 3)
        ],
        "tags": ["alpha", f"t{i % 4}"],
        "custom_fields": [{"name": "Sites", "value": ["Keswick", "Ambleside"]}] if i % 3 == 0
        else [{"name": "Instrument", "value": "probe"}],
        "categories": [{"id": 13, "title": "Genetics", "parent_id": 48, "path": "",
                        "source_id": "", "taxonomy_id": 10}],
        "license": {"value": 1, "name": "CC BY 4.0",
                    "url": "https://creativecommons.org/licenses/by/4.0/"},
        "is_public": True,
        "is_embargoed": i % 10 == 7,
        "description": "<p>HTML &amp; \u00e9t\u00e9</p>",
        "size": 1024 * i,
    }
    if i % 4:
        rec["keywords"] = list(rec["tags"])
    if i % 10 != 7:
        rec["files"] = [
            {"id": aid * 100 + k, "name": "data.csv", "size": 512, "is_link_only": False,
             "download_url": f"https://ndownloader.figshare.com/files/{aid * 100 + k}",
             "supplied_md5": "", "computed_md5": "d41d8cd98f00b204e9800998ecf8427e",
             "mimetype": "text/csv"}
            for k in range(2)
        ]
    return rec


def write_snapshot(root: Path, records: list[dict], *, snapshot_id: str | None = None,
                   row_group_size: int = 5_000, errors: tuple[dict, ...] = (),
                   formats: frozenset[str] = frozenset({"ndjson", "parquet"})) -> Path:
    writer = SnapshotWriter(root, NAME, snapshot_id=snapshot_id, row_group_size=row_group_size,
                            formats=formats)
    with writer:
        ctx = RowContext(writer.snapshot_id, T0, ("search", "oai"))
        for r in records:
            writer.add_article(r, article_rows(r, ctx))
            writer.add_stats(stats_rows(r["id"], {"views": r["id"] % 97, "downloads": 3}, ctx))
        for e in errors:
            writer.add_error(e)
        return writer.publish({"name": NAME, "run": {"ids": len(records)}})


def duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    return con


def snapshot_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / NAME).glob("snapshot=*"))


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_with_pyarrow(tmp_path):
    records = [record(i) for i in range(40)]
    path = write_snapshot(tmp_path, records, snapshot_id="20240501T120000Z")
    assert path == tmp_path / NAME / "snapshot=20240501T120000Z"

    arts = pq.read_table(path / "articles")
    assert arts.schema.equals(SCHEMAS["articles"])
    assert arts.schema.field("title").metadata[b"description"]  # column docs travel along
    assert arts.column("article_id").to_pylist() == [r["id"] for r in records]
    assert arts.schema.field("published_date").type == pa.timestamp("us", tz="UTC")
    rows = {r["article_id"]: r for r in arts.to_pylist()}
    r3 = rows[10_000_003]
    assert r3["published_date"] == datetime(2023, 4, 4, 10, 3, tzinfo=UTC)
    assert r3["timeline_first_online"] == datetime(2021, 7, 7, tzinfo=UTC)  # bare date
    assert r3["title"] == records[3]["title"] and r3["handle"] is None
    assert r3["sources"] == ["search", "oai"] and r3["snapshot_id"] == "20240501T120000Z"
    assert rows[10_000_007]["file_count"] is None and rows[10_000_008]["file_count"] == 2
    assert rows[10_000_005]["group_id"] is None and rows[10_000_006]["group_id"] == 106
    assert orjson.loads(r3["raw"]) == records[3]

    authors = pq.read_table(path / "authors").to_pylist()
    for r in records:
        mine = [a for a in authors if a["article_id"] == r["id"]]
        assert [a["position"] for a in mine] == list(range(len(r["authors"])))
        assert [a["full_name"] for a in mine] == [a["full_name"] for a in r["authors"]]
        assert mine[0]["orcid_id"] == "0000-0002-1825-0097"
        assert all(a["orcid_id"] is None for a in mine[1:])

    tags = pq.read_table(path / "tags").to_pylist()
    assert {t["kind"] for t in tags} == {"tag", "keyword"}
    assert sum(t["kind"] == "tag" for t in tags) == 80
    assert sum(t["kind"] == "keyword" for t in tags) == 2 * sum(1 for i in range(40) if i % 4)

    cf = pq.read_table(path / "custom_fields").to_pylist()
    sites = [(c["value_index"], c["value"]) for c in cf if c["article_id"] == 10_000_000]
    assert sites == [(0, "Keswick"), (1, "Ambleside")]
    files = pq.read_table(path / "files")
    assert files.num_rows == 2 * 36
    stats = pq.read_table(path / "stats").to_pylist()
    assert stats[0] == {"snapshot_id": "20240501T120000Z", "article_id": 10_000_000,
                        "counter": "views", "scope": "public", "total": 10_000_000 % 97,
                        "fetched_at": T0}


def test_round_trip_with_duckdb(tmp_path):
    records = [record(i) for i in range(30)]
    write_snapshot(tmp_path, records, snapshot_id="20240501T120000Z")
    base = tmp_path / NAME
    con = duck()

    def q(sql: str) -> list[tuple]:
        return con.execute(sql.replace("BASE", str(base))).fetchall()

    got = q("SELECT snapshot, snapshot_id, count(*) FROM read_parquet("
            "'BASE/snapshot=*/articles/*.parquet', hive_partitioning = true) GROUP BY ALL")
    assert got == [("20240501T120000Z", "20240501T120000Z", 30)]
    got = q("SELECT strftime(published_date, '%Y-%m-%dT%H:%M:%S%z'), "
            "strftime(timeline_first_online, '%Y-%m-%d %H:%M'), epoch(fetched_at) "
            "FROM 'BASE/snapshot=*/articles/*.parquet' WHERE article_id = 10000003")
    assert got == [("2023-04-04T10:03:00+00", "2021-07-07 00:00", T0.timestamp())]
    got = q("SELECT article_id, list(position ORDER BY position), list(full_name ORDER BY position)"
            " FROM 'BASE/snapshot=*/authors/*.parquet' GROUP BY article_id ORDER BY article_id"
            " LIMIT 3")
    assert got == [
        (10_000_000, [0], ["Author 0 of 0"]),
        (10_000_001, [0, 1], ["Author 0 of 1", "Author 1 of 1"]),
        (10_000_002, [0, 1, 2], ["Author 0 of 2", "Author 1 of 2", "Author 2 of 2"]),
    ]
    got = q("SELECT kind, count(*) FROM 'BASE/snapshot=*/tags/*.parquet' "
            "GROUP BY kind ORDER BY kind")
    assert got == [("keyword", 2 * sum(1 for i in range(30) if i % 4)), ("tag", 60)]
    got = q("SELECT a.title, c.title, s.total FROM 'BASE/snapshot=*/articles/*.parquet' a "
            "JOIN 'BASE/snapshot=*/categories/*.parquet' c "
            "USING (snapshot_id, article_id, version) "
            "JOIN 'BASE/snapshot=*/stats/*.parquet' s USING (snapshot_id, article_id) "
            "WHERE a.article_id = 10000001 AND s.counter = 'views'")
    assert got == [(records[1]["title"], "Genetics", 10_000_001 % 97)]
    got = q("SELECT count(*) FILTER (WHERE file_count IS NULL), sum(file_count) "
            "FROM 'BASE/snapshot=*/articles/*.parquet'")
    assert got == [(3, 2 * 27)]


def test_ndjson_lines_parse_back_equal_to_the_input(tmp_path):
    records = [record(i) for i in range(25)]
    records[4]["a_new_key"] = {"deep": [None, "", 0, "\u2603"]}
    path = write_snapshot(tmp_path, records, snapshot_id="20240501T120000Z")
    lines = (path / "articles.ndjson").read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == records
    stats = [orjson.loads(line) for line in (path / "stats.ndjson").read_bytes().splitlines()]
    assert len(stats) == 50
    assert stats[1] == {"snapshot_id": "20240501T120000Z", "article_id": 10_000_000,
                        "counter": "downloads", "scope": "public", "total": 3,
                        "fetched_at": "2024-05-01T12:00:00Z"}


def test_errors_ndjson_has_the_documented_keys_and_no_credentials(tmp_path):
    errors = (
        {"id": 42, "source": "search", "status": 500, "reason": "GiveUp", "attempts": 6,
         "url": "https://user:pa55word@api.figshare.com/v2/articles/42?access_token=SECRET1&x=1",
         "message": "GET failed with Authorization: token SECRETSECRET2 and password=SECRET3",
         "at": datetime(2024, 5, 1, 12, 5, tzinfo=UTC), "extra": "dropped"},
        {"id": 43, "source": "oai", "status": 404, "reason": "NotFound", "attempts": 1,
         "url": "https://api.figshare.com/v2/articles/43", "message": "gone"},
    )
    path = write_snapshot(tmp_path, [], errors=errors)
    text = (path / "errors.ndjson").read_text(encoding="utf-8")
    assert "SECRET" not in text and "pa55word" not in text
    first, second = (orjson.loads(line) for line in text.splitlines())
    assert list(first) == ["id", "source", "url", "status", "reason", "message", "attempts", "at"]
    assert first["url"] == "https://api.figshare.com/v2/articles/42?access_token=REDACTED&x=1"
    assert first["at"] == "2024-05-01T12:05:00Z"
    assert (first["id"], first["status"], first["reason"], first["attempts"]) == (
        42, 500, "GiveUp", 6)
    assert second["url"] == "https://api.figshare.com/v2/articles/43"
    assert datetime.fromisoformat(second["at"]).tzinfo is not None  # filled in when missing
    assert read_manifest(path)["files"]["errors.ndjson"]["rows"] == 2


def test_sanitize_url():
    assert sanitize_url("https://a:b@stats.figshare.com:8443/x?token=t&page=2") == (
        "https://stats.figshare.com:8443/x?token=REDACTED&page=2")
    kept = "http://[::1]:5000/v2/articles?search_for=%3Atitle%3A+frog&page=1"
    assert sanitize_url(kept) == kept  # nothing secret: the URL is left exactly as it was
    assert sanitize_url("https://u:p@[::1]:8/x?access_token=a%20b") == (
        "https://[::1]:8/x?access_token=REDACTED")


# --- manifest and LATEST -------------------------------------------------------------------


def test_manifest_lists_every_file_with_true_rows_sha256_and_bytes(tmp_path):
    records = [record(i) for i in range(12)]
    path = write_snapshot(tmp_path, records, row_group_size=7)
    manifest = read_manifest(path)
    assert manifest["name"] == NAME and manifest["run"] == {"ids": 12}  # the caller's keys kept
    assert manifest["snapshot_id"] == path.name.removeprefix("snapshot=")
    assert manifest["schema_version"] == SCHEMA_VERSION
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    on_disk -= {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {f"{t}/part-00000.parquet" for t in SCHEMAS} | {
        "articles.ndjson", "stats.ndjson", "errors.ndjson"} == on_disk
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert entry["bytes"] == len(data), name
        rows = pq.read_metadata(path / name).num_rows if name.endswith(".parquet") else (
            len(data.splitlines()))
        assert entry["rows"] == rows, name
    assert manifest["files"]["articles/part-00000.parquet"]["rows"] == 12
    assert manifest["tables"]["articles"] == {"rows": 12, "files": ["articles/part-00000.parquet"]}
    assert manifest["tables"]["authors"]["rows"] == sum(1 + i % 3 for i in range(12))
    assert set(manifest["tables"]) == set(SCHEMAS)
    assert manifest["files"]["stats.ndjson"]["rows"] == 24


def test_latest_points_at_the_newest_and_ids_never_collide(tmp_path):
    older = write_snapshot(tmp_path, [record(1)], snapshot_id="20240101T000000Z")
    newer = write_snapshot(tmp_path, [record(2)], snapshot_id="20240102T000000Z")
    assert (tmp_path / NAME / "LATEST").read_text().strip() == "snapshot=20240102T000000Z"
    assert list_snapshots(tmp_path, NAME) == [older, newer]
    assert latest_snapshot(tmp_path, NAME) == newer

    # Two writers started within the same second get different ids.
    now = datetime(2024, 1, 2, 0, 0, 0, tzinfo=UTC)
    assert Store(tmp_path).new_snapshot_id(NAME, now) == "20240102T000001Z"
    first = SnapshotWriter(tmp_path, NAME)
    with first:
        second = SnapshotWriter(tmp_path, NAME)
        assert second.snapshot_id != first.snapshot_id
        first.publish({})
    with second:
        second.publish({})
    ids = [p.name for p in list_snapshots(tmp_path, NAME)]
    assert ids == sorted(ids) and len(ids) == 4
    assert latest_snapshot(tmp_path, NAME) == second.path
    with pytest.raises(OutputError, match="already exists"):
        SnapshotWriter(tmp_path, NAME, snapshot_id="20240101T000000Z").open()
    with SnapshotWriter(tmp_path, NAME, snapshot_id="20250101T000000Z") as running:
        twin = SnapshotWriter(tmp_path, NAME, snapshot_id="20250101T000000Z")
        with pytest.raises(OutputError, match="another writer is using it"):
            twin.open()
        twin.abort()  # must not touch the running writer's staging directory
        assert running.staging.is_dir()
        running.publish({})


# --- nothing looks complete unless it is ---------------------------------------------------


def test_abort_and_unpublished_exits_leave_no_snapshot(tmp_path):
    writer = SnapshotWriter(tmp_path, NAME, row_group_size=2)
    writer.open()
    ctx = RowContext(writer.snapshot_id, T0)
    for i in range(5):
        writer.add_article(record(i), article_rows(record(i), ctx))
    writer.abort()
    writer.abort()  # idempotent
    assert not writer.staging.exists()
    with pytest.raises(RuntimeError):
        writer.add_error({"id": 1})

    with pytest.raises(KeyError), SnapshotWriter(tmp_path, NAME) as w:
        w.add_error({"id": 1})
        raise KeyError("boom")
    with SnapshotWriter(tmp_path, NAME) as w:
        w.add_error({"id": 2})  # leaves the block without publish
    assert snapshot_dirs(tmp_path) == []
    assert list(((tmp_path / NAME) / ".staging").iterdir()) == []
    assert list_snapshots(tmp_path, NAME) == [] and latest_snapshot(tmp_path, NAME) is None
    assert not (tmp_path / NAME / "LATEST").exists()


CRASH = """
import os, sys
from datetime import datetime, UTC
from harvester.records import RowContext, article_rows
from harvester.sinks import SnapshotWriter
w = SnapshotWriter(sys.argv[1], "demo", snapshot_id=sys.argv[2], row_group_size=10)
w.open()
ctx = RowContext(w.snapshot_id, datetime.now(UTC))
for i in range(95):
    rec = {"id": 100 + i, "title": "x" * 100, "authors": [{"id": 1, "full_name": "A"}]}
    w.add_article(rec, article_rows(rec, ctx))
os._exit(9)  # killed mid-run: no publish, no abort, no cleanup
"""


def test_a_killed_run_leaves_only_staging(tmp_path):
    good = write_snapshot(tmp_path, [record(1)], snapshot_id="20240101T000000Z")
    done = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), "20990101T000000Z"],
                          cwd=ROOT_DIR,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 9, done.stderr
    staged = tmp_path / NAME / ".staging" / "20990101T000000Z"
    # row groups were streamed out
    assert (staged / "articles" / "part-00000.parquet").stat().st_size > 4
    assert not (staged / "manifest.json").exists()
    assert snapshot_dirs(tmp_path) == ["snapshot=20240101T000000Z"]
    # A manifest-less snapshot= directory (say, half copied by hand) is not a snapshot either,
    # even when LATEST names it.
    (tmp_path / NAME / "snapshot=20990102T000000Z").mkdir()
    (tmp_path / NAME / "LATEST").write_text("snapshot=20990102T000000Z\n")
    assert list_snapshots(tmp_path, NAME) == [good]
    assert latest_snapshot(tmp_path, NAME) == good

    # The resumed run keeps its snapshot id: the leftover is replaced, not merged or refused.
    with SnapshotWriter(tmp_path, NAME, snapshot_id="20990101T000000Z") as again:
        rec = record(5)
        again.add_article(rec, article_rows(rec, RowContext(again.snapshot_id, T0)))
        resumed = again.publish({})
    assert pq.read_table(resumed / "articles").column("article_id").to_pylist() == [
        rec["id"]]
    assert (resumed / "articles.ndjson").read_bytes().count(b"\n") == 1
    assert list((tmp_path / NAME / ".staging").iterdir()) == []  # lock file gone too

    done = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), "20990103T000000Z"],
                          cwd=ROOT_DIR, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 9, done.stderr
    with SnapshotWriter(tmp_path, NAME, snapshot_id="20990104T000000Z") as alive:
        leftovers = clean_staging(tmp_path / NAME / ".staging")
        assert [p.name for p in leftovers] == ["20990103T000000Z", "20990103T000000Z.lock"]
        assert sorted(p.name for p in (tmp_path / NAME / ".staging").iterdir()) == [
            "20990104T000000Z", "20990104T000000Z.lock"]  # a live writer's: kept
        rec = record(6)
        alive.add_article(rec, article_rows(rec, RowContext(alive.snapshot_id, T0)))
        alive.publish({})
    assert list((tmp_path / NAME / ".staging").iterdir()) == []


FULL_DISK = """
import resource, signal, sys
from datetime import datetime, UTC
from harvester.errors import OutputError
from harvester.records import RowContext, article_rows
from harvester.sinks import SnapshotWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # writes past this fail: EFBIG
try:
    with SnapshotWriter(sys.argv[1], "demo", snapshot_id="20990101T000000Z") as w:
        ctx = RowContext(w.snapshot_id, datetime.now(UTC))
        for i in range(2_000):
            rec = {"id": 100 + i, "title": "x" * 500}
            w.add_article(rec, article_rows(rec, ctx))
        w.publish({})
except OutputError as e:
    print(e)
    sys.exit(3)
"""


def test_a_full_disk_is_an_output_error_naming_the_file(tmp_path):
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], cwd=ROOT_DIR,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    message = done.stdout.strip()
    assert "\n" not in message and str(tmp_path / NAME / ".staging") in message
    assert "File too large" in message
    assert snapshot_dirs(tmp_path) == []
    assert not (tmp_path / NAME / ".staging" / "20990101T000000Z").exists()  # aborted


# --- shapes of output ----------------------------------------------------------------------


def test_empty_snapshot_has_every_table_with_its_schema(tmp_path):
    path = write_snapshot(tmp_path, [])
    for table, schema in SCHEMAS.items():
        read = pq.read_schema(path / table / "part-00000.parquet")
        assert read.equals(schema, check_metadata=True), table
        assert pq.read_metadata(path / table / "part-00000.parquet").num_rows == 0
    files = read_manifest(path)["files"]
    assert all(entry["rows"] == 0 for entry in files.values())
    assert {"articles.ndjson", "stats.ndjson", "errors.ndjson"} <= set(files)
    cols = duck().execute(f"DESCRIBE SELECT * FROM read_parquet('{path}/authors/*.parquet', "
                          f"hive_partitioning = false)").fetchall()
    assert [c[:2] for c in cols] == [
        ("snapshot_id", "VARCHAR"), ("article_id", "BIGINT"), ("version", "INTEGER"),
        ("position", "INTEGER"), ("author_id", "BIGINT"), ("full_name", "VARCHAR"),
        ("first_name", "VARCHAR"), ("last_name", "VARCHAR"), ("orcid_id", "VARCHAR"),
        ("is_active", "BOOLEAN"), ("url_name", "VARCHAR")]


def test_row_groups_follow_row_group_size(tmp_path):
    records = [{"id": i, "title": f"t{i}", "tags": ["a", "b", "c"]} for i in range(1, 12_001)]
    writer = SnapshotWriter(tmp_path, NAME, formats=frozenset({"parquet"}))
    with writer:
        ctx = RowContext(writer.snapshot_id, T0)
        for n, r in enumerate(records, 1):
            writer.add_article(r, article_rows(r, ctx))
            if n == 2_499:
                assert (writer.staging / "articles" / "part-00000.parquet"  # just "PAR1"
                        ).stat().st_size == 4
            if n == 2_500:  # a full row group goes out before any more rows come: memory
                # stays bounded (it is encoded on the writer's thread: wait for it, not a row)
                deadline = time.monotonic() + 30
                while (writer.staging / "articles" / "part-00000.parquet").stat().st_size == 4 and \
                        time.monotonic() < deadline:
                    time.sleep(0.01)
                assert (writer.staging / "articles" / "part-00000.parquet").stat().st_size > 4
        path = writer.publish({})
    meta = pq.read_metadata(path / "articles" / "part-00000.parquet")
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2_500] * 4 + [
        2_000]
    # narrow tables (no record JSON in them) have row groups ten times as long: fewer footer
    # entries, and their rows are small
    tags = pq.read_metadata(path / "tags" / "part-00000.parquet")
    assert [tags.row_group(i).num_rows for i in range(tags.num_row_groups)] == [25_000, 11_000]
    assert not (path / "articles.ndjson").exists()  # parquet only
    assert (path / "errors.ndjson").exists()  # the error log is always kept


def test_a_table_is_split_into_part_files_of_file_row_groups(tmp_path):
    # Parquet keeps every row group's footer entry in memory until the file closes: a part
    # file closes after file_row_groups row groups, so memory does not grow with the records
    records = [{"id": i, "title": f"t{i}", "tags": ["a", "b"]} for i in range(1, 4_501)]
    writer = SnapshotWriter(tmp_path, NAME, formats=frozenset({"parquet"}), row_group_size=500,
                            narrow_row_group_size=1_000, file_row_groups=3)
    with writer:
        ctx = RowContext(writer.snapshot_id, T0)
        for r in records:
            writer.add_article(r, article_rows(r, ctx))
        path = writer.publish({})
    parts = sorted(p.name for p in (path / "articles").iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for name in parts:  # 3 row groups of 500 each: 4,500 records fill the third exactly
        meta = pq.read_metadata(path / "articles" / name)
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [500] * 3
    tags = [pq.read_metadata(path / "tags" / p) for p in sorted(os.listdir(path / "tags"))]
    assert [m.num_rows for m in tags] == [3_000, 3_000, 3_000]  # 9,000 rows in 1,000s
    # read back whole: a folder (pyarrow), a glob (DuckDB), rows in id order across the parts
    assert pq.read_table(path / "articles").column("article_id").to_pylist() == list(
        range(1, 4_501))
    assert duckdb.connect().execute(
        f"SELECT count(*), count(DISTINCT article_id), min(article_id), max(article_id) "
        f"FROM '{path}/articles/*.parquet'").fetchall() == [(4_500, 4_500, 1, 4_500)]
    manifest = read_manifest(path)
    assert manifest["tables"]["articles"] == {
        "rows": 4_500, "files": [f"articles/{p}" for p in parts]}
    assert manifest["tables"]["tags"]["rows"] == 9_000
    assert manifest["tables"]["funding"] == {"rows": 0, "files": ["funding/part-00000.parquet"]}
    assert table_files(manifest["files"], "tags") == manifest["tables"]["tags"]["files"]
    # snapshots of schema version 1 had one file a table
    assert table_files({"tags.parquet": {}, "tags.ndjson": {}}, "tags") == ["tags.parquet"]
    assert table_files({f"tags/part-{n:05d}.parquet": {} for n in (10, 9, 0)}, "tags") == [
        "tags/part-00000.parquet", "tags/part-00009.parquet", "tags/part-00010.parquet"]


def test_rows_waiting_for_their_row_group_are_held_in_one_piece(tmp_path, monkeypatch):
    # 300 rendered chunks of a few tag rows each stay under one 25,000-row group: they are
    # copied into one piece as they come (each chunk's buffers, kept for hundreds of chunks,
    # pinned the C heap and the peak crept up), and the file has every row in order
    writer = SnapshotWriter(tmp_path, NAME, formats=frozenset({"parquet"}))
    with writer:
        ctx = RowContext(writer.snapshot_id, T0)
        for n in range(300):
            rows = article_rows({"id": n + 1, "tags": [f"t{n}-{k}" for k in range(1 + n % 4)]},
                                ctx)["tags"]
            writer.add_rendered(SimpleNamespace(lines={}, tables={
                "tags": rows_to_table("tags", rows, writer.snapshot_id)}))
            pending = writer._pending["tags"]
            assert len(pending) <= sinks.PENDING_PIECES
            assert all(c.num_chunks == 1 for c in pending[0].columns)
        path = writer.publish({})
    tags = pq.read_table(path / "tags")
    assert tags.column("tag").to_pylist() == [
        f"t{n}-{k}" for n in range(300) for k in range(1 + n % 4)]
    assert tags.column("article_id").to_pylist() == [
        n + 1 for n in range(300) for _ in range(1 + n % 4)]

    # big pieces (the articles table's, a few MB a chunk) are left as they are: a copy would
    # double them, and they wait only a dozen chunks
    monkeypatch.setattr(sinks, "PENDING_COPY", 0)
    writer = SnapshotWriter(tmp_path, NAME, formats=frozenset({"parquet"}))
    with writer:
        ctx = RowContext(writer.snapshot_id, T0)
        for n in range(20):
            writer.add_rendered(SimpleNamespace(lines={}, tables={"tags": rows_to_table(
                "tags", article_rows({"id": n + 1, "tags": ["a"]}, ctx)["tags"])}))
        assert len(writer._pending["tags"]) == 20


def test_ndjson_only_writes_no_parquet(tmp_path):
    path = write_snapshot(tmp_path, [record(1)], formats=frozenset({"ndjson"}))
    assert sorted(p.name for p in path.iterdir()) == [
        "articles.ndjson", "errors.ndjson", "manifest.json", "stats.ndjson"]


def test_collections_and_projects_through_add_rows(tmp_path):
    writer = SnapshotWriter(tmp_path, NAME, row_group_size=1)
    with writer:
        ctx = RowContext(writer.snapshot_id, T0)
        coll = {"id": 6100001, "title": "Lake District", "public": True, "articles_count": 2,
                "published_date": "2023-01-02T03:04:05Z", "group_id": 0}
        for table, rows in side_rows("collection", {"record": coll, "articles": [1, 2]},
                                     ctx).items():
            writer.add_rows(table, rows)
        for table, rows in side_rows("project", {"record": {"id": 88001, "title": "Ants"},
                                                 "articles": [{"id": 3}]}, ctx).items():
            writer.add_rows(table, rows)
        with pytest.raises(ValueError, match="add_article"):
            writer.add_rows("articles", [])
        with pytest.raises(ValueError, match="unknown table"):
            writer.add_rows("nope", [])
        path = writer.publish({})
    con = duck()
    got = con.execute(f"SELECT c.collection_id, c.group_id, c.is_public, "
                      f"list(ca.article_id ORDER BY ca.article_id) "
                      f"FROM '{path}/collections/*.parquet' c "
                      f"JOIN '{path}/collection_articles/*.parquet' ca USING (collection_id) "
                      f"GROUP BY ALL").fetchall()
    assert got == [(6100001, None, True, [1, 2])]
    assert pq.read_table(path / "project_articles").to_pylist() == [
        {"snapshot_id": writer.snapshot_id, "project_id": 88001, "article_id": 3}]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"snapshot_id": "other", "collection_id": 1, "article_id": 1}, "another snapshot"),
        ({"collection_id": "x", "article_id": 1}, "do not fit its schema"),
        ({"collection_id": 1}, "nulls in column 'article_id'"),
    ],
)
def test_rows_that_do_not_fit_fail_the_writer(tmp_path, row, message):
    with SnapshotWriter(tmp_path, NAME, row_group_size=1, narrow_row_group_size=1) as writer:
        with pytest.raises(ValueError, match=message):
            writer.add_rows("collection_articles", [{"snapshot_id": writer.snapshot_id, **row}])
        with pytest.raises(RuntimeError, match="failed"):  # only abort() is left
            writer.add_rows("collection_articles", [])
    assert snapshot_dirs(tmp_path) == [] and not writer.staging.exists()


# --- output problems -----------------------------------------------------------------------


def test_an_unwritable_root_is_an_output_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError) as info:
        SnapshotWriter(blocker / "out", NAME).open()
    message = str(info.value)
    assert "\n" not in message and str(blocker / "out" / NAME) in message

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / NAME).write_text("a file where the harvest directory should be")
    with pytest.raises(OutputError, match=r"cannot create directory .*demo"):
        SnapshotWriter(tmp_path / "out", NAME).open()
    with pytest.raises(OutputError, match="cannot list"):
        list_snapshots(tmp_path / "out", NAME)


def test_read_manifest_errors_name_the_file(tmp_path):
    path = write_snapshot(tmp_path, [record(1)])
    assert read_manifest(path / "manifest.json") == read_manifest(path)
    (path / "manifest.json").write_text('{"files": ')
    with pytest.raises(OutputError, match=r"malformed manifest .*manifest\.json"):
        read_manifest(path)
    (path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(OutputError, match="expected a JSON object"):
        read_manifest(path)
    # the keys readers take as mappings, checked once for all of them
    for doc, says in (({}, "files is not an object"), ({"files": [1]}, "files is not an object"),
                      ({"files": {}, "ids": "x"}, "ids is not an object"),
                      ({"files": {"a": 5}}, r"files\['a'\] is not an object with integer rows"),
                      ({"files": {"a": {"rows": "9", "sha256": ""}}}, r"files\[.a.\] .*rows")):
        (path / "manifest.json").write_bytes(orjson.dumps(doc))
        with pytest.raises(OutputError, match=rf"malformed manifest .*manifest\.json: {says}"):
            read_manifest(path)
    with pytest.raises(OutputError, match=r"cannot read manifest .*nowhere"):
        read_manifest(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "kwargs",
    [{"formats": frozenset()}, {"formats": frozenset({"csv"})}, {"row_group_size": 0},
     {"narrow_row_group_size": 0},
     {"snapshot_id": "../escape"}],
)
def test_bad_writer_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        SnapshotWriter(tmp_path, NAME, **kwargs)
    with pytest.raises(ValueError):
        SnapshotWriter(tmp_path, "../elsewhere")


# --- the reading recipes in docs/TABLES.md -------------------------------------------------


def test_docs_recipes_read_every_snapshot_as_one_dataset(tmp_path, monkeypatch):
    write_snapshot(tmp_path, [record(i) for i in range(3)], snapshot_id="20240501T120000Z")
    write_snapshot(tmp_path, [record(i) for i in range(5)], snapshot_id="20240502T120000Z")
    (tmp_path / NAME / ".staging" / "leftover").mkdir()
    monkeypatch.chdir(tmp_path.parent)
    out = tmp_path.name

    # pyarrow.dataset, as documented
    files = [str(f) for p in list_snapshots(out, NAME)
             for f in sorted(p.glob("articles/*.parquet"))]
    dataset = ds.dataset(
        files,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("snapshot", pa.string())]), flavor="hive"),
        partition_base_dir=f"{out}/{NAME}",
    )
    table = dataset.to_table()
    assert table.num_rows == 8
    assert sorted(set(table.column("snapshot").to_pylist())) == [
        "20240501T120000Z", "20240502T120000Z"]
    assert table.column("snapshot").to_pylist() == table.column("snapshot_id").to_pylist()
    one = dataset.to_table(filter=ds.field("snapshot") == "20240501T120000Z")
    assert one.num_rows == 3

    # DuckDB, as documented
    con = duck()
    got = con.execute(
        f"SELECT snapshot, count(*) AS articles, count(DISTINCT article_id) AS ids "
        f"FROM read_parquet('{out}/{NAME}/snapshot=*/articles/*.parquet', "
        f"hive_partitioning = true) "
        f"GROUP BY snapshot ORDER BY snapshot").fetchall()
    assert got == [("20240501T120000Z", 3, 3), ("20240502T120000Z", 5, 5)]
    got = con.execute(f"""
        SELECT a.article_id, au.position, au.full_name
        FROM read_parquet('{out}/{NAME}/snapshot=*/articles/*.parquet', hive_partitioning = true) a
        JOIN read_parquet('{out}/{NAME}/snapshot=*/authors/*.parquet', hive_partitioning = true) au
          USING (snapshot_id, article_id)
        WHERE a.snapshot = (SELECT max(snapshot)
                            FROM read_parquet('{out}/{NAME}/snapshot=*/articles/*.parquet',
                                              hive_partitioning = true))
        ORDER BY a.article_id, au.position""").fetchall()
    assert len(got) == sum(1 + i % 3 for i in range(5))
    assert got[:3] == [(10_000_000, 0, "Author 0 of 0"), (10_000_001, 0, "Author 0 of 1"),
                       (10_000_001, 1, "Author 1 of 1")]
    documented = "read_parquet('output/NAME/snapshot=*/articles/*.parquet', " \
        "hive_partitioning = true)"
    assert documented in (ROOT_DIR / "docs" / "TABLES.md").read_text(encoding="utf-8")
    assert 'for f in sorted(p.glob("articles/*.parquet"))' in (
        ROOT_DIR / "docs" / "TABLES.md").read_text(encoding="utf-8")


def test_long_text_columns_carry_no_statistics(tmp_path):
    path = write_snapshot(tmp_path, [record(i) for i in range(1, 4)])
    meta = pq.read_metadata(path / "articles" / "part-00000.parquet").row_group(0)
    names = [meta.column(i).path_in_schema for i in range(meta.num_columns)]
    stats = {n: meta.column(i).statistics for i, n in enumerate(names)}
    assert {"raw", "description", "citation"} <= set(names)
    assert all(stats[n] is None or not stats[n].has_min_max for n in NO_STATISTICS)
    assert stats["article_id"].has_min_max  # what readers prune row groups by
