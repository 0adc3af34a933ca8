"""Peak memory of a harvest against a hostile server: 10 MB records, gzip bombs, 100,000 tags.

    python benchmarks/hostile_memory.py            # about a minute on 2 cores
    python benchmarks/hostile_memory.py --quick    # a few ids per case: checks the script works

Each harvest runs as `python -m harvester run` in a fresh process that reports its own peak RSS
(VmHWM) as it exits; the server runs in this process. The target (issue 26): peak RSS within
the baseline (the same harvest of ordinary records) plus 2x http.max_body.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from harvester.simulator import ThreadedApp
from harvester.simulator.corpus import Corpus
from harvester.simulator.settings import SimSettings

MB = 2**20
FIRST_ID = 1_000
TEMPLATE = Corpus(SimSettings(items=1, seed=26))
BASE = TEMPLATE.article(TEMPLATE.ids[0])
HTTP = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 4,
        "retry": {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.02}}


# `python -m harvester ARGS` that writes its own peak RSS (MB, workloads.max_rss_mb) to a file
# as it exits: wait4's ru_maxrss would include this process's peak, inherited at exec
PEAK_AT_EXIT = """
import atexit, runpy, sys
sys.path.insert(0, sys.argv[1])
from workloads import max_rss_mb
def peak(path=sys.argv[2]):
    with open(path, "w") as out:
        out.write(str(max_rss_mb()))
atexit.register(peak)
sys.argv = ["harvester", *sys.argv[3:]]
runpy.run_module("harvester", run_name="__main__")
"""


def record(aid: int, **fields: Any) -> bytes:
    return orjson.dumps({**BASE, "id": aid, **fields})


def gzip_bomb(size: int) -> bytes:
    """A gzip body of `size` bytes of JSON text once decompressed (compressed in 1 MB steps)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(b'{"id":1,"description":"')]
    block = b"a" * MB
    out += [z.compress(block) for _ in range(size // MB)]
    out.append(z.compress(b'"}') + z.flush())
    return b"".join(out)


def serving(body: Callable[[int], bytes], headers: dict[str, str]) -> ThreadedApp:
    """A server of records by id from `body(aid)`; every response carries `headers`."""

    async def article(request: web.Request) -> web.Response:
        return web.Response(body=body(int(request.match_info["id"])), headers=headers)

    return ThreadedApp(lambda app: app.router.add_get("/v2/articles/{id}", article))


def harvest(server: ThreadedApp, n: int, max_body: int, root: Path,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """One harvest of n ids in a fresh process: its exit code, peak RSS (MB) and wall time."""
    cfg = {"name": "m", "api": {"url": server.url + "/v2"}, "stats": {"counters": []},
           "http": {**HTTP, "max_body": max_body}, "output": {"dir": str(root / "out")},
           "sources": [{"kind": "ids", "ids": list(range(FIRST_ID, FIRST_ID + n))}]}
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    peak = root / "peak"
    start = time.monotonic()
    child = subprocess.run([sys.executable, "-c", PEAK_AT_EXIT, str(Path(__file__).parent),
                            str(peak), "run", str(path), "--accept-drop"],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                           check=False)
    return {"exit": child.returncode, "peak_rss_mb": round(float(peak.read_text()), 1),
            "seconds": round(time.monotonic() - start, 1)}


Case = tuple[str, int, Callable[[int], bytes], dict[str, str], dict[str, str]]
# glibc keeps freed blocks this large in each thread's heap once one has been freed (its mmap
# threshold rises to them); an operator's fixed threshold hands them back (docs/GUIDE.md)
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(MB)}


def cases(quick: bool) -> list[Case]:
    scale = 4 if quick else 1
    bomb = gzip_bomb(512 * MB // (8 if quick else 1))
    big = base64.b64encode(random.Random(26).randbytes(10 * MB * 3 // 4)).decode()  # LZ4 keeps it
    tags = [f"tag number {k}" for k in range(100_000)]
    json_type = {"Content-Type": "application/json"}
    return [
        ("baseline (5 KB records)", 60 // scale, record, json_type, {}),
        ("10 MB records", 60 // scale, lambda aid: record(aid, description=big), json_type, {}),
        (f"gzip bombs ({len(bomb) / MB:.2f} MB -> {512 // (8 if quick else 1)} MB)",
         20 // scale, lambda aid: bomb, {**json_type, "Content-Encoding": "gzip"}, {}),
        ("100,000 tags per record", 20 // scale, lambda aid: record(aid, tags=tags), json_type,
         {}),
        ("10 MB records, fixed mmap threshold", 60 // scale,
         lambda aid: record(aid, description=big), json_type, FIXED_MMAP),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few ids per case")
    parser.add_argument("--max-body", type=int, default=64 * MB, help="http.max_body in bytes")
    args = parser.parse_args(argv)
    limit_mb = args.max_body / MB
    print(f"http.max_body {limit_mb:.0f} MB; target: peak RSS <= baseline + {2 * limit_mb:.0f} MB")
    baseline = None
    for name, n, body, headers, env in cases(args.quick):
        with tempfile.TemporaryDirectory() as tmp, serving(body, headers) as server:
            got = harvest(server, n, args.max_body, Path(tmp), env)
        if baseline is None:
            baseline = got["peak_rss_mb"]
        over = got["peak_rss_mb"] - baseline
        verdict = "ok" if over <= 2 * limit_mb else "OVER"
        print(f"{name:<38} {n:>3} ids  exit {got['exit']}  peak {got['peak_rss_mb']:>7.1f} MB  "
              f"baseline+{over:>6.1f} MB  {got['seconds']:>5.1f} s  {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
