"""Chaos: with 10% of requests failing in every way the simulator knows, nothing is lost.

The same harvest runs twice against one corpus, once clean and once with 429 + Retry-After,
500/502/503, connection resets, truncated bodies and stalls injected; every Parquet table and
NDJSON file must come out the same, row for row, while the rate limit and every Retry-After hold.
The harvest runs as `harvester run` in its own process, the simulator on a thread of this one:
arrival times in the simulator's log are then the server's own, not delayed by the harvester's
event loop.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from harvester.simulator import SimulatorThread
from harvester.simulator.settings import FAULT_KINDS, SimSettings
from harvester.store import latest_snapshot
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
# 100 requests/s; the client's safety margin is 2.5% of the window, 50 ms here, which leaves
# room for a loaded machine's scheduling jitter between the two processes.
RATE = {"requests": 200, "per": 2.0}
PER_RUN_COLUMNS = ("snapshot_id", "fetched_at")  # what differs between two runs by design


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    # stalls outlast the read timeout below; injected 429s ask for 0.2 s
    settings = SimSettings(items=120, seed=5, stall_seconds=0.4, fault_retry_after=0.2)
    with SimulatorThread(settings) as s:
        yield s


def tables(snapshot: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for folder in sorted(p for p in snapshot.iterdir() if p.is_dir()):  # a table's parts
        table = pq.read_table(folder)
        keep = [c for c in table.column_names if c not in PER_RUN_COLUMNS]
        out[folder.name] = table.select(keep).to_pylist()
    return out


def lines(path: Path) -> list[Any]:
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    for row in rows:
        for column in PER_RUN_COLUMNS:
            row.pop(column, None)
    return rows


def harvest(sim: SimulatorThread, tmp_path: Path, name: str) -> Path:
    cfg = write_config(tmp_path / name, sim, [{"kind": "articles"}], name=name, http={
        "rate": RATE,
        "concurrency": 6,
        "timeout": {"connect": 2, "read": 0.15, "total": 10},
        "retry": {"attempts": 12, "backoff_base": 0.01, "backoff_max": 0.05},
    })
    run = subprocess.run([sys.executable, "-m", "harvester", "run", cfg.path, "--quiet"],
                         cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr.decode()  # 0: published, no id failed
    snapshot = latest_snapshot(cfg.output.dir, name)
    assert snapshot is not None
    return snapshot


@pytest.mark.timing
def test_ten_percent_faults_of_every_kind_lose_nothing(
    sim: SimulatorThread, tmp_path: Path
) -> None:
    clean = harvest(sim, tmp_path, "clean")
    assert not any(e.fault for e in sim.log.entries)

    sim.log.clear()
    sim.update(fault_rate=0.1, fault_kinds=FAULT_KINDS)
    chaos = harvest(sim, tmp_path, "chaos")

    injected = {e.fault for e in sim.log.entries if e.fault}
    assert injected == set(FAULT_KINDS)  # every kind of trouble really happened
    assert sum(1 for e in sim.log.entries if e.fault) >= 0.05 * len(sim.log.entries)

    expected, got = tables(clean), tables(chaos)
    assert sorted(got) == sorted(expected)
    assert len(expected["articles"]) == len(sim.corpus.ids)
    assert len(expected["stats"]) == 3 * len(sim.corpus.ids)
    assert len(expected["files"]) > 0
    for table, rows in expected.items():
        assert got[table] == rows, table  # row for row, in the same order
    assert (chaos / "articles.ndjson").read_bytes() == (clean / "articles.ndjson").read_bytes()
    assert lines(chaos / "stats.ndjson") == lines(clean / "stats.ndjson")
    assert (chaos / "errors.ndjson").read_bytes() == b""

    # polite throughout: no window over the limit, no request inside a Retry-After
    assert sim.log.peak_in_window(None, RATE["per"]) <= RATE["requests"]
    assert sum(1 for e in sim.log.entries if e.status == 429) > 0
    assert sim.log.retry_after_violations("api") == 0
    assert sim.log.retry_after_violations("stats") == 0
