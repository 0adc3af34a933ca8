"""The journal's fetched records read back for the snapshot: in id order, a bounded chunk at a time.

SQLite steps the cursor a row at a time, so a few huge records never sit in memory together;
call these on the journal's thread (`Journal.run`/`call`, or the writing thread that owns it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import NamedTuple

from harvester.journal import KEPT, unpack, unpacked_size

# the records a snapshot holds, with the stats-only rows that carry a deferred or failed
# item's last totals
_KEPT_RECORDS = ("SELECT r.article_id, i.sources, r.body, r.files, r.stats, r.fetched_at, "
                 "r.payloads FROM records r JOIN ids i USING(article_id) "
                 "WHERE i.state IN (?, ?, ?) ORDER BY r.article_id")


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
        """The record's bytes unpacked: what sizes a snapshot chunk."""
        return sum(unpacked_size(blob) for blob in (self.body, self.files, self.payloads) if blob)


def chunks(db: sqlite3.Connection, max_records: int, max_bytes: int
           ) -> Iterator[list[JournalRow]]:
    """Every fetched record in id order, in chunks of at most `max_records` records and
    about `max_bytes` unpacked bytes (one big record is a chunk of its own)."""
    chunk: list[JournalRow] = []
    size = 0
    for row in map(JournalRow._make, db.execute(_KEPT_RECORDS, KEPT)):
        chunk.append(row)
        size += row.size
        if len(chunk) >= max_records or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def bodies(db: sqlite3.Connection) -> Iterator[bytes]:
    """Every fetched record's body as served, in id order."""
    for row in map(JournalRow._make, db.execute(_KEPT_RECORDS, KEPT)):
        yield unpack(row.body)
