"""`harvester export`: the workshop's tables as CSV files and as one XLSX workbook.

DuckDB shapes every table (item_id as the workshop names it, dates in UTC without a zone,
formula-like text neutralized); CSV is written by DuckDB's COPY, XLSX by xlsxwriter in
constant-memory mode (rows streamed, not held), one sheet per table, split at Excel's row limit.
Asked for both, the CSV files are written by DuckDB's threads while Python fills the workbook.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import xlsxwriter

from harvester.errors import ConfigError
from harvester.readback import Opened, open_target, stats_wide

# name in the export -> (snapshot table, filter); the wide stats table is built below
TABLES: dict[str, tuple[str, str]] = {
    "items": ("articles", ""),
    "authors": ("authors", ""),
    "categories": ("categories", ""),
    "tags": ("tags", ""),
    "funding": ("funding", ""),
    "files": ("files", ""),
}
STATS = "stats"
_DROP = {"snapshot_id", "raw"}  # one value for the whole file; the record's JSON is in NDJSON
# Columns the workbook leaves to the CSV files (docs/REPORT.md says why): long text that a
# cell cuts at 32,767 characters, the harvester's bookkeeping, machine fields no one reads in a
# cell (checksums, taxonomy ids), and what a child row repeats from its item's row. An author's
# position is the byline's order, so it stays.
_CSV_ONLY: dict[str, set[str]] = {
    "items": {"description", "citation", "content_hash", "fetched_at"},
    "authors": {"version"},
    "files": {"version", "position", "supplied_md5", "computed_md5"},
    "categories": {"version", "position", "source_id", "taxonomy_id"},
    "*": {"version", "position"},
}
EXCEL_ROWS = 1_048_576  # rows per sheet, the header's included
_EXCEL_EPOCH = 25569  # 1970-01-01 as an Excel day number
# A cell starting with one of these is run as a formula by spreadsheets (OWASP, CSV injection).
_FORMULA = r"^[=+\-@\t\r]"
_NUMBER = r"^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"  # "-5" is a number, not a formula
_IDS = ("version", "position", "defined_type", "license_value", "value_index")


@dataclass(frozen=True)
class _Column:
    name: str  # as exported
    expr: str  # SQL over the snapshot table
    kind: str  # text, date, bool, int, id or num: how a sheet writes and formats it


def _columns(db: Opened, table: str, sheet: bool) -> list[_Column]:
    """The columns of one export table; a `sheet` leaves out the CSV-only ones and gets dates
    as Excel day numbers (what write_datetime would compute, without a datetime per cell)."""
    if table == STATS:
        return [_Column("item_id", "article_id", "id")] + [  # sum() gives a DECIMAL
            _Column(f"total_{c}", f"CAST({c} AS BIGINT)", "int")
            for c in ("views", "downloads", "shares")]
    skip = _DROP | (_CSV_ONLY.get(table, _CSV_ONLY["*"]) if sheet else set())
    cols = []
    for name, sql_type, *_ in db.rows(f"DESCRIBE {TABLES[table][0]}"):
        if name in skip:
            continue
        alias = "item_id" if name == "article_id" else name
        kind = _kind(str(sql_type))
        quoted = f'"{name}"'
        if kind == "text" and sql_type == "VARCHAR":
            expr = (f"CASE WHEN regexp_matches({quoted}, '{_FORMULA}') AND NOT "
                    f"regexp_matches({quoted}, '{_NUMBER}') THEN '''' || {quoted} "
                    f"ELSE {quoted} END")
        elif kind == "text" and str(sql_type).endswith("[]"):
            expr = f"array_to_string({quoted}, '; ')"
        elif kind == "date" and sheet:
            expr = f"epoch_us({quoted}) / 86400e6 + {_EXCEL_EPOCH}"
        elif kind == "date":
            expr = f"timezone('UTC', {quoted})"  # naive UTC: what spreadsheets show
        else:
            expr = quoted
        if kind == "int" and (alias.endswith("_id") or alias in _IDS):
            kind = "id"  # a code, not a quantity: no thousands separator
        cols.append(_Column(alias, expr, kind))
    return cols


def _kind(sql_type: str) -> str:
    if sql_type.startswith(("TIMESTAMP", "DATE")):
        return "date"
    if sql_type == "BOOLEAN":
        return "bool"
    if sql_type.endswith("INT") or sql_type in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT",
                                                "HUGEINT", "UBIGINT", "UINTEGER"):
        return "int"
    if sql_type in ("DOUBLE", "FLOAT") or sql_type.startswith("DECIMAL"):
        return "num"
    return "text"


def _select(db: Opened, table: str, sheet: bool = False) -> str:
    """SQL of one export table: renamed, typed for spreadsheets, neutralized, in item order."""
    cols = ", ".join(f'{c.expr} AS "{c.name}"' for c in _columns(db, table, sheet))
    if table == STATS:
        return f"SELECT {cols} FROM ({stats_wide()}) ORDER BY article_id"
    source, where = TABLES[table]
    names = {r[0] for r in db.rows(f"DESCRIBE {source}")}
    order = [c for c in ("article_id", "position") if c in names]
    order_by = f" ORDER BY {', '.join(order)}" if order else ""
    return f"SELECT {cols} FROM {source}{where}{order_by}"


def export(target: str, snapshot: str | None = None, csv_dir: str | None = None,
           xlsx: str | None = None, max_rows: int = EXCEL_ROWS) -> dict[str, int]:
    """Write the tables as CSV files into `csv_dir` and/or one workbook `xlsx`; rows per table."""
    if not csv_dir and not xlsx:
        raise ConfigError("export: give --csv DIR, --xlsx FILE or both")
    db = open_target(target, snapshot)
    try:
        counts = {t: db.one(f"SELECT count(*) FROM ({_select(db, t)})") for t in _names()}
        if csv_dir and xlsx:  # DuckDB's COPY lets go of the GIL: both files at once
            with ThreadPoolExecutor(1) as pool:
                queries = {t: _select(db, t) for t in _names()}  # db.con is the sheet's
                csv_done = pool.submit(_write_csv, db.con.cursor(), Path(csv_dir), queries)
                try:
                    write_xlsx(db, Path(xlsx), max_rows=max_rows)
                finally:
                    csv_done.result()
        elif csv_dir:
            write_csv(db, Path(csv_dir))
        elif xlsx:
            write_xlsx(db, Path(xlsx), max_rows=max_rows)
    finally:
        db.close()
    return counts


def _names() -> list[str]:
    return [*TABLES, STATS]


def write_csv(db: Opened, folder: Path) -> None:
    """One UTF-8 CSV per table, with a byte-order mark so Excel reads it as UTF-8."""
    _write_csv(db.con, folder, {t: _select(db, t) for t in _names()})


def _write_csv(con: duckdb.DuckDBPyConnection, folder: Path, queries: dict[str, str]) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--csv {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for table, query in queries.items():
            final = folder / f"{table}.csv"
            body = folder / f".{table}.csv.body"
            con.execute(f"COPY ({query}) TO '{_quote(body)}' "
                        "(FORMAT csv, HEADER true, TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S')")
            tmp = folder / f".{table}.csv.tmp"
            with tmp.open("wb") as out, body.open("rb") as src:
                out.write("\ufeff".encode())
                shutil.copyfileobj(src, out, 1 << 20)
            body.unlink()
            os.replace(tmp, final)
    except OSError as exc:
        raise ConfigError(f"--csv {folder}: cannot write: {exc.strerror or exc}") from None
    except duckdb.IOException as exc:
        raise ConfigError(f"--csv {folder}: cannot write: {str(exc).splitlines()[0]}") from None


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def write_xlsx(db: Opened, path: Path, max_rows: int = EXCEL_ROWS) -> None:
    """One sheet per table (frozen header, real numbers and dates); a table longer than a sheet
    goes on in "NAME (2)", "NAME (3)", ..."""
    if path.is_dir():
        raise ConfigError(f"--xlsx {path}: is a folder, not a file")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        book = xlsxwriter.Workbook(str(tmp), {
            "constant_memory": True,
            "strings_to_formulas": False,  # text is text, whatever it starts with
            "strings_to_urls": False,  # Excel caps a sheet at 65,530 links
            "strings_to_numbers": False,
        })
        try:
            for table in _names():
                cols = _columns(db, table, sheet=True)
                reader = db.con.sql(_select(db, table, sheet=True)).to_arrow_reader(10_000)
                _sheets(book, table, cols, reader, max_rows)
        finally:
            book.close()
        os.replace(tmp, path)
    except (OSError, xlsxwriter.exceptions.FileCreateError) as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--xlsx {path}: cannot write: {exc}") from None


def _sheets(book: Any, table: str, cols: list[_Column], reader: pa.RecordBatchReader,
            max_rows: int) -> None:
    formats = {"date": book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
               "int": book.add_format({"num_format": "#,##0"})}
    bold = book.add_format({"bold": True, "bg_color": "#EEF1F5", "bottom": 1})
    part, sheet, row = 0, None, max_rows
    writers: list[Any] = []
    cell_formats = [formats.get(c.kind) for c in cols]
    for values in _rows(reader):
        if row >= max_rows:
            part += 1
            sheet = _new_sheet(book, table, part, cols, bold)
            writers = [_writer(sheet, c.kind) for c in cols]
            row = 1
        for col, value in enumerate(values):
            if value is not None:
                writers[col](row, col, value, cell_formats[col])
        row += 1
    if sheet is None:  # an empty table still gets its sheet and header
        _new_sheet(book, table, 1, cols, bold)


def _new_sheet(book: Any, table: str, part: int, cols: list[_Column], bold: Any) -> Any:
    sheet = book.add_worksheet(table if part == 1 else f"{table} ({part})")
    for i, c in enumerate(cols):
        sheet.write_string(0, i, c.name, bold)
        width = {"date": 19, "bool": 8, "int": 12, "id": 11, "num": 12}.get(c.kind, 24)
        sheet.set_column(i, i, max(width, len(c.name) + 2))
    sheet.freeze_panes(1, 0)
    return sheet


def _writer(sheet: Any, kind: str) -> Any:
    """The typed write method of a column: text stays text, whatever it starts with; a date
    is its day number with a date format, as Excel stores it."""
    return {"text": sheet.write_string, "bool": sheet.write_boolean}.get(kind, sheet.write_number)


def _rows(reader: pa.RecordBatchReader) -> Iterator[tuple[Any, ...]]:
    for batch in reader:
        columns = [c.to_pylist() for c in batch.columns]
        yield from zip(*columns, strict=True)
