"""versions: all — every version's full record, keyed (article_id, version); articles: latest."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from harvester.config import parse
from harvester.errors import ConfigError
from harvester.pipeline import Harvest
from harvester.simulator import Simulator
from tests.conftest import serving, write_config


def pick(sim: Simulator) -> list[int]:
    """Items with 1, 2, 3 and 4 versions."""
    out = []
    for n in (1, 2, 3, 4):
        out += [i for i in sorted(sim.corpus.ids) if sim.corpus.versions_of(i) == n][:2]
    return sorted(out)


async def test_every_version_lands_in_article_versions_keyed_by_version(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = pick(sim)
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], versions="all",
                       stats={"counters": []})
    snap = (await Harvest(cfg).run()).snapshot
    version_gets = sim.log.count("api", "/v2/articles/{article_id}/versions/{version_id}")
    con = duckdb.connect()

    def q(sql: str) -> list[tuple]:
        return con.execute(sql.replace("T(", f"read_parquet('{snap}/").replace(")@", "/*.parquet')")
                           ).fetchall()

    latest = dict(q("SELECT article_id, version FROM T(articles)@"))
    assert latest == {i: sim.corpus.versions_of(i) for i in ids}  # one row per id: the latest
    older = q("SELECT article_id, version FROM T(article_versions)@ ORDER BY 1, 2")
    assert older == [(i, v) for i in ids for v in range(1, sim.corpus.versions_of(i))]
    listed = q("SELECT article_id, count(*), max(version) FROM T(versions)@ GROUP BY 1 ORDER BY 1")
    assert listed == [(i, sim.corpus.versions_of(i), sim.corpus.versions_of(i)) for i in ids]
    history = q("SELECT count(*) FROM (SELECT article_id, version FROM T(articles)@ "
                "UNION ALL SELECT article_id, version FROM T(article_versions)@)")
    assert history == [(sum(sim.corpus.versions_of(i) for i in ids),)]

    # an older version's row holds that version's record exactly as served
    multi = next(i for i in ids if sim.corpus.versions_of(i) == 3)
    rows = pq.read_table(snap / "article_versions").to_pylist()
    first = next(r for r in rows if (r["article_id"], r["version"]) == (multi, 1))
    async with aiohttp.ClientSession() as http, http.get(
            f"{sim.api_url}/articles/{multi}/versions/1") as resp:
        served = orjson.loads(await resp.read())
    assert orjson.loads(first["raw"]) == served
    assert first["doi"].endswith(".v1") and first["description"] != next(
        r for r in pq.read_table(snap / "articles").to_pylist()
        if r["article_id"] == multi)["description"]

    fetch = orjson.loads((snap / "manifest.json").read_bytes())["fetch"]
    assert fetch["requests"]["versions"] == len(ids)
    assert fetch["requests"]["version_record"] == sum(sim.corpus.versions_of(i) - 1 for i in ids)
    assert version_gets == fetch["requests"]["version_record"]  # the latest is not asked again


async def test_latest_only_by_default(sim: Simulator, tmp_path: Path) -> None:
    ids = pick(sim)
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], stats={"counters": []})
    snap = (await Harvest(cfg).run()).snapshot
    assert pq.read_table(snap / "article_versions").num_rows == 0
    assert pq.read_table(snap / "articles").num_rows == len(ids)
    assert sim.log.count("api", "/v2/articles/{article_id}/versions") == 0


async def test_drafts_have_no_public_versions(sim: Simulator, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, sim, [{"kind": "account"}], versions="all",
                       env={"TOKEN": sim.settings.user_token}, api={"token": "${TOKEN}"},
                       stats={"counters": []})
    result = await Harvest(cfg).run()
    assert result.errors == 0
    snap = result.snapshot
    arts = pq.read_table(snap / "articles", columns=["article_id", "is_public"]).to_pylist()
    drafts = {a["article_id"] for a in arts if not a["is_public"]}
    assert drafts
    listed = {r["article_id"] for r in pq.read_table(snap / "versions").to_pylist()}
    assert listed and not listed & drafts  # their /versions answered 404: nothing recorded


def test_versions_config_is_checked(sim: Simulator, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"versions: 'every' is not one of \['latest', 'all'\]"):
        write_config(tmp_path, sim, [{"kind": "ids", "ids": [1]}], versions="every")


async def test_an_older_versions_capped_file_list_is_paged_from_its_own_files(
    sim: Simulator, tmp_path: Path
) -> None:
    c = sim.corpus
    # a full record lists 10 files at most: these items' older versions list exactly 10
    ids = [i for i in c.ids if c.versions_of(i) > 1 and len(c.files(i, 1)) > 10][:2]
    few = [i for i in c.ids if c.versions_of(i) > 1 and 0 < len(c.files(i, 1)) < 10][:2]
    assert ids and few
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids + few}], versions="all",
                       stats={"counters": []}, http={
                           "rate": {"requests": 10_000, "per": 1}, "page_size": 7,
                           "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}})
    result = await Harvest(cfg).run()
    assert result.manifest["status"] == "complete"
    rows = pq.read_table(result.snapshot / "article_versions").to_pylist()
    for r in rows:
        served = c.files(r["article_id"], r["version"])
        assert r["file_count"] == len(served)
        assert orjson.loads(r["raw"])["files"] == served  # the complete list, in order
    paged = [e for e in sim.log.entries
             if e.route == "/v2/articles/{article_id}/versions/{version_id}/files"]
    # only versions whose own list was full are paged, 7 files a page
    wanted = [(i, v) for i in ids for v in range(1, c.versions_of(i))]
    assert sorted({(int(e.path.split("/")[3]), int(e.path.split("/")[5])) for e in paged}) \
        == sorted(wanted)
    pages = sum(len(c.files(i, v)) // 7 + 1 for i, v in wanted)
    assert len(paged) == pages == result.manifest["fetch"]["requests"]["version_files"]


async def test_a_version_served_wrong_fails_the_versions_part_only(tmp_path: Path) -> None:
    """/versions/1 answering version 2, an id of true, a list naming version -5: each fails
    that item's versions (nothing asked for -5); the records and a sound item are kept."""
    lists = {1: [1, 2, 3], 2: [1, 2], 3: [True, -5, 2], 4: [1, 2]}
    served = {(1, 1): {"id": 1, "version": 2}, (2, 1): {"id": True, "version": 1}}
    asked: list[str] = []

    async def article(request: web.Request) -> web.Response:
        aid = int(request.match_info["id"])
        return web.json_response({"id": aid, "title": f"t{aid}", "version": lists[aid][-1],
                                  "files": []})

    async def versions(request: web.Request) -> web.Response:
        aid = int(request.match_info["id"])
        return web.json_response([{"version": v, "url": "x"} for v in lists[aid]])

    async def version(request: web.Request) -> web.Response:
        asked.append(request.path)
        aid, v = int(request.match_info["id"]), int(request.match_info["v"])
        body = {"title": f"t{aid} v{v}", "files": [], **served.get((aid, v), {"id": aid,
                                                                               "version": v})}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v2/articles/{id}", article)
    app.router.add_get("/v2/articles/{id}/versions", versions)
    app.router.add_get("/v2/articles/{id}/versions/{v}", version)
    async with serving(app) as url:
        cfg = parse(f"""
name: t
api: {{url: "{url}/v2"}}
stats: {{url: "{url}", counters: []}}
sources: [{{kind: ids, ids: [1, 2, 3, 4]}}]
output: {{dir: "{tmp_path / 'out'}"}}
versions: all
max_errors: 3
http: {{rate: {{requests: 10000, per: 1}}}}
""", env={})
        result = await Harvest(cfg).run()
    snap = result.snapshot
    assert sorted(r["article_id"] for r in pq.read_table(snap / "articles").to_pylist()) == \
        [1, 2, 3, 4]
    older = [(r["article_id"], r["version"], r["title"])
             for r in pq.read_table(snap / "article_versions").to_pylist()]
    assert older == [(4, 1, "t4 v1")]
    listed = [(r["article_id"], r["version"]) for r in pq.read_table(snap / "versions").to_pylist()]
    assert listed == [(4, 1), (4, 2)]
    errors = {e["id"]: e for e in map(orjson.loads,
                                      (snap / "errors.ndjson").read_bytes().splitlines())}
    assert {i: e["reason"] for i, e in errors.items()} == {
        1: "versions-failed", 2: "versions-failed", 3: "versions-failed"}
    assert "is not version 1 of 1" in errors[1]["message"]
    assert "is not version 1 of 2" in errors[2]["message"]
    assert "2 entries without a valid version number (the first: True)" in errors[3]["message"]
    assert sorted(asked) == ["/v2/articles/1/versions/1", "/v2/articles/2/versions/1",
                             "/v2/articles/4/versions/1"]
