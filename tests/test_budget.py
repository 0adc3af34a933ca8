"""Budgeted runs (issue 23): the pure planning, then nights against the simulator.

Budgets are stated in requests here and counted from the simulator's RequestLog; the time
budgets at full size are measured by benchmarks/nights.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from harvester import warehouse
from harvester.budget import (
    MARGIN,
    Budget,
    Costs,
    Spend,
    Workload,
    budget_of,
    count_estimated,
    parse_until,
    schedule,
    settle_age,
)
from harvester.client import RateLimit
from harvester.config import parse_duration
from harvester.pipeline import Harvest
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings
from harvester.store import latest_snapshot, list_snapshots
from tests.conftest import write_config

# ---------------------------------------------------------------- pure planning


def test_durations_and_clock_times() -> None:
    assert parse_duration("8h") == 8 * 3600
    assert parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    for bad in ("", "8", "h", "8x", "0h", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    now = dt.datetime(2026, 3, 1, 22, 0, tzinfo=dt.UTC)
    assert parse_until("06:00 UTC", now) == 8 * 3600
    assert parse_until("23:00Z", now) == 3600  # later today
    assert parse_until("06:00+02:00", now) == 6 * 3600  # 04:00 UTC
    assert parse_until("06:00 Europe/Berlin", now) == 7 * 3600  # CET in March 1st
    for bad in ("6", "25:00", "06:00 Mars/Olympus"):
        with pytest.raises(ValueError):
            parse_until(bad, now)
    assert budget_of(None, None, "8h") == Budget(seconds=28_800, said="8h")
    assert budget_of("2h", None, "8h") == Budget(seconds=7200, said="2h")
    with pytest.raises(ValueError, match="not both"):
        budget_of("2h", "06:00", None)


def test_a_time_budget_is_requests_at_the_paced_rate_less_the_margin() -> None:
    rate = RateLimit(1, 1.0)  # Figshare's 1 request/s, paced with the transport's 2.5% margin
    eight_hours = Budget(seconds=28_800)
    assert eight_hours.allowance(rate) == math.floor(28_800 * (1 - MARGIN) / 1.025)
    assert Budget(requests=500).allowance(rate) == 500


def test_spend_admits_in_order_and_stops_at_the_first_that_does_not_fit() -> None:
    sent = [0]
    spend = Spend(10, None, lambda: sent[0])
    with spend.fetching(4):
        count_estimated(Counter(), "record")  # one of its 4 sent: counted once, as sent
        sent[0] = 1
        assert spend.admit(4)
        with spend.fetching(4):
            assert not spend.admit(3)  # 1 sent + 3 + 4 still expected + 3 > 10
            assert not spend.admit(1)  # once spent, nothing cheaper jumps the queue
    clock = [0.0]
    timed = Spend(None, 5.0, lambda: 0, clock=lambda: clock[0])
    assert timed.admit(100)
    clock[0] = 5.0
    assert not timed.admit(1)


def test_schedule_spends_records_first_then_stalest_stats() -> None:
    costs = Costs(record=4, stats=3)
    rate = RateLimit(1, 1.0)
    work = Workload(listing=20, records=1_000, stats=19_000, known=20_000,
                    costs=costs)
    plan = schedule(work, 12_000, rate)
    assert plan.records == 1_000 and plan.records_deferred == 0
    assert plan.stats == (12_000 - 20 - 4_000) // 3 and plan.requests <= 12_000
    assert plan.nights_to_full == math.ceil(20_000 / (plan.stats + 1_000))
    small = schedule(work, 2_020, rate)  # not even tonight's records fit
    assert (small.records, small.records_deferred, small.stats) == (500, 500, 0)
    assert str(small) == ("2,020 requests (budget 2,020 requests): 500 records (500 deferred), "
                          "0 stats refreshes (19,000 deferred)")
    assert settle_age(20_000, 4_000, 0) == 4  # refreshed every 5th night: 0..4 nights old
    assert settle_age(20_000, 0, 1_000) is None  # unchanged items would never be refreshed


def test_tops_cost_a_ranking_per_counter_instead_of_a_request_per_item(tmp_path: Path) -> None:
    class Sim:
        api_url, stats_url = "http://127.0.0.1:9/v2", "http://127.0.0.1:9"

    basic = {"institution": "lboro", "user": "${U}", "password": "${P}"}
    env = {"U": "u", "P": "p"}
    wide = write_config(tmp_path / "a", Sim(), [{"kind": "institution", "institution": 1}],
                        stats=basic, env=env)
    assert wide.stats.method == "tops"  # the default for an institution-wide harvest
    assert Costs.of(wide) == Costs(record=1, stats=1, once=3)
    narrow = write_config(tmp_path / "b", Sim(), [{"kind": "ids", "ids": [1]}], stats=basic,
                          env=env)
    assert narrow.stats.method == "per-item" and Costs.of(narrow) == Costs(record=4, stats=3)


# ---------------------------------------------------------------- nights on the simulator

ITEMS, NIGHT, CHANGED = 1_000, 1_200, 0.05  # 3 counters: a full stats refresh is 3,000


def stats_requests(sim: Simulator) -> set[int]:
    return {int(e.path.rsplit("/", 1)[1]) for e in sim.log.entries
            if e.route == "/total/{counter}/{item}/{item_id}" and e.status == 200}


@pytest.mark.slow
async def test_six_budgeted_nights_stay_in_budget_and_refresh_the_stalest(
        tmp_path: Path) -> None:
    async with Simulator(SimSettings(items=ITEMS, seed=23)) as sim:
        cfg = write_config(tmp_path, sim, [{"kind": "articles"}],
                           incremental={"overlap_hours": 0, "stats": "all"})
        ids = sorted(sim.corpus.ids)
        first = await Harvest(cfg).run()
        assert first.manifest["kind"] == "full"
        db = str(tmp_path / "w.duckdb")
        warehouse.load(cfg.output.dir, cfg.name, db)
        refreshed_at = dict.fromkeys(ids, 0)  # the night each item's totals were fetched
        bound = math.ceil(ITEMS * 3 / NIGHT)
        rng = random.Random(23)
        for night in range(1, 7):
            changed = sorted(rng.sample(ids, int(ITEMS * CHANGED)))
            when = dt.datetime.now(dt.UTC).replace(microsecond=0)
            for aid in changed:
                sim.corpus.modify(aid, when)
            # marks keep whole seconds: tonight's run starts in a later second than the changes,
            # so tomorrow's listing (modified since tonight's start) does not list them again
            while dt.datetime.now(dt.UTC).replace(microsecond=0) <= when:
                await asyncio.sleep(0.02)
            predicted = (await Harvest(cfg, budget=Budget(requests=NIGHT)).preview()).requests
            sim.log.clear()
            result = await Harvest(cfg, budget=Budget(requests=NIGHT)).run()
            m = result.manifest
            sent = len(sim.log.entries)
            assert m["kind"] == "incremental" and m["status"] == "complete"
            assert sent <= NIGHT  # within the budget, counted by the server
            assert abs(predicted - sent) <= 0.05 * sent, (predicted, sent)
            assert latest_snapshot(cfg.output.dir, cfg.name) == result.snapshot
            snap = Path(result.snapshot)
            assert set(changed) <= set(pq.read_table(snap / "articles")
                                       .column("article_id").to_pylist())
            for aid in stats_requests(sim):
                refreshed_at[aid] = night
            oldest = max(night - n for n in refreshed_at.values())
            assert oldest <= bound, (night, oldest)
            assert m["budget"]["refreshed"]["records"] >= len(changed)
            stats = pq.read_table(snap / "stats").to_pylist()
            assert {r["article_id"] for r in stats} == set(ids)  # complete, carried or fresh
            assert all(r["total"] is not None for r in stats)
            before = dict(_current(db))
            warehouse.load(cfg.output.dir, cfg.name, db)
            after = dict(_current(db))
            for key, total in before.items():
                assert after.get(key) is not None and (total == 0 or after[key] != 0), key
        # the stalest settled where the plan said they would (at most the bound, as checked)
        assert oldest == m["budget"]["settles_at_age_nights"], (oldest, m["budget"])


def _current(db: str) -> list[tuple[tuple[int, str], int]]:
    with duckdb.connect(db) as con:
        rows = con.execute("SELECT article_id, counter, total FROM stats_current").fetchall()
    return [((a, c), t) for a, c, t in rows]


@pytest.mark.slow
async def test_records_that_do_not_fit_go_first_the_next_night(tmp_path: Path) -> None:
    async with Simulator(SimSettings(items=300, seed=7)) as sim:
        cfg = write_config(tmp_path, sim, [{"kind": "articles"}],
                           incremental={"overlap_hours": 0, "stats": "all"})
        await Harvest(cfg).run()
        ids = sorted(sim.corpus.ids)
        changed = ids[::3]  # 100 records, 400 requests: twice the budget
        when = dt.datetime.now(dt.UTC).replace(microsecond=0)
        for aid in changed:
            sim.corpus.modify(aid, when)
        tonight = await Harvest(cfg, budget=Budget(requests=200)).run()
        b = tonight.manifest["budget"]
        got = pq.read_table(Path(tonight.snapshot) / "articles").column("article_id").to_pylist()
        assert b["stopped_fetching"] and b["deferred"]["records"] == b["records_first_next_run"]
        assert len(got) + b["deferred"]["records"] == len(changed)
        assert b["refreshed"]["stats"] == 0  # records first: no stats refresh jumped ahead
        sim.log.clear()
        nextnight = await Harvest(cfg, budget=Budget(requests=1_000)).run()
        got2 = pq.read_table(Path(nextnight.snapshot) / "articles") \
            .column("article_id").to_pylist()
        assert sorted(set(got) | set(got2)) == changed
        first_records = [int(e.path.rsplit("/", 1)[1]) for e in sim.log.entries
                         if e.route == "/v2/articles/{article_id}"]
        deferred = set(changed) - set(got)
        head = first_records[:len(deferred)]  # in arrival order; workers may swap neighbours
        assert len(deferred & set(head)) >= len(deferred) - cfg.http.concurrency
        assert deferred <= set(first_records)


@pytest.mark.slow
async def test_a_budgeted_full_export_publishes_once_when_every_record_is_in(
        tmp_path: Path) -> None:
    async with Simulator(SimSettings(items=600, seed=31)) as sim:
        cfg = write_config(tmp_path, sim, [{"kind": "articles"}])
        published = []
        for _night in range(3):
            sim.log.clear()
            result = await Harvest(cfg, budget=Budget(requests=900)).run()
            assert len(sim.log.entries) <= 900
            published.append(result.published)
            if not result.published:
                assert latest_snapshot(cfg.output.dir, cfg.name) is None
                assert list_snapshots(cfg.output.dir, cfg.name) == []
        assert published == [False, False, True]
        [snap] = list_snapshots(cfg.output.dir, cfg.name)
        got = pq.read_table(snap / "articles").column("article_id").to_pylist()
        assert got == sorted(sim.corpus.ids)
        assert result.manifest["status"] == "complete" and result.manifest["runs"] == 3
