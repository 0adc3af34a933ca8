"""Transport tests: real aiohttp.web servers on loopback; limiter and backoff in controlled time."""

from __future__ import annotations

import asyncio
import email.utils
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from harvester.client import (
    UNREACHABLE_AFTER,
    Client,
    ClientSettings,
    RateLimit,
    RetryPolicy,
    SlidingWindow,
    _Call,
    _transport_error,
    backoff_delay,
    origin_of,
    parse_retry_after,
    safety_margin,
    sanitize_url,
    start_delay,
)
from harvester.errors import (
    AuthError,
    BadResponse,
    Blocked,
    GiveUp,
    NotFound,
    RequestError,
    Unreachable,
    WindowExhausted,
)

UA = "harvester-tests/1 (mailto:test@example.org)"
FAST = RetryPolicy(attempts=4, backoff_base=0.01, backoff_max=0.02)
FREE = RateLimit(1000, 1.0)

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    t: float  # time.monotonic() at arrival
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    url: str
    seen: list[Seen] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return origin_of(self.url)

    def auth_seen(self) -> set[str | None]:
        return {s.headers.get("Authorization") for s in self.seen}


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start inline servers: `await serve(handler)`; handler(request, n) gets the arrival index."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> Server:
        server = Server("")

        async def endpoint(request: web.Request) -> web.StreamResponse:
            server.seen.append(Seen(time.monotonic(), request.method, request.path_qs,
                                    dict(request.headers), await request.read()))
            return await handler(request, len(server.seen))

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", endpoint)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def ok(body: object = None) -> web.Response:
    return web.json_response({"ok": True} if body is None else body)


class FakeTime:
    """A clock that only moves when someone sleeps; sleepers wake no earlier than asked."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, target)


def settings(**kw: object) -> ClientSettings:
    base: dict[str, object] = {"user_agent": UA, "default_rate": FREE, "retry": FAST}
    return ClientSettings(**{**base, **kw})  # type: ignore[arg-type]


def peak_in_window(times: list[float], per: float) -> int:
    """Most arrivals within any closed window of `per` seconds."""
    times = sorted(times)
    j, best = 0, 0
    for i, t in enumerate(times):
        while t - times[j] > per:
            j += 1
        best = max(best, i - j + 1)
    return best


# ---- pure policy arithmetic ------------------------------------------------------------------


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=10.0)
    assert [backoff_delay(n, policy, lambda: 1.0) for n in (1, 2, 3, 4, 5, 60, 5000)] == [
        1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0
    ]
    assert backoff_delay(3, policy, lambda: 0.0) == 0.0
    assert backoff_delay(3, policy, lambda: 0.25) == 1.0


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for junk in (None, "", "-5", "soon", "nan", "inf"):
        assert parse_retry_after(junk, now) is None


def test_sliding_window_arithmetic_in_controlled_time() -> None:
    rate = RateLimit(5, 1.0)
    starts: list[float] = []
    now = 0.0
    for _ in range(200):
        now += start_delay(starts, now, rate)
        starts.append(now)
    assert peak_in_window(starts, rate.per) == 5  # closed windows: never 6
    achieved = (len(starts) - rate.requests) / (starts[-1] - starts[0])
    assert achieved >= 0.97 * rate.requests / rate.per
    assert start_delay(starts[:4], 0.0, rate) == 0.0  # a window not yet full never waits
    # admitted starts not yet on the wire take their places first
    step = rate.per + safety_margin(rate)
    assert start_delay([0.0, 0.1, 0.2], 0.3, rate, pending=1) == 0.0
    assert start_delay([0.0, 0.1, 0.2], 0.3, rate, pending=2) == pytest.approx(step - 0.3)
    assert start_delay([0.0, 0.1, 0.2], 0.3, rate, pending=3) == pytest.approx(step - 0.2)
    assert start_delay([], 0.0, rate, pending=5) == math.inf  # only a pending one ending helps
    assert safety_margin(RateLimit(1, 1.0)) == pytest.approx(0.025)
    assert safety_margin(RateLimit(60, 3600.0)) == 0.25


def test_sliding_window_keeps_only_starts_that_can_still_delay() -> None:
    """A generous limit must not cost memory per request: a harvest of a million items at
    1,000,000 per second once kept a million start times. Same delays as the full history."""
    rate = RateLimit(1_000, 1.0)
    window = SlidingWindow(rate)
    history: list[float] = []
    now = 0.0
    for i in range(20_000):
        now += 0.004 if i % 500 else 2.0  # 250/s with a pause now and then
        assert window.delay(now) == start_delay(history, now, rate)
        window.record(now)
        history.append(now)
        assert len(window.starts) <= 260  # what one window of 1.025 s holds at 250/s
    tight = SlidingWindow(RateLimit(3, 1.0))
    for t in (0.0, 0.1, 0.2):
        tight.record(t)
    assert tight.delay(0.3) == pytest.approx(1.025 - 0.3)  # a full window still waits
    tight.record(5.0)
    assert list(tight.starts) == [5.0]


def test_sanitize_and_origin() -> None:
    url = "https://u:p@api.figshare.com/v2/x?page=2&access_token=S1&TOKEN=S2&private_link=S3#f"
    assert sanitize_url(url) == "https://api.figshare.com/v2/x?page=2"
    assert origin_of("https://stats.figshare.com/total") == "https://stats.figshare.com:443"
    assert origin_of("HTTP://LocalHost:8080/a") == "http://localhost:8080"
    s = ClientSettings(user_agent=UA, credentials={"https://stats.figshare.com": "Basic QQ=="})
    assert dict(s.credentials) == {"https://stats.figshare.com:443": "Basic QQ=="}
    assert "QQ==" not in repr(s)
    hash(s)  # frozen settings stay hashable


# ---- the limiter through the client -----------------------------------------------------------


async def test_limiter_schedule_with_fake_clock(serve: Callable[..., Awaitable[Server]]) -> None:
    fake = FakeTime()

    async def handler(request: web.Request, n: int) -> web.Response:
        return ok()

    server = await serve(handler)
    rate = RateLimit(5, 1.0)
    async with Client(settings(default_rate=rate, concurrency=8),
                      clock=fake.clock, sleep=fake.sleep) as client:
        await asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(23)))
    # Bursts of 5 at 0, step, 2*step, ...: one waiter (the head of the origin's queue) sleeps
    # exactly until the oldest start of the full window is `per` + margin old.
    step = rate.per + safety_margin(rate)
    assert fake.sleeps == pytest.approx([step] * 4)
    assert fake.now == pytest.approx(1000.0 + 4 * step)
    assert len(server.seen) == 23


async def test_rate_window_on_server_clock_with_retries(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=503) if n % 7 == 0 else ok()

    server = await serve(handler)
    rate = RateLimit(10, 0.5)
    async with Client(settings(default_rate=rate, concurrency=8)) as client:
        await asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(60)))
        metrics = client.metrics()
    arrivals = [s.t for s in server.seen]
    assert len(arrivals) > 60  # retries happened and were counted by the window too
    assert metrics["retries"]["503"] == len(arrivals) - 60
    assert peak_in_window(arrivals, rate.per) <= rate.requests
    achieved = (len(arrivals) - rate.requests) / (max(arrivals) - min(arrivals))
    assert achieved >= 0.9 * rate.requests / rate.per


async def test_a_pause_before_the_request_is_written_never_bunches_arrivals(
    serve: Callable[..., Awaitable[Server]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start counts from when the request is on the wire, not from when its connection was
    ready: a pause in between (a garbage collection, another thread holding the GIL) once let
    21 requests arrive within one second at 20 per second (benchmark, politeness section)."""
    async def handler(request: web.Request, n: int) -> web.Response:
        return ok()

    server = await serve(handler)
    original = aiohttp.ClientRequest.send
    paused: list[float] = []

    async def pausing_send(self: aiohttp.ClientRequest, conn: Any) -> aiohttp.ClientResponse:
        if not paused:  # the first request stalls after its connection is up, before writing
            paused.append(time.monotonic())
            time.sleep(0.15)
        return await original(self, conn)

    monkeypatch.setattr(aiohttp.ClientRequest, "send", pausing_send)
    rate = RateLimit(10, 0.5)
    async with Client(settings(default_rate=rate, concurrency=4)) as client:
        await asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(25)))
    arrivals = [s.t for s in server.seen]
    assert paused and len(arrivals) == 25
    assert peak_in_window(arrivals, rate.per) <= rate.requests


async def test_a_send_slow_to_get_on_the_wire_holds_up_no_other(
    serve: Callable[..., Awaitable[Server]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send waiting before its request is written (a TLS handshake to a distant host, a new
    connection) must not hold the others: the origin was once locked until each start was
    recorded, so every send waited for the one before it to be on the wire."""
    async def handler(request: web.Request, n: int) -> web.Response:
        return ok()

    server = await serve(handler)
    original = aiohttp.ClientRequest.send

    async def slow_first(self: aiohttp.ClientRequest, conn: Any) -> aiohttp.ClientResponse:
        if self.url.path == "/a/0":
            await asyncio.sleep(0.5)
        return await original(self, conn)

    monkeypatch.setattr(aiohttp.ClientRequest, "send", slow_first)
    async with Client(settings(concurrency=4)) as client:
        first = asyncio.create_task(client.get(f"{server.url}/a/0"))
        await asyncio.sleep(0.05)  # it is admitted and stalls before writing
        t0 = time.monotonic()
        await asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(1, 13)))
        others = time.monotonic() - t0
        await first
    assert others < 0.4  # they did not wait for the stalled one
    assert [s.path_qs for s in server.seen][-1] == "/a/0"


async def test_sends_admitted_but_not_yet_written_count_in_the_window(
    serve: Callable[..., Awaitable[Server]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Admitted sends go on side by side; until its request is written each holds a place in
    every window, so sends that stall before writing never let the window overfill."""
    async def handler(request: web.Request, n: int) -> web.Response:
        return ok()

    server = await serve(handler)
    original = aiohttp.ClientRequest.send

    async def stalling(self: aiohttp.ClientRequest, conn: Any) -> aiohttp.ClientResponse:
        n = int(self.url.path.rsplit("/", 1)[1])
        await asyncio.sleep((0.0, 0.05, 0.2)[n % 3])
        return await original(self, conn)

    monkeypatch.setattr(aiohttp.ClientRequest, "send", stalling)
    rate = RateLimit(4, 0.5)
    async with Client(settings(default_rate=rate, concurrency=6)) as client:
        await asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(30)))
        metrics = client.metrics()
    arrivals = [s.t for s in server.seen]
    assert len(arrivals) == 30 and sum(metrics["requests"].values()) == 30
    assert peak_in_window(arrivals, rate.per) <= rate.requests
    achieved = (len(arrivals) - rate.requests) / (max(arrivals) - min(arrivals))
    assert achieved >= 0.6 * rate.requests / rate.per  # stalled sends keep their places


async def test_shared_origins_draw_on_one_budget(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return ok()

    api, stats = await serve(handler), await serve(handler)
    rate = RateLimit(6, 0.4)
    shared = settings(default_rate=rate, concurrency=6, shared_origins=(api.url, stats.url))
    async with Client(shared) as client:
        await asyncio.gather(*(client.get(f"{(api, stats)[i % 2].url}/x/{i}") for i in range(30)))
    arrivals = [s.t for s in api.seen + stats.seen]
    assert len(api.seen) == len(stats.seen) == 15
    assert peak_in_window(arrivals, rate.per) <= rate.requests  # both hosts together
    achieved = (len(arrivals) - rate.requests) / (max(arrivals) - min(arrivals))
    assert achieved >= 0.9 * rate.requests / rate.per


async def test_429_retry_after_holds_every_task(serve: Callable[..., Awaitable[Server]]) -> None:
    sent_429: list[float] = []

    async def handler(request: web.Request, n: int) -> web.Response:
        if n == 1:
            sent_429.append(time.monotonic())
            return web.Response(status=429, headers={"Retry-After": "1"})
        return ok()

    server = await serve(handler)
    other = await serve(lambda request, n: asyncio.sleep(0, ok()))
    # Starts 50 ms apart, so the 429 is back before the second request may start.
    async with Client(settings(default_rate=RateLimit(1, 0.05), concurrency=4)) as client:
        held = asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(4)))
        await asyncio.sleep(0.2)
        await client.get(f"{other.url}/free")  # another origin is not held
        replies = await held
        metrics = client.metrics()
    assert all(r.data == {"ok": True} for r in replies)
    assert len(server.seen) == 5
    assert all(s.t >= sent_429[0] + 1.0 for s in server.seen[1:])
    assert other.seen[0].t < sent_429[0] + 0.5
    assert metrics["retries"] == {"429": 1}
    assert metrics["retry_after_wait_s"] >= 0.9


async def test_http_date_retry_after(serve: Callable[..., Awaitable[Server]]) -> None:
    until: list[float] = []

    async def handler(request: web.Request, n: int) -> web.Response:
        if n == 1:
            until.append(int(time.time()) + 2.0)
            date = email.utils.formatdate(until[0], usegmt=True)
            return web.Response(status=429, headers={"Retry-After": date})
        until.append(time.time())
        return ok()

    server = await serve(handler)
    async with Client(settings()) as client:
        await client.get(f"{server.url}/x")
    assert len(server.seen) == 2
    assert until[1] >= until[0]


async def test_retry_after_beyond_max_gives_up_without_sending_more(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    fake = FakeTime()

    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "3600"})

    server = await serve(handler)
    policy = RetryPolicy(retry_after_max=900.0)
    async with Client(settings(retry=policy), clock=fake.clock, sleep=fake.sleep) as client:
        with pytest.raises(GiveUp, match="Retry-After 3600s"):
            await client.get(f"{server.url}/a")
        with pytest.raises(GiveUp, match="held by Retry-After"):
            await client.get(f"{server.url}/b")
    assert len(server.seen) == 1
    assert fake.sleeps == []


# ---- retries and give-up ----------------------------------------------------------------------


async def test_503_retried_with_backoff_then_success_and_metrics(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    fake = FakeTime()

    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=503, text="busy") if n < 3 else ok({"id": 7})

    server = await serve(handler)
    policy = RetryPolicy(attempts=6, backoff_base=1.0, backoff_max=60.0)
    async with Client(settings(retry=policy), clock=fake.clock, sleep=fake.sleep,
                      rand=lambda: 0.5) as client:
        reply = await client.get(f"{server.url}/articles/7")
        metrics = client.metrics()
    assert reply.status == 200 and reply.data == {"id": 7} and reply.json() == {"id": 7}
    assert reply.headers["content-type"].startswith("application/json")
    assert fake.sleeps == [0.5, 1.0]  # full jitter (rand=0.5) of 1 s, then 2 s
    assert len(server.seen) == 3
    assert metrics["requests"] == {server.origin: 3}
    assert metrics["responses"] == {"503": 2, "200": 1}
    assert metrics["retries"] == {"503": 2}
    assert metrics["bytes"] == 2 * len(b"busy") + len(reply.body)
    assert metrics["circuits_opened"] == []
    orjson.dumps(metrics)  # manifest-ready


async def test_reset_and_truncated_body_are_retried(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        assert request.transport is not None
        if n <= 2:  # connection reset before any response (twice: aiohttp's own resend is off)
            request.transport.abort()
            return web.Response()
        if n == 3:
            resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": "1000"})
            await resp.prepare(request)
            await resp.write(b'{"id": 1, "tit')
            request.transport.close()
            return resp
        return ok({"id": 1})

    server = await serve(handler)
    async with Client(settings()) as client:
        reply = await client.get(f"{server.url}/articles/1")
        metrics = client.metrics()
    assert reply.data == {"id": 1}
    assert metrics["retries"] == {"reset": 2, "truncated": 1}
    assert len(server.seen) == 4
    assert metrics["requests"] == {server.origin: 4}  # every send took (and counted) a slot


async def hang_up(request: web.Request) -> None:
    """Send nothing more until the client gives up on the connection (at most 30 s)."""
    for _ in range(600):
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.05)


async def test_the_read_timeout_ends_a_silent_exchange_not_a_slow_one(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """http.timeout.read: `read` seconds with no byte end the attempt, before the head or
    inside the body; a body that keeps coming may take longer than `read` in all."""
    read = 0.3

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.path == "/silent" and n == 1:
            await hang_up(request)  # no head at all
            return web.Response()  # to a connection the client has closed
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if request.path == "/stall" and n == 1:
            await resp.write(b'{"id": 1, ')
            await hang_up(request)  # the head and a part, then nothing
            return resp
        if request.path == "/steady":  # 1.2 s in all, never 0.3 s without a byte
            for _ in range(8):
                await resp.write(b" ")
                await asyncio.sleep(read / 2)
        await resp.write(b'{"id": 1}')
        await resp.write_eof()
        return resp

    for path in ("/silent", "/stall"):
        server = await serve(handler)  # a new server: the first request to each path stalls
        async with Client(settings(read_timeout=read, total_timeout=20)) as client:
            started = time.monotonic()
            reply = await client.get(f"{server.url}{path}")
            took = time.monotonic() - started
            metrics = client.metrics()
        assert reply.data == {"id": 1}
        assert metrics["retries"] == {"timeout": 1}, path
        assert [x.path_qs for x in server.seen] == [path, path]
        assert read <= took < read + 0.5, (path, took)  # noticed within a tick of `read`
    server = await serve(handler)
    async with Client(settings(read_timeout=read, total_timeout=20)) as client:
        reply = await client.get(f"{server.url}/steady")
        assert reply.data == {"id": 1}
        assert client.metrics()["retries"] == {}
    # http.timeout.total: the same steady body, but more than `total` seconds in all
    server = await serve(handler)
    policy = RetryPolicy(attempts=2, backoff_base=0.01)
    async with Client(settings(read_timeout=read, total_timeout=0.8, retry=policy)) as client:
        started = time.monotonic()
        with pytest.raises(GiveUp) as info:
            await client.get(f"{server.url}/steady")
        took = time.monotonic() - started
    assert info.value.reason == "timeout"
    assert "no whole answer within 0.8 s" in str(info.value)
    assert 2 * 0.8 <= took < 2 * 0.8 + 1.0  # two attempts, each cut within a tick


async def test_a_read_timeout_leaves_no_cancellation_behind_and_a_real_one_wins(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.path == "/stall" or n == 1:
            await hang_up(request)
        return ok()

    server = await serve(handler)
    async with Client(settings(read_timeout=0.2)) as client:
        assert (await client.get(f"{server.url}/first-stalls")).data == {"ok": True}
        assert client.metrics()["retries"] == {"timeout": 1}
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the watchdog took its own back

        # a cancellation from outside at the moment the watchdog gives up: it stays one
        stalled = asyncio.create_task(client.get(f"{server.url}/stall"))
        watch = client._watch
        assert watch is not None
        while not watch.watched:
            await asyncio.sleep(0.01)
        stalled.cancel()
        watch._expire(next(iter(watch.watched)), "test")
        with pytest.raises(asyncio.CancelledError):
            await stalled


async def test_give_up_after_attempts_carries_last_reason(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=502, text="bad gateway\nupstream")

    server = await serve(handler)
    async with Client(settings(retry=RetryPolicy(attempts=3, backoff_base=0.01))) as client:
        with pytest.raises(GiveUp) as info:
            await client.get(f"{server.url}/articles/1")
    err = info.value
    assert (err.status, err.reason) == (502, "502")
    assert str(err) == (f"GET {server.url}/articles/1 -> 502 Bad Gateway: bad gateway upstream "
                        "(gave up after 3 attempts)")
    assert len(server.seen) == 3


async def test_invalid_json_retried_then_bad_response(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="application/json")

    server = await serve(handler)
    async with Client(settings(retry=RetryPolicy(attempts=2, backoff_base=0.01))) as client:
        with pytest.raises(BadResponse, match="invalid JSON"):
            await client.get(f"{server.url}/articles/1")
        raw = await client.get(f"{server.url}/file", expect="bytes")
        assert client.metrics()["retries"] == {"bad-json": 1}
    assert raw.body == b"<html>maintenance</html>" and raw.data is None
    assert len(server.seen) == 3


async def test_json_with_text_that_is_not_unicode_is_kept_with_replacement_characters(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    bodies = {
        "/lone": b'{"id": 1, "title": "cut \\ud83d", "tags": ["\\udc00x", "ok \\ud83d\\ude00"]}',
        "/latin1": b'{"id": 2, "title": "caf\xe9"}',
    }

    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(body=bodies[request.path], content_type="application/json")

    server = await serve(handler)
    async with Client(settings()) as client:
        lone = await client.get(f"{server.url}/lone")
        latin1 = await client.get(f"{server.url}/latin1")
        assert client.metrics()["json_mended"] == 2
        assert client.metrics()["retries"] == {}  # read once: nothing to retry
    assert lone.data == {"id": 1, "title": "cut \ufffd", "tags": ["\ufffdx", "ok \U0001f600"]}
    assert latin1.data == {"id": 2, "title": "caf\ufffd"}
    for reply in (lone, latin1):  # the body the journal keeps is that very JSON
        assert orjson.loads(reply.body) == reply.data
    assert len(server.seen) == 2


async def test_connection_refused_is_retried_then_give_up() -> None:
    async with Client(settings(retry=RetryPolicy(attempts=2, backoff_base=0.01))) as client:
        with pytest.raises(GiveUp) as info:
            await client.get("http://127.0.0.1:1/nothing")
    assert info.value.reason == "connect"


def _closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_host_that_takes_no_connection_opens_the_circuit() -> None:
    port = _closed_port()
    retry = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01)
    async with Client(settings(retry=retry)) as client:
        for _ in range(UNREACHABLE_AFTER - 1):  # each retried to its last attempt, then skipped
            with pytest.raises(GiveUp) as info:
                await client.get(f"http://127.0.0.1:{port}/a")
            assert info.value.reason == "connect"
        with pytest.raises(Unreachable, match=f"{UNREACHABLE_AFTER} requests in a row could "
                           "not connect in 2 attempts each"):
            await client.get(f"http://127.0.0.1:{port}/b")
        with pytest.raises(Unreachable, match=r"not sent: .* is unreachable") as later:
            await client.get(f"http://127.0.0.1:{port}/c")
        assert later.value.reason == "unreachable"
        assert client.metrics()["circuits_opened"] == [f"http://127.0.0.1:{port}"]
        sent = client.metrics()["requests"]
    assert sum(sent.values()) == 0  # nothing ever got on the wire


async def test_an_answer_between_connection_failures_keeps_the_circuit_closed() -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"

    async def answer(request: web.Request) -> web.Response:
        response = ok()
        response.force_close()  # no kept-alive connection outlives the site
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    retry = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01)
    try:
        async with Client(settings(retry=retry)) as client:
            for _ in range(3):  # a host that comes and goes is not a host that is down
                for _ in range(UNREACHABLE_AFTER - 1):
                    with pytest.raises(GiveUp):
                        await client.get(f"{url}/x")
                site = web.TCPSite(runner, "127.0.0.1", port)
                await site.start()
                assert (await client.get(f"{url}/x")).status == 200
                await site.stop()
            assert client.metrics()["circuits_opened"] == []
    finally:
        await runner.cleanup()


async def test_the_circuit_opens_on_the_host_that_took_no_connection_not_on_a_redirecting_one(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    target = f"http://127.0.0.1:{_closed_port()}"

    async def handler(request: web.Request, n: int) -> web.Response:
        if request.path == "/fine":
            return ok()
        raise web.HTTPFound(f"{target}/file")  # a download host sends the bytes elsewhere

    server = await serve(handler)
    retry = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01)
    async with Client(settings(retry=retry)) as client:
        for _ in range(UNREACHABLE_AFTER - 1):
            with pytest.raises(GiveUp):
                await client.get(f"{server.url}/download")
        with pytest.raises(Unreachable, match=f"^{target} is unreachable"):
            await client.get(f"{server.url}/download")
        assert (await client.get(f"{server.url}/fine")).status == 200
        assert client.metrics()["circuits_opened"] == [target]


def test_a_connect_timeout_is_a_connection_failure() -> None:
    call = _Call("GET", aiohttp.client.URL("http://127.0.0.1:1/x"), [])
    timed_out = _transport_error(call, aiohttp.ConnectionTimeoutError("no SYN-ACK"))
    assert timed_out.reason == "connect"
    assert _transport_error(call, TimeoutError()).reason == "timeout"  # a slow answer is not


# ---- statuses that are never retried ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "ctype", "exc"),
    [
        (404, '{"message": "Entity not found: article", "code": "EntityNotFound"}',
         "application/json", NotFound),
        (400, '{"message": "Max page reached. Please narrow down your search"}',
         "application/json", WindowExhausted),
        (422, '{"message": "Invalid offset"}', "application/json", WindowExhausted),
        (401, '{"message": "Invalid token"}', "application/json", AuthError),
        (403, '{"code": "Forbidden", "message": "Unauthorized request"}',
         "application/json", AuthError),
        (400, '{"message": "Invalid value received for order"}', "application/json",
         RequestError),
        (410, "gone", "text/plain", RequestError),
    ],
)
async def test_client_errors_are_not_retried(
    serve: Callable[..., Awaitable[Server]], status: int, body: str, ctype: str,
    exc: type[RequestError],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=status, text=body, content_type=ctype)

    server = await serve(handler)
    async with Client(settings()) as client:
        with pytest.raises(exc) as info:
            await client.get(f"{server.url}/v2/articles", params={"page": 10})
    assert type(info.value) is exc
    assert info.value.status == status
    assert str(info.value).startswith(f"GET {server.url}/v2/articles?page=10 -> {status} ")
    assert len(server.seen) == 1


async def test_403_html_opens_the_circuit(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        if request.path.startswith("/blocked"):
            return web.Response(status=403, text="<html><body>Access denied</body></html>",
                                content_type="text/html")
        return ok()

    server = await serve(handler)
    other = await serve(handler)
    async with Client(settings()) as client:
        with pytest.raises(Blocked):
            await client.get(f"{server.url}/blocked")
        for path in ("/fine", "/blocked"):
            with pytest.raises(Blocked, match="circuit-open"):
                await client.get(f"{server.url}{path}")
        assert (await client.get(f"{other.url}/fine")).status == 200  # other origins unaffected
        assert client.metrics()["circuits_opened"] == [server.origin]
    assert len(server.seen) == 1


# ---- credentials, redirects, secrecy -----------------------------------------------------------


async def test_credentials_only_reach_their_origin_even_across_redirects(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    elsewhere = await serve(lambda request, n: asyncio.sleep(0, ok()))

    async def home_handler(request: web.Request, n: int) -> web.Response:
        if request.path == "/away":
            raise web.HTTPFound(f"{elsewhere.url}/landed")
        if request.path == "/here":
            raise web.HTTPSeeOther("/final")
        return ok({"path": request.path})

    home = await serve(home_handler)
    token = "token SECRETTOKEN123"
    async with Client(settings(credentials={home.url: token})) as client:
        assert (await client.get(f"{home.url}/plain")).status == 200
        assert (await client.get(f"{elsewhere.url}/direct")).status == 200
        away = await client.get(f"{home.url}/away")
        here = await client.post(f"{home.url}/here", json={"q": 1})
        await client.get(f"{home.url}/away", headers={"Authorization": "token CALLER"})
    assert away.url == f"{elsewhere.url}/landed"
    assert here.data == {"path": "/final"} and here.url == f"{home.url}/final"
    assert home.auth_seen() == {token, "token CALLER"}
    assert elsewhere.auth_seen() == {None}
    assert [s.method for s in home.seen[-3:-1]] == ["POST", "GET"]  # 303 turns POST into GET


async def test_errors_never_show_credentials(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        echo = f"{request.path_qs} auth={request.headers.get('Authorization')}"
        status = 401 if request.path == "/private" else 404
        return web.Response(status=status, text=echo)

    server = await serve(handler)
    async with Client(settings(credentials={server.url: "token TOKVALUE42"})) as client:
        with pytest.raises(NotFound) as missing:
            await client.get(f"{server.url}/missing?access_token=QSECRET99&page=1",
                             params={"private_link": "LINKSECRET7"})
        with pytest.raises(AuthError) as denied:
            await client.get(f"{server.url}/private")
    for err in (missing.value, denied.value):
        for secret in ("QSECRET99", "LINKSECRET7", "TOKVALUE42"):
            assert secret not in str(err) and secret not in err.url and secret not in err.body
        assert "\n" not in str(err)
    assert missing.value.url == f"{server.url}/missing?page=1"
    assert any("QSECRET99" in s.path_qs for s in server.seen)  # it was sent, only never shown


async def test_user_agent_and_json_post(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return ok({"echo": orjson.loads(await request.read())})

    server = await serve(handler)
    async with Client(settings()) as client:
        reply = await client.post(f"{server.url}/v2/articles/search",
                                  json={"search_for": "café", "page_size": 1000})
    assert reply.data == {"echo": {"search_for": "café", "page_size": 1000}}
    seen = server.seen[0]
    assert seen.headers["User-Agent"] == UA
    assert seen.headers["Content-Type"] == "application/json"


async def test_cancellation_releases_slot_and_closes_cleanly(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request, n: int) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return ok()

    server = await serve(handler)
    client = Client(settings(concurrency=1))
    async with client:
        task = asyncio.create_task(client.get(f"{server.url}/slow"))
        while not server.seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The one concurrency slot came back.
        assert (await asyncio.wait_for(client.get(f"{server.url}/fast"), 2)).status == 200
    release.set()
    with pytest.raises(RuntimeError):
        await client.get(f"{server.url}/fast")
