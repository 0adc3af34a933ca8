"""Timelines, breakdowns, tops and group counts: range arithmetic offline, harvests on loopback."""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import re
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from harvester import cli
from harvester.errors import AuthError, ConfigError
from harvester.periods import (
    BREAKDOWN_MAX_YEARS,
    add_years,
    breakdown_windows,
    merge_breakdowns,
    merge_counts,
    period_key,
    periods,
)
from harvester.pipeline import Harvest
from harvester.simulator import Simulator, SimulatorThread, ThreadedApp
from harvester.simulator.settings import SimSettings
from harvester.store import list_snapshots
from tests.conftest import write_config

ENV = {"SU": "sim-stats", "SP": "sim-stats-secret"}
CREDS = {"user": "${SU}", "password": "${SP}"}


# --- pure range arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["day", "month", "year", "total"])
@pytest.mark.parametrize("start,end", [
    (date(2019, 3, 15), date(2024, 11, 2)),
    (date(2020, 2, 29), date(2031, 2, 28)),
    (date(2021, 1, 1), date(2021, 1, 1)),
    (date(2016, 12, 31), date(2017, 1, 1)),
])
def test_breakdown_windows_cover_the_range_within_the_limit(
    granularity: str, start: date, end: date
) -> None:
    windows = breakdown_windows(start, end, granularity)
    assert windows[0][0] == start and windows[-1][1] == end
    for (_, e), (nxt, _) in itertools.pairwise(windows):
        assert nxt == e + timedelta(days=1)  # contiguous, no overlap
    years = BREAKDOWN_MAX_YEARS[granularity]
    for s, e in windows:
        assert s <= e < add_years(s, years)  # the host would clamp at start + N years
        if granularity in ("month", "year") and e != end:
            assert period_key(e, granularity) != period_key(e + timedelta(days=1), granularity)
    if granularity != "total":  # every period lies in exactly one window
        keys = [k for s, e in windows for k, _ in periods(s, e, granularity)]
        assert len(keys) == len(set(keys)) == len(periods(start, end, granularity))


def test_windows_per_granularity() -> None:
    five = (date(2020, 1, 1), date(2024, 12, 31))
    assert len(breakdown_windows(*five, "day")) == 5
    assert breakdown_windows(*five, "month") == [
        (date(2020, 1, 1), date(2021, 12, 31)), (date(2022, 1, 1), date(2023, 12, 31)),
        (date(2024, 1, 1), date(2024, 12, 31))]
    assert breakdown_windows(*five, "year") == [five]
    mid = breakdown_windows(date(2020, 1, 15), date(2023, 3, 1), "month")
    assert mid[0] == (date(2020, 1, 15), date(2021, 12, 31))  # ends at a month end
    assert breakdown_windows(date(2021, 1, 2), date(2021, 1, 1), "day") == []


def test_periods_are_dense_and_clipped_to_the_range() -> None:
    assert periods(date(2023, 11, 20), date(2024, 2, 3), "month") == [
        ("2023-11", date(2023, 11, 20)), ("2023-12", date(2023, 12, 1)),
        ("2024-01", date(2024, 1, 1)), ("2024-02", date(2024, 2, 1))]
    assert [k for k, _ in periods(date(2024, 2, 27), date(2024, 3, 1), "day")] == [
        "2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]
    assert periods(date(2020, 5, 5), date(2022, 1, 1), "year")[-1] == ("2022", date(2022, 1, 1))
    assert periods(date(2020, 5, 5), date(2022, 1, 1), "total") == [("total", date(2020, 5, 5))]


def test_merging_sums_and_treats_missing_keys_as_zero() -> None:
    assert merge_counts([{"2020-01": 2}, {"2020-01": 1, "2020-02": 4}, {}]) == {
        "2020-01": 3, "2020-02": 4}
    merged = merge_breakdowns([
        {"total": {"UK": {"London": 2, "total": 3}}},
        {"total": {"UK": {"Leeds": 1, "total": 1}, "France": {"Paris": 1, "total": 1}}},
    ])
    assert merged == {"total": {"UK": {"London": 2, "Leeds": 1, "total": 4},
                                "France": {"Paris": 1, "total": 1}}}


# --- harvests over loopback -----------------------------------------------------------------


def table(snapshot: Path, name: str) -> list[dict[str, Any]]:
    return pq.read_table(snapshot / name).to_pylist()


def popular(sim: Simulator, n: int, since: date = date(2021, 1, 1)) -> list[int]:
    """Ids with views published before `since` (so a range from `since` has events)."""
    ids = [i for i in sorted(sim.corpus.ids) if sim.corpus.published(i).date() < since]
    return ids[:n]


async def stats_get(sim: Simulator, path: str, params: dict[str, str],
                    headers: dict[str, str] | None = None) -> Any:
    async with aiohttp.ClientSession() as http, http.get(
        sim.stats_url + path, params=params, headers=headers or {}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return orjson.loads(await resp.read())


async def test_monthly_timelines_are_dense_and_match_the_stats_host(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = popular(sim, 6)
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], stats={
        "counters": ["views"],
        "timeline": {"granularity": "month", "start": "2021-01-01", "end": "2023-12-31",
                     "counters": ["views", "downloads"]},
    })
    snap = (await Harvest(cfg).run()).snapshot
    # one timeline request per item and counter: timelines have no documented range limit
    assert sim.log.count("stats", "/timeline/{granularity}/{counter}/{item}/{item_id}") == 12
    rows = table(snap, "stats_timeline")
    assert len(rows) == len(ids) * 2 * 36  # every month, zeros included
    for aid in ids[:3]:
        served = (await stats_get(sim, f"/timeline/month/views/article/{aid}",
                                  {"start_date": "2021-01-01", "end_date": "2023-12-31"}))
        mine = {r["period"]: r["count"] for r in rows
                if r["item_id"] == aid and r["counter"] == "views"}
        assert {k: v for k, v in mine.items() if v} == served["timeline"]
        assert set(mine) == {f"{y}-{m:02d}" for y in (2021, 2022, 2023) for m in range(1, 13)}
    first = next(r for r in rows if r["period"] == "2021-01")
    assert first["period_start"] == date(2021, 1, 1) and first["range_end"] == date(2023, 12, 31)
    assert {r["item"] for r in rows} == {"article"} and {r["scope"] for r in rows} == {"public"}
    assert sum(r["count"] for r in rows) > 0
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    fetch = manifest["fetch"]
    assert fetch["requests"] == {"record": 6, "stats_timeline": 12, "stats_total": 6}
    assert fetch["requests_per_item"] == 4.0


async def test_daily_breakdowns_over_three_years_are_split_and_merged(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = popular(sim, 4, since=date(2020, 1, 1))
    start, end = "2020-01-01", "2022-12-31"
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], stats={
        "counters": [],
        "breakdown": {"granularity": "day", "start": start, "end": end, "counters": ["views"]},
        "timeline": {"granularity": "day", "start": start, "end": end, "counters": ["views"]},
    })
    snap = (await Harvest(cfg).run()).snapshot
    asked = [parse_qs(e.query) for e in sim.log.entries
             if e.route.startswith("/breakdown/")]
    assert len(asked) == 3 * len(ids)  # 3 windows of at most a year each
    for q in asked:
        s, e = date.fromisoformat(q["start_date"][0]), date.fromisoformat(q["end_date"][0])
        assert e < add_years(s, 1)
    con = duckdb.connect()
    # per day, the countries' totals add up to the (unsplit) timeline's count: nothing clamped
    diff = con.execute(f"""
        WITH b AS (SELECT item_id, period, sum(count) AS n
                   FROM read_parquet('{snap}/stats_breakdown/*.parquet')
                   WHERE city IS NULL GROUP BY ALL),
             t AS (SELECT item_id, period, count AS n
                   FROM read_parquet('{snap}/stats_timeline/*.parquet') WHERE count > 0)
        SELECT count(*) FROM t FULL JOIN b USING (item_id, period)
        WHERE t.n IS DISTINCT FROM b.n""").fetchone()[0]
    assert diff == 0
    total = con.execute(f"SELECT sum(count) FROM read_parquet('{snap}/stats_breakdown/*.parquet') "
                        "WHERE city IS NULL").fetchone()[0]
    assert total > 0
    # one request over the whole range would have been clamped to a year: fewer events
    one = await stats_get(sim, f"/breakdown/total/views/article/{ids[0]}",
                          {"start_date": start, "end_date": end})
    mine = con.execute(f"SELECT sum(count) FROM read_parquet('{snap}/stats_breakdown/*.parquet') "
                       f"WHERE city IS NULL AND item_id = {ids[0]}").fetchone()[0]
    clamped = sum(c["total"] for c in one["breakdown"].get("total", {}).values())
    assert mine >= clamped
    cities = con.execute(f"SELECT count(*) FROM read_parquet('{snap}/stats_breakdown/*.parquet') "
                         "WHERE city IS NOT NULL").fetchone()[0]
    assert cities > 0
    # the guide's dashboard queries run as written
    guide = (Path(__file__).parents[1] / "docs" / "GUIDE.md").read_text(encoding="utf-8")
    section = guide.split("\n## Statistics in depth and files\n", 1)[1].split("\n## ", 1)[0]
    sql = re.search(r"```sql\n(.*?)```", section, flags=re.S)
    assert sql
    for statement in filter(str.strip, sql.group(1).split(";\n")):
        assert con.execute(statement.replace("'snap/", f"'{snap}/")).fetchall()


async def test_institution_scope_needs_basic_credentials_and_they_reach_only_the_stats_host(
    sim: Simulator, tmp_path: Path
) -> None:
    inst = sim.corpus.institutions[0]
    ids = [i for i in popular(sim, 40) if sim.corpus.institution_of(i) == inst.id][:4]
    series = {"granularity": "year", "start": "2019-01-01", "end": "2024-12-31",
              "counters": ["views"]}
    with pytest.raises(ConfigError, match=r"stats\.timeline: the institution scope"):
        write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}],
                     stats={"institution": inst.string_id, "timeline": series})
    # the stats host itself refuses the institution scope without Basic credentials
    async with aiohttp.ClientSession() as http, http.get(
        f"{sim.stats_url}/{inst.string_id}/timeline/year/views/article/{ids[0]}"
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "Forbidden"

    wrong = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], name="wrong",
                         env={"SU": "sim-stats", "SP": "nope"},
                         stats={"institution": inst.string_id, "timeline": series, **CREDS})
    with pytest.raises(AuthError, match="403") as refused:
        await Harvest(wrong).run()
    assert "nope" not in str(refused.value)
    assert "check stats.user and stats.password" in str(refused.value)  # what to fix
    assert list_snapshots(tmp_path / "out", "wrong") == []

    sim.log.clear()
    # a token for the API host is configured too: it must not reach the stats host
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], env={**ENV, "TOKEN": "tkn"},
                       api={"token": "${TOKEN}"}, stats={
                           "institution": inst.string_id, "timeline": series, **CREDS,
                           "breakdown": {**series, "granularity": "month"}})
    snap = (await Harvest(cfg).run()).snapshot
    rows = table(snap, "stats_timeline")
    assert {r["scope"] for r in rows} == {inst.string_id}
    assert len(rows) == len(ids) * 6
    basic = "Basic " + base64.b64encode(f"{ENV['SU']}:{ENV['SP']}".encode()).decode()
    assert sim.log.credentials_seen("stats") == {basic}
    assert sim.log.credentials_seen("api") == set()  # public operations: no token (issue 25)
    assert sim.log.credentials_seen("download") == set()
    # month breakdown over 6 years: 3 windows of at most 2 years per item
    assert sim.log.count("stats", "/{institution}/breakdown/{granularity}/{counter}/{item}/"
                                  "{item_id}") == 3 * len(ids)
    served = await stats_get(sim, f"/{inst.string_id}/timeline/year/views/article/{ids[0]}",
                             {"start_date": "2019-01-01", "end_date": "2024-12-31"},
                             {"Authorization": basic})
    mine = {r["period"]: r["count"] for r in rows if r["item_id"] == ids[0] and r["count"]}
    assert mine == served["timeline"]


async def test_tops_give_the_per_item_totals_in_fewer_requests(
    sim: Simulator, tmp_path: Path
) -> None:
    inst = sim.corpus.institutions[1]
    source = [{"kind": "institution", "institution": inst.id}]
    stats = {"institution": inst.string_id, **CREDS}
    # "auto" (the default) would rank with tops here: ask for per-item totals by name
    per_item = write_config(tmp_path, sim, source, env=ENV, name="per-item",
                            stats={**stats, "method": "per-item"})
    snap_a = (await Harvest(per_item).run()).snapshot
    tops = write_config(tmp_path, sim, source, env=ENV, name="tops",
                        stats={**stats, "method": "tops", "top_count": 100_000})
    snap_b = (await Harvest(tops).run()).snapshot

    def totals(snap: Path) -> dict[tuple[int, str], int]:
        return {(r["article_id"], r["counter"]): r["total"] for r in table(snap, "stats")}

    a, b = totals(snap_a), totals(snap_b)
    n = len({k[0] for k in a})
    assert n == sum(1 for i in sim.corpus.ids if sim.corpus.institution_of(i) == inst.id)
    assert a == b and len(a) == 3 * n
    assert sum(a.values()) > 0 and any(v == 0 for v in a.values())  # zeros: absent from tops
    fa = orjson.loads((snap_a / "manifest.json").read_bytes())["fetch"]
    fb = orjson.loads((snap_b / "manifest.json").read_bytes())["fetch"]
    assert fa["requests"]["stats_total"] == 3 * n
    assert fb["requests"]["record"] == n and fb["requests"]["stats_top"] == 3
    # a ranking shorter than asked is trusted once top_verify (3) unranked items said 0 each
    # (per counter; up to concurrency - 1 more may be in flight when the third answers)
    assert 3 * 3 <= fb["requests"]["stats_total"] <= 3 * (3 + 7) < 3 * n
    assert fb["requests_per_item"] < fa["requests_per_item"]
    # a cut-off ranking (count smaller than the institution) falls back per item, same numbers
    short = write_config(tmp_path, sim, source, env=ENV, name="short",
                         stats={**stats, "method": "tops", "top_count": 5})
    snap_c = (await Harvest(short).run()).snapshot
    assert totals(snap_c) == a
    fc = orjson.loads((snap_c / "manifest.json").read_bytes())["fetch"]
    assert 0 < fc["requests"]["stats_total"] < 3 * n


async def test_a_silently_capped_ranking_is_caught_and_unranked_items_get_their_totals(
    tmp_path: Path
) -> None:
    """/top answers 5 entries whatever count asks, with no sign of it: the first unranked item
    whose per-item total is not 0 proves the cut, so no item is given a wrong zero (issue 25)."""
    async with Simulator(SimSettings(items=400, seed=11, top_cap=5)) as sim:
        inst = sim.corpus.institutions[1]
        source = [{"kind": "institution", "institution": inst.id}]
        stats = {"institution": inst.string_id, **CREDS, "counters": ["views"]}
        # "auto" (the default) would rank with tops here: ask for per-item totals by name
        per_item = write_config(tmp_path, sim, source, env=ENV, name="per-item",
                                stats={**stats, "method": "per-item"})
        expected = {r["article_id"]: r["total"]
                    for r in table((await Harvest(per_item).run()).snapshot, "stats")}
        tops = write_config(tmp_path, sim, source, env=ENV, name="tops", stats={
            **stats, "method": "tops", "top_count": 1_000})
        snap = (await Harvest(tops).run()).snapshot
    got = {r["article_id"]: r["total"] for r in table(snap, "stats")}
    assert got == expected and sum(1 for v in expected.values() if v) > 5
    fetch = orjson.loads((snap / "manifest.json").read_bytes())["fetch"]["requests"]
    assert fetch["stats_top"] == 1 and fetch["stats_total"] == len(expected) - 5


async def test_group_stats_are_fetched_once_per_group_and_counts_match_the_harvest(
    sim: Simulator, tmp_path: Path
) -> None:
    counts = collections.Counter(sim.corpus.group_of(i) for i in sim.corpus.ids)
    group = max((g for g in counts if g), key=lambda g: (counts[g], g))
    cfg = write_config(tmp_path, sim, [{"kind": "group", "group": group}], stats={
        "counters": [],
        "timeline": {"granularity": "year", "start": "2012-01-01", "end": "2026-12-31",
                     "items": ["article", "group"], "counters": ["views"]},
    })
    snap = (await Harvest(cfg).run()).snapshot
    con = duckdb.connect()
    per_year = con.execute(f"""
        SELECT period, sum(count) FILTER (WHERE item = 'article') AS articles,
               sum(count) FILTER (WHERE item = 'group') AS grp
        FROM read_parquet('{snap}/stats_timeline/*.parquet') GROUP BY 1 ORDER BY 1""").fetchall()
    assert len(per_year) == 15
    assert all(a == g for _, a, g in per_year)  # a group's views are its articles' views
    assert sum(g for _, _, g in per_year) > 0
    assert sim.log.count("stats", "/timeline/{granularity}/{counter}/{item}/{item_id}") == \
        counts[group] + 1  # once per article, once for the group
    fetch = orjson.loads((snap / "manifest.json").read_bytes())["fetch"]
    assert fetch["group_articles"] == {str(group): counts[group]}  # POST /count/articles
    assert sim.log.count("stats", "/count/articles") == 1


def test_stats_config_errors_name_the_key(tmp_path: Path, sim: Simulator) -> None:
    ids = [{"kind": "ids", "ids": [1]}]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"timeline": {"granularity": "week", "start": "2020-01-01"}},
         "stats.timeline.granularity"),
        ({"timeline": {"granularity": "day"}}, "stats.timeline.start"),
        ({"breakdown": {"granularity": "day", "start": "2020-01-01", "end": "2019-01-01"}},
         "stats.breakdown.end"),
        ({"breakdown": {"granularity": "day", "start": "2020-01-01", "items": ["project"]}},
         "stats.breakdown.items"),
        ({"entities": {"group": [1]}}, "stats.entities.group"),
        ({"method": "tops"}, "stats.method"),
        ({"timeline": {"granularity": "day", "start": "2020-01-01", "step": 1}},
         "stats.timeline.step"),
    ]
    for stats, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            write_config(tmp_path, sim, ids, stats=stats)


async def test_an_incremental_stats_refresh_keeps_the_series(
    sim: Simulator, tmp_path: Path
) -> None:
    counts = collections.Counter(sim.corpus.group_of(i) for i in sim.corpus.ids if
                                 sim.corpus.group_of(i))
    group = min(counts, key=lambda g: (-counts[g], g))
    members = sorted(i for i in sim.corpus.ids if sim.corpus.group_of(i) == group)
    cfg = write_config(tmp_path, sim, [{"kind": "group", "group": group}],
                       incremental={"overlap_hours": 1, "stats": "all"}, stats={
                           "counters": ["views"],
                           "timeline": {"granularity": "year", "start": "2020-01-01",
                                        "end": "2025-12-31", "counters": ["views"]}})
    first = await Harvest(cfg).run()
    second = await Harvest(cfg).run()  # nothing changed: every item is a stats-only refresh
    assert second.manifest["kind"] == "incremental"
    assert pq.read_table(second.snapshot / "articles").num_rows == 0

    def series(snap: Path) -> list[tuple[int, str, int]]:
        rows = table(snap, "stats_timeline")
        return sorted((r["item_id"], r["period"], r["count"]) for r in rows)

    assert series(second.snapshot) == series(first.snapshot)
    assert len(series(second.snapshot)) == len(members) * 6


# --- hostile stats answers -------------------------------------------------------------------


class StatsProxy:
    """The simulator's stats host behind rules: a request whose path and query contain a rule's
    text is answered (status, JSON text) by the rule instead; `hits` counts rule answers."""

    def __init__(self, sim: Any, rules: dict[str, tuple[int, str]]) -> None:
        self.sim, self.rules = sim, rules
        self.hits: collections.Counter[str] = collections.Counter()
        self.api_url, self.stats_url = sim.api_url, ""

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        for match, (status, text) in self.rules.items():
            if match in request.path_qs:
                self.hits[match] += 1
                kind = "text/html" if text.startswith("<") else "application/json"
                return web.Response(status=status, text=text, content_type=kind)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type")}
        async with aiohttp.ClientSession() as http, http.request(
            request.method, self.sim.stats_url + request.path_qs,
            data=await request.read() or None, headers=headers,
        ) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type="application/json")


@contextlib.contextmanager
def proxied(sim: Any, rules: dict[str, tuple[int, str]]) -> Iterator[StatsProxy]:
    proxy = StatsProxy(sim, rules)
    with ThreadedApp(proxy.routes) as server:
        proxy.stats_url = server.url
        yield proxy


def snapshot_errors(snap: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (snap / "errors.ndjson").read_bytes().splitlines()]


U64 = 2**63 + 5  # fits uint64, not int64
MONTHS = {"granularity": "month", "start": "2023-01-01", "end": "2023-06-30",
          "counters": ["views"]}
WINDOWS = {**MONTHS, "start": "2021-01-01", "end": "2024-12-31"}  # windows 2021-22, 2023-24
TOTALS = {**MONTHS, "granularity": "total", "start": "2021-01-01", "end": "2022-12-31"}
TL, BD = "/timeline/month/views/article/{}", "/breakdown/month/views/article/{}"
BD2 = BD + "?start_date=2023-01-01"  # the second window only


@pytest.mark.parametrize("rule,answer", [
    (TL, {"timeline": {"2023-01": 1, "2019-05": 500}}),
    (TL, {"timeline": {"banana": 40}}),
    (TL, {"timeline": {"total": 1000}}),
    (TL, {"timeline": {"2031": 9}}),
    (TL, {"timeline": {"2023-03-15": 7}}),  # a day in a month series
    (TL, {"timeline": {"2023-02": U64}}),
    (TL, {"timeline": {"2023-03": -7}}),
    # a server ignoring the window's dates: its 2023 would be added to 2021-2022's answer
    (BD, {"breakdown": {"2023-05": {"France": {"Paris": 3}}}}),
    (BD2, {"breakdown": {"2023-05": {"France": 42}}}),
    (BD2, {"breakdown": {"2023-05": {"Norway": [1, 2]}}}),
    (BD2, {"breakdown": {"2023-05": {"Japan": None}}}),
    (BD2, {"breakdown": {"2023-05": {"": {"total": 6}}}}),
    (BD2, {"breakdown": {"2023-05": {"Chile": {"Santiago": U64}}}}),
    (BD2, {"breakdown": {"2023-05": {"Peru": {"Lima": -4}}}}),
    # each window's count fits int64, their sum does not (nor cities summed for a total)
    ("/breakdown/total/views/article/{}", {"breakdown": {"total": {"FR": {"total": 5 * 10**18}}}}),
    ("/breakdown/total/views/article/{}", {"breakdown": {"total": {"PE": {"A": 5 * 10**18,
                                                                          "B": 5 * 10**18}}}}),
    ("/total/views/article/{}", {"totals": -5}),
])
async def test_a_wrong_stats_answer_fails_the_items_stats_and_keeps_its_record(
    sim: Simulator, tmp_path: Path, rule: str, answer: Any
) -> None:
    ids = popular(sim, 3)
    bad = ids[1]
    kind = rule.split("/")[1]
    series = {"timeline": {"timeline": MONTHS}, "total": {},
              "breakdown": {"breakdown": TOTALS if "/total/" in rule else WINDOWS}}[kind]
    rule = rule.format(bad)
    with proxied(sim, {rule: (200, orjson.dumps(answer).decode())}) as proxy:
        cfg = write_config(tmp_path, proxy, [{"kind": "ids", "ids": ids}],
                           stats={"counters": ["views"], **series})
        result = await Harvest(cfg).run()
    assert proxy.hits[rule] >= 1
    snap = result.snapshot
    assert sorted(r["article_id"] for r in table(snap, "articles")) == sorted(ids)  # all kept
    [error] = snapshot_errors(snap)
    assert error["id"] == bad and error["reason"] == "stats-failed"
    assert f"{rule.split('?')[0]}" in error["url"] and "-> 200 " in error["message"]
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    assert manifest["errors_by_reason"] == {"stats-failed": 1} and result.errors == 1
    if kind == "total":
        assert {r["article_id"] for r in table(snap, "stats")} == set(ids) - {bad}
        return
    rows = table(snap, f"stats_{kind}")  # none of the bad answer, under any period
    assert {r["item_id"] for r in rows} <= set(ids) - {bad}
    assert all(0 <= r["count"] < 2**63 for r in rows)
    if kind == "timeline":
        assert len(rows) == 2 * 6 and all(r["period"] >= "2023-01" for r in rows)


async def test_a_served_country_total_is_not_counted_twice_against_int64(
    sim: Simulator, tmp_path: Path
) -> None:
    [aid] = popular(sim, 1)
    rule = f"/breakdown/total/views/article/{aid}"  # both windows: 8e18 each summed, in int64
    answer = {"breakdown": {"total": {"FR": {"total": 4 * 10**18, "Paris": 4 * 10**18}}}}
    with proxied(sim, {rule: (200, orjson.dumps(answer).decode())}) as proxy:
        cfg = write_config(tmp_path, proxy, [{"kind": "ids", "ids": [aid]}],
                           stats={"counters": ["views"], "breakdown": TOTALS})
        result = await Harvest(cfg).run()
    assert proxy.hits[rule] == 2 and result.errors == 0
    rows = table(result.snapshot, "stats_breakdown")
    assert sorted((r["city"] or "", r["count"]) for r in rows) == [("", 8 * 10**18),
                                                                   ("Paris", 8 * 10**18)]


def fullwidth(digits: str) -> str:
    return "".join(chr(0xFF10 + int(d)) for d in digits)


@pytest.mark.parametrize("bad", ["500", "fullwidth", "leading zero", "superscript", "junk",
                                 "past int64", "negative"])
async def test_a_bad_or_failed_ranking_is_asked_once_and_the_rest_get_per_item_totals(
    sim: Simulator, tmp_path: Path, bad: str
) -> None:
    """A wrong /top answer (or none) fails the one item that asked for it, never the run; every
    later item gets its per-item total, and /top is not asked again."""
    inst = sim.corpus.institutions[1]
    source = [{"kind": "institution", "institution": inst.id}]
    stats = {"institution": inst.string_id, **CREDS, "counters": ["views"]}
    truth = write_config(tmp_path / "truth", sim, source, env=ENV,
                         stats={**stats, "method": "per-item"})
    expected = {r["article_id"]: r["total"]
                for r in table((await Harvest(truth).run()).snapshot, "stats")}
    a = str(max(expected, key=lambda i: (expected[i], i)))
    top = {"fullwidth": {fullwidth(a): 7}, "leading zero": {a: 5, f"0{a}": 6},
           "superscript": {a: 5, "1\u00b2": 5}, "junk": {a: 5, "abc": 1},
           "past int64": {a: 2**63 + 2}, "negative": {a: -32}}.get(bad)
    rule = f"/{inst.string_id}/top/views/article"
    reply = (500, "") if top is None else (200, orjson.dumps({"top": top}).decode())
    with proxied(sim, {rule: reply}) as proxy:
        cfg = write_config(tmp_path, proxy, source, env=ENV,
                           stats={**stats, "method": "tops", "top_count": 1_000})
        result = await Harvest(cfg).run()
    assert proxy.hits[rule] == (4 if top is None else 1)  # one request (and its retries)
    [error] = snapshot_errors(result.snapshot)
    assert error["reason"] == "stats-failed" and rule in error["url"]
    got = {r["article_id"]: r["total"] for r in table(result.snapshot, "stats")}
    assert got == {i: n for i, n in expected.items() if i != error["id"]}
    requests = orjson.loads((result.snapshot / "manifest.json").read_bytes())["fetch"]["requests"]
    assert requests["stats_total"] == len(expected) - 1


@pytest.mark.parametrize("rule,reply,item", [
    ("/timeline/year/views/group/", (500, ""), "group"),
    ("/count/articles", (500, ""), None),
    ("/count/articles", (200, '{"G": -3}'), None),
    ("/count/articles", (200, '{"G": 4, "99999": 50}'), None),  # a group never asked for
    ("/count/articles", (200, '{"G": 4, "abc": 7}'), None),
])
def test_a_failed_entity_fails_only_its_stats_and_the_snapshot_is_published(
    tmp_path: Path, rule: str, reply: tuple[int, str], item: str | None
) -> None:
    with SimulatorThread(SimSettings(items=400, seed=11)) as sim:
        counts = collections.Counter(sim.corpus.group_of(i) for i in sim.corpus.ids)
        group = max((g for g in counts if g), key=lambda g: (counts[g], g))
        reply = (reply[0], reply[1].replace('"G"', f'"{group}"'))
        with proxied(sim, {rule: reply}) as proxy:
            write_config(tmp_path, proxy, [{"kind": "group", "group": group}], stats={
                "counters": [], "timeline": {**MONTHS, "granularity": "year",
                                             "items": ["article", "group"]}})
            code = cli.main(["run", str(tmp_path / "harvest.yaml"), "--quiet"])
    assert code == cli.PARTIAL and proxy.hits[rule] >= 1
    [snap] = list_snapshots(tmp_path / "out", "t")
    [error] = snapshot_errors(snap)
    what = f"group {group} stats" if item else "group article counts"
    assert error["reason"] == "stats-failed" and error["message"].startswith(f"{what}: ")
    assert error["id"] is None  # the id column holds articles' ids; the message names the group
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    assert manifest["errors_by_reason"] == {"stats-failed": 1} and manifest["errors"] == 1
    assert manifest["status"] == "partial"
    rows = table(snap, "stats_timeline")
    assert {r["item"] for r in rows} == ({"article"} if item else {"article", "group"})
    assert ("group_articles" in manifest["fetch"]) == bool(item)
    assert len(table(snap, "articles")) == counts[group]


def test_a_blocked_stats_host_still_aborts_the_run(tmp_path: Path) -> None:
    """An HTML 403 on an entity's stats is the host blocking us: the run stops, unpublished."""
    rule = "/timeline/year/views/group/"
    with SimulatorThread(SimSettings(items=400, seed=11)) as sim:
        group = next(g for i in sorted(sim.corpus.ids) if (g := sim.corpus.group_of(i)))
        with proxied(sim, {rule: (403, "<html><body>Blocked</body></html>")}) as proxy:
            write_config(tmp_path, proxy, [{"kind": "group", "group": group}], stats={
                "counters": [], "timeline": {**MONTHS, "granularity": "year",
                                             "items": ["article", "group"]}})
            code = cli.main(["run", str(tmp_path / "harvest.yaml"), "--quiet"])
    assert code == cli.ABORTED and proxy.hits[rule] >= 1
    assert list_snapshots(tmp_path / "out", "t") == []


async def test_a_stats_refresh_failing_is_labelled_as_in_a_full_run(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = popular(sim, 3)
    rule = f"/total/views/article/{ids[0]}"
    with proxied(sim, {}) as proxy:
        cfg = write_config(tmp_path, proxy, [{"kind": "ids", "ids": ids}],
                           incremental={"overlap_hours": 1, "stats": "all"},
                           stats={"counters": ["views"]})
        await Harvest(cfg).run()
        proxy.rules[rule] = (500, "")
        second = await Harvest(cfg).run()  # every item a stats-only refresh
    assert second.manifest["kind"] == "incremental" and proxy.hits[rule] >= 1
    [error] = snapshot_errors(second.snapshot)
    assert error["id"] == ids[0] and error["reason"] == "stats-failed"
    assert error["message"].startswith(f"stats: GET {proxy.stats_url}{rule} -> 500")
    assert second.manifest["errors_by_reason"] == {"stats-failed": 1}
