"""Configured sources -> batches of article ids, with the requests and partitions it took."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvester.client import Client
from harvester.config import DEFAULT_API_URL, Source, read_ids_file
from harvester.errors import Abort, AuthError, BadResponse, NotFound, RequestError
from harvester.figshare import PAGE_SIZE, list_query, valid_id
from harvester.oaipmh import OaiLister, portal_set
from harvester.partition import (
    SKIPPED_SAMPLE,
    Exhauster,
    IdSet,
    Limits,
    Lister,
    Partition,
    parse_stamp,
)

log = logging.getLogger("harvester")

ADMIN_KINDS = frozenset({"institution_articles", "reviews"})
DOI_LOOKUPS_AT_ONCE = 16  # DOI -> id lookups in flight (the client's limits still apply)
SAMPLE = 1_000  # unresolved lines, or ids only one side listed, quoted (the counts are exact)
# listed modified dates one date-bounded listing keeps for the fetcher (~10 MB); beyond, none
MAX_LISTED_DATES = 100_000
UNDATED = 1 << 62  # a listed item without a readable modified_date: it may have changed anytime
# the GET /articles filters a DOI line is looked up by, in order (doi_match: any); NOTES §4.1
DOI_FIELDS = ("doi", "resource_doi", "handle")
DOI_PAGE_SIZE = 10  # hits of one DOI asked a page: most name one item
DOI_MAX_PAGES = 100  # pages of one DOI's hits followed at most (items sharing a resource_doi)
COUNTS = ("listed", "distinct", "requests", "truncated")
# manifest key -> SourceReport attribute, written only when it holds something
OPTIONAL = {"unresolved": "unresolved_count", "unresolved_lines": "unresolved",
            "reconcile": "reconcile", "skipped": "skipped", "skipped_sample": "skipped_sample"}


@dataclass
class SideRecord:
    """A record a source yields besides ids: a collection, a project or a review."""

    kind: str  # "collection", "project" or "review"
    key: int
    body: dict[str, Any]


@dataclass
class SourceReport:
    """What enumerating one source took; goes into the manifest."""

    name: str
    kind: str
    listed: int = 0  # ids listed, duplicates included
    distinct: int = 0  # distinct ids this source produced
    requests: int = 0  # list/search (or OAI-PMH) requests spent enumerating
    partitions: list[Partition] = field(default_factory=list)
    truncated: bool = False  # some partition could not be narrowed under the window
    unresolved: list[str] = field(default_factory=list)  # ids_file lines without an article
    unresolved_count: int = 0
    reconcile: dict[str, Any] | None = None
    skipped: int = 0  # listed entries without a valid article id, skipped
    skipped_sample: list[str] = field(default_factory=list)
    page_size: int = PAGE_SIZE  # items asked per list page
    side: list[SideRecord] = field(default_factory=list, repr=False)  # not in the manifest
    # a modified_since listing's modified_date (epoch s) per id: what a 304 must not contradict
    # (ItemFetcher.note_listing); None: a dated listing whose dates are not all here
    modified: dict[int, int] | None = field(default_factory=dict, repr=False)

    @property
    def minimum_requests(self) -> int | None:
        """The fewest list requests any enumeration could use: one per page, plus the last
        (None for kinds that page no single REST list)."""
        if self.kind in ("ids", "ids_file", "oai", "collections"):
            return None
        return self.distinct // self.page_size + 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind,
                               **{k: getattr(self, k) for k in COUNTS},
                               "partitions": [p.as_dict() for p in self.partitions]}
        if self.minimum_requests is not None:
            out["minimum_requests"] = self.minimum_requests
        out.update((key, getattr(self, attr)) for key, attr in OPTIONAL.items()
                   if getattr(self, attr))
        return out

    def restore(self, info: Mapping[str, Any]) -> None:
        """Take back what a finished source reported (a resumed run's manifest shows it too)."""
        for key, attr in [*zip(COUNTS, COUNTS, strict=True), *OPTIONAL.items()]:
            if key in info:
                setattr(self, attr, info[key])
        self.partitions = [Partition(**p) for p in info.get("partitions", ())]
        # listed by an earlier run: a date-bounded listing's dates are gone (and its 304s
        # untrusted); the others never had any
        dated = any("modified_since" in p.query for p in self.partitions)
        self.modified = None if dated else {}

    def absorb(self, walker: Lister) -> None:
        self.listed += walker.listed
        self.distinct += len(walker.seen)
        self.requests += walker.requests
        self.partitions.extend(walker.partitions)
        self.truncated = self.truncated or walker.truncated
        if walker.skipped:
            self.skipped += walker.skipped
            room = SKIPPED_SAMPLE - len(self.skipped_sample)
            self.skipped_sample.extend(walker.skipped_sample[:room])
            log.warning("source %s: %d listed entries without a valid article id skipped "
                        "(e.g. %s), so it is truncated; see the manifest's sources", self.name,
                        walker.skipped, ", ".join(walker.skipped_sample[:3]))


async def enumerate_source(
    client: Client, api_url: str, source: Source, report: SourceReport,
    limits: Limits | None = None,
) -> AsyncIterator[list[int]]:
    """Yield batches of ids for one source, filling `report` as it goes. `limits`: the run's
    page size and learned windows, shared by its sources (default: the documented ones)."""
    limits = limits or Limits()
    report.page_size = limits.page_size
    walk = {"ids": _ids, "ids_file": _ids_file, "oai": _oai, "collection": _container,
            "project": _container, "collections": _collections}.get(source.kind, _listed)
    try:
        async for batch in walk(client, api_url, source, report, limits):
            yield batch
    except AuthError as exc:
        need = ("an institution administrator's token" if source.kind in ADMIN_KINDS
                else "a valid api.token")
        raise AuthError(f"source {source.name!r} (kind {source.kind}) needs {need}: {exc}",
                        url=exc.url, status=exc.status, reason=exc.reason) from None


async def _ids(client: Client, api_url: str, source: Source, report: SourceReport,
               limits: Limits) -> AsyncIterator[list[int]]:
    ids = list(source.params["ids"])
    report.listed, report.distinct = len(ids), len(set(ids))
    yield ids


async def _oai(client: Client, api_url: str, source: Source, report: SourceReport,
               limits: Limits) -> AsyncIterator[list[int]]:
    params = source.params
    lister = OaiLister(client, api_url + "/oai", set_spec=params.get("set"),
                       from_=params.get("from"), until=params.get("until"))
    async for batch in lister.ids():
        yield batch
    report.absorb(lister)


async def _listed(client: Client, api_url: str, source: Source, report: SourceReport,
                  limits: Limits) -> AsyncIterator[list[int]]:
    """A list or search query, walked past the window; `reconcile: oai` checks it."""
    kind, params = source.kind, source.params
    walker = Exhauster(client, api_url, limits=limits)
    if kind == "reviews":
        walker.on_items = lambda items: _keep_reviews(report, walker, items)
    elif "modified_since" in params:
        walker.on_items = lambda items: _keep_dates(report, items)
    try:
        async for batch in walker.ids(list_query(kind, params)):
            yield batch
    except NotFound as exc:  # a listing is never missing: the base URL is wrong
        raise NotFound(f"{exc} (no such listing: is api.url the API's base, as Figshare's "
                       f"{DEFAULT_API_URL}?)", url=exc.url, status=404) from None
    report.absorb(walker)
    if params.get("reconcile") == "oai":
        if "modified_since" in params:
            # an incremental run lists what changed; the portal set holds everything
            report.reconcile = {"against": "oai", "skipped": "incremental run (modified_since)"}
        else:
            async for batch in _reconcile_oai(client, api_url, source, walker.seen, report):
                yield batch


def _keep_reviews(report: SourceReport, walker: Lister,
                  items: list[Mapping[str, Any]]) -> None:
    """Each listed review as a side record; one without a valid id is skipped and counted."""
    for review in items:
        if valid_id(review.get("id")):
            report.side.append(SideRecord("review", review["id"], dict(review)))
        else:
            walker.skip(review, "id")


def _keep_dates(report: SourceReport, items: list[Mapping[str, Any]]) -> None:
    """Each listed id's modified_date, the latest if listed twice; too many: none kept."""
    if report.modified is None:
        return
    for item in items:
        aid, at = item.get("id"), parse_stamp(item.get("modified_date"))
        if valid_id(aid):
            at = UNDATED if at is None else at
            report.modified[aid] = max(at, report.modified.get(aid, at))
    if len(report.modified) > MAX_LISTED_DATES:
        report.modified = None


async def _container(
    client: Client, api_url: str, source: Source, report: SourceReport, limits: Limits,
    key: int | None = None,
) -> AsyncIterator[list[int]]:
    """A collection's or a project's own record, then the articles in it (`key`: the
    collection a `collections` source listed)."""
    kind = "collection" if key is not None else source.kind
    key = int(source.params[kind]) if key is None else key
    url = f"{api_url}/{kind}s/{key}"
    try:
        record = (await client.get(url)).data
    except NotFound:
        raise NotFound(f"source {source.name!r}: {kind} {key} does not exist or is not public "
                       f"(GET {url} -> 404)", url=url, status=404) from None
    if not isinstance(record, dict) or not valid_id(record.get("id")) or record["id"] != key:
        raise BadResponse(f"GET {url} -> 200 but the body is not the record of {kind} {key}",
                          url=url, status=200)
    walker = Exhauster(client, api_url, limits=limits)
    members: list[int] = []
    async for batch in walker.ids(list_query(kind, {kind: key})):
        members.extend(batch)
        yield batch
    # a short page is not the membership: the record says how many articles it holds
    count = record.get("articles_count") if kind == "collection" else None
    if valid_id(count) and len(walker.seen) < count:
        part = walker.partitions[0]
        part.truncated = walker.truncated = True
        part.note = "; ".join(filter(None, [part.note, f"lists {len(walker.seen)} of the "
                                            f"{count} articles its record counts"]))
    report.absorb(walker)
    report.requests += 1  # the record itself
    report.side.append(SideRecord(kind, key, {"record": record,
                                              "articles": list(dict.fromkeys(members))}))


async def _collections(
    client: Client, api_url: str, source: Source, report: SourceReport, limits: Limits
) -> AsyncIterator[list[int]]:
    """An institution's or a group's collections (GET /collections), each one's record and
    articles as a `collection` source lists them; `distinct` counts an article once."""
    lister = Exhauster(client, api_url, limits=limits)
    keys: list[int] = []
    async for batch in lister.ids(list_query("collections", source.params)):
        keys.extend(batch)
    report.requests += lister.requests
    report.partitions.extend(lister.partitions)
    report.truncated = report.truncated or lister.truncated
    seen = IdSet()
    for key in dict.fromkeys(keys):
        # one collection's bad answer fails it alone (its members held back until it is whole)
        held: list[list[int]] = []
        try:
            async for batch in _container(client, api_url, source, report, limits, key):
                held.append(batch)
        except Abort:
            raise
        except RequestError as exc:
            report.truncated = True
            report.partitions.append(Partition(f"GET /collections/{key}", truncated=True,
                                               note=f"collection {key} failed: {exc}"[:300]))
            log.warning("source %s: collection %d failed, the rest go on: %s",
                        source.name, key, exc)
            continue
        for batch in held:
            seen.update(batch)
            yield batch
    report.distinct = len(seen)
    log.info("source %s: %d collections", source.name, len(set(keys)))


async def _reconcile_oai(
    client: Client, api_url: str, source: Source, rest: IdSet, report: SourceReport
) -> AsyncIterator[list[int]]:
    """List the institution's portal set over OAI-PMH, an enumeration independent of REST's:
    add what REST did not list, and report both differences (completeness is not assumed)."""
    spec = portal_set(int(source.params["institution"]))
    since = source.params.get("published_since")
    lister = OaiLister(client, api_url + "/oai", set_spec=spec,
                       from_=str(since) if since is not None else None)
    async for batch in lister.ids():
        only_oai = [i for i in batch if i not in rest]
        if only_oai:
            yield only_oai
    only_rest = [i for i in rest if i not in lister.seen]
    only_oai = [i for i in lister.seen if i not in rest]
    report.reconcile = {
        "against": "oai", "set": spec, "requests": lister.requests, "restarts": lister.restarts,
        "partitions": [p.as_dict() for p in lister.partitions],
        "rest": len(rest), "oai": len(lister.seen),
        "only_rest": len(only_rest), "only_oai": len(only_oai),
        "only_rest_ids": only_rest[:SAMPLE], "only_oai_ids": only_oai[:SAMPLE],
        "complete": not only_rest and not only_oai,
    }
    report.truncated = report.truncated or lister.truncated  # a cut cross-check is no check
    report.distinct += len(only_oai)
    if only_rest or only_oai:
        log.warning("source %s: REST and OAI-PMH disagree: %d ids only in REST, %d only in "
                    "OAI-PMH (added to the harvest); see the manifest's reconcile entry",
                    source.name, len(only_rest), len(only_oai))


async def _ids_file(client: Client, api_url: str, source: Source, report: SourceReport,
                   limits: Limits) -> AsyncIterator[list[int]]:
    """Article ids and DOIs from a file, one a line; a DOI resolved by GET /articles?doi=,
    then (doi_match: any) as the paper an item supplements (resource_doi), then as a handle."""
    path = Path(source.params["path"])
    fields = DOI_FIELDS if source.params.get("doi_match") == "any" else DOI_FIELDS[:1]
    ids, dois = await asyncio.to_thread(read_ids_file, path)
    seen = IdSet()
    seen.update(ids)
    report.listed += len(ids)
    if ids:
        yield ids
    for start in range(0, len(dois), DOI_LOOKUPS_AT_ONCE):
        chunk = dois[start : start + DOI_LOOKUPS_AT_ONCE]
        found = await asyncio.gather(*(_resolve(client, api_url, d, fields) for d in chunk))
        report.requests += sum(asked for _, asked, _ in found)
        report.truncated = report.truncated or not all(whole for _, _, whole in found)
        batch: list[int] = []
        for doi, (hits, _, _) in zip(chunk, found, strict=True):
            if not hits:
                report.unresolved_count += 1
                if len(report.unresolved) < SAMPLE:
                    report.unresolved.append(doi)
            batch.extend(hits)
        seen.update(batch)
        report.listed += len(batch)
        if batch:
            yield batch
    report.distinct = len(seen)
    if report.unresolved_count:
        log.warning("%s: %d DOIs resolve to no public article (listed in the manifest)",
                    path, report.unresolved_count)
    if report.truncated:
        log.warning("%s: the server listed items without the DOI asked for (or over %d pages "
                    "of one), so some DOIs may have more items than were found", path,
                    DOI_MAX_PAGES)


async def _resolve(client: Client, api_url: str, doi: str,
                   fields: tuple[str, ...]) -> tuple[list[int], int, bool]:
    """The ids the first field in `fields` that knows `doi` gives, the requests it took, and
    whether the lookup could list them all: a hit must carry the DOI, and a server listing one
    that does not ignores the filter, so the DOI's other items cannot be found there."""
    asked, whole = 0, True
    for name in fields:
        hits: list[int] = []
        for page in range(1, DOI_MAX_PAGES + 1):
            reply = await client.get(api_url + "/articles",
                                     params={name: doi, "page": page, "page_size": DOI_PAGE_SIZE})
            asked += 1
            items = reply.data if isinstance(reply.data, list) else []
            matched = [i["id"] for i in items if isinstance(i, Mapping)
                       and valid_id(i.get("id")) and _same_doi(i.get(name), doi)]
            hits.extend(matched)
            whole = whole and len(matched) == len(items)
            if len(items) < DOI_PAGE_SIZE or not whole:
                break
        else:
            whole = False  # more pages than DOI_MAX_PAGES: the rest unlisted
        if hits:
            break
    return hits, asked, whole


_VERSION = re.compile(r"\.v[0-9]+$")


def _same_doi(listed: Any, doi: str) -> bool:
    """DOIs match case-insensitively, either one with or without a version suffix (.vN)."""
    return isinstance(listed, str) and (_VERSION.sub("", listed.strip().lower())
                                        == _VERSION.sub("", doi.strip().lower()))
