"""The run journal (SQLite, OUTPUT/NAME/.state/journal.sqlite): ids, fetched records, errors.

The snapshot is written from it in id order, so its content depends neither on concurrency nor
on interruptions. All access goes through one thread: SQLite never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import pyarrow as pa

from harvester import periods
from harvester.catalog import Catalog, Validators, open_state, transaction
from harvester.errors import OutputError
from harvester.store import ID_FORMAT

T = TypeVar("T")

QUEUED_BYTES = 8 << 20  # record bytes fetched, not yet stored, past which no item starts
LARGE_BLOB = 1 << 20  # a journal blob this big is written and read through a blob handle
UNLISTED = 1 << 62  # in ids.sources: known from the last full run, no source listed it tonight


class ItemState(IntEnum):
    """Where an id stands in this run (stored as its number)."""

    PENDING = 0
    DONE = 1
    FAILED = 2
    GONE = 3
    DEFERRED = 4  # not fetched: the run's budget was spent first


class FetchMode(IntEnum):
    """What to fetch for an id (stored as its number)."""

    FULL = 0  # the record, its files and its stats
    STATS_ONLY = 1  # an incremental run's refresh of a known, unchanged item


class Priority(IntEnum):
    """The order a budgeted run spends in (issue 23): lower first."""

    CARRIED = 0  # new or changed records a budget deferred last night
    LISTED = 1  # listed tonight: new and changed records, with their stats
    RETRY = 2  # records that failed last night
    STATS = 3  # stats of known unchanged items, stalest first (`stale`), ties by id


PENDING, DONE, FAILED, GONE, DEFERRED = ItemState
FULL, STATS_ONLY = FetchMode
KEPT = (DONE, FAILED, DEFERRED)  # their records are written
_LZ4 = pa.Codec("lz4")


def _packed(data: bytes) -> tuple[bytes, pa.Buffer]:
    """A journal blob in its two parts: the unpacked size, the LZ4 frame."""
    return len(data).to_bytes(8, "little"), _LZ4.compress(data)


def pack(data: bytes) -> bytes:
    size, frame = _packed(data)
    return size + frame


def unpacked_size(blob: bytes) -> int:
    return int.from_bytes(blob[:8], "little")


def unpack(blob: bytes) -> bytes:
    size = unpacked_size(blob)
    return (_LZ4.decompress(memoryview(blob)[8:], decompressed_size=size, asbytes=True)
            if size else b"")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    idx INTEGER PRIMARY KEY, name TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    info TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS ids (
    article_id INTEGER PRIMARY KEY, sources INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, mode INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 1, stale TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS records (
    article_id INTEGER PRIMARY KEY, body BLOB NOT NULL, files BLOB, stats BLOB,
    fetched_at TEXT NOT NULL, payloads BLOB, published TEXT, record_url TEXT, etag TEXT,
    last_modified TEXT);
CREATE TABLE IF NOT EXISTS errors (article_id INTEGER PRIMARY KEY, error BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS source_records (
    kind TEXT NOT NULL, key INTEGER NOT NULL, source INTEGER NOT NULL, body BLOB NOT NULL,
    fetched_at TEXT NOT NULL, PRIMARY KEY (kind, key));
"""
_EMPTY = pack(b"")  # the body of a row that carries only stats


def _stamps(value: Any) -> bool:
    return all(periods.stamp(periods.parse_stamp(v)) == v for v in value)


_META: dict[str, Callable[[str], bool]] = {  # what a run keeps in meta, as it writes it
    "snapshot_id": lambda v: datetime.strptime(v, ID_FORMAT).strftime(ID_FORMAT) == v,
    "runs": lambda v: re.fullmatch(r"[1-9][0-9]{0,8}", v) is not None,
    "kind": lambda v: v in ("full", "incremental"),
    "started_at": lambda v: _stamps([v]),
    "since": lambda v: _stamps(orjson.loads(v).values()),
    "requests_earlier": lambda v: all(type(n) is int and n >= 0
                                      for n in orjson.loads(v).values()),
}


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
    validators: Validators | None = None  # the record's ETag and Last-Modified, for next time
    not_modified: bool = False  # the record answered 304: only its stats were fetched


class Outcomes(asyncio.Queue["Outcome | None"]):
    """Outcomes on their way to the journal, bounded by count and by bytes (`room`); a record
    past client.LARGE_BODY is fetched one at a time until stored (`item`), so records near
    http.max_body are never held by every worker at once."""

    def __init__(self, maxsize: int, max_bytes: int = QUEUED_BYTES) -> None:
        super().__init__(maxsize)
        self.max_bytes, self.bytes = max_bytes, 0
        self._room = asyncio.Condition()
        self._large = asyncio.Lock()
        self._unstored: set[int] = set()  # ids of outcomes put here, not yet stored

    async def room(self) -> None:
        async with self._room:
            await self._room.wait_for(lambda: self.bytes < self.max_bytes)

    @contextlib.asynccontextmanager
    async def item(self, article_id: int) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """One item's fetch; it yields what waits for a large body's turn, held until stored."""
        held = False

        async def turn() -> None:
            nonlocal held
            if not held:
                await self._large.acquire()
                held = True

        try:
            yield turn
            if held:
                async with self._room:
                    await self._room.wait_for(lambda: article_id not in self._unstored)
        finally:
            if held:
                self._large.release()

    def _put(self, item: Outcome | None) -> None:
        if item is not None:
            self._unstored.add(item.article_id)
        self.bytes += _held(item)
        super()._put(item)

    async def stored(self, outcomes: list[Outcome]) -> None:
        self.bytes -= sum(map(_held, outcomes))
        self._unstored.difference_update(o.article_id for o in outcomes)
        async with self._room:
            self._room.notify_all()


def _held(outcome: Outcome | None) -> int:
    return 0 if outcome is None else len(outcome.body) + len(outcome.files or b"")


class PendingItem(NamedTuple):
    """An id still to fetch, as the fan-out reads it (in spending order)."""

    article_id: int
    sources: int
    mode: FetchMode
    priority: int = Priority.LISTED
    stale: str = ""

    @property
    def key(self) -> tuple[int, str, int]:
        """Where the next page of pending ids starts after this one."""
        return (self.priority, self.stale, self.article_id)


class Counts(dict[ItemState, int]):
    """Ids per state, and `incomplete`: records kept (DONE) while a part of them failed."""

    incomplete: int = 0


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

    def open(self) -> None:
        self._pool.submit(self._connect).result()

    def _connect(self) -> None:
        db = open_state(self.path, _SCHEMA, "run journal", "the run starts over")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast
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
        return await asyncio.wrap_future(self._pool.submit(self._guarded, fn, *args))

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the journal thread from synchronous code (CLI, tests)."""
        return self._pool.submit(self._guarded, fn, *args).result()

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """A full disk or an I/O error: what was committed is intact and the run resumes."""
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            raise OutputError(f"{self.path.parent}: cannot write the run's state (journal, "
                              f"catalog): {exc}; what was fetched is kept for the next run"
                              ) from None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "journal not open"
        return self._db

    def get_meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def check_meta(self, meta: dict[str, str]) -> None:
        """An interrupted run's meta, damaged, stops the run in one line before it fetches:
        never a crash after it, a snapshot id naming another folder, a wrong kind published."""
        for key, good in _META.items():
            value = meta.get(key, "{}" if key == "requests_earlier" else None)
            try:
                ok = value is not None and good(value)
            except (ValueError, TypeError, AttributeError):
                ok = False
            if not ok:
                raise OutputError(f"{self.path}: cannot resume the interrupted run: its {key} "
                                  f"is {str(value)[:60]!r} (move {self.path.name}* aside and the "
                                  "run starts over; published snapshots are not affected)")

    def set_meta(self, values: dict[str, str]) -> None:
        with transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES(?, ?)", list(values.items()))

    def source_done(self, idx: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT done, info FROM sources WHERE idx=?", (idx,)).fetchone()
        return orjson.loads(row[1]) if row and row[0] else None

    def start_source(self, idx: int, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO sources(idx, name) VALUES(?, ?)", (idx, name))

    def add_ids(self, idx: int, ids: Iterable[int]) -> None:
        bit = 1 << idx
        with transaction(self.db):
            # a listed id always gets its full record, even if it was queued for stats only
            self.db.executemany(
                "INSERT INTO ids(article_id, sources) VALUES(?, ?) "
                "ON CONFLICT(article_id) DO UPDATE SET sources = sources | excluded.sources, "
                f"mode = {FetchMode.FULL:d}, priority = min(priority, {Priority.LISTED:d})",
                [(int(i), bit) for i in ids],
            )

    def add_known_for_stats(self, catalog: Path, published_after: str | None) -> int:
        """Queue the catalog's known ids for a stats-only refresh, never refreshed or stalest
        first (listed ids keep FULL)."""
        with self._attached(catalog), transaction(self.db):
            return self.db.execute(
                "INSERT INTO ids(article_id, sources, mode, priority, stale) "
                "SELECT article_id, sources, ?, ?, coalesce(stats_at, '') FROM cat.known "
                "WHERE ? IS NULL OR published >= ? ON CONFLICT(article_id) DO NOTHING",
                (FetchMode.STATS_ONLY, Priority.STATS, published_after, published_after),
            ).rowcount

    def add_queued(self, catalog: Path) -> dict[str, int]:
        """The records last night left over (deferred by its budget, or failed), first."""
        with self._attached(catalog), transaction(self.db):
            self.db.execute(
                "INSERT INTO ids(article_id, sources, mode, priority) "
                "SELECT article_id, sources, ?, CASE reason WHEN 'deferred' THEN ? ELSE ? END "
                "FROM cat.queue WHERE true ON CONFLICT(article_id) DO UPDATE SET "
                "sources = sources | excluded.sources, mode = excluded.mode, "
                "priority = min(priority, excluded.priority)",
                (FetchMode.FULL, Priority.CARRIED, Priority.RETRY))
            return dict(self.db.execute(
                "SELECT reason, count(*) FROM cat.queue GROUP BY reason").fetchall())

    def add_unlisted(self, catalog: Path) -> int:
        """Known ids no source listed tonight, to fetch by id (marked UNLISTED)."""
        with self._attached(catalog), transaction(self.db):
            return self.db.execute(
                "INSERT INTO ids(article_id, sources, mode, priority) SELECT article_id, "
                "sources | ?, ?, ? FROM cat.known WHERE article_id NOT IN "
                "(SELECT article_id FROM ids)", (UNLISTED, FetchMode.FULL, Priority.LISTED),
            ).rowcount

    def fail_left_out(self, ids: list[int]) -> None:
        """Records the snapshot could not hold fail: queued for the next run, never known
        with the validators of a body it lacks (a 304 would keep them out for good)."""
        with transaction(self.db):
            self.db.executemany("UPDATE ids SET state=? WHERE article_id=?",
                                [(ItemState.FAILED, aid) for aid in ids])

    def unlisted(self) -> int:
        """Ids fetched by id because no listing showed them, that still exist."""
        return self.db.execute("SELECT count(*) FROM ids WHERE sources & ? AND state=?",
                               (UNLISTED, ItemState.DONE)).fetchone()[0]

    def finish_source(self, idx: int, info: dict[str, Any]) -> None:
        self.db.execute("UPDATE sources SET done=1, info=? WHERE idx=?",
                        (orjson.dumps(info).decode(), idx))

    def ids_per_source(self, count: int) -> list[int]:
        query = "SELECT count(*) FROM ids WHERE sources & ?"
        return [self.db.execute(query, (1 << i,)).fetchone()[0] for i in range(count)]

    def counts(self) -> Counts:
        rows = self.db.execute("SELECT state, count(*) FROM ids GROUP BY state").fetchall()
        counts = Counts({ItemState(state): n for state, n in rows})
        counts.incomplete = int(self.db.execute(
            "SELECT count(*) FROM errors JOIN ids USING(article_id) WHERE ids.state=?",
            (ItemState.DONE,)).fetchone()[0])
        return counts

    def pending(self, after: tuple[int, str, int], limit: int) -> list[PendingItem]:
        """Up to `limit` ids to fetch past `after` (a PendingItem.key), in spending order."""
        rows = self.db.execute(
            "SELECT article_id, sources, mode, priority, stale FROM ids "
            "WHERE state=? AND (priority, stale, article_id) > (?, ?, ?) "
            "ORDER BY priority, stale, article_id LIMIT ?",
            (ItemState.PENDING, *after, limit),
        ).fetchall()
        return [PendingItem(aid, sources, FetchMode(mode), priority, stale)
                for aid, sources, mode, priority, stale in rows]

    def retry_failed(self) -> int:
        """On resume, failed ids (and records kept without a part) get another chance, and
        deferred ones a new budget."""
        with transaction(self.db):
            self.db.execute("UPDATE ids SET state=? WHERE state=? AND article_id IN "
                            "(SELECT article_id FROM errors)", (ItemState.FAILED, ItemState.DONE))
            self.db.execute("DELETE FROM errors WHERE article_id IN "
                            "(SELECT article_id FROM ids WHERE state=?)", (ItemState.FAILED,))
            return self.db.execute("UPDATE ids SET state=? WHERE state IN (?, ?)",
                                   (ItemState.PENDING, ItemState.FAILED,
                                    ItemState.DEFERRED)).rowcount

    def unconfirm_gone(self) -> None:
        """No id was fetched, yet some answered 404: a wrong server or a broken proxy, not a
        repository emptied overnight. Those ids become failures to retry, never tombstones."""
        with transaction(self.db):
            self.db.execute(
                "UPDATE errors SET error=json_set(CAST(error AS TEXT), '$.reason', ?, "
                "'$.message', ?) WHERE article_id IN (SELECT article_id FROM ids WHERE state=?)",
                ("404-for-every-id", "every id of the run answered 404: not taken for a deletion",
                 ItemState.GONE))
            self.db.execute("UPDATE ids SET state=? WHERE state=?",
                            (ItemState.FAILED, ItemState.GONE))

    def defer_pending(self, catalog: Path) -> dict[str, int]:
        """The budget is spent: pending ids are deferred, and each known item not refreshed
        keeps its last totals and their fetched_at in the snapshot (never a 0 or a gap).
        Returns the deferred ids by mode."""
        with self._attached(catalog), transaction(self.db):
            self.db.execute("UPDATE ids SET state=? WHERE state=?",
                            (ItemState.DEFERRED, ItemState.PENDING))
            self.db.execute(
                "INSERT OR REPLACE INTO records(article_id, body, stats, fetched_at, published) "
                "SELECT i.article_id, ?, k.stats, k.stats_at, k.published FROM ids i "
                "JOIN cat.known k USING(article_id) WHERE i.state IN (?, ?) "
                "AND k.stats IS NOT NULL AND k.stats_at IS NOT NULL",
                (_EMPTY, ItemState.DEFERRED, ItemState.FAILED))
            return self._by_mode(ItemState.DEFERRED)

    def workload(self, catalog: Path) -> tuple[int, int, int, int]:
        """(records to fetch, stats-only refreshes to fetch, items the catalog knows, records
        the snapshot will hold): what a budget plans with."""
        with self._attached(catalog):
            return self.db.execute(
                "SELECT count(*) FILTER (WHERE state=?1 AND mode=?2), "
                "count(*) FILTER (WHERE state=?1 AND mode=?3), (SELECT count(*) FROM cat.known), "
                "count(*) FILTER (WHERE state<>?4 AND mode=?2) FROM ids",
                (ItemState.PENDING, FetchMode.FULL, FetchMode.STATS_ONLY, ItemState.GONE),
            ).fetchone()

    def _by_mode(self, state: ItemState) -> dict[str, int]:
        """Ids in `state` per fetch mode: {"full": n, "stats_only": n}, modes with none left out."""
        rows = self.db.execute("SELECT mode, count(*) FROM ids WHERE state=? GROUP BY mode",
                               (state,)).fetchall()
        return {FetchMode(mode).name.lower(): n for mode, n in rows}

    def refreshed(self) -> dict[str, int]:
        """Fetched tonight: records (with their stats), and stats-only refreshes."""
        done = self._by_mode(ItemState.DONE)
        return {"records": done.get("full", 0), "stats": done.get("stats_only", 0)}

    def oldest_stats(self) -> str | None:
        """The oldest fetched_at among the totals the snapshot holds."""
        return self.db.execute(
            "SELECT min(r.fetched_at) FROM records r JOIN ids i USING(article_id) "
            "WHERE r.stats IS NOT NULL AND i.state IN (?, ?, ?)", KEPT).fetchone()[0]

    async def store_from(self, results: Outcomes) -> None:
        """Store outcomes until None comes, each commit taking all that waits, so a kill loses
        only what is in flight. Keeps draining after a failure so no worker blocks."""
        failure: BaseException | None = None
        ended = False
        while not ended:
            batch = [await results.get()]
            while batch[-1] is not None and not results.empty():
                batch.append(results.get_nowait())
            ended = batch[-1] is None
            outcomes = [o for o in batch if o is not None]
            if outcomes and failure is None:
                try:
                    await self.call(self.store, outcomes)
                except Exception as exc:
                    failure = exc
            await results.stored(outcomes)
        if failure is not None:
            raise failure

    def store(self, outcomes: list[Outcome]) -> None:
        """A batch of outcomes in one transaction; a DONE record with an error keeps it."""
        done = [o for o in outcomes if o.state == ItemState.DONE]
        with transaction(self.db):
            for o in done:
                # a large body goes straight into a zeroblob (SQLite copies a bound value twice);
                # only a large one: Python 3.11 keeps every blob handle until the connection closes
                size, frame = _packed(o.body)
                large = frame.size > LARGE_BLOB
                self.db.execute(
                    "INSERT OR REPLACE INTO records(article_id, body, files, stats, fetched_at, "
                    "payloads, published, record_url, etag, last_modified) "
                    f"VALUES(?, {'zeroblob(?)' if large else '?'}, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        o.article_id,
                        len(size) + frame.size if large else size + frame,
                        pack(o.files) if o.files is not None else None,
                        orjson.dumps(o.stats) if o.stats is not None else None,
                        o.fetched_at,
                        pack(orjson.dumps(o.payloads)) if o.payloads else None,
                        o.published,
                        *(o.validators or (None, None, None)),
                    ))
                if large:
                    with self.db.blobopen("records", "body", o.article_id) as blob:
                        blob.write(size)
                        blob.write(frame)
            self.db.executemany("DELETE FROM errors WHERE article_id=?",
                                [(o.article_id,) for o in done if o.error is None])
            self.db.executemany("INSERT OR REPLACE INTO errors VALUES(?, ?)",
                                [(o.article_id, orjson.dumps(o.error or {})) for o in outcomes
                                 if o.state != ItemState.DONE or o.error is not None])
            self.db.executemany(  # a record that answered 304 becomes a stats-only refresh
                "UPDATE ids SET state=?, attempts=attempts+1, mode=coalesce(?, mode) "
                "WHERE article_id=?",
                [(int(o.state), FetchMode.STATS_ONLY if o.not_modified else None, o.article_id)
                 for o in outcomes])

    def update_catalog(self, catalog: Path, snapshot_id: str, full: bool) -> None:
        """After a publish: a full run replaces the known set, an incremental one adds what it
        fetched and drops what 404ed. A failed stats part keeps the last totals; deferred or
        failed records are queued for the next run, first."""
        with self._attached(catalog), transaction(self.db):
            if full:  # an item fetched only by id is not known: unlisted again, it is absent
                self.db.execute("DELETE FROM cat.known WHERE article_id NOT IN (SELECT "
                                "article_id FROM ids WHERE state<>? AND NOT sources & ?)",
                                (ItemState.GONE, UNLISTED))
                self.db.execute("DELETE FROM cat.queue")
            self.db.execute(
                "INSERT INTO cat.known(article_id, sources, published, last_snapshot, stats, "
                "stats_at, record_url, etag, last_modified) SELECT i.article_id, i.sources, "
                "r.published, ?, r.stats, CASE WHEN r.stats IS NULL THEN NULL ELSE "
                "r.fetched_at END, r.record_url, r.etag, r.last_modified FROM ids i "
                "JOIN records r USING(article_id) WHERE i.state=? AND i.mode=? "
                "AND NOT i.sources & ? ON CONFLICT(article_id) DO UPDATE SET "
                "sources=excluded.sources, "
                "published=excluded.published, last_snapshot=excluded.last_snapshot, "
                "record_url=excluded.record_url, etag=excluded.etag, "
                "last_modified=excluded.last_modified, "
                "stats=coalesce(excluded.stats, stats), "
                "stats_at=coalesce(excluded.stats_at, stats_at)",
                (snapshot_id, ItemState.DONE, FetchMode.FULL, UNLISTED),
            )
            self.db.execute(
                "UPDATE cat.known AS k SET stats=r.stats, stats_at=r.fetched_at FROM records r "
                "JOIN ids i USING(article_id) WHERE k.article_id=r.article_id AND i.state=? "
                "AND i.mode=? AND r.stats IS NOT NULL",
                (ItemState.DONE, FetchMode.STATS_ONLY))
            self.db.execute(  # any mode: a queued record that answered 304 is stats-only
                "DELETE FROM cat.queue WHERE article_id IN (SELECT article_id FROM ids "
                "WHERE state IN (?, ?))", (ItemState.DONE, ItemState.GONE))
            self.db.execute(
                "INSERT OR REPLACE INTO cat.queue(article_id, sources, reason) "
                "SELECT article_id, sources, CASE state WHEN ? THEN 'deferred' ELSE 'failed' "
                "END FROM ids WHERE mode=? AND state IN (?, ?)",
                (ItemState.DEFERRED, FetchMode.FULL, ItemState.DEFERRED, ItemState.FAILED))
            self.db.execute("DELETE FROM cat.known WHERE article_id IN "
                            "(SELECT article_id FROM ids WHERE state=?)", (ItemState.GONE,))

    @contextlib.contextmanager
    def _attached(self, catalog: Path) -> Iterator[None]:
        """The catalog attached to the journal's connection as `cat`, for SQL across both."""
        Catalog(catalog).close()  # make sure it exists with its schema
        self.db.execute("ATTACH DATABASE ? AS cat", (str(catalog),))
        try:
            yield
        finally:
            self.db.execute("DETACH DATABASE cat")

    def errors(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT error FROM errors ORDER BY article_id").fetchall()
        return [orjson.loads(e) for (e,) in rows]

    def failure_reasons(self) -> list[tuple[str, int, str | None]]:
        """(reason, ids, one message) of failed ids and records kept without a part, commonest
        first, gone ones left out."""
        return self.db.execute(
            "SELECT reason, count(*), min(message) FROM (SELECT coalesce(json_extract(CAST(error "
            "AS TEXT), '$.reason'), 'unknown') reason, json_extract(CAST(error AS TEXT), "
            "'$.message') message "
            "FROM errors JOIN ids USING(article_id) WHERE state != ?) GROUP BY reason "
            "ORDER BY count(*) DESC, reason", (ItemState.GONE,)).fetchall()

    def failure_summary(self) -> str:
        """The commonest reasons and an example: a refusal to publish has no errors.ndjson."""
        reasons = self.failure_reasons()[:3]
        if not reasons:
            return ""
        counted = ", ".join(f"{n:,} {reason}" for reason, n, _ in reasons)
        example = reasons[0][2]
        return f"failed: {counted}, such as {example}" if example else f"failed: {counted}"

    def add_source_records(self, idx: int, records: Iterable[tuple[str, int, Any]],
                           fetched_at: str) -> None:
        """(kind, key, JSON body) a source yields besides ids; re-listing replaces."""
        with transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO source_records VALUES(?, ?, ?, ?, ?)",
                                [(kind, key, idx, pack(orjson.dumps(body)), fetched_at)
                                 for kind, key, body in records])

    def source_records(self) -> Iterator[SourceRecord]:
        """Every source record in kind and key order (call on the journal thread)."""
        rows = self.db.execute("SELECT kind, key, body, fetched_at FROM source_records "
                               "ORDER BY kind, key").fetchall()
        for kind, key, body, fetched_at in rows:
            yield SourceRecord(kind, key, orjson.loads(unpack(body)), fetched_at)

