"""The OAI-PMH id enumerator against the simulator: sets, date ranges, resumption tokens,
tokens that expire mid-list, errors; cross-checked against REST enumeration."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from harvester.client import Client, ClientSettings, RateLimit, RetryPolicy
from harvester.errors import BadResponse
from harvester.figshare import list_query
from harvester.oaipmh import OaiLister, portal_set
from harvester.partition import Exhauster
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimSettings(items=3_000, seed=8)) as s:
        yield s


def client() -> Client:
    return Client(ClientSettings(
        user_agent="test", default_rate=RateLimit(100_000, 1.0), concurrency=4,
        retry=RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02)))


async def listed(sim: Simulator, **kw: str | None) -> tuple[list[int], OaiLister]:
    async with client() as c:
        lister = OaiLister(c, sim.api_url + "/oai", **kw)  # type: ignore[arg-type]
        got = [i async for batch in lister.ids() for i in batch]
    return got, lister


async def test_a_portal_set_equals_the_rest_institution_listing(sim: Simulator) -> None:
    inst = sim.corpus.institutions[1].id
    got, lister = await listed(sim, set_spec=portal_set(inst))
    async with client() as c:
        walker = Exhauster(c, sim.api_url)
        rest = [i async for b in walker.ids(list_query("institution", {"institution": inst}))
                for i in b]
    assert sorted(got) == sorted(rest) == sorted(
        i for i in sim.corpus.ids if sim.corpus.institution_of(i) == inst)
    assert len(got) == len(set(got))  # once each
    assert lister.requests == -(-len(got) // sim.settings.oai_page_size)
    # each follow-up request carries the resumption token only, URL-encoded
    follow = [e for e in sim.log.entries if "resumptionToken" in e.query]
    assert follow and all(e.status == 200 for e in follow)


async def test_from_and_until_select_by_publish_datestamp(sim: Simulator) -> None:
    c = sim.corpus
    got, _ = await listed(sim, from_="2020-01-01", until="2021-06-30")
    lo = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    hi = dt.datetime(2021, 7, 1, tzinfo=dt.UTC)
    assert sorted(got) == sorted(i for i in c.ids if lo <= c.published(i) < hi)
    # day-granular arguments were sent at second granularity (so restarts can reuse them)
    first = next(e for e in sim.log.entries if "from=" in e.query)
    assert "from=2020-01-01T00" in first.query and "until=2021-06-30T23" in first.query


async def test_an_expired_token_restarts_from_the_last_datestamp(sim: Simulator) -> None:
    # the clock jumps past the tokens' lifetime every 7 requests: tokens keep expiring
    ticks = itertools.count()
    sim.clock = lambda: 1_700_000_000.0 + (next(ticks) // 7) * 10_000  # type: ignore[attr-defined]
    sim.update(oai_token_ttl=60.0)
    inst = sim.corpus.institutions[0].id
    got, lister = await listed(sim, set_spec=portal_set(inst))
    expected = sorted(i for i in sim.corpus.ids if sim.corpus.institution_of(i) == inst)
    assert sorted(set(got)) == expected  # nothing lost across the restarts
    assert lister.restarts > 10 and len(lister.partitions) == lister.restarts + 1
    assert all("expired" in p.note for p in lister.partitions[:-1])
    assert len(got) - len(expected) < 10 * lister.restarts  # the overlap is one second's worth


async def test_no_records_is_an_empty_list_not_an_error(sim: Simulator) -> None:
    got, lister = await listed(sim, from_="2030-01-01")
    assert got == [] and lister.requests == 1


async def test_an_unknown_set_or_bad_argument_is_one_clear_error(sim: Simulator) -> None:
    got, _ = await listed(sim, set_spec="portal_999999")
    assert got == []  # an unknown set simply matches nothing
    with pytest.raises(BadResponse, match="badArgument"):
        await listed(sim, from_="2021-13-45")


async def test_deleted_headers_and_foreign_identifiers_are_skipped() -> None:
    def header(identifier: str, day: int, deleted: bool = False) -> str:
        status = ' status="deleted"' if deleted else ""
        return (f"<header{status}><identifier>{identifier}</identifier>"
                f"<datestamp>2020-01-0{day}T00:00:00Z</datestamp></header>")

    body = (
        "<?xml version='1.0' encoding='utf-8'?>"
        '<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">'
        "<responseDate>2026-01-01T00:00:00Z</responseDate>"
        '<request verb="ListIdentifiers">x</request><ListIdentifiers>'
        + header("oai:figshare.com:article/123", 1)
        + header("oai:figshare.com:article/124", 2, deleted=True)
        + header("oai:elsewhere:record/9", 3)
        + '<resumptionToken completeListSize="3" cursor="0"></resumptionToken>'
        "</ListIdentifiers></OAI-PMH>"
    ).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/xml")

    app = web.Application()
    app.router.add_get("/v2/oai", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with client() as c:
            lister = OaiLister(c, f"http://127.0.0.1:{runner.addresses[0][1]}/v2/oai")
            got = [i async for b in lister.ids() for i in b]
        assert got == [123] and lister.deleted == 1
    finally:
        await runner.cleanup()
