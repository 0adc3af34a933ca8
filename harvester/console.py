"""What a person sees on the terminal: log lines, the live status line, summaries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from harvester.pipeline import Progress
    from harvester.warehouse import LoadReport

log = logging.getLogger("harvester")


def print_load(report: LoadReport, duckdb_file: str) -> None:
    if not report.loaded:
        print(f"warehouse {duckdb_file}: up to date ({report.already} snapshots loaded before)")
    for s in report.loaded:
        changes = ", ".join(f"{n:,} {c}" for c, n in s.changes.items() if n)
        print(f"loaded    {s.snapshot_id} ({s.kind}, {s.status}) into {duckdb_file}: "
              f"{s.articles:,} articles; {changes or 'no changes'}")
    print(f"current   {report.current:,} articles, {report.withdrawn:,} withdrawn")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when it emits, on a line of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        end_status_line()
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(json_logs: bool, quiet: bool) -> None:
    handler = _StderrHandler()
    if json_logs:
        handler.setFormatter(_JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        fmt.converter = time.gmtime
        handler.setFormatter(fmt)
    root = logging.getLogger("harvester")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


_status_shown = False


def _tty() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


@contextlib.asynccontextmanager
async def showing(progress: Progress) -> AsyncIterator[None]:
    """Progress shown while the block runs; the status line is gone after it."""
    task = asyncio.create_task(_report_progress(progress))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        end_status_line()


async def _report_progress(p: Progress) -> None:
    """A live status line on a terminal; a plain log line every 30 s otherwise (cron)."""
    global _status_shown
    interval = 0.5 if _tty() else 30.0
    while True:
        await asyncio.sleep(interval)
        finished = p.done + p.failed + p.gone
        # this run's items over this run's fetching time: a resumed run's earlier items are
        # not its speed; no ETA until an item is in
        ours = finished - p.earlier
        rate = ours / max(time.monotonic() - (p.fetching_since or p.started), 1e-6)
        eta = f"ETA {duration((p.total - finished) / rate)}" if ours > 0 else "ETA -"
        if p.phase == "listing":
            line = f"listing: {p.listed:,} ids"
        elif p.phase == "writing":
            line = f"writing snapshot: {p.written:,}/{p.done:,} records"
        else:
            line = (f"{p.phase}: {finished:,}/{p.total:,} items, {rate:.1f}/s, "
                    f"{eta}, {p.failed:,} errors, {p.gone:,} gone")
        if _tty():
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
            _status_shown = True
        else:
            log.info("%s", line, extra={"fields": {"progress": vars(p)}})


def end_status_line() -> None:
    global _status_shown
    if _status_shown:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
        _status_shown = False


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def print_summary(manifest: dict[str, Any], snapshot: Path | str | None,
                   elapsed: float) -> None:
    ids = manifest.get("ids", {})
    http = manifest.get("http", {})
    print(f"snapshot  {snapshot}")
    print(f"status    {manifest.get('status')}  ({duration(elapsed)})")
    incomplete = ids.get("incomplete", 0)
    print(f"ids       {ids.get('total', 0):,} distinct: {ids.get('fetched', 0):,} fetched, "
          f"{ids.get('failed', 0):,} failed, {ids.get('gone', 0):,} gone"
          + (f" ({incomplete:,} fetched without their stats/files/versions)"
             if incomplete else ""))
    for s in manifest.get("sources", []):
        print(f"  source  {s['name']:<20} {s['ids']:>9,} ids  {s['requests']:>6,} list requests")
    for key in ("requests", "retries"):
        if http.get(key):
            print(f"{key:<9}" + ", ".join(f"{k}: {v:,}" for k, v in http[key].items()))
    tables = [f"{t} {info['rows']:,}" for t, info in manifest.get("tables", {}).items()
              if info.get("rows")]
    if tables:
        print("tables   " + ", ".join(tables))
    if manifest.get("errors") or ids.get("gone"):
        print(f"errors   see {snapshot}/errors.ndjson")
