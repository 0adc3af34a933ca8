"""Transport: the one aiohttp session, evenly paced rate budgets, retries, circuit breakers."""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import random
import statistics
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, TypeVar

import aiohttp
import orjson
from aiohttp.http_exceptions import ContentEncodingError
from aiolimiter import AsyncLimiter
from yarl import URL

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
    RetryableError,
    Unreachable,
    WindowExhausted,
)
from harvester.policy import (
    RateLimit,
    RetryPolicy,
    backoff_delay,
    http_date,
    is_html,
    parse_retry_after,
    summarize,
)
from harvester.served import Unkept, lenient_json
from harvester.urls import SECRET_PARAMS, origin_of, sanitize_url

log = logging.getLogger("harvester.client")

MAX_REDIRECTS = 10
UNREACHABLE_AFTER = 3  # requests in a row to one origin that never connected, all retries spent
T = TypeVar("T")


class Scope(NamedTuple):
    """A URL prefix (origin and a path ending in "/") and what belongs to requests under it."""

    origin: str
    path: str
    value: str

    def covers(self, url: URL) -> bool:
        return (url.raw_path + "/").startswith(self.path) and origin_of(url) == self.origin


def scopes(prefixes: Mapping[str, str]) -> tuple[Scope, ...]:
    """URL prefix -> value as Scopes; ValueError for a prefix that is not an absolute URL."""
    return tuple(Scope(origin_of(p), URL(p).raw_path.rstrip("/") + "/", str(v))
                 for p, v in prefixes.items())


# A body past LARGE_BODY bytes waits for the turn its caller set here (journal.Outcomes.item):
# one such body at a time is read and held, whatever the concurrency.
LARGE_BODY = 1 << 20
large_body_turn: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "large_body_turn", default=None)


@dataclass(frozen=True)
class ClientSettings:
    """Everything the transport needs. `credentials`: URL prefix -> Authorization value, sent
    only under that prefix; `auth_hints`: URL prefix -> the settings a 401/403 there names."""

    user_agent: str
    concurrency: int = 4
    default_rate: RateLimit = field(default_factory=lambda: RateLimit(1, 1.0))
    connect_timeout: float = 10
    read_timeout: float = 60
    total_timeout: float = 120
    max_body: int = 64 * 2**20  # decompressed bytes a buffered response may hold
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth_hints: Mapping[str, str] = field(default_factory=dict)
    # origins that draw on ONE rate budget: Figshare asks for 1 request per second overall
    shared_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            scopes({**self.credentials, **self.auth_hints})
            shared = tuple(dict.fromkeys(origin_of(o) for o in self.shared_origins))
        except ValueError as exc:
            raise ConfigError(f"client settings: {exc}") from None
        object.__setattr__(self, "shared_origins", shared)


@dataclass(frozen=True)
class Reply:
    """One successful exchange. `url` is the final, sanitized URL; `data` the parsed JSON."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)
    url: str
    data: Any = None

    def json(self) -> Any:
        return self.data if self.data is not None else orjson.loads(self.body)


@dataclass(frozen=True)
class Stream:
    """A 2xx body read chunk by chunk (`async for chunk in stream`); a connection lost mid-body
    raises RetryableError ("truncated", "reset", "timeout") and the caller decides what next."""

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks


def _secrets_of(header_value: str) -> list[str]:
    """The header value and its bare credential (the part after "token " / "Basic ")."""
    parts = header_value.split()
    return [header_value, parts[-1]] if len(parts) > 1 else [header_value]


@dataclass
class _Call:
    """The request being made (its current hop), as error messages may show it."""

    method: str
    url: URL
    secrets: list[str]

    @property
    def safe_url(self) -> str:
        return sanitize_url(self.url)

    def fail(self, cls: type[RequestError], reason: str, detail: str = "", *,
             status: int | None = None, phrase: str = "", body: str = "",
             **kw: Any) -> RequestError:
        """`reason` is the label callers and metrics see; `phrase` the HTTP reason phrase."""
        head = f"{status} {phrase or reason}" if status is not None else reason
        message = f"{self.method} {self.safe_url} -> {head}" + (f": {detail}" if detail else "")
        for secret in self.secrets:
            message, body = message.replace(secret, "***"), body.replace(secret, "***")
        return cls(" ".join(message.split()), url=self.safe_url, status=status, reason=reason,
                   body=" ".join(body.split()), **kw)


class _Budget:
    """One rate budget: starts paced evenly, and a Retry-After hold (monotonic time)."""

    def __init__(self, rate: RateLimit) -> None:
        # The bucket holds half the margin as slack, so a start the event loop wakes late does
        # not push back every later one; N + 1 starts still span `per` + half the margin.
        margin = rate.interval * rate.requests - rate.per
        cap = 1 + margin / 2 / rate.interval  # in starts
        self.limiter = AsyncLimiter(cap, cap * rate.interval)
        self.not_before = -math.inf
        self.asked = ""  # the host whose Retry-After set `not_before`, and for how long


@dataclass
class _Host:
    """One origin: its budget, and its circuit once open (the error every later send gets)."""

    name: str
    budget: _Budget
    circuit: tuple[type[Abort], str, str] | None = None  # class, reason, why
    unreached: int = 0  # requests in a row that never connected, all retries spent


class Client:
    """The run's HTTP transport. Use as `async with Client(settings) as client:`."""

    def __init__(self, settings: ClientSettings, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        s = self.settings = settings
        self._clock, self._sleep, self._rand = clock, sleep, rand
        self._session: aiohttp.ClientSession | None = None
        self._sem = asyncio.Semaphore(s.concurrency)
        self._scopes, self._hints = scopes(s.credentials), scopes(s.auth_hints)
        self._secrets = [x for scope in self._scopes for x in _secrets_of(scope.value)]
        self._hosts: dict[str, _Host] = {}
        self._budgets: dict[str, _Budget] = {}
        self._timeout = aiohttp.ClientTimeout(total=s.total_timeout, connect=s.connect_timeout,
                                              sock_read=s.read_timeout)
        self._stream_timeout = aiohttp.ClientTimeout(connect=s.connect_timeout,
                                                     sock_read=s.read_timeout)
        self._started: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self._bytes = self._mended = 0  # mended: JSON kept with U+FFFD for text not Unicode
        self._held = 0.0
        self._circuits: list[str] = []
        self._behind: dict[str, deque[float]] = {}  # our clock minus each host's Date header
        # a budget's stop time (on `clock`): no request waits, retries or starts past it
        self.deadline: float | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # the semaphore is the one concurrency cap
            timeout=self._timeout, headers={"User-Agent": self.settings.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies are credentials too; we need none
            json_serialize=lambda value: orjson.dumps(value).decode(), trust_env=False)
        # aiohttp resends an idempotent request at once when a kept-alive connection drops, past
        # the budget; our own retry waits its turn instead.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def get(self, url: str, *, params: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None,
                  expect: Literal["json", "bytes"] = "json") -> Reply:
        return await self._request("GET", url, params, headers, None, expect)

    async def post(self, url: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> Reply:
        return await self._request("POST", url, params, headers, json, "json")

    @asynccontextmanager
    async def stream(self, url: str, *,
                     headers: Mapping[str, str] | None = None) -> AsyncIterator[Stream]:
        """GET a 2xx body in chunks, uncapped (files): up to the response head as get(); the
        concurrency slot is held until the block ends; no total timeout."""
        call = self._call("GET", url, None, headers)
        async with AsyncExitStack() as outer:

            async def attempt() -> Stream:
                hop = replace(call)
                async with AsyncExitStack() as stack:
                    resp = await stack.enter_async_context(
                        self._exchange(hop, headers, None, self._stream_timeout, scoped=False))
                    if 200 <= resp.status < 300:
                        outer.push_async_exit(stack.pop_all())
                        chunks = self._chunks(hop, resp.content.iter_chunked(1 << 16))
                        outer.push_async_callback(chunks.aclose)
                        return Stream(resp.status, resp.headers, chunks)
                    self._classify(hop, resp, await self._read(hop, resp), "bytes")
                raise hop.fail(BadResponse, "unexpected-status", "no body to stream",
                               status=resp.status, phrase=resp.reason or "")

            yield await self._retrying(attempt)

    def metrics(self) -> dict[str, Any]:
        """Counters for the manifest (JSON-ready: string keys only)."""
        return {"requests": dict(self._started), "responses": dict(self._statuses),
                "retries": dict(self._retries), "bytes": self._bytes,
                "retry_after_wait_s": round(self._held, 3),
                "circuits_opened": list(self._circuits), "json_mended": self._mended,
                "clock_behind_s": {h: round(statistics.median(seen))
                                   for h, seen in self._behind.items()}}

    async def _request(self, method: str, url: str, params: Mapping[str, Any] | None,
                       headers: Mapping[str, str] | None, json: Any, expect: str) -> Reply:
        call = self._call(method, url, params, headers)

        async def attempt() -> Reply:
            hop = replace(call)
            async with self._exchange(hop, headers, json, self._timeout) as resp:
                raw = await self._read(hop, resp)
            return self._classify(hop, resp, raw, expect)

        return await self._retrying(attempt)

    def _call(self, method: str, url: str, params: Mapping[str, Any] | None,
              headers: Mapping[str, str] | None) -> _Call:
        if self._session is None:
            raise RuntimeError("Client used outside 'async with'")
        try:
            target = URL(url).extend_query(dict(params or {}))
        except (ValueError, TypeError) as exc:
            raise RequestError(f"{method} <unparseable url> -> bad-url: {exc}",
                               reason="bad-url") from None
        secrets = [*self._secrets, *(v for k, v in target.query.items()
                                     if k.lower() in SECRET_PARAMS and v)]
        for k, v in (headers or {}).items():
            if k.lower() in ("authorization", "proxy-authorization", "cookie"):
                secrets += _secrets_of(v)
        call = _Call(method, target, secrets)
        if target.scheme not in ("http", "https") or not target.host:
            raise call.fail(RequestError, "bad-url", "not an absolute http(s) URL")
        return call

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Attempts while they fail with RetryableError, per the policy; errors carry how many."""
        policy, attempt = self.settings.retry, 1
        while True:
            try:
                return await attempt_once()
            except RetryableError as exc:
                if attempt == policy.attempts:
                    if exc.reason == "connect":
                        self._unreached(exc, attempt)
                    cls = BadResponse if exc.reason in ("bad-json", "bad-encoding") else GiveUp
                    raise _final(cls, exc, attempt, f"gave up after {attempt} attempts") from None
                delay = backoff_delay(attempt, policy, self._rand)
                self._in_time(delay, f"{exc} (a retry would end past the budget's stop)")
                self._retries[exc.reason] += 1
                await self._sleep(delay)
                attempt += 1
            except RequestError as exc:
                exc.attempts = attempt
                raise

    @asynccontextmanager
    async def _exchange(self, call: _Call, headers: Mapping[str, str] | None,
                        json: Any, timeout: aiohttp.ClientTimeout, *, scoped: bool = True,
                        ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One attempt up to its final response head, body unread, in a concurrency slot.
        aiohttp follows redirects (and drops the caller's secrets once they leave the origin);
        each later hop is admitted by its own budget. A credential goes only with the operation
        asked for: the scope of the first URL, to hops it still covers; never with a stream."""
        session = self._session
        if session is None:
            raise call.fail(Abort, "closed", "the client was closed")
        scope = next((s for s in self._scopes if s.covers(call.url)), None) if scoped else None
        await self._hold(call, self._host(call.url))  # waited out without a slot
        hops = 0

        async def hop(req: aiohttp.ClientRequest,
                      send: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
            nonlocal hops
            call.url, host = req.url, self._host(req.url)
            if hops:  # the first was admitted before aiohttp's total timeout started
                await self._admit(call, host)
            hops += 1
            if scope is not None and scope.covers(req.url) and "Authorization" not in req.headers:
                req.headers["Authorization"] = scope.value
            resp = await send(req)
            host.unreached = 0  # it answers
            date = http_date(resp.headers.get("Date", ""))
            if date is not None and abs(behind := time.time() - date) < 86_400:  # else no clock
                self._behind.setdefault(host.name, deque(maxlen=999)).append(behind)
            self._statuses[str(resp.status)] += 1
            return resp

        async with self._sem:
            await self._admit(call, self._host(call.url))
            try:
                resp = await session.request(
                    call.method, call.url, headers=headers, json=json, timeout=timeout,
                    max_redirects=MAX_REDIRECTS + 1, middlewares=(hop,))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._transport_error(call, exc) from None
            async with resp:
                yield resp

    async def _hold(self, call: _Call, host: _Host) -> None:
        """Wait out the budget's Retry-After hold; refuse when the host's circuit is open, the
        hold is past retry_after_max (HeldOff) or would end past the deadline (BudgetSpent)."""
        limit = self.settings.retry.retry_after_max
        while True:
            if host.circuit is not None:
                cls, reason, why = host.circuit
                raise call.fail(cls, reason, f"not sent: {host.name} {why}",
                                status=403 if cls is Blocked else None)
            wait = host.budget.not_before - self._clock()
            if wait > limit:
                raise call.fail(HeldOff, "retry-after", f"not sent: {host.budget.asked}, "
                                f"longer than the {limit:g} s a run waits at most")
            self._in_time(max(wait, 0.0), f"{call.method} {call.safe_url}: not sent: " + (
                f"{host.budget.asked}, past the budget's stop" if wait > 0 else "budget spent"))
            if wait <= 0:
                return
            self._held += wait
            await self._sleep(wait)

    async def _admit(self, call: _Call, host: _Host) -> None:
        """The next evenly paced start of the host's budget, outside any Retry-After hold."""
        while True:
            await self._hold(call, host)
            await host.budget.limiter.acquire()
            now = self._clock()
            if host.circuit is None and now >= host.budget.not_before and \
                    (self.deadline is None or now < self.deadline):
                break  # else a hold began or the stop came while we queued: _hold says which
        self._started[host.name] += 1

    def _in_time(self, wait: float, why: str) -> None:
        """A wait that would end at or past the deadline is not waited: BudgetSpent."""
        if self.deadline is not None and self._clock() + wait >= self.deadline:
            raise BudgetSpent(why)

    def _host(self, url: URL) -> _Host:
        name = origin_of(url)
        if name not in self._hosts:
            key = "" if name in self.settings.shared_origins else name
            if key not in self._budgets:
                self._budgets[key] = _Budget(self.settings.default_rate)
            self._hosts[name] = _Host(name, self._budgets[key])
        return self._hosts[name]

    async def _chunks(self, call: _Call, source: AsyncIterator[bytes],
                      ) -> AsyncGenerator[bytes]:
        """A streamed body's chunks, counted; a connection lost on the way is RetryableError."""
        try:
            async for chunk in source:
                self._bytes += len(chunk)
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(call, exc) from None

    async def _read(self, call: _Call, resp: aiohttp.ClientResponse) -> bytes:
        """The decompressed body, refused past max_body (a gzip bomb included)."""
        cap, size, parts = self.settings.max_body, 0, []
        turn = large_body_turn.get()
        async with aclosing(self._chunks(call, resp.content.iter_any())) as chunks:
            async for chunk in chunks:
                if turn is not None and size + len(chunk) > LARGE_BODY:
                    await turn()
                    turn = None
                size += len(chunk)
                if size > cap:
                    raise call.fail(RequestError, "too-large", f"body over {cap:,} bytes "
                                    "(http.max_body)", status=resp.status,
                                    phrase=resp.reason or "")
                parts.append(chunk)
        return b"".join(parts)

    def _classify(self, call: _Call, resp: aiohttp.ClientResponse, raw: bytes,
                  expect: str) -> Reply:
        status, phrase, headers = resp.status, resp.reason or "", resp.headers
        if status < 400:
            data = None
            if expect == "json" and 200 <= status < 300 and status != 204:
                data, raw = self._json(call, status, phrase, raw)
            return Reply(status, headers, raw, call.safe_url, data)
        host = self._host(call.url)
        summary = summarize(raw, headers.get("Content-Type", ""))

        def fail(cls: type[RequestError], detail: str = summary,
                 reason: str = phrase or str(status), **kw: Any) -> RequestError:
            return call.fail(cls, reason, detail, status=status, phrase=phrase, body=summary,
                             **kw)

        if status in self.settings.retry.statuses:
            now = http_date(headers.get("Date", "")) or time.time()  # an HTTP-date is on its clock
            wait = parse_retry_after(headers.get("Retry-After"), now)
            if wait is not None and self._clock() + wait > host.budget.not_before:
                # the whole budget waits, not only this request; too long a wait stops the run
                host.budget.not_before = self._clock() + wait
                host.budget.asked = f"{host.name} asked by Retry-After to wait {wait:.0f} s"
            if wait is not None and wait > (limit := self.settings.retry.retry_after_max):
                raise fail(HeldOff, f"Retry-After {wait:.0f} s, longer than the {limit:g} s "
                           "a run waits at most", reason="retry-after")
            raise fail(RetryableError, reason=str(status), retry_after=wait)
        if status == 404:
            raise fail(NotFound)
        if status == 422 or (status == 400 and b"max page reached" in raw.lower()):
            raise fail(WindowExhausted)
        if status == 403 and is_html(raw[:64], headers.get("Content-Type", "")):
            self._open_circuit(host, Blocked, "circuit-open", f"blocked us earlier ({status} "
                               f"{phrase})")
            raise fail(Blocked)
        if status in (401, 403):
            hint = next((h.value for h in self._hints if h.covers(call.url)), None)
            first = resp.history[0].url if resp.history else call.url  # before any redirect
            scope = next((s for s in self._scopes if s.covers(first)), None)
            if scope is not None and not scope.covers(call.url):  # withheld there on purpose
                asked = next((h.value for h in self._hints if h.covers(first)), "the credential")
                raise fail(AuthError, f"{summary} (redirected to {call.safe_url}, outside "
                           f"{asked}'s scope: the token was not sent there)")
            raise fail(AuthError, f"{summary} (check {hint})" if hint else f"{summary} (a "
                       "public operation, sent without credentials: is this the right host?)")
        raise fail(RequestError)

    def _json(self, call: _Call, status: int, phrase: str, raw: bytes) -> tuple[Any, bytes]:
        try:
            return orjson.loads(raw), raw
        except orjson.JSONDecodeError:
            pass
        try:
            data, raw = lenient_json(raw)
        except Unkept as exc:  # the same body would come again: not retried
            raise call.fail(BadResponse, "bad-json", f"JSON that cannot be kept as served: {exc}",
                            status=status, phrase=phrase) from None
        except ValueError:
            summary = summarize(raw)
            raise call.fail(RetryableError, "bad-json", f"invalid JSON: {summary}",
                            status=status, phrase=phrase, body=summary) from None
        self._mended += 1
        log.warning("%s: text that is not Unicode (a lone surrogate, bytes that are not UTF-8) "
                    "replaced by U+FFFD", call.safe_url)
        return data, raw

    def _transport_error(self, call: _Call, exc: BaseException) -> RequestError:
        """A failed exchange in words a person understands, and whether to retry it."""
        s, host, where = self.settings, call.url.host, f"{call.url.host}:{call.url.port}"
        os_error = getattr(exc, "os_error", None)
        refused = os_error is not None and (os_error.errno == errno.ECONNREFUSED
                                            or "refused" in str(os_error).lower())
        if isinstance(exc.__cause__, ContentEncodingError):  # the body is bad, not the connection
            coding = (str(exc.__cause__.message).rsplit(":", 1)[-1].split() or ["encoded"])[0]
            return call.fail(RetryableError, "bad-encoding", f"the body is not valid {coding} "
                             "as its Content-Encoding says")
        for kind, reason, words in (
            (aiohttp.ConnectionTimeoutError, "connect",
             f"timed out after {s.connect_timeout:g} s connecting to {where}"),
            (aiohttp.SocketTimeoutError, "timeout",
             f"timed out after {s.read_timeout:g} s with nothing received"),
            (TimeoutError, "timeout", f"timed out after {s.total_timeout:g} s in all"),
            (aiohttp.ClientPayloadError, "truncated", "the connection closed inside the body"),
            (aiohttp.ClientConnectorDNSError, "connect", f"DNS lookup failed for {host}"),
            (aiohttp.ClientConnectorCertificateError, "connect",
             f"TLS handshake failed with {host}: its certificate is not trusted"),
            (aiohttp.ClientSSLError, "connect", f"TLS handshake failed with {host}"),
            (aiohttp.ClientConnectorError, "connect", f"connection refused by {where}"
             if refused else f"could not connect to {where}"),
            (aiohttp.ServerDisconnectedError, "reset",
             "the server closed the connection without answering"),
            (aiohttp.ClientConnectionError | OSError, "reset", "the connection was lost"),
        ):
            if isinstance(exc, kind):
                return call.fail(RetryableError, reason, words)
        if isinstance(exc, aiohttp.TooManyRedirects):
            return call.fail(RequestError, "redirects", f"more than {MAX_REDIRECTS} redirects")
        if isinstance(exc, aiohttp.RedirectClientError):  # its first argument: the Location
            return call.fail(RequestError, "bad-redirect", f"Location {str(exc.args[0])[:200]!r} "
                             "is not an http(s) URL")
        message = getattr(exc, "message", "") or str(exc)
        return call.fail(RequestError, "client-error", f"not a usable HTTP response: {message}")

    def _unreached(self, last: RetryableError, attempts: int) -> None:
        """A request never connected through all its attempts: the UNREACHABLE_AFTER-th in a row
        to the origin it last tried opens that origin's circuit (raises Unreachable)."""
        host = self._host(URL(last.url))
        host.unreached += 1
        if host.unreached >= UNREACHABLE_AFTER:
            self._open_circuit(host, Unreachable, "unreachable", (
                f"is unreachable: {host.unreached} requests in a row could not connect in "
                f"{attempts} attempts each (the last: {last})"))
        if host.circuit is not None and host.circuit[0] is Unreachable:
            raise Unreachable(f"{host.name} {host.circuit[2]}", url=last.url,
                              reason="unreachable", attempts=attempts)

    def _open_circuit(self, host: _Host, cls: type[Abort], reason: str, why: str) -> None:
        """The first reason to stop sending to `host` stays (later sends raise its error)."""
        if host.circuit is None:
            host.circuit = (cls, reason, why)
            self._circuits.append(host.name)


def _final(cls: type[RequestError], last: RequestError, attempts: int, why: str) -> RequestError:
    return cls(f"{last} ({why})", url=last.url, status=last.status, reason=last.reason,
               body=last.body, attempts=attempts)

