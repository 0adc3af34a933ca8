"""Hostile and broken servers never publish a false picture: each case ends with LATEST
unchanged or an exact id set, and the exit code the README's table gives."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import yaml
from aiohttp import web

from harvester import cli
from harvester.client import LARGE_BODY, Client, large_body_turn
from harvester.config import load as load_config
from harvester.errors import AuthError
from harvester.fetch import ItemFetcher
from harvester.figshare import list_query
from harvester.journal import ItemState, Outcome, Outcomes
from harvester.partition import Exhauster, Limits
from harvester.pipeline import client_settings
from harvester.simulator import ThreadedApp
from harvester.store import list_snapshots
from tests.test_cli import one_error_line
from tests.test_sources import fast_client

BASE = int(dt.datetime(2021, 1, 1, tzinfo=dt.UTC).timestamp())
HTML = "<html><head><title>404 Not Found</title></head><body><h1>nginx</h1></body></html>"
MISSING = {"message": "Entity not found: article", "code": "EntityNotFound"}
FAST = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 4,
        "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}}


def published(n: int) -> str:
    return dt.datetime.fromtimestamp(BASE + n * 60, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Repo:
    """A Figshare-like server over ids 1..n; `mode` says how it goes wrong, `gone` which
    records answer Figshare's own 404 JSON. `hits` counts requests by kind."""

    def __init__(self, n: int = 20) -> None:
        self.ids = list(range(1, n + 1))
        self.listed: list[Any] = list(self.ids)  # what the list endpoint serves, in order
        self.mode = "ok"
        self.gone: set[int] = set()
        self.files = 0  # files in every record (10 or more: /files is paged)
        self.max_page_size = 1_000
        self.cap = 0  # page_size silently served at most this (0: as asked)
        self.extra: dict[int, dict[str, Any]] = {}  # keys served over a record's own
        self.held = (0, "")  # (n, Retry-After): records after the n-th answer 429 with it
        self.hits: Counter[str] = Counter()

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/articles", self.listing)
        app.router.add_get("/v2/articles/{id}", self.article)
        app.router.add_get("/v2/articles/{id}/files", self.article_files)
        app.router.add_get("/total/{counter}/article/{id}", self.total)

    async def listing(self, request: web.Request) -> web.Response:
        self.hits["list"] += 1
        page, size = int(request.query.get("page", 1)), int(request.query.get("page_size", 10))
        if size > self.max_page_size:
            return web.json_response({"message": f"page_size must be <= {self.max_page_size}"},
                                     status=400)
        size = min(size, self.cap or size)
        chunk = self.listed[(page - 1) * size: page * size]
        return web.json_response([{"id": i, "published_date": published(n)}
                                  for n, i in enumerate(chunk, (page - 1) * size)])

    async def article(self, request: web.Request) -> web.Response:
        self.hits["record"] += 1
        aid = int(request.match_info["id"])
        if self.mode == "html404":
            return web.Response(status=404, text=HTML, content_type="text/html")
        if self.mode == "empty404":
            return web.Response(status=404)
        if self.mode == "500":
            return web.Response(status=500, text="Internal Server Error")
        if self.mode == "html200":
            return web.Response(text=HTML, content_type="text/html")
        if self.held[1] and self.hits["record"] > self.held[0]:
            return web.json_response({"message": "slow down"}, status=429,
                                     headers={"Retry-After": self.held[1]})
        if self.mode == "json404" or aid in self.gone:
            return web.json_response(MISSING, status=404)
        files = [{"id": aid * 1000 + k, "name": f"f{k}.csv", "size": 1} for k in range(self.files)]
        return web.json_response({"id": aid, "title": f"Item {aid}",
                                  "published_date": published(aid), "files": files[:10],
                                  **self.extra.get(aid, {})})

    async def article_files(self, request: web.Request) -> web.Response:
        """Ignores `page`: every page is the first one."""
        self.hits["files"] += 1
        aid, size = int(request.match_info["id"]), int(request.query.get("page_size", 10))
        if self.mode == "no-files":
            return web.json_response([])
        return web.json_response([{"id": aid * 1000 + k, "name": f"f{k}.csv", "size": 1}
                                  for k in range(min(size, self.files))])

    async def total(self, request: web.Request) -> web.Response:
        self.hits["stats"] += 1
        if self.mode == "stats-held":
            return web.json_response({"message": "come back tomorrow"}, status=503,
                                     headers={"Retry-After": "100000"})
        if self.mode == "stats404" and request.match_info["counter"] == "downloads":
            return web.json_response({"message": "Not found"}, status=404)
        return web.json_response({"totals": 7})


def write(tmp_path: Path, url: str, sources: list[dict[str, Any]], **top: Any) -> str:
    body = {"name": "t", "api": {"url": url + "/v2"}, "stats": {"url": url, **top.pop("stats", {})},
            "http": {**FAST, **top.pop("http", {})}, "output": {"dir": str(tmp_path / "out")},
            "sources": sources, **top}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def latest(tmp_path: Path) -> str | None:
    pointer = tmp_path / "out" / "t" / "LATEST"
    return pointer.read_text() if pointer.exists() else None


def snapshot_ids(tmp_path: Path) -> list[int]:
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    lines = (snap / "articles.ndjson").read_bytes().splitlines()
    return sorted(orjson.loads(line)["id"] for line in lines)


def manifest(tmp_path: Path) -> dict[str, Any]:
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    return orjson.loads((snap / "manifest.json").read_bytes())


def errors(tmp_path: Path) -> dict[int, dict[str, Any]]:
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    return {e["id"]: e for e in map(orjson.loads,
                                    (snap / "errors.ndjson").read_bytes().splitlines())}


def publish_good(tmp_path: Path, repo: Repo, sources: list[dict[str, Any]]) -> str:
    """A first, healthy run: LATEST points at a complete snapshot of every id."""
    with ThreadedApp(repo.routes) as server:
        assert cli.main(["run", write(tmp_path, server.url, sources)]) == cli.OK
    before = latest(tmp_path)
    assert before is not None and snapshot_ids(tmp_path) == repo.ids
    return before


IDS = [{"kind": "ids", "ids": list(range(1, 21))}]


# ---- everything fails: the guard holds LATEST ------------------------------------------------


@pytest.mark.parametrize(("mode", "failed"), [
    ("html404", "failed: 20 404-unconfirmed, such as GET http://127.0.0.1:"),
    ("empty404", "failed: 20 404-unconfirmed, such as GET http://127.0.0.1:"),
    ("500", "failed: 20 500, such as GET http://127.0.0.1:"),
    ("html200", "failed: 20 bad-json, such as GET http://127.0.0.1:"),
    ("json404", "failed: 20 404-for-every-id, such as every id of the run answered 404"),
])
def test_a_server_failing_every_record_never_moves_latest(
    tmp_path: Path, mode: str, failed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repo()
    before = publish_good(tmp_path, repo, IDS)
    repo.mode = mode
    capsys.readouterr()
    with ThreadedApp(repo.routes) as server:
        code = cli.main(["run", write(tmp_path, server.url, IDS)])
    assert code == cli.PARTIAL
    line = one_error_line(capsys.readouterr().err)
    assert "publish guard" in line and "fetched 0 records of the 20 ids" in line
    assert failed in line  # why, since no errors.ndjson is published to say it
    assert latest(tmp_path) == before and len(list_snapshots(tmp_path / "out", "t")) == 1
    assert (tmp_path / "out" / "t" / ".state" / "journal.sqlite").exists()  # kept
    assert not (tmp_path / "out" / "t" / ".staging").exists()


def test_html_404s_published_anyway_are_failures_never_tombstones(tmp_path: Path) -> None:
    repo = Repo()
    publish_good(tmp_path, repo, IDS)
    repo.mode = "html404"
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, IDS)
        assert cli.main(["run", path]) == cli.PARTIAL  # guarded
        assert cli.main(["run", path, "--accept-drop"]) == cli.PARTIAL  # published, failed
    m = manifest(tmp_path)
    assert m["ids"]["gone"] == 0 and m["ids"]["failed"] == 20 and m["status"] == "partial"
    assert {e["reason"] for e in errors(tmp_path).values()} == {"404-unconfirmed"}
    assert m["runs"] == 2  # the second run resumed the guarded one's journal ...
    total = sum(m["http"]["requests_total"].values())
    assert total > sum(m["http"]["requests"].values())  # ... and counts its requests too


def test_json_404_for_every_id_is_a_failure_not_a_deletion(tmp_path: Path) -> None:
    repo = Repo()
    publish_good(tmp_path, repo, IDS)
    repo.mode = "json404"
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, IDS)
        assert cli.main(["run", path]) == cli.PARTIAL
        assert cli.main(["run", path, "--accept-drop"]) == cli.PARTIAL
    reasons = {e["reason"] for e in errors(tmp_path).values()}
    assert reasons == {"404-for-every-id"} and manifest(tmp_path)["ids"]["gone"] == 0


def test_a_rerun_publishes_once_the_server_is_back(tmp_path: Path) -> None:
    repo = Repo()
    publish_good(tmp_path, repo, IDS)
    repo.mode = "500"
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, IDS)
        assert cli.main(["run", path]) == cli.PARTIAL
        repo.mode = "ok"
        assert cli.main(["run", path]) == cli.OK
    assert snapshot_ids(tmp_path) == repo.ids and manifest(tmp_path)["status"] == "complete"


def test_an_api_url_without_v2_is_named_and_never_moves_latest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo()
    before = publish_good(tmp_path, repo, [{"kind": "articles"}])
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "articles"}])
        body = yaml.safe_load(Path(path).read_text())
        body["api"]["url"] = server.url  # /v2 left out: every listing answers 404
        Path(path).write_text(yaml.safe_dump(body))
        capsys.readouterr()
        code = cli.main(["run", path])
    assert code == cli.ABORTED
    line = one_error_line(capsys.readouterr().err)
    assert f"GET {server.url}/articles?" in line and "-> 404 Not Found" in line
    assert line.endswith("(no such listing: is api.url the API's base, as Figshare's "
                         "https://api.figshare.com/v2?)")
    # the healthy run's only: its one short page, and the empty one that proves it the end
    assert latest(tmp_path) == before and repo.hits["list"] == 2


def test_a_closed_port_never_moves_latest(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = publish_good(tmp_path, Repo(), IDS)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    capsys.readouterr()
    code = cli.main(["run", write(tmp_path, f"http://127.0.0.1:{port}", IDS)])
    assert code == cli.ABORTED  # host unreachable (README: 5, the next run resumes)
    assert "Traceback" not in capsys.readouterr().err
    assert latest(tmp_path) == before and len(list_snapshots(tmp_path / "out", "t")) == 1


def test_a_server_dropping_most_records_is_guarded(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo()
    before = publish_good(tmp_path, repo, IDS)
    repo.gone = set(range(6, 21))  # 15 of 20 answer Figshare's own 404: 5 < 0.5 x 20
    capsys.readouterr()
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, IDS)
        assert cli.main(["run", path]) == cli.PARTIAL
        line = one_error_line(capsys.readouterr().err)
        assert "fetched 5 records" in line and "the 20 of snapshot" in line
        assert latest(tmp_path) == before
        assert cli.main(["run", path, "--accept-drop"]) == cli.OK  # gone is not an error
    assert snapshot_ids(tmp_path) == [1, 2, 3, 4, 5]
    assert {e["reason"] for e in errors(tmp_path).values()} == {"not-found"}


def test_a_guarded_run_leaves_the_warehouse_unchanged(tmp_path: Path) -> None:
    repo = Repo()
    publish_good(tmp_path, repo, IDS)
    db = str(tmp_path / "w.duckdb")
    harvest = str(tmp_path / "out" / "t")
    assert cli.main(["load", harvest, "--duckdb", db]) == cli.OK

    def current() -> list[tuple[int, bool]]:
        with duckdb.connect(db) as con:
            return con.execute("SELECT article_id, withdrawn FROM articles_current "
                               "ORDER BY article_id").fetchall()

    loaded = current()
    assert loaded == [(i, False) for i in repo.ids]
    repo.mode = "html404"
    with ThreadedApp(repo.routes) as server:
        assert cli.main(["run", write(tmp_path, server.url, IDS)]) == cli.PARTIAL
    assert cli.main(["load", harvest, "--duckdb", db]) == cli.OK
    assert current() == loaded


# ---- Retry-After: a budget's stop and retry_after_max hold ------------------------------------


def journal_states(tmp_path: Path) -> Counter[str]:
    with sqlite3.connect(tmp_path / "out" / "t" / ".state" / "journal.sqlite") as db:
        rows = db.execute("SELECT state, count(*) FROM ids GROUP BY state").fetchall()
    return Counter({ItemState(state).name: n for state, n in rows})


def test_a_budget_never_waits_past_its_stop_and_keeps_the_rest_pending(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Records past the 5th answer 429 with Retry-After 30 within a 3 s budget: the run stops
    in time, the rest pending (none failed), and log and stdout count alike."""
    repo = Repo()
    repo.held = (5, "30")
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, IDS, http={"concurrency": 1})
        started = time.monotonic()
        assert cli.main(["run", path, "--budget", "3s"]) == cli.OK  # not published, resumes
        assert time.monotonic() - started < 3
        assert repo.hits["record"] == 6  # the 6th waits for no Retry-After past the stop
        assert journal_states(tmp_path) == {"DONE": 5, "PENDING": 15}
        out, err = capsys.readouterr()
        assert "not published: 5 of 20 records in" in out
        assert "budget spent: 5 of 20 records fetched, 0 failed (asked again), 15 pending" in err
        assert latest(tmp_path) is None
        repo.held = (0, "")
        assert cli.main(["run", path]) == cli.OK  # the same command resumes
    assert snapshot_ids(tmp_path) == repo.ids and manifest(tmp_path)["status"] == "complete"
    assert manifest(tmp_path)["runs"] == 2


def test_a_budgeted_night_the_server_refuses_throughout_exits_3(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo()
    repo.held = (0, "1")  # every record: 429, Retry-After 1; two attempts each
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, IDS)
        assert cli.main(["run", path, "--budget", "2s"]) == cli.PARTIAL
    line = one_error_line(capsys.readouterr().err)
    assert "the budget ran out with no record fetched (failed: 4 429, such as GET" in line
    assert "16 pending: not published (LATEST not moved)" in line
    assert journal_states(tmp_path) == {"FAILED": 4, "PENDING": 16} and latest(tmp_path) is None


def test_a_retry_after_past_the_max_stops_the_run_and_names_its_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The stats host asks for 100000 s (> retry_after_max): the run aborts (exit 5), the API
    host's records neither sent nor failed for it, and the message names the stats host."""
    repo, stats = Repo(), Repo()
    before = publish_good(tmp_path, repo, IDS)
    stats.mode = "stats-held"
    capsys.readouterr()
    with ThreadedApp(repo.routes) as api, ThreadedApp(stats.routes) as held:
        path = write(tmp_path, api.url, IDS, stats={"url": held.url})
        assert cli.main(["run", path]) == cli.ABORTED
        line = one_error_line(capsys.readouterr().err)
        assert f"GET {held.url}/total/" in line and "-> 503 Service Unavailable: " \
            "Retry-After 100000 s, longer than the 900 s a run waits at most" in line
        assert stats.hits["stats"] <= FAST["concurrency"]  # those in flight: none after
        assert journal_states(tmp_path)["FAILED"] == 0
        assert latest(tmp_path) == before
        stats.mode = "ok"
        assert cli.main(["run", path]) == cli.OK  # the same command resumes
    assert snapshot_ids(tmp_path) == repo.ids and manifest(tmp_path)["status"] == "complete"


# ---- a failing part keeps the record ---------------------------------------------------------


def test_a_stats_404_keeps_the_record_and_fails_the_item(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo(4)
    repo.mode = "stats404"
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "ids", "ids": repo.ids}],
                     stats={"counters": ["views", "downloads"]})
        assert cli.main(["run", path, "--report", str(tmp_path / "r.json")]) == cli.PARTIAL
    assert one_error_line(capsys.readouterr().err).endswith(
        "ERROR 4 ids failed (max_errors: 0): 4 stats-failed; see errors.ndjson")
    report = orjson.loads((tmp_path / "r.json").read_bytes())  # for monitoring
    assert report["manifest"]["errors_by_reason"] == {"stats-failed": 4}
    assert snapshot_ids(tmp_path) == repo.ids
    m = manifest(tmp_path)
    assert m["ids"] == {"total": 4, "fetched": 4, "failed": 0, "gone": 0, "incomplete": 4,
                        "unlisted": 0}
    assert m["status"] == "partial" and m["errors"] == 4
    assert m["errors_by_reason"] == {"stats-failed": 4}
    assert {e["reason"] for e in errors(tmp_path).values()} == {"stats-failed"}
    db = str(tmp_path / "w.duckdb")
    assert cli.main(["load", str(tmp_path / "out" / "t"), "--duckdb", db]) == cli.OK
    with duckdb.connect(db) as con:
        assert con.execute("SELECT count(*) FROM articles_current WHERE NOT withdrawn"
                           ).fetchone() == (4,)


def test_files_that_ignore_page_end_in_two_requests(tmp_path: Path) -> None:
    repo = Repo(2)
    repo.files = 500
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "ids", "ids": repo.ids}],
                     http={"page_size": 100})
        assert cli.main(["run", path]) == cli.PARTIAL
    assert repo.hits["files"] == 4  # two pages per record: the second repeats the first
    assert snapshot_ids(tmp_path) == repo.ids
    assert {e["reason"] for e in errors(tmp_path).values()} == {"files-failed"}


def test_a_files_list_without_the_records_own_files_fails_the_files_part(
        tmp_path: Path) -> None:
    repo = Repo(2)
    repo.files, repo.mode = 12, "no-files"  # /files answers [] for records listing 10 files
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "ids", "ids": repo.ids}])
        assert cli.main(["run", path]) == cli.PARTIAL
    assert snapshot_ids(tmp_path) == repo.ids  # the records are kept ...
    assert {e["reason"] for e in errors(tmp_path).values()} == {"files-failed"}
    assert "the list lacks 10 file ids the record lists" in errors(tmp_path)[1]["message"]
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    with duckdb.connect() as con:  # ... with their own (capped) file lists, never an empty one
        assert con.execute(f"SELECT article_id, file_count FROM '{snap}/articles/*.parquet' "
                           "ORDER BY 1").fetchall() == [(1, 10), (2, 10)]
        assert con.execute(f"SELECT count(*) FROM '{snap}/files/*.parquet'").fetchone() == (20,)


# ---- values a record cannot mean --------------------------------------------------------------


@pytest.mark.parametrize("wrong", [True, 1.0])
def test_a_record_whose_id_is_not_the_integer_asked_for_fails_and_never_blocks_a_rerun(
        tmp_path: Path, wrong: Any) -> None:
    repo = Repo(3)
    repo.extra[1] = {"id": wrong}  # true == 1 and 1.0 == 1 in Python: not the record of 1
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "ids", "ids": repo.ids}], max_errors=5)
        assert cli.main(["run", path]) == cli.OK
        assert snapshot_ids(tmp_path) == [2, 3]
        assert errors(tmp_path)[1]["reason"] == "bad-record"
        repo.extra.clear()  # the server is right again: the next run publishes every id
        assert cli.main(["run", path]) == cli.OK
    assert snapshot_ids(tmp_path) == [1, 2, 3]


def test_dates_past_the_calendar_and_negative_ids_are_null(tmp_path: Path) -> None:
    repo = Repo(3)
    repo.extra[1] = {"modified_date": "9999-12-31T23:59:59-12:00", "group_id": -5,
                     "authors": [{"id": -3, "full_name": "A"}]}
    repo.extra[2] = {"timeline": {"posted": "0001-01-01T00:00:00+14:00"}}
    repo.extra[3] = {"modified_date": "2020-01-01T00:00:00+01:00", "group_id": 7}
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "ids", "ids": repo.ids}])
        assert cli.main(["run", path]) == cli.OK
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(f"SELECT article_id, modified_date::VARCHAR, timeline_posted, "
                           f"group_id FROM '{snap}/articles/*.parquet' ORDER BY 1").fetchall()
        authors = con.execute(f"SELECT author_id FROM '{snap}/authors/*.parquet'").fetchall()
    assert rows == [(1, None, None, None), (2, None, None, None),
                    (3, "2019-12-31 23:00:00+00", None, 7)]
    assert authors == [(None,)]


# ---- listings ---------------------------------------------------------------------------------


def test_bad_ids_in_a_list_page_are_skipped_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repo(5)
    repo.listed = [1, "abc", 2, -1, 3, 2**70, 4, None, 5]
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "articles"}])
        assert cli.main(["run", path]) == cli.PARTIAL  # an item may hide behind a bad entry
    assert snapshot_ids(tmp_path) == [1, 2, 3, 4, 5]
    assert manifest(tmp_path)["status"] == "partial"
    source = manifest(tmp_path)["sources"][0]
    assert source["skipped"] == 4 and source["truncated"]
    sample = source["skipped_sample"]  # 2^70 is quoted as the client read it
    assert len(sample) == 4 and sample[:2] == ["id=abc", "id=-1"] and sample[3] == "id=None"
    assert "4 listed entries without a valid article id skipped" in capsys.readouterr().err


def test_a_silent_page_size_cap_is_never_taken_for_the_end(tmp_path: Path) -> None:
    repo = Repo(40)
    repo.cap = 25  # asked 30 a page, served 25
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "articles"}], http={"page_size": 30},
                     stats={"counters": []})
        assert cli.main(["run", path]) == cli.OK
    assert snapshot_ids(tmp_path) == repo.ids
    source = manifest(tmp_path)["sources"][0]
    assert source["distinct"] == 40 and not source["truncated"]
    assert "serves at most 25 items a page" in source["partitions"][0]["note"]
    assert repo.hits["list"] == 4  # 25 and the 15 after them show the cap; then 25 and 15


def test_page_size_follows_the_config(tmp_path: Path) -> None:
    repo = Repo(450)
    repo.max_page_size = 100
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "articles"}], http={"page_size": 100},
                     stats={"counters": []})
        assert cli.main(["run", path]) == cli.OK
    assert snapshot_ids(tmp_path) == repo.ids
    assert repo.hits["list"] == 450 // 100 + 1
    assert manifest(tmp_path)["sources"][0]["minimum_requests"] == 5


@pytest.mark.parametrize(("size", "together"), [(100, 4), (LARGE_BODY + 1, 1)])
async def test_a_large_body_is_held_alone_from_its_first_byte_until_stored(
        size: int, together: int) -> None:
    """Four fetches at once, each in its Outcomes.item as the fan-out runs them: small bodies
    are held together; a body past LARGE_BODY waits its turn, which lasts until it is stored."""
    body = orjson.dumps({"id": 1, "description": "x" * size})

    async def article(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    def routes(app: web.Application) -> None:
        app.router.add_get("/v2/articles/{id}", article)

    results = Outcomes(8)
    held = {"now": 0, "most": 0}

    async def fetch(client: Client, url: str, aid: int) -> None:
        async with results.item(aid) as turn:
            large_body_turn.set(turn)
            reply = await client.get(f"{url}/articles/{aid}")
            held["now"] += 1
            held["most"] = max(held["most"], held["now"])
            await results.put(Outcome(aid, ItemState.DONE, body=reply.body))

    async def journal() -> None:
        while (outcome := await results.get()) is not None:
            await asyncio.sleep(0.05)  # writing it
            held["now"] -= 1
            await results.stored([outcome])

    runner, url = await serve(routes)
    try:
        async with fast_client() as client:
            storing = asyncio.create_task(journal())
            await asyncio.gather(*(fetch(client, url, aid) for aid in range(1, 5)))
            await results.put(None)
            await storing
    finally:
        await runner.cleanup()
    assert held == {"now": 0, "most": together}


class WindowServer:
    """GET /v2/articles over items a minute apart, refusing pages past `window` items with a
    400 in words of its own; the date bound is inclusive."""

    def __init__(self, n: int, window: int) -> None:
        self.items = [{"id": 10 + i, "published_date": published(i), "defined_type": 3,
                       "group_id": 1} for i in range(n)]
        self.window = window
        self.refused = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/articles", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        q = request.query
        page, size = int(q.get("page", 1)), int(q.get("page_size", 10))
        if page * size > self.window:
            self.refused += 1
            return web.json_response({"message": "Pagination beyond the allowed window"},
                                     status=400)
        served = self.items
        if "published_since" in q:
            since = q["published_since"].replace("Z", "+00:00")
            served = [i for i in served if i["published_date"].replace("Z", "+00:00") >= since]
        return web.json_response(served[(page - 1) * size: page * size])


async def serve(routes: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v2"


async def test_a_window_refused_in_other_words_is_learned() -> None:
    n = 5_500
    server = WindowServer(n, window=1_000)
    runner, api = await serve(server.routes)
    try:
        limits = Limits()
        async with fast_client() as client:
            walker = Exhauster(client, api, limits=limits)
            got = {i async for batch in walker.ids(list_query("articles", {})) for i in batch}
            assert got == {i["id"] for i in server.items} and not walker.truncated
            assert server.refused == 1  # learned from the first refusal ...
            windows = len(walker.partitions)
            # N/1000 + 1 list requests, plus at most one per window (and the refused one)
            assert walker.requests <= n // 1000 + 1 + windows
            again = Exhauster(client, api, limits=limits)  # ... for the run's other queries
            got = {i async for batch in again.ids(list_query("articles", {})) for i in batch}
            assert len(got) == n and server.refused == 1
    finally:
        await runner.cleanup()


class ReviewServer:
    """GET /v2/account/institution/reviews: offset/limit with the spec's offset <= 5000."""

    def __init__(self, n: int) -> None:
        statuses = ("pending", "approved", "rejected", "closed")
        self.reviews = [{"id": k, "article_id": 100 + k, "status": statuses[k % 4]}
                        for k in range(n)]
        self.offsets: list[int] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/account/institution/reviews", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        self.offsets.append(offset)
        if offset > 5_000:
            return web.json_response({"message": "offset must be <= 5000",
                                      "code": "InvalidParams"}, status=422)
        status = request.query.get("status")
        chosen = [r for r in self.reviews if status is None or r["status"] == status]
        return web.json_response(chosen[offset: offset + limit])


async def test_the_review_queue_pages_within_its_declared_offset() -> None:
    server = ReviewServer(12_000)
    runner, api = await serve(server.routes)
    try:
        async with fast_client() as client:
            walker = Exhauster(client, api)
            got = {i async for batch in walker.ids(list_query("reviews", {})) for i in batch}
    finally:
        await runner.cleanup()
    assert got == {r["article_id"] for r in server.reviews} and not walker.truncated
    assert max(server.offsets) <= 5_000


# ---- a record refused to a token that works --------------------------------------------------


class AccountRepo(Repo):
    """The account listing works; `refused(id)` says which /account/articles/{id} answer
    403 JSON (or `status`), as a token without rights to some items gets."""

    def __init__(self, n: int = 30, status: int = 403) -> None:
        super().__init__(n)
        self.status = status
        self.refused = lambda aid: aid % 3 == 0

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_get("/v2/account/articles", self.listing)
        app.router.add_get("/v2/account/articles/{id}", self.own)

    async def own(self, request: web.Request) -> web.Response:
        if self.refused(int(request.match_info["id"])):
            self.hits["refused"] += 1
            return web.json_response({"message": "forbidden"}, status=self.status)
        return await self.article(request)


@pytest.mark.parametrize(("status", "reason"), [(403, "forbidden"), (401, "unauthorized")])
def test_a_record_refused_after_the_token_worked_fails_only_that_item(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, reason: str) -> None:
    """The listing proved the token: every third record refused fails that item (exit 3,
    published), never aborting the run and every resume at the same id."""
    monkeypatch.setenv("TOK", "t0ken")
    repo = AccountRepo(status=status)
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "account", "listing": "list"}],
                     api={"url": server.url + "/v2", "token": "${TOK}"})
        assert cli.main(["run", path]) == cli.PARTIAL
    refused = [i for i in repo.ids if i % 3 == 0]
    assert snapshot_ids(tmp_path) == [i for i in repo.ids if i % 3]
    got = errors(tmp_path)
    assert sorted(got) == refused and {e["reason"] for e in got.values()} == {reason}
    assert manifest(tmp_path)["errors_by_reason"] == {reason: len(refused)}


def test_records_refused_twenty_in_a_row_abort_as_a_revoked_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOK", "t0ken")
    repo = AccountRepo(n=60)
    repo.refused = lambda aid: True
    with ThreadedApp(repo.routes) as server:
        path = write(tmp_path, server.url, [{"kind": "account", "listing": "list"}],
                     api={"url": server.url + "/v2", "token": "${TOK}"})
        assert cli.main(["run", path]) == cli.ABORTED
    assert latest(tmp_path) is None and repo.hits["refused"] < 20 + 4  # 4: FAST concurrency


# ---- collections: one bad collection fails alone -----------------------------------------------

COLLS = {101: [1, 2, 3, 4, 5], 102: [6, 7, 8, 9, 10], 103: [11, 12, 13, 14, 15]}


def collection_routes(repo: Repo, mode: str) -> Any:
    """`repo` plus three collections; collection 102 goes wrong as `mode` says."""

    async def listing(request: web.Request) -> web.Response:
        first = int(request.query.get("page", 1)) == 1
        return web.json_response([{"id": k, "published_date": published(n)}
                                  for n, k in enumerate(COLLS)] if first else [])

    async def record(request: web.Request) -> web.Response:
        key = int(request.match_info["id"])
        body: Any = {"id": key, "title": f"c{key}", "articles_count": len(COLLS[key])}
        if key == 102 and mode in ("rec404", "notobj", "wrongid"):
            body = {"rec404": MISSING, "notobj": [1, 2], "wrongid": {**body, "id": 103}}[mode]
            return web.json_response(body, status=404 if mode == "rec404" else 200)
        return web.json_response(body)

    async def articles(request: web.Request) -> web.Response:
        key, page = int(request.match_info["id"]), int(request.query.get("page", 1))
        members = COLLS[key] if page == 1 else []
        if key == 102 and mode == "art404":
            return web.json_response(MISSING, status=404)
        if key == 102 and mode == "listobj":
            return web.json_response({"items": [{"id": i} for i in members]})
        if key == 102 and mode == "short":
            members = members[:2]
        return web.json_response([{"id": i} for i in members])

    def routes(app: web.Application) -> None:
        repo.routes(app)
        app.router.add_get("/v2/collections", listing)
        app.router.add_get("/v2/collections/{id}", record)
        app.router.add_get("/v2/collections/{id}/articles", articles)

    return routes


@pytest.mark.parametrize("mode", ["rec404", "art404", "notobj", "wrongid", "listobj", "short"])
def test_one_bad_collection_fails_alone_and_the_rest_publish(tmp_path: Path, mode: str) -> None:
    repo = Repo(15)
    with ThreadedApp(collection_routes(repo, mode)) as server:
        path = write(tmp_path, server.url, [{"kind": "collections", "institution": 11}])
        assert cli.main(["run", path]) == cli.PARTIAL  # was exit 5, nothing published
    (source,) = manifest(tmp_path)["sources"]
    assert source["truncated"]
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    rows = duckdb.sql("select collection_id, article_id from "
                      f"'{snap}/collection_articles/*.parquet' order by 1, 2").fetchall()
    short = mode == "short"  # listed, but fewer than its articles_count: truncated, said so
    kept = {k: v[:2] if k == 102 else v for k, v in COLLS.items() if k != 102 or short}
    assert rows == [(k, i) for k, v in kept.items() for i in v]
    assert snapshot_ids(tmp_path) == sorted(i for v in kept.values() for i in v)
    notes = [p.get("note", "") for p in source["partitions"] if p["truncated"]]
    assert len(notes) == 1
    assert ("lists 2 of the 5 articles" if short else "collection 102 failed") in notes[0]


@pytest.mark.parametrize("listing_works", [True, False])
async def test_a_record_refused_before_the_token_read_anything_checks_the_token_once(
        tmp_path: Path, listing_works: bool) -> None:
    """A resumed run lists nothing: the first refusal asks the listing once; a token that works
    there fails only the item, one refused there stops the run (AuthError) as before."""
    repo = AccountRepo()
    if not listing_works:  # the token is refused everywhere
        async def refuse(request: web.Request) -> web.Response:
            return web.json_response({"message": "forbidden"}, status=403)
        repo.listing = refuse  # type: ignore[method-assign]
        repo.refused = lambda aid: True
    runner, url = await serve(repo.routes)
    try:
        cfg = load_config(write(tmp_path, url.removesuffix("/v2"),
                                [{"kind": "account", "listing": "list"}],
                                api={"url": url, "token": "${TOK}"}), env={"TOK": "t0ken"})
        async with Client(client_settings(cfg)) as client:
            fetcher = ItemFetcher(cfg, client)
            if listing_works:
                outcome = await fetcher.fetch(3, 1)
                assert outcome.error is not None and outcome.error["reason"] == "forbidden"
                assert (await fetcher.fetch(4, 1)).error is None
            else:
                with pytest.raises(AuthError, match="articles/3 -> 403"):
                    await fetcher.fetch(3, 1)
    finally:
        await runner.cleanup()
    assert fetcher.requests["token_check"] == 1
