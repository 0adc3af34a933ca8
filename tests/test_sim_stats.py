"""The simulator's stats host over loopback: cheap endpoints agree with the per-item ones."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import aiohttp
import orjson
import pytest

from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings

SETTINGS = SimSettings(items=300, seed=5)
ALL_TIME = {"start_date": "2000-01-01", "end_date": "2100-01-01"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SETTINGS) as s:
        yield s


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def good_auth(sim: Simulator) -> dict[str, str]:
    return basic(sim.settings.stats_user, sim.settings.stats_password)


async def get(http: aiohttp.ClientSession, sim: Simulator, path: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(sim.stats_url + path, **kw) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if resp.content_type == "application/json" else body


async def ok(http: aiohttp.ClientSession, sim: Simulator, path: str, **kw: Any) -> Any:
    status, body = await get(http, sim, path, **kw)
    assert status == 200, (path, body)
    return body


def inst_of(sim: Simulator, article_id: int) -> str:
    inst_id = sim.corpus.institution_of(article_id)
    return next(i.string_id for i in sim.corpus.institutions if i.id == inst_id)


async def test_totals_equal_timelines_at_every_granularity(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    nonzero = 0
    for article_id in list(sim.corpus.ids)[:40]:
        for counter in ("views", "downloads", "shares"):
            item = f"{counter}/article/{article_id}"
            total = (await ok(http, sim, f"/total/{item}"))["totals"]
            sums = {}
            for granularity in ("day", "month", "year", "total"):
                body = await ok(http, sim, f"/timeline/{granularity}/{item}", params=ALL_TIME)
                assert all(n > 0 for n in body["timeline"].values()), "zero periods are skipped"
                sums[granularity] = sum(body["timeline"].values())
            assert sums == dict.fromkeys(sums, total), (item, total, sums)
            nonzero += total > 0
    assert nonzero > 40, "the model should give most articles some traffic"


async def test_counters_are_plausible(sim: Simulator, http: aiohttp.ClientSession) -> None:
    totals: dict[str, list[int]] = {"views": [], "downloads": [], "shares": []}
    for article_id in list(sim.corpus.ids)[:60]:
        for counter, values in totals.items():
            values.append((await ok(http, sim, f"/total/{counter}/article/{article_id}"))["totals"])
    assert all(d <= v for v, d in zip(totals["views"], totals["downloads"], strict=True))
    assert sum(totals["shares"]) < sum(totals["downloads"]) < sum(totals["views"])
    assert 0 in totals["views"], "some items are never seen"


async def test_month_keys_and_day_sums(sim: Simulator, http: aiohttp.ClientSession) -> None:
    article_id = sim.corpus.ids[3]
    days = await ok(http, sim, f"/timeline/day/views/article/{article_id}", params=ALL_TIME)
    months = await ok(http, sim, f"/timeline/month/views/article/{article_id}", params=ALL_TIME)
    by_month: Counter[str] = Counter()
    for day, n in days["timeline"].items():
        assert date.fromisoformat(day) >= sim.corpus.published(article_id).date()
        by_month[day[:7]] += n
    assert dict(by_month) == months["timeline"]


async def test_group_is_the_sum_of_its_articles(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    group = sim.corpus.groups[0].id
    members = [a for a in sim.corpus.ids if sim.corpus.group_of(a) == group]
    assert members
    expected = 0
    for article_id in members:
        expected += (await ok(http, sim, f"/total/downloads/article/{article_id}"))["totals"]
    assert (await ok(http, sim, f"/total/downloads/group/{group}"))["totals"] == expected
    timeline = await ok(http, sim, f"/timeline/year/downloads/group/{group}", params=ALL_TIME)
    assert sum(timeline["timeline"].values()) == expected


async def test_collections_and_projects_are_sums_of_their_articles(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    corpus = sim.corpus
    for kind, item_id, members in (
        ("collection", corpus.collection_ids[0], corpus.collection_articles),
        ("project", corpus.project_ids[0], corpus.project_articles),
    ):
        expected = 0
        for article_id in members(item_id):
            expected += (await ok(http, sim, f"/total/views/article/{article_id}"))["totals"]
        assert (await ok(http, sim, f"/total/views/{kind}/{item_id}"))["totals"] == expected
        top = (await ok(http, sim, f"/top/views/{kind}", params={"count": "1000"}))["top"]
        assert top.get(str(item_id), 0) == expected


async def test_institution_scope(sim: Simulator, http: aiohttp.ClientSession) -> None:
    for article_id in sim.corpus.ids:  # an institution's article with some views
        public = (await ok(http, sim, f"/total/views/article/{article_id}"))["totals"]
        if public and sim.corpus.institution_of(article_id):
            break
    mine = inst_of(sim, article_id)
    other = next(i.string_id for i in sim.corpus.institutions if i.string_id != mine)
    # totals need no auth in either scope; another institution's item counts zero there
    assert (await ok(http, sim, f"/{mine}/total/views/article/{article_id}"))["totals"] == public
    assert (await ok(http, sim, f"/{other}/total/views/article/{article_id}"))["totals"] == 0

    forbidden = {"data": None, "code": "Forbidden", "message": "Unauthorized request"}
    for path in (f"/{mine}/timeline/day/views/article/{article_id}",
                 f"/{mine}/breakdown/month/views/article/{article_id}",
                 f"/{mine}/top/views/article"):  # fmt: skip
        assert await get(http, sim, path) == (403, forbidden)
        assert await get(http, sim, path, headers=basic(sim.settings.stats_user, "nope")) == (
            403, forbidden,
        )  # fmt: skip
        assert (await get(http, sim, path, headers=good_auth(sim)))[0] == 200

    # the public timeline is open; the institution one with auth gives the same numbers
    path = f"/timeline/month/views/article/{article_id}"
    public_tl = await ok(http, sim, path, params=ALL_TIME)
    scoped = await ok(http, sim, f"/{mine}{path}", params=ALL_TIME, headers=good_auth(sim))
    assert scoped == public_tl
    elsewhere = await ok(http, sim, f"/{other}{path}", params=ALL_TIME, headers=good_auth(sim))
    assert elsewhere == {"timeline": {}}


async def test_breakdown_matches_timeline_and_is_clamped(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    group = sim.corpus.groups[0].id
    item = f"views/group/{group}"
    latest = max(sim.corpus.published(a) for a in sim.corpus.ids).date()
    start = date(latest.year - 2, latest.month, 1)
    months = start.month - 1 + 18
    end = date(start.year + months // 12, months % 12 + 1, 1)  # 18 months later
    params = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    timeline = (await ok(http, sim, f"/timeline/day/{item}", params=params))["timeline"]
    limit = start.replace(year=start.year + 1).isoformat()
    assert max(timeline) > limit, "the timeline has events after the breakdown's 1-year cap"

    breakdown = (await ok(http, sim, f"/breakdown/day/{item}", params=params))["breakdown"]
    assert max(breakdown) <= limit, "end_date silently clamped to 1 year after start_date"
    within = {day: n for day, n in timeline.items() if day <= limit}
    assert {day: sum(c["total"] for c in countries.values())
            for day, countries in breakdown.items()} == within  # fmt: skip

    months = (await ok(http, sim, f"/breakdown/month/{item}", params=params))["breakdown"]
    month_tl = (await ok(http, sim, f"/timeline/month/{item}", params=params))["timeline"]
    assert {m: sum(c["total"] for c in cs.values()) for m, cs in months.items()} == month_tl
    for countries in months.values():
        assert len(countries) <= 200
        for cities in countries.values():
            named = {k: v for k, v in cities.items() if k != "total"}
            assert len(named) <= 10
            assert sum(named.values()) <= cities["total"]

    # all time in one period: the busiest country has more than 10 cities, only 10 are named
    body = await ok(http, sim, f"/breakdown/total/{item}", params={"start_date": "2000-01-01"})
    everything = body["breakdown"]["total"]
    total = (await ok(http, sim, f"/total/{item}"))["totals"]
    assert sum(c["total"] for c in everything.values()) == total
    named = [sum(n for city, n in cities.items() if city != "total") for cities in
             everything.values()]  # fmt: skip
    assert any(n < cities["total"] for n, cities in zip(named, everything.values(), strict=True))

    # only one date given: no clamp (the limits apply when both are given)
    body = await ok(http, sim, f"/breakdown/day/{item}", params={"start_date": start.isoformat()})
    assert max(body["breakdown"]) > limit


async def test_tops_with_a_large_count_equal_per_item_totals(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    top = (await ok(http, sim, "/top/views/article", params={"count": "100000"}))["top"]
    expected = {}
    for article_id in sim.corpus.ids:
        n = (await ok(http, sim, f"/total/views/article/{article_id}"))["totals"]
        if n:
            expected[str(article_id)] = n
    assert top == expected
    values = list(top.values())
    assert values == sorted(values, reverse=True)

    default = (await ok(http, sim, "/top/views/article"))["top"]
    assert list(default.items()) == list(top.items())[:10]

    inst = sim.corpus.institutions[0]
    scoped = await ok(http, sim, f"/{inst.string_id}/top/views/article",
                      params={"count": "100000"}, headers=good_auth(sim))  # fmt: skip
    assert scoped["top"] == {
        k: v for k, v in top.items() if sim.corpus.institution_of(int(k)) == inst.id
    }

    groups = (await ok(http, sim, "/top/views/group", params={"count": "1000"}))["top"]
    for gid, n in groups.items():
        assert (await ok(http, sim, f"/total/views/group/{gid}"))["totals"] == n


async def test_count_articles_per_group(sim: Simulator, http: aiohttp.ClientSession) -> None:
    per_group = Counter(sim.corpus.group_of(a) for a in sim.corpus.ids)
    ids = [g.id for g in sim.corpus.groups] + [987654321]
    body = {"groups": [{"id": gid} for gid in ids]}
    async with http.post(sim.stats_url + "/count/articles", json=body) as resp:
        assert resp.status == 200
        counts = await resp.json()
    assert counts == {str(gid): per_group.get(gid, 0) for gid in ids}
    assert sum(counts.values()) == sum(n for gid, n in per_group.items() if gid)


async def test_errors_in_the_stats_shape(sim: Simulator, http: aiohttp.ClientSession) -> None:
    assert await get(http, sim, "/total/hugs/article/1") == (400, {
        "data": {"extra": "Counter type not supported: hugs", "invalid_params": "counter"},
        "code": "InvalidParams",
        "message": "Invalid or unsupported params: counter",
    })  # fmt: skip
    status, body = await get(http, sim, "/timeline/week/views/article/1")
    assert (status, body["code"], body["data"]["invalid_params"]) == (
        400, "InvalidParams", "granularity",
    )  # fmt: skip

    inst = sim.corpus.institutions[0].string_id
    path = f"/{inst}/timeline/month/views/group/1"
    params = {"sub_item": "category", "start_date": "2014-01-01", "end_date": "2015-02-03"}
    status, body = await get(http, sim, path, params=params, headers=good_auth(sim))
    assert status == 400
    assert body == {
        "data": {"missing_params": "sub_item_id", "parameters": params, "path": path},
        "code": "MissingParams",
        "message": "Missing required params: sub_item_id",
    }

    assert (await get(http, sim, "/totals/views/article/1"))[0] == 404
    assert (await get(http, sim, "/v2/articles"))[0] == 404
    missing = 1  # no such article: zeros and empty objects, never 404
    assert await ok(http, sim, f"/total/views/article/{missing}") == {"totals": 0}
    assert await ok(http, sim, f"/timeline/day/views/article/{missing}") == {"timeline": {}}
    assert await ok(http, sim, f"/breakdown/day/views/article/{missing}") == {"breakdown": {}}


async def test_sub_item_filters(sim: Simulator, http: aiohttp.ClientSession) -> None:
    group = sim.corpus.groups[0].id
    item = f"views/group/{group}"
    whole = (await ok(http, sim, f"/timeline/total/{item}", params=ALL_TIME))["timeline"]
    types = (await ok(http, sim, "/top/views/group", params={
        "item_id": str(group), "sub_item": "item_type", "count": "100", **ALL_TIME,
    }))  # fmt: skip
    assert sum(types.values()) == whole["total"], "item_type tops are a flat object"
    parts = 0
    for name in types:
        params = {"sub_item": "item_type", "sub_item_id": name, **ALL_TIME}
        body = await ok(http, sim, f"/timeline/total/{item}", params=params)
        parts += body["timeline"]["total"]
    assert parts == whole["total"]

    referrals = await ok(
        http,
        sim,
        "/top/views/group",
        params={"item_id": str(group), "sub_item": "referral", **ALL_TIME},
    )
    assert 0 < len(referrals) <= 10 and all("." in host for host in referrals)
    categories = await ok(
        http,
        sim,
        "/top/views/group",
        params={"item_id": str(group), "sub_item": "category", "count": "3"},
    )
    assert set(categories) == {"top"} and len(categories["top"]) <= 3


async def test_default_range_is_this_month(sim: Simulator, http: aiohttp.ClientSession) -> None:
    latest = max(sim.corpus.published(a) for a in sim.corpus.ids).date()
    for article_id in list(sim.corpus.ids)[-30:]:
        body = await ok(http, sim, f"/timeline/day/views/article/{article_id}")
        for day in body["timeline"]:
            assert latest.replace(day=1).isoformat() <= day <= latest.isoformat()


async def test_deterministic_across_runs(http: aiohttp.ClientSession) -> None:
    bodies = []
    for _ in range(2):
        async with Simulator(SETTINGS) as s:
            article_id = s.corpus.ids[7]
            bodies.append([
                await ok(http, s, "/top/downloads/article", params={"count": "25"}),
                await ok(http, s, f"/breakdown/month/views/article/{article_id}", params=ALL_TIME),
                await ok(http, s, f"/timeline/day/shares/article/{article_id}", params=ALL_TIME),
            ])  # fmt: skip
    assert bodies[0] == bodies[1]
