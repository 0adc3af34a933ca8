"""The journal's fetched records read back for the snapshot: in id order, a bounded chunk at a time.

SQLite steps the cursor a row at a time, so a few huge records never sit in memory together;
call these on the journal's thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import NamedTuple

from harvester.journal import KEPT, LARGE_BLOB, unpack, unpacked_size

# the records a snapshot holds, with the stats-only rows of deferred or failed items; a body
# past LARGE_BLOB comes as NULL (a body never is), to be read through a blob handle
_KEPT_RECORDS = ("SELECT r.article_id, i.sources, r.files, r.stats, r.fetched_at, r.payloads, "
                 "CASE WHEN length(r.body) > ? THEN NULL ELSE r.body END "
                 "FROM records r JOIN ids i USING(article_id) "
                 "WHERE i.state IN (?, ?, ?) ORDER BY r.article_id")


class JournalRow(NamedTuple):
    """One fetched record as stored: its body unpacked, the other blobs still packed."""

    article_id: int
    sources: int  # provenance bitmask
    body: bytes  # the record as served; empty for a stats-only refresh
    files: bytes | None  # pack()ed complete file list
    stats: bytes | None  # JSON of the totals
    fetched_at: str
    payloads: bytes | None  # pack()ed JSON of Outcome.payloads

    @property
    def size(self) -> int:
        return len(self.body) + sum(unpacked_size(b) for b in (self.files, self.payloads) if b)


def chunks(db: sqlite3.Connection, max_records: int, max_bytes: int
           ) -> Iterator[list[JournalRow]]:
    """Every fetched record in id order, in chunks of at most `max_records` records and
    about `max_bytes` unpacked bytes (one big record is a chunk of its own)."""
    chunk: list[JournalRow] = []
    size = 0
    for row in _rows(db):
        chunk.append(row)
        size += row.size
        if len(chunk) >= max_records or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def bodies(db: sqlite3.Connection) -> Iterator[bytes]:
    """Every fetched record's body as served, in id order."""
    return (row.body for row in _rows(db))


def _rows(db: sqlite3.Connection) -> Iterator[JournalRow]:
    """The kept records, each body unpacked; a large one read through a blob handle, which
    copies it once where a SELECT copies it twice."""
    for aid, sources, *rest, packed in db.execute(_KEPT_RECORDS, (LARGE_BLOB, *KEPT)):
        if packed is None:
            with db.blobopen("records", "body", aid, readonly=True) as blob:
                packed = blob.read()
        body = unpack(packed)
        del packed  # else the generator holds it while the record is rendered and written
        yield JournalRow(aid, sources, body, *rest)
