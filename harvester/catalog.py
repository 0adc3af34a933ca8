"""What a harvest keeps between runs (the catalog, SQLite) and the lock that allows one run."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from harvester.errors import HarvesterError, LockedError, OutputError
from harvester.store import MANIFEST, open_store, parse_manifest

# Bumped whenever a state file's tables change: another version is refused, never migrated.
STATE_VERSION = 3

_CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS known (
    article_id INTEGER PRIMARY KEY, sources INTEGER NOT NULL, published TEXT,
    last_snapshot TEXT NOT NULL, stats BLOB, stats_at TEXT, record_url TEXT, etag TEXT,
    last_modified TEXT);
CREATE TABLE IF NOT EXISTS queue (
    article_id INTEGER PRIMARY KEY, sources INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS marks (
    source TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, hwm TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    snapshot_id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    endpoint TEXT PRIMARY KEY, items INTEGER NOT NULL, learned_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bits (idx INTEGER PRIMARY KEY, source TEXT NOT NULL);
"""


def open_state(path: Path, schema: str, what: str, then: str) -> sqlite3.Connection:
    """An SQLite state file with `schema`, made if new; one that is damaged or of another
    STATE_VERSION is refused with one line that says how to go on."""
    db = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            db.executescript(f"BEGIN; {schema} PRAGMA user_version={STATE_VERSION}; COMMIT;")
        elif db.execute("PRAGMA user_version").fetchone()[0] != STATE_VERSION:
            raise sqlite3.DatabaseError("written by another version of the harvester")
        # the other state file (one copied over this one) has the version but not the tables
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if missing := sorted(set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema)) - tables):
            raise sqlite3.DatabaseError(f"not a {what}: no table {', '.join(missing)}")
        return db
    except (OSError, sqlite3.Error) as exc:
        if db is not None:
            db.close()
        hint = (f" (move {path.name}* aside and {then}; published snapshots are not affected)"
                if type(exc) is sqlite3.DatabaseError else "")
        raise OutputError(f"{path}: cannot open the {what}: {exc}{hint}") from None


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One explicit transaction (the connections run in autocommit mode otherwise)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite ends it by itself on some errors (SQLITE_FULL)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Catalog:
    """Known ids, high-water marks and past runs (OUTPUT/NAME/.state/catalog.sqlite): it
    survives every run, unlike the journal; opened briefly, never held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_state(path, _CATALOG_SCHEMA, "harvest catalog", "the next run is a full one")

    def close(self) -> None:
        self.db.close()

    def marks(self) -> dict[str, tuple[str, str]]:
        """source name -> (its parameters' fingerprint, high-water mark as UTC timestamp)."""
        rows = self.db.execute("SELECT source, fingerprint, hwm FROM marks").fetchall()
        return {name: (fp, hwm) for name, fp, hwm in rows}

    def last_run(self, kind: str | None = None) -> dict[str, str] | None:
        cursor = self.db.execute("SELECT * FROM runs WHERE ?1 IS NULL OR kind=?1 "
                                 "ORDER BY started_at DESC LIMIT 1", (kind,))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row, strict=True)) if row else None

    def add_run(self, snapshot_id: str, kind: str, status: str, started_at: str,
                finished_at: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs VALUES(?, ?, ?, ?, ?)",
                        (snapshot_id, kind, status, started_at, finished_at))

    def windows(self) -> dict[str, int]:
        """Page windows `harvester doctor` measured, per endpoint (partition.Limits keys)."""
        return dict(self.db.execute("SELECT endpoint, items FROM windows").fetchall())

    def set_windows(self, windows: dict[str, int], learned_at: str) -> None:
        with transaction(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO windows VALUES(?, ?, ?)",
                [(endpoint, items, learned_at) for endpoint, items in windows.items()])

    def known_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM known").fetchone()[0])

    def adopt_sources(self, identities: list[str]) -> None:
        """Known and queued ids keep their sources as bits by position in the config: when
        the sources change, the bits follow them, and a removed source's ids are forgotten."""
        before = dict(self.db.execute("SELECT idx, source FROM bits").fetchall())
        now = dict(enumerate(identities))
        if before == now:
            return
        position = {source: idx for idx, source in reversed(now.items())}  # the first wins
        moves = [(old, position[s]) for old, s in before.items() if s in position]
        bits = " | ".join(f"(CASE WHEN sources & {1 << old} THEN {1 << new} ELSE 0 END)"
                          for old, new in moves) or "0"
        with transaction(self.db):
            if before:  # else a catalog that never said: its bits are taken as they are
                for table in ("known", "queue"):
                    self.db.execute(f"UPDATE {table} SET sources = {bits}")
                    self.db.execute(f"DELETE FROM {table} WHERE sources = 0")
            self.db.execute("DELETE FROM bits")
            self.db.executemany("INSERT INTO bits VALUES(?, ?)", list(now.items()))

    def record_run(self, snapshot_id: str, kind: str, status: str, started_at: str,
                   finished_at: str, marks: dict[str, tuple[str, str]] | None) -> None:
        """A published run, and the high-water marks it earned (None: they stay)."""
        self.add_run(snapshot_id, kind, status, started_at, finished_at)
        if marks is not None:
            with transaction(self.db):
                self.db.executemany(
                    "INSERT OR REPLACE INTO marks VALUES(?, ?, ?)",
                    [(name, fp, hwm) for name, (fp, hwm) in marks.items()])


class Validators(NamedTuple):
    """What a record's 200 carried, to ask next time "changed since?" (NOTES §1); validators
    describe the representation at that URL only."""

    url: str
    etag: str | None
    last_modified: str | None


def read_validators(path: Path, aid: int) -> Validators | None:
    """The validators of a known item's record, or None: the record is then asked for
    unconditionally, which is always safe."""
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            row = db.execute("SELECT record_url, etag, last_modified FROM known "
                             "WHERE article_id=?", (aid,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    if not row or not row[0] or not (row[1] or row[2]):
        return None
    return Validators(*row)


def last_complete_full(root: Path | str, name: str) -> dict[str, Any] | None:
    """The manifest of the newest complete full snapshot: the publish guard's reference."""
    store = open_store(root)
    if not store.exists(name):
        return None
    for folder in reversed(store.snapshots(name)):
        where = store.url(name, folder, MANIFEST)
        try:
            manifest = parse_manifest(store.read_bytes(name, folder, MANIFEST), where)
        except (HarvesterError, OSError):
            continue  # unreadable: not a snapshot to compare with
        ids = manifest.get("ids")  # of another shape: not a snapshot to compare with either
        fetched = ids.get("fetched") if isinstance(ids, dict) else None
        if manifest.get("kind") == "full" and manifest.get("status") == "complete" and \
                type(fetched) is int and fetched >= 0 and \
                isinstance(manifest.get("config", {}), dict):
            return manifest
    return None


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """One run per harvest name: an flock the kernel releases when the process dies."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the run lock: {exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            raise LockedError(
                f"{path}: another run of this harvest is in progress (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # which releases the lock
