"""Per-host misbehaviour middlewares (rate limit, abuse, latency, faults) and the RequestLog."""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import typedefs, web

from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.settings import SimSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNMATCHED = "<unmatched>"  # route of a request no route matched (the router's 404/405)
RETRY_AFTER_GRACE = 0.05  # seconds a client may take to notice a 429 (requests already on the wire)
_DOMAINS = {"api": "api.figshare.com", "stats": "stats.figshare.com"}


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One request as the simulator saw it; status 0 means no complete response was sent."""

    t: float  # time.monotonic() at arrival
    host: str  # "api" | "stats"
    method: str
    path: str
    query: str
    route: str  # the matched route's canonical path, or UNMATCHED
    status: int
    authorization: str | None
    fault: str | None  # the injected fault kind, if any
    body: bytes | None = None  # a POST's request body (search filters, stats /count groups)
    cursor: str | None = None  # the X-Cursor request header, a parameter the spec declares


class RequestLog:
    """Every request seen, per host; entries are appended when a request finishes."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        # host -> [(when the 429 was sent, when its Retry-After expires)]
        self._waits: dict[str, list[tuple[float, float]]] = {}

    def count(self, host: str | None = None, route: str | None = None) -> int:
        return sum(1 for e in self._select(host) if route is None or e.route == route)

    def by_route(self, host: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self._select(host):
            counts[e.route] = counts.get(e.route, 0) + 1
        return counts

    def peak_in_window(self, host: str | None, seconds: float) -> int:
        """Most arrivals at `host` (None: all hosts together, one shared budget) within any
        half-open window [t, t + seconds)."""
        times = sorted(e.t for e in self._select(host))
        peak = left = 0
        for right, t in enumerate(times):
            while t - times[left] >= seconds:
                left += 1
            peak = max(peak, right - left + 1)
        return peak

    def max_in_flight(self, host: str) -> int:
        return self._max_in_flight.get(host, 0)

    def credentials_seen(self, host: str) -> set[str]:
        return {e.authorization for e in self._select(host) if e.authorization is not None}

    def retry_after_violations(self, host: str, grace: float = RETRY_AFTER_GRACE) -> int:
        """Requests that arrived at `host` after a 429 was sent but before its Retry-After elapsed.

        Arrivals within `grace` seconds of the 429 are forgiven: the client cannot have read it yet.
        """
        waits = self._waits.get(host, [])
        return sum(
            1
            for e in self._select(host)
            if any(sent + grace <= e.t < until for sent, until in waits)
        )

    def clear(self) -> None:
        self.entries.clear()
        self._waits.clear()
        # Requests still being served keep counting; the maximum starts again from them.
        self._max_in_flight = dict(self._in_flight)

    # hooks for the logging middleware

    def started(self, host: str) -> None:
        n = self._in_flight.get(host, 0) + 1
        self._in_flight[host] = n
        self._max_in_flight[host] = max(self._max_in_flight.get(host, 0), n)

    def finished(self, entry: LogEntry, retry_after: float | None = None) -> None:
        """Record a finished request; `retry_after` is the wait a 429 just told the client."""
        self._in_flight[entry.host] = self._in_flight.get(entry.host, 1) - 1
        if retry_after is not None:
            sent = time.monotonic()
            self._waits.setdefault(entry.host, []).append((sent, sent + retry_after))
        self.entries.append(entry)

    def _select(self, host: str | None) -> Iterable[LogEntry]:
        entries = list(self.entries)  # a snapshot: another thread may be appending
        return entries if host is None else [e for e in entries if e.host == host]


def fault_for(settings: SimSettings, host: str, seq: int) -> str | None:
    """The fault (if any) injected into the `seq`-th request (0-based) to arrive at `host`.

    A pure function of (seed, host, seq): sequential runs see the same faults; under concurrency,
    arrival order (and so which request gets which number) varies from run to run.
    """
    if settings.fault_rate <= 0.0 or not settings.fault_kinds:
        return None
    if _unit(settings.seed, host, seq, "fault") >= settings.fault_rate:
        return None
    kinds = settings.fault_kinds
    return kinds[int(_unit(settings.seed, host, seq, "kind") * len(kinds))]


def latency_for(settings: SimSettings, host: str, seq: int) -> float:
    """Seconds of added latency for the `seq`-th request at `host`: mean +- uniform jitter."""
    u = _unit(settings.seed, host, seq, "latency")
    ms = settings.latency_ms + (2.0 * u - 1.0) * settings.latency_jitter_ms
    return max(0.0, ms) / 1000.0


def _unit(seed: int, host: str, seq: int, purpose: str) -> float:
    # A hash, not a shared random.Random: the draw must not depend on what else was drawn.
    digest = hashlib.blake2b(f"{seed}|{host}|{seq}|{purpose}".encode(), digest_size=8).digest()
    return struct.unpack(">Q", digest)[0] / 2.0**64


@dataclass(slots=True)
class _Mark:
    """What the inner middlewares tell the logging middleware about one request."""

    seq: int
    t: float
    fault: str | None = None
    broken: bool = False  # the connection was cut: no complete response
    retry_after: float | None = None


@dataclass(slots=True)
class _HostState:
    """Per-host counters; one per app, so one per simulator and host."""

    seq: int = 0
    accepted: deque[float] = field(default_factory=deque)  # arrivals let through the rate limit
    violations: dict[str, int] = field(default_factory=dict)  # client address -> rate violations


_MARK: web.RequestKey[_Mark] = web.RequestKey("sim_mark", _Mark)


def middlewares(host: str) -> list[typedefs.Middleware]:
    """Logging, abuse block, rate limit, latency and faults for one host ("api" or "stats")."""
    state = _HostState()

    @web.middleware
    async def log_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        log: RequestLog = request.app[SIMULATOR].log
        mark = _Mark(seq=state.seq, t=time.monotonic())
        state.seq += 1
        request[_MARK] = mark
        log.started(host)
        status = 0
        body: bytes | None = None
        try:
            if request.method == "POST":
                body = await request.read()  # kept by aiohttp: the route reads the same bytes
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            raise  # shutdown or client gone: status stays 0
        except Exception:
            status = 500  # aiohttp answers an unhandled exception with 500
            raise
        finally:
            resource = request.match_info.route.resource
            log.finished(
                LogEntry(
                    t=mark.t,
                    host=host,
                    method=request.method,
                    path=request.path,
                    query=request.query_string,
                    route=resource.canonical if resource is not None else UNMATCHED,
                    status=0 if mark.broken else status,
                    authorization=request.headers.get("Authorization"),
                    fault=mark.fault,
                    body=body,
                    cursor=request.headers.get("X-Cursor"),
                ),
                retry_after=mark.retry_after if status == 429 and not mark.broken else None,
            )

    @web.middleware
    async def block_abusers(request: web.Request, handler: Handler) -> web.StreamResponse:
        limit = request.app[SIMULATOR].settings.abuse_after
        if limit is not None and state.violations.get(request.remote or "", 0) >= limit:
            return _access_denied(host)
        return await handler(request)

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = request.app[SIMULATOR].settings.rate_limit
        if rule is not None:
            n, per = rule
            now = request[_MARK].t
            accepted = state.accepted
            while accepted and now - accepted[0] >= per:
                accepted.popleft()
            if len(accepted) >= n:
                # After this wait, the n-th most recent acceptance has left the window.
                wait = accepted[-n] + per - now if n > 0 else per
                seconds = max(1, math.ceil(wait))
                client = request.remote or ""
                state.violations[client] = state.violations.get(client, 0) + 1
                request[_MARK].retry_after = seconds
                return _too_many_requests(seconds)
            accepted.append(now)
        return await handler(request)

    @web.middleware
    async def add_latency(request: web.Request, handler: Handler) -> web.StreamResponse:
        delay = latency_for(request.app[SIMULATOR].settings, host, request[_MARK].seq)
        if delay > 0.0:
            await asyncio.sleep(delay)
        return await handler(request)

    @web.middleware
    async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        settings: SimSettings = request.app[SIMULATOR].settings
        mark = request[_MARK]
        kind = fault_for(settings, host, mark.seq)
        if kind is None:
            return await handler(request)
        mark.fault = kind
        if kind in ("500", "502", "503"):
            return _server_error(int(kind))
        if kind == "429":
            mark.retry_after = settings.fault_retry_after
            return _too_many_requests(settings.fault_retry_after)
        if kind == "reset":
            mark.broken = True
            _reset(request)
            # Nothing can be written any more: aiohttp notices and drops this response quietly.
            return web.Response(status=500)
        if kind == "truncate":
            return await _truncate(request, await _respond(request, handler), mark)
        return await _stall(request, await _respond(request, handler), mark, settings.stall_seconds)

    return [log_request, block_abusers, rate_limit, add_latency, inject_faults]


async def _respond(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return exc  # the route's error answer is still a response to break


def _body_of(response: web.StreamResponse) -> bytes | None:
    """The bytes of an unsent, in-memory response, else None."""
    if isinstance(response, web.Response) and not response.prepared:
        body = response.body
        if isinstance(body, bytes | bytearray):
            return bytes(body)
    return None


def _streamed_copy(response: web.StreamResponse, length: int) -> web.StreamResponse:
    """A StreamResponse with `response`'s status and headers and an explicit Content-Length."""
    copy = web.StreamResponse(status=response.status, reason=response.reason)
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "transfer-encoding"):
            copy.headers.add(name, value)
    copy.content_length = length
    return copy


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST, as a crashing proxy does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() discards and sends RST instead of an orderly FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _truncate(
    request: web.Request, response: web.StreamResponse, mark: _Mark
) -> web.StreamResponse:
    """Promise the whole body in Content-Length, send half of it, close the connection."""
    mark.broken = True
    body = _body_of(response)
    if body is None:
        if not response.prepared:
            body = b'{"message": "truncated by the simulator"}'
        else:
            # Already streamed by the route: cutting the connection is all that is left.
            if request.transport is not None:
                request.transport.close()
            return response
    if len(body) < 2:
        body = body.ljust(2, b" ")
    cut = _streamed_copy(response, len(body))
    try:
        await cut.prepare(request)
        await cut.write(body[: len(body) // 2])
    except ConnectionError:
        return cut  # the client left first
    if request.transport is not None:
        request.transport.close()  # close() flushes what was written, then sends FIN
    return cut


async def _stall(
    request: web.Request, response: web.StreamResponse, mark: _Mark, seconds: float
) -> web.StreamResponse:
    """Send status and headers, hang for `seconds`, then send the body."""
    body = _body_of(response)
    if body is None:
        await asyncio.sleep(seconds)  # cannot split it: hang before answering at all
        return response
    slow = _streamed_copy(response, len(body))
    try:
        await slow.prepare(request)  # a StreamResponse sends its headers right away
        await asyncio.sleep(seconds)
        await slow.write(body)
    except ConnectionError:
        mark.broken = True  # the client gave up while we hung
    return slow


def _retry_after_value(seconds: float) -> str:
    # RFC 9110 wants whole seconds; fractions are only ever configured to keep tests fast.
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _too_many_requests(seconds: float) -> web.Response:
    return web.json_response(
        {"message": "Too many requests, please slow down", "code": "TooManyRequests", "data": None},
        status=429,
        headers={"Retry-After": _retry_after_value(seconds)},
    )


_PROXY_PAGES = {
    502: (
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ),
    503: (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
        "<title>503 Service Temporarily Unavailable</title>\n</head><body>\n"
        "<h1>Service Temporarily Unavailable</h1>\n<p>The server is temporarily unable to "
        "service your request due to maintenance downtime or capacity problems. "
        "Please try again later.</p>\n"
        "</body></html>\n"
    ),
}


def _server_error(status: int) -> web.Response:
    """A 500 from the application (JSON) or a 502/503 from the proxy in front of it (HTML)."""
    if status in _PROXY_PAGES:
        return web.Response(status=status, text=_PROXY_PAGES[status], content_type="text/html")
    return web.json_response(
        {"message": "Internal server error", "code": "InternalServerError", "data": None},
        status=status,
    )


def _access_denied(host: str) -> web.Response:
    """The CDN's block page: how a blocked client sees the service in the field."""
    domain = _DOMAINS.get(host, host)
    page = (
        '<!DOCTYPE html>\n<html class="no-js" lang="en-US">\n<head>\n'
        f"<title>Access denied | {domain} used Cloudflare to restrict access</title>\n"
        '<meta charset="UTF-8" />\n</head>\n<body>\n<div id="cf-wrapper">\n'
        '<div id="cf-error-details" class="cf-error-details-wrapper">\n'
        '<h1 data-translate="block_headline">Access denied</h1>\n'
        '<span class="cf-error-code">Error 1020</span>\n'
        f"<p>You do not have access to {domain}.</p>\n"
        "<p>The site owner may have set restrictions that prevent you from accessing "
        "the site.</p>\n"
        "</div>\n</div>\n</body>\n</html>\n"
    )
    return web.Response(
        status=403,
        text=page,
        content_type="text/html",
        headers={"Server": "cloudflare", "CF-RAY": "8c0ffee000000000-AMS"},
    )
