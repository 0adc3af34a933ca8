"""Journal records -> a snapshot's rows: Arrow tables and NDJSON lines, a chunk at a time.

Writing a snapshot is CPU work (decompress, parse, shape rows, convert to Arrow) that grows with
the number of records and holds the GIL, so threads cannot share it. `render` is a pure function
of a chunk of journal rows, so `ChunkRenderer` can run it in worker processes as well as in the
writing thread, and hand the results back in chunk order: the snapshot is the same byte for
byte whichever process rendered which chunk (tests/test_render.py checks this).

Workers are processes running `_serve`, fed chunks over a pipe and answering over a socket;
they ignore SIGINT (the parent decides) and exit when their stdin closes, so a parent killed
even by SIGKILL leaves none behind. A chunk a worker fails on, a worker that dies, or one that
sends nothing for RESULT_TIMEOUT seconds is rendered again in the writing thread, where a real
error is raised as it would be without workers.

How a worker starts (`start`):
- "fork" (Linux): forked when the snapshot is written, so it has every module already imported
  and starts in milliseconds. A worker spawned fresh costs 0.3 s of CPU importing pyarrow and
  this package, and on a machine whose cores are busy with the fetch (the harvester's event
  loop and, in the benchmarks, the server) that CPU is taken from the fetch. The child only
  renders: right after the fork it drops every inherited descriptor but its pipe and socket,
  leaves the parent's signal wake-up descriptor and handlers alone, never touches the journal,
  the HTTP client or stdio, and leaves with os._exit (no atexit handlers, no flushed buffers).
- "spawn" (elsewhere, or HARVESTER_RENDER_START=spawn): a fresh interpreter running
  `from harvester.render import _serve`, started early so it imports while the run fetches.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import pyarrow as pa

from harvester.periods import parse_date, periods
from harvester.records import (
    RowContext,
    article_rows,
    article_version_rows,
    breakdown_rows,
    download_rows,
    stats_rows,
    timeline_rows,
    version_rows,
)
from harvester.sinks import NDJSON_OPTS, rows_to_table, tune_allocators
from harvester.state import unpack

# below these, a worker's start-up costs about what it saves (a spawned one imports for 0.3 s)
AUTO_MIN_RECORDS = {"fork": 2_000, "spawn": 10_000}
AUTO_MAX_WORKERS = 4
RESULT_TIMEOUT = 120.0  # seconds the writing thread waits for a worker's next result
CHUNK_ALONE = 1_000
CHUNK_SHARED = 400
LOOKAHEAD = 3  # rounds of chunks held at most: workers' two each, and one to steal
_WAITALL = getattr(socket, "MSG_WAITALL", 0)  # a receive that returns once it has it all

# One journal row as Journal.packed_records reads it: still compressed, cheap to send.
Packed = tuple[int, int, bytes, bytes | None, bytes | None, str, bytes | None]


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
    lines: dict[str, bytes] = field(default_factory=dict)  # NDJSON file name -> its lines
    articles: int = 0  # full records in the chunk (stats-only refreshes excluded)


def parse_stamp(text: str) -> dt.datetime:
    """A UTC stamp as the journal and catalog keep them (fetch.stamp) -> aware datetime."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _provenance(sources: tuple[str, ...], mask: int) -> tuple[str, ...]:
    return tuple(name for i, name in enumerate(sources) if mask & (1 << i))


def render(spec: RenderSpec, chunk: list[Packed]) -> Rendered:
    """Rows of every table and the NDJSON lines for a chunk of journal rows, in id order."""
    rows: dict[str, list[dict[str, Any]]] = {}
    articles: list[bytes] = []
    stats: list[bytes] = []
    out = Rendered()
    ctx: RowContext | None = None
    ctx_of: tuple[str, int] = ("", -1)
    for aid, mask, body_z, files_z, stats_json, fetched_at, extra_z in chunk:
        if ctx is None or ctx_of != (fetched_at, mask):
            # neighbours in id order were mostly fetched in the same second
            ctx_of = (fetched_at, mask)
            ctx = RowContext(snapshot_id=spec.snapshot_id, fetched_at=parse_stamp(fetched_at),
                             sources=_provenance(spec.sources, mask))
        extra = orjson.loads(unpack(extra_z)) if extra_z is not None else None
        if stats_json is not None:
            shaped = stats_rows(aid, orjson.loads(stats_json), ctx, scope=spec.scope)
            rows.setdefault("stats", []).extend(shaped)
            if spec.ndjson:
                stats.extend(orjson.dumps(r, option=NDJSON_OPTS) for r in shaped)
        record_rows: dict[str, list[dict[str, Any]]] = {}
        body = unpack(body_z)
        if body:  # else a stats-only refresh of an unchanged item
            record = orjson.loads(body)
            complete = record if files_z is None else {
                **record, "files": orjson.loads(unpack(files_z))}
            record_rows = article_rows(complete, ctx)
            if spec.ndjson:  # the record as served (its own, possibly capped, file list)
                raw = record_rows["articles"][0]["raw"]  # that very JSON, when complete
                articles.append(raw.encode() if files_z is None else orjson.dumps(record))
            out.articles += 1
        for table, extra_table in extra_rows(extra, ctx).items():
            record_rows.setdefault(table, []).extend(extra_table)
        for table, table_rows in record_rows.items():
            if table_rows:
                rows.setdefault(table, []).extend(table_rows)
    if spec.ndjson:
        out.lines["articles.ndjson"] = b"".join(_lines(articles))
        out.lines["stats.ndjson"] = b"".join(_lines(stats))
    if spec.parquet:
        # every row's snapshot_id is spec.snapshot_id by construction (ctx): not checked again
        out.tables = {t: rows_to_table(t, r) for t, r in rows.items() if r}
    return out


def _lines(items: list[bytes]) -> tuple[bytes, ...]:
    """NDJSON: every item, each followed by a newline (joined without a copy per line)."""
    return (b"\n".join(items), b"\n") if items else ()


def series_rows(payload: dict[str, Any], ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """`stats_timeline` or `stats_breakdown` rows of one series payload (see StatsFetcher)."""
    if payload["kind"] == "breakdown":
        return {"stats_breakdown": breakdown_rows(payload, ctx)}
    span = periods(parse_date(payload["start"]), parse_date(payload["end"]),
                   payload["granularity"])
    return {"stats_timeline": timeline_rows(payload, span, ctx)}


def extra_rows(extra: dict[str, Any] | None, ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """Table rows for the optional per-item payloads kept in Outcome.extra."""
    rows: dict[str, list[dict[str, Any]]] = {}
    if not extra:
        return rows
    aid = int(extra["article_id"])
    for key in ("timeline", "breakdown"):
        if key in extra:
            rows.update(series_rows(extra[key], ctx))
    if "versions" in extra:
        rows["versions"] = version_rows(aid, extra["versions"]["list"], ctx)
        rows["article_versions"] = article_version_rows(extra["versions"]["records"], ctx)
    if "downloads" in extra:
        rows["downloads"] = download_rows(aid, extra["downloads"], ctx)
    return rows


# -- worker processes ---------------------------------------------------------------------------


def start_method() -> str:
    """How workers start here: "fork" on Linux unless HARVESTER_RENDER_START=spawn says no."""
    wanted = os.environ.get("HARVESTER_RENDER_START", "").strip().lower()
    if wanted == "spawn" or sys.platform != "linux" or not hasattr(os, "fork"):
        return "spawn"
    return "fork"


def auto_workers(records: int, cpus: int | None = None, start: str | None = None) -> int:
    """Worker processes for a snapshot of `records` rows when output.workers is auto: none for
    small runs (a worker's start-up would cost more than it saves), else one per spare core."""
    if records < AUTO_MIN_RECORDS[start or start_method()]:
        return 0
    spare = (cpus or os.cpu_count() or 1) - 1
    return max(0, min(spare, AUTO_MAX_WORKERS))


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Worker:
    """A `harvester.render._serve` process: chunks in on its stdin (a pipe), results out over
    a socket (a spawned worker's stdout), both as length-prefixed pickles. One thread feeds the
    pipe and another receives each result whole as it comes (one MSG_WAITALL receive, without
    the GIL, where a pipe needed the GIL back every 64 KiB), so neither side waits for the
    other: when the writing thread read results itself, between chunks it rendered, a worker
    sat blocked on its 4 MB result for 55 ms a chunk, as long as rendering one. The worker
    exits when its stdin closes, so it cannot outlive us."""

    def __init__(self, start: str = "spawn") -> None:
        self.proc: subprocess.Popen[bytes] | _Forked
        self.results_in, theirs = socket.socketpair()
        if start == "fork":
            self.proc = _Forked(theirs)
        else:
            env = dict(os.environ)  # this very package, installed or not
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from harvester.render import _serve; _serve()"],
                stdin=subprocess.PIPE, stdout=theirs.fileno(), stderr=subprocess.DEVNULL,
                env=env, bufsize=0)
        theirs.close()  # the worker's own now: the stream ends when the worker does
        self.inflight: deque[_Entry] = deque()  # submitted, result not collected yet, in order
        self.dead = False  # its pipe broke: it gets no more chunks
        self.todo: queue.SimpleQueue[tuple[RenderSpec, list[Packed]] | None] = \
            queue.SimpleQueue()
        # results as received, still pickled; an exception once the stream ends or breaks
        self.results: queue.SimpleQueue[bytearray | BaseException] = queue.SimpleQueue()
        self.sender = threading.Thread(target=self._feed, name="render-feed", daemon=True)
        self.reader = threading.Thread(target=self._read, name="render-read", daemon=True)
        self.sender.start()
        self.reader.start()

    def _feed(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while (item := self.todo.get()) is not None:
                _put(stdin, item)
        except OSError:
            pass  # the worker is gone: its results will say so
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def submit(self, spec: RenderSpec, entry: _Entry) -> None:
        entry.worker = self
        self.inflight.append(entry)
        self.todo.put((spec, entry.chunk))

    def _read(self) -> None:
        try:
            while True:
                size = int.from_bytes(_receive(self.results_in, 8), "little")
                self.results.put(_receive(self.results_in, size))
        except (OSError, EOFError, ValueError) as exc:  # it ended, or died
            self.results.put(exc)

    def ready(self) -> bool:
        """True when collect() will not wait: the oldest result is in, or the stream ended."""
        return self.dead or not self.results.empty()

    def collect(self) -> None:
        """Take the oldest in-flight entry's result (None: the worker failed on it, or died)."""
        entry = self.inflight.popleft()
        reply = None
        if not self.dead:
            try:
                got = self.results.get(timeout=RESULT_TIMEOUT)
                if isinstance(got, BaseException):
                    raise got
                reply = pickle.loads(got)
            except (queue.Empty, OSError, EOFError, pickle.UnpicklingError, ValueError):
                # dead, or stuck (nothing for RESULT_TIMEOUT): it gets nothing more, and its
                # chunks come back to the writing thread
                self.dead = True
                with contextlib.suppress(OSError):
                    self.proc.kill()
        entry.result = reply if isinstance(reply, Rendered) else None
        entry.failed = entry.result is None

    def close(self) -> None:
        self.todo.put(None)  # EOF after what is queued: the worker ends (the reader drains it)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)  # its socket has ended with the worker
        if not self.reader.is_alive():
            self.results_in.close()


@dataclass(eq=False)
class _Entry:
    """One chunk on its way: who renders it, and its result once there."""

    chunk: list[Packed]
    worker: _Worker | None = None
    result: Rendered | None = None
    failed: bool = False  # a worker could not render it: the calling thread does


def _put(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:  # an unbuffered pipe may take part of it (a signal, a profiler's stop)
        view = view[stream.write(view) or 0:]
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise EOFError
        got += n
    return buf  # pickle reads it as it is: no copy of a chunk's few MB


def _receive(sock: socket.socket, size: int) -> bytearray:
    """`size` bytes from `sock`, waited for in the kernel (EOFError if it ends first)."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:  # MSG_WAITALL returns early on a signal or at the end of the stream
        n = sock.recv_into(view[got:], size - got, _WAITALL)
        if not n:
            raise EOFError
        got += n
    return buf


def _get(stream: IO[bytes]) -> Any:
    size = int.from_bytes(_read_exact(stream, 8), "little")
    return pickle.loads(_read_exact(stream, size))


class _Forked:
    """A forked child running `_serve`, chunks in on a pipe and results out on `results` (the
    child's end of a socket pair): what _Worker uses of subprocess.Popen."""

    def __init__(self, results: socket.socket) -> None:
        chunks_r, chunks_w = os.pipe()  # parent -> child
        results_w = results.fileno()  # child -> parent
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads: the child here runs
            # nothing that another thread could have left locked (see the module docstring)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: it never returns from here
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: Ctrl-C is the parent's
                _keep_only(chunks_r, results_w)
                gc.freeze()  # what came from the parent is never collected (nor finalized) here
                with open(chunks_r, "rb", buffering=0) as src, \
                        open(results_w, "wb", buffering=0) as dst:
                    _serve(src, dst)
                code = 0
            finally:
                os._exit(code)
        os.close(chunks_r)
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = open(chunks_w, "wb", buffering=0)  # noqa: SIM115

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1  # reaped elsewhere: gone all the same
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"render worker {self.pid}", timeout or 0)
            time.sleep(0.005)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _keep_only(*fds: int) -> None:
    """In a forked child: close every inherited descriptor but stdio and `fds`, and unhook the
    parent's signal wake-up descriptor, so the child holds no socket, journal or pipe of the
    parent's open (another worker's stdin kept open here would never see its EOF)."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    keep = {0, 1, 2, *fds}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _serve(stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> None:
    """The worker's loop: render what comes in until stdin closes. A chunk that fails is
    answered with None; the parent renders it again itself and reports the real error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler the parent installed
    if stdin is None or stdout is None:  # spawned: a fresh interpreter
        tune_allocators()  # as its parent does (a forked child inherits the settings)
        stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            spec, chunk = _get(stdin)
        except EOFError:
            return
        try:
            out: Rendered | None = render(spec, chunk)
        except Exception:
            out = None
        _put(stdout, out)


class ChunkRenderer:
    """`map(spec, chunks)` renders chunks in the calling thread and in `workers` processes and
    yields the results in chunk order. Workers start as `start` says (default: start_method());
    spawned ones import for a while, so start those early, while the run fetches; close it when
    done (`with ChunkRenderer(n) as r:`)."""

    def __init__(self, workers: int, start: str | None = None) -> None:
        # records per chunk: big enough that per-table conversion costs stay small, small
        # enough that workers and the calling thread can share the work evenly
        self.chunk_size = CHUNK_SHARED if workers else CHUNK_ALONE
        how = start or start_method()
        self.fallbacks = 0  # chunks a failed or dead worker left to the calling thread
        self._workers: list[_Worker] = []
        for _ in range(workers):
            try:
                self._workers.append(_Worker(how))
            except OSError:
                break  # no processes here: render in the calling thread

    def __enter__(self) -> ChunkRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for w in workers:
            w.close()

    def map(self, spec: RenderSpec, chunks: Iterable[list[Packed]]) -> Iterator[Rendered]:
        """Workers are kept fed with two chunks each; while the next result in order is not
        there yet, the calling thread renders a later chunk itself (it also writes every
        chunk out, so it takes what the workers leave). At most LOOKAHEAD x (workers + 1)
        chunks are held, so memory stays bounded."""
        source = iter(chunks)
        window: deque[_Entry] = deque()
        cap = LOOKAHEAD * (len(self._workers) + 1)
        more = True

        def pull() -> _Entry | None:
            nonlocal more
            if not more or len(window) >= cap:
                return None
            chunk = next(source, None)
            if chunk is None:
                more = False
                return None
            window.append(_Entry(chunk))
            return window[-1]

        while True:
            for worker in self._workers:  # keep every worker busy
                while not worker.dead and len(worker.inflight) < 2 and \
                        (entry := pull()) is not None:
                    worker.submit(spec, entry)
            if not window and pull() is None:
                return
            head = window[0]
            if head.result is None and not head.failed and head.worker is not None:
                if head.worker.ready():
                    head.worker.collect()
                else:
                    spare = next((e for e in window if e.worker is None and e.result is None),
                                 None) or pull()
                    if spare is not None:
                        spare.result = render(spec, spare.chunk)  # instead of waiting
                    else:
                        head.worker.collect()  # nothing else to do: wait for it
                continue
            window.popleft()
            if head.result is None:
                if head.failed:
                    self.fallbacks += 1
                head.result = render(spec, head.chunk)
            yield head.result

