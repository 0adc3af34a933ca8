"""The simulator harness and its misbehaviour middlewares, over real loopback sockets."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from harvester.simulator import Simulator, SimulatorThread
from harvester.simulator.behaviour import UNMATCHED, LogEntry, RequestLog, fault_for, latency_for
from harvester.simulator.settings import SimSettings

ROOT = Path(__file__).resolve().parents[1]
BODY = {"ok": True, "padding": "x" * 200}


async def ok(request: web.Request) -> web.Response:
    return web.json_response(BODY)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.2)
    return web.json_response(BODY)


def make_sim(**knobs: object) -> Simulator:
    """A simulator with a few trivial test routes on both hosts."""
    sim = Simulator(SimSettings(items=10, **knobs))  # type: ignore[arg-type]
    for app in (sim.api_app, sim.stats_app):
        app.router.add_get("/_test/ok", ok)
        app.router.add_post("/_test/ok", ok)
        app.router.add_get("/_test/slow", slow)
    return sim


def api(sim: Simulator, path: str) -> str:
    return sim.api_url.removesuffix("/v2") + path


def stats(sim: Simulator, path: str) -> str:
    return sim.stats_url + path


async def fetch(http: aiohttp.ClientSession, url: str, **kw: object) -> tuple[int, str, bytes]:
    async with http.get(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, resp.headers.get("Retry-After", ""), await resp.read()


async def wait_for_entries(sim: Simulator, n: int) -> None:
    """Handlers cut short by the client end (and are logged) a moment after the client gives up."""
    deadline = time.monotonic() + 2.0
    while sim.log.count() < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_peak_in_window_counts_half_open_windows_exactly() -> None:
    log = RequestLog()
    for t in (0.0, 0.5, 0.9, 1.0, 1.2, 3.0):
        log.entries.append(LogEntry(t, "api", "GET", "/", "", "/", 200, None, None))
    log.entries.append(LogEntry(1.1, "stats", "GET", "/", "", "/", 200, None, None))
    assert log.peak_in_window("api", 1.0) == 4  # [0.5, 1.5): 0.5, 0.9, 1.0, 1.2
    assert log.peak_in_window("api", 0.5) == 3  # [0.5, 1.0) holds 2; [0.9, 1.4) holds 3
    assert log.peak_in_window("api", 10.0) == 6
    assert log.peak_in_window("stats", 1.0) == 1
    assert log.peak_in_window("nowhere", 1.0) == 0


async def test_log_counts_routes_statuses_and_peak() -> None:
    async with make_sim() as sim, aiohttp.ClientSession() as http:
        for _ in range(5):
            assert (await fetch(http, api(sim, "/_test/ok")))[0] == 200
        for _ in range(3):
            assert (await fetch(http, stats(sim, "/_test/ok?x=1")))[0] == 200
        assert (await fetch(http, api(sim, "/_test/missing")))[0] == 404
    log = sim.log
    assert log.count() == 9
    assert log.count("api") == 6
    assert log.count("api", "/_test/ok") == 5
    assert log.by_route() == {"/_test/ok": 8, UNMATCHED: 1}
    assert log.by_route("stats") == {"/_test/ok": 3}
    assert [e.status for e in log.entries if e.host == "api"] == [200] * 5 + [404]
    assert {e.query for e in log.entries if e.host == "stats"} == {"x=1"}
    times = [e.t for e in log.entries if e.host == "api"]
    brute = max(sum(1 for u in times if t <= u < t + 0.002) for t in times)
    assert log.peak_in_window("api", 0.002) == brute
    assert log.peak_in_window("api", 60.0) == 6
    log.clear()
    assert log.count() == 0
    assert log.max_in_flight("api") == 0


async def test_max_in_flight_counts_concurrent_requests() -> None:
    async with make_sim() as sim, aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(fetch(http, api(sim, "/_test/slow")) for _ in range(4)))
        assert [s for s, _, _ in statuses] == [200] * 4
        await fetch(http, api(sim, "/_test/slow"))
    assert sim.log.max_in_flight("api") == 4
    assert sim.log.max_in_flight("stats") == 0


async def test_rate_limit_answers_429_whose_retry_after_frees_a_slot() -> None:
    async with make_sim(rate_limit=(3, 1.0)) as sim, aiohttp.ClientSession() as http:
        results = [await fetch(http, api(sim, "/_test/ok")) for _ in range(4)]
        assert [s for s, _, _ in results] == [200, 200, 200, 429]
        _, retry_after, body = results[-1]
        assert retry_after.isdigit() and int(retry_after) >= 1
        assert b'"TooManyRequests"' in body
        # the stats host keeps its own window
        assert (await fetch(http, stats(sim, "/_test/ok")))[0] == 200
        await asyncio.sleep(int(retry_after))
        assert (await fetch(http, api(sim, "/_test/ok")))[0] == 200
    assert sim.log.retry_after_violations("api") == 0
    assert [e.fault for e in sim.log.entries] == [None] * 6


async def test_retry_after_violations_count_requests_sent_too_early() -> None:
    knobs = {"fault_rate": 1.0, "fault_kinds": ("429",), "fault_retry_after": 0.3}
    async with make_sim(**knobs) as sim, aiohttp.ClientSession() as http:
        status, retry_after, _ = await fetch(http, api(sim, "/_test/ok"))
        assert (status, retry_after) == (429, "0.3")
        await asyncio.sleep(0.1)
        await fetch(http, api(sim, "/_test/ok"))  # too early
        await asyncio.sleep(0.45)
        await fetch(http, api(sim, "/_test/ok"))  # waited long enough
    assert sim.log.retry_after_violations("api") == 1
    assert sim.log.retry_after_violations("stats") == 0


async def test_abuse_turns_into_403_html_after_n_violations_and_stays() -> None:
    async with (
        make_sim(rate_limit=(1, 60.0), abuse_after=2) as sim,
        aiohttp.ClientSession() as http,
    ):
        statuses = []
        for _ in range(5):
            async with http.get(api(sim, "/_test/ok")) as resp:
                statuses.append(resp.status)
                page = await resp.text()
                kind = resp.content_type
        assert statuses == [200, 429, 429, 403, 403]
        assert kind == "text/html"
        assert "Access denied" in page and "api.figshare.com" in page
        # the block is per host: stats was never abused
        assert (await fetch(http, stats(sim, "/_test/ok")))[0] == 200
        sim.update(rate_limit=None, abuse_after=None)
        assert (await fetch(http, api(sim, "/_test/ok")))[0] == 200


async def test_latency_holds_requests_and_updates_apply_at_once() -> None:
    async with (
        make_sim(latency_ms=150.0, latency_jitter_ms=50.0) as sim,
        aiohttp.ClientSession() as http,
    ):
        for seq in range(3):
            expected = latency_for(sim.settings, "api", seq)
            assert 0.1 <= expected <= 0.2
            started = time.monotonic()
            await fetch(http, api(sim, "/_test/ok"))
            assert time.monotonic() - started >= expected  # a sleep never ends early
        # Without latency nothing suspends a request, so a burst is served one at a time...
        sim.update(latency_ms=0.0, latency_jitter_ms=0.0)
        await asyncio.gather(*(fetch(http, api(sim, "/_test/ok")) for _ in range(5)))
        assert sim.log.max_in_flight("api") == 1
        # ...and with latency back, the same burst is held in the server side by side.
        sim.update(latency_ms=300.0)
        await asyncio.gather(*(fetch(http, api(sim, "/_test/ok")) for _ in range(5)))
        assert sim.log.max_in_flight("api") > 1
        assert sim.log.count("api", "/_test/ok") == 13


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [
        ("500", 500, "application/json"),
        ("502", 502, "text/html"),
        ("503", 503, "text/html"),
        ("429", 429, "application/json"),
    ],
)
async def test_error_faults_answer_like_the_app_or_its_proxy(
    kind: str, status: int, content_type: str
) -> None:
    knobs = {"fault_rate": 1.0, "fault_kinds": (kind,), "fault_retry_after": 2.0}
    async with (
        make_sim(**knobs) as sim,
        aiohttp.ClientSession() as http,
        http.get(api(sim, "/_test/ok")) as resp,
    ):
        assert resp.status == status
        assert resp.content_type == content_type
        assert resp.headers.get("Retry-After") == ("2" if kind == "429" else None)
        await resp.read()
    assert [(e.status, e.fault) for e in sim.log.entries] == [(status, kind)]


async def test_reset_fault_cuts_the_connection() -> None:
    async with (
        make_sim(fault_rate=1.0, fault_kinds=("reset",)) as sim,
        aiohttp.ClientSession() as http,
    ):
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            async with http.post(api(sim, "/_test/ok")) as resp:
                await resp.read()
        # aiohttp's client retries an idempotent request once by itself: both are cut
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await fetch(http, api(sim, "/_test/ok"))
    entries = sim.log.entries
    assert entries[0].method == "POST"
    assert len(entries) >= 2
    assert {(e.status, e.fault) for e in entries} == {(0, "reset")}


async def test_truncate_fault_sends_less_than_content_length() -> None:
    async with (
        make_sim(fault_rate=1.0, fault_kinds=("truncate",)) as sim,
        aiohttp.ClientSession() as http,
        http.get(api(sim, "/_test/ok")) as resp,
    ):
        assert resp.status == 200
        assert resp.content_length is not None and resp.content_length > 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert [(e.status, e.fault) for e in sim.log.entries] == [(0, "truncate")]


async def test_stall_fault_times_the_client_out() -> None:
    knobs = {"fault_rate": 1.0, "fault_kinds": ("stall",), "stall_seconds": 5.0}
    async with make_sim(**knobs) as sim:
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await fetch(http, api(sim, "/_test/ok"))
            assert time.monotonic() - started < knobs["stall_seconds"]  # gave up, never waited
        await wait_for_entries(sim, 1)
    assert [(e.status, e.fault) for e in sim.log.entries] == [(0, "stall")]


async def test_short_stall_still_answers_in_full() -> None:
    knobs = {"fault_rate": 1.0, "fault_kinds": ("stall",), "stall_seconds": 0.2}
    async with make_sim(**knobs) as sim, aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.get(api(sim, "/_test/ok")) as resp:
            assert resp.status == 200
            assert await resp.json() == BODY
        assert time.monotonic() - started >= 0.2
    assert [(e.status, e.fault) for e in sim.log.entries] == [(200, "stall")]


async def test_stop_is_quick_with_a_stalled_request_pending() -> None:
    sim = make_sim(fault_rate=1.0, fault_kinds=("stall",), stall_seconds=30.0)
    await sim.start()
    async with aiohttp.ClientSession() as http:
        pending = asyncio.create_task(fetch(http, api(sim, "/_test/ok")))
        while sim.log.max_in_flight("api") == 0:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await sim.stop()
        assert time.monotonic() - started < 10.0  # not the 30 s stall
        with pytest.raises(aiohttp.ClientError):
            await pending
    assert [(e.status, e.fault) for e in sim.log.entries] == [(0, "stall")]


async def test_fault_selection_is_deterministic_for_a_seed() -> None:
    async def run(seed: int) -> list[tuple[int, str | None]]:
        knobs = {"seed": seed, "fault_rate": 0.4, "fault_kinds": ("500", "503", "429")}
        async with make_sim(**knobs) as sim, aiohttp.ClientSession() as http:
            for _ in range(30):
                await fetch(http, api(sim, "/_test/ok"))
        expected = [fault_for(sim.settings, "api", seq) for seq in range(30)]
        assert [e.fault for e in sim.log.entries] == expected
        return [(e.status, e.fault) for e in sim.log.entries]

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert first != other
    assert 0 < sum(1 for _, fault in first if fault) < 30
    assert {status for status, fault in first if fault is None} == {200}


async def test_credentials_seen_per_host() -> None:
    async with make_sim() as sim, aiohttp.ClientSession() as http:
        await fetch(http, api(sim, "/_test/ok"), headers={"Authorization": "token a"})
        await fetch(http, api(sim, "/_test/ok"), headers={"Authorization": "token b"})
        await fetch(http, api(sim, "/_test/ok"))
        await fetch(http, stats(sim, "/_test/ok"), headers={"Authorization": "Basic c2ltOng="})
    assert sim.log.credentials_seen("api") == {"token a", "token b"}
    assert sim.log.credentials_seen("stats") == {"Basic c2ltOng="}


def test_update_refuses_corpus_and_unknown_fields() -> None:
    sim = make_sim(seed=3)
    with pytest.raises(ValueError, match="items"):
        sim.update(items=20)
    with pytest.raises(ValueError, match="valid"):
        sim.update(no_such_knob=1)
    assert sim.update(seed=3, fault_rate=0.5).fault_rate == 0.5
    with pytest.raises(RuntimeError):
        _ = sim.api_url


async def test_two_hosts_listen_on_their_own_ports() -> None:
    async with make_sim() as sim:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v2", sim.api_url)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.stats_url)
        assert sim.api_url.removesuffix("/v2") != sim.stats_url


def test_simulator_thread_serves_synchronous_callers() -> None:
    with SimulatorThread(SimSettings(items=10)) as background:
        url = background.stats_url + "/_test/nothing"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url, timeout=5)
        missing.value.close()
        assert missing.value.code == 404
        background.update(abuse_after=0)  # everyone counts as blocked from now on
        with pytest.raises(urllib.error.HTTPError) as blocked:
            urllib.request.urlopen(url, timeout=5)
        page = blocked.value.read().decode()
        blocked.value.close()
        assert blocked.value.code == 403 and "Access denied" in page
        assert background.log.count("stats") == 2
        assert background.settings.abuse_after == 0


def test_serve_forever_prints_urls_first_and_exits_cleanly_on_sigint() -> None:
    code = (
        "from harvester.simulator import serve_forever\n"
        "from harvester.simulator.settings import SimSettings\n"
        "serve_forever(SimSettings(items=10))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            found = re.fullmatch(
                r"api=(http://127\.0\.0\.1:\d+/v2) stats=(http://127\.0\.0\.1:\d+)\n", line
            )
            assert found, line
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(found[2] + "/_test/nothing", timeout=5)
            missing.value.close()
            assert missing.value.code == 404
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
