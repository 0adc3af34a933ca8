"""Retry policy and response hygiene as plain data and pure functions, tested without a network."""

from __future__ import annotations

import email.utils
import html
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(rb"<[^>]*>?")


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` request starts in any window of `per` seconds."""

    requests: int
    per: float

    @property
    def interval(self) -> float:
        """Seconds between two starts: the window and its margin, shared out evenly."""
        # The margin is 2.5% of `per` (at most 0.25 s): half is slack for late wake-ups
        # (client._Budget), half keeps jittered arrivals to `requests` per window.
        return (self.per + min(0.025 * self.per, 0.25)) / self.requests


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, how often, and how long to wait between attempts."""

    attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 900.0  # a longer Retry-After stops the run (HeldOff): resume later
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})


def backoff_delay(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """Full-jitter wait before retry number `attempt` (1 = the first retry), capped."""
    return rand() * min(policy.backoff_max, policy.backoff_base * 2.0 ** min(attempt - 1, 64))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP-date (`now` is epoch)."""
    text = (value or "").strip()
    try:
        seconds = float(text)
    except ValueError:
        when = http_date(text)
        return None if when is None else max(0.0, when - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def http_date(text: str) -> float | None:
    try:
        dt = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def is_html(raw: bytes, content_type: str) -> bool:
    return "html" in content_type.lower() or raw.lstrip()[:1] == b"<"


def summarize(raw: bytes, content_type: str = "") -> str:
    """A body as a short line for an error message: an HTML page by its <title> (else its first
    80 characters of text), anything else by its first 200 characters."""
    head = raw[:16384]
    if not is_html(head, content_type):
        return " ".join(raw[:400].decode("utf-8", "replace").split())[:200]
    title = _TITLE.search(head)
    text = html.unescape(_TAG.sub(b" ", title[1] if title else head).decode("utf-8", "replace"))
    return "HTML page: " + (" ".join(text.split())[:80] or "(no text)")
