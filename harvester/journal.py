"""The run journal (SQLite): ids, fetched records, errors; flat memory and resumable runs.

One journal per harvest name, at OUTPUT/NAME/.state/journal.sqlite. Enumeration inserts ids
(provenance as a bitmask of source indexes); the fan-out stores each result; the snapshot is
written from the journal in id order, so its content does not depend on concurrency or on how
often the run was interrupted. All access goes through one thread: SQLite never blocks the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import pyarrow as pa

from harvester.catalog import Catalog, damaged, transaction
from harvester.errors import OutputError

T = TypeVar("T")


class ItemState(IntEnum):
    """Where an id stands in this run (stored as its number)."""

    PENDING = 0
    DONE = 1
    FAILED = 2
    GONE = 3


class FetchMode(IntEnum):
    """What to fetch for an id (stored as its number)."""

    FULL = 0  # the record, its files and its stats
    STATS_ONLY = 1  # an incremental run's refresh of a known, unchanged item


PENDING, DONE, FAILED, GONE = ItemState
FULL, STATS_ONLY = FetchMode

# Record blobs are LZ4 frames with their size in front (cheaper than zlib for the same job);
# journals written before used zlib, whose streams never start with this byte: they still read.
_LZ4 = pa.Codec("lz4") if pa.Codec.is_available("lz4") else None
_LZ4_TAG = b"\x00"


def pack(data: bytes) -> bytes:
    """A journal blob of `data` (see unpack)."""
    if _LZ4 is None:
        return zlib.compress(data, 1)
    return _LZ4_TAG + len(data).to_bytes(8, "little") + _LZ4.compress(data, asbytes=True)


def unpacked_size(blob: bytes) -> int:
    """What unpack(blob) returns, in bytes (an old zlib blob: its packed size)."""
    return int.from_bytes(blob[1:9], "little") if blob[:1] == _LZ4_TAG else len(blob)


def unpack(blob: bytes) -> bytes:
    """The bytes a journal blob holds: an LZ4 blob of pack(), or an older journal's zlib one."""
    if blob[:1] != _LZ4_TAG:
        return zlib.decompress(blob)
    size = int.from_bytes(blob[1:9], "little")
    if not size:
        return b""
    if _LZ4 is None:
        raise OutputError("the run journal holds LZ4 blobs and this pyarrow has no LZ4 codec")
    return _LZ4.decompress(blob[9:], decompressed_size=size, asbytes=True)


# The on-disk names stay as they were (`extra`, `side`): a journal of an interrupted run
# resumes after an upgrade.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    idx INTEGER PRIMARY KEY, name TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS ids (
    article_id INTEGER PRIMARY KEY, sources INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, mode INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS records (
    article_id INTEGER PRIMARY KEY, body BLOB NOT NULL, files BLOB, stats BLOB,
    fetched_at TEXT NOT NULL, extra BLOB, published TEXT);
CREATE TABLE IF NOT EXISTS errors (article_id INTEGER PRIMARY KEY, error BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS side (
    kind TEXT NOT NULL, key INTEGER NOT NULL, source INTEGER NOT NULL, body BLOB NOT NULL,
    fetched_at TEXT NOT NULL, PRIMARY KEY (kind, key));
"""


@dataclass(frozen=True)
class Outcome:
    """What the fan-out learned about one id."""

    article_id: int
    state: ItemState
    body: bytes = b""  # the full record exactly as served
    files: bytes | None = None  # the complete /files list when the record's list was capped
    stats: dict[str, int] | None = None
    fetched_at: str = ""
    error: dict[str, Any] | None = None
    # optional per-item payloads: timeline, breakdown, versions, downloads (see render)
    payloads: dict[str, Any] | None = None
    published: str | None = None  # the record's published_date, for "recent" stats refreshes


class PendingItem(NamedTuple):
    """An id still to fetch, as the fan-out reads it."""

    article_id: int
    sources: int
    mode: FetchMode


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


class SourceRecord(NamedTuple):
    """A record a source yields besides ids (a collection, project or review)."""

    kind: str
    key: int
    body: Any
    fetched_at: str


class Journal:
    """The run's durable state. Sync methods run on the journal's own thread via `call`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._db: sqlite3.Connection | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._pool.submit(self._connect).result()
        except (OSError, sqlite3.Error) as exc:
            hint = (f" (damaged: move {self.path.name}* aside and the run starts over; "
                    "published snapshots are not affected)" if damaged(exc) else "")
            raise OutputError(f"{self.path}: cannot open the run journal: {exc}{hint}") from None

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast
        try:
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise OutputError(f"{self.path}: not a harvester journal ({exc})") from None
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._pool.submit(self._db.close).result()
            self._db = None
        self._pool.shutdown(wait=True)

    def discard(self) -> None:
        """Close and delete the journal (after a published snapshot, or a config change)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except sqlite3.OperationalError as exc:
            raise self._cannot(exc) from None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the journal thread from synchronous code (CLI, tests)."""
        try:
            return self._pool.submit(fn, *args).result()
        except sqlite3.OperationalError as exc:
            raise self._cannot(exc) from None

    def _cannot(self, exc: sqlite3.OperationalError) -> OutputError:
        """A full disk or an I/O error: what was committed is intact and the run resumes."""
        return OutputError(f"{self.path.parent}: cannot write the run's state (journal, "
                           f"catalog): {exc}; what was fetched is kept for the next run")

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "journal not open"
        return self._db

    # -- meta ------------------------------------------------------------------------------

    def get_meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: dict[str, str]) -> None:
        with transaction(self.db):
            self.db.executemany(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                list(values.items()),
            )

    # -- enumeration -----------------------------------------------------------------------

    def source_done(self, idx: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT done, info FROM sources WHERE idx=?", (idx,)).fetchone()
        return orjson.loads(row[1]) if row and row[0] else None

    def start_source(self, idx: int, name: str) -> None:
        self.db.execute(
            "INSERT INTO sources(idx, name) VALUES(?, ?) ON CONFLICT(idx) DO NOTHING", (idx, name)
        )

    def add_ids(self, idx: int, ids: Iterable[int]) -> None:
        bit = 1 << idx
        with transaction(self.db):
            # a listed id always gets its full record, even if it was queued for stats only
            self.db.executemany(
                "INSERT INTO ids(article_id, sources) VALUES(?, ?) "
                "ON CONFLICT(article_id) DO UPDATE SET sources = sources | excluded.sources, "
                f"mode = {FetchMode.FULL:d}",
                [(int(i), bit) for i in ids],
            )

    def add_known_for_stats(self, catalog: Path, published_after: str | None) -> int:
        """Queue the catalog's known ids for a stats-only refresh (listed ids keep FULL)."""
        with self._attached(catalog), transaction(self.db):
            return self.db.execute(
                "INSERT INTO ids(article_id, sources, mode) "
                "SELECT article_id, sources, ? FROM cat.known "
                "WHERE ? IS NULL OR published >= ? ON CONFLICT(article_id) DO NOTHING",
                (FetchMode.STATS_ONLY, published_after, published_after),
            ).rowcount

    def finish_source(self, idx: int, info: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE sources SET done=1, info=? WHERE idx=?", (orjson.dumps(info).decode(), idx)
        )

    def ids_per_source(self, count: int) -> list[int]:
        return [
            self.db.execute("SELECT count(*) FROM ids WHERE sources & ?", (1 << i,)).fetchone()[0]
            for i in range(count)
        ]

    # -- fan-out ---------------------------------------------------------------------------

    def counts(self) -> dict[ItemState, int]:
        rows = self.db.execute("SELECT state, count(*) FROM ids GROUP BY state").fetchall()
        return {ItemState(state): n for state, n in rows}

    def pending(self, after: int, limit: int) -> list[PendingItem]:
        rows = self.db.execute(
            "SELECT article_id, sources, mode FROM ids WHERE state=? AND article_id>? "
            "ORDER BY article_id LIMIT ?",
            (ItemState.PENDING, after, limit),
        ).fetchall()
        return [PendingItem(aid, sources, FetchMode(mode)) for aid, sources, mode in rows]

    def retry_failed(self) -> int:
        """On resume, ids that failed get another chance."""
        with transaction(self.db):
            self.db.execute("DELETE FROM errors WHERE article_id IN "
                            "(SELECT article_id FROM ids WHERE state=?)", (ItemState.FAILED,))
            return self.db.execute("UPDATE ids SET state=? WHERE state=?",
                                   (ItemState.PENDING, ItemState.FAILED)).rowcount

    def store(self, outcomes: list[Outcome]) -> None:
        done = [o for o in outcomes if o.state == ItemState.DONE]
        with transaction(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO records VALUES(?, ?, ?, ?, ?, ?, ?)",
                [(
                    o.article_id,
                    pack(o.body),
                    pack(o.files) if o.files is not None else None,
                    orjson.dumps(o.stats) if o.stats is not None else None,
                    o.fetched_at,
                    pack(orjson.dumps(o.payloads)) if o.payloads else None,
                    o.published,
                ) for o in done],
            )
            self.db.executemany("DELETE FROM errors WHERE article_id=?",
                                [(o.article_id,) for o in done])
            self.db.executemany(
                "INSERT OR REPLACE INTO errors VALUES(?, ?)",
                [(o.article_id, orjson.dumps(o.error or {})) for o in outcomes
                 if o.state != ItemState.DONE],
            )
            self.db.executemany(
                "UPDATE ids SET state=?, attempts=attempts+1 WHERE article_id=?",
                [(int(o.state), o.article_id) for o in outcomes],
            )

    # -- snapshot --------------------------------------------------------------------------

    def rows(self, after: int, limit: int) -> list[JournalRow]:
        """Up to `limit` fetched records with ids above `after`, in id order, compressed."""
        return [JournalRow(*row) for row in self.db.execute(
            "SELECT r.article_id, i.sources, r.body, r.files, r.stats, r.fetched_at, r.extra "
            "FROM records r JOIN ids i USING(article_id) "
            "WHERE i.state=? AND r.article_id>? ORDER BY r.article_id LIMIT ?",
            (ItemState.DONE, after, limit),
        )]

    def chunks(self, max_records: int, max_bytes: int) -> Iterator[list[JournalRow]]:
        """Every fetched record in id order, in chunks of at most `max_records` records and
        about `max_bytes` stored bytes (one big record is a chunk of its own)."""
        chunk: list[JournalRow] = []
        size, after = 0, -1
        while rows := self.rows(after, max_records):
            for row in rows:
                chunk.append(row)
                size += row.size
                if len(chunk) >= max_records or size >= max_bytes:
                    yield chunk
                    chunk, size = [], 0
            after = rows[-1].article_id
        if chunk:
            yield chunk

    def bodies(self, batch: int = 500) -> Iterator[bytes]:
        """Every fetched record's body as served, in id order (call on the journal thread)."""
        after = -1
        while rows := self.rows(after, batch):
            for row in rows:
                yield unpack(row.body)
            after = rows[-1].article_id

    def update_catalog(self, catalog: Path, snapshot_id: str, full: bool) -> None:
        """After a publish: the catalog knows what this run fetched and forgets what is gone.

        A full run replaces the known set (items it did not list are gone or out of scope);
        an incremental run adds and refreshes what it fetched and drops items that 404ed.
        """
        with self._attached(catalog), transaction(self.db):
            if full:
                self.db.execute("DELETE FROM cat.known")
            self.db.execute(
                "INSERT INTO cat.known(article_id, sources, published, last_snapshot) "
                "SELECT i.article_id, i.sources, r.published, ? FROM ids i "
                "JOIN records r USING(article_id) WHERE i.state=? AND i.mode=? "
                "ON CONFLICT(article_id) DO UPDATE SET sources=excluded.sources, "
                "published=excluded.published, last_snapshot=excluded.last_snapshot",
                (snapshot_id, ItemState.DONE, FetchMode.FULL),
            )
            self.db.execute(
                "DELETE FROM cat.known WHERE article_id IN (SELECT article_id FROM ids "
                "WHERE state=?)", (ItemState.GONE,)
            )

    def _attached(self, catalog: Path) -> _Attached:
        return _Attached(self.db, catalog)

    def errors(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(e)
            for (e,) in self.db.execute("SELECT error FROM errors ORDER BY article_id").fetchall()
        ]

    # -- source-level records: collections, projects, reviews -------------------------------

    def add_source_records(self, idx: int, records: Iterable[tuple[str, int, Any]],
                           fetched_at: str) -> None:
        """Records a source yields besides ids, as (kind, key, JSON body); re-listing replaces."""
        with transaction(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO side VALUES(?, ?, ?, ?, ?)",
                [(kind, key, idx, pack(orjson.dumps(body)), fetched_at)
                 for kind, key, body in records],
            )

    def source_records(self) -> Iterator[SourceRecord]:
        """Every source record in kind and key order (call on the journal thread)."""
        for kind, key, body, fetched_at in self.db.execute(
                "SELECT kind, key, body, fetched_at FROM side ORDER BY kind, key").fetchall():
            yield SourceRecord(kind, key, orjson.loads(unpack(body)), fetched_at)


class _Attached:
    """The catalog attached to the journal's connection as `cat` for cross-database SQL."""

    def __init__(self, db: sqlite3.Connection, catalog: Path) -> None:
        self.db, self.catalog = db, catalog

    def __enter__(self) -> None:
        Catalog(self.catalog).close()  # make sure it exists with its schema
        self.db.execute("ATTACH DATABASE ? AS cat", (str(self.catalog),))

    def __exit__(self, *exc: object) -> None:
        self.db.execute("DETACH DATABASE cat")
