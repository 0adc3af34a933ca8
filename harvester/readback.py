"""A snapshot, or a warehouse's current rows, as DuckDB views named after the tables.

The report and the export query `articles`, `stats`, ..., `item_stats` wherever the rows live;
`prev_*` views hold the previous snapshot, and a warehouse adds `stats_history` and `changes`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import ConfigError, HarvesterError
from harvester.schema import SCHEMAS
from harvester.store import (
    PREFIX,
    is_remote,
    latest_snapshot,
    list_snapshots,
    read_manifest,
    table_files,
    why,
)
from harvester.warehouse import KEYS, OFFLINE, check_duckdb_file, read_parquet

WAREHOUSE = "warehouse:"


@dataclass
class Opened:
    """A DuckDB connection with the views, and what they were read from."""

    con: duckdb.DuckDBPyConnection
    label: str  # the harvest's name
    snapshot_id: str  # the snapshot (or, for a warehouse, the newest loaded one)
    previous_id: str | None  # the snapshot the `prev_*` views describe
    manifest: dict[str, Any] = field(default_factory=dict)
    history: bool = False  # `stats_history` exists (warehouse)
    source: str = ""

    def one(self, sql: str, *params: Any) -> Any:
        row = self.con.execute(sql, list(params)).fetchone()
        return None if row is None else row[0]

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, list(params)).fetchall()

    def close(self) -> None:
        self.con.close()


def open_target(target: str, snapshot: str | None = None) -> Opened:
    """`OUTPUT/NAME` (its LATEST snapshot, or `snapshot`), one `snapshot=` folder, or
    `warehouse:FILE`; a ConfigError naming the path when there is nothing to read."""
    if target.startswith(WAREHOUSE):
        if snapshot:
            raise ConfigError(f"{target}: --snapshot applies to a harvest folder, "
                              "a warehouse holds the current rows")
        return _open_warehouse(Path(target[len(WAREHOUSE):]))
    if is_remote(target):
        raise ConfigError(f"{target}: reports and exports read a local harvest folder "
                          "(load it into a warehouse, or copy it here, first)")
    path = Path(target)
    if path.is_file():
        raise ConfigError(f"{target}: is a file, not a harvest folder "
                          f"(a DuckDB warehouse reads as {WAREHOUSE}{target})")
    if not path.is_dir():
        raise ConfigError(f"{target}: no such harvest folder")
    if path.name.startswith(PREFIX):
        if snapshot:
            raise ConfigError(f"{target}: is one snapshot already; drop --snapshot")
        return _open_snapshot(path.parent, path)
    return _open_snapshot(path, _choose(path, snapshot))


def _choose(base: Path, snapshot: str | None) -> Path:
    try:
        snapshots = list_snapshots(base.parent, base.name)
        latest = latest_snapshot(base.parent, base.name)
    except HarvesterError as exc:
        raise ConfigError(str(exc)) from None
    if latest is None:
        raise ConfigError(f"{base}: no published snapshot here (a harvest folder holds "
                          "snapshot=<id>/ folders with a manifest.json)")
    if not snapshot:
        return latest
    wanted = base / (snapshot if snapshot.startswith(PREFIX) else PREFIX + snapshot)
    if wanted in snapshots:
        return wanted
    raise ConfigError(f"{base}: no published snapshot {wanted.name!r} "
                      f"(newest: {snapshots[-1].name})")


def _manifest(snap: Path) -> dict[str, Any]:
    try:
        return read_manifest(snap)
    except HarvesterError as exc:
        raise ConfigError(str(exc)) from None


def _views(con: duckdb.DuckDBPyConnection, snap: Path, manifest: dict[str, Any],
           prefix: str = "") -> None:
    files = manifest["files"]  # an object: store.parse_manifest checked it
    if not table_files(files, "articles"):
        raise ConfigError(f"{snap}: no articles table in Parquet (written without the parquet "
                          "format); reports and exports read the Parquet tables")
    for table, schema in SCHEMAS.items():
        parts = [_checked(snap, f, files[f]) for f in table_files(files, table)]
        if parts:
            con.execute(f'CREATE VIEW "{prefix}{table}" AS SELECT * FROM {read_parquet(parts)}')
        else:  # an older snapshot without the table: empty, with every column and its type
            # (a table, not a registered Arrow object: the export's CSV cursor sees tables)
            con.from_arrow(schema.empty_table()).create(prefix + table)
    _item_stats(con, prefix)


def _checked(snap: Path, name: str, entry: dict[str, Any]) -> Path:
    """A table file the manifest lists, as it lists it: there, same sha256, same rows (a
    missing or damaged part would make the figures wrong, not empty)."""
    path = snap / name
    try:
        with open(path, "rb") as f:  # a file object: Arrow takes 'nightly:2026/...' for a URI
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            rows = pq.read_metadata(f).num_rows
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing, though the manifest lists it") from None
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: cannot read it: {why(exc)}") from None
    if digest != entry["sha256"]:
        raise ConfigError(f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                          f"{entry['sha256'][:16]}...; the file changed after it was published")
    if rows != entry["rows"]:
        raise ConfigError(f"{path}: {rows:,} rows, the manifest says {entry['rows']:,}")
    return path


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config=OFFLINE)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _open_snapshot(base: Path, snap: Path) -> Opened:
    manifest = _manifest(snap)
    con = _connect()
    try:
        _views(con, snap, manifest)
        previous = None
        # changes compare whole repositories: an incremental snapshot holds the changed items
        # only, so it is never compared, nor compared with
        if manifest.get("kind") != "incremental":
            earlier = [s for s in list_snapshots(base.parent, base.name) if s.name < snap.name]
            for candidate in reversed(earlier):
                prev_manifest = _manifest(candidate)
                if prev_manifest.get("kind") != "incremental" and \
                        table_files(prev_manifest["files"], "articles"):
                    _views(con, candidate, prev_manifest, prefix="prev_")
                    previous = candidate.name[len(PREFIX):]
                    break
    except BaseException as exc:
        con.close()
        if isinstance(exc, duckdb.Error):
            raise ConfigError(f"{snap}: cannot read its tables: {why(exc)}") from None
        raise
    return Opened(con, label=str(manifest.get("name") or base.name),
                  snapshot_id=snap.name[len(PREFIX):], previous_id=previous,
                  manifest=manifest, source=str(snap))


def _open_warehouse(path: Path) -> Opened:
    if not path.is_file():
        raise ConfigError(f"{path}: no such warehouse file")
    try:
        check_duckdb_file(path)
    except HarvesterError as exc:
        raise ConfigError(str(exc)) from None
    con = _connect()
    try:
        con.execute(f"ATTACH '{str(path).replace(chr(39), chr(39) * 2)}' AS w (READ_ONLY)")
        have = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'w'").fetchall()}
        if not {"_meta", "loaded_snapshots"} <= have:
            raise ConfigError(f"{path}: not a harvester warehouse (no _meta and "
                              "loaded_snapshots tables)")
        for table, schema in SCHEMAS.items():
            if f"{table}_current" not in have:
                con.from_arrow(schema.empty_table()).create(table)
                continue
            cols = ", ".join(f'"{c}"' for c in schema.names)
            live = " WHERE NOT withdrawn" if KEYS[table] == ("article_id",) else ""
            con.execute(f'CREATE VIEW "{table}" AS SELECT {cols} FROM w."{table}_current"{live}')
        _item_stats(con)
        con.execute("CREATE VIEW stats_history AS SELECT * FROM w.stats_history")
        con.execute("CREATE VIEW changes AS SELECT * FROM w.changes")
        loaded = con.execute("SELECT snapshot_id, name FROM w.loaded_snapshots "
                             "ORDER BY snapshot_id DESC LIMIT 2").fetchall()
        if not loaded:
            raise ConfigError(f"{path}: the warehouse holds no snapshot yet "
                              "(run 'harvester load')")
    except BaseException as exc:
        con.close()
        if isinstance(exc, duckdb.Error):
            raise ConfigError(f"{path}: cannot read the warehouse: {why(exc)}") from None
        raise
    return Opened(con, label=loaded[0][1], snapshot_id=loaded[0][0],
                  previous_id=loaded[1][0] if len(loaded) > 1 else None,
                  history=True, source=str(path))


def one_scope(table: str) -> str:
    """SQL: the one scope to count, "public" when the table has it (an institution's totals
    would count the same events again)."""
    return (f"scope = (SELECT CASE WHEN bool_or(scope = 'public') THEN 'public' "
            f"ELSE min(scope) END FROM {table})")


def _item_stats(con: duckdb.DuckDBPyConnection, prefix: str = "") -> None:
    """`item_stats`: one row per article with its total views, downloads and shares."""
    totals = ", ".join(f"CAST(sum(total) FILTER (WHERE counter = '{c}') AS BIGINT) AS total_{c}"
                       for c in ("views", "downloads", "shares"))
    con.execute(f"CREATE VIEW {prefix}item_stats AS SELECT article_id, {totals} "
                f"FROM {prefix}stats WHERE {one_scope(prefix + 'stats')} GROUP BY article_id")
