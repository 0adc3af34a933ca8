"""Writing a snapshot with worker processes: same snapshot, no worker left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from harvester import render
from harvester.pipeline import Harvest
from harvester.records import SCHEMAS
from harvester.render import ChunkRenderer, Packed, RenderSpec, auto_workers
from harvester.simulator import Simulator
from harvester.state import DONE, Journal, Outcome, pack, unpack
from tests.conftest import write_config

VOLATILE = {"snapshot_id", "fetched_at"}  # differ between two runs, by design


def tables(snapshot: Path) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows without the per-run columns, in file order."""
    out = {}
    for table in SCHEMAS:
        rows = pq.read_table(snapshot / table).to_pylist()
        out[table] = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    return out


def stats_lines(snapshot: Path) -> list[dict[str, Any]]:
    lines = (snapshot / "stats.ndjson").read_bytes().splitlines()
    return [{k: v for k, v in orjson.loads(x).items() if k not in VOLATILE} for x in lines]


STARTS = ["fork", "spawn"] if sys.platform == "linux" else ["spawn"]


@pytest.mark.parametrize("start", STARTS)
async def test_workers_write_the_same_snapshot(sim: Simulator, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               start: str) -> None:
    monkeypatch.setattr(render, "CHUNK_SHARED", 23)  # 400 items: 18 chunks, spread out
    monkeypatch.setenv("HARVESTER_RENDER_START", start)
    source = [{"kind": "ids", "ids": sorted(sim.corpus.ids)}]
    alone = await Harvest(write_config(tmp_path / "a", sim, source,
                                       output={"workers": 0})).run()
    shared = await Harvest(write_config(tmp_path / "b", sim, source,
                                        output={"workers": 2})).run()
    assert alone.snapshot is not None and shared.snapshot is not None
    assert alone.manifest["ids"]["fetched"] == shared.manifest["ids"]["fetched"] == 400
    a, b = tables(alone.snapshot), tables(shared.snapshot)
    assert sum(len(rows) for rows in a.values()) > 1_500
    assert a == b
    assert (alone.snapshot / "articles.ndjson").read_bytes() == \
        (shared.snapshot / "articles.ndjson").read_bytes()
    assert stats_lines(alone.snapshot) == stats_lines(shared.snapshot)
    # row groups as configured, whoever rendered the rows
    meta = pq.read_metadata(shared.snapshot / "files" / "part-00000.parquet")
    assert meta.num_rows > 1_000 and meta.num_row_groups == 1


def packed_chunks(tmp_path: Path, n: int, size: int) -> list[list[Packed]]:
    """Journal rows of n synthetic records, as the journal hands them to the renderer."""
    journal = Journal(tmp_path / "journal.sqlite")
    journal.open()
    try:
        records = [{"id": i, "title": f"t{i}", "version": 1, "tags": ["a", "b"],
                    "authors": [{"id": i, "full_name": "A"}],
                    "files": [{"id": i * 10, "name": "x.csv", "size": i}]}
                   for i in range(1, n + 1)]
        journal.run(journal.add_ids, 0, [r["id"] for r in records])
        journal.run(journal.store, [
            Outcome(r["id"], DONE, body=orjson.dumps(r), stats={"views": r["id"]},
                    fetched_at="2026-11-27T05:00:00Z") for r in records])
        return list(journal.run(lambda: list(journal.packed_chunks(size))))
    finally:
        journal.close()


SPEC = RenderSpec(snapshot_id="20261127T050000Z", sources=("s",), scope="public", ndjson=True,
                  parquet=True)


def flat(results: list[render.Rendered]) -> tuple[bytes, dict[str, list[Any]]]:
    lines = b"".join(r.lines["articles.ndjson"] for r in results)
    rows: dict[str, list[Any]] = {}
    for r in results:
        for table, t in r.tables.items():
            rows.setdefault(table, []).extend(t.to_pylist())
    return lines, rows


BIG_LIST = orjson.dumps([{"id": i, "name": f"f{i}"} for i in range(50_000)])


@pytest.mark.parametrize("data", [b"", b"{}", "{\"t\": \"\u00e9t\u00e9\"}".encode(), BIG_LIST])
def test_journal_blobs_round_trip_smaller(data: bytes) -> None:
    blob = pack(data)
    assert unpack(blob) == data
    assert blob[:1] == b"\x00"  # LZ4, not zlib (whose streams start with 0x78)
    if len(data) > 1_000:
        assert len(blob) < len(data) / 3


def test_a_journal_of_zlib_blobs_still_renders(tmp_path: Path) -> None:
    """Journals written before the LZ4 blobs (an interrupted run, resumed after an upgrade)."""
    chunks = packed_chunks(tmp_path, 30, 10)
    legacy = [[(aid, mask, zlib.compress(unpack(body), 1), files, stats, at,
                None if extra is None else zlib.compress(unpack(extra), 1))
               for aid, mask, body, files, stats, at, extra in chunk] for chunk in chunks]
    assert legacy[0][0][2][:1] == b"\x78"
    assert flat([render.render(SPEC, c) for c in legacy]) == \
        flat([render.render(SPEC, c) for c in chunks])


def test_a_corrupt_journal_blob_fails_loudly() -> None:
    blob = bytearray(pack(b'{"id": 1, "title": "' + b"x" * 5_000 + b'"}'))
    blob[12:40] = b"\xff" * 28
    with pytest.raises(Exception, match=r"(?i)lz4"):
        unpack(bytes(blob))


@pytest.mark.parametrize("start", STARTS)
def test_a_dead_worker_leaves_its_chunks_to_the_caller(tmp_path: Path, start: str) -> None:
    chunks = packed_chunks(tmp_path, 300, 10)
    expected = flat([render.render(SPEC, c) for c in chunks])
    with ChunkRenderer(2, start) as renderer:
        first = renderer._workers[0].proc
        first.kill()
        first.wait()
        got = flat(list(renderer.map(SPEC, chunks)))
        assert renderer.fallbacks >= 1
    assert got == expected
    assert got[0].count(b"\n") == 300 and len(got[1]["files"]) == 300


@pytest.mark.parametrize("start", STARTS)
def test_a_chunk_a_worker_fails_on_raises_here_as_without_workers(tmp_path: Path,
                                                                  start: str) -> None:
    chunks = packed_chunks(tmp_path, 40, 10)
    aid, mask, _body, *rest = chunks[2][3]
    chunks[2][3] = (aid, mask, b"not zlib", *rest)
    with ChunkRenderer(1, start) as renderer, pytest.raises(Exception, match="incorrect header"):
        list(renderer.map(SPEC, chunks))


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_a_stuck_worker_is_killed_and_its_chunks_come_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "RESULT_TIMEOUT", 0.5)
    chunks = packed_chunks(tmp_path, 200, 10)
    expected = flat([render.render(SPEC, c) for c in chunks])
    with ChunkRenderer(1, "fork") as renderer:
        stuck = renderer._workers[0].proc
        os.kill(stuck.pid, signal.SIGSTOP)  # alive, never answering
        started = time.monotonic()
        got = flat(list(renderer.map(SPEC, chunks)))
        assert time.monotonic() - started < 10
        assert renderer.fallbacks >= 1 and renderer._workers[0].dead
        assert stuck.wait(timeout=5) == -signal.SIGKILL
    assert got == expected


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_a_forked_worker_keeps_none_of_the_parents_descriptors(tmp_path: Path) -> None:
    with open(tmp_path / "held", "wb") as held, ChunkRenderer(2, "fork") as renderer:
        theirs = [w.proc for w in renderer._workers]
        # both have answered, so both are past their start
        got = flat(list(renderer.map(SPEC, packed_chunks(tmp_path, 50, 10))))
        for proc in theirs:
            fds = {int(n): os.readlink(f"/proc/{proc.pid}/fd/{n}")
                   for n in os.listdir(f"/proc/{proc.pid}/fd")}
            # stdio, its chunk pipe and its result socket: no file, journal, nor the other
            # worker's pipe or socket
            assert len(fds) == 5, fds
            assert not any(str(tmp_path) in target for target in fds.values())
            kinds = sorted(t.split(":")[0] for fd, t in fds.items() if fd > 2)
            assert kinds == ["pipe", "socket"]
        assert held.fileno() > 2
    assert got[0].count(b"\n") == 50
    for proc in theirs:  # closing ended them: each saw its own EOF
        assert proc.returncode == 0


@pytest.mark.parametrize("start", STARTS)
def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path, start: str) -> None:
    script = ("import os, sys, time\n"
              "from harvester.render import ChunkRenderer\n"
              f"r = ChunkRenderer(2, {start!r})\n"
              "print(' '.join(str(w.proc.pid) for w in r._workers), flush=True)\n"
              "time.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          cwd=Path(__file__).resolve().parent.parent) as parent:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if _running(p)]
    assert alive == [], "render workers kept running after their parent was killed"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_auto_workers_by_run_size() -> None:
    assert auto_workers(500, cpus=8) == 0  # a worker's start-up would cost more than it saves
    assert auto_workers(200_000, cpus=1) == 0
    assert auto_workers(200_000, cpus=2) == 1
    assert auto_workers(200_000, cpus=64) == render.AUTO_MAX_WORKERS
    # a forked worker starts in milliseconds, a spawned one imports for a third of a second
    assert auto_workers(3_000, cpus=2, start="fork") == 1
    assert auto_workers(3_000, cpus=2, start="spawn") == 0


def test_start_method_by_platform_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARVESTER_RENDER_START", raising=False)
    assert render.start_method() == ("fork" if sys.platform == "linux" else "spawn")
    monkeypatch.setenv("HARVESTER_RENDER_START", "spawn")
    assert render.start_method() == "spawn"


@pytest.mark.parametrize("start", STARTS)
def test_closing_mid_run_does_not_wait_for_unread_results(tmp_path: Path, start: str) -> None:
    chunks = packed_chunks(tmp_path, 400, 100)
    renderer = ChunkRenderer(1, start)
    results = renderer.map(SPEC, chunks)
    next(results)  # the worker has chunks queued whose results are never read
    workers = list(renderer._workers)
    started = time.monotonic()
    renderer.close()
    assert time.monotonic() - started < 3
    assert len(workers) == 1 and workers[0].proc.returncode is not None
