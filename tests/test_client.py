"""Transport tests: real aiohttp.web servers on loopback; pacing read from the servers' logs."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from harvester.client import UNREACHABLE_AFTER, Client, ClientSettings
from harvester.errors import (
    Abort,
    AuthError,
    BadResponse,
    Blocked,
    BudgetSpent,
    ConfigError,
    GiveUp,
    HeldOff,
    NotFound,
    RequestError,
    Unreachable,
    WindowExhausted,
)
from harvester.policy import RateLimit, RetryPolicy, backoff_delay, parse_retry_after, summarize
from harvester.urls import origin_of, sanitize_url

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

    def auth(self, path: str | None = None) -> list[str | None]:
        return [s.headers.get("Authorization") for s in self.seen
                if path is None or s.path_qs == path]


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


async def answer(request: web.Request, n: int) -> web.Response:
    return ok()


def ok(body: object = None) -> web.Response:
    return web.json_response({"ok": True} if body is None else body)


class FakeTime:
    """A clock that only moves when someone sleeps (Retry-After holds and backoff)."""

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
    """Most arrivals within any window [t, t + per) of the server's clock."""
    times = sorted(times)
    j, best = 0, 0
    for i, t in enumerate(times):
        while t - times[j] >= per:
            j += 1
        best = max(best, i - j + 1)
    return best


def utilization(times: list[float], rate: RateLimit) -> float:
    """Achieved over configured rate, from the first to the last arrival."""
    return (len(times) - 1) / (max(times) - min(times)) / (rate.requests / rate.per)


# ---- pure policy --------------------------------------------------------------------------------


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


def test_even_pace_leaves_the_margin_for_jitter() -> None:
    assert RateLimit(20, 1.0).interval == pytest.approx(1.025 / 20)
    assert RateLimit(60, 3600.0).interval == pytest.approx(3600.25 / 60)  # margin capped


def test_sanitize_origin_summary_and_settings() -> None:
    url = "https://u:p@api.figshare.com/v2/x?page=2&access_token=S1&TOKEN=S2&private_link=S3#f"
    assert sanitize_url(url) == ("https://api.figshare.com/v2/x?page=2&access_token=REDACTED"
                                 "&TOKEN=REDACTED&private_link=REDACTED")
    assert origin_of("https://stats.figshare.com/total") == "https://stats.figshare.com:443"
    assert origin_of("HTTP://LocalHost:8080/a") == "http://localhost:8080"
    for bad in ("mailto:x@example.org", "data:text/plain,hi", "/relative"):
        with pytest.raises(ValueError):
            origin_of(bad)
    page = b"<!DOCTYPE html><html><head><title>Service &amp; Unavailable</title></head>"
    assert summarize(page + b"<body>" + b"x" * 500) == "HTML page: Service & Unavailable"
    untitled = summarize(b"<html><body><h1>Down</h1> for " + b"maintenance " * 20, "text/html")
    assert untitled.startswith("HTML page: Down for maintenance") and len(untitled) <= 91
    s = ClientSettings(user_agent=UA, credentials={"https://stats.figshare.com/x/": "Basic QQ=="})
    assert "QQ==" not in repr(s)
    with pytest.raises(ConfigError, match="not an absolute URL"):
        ClientSettings(user_agent=UA, credentials={"/account/": "token T"})


# ---- admission: even pace, shared budgets, Retry-After -------------------------------------------


@pytest.mark.timing
async def test_pace_on_the_servers_clock_with_retries(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=503) if n % 7 == 0 else ok()

    server = await serve(handler)
    # Figshare's window (1 s) at 20x its rate: the 2.5% margin absorbs up to 12.5 ms of
    # arrival jitter, as it must in production; a 0.5 s window left 6 ms, less than a loaded
    # CI machine's event loop can promise between the client's start and the handler's clock.
    rate = RateLimit(20, 1.0)
    async with Client(settings(default_rate=rate, concurrency=8)) as client:
        await asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(40)))
        metrics = client.metrics()
    arrivals = [s.t for s in server.seen]
    assert len(arrivals) > 40  # retries happened and took their turns too
    assert metrics["retries"]["503"] == len(arrivals) - 40
    assert metrics["requests"] == {server.origin: len(arrivals)}
    assert peak_in_window(arrivals, rate.per) <= rate.requests
    assert utilization(arrivals, rate) >= 0.9


@pytest.mark.timing
async def test_shared_origins_draw_on_one_budget_with_latency(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """Two hosts in one budget, answers slow and uneven, more concurrency than one interval
    needs: the sum of their arrivals still never fills a window past the limit."""
    async def slow(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(0.15 + 0.15 * ((n * 7) % 5) / 4)
        return ok()

    api, stats = await serve(slow), await serve(slow)
    other = await serve(answer)
    rate = RateLimit(20, 1.0)  # as above: Figshare's window, its margin for jitter
    shared = settings(default_rate=rate, concurrency=8, shared_origins=(api.url, stats.url))
    async with Client(shared) as client:
        await asyncio.gather(
            *(client.get(f"{(api, stats)[i % 2].url}/x/{i}") for i in range(40)),
            *(client.get(f"{other.url}/own/{i}") for i in range(10)))  # a budget of its own
    arrivals = [s.t for s in api.seen + stats.seen]
    assert len(api.seen) == len(stats.seen) == 20
    assert peak_in_window(arrivals, rate.per) <= rate.requests  # both hosts together
    assert utilization(arrivals, rate) >= 0.9
    assert peak_in_window([s.t for s in other.seen], rate.per) == 10  # not the shared one's


async def test_429_retry_after_holds_the_whole_budget(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        if n == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return ok()

    server = await serve(handler)
    stats = await serve(answer)
    other = await serve(answer)
    shared = settings(default_rate=RateLimit(1, 0.05), concurrency=4,
                      shared_origins=(server.url, stats.url))
    async with Client(shared) as client:
        held = asyncio.gather(*(client.get(f"{server.url}/a/{i}") for i in range(4)))
        while not server.seen:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await client.get(f"{other.url}/free")  # another budget is not held
        await client.get(f"{stats.url}/held")  # the budget's other host is
        replies = await held
        metrics = client.metrics()
    assert all(r.data == {"ok": True} for r in replies)
    assert len(server.seen) == 5
    sent_429 = server.seen[0].t
    assert all(s.t >= sent_429 + 1.0 for s in server.seen[1:] + stats.seen)  # none inside it
    assert other.seen[0].t < server.seen[1].t
    assert metrics["retries"] == {"429": 1}
    assert metrics["retry_after_wait_s"] >= 0.9


async def test_http_date_retry_after_is_on_the_servers_clock(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    fake = FakeTime()

    async def handler(request: web.Request, n: int) -> web.Response:
        if n == 1:
            now = time.time()
            return web.Response(status=429, headers={
                "Date": email.utils.formatdate(now, usegmt=True),
                "Retry-After": email.utils.formatdate(now + 30, usegmt=True)})
        return ok()

    server = await serve(handler)
    async with Client(settings(), clock=fake.clock, sleep=fake.sleep, rand=lambda: 0.0) as client:
        await client.get(f"{server.url}/x")
    assert len(server.seen) == 2
    assert sum(fake.sleeps) == pytest.approx(30, abs=1)


async def test_retry_after_beyond_max_aborts_naming_the_host_that_asked(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """A hold past retry_after_max stops the run (HeldOff, an Abort): every host of the budget
    is refused without a send, in words naming the host that asked and for how long."""
    fake = FakeTime()

    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "3600"})

    stats, api = await serve(handler), await serve(answer)
    policy = RetryPolicy(retry_after_max=900.0)
    shared = settings(retry=policy, shared_origins=(api.url, stats.url))
    async with Client(shared, clock=fake.clock, sleep=fake.sleep) as client:
        with pytest.raises(HeldOff, match="-> 503 Service Unavailable: Retry-After 3600 s, "
                           "longer than the 900 s a run waits at most") as first:
            await client.get(f"{stats.url}/a")
        with pytest.raises(HeldOff, match=f"not sent: {stats.origin} asked by Retry-After "
                           "to wait 3600 s, longer than the 900 s"):
            await client.get(f"{api.url}/b")
    assert isinstance(first.value, Abort) and first.value.reason == "retry-after"
    assert len(stats.seen) == 1 and api.seen == []
    assert fake.sleeps == []


async def test_no_wait_or_retry_ends_past_the_deadline(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """A budget's stop: a backoff or a Retry-After hold that would end past it is not waited
    (BudgetSpent, nothing more sent); within it, waited as ever; past it, nothing starts."""
    fake, jitter = FakeTime(), [1.0]

    async def handler(request: web.Request, n: int) -> web.Response:
        tries = sum(s.path_qs == request.path_qs for s in server.seen)
        if request.path == "/held" or (request.path == "/brief" and tries == 1):
            return web.Response(status=429, headers={"Retry-After": request.query["wait"]})
        return web.Response(status=503) if request.path == "/flaky" else ok()

    server = await serve(handler)
    slow = RetryPolicy(attempts=4, backoff_base=100.0, backoff_max=100.0)
    async with Client(settings(retry=slow), clock=fake.clock, sleep=fake.sleep,
                      rand=lambda: jitter[0]) as client:
        client.deadline = fake.now + 20
        with pytest.raises(BudgetSpent, match=r"503 Service Unavailable.*past the budget's stop"):
            await client.get(f"{server.url}/flaky")  # its backoff: 100 s
        jitter[0] = 0.0
        with pytest.raises(BudgetSpent, match="asked by Retry-After to wait 30 s, past the "
                           "budget's stop"):
            await client.get(f"{server.url}/held?wait=30")
        fake.now += 30  # that hold is over; 10 s are left, a hold of 5 s fits
        client.deadline = fake.now + 10
        assert (await client.get(f"{server.url}/brief?wait=5")).data == {"ok": True}
        fake.now = client.deadline
        with pytest.raises(BudgetSpent, match="not sent: budget spent"):
            await client.get(f"{server.url}/late")
        client.deadline = None  # no budget: no stop
        assert (await client.get(f"{server.url}/free")).data == {"ok": True}
    assert [s.path_qs for s in server.seen] == ["/flaky", "/held?wait=30", "/brief?wait=5",
                                                "/brief?wait=5", "/free"]
    assert fake.sleeps == [0.0, 0.0, 5.0]  # no wait but the 5 s hold that fit


# ---- retries and give-up ------------------------------------------------------------------------


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


async def test_errors_carry_the_true_number_of_attempts(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        if request.path == "/flaky-then-gone":
            return web.Response(status=503) if n <= 2 else web.Response(status=404)
        return web.Response(status=502, text="bad gateway\nupstream")

    server = await serve(handler)
    async with Client(settings(retry=RetryPolicy(attempts=3, backoff_base=0.01))) as client:
        with pytest.raises(NotFound) as gone:
            await client.get(f"{server.url}/flaky-then-gone")
        with pytest.raises(GiveUp) as info:
            await client.get(f"{server.url}/articles/1")
    assert gone.value.attempts == 3
    err = info.value
    assert (err.status, err.reason, err.attempts) == (502, "502", 3)
    assert str(err) == (f"GET {server.url}/articles/1 -> 502 Bad Gateway: bad gateway upstream "
                        "(gave up after 3 attempts)")
    assert len(server.seen) == 6


async def test_reset_and_truncated_body_are_retried(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        assert request.transport is not None
        if n <= 2:  # connection reset before any response (aiohttp's own resend is off)
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
    assert metrics["requests"] == {server.origin: 4}  # every send took its turn


async def hang_up(request: web.Request) -> None:
    """Send nothing more until the client gives up on the connection (at most 30 s)."""
    for _ in range(600):
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.05)


async def test_read_and_total_timeouts(serve: Callable[..., Awaitable[Server]]) -> None:
    """http.timeout.read: `read` seconds with no byte end the attempt, before the head or inside
    the body; a body that keeps coming is cut only by http.timeout.total."""
    read = 0.3

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.path == "/silent" and n == 1:
            await hang_up(request)  # no head at all
            return web.Response()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if request.path == "/stall" and n == 1:
            await resp.write(b'{"id": 1, ')
            await hang_up(request)  # the head and a part, then nothing
            return resp
        if request.path == "/steady":  # never `read` seconds without a byte
            for _ in range(8):
                await resp.write(b" ")
                await asyncio.sleep(read / 3)
        await resp.write(b'{"id": 1}')
        await resp.write_eof()
        return resp

    for path in ("/silent", "/stall"):
        server = await serve(handler)  # a new server: the first request to each path stalls
        async with Client(settings(read_timeout=read, total_timeout=20)) as client:
            reply = await client.get(f"{server.url}{path}")
            assert client.metrics()["retries"] == {"timeout": 1}, path
        assert reply.data == {"id": 1}
        assert [x.path_qs for x in server.seen] == [path, path]
    server = await serve(handler)
    async with Client(settings(read_timeout=read, total_timeout=20)) as client:
        assert (await client.get(f"{server.url}/steady")).data == {"id": 1}
        assert client.metrics()["retries"] == {}
    policy = RetryPolicy(attempts=2, backoff_base=0.01)
    async with Client(settings(read_timeout=read, total_timeout=0.5, retry=policy)) as client:
        with pytest.raises(GiveUp) as info:
            await client.get(f"{server.url}/steady")
    assert info.value.reason == "timeout" and info.value.attempts == 2
    assert "timed out after 0.5 s in all" in str(info.value)
    server = await serve(handler)
    async with Client(settings(read_timeout=read, retry=RetryPolicy(attempts=1))) as client:
        with pytest.raises(GiveUp, match=r"timed out after 0\.3 s with nothing received"):
            await client.get(f"{server.url}/silent")


async def test_a_body_not_in_its_content_encoding_is_bad_encoding_not_truncated(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """Plain JSON sent as gzip or deflate, or gzip with junk after it, is a bad body (retried
    like bad JSON), not a connection closed inside it; a gzip body cut short still is."""
    body = b'{"id": 1}'
    served = {"/gzip": ("gzip", body), "/deflate": ("deflate", body),
              "/junk": ("gzip", gzip.compress(body) + b"junk"), "/once": ("gzip", body)}

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.path == "/cut":
            packed = gzip.compress(body * 200)
            resp = web.StreamResponse(headers={"Content-Encoding": "gzip",
                                               "Content-Length": str(len(packed))})
            await resp.prepare(request)
            await resp.write(packed[: len(packed) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        coding, raw = served[request.path]
        if request.path == "/once" and sum(s.path_qs == "/once" for s in server.seen) > 1:
            raw = gzip.compress(body)  # the second answer is gzip indeed
        return web.Response(body=raw, headers={"Content-Encoding": coding,
                                               "Content-Type": "application/json"})

    server = await serve(handler)
    async with Client(settings(retry=RetryPolicy(attempts=2, backoff_base=0.01))) as client:
        for path in ("/gzip", "/deflate", "/junk", "/cut"):
            with pytest.raises(RequestError) as info:
                await client.get(f"{server.url}{path}")
            if path == "/cut":
                assert info.value.reason == "truncated", str(info.value)
                continue
            assert info.value.reason == "bad-encoding" and info.value.attempts == 2
            assert str(info.value).startswith(
                f"GET {server.url}{path} -> bad-encoding: the body is not valid "
                f"{served[path][0]} as its Content-Encoding says")
        assert (await client.get(f"{server.url}/once")).data == {"id": 1}
        assert client.metrics()["retries"] == {"bad-encoding": 4, "truncated": 1}


async def test_invalid_json_retried_then_bad_response(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(text="maintenance <b>soon</b>", content_type="application/json")

    server = await serve(handler)
    async with Client(settings(retry=RetryPolicy(attempts=2, backoff_base=0.01))) as client:
        with pytest.raises(BadResponse, match="invalid JSON: maintenance") as info:
            await client.get(f"{server.url}/articles/1")
        raw = await client.get(f"{server.url}/file", expect="bytes")
        assert client.metrics()["retries"] == {"bad-json": 1}
    assert info.value.reason == "bad-json" and info.value.attempts == 2
    assert raw.body == b"maintenance <b>soon</b>" and raw.data is None
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
        assert client.metrics()["retries"] == {}
    assert lone.data == {"id": 1, "title": "cut \ufffd", "tags": ["\ufffdx", "ok \U0001f600"]}
    assert latin1.data == {"id": 2, "title": "caf\ufffd"}
    for reply in (lone, latin1):  # the body the journal keeps is that very JSON
        assert orjson.loads(reply.body) == reply.data


async def test_json_that_cannot_be_kept_is_a_bad_response_never_a_crash(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """Bodies orjson refuses and Python's json takes, but that no JSON writer can give back as
    served: refused at once (the same body would come again), with what is wrong."""
    lone = b'"\\ud800"'
    bodies = {
        "/deep": b'{"t": ' + lone + b', "x": ' + b"[" * 300 + b"]" * 300 + b"}",
        "/deeper": b"[" * 5000 + b"]" * 5000,
        "/huge": b'{"t": ' + lone + b', "n": 123456789012345678901234567890}',
        "/nan": b'{"n": NaN}',
    }

    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(body=bodies[request.path], content_type="application/json")

    server = await serve(handler)
    messages = {}
    async with Client(settings()) as client:
        for path in bodies:
            with pytest.raises(BadResponse) as info:
                await client.get(f"{server.url}{path}")
            assert info.value.reason == "bad-json" and info.value.attempts == 1
            messages[path] = str(info.value)
    assert len(server.seen) == len(bodies)  # none retried
    assert "recursion limit" in messages["/deep"]
    assert "nested too deeply" in messages["/deeper"]
    assert "64-bit" in messages["/huge"]
    assert "NaN is not a JSON number" in messages["/nan"]


async def test_a_body_past_max_body_is_refused_counting_decompressed_bytes(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    bomb = gzip.compress(b"[" + b" " * (16 << 20) + b"]", compresslevel=9)  # 16 MiB from ~16 KiB

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.path == "/bomb":
            return web.Response(body=bomb, headers={"Content-Encoding": "gzip",
                                                    "Content-Type": "application/json"})
        return web.Response(body=b"x" * (2 << 20))  # 2 MiB

    server = await serve(handler)
    async with Client(settings(max_body=1 << 20)) as client:
        for path in ("/bomb", "/plain"):
            with pytest.raises(RequestError) as info:
                await client.get(f"{server.url}{path}")
            assert type(info.value) is RequestError and info.value.reason == "too-large"
            assert "http.max_body" in str(info.value)
        async with client.stream(f"{server.url}/download") as stream:  # files are not capped
            assert sum([len(chunk) async for chunk in stream]) == 2 << 20
        assert client.metrics()["bytes"] < 5 << 20
    assert [s.path_qs for s in server.seen] == ["/bomb", "/plain", "/download"]  # not retried


async def test_connection_refused_and_dns_failure_in_plain_words() -> None:
    port = _closed_port()
    async with Client(settings(retry=RetryPolicy(attempts=2, backoff_base=0.01))) as client:
        with pytest.raises(GiveUp) as refused:
            await client.get(f"http://127.0.0.1:{port}/nothing")
        with pytest.raises(GiveUp) as dns:
            await client.get("http://no-such-host.invalid/x")
    assert refused.value.reason == "connect" and refused.value.attempts == 2
    assert f"connection refused by 127.0.0.1:{port}" in str(refused.value)
    assert dns.value.reason == "connect"
    assert "DNS lookup failed for no-such-host.invalid" in str(dns.value)
    for err in (refused.value, dns.value):
        assert "Client" not in str(err) and "Error" not in str(err)  # no aiohttp class names


def _closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- circuits -----------------------------------------------------------------------------------


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


async def test_an_answer_between_connection_failures_keeps_the_circuit_closed() -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"

    async def reply(request: web.Request) -> web.Response:
        response = ok()
        response.force_close()  # no kept-alive connection outlives the site
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", reply)
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


async def test_403_html_opens_the_circuit(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        if request.path.startswith("/blocked"):
            return web.Response(status=403, content_type="text/html", text=(
                "<html><head><title>Access denied</title></head><body>" + "x" * 500))
        return ok()

    server = await serve(handler)
    other = await serve(handler)
    async with Client(settings()) as client:
        with pytest.raises(Blocked) as first:
            await client.get(f"{server.url}/blocked")
        for path in ("/fine", "/blocked"):
            with pytest.raises(Blocked, match="circuit-open"):
                await client.get(f"{server.url}{path}")
        assert (await client.get(f"{other.url}/fine")).status == 200  # other origins unaffected
        assert client.metrics()["circuits_opened"] == [server.origin]
    assert str(first.value).endswith("403 Forbidden: HTML page: Access denied")
    assert len(server.seen) == 1


# ---- statuses that are never retried ------------------------------------------------------------


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
    assert info.value.status == status and info.value.attempts == 1
    assert str(info.value).startswith(f"GET {server.url}/v2/articles?page=10 -> {status} ")
    assert len(server.seen) == 1
    if exc is AuthError:  # no credential scoped here: a wrong host more likely than a bad token
        assert str(info.value).endswith("(a public operation, sent without credentials: is "
                                        "this the right host?)")


# ---- credentials, redirects, secrecy ------------------------------------------------------------


async def test_credentials_go_only_to_the_operations_they_are_scoped_to(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    third = await serve(answer)

    async def api_handler(request: web.Request, n: int) -> web.Response:
        if request.path == "/v2/account/away":
            raise web.HTTPFound(f"{third.url}/landed")
        if request.path == "/v2/articles/moved":
            raise web.HTTPFound("/v2/account/articles/2")  # same origin, into the scope
        if request.path == "/v2/account/moved":
            raise web.HTTPFound("/v2/account/articles/3")  # within the scope
        return ok()

    api = await serve(api_handler)
    token = "token SECRETTOKEN123"
    async with Client(settings(credentials={f"{api.url}/v2/account/": token})) as client:
        for path in ("/v2/articles/1", "/v2/account/articles/1", "/v2/accountant",
                     "/v2/account", "/v2/articles/moved", "/v2/account/away",
                     "/v2/account/moved"):
            await client.get(f"{api.url}{path}")
        await client.post(f"{api.url}/v2/articles/search", json={"q": 1})
        await client.get(f"{third.url}/direct")
        # a stream (a file download) is no operation of the token's, whatever its URL says
        async with client.stream(f"{api.url}/v2/account/articles/4") as stream:
            assert [chunk async for chunk in stream]
    assert api.auth("/v2/articles/1") == [None]  # public: no credential
    assert api.auth("/v2/account/articles/1") == [token]
    assert api.auth("/v2/accountant") == [None]
    assert api.auth("/v2/account") == [token]
    # a public operation redirected into the scope did not ask for the token: none is sent
    assert api.auth("/v2/account/articles/2") == [None]
    assert api.auth("/v2/account/articles/3") == [token]  # asked in scope, still in scope
    assert api.auth("/v2/account/articles/4") == [None]
    assert api.auth("/v2/articles/search") == [None]
    assert third.auth() == [None, None]  # never on another origin, redirects included


async def test_caller_secrets_are_stripped_once_a_redirect_leaves_the_first_origin(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def home_handler(request: web.Request, n: int) -> web.Response:
        if request.path == "/here":
            raise web.HTTPSeeOther("/final")
        if request.path == "/back":
            return ok()
        return ok({"path": request.path})

    home = await serve(home_handler)

    async def away_handler(request: web.Request, n: int) -> web.Response:
        raise web.HTTPFound(f"{home.url}/back")  # and back to where the secret belonged

    away = await serve(away_handler)

    async def start(request: web.Request, n: int) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{away.url}/hop")

    first = await serve(start)
    secret = {"Authorization": "token CALLER", "Cookie": "session=COOKIE"}
    async with Client(settings()) as client:
        here = await client.post(f"{home.url}/here", json={"q": 1}, headers=secret)
        landed = await client.get(f"{first.url}/go", headers=secret)
    assert here.data == {"path": "/final"} and here.url == f"{home.url}/final"
    assert [s.method for s in home.seen[:2]] == ["POST", "GET"]  # 303 turns POST into GET
    assert home.auth() == ["token CALLER", "token CALLER", None]  # same origin kept it
    assert landed.url == f"{home.url}/back"
    assert first.auth() == ["token CALLER"]
    for s in away.seen + home.seen[2:]:
        assert "Authorization" not in s.headers and "Cookie" not in s.headers


async def test_redirects_anywhere_but_http_are_refused_not_crashed_on(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    locations = {"/mail": "mailto:someone@example.org", "/data": "data:text/plain,hi",
                 "/garbage": "http://[::1", "/ftp": "ftp://example.org/x", "/loop": "/loop"}

    async def handler(request: web.Request, n: int) -> web.Response:
        return web.Response(status=302, headers={"Location": locations[request.path]})

    server = await serve(handler)
    async with Client(settings()) as client:
        for path in ("/mail", "/data", "/garbage", "/ftp"):
            with pytest.raises(RequestError) as info:
                await client.get(f"{server.url}{path}")
            assert type(info.value) is RequestError and info.value.reason == "bad-redirect"
        with pytest.raises(RequestError, match="more than 10 redirects"):
            await client.get(f"{server.url}/loop")
        assert client.metrics()["retries"] == {}
    assert len(server.seen) == 4 + 11


async def test_a_401_after_a_redirect_out_of_the_tokens_scope_says_so(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """The token, withheld on purpose where a redirect leads out of its scope (another path, or
    the same server by another name), is not called a public operation or a wrong host."""
    token = "token SECRETTOKEN123"

    async def handler(request: web.Request, n: int) -> web.Response:
        if request.path == "/v2/account/articles/search":
            raise web.HTTPTemporaryRedirect("/v2/r/account/articles/search")  # 307 keeps POST
        if request.path == "/v2/account/articles/1" and request.host.startswith("127.0.0.1"):
            raise web.HTTPFound(f"http://localhost:{request.url.port}{request.path}")
        if request.headers.get("Authorization") != token:
            return web.json_response({"message": "Missing or invalid OAuth token"}, status=401)
        return ok()

    api = await serve(handler)
    scoped = f"{api.url}/v2/account/"
    s = settings(credentials={scoped: token}, auth_hints={scoped: "api.token"})
    async with Client(s) as client:
        with pytest.raises(AuthError) as moved:
            await client.post(f"{api.url}/v2/account/articles/search", json={"page": 1})
        with pytest.raises(AuthError) as alias:
            await client.get(f"{api.url}/v2/account/articles/1")
        with pytest.raises(AuthError) as public:  # the first URL was never in scope
            await client.get(f"{api.url}/v2/articles/1")
        assert (await client.get(f"{api.url}/v2/account/articles/2")).data == {"ok": True}
    port = api.url.rsplit(":", 1)[1]
    for err, final in ((moved, f"{api.url}/v2/r/account/articles/search"),
                       (alias, f"http://localhost:{port}/v2/account/articles/1")):
        assert str(err.value).startswith(f"{'POST' if err is moved else 'GET'} {final} -> 401 ")
        assert str(err.value).endswith(f"(redirected to {final}, outside api.token's scope: the "
                                       "token was not sent there)")
    assert str(public.value).endswith("(a public operation, sent without credentials: is this "
                                      "the right host?)")
    assert api.auth("/v2/account/articles/search") == [token]  # sent where it belongs
    assert api.auth("/v2/r/account/articles/search") == [None]  # and withheld where it does not
    assert [s.headers.get("Authorization") for s in api.seen
            if s.headers.get("Host", "").startswith("localhost")] == [None]


async def test_errors_never_show_credentials_and_name_the_settings_to_check(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request, n: int) -> web.Response:
        echo = f"{request.path_qs} auth={request.headers.get('Authorization')}"
        status = 403 if request.path.startswith("/inst/") else 404
        return web.Response(status=status, text=echo)

    server = await serve(handler)
    scope = f"{server.url}/inst/timeline/"
    basic = "Basic QkFTSUNTRUNSRVQ="
    s = settings(credentials={scope: basic, f"{server.url}/missing": "token TOKVALUE42"},
                 auth_hints={scope: "stats.user and stats.password"})
    async with Client(s) as client:
        with pytest.raises(NotFound) as missing:
            await client.get(f"{server.url}/missing?access_token=QSECRET99&page=1",
                             params={"private_link": "LINKSECRET7"})
        with pytest.raises(AuthError) as denied:
            await client.get(f"{server.url}/inst/timeline/day/views/article/1")
    assert "(check stats.user and stats.password)" in str(denied.value)
    for err in (missing.value, denied.value):
        for secret in ("QSECRET99", "LINKSECRET7", "TOKVALUE42", "QkFTSUNTRUNSRVQ="):
            assert secret not in str(err) and secret not in err.url and secret not in err.body
        assert "\n" not in str(err)
    assert missing.value.url == (f"{server.url}/missing?access_token=REDACTED&page=1"
                                 "&private_link=REDACTED")
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
