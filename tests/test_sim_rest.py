"""The simulator's REST v2 routes over loopback: paging caps, cursors, search, records, account."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.corpus import Corpus
from harvester.simulator.rest import add_routes
from harvester.simulator.restkit import MAX_PAGE_MESSAGE
from harvester.simulator.settings import SimSettings


class Api:
    """A loopback server over a holder object, and a session to talk to it."""

    def __init__(self, settings: SimSettings) -> None:
        self.holder = types.SimpleNamespace(settings=settings, corpus=Corpus(settings))
        app = web.Application()
        app[SIMULATOR] = self.holder
        add_routes(app)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    @property
    def corpus(self) -> Corpus:
        return self.holder.corpus

    def settings(self, **changes: Any) -> None:
        self.holder.settings = self.holder.settings.with_(**changes)

    async def __aenter__(self) -> Api:
        await self.server.start_server()
        self.session = aiohttp.ClientSession(base_url=str(self.server.make_url("/")))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.server.close()

    async def call(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        async with self.session.request(method, path, **kwargs) as resp:
            body = await resp.read()
            data = await resp.json(content_type=None) if body else None
            return resp.status, data, resp.headers

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, data, _ = await self.call(method, path, **kwargs)
        assert status == 200, (status, data)
        return data


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with Api(SimSettings(items=1_200, seed=5)) as server:
        yield server


@pytest.fixture
async def big() -> AsyncIterator[Api]:
    async with Api(SimSettings(items=9_500, seed=8)) as server:
        yield server


def _ids(items: list[dict[str, Any]]) -> list[int]:
    return [i["id"] for i in items]


USER = {"Authorization": "token sim-user-token"}
ADMIN = {"Authorization": "token sim-admin-token"}


# ---- paging --------------------------------------------------------------------------------


async def test_both_paging_styles_yield_the_same_ids(api: Api) -> None:
    by_page = []
    for page in range(1, 5):
        by_page += _ids(await api.ok("GET", "/v2/articles", params={"page": page, "page_size": 7}))
    by_offset = []
    for offset in range(0, 28, 7):
        by_offset += _ids(
            await api.ok("GET", "/v2/articles", params={"offset": offset, "limit": 7})
        )
    assert by_page == by_offset == list(api.corpus.select()[:28])
    assert len(await api.ok("GET", "/v2/articles")) == 10  # page_size defaults to 10


async def test_window_and_limits(big: Api) -> None:
    nine = await big.ok("GET", "/v2/articles", params={"page": 9, "page_size": 1000})
    assert len(nine) == 1000
    status, body, _ = await big.call("GET", "/v2/articles", params={"page": 10, "page_size": 1000})
    assert status == 400 and body["message"] == MAX_PAGE_MESSAGE
    status, body, _ = await big.call(
        "POST", "/v2/articles/search", json={"page": 10, "page_size": 1000}
    )
    assert status == 400 and body["message"] == MAX_PAGE_MESSAGE
    # an item past the window is refused even when the page is tiny
    status, _, _ = await big.call("GET", "/v2/articles", params={"page": 9001, "page_size": 1})
    assert status == 422  # page itself is capped at max_page (5,000)
    status, _, _ = await big.call("GET", "/v2/articles", params={"page": 4500, "page_size": 2})
    assert status == 200
    status, body, _ = await big.call("GET", "/v2/articles", params={"page": 3001, "page_size": 3})
    assert status == 400 and body["message"] == MAX_PAGE_MESSAGE
    for params in (
        {"page_size": 1001},
        {"limit": 1001},
        {"page": 0},
        {"limit": 0},
        {"offset": 5001},
        {"offset": -1},
        {"page": "two"},
        {"page": 1, "offset": 0},
        {"page_size": 10, "limit": 10},
        {"page": 2, "limit": 5},
    ):
        status, body, _ = await big.call("GET", "/v2/articles", params=params)
        assert status == 422, params
        assert body["code"] == "InvalidParams" and body["message"]
    status, _, headers = await big.call("GET", "/v2/articles", params={"limit": 5})
    assert status == 200 and not any("total" in h.lower() for h in headers)


async def test_x_cursor_goes_past_the_window(big: Api) -> None:
    status, first, headers = await big.call("GET", "/v2/articles", params={"page_size": 1000})
    seen = _ids(first)
    cursor = headers["X-Cursor"]
    while True:
        status, page, headers = await big.call(
            "GET", "/v2/articles", params={"limit": 1000}, headers={"X-Cursor": cursor}
        )
        assert status == 200
        seen += _ids(page)
        cursor = headers["X-Cursor"]
        if len(page) < 1000:
            break
    assert seen == list(big.corpus.select()) and len(seen) == 9_500
    status, body, _ = await big.call(
        "GET", "/v2/articles", params={"offset": 0, "limit": 10}, headers={"X-Cursor": cursor}
    )
    assert status == 422 and body["code"] == "InvalidParams"
    status, body, _ = await big.call("GET", "/v2/articles", headers={"X-Cursor": "nope"})
    assert status == 422
    # search cursors carry the query: the body need not be sent again
    status, page, headers = await big.call(
        "POST", "/v2/articles/search", json={"search_for": ":item_type: dataset", "limit": 5}
    )
    status, more, _ = await big.call(
        "POST", "/v2/articles/search", json={"limit": 5}, headers={"X-Cursor": headers["X-Cursor"]}
    )
    assert all(i["defined_type"] == 3 for i in page + more) and not set(_ids(page)) & set(
        _ids(more)
    )
    big.settings(cursor=False)
    _, _, headers = await big.call("GET", "/v2/articles")
    assert "X-Cursor" not in headers


# ---- filters and order ---------------------------------------------------------------------


async def test_order_filters_and_since_bounds(api: Api) -> None:
    c = api.corpus
    status, body, _ = await api.call("GET", "/v2/articles", params={"order": "title"})
    assert status == 400 and body["message"] == "Invalid value received for order"
    asc = await api.ok(
        "GET", "/v2/articles",
        params={"order": "published_date", "order_direction": "asc", "page_size": 1000},
    )  # fmt: skip
    keys = [(i["published_date"], i["id"]) for i in asc]
    assert keys == sorted(keys)
    middle = asc[500]
    since = middle["published_date"]
    got = await api.ok(
        "GET", "/v2/articles",
        params={"published_since": since, "order_direction": "asc", "page_size": 1000},
    )  # fmt: skip
    assert got[0]["published_date"] == since and middle["id"] in _ids(got)
    assert all(i["published_date"] >= since for i in got)
    day = await api.ok(
        "GET", "/v2/articles", params={"published_since": since[:10], "page_size": 1000}
    )
    assert all(i["published_date"] >= since[:10] for i in day) and len(day) >= len(got)
    inst = c.institutions[0].id
    mine = await api.ok("GET", "/v2/articles", params={"institution": inst, "page_size": 1000})
    assert mine and all(c.institution_of(i) == inst for i in _ids(mine))
    group = c.groups[0].id
    grouped = await api.ok("GET", "/v2/articles", params={"group": group, "page_size": 1000})
    assert grouped and all(i["group_id"] == group for i in grouped)
    typed = await api.ok("GET", "/v2/articles", params={"item_type": 3, "page_size": 1000})
    assert typed and all(i["defined_type"] == 3 for i in typed)
    doi = asc[3]["doi"]
    assert _ids(await api.ok("GET", "/v2/articles", params={"doi": doi})) == [asc[3]["id"]]
    status, body, _ = await api.call("GET", "/v2/articles", params={"modified_since": "yesterday"})
    assert status == 422
    by_views = await api.ok("GET", "/v2/articles", params={"order": "views", "page_size": 50})
    views = [c.pseudo_count(i, "views") for i in _ids(by_views)]
    assert views == sorted(views, reverse=True)


# ---- search --------------------------------------------------------------------------------


async def _search(api: Api, search_for: str, **extra: Any) -> list[int]:
    body = {"search_for": search_for, "page_size": 1000, **extra}
    return _ids(await api.ok("POST", "/v2/articles/search", json=body))


async def test_search_terms(api: Api) -> None:
    c = api.corpus
    sample = c.ids[77]
    texts = c.texts(sample)
    title_word = texts["title"][0].split()[0].strip("<em>/").lower()
    hits = await _search(api, f":title: {title_word.upper()}")
    assert sample in hits
    assert all(title_word in c.texts(i)["title"][0].lower() for i in hits)
    tagged = next(i for i in c.ids if len(c.texts(i)["tag"]) > 0)
    tag = c.texts(tagged)["tag"][0]
    hits = await _search(api, f":tag: {tag}")
    assert tagged in hits and all(tag in c.texts(i)["tag"] for i in hits)
    author = texts["author"][0]
    hits = await _search(api, f":author: {author}")
    assert sample in hits and all(author in c.texts(i)["author"] for i in hits)
    category = texts["category"][0]
    assert sample in await _search(api, f":category: '{category}'")
    both = await _search(api, f":author: {author} AND :category: {category}")
    assert sample in both and len(both) <= len(hits)
    either = await _search(api, f"(:author: {author}) OR :item_type: software")
    assert set(hits) <= set(either)
    without = await _search(api, f":author: {author} NOT :category: {category}")
    assert sample not in without and set(without) < set(hits)
    inst = c.institutions[1]
    hits = await _search(api, f":institution: {inst.string_id}")
    assert hits and all(c.institution_of(i) == inst.id for i in hits)
    hits = await _search(api, '"data for"')
    text = lambda i: (c.texts(i)["title"][0] + c.texts(i)["description"][0]).lower()  # noqa: E731
    assert hits and all("data for" in text(i) for i in hits)
    assert not all("data for" in text(i) for i in c.ids)
    doi = c.article(sample)["doi"]
    assert await _search(api, f":doi: {doi}") == [sample]
    for bad in ('"open', ":title:", "(frog", "frog)", ":nonsense: x", "frog AND"):
        status, body, _ = await api.call("POST", "/v2/articles/search", json={"search_for": bad})
        assert status == 400, bad
        assert set(body) == {"message", "code", "data"}


async def test_search_published_bounds_are_exclusive(api: Api) -> None:
    c = api.corpus
    day = c.published(c.ids[600]).date().isoformat()
    after = await _search(api, f":published_after: {day}")
    before = await _search(api, f":posted_before: {day}")
    on_day = [i for i in c.ids if c.published(i).date().isoformat() == day]
    assert on_day
    assert not set(on_day) & set(after) and not set(on_day) & set(before)
    assert all(c.published(i).date().isoformat() > day for i in after)
    assert all(c.published(i).date().isoformat() < day for i in before)
    assert len(after) + len(before) + len(on_day) == len(c.ids)
    window = await _search(
        api,
        ":published_after: 2019-12-31 AND :published_before: 2021-01-01",
        order="published_date",
    )
    assert window and all(c.published(i).year == 2020 for i in window)


async def test_search_order_default_and_query_string_params(api: Api) -> None:
    c = api.corpus
    # Figshare's workshop sends everything in the query string of the POST
    inst = c.institutions[0].id
    got = await api.ok(
        "POST", "/v2/articles/search", params={"institution": inst, "page_size": 1000, "page": 1}
    )
    assert got and all(c.institution_of(i) == inst for i in _ids(got))
    assert _ids(got) == sorted(_ids(got), reverse=True)  # created_date desc = id desc
    assert all("project_id" in i for i in got)
    pid = c.project_ids[0]
    in_project = await api.ok("POST", "/v2/articles/search", json={"project_id": pid})
    assert set(_ids(in_project)) <= set(c.project_articles(pid))


async def test_search_duplicates_repeat_without_dropping(api: Api) -> None:
    api.settings(search_duplicate_rate=0.2)
    pages = []
    for page in range(1, 13):
        pages.append(await _page(api, page))
    flat = [i for p in pages for i in p]
    assert any(len(set(p)) < len(p) for p in pages)  # within a response
    assert len(flat) > len(set(flat))
    assert set(flat) == set(api.corpus.ids)  # nothing dropped
    again = [await _page(api, page) for page in range(1, 13)]
    assert again == pages  # deterministic


async def _page(api: Api, page: int) -> list[int]:
    return _ids(await api.ok("POST", "/v2/articles/search", json={"page": page, "page_size": 120}))


# ---- single records ------------------------------------------------------------------------


async def test_record_404_shapes_and_conditional_get(api: Api) -> None:
    c = api.corpus
    status, body, _ = await api.call("GET", "/v2/articles/123")
    assert status == 404
    assert body == {"message": "Entity not found: article", "code": "EntityNotFound", "data": None}
    status, body, _ = await api.call("GET", "/v2/articles/abc")
    assert status == 400 and body["code"]
    draft = c.account_article_ids(c.user)[0]
    assert not c.exists(draft)
    assert (await api.call("GET", f"/v2/articles/{draft}"))[0] == 404
    target = c.ids[9]
    status, record, headers = await api.call("GET", f"/v2/articles/{target}")
    assert status == 200 and record == c.article(target)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["ETag"] and headers["Last-Modified"]
    status, _, _ = await api.call(
        "GET", f"/v2/articles/{target}", headers={"If-None-Match": headers["ETag"]}
    )
    assert status == 304
    c.withdraw(target)
    assert (await api.call("GET", f"/v2/articles/{target}"))[0] == 404
    listed = await api.ok("GET", "/v2/articles", params={"page_size": 1000})
    listed += await api.ok("GET", "/v2/articles", params={"page_size": 1000, "page": 2})
    assert target not in _ids(listed) and len(listed) == 1_199


async def test_files_cap_and_complete_list(api: Api) -> None:
    c = api.corpus
    many = next(i for i in c.ids if len(c.files(i)) > 12)
    record = await api.ok("GET", f"/v2/articles/{many}")
    assert len(record["files"]) == 10
    default = await api.ok("GET", f"/v2/articles/{many}/files")
    assert len(default) == 10
    full = await api.ok("GET", f"/v2/articles/{many}/files", params={"page_size": 1000})
    assert full == c.files(many) and len(full) > 12
    second = await api.ok("GET", f"/v2/articles/{many}/files", params={"offset": 10, "limit": 10})
    assert second == full[10:20]
    one = await api.ok("GET", f"/v2/articles/{many}/files/{full[11]['id']}")
    assert one == full[11]
    assert (await api.call("GET", f"/v2/articles/{many}/files/1"))[0] == 404
    embargoed = next(i for i in c.ids if c.article(i)["is_embargoed"])
    assert "files" not in await api.ok("GET", f"/v2/articles/{embargoed}")
    api.settings(full_record_files_cap=3)  # knobs are read per request
    assert len((await api.ok("GET", f"/v2/articles/{many}"))["files"]) == 3


async def test_versions(api: Api) -> None:
    c = api.corpus
    multi = next(i for i in c.ids if c.versions_of(i) >= 2)
    versions = await api.ok("GET", f"/v2/articles/{multi}/versions")
    assert [v["version"] for v in versions] == list(range(1, c.versions_of(multi) + 1))
    first = await api.ok("GET", versions[0]["url"].split("/", 3)[3].join(["/", ""]))
    assert first["version"] == 1 and first["doi"].endswith(".v1")
    status, body, _ = await api.call("GET", f"/v2/articles/{multi}/versions/99")
    assert status == 404 and body["message"] == "Entity not found: ArticleVersion"


# ---- collections and projects --------------------------------------------------------------


async def test_collections_and_projects(api: Api) -> None:
    c = api.corpus
    cols = await api.ok("GET", "/v2/collections", params={"page_size": 100})
    assert {i["id"] for i in cols} == set(c.collection_ids)
    assert set(cols[0]) == {"id", "title", "doi", "handle", "url", "timeline", "published_date"}
    cid = cols[0]["id"]
    full = await api.ok("GET", f"/v2/collections/{cid}")
    articles = await api.ok("GET", f"/v2/collections/{cid}/articles", params={"page_size": 100})
    assert full["articles_count"] == len(articles) and "institution_id" in full
    assert (await api.ok("GET", f"/v2/collections/{cid}/versions"))[0]["version"] == 1
    word = cols[0]["title"].split()[1]
    found = await api.ok("POST", "/v2/collections/search", json={"search_for": word})
    assert cid in _ids(found)
    projects = await api.ok("GET", "/v2/projects", params={"page_size": 100})
    assert {p["id"] for p in projects} == set(c.project_ids)
    pid = projects[0]["id"]
    assert (await api.ok("GET", f"/v2/projects/{pid}"))["collaborators"]
    members = await api.ok("GET", f"/v2/projects/{pid}/articles", params={"page_size": 100})
    assert _ids(members) == c.project_articles(pid)
    assert (await api.call("GET", "/v2/projects/1"))[0] == 404
    assert (await api.call("GET", "/v2/projects", params={"order": "downloads"}))[0] == 400


# ---- account -------------------------------------------------------------------------------


async def test_account_auth(api: Api) -> None:
    c = api.corpus
    for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "Basic eDp5"}):
        status, body, _ = await api.call("GET", "/v2/account/articles", headers=headers)
        assert status == 401 and body["code"] and body["message"]
    mine = await api.ok("GET", "/v2/account/articles", headers=USER, params={"page_size": 100})
    drafts = [i for i in mine if i["published_date"] is None]
    assert len(drafts) == 20 and len(mine) > 20
    assert all(d["doi"] == "" and d["timeline"] == {} for d in drafts)
    via_query = await api.ok(
        "GET", "/v2/account/articles", params={"access_token": "sim-user-token", "page_size": 100}
    )
    assert via_query == mine
    record = await api.ok("GET", f"/v2/account/articles/{drafts[0]['id']}", headers=USER)
    assert record["account_id"] == c.user.id and "curation_status" in record
    files = await api.ok("GET", f"/v2/account/articles/{drafts[0]['id']}/files", headers=USER)
    assert all("upload_token" in f for f in files)
    other = c.ids[0]
    assert (await api.call("GET", f"/v2/account/articles/{other}", headers=USER))[0] == 404
    inst = await api.ok("GET", "/v2/account/institution", headers=USER)
    assert inst["id"] == c.institutions[0].id and inst["domain"]
    api.settings(user_token="rotated")
    assert (await api.call("GET", "/v2/account/articles", headers=USER))[0] == 401
    rotated = {"Authorization": "token rotated"}
    assert (await api.call("GET", "/v2/account/articles", headers=rotated))[0] == 200
    for path in ("articles", "groups", "reviews"):
        status, body, _ = await api.call("GET", f"/v2/account/institution/{path}", headers=rotated)
        assert status == 403 and body["code"] == "Forbidden"
        status, _, _ = await api.call("GET", f"/v2/account/institution/{path}")
        assert status == 401


async def test_institution_admin(api: Api) -> None:
    c = api.corpus
    rows = await api.ok(
        "GET", "/v2/account/institution/articles", headers=ADMIN, params={"page_size": 1000}
    )
    private = [r for r in rows if r["published_date"] is None]
    assert private and len(rows) > len(private)
    public = [r for r in rows if r["published_date"]]
    assert all(c.institution_of(r["id"]) == c.institutions[0].id for r in public)
    recent = await api.ok(
        "GET", "/v2/account/institution/articles", headers=ADMIN,
        params={"order": "modified_date", "modified_since": "2020-01-01", "page_size": 1000},
    )  # fmt: skip
    assert all(r["modified_date"] >= "2020-01-01" for r in recent)
    groups = await api.ok("GET", "/v2/account/institution/groups", headers=ADMIN)
    assert any(g["parent_id"] for g in groups) and all("resource_id" in g for g in groups)
    reviews = await api.ok(
        "GET", "/v2/account/institution/reviews", headers=ADMIN, params={"limit": 1000}
    )
    assert {r["status"] for r in reviews} == {"pending", "approved", "rejected", "closed"}
    pending = await api.ok(
        "GET", "/v2/account/institution/reviews", headers=ADMIN, params={"status": "pending"}
    )
    assert pending and all(r["status"] == "pending" for r in pending)
    detail = await api.ok(
        "GET", f"/v2/account/institution/review/{reviews[0]['id']}", headers=ADMIN
    )
    assert detail["item"]["id"] == reviews[0]["article_id"] and detail["request_number"] >= 1
    assert (await api.call("GET", "/v2/account/institution/review/1", headers=ADMIN))[0] == 404


async def test_item_types_without_a_token_are_figshares_with_a_bad_one_refused(api: Api) -> None:
    """The spec declares OAuth2 but says an anonymous caller gets Figshare's own item types."""
    anonymous = await api.ok("GET", "/v2/item_types")
    assert anonymous == await api.ok("GET", "/v2/item_types", headers=USER)
    assert {t["id"] for t in anonymous} >= {3, 9}  # dataset, software
    status, _, _ = await api.call("GET", "/v2/item_types",
                                  headers={"Authorization": "token nobody"})
    assert status == 401
