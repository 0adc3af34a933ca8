"""The benchmark script (`make bench`) keeps working: --quick runs of every section, read back.

Nothing here is timed: the figures that depend on the machine (rates, ratios, speed-ups) are only
checked to be there. What does not depend on it is checked for its value: the simulator's log
never shows the rate exceeded, and the requests each harvest mode costs are those of the seeded
corpus.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_run(tmp_path: Path, sections: str) -> tuple[dict[str, Any], str]:
    """`run.py --quick --only SECTIONS`: the results it wrote, and what it printed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", sections,
         "--results", str(tmp_path)],
        capture_output=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    [written] = tmp_path.glob("bench-*.json")
    assert (tmp_path / "latest.json").read_bytes() == written.read_bytes()
    results = orjson.loads(written.read_bytes())
    assert results["quick"] is True
    return results, done.stdout.decode()


@pytest.mark.timing  # the politeness figures count arrivals to the millisecond: run alone
def test_quick_benchmark_politeness_holds_from_the_servers_log(tmp_path: Path) -> None:
    results, printed = quick_run(tmp_path, "politeness")
    rows = results["politeness"]["rows"]
    assert [(r["rate"], r["latency_ms"], r["concurrency"]) for r in rows] == [
        ("20/1s", 20, 4), ("1/1s", 20, 4), ("20/1s", 300, 8)]  # slow answers, many in flight
    for r in rows:
        assert r["peak_in_window"] <= r["limit"]
        assert r["status_429"] == 0 and r["retry_after_violations"] == 0
        assert r["requests"] >= r["in_span"] > 0
    assert "peak in any 1s window" in printed


@pytest.mark.slow
def test_quick_benchmark_run_reports_every_other_section(tmp_path: Path) -> None:
    results, printed = quick_run(tmp_path, "throughput,workshop,memory,modes")

    t = results["throughput"]
    assert len(t["runs"]) == 1 and t["items"] == 300 and t["latency_ms"] == 5
    run = t["runs"][0]
    assert run["requests"] == t["requests"] > 1_200  # the bare loop sent what the harvest did
    assert run["bare_rps"] > 0 and run["harvest_rps"] > 0 and t["ratio"] == run["ratio"]

    w = results["workshop"]
    assert [(r["latency_ms"], r["items"]) for r in w["rows"]] == [(5, 50), (20, 20), (100, 5)]
    for r in w["rows"]:  # the same items, one call after another and concurrently
        assert r["workshop_requests"] == 4 * r["items"]
        assert r["harvest_requests"] >= r["workshop_requests"]  # plus complete file lists

    m = results["memory"]
    assert [(r["items"], r["fetched"]) for r in m["rows"]] == [(1_000, 1_000), (3_000, 3_000)]
    assert all(r["max_rss_mb"] > 0 for r in m["rows"])

    modes = {r["mode"]: r for r in results["modes"]["rows"]}
    assert not [r for r in modes.values() if "error" in r]
    only = modes["ids: records only"]
    full = modes["ids: records + 3 stats totals (default)"]
    assert only["items"] == full["items"] == 300
    # one record each, complete file lists where a record shows the cap, and 3 totals each
    assert full["by_kind"]["record"] == 300
    assert full["by_kind"]["files"] == only["by_kind"]["files"] > 0
    assert full["by_kind"]["stats"] == 3 * 300
    assert full["requests"] == only["requests"] + 900
    assert modes["ids: + monthly timelines of 3 counters"]["by_kind"]["stats"] == 6 * 300
    faulty = modes["ids: records + 3 stats totals, 10% faults"]
    assert sum(faulty["faults"].values()) > 0
    assert faulty["items"] == 300  # nothing lost to the faults...
    assert faulty["requests"] > full["requests"]  # ...because they were retried

    for figure in ("harvest / bare loop (requests/s)", "speed-up over the workshop loop",
                   "peak RSS growth", "requests per item"):
        assert figure in printed


@pytest.mark.slow
def test_hostile_memory_script_runs_every_case() -> None:
    """Peaks depend on the machine: only checked to be there. What each harvest ends with
    does not: gzip bombs are refused at max_body (exit 3), every other case is kept."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hostile_memory.py"),
                           "--quick"], capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = [line for line in done.stdout.decode().splitlines() if " ids  exit " in line]
    expected = [("baseline", 0), ("10 MB records  ", 0), ("gzip bombs", 3),
                ("100,000 tags", 0), ("10 MB records, fixed mmap threshold", 0)]
    assert len(rows) == len(expected)
    for line, (case, code) in zip(rows, expected, strict=True):
        assert line.startswith(case) and f" exit {code} " in line, line
        assert float(line.split("peak ")[1].split(" MB")[0]) > 50  # the harvester's own peak
