"""Journal rows -> a snapshot's rows: Arrow tables and NDJSON lines, a chunk at a time.

`render` is a pure function of a chunk of journal rows, called in the writing thread: the
snapshot is the same byte for byte however the journal was chunked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from harvester import served
from harvester.journal import unpack
from harvester.journalrows import JournalRow
from harvester.periods import parse_stamp
from harvester.records import (
    Columns,
    RowContext,
    article_columns,
    article_version_rows,
    breakdown_rows,
    columns,
    download_rows,
    stats_rows,
    timeline_rows,
    version_rows,
)
from harvester.schema import SCHEMAS
from harvester.sinks import NDJSON_OPTS, columns_to_table

log = logging.getLogger(__name__)

# A chunk ends at whichever comes first, so a few huge records do not multiply memory (a record
# past CHUNK_BYTES is rendered alone). Rows wait as columns, converted once CHUNK_ROWS wait.
CHUNK_RECORDS = 250
CHUNK_BYTES = 1 << 20
CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class RenderSpec:
    """What every chunk of one snapshot shares."""

    snapshot_id: str
    sources: tuple[str, ...]  # the configured sources' names, in config order
    scope: str  # the stats rows' scope: an institution, or "public"
    ndjson: bool
    parquet: bool


@dataclass
class Rendered:
    """One chunk, ready for SnapshotWriter.add_rendered."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    # NDJSON file name -> its lines, each without its newline (not joined: a line may be huge)
    lines: dict[str, list[bytes]] = field(default_factory=dict)
    articles: int = 0  # full records in the chunk (stats-only refreshes excluded)
    duplicate_keys: int = 0  # records whose served JSON gives a key twice
    left_out: list[dict[str, Any]] = field(default_factory=list)  # errors.ndjson lines


def render(spec: RenderSpec, chunk: list[JournalRow]) -> Rendered:
    """Rows of every table and the NDJSON lines for a chunk of journal rows, in id order."""
    rows: dict[str, Columns] = {}
    converted: dict[str, list[pa.Table]] = {}
    out = Rendered(lines={"articles.ndjson": [], "stats.ndjson": []} if spec.ndjson else {})
    for row in chunk:
        provenance = tuple(s for i, s in enumerate(spec.sources) if row.sources & (1 << i))
        ctx = RowContext(spec.snapshot_id, parse_stamp(row.fetched_at), provenance)
        record = served.parse(row.body) if row.body else None  # None: a stats-only refresh
        try:  # a journal kept by an older release, whose checks were looser, may hold bad rows
            shaped = _record_columns(record, row.files, ctx) if record is not None else {}
            extra = (payload_rows(orjson.loads(unpack(row.payloads)), ctx)
                     if row.payloads is not None else {})
        except ValueError as exc:
            log.warning("article %d left out of the snapshot: %s", row.article_id, exc)
            out.left_out.append({"id": row.article_id, "reason": "bad-record",
                                 "message": f"left out of the snapshot: {exc}"})
            continue
        for table, cols in shaped.items():
            _gather(rows, table, cols)
        if record is not None:
            if spec.ndjson:  # the record as served (its own, possibly capped, file list)
                out.lines["articles.ndjson"].append(record.text)
            out.duplicate_keys += bool(record.duplicate_keys)
            out.articles += 1
            del record, shaped  # the rows hold what the tables need
        if row.stats is not None:
            totals = stats_rows(row.article_id, orjson.loads(row.stats), ctx, scope=spec.scope)
            _gather(rows, "stats", columns("stats", totals))
            if spec.ndjson:
                out.lines["stats.ndjson"] += (orjson.dumps(r, option=NDJSON_OPTS) for r in totals)
        for table, table_rows in extra.items():
            _gather(rows, table, columns(table, table_rows))
        if sum(len(cols["snapshot_id"]) for cols in rows.values()) >= CHUNK_ROWS:
            _convert(rows, converted, spec.parquet)
    _convert(rows, converted, spec.parquet)
    out.tables = {t: pa.concat_tables(pieces) for t, pieces in converted.items()}
    return out


def _gather(rows: dict[str, Columns], table: str, cols: Columns) -> None:
    """Append a piece's columns to its table's waiting columns."""
    waiting = rows.setdefault(table, {name: [] for name in SCHEMAS[table].names})
    for name, values in cols.items():
        waiting[name] += values


def _convert(rows: dict[str, Columns], into: dict[str, list[pa.Table]], parquet: bool) -> None:
    """Move the waiting columns into Arrow pieces (dropped when no Parquet is written); their
    snapshot_id is spec's by construction, so not checked."""
    for table, cols in rows.items():
        if parquet and cols["snapshot_id"]:
            into.setdefault(table, []).append(columns_to_table(table, cols))
    rows.clear()


def _record_columns(record: served.Served, files_z: bytes | None,
                    ctx: RowContext) -> dict[str, Columns]:
    """One record's table columns, with the complete file list when its own was capped."""
    if files_z is None:  # `raw` is the text as served
        return article_columns(record.record, ctx, text=record.text, canonical=record.canonical)
    complete = {**record.record, "files": orjson.loads(unpack(files_z))}
    return article_columns(complete, ctx, canonical=record.canonical)


def series_rows(payload: dict[str, Any], ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """`stats_timeline` or `stats_breakdown` rows of one series payload (see StatsFetcher)."""
    if payload["kind"] == "breakdown":
        return {"stats_breakdown": breakdown_rows(payload, ctx)}
    return {"stats_timeline": timeline_rows(payload, ctx)}


def payload_rows(payloads: dict[str, Any], ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """Table rows of the optional per-item payloads kept in Outcome.payloads."""
    aid = int(payloads["article_id"])
    rows: dict[str, list[dict[str, Any]]] = {}
    for key in ("timeline", "breakdown"):
        if key in payloads:
            rows.update(series_rows(payloads[key], ctx))
    if "versions" in payloads:
        rows["versions"] = version_rows(aid, payloads["versions"]["list"], ctx)
        rows["article_versions"] = article_version_rows(payloads["versions"]["records"], ctx)
    if "downloads" in payloads:
        rows["downloads"] = download_rows(aid, payloads["downloads"], ctx)
    return rows
