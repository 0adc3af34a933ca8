"""The HTML report over a simulator harvest, opened in a real headless Chromium (Playwright)."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import orjson
import pytest
from aiohttp import web

from harvester import warehouse
from harvester.cli import main
from harvester.pipeline import Harvest
from harvester.report import write_report
from harvester.simulator import Simulator, ThreadedApp
from harvester.simulator.corpus import Corpus
from harvester.simulator.settings import SimSettings
from tests.conftest import write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]
MARK = ".role-mark [role=graphics-symbol]"  # a bar, a line, a point: not an axis


async def _harvest(tmp: Path) -> dict[str, Any]:
    """Two full snapshots of 60 items (an author and the review queue too), with totals,
    monthly timelines and yearly breakdowns; one item changes between them."""
    async with Simulator(SimSettings(items=400, seed=11)) as sim:
        c = sim.corpus
        ids = sorted(c.ids)[:60]
        orcid = next(a["orcid_id"] for i in ids for a in c.article(i)["authors"]
                     if a["orcid_id"])
        cfg = write_config(tmp, sim, [
            {"kind": "ids", "name": "some", "ids": ids},
            {"kind": "author", "name": "one-author", "orcid": orcid},
            {"kind": "reviews", "name": "queue"},
        ], env={"TOKEN": sim.settings.admin_token}, api={"token": "${TOKEN}"}, stats={
            "counters": ["views", "downloads", "shares"],
            "timeline": {"granularity": "month", "start": "2023-01-01", "end": "2024-12-31",
                         "counters": ["views", "downloads"]},
            "breakdown": {"granularity": "year", "start": "2023-01-01", "end": "2024-12-31",
                          "counters": ["views"]},
        })
        first = (await Harvest(cfg).run()).snapshot
        c.modify(ids[0], datetime.now(UTC))
        second = (await Harvest(cfg, full=True).run()).snapshot
    assert first is not None and second is not None and first != second
    return {"harvest": second.parent, "first": first, "snap": second, "orcid": orcid}


@pytest.fixture(scope="module")
def harvest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return asyncio.run(_harvest(tmp_path_factory.mktemp("report")))


def q(snap: Path, sql: str) -> Any:
    """One value of a query over the snapshot's Parquet tables, written {table}."""
    names = re.findall(r"\{(\w+)\}", sql)
    for name in names:
        sql = sql.replace("{" + name + "}", f"read_parquet('{snap}/{name}/*.parquet')")
    row = duckdb.connect().execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_report_shows_the_sections_the_snapshot_has_data_for(
    harvest: dict[str, Any], tmp_path: Path
) -> None:
    out = write_report(str(harvest["harvest"]), out=str(tmp_path / "r.html"))
    page = out.read_text()
    for section in ("headline", "published", "tops", "top-items", "over-time", "countries",
                    "authors", "files", "author-report", "reviews"):
        assert f'<section id="{section}">' in page, section
    assert "<script" not in page and "http-equiv=\"Content-Security-Policy\"" in page
    assert f"compared with {harvest['first'].name.split('=')[1]}" in page
    assert '<span data-change="changed">1 changed</span>' in page


def test_an_empty_snapshot_gives_a_page_that_says_so(tmp_path: Path) -> None:
    async def empty() -> Path:
        async with Simulator(SimSettings(items=50, seed=3)) as sim:
            cfg = write_config(tmp_path, sim, [{"kind": "search", "search_for": "zzzqqq"}])
            snap = (await Harvest(cfg).run()).snapshot
        assert snap is not None
        return snap.parent

    base = asyncio.run(empty())
    page = write_report(str(base), out=str(tmp_path / "e.html")).read_text()
    assert '<section id="empty">' in page and "holds no items" in page
    assert "<svg" not in page


def test_missing_paths_are_one_line_and_exit_2(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["report", f"warehouse:{tmp_path / 'none.duckdb'}"]) == 2
    (tmp_path / "bare").mkdir()
    assert main(["report", str(tmp_path / "bare")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no such harvest folder" in err and "no such warehouse file" in err
    assert "no published snapshot" in err


def test_a_warehouse_report_counts_its_current_rows(
    harvest: dict[str, Any], tmp_path: Path
) -> None:
    db = tmp_path / "w.duckdb"
    warehouse.load(harvest["harvest"].parent, harvest["harvest"].name, db)
    assert main(["report", f"warehouse:{db}", "--out", str(tmp_path / "w.html")]) == 0
    page = (tmp_path / "w.html").read_text()
    items = duckdb.connect(str(db), read_only=True).execute(
        "SELECT count(*) FROM articles_current WHERE NOT withdrawn").fetchone()
    assert items is not None
    assert f'data-metric="items" data-value="{items[0]}"' in page
    assert '<span data-change="changed">1 changed</span>' in page


# ---- a damaged snapshot, a mistaken path: one line, exit 2, nothing read wrong or overwritten --

PART, MANIFEST = "articles/part-00000.parquet", r"manifest\.json: "


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# how one snapshot ("snap", or the "first" it is compared with) is damaged -> the error line
DAMAGE: dict[str, tuple[str, Callable[[Path, dict[str, Any]], Any], str]] = {
    "a listed part is missing": ("snap", lambda s, m: (s / PART).unlink(),
                                 f"{PART}: missing, though the manifest lists it"),
    "the compared snapshot's part is missing": (
        "first", lambda s, m: (s / PART).unlink(), f"{PART}: missing"),
    "a bit flipped in a part": ("snap", lambda s, m: _flip(s / PART),
                                rf"{PART}: sha256 \w+\.\.\. does not match the manifest's"),
    "rows not as listed": ("snap", lambda s, m: m["files"][PART].update(rows=1),
                           rf"{PART}: [\d,]+ rows, the manifest says 1$"),
    "no Parquet tables": ("snap", lambda s, m: m.update(
        files={"errors.ndjson": m["files"]["errors.ndjson"]}), "no articles table in Parquet"),
    **{f"files {what}": ("snap", lambda s, m, v=value: m.update(files=v),
                         rf"{MANIFEST}files is not an object")
       for what, value in (("null", None), ("a string", "x"), ("a list", [1, 2]))},
    "an empty manifest": ("snap", lambda s, m: m.clear(), rf"{MANIFEST}files is not an object"),
    "config a string": ("snap", lambda s, m: m.update(config="x"),
                        rf"{MANIFEST}config is not an object"),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_snapshot_is_refused_naming_what_is_wrong(
    how: str, harvest: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "h"
    shutil.copytree(harvest["harvest"], base)
    which, damage, message = DAMAGE[how]
    snap = base / harvest[which].name
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    damage(snap, manifest)
    (snap / "manifest.json").write_bytes(orjson.dumps(manifest))
    capsys.readouterr()
    assert main(["report", str(base), "--out", str(tmp_path / "r.html")]) == 2
    assert main(["export", str(base), "--csv", str(tmp_path / "csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(re.search(message, line) for line in err), err
    assert all(str(snap) in line for line in err)  # the snapshot, and the file if one is
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "csv").exists()


def test_report_and_export_never_write_over_what_they_read(
    harvest: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "h"
    shutil.copytree(harvest["harvest"], base)
    snap, db, mine = base / harvest["snap"].name, tmp_path / "w.duckdb", tmp_path / "mine"
    warehouse.load(tmp_path, "h", db)
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    kept = [p for p in (*base.rglob("*"), db, mine / "notes.txt") if p.is_file()]
    before = {p: p.read_bytes() for p in kept}
    for argv in (["report", str(base), "--out", str(snap / "manifest.json")],
                 ["report", str(base), "--out", str(db)],
                 ["report", f"warehouse:{db}", "--out", str(base / ".state" / "r.html")],
                 ["export", str(base), "--xlsx", str(snap / PART)],
                 ["export", str(base), "--xlsx", str(db)],
                 ["export", str(base), "--csv", str(base)],
                 ["export", str(base), "--csv", str(snap / "articles")],
                 ["export", str(base), "--csv", str(mine)]):
        assert main(argv) == 2, argv
    err = [e for e in capsys.readouterr().err.splitlines() if " INFO " not in e]
    assert len(err) == 8 and "Traceback" not in "".join(err)
    inside = "inside a snapshot or the harvester's state; write it elsewhere"
    assert [line.split(": ", 2)[-1] for line in err] == [
        inside, "exists and is not a .html file; not overwritten", inside, inside,
        "exists and is not a .xlsx file; not overwritten",
        "holds '.state', not only .csv files; write into a new or empty folder", inside,
        "holds 'notes.txt', not only .csv files; write into a new or empty folder"]
    assert {p: p.read_bytes() for p in kept} == before
    assert not (base / ".state" / "r.html").exists()
    for _ in range(2):  # what they write, they write again
        assert main(["report", str(base), "--out", str(tmp_path / "r.html")]) == 0
        assert main(["export", str(base), "--xlsx", str(tmp_path / "x.xlsx"),
                     "--csv", str(tmp_path / "csv")]) == 0


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs it)")
def test_the_page_in_a_real_browser(harvest: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    snap = harvest["snap"]
    out = write_report(str(harvest["harvest"]), out=str(tmp_path / "report.html"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri(), wait_until="load")
            shot = page.screenshot(full_page=True)
            (tmp_path / "report.png").write_bytes(shot)
            figures = {el.get_attribute("data-metric"): el.get_attribute("data-value")
                       for el in page.query_selector_all(".figure")}
            shown = {el.get_attribute("data-metric"): el.inner_text().split("\n")[0]
                     for el in page.query_selector_all(".figure")}
            marks = page.eval_on_selector_all(
                "figure.chart svg",
                f"svgs => svgs.map(s => s.querySelectorAll('{MARK}').length)")
            titles = page.eval_on_selector_all(
                "figure.chart svg", "svgs => svgs.map(s => s.textContent.length)")
            top = page.eval_on_selector_all(
                "#top-views tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
            link = page.get_attribute("#top-views tbody tr a", "href")
            country = page.eval_on_selector(
                f"#countries svg {MARK}", "e => e.getAttribute('aria-label')")
        finally:
            browser.close()

    assert errors == []
    assert requests == [out.as_uri()]  # the page itself, nothing else
    assert len(marks) >= 10 and all(n > 0 for n in marks), marks
    assert all(n > 0 for n in titles)

    # the headline equals DuckDB over the same snapshot, shown with grouped digits
    stats = "(SELECT * FROM {stats} WHERE scope = 'public')"
    expected = {
        "items": q(snap, "SELECT count(*) FROM {articles}"),
        "authors": q(snap, "SELECT count(DISTINCT coalesce(CAST(author_id AS VARCHAR), "
                           "'name:' || full_name)) FROM {authors}"),
        "files": q(snap, "SELECT count(*) FROM {files}"),
        "bytes": q(snap, "SELECT sum(size) FROM {files}"),
        **{c: q(snap, f"SELECT sum(total) FROM {stats} WHERE counter = '{c}'")
           for c in ("views", "downloads", "shares")},
    }
    assert {k: int(v) for k, v in figures.items() if v} == expected
    for key in ("items", "views", "downloads"):
        assert shown[key] == f"{expected[key]:,}"

    best = duckdb.connect().execute(f"""
        SELECT a.title, coalesce(a.url_public_html, a.figshare_url), s.total
        FROM read_parquet('{snap}/articles/*.parquet') a
        JOIN read_parquet('{snap}/stats/*.parquet') s USING (article_id)
        WHERE s.counter = 'views' AND s.scope = 'public'
        ORDER BY s.total DESC, a.article_id LIMIT 20""").fetchall()
    assert len(top) == len(best)
    assert [int(r[4].replace(",", "")) for r in top] == [b[2] for b in best]
    assert link == best[0][1]

    top_country = duckdb.connect().execute(f"""
        SELECT country, sum(count) n FROM read_parquet('{snap}/stats_breakdown/*.parquet')
        WHERE item = 'article' AND city IS NULL AND counter = 'views'
        GROUP BY country ORDER BY n DESC, country LIMIT 1""").fetchone()
    assert top_country is not None
    assert country == f"views: {top_country[1]:,}; country: {top_country[0]}"

    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.height > 2000  # the whole page, not a blank first screen
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50


# ---- records written by anyone: shown as text, never run ---------------------------------------

HOSTILE = '</title><script>alert("title")</script><img src=x onerror=alert("img")>'


def _hostile_records(routes: web.Application) -> None:
    """Three records whose every shown text is markup and whose link is javascript:."""
    template = Corpus(SimSettings(items=1, seed=5))
    base = template.article(template.ids[0])

    def record(aid: int) -> dict[str, Any]:
        return {**base, "id": aid, "title": f"{HOSTILE} {aid}",
                "url_public_html": 'javascript:alert("link")',
                "tags": ['<b onmouseover=alert("tag")>tag</b>'],
                "categories": [{**base["categories"][0],
                                "title": "</style><svg onload=alert(1)>"}],
                "authors": [{**base["authors"][0],
                             "full_name": "<iframe src=javascript:alert(2)>"}]}

    async def article(request: web.Request) -> web.Response:
        return web.json_response(record(int(request.match_info["id"])))

    async def total(request: web.Request) -> web.Response:
        return web.json_response({"totals": int(request.match_info["id"])})

    routes.router.add_get("/v2/articles/{id}", article)
    routes.router.add_get("/total/{counter}/article/{id}", total)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (.ci/run installs it)")
def test_markup_in_records_is_shown_as_text_in_a_real_browser(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with ThreadedApp(_hostile_records) as server:
        hosts = SimpleNamespace(api_url=server.url + "/v2", stats_url=server.url)
        cfg = write_config(tmp_path, hosts, [{"kind": "ids", "ids": [1, 2, 3]}],
                           stats={"counters": ["views"]})
        assert main(["run", cfg.path]) == 0
    out = write_report(str(tmp_path / "out" / "t"), out=str(tmp_path / "report.html"))
    assert "<script" not in out.read_text()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(out.as_uri(), wait_until="load")
            page.hover("#top-views tbody tr td")  # a mouseover handler would fire now
            text = page.inner_text("body")
            hrefs = page.eval_on_selector_all("a", "links => links.map(a => a.href)")
            elements = page.eval_on_selector_all(
                "body script, body img, body iframe, body b", "found => found.length")
        finally:
            browser.close()
    assert dialogs == [] and elements == 0
    assert '\talert("title") 3\t' in text  # a title's tags are dropped (Figshare allows <i>)
    for literal in ('<b onmouseover=alert("tag")>tag</b>', "</style><svg onload=alert(1)>",
                    "<iframe src=javascript:alert(2)>"):
        assert literal in text  # other text as its author wrote it, in letters
    assert not any(h.startswith("javascript:") for h in hrefs)


def test_a_harvest_folder_with_a_colon_in_its_name_reads_as_a_folder(
    harvest: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run may write to 'nightly:2026' (sinks give Arrow local paths); reading it back must
    not take the relative path for a URI either."""
    shutil.copytree(harvest["harvest"], tmp_path / "nightly:2026" / "h")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "nightly:2026/h", "--out", "r.html"]) == 0
    assert '<section id="headline">' in (tmp_path / "r.html").read_text()
