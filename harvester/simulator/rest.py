"""REST v2 public routes: articles, search, files, versions, collections, projects."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from harvester.simulator import account_routes, query
from harvester.simulator.corpus import Corpus
from harvester.simulator.restkit import (
    ARTICLE_ORDERS,
    COLLECTION_ORDERS,
    PROJECT_ORDERS,
    STATE,
    ApiError,
    State,
    int_param,
    json_response,
    listing,
    not_found,
    order_param,
    path_int,
    read_params,
    route,
    sim_of,
    since_param,
    single,
    str_param,
)
from harvester.simulator.vocab import ITEM_TYPES, tokens

LICENSES = [
    {"value": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
    {"value": 2, "name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
    {"value": 3, "name": "MIT", "url": "https://opensource.org/licenses/MIT"},
]


# ---- articles ------------------------------------------------------------------------------


def _article_filters(params: Mapping[str, Any], search: bool, days: bool) -> dict[str, Any]:
    filters = {
        "institution": int_param(params, "institution"),
        "group": int_param(params, "group"),
        "item_type": int_param(params, "item_type"),
        "published_since": since_param(params, "published_since", days=days),
        "modified_since": since_param(params, "modified_since", days=days),
        "doi": str_param(params, "doi"),
        "handle": str_param(params, "handle"),
        "resource_doi": str_param(params, "resource_doi"),
    }
    if search:
        filters["project_id"] = int_param(params, "project_id")
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


@route
async def articles_list(request: web.Request) -> web.StreamResponse:
    params = dict(request.query)
    settings, corpus = sim_of(request)

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        order, direction = order_param(params, ARTICLE_ORDERS, "published_date")
        filters = _article_filters(params, search=False, days=settings.date_bounds == "day")
        key = ("articles", order, direction, *sorted(filters.items()))
        return key, lambda: corpus.select(order=order, direction=direction, **filters)

    return listing(request, params, "articles", query_for, corpus.light)


@route
async def articles_search(request: web.Request) -> web.StreamResponse:
    params = await read_params(request)
    settings, corpus = sim_of(request)

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        order, direction = order_param(params, ARTICLE_ORDERS, "created_date")
        filters = _article_filters(params, search=True, days=settings.date_bounds == "day")
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

    return listing(request, params, "articles", query_for, corpus.search_light)


def _public_article_id(request: web.Request) -> int:
    _, corpus = sim_of(request)
    article_id = path_int(request, "article_id")
    if not corpus.exists(article_id):
        raise not_found("article")
    return article_id


def _public_version(request: web.Request) -> tuple[int, int]:
    """(article id, version) of a version route; 404 unless that version exists."""
    _, corpus = sim_of(request)
    article_id = _public_article_id(request)
    version = path_int(request, "version_id")
    if not 1 <= version <= corpus.versions_of(article_id):
        raise not_found("ArticleVersion")
    return article_id, version


@route
async def article_detail(request: web.Request) -> web.StreamResponse:
    settings, corpus = sim_of(request)
    record = corpus.article(_public_article_id(request), None, settings.full_record_files_cap)
    return single(request, record, record["modified_date"])


@route
async def article_files(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    article_id = _public_article_id(request)
    params = dict(request.query)
    files = corpus.files(article_id)
    by_id = {f["id"]: f for f in files}

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        return ("files", article_id), lambda: list(by_id)

    return listing(request, params, "files", query_for, by_id.__getitem__, cursor=False)


@route
async def article_file(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    article_id = _public_article_id(request)
    file_id = path_int(request, "file_id")
    for f in corpus.files(article_id):
        if f["id"] == file_id:
            return single(request, f, None)
    raise not_found("file")


@route
async def article_versions(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    article_id = _public_article_id(request)
    base = f"{request.url.origin()}/v2/articles/{article_id}/versions"
    n = corpus.versions_of(article_id)
    return json_response([{"version": v, "url": f"{base}/{v}"} for v in range(1, n + 1)])


@route
async def article_version(request: web.Request) -> web.StreamResponse:
    settings, corpus = sim_of(request)
    article_id, version = _public_version(request)
    record = corpus.article(article_id, version, settings.full_record_files_cap)
    return single(request, record, record["modified_date"])


@route
async def article_version_files(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    article_id, version = _public_version(request)
    by_id = {f["id"]: f for f in corpus.files(article_id, version)}
    return listing(request, dict(request.query), "version_files",
                    lambda: (("version_files", article_id, version), lambda: list(by_id)),
                    by_id.__getitem__, cursor=False)  # fmt: skip


@route
async def item_types(request: web.Request) -> web.StreamResponse:
    """GET /item_types: a token, if sent, must be valid; without one the spec's description
    says Figshare's own types are listed (the same list here)."""
    if "Authorization" in request.headers:
        account_routes.account_of(request)
    int_param(request.query, "group_id")
    return json_response([
        {"id": code, "name": name, "string_id": name.replace(" ", "_"), "icon": "",
         "public_description": "", "is_selectable": True, "url_name": name.replace(" ", "_")}
        for code, name in sorted(ITEM_TYPES.items())])


# ---- collections and projects --------------------------------------------------------------


def _meta_filter(
    metas: Sequence[dict[str, Any]], params: Mapping[str, Any], corpus: Corpus, light: Any
) -> list[dict[str, Any]]:
    """Collections or projects passing the common filters (institution, group, dates, doi)."""
    inst, group = int_param(params, "institution"), int_param(params, "group")
    published = since_param(params, "published_since")
    modified = since_param(params, "modified_since")
    doi, handle = str_param(params, "doi"), str_param(params, "handle")
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
    order, direction = order_param(params, orders, default)
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


@route
async def collections_list(request: web.Request) -> web.StreamResponse:
    params = await read_params(request)
    _, corpus = sim_of(request)
    default = "created_date" if request.method == "POST" else "published_date"
    return listing(request, params, "collections",
                    lambda: _meta_query(corpus, "collections", params, COLLECTION_ORDERS, default),
                    corpus.collection_light)  # fmt: skip


@route
async def projects_list(request: web.Request) -> web.StreamResponse:
    params = await read_params(request)
    _, corpus = sim_of(request)
    return listing(request, params, "projects",
                    lambda: _meta_query(corpus, "projects", params, PROJECT_ORDERS,
                                        "published_date"),
                    corpus.project_light)  # fmt: skip


def _collection_id(request: web.Request) -> int:
    _, corpus = sim_of(request)
    cid = path_int(request, "collection_id")
    if cid not in corpus.collection_ids:
        raise not_found("collection")
    return cid


def _project_id(request: web.Request) -> int:
    _, corpus = sim_of(request)
    pid = path_int(request, "project_id")
    if pid not in corpus.project_ids:
        raise not_found("project")
    return pid


@route
async def collection_detail(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    record = corpus.collection(_collection_id(request))
    return single(request, record, record["modified_date"])


@route
async def collection_versions(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    cid = _collection_id(request)
    url = f"{request.url.origin()}/v2/collections/{cid}/versions/1"
    return json_response([{"version": 1, "url": url, "funding": corpus.collection(cid)["funding"]}])


@route
async def collection_version(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    cid = _collection_id(request)
    if path_int(request, "version_id") != 1:
        raise not_found("CollectionVersion")
    record = corpus.collection(cid, 1)
    return single(request, record, record["modified_date"])


@route
async def collection_articles(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    cid = _collection_id(request)
    return listing(request, dict(request.query), "collection_articles",
                    lambda: (("collection_articles", cid), lambda: corpus.collection_articles(cid)),
                    corpus.light, cursor=False)  # fmt: skip


@route
async def project_detail(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    record = corpus.project(_project_id(request))
    return single(request, record, record["modified_date"])


@route
async def project_articles(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    pid = _project_id(request)
    return listing(request, dict(request.query), "project_articles",
                    lambda: (("project_articles", pid), lambda: corpus.project_articles(pid)),
                    corpus.light, cursor=False)  # fmt: skip


@route
async def categories(request: web.Request) -> web.StreamResponse:
    _, corpus = sim_of(request)
    return json_response(corpus.categories)


@route
async def licenses(request: web.Request) -> web.StreamResponse:
    return json_response(LICENSES)


def add_routes(app: web.Application) -> None:
    """Register the REST v2 routes on the API app."""
    app[STATE] = State()
    get, post = app.router.add_get, app.router.add_post
    get("/v2/articles", articles_list)
    post("/v2/articles/search", articles_search)
    get("/v2/articles/{article_id}", article_detail)
    get("/v2/articles/{article_id}/files", article_files)
    get("/v2/articles/{article_id}/files/{file_id}", article_file)
    get("/v2/articles/{article_id}/versions", article_versions)
    get("/v2/articles/{article_id}/versions/{version_id}", article_version)
    get("/v2/articles/{article_id}/versions/{version_id}/files", article_version_files)
    get("/v2/item_types", item_types)
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
    account_routes.add_routes(app)
