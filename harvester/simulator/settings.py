"""The simulator's knobs: one frozen value that every part of the simulator reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

FAULT_KINDS = ("500", "502", "503", "429", "reset", "truncate", "stall")
OAI_ORDERS = ("datestamp", "shuffled")
DATE_BOUNDS = ("second", "day")


@dataclass(frozen=True)
class SimSettings:
    """Corpus shape, Figshare's documented limits, credentials and misbehaviour knobs.

    Defaults are the strictest documented reading of the real service (NOTES.md):
    a 9,000-item window per query, page_size at most 1,000, 10 files in a full record,
    10 records per OAI-PMH page, resumption tokens that live 60 minutes.
    """

    # corpus
    items: int = 1_000
    seed: int = 1
    institutions: int = 3
    busy_day_share: float = 0.05  # share of items published on a few very busy days
    private_items: int = 20  # drafts owned by the token's account, never public
    # full records kept once generated (least recently used out): past it, every request for
    # a record builds it again, and the server, not the client, sets a benchmark's pace
    record_cache: int = 4_000

    # Figshare's paging limits
    window: int = 9_000
    max_page_size: int = 1_000
    max_page: int = 5_000
    max_offset: int = 5_000
    full_record_files_cap: int = 10
    cursor: bool = True  # X-Cursor on list/search
    search_duplicate_rate: float = 0.0  # search repeats a record within and across pages
    window_message: str = ""  # a 400 past the window in other words ("": "Max page reached")
    date_bounds: str = "second"  # "day": published_since/modified_since read as whole days
    html_404: bool = False  # a missing entity answers an HTML page, not Figshare's JSON error
    # an admin's token reads any institution item at /account/articles/{id} without impersonate
    # (an assumption; False: only the account's own items, as "view a private article" reads)
    admin_reads_any: bool = True
    top_cap: int = 0  # /top answers at most this many entries, whatever count asks (0: no cap)

    # OAI-PMH
    oai_page_size: int = 10
    oai_token_ttl: float = 3_600.0
    # a client too slow for the tokens' lifetime: a list's tokens expire after this many pages
    # (0: only oai_token_ttl applies)
    oai_token_pages: int = 0
    oai_bulk_items: int = 0  # this many records mid-list share one datestamp (a bulk import)
    oai_order: str = "datestamp"  # or "shuffled": lists in no datestamp order

    # credentials the simulator accepts
    user_token: str = "sim-user-token"  # Authorization: token <user_token> (plain account)
    admin_token: str = "sim-admin-token"  # institution admin of the first institution
    stats_user: str = "sim-stats"
    stats_password: str = "sim-stats-secret"

    # politeness and misbehaviour, applied per host (api and stats separately)
    rate_limit: tuple[int, float] | None = None  # (requests, per seconds) -> 429 + Retry-After
    abuse_after: int | None = None  # this many rate violations -> 403 HTML for good
    latency_ms: float = 0.0  # mean added latency
    latency_jitter_ms: float = 0.0  # uniform +- jitter around the mean
    fault_rate: float = 0.0  # share of requests that fail, deterministic from the seed
    fault_kinds: tuple[str, ...] = ("500", "502", "503", "429", "reset", "truncate", "stall")
    fault_retry_after: float = 1.0  # Retry-After sent with an injected 429
    stall_seconds: float = 30.0  # how long a stalled response hangs before its body

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.items <= 1_000_000:
            raise ValueError(f"items must be within 1..1,000,000, got {self.items}")
        if self.oai_token_pages < 0 or self.oai_bulk_items < 0:
            raise ValueError("oai_token_pages and oai_bulk_items must be 0 or more, got "
                             f"{self.oai_token_pages} and {self.oai_bulk_items}")
        if self.oai_order not in OAI_ORDERS:
            raise ValueError(f"oai_order must be one of {list(OAI_ORDERS)}, got {self.oai_order!r}")
        if self.date_bounds not in DATE_BOUNDS:
            raise ValueError(f"date_bounds must be one of {list(DATE_BOUNDS)}, "
                             f"got {self.date_bounds!r}")
        if self.record_cache < 0:
            raise ValueError(f"record_cache must be 0 or more, got {self.record_cache}")
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; valid: {list(FAULT_KINDS)}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within 0..1, got {self.fault_rate}")
        for name in ("latency_ms", "latency_jitter_ms", "fault_retry_after", "stall_seconds"):
            value = getattr(self, name)
            if not 0.0 <= value < math.inf:  # NaN fails too
                raise ValueError(f"{name} must be a finite number of 0 or more, got {value}")
        if self.rate_limit is not None:
            requests, per = self.rate_limit
            if requests < 1 or not 0.0 < per < math.inf:
                raise ValueError(f"rate_limit must be N requests (1 or more) per S seconds "
                                 f"(more than 0), got {requests}/{per}")

    def with_(self, **changes: Any) -> SimSettings:
        return replace(self, **changes)
