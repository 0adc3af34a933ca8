"""Configured sources -> batches of article ids, with the requests and partitions it took."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from harvester.config import Source
from harvester.errors import BadResponse, WindowExhausted
from harvester.figshare import ListQuery, Pager, list_query

# A single publish day with more than a window of items is split by item type (NOTES §4.1 map).
ITEM_TYPES = (1, 2, 3, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
              26, 27, 28, 29)


class Transport(Protocol):
    async def get(self, url: str, *, params: Any = None, headers: Any = None) -> Any: ...
    async def post(self, url: str, *, json: Any = None, params: Any = None,
                   headers: Any = None) -> Any: ...


@dataclass
class Partition:
    query: str
    ids: int = 0
    requests: int = 0
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "ids": self.ids, "requests": self.requests,
                "truncated": self.truncated}


@dataclass
class SourceReport:
    """What enumerating one source took; goes into the manifest."""

    name: str
    kind: str
    listed: int = 0  # ids listed, duplicates included
    requests: int = 0
    partitions: list[Partition] = field(default_factory=list)
    truncated: bool = False  # some partition could not be narrowed under the window

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "listed": self.listed,
            "requests": self.requests, "truncated": self.truncated,
            "partitions": [p.as_dict() for p in self.partitions],
        }


async def enumerate_source(
    client: Transport, api_url: str, source: Source, report: SourceReport
) -> AsyncIterator[list[int]]:
    """Yield batches of ids for one source, filling `report` as it goes."""
    if source.kind == "ids":
        ids = list(source.params["ids"])
        report.listed = len(ids)
        yield ids
        return
    query = list_query(source.kind, source.params)
    async for batch in _exhaust(client, api_url, query, report):
        yield batch


async def _exhaust(
    client: Transport, api_url: str, query: ListQuery, report: SourceReport
) -> AsyncIterator[list[int]]:
    """Every id of a query: page, then cursor; when the window still fills, move a date bound.

    Ascending publish order means the last item of a filled window tells where the rest
    begins: the next window restarts one day before it (bounds overlap; ids are deduplicated
    downstream), so neither inclusive nor exclusive bound semantics lose the boundary day.
    """
    part = Partition(query.describe())
    report.partitions.append(part)
    last: str | None = None
    async for items in _walk(client, api_url, query, part):
        last = items[-1].get("published_date") or last
        yield _ids(items, query)
    report.listed += part.ids
    report.requests += part.requests
    if not part.truncated:
        return
    part.truncated = False  # it is being continued, not lost
    first_day = _day(last)
    if first_day is None:
        report.truncated = part.truncated = True
        return
    day_from = first_day
    while True:
        narrowed = _search_window(query, after=day_from - dt.timedelta(days=1))
        sub = Partition(narrowed.describe())
        report.partitions.append(sub)
        last = None
        async for items in _walk(client, api_url, narrowed, sub):
            last = items[-1].get("published_date") or last
            yield _ids(items, narrowed)
        report.listed += sub.ids
        report.requests += sub.requests
        if not sub.truncated:
            return
        sub.truncated = False
        day = _day(last)
        if day is None:
            report.truncated = sub.truncated = True
            return
        if day <= day_from:
            # one day holds more than a window: take that day apart by item type, then go on
            async for batch in _split_day(client, api_url, query, day_from, report):
                yield batch
            day = day_from + dt.timedelta(days=1)
        day_from = day


async def _split_day(
    client: Transport, api_url: str, query: ListQuery, day: dt.date, report: SourceReport
) -> AsyncIterator[list[int]]:
    types = [query.filters["item_type"]] if "item_type" in query.filters else list(ITEM_TYPES)
    for item_type in types:
        narrowed = _search_window(
            query.narrowed(item_type=item_type),
            after=day - dt.timedelta(days=1),
            before=day + dt.timedelta(days=1),
        )
        part = Partition(narrowed.describe())
        report.partitions.append(part)
        async for items in _walk(client, api_url, narrowed, part):
            yield _ids(items, narrowed)
        report.listed += part.ids
        report.requests += part.requests
        if part.truncated:
            report.truncated = True  # said loudly in the manifest and the summary


async def _walk(
    client: Transport, api_url: str, query: ListQuery, part: Partition
) -> AsyncIterator[list[dict[str, Any]]]:
    pager = Pager(use_cursor=query.cursor)
    url = api_url + query.path
    while (req := pager.request()) is not None:
        params, headers = req
        try:
            if query.method == "GET":
                reply = await client.get(url, params={**query.filters, **params}, headers=headers)
            else:
                reply = await client.post(url, json={**query.filters, **params}, headers=headers)
        except WindowExhausted:
            part.requests += 1
            pager.refused()
            break
        part.requests += 1
        items = reply.data
        if not isinstance(items, list):
            raise BadResponse(
                f"{query.method} {url} -> expected a JSON list of items, got {type(items).__name__}",
                url=url, status=reply.status,
            )
        pager.advance(len(items), reply.headers.get("X-Cursor"))
        part.ids += len(items)
        if items:
            yield items
    part.truncated = pager.truncated


def _ids(items: list[Any], query: ListQuery) -> list[int]:
    out = []
    for item in items:
        aid = item.get("id") if isinstance(item, Mapping) else None
        if isinstance(aid, bool) or not isinstance(aid, int):
            raise BadResponse(f"{query.describe()}: an item without an integer id: {str(item)[:120]}")
        out.append(aid)
    return out


def _search_window(query: ListQuery, *, after: dt.date, before: dt.date | None = None) -> ListQuery:
    """The same filters as a search with publish-date bounds inside search_for."""
    filters = {k: v for k, v in query.filters.items() if k not in ("order", "order_direction")}
    terms = [f":published_after: {after.isoformat()}"]
    if before is not None:
        terms.append(f":published_before: {before.isoformat()}")
    user = filters.pop("search_for", None)
    if user:
        terms.insert(0, f"({user})")
    filters["search_for"] = " AND ".join(terms)
    filters["order"] = "published_date"
    filters["order_direction"] = "asc"
    return ListQuery("POST", "/articles/search", filters, query.cursor, query.auth)


def _day(stamp: str | None) -> dt.date | None:
    if not stamp:
        return None
    try:
        return dt.date.fromisoformat(stamp[:10])
    except ValueError:
        return None
