"""OAI-PMH 2.0 at /v2/oai: the latest version of public articles, paged by stateless tokens.

Choices where NOTES.md §11 is silent, and fidelity limits:
- Only oai_dc and oai_datacite are served; Figshare also has rdf, cerif, qdc, mets and uketd_dc
  (those prefixes answer cannotDisseminateFormat here).
- Headers list categories, portal and item type but never month_year_*, as in every header of
  Figshare's docs; the month_year sets still select by publish month (UTC).
- Records come in (published, id) order (oai_order "shuffled": in no datestamp order); tokens
  are base64 JSON holding the query, the last record sent, the cursor and the expiry, so they
  survive restarts and stay valid until oai_token_ttl runs out (or oai_token_pages pages into
  a list). Their '+', '/' and '=' must be URL-encoded, like Figshare's.
- oai_bulk_items: that many records mid-list share one datestamp (REST keeps their seconds).
- ListSets is paged like the lists; set names for months are "<Month> <YYYY>" (a guess).
- Withdrawn items simply vanish (deletedRecord "transient"); no <header status="deleted">.
- earliestDatestamp is the corpus's earliest publish time, not Figshare's 2010-01-08T01:24:54Z.
- The dc namespace is http://purl.org/dc/elements/1.1/ as the protocol requires (one old
  Figshare doc example shows dcterms); datacite records are a minimal kernel-4 <resource>.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

import orjson
from aiohttp import web

from harvester.simulator.appkeys import SIMULATOR

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
OAI_DC_NS = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC_NS = "http://purl.org/dc/elements/1.1/"
DATACITE_NS = "http://datacite.org/schema/kernel-4"
FORMATS = {
    "oai_dc": (OAI_DC_NS, "http://www.openarchives.org/OAI/2.0/oai_dc.xsd"),
    "oai_datacite": (DATACITE_NS, "http://schema.datacite.org/meta/kernel-4/metadata.xsd"),
}
IDENTIFIER_PREFIX = "oai:figshare.com:article/"
ITEM_TYPES = {
    1: "Figure", 2: "Media", 3: "Dataset", 5: "Poster", 6: "Journal contribution",
    7: "Presentation", 8: "Thesis", 9: "Software", 11: "Online resource", 12: "Preprint",
    13: "Book", 14: "Conference contribution", 15: "Chapter", 16: "Peer review",
    17: "Educational resource", 18: "Report", 19: "Standard", 20: "Composition", 21: "Funding",
    22: "Physical object", 23: "Data management plan", 24: "Workflow", 25: "Monograph",
    26: "Performance", 27: "Event", 28: "Service", 29: "Model",
}  # fmt: skip
MONTHS = tuple(calendar.month_name)
_ALLOWED = {
    "Identify": (set(), set()),
    "ListMetadataFormats": (set(), {"identifier"}),
    "ListSets": (set(), set()),
    "GetRecord": ({"identifier", "metadataPrefix"}, set()),
    "ListIdentifiers": ({"metadataPrefix"}, {"from", "until", "set"}),
    "ListRecords": ({"metadataPrefix"}, {"from", "until", "set"}),
}
_PAGED = ("ListSets", "ListIdentifiers", "ListRecords")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_SET = re.compile(r"(portal|item_type|category)_(\d+)|month_year_(\d{1,2})_(\d{4})")
_INDEX: web.AppKey[dict[tuple[int, int, str], PublishIndex]] = web.AppKey("oai_index", dict)

ET.register_namespace("", OAI_NS)
ET.register_namespace("xsi", XSI_NS)
ET.register_namespace("oai_dc", OAI_DC_NS)
ET.register_namespace("dc", DC_NS)
ET.register_namespace("datacite", DATACITE_NS)


class OaiError(Exception):
    """An OAI-PMH error condition, answered as an <error> element with HTTP 200."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _clock(sim: Any) -> float:
    """Wall-clock seconds; a holder's `clock` callable replaces it (tests move time)."""
    clock = getattr(sim, "clock", None)
    return float(clock()) if callable(clock) else time.time()


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PublishIndex:
    """Public articles in list order, by default (published second, id): cheap range scans and
    resumption. `bulk` records mid-list share one second; `order` "shuffled" lists them in an
    order unrelated to their datestamps."""

    def __init__(self, corpus: Any, bulk: int = 0, order: str = "datestamp") -> None:
        # Withdrawals later only remove records: scans then skip ids that no longer exist.
        self.corpus = corpus
        self.ids = array("q", corpus.ids_by_published())
        self.stamps = array("q", (int(corpus.published(a).timestamp()) for a in self.ids))
        self._over: dict[int, int] = {}  # article id -> its datestamp where `bulk` moved it
        if bulk and len(self.ids):
            lo = max(0, (len(self.ids) - bulk) // 2)
            hi = min(len(self.ids), lo + bulk)
            self._over = {self.ids[p]: self.stamps[lo] for p in range(lo, hi)}
            pairs = sorted((self._over.get(a, s), a) for s, a in zip(self.stamps, self.ids,
                                                                      strict=True))
            self.stamps = array("q", (s for s, _ in pairs))
            self.ids = array("q", (a for _, a in pairs))
        self.first = min(self.stamps, default=1262913894)  # 2010-01-08T01:24:54Z
        self.last = max(self.stamps, default=self.first)
        self.ordered = order == "datestamp"
        self._pos: dict[int, int] = {}
        if not self.ordered:  # a fixed pseudo-random order: Knuth's multiplicative hash
            pairs = sorted(zip(self.ids, self.stamps, strict=True),
                           key=lambda p: (p[0] * 2654435761) % 2**32)
            self.ids = array("q", (a for a, _ in pairs))
            self.stamps = array("q", (s for _, s in pairs))
            self._pos = {a: p for p, a in enumerate(self.ids)}
        self._columns: dict[str, array[int]] = {}
        self._counts: dict[tuple[Any, ...], int] = {}

    def datestamp(self, article_id: int) -> int:
        """The second a header shows for an article."""
        over = self._over.get(article_id)
        return over if over is not None else int(self.corpus.published(article_id).timestamp())

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Positions that may hold records with lo <= datestamp <= hi (all when unordered)."""
        if not self.ordered:
            return 0, len(self.ids)
        return bisect_left(self.stamps, lo), bisect_right(self.stamps, hi)

    def after(self, stamp: int, article_id: int) -> int:
        """Position of the first record after (stamp, article_id) in list order."""
        if not self.ordered:
            return self._pos[article_id] + 1
        pos, end = bisect_left(self.stamps, stamp), bisect_right(self.stamps, stamp)
        while pos < end and self.ids[pos] <= article_id:
            pos += 1
        return pos

    def column(self, name: str) -> array[int]:
        """institution_of / item_type_of of every record, aligned with `ids`, built on first use."""
        if name not in self._columns:
            lookup = getattr(self.corpus, f"{name}_of")
            self._columns[name] = array("q", (lookup(a) for a in self.ids))
        return self._columns[name]

    def intact(self) -> bool:
        return len(self.corpus.ids) == len(self.ids)

    def count(self, key: tuple[Any, ...], compute: Callable[[], int]) -> int:
        """completeListSize of a query, remembered per corpus generation."""
        key = (*key, getattr(self.corpus, "generation", 0))
        if key not in self._counts:
            if len(self._counts) > 1_000:
                self._counts.clear()
            self._counts[key] = compute()
        return self._counts[key]

    @property
    def earliest(self) -> int:
        return self.first


def _index(request: web.Request) -> PublishIndex:
    sim = request.app[SIMULATOR]
    corpus, settings = sim.corpus, sim.settings
    cache = request.app[_INDEX]
    key = (id(corpus), settings.oai_bulk_items, settings.oai_order)
    index = cache.get(key)
    if index is None or index.corpus is not corpus:
        cache.clear()
        index = cache[key] = PublishIndex(corpus, settings.oai_bulk_items, settings.oai_order)
    return index


def set_specs(corpus: Any, article_id: int) -> list[str]:
    """The setSpecs a header lists, in Figshare's order: categories, portal, item type.

    Figshare's documented headers never list month_year_* even for records found through one.
    """
    specs = [f"category_{c}" for c in sorted(corpus.category_ids_of(article_id))]
    institution = corpus.institution_of(article_id)
    if institution:
        specs.append(f"portal_{institution}")
    specs.append(f"item_type_{corpus.item_type_of(article_id)}")
    return specs


def _set_filter(
    index: PublishIndex, spec: str | None
) -> tuple[Callable[[int], bool] | None, tuple[int, int]]:
    """(predicate on a position or None, [lo, hi] seconds) selecting a set; unknown -> empty."""
    everything = (-(2**62), 2**62)
    if spec is None:
        return None, everything
    match = _SET.fullmatch(spec)
    if match is None:
        return (lambda _pos: False), everything
    kind, value, month, year = match.groups()
    if month is not None:
        m, y = int(month), int(year)
        if not 1 <= m <= 12:
            return (lambda _pos: False), everything
        lo = calendar.timegm((y, m, 1, 0, 0, 0))
        hi = calendar.timegm((y + m // 12, m % 12 + 1, 1, 0, 0, 0)) - 1
        return None, (lo, hi)
    n = int(value)
    if kind in ("portal", "item_type"):
        column = index.column("institution" if kind == "portal" else "item_type")
        return (lambda pos: column[pos] == n), everything
    ids, categories = index.ids, index.corpus.category_ids_of
    return (lambda pos: n in categories(ids[pos])), everything


def _parse_datestamp(value: str, *, until: bool) -> tuple[int, str]:
    """(epoch second, granularity) of a from/until argument; day granularity spans the day."""
    try:
        if _SECOND.fullmatch(value):
            when = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            return int(when.timestamp()), "second"
        if _DAY.fullmatch(value):
            when = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            return int(when.timestamp()) + (86_399 if until else 0), "day"
    except ValueError:
        pass
    raise OaiError("badArgument", f"Illegal date: {value}")


# --- resumption tokens ------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """Everything needed to continue a list: the token is this, serialized."""

    verb: str
    prefix: str | None = None
    set: str | None = None
    lo: int = -(2**62)
    hi: int = 2**62
    size: int = 0  # completeListSize
    cursor: int = 0  # records returned before this page
    last: tuple[int, int] | None = None  # (published second, id) of the last record sent
    expires: float = 0.0


def _encode(query: Query) -> str:
    raw = orjson.dumps([query.verb, query.prefix, query.set, query.lo, query.hi, query.size,
                        query.cursor, query.last, query.expires])  # fmt: skip
    # Standard base64 like Figshare's tokens: '+', '/' and '=' must be URL-encoded by the client.
    return base64.b64encode(raw).decode()


def _decode(token: str, verb: str, now: float) -> Query:
    try:
        fields = orjson.loads(base64.b64decode(token, validate=True))
        v, prefix, spec, lo, hi, size, cursor, last, expires = fields
        query = Query(v, prefix, spec, int(lo), int(hi), int(size), int(cursor),
                      tuple(last) if last else None, float(expires))  # fmt: skip
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise OaiError("badResumptionToken", "The resumption token is invalid") from None
    if query.verb != verb:
        raise OaiError("badResumptionToken", "The resumption token belongs to another verb")
    if now > query.expires:
        raise OaiError("badResumptionToken", "The resumption token has expired")
    return query


# --- verbs ------------------------------------------------------------------------------------


def _q(tag: str) -> str:
    return f"{{{OAI_NS}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, ns: str = OAI_NS) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ns}}}{tag}")
    element.text = text
    return element


def _identify(root: ET.Element, request: web.Request, base_url: str) -> None:
    body = _sub(root, "Identify")
    _sub(body, "repositoryName", "figshare")
    _sub(body, "baseURL", base_url)
    _sub(body, "protocolVersion", "2.0")
    _sub(body, "adminEmail", "info@figshare.com")
    _sub(body, "earliestDatestamp", _stamp(_index(request).earliest))
    _sub(body, "deletedRecord", "transient")
    _sub(body, "granularity", "YYYY-MM-DDThh:mm:ssZ")


def _article_id(corpus: Any, identifier: str) -> int:
    tail = identifier.removeprefix(IDENTIFIER_PREFIX)
    if tail == identifier or not tail.isdigit() or not corpus.exists(int(tail)):
        raise OaiError("idDoesNotExist", f"No matching identifier: {identifier}")
    return int(tail)


def _list_formats(root: ET.Element, corpus: Any, args: dict[str, str]) -> None:
    if "identifier" in args:
        _article_id(corpus, args["identifier"])
    body = _sub(root, "ListMetadataFormats")
    for prefix, (namespace, schema) in FORMATS.items():
        fmt = _sub(body, "metadataFormat")
        _sub(fmt, "metadataPrefix", prefix)
        _sub(fmt, "schema", schema)
        _sub(fmt, "metadataNamespace", namespace)


def all_sets(corpus: Any, index: PublishIndex) -> list[tuple[str, str]]:
    """(setSpec, setName) of every set: portals, item types, categories, then months."""
    sets = [(f"portal_{inst.id}", inst.name) for inst in corpus.institutions]
    sets += [(f"item_type_{n}", name) for n, name in ITEM_TYPES.items()]
    sets += [(f"category_{c['id']}", c["title"]) for c in corpus.categories]
    if len(index.stamps):
        first = datetime.fromtimestamp(index.first, UTC)
        last = datetime.fromtimestamp(index.last, UTC)
        y, m = first.year, first.month
        while (y, m) <= (last.year, last.month):
            sets.append((f"month_year_{m}_{y}", f"{MONTHS[m]} {y}"))
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return sets


def _header(parent: ET.Element, corpus: Any, article_id: int, stamp: int) -> None:
    header = _sub(parent, "header")
    _sub(header, "identifier", f"{IDENTIFIER_PREFIX}{article_id}")
    _sub(header, "datestamp", _stamp(stamp))
    for spec in set_specs(corpus, article_id):
        _sub(header, "setSpec", spec)


def _record(parent: ET.Element, corpus: Any, article_id: int, stamp: int, prefix: str) -> None:
    record = _sub(parent, "record")
    _header(record, corpus, article_id, stamp)
    metadata = _sub(record, "metadata")
    article = corpus.article(article_id)
    if prefix == "oai_dc":
        _oai_dc(metadata, article)
    else:
        _datacite(metadata, article)


def _oai_dc(parent: ET.Element, article: dict[str, Any]) -> None:
    dc = ET.SubElement(parent, f"{{{OAI_DC_NS}}}dc", {
        f"{{{XSI_NS}}}schemaLocation": f"{OAI_DC_NS} {FORMATS['oai_dc'][1]}",
    })  # fmt: skip
    _sub(dc, "title", article.get("title") or "", DC_NS)
    for author in article.get("authors") or ():
        _sub(dc, "creator", f"{author.get('full_name', '')} ({author.get('id')})", DC_NS)
    for category in article.get("categories") or ():
        _sub(dc, "subject", category.get("title", ""), DC_NS)
    for tag in article.get("tags") or ():
        _sub(dc, "subject", str(tag), DC_NS)
    _sub(dc, "description", article.get("description") or "", DC_NS)
    _sub(dc, "date", article.get("published_date") or "", DC_NS)
    _sub(dc, "type", (article.get("defined_type_name") or "").capitalize(), DC_NS)
    if article.get("doi"):
        _sub(dc, "identifier", article["doi"], DC_NS)
    _sub(dc, "relation", article.get("figshare_url") or article.get("url_public_html") or "", DC_NS)
    license_ = article.get("license") or {}
    if license_.get("name"):
        _sub(dc, "rights", license_["name"], DC_NS)


def _datacite(parent: ET.Element, article: dict[str, Any]) -> None:
    resource = ET.SubElement(parent, f"{{{DATACITE_NS}}}resource", {
        f"{{{XSI_NS}}}schemaLocation": f"{DATACITE_NS} {FORMATS['oai_datacite'][1]}",
    })  # fmt: skip
    ident = _sub(resource, "identifier", article.get("doi") or "", DATACITE_NS)
    ident.set("identifierType", "DOI")
    creators = _sub(resource, "creators", ns=DATACITE_NS)
    for author in article.get("authors") or ():
        creator = _sub(creators, "creator", ns=DATACITE_NS)
        _sub(creator, "creatorName", author.get("full_name", ""), DATACITE_NS)
        if author.get("orcid_id"):
            orcid = _sub(creator, "nameIdentifier", author["orcid_id"], DATACITE_NS)
            orcid.set("nameIdentifierScheme", "ORCID")
    titles = _sub(resource, "titles", ns=DATACITE_NS)
    _sub(titles, "title", article.get("title") or "", DATACITE_NS)
    _sub(resource, "publisher", "figshare", DATACITE_NS)
    _sub(resource, "publicationYear", (article.get("published_date") or "")[:4], DATACITE_NS)
    subjects = _sub(resource, "subjects", ns=DATACITE_NS)
    for category in article.get("categories") or ():
        _sub(subjects, "subject", category.get("title", ""), DATACITE_NS)
    for tag in article.get("tags") or ():
        _sub(subjects, "subject", str(tag), DATACITE_NS)
    dates = _sub(resource, "dates", ns=DATACITE_NS)
    _sub(dates, "date", article.get("published_date") or "", DATACITE_NS).set("dateType", "Issued")
    rtype = _sub(resource, "resourceType", article.get("defined_type_name") or "", DATACITE_NS)
    rtype.set("resourceTypeGeneral", "Dataset" if article.get("defined_type") == 3 else "Other")
    descriptions = _sub(resource, "descriptions", ns=DATACITE_NS)
    desc = _sub(descriptions, "description", article.get("description") or "", DATACITE_NS)
    desc.set("descriptionType", "Abstract")
    license_ = article.get("license") or {}
    if license_.get("name"):
        rights = _sub(_sub(resource, "rightsList", ns=DATACITE_NS), "rights", license_["name"],
                      DATACITE_NS)  # fmt: skip
        rights.set("rightsURI", license_.get("url") or "")


def _scan(index: PublishIndex, query: Query, keep: Callable[[int], bool] | None) -> Iterator[int]:
    """Positions of matching records after the query's last record, within its bounds."""
    lo, hi = index.span(query.lo, query.hi)
    if query.last is not None:
        lo = max(lo, index.after(*query.last))
    ids, exists, intact = index.ids, index.corpus.exists, index.intact()
    stamps, ordered, first, last = index.stamps, index.ordered, query.lo, query.hi
    for pos in range(lo, hi):
        if (keep is None or keep(pos)) and (intact or exists(ids[pos])) \
                and (ordered or first <= stamps[pos] <= last):
            yield pos


def _list_records(
    root: ET.Element, request: web.Request, verb: str, args: dict[str, str], now: float
) -> None:
    sim = request.app[SIMULATOR]
    corpus, settings = sim.corpus, sim.settings
    index = _index(request)
    if "resumptionToken" in args:
        query = _decode(args["resumptionToken"], verb, now)
        pages = settings.oai_token_pages
        if pages and query.cursor >= pages * settings.oai_page_size:
            raise OaiError("badResumptionToken", "The resumption token has expired")
    else:
        query = _new_query(index, verb, args)
    keep, _ = _set_filter(index, query.set)
    page: list[int] = []
    more = False
    for pos in _scan(index, query, keep):
        if len(page) == settings.oai_page_size:
            more = True
            break
        page.append(pos)
    if not page:
        raise OaiError("noRecordsMatch", "No records match the request")
    body = _sub(root, verb)
    for pos in page:
        aid, stamp = index.ids[pos], index.stamps[pos]
        if verb == "ListIdentifiers":
            _header(body, corpus, aid, stamp)
        else:
            _record(body, corpus, aid, stamp, query.prefix or "oai_dc")
    first_page = "resumptionToken" not in args
    if more or not first_page:
        last = index.ids[page[-1]]
        nxt = Query(query.verb, query.prefix, query.set, query.lo, query.hi, query.size,
                    query.cursor + len(page), (index.stamps[page[-1]], last),
                    now + settings.oai_token_ttl)  # fmt: skip
        _resumption(body, query, _encode(nxt) if more else None, nxt.expires)


def _resumption(parent: ET.Element, query: Query, token: str | None, expires: float) -> None:
    attrs = {"completeListSize": str(query.size), "cursor": str(query.cursor)}
    if token is not None:
        attrs = {"expirationDate": _stamp(expires), **attrs}
    _sub(parent, "resumptionToken", token).attrib.update(attrs)


def _new_query(index: PublishIndex, verb: str, args: dict[str, str]) -> Query:
    prefix = args["metadataPrefix"]
    if prefix not in FORMATS:
        raise OaiError("cannotDisseminateFormat", f"Unsupported metadataPrefix: {prefix}")
    lo, hi = -(2**62), 2**62
    grains = set()
    if "from" in args:
        lo, grain = _parse_datestamp(args["from"], until=False)
        grains.add(grain)
    if "until" in args:
        hi, grain = _parse_datestamp(args["until"], until=True)
        grains.add(grain)
    if len(grains) > 1:
        raise OaiError("badArgument", "from and until have different granularities")
    if lo > hi:
        raise OaiError("badArgument", "from is later than until")
    keep, (set_lo, set_hi) = _set_filter(index, args.get("set"))
    lo, hi = max(lo, set_lo), min(hi, set_hi)
    query = Query(verb, prefix, args.get("set"), lo, hi)
    if lo > hi:
        return query
    if keep is None and index.intact() and index.ordered:
        first, last = index.span(lo, hi)
        return replace(query, size=last - first)
    size = index.count((query.set, lo, hi), lambda: sum(1 for _ in _scan(index, query, keep)))
    return replace(query, size=size)


def _list_sets(root: ET.Element, request: web.Request, args: dict[str, str], now: float) -> None:
    sim = request.app[SIMULATOR]
    sets = all_sets(sim.corpus, _index(request))
    if "resumptionToken" in args:
        query = _decode(args["resumptionToken"], "ListSets", now)
    else:
        query = Query("ListSets", size=len(sets))
    start = query.cursor
    page = sets[start : start + sim.settings.oai_page_size]
    body = _sub(root, "ListSets")
    for spec, name in page:
        element = _sub(body, "set")
        _sub(element, "setSpec", spec)
        _sub(element, "setName", name)
    more = start + len(page) < len(sets)
    if more or start:
        nxt = Query("ListSets", size=len(sets), cursor=start + len(page),
                    expires=now + sim.settings.oai_token_ttl)  # fmt: skip
        _resumption(body, query, _encode(nxt) if more else None, nxt.expires)


def _get_record(root: ET.Element, request: web.Request, args: dict[str, str]) -> None:
    corpus = request.app[SIMULATOR].corpus
    prefix = args["metadataPrefix"]
    article_id = _article_id(corpus, args["identifier"])
    if prefix not in FORMATS:
        raise OaiError("cannotDisseminateFormat", f"Unsupported metadataPrefix: {prefix}")
    stamp = _index(request).datestamp(article_id)
    _record(_sub(root, "GetRecord"), corpus, article_id, stamp, prefix)


def _arguments(params: Any) -> tuple[str, dict[str, str]]:
    """(verb, other arguments), checked against the verb's required/optional/exclusive set."""
    verbs = params.getall("verb", [])
    if len(verbs) != 1 or verbs[0] not in _ALLOWED:
        raise OaiError("badVerb", "Illegal OAI verb" if verbs else "Missing OAI verb")
    verb = verbs[0]
    args: dict[str, str] = {}
    for key in params:
        if key == "verb":
            continue
        if len(params.getall(key)) > 1:
            raise OaiError("badArgument", f"Repeated argument: {key}")
        args[key] = params[key]
    required, optional = _ALLOWED[verb]
    if "resumptionToken" in args and verb in _PAGED:
        if len(args) > 1:
            raise OaiError("badArgument", "resumptionToken is an exclusive argument")
        return verb, args
    illegal = sorted(set(args) - required - optional)
    if illegal:
        raise OaiError("badArgument", f"Illegal argument(s): {', '.join(illegal)}")
    missing = sorted(required - set(args))
    if missing:
        raise OaiError("badArgument", f"Missing required argument(s): {', '.join(missing)}")
    return verb, args


async def oai(request: web.Request) -> web.Response:
    """One OAI-PMH request (GET query or POST form); errors are <error> elements with HTTP 200."""
    sim = request.app[SIMULATOR]
    params = await request.post() if request.method == "POST" else request.query
    now = _clock(sim)
    base_url = str(request.url.with_query(None))
    root = ET.Element(_q("OAI-PMH"), {
        f"{{{XSI_NS}}}schemaLocation": f"{OAI_NS} http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd",
    })  # fmt: skip
    _sub(root, "responseDate", _stamp(now))
    request_element = _sub(root, "request", base_url)
    try:
        verb, args = _arguments(params)
        request_element.attrib.update({"verb": verb, **args})
        if verb == "Identify":
            _identify(root, request, base_url)
        elif verb == "ListMetadataFormats":
            _list_formats(root, sim.corpus, args)
        elif verb == "ListSets":
            _list_sets(root, request, args, now)
        elif verb == "GetRecord":
            _get_record(root, request, args)
        else:
            _list_records(root, request, verb, args, now)
    except OaiError as err:
        if err.code in ("badVerb", "badArgument"):
            request_element.attrib.clear()  # the protocol: echo no attributes for these
        for child in list(root)[2:]:
            root.remove(child)
        _sub(root, "error", str(err)).set("code", err.code)
    body = (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        '<?xml-stylesheet type="text/xsl" href="/v2/static/oai2.xsl"?>\n'
        + ET.tostring(root, encoding="unicode")
    )
    return web.Response(text=body, content_type="text/xml", charset="utf-8")


def add_routes(app: web.Application) -> None:
    """Register GET and POST /v2/oai on the API host's app."""
    app[_INDEX] = {}
    app.router.add_get("/v2/oai", oai)
    app.router.add_post("/v2/oai", oai)
