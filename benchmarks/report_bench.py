"""Time `harvester report` and `harvester export` over a 100,000-item snapshot.

A simulator harvest of --seed-items items (with totals, monthly timelines and yearly
breakdowns) is copied --copies times under new article ids by DuckDB into one snapshot, so the
big snapshot has the simulator's shapes without a long harvest. Limits (issue 21): the report
<= 30 s and <= 5 MB, the export (CSV and XLSX, one command) <= 60 s.

    .venv/bin/python benchmarks/report_bench.py [--seed-items 1000] [--copies 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harvester.export import export
from harvester.pipeline import Harvest
from harvester.report import write_report
from harvester.schema import SCHEMAS
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings
from tests.conftest import write_config

SHIFT = 100_000_000  # copy k's article ids are id + k * SHIFT


async def seed(tmp: Path, items: int) -> Path:
    async with Simulator(SimSettings(items=items, seed=5)) as sim:
        cfg = write_config(tmp, sim, [{"kind": "ids", "ids": sorted(sim.corpus.ids)}], stats={
            "counters": ["views", "downloads", "shares"],
            "timeline": {"granularity": "month", "start": "2023-01-01", "end": "2024-12-31",
                         "counters": ["views", "downloads"]},
            "breakdown": {"granularity": "year", "start": "2023-01-01", "end": "2024-12-31",
                          "counters": ["views"]},
        })
        snap = (await Harvest(cfg).run()).snapshot
    assert snap is not None
    return Path(snap)


def multiply(src: Path, dst_base: Path, copies: int) -> Path:
    """A snapshot holding `copies` copies of src's rows, each under its own article ids."""
    sid = "20300101T000000Z"
    dst = dst_base / f"snapshot={sid}"
    con = duckdb.connect()
    files: dict[str, dict[str, int]] = {}
    for table, schema in SCHEMAS.items():
        parts = sorted((src / table).glob("*.parquet"))
        if not parts:
            continue
        (dst / table).mkdir(parents=True)
        cols = []
        for name in schema.names:
            if name == "article_id" or (name == "item_id" and table.startswith("stats_")):
                cols.append(f"{name} + k * {SHIFT} AS {name}")
            else:
                cols.append(name)
        out = dst / table / "part-00000.parquet"
        src_list = ", ".join(f"'{p}'" for p in parts)
        con.execute(f"COPY (SELECT {', '.join(cols)} FROM read_parquet([{src_list}]), "
                    f"range({copies}) r(k)) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()
        files[f"{table}/part-00000.parquet"] = {"rows": int(rows[0]) if rows else 0}
    manifest = {"name": dst_base.name, "snapshot_id": sid, "kind": "full",
                "status": "complete", "files": files}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    (dst_base / "LATEST").write_text(dst.name)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-items", type=int, default=1_000)
    parser.add_argument("--copies", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        started = time.perf_counter()
        src = asyncio.run(seed(tmp / "seed", args.seed_items))
        big = multiply(src, tmp / "big" / "bench", args.copies)
        items = duckdb.connect().execute(
            f"SELECT count(*) FROM read_parquet('{big}/articles/*.parquet')").fetchone()
        print(f"snapshot  {items[0] if items else 0:,} items "
              f"(prepared in {time.perf_counter() - started:.1f} s)")

        t = time.perf_counter()
        page = write_report(str(big.parent), out=str(tmp / "report.html"))
        report_s, size = time.perf_counter() - t, page.stat().st_size
        print(f"report    {report_s:.1f} s, {size / 1e6:.2f} MB  (limits 30 s, 5 MB)")

        t = time.perf_counter()
        counts = export(str(big.parent), csv_dir=str(tmp / "csv"))
        csv_s = time.perf_counter() - t
        t = time.perf_counter()  # what `harvester export --csv DIR --xlsx FILE` does
        export(str(big.parent), csv_dir=str(tmp / "csv2"), xlsx=str(tmp / "m.xlsx"))
        both_s = time.perf_counter() - t
        xlsx_mb = (tmp / "m.xlsx").stat().st_size / 1e6
        print(f"export    CSV alone {csv_s:.1f} s; CSV and XLSX ({xlsx_mb:.1f} MB) "
              f"{both_s:.1f} s; limit 60 s")
        print("          " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        ok = report_s <= 30 and size <= 5_000_000 and both_s <= 60
        print("within limits" if ok else "OVER A LIMIT")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
