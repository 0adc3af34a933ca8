"""Endpoint knowledge: paths, parameters, paging caps and the paging state machine (NOTES.md §3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

from harvester.typedyaml import MAX_ID

PAGE_SIZE = 1_000  # the documented maximum page_size: fewest requests per id
WINDOW = 9_000  # items one query can page through with page/offset (NOTES §3.2, strictest workable)
FILES_CAP = 10  # a full record lists at most this many files (SPEC26); page /files beyond it
MAX_PAGES = 100_000  # loop guard: 100 million items per query is beyond any repository
MAX_FILE_PAGES = 100  # /files pages of one record: 100,000 files at most (a bound, not a need)
MAX_VERSIONS = 1_000  # versions of one record fetched at most
# item_type codes (NOTES §4.1, SPEC26): the fallback when GET /item_types cannot be read
ITEM_TYPES = (1, 2, 3, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
              26, 27, 28, 29)
REVIEW_STATUSES = ("pending", "approved", "rejected", "closed")  # GET /account/institution/reviews
REVIEWS_MAX_OFFSET = 5_000  # swagger.json: GET /account/institution/reviews, offset <= 5000


@dataclass(frozen=True)
class Bound:
    """A date field a query can be ordered by and bounded below with (NOTES §3.4)."""

    order: str  # the `order` value, e.g. "published_date"
    param: str  # the lower-bound filter, e.g. "published_since" (date or date-time, SPEC26)
    key: str  # where a listed item carries the date


PUBLISHED = Bound("published_date", "published_since", "published_date")
MODIFIED = Bound("modified_date", "modified_since", "modified_date")

# split filter -> (the listed item's key holding its value, every value, or None when the
# values can only be learned from the items seen)
SPLITS: dict[str, tuple[str, tuple[Any, ...] | None]] = {
    "item_type": ("defined_type", ITEM_TYPES),
    "group": ("group_id", None),
    "status": ("status", REVIEW_STATUSES),
}
BY_TYPE_AND_GROUP = ("item_type", "group")


@dataclass(frozen=True)
class ListQuery:
    """One list or search endpoint with its filters, enumerated page by page."""

    method: str  # "GET" (filters in the query string) or "POST" (filters in the JSON body)
    path: str  # relative to the API base, e.g. "/articles/search"
    filters: Mapping[str, Any] = field(default_factory=dict)
    cursor: bool = True  # the endpoint documents X-Cursor (SPEC26)
    auth: bool = False  # needs the API token
    bound: Bound | None = None  # a date it can be ordered by and bounded below with
    splits: tuple[str, ...] = ()  # filters (keys of SPLITS) that cut an overfull slice, in order
    paging: str = "page"  # "page" (page/page_size) or "offset" (offset/limit)
    id_key: str = "id"  # where a listed item carries the article id
    fallback: ListQuery | None = None  # enumerates the same ids when this one cannot be split
    max_offset: int | None = None  # the spec's declared maximum `offset` (offset paging)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.filters.items()))
        return f"{self.method} {self.path}" + (f" [{shown}]" if shown else "")

    def narrowed(self, **filters: Any) -> ListQuery:
        return replace(self, filters={**self.filters, **filters})

    def ascending(self, since: str | None) -> ListQuery:
        """The same query in ascending order of its bound date, from `since` on."""
        assert self.bound is not None
        since_filter = {} if since is None else {self.bound.param: since}
        return self.narrowed(order=self.bound.order, order_direction="asc", **since_filter)

    def is_ascending(self) -> bool:
        return (self.bound is not None and self.filters.get("order") == self.bound.order
                and self.filters.get("order_direction") == "asc")


@dataclass
class Pager:
    """Paging state machine: page/page_size (or offset/limit) inside the window, then X-Cursor
    only to carry a query past it. A cursor seen before is a loop, not progress."""

    page_size: int = PAGE_SIZE
    window: int = WINDOW
    use_cursor: bool = True
    style: str = "page"  # "page": page/page_size; "offset": offset/limit
    page: int = 1
    cursor: str | None = None
    seen_cursors: set[str] = field(default_factory=set)
    items: int = 0
    requests: int = 0
    done: bool = False
    truncated: bool = False  # the window filled and the cursor could not carry on
    most: int = 0  # the most items the endpoint served in one page (here or before)
    short: int | None = None  # a short page not yet trusted as the end: its item count
    capped: int | None = None  # the page after a short one was not empty: the server's cap

    def request(self) -> tuple[dict[str, int], dict[str, str]] | None:
        """The next page's (params, headers), or None when done."""
        if self.done:
            return None
        if self.cursor is not None:
            return {"limit": self.page_size}, {"X-Cursor": self.cursor}
        if self.style == "offset":
            return {"offset": (self.page - 1) * self.page_size, "limit": self.page_size}, {}
        return {"page": self.page, "page_size": self.page_size}, {}

    def advance(self, count: int, cursor: str | None) -> None:
        self.requests += 1
        self.items += count
        # A page shorter than asked may be a silent page_size cap, not the end. It is the end if
        # the endpoint once served more in one page (no cap is that low); otherwise the next
        # page decides: empty is the end, anything else reveals the cap. Cost: one request for
        # a listing whose last page is the largest the endpoint has served yet.
        if self.short is not None:
            self.done = True
            self.capped = self.short if count else None
            return
        maybe_cap = 0 < count < self.page_size and count >= self.most
        self.most = max(self.most, count)
        if count < self.page_size and not maybe_cap:
            self.done = True
            return
        if maybe_cap:
            self.short = count
        if self.requests >= MAX_PAGES:  # a loop guard, not an end: what is left is unlisted
            self.refused()
        elif self.cursor is None and self.page * self.page_size < self.window:
            self.page += 1
        elif self.use_cursor and cursor and cursor not in self.seen_cursors:
            self.seen_cursors.add(cursor)
            self.cursor = cursor
        else:
            self.refused()

    def refused(self) -> None:
        """The server refused the next page (window cap or a cursor it no longer knows)."""
        self.done = self.truncated = True


def valid_id(value: object) -> TypeGuard[int]:
    """An article id as the API defines it: an integer from 1 to 2^63-1 (never a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def article_path(article_id: int, *, account: bool = False) -> str:
    return f"/account/articles/{article_id}" if account else f"/articles/{article_id}"


def files_path(article_id: int, *, account: bool = False) -> str:
    return f"{article_path(article_id, account=account)}/files"


def stats_total_path(counter: str, item: str, item_id: int, institution: str | None = None) -> str:
    prefix = f"/{institution}" if institution else ""
    return f"{prefix}/total/{counter}/{item}/{item_id}"


def files_may_be_truncated(record: Mapping[str, Any]) -> bool:
    """The full record lists at most FILES_CAP files; a full list means there may be more."""
    files = record.get("files")
    return isinstance(files, list) and len(files) >= FILES_CAP


def list_query(kind: str, params: Mapping[str, Any]) -> ListQuery:
    """The list/search query a configured source enumerates (ids, files and OAI excluded)."""
    filters = {k: v for k, v in params.items() if v is not None}
    filters.pop("reconcile", None)
    if kind == "reviews":
        # limit/offset only; no date to bound by, but the status filter splits it
        return ListQuery("GET", "/account/institution/reviews", filters, cursor=False, auth=True,
                         splits=("status",), paging="offset", id_key="article_id",
                         max_offset=REVIEWS_MAX_OFFSET)
    if kind == "collection":
        return ListQuery("GET", f"/collections/{params['collection']}/articles", {}, cursor=False)
    if kind == "collections":
        # the collections themselves (their ids, not articles'); X-Cursor carries past the window
        return ListQuery("GET", "/collections", {**filters, "order": "published_date",
                                                 "order_direction": "asc"})
    if kind == "project":
        pid = params["project"]
        # the project listing has no filters; a search by project_id can be partitioned
        search = ListQuery("POST", "/articles/search", {"project_id": pid}, bound=PUBLISHED,
                           splits=BY_TYPE_AND_GROUP).ascending(None)
        return ListQuery("GET", f"/projects/{pid}/articles", {}, cursor=False, fallback=search)
    if kind == "account":
        if filters.pop("listing", "search") == "list" and not filters:
            return ListQuery("GET", "/account/articles", {}, cursor=False, auth=True)
        # drafts have no publish date: the token owner's items are walked by modification date
        return ListQuery("POST", "/account/articles/search", filters, cursor=False, auth=True,
                         bound=MODIFIED, splits=BY_TYPE_AND_GROUP).ascending(None)
    if kind == "institution_articles":
        filters.setdefault("order", "modified_date")  # drafts have no publish date either
        filters.setdefault("order_direction", "asc")
        return ListQuery("GET", "/account/institution/articles", filters, cursor=False, auth=True,
                         bound=MODIFIED, splits=BY_TYPE_AND_GROUP)
    if kind == "author":  # config requires exactly one of the two
        orcid, full_name = filters.pop("orcid", None), filters.pop("full_name", None)
        filters["search_for"] = f":orcid: {orcid}" if orcid else f':author: "{full_name}"'
    # ascending order keeps pages stable while new items are published mid-harvest
    filters.setdefault("order", "published_date")
    filters.setdefault("order_direction", "asc")
    bound = MODIFIED if filters["order"] == "modified_date" else PUBLISHED
    if kind in ("search", "author"):
        return ListQuery("POST", "/articles/search", filters, bound=bound, splits=BY_TYPE_AND_GROUP)
    if kind in ("articles", "group", "institution"):
        return ListQuery("GET", "/articles", filters, bound=bound, splits=BY_TYPE_AND_GROUP)
    raise ValueError(f"source kind {kind!r} has no list query")

