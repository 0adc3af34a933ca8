"""The simulator in its own process, its RequestLog read over a line protocol on stdin/stdout.

    python benchmarks/simserver.py '{"items": 2000, "latency_ms": 20}'

The JSON holds SimSettings fields. The first stdout line is `api=<url> stats=<url>`; then each
JSON command read on stdin gets one JSON line back:

    {"cmd": "summary", "window": 1.0, "span": 60, "limit": 20}
                                                     counts, peaks, Retry-After violations
    {"cmd": "urls"}                                  every GET that got a 200, in arrival order
    {"cmd": "corpus", "limit": 100}                  article ids (ascending), institution ids
    {"cmd": "update", "changes": {...}}              SimSettings knobs swapped at run time
    {"cmd": "clear"}                                 forget the log

End of stdin (or SIGTERM) stops the server. Running it apart from the harvester keeps the two
from sharing one event loop and one core.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings

_TUPLES = ("rate_limit", "fault_kinds")


def settings_from(doc: dict[str, Any]) -> SimSettings:
    return SimSettings(**{k: tuple(v) if k in _TUPLES and v is not None else v
                          for k, v in doc.items()})


def peak(times: list[float], seconds: float) -> int:
    """Most arrivals within any half-open window [t, t + seconds) (sorted `times`)."""
    best = left = 0
    for right, t in enumerate(times):
        while t - times[left] >= seconds:
            left += 1
        best = max(best, right - left + 1)
    return best


def summary(sim: Simulator, window: float, span: float | None,
            limit: int | None = None) -> dict[str, Any]:
    entries = list(sim.log.entries)
    times = sorted(e.t for e in entries)
    hosts = ("api", "stats")
    out: dict[str, Any] = {
        "count": len(entries),
        "count_by_host": {h: sum(1 for e in entries if e.host == h) for h in hosts},
        "by_route": sim.log.by_route(),
        "statuses": _tally(str(e.status) for e in entries),
        "faults": _tally(e.fault for e in entries if e.fault),
        "first": times[0] if times else None,
        "last": times[-1] if times else None,
        "peak_combined": peak(times, window),
        "peak_by_host": {h: sim.log.peak_in_window(h, window) for h in hosts},
        "retry_after_violations": {h: sim.log.retry_after_violations(h) for h in hosts},
        "max_in_flight": {h: sim.log.max_in_flight(h) for h in hosts},
        "gc_longest_pause": PAUSES.longest,
        "gc_collections": PAUSES.count,
    }
    if span is not None and times:
        out["in_span"] = sum(1 for t in times if t < times[0] + span)
    if limit is not None and len(times) > limit:
        # the shortest time holding limit + 1 arrivals: under `window`, the limit was exceeded
        out["tightest"] = min(times[i + limit] - times[i] for i in range(len(times) - limit))
    return out


class _Pauses:
    """The server's own garbage-collection pauses: arrivals it stamps late look bunched."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = 0.0
        self.count = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.count += 1
            self.longest = max(self.longest, time.perf_counter() - self.started)

    def clear(self) -> None:
        self.longest, self.count = 0.0, 0


PAUSES = _Pauses()


def _tally(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


async def serve(settings: SimSettings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with Simulator(settings) as sim:
        print(f"api={sim.api_url} stats={sim.stats_url}", flush=True)
        commands = asyncio.ensure_future(_commands(sim, reader))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({commands, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (commands, stopped):
            task.cancel()


async def _commands(sim: Simulator, reader: asyncio.StreamReader) -> None:
    while line := await reader.readline():
        cmd = orjson.loads(line)
        reply: Any
        match cmd["cmd"]:
            case "summary":
                reply = summary(sim, cmd.get("window", 1.0), cmd.get("span"), cmd.get("limit"))
            case "urls":
                reply = [[e.host, f"{e.path}?{e.query}" if e.query else e.path]
                         for e in sim.log.entries if e.method == "GET" and e.status == 200]
            case "corpus":
                limit = cmd.get("limit")
                ids = sim.corpus.ids
                reply = {"ids": list(ids if limit is None else ids[:limit]),
                         "institutions": [[i.id, i.string_id] for i in sim.corpus.institutions],
                         "stats_credentials": [sim.settings.stats_user,
                                               sim.settings.stats_password]}
            case "update":
                changes = {k: tuple(v) if k in _TUPLES and v is not None else v
                           for k, v in cmd["changes"].items()}
                sim.update(**changes)
                reply = "ok"
            case "clear":
                sim.log.clear()
                PAUSES.clear()
                reply = "ok"
            case other:
                reply = {"error": f"unknown command {other!r}"}
        sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(serve(settings_from(orjson.loads(sys.argv[1]) if len(sys.argv) > 1 else {})))
