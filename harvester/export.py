"""`harvester export`: the workshop's tables as CSV files and one XLSX workbook.

DuckDB shapes every table (item_id, dates in UTC, formula-like text neutralized) and writes the
CSV files; xlsxwriter streams the workbook in constant memory, split at Excel's row limit.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import xlsxwriter

from harvester.errors import ConfigError
from harvester.readback import Opened, open_target
from harvester.store import check_written, why

# name in the export -> the table (readback's view) it is made from
TABLES = {"items": "articles", "authors": "authors", "categories": "categories", "tags": "tags",
          "funding": "funding", "files": "files", "stats": "item_stats"}
_DROP = {"snapshot_id", "raw"}  # one value for the whole file; the record's JSON is in NDJSON
# Columns the workbook leaves to the CSV files (docs/REPORT.md says why).
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
# kind -> (the sheet's number format, column width, the worksheet's write method)
_KINDS = {
    "text": (None, 24, "write_string"),  # text stays text, whatever it starts with
    "date": ("yyyy-mm-dd hh:mm:ss", 19, "write_number"),  # a day number, as Excel stores it
    "bool": (None, 8, "write_boolean"),
    "int": ("#,##0", 12, "write_number"),
    "id": (None, 11, "write_number"),  # a code, not a quantity: no thousands separator
}
_TYPES = {"BOOLEAN": "bool", "INTEGER": "int", "BIGINT": "int", "DATE": "date",
          "TIMESTAMP WITH TIME ZONE": "date"}


@dataclass(frozen=True)
class _Column:
    name: str  # as exported
    expr: str  # SQL over the snapshot table
    kind: str  # a key of _KINDS


def _columns(db: Opened, table: str, sheet: bool) -> list[_Column]:
    """The columns of one export table; a `sheet` leaves out the CSV-only ones and gets dates
    as Excel day numbers (what write_datetime would compute, without a datetime per cell)."""
    skip = _DROP | (_CSV_ONLY.get(table, _CSV_ONLY["*"]) if sheet else set())
    cols = []
    for name, sql_type, *_ in db.rows(f"DESCRIBE {TABLES[table]}"):
        if name in skip:
            continue
        alias = "item_id" if name == "article_id" else name
        kind = _TYPES.get(sql_type, "text")
        quoted = f'"{name}"'
        if sql_type == "VARCHAR":
            expr = (f"CASE WHEN regexp_matches({quoted}, '{_FORMULA}') AND NOT "
                    f"regexp_matches({quoted}, '{_NUMBER}') THEN '''' || {quoted} "
                    f"ELSE {quoted} END")
        elif sql_type.endswith("[]"):
            expr = f"array_to_string({quoted}, '; ')"
        elif kind == "date" and sheet:
            expr = f"epoch_us({quoted}) / 86400e6 + {_EXCEL_EPOCH}"
        elif kind == "date":
            expr = f"timezone('UTC', {quoted})"  # naive UTC: what spreadsheets show
        else:
            expr = quoted
        if kind == "int" and (alias.endswith("_id") or alias in _IDS):
            kind = "id"
        cols.append(_Column(alias, expr, kind))
    return cols


def _select(db: Opened, table: str, sheet: bool = False) -> str:
    """SQL of one export table: renamed, typed for spreadsheets, neutralized, in item order."""
    cols = ", ".join(f'{c.expr} AS "{c.name}"' for c in _columns(db, table, sheet))
    names = {r[0] for r in db.rows(f"DESCRIBE {TABLES[table]}")}
    order = ", ".join(c for c in ("article_id", "position") if c in names)
    return f"SELECT {cols} FROM {TABLES[table]}" + (f" ORDER BY {order}" if order else "")


def export(target: str, snapshot: str | None = None, csv_dir: str | None = None,
           xlsx: str | None = None, max_rows: int = EXCEL_ROWS) -> dict[str, int]:
    """Write the tables as CSV files into `csv_dir` and/or one workbook `xlsx`; rows per table."""
    if not csv_dir and not xlsx:
        raise ConfigError("export: give --csv DIR, --xlsx FILE or both")
    if csv_dir:
        check_written(Path(csv_dir), "--csv", ".csv", folder=True)
    if xlsx:
        check_written(Path(xlsx), "--xlsx", ".xlsx")
    with closing(open_target(target, snapshot)) as db:
        queries = {t: _select(db, t) for t in TABLES}
        counts = {t: db.one(f"SELECT count(*) FROM ({q})") for t, q in queries.items()}
        # DuckDB's COPY lets go of the GIL: the CSV files are written while Python fills the
        # workbook, on a cursor of their own
        with ThreadPoolExecutor(1) as pool:
            csv = (pool.submit(_write_csv, db.con.cursor(), Path(csv_dir), queries)
                   if csv_dir else None)
            try:
                if xlsx:
                    _write_xlsx(db, Path(xlsx), max_rows)
            finally:
                if csv is not None:
                    csv.result()
    return counts


def _write_csv(con: duckdb.DuckDBPyConnection, folder: Path, queries: dict[str, str]) -> None:
    """One UTF-8 CSV per table, with a byte-order mark so Excel reads it as UTF-8."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--csv {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for table, query in queries.items():
            body, tmp = folder / f".{table}.csv.body", folder / f".{table}.csv.tmp"
            quoted = str(body).replace("'", "''")
            con.execute(f"COPY ({query}) TO '{quoted}' "
                        "(FORMAT csv, HEADER true, TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S')")
            with tmp.open("wb") as out, body.open("rb") as src:
                out.write("\ufeff".encode())
                shutil.copyfileobj(src, out, 1 << 20)
            body.unlink()
            os.replace(tmp, folder / f"{table}.csv")
    except (OSError, duckdb.IOException) as exc:
        raise ConfigError(f"--csv {folder}: cannot write: {why(exc)}") from None


def _write_xlsx(db: Opened, path: Path, max_rows: int) -> None:
    """One sheet per table (frozen header, real numbers and dates); a table longer than a sheet
    goes on in "NAME (2)", "NAME (3)", ..."""
    if path.is_dir():
        raise ConfigError(f"--xlsx {path}: is a folder, not a file")
    tmp = path.with_name(path.name + ".tmp")
    sink = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="harvester-xlsx-") as work:
            sink = _Sink(tmp, "w")
            book = xlsxwriter.Workbook(sink, {
                "constant_memory": True,
                "tmpdir": work,  # its parts, removed whatever happens
                "strings_to_formulas": False,  # text is text, whatever it starts with
                "strings_to_urls": False,  # Excel caps a sheet at 65,530 links
                "strings_to_numbers": False,
            })
            for table in TABLES:
                cols = _columns(db, table, sheet=True)  # before the reader holds the connection
                reader = db.con.sql(_select(db, table, sheet=True)).to_arrow_reader(10_000)
                _sheets(book, table, cols, reader, max_rows)
            book.close()
        sink.close()
        os.replace(tmp, path)
    except BaseException as exc:
        if sink is not None:
            sink.quiet = True
            sink.close()
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError | xlsxwriter.exceptions.XlsxWriterException):
            raise ConfigError(f"--xlsx {path}: cannot write: {exc}") from None
        raise


class _Sink(io.FileIO):
    """The workbook's file, quiet once the export failed: xlsxwriter leaves its zip writer
    open then, and that writer's close when collected must not fail a second time."""

    quiet = False

    def write(self, data: Any) -> int:
        return len(data) if self.quiet else super().write(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return 0 if self.quiet else super().seek(pos, whence)

    def tell(self) -> int:
        return 0 if self.quiet else super().tell()

    def flush(self) -> None:
        if not self.quiet:
            super().flush()


def _sheets(book: Any, table: str, cols: list[_Column], reader: pa.RecordBatchReader,
            max_rows: int) -> None:
    formats = {k: book.add_format({"num_format": f}) for k, (f, *_) in _KINDS.items() if f}
    cell_formats = [formats.get(c.kind) for c in cols]
    bold = book.add_format({"bold": True, "bg_color": "#EEF1F5", "bottom": 1})
    part, row = 0, max_rows
    writers: list[Any] = []
    for batch in reader:
        for values in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            if row >= max_rows:
                part += 1
                sheet = _new_sheet(book, table, part, cols, bold)
                writers = [getattr(sheet, _KINDS[c.kind][2]) for c in cols]
                row = 1
            for col, value in enumerate(values):
                if value is not None:
                    writers[col](row, col, value, cell_formats[col])
            row += 1
    if not part:  # an empty table still gets its sheet and header
        _new_sheet(book, table, 1, cols, bold)


def _new_sheet(book: Any, table: str, part: int, cols: list[_Column], bold: Any) -> Any:
    sheet = book.add_worksheet(table if part == 1 else f"{table} ({part})")
    for i, c in enumerate(cols):
        sheet.write_string(0, i, c.name, bold)
        sheet.set_column(i, i, max(_KINDS[c.kind][1], len(c.name) + 2))
    sheet.freeze_panes(1, 0)
    return sheet
