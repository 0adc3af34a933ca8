"""REST v2 routes behind a token: the account's own items, its institution, curation reviews."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from aiohttp import web

from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.corpus import Account
from harvester.simulator.restkit import (
    ACCOUNT_ORDERS,
    INSTITUTION_ORDERS,
    ApiError,
    int_param,
    invalid,
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
from harvester.simulator.settings import SimSettings


def account_of(request: web.Request) -> Account:
    """The token's account (401 without a known token), for public routes the spec guards."""
    return _account(request)


def _account(request: web.Request, *, admin: bool = False) -> Account:
    """The token's account: 401 without a known token, 403 when admin rights are needed."""
    _, corpus = sim_of(request)
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


@route
async def account_articles(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    _, corpus = sim_of(request)
    mine = corpus.account_article_ids(account)
    return listing(request, dict(request.query), "account_articles",
                    lambda: (("account_articles", account.id), lambda: mine),
                    corpus.private_light, cursor=False)  # fmt: skip


@route
async def account_articles_search(request: web.Request) -> web.StreamResponse:
    """POST /account/articles/search (PrivateArticleSearch): the account's own items, filtered
    and ordered by date; search_for and the exact-match filters are not modelled."""
    account = _account(request)
    params = await read_params(request)
    settings, corpus = sim_of(request)

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        key, compute = _selection(params, ACCOUNT_ORDERS, "created_date", settings,
                                  partial(corpus.account_items, account),
                                  lambda r, since: bool(r[1]) and r[1] >= since)
        return ("account_search", account.id, *key), compute

    return listing(request, params, "account_search", query_for, corpus.private_light,
                   cursor=False, cache=True)


_COLUMN = {"published_date": 1, "modified_date": 2, "created_date": 5}  # of accounts.py's rows


def _selection(params: dict[str, Any], orders: Sequence[str], default: str, settings: SimSettings,
               rows: Callable[[], Sequence[tuple[Any, ...]]],
               published_ok: Callable[[tuple[Any, ...], int], bool],
               ) -> tuple[tuple[Any, ...], Callable[[], list[int]]]:
    """Item rows (accounts.py's tuples) filtered by date, type and group and ordered by a date,
    as a cache key and the ids' computation for listing()."""
    days = settings.date_bounds == "day"
    order, direction = order_param(params, orders, default)
    published = since_param(params, "published_since", days=days)
    modified = since_param(params, "modified_since", days=days)
    item_type, group = int_param(params, "item_type"), int_param(params, "group")

    def compute() -> list[int]:
        picked = [r for r in rows()
                  if (published is None or published_ok(r, published))
                  and (modified is None or r[2] >= modified)
                  and (item_type is None or r[3] == item_type)
                  and (group is None or r[4] == group)]  # fmt: skip
        picked.sort(key=lambda r: (r[_COLUMN[order]], r[0]), reverse=direction == "desc")
        return [r[0] for r in picked]

    return (order, direction, published, modified, item_type, group), compute


@route
async def account_article(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    settings, corpus = sim_of(request)
    article_id = path_int(request, "article_id")
    read = partial(corpus.institution_article, article_id, settings.full_record_files_cap)
    if _impersonated(request, account) is not None:
        record = _admin_view(request, account, read)
    else:
        try:
            record = corpus.private_article(account, article_id, settings.full_record_files_cap)
        except KeyError:
            record = _admin_view(request, account, read)
    return single(request, record, record["modified_date"])


def _impersonated(request: web.Request, account: Account) -> int | None:
    """`impersonate=<account_id>` (NOTES §1): an institution admin acts as that account."""
    target = int_param(request.query, "impersonate")
    if target is not None and not account.is_admin:
        raise ApiError(403, "You are not allowed to impersonate", "Forbidden")
    return target


def _admin_view(request: web.Request, account: Account, read: Callable[[], Any]) -> Any:
    """An institution admin reads an item of the institution as its owner (impersonate), or
    without impersonate when settings.admin_reads_any (an assumption about the live service)."""
    settings, corpus = sim_of(request)
    target = _impersonated(request, account)
    if not account.is_admin or (target is None and not settings.admin_reads_any):
        raise not_found("article")
    article_id = path_int(request, "article_id")
    try:
        if target is not None and corpus.owner_of(article_id) != target:
            raise not_found("article")
        return read()
    except (KeyError, ValueError):
        raise not_found("article") from None


@route
async def account_article_files(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    _, corpus = sim_of(request)
    article_id = path_int(request, "article_id")
    read = partial(corpus.institution_files, article_id)
    if _impersonated(request, account) is not None:
        files = _admin_view(request, account, read)
    else:
        try:
            files = corpus.private_files(account, article_id)
        except KeyError:
            files = _admin_view(request, account, read)
    by_id = {f["id"]: f for f in files}
    return listing(request, dict(request.query), "account_files",
                    lambda: (("account_files", article_id), lambda: list(by_id)),
                    by_id.__getitem__, cursor=False)  # fmt: skip


@route
async def account_institution(request: web.Request) -> web.StreamResponse:
    account = _account(request)
    _, corpus = sim_of(request)
    inst = next(i for i in corpus.institutions if i.id == account.institution_id)
    return json_response({"id": inst.id, "name": inst.name, "domain": inst.domain})


@route
async def institution_articles(request: web.Request) -> web.StreamResponse:
    _account(request, admin=True)
    params = dict(request.query)
    settings, corpus = sim_of(request)

    def query_for() -> tuple[tuple[Any, ...], Callable[[], Sequence[int]]]:
        key, compute = _selection(params, INSTITUTION_ORDERS, "published_date", settings,
                                  corpus.institution_items,
                                  lambda r, since: bool(r[6]) and r[1] >= since)
        int_param(params, "status")  # validated; the meaning of its codes is not documented
        return ("institution_articles", *key), compute

    return listing(request, params, "institution_articles", query_for,
                    corpus.institution_light, cursor=False, cache=True)  # fmt: skip


@route
async def institution_groups(request: web.Request) -> web.StreamResponse:
    account = _account(request, admin=True)
    _, corpus = sim_of(request)
    return json_response([
        {"id": g.id, "name": g.name, "resource_id": g.resource_id, "parent_id": g.parent_id,
         "association_criteria": g.association_criteria, "upload_access": g.upload_access}
        for g in corpus.groups if g.institution_id == account.institution_id
    ])  # fmt: skip


@route
async def institution_reviews(request: web.Request) -> web.StreamResponse:
    _account(request, admin=True)
    params = dict(request.query)
    _, corpus = sim_of(request)
    group, article = int_param(params, "group_id"), int_param(params, "article_id")
    status = str_param(params, "status")
    if status is not None and status not in ("pending", "approved", "rejected", "closed"):
        raise invalid("status", "one of pending, approved, rejected, closed")
    chosen = [r for r in corpus.reviews
              if (group is None or r["group_id"] == group)
              and (article is None or r["article_id"] == article)
              and (status is None or r["status"] == status)]  # fmt: skip
    by_id = {r["id"]: r for r in chosen}
    return listing(request, params, "reviews",
                    lambda: (("reviews", group, article, status), lambda: list(by_id)),
                    by_id.__getitem__, cursor=False, window=False)  # fmt: skip


@route
async def institution_review(request: web.Request) -> web.StreamResponse:
    _account(request, admin=True)
    settings, corpus = sim_of(request)
    rid = path_int(request, "curation_id")
    review = next((r for r in corpus.reviews if r["id"] == rid), None)
    if review is None:
        raise not_found("curation")
    item = corpus.review_item(review, settings.full_record_files_cap)
    return single(request, {**review, "item": item}, review["modified_date"])


def add_routes(app: web.Application) -> None:
    """Register the /v2/account routes on the API app."""
    get = app.router.add_get
    get("/v2/account/articles", account_articles)
    app.router.add_post("/v2/account/articles/search", account_articles_search)
    get("/v2/account/articles/{article_id}", account_article)
    get("/v2/account/articles/{article_id}/files", account_article_files)
    get("/v2/account/institution", account_institution)
    get("/v2/account/institution/articles", institution_articles)
    get("/v2/account/institution/groups", institution_groups)
    get("/v2/account/institution/reviews", institution_reviews)
    get("/v2/account/institution/review/{curation_id}", institution_review)
