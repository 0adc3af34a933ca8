"""Writing one snapshot: NDJSON and Parquet files in local staging, the manifest, a publish.

A run killed at any point leaves only OUTPUT/NAME/.staging/<id>/ behind. Format is kept apart
from the destination (store.py, local or s3:// alike).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import shutil
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harvester.config import FORMATS
from harvester.errors import OutputError
from harvester.records import Columns, columns
from harvester.schema import NO_STATISTICS, SCHEMA_VERSION, SCHEMAS
from harvester.store import (
    BUFFER,
    MANIFEST,
    PREFIX,
    SAFE_NAME,
    STAGING,
    Store,
    fail,
    list_files,
    table_files,
    table_part,
    why,
    write_atomic,
)
from harvester.urls import redact, sanitize_url

ERROR_KEYS = ("id", "source", "url", "status", "reason", "message", "attempts", "at")
NDJSON_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_OWN_METHOD = {"articles": "add_article", "stats": "add_stats"}

# Small pieces waiting for their row group are copied into one once this many wait, so many
# small buffers do not pin memory while the group fills.
PENDING_PIECES = 8
PENDING_COPY = 4 << 20  # bytes
GROUP_BYTES = 16 << 20  # rows this large make a row group of their own, however few
FILE_ROW_GROUPS = 20  # row groups in one part file of a table (TABLE/part-NNNNN.parquet)


def _mkdir(path: Path, *, parents: bool = False) -> None:
    """A new directory; with `parents`, those above it too, and it may be there already."""
    try:
        path.mkdir(parents=parents, exist_ok=parents)
    except OSError as e:
        raise fail("create directory", path, e) from e


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "xb", buffering=BUFFER)
    except OSError as e:
        raise fail("create", path, e) from e


def _local(path: Path) -> dict[str, Any]:
    """Arrow's arguments for a local file: it reads a relative 'nightly:2026/...' or 's3:/x'
    as a URI, so the path is made absolute and the filesystem given."""
    return {"where": str(path.absolute()), "filesystem": pafs.LocalFileSystem()}


def _describe(path: Path) -> dict[str, Any]:
    """rows, sha256 and bytes of one finished file; fsynced on the way."""
    digest, size, lines = hashlib.sha256(), 0, 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(BUFFER):
                digest.update(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
            os.fsync(f.fileno())
        rows = pq.read_metadata(**_local(path)).num_rows if path.suffix == ".parquet" else lines
    except OSError as e:
        raise fail("read back", path, e) from e
    return {"rows": rows, "sha256": digest.hexdigest(), "bytes": size}


def _known(tables: Iterable[str]) -> None:
    if unknown := set(tables) - set(SCHEMAS):
        raise ValueError(f"unknown tables {sorted(unknown)}; valid: {sorted(SCHEMAS)}")


def _lock(path: Path) -> int:
    """Hold an exclusive lock on `path` (released by close, or by the process dying)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise fail("create", path, e) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise OutputError(f"cannot write {path.with_suffix('')}: another writer is using it") from e
    return fd


class SnapshotWriter:
    """open -> add_* -> publish, or abort (also on leaving a `with` block unpublished). Memory
    is bounded by a row group; work in progress is in a local `staging_dir` (ROOT/NAME/.staging
    by default, published by a rename; an s3:// root uploads it)."""

    def __init__(
        self,
        root: Path | str,
        name: str,
        *,
        snapshot_id: str | None = None,
        formats: Collection[str] = FORMATS,
        row_group_size: int = 2_500,
        narrow_row_group_size: int = 25_000,
        file_row_groups: int = FILE_ROW_GROUPS,
        staging_dir: Path | str | None = None,
    ) -> None:
        if not name or not SAFE_NAME.match(name):
            raise ValueError(f"harvest name must be a plain directory name, got {name!r}")
        if snapshot_id is not None and not SAFE_NAME.match(snapshot_id):
            raise ValueError(f"snapshot_id must be a plain directory name, got {snapshot_id!r}")
        if not formats or not set(formats) <= set(FORMATS):
            raise ValueError(f"formats must be a non-empty subset of {sorted(FORMATS)}")
        for what, size in (("row_group_size", row_group_size),
                           ("narrow_row_group_size", narrow_row_group_size),
                           ("file_row_groups", file_row_groups)):
            if size < 1:
                raise ValueError(f"{what} must be at least 1, got {size}")
        self.store = Store(root)
        if self.store.remote and staging_dir is None:
            raise ValueError(f"an s3:// output needs a local staging_dir, got none for {root}")
        self.name = name
        staging_root = Path(staging_dir) if staging_dir is not None else \
            Path(root) / name / STAGING
        self.snapshot_id = snapshot_id or self.store.new_snapshot_id(name)
        self.formats = frozenset(formats)
        # a row group's footer entry stays in memory until its file closes: few, large groups
        self.row_group_rows = {t: row_group_size if "raw" in schema.names
                               else narrow_row_group_size for t, schema in SCHEMAS.items()}
        # a table is a folder of part files: closing one frees its footers
        self.file_row_groups = file_row_groups
        self._part: dict[str, int] = {}  # table -> number of its part file being written
        self._part_groups: dict[str, int] = {}  # table -> row groups in that part so far
        self.staging = staging_root / self.snapshot_id
        self.folder = f"{PREFIX}{self.snapshot_id}"
        url = self.store.url(name, self.folder)  # where it is published
        self.path: Path | str = url if self.store.remote else Path(url)
        self._state = "new"
        self._lock_path = staging_root / f"{self.snapshot_id}.lock"
        self._lock: int | None = None  # held from open() to publish/abort
        self._lines: dict[str, IO[bytes]] = {}
        self._parquet: dict[str, pq.ParquetWriter] = {}
        self._rows: dict[str, list[dict[str, Any]]] = {t: [] for t in SCHEMAS}  # to convert
        # converted rows not yet in a row group, in order (after those in _rows' past)
        self._pending: dict[str, list[pa.Table]] = {t: [] for t in SCHEMAS}

    def is_published(self) -> bool:
        return self.store.published(self.name, self.folder)

    def open(self) -> SnapshotWriter:
        if self._state != "new":
            raise RuntimeError(f"snapshot writer is {self._state}, cannot open it again")
        if self.is_published():
            raise OutputError(f"cannot write snapshot {self.path}: it already exists")
        _mkdir(self.staging.parent, parents=True)
        self._lock = _lock(self._lock_path)
        try:
            # Nobody else holds the lock, so a staging dir with this id is what a killed run
            # left (a resumed run keeps its snapshot id): start it afresh.
            shutil.rmtree(self.staging, ignore_errors=True)
            _mkdir(self.staging)
            self._state = "open"
            names = ["errors.ndjson"]  # the error log is kept whatever the data formats
            if "ndjson" in self.formats:
                names[:0] = ["articles.ndjson", "stats.ndjson"]
            for n in names:
                self._lines[n] = _open(self.staging / n)
            if "parquet" in self.formats:
                for table in SCHEMAS:  # every table has a first part, rows or not
                    _mkdir(self.staging / table)
                    self._open_part(table, 0)
        except BaseException:
            self.abort()
            raise
        return self

    def __enter__(self) -> SnapshotWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        if self._state != "published":
            self.abort()

    def publish(self, manifest: Mapping[str, Any]) -> Path | str:
        """Finish every file, write manifest.json (the caller's, with `files`, `snapshot_id`
        and `schema_version`) last, publish; returns `self.path` (a directory or s3:// URL)."""
        self._require_open()
        self._state = "publishing"
        self._close_writers()
        files = {name: _describe(path) for name, path in list_files(self.staging).items()}
        tables = {t: {"rows": sum(files[f]["rows"] for f in parts), "files": parts}
                  for t in SCHEMAS if (parts := table_files(files, t))}
        doc = {**manifest, "snapshot_id": self.snapshot_id, "schema_version": SCHEMA_VERSION,
               "tables": tables, "files": files}
        opts = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | NDJSON_OPTS
        write_atomic(self.staging / MANIFEST, orjson.dumps(doc, option=opts, default=str) + b"\n")
        self.store.publish(self.staging, self.name, self.snapshot_id)
        if self.store.remote:
            shutil.rmtree(self.staging, ignore_errors=True)  # uploaded: the local copy is done
        self._state = "published"
        self._release()
        return self.path

    def abort(self) -> None:
        """Close everything and remove the staging directory; never publishes. Idempotent."""
        if self._state in ("published", "aborted"):
            return
        self._state = "aborted"
        # The files are being thrown away: a close that fails changes nothing.
        for f in [*self._lines.values(), *self._parquet.values()]:
            with contextlib.suppress(OSError):
                f.close()
        self._lines.clear()
        self._parquet.clear()
        self._rows = {t: [] for t in SCHEMAS}
        self._pending = {t: [] for t in SCHEMAS}
        if self._lock is not None:  # never remove a staging dir another writer holds
            shutil.rmtree(self.staging, ignore_errors=True)
            self._release()

    def add_article(self, record: Mapping[str, Any], rows: Mapping[str, list[dict]]) -> None:
        """One full record: a line in articles.ndjson (exactly as given) and its table rows."""
        self._require_open()
        _known(rows)
        self._write("articles.ndjson", orjson.dumps(record) + b"\n")
        for table, table_rows in rows.items():
            self._add(table, table_rows)

    def add_stats(self, rows: Iterable[dict[str, Any]]) -> None:
        """`stats` rows (from records.stats_rows): stats.ndjson lines and the stats table."""
        self._require_open()
        rows = list(rows)
        for row in rows:
            self._write("stats.ndjson", orjson.dumps(row, option=NDJSON_OPTS) + b"\n")
        self._add("stats", rows)

    def add_rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Rows of a table fed outside add_article/add_stats: collections, projects, versions..."""
        self._require_open()
        _known([table])
        if table in _OWN_METHOD:
            raise ValueError(f"rows of {table!r} are added with {_OWN_METHOD[table]}()")
        self._add(table, list(rows))

    def add_rendered(self, chunk: Any) -> None:
        """A render.Rendered chunk (NDJSON lines without newlines, Arrow tables of exactly
        SCHEMAS' schemas), after what came before."""
        self._require_open()
        for name, lines in chunk.lines.items():
            for line in lines:
                self._write(name, line)
                self._write(name, b"\n")
        _known(chunk.tables)
        for table, arrow in chunk.tables.items():
            if table in self._parquet and arrow.num_rows:
                self._convert(table)  # rows added one by one before it come first
                self._append(table, arrow)

    def add_error(self, error: Mapping[str, Any]) -> None:
        """One errors.ndjson line: id, source, url, status, reason, message, attempts, at."""
        self._require_open()
        line = {k: error.get(k) for k in ERROR_KEYS}
        if isinstance(line["url"], str):
            line["url"] = sanitize_url(line["url"])
        if isinstance(line["message"], str):
            line["message"] = redact(line["message"])
        if line["at"] is None:
            line["at"] = datetime.now(UTC)
        self._write("errors.ndjson", orjson.dumps(line, option=NDJSON_OPTS, default=str) + b"\n")

    def _release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock_path.unlink(missing_ok=True)
                os.close(self._lock)
            self._lock = None

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"snapshot writer is {self._state}, not open")

    def _write(self, name: str, data: bytes) -> None:
        """Bytes of whole lines into an NDJSON file (if that format was asked for)."""
        f = self._lines.get(name)
        if f is not None:
            try:
                f.write(data)
            except OSError as e:
                self._state = "failed"  # the snapshot is incomplete: only abort() is left
                raise fail("write", self.staging / name, e) from e

    def _add(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Row dicts wait in bulk: converting each record's few rows alone is slow."""
        if table in self._parquet:
            self._rows[table].extend(rows)
            if len(self._rows[table]) >= self.row_group_rows[table]:
                self._convert(table)

    def _convert(self, table: str) -> None:
        rows, self._rows[table] = self._rows[table], []
        if rows:
            try:
                self._append(table, rows_to_table(table, rows, self.snapshot_id))
            except ValueError:
                self._state = "failed"
                raise

    def _append(self, table: str, arrow: pa.Table) -> None:
        """Queue converted rows; write every full row group."""
        pending = self._pending[table]
        if len(pending) >= PENDING_PIECES and sum(t.nbytes for t in pending) <= PENDING_COPY:
            pending[:] = [pa.concat_tables(pending).combine_chunks()]  # one piece
        pending.append(arrow)
        queued = sum(t.num_rows for t in pending)
        full = queued - queued % self.row_group_rows[table]
        if not full and sum(t.nbytes for t in pending) >= GROUP_BYTES:
            full = queued  # 2,500 records of 10 MB would be 25 GB held for one row group
        if full:
            combined = pa.concat_tables(pending)
            rest = combined.slice(full)
            self._pending[table] = [rest] if rest.num_rows else []
            self._write_groups(table, combined.slice(0, full))

    def _part_path(self, table: str) -> Path:
        return self.staging / table_part(table, self._part[table])

    def _open_part(self, table: str, number: int) -> None:
        self._part[table], self._part_groups[table] = number, 0
        path = self._part_path(table)
        schema = SCHEMAS[table]
        try:
            self._parquet[table] = pq.ParquetWriter(
                **_local(path), schema=schema, compression="zstd",
                # min/max of long text prunes nothing and doubles every row group's footer
                # entry (held in memory until the file closes)
                write_statistics=[n for n in schema.names if n not in NO_STATISTICS])
        except OSError as e:
            raise fail("create", path, e) from e

    def _write_groups(self, table: str, arrow: pa.Table) -> None:
        """Row groups of `arrow` into `table`'s part files, the next part begun (and the full
        one closed) every `file_row_groups` row groups."""
        group = self.row_group_rows[table]
        done = 0
        while done < arrow.num_rows:
            if self._part_groups[table] == self.file_row_groups:
                self._close_part(table)
                self._open_part(table, self._part[table] + 1)
            room = (self.file_row_groups - self._part_groups[table]) * group
            piece = arrow.slice(done, room)
            try:
                self._parquet[table].write_table(piece, row_group_size=group)
            except OSError as e:
                self._state = "failed"
                raise fail("write", self._part_path(table), e) from e
            self._part_groups[table] += -(-piece.num_rows // group)
            done += piece.num_rows

    def _close_part(self, table: str) -> None:
        try:
            self._parquet[table].close()
        except OSError as e:
            raise fail("write", self._part_path(table), e) from e

    def _close_writers(self) -> None:
        for name, f in list(self._lines.items()):
            try:
                f.close()
            except OSError as e:
                raise fail("write", self.staging / name, e) from e
        self._lines.clear()
        for table in self._parquet:
            self._convert(table)
            if pending := self._pending[table]:
                self._write_groups(table, pa.concat_tables(pending))
            self._close_part(table)
        self._parquet.clear()


def rows_to_table(table: str, rows: list[dict[str, Any]],
                  snapshot_id: str | None = None) -> pa.Table:
    """Row dicts -> an Arrow table, as columns_to_table."""
    return columns_to_table(table, columns(table, rows), snapshot_id)


def columns_to_table(table: str, cols: Columns, snapshot_id: str | None = None) -> pa.Table:
    """Columns -> an Arrow table with `table`'s schema, checked: every value fits its column,
    no nulls in required columns, and (if given) every row of `snapshot_id`. ValueError names
    what is wrong."""
    schema = SCHEMAS[table]
    try:
        if "raw" in cols:
            cols = {**cols, "raw": _text_array(cols["raw"])}
        arrow = pa.Table.from_pydict(cols, schema=schema)
    except (pa.ArrowException, TypeError, ValueError, ArithmeticError) as e:
        raise ValueError(f"rows for table {table!r} do not fit its schema: {why(e)}") from e
    # The conversion does not enforce nullability; Parquet's REQUIRED columns must not see nulls.
    for i, field in enumerate(schema):
        if not field.nullable and arrow.column(i).null_count:
            raise ValueError(f"rows for table {table!r} have nulls in column {field.name!r}")
    if snapshot_id is not None and arrow.num_rows and not pc.all(
            pc.equal(arrow.column("snapshot_id"), snapshot_id)).as_py():
        raise ValueError(f"rows for table {table!r} belong to another snapshot than "
                         f"{snapshot_id!r} (build RowContext from writer.snapshot_id)")
    return arrow


def _text_array(texts: list[bytes]) -> pa.Array:
    """UTF-8 JSON texts as a string array over their bytes, not a copy of them: a record near
    http.max_body is not held twice."""
    offsets = pa.array(itertools.accumulate(map(len, texts), initial=0), pa.int32())
    data = texts[0] if len(texts) == 1 else b"".join(texts)
    array = pa.Array.from_buffers(pa.string(), len(texts), [None, offsets.buffers()[1],
                                                           pa.py_buffer(data)])
    array.validate(full=True)
    return array


def clean_staging(staging: Path) -> list[Path]:
    """Remove what killed runs left in a staging directory, but never a snapshot whose writer
    is alive (it holds the lock); returns what was removed."""
    if not staging.is_dir():
        return []
    removed: list[Path] = []
    for work in sorted(p for p in staging.iterdir() if p.suffix != ".lock"):
        lock = work.with_name(work.name + ".lock")
        try:
            fd = _lock(lock)
        except OutputError:
            continue  # another writer is using it
        try:
            if work.is_dir():
                shutil.rmtree(work, ignore_errors=True)
            else:
                work.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            removed += [work, lock]
        finally:
            os.close(fd)
    return removed
