"""The simulator's OAI-PMH endpoint over loopback: protocol shape, selective harvesting, paging."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree as ET

import aiohttp
import pytest

from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings

NS = {
    "o": "http://www.openarchives.org/OAI/2.0/",
    "oai_dc": "http://www.openarchives.org/OAI/2.0/oai_dc/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "dcite": "http://datacite.org/schema/kernel-4",
}
SETTINGS = SimSettings(items=600, seed=3)
PREFIX = "oai:figshare.com:article/"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SETTINGS) as s:
        yield s


async def oai(http: aiohttp.ClientSession, sim: Simulator, **params: str) -> ET.Element:
    async with http.get(f"{sim.api_url}/oai", params=params) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/xml"
        return ET.fromstring(await resp.read())


def error(root: ET.Element) -> str | None:
    found = root.find("o:error", NS)
    return None if found is None else found.get("code")


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


async def walk(
    http: aiohttp.ClientSession, sim: Simulator, verb: str, **params: str
) -> tuple[list[ET.Element], list[ET.Element]]:
    """Every item of a list request across its pages, and the resumptionToken elements seen."""
    items: list[ET.Element] = []
    tokens: list[ET.Element] = []
    tag = {"ListIdentifiers": "o:header", "ListRecords": "o:record", "ListSets": "o:set"}[verb]
    root = await oai(http, sim, verb=verb, **params)
    while True:
        assert error(root) is None, ET.tostring(root)
        body = root.find(f"o:{verb}", NS)
        assert body is not None
        page = body.findall(tag, NS)
        assert 0 < len(page) <= sim.settings.oai_page_size
        items += page
        token = body.find("o:resumptionToken", NS)
        if token is None:
            return items, tokens
        tokens.append(token)
        if not token.text:
            return items, tokens
        root = await oai(http, sim, verb=verb, resumptionToken=token.text)


def ids_of(headers: list[ET.Element]) -> list[int]:
    ids = []
    for header in headers:
        identifier = header.findtext("o:identifier", namespaces=NS) or ""
        assert identifier.startswith(PREFIX)
        ids.append(int(identifier.removeprefix(PREFIX)))
    return ids


async def test_identify(sim: Simulator, http: aiohttp.ClientSession) -> None:
    root = await oai(http, sim, verb="Identify")
    assert root.tag == "{http://www.openarchives.org/OAI/2.0/}OAI-PMH"
    assert root.find("o:request", NS).get("verb") == "Identify"  # type: ignore[union-attr]
    identify = root.find("o:Identify", NS)
    assert identify is not None
    get = lambda tag: identify.findtext(f"o:{tag}", namespaces=NS)  # noqa: E731
    earliest = min(sim.corpus.published(a) for a in sim.corpus.ids)
    assert get("repositoryName") == "figshare"
    assert get("baseURL") == f"{sim.api_url}/oai"
    assert get("protocolVersion") == "2.0"
    assert get("earliestDatestamp") == stamp(earliest)
    assert get("deletedRecord") == "transient"
    assert get("granularity") == "YYYY-MM-DDThh:mm:ssZ"


async def test_protocol_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    article = str(sim.corpus.ids[0])
    cases = [
        ({}, "badVerb"),
        ({"verb": "Dance"}, "badVerb"),
        ({"verb": "Identify", "set": "portal_1"}, "badArgument"),
        ({"verb": "ListRecords"}, "badArgument"),  # no metadataPrefix
        ({"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "colour": "red"}, "badArgument"),
        ({"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "from": "2015-13-45"},
         "badArgument"),
        ({"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "from": "2015-01-01",
          "until": "2016-01-01T00:00:00Z"}, "badArgument"),  # mixed granularities
        ({"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "from": "2016-01-02",
          "until": "2016-01-01"}, "badArgument"),
        ({"verb": "ListRecords", "metadataPrefix": "mods"}, "cannotDisseminateFormat"),
        ({"verb": "GetRecord", "metadataPrefix": "oai_dc", "identifier": f"{PREFIX}1"},
         "idDoesNotExist"),
        ({"verb": "GetRecord", "metadataPrefix": "oai_dc"}, "badArgument"),
        ({"verb": "GetRecord", "metadataPrefix": "mods", "identifier": f"{PREFIX}{article}"},
         "cannotDisseminateFormat"),
        ({"verb": "ListMetadataFormats", "identifier": "oai:elsewhere:9"}, "idDoesNotExist"),
        ({"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "until": "1990-01-01"},
         "noRecordsMatch"),
        ({"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "set": "portal_999999"},
         "noRecordsMatch"),
        ({"verb": "ListIdentifiers", "resumptionToken": "bm9wZQ=="}, "badResumptionToken"),
        ({"verb": "ListSets", "resumptionToken": "%%%"}, "badResumptionToken"),
        ({"verb": "ListIdentifiers", "resumptionToken": "x", "metadataPrefix": "oai_dc"},
         "badArgument"),  # resumptionToken is exclusive
    ]  # fmt: skip
    for params, code in cases:
        root = await oai(http, sim, **params)
        assert error(root) == code, (params, ET.tostring(root))
        request = root.find("o:request", NS)
        assert request is not None and request.text == f"{sim.api_url}/oai"
        if code in ("badVerb", "badArgument"):
            assert request.attrib == {}, "no echoed arguments with badVerb/badArgument"

    # a repeated argument is a badArgument too
    url = f"{sim.api_url}/oai?verb=ListRecords&metadataPrefix=oai_dc&metadataPrefix=oai_dc"
    async with http.get(url) as resp:
        assert error(ET.fromstring(await resp.read())) == "badArgument"


async def test_list_metadata_formats(sim: Simulator, http: aiohttp.ClientSession) -> None:
    root = await oai(http, sim, verb="ListMetadataFormats",
                     identifier=f"{PREFIX}{sim.corpus.ids[0]}")  # fmt: skip
    prefixes = [e.text for e in root.iterfind(".//o:metadataPrefix", NS)]
    assert "oai_dc" in prefixes and "oai_datacite" in prefixes


async def test_list_sets_walk(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sets, tokens = await walk(http, sim, "ListSets")
    specs = {s.findtext("o:setSpec", namespaces=NS): s.findtext("o:setName", namespaces=NS)
             for s in sets}  # fmt: skip
    assert len(specs) == len(sets)
    for inst in sim.corpus.institutions:
        assert specs[f"portal_{inst.id}"] == inst.name
    for category in sim.corpus.categories:
        assert specs[f"category_{category['id']}"] == category["title"]
    assert specs["item_type_3"] == "Dataset"
    for article_id in sim.corpus.ids:
        when = sim.corpus.published(article_id)
        assert f"month_year_{when.month}_{when.year}" in specs
    assert tokens and tokens[-1].text is None
    size = sim.settings.oai_page_size
    assert [int(t.get("cursor", -1)) for t in tokens] == [size * i for i in range(len(tokens))]
    assert {int(t.get("completeListSize", -1)) for t in tokens} == {len(sets)}


async def test_portal_walk_yields_exactly_the_institutions_public_ids(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.update(oai_page_size=25)
    corpus = sim.corpus
    for inst in corpus.institutions:
        expected = sorted(a for a in corpus.ids if corpus.institution_of(a) == inst.id)
        headers, tokens = await walk(http, sim, "ListIdentifiers",
                                     metadataPrefix="oai_dc", set=f"portal_{inst.id}")  # fmt: skip
        ids = ids_of(headers)
        assert len(ids) == len(set(ids)) and sorted(ids) == expected
        stamps = [h.findtext("o:datestamp", namespaces=NS) or "" for h in headers]
        assert stamps == sorted(stamps), "records come in datestamp order"
        for header, article_id in zip(headers, ids, strict=True):
            specs = [s.text for s in header.findall("o:setSpec", NS)]
            assert f"portal_{inst.id}" in specs
            assert f"item_type_{corpus.item_type_of(article_id)}" in specs
            assert header.findtext("o:datestamp", namespaces=NS) == stamp(
                corpus.published(article_id)
            )
        # cursor counts the records sent before each page; the last token is empty
        assert [int(t.get("cursor", -1)) for t in tokens] == [25 * i for i in range(len(tokens))]
        assert {int(t.get("completeListSize", -1)) for t in tokens} == {len(expected)}
        assert tokens[-1].text is None and all(t.text for t in tokens[:-1])
        assert all(t.get("expirationDate") for t in tokens[:-1])


async def test_full_walk_at_the_default_page_size(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    headers, tokens = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc")
    assert sorted(ids_of(headers)) == sorted(sim.corpus.ids)
    assert len(tokens) == -(-len(sim.corpus.ids) // 10), "one token per page after the first"


async def test_from_until_are_inclusive(sim: Simulator, http: aiohttp.ClientSession) -> None:
    corpus = sim.corpus
    ordered = sorted(corpus.ids, key=lambda a: (corpus.published(a), a))
    lo, hi = corpus.published(ordered[100]), corpus.published(ordered[160])
    expected = sorted(a for a in corpus.ids if lo <= corpus.published(a) <= hi)
    headers, _ = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc",
                            **{"from": stamp(lo), "until": stamp(hi)})  # fmt: skip
    assert sorted(ids_of(headers)) == expected

    # one second later excludes the records published at `lo`
    headers, _ = await walk(
        http,
        sim,
        "ListIdentifiers",
        metadataPrefix="oai_dc",
        **{"from": stamp(lo + timedelta(seconds=1)), "until": stamp(hi)},
    )
    assert sorted(ids_of(headers)) == [a for a in expected if corpus.published(a) > lo]

    # day granularity covers whole days
    day = lo.date()
    in_day = sorted(a for a in corpus.ids if corpus.published(a).date() == day)
    headers, _ = await walk(
        http,
        sim,
        "ListIdentifiers",
        metadataPrefix="oai_dc",
        **{"from": day.isoformat(), "until": day.isoformat()},
    )
    assert sorted(ids_of(headers)) == in_day

    # a month_year set is the records published in that month
    month = sorted(
        a
        for a in corpus.ids
        if (corpus.published(a).year, corpus.published(a).month) == (lo.year, lo.month)
    )
    headers, _ = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc",
                            set=f"month_year_{lo.month}_{lo.year}")  # fmt: skip
    assert sorted(ids_of(headers)) == month


async def test_category_and_item_type_sets(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.update(oai_page_size=50)
    corpus = sim.corpus
    headers, _ = await walk(
        http, sim, "ListIdentifiers", metadataPrefix="oai_dc", set="item_type_3"
    )
    assert sorted(ids_of(headers)) == sorted(a for a in corpus.ids if corpus.item_type_of(a) == 3)
    category = corpus.category_ids_of(corpus.ids[0])[0]
    expected = sorted(a for a in corpus.ids if category in corpus.category_ids_of(a))
    headers, _ = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc",
                            set=f"category_{category}")  # fmt: skip
    assert sorted(ids_of(headers)) == expected
    for header in headers:
        assert f"category_{category}" in [s.text for s in header.findall("o:setSpec", NS)]


async def test_token_expiry(sim: Simulator, http: aiohttp.ClientSession) -> None:
    now = [datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()]
    sim.clock = lambda: now[0]  # type: ignore[attr-defined]
    sim.update(oai_token_ttl=60.0)
    root = await oai(http, sim, verb="ListIdentifiers", metadataPrefix="oai_dc")
    token = root.find("o:ListIdentifiers/o:resumptionToken", NS)
    assert token is not None and token.text
    assert token.get("expirationDate") == "2024-05-01T12:01:00Z"
    assert root.findtext("o:responseDate", namespaces=NS) == "2024-05-01T12:00:00Z"

    now[0] += 59
    assert error(await oai(http, sim, verb="ListIdentifiers", resumptionToken=token.text)) is None
    now[0] += 2
    root = await oai(http, sim, verb="ListIdentifiers", resumptionToken=token.text)
    assert error(root) == "badResumptionToken"
    # a token is bound to its verb
    now[0] -= 30
    root = await oai(http, sim, verb="ListRecords", resumptionToken=token.text)
    assert error(root) == "badResumptionToken"


async def test_get_record_and_list_records(sim: Simulator, http: aiohttp.ClientSession) -> None:
    corpus = sim.corpus
    article_id = corpus.ids[42]
    article = corpus.article(article_id)
    root = await oai(http, sim, verb="GetRecord", metadataPrefix="oai_dc",
                     identifier=f"{PREFIX}{article_id}")  # fmt: skip
    record = root.find("o:GetRecord/o:record", NS)
    assert record is not None
    assert ids_of(record.findall("o:header", NS)) == [article_id]
    dc = record.find("o:metadata/oai_dc:dc", NS)
    assert dc is not None
    assert dc.findtext("dc:title", namespaces=NS) == article["title"]
    creators = [e.text for e in dc.findall("dc:creator", NS)]
    assert creators == [f"{a['full_name']} ({a['id']})" for a in article["authors"]]

    root = await oai(http, sim, verb="GetRecord", metadataPrefix="oai_datacite",
                     identifier=f"{PREFIX}{article_id}")  # fmt: skip
    resource = root.find("o:GetRecord/o:record/o:metadata/dcite:resource", NS)
    assert resource is not None
    assert resource.findtext("dcite:titles/dcite:title", namespaces=NS) == article["title"]

    root = await oai(http, sim, verb="ListRecords", metadataPrefix="oai_dc")
    records = root.findall("o:ListRecords/o:record", NS)
    assert len(records) == sim.settings.oai_page_size
    assert all(r.find("o:metadata/oai_dc:dc", NS) is not None for r in records)


async def test_post_and_determinism(http: aiohttp.ClientSession) -> None:
    pages: list[bytes] = []
    for _ in range(2):
        async with Simulator(SETTINGS) as s:
            s.clock = lambda: 1_700_000_000.0  # type: ignore[attr-defined]
            form = {"verb": "ListRecords", "metadataPrefix": "oai_dc", "set": "item_type_3"}
            async with http.post(f"{s.api_url}/oai", data=form) as resp:
                assert resp.status == 200
                # the only difference allowed: the port in <request>
                pages.append((await resp.read()).replace(s.api_url.encode(), b"BASE"))
    assert pages[0] == pages[1]
    assert error(ET.fromstring(pages[0])) is None


async def test_withdrawn_items_leave_the_lists(sim: Simulator, http: aiohttp.ClientSession) -> None:
    corpus = sim.corpus
    gone = corpus.ids[5]
    corpus.withdraw(gone)
    root = await oai(http, sim, verb="GetRecord", metadataPrefix="oai_dc",
                     identifier=f"{PREFIX}{gone}")  # fmt: skip
    assert error(root) == "idDoesNotExist"
    sim.update(oai_page_size=100)
    headers, _ = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc")
    assert gone not in ids_of(headers)


async def test_bulk_items_share_one_datestamp(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.update(oai_bulk_items=40, oai_page_size=100)
    ordered = list(sim.corpus.ids_by_published())
    lo = (len(ordered) - 40) // 2
    block, second = sorted(ordered[lo : lo + 40]), stamp(sim.corpus.published(ordered[lo]))
    headers, _ = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc")
    assert sorted(ids_of(headers)) == sorted(sim.corpus.ids)
    stamps = [h.findtext("o:datestamp", namespaces=NS) or "" for h in headers]
    assert stamps == sorted(stamps) and stamps.count(second) >= 40
    # that second selects the block (and anything really published in it), in id order
    headers, _ = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc",
                            **{"from": second, "until": second})  # fmt: skip
    ids = ids_of(headers)
    assert set(block) <= set(ids) and ids == sorted(ids)
    root = await oai(http, sim, verb="GetRecord", metadataPrefix="oai_dc",
                     identifier=f"{PREFIX}{block[-1]}")  # fmt: skip
    assert root.findtext("o:GetRecord/o:record/o:header/o:datestamp", namespaces=NS) == second


async def test_shuffled_order_lists_every_id_once_out_of_datestamp_order(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.update(oai_order="shuffled", oai_page_size=50)
    headers, tokens = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc")
    ids = ids_of(headers)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(sim.corpus.ids)
    stamps = [h.findtext("o:datestamp", namespaces=NS) or "" for h in headers]
    assert stamps != sorted(stamps)
    assert {int(t.get("completeListSize", -1)) for t in tokens} == {len(ids)}
    # from/until still select by datestamp
    corpus = sim.corpus
    cut = sorted(corpus.published(a) for a in corpus.ids)[300]
    headers, _ = await walk(http, sim, "ListIdentifiers", metadataPrefix="oai_dc",
                            **{"from": stamp(cut)})  # fmt: skip
    assert sorted(ids_of(headers)) == sorted(a for a in corpus.ids if corpus.published(a) >= cut)


async def test_tokens_expire_a_number_of_pages_into_a_list(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.update(oai_token_pages=2)
    root = await oai(http, sim, verb="ListIdentifiers", metadataPrefix="oai_dc")
    for page in (2, 3):
        token = root.find("o:ListIdentifiers/o:resumptionToken", NS)
        assert token is not None and token.text
        root = await oai(http, sim, verb="ListIdentifiers", resumptionToken=token.text)
        assert error(root) == (None if page == 2 else "badResumptionToken")
