"""Configured sources -> batches of article ids, with the requests and partitions it took."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvester.config import Source
from harvester.errors import AuthError, BadResponse, ConfigError, NotFound
from harvester.figshare import PAGE_SIZE, list_query, valid_id
from harvester.oaipmh import OaiLister, portal_set
from harvester.partition import SKIPPED_SAMPLE, Exhauster, IdSet, Limits, Partition, Transport
from harvester.reconcile import compare

log = logging.getLogger("harvester")

ADMIN_KINDS = frozenset({"institution_articles", "reviews"})
DOI_LOOKUPS_AT_ONCE = 16  # DOI -> id lookups in flight (the client's limits still apply)
SAMPLE = 1_000  # unresolved lines listed in the manifest (the count is exact)
_DOI = re.compile(r"10\.\d{4,9}/\S+")
# the GET /articles filters a DOI line is looked up by, in order (doi_match: any); NOTES §4.1
DOI_FIELDS = ("doi", "resource_doi", "handle")


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

    @property
    def minimum_requests(self) -> int | None:
        """The fewest list requests any enumeration could use: one per page, plus the last
        (None for kinds that page no REST list, ids, ids_file, oai, or several: collections)."""
        if self.kind in ("ids", "ids_file", "oai", "collections"):
            return None
        return self.distinct // self.page_size + 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "listed": self.listed,
            "distinct": self.distinct, "requests": self.requests, "truncated": self.truncated,
            "partitions": [p.as_dict() for p in self.partitions],
        }
        if self.minimum_requests is not None:
            out["minimum_requests"] = self.minimum_requests
        if self.unresolved_count:
            out["unresolved"] = self.unresolved_count
            out["unresolved_lines"] = self.unresolved
        if self.reconcile is not None:
            out["reconcile"] = self.reconcile
        if self.skipped:
            out["skipped"] = self.skipped
            out["skipped_sample"] = self.skipped_sample
        return out

    def restore(self, info: Mapping[str, Any]) -> None:
        """Take back what a finished source reported (a resumed run's manifest shows it too)."""
        self.listed = info.get("listed", 0)
        self.distinct = info.get("distinct", 0)
        self.requests = info.get("requests", 0)
        self.truncated = info.get("truncated", False)
        self.partitions = [Partition(**p) for p in info.get("partitions", ())]
        self.unresolved_count = info.get("unresolved", 0)
        self.unresolved = list(info.get("unresolved_lines", ()))
        self.reconcile = info.get("reconcile")
        self.skipped = info.get("skipped", 0)
        self.skipped_sample = list(info.get("skipped_sample", ()))

    def absorb(self, walker: Exhauster | OaiLister) -> None:
        self.listed += walker.listed
        self.distinct += len(walker.seen)
        self.requests += walker.requests
        self.partitions.extend(walker.partitions)
        self.truncated = self.truncated or walker.truncated
        skipped = walker.skipped
        if skipped:
            self.skipped += skipped
            room = SKIPPED_SAMPLE - len(self.skipped_sample)
            self.skipped_sample.extend(walker.skipped_sample[:room])
            log.warning("source %s: %d listed entries without a valid article id skipped "
                        "(e.g. %s); see the manifest's sources", self.name, skipped,
                        ", ".join(walker.skipped_sample[:3]))


async def enumerate_source(
    client: Transport, api_url: str, source: Source, report: SourceReport,
    limits: Limits | None = None,
) -> AsyncIterator[list[int]]:
    """Yield batches of ids for one source, filling `report` as it goes. `limits`: the run's
    page size and learned windows, shared by its sources (default: the documented ones)."""
    limits = limits if limits is not None else Limits()
    report.page_size = limits.page_size
    try:
        async for batch in _enumerate(client, api_url, source, report, limits):
            yield batch
    except AuthError as exc:
        need = ("an institution administrator's token" if source.kind in ADMIN_KINDS
                else "a valid api.token")
        raise AuthError(f"source {source.name!r} (kind {source.kind}) needs {need}: {exc}",
                        url=exc.url, status=exc.status, reason=exc.reason) from None


async def _enumerate(
    client: Transport, api_url: str, source: Source, report: SourceReport, limits: Limits
) -> AsyncIterator[list[int]]:
    kind, params = source.kind, source.params
    if kind == "ids":
        ids = list(params["ids"])
        report.listed = len(ids)
        report.distinct = len(set(ids))
        yield ids
        return
    if kind == "ids_file":
        fields = DOI_FIELDS if params.get("doi_match") == "any" else DOI_FIELDS[:1]
        async for batch in _ids_file(client, api_url, Path(params["path"]), report, fields):
            yield batch
        return
    if kind == "oai":
        lister = OaiLister(client, api_url + "/oai", set_spec=params.get("set"),
                           from_=params.get("from"), until=params.get("until"))
        async for batch in lister.ids():
            yield batch
        report.absorb(lister)
        return
    if kind in ("collection", "project"):
        async for batch in _container(client, api_url, source, report, limits):
            yield batch
        return
    if kind == "collections":
        async for batch in _collections(client, api_url, source, report, limits):
            yield batch
        return
    walker = Exhauster(client, api_url, limits=limits)
    if kind == "reviews":
        walker.on_items = lambda items: report.side.extend(
            SideRecord("review", r["id"], dict(r)) for r in items if isinstance(r.get("id"), int))
    async for batch in walker.ids(list_query(kind, params)):
        yield batch
    report.absorb(walker)
    if params.get("reconcile") == "oai":
        if "modified_since" in params:
            # an incremental run lists what changed; the portal set holds everything
            report.reconcile = {"against": "oai", "skipped": "incremental run (modified_since)"}
        else:
            async for batch in _reconcile_oai(client, api_url, source, walker.seen, report):
                yield batch


async def _container(
    client: Transport, api_url: str, source: Source, report: SourceReport, limits: Limits,
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
    if not isinstance(record, dict) or record.get("id") != key:
        raise BadResponse(f"GET {url} -> 200 but the body is not the record of {kind} {key}",
                          url=url, status=200)
    walker = Exhauster(client, api_url, limits=limits)
    members: list[int] = []
    async for batch in walker.ids(list_query(kind, {kind: key})):
        members.extend(batch)
        yield batch
    report.absorb(walker)
    report.requests += 1  # the record itself
    report.side.append(SideRecord(kind, key, {"record": record,
                                              "articles": list(dict.fromkeys(members))}))


async def _collections(
    client: Transport, api_url: str, source: Source, report: SourceReport, limits: Limits
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
        async for batch in _container(client, api_url, source, report, limits, key):
            for aid in batch:
                seen.add(aid)
            yield batch
    report.distinct = len(seen)
    log.info("source %s: %d collections", source.name, len(set(keys)))


async def _reconcile_oai(
    client: Transport, api_url: str, source: Source, rest: IdSet, report: SourceReport
) -> AsyncIterator[list[int]]:
    """List the institution's portal set over OAI-PMH; add and report what REST did not list."""
    spec = portal_set(int(source.params["institution"]))
    since = source.params.get("published_since")
    lister = OaiLister(client, api_url + "/oai", set_spec=spec,
                       from_=str(since) if since is not None else None)
    async for batch in lister.ids():
        extra = [i for i in batch if i not in rest]
        if extra:
            yield extra
    report.reconcile = compare(rest, lister.seen, names=("rest", "oai"), detail={
        "set": spec, "requests": lister.requests, "restarts": lister.restarts,
        "partitions": [p.as_dict() for p in lister.partitions],
    })
    report.truncated = report.truncated or lister.truncated  # a cut cross-check is no check
    added = report.reconcile["only_oai"]
    report.distinct += added
    if not report.reconcile["complete"]:
        log.warning("source %s: REST and OAI-PMH disagree: %d ids only in REST, %d only in "
                    "OAI-PMH (added to the harvest); see the manifest's reconcile entry",
                    source.name, report.reconcile["only_rest"], added)


async def _ids_file(
    client: Transport, api_url: str, path: Path, report: SourceReport,
    fields: tuple[str, ...] = DOI_FIELDS[:1],
) -> AsyncIterator[list[int]]:
    """Article ids and DOIs from a file, one a line; a DOI resolved by GET /articles?doi=,
    then (doi_match: any) as the paper an item supplements (resource_doi), then as a handle."""
    text = await asyncio.to_thread(_read, path)
    ids: list[int] = []
    dois: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.isdigit():
            if not valid_id(int(line)):
                raise ConfigError(f"{path}:{n}: {line[:80]!r} is not an article id "
                                  "(1 to 2^63-1)")
            ids.append(int(line))
            continue
        doi = _doi(line)
        if doi is None:
            raise ConfigError(f"{path}:{n}: {line[:80]!r} is neither an article id nor a DOI")
        dois.append(doi)
    report.listed += len(ids)
    seen = IdSet()
    for i in ids:
        seen.add(i)
    if ids:
        yield ids
    for start in range(0, len(dois), DOI_LOOKUPS_AT_ONCE):
        chunk = dois[start : start + DOI_LOOKUPS_AT_ONCE]
        found = await asyncio.gather(*(_resolve(client, api_url, d, fields) for d in chunk))
        report.requests += sum(asked for _, asked in found)
        batch: list[int] = []
        for doi, (hits, _) in zip(chunk, found, strict=True):
            if not hits:
                report.unresolved_count += 1
                if len(report.unresolved) < SAMPLE:
                    report.unresolved.append(doi)
            batch.extend(hits)
        for i in batch:
            seen.add(i)
        report.listed += len(batch)
        if batch:
            yield batch
    report.distinct = len(seen)
    if report.unresolved_count:
        log.warning("%s: %d DOIs resolve to no public article (listed in the manifest)",
                    path, report.unresolved_count)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the ids file: {exc}") from None


def _doi(line: str) -> str | None:
    m = _DOI.search(line)
    return m.group(0).rstrip(".,;") if m else None


async def _resolve(client: Transport, api_url: str, doi: str,
                   fields: tuple[str, ...]) -> tuple[list[int], int]:
    """The ids the first field in `fields` that knows `doi` gives, and the requests it took."""
    for n, name in enumerate(fields, 1):
        reply = await client.get(api_url + "/articles", params={name: doi, "page_size": 10})
        items = reply.data if isinstance(reply.data, list) else []
        hits = [i["id"] for i in items if isinstance(i, Mapping) and valid_id(i.get("id"))]
        if hits:
            return hits, n
    return [], len(fields)
