"""Transport: the one aiohttp session, per-origin sliding windows, retries, circuit breaker."""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal, TypeVar

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from harvester.errors import (
    Abort,
    AuthError,
    BadResponse,
    Blocked,
    ConfigError,
    GiveUp,
    NotFound,
    RequestError,
    RetryableError,
    Unreachable,
    WindowExhausted,
)

log = logging.getLogger("harvester.client")

SENSITIVE_PARAMS = frozenset({"access_token", "token", "private_link"})
# Starts are spaced `per * 2.5%` more than the window (at most 0.25 s), so that jitter between
# our clock and the server's cannot show N+1 arrivals in one window; the rate stays >= 0.975.
MARGIN_FRACTION = 0.025
MARGIN_MAX = 0.25
MAX_REDIRECTS = 10
# requests in a row to one origin that could not connect through all their retries before the
# run stops talking to it (concurrent requests fail together when a host goes down)
UNREACHABLE_AFTER = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CROSS_ORIGIN_STRIP = ("Authorization", "Proxy-Authorization", "Cookie")

V = TypeVar("V")
T = TypeVar("T")


class FrozenMap(Mapping[str, V]):
    """A read-only, hashable mapping (so the settings that hold one stay hashable)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        self._d: dict[str, V] = dict(items)

    def __getitem__(self, key: str) -> V:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` request starts in any window of `per` seconds."""

    requests: int
    per: float

    def __post_init__(self) -> None:
        if self.requests < 1 or not self.per > 0:
            raise ConfigError(f"rate limit needs requests >= 1 and per > 0, got {self!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, how often, and how long to wait between attempts."""

    attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 900.0  # a longer Retry-After -> give up rather than sleep for hours
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be >= 1, got {self.attempts}")


@dataclass(frozen=True)
class ClientSettings:
    """Everything the transport needs; origins are normalised to scheme://host:port."""

    user_agent: str
    concurrency: int = 4
    default_rate: RateLimit = RateLimit(1, 1.0)
    rates: Mapping[str, RateLimit] = field(default_factory=FrozenMap)
    connect_timeout: float = 10
    read_timeout: float = 60
    total_timeout: float = 120
    retry: RetryPolicy = RetryPolicy()
    # origin -> full Authorization header value ("token X", "Basic Y"); never shown in repr
    credentials: Mapping[str, str] = field(default_factory=FrozenMap, repr=False)
    # origins that draw on ONE rate budget (the first one's rate): Figshare asks for 1 request
    # per second overall, so by default the API and stats hosts share it
    shared_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.user_agent.strip():
            raise ConfigError("user_agent must not be empty")
        for name in ("rates", "credentials"):
            given: Mapping[str, Any] = getattr(self, name)
            try:
                norm = FrozenMap((origin_of(k), v) for k, v in given.items())
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            object.__setattr__(self, name, norm)
        try:
            shared = tuple(dict.fromkeys(origin_of(o) for o in self.shared_origins))
        except ValueError as exc:
            raise ConfigError(f"shared_origins: {exc}") from None
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
        """The body as JSON (already parsed when the request expected JSON)."""
        return self.data if self.data is not None else orjson.loads(self.body)


class Stream:
    """A 2xx response whose body is read chunk by chunk: `async for chunk in stream`.

    A connection lost mid-body raises RetryableError ("truncated", "reset" or "timeout");
    the caller decides how to go on (a download resumes with a Range request).
    """

    def __init__(self, status: int, headers: Mapping[str, str], url: str,
                 content: aiohttp.StreamReader, call: _Call, client: Client,
                 chunk_size: int) -> None:
        self.status = status
        self.headers = headers
        self.url = url  # final, sanitized
        self._content, self._call, self._client = content, call, client
        self._chunk_size = chunk_size

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.read(self._chunk_size)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _transport_error(self._call, exc) from None
        if not chunk:
            raise StopAsyncIteration
        self._client._bytes += len(chunk)
        return chunk


# ---- pure functions: policy arithmetic and URL hygiene -------------------------------------------


def origin_of(url: str | URL) -> str:
    """`scheme://host:port` of an absolute URL (default ports made explicit)."""
    u = URL(url)
    if not u.scheme or not u.host:
        raise ValueError(f"not an absolute URL: {sanitize_url(u)!r}")
    return f"{u.scheme.lower()}://{u.host.lower()}:{u.port}"


def sanitize_url(url: str | URL) -> str:
    """The URL without userinfo, fragment or credential-bearing query parameters."""
    u = URL(url)
    if u.user is not None or u.password is not None:
        u = u.with_user(None)
    if u.query_string:
        keep = [(k, v) for k, v in u.query.items() if k.lower() not in SENSITIVE_PARAMS]
        u = u.with_query(keep or None)
    return str(u.with_fragment(None))


def safety_margin(rate: RateLimit) -> float:
    """Extra spacing added to every window (see MARGIN_FRACTION)."""
    return min(MARGIN_FRACTION * rate.per, MARGIN_MAX)


def start_delay(starts: Sequence[float], now: float, rate: RateLimit, pending: int = 0) -> float:
    """Seconds until one more start keeps every `per`-second window at <= `requests` starts.

    `pending` starts were admitted and are not on the wire yet: each takes a place in every
    window from now on, so fewer recorded starts fit. math.inf when the pending ones alone
    fill the window: only one of them being recorded (or given up) can make room."""
    room = rate.requests - pending  # recorded starts a window may still hold beside them
    if len(starts) < room:
        return 0.0
    if room <= 0:
        return math.inf
    return max(0.0, starts[-room] + rate.per + safety_margin(rate) - now)


def backoff_delay(attempt: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """Full-jitter wait before retry number `attempt` (1 = the first retry), capped."""
    cap = min(policy.backoff_max, policy.backoff_base * 2.0 ** min(attempt - 1, 64))
    return rand() * cap


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP-date (`now` is epoch)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        when = _http_date(text)
        return None if when is None else max(0.0, when - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _http_date(text: str) -> float | None:
    try:
        dt = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _one_line(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())


def _snippet(raw: bytes, secrets: Iterable[str]) -> str:
    """The start of a body on one line, credentials masked: for error messages."""
    return _one_line(raw[:400].decode("utf-8", "replace"), secrets)[:200]


def _secrets_of(header_value: str) -> list[str]:
    """The header value and its bare credential (the part after "token " / "Basic ")."""
    parts = header_value.split()
    return [header_value, parts[-1]] if len(parts) > 1 else [header_value]


def lenient_json(raw: bytes) -> Any:
    """A body orjson refused, read again by Python's json, which accepts what orjson does not:
    a lone UTF-16 surrogate escape ("\\ud800", text cut inside an emoji) or bytes that are not
    UTF-8. Such characters become U+FFFD, so the result has only text every file format can
    hold. Raises ValueError when the body is not JSON at all."""
    try:
        return _mend(json.loads(raw.decode("utf-8", "replace")))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_mend(v) for v in value]
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    return value


def _transport_error(call: _Call, exc: BaseException) -> RequestError:
    """What a failed exchange means for the caller: retry, or not."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # no connection within connect_timeout
        return call.fail(RetryableError, "connect", type(exc).__name__)
    if isinstance(exc, TimeoutError):  # aiohttp's or the _Watchdog's (which says why)
        return call.fail(RetryableError, "timeout", str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return call.fail(RetryableError, "truncated", str(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return call.fail(RetryableError, "connect", type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return call.fail(RetryableError, "reset", f"{type(exc).__name__}: {exc}")
    return call.fail(RequestError, "client-error", f"{type(exc).__name__}: {exc}")


# ---- per-origin state ----------------------------------------------------------------------------


class SlidingWindow:
    """The last `requests` start times to one origin, plus a Retry-After hold (monotonic times).

    Not aiolimiter: its leaky bucket lets a burst of N through on top of the drip, so one
    window of `per` seconds can see up to 2N starts; the promise here is N, retries included.
    """

    def __init__(self, rate: RateLimit) -> None:
        self.rate = rate
        # Only starts that can still delay another are kept: at most `requests`, and none
        # older than a window, so a generous limit (100,000 per hour) costs memory only for
        # the starts it really has in its window.
        self.starts: deque[float] = deque(maxlen=rate.requests)
        self.span = rate.per + safety_margin(rate)
        self.not_before = -math.inf
        self.pending = 0  # admitted starts whose requests are not written yet
        self._waiters: list[asyncio.Future[None]] = []  # for a pending start to end

    def delay(self, now: float) -> float:
        """Seconds until one more start may be admitted (math.inf: when a pending one ends)."""
        return max(start_delay(self.starts, now, self.rate, self.pending),
                   self.not_before - now, 0.0)

    def admit(self) -> None:
        """One more start is on its way: it holds a place in every window until it ends."""
        self.pending += 1

    def started(self, now: float) -> None:
        """An admitted start is on the wire at `now`: from now on a start like any other."""
        self.record(now)
        self.withdraw()

    def withdraw(self) -> None:
        """An admitted start ends (recorded, or nothing was sent): its place is free."""
        self.pending -= 1
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def pending_ended(self) -> None:
        """Wait until one of the pending starts ends."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def record(self, now: float) -> None:
        starts = self.starts
        starts.append(now)
        expired = now - self.span
        while starts[0] <= expired:  # the newest is never expired: the loop stops there
            starts.popleft()

    def hold(self, until: float) -> None:
        self.not_before = max(self.not_before, until)


@dataclass(frozen=True)
class _Circuit:
    """Why an origin gets nothing more sent, and the error every later send raises."""

    cls: type[Abort]  # Blocked (403 HTML) or Unreachable (no connection)
    reason: str  # the label callers and metrics see
    state: str  # "blocked us earlier", "is unreachable"
    why: str
    status: int | None = None

    def refuse(self, call: _Call, origin: str) -> RequestError:
        return call.fail(self.cls, self.reason, f"not sent: {origin} {self.state} ({self.why})",
                         status=self.status)


class _Origin:
    def __init__(self, name: str, rate: RateLimit, share: _Origin | None = None,
                 credential: str | None = None) -> None:
        self.name = name
        self.credential = credential  # the Authorization value that belongs to this origin
        # origins sharing a budget share the window and its lock; the circuit stays per origin
        self.window: SlidingWindow = share.window if share else SlidingWindow(rate)
        # FIFO: waiters for one budget are admitted in arrival order
        self.lock: asyncio.Lock = share.lock if share else asyncio.Lock()
        self.circuit: _Circuit | None = None  # open: nothing more is sent here
        self.unreached = 0  # requests in a row that never connected, all retries spent


# The send whose request is being written, in the task making it (see _Request).
_SENDING: contextvars.ContextVar[_Send | None] = contextvars.ContextVar("sending", default=None)


class _Request(aiohttp.ClientRequest):
    """Calls its send's `ready` once the request is written (or writing it failed): the start
    the rate window counts is never earlier than the bytes on the wire. Counting from when the
    connection was ready, a pause before the write (a garbage collection, another thread
    holding the GIL) delayed the arrival but not the start, and the next window's requests
    could arrive within `per` of it. (aiohttp's trace hooks say the same, at several times the
    cost: every request would pay for all of aiohttp's trace events.)"""

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        try:
            return await super().send(conn)
        finally:
            send = _SENDING.get()
            if send is not None:
                send.started()


class _Send:
    """One send on its way through `Client._slot`; `admitted` from its admission to the origin's
    window until its start is recorded (or it ends without sending)."""

    __slots__ = ("admitted", "origin", "ready")

    def __init__(self, origin: _Origin, ready: Callable[[_Send], None]) -> None:
        self.origin = origin
        self.ready = ready  # records the start (Client._record)
        self.admitted = False

    def started(self) -> None:
        """Its request is written: count the start, once (a later call changes nothing)."""
        if self.admitted:
            self.admitted = False
            self.ready(self)

    def withdraw(self) -> None:
        """Nothing was written: free its place in the window (once)."""
        if self.admitted:
            self.admitted = False
            self.origin.window.withdraw()


class _Slot:
    """Client._slot: wait for the origin's window, then hold a concurrency slot.

    An admitted send holds a place in every window of its origin until the request records
    its start (`_SENDING` tells it which send): the connection is up and the request written,
    so neither connection set-up nor a pause before the write can put our start ahead of the
    server's arrival clock. Admission checks and takes that place in one step, so admitted
    sends go on side by side. (The origin's lock was once held until the start was recorded:
    one send at a time was connecting and writing, and every send waited for the one before,
    which also cost a loop of bare client GETs an eighth of its event-loop time; the lock now
    only orders the waiters.)
    """

    __slots__ = ("acquired", "call", "client", "origin", "send", "token")

    def __init__(self, client: Client, call: _Call, origin: _Origin) -> None:
        self.client, self.call, self.origin = client, call, origin
        self.send = _Send(origin, client._record)
        self.acquired = False
        self.token: contextvars.Token[_Send | None] | None = None

    async def __aenter__(self) -> _Send:
        client, origin, send = self.client, self.origin, self.send
        sem = client._sem
        assert sem is not None
        await origin.lock.acquire()
        try:
            while True:
                await client._await_window(self.call, origin)
                # Only now compete for a concurrency slot, so an origin waiting on its rate
                # never holds slots that another origin could use.
                await sem.acquire()
                self.acquired = True
                if origin.circuit is None and origin.window.delay(client._clock()) <= 0:
                    break
                sem.release()
                self.acquired = False
            origin.window.admit()  # checked and taken with no await between: never overbooked
            send.admitted = True
        except BaseException:
            self._release()
            raise
        finally:
            origin.lock.release()
        self.token = _SENDING.set(send)
        return send

    async def __aexit__(self, *exc: object) -> None:
        if self.token is not None:
            _SENDING.reset(self.token)
            self.token = None
        self._release()

    def _release(self) -> None:
        self.send.withdraw()
        if self.acquired:
            self.acquired = False
            assert self.client._sem is not None
            self.client._sem.release()


class _Call:
    """What error messages need to know about the request being made."""

    __slots__ = ("_safe", "method", "secrets", "url")

    def __init__(self, method: str, url: URL, secrets: list[str]) -> None:
        self.method, self.url, self.secrets = method, url, secrets
        self._safe: tuple[URL, str] | None = None

    @property
    def safe_url(self) -> str:
        """The URL as it may be shown (every reply carries it): computed once per URL."""
        if self._safe is None or self._safe[0] is not self.url:
            u = self.url
            plain = (not u.raw_query_string and not u.raw_fragment and u.raw_user is None
                     and u.raw_password is None)
            self._safe = (u, str(u) if plain else sanitize_url(u))
        return self._safe[1]

    def fail(self, cls: type[RequestError], reason: str, detail: str = "", *,
             status: int | None = None, phrase: str = "", body: str = "",
             **kw: Any) -> RequestError:
        """`reason` is the label callers and metrics see; `phrase` the HTTP reason phrase."""
        head = f"{status} {phrase or reason}" if status is not None else reason
        msg = _one_line(f"{self.method} {self.safe_url} -> {head}: {detail}", self.secrets)
        return cls(msg, url=self.safe_url, status=status, reason=reason,
                   body=_one_line(body, self.secrets), **kw)


class _Watched:
    """One buffered exchange under the `_Watchdog`, made by `task`."""

    __slots__ = ("began", "cancelling", "response", "seen", "send", "settled", "since", "task",
                 "why")

    def __init__(self, send: _Send, now: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.send, self.began = task, send, now
        self.cancelling = task.cancelling()  # cancellations asked before ours
        self.why = ""  # set when the watchdog cancels the task: the TimeoutError's message
        self.settled = False  # that cancellation taken back (Task.uncancel)
        self.response: aiohttp.ClientResponse | None = None
        self.since: float | None = None  # when it last made progress (None: not sent yet)
        self.seen = -1  # body bytes at that time (-1: no response head yet)

    def settle(self) -> bool:
        """Take back the watchdog's cancellation, once (the task's count of cancellations must
        come back to what it was, however the exchange ended). True when it was the only
        one: the exchange then raises TimeoutError(why) instead of CancelledError."""
        if not self.why or self.settled:
            return False
        self.settled = True
        return self.task.uncancel() <= self.cancelling


class _Watchdog:
    """The read and total timeouts of buffered exchanges (`http.timeout.read`, `.total`).

    An exchange ends with TimeoutError when, once its request is written, nothing arrives for
    `read` seconds (before the response head or inside the body: a slow answer is fine while
    bytes keep coming), or when it has taken `total` seconds in all. One task looks at every
    exchange in flight a few times per `read` (once to 100 times a second) instead of aiohttp's
    timers: its sock_read cancels and re-arms a timer for every chunk received and its total
    arms one per request (an unthrottled harvest's event loop went from 133 to 117 us a
    request without them; a bare aiohttp loop spends 84). A stall is noticed up to one tick
    late. Connecting keeps aiohttp's sock_connect; streams (file downloads) its sock_read."""

    def __init__(self, read: float, total: float) -> None:
        self.read, self.total = read, total
        self.tick = max(0.01, min(1.0, read / 4, total / 4))  # a tiny `read`: 100 looks/s
        self.watched: set[_Watched] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, send: _Send) -> _Watched:
        loop = asyncio.get_running_loop()
        entry = _Watched(send, loop.time())
        self.watched.add(entry)
        if self.task is None:
            self.task = loop.create_task(self._run())
        return entry

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.watched:
                await asyncio.sleep(self.tick)
                now = loop.time()
                for entry in self.watched:
                    if entry.why:
                        continue  # cancelled already, on its way out
                    if now - entry.began >= self.total:
                        self._expire(entry, f"no whole answer within {self.total:g} s")
                    elif not entry.send.admitted:  # written: from now on bytes must come
                        resp = entry.response
                        got = -1 if resp is None else resp.content.total_bytes
                        if entry.since is None or got != entry.seen:
                            entry.since, entry.seen = now, got
                        elif now - entry.since >= self.read:
                            self._expire(entry, f"nothing received for {self.read:g} s")
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    @staticmethod
    def _expire(entry: _Watched, why: str) -> None:
        entry.why = why
        entry.task.cancel()  # the exchange turns it into TimeoutError(why) (Client._send)


# ---- the client ----------------------------------------------------------------------------------


class Client:
    """The run's HTTP transport. Use as `async with Client(settings) as client:`."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._clock, self._sleep, self._rand = clock, sleep, rand
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._watch: _Watchdog | None = None
        self._origins: dict[str, _Origin] = {}
        self._by_authority: dict[tuple[str, str], _Origin] = {}
        self._secrets = [s for v in settings.credentials.values() for s in _secrets_of(str(v))]
        self._started: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self._bytes = 0
        self._mended = 0  # JSON bodies kept with U+FFFD for text that is not Unicode
        self._held = 0.0
        self._circuits: list[str] = []

    async def __aenter__(self) -> Client:
        s = self.settings
        self._sem = asyncio.Semaphore(s.concurrency)
        self._watch = _Watchdog(s.read_timeout, s.total_timeout)
        self._session = aiohttp.ClientSession(
            # limit=0: the semaphore is the one concurrency cap
            connector=aiohttp.TCPConnector(limit=0),
            request_class=_Request,  # records each start once its request is written
            # the read and total timeouts of buffered exchanges are _Watchdog's; streams set
            # their own
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout),
            headers={"User-Agent": s.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies are credentials too; we need none
            trust_env=False,
        )
        # aiohttp silently resends an idempotent request once after a disconnect, straight away;
        # our own retry waits its turn in the window instead. (Were this private flag ever gone,
        # the hook would still count such a resend, though it could not delay it.)
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session (idempotent)."""
        session, self._session = self._session, None
        if self._watch is not None:
            self._watch.close()
        if session is not None:
            await session.close()

    async def get(self, url: str, *, params: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None,
                  expect: Literal["json", "bytes"] = "json") -> Reply:
        return await self._request("GET", url, params, headers, None, expect)

    @asynccontextmanager
    async def stream(self, url: str, *, headers: Mapping[str, str] | None = None,
                     chunk_size: int = 1 << 16) -> AsyncIterator[Stream]:
        """GET `url` and read its 2xx body in chunks, for bodies too large to hold in memory.

        Up to the response head everything is as for get(): the origin's rate window, the
        concurrency slot (held until the block ends), redirects followed by hand with
        credentials kept to their origin, retries of retryable statuses and connection
        failures. No total timeout applies to the body; the read timeout does.
        """
        call = self._call("GET", url, None, headers)
        async with AsyncExitStack() as stack:
            stream = await self._retrying(
                lambda: stack.enter_async_context(self._open_stream(call, headers, chunk_size)))
            yield stream

    async def post(self, url: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None,
                   expect: Literal["json", "bytes"] = "json") -> Reply:
        hdrs = CIMultiDict(headers or {})
        body = None
        if json is not None:
            body = orjson.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        return await self._request("POST", url, params, hdrs, body, expect)

    def metrics(self) -> dict[str, Any]:
        """Counters for the manifest (JSON-ready: string keys only)."""
        return {
            "requests": dict(self._started),
            "responses": dict(self._statuses),
            "retries": dict(self._retries),
            "bytes": self._bytes,
            "retry_after_wait_s": round(self._held, 3),
            "circuits_opened": list(self._circuits),
            "json_mended": self._mended,  # bodies kept with U+FFFD (see lenient_json)
        }

    # -- internals --

    async def _request(self, method: str, url: str, params: Mapping[str, Any] | None,
                       headers: Mapping[str, str] | None, body: bytes | None,
                       expect: str) -> Reply:
        if expect not in ("json", "bytes"):
            raise ValueError(f"expect must be 'json' or 'bytes', not {expect!r}")
        call = self._call(method, url, params, headers)
        return await self._retrying(lambda: self._exchange(call, headers, body, expect))

    def _call(self, method: str, url: str, params: Mapping[str, Any] | None,
              headers: Mapping[str, str] | None) -> _Call:
        if self._session is None:
            raise RuntimeError("Client used outside 'async with'")
        try:
            target = URL(url)
            if params:
                target = target.extend_query(dict(params))
        except ValueError as exc:
            raise RequestError(f"{method} <unparseable url> -> bad-url: {exc}",
                               reason="bad-url") from None
        secrets = self._secrets  # shared and never mutated: copied before anything is added
        if target.query_string:
            secrets = [*secrets, *(v for k, v in target.query.items()
                                   if k.lower() in SENSITIVE_PARAMS and v)]
        for k, v in (headers or {}).items():
            if k.lower() in ("authorization", "proxy-authorization", "cookie"):
                secrets = [*secrets, *_secrets_of(v)]
        call = _Call(method, target, secrets)
        if not target.absolute or target.scheme not in ("http", "https"):
            raise call.fail(RequestError, "bad-url", "not an absolute http(s) URL")
        return call

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run one attempt after another while they fail with RetryableError, per the policy."""
        policy = self.settings.retry
        last: RetryableError | None = None
        for attempt in range(1, policy.attempts + 1):
            try:
                return await attempt_once()
            except RetryableError as exc:
                last = exc
                if exc.retry_after is not None and exc.retry_after > policy.retry_after_max:
                    raise GiveUp(f"{exc} (Retry-After {exc.retry_after:.0f}s > "
                                 f"{policy.retry_after_max:.0f}s: not retried)", url=exc.url,
                                 status=exc.status, reason=exc.reason, body=exc.body) from None
                if attempt == policy.attempts:
                    break
                self._retries[exc.reason] += 1
                # A Retry-After is enforced by the origin's hold, which the next slot waits for.
                await self._sleep(backoff_delay(attempt, policy, self._rand))
        assert last is not None
        if last.reason == "connect":
            self._unreached(last, policy.attempts)
        cls = BadResponse if last.reason == "bad-json" else GiveUp
        raise cls(f"{last} (gave up after {policy.attempts} attempts)", url=last.url,
                  status=last.status, reason=last.reason, body=last.body) from None

    def _unreached(self, last: RetryableError, attempts: int) -> None:
        """A request never connected, through all its attempts: the UNREACHABLE_AFTER-th in a
        row to the origin it last tried (a redirect's target, maybe) opens the circuit there
        (raises Unreachable; so does every later send to that origin)."""
        origin = self._origin(URL(last.url))
        origin.unreached += 1
        if origin.unreached >= UNREACHABLE_AFTER:
            self._open_circuit(origin, _Circuit(
                Unreachable, "unreachable", "is unreachable",
                f"{origin.unreached} requests in a row could not connect in {attempts} "
                f"attempts each; the last: {last}"))
        circuit = origin.circuit
        if circuit is not None and circuit.cls is Unreachable:
            raise Unreachable(f"{origin.name} is unreachable: {circuit.why}", url=last.url,
                              reason="unreachable")

    def _open_circuit(self, origin: _Origin, circuit: _Circuit) -> None:
        """The first reason to stop sending to `origin` stays (later sends raise its error)."""
        if origin.circuit is None:
            origin.circuit = circuit
            self._circuits.append(origin.name)

    def _headers_for(self, origin: _Origin, start_origin: str,
                     given: CIMultiDict[str]) -> CIMultiDict[str] | None:
        """The caller's headers for one hop: its credentials only on their own origin, and
        caller-supplied secrets stripped once a redirect has left the first origin."""
        if not given and origin.credential is None:
            return None  # the session's own headers only: nothing to copy or merge
        hdrs = given.copy()
        if origin.name != start_origin:
            for name in _CROSS_ORIGIN_STRIP:
                hdrs.popall(name, None)
        if origin.credential is not None and "Authorization" not in hdrs:
            hdrs["Authorization"] = origin.credential
        return hdrs

    async def _exchange(self, first: _Call, headers: Mapping[str, str] | None,
                        body: bytes | None, expect: str) -> Reply:
        """One attempt: send, following redirects by hand so credentials never change origin."""
        call = _Call(first.method, first.url, first.secrets)
        start_origin = ""
        given = CIMultiDict(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            origin = self._origin(call.url)
            start_origin = start_origin or origin.name  # the first hop's origin, looked up once
            hdrs = self._headers_for(origin, start_origin, given)
            status, reason, rheaders, raw = await self._send(call, origin, hdrs, body)
            location = rheaders.get("Location")
            if status in _REDIRECTS and location:
                if status == 303 or (status in (301, 302) and call.method == "POST"):
                    call.method, body = "GET", None
                    given.popall("Content-Type", None)
                try:
                    call.url = call.url.join(URL(location))
                except ValueError:
                    raise call.fail(RequestError, "bad-redirect", f"Location {location!r}",
                                    status=status, phrase=reason) from None
                continue
            return self._classify(call, origin, status, reason, rheaders, raw, expect)
        raise call.fail(RequestError, "redirects", f"more than {MAX_REDIRECTS} redirects")

    @asynccontextmanager
    async def _open_stream(self, first: _Call, headers: Mapping[str, str] | None,
                           chunk_size: int) -> AsyncIterator[Stream]:
        """One attempt of stream(): like _exchange, but a 2xx body stays on the wire."""
        call = _Call(first.method, first.url, first.secrets)
        start_origin = origin_of(first.url)
        given = CIMultiDict(headers or {})
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout,
                                        sock_read=s.read_timeout)
        for _ in range(MAX_REDIRECTS + 1):
            session = self._session
            if session is None:
                raise call.fail(Abort, "closed", "the client was closed")
            origin = self._origin(call.url)
            hdrs = self._headers_for(origin, start_origin, given)
            async with AsyncExitStack() as stack:
                try:
                    send = await stack.enter_async_context(self._slot(call, origin))
                    resp = await stack.enter_async_context(session.request(
                        call.method, call.url, headers=hdrs, allow_redirects=False,
                        timeout=timeout,
                    ))
                    send.started()  # if the request did not say so already
                    origin.unreached = 0  # it answers
                    status, reason = resp.status, resp.reason or ""
                    rheaders = resp.headers
                    self._statuses[str(status)] += 1
                    streaming = 200 <= status < 300
                    raw = b"" if streaming else await resp.read()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise _transport_error(call, exc) from None
                self._bytes += len(raw)
                if streaming:
                    yield Stream(status, rheaders, call.safe_url, resp.content, call, self,
                                 chunk_size)
                    return
            location = rheaders.get("Location")
            if status in _REDIRECTS and location:
                try:
                    call.url = call.url.join(URL(location))
                except ValueError:
                    raise call.fail(RequestError, "bad-redirect", f"Location {location!r}",
                                    status=status, phrase=reason) from None
                continue
            self._classify(call, origin, status, reason, rheaders, raw, "bytes")  # raises >= 400
            raise call.fail(BadResponse, "unexpected-status", "no body to stream",
                            status=status, phrase=reason)
        raise call.fail(RequestError, "redirects", f"more than {MAX_REDIRECTS} redirects")

    async def _send(self, call: _Call, origin: _Origin, hdrs: CIMultiDict[str] | None,
                    body: bytes | None) -> tuple[int, str, CIMultiDictProxy[str], bytes]:
        session = self._session
        if session is None:
            raise call.fail(Abort, "closed", "the client was closed")
        watch = self._watch
        assert watch is not None
        try:
            async with self._slot(call, origin) as send:
                watched = watch.add(send)
                try:
                    async with session.request(
                        call.method, call.url, headers=hdrs, data=body, allow_redirects=False,
                    ) as resp:
                        send.started()  # if the request did not say: counted late, never lost
                        origin.unreached = 0  # it answers
                        watched.response = resp
                        raw = await resp.read()
                        status, reason = resp.status, resp.reason or ""
                        rheaders = resp.headers
                except asyncio.CancelledError:
                    if watched.settle():  # the watchdog's cancellation, and no other
                        raise TimeoutError(watched.why) from None
                    raise
                finally:
                    watched.settle()
                    watch.watched.discard(watched)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _transport_error(call, exc) from None
        self._statuses[str(status)] += 1
        self._bytes += len(raw)
        return status, reason, rheaders, raw

    def _slot(self, call: _Call, origin: _Origin) -> _Slot:
        """Wait for the origin's window, then hold a concurrency slot for the exchange (see
        _Slot). `async with self._slot(call, origin) as send:`."""
        return _Slot(self, call, origin)

    async def _await_window(self, call: _Call, origin: _Origin) -> None:
        """Sleep until the window has room and any Retry-After hold has passed."""
        window, limit = origin.window, self.settings.retry.retry_after_max
        while True:
            if origin.circuit is not None:
                raise origin.circuit.refuse(call, origin.name)
            now = self._clock()
            wait = window.delay(now)
            if wait <= 0:
                return
            if wait == math.inf:  # admitted sends fill the window: wait for one to go out
                await window.pending_ended()
                continue
            held = window.not_before - now
            if held > limit:
                raise call.fail(GiveUp, "retry-after", f"origin held by Retry-After for "
                                f"{held:.0f}s (> {limit:.0f}s)")
            if held >= wait:
                self._held += wait
            await self._sleep(wait)

    def _record(self, send: _Send) -> None:
        send.origin.window.started(self._clock())
        self._started[send.origin.name] += 1

    def _classify(self, call: _Call, origin: _Origin, status: int, reason: str,
                  headers: CIMultiDictProxy[str], raw: bytes, expect: str) -> Reply:
        if status < 400:  # the common case: nothing is prepared for an error message
            data = None
            if expect == "json" and 200 <= status < 300 and status != 204:
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    try:
                        data = lenient_json(raw)
                    except ValueError:
                        snippet = _snippet(raw, call.secrets)
                        raise call.fail(RetryableError, "bad-json", f"invalid JSON: {snippet}",
                                        status=status, phrase=reason, body=snippet) from None
                    # kept, as JSON every reader takes: the journal and the snapshot hold this
                    raw = orjson.dumps(data)
                    self._mended += 1
                    log.warning("%s: text that is not Unicode (a lone surrogate, bytes that are "
                                "not UTF-8) replaced by U+FFFD", call.safe_url)
            return Reply(status, headers, raw, call.safe_url, data)
        snippet = _snippet(raw, call.secrets)

        def fail(cls: type[RequestError], label: str = "", **kw: Any) -> RequestError:
            return call.fail(cls, label or reason or str(status), snippet, status=status,
                             phrase=reason, body=snippet, **kw)

        if status in self.settings.retry.statuses:
            wait = parse_retry_after(headers.get("Retry-After"), self._server_now(headers))
            if wait is not None:
                # The whole origin waits, not only this request.
                origin.window.hold(self._clock() + wait)
            raise fail(RetryableError, str(status), retry_after=wait)
        if status == 404:
            raise fail(NotFound)
        if status == 422 or (status == 400 and b"max page reached" in raw.lower()):
            raise fail(WindowExhausted)
        if status == 401:
            raise fail(AuthError)
        if status == 403:
            ctype = headers.get("Content-Type", "").lower()
            if "text/html" in ctype or raw.lstrip().startswith(b"<"):
                self._open_circuit(origin, _Circuit(Blocked, "circuit-open", "blocked us earlier",
                                                    f"{status} {reason}", status=403))
                raise fail(Blocked)
            raise fail(AuthError)
        raise fail(RequestError)

    @staticmethod
    def _server_now(headers: Mapping[str, str]) -> float:
        """The server's Date if it sent one (an HTTP-date Retry-After is on its clock)."""
        date = _http_date(headers.get("Date", ""))
        return time.time() if date is None else date

    def _origin(self, url: URL) -> _Origin:
        key = (url.scheme, url.raw_authority)  # cheap to read: most requests hit this cache
        state = self._by_authority.get(key)
        if state is None:
            state = self._by_authority[key] = self._origin_named(origin_of(url))
        return state

    def _origin_named(self, name: str) -> _Origin:
        state = self._origins.get(name)
        if state is None:
            shared = self.settings.shared_origins
            share = None
            if name in shared:
                share = next((self._origins[o] for o in shared if o in self._origins), None)
                rate = self.settings.rates.get(shared[0], self.settings.default_rate)
            else:
                rate = self.settings.rates.get(name, self.settings.default_rate)
            cred = self.settings.credentials.get(name)
            state = self._origins[name] = _Origin(name, rate, share,
                                                  None if cred is None else str(cred))
        return state
