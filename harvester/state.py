"""Run journal and catalog (SQLite): ids, fetched records, errors; flat memory, resumable runs.

One journal per harvest name, at OUTPUT/NAME/.state/journal.sqlite. Enumeration inserts ids (dedup
by primary key, provenance as a bitmask of source indexes); the fan-out reads pending ids in id
order, in chunks, and stores each result; the snapshot is written from the journal in id order, so
its content does not depend on concurrency or on how often the run was interrupted. All access
goes through one worker thread: SQLite never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pyarrow as pa

from harvester.errors import LockedError, OutputError

T = TypeVar("T")

PENDING, DONE, FAILED, GONE = 0, 1, 2, 3
FULL, STATS_ONLY = 0, 1  # what to fetch for an id: the record and its stats, or stats alone

# Record blobs are LZ4 frames with their size in front: for a 4 KB record that is a fifth of the
# CPU of zlib level 1 to pack and unpack (this runs once per item on the journal thread while the
# run fetches, and again when the snapshot is written) for a journal about 40% larger. Journals
# written before used zlib, whose streams never start with this byte: they still read.
_LZ4 = pa.Codec("lz4") if pa.Codec.is_available("lz4") else None
_LZ4_TAG = b"\x00"


def pack(data: bytes) -> bytes:
    """A journal blob of `data` (see unpack)."""
    if _LZ4 is None:
        return zlib.compress(data, 1)
    return _LZ4_TAG + len(data).to_bytes(8, "little") + _LZ4.compress(data, asbytes=True)


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
    state: int  # DONE, FAILED or GONE
    body: bytes = b""  # the full record exactly as served
    files: bytes | None = None  # the complete /files list when the record's list was capped
    stats: dict[str, int] | None = None
    fetched_at: str = ""
    error: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None  # optional per-item payloads (versions, timelines, ...)
    published: str | None = None  # the record's published_date, for "recent" stats refreshes


@dataclass(frozen=True)
class StoredRecord:
    article_id: int
    sources: int
    body: bytes
    files: bytes | None
    stats: dict[str, int] | None
    fetched_at: str
    extra: dict[str, Any] | None = None


def _damaged(exc: BaseException) -> bool:
    """SQLite could open the file but not read it as a database ("file is not a database",
    "database disk image is malformed"): not a permission or a missing folder."""
    return type(exc) is sqlite3.DatabaseError


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
                    "published snapshots are not affected)" if _damaged(exc) else "")
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
        """SQLite could not read or write the state folder (a full disk, an I/O error): what
        was committed before is intact, and the run resumes from it once that is fixed."""
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
        with _tx(self.db):
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
        with _tx(self.db):
            # a listed id always gets its full record, even if it was queued for stats only
            self.db.executemany(
                "INSERT INTO ids(article_id, sources) VALUES(?, ?) "
                "ON CONFLICT(article_id) DO UPDATE SET sources = sources | excluded.sources, "
                "mode = 0",
                [(int(i), bit) for i in ids],
            )

    def add_known_for_stats(self, catalog: Path, published_after: str | None) -> int:
        """Queue the catalog's known ids for a stats-only refresh (listed ids keep FULL)."""
        with self._attached(catalog), _tx(self.db):
            return self.db.execute(
                "INSERT INTO ids(article_id, sources, mode) "
                "SELECT article_id, sources, 1 FROM cat.known "
                "WHERE ? IS NULL OR published >= ? ON CONFLICT(article_id) DO NOTHING",
                (published_after, published_after),
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

    def counts(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM ids GROUP BY state").fetchall())

    def pending(self, after: int, limit: int) -> list[tuple[int, int, int]]:
        return self.db.execute(
            "SELECT article_id, sources, mode FROM ids WHERE state=? AND article_id>? "
            "ORDER BY article_id LIMIT ?",
            (PENDING, after, limit),
        ).fetchall()

    def retry_failed(self) -> int:
        """On resume, ids that failed get another chance."""
        with _tx(self.db):
            self.db.execute("DELETE FROM errors WHERE article_id IN "
                            "(SELECT article_id FROM ids WHERE state=?)", (FAILED,))
            return self.db.execute("UPDATE ids SET state=? WHERE state=?",
                                   (PENDING, FAILED)).rowcount

    def store(self, outcomes: list[Outcome]) -> None:
        done = [o for o in outcomes if o.state == DONE]
        with _tx(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO records VALUES(?, ?, ?, ?, ?, ?, ?)",
                [(
                    o.article_id,
                    pack(o.body),
                    pack(o.files) if o.files is not None else None,
                    orjson.dumps(o.stats) if o.stats is not None else None,
                    o.fetched_at,
                    pack(orjson.dumps(o.extra)) if o.extra else None,
                    o.published,
                ) for o in done],
            )
            self.db.executemany("DELETE FROM errors WHERE article_id=?",
                                [(o.article_id,) for o in done])
            self.db.executemany(
                "INSERT OR REPLACE INTO errors VALUES(?, ?)",
                [(o.article_id, orjson.dumps(o.error or {})) for o in outcomes
                 if o.state != DONE],
            )
            self.db.executemany(
                "UPDATE ids SET state=?, attempts=attempts+1 WHERE article_id=?",
                [(o.state, o.article_id) for o in outcomes],
            )

    # -- snapshot --------------------------------------------------------------------------

    def packed_records(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to `limit` fetched records with ids above `after`, in id order, as stored
        (compressed): (id, sources, body, files, stats, fetched_at, extra). For render."""
        return self.db.execute(
            "SELECT r.article_id, i.sources, r.body, r.files, r.stats, r.fetched_at, r.extra "
            "FROM records r JOIN ids i USING(article_id) "
            "WHERE i.state=? AND r.article_id>? ORDER BY r.article_id LIMIT ?",
            (DONE, after, limit),
        ).fetchall()

    def packed_chunks(self, size: int) -> Iterator[list[tuple[Any, ...]]]:
        """Every fetched record, packed, in id order and chunks of `size` (journal thread)."""
        after = -1
        while rows := self.packed_records(after, size):
            yield rows
            after = rows[-1][0]

    def records(self, batch: int = 500) -> Iterator[StoredRecord]:
        """Fetched records in id order, read in batches (call on the journal thread)."""
        for rows in self.packed_chunks(batch):
            for aid, sources, body, files, stats, fetched_at, extra in rows:
                yield StoredRecord(
                    aid,
                    sources,
                    unpack(body),
                    unpack(files) if files is not None else None,
                    orjson.loads(stats) if stats is not None else None,
                    fetched_at,
                    orjson.loads(unpack(extra)) if extra is not None else None,
                )

    def update_catalog(self, catalog: Path, snapshot_id: str, full: bool) -> None:
        """After a publish: the catalog knows what this run fetched and forgets what is gone.

        A full run replaces the known set (items it did not list are gone or out of scope);
        an incremental run adds and refreshes what it fetched and drops items that 404ed.
        """
        with self._attached(catalog), _tx(self.db):
            if full:
                self.db.execute("DELETE FROM cat.known")
            self.db.execute(
                "INSERT INTO cat.known(article_id, sources, published, last_snapshot) "
                "SELECT i.article_id, i.sources, r.published, ? FROM ids i "
                "JOIN records r USING(article_id) WHERE i.state=? AND i.mode=? "
                "ON CONFLICT(article_id) DO UPDATE SET sources=excluded.sources, "
                "published=excluded.published, last_snapshot=excluded.last_snapshot",
                (snapshot_id, DONE, FULL),
            )
            self.db.execute(
                "DELETE FROM cat.known WHERE article_id IN (SELECT article_id FROM ids "
                "WHERE state=?)", (GONE,)
            )

    def _attached(self, catalog: Path) -> _Attached:
        return _Attached(self.db, catalog)

    def errors(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(e)
            for (e,) in self.db.execute("SELECT error FROM errors ORDER BY article_id").fetchall()
        ]

    # -- source-level records: collections, projects, reviews -------------------------------

    def add_side(self, idx: int, records: Iterable[tuple[str, int, Any]], fetched_at: str) -> None:
        """Records a source yields besides ids, as (kind, key, JSON body); re-listing replaces."""
        with _tx(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO side VALUES(?, ?, ?, ?, ?)",
                [(kind, key, idx, pack(orjson.dumps(body)), fetched_at)
                 for kind, key, body in records],
            )

    def side(self) -> Iterator[tuple[str, int, Any, str]]:
        """(kind, key, body, fetched_at) in kind and key order (call on the journal thread)."""
        for kind, key, body, fetched_at in self.db.execute(
                "SELECT kind, key, body, fetched_at FROM side ORDER BY kind, key").fetchall():
            yield kind, key, orjson.loads(unpack(body)), fetched_at


@contextlib.contextmanager
def _tx(db: sqlite3.Connection) -> Iterator[None]:
    """One explicit transaction (the connections run in autocommit mode otherwise)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite ends it by itself on some errors (SQLITE_FULL)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


_crash_counts: dict[str, int] = {}
_CRASH_AT = os.environ.get("HARVESTER_CRASH_AT", "")  # read once: this is on the write path


def crash_point(name: str) -> None:
    """Crash-test hook: with HARVESTER_CRASH_AT=name[:n] in the environment the process starts
    with, it SIGKILLs itself the n-th time it passes `name` (listing, fetch, write, publish,
    published), as a power cut would."""
    if not _CRASH_AT:
        return
    target, _, nth = _CRASH_AT.partition(":")
    if target != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


class _Attached:
    """The catalog attached to the journal's connection as `cat` for cross-database SQL."""

    def __init__(self, db: sqlite3.Connection, catalog: Path) -> None:
        self.db, self.catalog = db, catalog

    def __enter__(self) -> None:
        Catalog(self.catalog).close()  # make sure it exists with its schema
        self.db.execute("ATTACH DATABASE ? AS cat", (str(self.catalog),))

    def __exit__(self, *exc: object) -> None:
        self.db.execute("DETACH DATABASE cat")


_CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS known (
    article_id INTEGER PRIMARY KEY, sources INTEGER NOT NULL, published TEXT,
    last_snapshot TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS marks (
    source TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, hwm TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    snapshot_id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL);
"""


class Catalog:
    """What a harvest knows between runs: known ids, per-source high-water marks, past runs.

    Lives at OUTPUT/NAME/.state/catalog.sqlite and survives every run (the journal does not).
    Small reads and writes at the start and end of a run; opened briefly, never held.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        db = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None)
            db.executescript(_CATALOG_SCHEMA)
            self.db = db
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            hint = (f" (damaged: move {path.name}* aside and the next run is a full one; "
                    "published snapshots are not affected)" if _damaged(exc) else "")
            raise OutputError(f"{path}: cannot open the harvest catalog: {exc}{hint}") from None

    def close(self) -> None:
        self.db.close()

    def marks(self) -> dict[str, tuple[str, str]]:
        """source name -> (its parameters' fingerprint, high-water mark as UTC timestamp)."""
        rows = self.db.execute("SELECT source, fingerprint, hwm FROM marks").fetchall()
        return {name: (fp, hwm) for name, fp, hwm in rows}

    def set_marks(self, marks: dict[str, tuple[str, str]]) -> None:
        with _tx(self.db):
            self.db.executemany(
                "INSERT INTO marks VALUES(?, ?, ?) ON CONFLICT(source) DO UPDATE SET "
                "fingerprint=excluded.fingerprint, hwm=excluded.hwm",
                [(name, fp, hwm) for name, (fp, hwm) in marks.items()],
            )

    def last_run(self, kind: str | None = None) -> dict[str, str] | None:
        sql = "SELECT snapshot_id, kind, status, started_at, finished_at FROM runs"
        args: tuple[str, ...] = ()
        if kind:
            sql += " WHERE kind=?"
            args = (kind,)
        row = self.db.execute(sql + " ORDER BY started_at DESC LIMIT 1", args).fetchone()
        keys = ("snapshot_id", "kind", "status", "started_at", "finished_at")
        return dict(zip(keys, row, strict=True)) if row else None

    def add_run(self, snapshot_id: str, kind: str, status: str, started_at: str,
                finished_at: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs VALUES(?, ?, ?, ?, ?)",
                        (snapshot_id, kind, status, started_at, finished_at))

    def known_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM known").fetchone()[0])


class RunLock:
    """One run per harvest name: an flock the kernel releases when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create the run lock: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"{self.path}: another run of this harvest is in progress (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
