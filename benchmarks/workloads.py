"""One measured workload per process: a harvest, a bare aiohttp GET loop, or the workshop's loop.

    python benchmarks/workloads.py harvest|bare|workshop ARGS.json

Prints one JSON line: the workload's own timings and its peak RSS (this process only, so the
simulator, which runs in its own process, never counts). Imports and interpreter start-up are
outside the timed part.
"""

from __future__ import annotations

import asyncio
import csv
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def max_rss_mb() -> float:
    """This process's own peak: ru_maxrss would include the parent's, inherited at exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


# ---- the harvester ----------------------------------------------------------------------------


def harvest(args: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa
    import yaml

    from harvester import config
    from harvester.pipeline import Harvest, Progress

    requests, per = args.get("rate", [1_000_000, 1])
    body = {
        "name": args.get("name", "bench"),
        "api": {"url": args["api"]},
        "stats": {"url": args["stats"], "counters": args.get("counters",
                                                            ["views", "downloads", "shares"])},
        "http": {
            "rate": {"requests": requests, "per": per},
            "concurrency": args.get("concurrency", 8),
            "timeout": args.get("timeout", {"connect": 10, "read": 60, "total": 120}),
            "retry": args.get("retry", {"attempts": 6, "backoff_base": 1, "backoff_max": 60}),
        },
        "sources": [args["source"]],
        "output": {"dir": args["out"], "formats": args.get("formats", ["ndjson", "parquet"])},
    }
    for key, value in args.get("config", {}).items():  # a harvest mode's own keys
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
    cfg = config.parse(yaml.safe_dump(body, sort_keys=False), "<benchmark>",
                       env=args.get("env", {}))  # credentials come as ${VAR}
    phases: dict[str, float] = {}  # phase -> when it began

    class TimedProgress(Progress):
        def __setattr__(self, name: str, value: Any) -> None:
            if name == "phase":
                phases.setdefault(value, time.perf_counter())
            super().__setattr__(name, value)

    async def main() -> Any:
        return await Harvest(cfg, progress=TimedProgress()).run()

    pa.set_memory_pool(pa.system_memory_pool())  # as harvester.cli.main does for every command
    t0 = time.perf_counter()
    result = asyncio.run(main())
    t1 = time.perf_counter()
    manifest = result.manifest
    marks = sorted((t, p) for p, t in phases.items())
    ends = [m[0] for m in marks[1:]] + [t1]
    spans = {p: end - t for (t, p), end in zip(marks, ends, strict=True)}
    http = manifest.get("http", {})
    return {
        "seconds": t1 - t0,
        "phases": spans,
        "items": manifest["ids"]["fetched"],
        "ids": manifest["ids"],
        "requests": sum(http.get("requests", {}).values()),
        "retries": http.get("retries", {}),
        "rows": {table: t["rows"] for table, t in manifest.get("tables", {}).items()},
        "snapshot": str(result.snapshot),
        "max_rss_mb": max_rss_mb(),
        "arrow_pool": pa.default_memory_pool().backend_name,
    }


# ---- the bare loop: as fast as one aiohttp session can GET -----------------------------------


def bare(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    urls: list[str] = args["urls"]
    statuses: dict[str, int] = {}

    async def main() -> float:
        todo = iter(urls)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def worker() -> None:
                for url in todo:
                    async with session.get(url) as resp:
                        await resp.read()
                        key = str(resp.status)
                        statuses[key] = statuses.get(key, 0) + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args["concurrency"])))
            return time.perf_counter() - t0

    c0 = time.process_time()
    seconds = asyncio.run(main())
    return {"seconds": seconds, "cpu_seconds": time.process_time() - c0,
            "requests": len(urls), "statuses": statuses,
            "max_rss_mb": max_rss_mb()}


# ---- the workshop's approach: requests, one call after another --------------------------------


def workshop(args: dict[str, Any]) -> dict[str, Any]:
    """The loops of the Figshare API workshop ("Chain api requests"), as written there."""
    import requests

    base, stats_base, item_ids = args["api"], args["stats"], args["ids"]
    counters = args.get("counters", ["views", "downloads", "shares"])
    sent = 0
    t0 = time.perf_counter()
    full_records = []
    for id_value in item_ids:
        r = requests.get(base + "/articles/" + str(id_value))
        metadata = json.loads(r.text)
        full_records.append(metadata)
        sent += 1
    stats = []
    for i in item_ids:
        item_stats: dict[str, Any] = {"item_id": i}
        for counter in counters:
            r = requests.get(stats_base + f"/total/{counter}/article/" + str(i))
            item_stats[f"total_{counter}"] = json.loads(r.text)["totals"]
            sent += 1
        stats.append(item_stats)
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "records.json", "w") as f:
        json.dump(full_records, f)
    with open(out / "stats.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(stats[0]) if stats else ["item_id"])
        writer.writeheader()
        writer.writerows(stats)
    return {"seconds": time.perf_counter() - t0, "items": len(full_records), "requests": sent,
            "max_rss_mb": max_rss_mb()}


WORKLOADS = {"harvest": harvest, "bare": bare, "workshop": workshop}

if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    result = WORKLOADS[kind](orjson.loads(Path(path).read_bytes()))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
