"""The snapshot directory: NDJSON + Parquet writers, manifest, atomic publish, LATEST.

    OUTPUT/NAME/.staging/<id>/        everything is written here first
    OUTPUT/NAME/snapshot=<id>/        the staging dir renamed, once manifest.json is in it
    OUTPUT/NAME/LATEST                "snapshot=<id>", replaced atomically after the rename

A run killed at any point leaves only its staging directory behind: a `snapshot=` directory
always holds its manifest. Format (NDJSON lines, Parquet row groups) is kept apart from the
destination: the few filesystem operations live in small `_fs_*` functions below.

OUTPUT may also be `s3://bucket/prefix` (`S3Store`, pyarrow's S3 filesystem). Staging then stays
on local disk (`staging_dir`), and publishing uploads the data files, then manifest.json, then
LATEST: an interrupted upload leaves a `snapshot=<id>/` prefix without a manifest, which every
reader here ignores. `open_store` gives readers one interface over both destinations.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import os
import re
import shutil
import sys
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harvester.errors import OutputError
from harvester.records import NO_STATISTICS, SCHEMA_VERSION, SCHEMAS

FORMATS = frozenset({"ndjson", "parquet"})
ERROR_KEYS = ("id", "source", "url", "status", "reason", "message", "attempts", "at")
ID_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST = "manifest.json"
LATEST = "LATEST"
STAGING = ".staging"
PREFIX = "snapshot="
S3_SCHEME = "s3://"

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NDJSON_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_BUFFER = 1 << 20
_OWN_METHOD = {"articles": "add_article", "stats": "add_stats"}
_ROW_TYPES = {table: pa.struct(list(schema)) for table, schema in SCHEMAS.items()}


# Rows waiting for their row group are copied into one piece once this many are queued. Each
# rendered chunk's table is dozens of small buffers (unpickled from a render worker, or
# converted here), and a table with a few rows a record waits hundreds of chunks for 25,000
# rows: those buffers, kept while everything around them was freed, pinned the C heap's pages
# and the peak crept up with the records written. One million records written again: a
# peak of 229-240 MB instead of 252-271, and the write no slower (fewer pieces to encode).
PENDING_PIECES = 8
PENDING_COPY = 4 << 20  # bytes: the articles table's pieces are big and wait a dozen chunks

# Row groups in one part file of a table (TABLE/part-NNNNN.parquet): 50,000 records of the
# articles table, 500,000 rows of the narrow ones. Parquet holds every row group's footer
# entry, about 900 bytes a column, in memory until its file closes: one file a table grew by
# 12 MB a million records and pinned the C heap around it (a million records written again:
# the peak's level crept ~20 MB where parts of 10 row groups kept it flat).
FILE_ROW_GROUPS = 20
_PART = re.compile(r"^part-(\d{5,})\.parquet$")


def table_part(table: str, number: int) -> str:
    """A part file's name in a snapshot: `articles/part-00000.parquet`."""
    return f"{table}/part-{number:05d}.parquet"


def table_files(files: Collection[str], table: str) -> list[str]:
    """A table's Parquet files among a snapshot's file names (its manifest's `files`), in
    order: its part files, or `TABLE.parquet` in snapshots before schema version 2."""
    if f"{table}.parquet" in files:
        return [f"{table}.parquet"]
    prefix = f"{table}/"
    parts = {int(m.group(1)): f for f in files
             if f.startswith(prefix) and (m := _PART.match(f[len(prefix):]))}
    return [parts[n] for n in sorted(parts)]


MMAP_THRESHOLD = 128 * 1024  # glibc's own default, kept fixed (see tune_allocators)
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def tune_allocators() -> str:
    """Allocators for writing snapshots in bounded memory; returns Arrow's pool's name.

    Writing a snapshot allocates and frees buffers of a few MB (Arrow row groups, rendered
    chunks) again and again on several threads, and the process's peak RSS crept up with the
    number of records written (benchmarks' memory section). Two causes, two settings:
    - Arrow allocates from the C library's malloc ("system"), not from an allocator of its own:
      pyarrow's default, mimalloc, kept freed pages, and jemalloc held 50-60 MB more than Arrow
      had in use and crept up over a long write (writing one million-record journal: a peak of
      203-211 MB with the system pool in four runs, 224-284 MB with jemalloc in seven; the price
      is about 15% more CPU for a write that size, in page faults). An
      ARROW_DEFAULT_MEMORY_POOL the user set wins.
    - glibc raises its mmap threshold to the size of the largest block freed (up to 32 MB), so
      after the first chunk every buffer came from the heap and fragmented it; a fixed
      threshold keeps big buffers in mappings of their own, returned whole when freed. A
      MALLOC_MMAP_THRESHOLD_ the user set wins; other C libraries are left alone."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())
    libc = _glibc()
    if libc is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return pa.default_memory_pool().backend_name


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (mallopt and malloc_trim), else None."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim); elsewhere a no-op.

    Parquet metadata, SQLite pages and Python's larger objects come from glibc, whose arenas
    (one per writing thread) keep what is freed between the chunks of a long write: over a
    million records about 25 MB more resident memory than the heap held."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _why(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _fail(action: str, path: Path | str, e: OSError) -> OutputError:
    return OutputError(f"cannot {action} {path}: {_why(e)}")


# --- destination: every filesystem operation a snapshot needs -------------------------------


def _fs_mkdirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail("create directory", path, e) from e
    if not path.is_dir():
        raise OutputError(f"cannot create directory {path}: a file is in the way")


def _fs_mkdir_new(path: Path) -> None:
    try:
        path.mkdir()
    except FileExistsError as e:
        raise OutputError(f"cannot create directory {path}: it already exists") from e
    except OSError as e:
        raise _fail("create directory", path, e) from e


def _fs_open(path: Path) -> IO[bytes]:
    try:
        return open(path, "xb", buffering=_BUFFER)
    except OSError as e:
        raise _fail("create", path, e) from e


def _fs_fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _fail("sync directory", path, e) from e


def _fs_write_atomic(path: Path, data: bytes) -> None:
    """Write a small file so readers see the old content or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _fail("write", path, e) from e
    _fs_fsync_dir(path.parent)


def _fs_rename_dir(src: Path, dst: Path) -> None:
    if dst.exists():  # rename(2) would silently replace an empty directory
        raise OutputError(f"cannot publish {dst}: it already exists")
    try:
        os.rename(src, dst)
    except OSError as e:
        raise _fail(f"rename {src} to", dst, e) from e
    _fs_fsync_dir(dst.parent)
    _fs_fsync_dir(src.parent)


def _fs_describe(path: Path) -> dict[str, Any]:
    """rows, sha256 and bytes of one finished file; fsynced on the way."""
    digest, size, lines = hashlib.sha256(), 0, 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_BUFFER):
                digest.update(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
            os.fsync(f.fileno())
        rows = pq.read_metadata(path).num_rows if path.suffix == ".parquet" else lines
    except OSError as e:
        raise _fail("read back", path, e) from e
    return {"rows": rows, "sha256": digest.hexdigest(), "bytes": size}


def _fs_list_files(path: Path) -> dict[str, Path]:
    """Every file under `path`, its table folders' part files too, by its name within `path`
    (`articles/part-00000.parquet`: the manifest's and the object store's), in name order."""
    try:
        return {p.relative_to(path).as_posix(): p
                for p in sorted(path.rglob("*")) if p.is_file()}
    except OSError as e:
        raise _fail("list", path, e) from e


def _fs_lock(path: Path) -> int:
    """Hold an exclusive lock on `path` (released by close, or by the process dying)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _fail("create", path, e) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise OutputError(f"cannot write {path.with_suffix('')}: another writer is using it") from e
    return fd


def _fs_unlock(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
        os.close(fd)


def _fs_remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- credentials never reach errors.ndjson ---------------------------------------------------

_SECRET_PARAMS = frozenset({
    "access_token", "token", "api_key", "apikey", "key", "password", "secret", "client_secret",
    "refresh_token", "code", "private_link", "signature", "x-amz-signature",
    "x-amz-credential", "x-amz-security-token",
})
_SECRET_TEXT = re.compile(
    r"(?i)\b((?:access_token|token|password|secret|private_link|api_key)=)[^&\s\"']+"
    r"|\b((?:token|basic|bearer)\s+)[A-Za-z0-9._~+/=-]{8,}"
)


def sanitize_url(url: str) -> str:
    """The URL without userinfo and with credential-like query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = parts.query
    if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
        query = urlencode([(k, "REDACTED" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact(text: str) -> str:
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or m.group(2)) + "REDACTED", text)


# --- the writer ------------------------------------------------------------------------------


def new_snapshot_id(base: Path, now: datetime | None = None) -> str:
    """UTC time as YYYYMMDDTHHMMSSZ, bumped a second at a time past any id already used."""
    t = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    while True:
        sid = t.strftime(ID_FORMAT)
        if not (base / f"{PREFIX}{sid}").exists() and not (base / STAGING / sid).exists():
            return sid
        t += timedelta(seconds=1)


class SnapshotWriter:
    """Writes one snapshot: open -> add_* -> publish (or abort). Also a context manager.

    Rows are buffered per table and written as one Parquet row group per `row_group_size`
    rows (tables that keep each record's JSON, a few KB a row) or `narrow_row_group_size` rows
    (the others, a few hundred bytes a row), so memory is bounded by the row group size, not by
    the number of records. Leaving the `with` block without `publish` (or with an exception)
    aborts: nothing is published.

    `root` is a local directory or `s3://bucket/prefix`. Work in progress goes to
    `staging_dir` (default: ROOT/NAME/.staging, so publishing is a rename); an s3:// root needs
    a local `staging_dir`, and publishing uploads it (see `S3Store.publish`).
    """

    def __init__(
        self,
        root: Path | str,
        name: str,
        *,
        snapshot_id: str | None = None,
        formats: frozenset[str] = FORMATS,
        row_group_size: int = 2_500,
        narrow_row_group_size: int = 25_000,
        file_row_groups: int = FILE_ROW_GROUPS,
        staging_dir: Path | str | None = None,
    ) -> None:
        if not name or not _SAFE_ID.match(name):
            raise ValueError(f"harvest name must be a plain directory name, got {name!r}")
        if snapshot_id is not None and not _SAFE_ID.match(snapshot_id):
            raise ValueError(f"snapshot_id must be a plain directory name, got {snapshot_id!r}")
        if not formats or not set(formats) <= FORMATS:
            raise ValueError(f"formats must be a non-empty subset of {sorted(FORMATS)}")
        for what, size in (("row_group_size", row_group_size),
                           ("narrow_row_group_size", narrow_row_group_size),
                           ("file_row_groups", file_row_groups)):
            if size < 1:
                raise ValueError(f"{what} must be at least 1, got {size}")
        self.store = S3Store(str(root)) if is_remote(root) else None
        if self.store is not None and staging_dir is None:
            raise ValueError(f"an s3:// output needs a local staging_dir, got none for {root}")
        self.root: Path | str = str(root) if self.store else Path(root)
        self.name = name
        if self.store is None:
            self.base = Path(root) / name
            staging_root = Path(staging_dir) if staging_dir is not None else self.base / STAGING
        else:  # nothing of a remote snapshot is local but its staging directory
            staging_root = self.base = Path(str(staging_dir))
        self.snapshot_id = snapshot_id or self._new_id(staging_root)
        self.formats = frozenset(formats)
        # Every row group costs about 1 KB of footer per column, held in memory until the file
        # closes: 5,000-row groups of the narrow tables were 25 MB of footers at a million
        # records (benchmarks' memory section), 25,000-row ones a fifth of that. A group of
        # the articles table is ~12 MB of Arrow data: one being encoded while the next fills
        # (and the final groups of every table, encoded side by side) made the write's peak;
        # 5,000-row groups peaked 20-25 MB higher over a million records.
        self.row_group_rows = {t: row_group_size if "raw" in schema.names
                               else narrow_row_group_size for t, schema in SCHEMAS.items()}
        # ...which is why a table is a folder of part files of `file_row_groups` row groups
        # each: closing a part frees its footer, so memory is bounded however many records.
        self.file_row_groups = file_row_groups
        self._part: dict[str, int] = {}  # table -> number of its part file being written
        self._part_groups: dict[str, int] = {}  # table -> row groups in that part so far
        self.staging = staging_root / self.snapshot_id
        folder = f"{PREFIX}{self.snapshot_id}"
        # Where the snapshot is published: a local directory, or its s3:// URL.
        self.path: Path | str = (self.base / folder if self.store is None
                                 else self.store.url(name, folder))
        self._state = "new"
        self._lock_path = staging_root / f"{self.snapshot_id}.lock"
        self._lock: int | None = None  # held from open() to publish/abort
        self._lines: dict[str, IO[bytes]] = {}
        self._parquet: dict[str, pq.ParquetWriter] = {}
        self._buffers: dict[str, list[dict[str, Any]]] = {t: [] for t in SCHEMAS}
        # converted rows not yet in a row group, in order (after any rows in _buffers' past)
        self._pending: dict[str, list[pa.Table]] = {t: [] for t in SCHEMAS}
        # Parquet encoding and compression release the GIL: row groups are written on threads
        # of their own while the caller shapes the next rows. One batch is in flight at a time
        # (that keeps each file's row groups in order), except the last row group of every
        # table at close: files apart, so they are encoded side by side.
        self._io: ThreadPoolExecutor | None = None
        self._io_jobs: deque[Future[None]] = deque()

    def _new_id(self, staging_root: Path) -> str:
        if self.store is None:
            return new_snapshot_id(self.base)
        t = datetime.now(UTC).replace(microsecond=0)
        while True:
            sid = t.strftime(ID_FORMAT)
            if not self.store.taken(self.name, f"{PREFIX}{sid}") and not (
                    staging_root / sid).exists():
                return sid
            t += timedelta(seconds=1)

    def is_published(self) -> bool:
        """The snapshot is out (its directory, or its s3:// manifest, is there)."""
        if self.store is not None:
            return self.store.is_complete(self.name, f"{PREFIX}{self.snapshot_id}")
        return Path(self.path).exists()

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> SnapshotWriter:
        if self._state != "new":
            raise RuntimeError(f"snapshot writer is {self._state}, cannot open it again")
        if self.is_published():
            raise OutputError(f"cannot write snapshot {self.path}: it already exists")
        _fs_mkdirs(self.staging.parent)
        self._lock = _fs_lock(self._lock_path)
        try:
            # Nobody else holds the lock, so a staging dir with this id is what a killed run
            # left (a resumed run keeps its snapshot id): start it afresh.
            _fs_remove_tree(self.staging)
            _fs_mkdir_new(self.staging)
            self._state = "open"
            names = ["errors.ndjson"]  # the error log is kept whatever the data formats
            if "ndjson" in self.formats:
                names[:0] = ["articles.ndjson", "stats.ndjson"]
            for n in names:
                self._lines[n] = _fs_open(self.staging / n)
            if "parquet" in self.formats:
                self._io = ThreadPoolExecutor(4, thread_name_prefix="parquet")
                for table in SCHEMAS:  # every table has a first part, rows or not
                    _fs_mkdir_new(self.staging / table)
                    self._open_part(table, 0)
        except BaseException:
            self.abort()
            raise
        return self

    def __enter__(self) -> SnapshotWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "published":
            self.abort()

    def publish(self, manifest: Mapping[str, Any]) -> Path | str:
        """Finish every file, write manifest.json last, rename into place, point LATEST at it.

        The caller's manifest is kept; `files`, `snapshot_id` and `schema_version` are set here.
        Returns `self.path`: the snapshot directory, or its s3:// URL (uploaded, manifest last).
        """
        self._require_open()
        self._state = "publishing"
        self._close_writers()
        listed = _fs_list_files(self.staging)
        with ThreadPoolExecutor(min(4, len(listed) or 1), thread_name_prefix="describe") as pool:
            files = dict(zip(listed, pool.map(_fs_describe, listed.values()), strict=True))
        tables = {t: {"rows": sum(files[f]["rows"] for f in parts), "files": parts}
                  for t in SCHEMAS if (parts := table_files(files, t))}
        doc = {
            **manifest,
            "snapshot_id": self.snapshot_id,
            "schema_version": SCHEMA_VERSION,
            "tables": tables,
            "files": files,
        }
        opts = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | NDJSON_OPTS
        body = orjson.dumps(doc, option=opts, default=str)
        _fs_write_atomic(self.staging / MANIFEST, body + b"\n")
        if self.store is not None:
            self.store.publish(self.staging, self.name, self.snapshot_id)
            _fs_remove_tree(self.staging)  # uploaded: the local copy has done its job
        else:
            path = Path(self.path)
            _fs_rename_dir(self.staging, path)
            _fs_write_atomic(self.base / LATEST, f"{path.name}\n".encode())
        self._state = "published"
        self._release()
        return self.path

    def abort(self) -> None:
        """Close everything and remove the staging directory; never publishes. Idempotent."""
        if self._state in ("published", "aborted"):
            return
        self._state = "aborted"
        self._stop_io(wait=False)
        # The files are being thrown away: a close that fails changes nothing.
        for f in self._lines.values():
            with contextlib.suppress(OSError):
                f.close()
        for w in self._parquet.values():
            with contextlib.suppress(OSError):
                w.close()
        self._lines.clear()
        self._parquet.clear()
        self._buffers = {t: [] for t in SCHEMAS}
        self._pending = {t: [] for t in SCHEMAS}
        if self._lock is not None:  # never remove a staging dir another writer holds
            _fs_remove_tree(self.staging)
            self._release()

    # -- writing --------------------------------------------------------------------------

    def add_article(self, record: Mapping[str, Any], rows: Mapping[str, list[dict]]) -> None:
        """One full record: a line in articles.ndjson (exactly as given) and its table rows."""
        self._require_open()
        unknown = set(rows) - set(SCHEMAS)
        if unknown:
            raise ValueError(f"unknown tables {sorted(unknown)}; valid: {sorted(SCHEMAS)}")
        self._line("articles.ndjson", orjson.dumps(record))
        for table, table_rows in rows.items():
            self._buffer(table, table_rows)

    def add_stats(self, rows: Iterable[dict[str, Any]]) -> None:
        """`stats` rows (from records.stats_rows): stats.ndjson lines and the stats table."""
        self._require_open()
        rows = list(rows)
        for row in rows:
            self._line("stats.ndjson", orjson.dumps(row, option=NDJSON_OPTS))
        self._buffer("stats", rows)

    def add_rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Rows of a table fed outside add_article/add_stats: collections, projects, versions..."""
        self._require_open()
        if table not in SCHEMAS:
            raise ValueError(f"unknown table {table!r}; valid: {sorted(SCHEMAS)}")
        if table in _OWN_METHOD:
            raise ValueError(f"rows of {table!r} are added with {_OWN_METHOD[table]}()")
        self._buffer(table, list(rows))

    def add_rendered(self, chunk: Any) -> None:
        """A chunk from render.render: its NDJSON lines and its tables, after what came before.

        `chunk` has `lines` (NDJSON file name -> bytes of whole lines) and `tables` (table name
        -> Arrow table with exactly that table's schema, rows of this snapshot)."""
        self._require_open()
        for name, data in chunk.lines.items():
            if name not in ("articles.ndjson", "stats.ndjson"):
                raise ValueError(f"unknown NDJSON file {name!r}")
            self._write(name, data)
        for table, arrow in chunk.tables.items():
            if table not in SCHEMAS:
                raise ValueError(f"unknown table {table!r}; valid: {sorted(SCHEMAS)}")
            if table not in self._parquet or not arrow.num_rows:
                continue
            if not arrow.schema.equals(SCHEMAS[table]):
                raise ValueError(f"a rendered {table!r} table does not have the table's schema")
            if self._buffers[table]:  # rows added one by one before it come first
                self._flush_rows(table)
            self._append(table, arrow)

    def add_error(self, error: Mapping[str, Any]) -> None:
        """One errors.ndjson line: id, source, url, status, reason, message, attempts, at."""
        self._require_open()
        line = {k: error.get(k) for k in ERROR_KEYS}
        if isinstance(line["url"], str):
            line["url"] = sanitize_url(line["url"])
        if isinstance(line["message"], str):
            line["message"] = _redact(line["message"])
        if line["at"] is None:
            line["at"] = datetime.now(UTC)
        self._line("errors.ndjson", orjson.dumps(line, option=NDJSON_OPTS, default=str))

    # -- internals ------------------------------------------------------------------------

    def _release(self) -> None:
        if self._lock is not None:
            _fs_unlock(self._lock, self._lock_path)
            self._lock = None

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"snapshot writer is {self._state}, not open")

    def _line(self, name: str, data: bytes) -> None:
        self._write(name, data + b"\n")

    def _write(self, name: str, data: bytes) -> None:
        """Bytes of whole lines into an NDJSON file."""
        f = self._lines.get(name)
        if f is None:
            return  # this format was not asked for
        try:
            f.write(data)
        except OSError as e:
            self._failed()
            raise _fail("write", self.staging / name, e) from e

    def _buffer(self, table: str, rows: list[dict[str, Any]]) -> None:
        if table not in self._parquet:
            return
        buf = self._buffers[table]
        buf.extend(rows)
        if len(buf) >= self.row_group_rows[table]:
            self._flush_rows(table)

    def _failed(self) -> None:
        # A row group that could not be written leaves the snapshot incomplete: only abort().
        self._state = "failed"

    def _flush_rows(self, table: str) -> None:
        """Convert the rows buffered for `table` and queue them for its row groups."""
        rows, self._buffers[table] = self._buffers[table], []
        try:
            arrow = rows_to_table(table, rows, self.snapshot_id)
        except ValueError:
            self._failed()
            raise
        self._append(table, arrow)

    def _append(self, table: str, arrow: pa.Table) -> None:
        """Queue converted rows; write every full row group."""
        pending = self._pending[table]
        if len(pending) >= PENDING_PIECES and sum(t.nbytes for t in pending) <= PENDING_COPY:
            pending[:] = [pa.concat_tables(pending).combine_chunks()]  # one piece (see there)
        pending.append(arrow)
        queued = sum(t.num_rows for t in pending)
        full = queued - queued % self.row_group_rows[table]
        if not full:
            return
        combined = pa.concat_tables(pending)
        rest = combined.slice(full)
        self._pending[table] = [rest] if rest.num_rows else []
        # the previous batch must be written first: at most one in flight (an articles row
        # group is about 25 MB of Arrow data; a queue of them was the 100,000-item peak)
        self._drain()
        self._submit(table, combined.slice(0, full))

    def _submit(self, table: str, arrow: pa.Table) -> None:
        assert self._io is not None
        self._io_jobs.append(self._io.submit(self._write_groups, table, arrow))

    def _part_path(self, table: str) -> Path:
        return self.staging / table_part(table, self._part[table])

    def _open_part(self, table: str, number: int) -> None:
        self._part[table], self._part_groups[table] = number, 0
        path = self._part_path(table)
        schema = SCHEMAS[table]
        try:
            self._parquet[table] = pq.ParquetWriter(
                path, schema, compression="zstd",
                # min/max of long text prunes nothing and doubles every row group's footer
                # entry (held in memory until the file closes)
                write_statistics=[n for n in schema.names if n not in NO_STATISTICS])
        except OSError as e:
            raise _fail("create", path, e) from e

    def _write_groups(self, table: str, arrow: pa.Table) -> None:
        """On the Parquet thread: row groups of `arrow` into `table`'s part files, the next
        part begun (and the full one closed) every `file_row_groups` row groups."""
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
                raise _fail("write", self._part_path(table), e) from e
            self._part_groups[table] += -(-piece.num_rows // group)
            done += piece.num_rows

    def _close_part(self, table: str) -> None:
        # closed in place, not taken out: the caller's thread reads `table in self._parquet`
        # as "this snapshot has Parquet" while the Parquet thread moves on to the next part
        try:
            self._parquet[table].close()
        except OSError as e:
            raise _fail("write", self._part_path(table), e) from e

    def _drain(self) -> None:
        """Wait for every queued row-group write; raise the first failure."""
        while self._io_jobs:
            try:
                self._io_jobs.popleft().result()
            except BaseException:
                self._failed()
                raise

    def _stop_io(self, *, wait: bool) -> None:
        """Finish (or, when aborting, give up on) queued writes and end the Parquet threads."""
        io, self._io = self._io, None
        if io is None:
            return
        try:
            if wait:
                self._drain()
        finally:  # a write under way always ends first
            io.shutdown(wait=True, cancel_futures=not wait)
            self._io_jobs.clear()

    def _close_writers(self) -> None:
        for table in self._parquet:
            if self._buffers[table]:
                self._flush_rows(table)
        self._buffers = {t: [] for t in SCHEMAS}
        self._drain()
        for table, pending in self._pending.items():  # last row groups: side by side
            if pending:
                self._submit(table, pa.concat_tables(pending))
        self._pending = {t: [] for t in SCHEMAS}
        self._stop_io(wait=True)
        for name, f in list(self._lines.items()):
            try:
                f.close()
            except OSError as e:
                raise _fail("write", self.staging / name, e) from e
        self._lines.clear()
        for table in self._parquet:
            self._close_part(table)
        self._parquet.clear()


def rows_to_table(table: str, rows: list[dict[str, Any]],
                  snapshot_id: str | None = None) -> pa.Table:
    """Row dicts -> an Arrow table with `table`'s schema, checked: every value fits its column,
    no nulls in required columns, and (if given) every row of `snapshot_id`. ValueError names
    what is wrong."""
    schema = SCHEMAS[table]
    try:
        # One struct array converts the row dicts in C++; Table.from_pylist would first build a
        # Python list per column (same coercions and errors, a third slower).
        arrow = pa.Table.from_struct_array(pa.array(rows, type=_ROW_TYPES[table]))
    except (pa.ArrowException, TypeError, ValueError, ArithmeticError) as e:
        raise ValueError(f"rows for table {table!r} do not fit its schema: {_why(e)}") from e
    # The conversion does not enforce nullability; Parquet's REQUIRED columns must not see nulls.
    for i, field in enumerate(schema):
        if not field.nullable and arrow.column(i).null_count:
            raise ValueError(f"rows for table {table!r} have nulls in column {field.name!r}")
    if snapshot_id is not None and arrow.num_rows and not pc.all(
            pc.equal(arrow.column("snapshot_id"), snapshot_id)).as_py():
        raise ValueError(f"rows for table {table!r} belong to another snapshot than "
                         f"{snapshot_id!r} (build RowContext from writer.snapshot_id)")
    return arrow


# --- readers ---------------------------------------------------------------------------------


def list_snapshots(root: Path | str, name: str) -> list[Path]:
    """Published snapshots (directories holding a manifest.json), oldest first.

    Local output only; `open_store(root).snapshots(name)` reads s3:// output too."""
    _local_only(root)
    base = Path(root) / name
    if not base.exists():
        return []
    try:
        entries = list(base.iterdir())
    except OSError as e:
        raise _fail("list", base, e) from e
    found = [
        p for p in entries
        if p.name.startswith(PREFIX) and p.is_dir() and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def latest_snapshot(root: Path | str, name: str) -> Path | None:
    """The snapshot LATEST names if it is complete, else the newest complete one, else None.

    Local output only; `open_store(root).latest(name)` reads s3:// output too."""
    _local_only(root)
    base = Path(root) / name
    try:
        pointed = (base / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        pointed = ""
    if pointed.startswith(PREFIX) and _SAFE_ID.match(pointed[len(PREFIX):]):
        candidate = base / pointed
        if (candidate / MANIFEST).is_file():
            return candidate
    snapshots = list_snapshots(root, name)
    return snapshots[-1] if snapshots else None


def read_manifest(path: Path | str) -> dict[str, Any]:
    """A snapshot's manifest; `path` is the snapshot directory (or its s3:// URL) or the
    manifest file itself."""
    if is_remote(path):
        url = str(path).rstrip("/")
        url = url if url.endswith(f"/{MANIFEST}") else f"{url}/{MANIFEST}"
        root, _, file = url.rpartition("/")
        return parse_manifest(S3Store(root).read_bytes(file), url)
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        data = p.read_bytes()
    except OSError as e:
        raise _fail("read manifest", p, e) from e
    return parse_manifest(data, str(p))


def _local_only(root: Path | str) -> None:
    if is_remote(root):  # Path() would quietly turn s3://b into a local s3:/b
        raise ValueError(f"{root} is object storage: read it with open_store(root)")


def clean_staging(root: Path | str, name: str) -> list[Path]:
    """Remove what killed runs left in OUTPUT/NAME/.staging; call it while holding the lock."""
    staging = Path(root) / name / STAGING
    if not staging.is_dir():
        return []
    removed = sorted(staging.iterdir())
    for p in removed:
        if p.is_dir():
            _fs_remove_tree(p)
        else:
            p.unlink(missing_ok=True)
    return removed


# --- object storage, and one reading interface over both destinations -----------------------


def is_remote(root: Path | str) -> bool:
    """True for an `s3://bucket/prefix` output location."""
    return str(root).startswith(S3_SCHEME)


def split_harvest(path: Path | str) -> tuple[str, str]:
    """`OUTPUT/NAME` (a directory or an s3:// URL) -> (OUTPUT, NAME)."""
    text = str(path).rstrip("/")
    body = text[len(S3_SCHEME):] if is_remote(text) else text
    root, _, name = body.rpartition("/")
    if not name or not _SAFE_ID.match(name) or (is_remote(text) and not root):
        raise ValueError(f"{path!s}: expected OUTPUT/NAME, the folder of one harvest")
    if is_remote(text):
        return S3_SCHEME + root, name
    return root or ".", name


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem configured from the standard AWS environment only.

    Credentials come from the AWS SDK's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
    AWS_PROFILE, instance roles); AWS_REGION or AWS_DEFAULT_REGION names the region, and
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL points at another S3 API (MinIO, moto).
    """
    kw: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kw["endpoint_override"] = endpoint
        kw["scheme"] = urlsplit(endpoint).scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    try:
        # Delayed open: a small object is one PutObject, so manifest.json and LATEST each
        # appear whole or not at all.
        return pafs.S3FileSystem(allow_delayed_open=True, **kw)
    except (OSError, ValueError) as e:
        raise OutputError(f"cannot set up S3 access: {_why(e)}") from e


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """manifest.json's bytes -> its object; `where` names it in errors."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise OutputError(f"malformed manifest {where}: {_why(e)}") from e
    if not isinstance(doc, dict):
        raise OutputError(f"malformed manifest {where}: expected a JSON object")
    return doc


def _hash_copy(src: IO[bytes] | Any, dst: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(_BUFFER):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return digest.hexdigest()


class LocalStore:
    """Published snapshots in a local directory (the writer publishes them by rename)."""

    remote = False

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def url(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def exists(self, name: str) -> bool:
        return (self.root / name).is_dir()

    def snapshots(self, name: str) -> list[str]:
        """Folder names (`snapshot=<id>`) of the complete snapshots, oldest first."""
        return [p.name for p in list_snapshots(self.root, name)]

    def latest(self, name: str) -> str | None:
        p = latest_snapshot(self.root, name)
        return p.name if p else None

    def read_bytes(self, *parts: str) -> bytes:
        path = self.root.joinpath(*parts)
        try:
            return path.read_bytes()
        except OSError as e:
            raise _fail("read", path, e) from e

    def fetch(self, name: str, folder: str, file: str, workdir: Path) -> tuple[Path, str]:
        """The file itself (no copy) and its sha256."""
        path = self.root / name / folder / file
        try:
            with open(path, "rb") as f:
                return path, _hash_copy(f, None)
        except OSError as e:
            raise _fail("read", path, e) from e


class S3Store:
    """Published snapshots under `s3://bucket/prefix`, through pyarrow's S3 filesystem."""

    remote = True

    def __init__(self, root: str) -> None:
        if not is_remote(root) or not root[len(S3_SCHEME):].strip("/"):
            raise ValueError(f"expected s3://bucket[/prefix], got {root!r}")
        self.base = root[len(S3_SCHEME):].strip("/")
        self.fs = s3_filesystem()

    def _path(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def url(self, *parts: str) -> str:
        return S3_SCHEME + self._path(*parts)

    def exists(self, name: str) -> bool:
        return self._info(self._path(name)).type != pafs.FileType.NotFound

    def snapshots(self, name: str) -> list[str]:
        """Folder names (`snapshot=<id>`) holding a manifest.json, oldest first."""
        base = self._path(name)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True,
                                                            allow_not_found=True))
        except OSError as e:
            raise _fail("list", self.url(name), e) from e
        found = set()
        for info in infos:
            folder, _, file = info.path[len(base) + 1:].partition("/")
            if (file == MANIFEST and info.type == pafs.FileType.File
                    and folder.startswith(PREFIX) and _SAFE_ID.match(folder[len(PREFIX):])):
                found.add(folder)
        return sorted(found)

    def latest(self, name: str) -> str | None:
        try:
            pointed = self.read_bytes(name, LATEST).decode("utf-8").strip()
        except (OutputError, UnicodeDecodeError):
            pointed = ""
        if (pointed.startswith(PREFIX) and _SAFE_ID.match(pointed[len(PREFIX):])
                and self.is_complete(name, pointed)):
            return pointed
        found = self.snapshots(name)
        return found[-1] if found else None

    def is_complete(self, name: str, folder: str) -> bool:
        return self._info(self._path(name, folder, MANIFEST)).type == pafs.FileType.File

    def taken(self, name: str, folder: str) -> bool:
        """Any object under this snapshot's prefix (complete or not)."""
        return self._info(self._path(name, folder)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(*parts)) as f:
                return bytes(f.read())
        except (OSError, FileNotFoundError) as e:
            raise _fail("read", self.url(*parts), e) from e

    def fetch(self, name: str, folder: str, file: str, workdir: Path) -> tuple[Path, str]:
        """Download one file into `workdir`; its local path and sha256."""
        dest = workdir / file
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(self._path(name, folder, file)) as src, \
                    open(dest, "wb") as dst:
                return dest, _hash_copy(src, dst)
        except OSError as e:
            raise _fail("download", self.url(name, folder, file), e) from e

    def publish(self, staging: Path, name: str, snapshot_id: str) -> str:
        """Upload a finished staging directory: data files, then manifest.json, then LATEST."""
        folder = f"{PREFIX}{snapshot_id}"
        if self.is_complete(name, folder):
            raise OutputError(f"cannot publish {self.url(name, folder)}: it already exists")
        # A retry of an interrupted upload (a resumed run keeps its snapshot id, config and
        # so its file names) overwrites what the first try left. Nothing is deleted: pyarrow
        # would leave directory-marker objects behind.
        for file, p in _fs_list_files(staging).items():
            if file != MANIFEST:
                self._upload(p, name, folder, file)
        self._upload(staging / MANIFEST, name, folder, MANIFEST)
        self._put(f"{folder}\n".encode(), name, LATEST)
        return self.url(name, folder)

    def _upload(self, local: Path, *parts: str) -> None:
        try:
            with open(local, "rb") as src, self.fs.open_output_stream(self._path(*parts)) as dst:
                _hash_copy(src, dst)
        except OSError as e:
            raise _fail("upload", self.url(*parts), e) from e

    def _put(self, data: bytes, *parts: str) -> None:
        try:
            with self.fs.open_output_stream(self._path(*parts)) as dst:
                dst.write(data)
        except OSError as e:
            raise _fail("write", self.url(*parts), e) from e

    def _info(self, path: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(path)
        except OSError as e:
            raise _fail("look up", S3_SCHEME + path, e) from e


Store = LocalStore | S3Store


def open_store(root: Path | str) -> Store:
    """The reader for an output location: a local directory or `s3://bucket/prefix`."""
    return S3Store(str(root)) if is_remote(root) else LocalStore(root)
