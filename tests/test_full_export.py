"""A whole institution of 60,000 articles past the 9,000 cap: exactly the simulator's id set,
nothing missing, nothing twice, by REST (cursor, moving date bound, refused cursor) and by
OAI-PMH, with the list requests close to the minimum (ids / 1,000 + 1)."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harvester.client import Client, ClientSettings, RateLimit, RetryPolicy
from harvester.config import Source
from harvester.simulator import Simulator, restkit
from harvester.simulator.settings import SimSettings
from harvester.sources import SourceReport, enumerate_source

# 68,200 items, 88% of them in the one institution: ~60,000, with five busy days
ITEMS = 68_200


def settings(**changes: Any) -> SimSettings:
    return SimSettings(items=ITEMS, seed=3, institutions=1, **changes)


def fast_client() -> Client:
    return Client(ClientSettings(
        user_agent="test", default_rate=RateLimit(100_000, 1.0), concurrency=8,
        retry=RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02)))


def institution_ids(sim: Simulator) -> list[int]:
    c = sim.corpus
    inst = c.institutions[0].id
    return [i for i in c.ids if c.institution_of(i) == inst]


async def enumerate_all(sim: Simulator, source: Source) -> tuple[list[int], SourceReport]:
    report = SourceReport(source.name, source.kind)
    got: list[int] = []
    async with fast_client() as client:
        async for batch in enumerate_source(client, sim.api_url, source, report):
            got.extend(batch)
    return got, report


def institution(sim: Simulator, **params: Any) -> Source:
    return Source("institution", "all", {"institution": sim.corpus.institutions[0].id, **params})


@pytest.fixture
async def busy() -> AsyncIterator[Simulator]:
    """Days with more than 1,000 items published (bulk imports sharing seconds)."""
    async with Simulator(settings(busy_day_share=0.1, cursor=False)) as s:
        yield s


async def test_the_simulator_has_what_breaks_naive_paging(busy: Simulator) -> None:
    ids = institution_ids(busy)
    assert len(ids) > 6 * 9_000 and len(ids) >= 59_000
    days = collections.Counter(busy.corpus.published(i).date() for i in ids)
    assert sum(1 for n in days.values() if n > 1_000) >= 4


async def test_rest_without_cursor_moving_bound(busy: Simulator) -> None:
    expected = institution_ids(busy)
    got, report = await enumerate_all(busy, institution(busy))
    assert sorted(set(got)) == sorted(expected)  # nothing missing, nothing extra
    assert report.distinct == len(expected) and not report.truncated
    assert sum(p.new for p in report.partitions) == len(expected)  # nothing twice
    assert len(report.partitions) >= 7  # 60,000 ids do not fit 6 windows
    # one request per 1,000 ids and the last short page; each window overlaps one second
    assert report.minimum_requests == len(expected) // 1000 + 1
    assert report.requests <= report.minimum_requests + 2
    assert report.listed - len(expected) < 100


async def test_rest_with_cursor_is_one_walk_at_the_minimum() -> None:
    async with Simulator(settings(busy_day_share=0.1)) as sim:
        expected = institution_ids(sim)
        got, report = await enumerate_all(sim, institution(sim))
        assert sorted(got) == sorted(expected)
        assert len(report.partitions) == 1 and report.requests == report.minimum_requests
        assert sim.log.count(route="/v2/articles") == report.requests


async def test_rest_when_the_server_refuses_its_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restkit, "CURSOR_TTL", -1.0)  # every cursor is expired on arrival: 422
    async with Simulator(settings(busy_day_share=0.1)) as sim:
        expected = institution_ids(sim)
        got, report = await enumerate_all(sim, institution(sim))
        assert sorted(set(got)) == sorted(expected) and not report.truncated
        statuses = collections.Counter(e.status for e in sim.log.entries)
        assert statuses[422] == 1  # refused once, then not offered again
        assert report.requests <= report.minimum_requests + 3


async def test_days_with_more_than_a_window_each() -> None:
    async with Simulator(settings(busy_day_share=0.8, cursor=False)) as sim:
        expected = institution_ids(sim)
        days = collections.Counter(sim.corpus.published(i).date() for i in expected)
        assert sum(1 for n in days.values() if n > 9_000) >= 3
        got, report = await enumerate_all(sim, institution(sim))
        assert sorted(set(got)) == sorted(expected) and not report.truncated
        assert report.requests <= report.minimum_requests + 3


async def test_oai_pmh_lists_the_same_ids_as_rest(busy: Simulator) -> None:
    """A full export reconciled against the portal set: REST and OAI-PMH agree exactly."""
    expected = institution_ids(busy)
    got, report = await enumerate_all(busy, institution(busy, reconcile="oai"))
    assert sorted(set(got)) == sorted(expected)
    rec = report.reconcile
    assert rec is not None and rec["complete"] and rec["against"] == "oai"
    assert rec["set"] == f"portal_{busy.corpus.institutions[0].id}"
    assert rec["rest"] == rec["oai"] == len(expected) and rec["only_rest"] == rec["only_oai"] == 0
    # 10 headers a page, each page one request: OAI-PMH costs a hundred times REST's listing
    assert rec["requests"] == -(-len(expected) // busy.settings.oai_page_size)


async def test_reconcile_finds_and_adds_what_rest_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    # a REST enumeration that silently lists datasets only stands in for any lossy one
    from harvester import sources

    real = sources.list_query
    monkeypatch.setattr(sources, "list_query", lambda kind, params: real(kind, params).narrowed(
        item_type=3))
    async with Simulator(settings(busy_day_share=0.1, cursor=False, oai_page_size=100)) as sim:
        expected = institution_ids(sim)
        got, report = await enumerate_all(sim, institution(sim, reconcile="oai"))
        assert sorted(set(got)) == sorted(expected)  # the missing ids were added from OAI-PMH
        rec = report.reconcile
        assert rec is not None and not rec["complete"] and rec["only_rest"] == 0
        missed = sorted(i for i in expected if sim.corpus.item_type_of(i) != 3)
        assert rec["only_oai"] == len(missed) and rec["only_oai_ids"] == missed[:1000]
        assert report.distinct == len(expected)


async def test_a_search_over_the_cap_returns_all_its_matches() -> None:
    async with Simulator(settings(busy_day_share=0.1, cursor=False,
                                  search_duplicate_rate=0.02)) as sim:
        # datasets: about 20,000 items, over two windows
        expected = sorted(i for i in sim.corpus.ids if sim.corpus.item_type_of(i) == 3)
        assert len(expected) > 2 * 9_000
        source = Source("search", "big", {"search_for": ":item_type: dataset"})
        got, report = await enumerate_all(sim, source)
        assert sorted(set(got)) == expected and not report.truncated
        assert len(got) > len(expected)  # the search repeated records; counted once
        assert report.requests <= report.minimum_requests + len(report.partitions) + 2
