"""Full Figshare records -> normalized rows that fit `schema.SCHEMAS`.

A column is read from the record at the `source` its schema documents and made to fit its type
(docs/TABLES.md, "How values are normalized"); unknown keys are kept only in `raw`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

import pyarrow as pa

from harvester import served
from harvester.periods import periods
from harvester.schema import SCHEMAS

Columns = dict[str, list[Any]]  # one table's values, column by column


@dataclass(frozen=True)
class RowContext:
    """What every row of one record shares: its snapshot, fetch time and provenance."""

    snapshot_id: str
    fetched_at: datetime
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A naive fetch time is taken as UTC so rows never depend on the machine's zone.
        object.__setattr__(self, "fetched_at", parse_timestamp(self.fetched_at))
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))


def _str(v: Any) -> str | None:
    """"" and null both mean absent; a number or bool becomes its text, anything else JSON."""
    if v is None or isinstance(v, str):
        return v or None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return served.dumps(v).decode()


def _int(v: Any, bits: int = 64) -> int | None:
    """An integral number or numeric text that fits `bits`, else None."""
    if isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            with contextlib.suppress(ValueError):
                v = float(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v if -(2 ** (bits - 1)) <= v < 2 ** (bits - 1) else None


def _id(v: Any, bits: int = 64) -> int | None:
    """An identifier: positive; 0 means "none" in Figshare's listings, so it becomes null."""
    n = _int(v, bits)
    return n if n is not None and n > 0 else None


def _bool(v: Any) -> bool | None:
    if not isinstance(v, int | str):  # a bool is an int: str(True) is "True"
        return None
    return {"true": True, "1": True, "false": False, "0": False}.get(str(v).strip().lower())


def parse_timestamp(v: Any) -> datetime | None:
    """ISO date or date-time (any precision Figshare uses) -> aware UTC datetime, else None."""
    if isinstance(v, date) and not isinstance(v, datetime):
        v = datetime(v.year, v.month, v.day)
    elif isinstance(v, str) and (s := v.strip()):
        try:
            v = datetime.fromisoformat(s)
        except ValueError:
            # Timeline values have no fixed precision: "2021-07" and "2021" occur too.
            with contextlib.suppress(ValueError):
                v = datetime.strptime(s, "%Y-%m" if "-" in s else "%Y")
    if not isinstance(v, datetime):
        return None
    try:  # 9999-12-31T23:59-12:00 is past year 9999 in UTC
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    except OverflowError:
        return None


def _coercion(field: pa.Field) -> Callable[[Any], Any]:
    typ = field.type
    if pa.types.is_integer(typ):
        ident = field.name.endswith("_id") or field.name in ("defined_type", "assigned_to")
        coerce = partial(_id if ident else _int, bits=typ.bit_width)
        return coerce if field.nullable else lambda v: coerce(v) or 0
    # list and date columns are never read from a record: always given
    return {pa.string(): _str, pa.bool_(): _bool}.get(typ, parse_timestamp)


_PATH = re.compile(r"\w+(\.\w+)?")  # a source that is a key (path) of the record
_Reader = tuple[str, tuple[str, ...] | None, Callable[[Any], Any]]


def _readers(table: str, prefix: str = "") -> list[_Reader]:
    """(column, key path or None, coercion) of `table`: the path is its documented source."""
    out: list[_Reader] = []
    for field in SCHEMAS[table]:
        src = field.metadata[b"source"].decode()
        path = src.removeprefix(prefix) if src.startswith(prefix) else ""
        keys = tuple(path.split(".")) if _PATH.fullmatch(path) and path != "harvester" else None
        out.append((field.name, keys, _coercion(field)))
    return out


_READERS = {t: _readers(t) for t in SCHEMAS}
_ELEMENTS = {  # child table -> the record's list its rows come from
    "authors": "authors", "files": "files", "categories": "categories",
    "funding": "funding_list", "custom_fields": "custom_fields",
    "related_materials": "related_materials",
}
_READERS |= {t: _readers(t, f"{key}[].") for t, key in _ELEMENTS.items()}
# the downloader's results and the versions answer: keyed by column name
_READERS |= {t: [(name, (name,), f) for name, _, f in _readers(t)]
             for t in ("downloads", "versions")}


def _get(item: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        item = item.get(key) if isinstance(item, Mapping) else None
    return item


def _columns(table: str, items: Sequence[Any], given: Mapping[str, Any]) -> Columns:
    """`table`'s columns, one row per item: `given` ones as they are (a list, or one value for
    every row), the others read from the item at their source and coerced."""
    cols: Columns = {}
    for name, keys, coerce in _READERS[table]:
        if name not in given:
            if keys is None:
                raise KeyError(f"{table}.{name} has no source in the record: give it")
            cols[name] = [coerce(_get(item, keys)) for item in items]
        elif isinstance(given[name], list):
            cols[name] = given[name]
        else:
            cols[name] = [given[name]] * len(items)
    return cols


def to_rows(columns: Columns) -> list[dict[str, Any]]:
    """Row dicts of columns (the inverse of `columns`)."""
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def columns(table: str, rows: Sequence[Mapping[str, Any]]) -> Columns:
    """`table`'s columns of row dicts (a missing key is null)."""
    return {name: [r.get(name) for r in rows] for name in SCHEMAS[table].names}


def _elements(v: Any) -> list[tuple[int, Mapping[str, Any]]]:
    """(position, element) for the mapping elements of a list; anything else has none."""
    items = v if isinstance(v, list) else ()
    return [(i, d) for i, d in enumerate(items) if isinstance(d, Mapping)]


def content_hash(record: Mapping[str, Any], text: bytes | None = None) -> str:
    """sha256 hex of the record's canonical JSON (keys sorted at every level), or of `text`,
    its JSON as served, when no canonical form holds every value."""
    data = text if text is not None else served.dumps(record, sort_keys=True)
    return hashlib.sha256(data).hexdigest()


def _entity_id(record: Any, kind: str) -> int:
    if not isinstance(record, Mapping):
        raise ValueError(f"{kind} record must be a JSON object, got {type(record).__name__}")
    n = _int(record.get("id"))
    if n is None:
        raise ValueError(f"{kind} record has no usable 'id': {record.get('id')!r}")
    return n


def _full(table: str, records: Sequence[Mapping[str, Any]], ctx: RowContext,
          given: Mapping[str, Any], text: bytes | None = None, canonical: bool = True) -> Columns:
    """Columns of full records (articles, collections, ...): their hash, raw text and fetch.
    `raw` is bytes of JSON text: Arrow takes them as UTF-8 without another copy of a big record."""
    texts = [text if text is not None else served.dumps(r) for r in records]
    return _columns(table, records, {
        "snapshot_id": ctx.snapshot_id,
        "content_hash": [content_hash(r, None if canonical else t)
                         for r, t in zip(records, texts, strict=True)],
        "fetched_at": ctx.fetched_at,
        "raw": texts,
        **given,
    })


def _articles(table: str, records: Sequence[Mapping[str, Any]], ctx: RowContext,
              text: bytes | None = None, canonical: bool = True) -> Columns:
    return _full(table, records, ctx, {
        "article_id": [_entity_id(r, "article") for r in records],
        "file_count": [len(r["files"]) if isinstance(r.get("files"), list) else None
                       for r in records],
        "sources": [list(ctx.sources) for _ in records],
    }, text, canonical)


def _children(table: str, record: Mapping[str, Any], key: Mapping[str, Any]) -> Columns:
    pairs = _elements(record.get(_ELEMENTS[table]))
    return _columns(table, [d for _, d in pairs], {**key, "position": [i for i, _ in pairs]})


def _texts(record: Mapping[str, Any], column: str, kinds: Mapping[str, str]) -> Columns:
    """Position, text (as `column`) and kind of the strings in the record's lists `kinds` (list
    -> kind); null and "" skipped."""
    cols: Columns = {"position": [], column: [], "kind": []}
    for field, kind in kinds.items():
        values = record.get(field)
        for i, v in enumerate(values if isinstance(values, list) else ()):
            if (text := _str(v)) is not None:
                cols["position"].append(i)
                cols[column].append(text)
                cols["kind"].append(kind)
    return cols


def _custom_fields(record: Mapping[str, Any], key: Mapping[str, Any]) -> Columns:
    rows: list[tuple[int, Mapping[str, Any], int | None, Any, bool]] = []
    for i, f in _elements(record.get("custom_fields")):
        value = f.get("value")
        if not isinstance(value, list):
            rows.append((i, f, 0, value, False))
        else:  # an empty list is one row with no value: the field stays visible
            rows += [(i, f, j, v, True) for j, v in enumerate(value)] or [(i, f, None, None, True)]
    positions, fields, indexes, values, lists = zip(*rows, strict=True) if rows else ((),) * 5
    return _columns("custom_fields", fields, {
        **key, "position": list(positions), "value_index": list(indexes),
        "value": [_str(v) for v in values], "is_list": list(lists)})


def _versions(article_id: int, versions: Sequence[Mapping[str, Any]], ctx: RowContext) -> Columns:
    """The `versions` table from a GET /articles/{id}/versions answer."""
    listed = [v for _, v in _elements(list(versions))]
    return _columns("versions", listed, {"snapshot_id": ctx.snapshot_id, "article_id": article_id})


def version_rows(article_id: int, versions: Sequence[Mapping[str, Any]],
                 ctx: RowContext) -> list[dict[str, Any]]:
    return to_rows(_versions(article_id, versions, ctx))


def article_columns(record: Mapping[str, Any], ctx: RowContext, *,
                    versions: Sequence[Mapping[str, Any]] | None = None,
                    text: bytes | None = None, canonical: bool = True) -> dict[str, Columns]:
    """Every table's columns for one full article record (all ARTICLE_TABLES, maybe empty).

    `versions` is the /articles/{id}/versions answer when fetched; `text` is the record's JSON
    as served (`raw`), hashed instead of the canonical form unless `canonical` (served.parse).
    ValueError when the record is not an object or has no usable `id`.
    """
    articles = _articles("articles", [record], ctx, text, canonical)
    key = {"snapshot_id": ctx.snapshot_id, "article_id": articles["article_id"][0],
           "version": articles["version"][0]}
    tags = _texts(record, "tag", {"tags": "tag", "keywords": "keyword"})
    refs = _texts(record, "url", {"references": ""})
    return {
        "articles": articles,
        **{t: _children(t, record, key) for t in ("authors", "files", "categories")},
        "tags": _columns("tags", tags["tag"], {**key, **tags}),
        "funding": _children("funding", record, key),
        "custom_fields": _custom_fields(record, key),
        "related_materials": _children("related_materials", record, key),
        "references": _columns("references", refs["url"], {**key, **refs}),
        "versions": _versions(key["article_id"], versions or (), ctx),
    }


def article_rows(record: Mapping[str, Any], ctx: RowContext, *,
                 versions: Sequence[Mapping[str, Any]] | None = None,
                 ) -> dict[str, list[dict[str, Any]]]:
    """article_columns as row dicts."""
    columns = article_columns(record, ctx, versions=versions)
    return {table: to_rows(cols) for table, cols in columns.items()}


def stats_rows(article_id: int, totals: Mapping[str, Any], ctx: RowContext,
               scope: str = "public") -> list[dict[str, Any]]:
    """One `stats` row per counter: `totals` maps counter ("views", ...) to its total."""
    return [{"snapshot_id": ctx.snapshot_id, "article_id": article_id, "counter": str(counter),
             "scope": scope, "total": _int(total), "fetched_at": ctx.fetched_at}
            for counter, total in totals.items()]


def article_version_rows(records: Iterable[Mapping[str, Any]],
                         ctx: RowContext) -> list[dict[str, Any]]:
    """`article_versions` rows: older full records (GET /articles/{id}/versions/{v})."""
    return to_rows(_articles("article_versions", list(records), ctx))


def _span(payload: Mapping[str, Any]) -> dict[str, date]:
    """Period key -> its first day inside the range: the only keys statsdepth lets through."""
    return dict(periods(date.fromisoformat(payload["start"]), date.fromisoformat(payload["end"]),
                        payload["granularity"]))


def _series_row(payload: Mapping[str, Any], ctx: RowContext, counter: str, period: str,
                start: date, **values: Any) -> dict[str, Any]:
    return {
        "snapshot_id": ctx.snapshot_id,
        "item": str(payload["item"]),
        "item_id": int(payload["item_id"]),
        "counter": counter,
        "scope": str(payload["scope"]),
        "granularity": str(payload["granularity"]),
        "period": period,
        "period_start": start,
        **values,
        "range_start": date.fromisoformat(payload["start"]),
        "range_end": date.fromisoformat(payload["end"]),
        "fetched_at": ctx.fetched_at,
    }


def timeline_rows(payload: Mapping[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
    """`stats_timeline` rows: every period of the range, zeros included. `payload` (statsdepth
    builds it): item, item_id, scope, granularity, start, end (ISO dates), counters
    {counter: {period: n}}."""
    span = _span(payload)
    return [_series_row(payload, ctx, counter, key, start, count=_int(counts.get(key, 0)) or 0)
            for counter, counts in payload["counters"].items() for key, start in span.items()]


def breakdown_rows(payload: Mapping[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
    """`stats_breakdown` rows: per counter, period and country one with city null (the country's
    total) and one per listed city; counters {counter: {period: {country: {city: n}}}}."""
    rows = []
    span = _span(payload)
    for counter, by_period in payload["counters"].items():
        for period in sorted(by_period.keys() & span.keys()):
            for country in sorted(by_period[period]):
                cities = dict(by_period[period][country])
                total = cities.pop("total", None)
                if total is None:  # not served: the listed cities are all there is
                    total = sum(cities.values())
                rows += [_series_row(payload, ctx, counter, period, span[period],
                                     country=country, city=city, count=_int(n) or 0)
                         for city, n in [(None, total), *sorted(cities.items())]]
    return rows


def download_rows(article_id: int, results: Iterable[Mapping[str, Any]],
                  ctx: RowContext) -> list[dict[str, Any]]:
    """`downloads` rows from the downloader's per-file results (see harvester.downloads)."""
    results = list(results)
    return to_rows(_columns("downloads", results, {
        "snapshot_id": ctx.snapshot_id, "article_id": article_id,
        "file_id": [int(r["file_id"]) for r in results],
        "checked_at": [parse_timestamp(r.get("checked_at")) or ctx.fetched_at for r in results],
    }))


def side_rows(kind: str, body: Mapping[str, Any],
              ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """Rows of a record a source yields besides ids (see sources.SideRecord): a collection or
    project as {"record", "articles": ids or light article dicts}, or a review (a Curation)."""
    if kind not in ("collection", "project", "review"):
        raise ValueError(f"unknown side record kind {kind!r}")
    record = body if kind == "review" else body["record"]
    key = _entity_id(record, kind)
    rows = {f"{kind}s": to_rows(_full(f"{kind}s", [record], ctx, {f"{kind}_id": key}))}
    if kind != "review":
        members = (_id(a.get("id") if isinstance(a, Mapping) else a)
                   for a in body.get("articles", ()))
        rows[f"{kind}_articles"] = [{"snapshot_id": ctx.snapshot_id, f"{kind}_id": key,
                                     "article_id": n} for n in members if n is not None]
    return rows
