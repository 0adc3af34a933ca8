"""`harvester export`: the workshop's tables as CSV files and as one XLSX workbook.

DuckDB shapes every table (item_id as the workshop names it, dates in UTC without a zone,
formula-like text neutralized); CSV is written by DuckDB's COPY, XLSX by xlsxwriter in
constant-memory mode (rows streamed, not held), one sheet per table, split at Excel's row limit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
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
EXCEL_ROWS = 1_048_576  # rows per sheet, the header's included
# A cell starting with one of these is run as a formula by spreadsheets (OWASP, CSV injection).
_FORMULA = r"^[=+\-@\t\r]"
_NUMBER = r"^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"  # "-5" is a number, not a formula


def _select(db: Opened, table: str) -> str:
    """SQL of one export table: renamed, typed for spreadsheets, neutralized."""
    if table == STATS:
        return (f"SELECT article_id AS item_id, views AS total_views, "
                f"downloads AS total_downloads, shares AS total_shares "
                f"FROM ({stats_wide()}) ORDER BY item_id")
    source, where = TABLES[table]
    described = db.rows(f"DESCRIBE {source}")
    cols = []
    for name, kind, *_ in described:
        if name in _DROP:
            continue
        alias = "item_id" if name == "article_id" else name
        if kind == "VARCHAR":
            expr = (f"CASE WHEN regexp_matches(\"{name}\", '{_FORMULA}') AND NOT "
                    f"regexp_matches(\"{name}\", '{_NUMBER}') THEN '''' || \"{name}\" "
                    f"ELSE \"{name}\" END")
        elif kind.startswith("TIMESTAMP"):
            expr = f"timezone('UTC', \"{name}\")"  # naive UTC: what spreadsheets show
        elif kind.endswith("[]"):
            expr = f"array_to_string(\"{name}\", '; ')"
        else:
            expr = f'"{name}"'
        cols.append(f'{expr} AS "{alias}"')
    order = [c for c in ("article_id", "position") if c in {r[0] for r in described}]
    order_by = f" ORDER BY {', '.join(order)}" if order else ""
    return f"SELECT {', '.join(cols)} FROM {source}{where}{order_by}"


def export(target: str, snapshot: str | None = None, csv_dir: str | None = None,
           xlsx: str | None = None, max_rows: int = EXCEL_ROWS) -> dict[str, int]:
    """Write the tables as CSV files into `csv_dir` and/or one workbook `xlsx`; rows per table."""
    if not csv_dir and not xlsx:
        raise ConfigError("export: give --csv DIR, --xlsx FILE or both")
    db = open_target(target, snapshot)
    try:
        counts = {t: db.one(f"SELECT count(*) FROM ({_select(db, t)})") for t in _names()}
        if csv_dir:
            write_csv(db, Path(csv_dir))
        if xlsx:
            write_xlsx(db, Path(xlsx), max_rows=max_rows)
    finally:
        db.close()
    return counts


def _names() -> list[str]:
    return [*TABLES, STATS]


def write_csv(db: Opened, folder: Path) -> None:
    """One UTF-8 CSV per table, with a byte-order mark so Excel reads it as UTF-8."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--csv {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for table in _names():
            final = folder / f"{table}.csv"
            body = folder / f".{table}.csv.body"
            db.con.execute(f"COPY ({_select(db, table)}) TO '{_quote(body)}' "
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
            "default_date_format": "yyyy-mm-dd hh:mm:ss",
        })
        try:
            for table in _names():
                reader = db.con.sql(_select(db, table)).to_arrow_reader(10_000)
                _sheets(book, table, reader, max_rows)
        finally:
            book.close()
        os.replace(tmp, path)
    except (OSError, xlsxwriter.exceptions.FileCreateError) as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--xlsx {path}: cannot write: {exc}") from None


def _sheets(book: Any, table: str, reader: pa.RecordBatchReader, max_rows: int) -> None:
    names = reader.schema.names
    fmt_date = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    fmt_int = book.add_format({"num_format": "#,##0"})
    bold = book.add_format({"bold": True, "bg_color": "#EEF1F5", "bottom": 1})
    kinds = ["id" if _is_id(f.name) and _kind(f.type) == "int" else _kind(f.type)
             for f in reader.schema]
    formats = {"date": fmt_date, "int": fmt_int}
    part, sheet, row = 0, None, max_rows
    writers: list[Any] = []
    for values in _rows(reader):
        if row >= max_rows:
            part += 1
            sheet = _new_sheet(book, table, part, names, kinds, bold, fmt_date, fmt_int)
            writers = [_writer(sheet, kind) for kind in kinds]
            row = 1
        for col, value in enumerate(values):
            if value is not None:
                writers[col](row, col, value, formats.get(kinds[col]))
        row += 1
    if sheet is None:  # an empty table still gets its sheet and header
        _new_sheet(book, table, 1, names, kinds, bold, fmt_date, fmt_int)


def _new_sheet(book: Any, table: str, part: int, names: list[str], kinds: list[str],
               bold: Any, fmt_date: Any, fmt_int: Any) -> Any:
    sheet = book.add_worksheet(table if part == 1 else f"{table} ({part})")
    for col, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        sheet.write_string(0, col, name, bold)
        width = {"date": 19, "bool": 8, "int": 12, "id": 11, "num": 12}.get(kind, 24)
        sheet.set_column(col, col, max(width, len(name) + 2))
    sheet.freeze_panes(1, 0)
    return sheet


def _writer(sheet: Any, kind: str) -> Any:
    """The typed write method of a column: text stays text, whatever it starts with."""
    return {"text": sheet.write_string, "date": sheet.write_datetime,
            "bool": sheet.write_boolean}.get(kind, sheet.write_number)


def _is_id(name: str) -> bool:
    return name.endswith("_id") or name in ("version", "position", "defined_type",
                                            "license_value", "value_index")


def _kind(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "date"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "num"
    return "text"


def _rows(reader: pa.RecordBatchReader) -> Iterator[tuple[Any, ...]]:
    for batch in reader:
        columns = [c.to_pylist() for c in batch.columns]
        yield from zip(*columns, strict=True)
