"""`harvester load`: published snapshots -> DuckDB `*_current`, `stats_history` and `changes`.

Column types come from schema.SCHEMAS (a newer schema version adds columns); docs/TABLES.md
documents every table. A snapshot loads in one transaction, once its files match the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from harvester.errors import ConfigError, LockedError, OutputError
from harvester.schema import ARTICLE_TABLES, SCHEMA_VERSION, SCHEMAS
from harvester.store import (
    ID_FORMAT,
    MANIFEST,
    PREFIX,
    Store,
    open_store,
    parse_manifest,
    table_files,
    why,
)

log = logging.getLogger("harvester")

WAREHOUSE_VERSION = 1  # layout of the tables below that are not `*_current`

# Collections and projects, and their member lists: (owner table, key).
_OWNED = {"collections": ("collections", "collection_id"),
          "collection_articles": ("collections", "collection_id"),
          "projects": ("projects", "project_id"),
          "project_articles": ("projects", "project_id")}
# Shaped from the full record itself: an article present in `articles` has its rows in these
# replaced even where it now has none. The other article tables (versions, stats, ...) come
# from requests of their own, so a snapshot replaces the articles it holds rows for.
FROM_RECORD = frozenset(ARTICLE_TABLES) - {"versions"}


def table_key(table: str) -> tuple[str, ...]:
    """The columns naming the entity whose rows a snapshot replaces in `<table>_current`."""
    names = SCHEMAS[table].names
    if table in _OWNED:
        return (_OWNED[table][1],)
    if "article_id" in names:
        return ("article_id",)
    if "item_id" in names:  # stats series of articles, groups, collections, ...
        return tuple(c for c in ("item", "item_id") if c in names)
    return ()  # no entity: the newest snapshot with rows replaces the table whole


KEYS: dict[str, tuple[str, ...]] = {t: table_key(t) for t in SCHEMAS}
CHANGES = ("added", "changed", "withdrawn", "tombstone")

# Tables with no Arrow counterpart, created once (WAREHOUSE_VERSION names their layout).
FIXED = {
    "loaded_snapshots": """
        snapshot_id VARCHAR NOT NULL, name VARCHAR NOT NULL, kind VARCHAR NOT NULL,
        status VARCHAR NOT NULL, schema_version INTEGER NOT NULL,
        manifest_sha256 VARCHAR NOT NULL, articles BIGINT NOT NULL, source VARCHAR NOT NULL,
        loaded_at TIMESTAMP WITH TIME ZONE NOT NULL""",
    "stats_history": """
        article_id BIGINT NOT NULL, counter VARCHAR NOT NULL, scope VARCHAR NOT NULL,
        snapshot_date DATE NOT NULL, snapshot_id VARCHAR NOT NULL, total BIGINT""",
    "changes": """
        snapshot_id VARCHAR NOT NULL, article_id BIGINT NOT NULL, change VARCHAR NOT NULL,
        previous_hash VARCHAR, content_hash VARCHAR""",
}
WITHDRAWN_COLUMNS = [("withdrawn", "BOOLEAN", False), ("withdrawn_at", "VARCHAR", True)]
# DuckDB fetches extensions it knows from the network on demand (sqlite_scanner for a SQLite
# file): every connection the harvester opens stays offline
OFFLINE: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False, "autoload_known_extensions": False}


@dataclass
class Loaded:
    snapshot_id: str
    kind: str
    status: str
    articles: int
    changes: dict[str, int]


@dataclass
class LoadReport:
    loaded: list[Loaded] = field(default_factory=list)
    already: int = 0  # complete snapshots loaded by an earlier run
    current: int = 0  # rows of articles_current
    withdrawn: int = 0  # of which marked withdrawn


def load(output: Path | str, name: str, duckdb_file: Path | str) -> LoadReport:
    """Load every complete snapshot of OUTPUT/NAME not loaded yet into the DuckDB file."""
    store = open_store(output)
    with Warehouse(duckdb_file) as wh:
        return wh.load_harvest(store, name)


def read_parquet(paths: list[Path]) -> str:
    """DuckDB's scan of a table's Parquet files (no hive column from the snapshot=<id> folder)."""
    quoted = ", ".join(f"'{_quote(p)}'" for p in paths)
    return f"read_parquet([{quoted}], hive_partitioning = false)"


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def check_duckdb_file(path: Path) -> None:
    """Refuse an existing file that is not a DuckDB database (one reads "DUCK" at byte 8)
    before DuckDB opens it as another format or says less clearly why it cannot."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"cannot read {path}: {why(e)}") from e
    if head[8:12] != b"DUCK":
        raise ConfigError(f"{path}: not a DuckDB file")


class Warehouse:
    """One DuckDB connection; tables created or migrated on open."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        check_duckdb_file(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(self.path), config=OFFLINE)
        except (duckdb.Error, OSError) as e:
            if isinstance(e, duckdb.IOException) and "lock" in str(e).lower():
                raise LockedError(f"{self.path}: another process is using this DuckDB file") from e
            raise OutputError(f"cannot open {self.path}: {why(e)}") from e
        try:
            self._migrate()
        except BaseException:
            self.con.close()
            raise

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def current_columns(self, table: str) -> list[tuple[str, str, bool]]:
        """(name, DuckDB type, nullable) of `<table>_current`, derived from the Arrow schema."""
        schema = SCHEMAS[table]
        rel = self.con.from_arrow(schema.empty_table())
        cols = [(n, str(t), schema.field(n).nullable)
                for n, t in zip(rel.columns, rel.types, strict=True)]
        return cols + WITHDRAWN_COLUMNS if KEYS[table] == ("article_id",) else cols

    def _migrate(self) -> None:
        con = self.con
        # a DuckDB file of other tables is someone else's database: never added to or altered
        tables = {t for (t,) in con.execute("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_catalog = current_database()").fetchall()}
        try:
            meta = dict(con.execute("SELECT key, value FROM _meta").fetchall()) \
                if "_meta" in tables else {}
        except duckdb.Error:
            meta = {}
        if tables - {"_meta"} and "warehouse_version" not in meta:
            raise ConfigError(f"{self.path}: a DuckDB file of other tables, not a harvester "
                              "warehouse (no _meta warehouse_version); load into a new file")
        con.execute("CREATE TABLE IF NOT EXISTS _meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        for key, ours in (("schema_version", SCHEMA_VERSION),
                          ("warehouse_version", WAREHOUSE_VERSION)):
            theirs = str(meta.get(key, 0))
            if not theirs.isdigit() or int(theirs) > ours:
                raise OutputError(f"{self.path}: written by a newer harvester ({key} "
                                  f"{theirs}, this one knows {ours}); upgrade the harvester")
        try:
            con.begin()
            for table, ddl in FIXED.items():
                con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ddl})")
            for table in SCHEMAS:
                self._create_or_migrate(f"{table}_current", self.current_columns(table))
            con.executemany("INSERT OR REPLACE INTO _meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)),
                ("warehouse_version", str(WAREHOUSE_VERSION)),
            ])
            con.commit()
        except duckdb.Error as e:
            con.rollback()
            raise OutputError(f"{self.path}: cannot create the tables: {why(e)}") from e

    def _create_or_migrate(self, table: str, cols: list[tuple[str, str, bool]]) -> None:
        have = dict(self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ?", [table]).fetchall())
        if not have:
            body = ", ".join(f'"{n}" {t}' + ("" if null else " NOT NULL") + _default(n)
                             for n, t, null in cols)
            self.con.execute(f'CREATE TABLE "{table}" ({body})')
            return
        for n, t, _ in cols:
            if n not in have:
                # A column a newer schema version added: rows loaded before it are null.
                self.con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{n}" {t}{_default(n)}')
            elif have[n] != t:
                raise OutputError(f"{self.path}: column {table}.{n} is {have[n]} here but {t} "
                                  f"in schema version {SCHEMA_VERSION}; load into a new file")

    def load_harvest(self, store: Store, name: str) -> LoadReport:
        """Load the complete snapshots of `name` not loaded yet, oldest first."""
        self._claim(name)
        done = dict(self.con.execute(
            "SELECT snapshot_id, manifest_sha256 FROM loaded_snapshots").fetchall())
        newest = max(done, default=None)
        report = LoadReport()
        for folder in store.snapshots(name):
            sid = folder[len(PREFIX):]
            if not _is_id(sid):  # not one the harvester wrote: never ordered among them
                log.warning("%s: not a snapshot id (YYYYMMDDTHHMMSSZ); skipped",
                            store.url(name, folder))
                continue
            raw = store.read_bytes(name, folder, MANIFEST)
            sha = hashlib.sha256(raw).hexdigest()
            if sid in done:
                if done[sid] != sha:
                    log.warning("%s changed since it was loaded (manifest sha256 differs); "
                                "a published snapshot should never change: not reloaded",
                                store.url(name, folder, MANIFEST))
                report.already += 1
                continue
            manifest = parse_manifest(raw, store.url(name, folder, MANIFEST))
            if newest is not None and sid < newest:
                raise OutputError(
                    f"{store.url(name, folder)} is older than snapshot {newest}, already loaded "
                    f"into {self.path}; load the harvest into a new file to include it")
            with tempfile.TemporaryDirectory(prefix="harvester-load-") as tmp:
                report.loaded.append(
                    self._load_snapshot(store, name, folder, manifest, sha, Path(tmp)))
            newest = sid
        report.current, report.withdrawn = self.con.execute(
            "SELECT count(*), count(*) FILTER (WHERE withdrawn) FROM articles_current"
        ).fetchone() or (0, 0)
        return report

    def _claim(self, name: str) -> None:
        # *_current tables key items by id alone: two harvests in one file would withdraw
        # each other's items.
        row = self.con.execute("SELECT value FROM _meta WHERE key = 'harvest'").fetchone()
        if row is None:
            self.con.execute("INSERT INTO _meta VALUES ('harvest', ?)", [name])
        elif row[0] != name:
            raise ConfigError(f"{self.path} holds harvest {row[0]!r}, and one DuckDB file "
                              f"holds one harvest (its *_current tables key items by id): "
                              f"load {name!r} into another file")

    def _load_snapshot(self, store: Store, name: str, folder: str, manifest: dict[str, Any],
                       sha: str, workdir: Path) -> Loaded:
        sid = folder[len(PREFIX):]
        where = store.url(name, folder)
        if manifest.get("snapshot_id") != sid:
            raise OutputError(f"{where}: the manifest names snapshot "
                              f"{manifest.get('snapshot_id')!r}; not loaded")
        version = manifest.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise OutputError(f"{where}: table schema version {version!r} is not one this "
                              f"harvester knows (<= {SCHEMA_VERSION}); upgrade the harvester")
        listed = manifest.get("files")
        if not isinstance(listed, dict) or not table_files(listed, "articles"):
            raise OutputError(f"{where}: no articles table in Parquet (written without the "
                              f"parquet format); the warehouse loads the Parquet tables")
        files, errors = self._fetch_verified(store, name, folder, listed, workdir)
        kind, status = str(manifest.get("kind", "unknown")), str(manifest.get("status", "unknown"))
        # Only a complete full harvest says "everything that exists": absence means withdrawn.
        full = kind == "full" and status == "complete"
        try:  # the UTC day a snapshot stands for: its id's date (the run's start)
            day = datetime.strptime(sid, ID_FORMAT).date()
        except ValueError:
            raise OutputError(f"{where}: cannot tell the snapshot's date from its id") from None
        con = self.con
        try:
            con.begin()
            self._apply(sid, files, errors, full, day, status == "complete")
            (articles,) = con.execute("SELECT count(*) FROM _present").fetchone() or (0,)
            con.execute("INSERT INTO loaded_snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                sid, name, kind, status, version, sha, articles, where, datetime.now(UTC)])
            counts = dict(con.execute(
                "SELECT change, count(*) FROM changes WHERE snapshot_id = ? GROUP BY change",
                [sid]).fetchall())
            con.commit()
        except BaseException as e:  # an interrupt (SIGINT/SIGTERM) among them
            # it may come just after the commit: the snapshot is loaded, nothing to undo
            with contextlib.suppress(duckdb.TransactionException):
                con.rollback()
            if isinstance(e, duckdb.Error):
                raise OutputError(f"{where}: cannot load into {self.path}: {why(e)}") from e
            raise
        loaded = Loaded(sid, kind, status, articles, {c: counts.get(c, 0) for c in CHANGES})
        log.info("loaded snapshot %s (%s, %s): %d articles; %s", sid, kind, status,
                 loaded.articles, ", ".join(f"{n} {c}" for c, n in loaded.changes.items()))
        return loaded

    def _replace(self, table: str, paths: list[Path], files: dict[str, list[Path]],
                 sid: str, complete: bool = True) -> None:
        """The snapshot's rows replace those of the entities it holds in `<table>_current`;
        a snapshot not complete (a member list may be truncated) only adds members."""
        key = KEYS[table]
        if not complete and table in ("collection_articles", "project_articles"):
            key = (*key, "article_id")  # its own rows replaced, no other member removed
        if table in FROM_RECORD:
            held = "SELECT article_id FROM _present"
        elif table in _OWNED and len(key) == 1:  # whole member lists: by their owner
            owner = files.get(_OWNED[table][0])
            if owner is None:
                return
            held = f"SELECT DISTINCT {key[0]} FROM {read_parquet(owner)}"
        elif key:
            held = f"SELECT DISTINCT {', '.join(key)} FROM {read_parquet(paths)}"
        else:
            held = f"SELECT 1 FROM {read_parquet(paths)} LIMIT 1"
        match = " AND ".join(f'c."{k}" = h."{k}"' for k in key) or "true"
        self.con.execute(f"DELETE FROM {table}_current c USING ({held}) h WHERE {match}")
        self.con.execute(f"INSERT INTO {table}_current BY NAME SELECT * FROM {read_parquet(paths)}")
        if key == ("article_id",):
            self.con.execute(f"UPDATE {table}_current SET withdrawn = true, withdrawn_at = ? "
                             "WHERE article_id IN (SELECT article_id FROM _gone)", [sid])

    def _fetch_verified(self, store: Store, name: str, folder: str, listed: dict[str, Any],
                        workdir: Path) -> tuple[dict[str, list[Path]], Path | None]:
        """Every table's Parquet files and errors.ndjson, fetched and checked against the
        manifest (a table an older schema version did not have is left out)."""

        def fetch(file: str) -> Path:
            entry = listed[file]
            path, digest = store.fetch(name, folder, file, workdir)
            want = entry.get("sha256") if isinstance(entry, dict) else None
            if digest != want:
                raise OutputError(f"{store.url(name, folder, file)}: sha256 {digest[:16]}... "
                                  f"does not match the manifest's "
                                  f"{str(want)[:16]}...; snapshot not loaded")
            return path

        tables = {t: [fetch(f) for f in parts] for t in SCHEMAS
                  if (parts := table_files(listed, t))}
        return tables, fetch("errors.ndjson") if "errors.ndjson" in listed else None

    def _apply(self, sid: str, files: dict[str, list[Path]], errors: Path | None,
               full: bool, day: date, complete: bool = True) -> None:
        """The snapshot's effect on every table; runs inside the caller's transaction."""
        con = self.con
        con.execute("CREATE OR REPLACE TEMP TABLE _present AS SELECT article_id, content_hash "
                    f"FROM {read_parquet(files['articles'])}")
        # Tombstones: the items errors.ndjson lists as "not-found" now answer 404.
        tomb = ("SELECT NULL::BIGINT AS id WHERE false" if errors is None else
                f"SELECT id FROM read_json('{_quote(errors)}', format = 'newline_delimited', "
                "columns = {id: 'BIGINT', reason: 'VARCHAR'}) WHERE reason = 'not-found'")
        # What changed, against the current rows before this snapshot is applied.
        con.execute("""
            INSERT INTO changes
            SELECT ?, n.article_id,
                   CASE WHEN c.article_id IS NULL OR c.withdrawn THEN 'added' ELSE 'changed' END,
                   c.content_hash, n.content_hash
            FROM _present n LEFT JOIN articles_current c USING (article_id)
            WHERE c.article_id IS NULL OR c.withdrawn OR c.content_hash <> n.content_hash
            ORDER BY n.article_id""", [sid])
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _gone AS
            SELECT c.article_id, c.content_hash,
                   CASE WHEN t.id IS NULL THEN 'withdrawn' ELSE 'tombstone' END AS change
            FROM articles_current c LEFT JOIN (SELECT DISTINCT id FROM ({tomb})) t
                 ON t.id = c.article_id
            WHERE NOT c.withdrawn
              AND NOT EXISTS (SELECT 1 FROM _present n WHERE n.article_id = c.article_id)
              AND (t.id IS NOT NULL OR ?)""", [full])
        con.execute("INSERT INTO changes SELECT ?, article_id, change, content_hash, NULL "
                    "FROM _gone ORDER BY article_id", [sid])
        for table in SCHEMAS:
            paths = files.get(table)
            if paths is not None:
                self._replace(table, paths, files, sid, complete)
        if "stats" not in files:
            return
        stats = read_parquet(files["stats"])
        # Two snapshots on one day: the later one's totals stand for that day.
        con.execute(f"""
            DELETE FROM stats_history h USING {stats} s
            WHERE h.snapshot_date = ? AND h.article_id = s.article_id
              AND h.counter = s.counter AND h.scope = s.scope""", [day])
        con.execute("INSERT INTO stats_history SELECT article_id, counter, scope, ?, ?, total "
                    f"FROM {stats} ORDER BY article_id, counter, scope", [day, sid])


def _is_id(sid: str) -> bool:
    try:
        return datetime.strptime(sid, ID_FORMAT).strftime(ID_FORMAT) == sid
    except ValueError:
        return False


def _default(column: str) -> str:
    return " DEFAULT false" if column == "withdrawn" else ""
