"""Writing a snapshot: chunking does not change it, and records come out exactly as served."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from aiohttp import web

from harvester.errors import OutputError
from harvester.journal import DONE, FAILED, GONE, LARGE_BLOB, Journal, Outcome, pack, unpack
from harvester.journalrows import chunks
from harvester.pipeline import Harvest
from harvester.render import RenderSpec, render
from harvester.schema import SCHEMAS
from harvester.simulator import Simulator
from harvester.store import list_snapshots
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"snapshot_id", "fetched_at"}  # differ between two runs, by design


def tables(snapshot: Path) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows without the per-run columns, in file order."""
    out = {}
    for table in SCHEMAS:
        rows = pq.read_table(snapshot / table).to_pylist()
        out[table] = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    return out


async def test_chunk_size_does_not_change_the_snapshot(sim: Simulator, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source = [{"kind": "ids", "ids": sorted(sim.corpus.ids)}]
    whole = await Harvest(write_config(tmp_path / "a", sim, source)).run()
    monkeypatch.setattr("harvester.pipeline.CHUNK_RECORDS", 23)  # 400 items: 18 chunks
    monkeypatch.setattr("harvester.pipeline.CHUNK_BYTES", 20_000)  # and smaller by bytes
    chunked = await Harvest(write_config(tmp_path / "b", sim, source)).run()
    assert whole.snapshot is not None and chunked.snapshot is not None
    assert whole.manifest["ids"]["fetched"] == chunked.manifest["ids"]["fetched"] == 400
    a, b = tables(whole.snapshot), tables(chunked.snapshot)
    assert sum(len(rows) for rows in a.values()) > 1_500
    assert a == b
    assert (whole.snapshot / "articles.ndjson").read_bytes() == \
        (chunked.snapshot / "articles.ndjson").read_bytes()
    meta = pq.read_metadata(chunked.snapshot / "files" / "part-00000.parquet")
    assert meta.num_rows > 1_000 and meta.num_row_groups == 1  # row groups as configured


def journal_of(tmp_path: Path, bodies: list[bytes]) -> Journal:
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    ids = [orjson.loads(b)["id"] for b in bodies]
    journal.run(journal.add_ids, 0, ids)
    journal.run(journal.store, [
        Outcome(i, DONE, body=b, stats={"views": i}, fetched_at="2026-11-27T05:00:00Z")
        for i, b in zip(ids, bodies, strict=True)])
    return journal


def test_failure_reasons_leave_gone_ids_out_and_name_a_missing_reason(tmp_path: Path) -> None:
    journal = journal_of(tmp_path, synthetic(1))
    try:
        journal.run(journal.add_ids, 0, [2, 3, 4, 5])
        journal.run(journal.store, [
            Outcome(2, FAILED, error={"reason": "500", "message": "GET b -> 500"}),
            Outcome(3, FAILED, error={"reason": "500", "message": "GET a -> 500"}),
            Outcome(4, FAILED),  # no error said: still counted, never a null key
            Outcome(5, GONE, error={"reason": "not-found", "message": "GET c -> 404"})])
        assert journal.run(journal.failure_reasons) == [
            ("500", 2, "GET a -> 500"), ("unknown", 1, None)]
        assert journal.run(journal.failure_summary) == (
            "failed: 2 500, 1 unknown, such as GET a -> 500")
        journal.run(journal.store, [Outcome(i, FAILED) for i in (2, 3)])  # retried: no reason
        assert journal.run(journal.failure_summary) == "failed: 3 unknown"
    finally:
        journal.close()


def synthetic(n: int, pad: int = 0) -> list[bytes]:
    return [orjson.dumps({"id": i, "title": f"t{i}", "version": 1, "tags": ["a", "b"],
                          "authors": [{"id": i, "full_name": "A"}], "pad": "x" * pad,
                          "files": [{"id": i * 10, "name": "x.csv", "size": i}]})
            for i in range(1, n + 1)]


def test_chunks_end_at_a_record_count_or_a_byte_size(tmp_path: Path) -> None:
    journal = journal_of(tmp_path, synthetic(30, pad=100_000))
    try:
        by_count = journal.run(lambda: [len(c) for c in chunks(journal.db, 7, 1 << 30)])
        by_bytes = journal.run(lambda: [len(c) for c in chunks(journal.db, 1_000, 1)])
        one_mb = journal.run(lambda: [sum(r.size for r in c) for c in chunks(journal.db, 1_000,
                                                                                   1 << 20)])
    finally:
        journal.close()
    assert by_count == [7, 7, 7, 7, 2]
    assert by_bytes == [1] * 30  # a record bigger than the bound is a chunk of its own
    # a chunk ends at the record that reaches the bound: at most one record (100 KB) past it
    assert len(one_mb) == 3 and all((1 << 20) <= size < (1 << 20) + 101_000
                                    for size in one_mb[:-1])


def test_large_and_small_bodies_read_back_as_stored(tmp_path: Path) -> None:
    """Bodies past LARGE_BLOB go through blob handles, the rest through bound values."""
    noise = base64.b64encode(random.Random(7).randbytes(LARGE_BLOB)).decode()  # LZ4 keeps it
    bodies = [orjson.dumps({"id": i, "title": f"t{i}", "pad": noise if i % 2 else ""})
              for i in range(1, 5)]
    journal = journal_of(tmp_path, bodies)
    try:
        stored = journal.run(lambda: journal.db.execute(
            "SELECT length(body) > ? FROM records ORDER BY article_id", (LARGE_BLOB,)).fetchall())
        read = journal.run(lambda: [r.body for c in chunks(journal.db, 1_000, 1 << 30) for r in c])
    finally:
        journal.close()
    assert [large for (large,) in stored] == [1, 0, 1, 0]
    assert read == bodies


BIG_LIST = orjson.dumps([{"id": i, "name": f"f{i}"} for i in range(50_000)])


@pytest.mark.parametrize("data", [b"", b"{}", "{\"t\": \"\u00e9t\u00e9\"}".encode(), BIG_LIST])
def test_journal_blobs_round_trip_smaller(data: bytes) -> None:
    blob = pack(data)
    assert unpack(blob) == data
    if len(data) > 1_000:
        assert len(blob) < len(data) / 3


def test_a_journal_of_another_version_is_refused_naming_the_fix(tmp_path: Path) -> None:
    """Journals are never migrated: one of another version is refused, and says what to do."""
    path = tmp_path / "journal.sqlite"
    journal_of(tmp_path, synthetic(1)).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=1")
    with pytest.raises(OutputError, match=r"journal\.sqlite: cannot open the run journal: "
                       r"written by another version .* \(move journal\.sqlite\* aside and the "
                       "run starts over"):
        journal = Journal(path)
        try:
            journal.open()
        finally:
            journal.close()


def test_a_corrupt_journal_blob_fails_loudly() -> None:
    blob = bytearray(pack(b'{"id": 1, "title": "' + b"x" * 5_000 + b'"}'))
    blob[12:40] = b"\xff" * 28
    with pytest.raises(Exception, match=r"(?i)lz4"):
        unpack(bytes(blob))


# -- exactly as served -------------------------------------------------------------------------

BIG = 2 ** 70
DEEP = 600


def served_bodies() -> dict[int, bytes]:
    """Records orjson cannot round-trip: a 2^70 integer, a value nested 600 deep, a key given
    twice; and one served with whitespace and escapes, which the line keeps minified."""
    deep = b"[" * DEEP + b"1" + b"]" * DEEP
    return {
        1: b'{"id": 1, "title": "big", "version": 1, "size": %d, "n": [%d, -%d]}' % (
            BIG, BIG, BIG),
        2: b'{"id":2,"title":"deep","version":1,"nest":' + deep + b',"custom_fields":'
           b'[{"name":"d","value":' + deep + b'}]}',
        3: b'{"id":3,"title":"first","title":"twice","version":1}',
        4: b'{\n  "id" : 4,\n  "title" : "caf\\u00e9 \\"q\\"  x",\n  "version" : 1.0e0\n}',
    }


async def test_records_come_out_exactly_as_served(tmp_path: Path) -> None:
    bodies = served_bodies()

    async def article(request: web.Request) -> web.Response:
        return web.Response(body=bodies[int(request.match_info["id"])],
                            content_type="application/json")

    async def total(request: web.Request) -> web.Response:
        return web.json_response({"totals": 7})

    app = web.Application()
    app.router.add_get("/v2/articles/{id}", article)
    app.router.add_get("/total/{counter}/article/{id}", total)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "t", "api": {"url": f"{url}/v2"}, "stats": {"url": url},
        "http": {"rate": {"requests": 1_000, "per": 1}, "concurrency": 2},
        "output": {"dir": str(tmp_path / "out")},
        "sources": [{"kind": "ids", "ids": sorted(bodies)}]}))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harvester", "run", str(config), "--quiet", cwd=ROOT,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, err.decode()
    [snapshot] = list_snapshots(tmp_path / "out", "t")
    lines = (snapshot / "articles.ndjson").read_bytes().splitlines()
    assert len(lines) == len(bodies)
    articles = pq.read_table(snapshot / "articles").to_pylist()
    for line, row, (aid, body) in zip(lines, articles, sorted(bodies.items()), strict=True):
        assert json.loads(line) == json.loads(body)  # every number and key, by value
        assert row["article_id"] == aid and row["raw"].encode() == line  # the served text
    assert json.loads(lines[0])["n"] == [BIG, -BIG]
    assert lines[2] == b'{"id":3,"title":"first","title":"twice","version":1}'  # both kept
    assert lines[3] == b'{"id":4,"title":"caf\\u00e9 \\"q\\"  x","version":1.0e0}'
    assert articles[0]["size"] is None  # no int64 holds 2^70: null, and raw keeps it
    assert articles[2]["title"] == "twice"
    manifest = orjson.loads((snapshot / "manifest.json").read_bytes())
    assert manifest["served_json"]["records_with_duplicate_keys"] == 1
    assert len({row["content_hash"] for row in articles}) == len(bodies)


def test_a_record_an_older_release_kept_is_left_out_never_fatal(tmp_path: Path) -> None:
    """A journal written before the id checks were exact may hold `"id": true` (in the record
    or an older version's): that item is left out of the snapshot; the others are written."""
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    at = "2026-11-27T05:00:00Z"
    try:
        journal.run(journal.add_ids, 0, [1, 2, 3])
        journal.run(journal.store, [
            Outcome(1, DONE, body=b'{"id":true,"title":"t1"}', stats={"views": 1},
                    fetched_at=at),
            Outcome(2, DONE, body=b'{"id":2,"title":"t2"}', stats={"views": 2}, fetched_at=at),
            Outcome(3, DONE, body=b'{"id":3,"title":"t3","version":2}', fetched_at=at,
                    payloads={"article_id": 3, "versions": {
                        "list": [{"version": 1}, {"version": 2}],
                        "records": [{"id": True, "version": 1}]}})])
        spec = RenderSpec("20261127T050000Z", ("ids",), "public", ndjson=True, parquet=True)
        (out,) = journal.run(lambda: [render(spec, c) for c in chunks(journal.db, 100, 1 << 20)])
    finally:
        journal.close()
    assert out.tables["articles"].column("article_id").to_pylist() == [2]
    assert out.tables["stats"].column("article_id").to_pylist() == [2]
    assert "versions" not in out.tables and out.articles == 1
    assert out.lines["articles.ndjson"] == [b'{"id":2,"title":"t2"}']
    # each named for errors.ndjson: the pipeline then publishes the snapshot as partial
    assert [(e["id"], e["reason"]) for e in out.left_out] == [(1, "bad-record"), (3, "bad-record")]
