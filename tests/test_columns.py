"""Real fields that once survived only in `raw`, as typed columns: served over loopback,
harvested, loaded into DuckDB (also into a file made before the columns existed), read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from aiohttp import web

from harvester.config import parse
from harvester.pipeline import Harvest
from harvester.schema import SCHEMA_VERSION
from harvester.warehouse import Warehouse, load

EMBARGO_OPTIONS = [{"id": 13, "type": "ip_range", "group_ids": [], "ip_name": "bacau"},
                   {"id": 12, "type": "logged_in", "ip_name": "", "group_ids": [550, 9448]}]
RECORDS: dict[int, dict[str, Any]] = {
    # shaped like real bodies: a current record with every key, and a 2016-era one
    11: {
        "id": 11, "version": 2, "title": "Everything", "is_public": True,
        "timeline": {"posted": "2021-07-07T09:10:11", "firstOnline": "2021-07-06T00:00:00",
                     "publisherPublication": "2015-12-31", "publisherAcceptance": "2015-11",
                     "submission": "2015-10-02T08:00:00Z", "revision": "2016"},
        "is_embargoed": True, "embargo_date": "2030-01-01T00:00:00", "embargo_type": "file",
        "embargo_title": "File(s) under embargo", "embargo_reason": "Awaiting the paper",
        "embargo_options": EMBARGO_OPTIONS,
        "is_confidential": False, "confidential_reason": "",
        "thumb": "https://s3-eu-west-1.amazonaws.com/pfigshare-u-previews/1/thumb.png",
        "references": ["https://doi.org/10.1000/a", "", "http://example.org/b",
                       "https://doi.org/10.1000/a"],
        "categories": [{"id": 30, "title": "Zoology"}, {"id": 13, "title": "Genetics"},
                       {"id": 7, "title": "Ecology"}],
        "tags": ["frogs", "ponds", "Frogs"], "keywords": ["frogs", "ponds", "Frogs"],
    },
    12: {
        "id": 12, "title": "Old", "is_active": 1, "is_confidential": True,
        "confidential_reason": "Patient data", "embargo_type": None, "embargo_options": [],
        "timeline": {"posted": "2016-03-01"}, "references": [], "tags": ["x"],
    },
    13: {"id": 13, "title": "Bare"},  # none of the keys
}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def article(request: web.Request) -> web.Response:
        return web.json_response(RECORDS[int(request.match_info["id"])])

    app = web.Application()
    app.router.add_get("/v2/articles/{id}", article)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def harvest(url: str, out: Path) -> None:
    cfg = parse(f"""
name: cols
api: {{url: "{url}/v2"}}
stats: {{url: "{url}", counters: []}}
sources: [{{kind: ids, ids: {sorted(RECORDS)}}}]
output: {{dir: "{out}"}}
""", env={})
    await Harvest(cfg).run()


def when(text: str | None) -> datetime | None:
    """What a timeline value means: a bare date or year-month is midnight UTC."""
    if text is None:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%Y-%m", "%Y"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise AssertionError(text)


TIMELINE = {"timeline_posted": "posted", "timeline_first_online": "firstOnline",
            "timeline_publisher_publication": "publisherPublication",
            "timeline_publisher_acceptance": "publisherAcceptance",
            "timeline_submission": "submission", "timeline_revision": "revision"}
TEXT = ("embargo_type", "embargo_title", "embargo_reason", "confidential_reason", "thumb")


def check_current(con: duckdb.DuckDBPyConnection) -> None:
    """Every new column of the `*_current` tables equals what the server sent."""
    con.execute("SET TimeZone = 'UTC'")
    cols = ", ".join([*TIMELINE, *TEXT, "embargo_options", "is_active"])
    rows = con.execute(f"SELECT article_id, {cols} FROM articles_current "
                       "ORDER BY article_id").fetchall()
    assert [r[0] for r in rows] == sorted(RECORDS)
    names = [*TIMELINE, *TEXT, "embargo_options", "is_active"]
    for aid, *values in rows:
        served, got = RECORDS[aid], dict(zip(names, values, strict=True))
        timeline = served.get("timeline", {})
        for column, key in TIMELINE.items():
            assert got[column] == when(timeline.get(key)), (aid, column)
        for column in TEXT:
            assert got[column] == (served.get(column) or None), (aid, column)
        options = served.get("embargo_options")
        assert got["embargo_options"] == (None if options is None
                                          else orjson.dumps(options).decode())
        if options:  # JSON text DuckDB reads as JSON
            assert orjson.loads(got["embargo_options"]) == options
        assert got["is_active"] == (None if "is_active" not in served
                                    else bool(served["is_active"]))

    refs = con.execute("SELECT article_id, position, url FROM references_current "
                       "ORDER BY article_id, position").fetchall()
    assert refs == [(aid, i, u) for aid, r in sorted(RECORDS.items())
                    for i, u in enumerate(r.get("references", [])) if u]
    cats = con.execute("SELECT article_id, position, category_id FROM categories_current "
                       "ORDER BY article_id, position").fetchall()
    assert cats == [(aid, i, c["id"]) for aid, r in sorted(RECORDS.items())
                    for i, c in enumerate(r.get("categories", []))]
    tags = con.execute("SELECT article_id, kind, position, tag FROM tags_current "
                       "ORDER BY article_id, kind, position").fetchall()
    assert tags == [(aid, kind, i, t) for aid, r in sorted(RECORDS.items())
                    for kind, key in (("keyword", "keywords"), ("tag", "tags"))
                    for i, t in enumerate(r.get(key, []))]
    # the documented way to query embargo_options
    options = con.execute(
        "SELECT article_id, o->>'type', CAST(o->'group_ids' AS BIGINT[]) FROM articles_current, "
        "unnest(CAST(embargo_options AS JSON[])) AS t(o) ORDER BY 1, 2").fetchall()
    assert options == [(11, "ip_range", []), (11, "logged_in", [550, 9448])]


async def test_new_columns_read_back_by_duckdb_equal_the_served_records(
    server: str, tmp_path: Path
) -> None:
    await harvest(server, tmp_path / "out")
    db = tmp_path / "wh.duckdb"
    load(tmp_path / "out", "cols", db)
    con = duckdb.connect(str(db), read_only=True)
    try:
        check_current(con)
    finally:
        con.close()


async def test_a_warehouse_made_before_the_columns_gains_them_on_load(
    server: str, tmp_path: Path
) -> None:
    # a DuckDB file in the shape schema version 2 left: no new columns, no references table
    db = tmp_path / "old.duckdb"
    Warehouse(db).close()
    con = duckdb.connect(str(db))
    new = [*TIMELINE, *TEXT, "embargo_options", "is_active"][2:]  # posted/firstOnline are old
    for column in new:
        con.execute(f'ALTER TABLE articles_current DROP COLUMN "{column}"')
        con.execute(f'ALTER TABLE article_versions_current DROP COLUMN "{column}"')
    con.execute("ALTER TABLE categories_current DROP COLUMN position")
    con.execute("ALTER TABLE tags_current DROP COLUMN position")
    con.execute("DROP TABLE references_current")
    con.execute("UPDATE _meta SET value = '2' WHERE key = 'schema_version'")
    con.close()

    await harvest(server, tmp_path / "out")
    load(tmp_path / "out", "cols", db)
    con = duckdb.connect(str(db), read_only=True)
    try:
        check_current(con)
        meta = dict(con.execute("SELECT key, value FROM _meta").fetchall())
        assert meta["schema_version"] == str(SCHEMA_VERSION) == "3"
        columns = [c for (c,) in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'articles_current' ORDER BY ordinal_position").fetchall()]
        assert sorted(columns[-len(new):]) == sorted(new)  # added at the end, by ALTER TABLE
    finally:
        con.close()
