"""Throughput, politeness, memory and requests per item, measured in one run against the simulator.

    python benchmarks/run.py            # several minutes on 2 cores; --big adds 1,000,000 items
    python benchmarks/run.py --only throughput,politeness

Every workload runs in a fresh process (benchmarks/workloads.py) and the simulator in another
(benchmarks/simserver.py), so the server never shares the harvester's event loop or core, and
peak RSS is the harvester's alone. Politeness figures come from the simulator's own request log.
Prints a table and writes benchmarks/results/bench-<UTC time>.json (and latest.json).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COUNTERS = ["views", "downloads", "shares"]
UNTHROTTLED = [1_000_000, 1]  # a rate the harvester never reaches on loopback
LATENCY_MS = 5  # the throughput contest's simulated latency: a realistic floor, not a CPU race
FAST_RETRY = {"attempts": 8, "backoff_base": 0.01, "backoff_max": 0.05}


# ---- the two processes --------------------------------------------------------------------------


class Sim:
    """benchmarks/simserver.py in a child process; `ask` sends one command, returns the reply."""

    def __init__(self, **settings: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "simserver.py"), orjson.dumps(settings).decode()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        first = self.proc.stdout.readline().decode().split()
        if not first:
            self.close()
            raise RuntimeError("the simulator did not start")
        urls = dict(part.split("=", 1) for part in first)
        self.api, self.stats = urls["api"], urls["stats"]
        self.origin = {"api": _origin(self.api), "stats": _origin(self.stats)}

    def ask(self, cmd: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps({"cmd": cmd, **args}) + b"\n")
        self.proc.stdin.flush()
        return orjson.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()

    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def workload(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run benchmarks/workloads.py KIND in a fresh process; its JSON result."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(orjson.dumps(args))
    try:
        done = subprocess.run([sys.executable, str(HERE / "workloads.py"), kind, f.name],
                              stdout=subprocess.PIPE, check=False)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"workload {kind} failed with exit code {done.returncode}")
    return orjson.loads(done.stdout.splitlines()[-1])


@contextmanager
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="harvester-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def harvest(sim: Sim, out: Path, source: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return workload("harvest", {"api": sim.api, "stats": sim.stats, "out": str(out),
                                "source": source, **kw})


# ---- 1. throughput ceiling ----------------------------------------------------------------------


def throughput(items: int, concurrency: int, reps: int) -> dict[str, Any]:
    """A full harvest against a bare aiohttp loop sending the very same GETs, interleaved, with
    LATENCY_MS per answer. The simulator keeps every record it built (record_cache)."""
    with Sim(items=items, seed=1, record_cache=items, latency_ms=LATENCY_MS) as sim, \
            scratch() as tmp:
        ids = sim.ask("corpus", limit=items)["ids"]
        source = {"kind": "ids", "ids": ids}
        # warm-up: fills the simulator's record cache and tells which GETs a harvest sends
        harvest(sim, tmp / "warm", source, concurrency=concurrency, rate=UNTHROTTLED)
        urls = [sim.origin[host] + path for host, path in sim.ask("urls")]
        runs = []
        for rep in range(reps):
            sim.ask("clear")
            b = workload("bare", {"urls": urls, "concurrency": concurrency})
            sim.ask("clear")
            h = harvest(sim, tmp / f"rep{rep}", source, concurrency=concurrency,
                        rate=UNTHROTTLED)
            served = sim.ask("summary")["count"]
            fetch = h["phases"].get("fetching", h["seconds"])
            runs.append({
                "bare_rps": b["requests"] / b["seconds"],
                "harvest_rps": served / h["seconds"],
                "harvest_items_per_s": h["items"] / h["seconds"],
                "harvest_fetch_rps": served / fetch,
                "harvest_seconds": h["seconds"],
                "harvest_phases": h["phases"],
                "requests": served,
            })
            runs[-1]["ratio"] = runs[-1]["harvest_rps"] / runs[-1]["bare_rps"]
    med = {k: statistics.median(r[k] for r in runs) for k in
           ("bare_rps", "harvest_rps", "harvest_items_per_s", "harvest_fetch_rps", "ratio")}
    return {"items": items, "concurrency": concurrency, "latency_ms": LATENCY_MS,
            "requests": len(urls), "runs": runs, **med, "target": 0.6, "met": med["ratio"] >= 0.6}


# ---- 2. against the workshop's loop --------------------------------------------------------------


def workshop(plan: list[tuple[float, int]], concurrency: int) -> dict[str, Any]:
    rows = []
    for latency, n in plan:
        with Sim(items=2_000, seed=1, latency_ms=latency) as sim, scratch() as tmp:
            ids = sim.ask("corpus", limit=n)["ids"]
            w = workload("workshop", {"api": sim.api, "stats": sim.stats, "ids": ids,
                                      "out": str(tmp / "workshop")})
            h = harvest(sim, tmp / "h", {"kind": "ids", "ids": ids}, concurrency=concurrency,
                        rate=UNTHROTTLED)
        rows.append({
            "latency_ms": latency, "items": n,
            "workshop_items_per_s": w["items"] / w["seconds"],
            "harvest_items_per_s": h["items"] / h["seconds"],
            "workshop_seconds": w["seconds"], "harvest_seconds": h["seconds"],
            "workshop_requests": w["requests"], "harvest_requests": h["requests"],
            "speedup": (h["items"] / h["seconds"]) / (w["items"] / w["seconds"]),
        })
    return {"concurrency": concurrency, "rows": rows}


# ---- 3. politeness ----------------------------------------------------------------------------


def politeness(plan: list[tuple[int, float, float, float, int]]) -> dict[str, Any]:
    """(requests, per, span, latency ms, concurrency): the rate held for `span` seconds; achieved
    rate and peaks from the server's log. The simulator enforces the same limit per host (429 +
    Retry-After), so a 429 shows a breach; the API and stats hosts share one budget."""
    rows = []
    for requests, per, span, latency_ms, concurrency in plan:
        wanted = requests / per * span
        # keep it busy past the span: by 5%, or by one `per` of requests when that is more
        items = math.ceil(max(wanted * 1.05, wanted + requests) / (1 + len(COUNTERS)))
        with Sim(items=2_000, seed=1, latency_ms=latency_ms, latency_jitter_ms=latency_ms / 2,
                 rate_limit=[requests, per]) as sim, scratch() as tmp:
            ids = sim.ask("corpus", limit=items)["ids"]
            sim.ask("clear")  # the server's start-up (and its GC pauses) is not the run
            h = harvest(sim, tmp, {"kind": "ids", "ids": ids}, concurrency=concurrency,
                        rate=[requests, per])
            s = sim.ask("summary", window=per, span=span, limit=requests)
        achieved = s["in_span"] / wanted
        rows.append({
            "rate": f"{requests}/{per:g}s", "span_s": span, "requests": s["count"],
            "latency_ms": latency_ms, "concurrency": concurrency,
            "in_span": s["in_span"], "achieved_over_configured": achieved,
            "peak_in_window": s["peak_combined"], "peak_by_host": s["peak_by_host"],
            "limit": requests, "status_429": s["statuses"].get("429", 0),
            "retry_after_violations": sum(s["retry_after_violations"].values()),
            # the shortest time that held limit + 1 arrivals (under `per`: over the limit), and
            # the simulator's own longest GC pause (a late stamp bunches arrivals)
            "tightest_s": s.get("tightest"), "server_gc_pause_s": s["gc_longest_pause"],
            "harvest_seconds": h["seconds"],
            "met": achieved >= 0.97 and s["peak_combined"] <= requests,
        })
    return {"rows": rows, "target": 0.97}


# ---- 4. memory -----------------------------------------------------------------------------------


def memory(sizes: list[int], concurrency: int) -> dict[str, Any]:
    """Peak RSS of a harvest that lists everything (GET /articles, no filter) of N items."""
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        with Sim(items=n, seed=1) as sim, scratch() as tmp:
            start = time.perf_counter() - t0
            h = harvest(sim, tmp, {"kind": "articles"}, counters=[], concurrency=concurrency,
                        rate=UNTHROTTLED)
        rows.append({"items": n, "fetched": h["items"], "max_rss_mb": h["max_rss_mb"],
                     "arrow_pool": h["arrow_pool"],
                     "seconds": h["seconds"], "phases": h["phases"],
                     "requests": h["requests"], "simulator_start_s": start})
    base = rows[0]["max_rss_mb"]
    growth = max(r["max_rss_mb"] for r in rows) / base
    return {"rows": rows, "growth": growth, "target": 1.3, "met": growth <= 1.3}


# ---- 5. requests per item -------------------------------------------------------------------


def _by_kind(by_route: dict[str, int]) -> dict[str, int]:
    """Requests by what they were for, from the simulator's route counts."""
    out = {"listing": 0, "record": 0, "files": 0, "stats": 0, "other": 0}
    for route, n in by_route.items():
        if route.startswith(("/total/", "/{institution}/total/", "/top/", "/{institution}/top/",
                             "/timeline/", "/{institution}/timeline/", "/breakdown/",
                             "/{institution}/breakdown/", "/count")):
            out["stats"] += n
        elif route.endswith("/files"):
            out["files"] += n
        elif route.endswith(("{article_id}", "{version_id}")):
            out["record"] += n
        elif route in ("/v2/articles", "/v2/articles/search", "/v2/oai"):
            out["listing"] += n
        else:
            out["other"] += n
    return out


def modes(items: int) -> dict[str, Any]:
    """Requests per fetched item for each way of running a harvest, counted by the server."""
    rows: list[dict[str, Any]] = []

    def measure(sim: Sim, out: Path, label: str, source: dict[str, Any], **kw: Any) -> None:
        sim.ask("clear")
        try:
            h = harvest(sim, out, source, rate=UNTHROTTLED, **kw)
        except RuntimeError as exc:  # a mode the current config no longer accepts: say so
            rows.append({"mode": label, "error": str(exc)})
            return
        s = sim.ask("summary")
        rows.append({"mode": label, "items": h["items"], "requests": s["count"],
                     "per_item": s["count"] / max(h["items"], 1),
                     "by_kind": _by_kind(s["by_route"]), "faults": s["faults"]})

    with Sim(items=items, seed=1) as sim, scratch() as tmp:
        corpus = sim.ask("corpus")
        inst_id, inst_name = corpus["institutions"][0]
        user, password = corpus["stats_credentials"]
        ids = {"kind": "ids", "ids": corpus["ids"]}
        some = {"kind": "ids", "ids": corpus["ids"][:300]}
        plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("ids: records only", ids, {"counters": []}),
            ("ids: records + 3 stats totals (default)", ids, {}),
            ("articles listing: records + 3 stats totals", {"kind": "articles"}, {}),
            ("institution listing: records only",
             {"kind": "institution", "institution": inst_id}, {"counters": []}),
            ("OAI-PMH listing: records only", {"kind": "oai"}, {"counters": []}),
            ("institution, stats by tops ranking (3 counters)",
             {"kind": "institution", "institution": inst_id},
             {"config": {"stats": {"institution": inst_name, "method": "tops",
                                   "user": "${STATS_USER}", "password": "${STATS_PASSWORD}"}},
              "env": {"STATS_USER": user, "STATS_PASSWORD": password}}),
            ("ids: + monthly timelines of 3 counters", some,
             {"config": {"stats": {"timeline": {"granularity": "month",
                                                "start": "2020-01-01", "items": ["article"]}}}}),
            ("ids: + every version's record", some, {"config": {"versions": "all"}}),
        ]
        for i, (label, source, kw) in enumerate(plan):
            measure(sim, tmp / str(i), label, source, **kw)
    # the default harvest with 10% of every fault: what retries cost
    faulty = Sim(items=items, seed=1, fault_rate=0.1, fault_retry_after=0.2, stall_seconds=0.3)
    with faulty as sim, scratch() as tmp:
        measure(sim, tmp, "ids: records + 3 stats totals, 10% faults",
                {"kind": "ids", "ids": sim.ask("corpus", limit=400)["ids"]},
                retry=FAST_RETRY, timeout={"connect": 5, "read": 0.15, "total": 30})
    return {"rows": rows}


# ---- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    import pyarrow

    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "aiohttp": aiohttp.__version__,
            "pyarrow": pyarrow.__version__}


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, met) rows."""
    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    rows: list[tuple[str, str, str, str]] = []
    if t := results.get("throughput"):
        c = t["concurrency"]
        rows += [
            (f"bare aiohttp GET loop, concurrency {c}, {t['latency_ms']} ms latency",
             f"{t['bare_rps']:,.0f} req/s", "", ""),
            ("full harvest (3 stats, Parquet + NDJSON)",
             f"{t['harvest_rps']:,.0f} req/s, {t['harvest_items_per_s']:,.0f} items/s", "", ""),
            ("  fetch phase only", f"{t['harvest_fetch_rps']:,.0f} req/s", "", ""),
            ("harvest / bare loop (requests/s)", f"{t['ratio']:.2f}", ">= 0.60", yes(t["met"])),
        ]
    if w := results.get("workshop"):
        for r in w["rows"]:
            rows.append((f"speed-up over the workshop loop, {r['latency_ms']:g} ms latency "
                         f"({r['items']} items)",
                         f"x{r['speedup']:.1f} ({r['harvest_items_per_s']:,.1f} vs "
                         f"{r['workshop_items_per_s']:,.1f} items/s)", "", ""))
    if p := results.get("politeness"):
        for r in p["rows"]:
            rows.append((f"achieved / configured rate, {r['rate']} for {r['span_s']:g} s, "
                         f"{r['latency_ms']:g} ms latency, concurrency {r['concurrency']}",
                         f"{r['achieved_over_configured']:.3f}", ">= 0.97",
                         yes(r["achieved_over_configured"] >= 0.97)))
            rows.append((f"peak in any {r['rate'].split('/')[1]} window (429s, Retry-After "
                         "violations)",
                         f"{r['peak_in_window']} ({r['status_429']}, "
                         f"{r['retry_after_violations']})",
                         f"<= {r['limit']} (0, 0)",
                         yes(r["peak_in_window"] <= r["limit"] and not r["status_429"]
                             and not r["retry_after_violations"])))
    if m := results.get("memory"):
        for r in m["rows"]:
            rows.append((f"peak RSS, {r['items']:,} items listed and fetched",
                         f"{r['max_rss_mb']:,.0f} MB ({r['seconds']:,.0f} s)", "", ""))
        rows.append(("peak RSS growth, smallest -> largest", f"x{m['growth']:.2f}", "<= x1.30",
                     yes(m["met"])))
    if q := results.get("modes"):
        for r in q["rows"]:
            if "error" in r:
                rows.append((f"requests per item, {r['mode']}", "not run", r["error"], ""))
                continue
            k = r["by_kind"]
            detail = ", ".join(f"{name} {n:,}" for name, n in k.items() if n)
            rows.append((f"requests per item, {r['mode']}", f"{r['per_item']:.3f}",
                         f"{r['items']:,} items: {detail}", ""))
    return rows


def render(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("figure", "value", "target / detail", "met")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    def line(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


SECTIONS = ("throughput", "workshop", "politeness", "memory", "modes")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="add the 1,000,000-item memory run")
    ap.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--results", type=Path, default=RESULTS, metavar="DIR",
                    help=f"where the JSON goes (default: {RESULTS})")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if unknown := only - set(SECTIONS):
        ap.error(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    q = args.quick
    c = args.concurrency
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "throughput": lambda: throughput(300 if q else 3_000, c, 1 if q else 9),
        "workshop": lambda: workshop(
            [(LATENCY_MS, 50), (20, 20), (100, 5)] if q
            else [(LATENCY_MS, 1_000), (20, 250), (100, 60)], c),
        # (requests, per, span, latency ms, concurrency); the last: slow answers, many in flight
        "politeness": lambda: politeness(
            [(20, 1.0, 2, 20, 4), (1, 1.0, 2, 20, 4), (20, 1.0, 2, 300, 8)] if q
            else [(20, 1.0, 60, 20, 4), (1, 1.0, 30, 20, 4), (20, 1.0, 60, 300, 8)]),
        "memory": lambda: memory(
            [1_000, 3_000] if q else [10_000, 100_000, *([1_000_000] if args.big else [])], c),
        "modes": lambda: modes(300 if q else 2_000),
    }
    results: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "machine": machine(), "quick": q}
    t0 = time.perf_counter()
    for name in SECTIONS:
        if name in only:
            started = time.perf_counter()
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            results[name] = runs[name]()
            print(f"[{name}] done in {time.perf_counter() - started:.0f} s", file=sys.stderr,
                  flush=True)
    results["seconds"] = time.perf_counter() - t0
    results["table"] = table(results)
    out = args.results
    out.mkdir(parents=True, exist_ok=True)
    body = orjson.dumps(results, option=orjson.OPT_INDENT_2)
    stamp = results["date"].replace("-", "").replace(":", "")
    (out / f"bench-{stamp}.json").write_bytes(body)
    (out / "latest.json").write_bytes(body)
    m = results["machine"]
    print(f"\n{results['date']}  {m['cores']} cores, {m['cpu']}, Python {m['python']}")
    print(render(results["table"]))
    print(f"\nJSON: {out / f'bench-{stamp}.json'}  ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
