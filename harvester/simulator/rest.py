"""REST v2 routes: articles, search, files, versions, collections, projects, account."""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
from aiohttp import web

from harvester.simulator import query
from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.corpus import Account, Corpus
from harvester.simulator.vocab import tokens

ARTICLE_ORDERS = ("published_date", "created_date", "modified_date", "views", "shares",
                  "downloads", "cites")  # fmt: skip
COLLECTION_ORDERS = ("published_date", "created_date", "modified_date", "views", "shares", "cites")
PROJECT_ORDERS = ("published_date", "modified_date", "views")
INSTITUTION_ORDERS = ("published_date", "modified_date")
MAX_PAGE_MESSAGE = "Max page reached. Please narrow down your search"
CURSOR_TTL = 3_600.0
LICENSES = [
    {"value": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
    {"value": 2, "name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
    {"value": 3, "name": "MIT", "url": "https://opensource.org/licenses/MIT"},
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered in Figshare's shape: {"message", "code", "data"}."""

    def __init__(self, status: int, message: str, code: str, data: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.data = status, message, code, data


def _not_found(entity: str) -> ApiError:
    return ApiError(404, f"Entity not found: {entity}", "EntityNotFound")


def _invalid(name: str, extra: str) -> ApiError:
    return ApiError(422, f"Invalid or unsupported params: {name}", "InvalidParams",
                    {"invalid_params": name, "extra": extra})  # fmt: skip


# ---- per-app state: cached query results and cursors --------------------------------------


@dataclass
class _Cursor:
    kind: str
    key: tuple[Any, ...]
    compute: Callable[[], Sequence[int]]
    position: int
    born: float = field(default_factory=time.monotonic)


@dataclass
class _State:
    """Results of recent queries (ids in serving order) and the cursors handed out."""

    results: OrderedDict[tuple[Any, ...], Sequence[int]] = field(default_factory=OrderedDict)
    cursors: OrderedDict[str, _Cursor] = field(default_factory=OrderedDict)
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

    def issue(self, cursor: _Cursor) -> str:
        token = str(uuid.uuid4())
        self.cursors[token] = cursor
        while len(self.cursors) > self.max_cursors:
            self.cursors.popitem(last=False)
        return token

    def lookup(self, token: str, kind: str) -> _Cursor:
        cursor = self.cursors.get(token.strip())
        if cursor is None or time.monotonic() - cursor.born > CURSOR_TTL or cursor.kind != kind:
            raise _invalid("X-Cursor", "Unknown or expired cursor")
        return cursor


_STATE: web.AppKey[_State] = web.AppKey("rest_state", _State)


# ---- request plumbing ----------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")  # fmt: skip


def _route(fn: Handler) -> Handler:
    """Turn ApiError into Figshare's JSON error body."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except ApiError as e:
            return _json({"message": e.message, "code": e.code, "data": e.data}, e.status)

    wrapped.__name__ = fn.__name__
    return wrapped


def _sim(request: web.Request) -> tuple[Any, Corpus]:
    sim = request.app[SIMULATOR]
    return sim.settings, sim.corpus


async def _params(request: web.Request) -> dict[str, Any]:
    """Query string, overlaid by a JSON object body on POST (Figshare's own examples use both)."""
    params: dict[str, Any] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
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


def _int(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _invalid(name, f"Expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise _invalid(name, f"Expected an integer, got {value!r}")


def _since(params: Mapping[str, Any], name: str) -> int | None:
    """YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM:SSZ -> epoch seconds (inclusive bound)."""
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
            return int(moment.timestamp())
    raise _invalid(name, f"Expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, got {value!r}")


def _str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    return None if value is None or value == "" else str(value)


def _order(params: Mapping[str, Any], allowed: Sequence[str], default: str) -> tuple[str, str]:
    order = str(params.get("order") or default)
    if order not in allowed:
        raise ApiError(400, "Invalid value received for order", "InvalidParams",
                       {"order": order, "allowed": list(allowed)})  # fmt: skip
    direction = str(params.get("order_direction") or "desc").lower()
    if direction not in ("asc", "desc"):
        raise ApiError(400, "Invalid value received for order_direction", "InvalidParams",
                       {"order_direction": direction, "allowed": ["asc", "desc"]})  # fmt: skip
    return order, direction


def _path_int(request: web.Request, name: str) -> int:
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
    page, page_size = _int(params, "page"), _int(params, "page_size")
    offset, limit = _int(params, "offset"), _int(params, "limit")
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
        raise ApiError(400, MAX_PAGE_MESSAGE, "MaxPageReached")
    return Paging(start, size)


def _bounded(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _invalid(name, f"{name} must be within {low}..{high}, got {value}")


def _cursor_size(params: Mapping[str, Any], settings: Any) -> int:
    """With X-Cursor only a size may be sent: limit (or page_size), never offset or page."""
    if _int(params, "offset") is not None or _int(params, "page") is not None:
        raise _invalid("offset", "offset and page cannot be used together with X-Cursor")
    limit, page_size = _int(params, "limit"), _int(params, "page_size")
    if limit is not None and page_size is not None:
        raise _invalid("limit", "send either limit or page_size")
    size = limit if limit is not None else (page_size if page_size is not None else 10)
    _bounded("limit", size, 1, settings.max_page_size)
    return size


def _listing(
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
    settings, corpus = _sim(request)
    state = request.app[_STATE]
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
        headers["X-Cursor"] = state.issue(_Cursor(kind, key, compute, start + len(chunk)))
    return _json(body, headers=headers)


def _single(request: web.Request, data: dict[str, Any], modified: str | None) -> web.Response:
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


# ---- articles ------------------------------------------------------------------------------


def _article_filters(params: Mapping[str, Any], search: bool) -> dict[str, Any]:
    filters = {
        "institution": _int(params, "institution"),
        "group": _int(params, "group"),
        "item_type": _int(params, "item_type"),
        "published_since": _since(params, "published_since"),
        "modified_since": _since(params, "modified_since"),
        "doi": _str(params, "doi"),
        "handle": _str(params, "handle"),
        "resource_doi": _str(params, "resource_doi"),
    }
    if search:
        filters["project_id"] = _int(params, "project_id")
    return filters


def _with_duplicates(ids: Sequence[int], rate: float, salt: str) -> Sequence[int]:
    """Repeat some records a few places later, as Figshare's search does; never drop one."""
    if rate <= 0 or not ids:
        return ids
    rng = random.Random(zlib.crc32(salt.encode()))
    out: list[int] = []
    for p, i in enumerate(ids):
        out.append(i)
        if rng.random() < rate:
            out.append(ids[max(0, p - rng.randrange(0, 25))])
    return out


@_route
async def articles_list(request: web.Request) -> web.StreamResponse:
    params = dict(request.query)
    _, corpus = _sim(request)

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        order, direction = _order(params, ARTICLE_ORDERS, "published_date")
        filters = _article_filters(params, search=False)
        key = ("articles", order, direction, *sorted(filters.items()))
        return key, lambda: corpus.select(order=order, direction=direction, **filters)

    return _listing(request, params, "articles", query_for, corpus.light)


@_route
async def articles_search(request: web.Request) -> web.StreamResponse:
    params = await _params(request)
    settings, corpus = _sim(request)

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        order, direction = _order(params, ARTICLE_ORDERS, "created_date")
        filters = _article_filters(params, search=True)
        text = str(params.get("search_for") or "")
        try:
            tree = query.parse(text)
        except query.SearchSyntaxError as e:
            raise ApiError(400, f"Invalid search query: {e}", "InvalidSearchQuery",
                           {"search_for": text}) from e  # fmt: skip
        rate = float(settings.search_duplicate_rate)
        key = ("search", order, direction, text, rate, *sorted(filters.items()))

        def compute() -> Sequence[int]:
            subset = None if tree is None else query.evaluate(tree, corpus)
            ids = corpus.select(order=order, direction=direction, subset=subset, **filters)
            return _with_duplicates(ids, rate, f"{corpus.seed}:{key}")

        return key, compute

    return _listing(request, params, "articles", query_for, corpus.search_light)


def _public_article_id(request: web.Request) -> int:
    _, corpus = _sim(request)
    article_id = _path_int(request, "article_id")
    if not corpus.exists(article_id):
        raise _not_found("article")
    return article_id


@_route
async def article_detail(request: web.Request) -> web.StreamResponse:
    settings, corpus = _sim(request)
    record = corpus.article(_public_article_id(request), None, settings.full_record_files_cap)
    return _single(request, record, record["modified_date"])


@_route
async def article_files(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    article_id = _public_article_id(request)
    params = dict(request.query)
    files = corpus.files(article_id)
    by_id = {f["id"]: f for f in files}

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        return ("files", article_id), lambda: list(by_id)

    return _listing(request, params, "files", query_for, by_id.__getitem__, cursor=False)


@_route
async def article_file(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    article_id = _public_article_id(request)
    file_id = _path_int(request, "file_id")
    for f in corpus.files(article_id):
        if f["id"] == file_id:
            return _single(request, f, None)
    raise _not_found("file")


@_route
async def article_versions(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    article_id = _public_article_id(request)
    base = f"{request.url.origin()}/v2/articles/{article_id}/versions"
    n = corpus.versions_of(article_id)
    return _json([{"version": v, "url": f"{base}/{v}"} for v in range(1, n + 1)])


@_route
async def article_version(request: web.Request) -> web.StreamResponse:
    settings, corpus = _sim(request)
    article_id = _public_article_id(request)
    version = _path_int(request, "version_id")
    if not 1 <= version <= corpus.versions_of(article_id):
        raise _not_found("ArticleVersion")
    record = corpus.article(article_id, version, settings.full_record_files_cap)
    return _single(request, record, record["modified_date"])


# ---- collections and projects --------------------------------------------------------------


def _meta_filter(
    metas: Sequence[dict[str, Any]], params: Mapping[str, Any], corpus: Corpus, light: Any
) -> list[dict[str, Any]]:
    """Collections or projects passing the common filters (institution, group, dates, doi)."""
    inst, group = _int(params, "institution"), _int(params, "group")
    published, modified = _since(params, "published_since"), _since(params, "modified_since")
    doi, handle = _str(params, "doi"), _str(params, "handle")
    out = []
    for m in metas:
        inst_id = corpus.institutions[m["inst"]].id if m["inst"] != 255 else None
        group_id = corpus.groups[m["gidx"]].id if m["gidx"] != 255 else None
        if (inst is not None and inst != inst_id) or (group is not None and group != group_id):
            continue
        if (published is not None and m["published"] < published) or (
            modified is not None and m["modified"] < modified
        ):
            continue
        lit = light(m["id"])
        if (doi is not None and lit.get("doi") != doi) or (
            handle is not None and lit.get("handle") != handle
        ):
            continue
        out.append(m)
    return out


def _meta_matches(meta: dict[str, Any], text: str) -> bool:
    """Collections/projects search: any word of search_for in the title or tags."""
    words = {w for w in tokens(text) if w.upper() not in query.OPERATORS} - set(query.FIELDS)
    have = set(tokens(" ".join([meta["title"], *meta.get("tags", [])])))
    return not words or bool(words & have)


def _meta_query(
    corpus: Corpus, kind: str, params: Mapping[str, Any], orders: Sequence[str], default: str
) -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
    order, direction = _order(params, orders, default)
    if kind == "collections":
        metas = [corpus.collection_meta(i) for i in corpus.collection_ids]
    else:
        metas = [corpus.project_meta(i) for i in corpus.project_ids]
    light = corpus.collection_light if kind == "collections" else corpus.project_light
    text = str(params.get("search_for") or "")
    chosen = [m for m in _meta_filter(metas, params, corpus, light) if _meta_matches(m, text)]
    field_of = {"published_date": "published", "created_date": "created",
                "modified_date": "modified"}  # fmt: skip

    def sort_key(m: dict[str, Any]) -> tuple[int, int]:
        if order in field_of:
            return m[field_of[order]], m["id"]
        return corpus.pseudo_count(m["id"], order), m["id"]

    ids = [m["id"] for m in sorted(chosen, key=sort_key, reverse=direction == "desc")]
    key = (kind, order, direction, text, *sorted(params.items()))
    return tuple(map(str, key)), lambda: ids


@_route
async def collections_list(request: web.Request) -> web.StreamResponse:
    params = await _params(request)
    _, corpus = _sim(request)
    default = "created_date" if request.method == "POST" else "published_date"
    return _listing(request, params, "collections",
                    lambda: _meta_query(corpus, "collections", params, COLLECTION_ORDERS, default),
                    corpus.collection_light)  # fmt: skip


@_route
async def projects_list(request: web.Request) -> web.StreamResponse:
    params = await _params(request)
    _, corpus = _sim(request)
    return _listing(request, params, "projects",
                    lambda: _meta_query(corpus, "projects", params, PROJECT_ORDERS,
                                        "published_date"),
                    corpus.project_light)  # fmt: skip


def _collection_id(request: web.Request) -> int:
    _, corpus = _sim(request)
    cid = _path_int(request, "collection_id")
    if cid not in corpus.collection_ids:
        raise _not_found("collection")
    return cid


def _project_id(request: web.Request) -> int:
    _, corpus = _sim(request)
    pid = _path_int(request, "project_id")
    if pid not in corpus.project_ids:
        raise _not_found("project")
    return pid


@_route
async def collection_detail(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    record = corpus.collection(_collection_id(request))
    return _single(request, record, record["modified_date"])


@_route
async def collection_versions(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    cid = _collection_id(request)
    url = f"{request.url.origin()}/v2/collections/{cid}/versions/1"
    return _json([{"version": 1, "url": url, "funding": corpus.collection(cid)["funding"]}])


@_route
async def collection_version(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    cid = _collection_id(request)
    if _path_int(request, "version_id") != 1:
        raise _not_found("CollectionVersion")
    record = corpus.collection(cid, 1)
    return _single(request, record, record["modified_date"])


@_route
async def collection_articles(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    cid = _collection_id(request)
    return _listing(request, dict(request.query), "collection_articles",
                    lambda: (("collection_articles", cid), lambda: corpus.collection_articles(cid)),
                    corpus.light, cursor=False)  # fmt: skip


@_route
async def project_detail(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    record = corpus.project(_project_id(request))
    return _single(request, record, record["modified_date"])


@_route
async def project_articles(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    pid = _project_id(request)
    return _listing(request, dict(request.query), "project_articles",
                    lambda: (("project_articles", pid), lambda: corpus.project_articles(pid)),
                    corpus.light, cursor=False)  # fmt: skip


@_route
async def categories(request: web.Request) -> web.StreamResponse:
    _, corpus = _sim(request)
    return _json(corpus.categories)


@_route
async def licenses(request: web.Request) -> web.StreamResponse:
    return _json(LICENSES)


# ---- account -------------------------------------------------------------------------------


def _account(request: web.Request, *, admin: bool = False) -> Account:
    """The token's account: 401 without a known token, 403 when admin rights are needed."""
    _, corpus = _sim(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        token = request.query.get("access_token", "")
    elif scheme.lower() != "token":
        token = ""
    account = corpus.account_for_token(token.strip(), request.app[SIMULATOR].settings)
    if account is None:
        raise ApiError(401, "Missing or invalid OAuth token", "OAuthInvalidToken")
    if admin and not account.is_admin:
        raise ApiError(403, "You are not allowed to access this resource", "Forbidden")
    return account


@_route
async def account_articles(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    _, corpus = _sim(request)
    mine = corpus.account_article_ids(account)
    return _listing(request, dict(request.query), "account_articles",
                    lambda: (("account_articles", account.id), lambda: mine),
                    corpus.private_light, cursor=False)  # fmt: skip


@_route
async def account_article(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    settings, corpus = _sim(request)
    article_id = _path_int(request, "article_id")
    try:
        record = corpus.private_article(account, article_id, settings.full_record_files_cap)
    except KeyError:
        record = _admin_view(account, lambda: corpus.institution_article(
            article_id, settings.full_record_files_cap))
    return _single(request, record, record["modified_date"])


def _admin_view(account: Account, read: Callable[[], Any]) -> Any:
    """An institution admin reads any item of the institution (an assumption: Figshare may
    require `impersonate=<account_id>` for items the admin does not own)."""
    if not account.is_admin:
        raise _not_found("article")
    try:
        return read()
    except (KeyError, ValueError):
        raise _not_found("article") from None


@_route
async def account_article_files(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    _, corpus = _sim(request)
    article_id = _path_int(request, "article_id")
    try:
        files = corpus.private_files(account, article_id)
    except KeyError:
        files = _admin_view(account, lambda: corpus.institution_files(article_id))
    by_id = {f["id"]: f for f in files}
    return _listing(request, dict(request.query), "account_files",
                    lambda: (("account_files", article_id), lambda: list(by_id)),
                    by_id.__getitem__, cursor=False)  # fmt: skip


@_route
async def account_institution(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    _, corpus = _sim(request)
    inst = next(i for i in corpus.institutions if i.id == account.institution_id)
    return _json({"id": inst.id, "name": inst.name, "domain": inst.domain})


@_route
async def institution_articles(request: web.Request) -> web.StreamResponse:
    _account(request, admin=True)
    params = dict(request.query)
    _, corpus = _sim(request)

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        order, direction = _order(params, INSTITUTION_ORDERS, "published_date")
        published, modified = _since(params, "published_since"), _since(params, "modified_since")
        item_type, group = _int(params, "item_type"), _int(params, "group")
        _int(params, "status")  # validated; the meaning of its codes is not documented
        col = 1 if order == "published_date" else 2

        def compute() -> list[int]:
            rows = [
                r
                for r in corpus.institution_items()
                if (published is None or (r[6] and r[1] >= published))
                and (modified is None or r[2] >= modified)
                and (item_type is None or r[3] == item_type)
                and (group is None or r[4] == group)
            ]
            rows.sort(key=lambda r: (r[col], r[0]), reverse=direction == "desc")
            return [r[0] for r in rows]

        key = ("institution_articles", order, direction, published, modified, item_type, group)
        return key, compute

    return _listing(request, params, "institution_articles", query_for,
                    corpus.institution_light, cursor=False, cache=True)  # fmt: skip


@_route
async def institution_groups(request: web.Request) -> web.StreamResponse:
    account = _account(request, admin=True)
    _, corpus = _sim(request)
    return _json([
        {"id": g.id, "name": g.name, "resource_id": g.resource_id, "parent_id": g.parent_id,
         "association_criteria": g.association_criteria, "upload_access": g.upload_access}
        for g in corpus.groups if g.institution_id == account.institution_id
    ])  # fmt: skip


@_route
async def institution_reviews(request: web.Request) -> web.StreamResponse:
    _account(request, admin=True)
    params = dict(request.query)
    _, corpus = _sim(request)
    group, article = _int(params, "group_id"), _int(params, "article_id")
    status = _str(params, "status")
    if status is not None and status not in ("pending", "approved", "rejected", "closed"):
        raise _invalid("status", "one of pending, approved, rejected, closed")
    chosen = [r for r in corpus.reviews
              if (group is None or r["group_id"] == group)
              and (article is None or r["article_id"] == article)
              and (status is None or r["status"] == status)]  # fmt: skip
    by_id = {r["id"]: r for r in chosen}
    return _listing(request, params, "reviews",
                    lambda: (("reviews", group, article, status), lambda: list(by_id)),
                    by_id.__getitem__, cursor=False, window=False)  # fmt: skip


@_route
async def institution_review(request: web.Request) -> web.StreamResponse:
    _account(request, admin=True)
    settings, corpus = _sim(request)
    rid = _path_int(request, "curation_id")
    review = next((r for r in corpus.reviews if r["id"] == rid), None)
    if review is None:
        raise _not_found("curation")
    item = corpus.review_item(review, settings.full_record_files_cap)
    return _single(request, {**review, "item": item}, review["modified_date"])


def add_routes(app: web.Application) -> None:
    """Register the REST v2 routes on the API app."""
    app[_STATE] = _State()
    get, post = app.router.add_get, app.router.add_post
    get("/v2/articles", articles_list)
    post("/v2/articles/search", articles_search)
    get("/v2/articles/{article_id}", article_detail)
    get("/v2/articles/{article_id}/files", article_files)
    get("/v2/articles/{article_id}/files/{file_id}", article_file)
    get("/v2/articles/{article_id}/versions", article_versions)
    get("/v2/articles/{article_id}/versions/{version_id}", article_version)
    get("/v2/collections", collections_list)
    post("/v2/collections/search", collections_list)
    get("/v2/collections/{collection_id}", collection_detail)
    get("/v2/collections/{collection_id}/articles", collection_articles)
    get("/v2/collections/{collection_id}/versions", collection_versions)
    get("/v2/collections/{collection_id}/versions/{version_id}", collection_version)
    get("/v2/projects", projects_list)
    post("/v2/projects/search", projects_list)
    get("/v2/projects/{project_id}", project_detail)
    get("/v2/projects/{project_id}/articles", project_articles)
    get("/v2/categories", categories)
    get("/v2/licenses", licenses)
    get("/v2/account/articles", account_articles)
    get("/v2/account/articles/{article_id}", account_article)
    get("/v2/account/articles/{article_id}/files", account_article_files)
    get("/v2/account/institution", account_institution)
    get("/v2/account/institution/articles", institution_articles)
    get("/v2/account/institution/groups", institution_groups)
    get("/v2/account/institution/reviews", institution_reviews)
    get("/v2/account/institution/review/{curation_id}", institution_review)
