"""The OAI-PMH id enumerator against the simulator: sets, date ranges, resumption tokens,
tokens that expire mid-list, errors; cross-checked against REST enumeration."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from harvester import cli, oaipmh
from harvester.client import Client, ClientSettings, RateLimit, RetryPolicy
from harvester.errors import BadResponse
from harvester.figshare import list_query
from harvester.oaipmh import MAX_IDLE_PAGES, MAX_STALLED, OaiLister, portal_set
from harvester.partition import Exhauster
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings
from tests.conftest import serving, write_config


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
    assert sorted(got) == expected  # nothing lost across the restarts, each id yielded once
    assert lister.restarts > 10 and len(lister.partitions) == lister.restarts + 1
    assert all("expired" in p.note for p in lister.partitions[:-1])
    assert lister.listed - len(expected) < 10 * lister.restarts  # the overlap: one second's worth
    assert not lister.truncated and not lister.unordered


async def test_no_records_is_an_empty_list_not_an_error(sim: Simulator) -> None:
    got, lister = await listed(sim, from_="2030-01-01")
    assert got == [] and lister.requests == 1


async def test_an_unknown_set_or_bad_argument_is_one_clear_error(sim: Simulator) -> None:
    got, _ = await listed(sim, set_spec="portal_999999")
    assert got == []  # an unknown set simply matches nothing
    with pytest.raises(BadResponse, match="badArgument"):
        await listed(sim, from_="2021-13-45")


async def listed_from(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> tuple[list[int], OaiLister]:
    """What an OaiLister lists from an inline server answering /v2/oai with `handler`."""
    app = web.Application()
    app.router.add_get("/v2/oai", handler)
    async with serving(app) as url, client() as c:
        lister = OaiLister(c, f"{url}/v2/oai")
        return [i async for b in lister.ids() for i in b], lister


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

    got, lister = await listed_from(handler)
    assert got == [123] and lister.deleted == 1


# --- restarts that cannot resume: a bulk second, a list in no datestamp order --------------


def oai_requests(sim: Simulator) -> int:
    return sim.log.count(route="/v2/oai")


def bulk_block(sim: Simulator) -> set[int]:
    """The ids the simulator's oai_bulk_items put on one datestamp (mid-list, by publish)."""
    ordered = list(sim.corpus.ids_by_published())
    lo = (len(ordered) - sim.settings.oai_bulk_items) // 2
    return set(ordered[lo : lo + sim.settings.oai_bulk_items])


async def test_a_bulk_second_larger_than_a_tokens_reach_is_skipped_and_reported(
    sim: Simulator,
) -> None:
    # 60 items on one second, tokens that die 3 pages (30 headers) into a list
    sim.update(oai_bulk_items=60, oai_token_pages=3)
    everything, bulk = set(sim.corpus.ids), bulk_block(sim)
    got, lister = await listed(sim)
    assert len(got) == len(set(got))  # progress counts distinct ids
    assert set(got) <= everything and everything - bulk <= set(got)  # only that second lost
    assert lister.truncated
    stuck = [p for p in lister.partitions if p.truncated]
    assert len(stuck) == 1 and "more headers share datestamp" in stuck[0].note
    assert f"{MAX_STALLED} restarts that listed no new id" in stuck[0].note
    # bounded: each list is at most 4 requests (3 pages, then the expired token); lists that
    # make progress add at least one new id per header past the first page's repeats
    passes = len(lister.partitions)
    assert oai_requests(sim) == lister.requests <= 4 * passes
    assert passes <= len(everything) // 10 + MAX_STALLED + 2
    first = oai_requests(sim)
    print(f"bulk second: {len(set(got))}/{len(everything)} ids, {first} requests, "
          f"{passes} lists")

    # a rerun is the same: the same ids, the same requests
    again, lister2 = await listed(sim)
    assert again == got and oai_requests(sim) - first == first and lister2.truncated


async def test_a_bulk_second_within_a_tokens_reach_is_listed_exactly(sim: Simulator) -> None:
    sim.update(oai_bulk_items=25, oai_token_pages=3)
    got, lister = await listed(sim)
    assert sorted(got) == sorted(sim.corpus.ids) and not lister.truncated
    assert lister.restarts > 10 and oai_requests(sim) == lister.requests


async def test_an_unordered_list_restarts_from_its_from_and_loses_nothing(
    sim: Simulator,
) -> None:
    # one stall: the clock jumps past the tokens' lifetime after 20 requests
    calls = itertools.count()
    sim.clock = lambda: 1_700_000_000.0 + (10_000 if next(calls) >= 20 else 0)  # type: ignore[attr-defined]
    sim.update(oai_order="shuffled", oai_token_ttl=60.0, oai_page_size=50)
    got, lister = await listed(sim, from_="2010-01-01")
    assert sorted(got) == sorted(sim.corpus.ids)  # the old resume-from-datestamp lost most
    assert lister.unordered and not lister.truncated and lister.restarts == 1
    assert "restarted from the source's `from`" in lister.partitions[0].note
    assert "from=2010-01-01T00:00:00Z" in lister.partitions[1].query
    pages = -(-len(sim.corpus.ids) // 50)
    assert oai_requests(sim) == lister.requests == 20 + 1 + pages
    print(f"unordered, one stall: {len(got)} ids, {oai_requests(sim)} requests")


async def test_an_unordered_list_whose_tokens_never_reach_its_end_is_truncated(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.update(oai_order="shuffled", oai_token_pages=3)
    got, lister = await listed(sim)
    assert lister.unordered and lister.truncated
    assert len(got) == len(set(got)) == 30  # what the first three pages held
    assert "datestamps are not in order" in lister.partitions[-1].note
    assert oai_requests(sim) == lister.requests == 4 * (MAX_STALLED + 1)

    # through the run: the source is truncated in the manifest and the run exits 3
    cfg = write_config(tmp_path, sim, [{"name": "oai", "kind": "oai"}],
                       stats={"counters": []})
    before = oai_requests(sim)
    assert await cli.run_harvest(cfg) == cli.PARTIAL
    assert oai_requests(sim) - before == 4 * (MAX_STALLED + 1)
    snapshot = sorted((tmp_path / "out" / "t").glob("snapshot=*"))[-1]
    manifest = orjson.loads((snapshot / "manifest.json").read_bytes())
    (source,) = manifest["sources"]
    assert source["truncated"] is True and source["distinct"] == 30
    assert "datestamps are not in order" in source["partitions"][-1]["note"]
    print(f"unordered, no reach: truncated after {lister.requests} requests")


@pytest.mark.parametrize("fresh_tokens", [False, True], ids=["same-token", "new-token-same-ids"])
async def test_a_list_that_never_ends_is_truncated_not_followed_forever(fresh_tokens: bool) -> None:
    """A server that repeats its token, or mints new ones over the same page, ends the list."""
    calls = itertools.count(1)

    async def handler(request: web.Request) -> web.Response:
        n = next(calls)
        token = f"t{n}" if fresh_tokens else "again"
        body = (
            "<?xml version='1.0' encoding='utf-8'?>"
            '<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/"><ListIdentifiers>'
            "<header><identifier>oai:figshare.com:article/123</identifier>"
            "<datestamp>2020-01-01T00:00:00Z</datestamp></header>"
            f"<resumptionToken>{token}</resumptionToken></ListIdentifiers></OAI-PMH>")
        return web.Response(body=body.encode(), content_type="text/xml")

    got, lister = await listed_from(handler)
    assert got == [123] and lister.truncated
    expected = MAX_IDLE_PAGES + 1 if fresh_tokens else 2
    assert lister.requests == expected == next(calls) - 1
    assert "never end" in lister.partitions[-1].note


def oai_page(ids: range, token: str | None, size: int = 40, bogus: int = 0) -> str:
    """A ListIdentifiers page: id n stamped minute n (id `bogus` stamped 2030)."""
    stamps = {i: "2030-01-01T00:00:00Z" if i == bogus else f"2021-01-01T00:{i:02d}:00Z"
              for i in ids}
    heads = "".join(f"<header><identifier>oai:figshare.com:article/{i}</identifier>"
                    f"<datestamp>{stamps[i]}</datestamp></header>" for i in ids)
    tok = "" if token is None else (f'<resumptionToken completeListSize="{size}" cursor="0">'
                                    f"{token}</resumptionToken>")
    return ('<?xml version="1.0"?><OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">'
            f"<ListIdentifiers>{heads}{tok}</ListIdentifiers></OAI-PMH>")


def oai_error(code: str) -> str:
    return ('<?xml version="1.0"?><OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/">'
            f'<error code="{code}">x</error></OAI-PMH>')


@pytest.mark.parametrize(("cut", "note"), [
    ("no-records-for-a-token", "answered a resumption token with noRecordsMatch"),
    ("ends-before-its-size", "ended after 30 of the 40 headers its completeListSize announced"),
    ("restart-from-a-bogus-datestamp", "datestamps are not in order"),
])
async def test_a_list_the_server_cuts_short_is_truncated_never_complete(cut: str,
                                                                         note: str) -> None:
    """Ids 1..40 in four pages; the server loses the last ten (or twenty) in three ways."""
    pages = {"first": oai_page(range(1, 11), "t1"), "t1": oai_page(range(11, 21), "t2"),
             "t2": oai_page(range(21, 31), "t3"), "t3": oai_page(range(31, 41), "")}
    if cut == "no-records-for-a-token":  # only a first request may answer noRecordsMatch
        pages["t2"] = oai_error("noRecordsMatch")
    if cut == "ends-before-its-size":  # an empty token while completeListSize says 40
        pages["t2"] = oai_page(range(21, 31), "")
    if cut == "restart-from-a-bogus-datestamp":  # id 30 stamped 2030; then the token expires
        pages["t2"] = oai_page(range(21, 31), "t3", bogus=30)
        pages["t3"] = oai_error("badResumptionToken")
        pages["from"] = oai_error("noRecordsMatch")  # nothing from 2030 on

    async def handler(request: web.Request) -> web.Response:
        q = request.query
        key = q.get("resumptionToken") or ("from" if "from" in q else "first")
        return web.Response(body=pages[key].encode(), content_type="text/xml")

    got, lister = await listed_from(handler)
    assert lister.truncated and set(got) < set(range(1, 41))
    assert note in lister.partitions[-1].note
    assert lister.requests < 40  # given up, not followed forever


async def test_a_bulk_second_too_crowded_to_keep_is_still_listed_exactly(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past AT_LAST_MAX ids on one datestamp the restart check is skipped (memory stays
    bounded on a bulk import of a million): the list still comes out whole."""
    monkeypatch.setattr(oaipmh, "AT_LAST_MAX", 5)
    sim.update(oai_bulk_items=25, oai_token_pages=3)
    got, lister = await listed(sim)
    assert sorted(got) == sorted(sim.corpus.ids) and not lister.truncated
    assert lister.restarts > 10 and not lister.unordered
