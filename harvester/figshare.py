"""Endpoint knowledge: paths, parameters, paging caps and the paging state machine (NOTES.md §3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PAGE_SIZE = 1_000  # the documented maximum page_size: fewest requests per id
WINDOW = 9_000  # items one query can page through with page/offset (NOTES §3.2, strictest workable)
FILES_CAP = 10  # a full record lists at most this many files (SPEC26); page /files beyond it
MAX_PAGES = 100_000  # loop guard: 100 million items per query is beyond any repository


@dataclass(frozen=True)
class ListQuery:
    """One list or search endpoint with its filters, enumerated page by page."""

    method: str  # "GET" (filters in the query string) or "POST" (filters in the JSON body)
    path: str  # relative to the API base, e.g. "/articles/search"
    filters: Mapping[str, Any] = field(default_factory=dict)
    cursor: bool = True  # the endpoint documents X-Cursor (SPEC26)
    auth: bool = False  # needs the API token

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.filters.items()))
        return f"{self.method} {self.path}" + (f" [{shown}]" if shown else "")

    def narrowed(self, **filters: Any) -> ListQuery:
        return ListQuery(self.method, self.path, {**self.filters, **filters}, self.cursor, self.auth)


@dataclass
class Pager:
    """Paging state machine: page/page_size inside the window, then X-Cursor past it.

    The page window is the documented, well-trodden path, so it is used first; the cursor
    (documented but with an unverified handshake) only carries a query past 9,000 items.
    `request()` gives the next (params, headers) or None when done; `advance()` takes the
    reply. A loop guard stops a server that keeps answering full pages with the same cursor.
    """

    page_size: int = PAGE_SIZE
    window: int = WINDOW
    use_cursor: bool = True
    page: int = 1
    cursor: str | None = None
    seen_cursors: set[str] = field(default_factory=set)
    items: int = 0
    requests: int = 0
    done: bool = False
    truncated: bool = False  # the window filled and the cursor could not carry on

    def request(self) -> tuple[dict[str, int], dict[str, str]] | None:
        if self.done:
            return None
        if self.cursor is not None:
            return {"limit": self.page_size}, {"X-Cursor": self.cursor}
        return {"page": self.page, "page_size": self.page_size}, {}

    def advance(self, count: int, cursor: str | None) -> None:
        self.requests += 1
        self.items += count
        if count < self.page_size or self.requests >= MAX_PAGES:
            self.done = True
            return
        if self.cursor is not None or self.page * self.page_size >= self.window:
            # past (or at the edge of) the window: only a fresh cursor can carry on
            if not (self.use_cursor and cursor) or cursor in self.seen_cursors:
                self.done = self.truncated = True
                return
            self.seen_cursors.add(cursor)
            self.cursor = cursor
            return
        self.page += 1

    def refused(self) -> None:
        """The server refused the next page (window cap or a cursor it no longer knows)."""
        self.done = self.truncated = True


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
    """The list/search query a configured source enumerates (ids and explicit lists excluded)."""
    if kind == "account":
        # documented with paging only: no filters, no order, no X-Cursor
        return ListQuery("GET", "/account/articles", {}, cursor=False, auth=True)
    filters = {k: v for k, v in params.items() if v is not None}
    # Ascending publish order keeps pages stable while new items are published mid-harvest.
    filters.setdefault("order", "published_date")
    filters.setdefault("order_direction", "asc")
    if kind == "search":
        return ListQuery("POST", "/articles/search", filters)
    if kind in ("articles", "group", "institution"):
        return ListQuery("GET", "/articles", filters)
    raise ValueError(f"source kind {kind!r} has no list query")
