"""One list query -> every id it selects, past the 9,000-item window (NOTES §3.2-3.4).

Pages, then X-Cursor; when the window still fills, a moving lower date bound, and a slice of time
over the window is split by item type, then group. What cannot be narrowed is reported truncated.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from harvester.client import Client
from harvester.errors import BadResponse, Blocked, RequestError, Unreachable, WindowExhausted
from harvester.figshare import ITEM_TYPES, PAGE_SIZE, SPLITS, WINDOW, ListQuery, Pager, valid_id
from harvester.periods import STAMP

log = logging.getLogger("harvester")

DAY = 86_400
# How a lower bound is written, from the most precise to the most conservative; a server that
# answers a form unexpectedly moves the enumeration one step down this ladder.
FORMS = ("second", "day", "day before")
SKIPPED_SAMPLE = 20  # skipped list entries quoted in the manifest (the count is exact)


@dataclass
class Limits:
    """The run's paging limits, shared by its sources: page size, the windows servers revealed
    by refusing a page (per endpoint), and the item types to split by."""

    page_size: int = PAGE_SIZE
    windows: dict[str, int] = field(default_factory=dict)
    item_types: tuple[int, ...] | None = None  # None: not asked yet; (): unreadable
    served: dict[str, int] = field(default_factory=dict)  # the most items one page held
    capped: bool = False  # page_size was lowered to what a server served: once a run at most

    @staticmethod
    def endpoint(query: ListQuery) -> str:
        """Method and path, ids in the path ignored: what a window is learned under."""
        return f"{query.method} {re.sub(r'/[0-9]+', '/{id}', query.path)}"

    def window(self, query: ListQuery) -> int:
        """Items one walk may page through: the learned, documented or declared window."""
        window = self.windows.get(self.endpoint(query), WINDOW)
        if query.max_offset is not None and query.paging == "offset":
            window = min(window, query.max_offset + 1)  # the last offset sent is max_offset
        return window

    def learn(self, query: ListQuery, offset: int) -> None:
        key = self.endpoint(query)
        self.windows[key] = min(self.windows.get(key, WINDOW), offset)


@dataclass
class Partition:
    """One query (or window of a query) as it was sent, and what it produced."""

    query: str
    ids: int = 0  # entries listed, duplicates included
    new: int = 0  # ids the source had not listed before
    requests: int = 0
    truncated: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v or k != "note"}


class IdSet:
    """Article ids as a growable bitmap: membership for millions of ids in a few MB."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self._big: set[int] = set()  # ids too large for the bitmap (none on Figshare today)
        self.count = 0

    def add(self, aid: int) -> bool:
        """Add an id; True if it was not there yet."""
        if aid in self:
            return False
        self.count += 1
        if aid < 0 or aid >= 1 << 34:
            self._big.add(aid)
            return True
        byte = aid >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits) // 2)))
        self._bits[byte] |= 1 << (aid & 7)
        return True

    def update(self, ids: Iterable[int]) -> None:
        for aid in ids:
            self.add(aid)

    def __contains__(self, aid: object) -> bool:
        if not isinstance(aid, int):
            return False
        if aid < 0 or aid >= 1 << 34:
            return aid in self._big
        byte = aid >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (aid & 7)))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        """Ascending ids."""
        for m in re.finditer(rb"[^\x00]", self._bits):
            byte = m.start()
            yield from ((byte << 3) | bit for bit in range(8) if self._bits[byte] & (1 << bit))
        yield from sorted(self._big)


def parse_stamp(value: Any) -> int | None:
    """Epoch seconds of an ISO date or date-time (no zone: UTC); None if absent or unreadable."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def iso_second(stamp: int) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime(STAMP)


class Lister:
    """What enumerating a source's lists took: partitions, distinct ids, skipped entries."""

    def __init__(self) -> None:
        self.partitions: list[Partition] = []
        self.seen = IdSet()
        self.listed = 0  # entries listed, repeats included
        self.truncated = False  # some ids could not be listed (see the partitions' notes)
        self.skipped = 0  # listed entries without a valid article id: skipped, counted
        self.skipped_sample: list[str] = []

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.partitions)

    def _partition(self, query: str, *, note: str = "") -> Partition:
        part = Partition(query, note=note)
        self.partitions.append(part)
        return part

    def skip(self, item: Any, key: str) -> None:
        """A listed entry with no usable `key` id: counted, the first few quoted, and the source
        truncated (an item may hide behind it)."""
        self.skipped += 1
        self.truncated = True
        if len(self.skipped_sample) < SKIPPED_SAMPLE:
            shown = item.get(key) if isinstance(item, Mapping) else item
            self.skipped_sample.append(f"{key}={str(shown)[:60]}")

    def _give_up(self, part: Partition, note: str) -> None:
        part.truncated = self.truncated = True
        part.note = note


@dataclass
class _Window:
    """What one walk of a query showed: its date range and the values of its split keys."""

    low: int | None = None  # earliest date seen
    top: int | None = None  # latest date seen (within the slice)
    beyond: bool = False  # an item past the slice's upper end was seen: the slice is done
    gap: bool = False  # the first page did not overlap the window before: the bound misread
    ignored: bool = False  # items from before the bound's day: the server ignores the bound
    retry: bool = False  # the first page showed how the bound reads: ask again, more narrowly
    broken: str = ""  # why the walk cannot have listed everything (then given up)
    values: dict[str, set[Any]] = field(default_factory=dict)
    unsplittable: dict[str, int] = field(default_factory=dict)  # items without a split value


class Exhauster(Lister):
    """Enumerates list queries for one source; a refused page's offset becomes that endpoint's
    window for the run (`Limits`)."""

    def __init__(self, client: Client, api_url: str, *, limits: Limits | None = None) -> None:
        super().__init__()
        self.client = client
        self.api_url = api_url
        self.limits = limits if limits is not None else Limits()
        self.cursor = True  # cleared once the server refuses a cursor: do not offer it again
        self.form = 0  # index into FORMS
        self.inclusive = False  # seen: a date-time bound lists items dated exactly at it
        self.on_items: Callable[[list[Mapping[str, Any]]], None] | None = None  # sees each page

    async def ids(self, query: ListQuery) -> AsyncIterator[list[int]]:
        """Every id of `query` (batches; an id may repeat, the journal deduplicates)."""
        part = self._partition(query.describe())
        seen = _Window()
        shown: set[int] = set()  # what the window listed: a fallback must list it all again
        async for batch in self._walk(query, part, seen, None, None, None):
            if query.fallback is not None:
                shown.update(batch)
            yield batch
        if seen.broken:
            self._give_up(part, seen.broken)
            return
        if not part.truncated:
            return
        part.truncated = False
        if query.bound is not None:
            part.note = "window full: continued by a moving date bound"
            # an ascending walk already covers everything up to its last second; any other
            # order says nothing about what is left, so start again from the beginning
            resume = seen.top if query.is_ascending() else None
            floor = resume - 1 if resume is not None else None
            async for batch in self._range(query, floor, None, resume):
                yield batch
        elif query.splits:
            part.note = "window full: split"
            async for batch in self._split(query, None, None, seen):
                yield batch
        elif query.fallback is not None:
            part.note = "window full: listed by the fallback query instead"
            async for batch in self.ids(query.fallback):
                shown.difference_update(batch)
                yield batch
            if shown:
                self._give_up(part, f"window full, and the fallback query missed {len(shown)} "
                                    "ids the window listed: it cannot be trusted to list all")
        else:  # a note already there (a repeated or refused page) is the first, true reason
            self._give_up(part, (part.note + "; " if part.note else "window full and ")
                          + "the endpoint offers no way to narrow it")

    async def _range(self, query: ListQuery, floor: int | None, hi: int | None,
                     overlap: int | None) -> AsyncIterator[list[int]]:
        """Items of `query` dated after `floor` and up to `hi` (None: open), by a moving bound.

        Each window restarts one second before the last date seen (`overlap`), so the server
        must list that date again, or it read the bound differently than it was meant.
        """
        previous: str | None = None
        last = _Window()  # the window the next request continues
        while True:
            since = self._since(query, floor)
            if since is None or since != previous:
                bounded = query.ascending(since)
                suffix = f" up to {iso_second(hi)}" if hi is not None else ""
                part = self._partition(bounded.describe() + suffix)
                seen = _Window()
                async for batch in self._walk(bounded, part, seen, floor, hi, overlap):
                    yield batch
                if seen.broken:
                    self._give_up(part, seen.broken)
                    return
                if seen.ignored or (seen.gap and self.form + 1 == len(FORMS)):
                    self._give_up(part, "the server does not honour the date bound: cannot "
                                        "continue")
                    return
                if seen.retry:
                    continue
                if seen.gap:
                    self.form += 1
                    part.note = ("no overlap with the window before: the bound is now "
                                 f"sent as a {FORMS[self.form]}")
                    continue
                if seen.beyond or not part.truncated:
                    return
                part.truncated = False
                if seen.top is None:
                    self._give_up(part, "window full of items without a date")
                    return
                previous, overlap, last = since, seen.top, seen
                if floor is None or seen.top - 1 > floor:
                    floor = seen.top - 1
                    continue
                part.note = "more than a window in one slice of time: split"
            # else: the server reads the bound as a day, so the same request would list the
            # same window again; take the rest of that day apart instead
            assert floor is not None
            end = floor + 1 if self.form == 0 else _start_of_day(floor + 1) + DAY - 1
            if hi is not None:
                end = min(end, hi)
            async for batch in self._split(query, floor, end, last):
                yield batch
            if hi is not None and end >= hi:
                return
            floor, overlap = end, None

    async def _split(self, query: ListQuery, floor: int | None, hi: int | None,
                     seen: _Window) -> AsyncIterator[list[int]]:
        """The slice (floor, hi] of `query` cut by its next split filter, piece by piece."""
        key = next((k for k in query.splits if k not in query.filters), None)
        where = query.describe() + (f" ({iso_second(floor)}, {iso_second(hi)}]"
                                    if floor is not None and hi is not None else "")
        if key is None:
            self._give_up(self._partition(where),
                          "more than a window of items and nothing left to split by")
            return
        item_key, known = SPLITS[key]
        listed = await self._item_types() if key == "item_type" else None
        known = listed or known
        observed = seen.values.get(item_key, set())
        values = list(known or ()) + sorted(v for v in observed if v not in (known or ()))
        lacking = seen.unsplittable.get(item_key, 0)
        # No count says what the pieces must add up to: the split is complete only if its values
        # are all there are (a confirmed list, no value seen outside it, no item without one).
        doubt = ""
        if known is None:
            doubt = f"split by the {len(values)} {key} values seen in the window"
        elif listed == ():
            doubt = f"split by {key}, but GET /item_types could not be read"
        elif len(values) > len(known) or lacking:
            doubt = f"split by {key}, but the window held items outside its {len(known)} values"
        if doubt:
            self._give_up(self._partition(where), f"{doubt} ({lacking} items without one): "
                                                  "items beyond it may be missing")
        for value in values:
            piece = query.narrowed(**{key: value})
            walk = self.ids(piece) if query.bound is None else self._range(piece, floor, hi, None)
            async for batch in walk:
                yield batch

    async def _walk(self, query: ListQuery, part: Partition, seen: _Window, floor: int | None,
                    hi: int | None, overlap: int | None) -> AsyncIterator[list[int]]:
        """One query through its pages (and cursor), items past `hi` cut off. With `overlap`,
        the first page must reach back to that date, or the walk stops there (`seen.gap`)."""
        endpoint = self.limits.endpoint(query)
        pager = Pager(page_size=self.limits.page_size, window=self.limits.window(query),
                      use_cursor=query.cursor and self.cursor, style=query.paging,
                      most=self.limits.served.get(endpoint, 0))
        url = self.api_url + query.path
        split_keys = [SPLITS[k][0] for k in query.splits if k not in query.filters]
        date_key = query.bound.key if query.bound is not None else None
        # the bound this walk sends, when it is one the enumeration chose (not the user's)
        sent = parse_stamp(query.filters.get(query.bound.param)) \
            if query.bound is not None and floor is not None else None
        inclusive = self.inclusive
        previous: list[Any] | None = None  # the ids of the page before: a repeat is a loop
        # the date of the last new id: an ascending walk never steps back (repeats aside, as
        # search repeats records), or the moving bound would jump past unlisted items
        ordered = query.is_ascending()
        last: int | None = None
        while (req := pager.request()) is not None:
            params, headers = req
            part.requests += 1
            ask = {**query.filters, **params}
            try:
                if query.method == "GET":
                    reply = await self.client.get(url, params=ask, headers=headers)
                else:
                    reply = await self.client.post(url, json=ask, headers=headers)
            except RequestError as exc:
                if not _refusal(exc, first=pager.requests == 0):
                    raise
                if pager.short is not None:
                    seen.broken = ("the server refused the page after a short one: the end of "
                                   "the list is unproven")
                    return
                if pager.cursor is not None:
                    self.cursor = False
                elif pager.requests:
                    # a page past the first refused: the window ends where this page began
                    offset = (pager.page - 1) * pager.page_size
                    self.limits.learn(query, offset)
                    part.note = f"the server refused offset {offset}: its window is {offset}"
                pager.refused()
                break
            items = reply.data
            if not isinstance(items, list):
                raise BadResponse(
                    f"{query.method} {url} -> expected a JSON list of items, "
                    f"got {type(items).__name__}", url=url, status=reply.status)
            ids = [i.get(query.id_key) if isinstance(i, Mapping) else i for i in items]
            if items and ids == previous:
                if pager.short is not None:
                    seen.broken = "the page after a short one repeats it: the end is unproven"
                    return
                pager.refused()
                part.note = f"page {pager.requests + 1} repeats the page before: paging stopped"
                break
            previous = ids
            pager.advance(len(items), reply.headers.get("X-Cursor"))
            self.limits.served[endpoint] = pager.most
            kept = []
            for item in items:
                if not isinstance(item, Mapping) or not valid_id(item.get(query.id_key)):
                    self.skip(item, query.id_key)
                    continue
                if date_key is not None:
                    stamp = parse_stamp(item.get(date_key))
                    if stamp is not None:
                        if ordered and item[query.id_key] not in self.seen:
                            if last is not None and stamp < last:
                                seen.broken = (f"the server does not list in {date_key} order "
                                               f"(id {item[query.id_key]} steps back)")
                                break
                            last = stamp
                        if hi is not None and stamp > hi:
                            seen.beyond = True
                            continue
                        if sent is not None and stamp == sent and self.form == 0:
                            self.inclusive = True  # then floor + 1 s is bound enough
                        if sent is not None and stamp < sent:
                            if stamp < _start_of_day(sent):
                                seen.ignored = True
                                break
                            if self.form == 0:
                                self.form = 1  # a date-time bound was read as a whole day
                        seen.low = stamp if seen.low is None else min(seen.low, stamp)
                        seen.top = stamp if seen.top is None else max(seen.top, stamp)
                for k in split_keys:
                    value = item.get(k)
                    if value in (None, 0, ""):
                        seen.unsplittable[k] = seen.unsplittable.get(k, 0) + 1
                    else:
                        seen.values.setdefault(k, set()).add(value)
                kept.append(item)
                part.new += self.seen.add(item[query.id_key])
            if self.on_items is not None and kept:
                self.on_items(kept)
            batch = [item[query.id_key] for item in kept]
            part.ids += len(batch)
            self.listed += len(batch)
            if batch:
                yield batch
            if seen.beyond or seen.ignored or seen.broken:
                return  # ascending order: everything after this is past the slice
            if pager.requests == 1 and overlap is not None and (
                    seen.low is None or seen.low > overlap):
                seen.gap = True
                return
            if pager.requests == 1 and sent is not None and self.inclusive and not inclusive:
                seen.retry = True  # the bound is inclusive: floor + 1 s lists less again
                return
        if pager.capped is not None:
            if self.limits.capped:
                seen.broken = (f"the server served {pager.capped} items where "
                               f"{pager.page_size} were asked, again: pages are unreliable")
                return
            self.limits.page_size, self.limits.capped = pager.capped, True
            part.note = (f"the server serves at most {pager.capped} items a page: listed again "
                         "at that size")
            async for batch in self._walk(query, part, seen, floor, hi, overlap):
                yield batch
            return
        part.truncated = pager.truncated

    async def _item_types(self) -> tuple[int, ...]:
        """The item type ids GET /item_types lists, asked once per run; () when it fails or
        lists none (the documented codes then serve, and the split cannot be proven complete)."""
        if self.limits.item_types is not None:
            return self.limits.item_types
        url = self.api_url + "/item_types"
        part = self._partition("GET /item_types", note="the item types to split by")
        part.requests = 1
        problem = "the answer lists no item type"
        try:
            listed = (await self.client.get(url)).data
        except (Blocked, Unreachable):
            raise
        except RequestError as exc:
            listed, problem = None, str(exc)
        codes = sorted({t["id"] for t in listed if isinstance(t, Mapping)
                        and valid_id(t.get("id"))}) if isinstance(listed, list) else []
        if not codes:
            part.note = f"unreadable ({problem[:200]}): the documented codes serve instead"
            log.warning("GET %s failed (%s): splitting by the %d documented item types",
                        url, problem[:200], len(ITEM_TYPES))
        self.limits.item_types = tuple(codes)
        return self.limits.item_types

    def _since(self, query: ListQuery, floor: int | None) -> str | None:
        """The lower bound that selects at least every item dated after `floor`; never
        earlier than the query's own bound: a window must not reach outside the query."""
        if floor is None:
            return None
        assert query.bound is not None
        if FORMS[self.form] == "second":
            at = floor + 1 if self.inclusive else floor
            since = iso_second(at)
        else:
            at = _start_of_day(floor + 1) - (DAY if FORMS[self.form] == "day before" else 0)
            since = iso_second(at)[:10]
        own = query.filters.get(query.bound.param)
        own_at = parse_stamp(own)
        return str(own) if own_at is not None and at <= own_at else since


def _refusal(exc: RequestError, *, first: bool) -> bool:
    """A page the server will not serve: a window cap it names (any page), or a 400/422 in
    other words on a page after the first (on the first page, those are real errors)."""
    if isinstance(exc, WindowExhausted):
        return True
    return not first and type(exc) is RequestError and exc.status in (400, 422)


def _start_of_day(stamp: int) -> int:
    return stamp - stamp % DAY
