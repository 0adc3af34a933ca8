"""The journal's fetched records read back for the snapshot: in id order, a bounded chunk at a time.

Chunks are bounded by records and by bytes, so a few huge records never sit in memory together;
call these on the journal's thread (`Journal.run`/`call`, or the writing thread that owns it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import NamedTuple

from harvester.journal import KEPT, unpack, unpacked_size


class JournalRow(NamedTuple):
    """One fetched record as stored: blobs still compressed (render unpacks them)."""

    article_id: int
    sources: int  # provenance bitmask
    body: bytes  # pack()ed record; empty inside for a stats-only refresh
    files: bytes | None  # pack()ed complete file list
    stats: bytes | None  # JSON of the totals
    fetched_at: str
    payloads: bytes | None  # pack()ed JSON of Outcome.payloads

    @property
    def size(self) -> int:
        """The record's bytes unpacked, as far as the blobs tell: what sizes a snapshot chunk."""
        return sum(unpacked_size(blob) for blob in (self.body, self.files, self.payloads) if blob)


def rows(db: sqlite3.Connection, after: int, limit: int) -> list[JournalRow]:
    """Up to `limit` fetched records with ids above `after`, in id order, compressed
    (with the stats-only rows that carry a deferred or failed item's last totals)."""
    return [JournalRow(*row) for row in db.execute(
        "SELECT r.article_id, i.sources, r.body, r.files, r.stats, r.fetched_at, r.extra "
        "FROM records r JOIN ids i USING(article_id) "
        "WHERE i.state IN (?, ?, ?) AND r.article_id>? ORDER BY r.article_id LIMIT ?",
        (*KEPT, after, limit),
    )]


def chunks(db: sqlite3.Connection, max_records: int, max_bytes: int
           ) -> Iterator[list[JournalRow]]:
    """Every fetched record in id order, in chunks of at most `max_records` records and
    about `max_bytes` unpacked bytes (one big record is a chunk of its own)."""
    chunk: list[JournalRow] = []
    size, after = 0, -1
    while batch := rows(db, after, _fitting(db, after, max_records, max_bytes)):
        after = batch[-1].article_id
        for row in batch:
            chunk.append(row)
            size += row.size
            if len(chunk) >= max_records or size >= max_bytes:
                yield chunk
                chunk, size = [], 0
        del batch  # the rows live on in the chunks only
    if chunk:
        yield chunk


def bodies(db: sqlite3.Connection, max_bytes: int = 16 << 20) -> Iterator[bytes]:
    """Every fetched record's body as served, in id order, read a bounded batch at a time."""
    for chunk in chunks(db, 500, max_bytes):
        for row in chunk:
            yield unpack(row.body)


def _fitting(db: sqlite3.Connection, after: int, limit: int, max_bytes: int) -> int:
    """How many of the next rows (at most `limit`, at least 1) hold about `max_bytes` of
    stored blobs: 250 incompressible 10 MB records are not read at once. length() of a
    blob reads no content."""
    total = n = 0
    for (stored,) in db.execute(
            "SELECT length(r.body)+ifnull(length(r.files),0)+ifnull(length(r.extra),0) "
            "FROM records r JOIN ids i USING(article_id) WHERE i.state IN (?, ?, ?) "
            "AND r.article_id>? ORDER BY r.article_id LIMIT ?", (*KEPT, after, limit)):
        total, n = total + (stored or 0), n + 1
        if total >= max_bytes:
            break
    return max(n, 1)
