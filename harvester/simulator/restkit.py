"""REST plumbing shared by the public and account routes: errors, parameters, paging, cursors."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
from aiohttp import web

from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.corpus import Corpus

ARTICLE_ORDERS = ("published_date", "created_date", "modified_date", "views", "shares",
                  "downloads", "cites")  # fmt: skip
COLLECTION_ORDERS = ("published_date", "created_date", "modified_date", "views", "shares", "cites")
PROJECT_ORDERS = ("published_date", "modified_date", "views")
INSTITUTION_ORDERS = ("published_date", "modified_date")
ACCOUNT_ORDERS = ("published_date", "created_date", "modified_date")  # the dates we model
MAX_PAGE_MESSAGE = "Max page reached. Please narrow down your search"
CURSOR_TTL = 3_600.0
HTML_404 = "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered in Figshare's shape: {"message", "code", "data"}."""

    def __init__(self, status: int, message: str, code: str, data: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.data = status, message, code, data


def not_found(entity: str) -> ApiError:
    return ApiError(404, f"Entity not found: {entity}", "EntityNotFound")


def invalid(name: str, extra: str) -> ApiError:
    return ApiError(422, f"Invalid or unsupported params: {name}", "InvalidParams",
                    {"invalid_params": name, "extra": extra})  # fmt: skip


# ---- per-app state: cached query results and cursors --------------------------------------


@dataclass
class Cursor:
    kind: str
    key: tuple[Any, ...]
    compute: Callable[[], Sequence[int]]
    position: int
    born: float = field(default_factory=time.monotonic)


@dataclass
class State:
    """Results of recent queries (ids in serving order) and the cursors handed out."""

    results: OrderedDict[tuple[Any, ...], Sequence[int]] = field(default_factory=OrderedDict)
    cursors: OrderedDict[str, Cursor] = field(default_factory=OrderedDict)
    max_results: int = 16
    max_cursors: int = 10_000

    def result(self, key: tuple[Any, ...], compute: Callable[[], Sequence[int]]) -> Sequence[int]:
        hit = self.results.get(key)
        if hit is None:
            hit = compute()
            self.results[key] = hit
            if len(self.results) > self.max_results:
                self.results.popitem(last=False)
        else:
            self.results.move_to_end(key)
        return hit

    def issue(self, cursor: Cursor) -> str:
        token = str(uuid.uuid4())
        self.cursors[token] = cursor
        while len(self.cursors) > self.max_cursors:
            self.cursors.popitem(last=False)
        return token

    def lookup(self, token: str, kind: str) -> Cursor:
        cursor = self.cursors.get(token.strip())
        if cursor is None or time.monotonic() - cursor.born > CURSOR_TTL or cursor.kind != kind:
            raise invalid("X-Cursor", "Unknown or expired cursor")
        return cursor


STATE: web.AppKey[State] = web.AppKey("rest_state", State)


# ---- request plumbing ----------------------------------------------------------------------


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")  # fmt: skip


def route(fn: Handler) -> Handler:
    """Turn ApiError into Figshare's JSON error body."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except ApiError as e:
            if e.status == 404 and sim_of(request)[0].html_404:
                return web.Response(status=404, text=HTML_404, content_type="text/html")
            return json_response({"message": e.message, "code": e.code, "data": e.data}, e.status)

    wrapped.__name__ = fn.__name__
    return wrapped


def sim_of(request: web.Request) -> tuple[Any, Corpus]:
    sim = request.app[SIMULATOR]
    return sim.settings, sim.corpus


async def read_params(request: web.Request) -> dict[str, Any]:
    """Query string, overlaid by a JSON object body on POST (Figshare's own examples use both)."""
    params: dict[str, Any] = dict(request.query)
    # body_exists, not can_read_body: the request log has read (and aiohttp kept) the bytes
    if request.method == "POST" and request.body_exists:
        raw = await request.read()
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise ApiError(400, "Invalid JSON body", "BadRequest") from e
            if not isinstance(body, dict):
                raise ApiError(400, "The JSON body must be an object", "BadRequest")
            params.update({k: v for k, v in body.items() if v is not None})
    return params


def int_param(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise invalid(name, f"Expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise invalid(name, f"Expected an integer, got {value!r}")


def since_param(params: Mapping[str, Any], name: str, *, days: bool = False) -> int | None:
    """YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM:SSZ -> epoch seconds (inclusive bound);
    `days`: the time of day is dropped (a server that reads bounds as whole days)."""
    value = params.get(name)
    if value is None or value == "":
        return None
    text = str(value).strip()
    for pattern, fmt in ((r"\d{4}-\d\d-\d\d", "%Y-%m-%d"),
                         (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ?", "%Y-%m-%dT%H:%M:%S")):  # fmt: skip
        if re.fullmatch(pattern, text):
            try:
                moment = datetime.strptime(text.rstrip("Z"), fmt).replace(tzinfo=UTC)
            except ValueError:
                break
            stamp = int(moment.timestamp())
            return stamp - stamp % 86_400 if days else stamp
    raise invalid(name, f"Expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, got {value!r}")


def str_param(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    return None if value is None or value == "" else str(value)


def order_param(params: Mapping[str, Any], allowed: Sequence[str], default: str) -> tuple[str, str]:
    order = str(params.get("order") or default)
    if order not in allowed:
        raise ApiError(400, "Invalid value received for order", "InvalidParams",
                       {"order": order, "allowed": list(allowed)})  # fmt: skip
    direction = str(params.get("order_direction") or "desc").lower()
    if direction not in ("asc", "desc"):
        raise ApiError(400, "Invalid value received for order_direction", "InvalidParams",
                       {"order_direction": direction, "allowed": ["asc", "desc"]})  # fmt: skip
    return order, direction


def path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, f"Invalid value for {name}: {raw!r}", "InvalidParams",
                       {"invalid_params": name})  # fmt: skip
    return int(raw)


# ---- paging --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paging:
    """Where a page starts in a query's results and how many items it holds."""

    offset: int
    limit: int


def paging(params: Mapping[str, Any], settings: Any, *, window: bool = True) -> Paging:
    """Validate page/page_size or offset/limit (never both) against Figshare's limits."""
    page, page_size = int_param(params, "page"), int_param(params, "page_size")
    offset, limit = int_param(params, "offset"), int_param(params, "limit")
    if (page is not None or page_size is not None) and (offset is not None or limit is not None):
        raise ApiError(422, "Invalid or unsupported params: use either page and page_size or "
                       "offset and limit, not both", "InvalidParams",
                       {"invalid_params": "page, page_size, offset, limit"})  # fmt: skip
    if offset is not None or limit is not None:
        offset = 0 if offset is None else offset
        limit = 10 if limit is None else limit
        _bounded("offset", offset, 0, settings.max_offset)
        _bounded("limit", limit, 1, settings.max_page_size)
        start, size = offset, limit
    else:
        page = 1 if page is None else page
        page_size = 10 if page_size is None else page_size
        _bounded("page", page, 1, settings.max_page)
        _bounded("page_size", page_size, 1, settings.max_page_size)
        start, size = (page - 1) * page_size, page_size
    # items 1..window are servable; a page reaching past them is refused outright
    if window and start + size > settings.window:
        if settings.window_message:
            raise ApiError(400, settings.window_message, "BadRequest")
        raise ApiError(400, MAX_PAGE_MESSAGE, "MaxPageReached")
    return Paging(start, size)


def _bounded(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise invalid(name, f"{name} must be within {low}..{high}, got {value}")


def _cursor_size(params: Mapping[str, Any], settings: Any) -> int:
    """With X-Cursor only a size may be sent: limit (or page_size), never offset or page."""
    if int_param(params, "offset") is not None or int_param(params, "page") is not None:
        raise invalid("offset", "offset and page cannot be used together with X-Cursor")
    limit, page_size = int_param(params, "limit"), int_param(params, "page_size")
    if limit is not None and page_size is not None:
        raise invalid("limit", "send either limit or page_size")
    size = limit if limit is not None else (page_size if page_size is not None else 10)
    _bounded("limit", size, 1, settings.max_page_size)
    return size


def listing(
    request: web.Request,
    params: Mapping[str, Any],
    kind: str,
    query_for: Callable[[], tuple[tuple[Any, ...], Callable[[], Sequence[int]]]],
    present: Callable[[int], dict[str, Any]],
    *,
    cursor: bool = True,
    window: bool = True,
    cache: bool | None = None,
) -> web.Response:
    """One page of a query's results, with X-Cursor handed out and honoured where supported.

    Results are cached (default: for the cursor-capable public lists, the costly ones) so
    that paging through a query does not recompute it for every page.
    """
    settings, corpus = sim_of(request)
    state = request.app[STATE]
    cache = cursor if cache is None else cache
    cursor = cursor and bool(settings.cursor)
    token = request.headers.get("X-Cursor", "").strip() if cursor else ""
    if token:
        entry = state.lookup(token, kind)
        size = _cursor_size(params, settings)
        key, compute, start = entry.key, entry.compute, entry.position
    else:
        page = paging(params, settings, window=window)
        key, compute = query_for()
        start, size = page.offset, page.limit
    cache_key = (*key, id(corpus), corpus.generation)
    served = state.result(cache_key, compute) if cache else compute()
    chunk = served[start : start + size]
    body = [present(i) for i in chunk]
    headers = {}
    if cursor:
        headers["X-Cursor"] = state.issue(Cursor(kind, key, compute, start + len(chunk)))
    return json_response(body, headers=headers)


def single(request: web.Request, data: dict[str, Any], modified: str | None) -> web.Response:
    """A single record with ETag and Last-Modified; answers conditional requests with 304."""
    body = orjson.dumps(data)
    etag = f'"{hashlib.md5(body).hexdigest()}"'
    headers = {"ETag": etag}
    stamp = None
    if modified:
        stamp = datetime.strptime(modified, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        headers["Last-Modified"] = format_datetime(stamp, usegmt=True)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    since = request.headers.get("If-Modified-Since")
    if since and stamp and "If-None-Match" not in request.headers:
        try:
            if stamp <= parsedate_to_datetime(since):
                return web.Response(status=304, headers=headers)
        except (TypeError, ValueError):
            pass
    return web.Response(body=body, headers=headers, content_type="application/json",
                        charset="utf-8")  # fmt: skip
