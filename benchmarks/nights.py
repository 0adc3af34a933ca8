"""Budgeted nights on the simulator (issue 23): time scaled down, the issue's full-size figures.

    python benchmarks/nights.py              # 20,000 items, 3 counters, 200 req/s, 60 s nights
    python benchmarks/nights.py --quick      # 2,000 items, 6 s nights: a smoke test

Night 0 is an unbudgeted full run. Each later night 5% of the items are modified, `plan`
predicts, and the run gets the budget. Printed per night: wall time against budget + 2%,
requests (the simulator's count) against plan's prediction, the oldest totals in nights
against ceil(items x counters / requests a night), and whether every modified record is in the
snapshot and stats_current kept every value. Then a budgeted full export over several nights.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harvester import warehouse
from harvester.budget import Budget
from harvester.client import RateLimit
from harvester.pipeline import Harvest
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings
from harvester.store import list_snapshots
from tests.conftest import write_config


def _stats_ids(sim: Simulator) -> set[int]:
    return {int(e.path.rsplit("/", 1)[1]) for e in sim.log.entries
            if e.route == "/total/{counter}/{item}/{item_id}" and e.status == 200}


def _current(db: str) -> dict[tuple[int, str], int | None]:
    with duckdb.connect(db) as con:
        return {(a, c): t for a, c, t in con.execute(
            "SELECT article_id, counter, total FROM stats_current").fetchall()}


async def nights(args: argparse.Namespace, tmp: Path) -> bool:
    http = {"rate": {"requests": args.rate, "per": 1}, "concurrency": 8}
    ok = True
    async with Simulator(SimSettings(items=args.items, seed=23)) as sim:
        cfg = write_config(tmp / "nightly", sim, [{"kind": "articles"}], http=http,
                           incremental={"overlap_hours": 0, "stats": "all"})
        ids = sorted(sim.corpus.ids)
        t0 = time.monotonic()
        await Harvest(cfg).run()
        print(f"night 0: full run, {len(ids):,} items in {time.monotonic() - t0:.0f} s")
        db = str(tmp / "w.duckdb")
        warehouse.load(cfg.output.dir, cfg.name, db)
        budget = Budget(seconds=args.budget, said=f"{args.budget:g}s")
        allowance = budget.allowance(RateLimit(args.rate, 1))
        bound = math.ceil(len(ids) * 3 / (args.budget * args.rate))
        refreshed = dict.fromkeys(ids, 0)
        rng = random.Random(23)
        print(f"budget {args.budget:g} s = {allowance:,} requests; age bound {bound} nights")
        print("night  wall s  limit s  requests  predicted  oldest  plan's age  changed-in  "
              "values-kept")
        for night in range(1, args.nights + 1):
            changed = rng.sample(ids, int(len(ids) * args.changed))
            when = dt.datetime.now(dt.UTC).replace(microsecond=0)
            for aid in changed:
                sim.corpus.modify(aid, when)
            preview = await Harvest(cfg, budget=budget).preview()
            predicted, settle = preview.requests, preview.settle_age
            sim.log.clear()
            t0 = time.monotonic()
            result = await Harvest(cfg, budget=budget).run()
            wall = time.monotonic() - t0
            sent = len(sim.log.entries)
            for aid in _stats_ids(sim):
                refreshed[aid] = night
            oldest = max(night - n for n in refreshed.values())
            got = set(pq.read_table(Path(str(result.snapshot)) / "articles")
                      .column("article_id").to_pylist())
            before = _current(db)
            warehouse.load(cfg.output.dir, cfg.name, db)
            after = _current(db)
            kept = all(after.get(k) is not None and (v == 0 or after[k] != 0)
                       for k, v in before.items() if v is not None)
            good = (wall <= args.budget * 1.02 and result.manifest["status"] == "complete"
                    and set(changed) <= got and kept and abs(predicted - sent) <= 0.05 * sent
                    and (settle is None or oldest <= settle))
            ok &= good
            print(f"{night:>5}  {wall:>6.1f}  {args.budget * 1.02:>7.1f}  {sent:>8,}  "
                  f"{predicted:>9,}  {oldest:>6}  {settle!s:>10}  {set(changed) <= got!s:>10}  "
                  f"{kept!s:>11}"
                  f"{'' if good else '  FAILED'}{'' if oldest <= bound else '  (age > bound)'}")
    return ok


async def export(args: argparse.Namespace, tmp: Path) -> bool:
    http = {"rate": {"requests": args.rate, "per": 1}, "concurrency": 8}
    async with Simulator(SimSettings(items=args.items, seed=31)) as sim:
        cfg = write_config(tmp / "export", sim, [{"kind": "articles"}], http=http,
                           stats={"counters": []})
        budget = Budget(seconds=args.export_budget, said=f"{args.export_budget:g}s")
        for night in range(1, 20):
            t0 = time.monotonic()
            result = await Harvest(cfg, budget=budget).run()
            print(f"export night {night}: {time.monotonic() - t0:.1f} s, "
                  f"{'published' if result.published else 'not published'}, "
                  f"{len(list_snapshots(cfg.output.dir, cfg.name))} snapshot(s)")
            if result.published:
                break
        [snap] = list_snapshots(cfg.output.dir, cfg.name)
        got = pq.read_table(snap / "articles").column("article_id").to_pylist()
        exact = got == sorted(sim.corpus.ids)
        print(f"export: {night} nights, exact id set: {exact}")
        return exact


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 items and 6 s nights")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--rate", type=int, default=200, help="requests per second")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds a night")
    ap.add_argument("--export-budget", type=float, default=60.0, help="seconds a night")
    ap.add_argument("--nights", type=int, default=6)
    ap.add_argument("--changed", type=float, default=0.05)
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.budget, args.export_budget = 2_000, 6.0, 6.0
    with tempfile.TemporaryDirectory(prefix="bench-nights-") as tmp:
        ok = asyncio.run(nights(args, Path(tmp)))
        ok &= asyncio.run(export(args, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
