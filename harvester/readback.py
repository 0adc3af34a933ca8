"""A published snapshot, or a warehouse file, opened as DuckDB views named after the tables.

The report and the export query `articles`, `authors`, ..., `stats` without knowing where the rows
live: a snapshot's Parquet part files, or a warehouse's `*_current` tables (withdrawn rows left
out), which also give `stats_history`. `prev_*` views hold the previous snapshot, when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from harvester.errors import ConfigError, HarvesterError
from harvester.schema import SCHEMAS
from harvester.store import PREFIX, is_remote, list_snapshots, read_manifest, table_files

WAREHOUSE = "warehouse:"
# The tables the previous snapshot is opened for: enough for the headline's changes.
_PREVIOUS = ("articles", "authors", "files", "stats")


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
        return _open_warehouse(path)
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
    except HarvesterError as exc:
        raise ConfigError(str(exc)) from None
    if not snapshots:
        raise ConfigError(f"{base}: no published snapshot here (a harvest folder holds "
                          "snapshot=<id>/ folders with a manifest.json)")
    if snapshot:
        wanted = snapshot if snapshot.startswith(PREFIX) else PREFIX + snapshot
        for s in snapshots:
            if s.name == wanted:
                return s
        raise ConfigError(f"{base}: no published snapshot {wanted!r} "
                          f"(newest: {snapshots[-1].name})")
    latest = base / "LATEST"
    try:
        pointed = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        pointed = ""
    named = [s for s in snapshots if s.name == pointed]
    return named[0] if named else snapshots[-1]


def _manifest(snap: Path) -> dict[str, Any]:
    try:
        return read_manifest(snap)
    except HarvesterError as exc:
        raise ConfigError(str(exc)) from None


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _views(con: duckdb.DuckDBPyConnection, snap: Path, manifest: dict[str, Any],
           prefix: str = "") -> None:
    files = manifest.get("files") or {}
    for table, schema in SCHEMAS.items():
        parts = [snap / f for f in table_files(files, table) if (snap / f).is_file()]
        name = prefix + table
        if parts:
            # no hive column: the snapshot=<id> folder would add a `snapshot` copy of snapshot_id
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM '
                        f'read_parquet({_sql_list(parts)}, hive_partitioning = false)')
        else:  # an older snapshot without the table: empty, with every column and its type
            _empty_view(con, name, schema)


def _empty_view(con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    """A view with every column and type and no row: a table, not a registered Arrow object,
    so that a cursor (the export's CSV thread) sees it too."""
    con.register("_empty_arrow", pa.Table.from_batches([], schema=schema))
    con.execute(f'CREATE TABLE "_{name}_empty" AS SELECT * FROM _empty_arrow')
    con.unregister("_empty_arrow")
    con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "_{name}_empty"')


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
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
                if prev_manifest.get("kind") != "incremental":
                    _views(con, candidate, prev_manifest, prefix="prev_")
                    previous = candidate.name[len(PREFIX):]
                    break
    except duckdb.Error as exc:
        con.close()
        raise ConfigError(f"{snap}: cannot read its tables: {_first_line(exc)}") from None
    return Opened(con, label=str(manifest.get("name") or base.name),
                  snapshot_id=snap.name[len(PREFIX):], previous_id=previous,
                  manifest=manifest, source=str(snap))


def _open_warehouse(path: Path) -> Opened:
    if not path.is_file():
        raise ConfigError(f"{path}: no such warehouse file")
    con = _connect()
    try:
        con.execute(f"ATTACH '{str(path).replace(chr(39), chr(39) * 2)}' AS w (READ_ONLY)")
        have = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'w'").fetchall()}
        if "loaded_snapshots" not in have:
            raise ConfigError(f"{path}: not a harvester warehouse (no loaded_snapshots table)")
        for table, schema in SCHEMAS.items():
            cols = ", ".join(f'"{c}"' for c in schema.names)
            if f"{table}_current" not in have:
                _empty_view(con, table, schema)
                continue
            live = " WHERE NOT withdrawn" if "article_id" in schema.names and table not in (
                "collection_articles", "project_articles") else ""
            con.execute(f'CREATE VIEW "{table}" AS SELECT {cols} FROM w."{table}_current"{live}')
        con.execute("CREATE VIEW stats_history AS SELECT * FROM w.stats_history")
        con.execute("CREATE VIEW changes AS SELECT * FROM w.changes")
        loaded = con.execute("SELECT snapshot_id, name FROM w.loaded_snapshots "
                             "ORDER BY snapshot_id DESC LIMIT 2").fetchall()
    except duckdb.Error as exc:
        con.close()
        raise ConfigError(f"{path}: cannot read the warehouse: {_first_line(exc)}") from None
    except ConfigError:
        con.close()
        raise
    if not loaded:
        con.close()
        raise ConfigError(f"{path}: the warehouse holds no snapshot yet (run 'harvester load')")
    return Opened(con, label=loaded[0][1], snapshot_id=loaded[0][0],
                  previous_id=loaded[1][0] if len(loaded) > 1 else None,
                  history=True, source=str(path))


def stats_wide(table: str = "stats") -> str:
    """SQL: one row per article with its views, downloads and shares, from one scope: "public"
    when the snapshot has it (an institution's totals would count the same events again)."""
    return f"""
        SELECT article_id,
               sum(total) FILTER (WHERE counter = 'views') AS views,
               sum(total) FILTER (WHERE counter = 'downloads') AS downloads,
               sum(total) FILTER (WHERE counter = 'shares') AS shares
        FROM {table}
        WHERE scope = (SELECT CASE WHEN bool_or(scope = 'public') THEN 'public'
                                   ELSE min(scope) END FROM {table})
        GROUP BY article_id"""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
