"""Full Figshare records -> normalized rows that fit `schema.SCHEMAS`.

Values are normalized one way everywhere:

* text: "" and null both become null (Figshare sends either for "absent"); everything else is
  kept as served (HTML included); a number where text is expected becomes its decimal string.
* ids (`*_id`, `group_id`, `defined_type`, ...): 0, "", null and non-numbers become null.
* counts and sizes: kept as served (0 stays 0); non-numbers become null.
* booleans: true/false, 1/0 and "true"/"false" are read; anything else is null.
* timestamps: any ISO 8601 date or date-time; a bare date is midnight UTC, a time without a zone
  is UTC; unparseable values are null. All are `timestamp[us, tz=UTC]`.

Unknown keys are ignored by the columns but kept verbatim in `raw` (and in articles.ndjson).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from harvester import served

_I32_RANGE = (-(2**31), 2**31 - 1)
_I64_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class RowContext:
    """What every row of one record shares: its snapshot, fetch time and provenance."""

    snapshot_id: str
    fetched_at: datetime
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A naive fetch time is taken as UTC so rows never depend on the machine's zone.
        at = self.fetched_at
        object.__setattr__(
            self, "fetched_at", at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        )
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))


# --- value coercion: every row value is made to fit its column, so a row group never fails ---


def _str(v: Any) -> str | None:
    if type(v) is str:  # the common case first: this runs a few hundred times per record
        return v or None
    if v is None:
        return None
    if isinstance(v, str):
        return v or None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return served.dumps(v).decode()


def _int(v: Any, bits: int = 64) -> int | None:
    if type(v) is int:  # the common case first (bool is a subclass, never exactly int)
        lo, hi = _I32_RANGE if bits == 32 else _I64_RANGE
        return v if lo <= v <= hi else None
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, float):
        n = int(v) if v.is_integer() else None
    elif isinstance(v, int):
        n = v
    elif isinstance(v, str):
        try:
            n = int(v.strip())
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                return None
            n = int(f) if f.is_integer() else None
    else:
        return None
    lo, hi = _I32_RANGE if bits == 32 else _I64_RANGE
    return n if n is not None and lo <= n <= hi else None


def _id(v: Any, bits: int = 64) -> int | None:
    """An identifier: 0 means "none" in Figshare's listings, so it becomes null."""
    n = _int(v, bits)
    return None if n == 0 else n


def _bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        return {"true": True, "1": True, "false": False, "0": False}.get(v.strip().lower())
    return None


def parse_timestamp(v: Any) -> datetime | None:
    """ISO date or date-time (any precision Figshare uses) -> aware UTC datetime, else None."""
    if isinstance(v, datetime):
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=UTC)
    if not isinstance(v, str) or not (s := v.strip()):
        return None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        # Timeline values have no fixed precision: "2021-07" and "2021" occur too.
        for fmt in ("%Y-%m", "%Y"):
            try:
                dt = datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
        else:
            return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _dict(v: Any) -> Mapping[str, Any]:
    return v if type(v) is dict or isinstance(v, Mapping) else {}


def _dicts(v: Any) -> list[tuple[int, Mapping[str, Any]]]:
    """(position, element) for the mapping elements of a list; anything else is no elements."""
    if not isinstance(v, list):
        return []
    return [(i, d) for i, d in enumerate(v) if type(d) is dict or isinstance(d, Mapping)]


def content_hash(record: Mapping[str, Any], text: bytes | None = None) -> str:
    """sha256 hex of the record's canonical JSON (keys sorted at every level), or of `text`,
    its JSON as served, when the caller knows no canonical form holds every value."""
    return hashlib.sha256(text if text is not None else served.dumps(record, sort_keys=True)
                          ).hexdigest()


def _entity_id(record: Any, kind: str) -> int:
    if not isinstance(record, Mapping):
        raise ValueError(f"{kind} record must be a JSON object, got {type(record).__name__}")
    n = _int(record.get("id"))
    if n is None:
        raise ValueError(f"{kind} record has no usable 'id': {record.get('id')!r}")
    return n


def _key(record: Mapping[str, Any], ctx: RowContext) -> dict[str, Any]:
    return {
        "snapshot_id": ctx.snapshot_id,
        "article_id": _entity_id(record, "article"),
        "version": _int(record.get("version"), 32),
    }


# --- one pure function per table ---


def _articles(record: Mapping[str, Any], ctx: RowContext, key: dict[str, Any],
              text: bytes | None = None) -> list[dict[str, Any]]:
    lic = _dict(record.get("license"))
    timeline = _dict(record.get("timeline"))
    files = record.get("files")
    g = record.get
    return [{
        **key,
        "title": _str(g("title")),
        "doi": _str(g("doi")),
        "handle": _str(g("handle")),
        "url_public_html": _str(g("url_public_html")),
        "url_public_api": _str(g("url_public_api")),
        "defined_type": _id(g("defined_type"), 32),
        "defined_type_name": _str(g("defined_type_name")),
        "group_id": _id(g("group_id")),
        "published_date": parse_timestamp(g("published_date")),
        "created_date": parse_timestamp(g("created_date")),
        "modified_date": parse_timestamp(g("modified_date")),
        "embargo_date": parse_timestamp(g("embargo_date")),
        "is_public": _bool(g("is_public")),
        "is_embargoed": _bool(g("is_embargoed")),
        "is_confidential": _bool(g("is_confidential")),
        "is_metadata_record": _bool(g("is_metadata_record")),
        "has_linked_file": _bool(g("has_linked_file")),
        "download_disabled": _bool(g("download_disabled")),
        "status": _str(g("status")),
        "license_name": _str(lic.get("name")),
        "license_url": _str(lic.get("url")),
        "license_value": _int(lic.get("value"), 32),
        "size": _int(g("size")),
        "citation": _str(g("citation")),
        "description": _str(g("description")),
        "funding": _str(g("funding")),
        "resource_title": _str(g("resource_title")),
        "resource_doi": _str(g("resource_doi")),
        "figshare_url": _str(g("figshare_url")),
        "file_count": len(files) if isinstance(files, list) else None,
        "timeline_posted": parse_timestamp(timeline.get("posted")),
        "timeline_first_online": parse_timestamp(timeline.get("firstOnline")),
        "timeline_publisher_publication": parse_timestamp(timeline.get("publisherPublication")),
        "timeline_publisher_acceptance": parse_timestamp(timeline.get("publisherAcceptance")),
        "timeline_submission": parse_timestamp(timeline.get("submission")),
        "timeline_revision": parse_timestamp(timeline.get("revision")),
        "embargo_type": _str(g("embargo_type")),
        "embargo_title": _str(g("embargo_title")),
        "embargo_reason": _str(g("embargo_reason")),
        "embargo_options": _str(g("embargo_options")),  # a list -> its compact JSON
        "confidential_reason": _str(g("confidential_reason")),
        "thumb": _str(g("thumb")),
        "is_active": _bool(g("is_active")),
        "sources": list(ctx.sources),
        "content_hash": content_hash(record, text),
        "fetched_at": ctx.fetched_at,
        "raw": (text if text is not None else served.dumps(record)).decode(),
    }]


def _authors(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    return [{
        **key,
        "position": i,
        "author_id": _id(a.get("id")),
        "full_name": _str(a.get("full_name")),
        "first_name": _str(a.get("first_name")),
        "last_name": _str(a.get("last_name")),
        "orcid_id": _str(a.get("orcid_id")),
        "is_active": _bool(a.get("is_active")),
        "url_name": _str(a.get("url_name")),
    } for i, a in _dicts(record.get("authors"))]


def _files(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    return [{
        **key,
        "position": i,
        "file_id": _id(f.get("id")),
        "name": _str(f.get("name")),
        "size": _int(f.get("size")),
        "is_link_only": _bool(f.get("is_link_only")),
        "download_url": _str(f.get("download_url")),
        "supplied_md5": _str(f.get("supplied_md5")),
        "computed_md5": _str(f.get("computed_md5")),
        "mimetype": _str(f.get("mimetype")),
    } for i, f in _dicts(record.get("files"))]


def _categories(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    return [{
        **key,
        "position": i,
        "category_id": _id(c.get("id")),
        "title": _str(c.get("title")),
        "parent_id": _id(c.get("parent_id")),
        "path": _str(c.get("path")),
        "source_id": _str(c.get("source_id")),
        "taxonomy_id": _id(c.get("taxonomy_id")),
    } for i, c in _dicts(record.get("categories"))]


def _tags(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for field, kind in (("tags", "tag"), ("keywords", "keyword")):
        values = record.get(field)
        for i, v in enumerate(values if isinstance(values, list) else ()):
            if (tag := _str(v)) is not None:
                rows.append({**key, "tag": tag, "kind": kind, "position": i})
    return rows


def _references(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    values = record.get("references")
    return [{**key, "position": i, "url": url}
            for i, v in enumerate(values if isinstance(values, list) else ())
            if (url := _str(v)) is not None]


def _funding(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    return [{
        **key,
        "position": i,
        "funding_id": _id(f.get("id")),
        "title": _str(f.get("title")),
        "grant_code": _str(f.get("grant_code")),
        "funder_name": _str(f.get("funder_name")),
        "is_user_defined": _bool(f.get("is_user_defined")),
        "url": _str(f.get("url")),
    } for i, f in _dicts(record.get("funding_list"))]


def _custom_fields(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for i, f in _dicts(record.get("custom_fields")):
        base = {**key, "name": _str(f.get("name")), "position": i,
                "field_type": _str(f.get("field_type"))}
        value = f.get("value")
        if not isinstance(value, list):
            rows.append({**base, "value_index": 0, "value": _str(value), "is_list": False})
        elif not value:
            # Keep the field visible: an empty list is one row with no value.
            rows.append({**base, "value_index": None, "value": None, "is_list": True})
        else:
            rows.extend(
                {**base, "value_index": j, "value": _str(v), "is_list": True}
                for j, v in enumerate(value)
            )
    return rows


def _related_materials(record: Mapping[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    return [{
        **key,
        "material_id": _id(m.get("id")),
        "identifier": _str(m.get("identifier")),
        "title": _str(m.get("title")),
        "relation": _str(m.get("relation")),
        "identifier_type": _str(m.get("identifier_type")),
        "is_linkout": _bool(m.get("is_linkout")),
        "link": _str(m.get("link")),
    } for _, m in _dicts(record.get("related_materials"))]


def version_rows(
    article_id: int, versions: Sequence[Mapping[str, Any]], ctx: RowContext
) -> list[dict[str, Any]]:
    """Rows of the `versions` table from a GET /articles/{id}/versions answer."""
    return [{
        "snapshot_id": ctx.snapshot_id,
        "article_id": article_id,
        "version": _int(v.get("version"), 32),
        "url": _str(v.get("url")),
    } for _, v in _dicts(list(versions))]


def article_rows(
    record: Mapping[str, Any],
    ctx: RowContext,
    *,
    versions: Sequence[Mapping[str, Any]] | None = None,
    text: bytes | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows for one full article record (all ARTICLE_TABLES keys, maybe empty).

    `record["files"]` should already hold the complete file list when the pipeline paged
    /articles/{id}/files; `versions` is the /articles/{id}/versions answer when fetched.
    `text` is the record's JSON as served where orjson would change it (served.parse).
    Raises ValueError when the record is not an object or has no usable `id`.
    """
    key = _key(record, ctx)  # every row of the record starts with it (copied: rows are own)
    return {
        "articles": _articles(record, ctx, key, text),
        "authors": _authors(record, key),
        "files": _files(record, key),
        "categories": _categories(record, key),
        "tags": _tags(record, key),
        "funding": _funding(record, key),
        "custom_fields": _custom_fields(record, key),
        "related_materials": _related_materials(record, key),
        "references": _references(record, key),
        "versions": version_rows(key["article_id"], versions or (), ctx),
    }


def stats_rows(
    article_id: int, totals: Mapping[str, Any], ctx: RowContext, scope: str = "public"
) -> list[dict[str, Any]]:
    """One `stats` row per counter: `totals` maps counter ("views", ...) to its total."""
    return [{
        "snapshot_id": ctx.snapshot_id,
        "article_id": article_id,
        "counter": str(counter),
        "scope": scope,
        "total": _int(total),
        "fetched_at": ctx.fetched_at,
    } for counter, total in totals.items()]


def article_version_rows(
    records: Iterable[Mapping[str, Any]], ctx: RowContext
) -> list[dict[str, Any]]:
    """`article_versions` rows: older full records (GET /articles/{id}/versions/{v})."""
    return [row for record in records for row in _articles(record, ctx, _key(record, ctx))]


def _period_start(key: str, first: date) -> date:
    """The first day of a period key inside the range (keys the host may add are parsed)."""
    ts = None if key == "total" else parse_timestamp(key)
    return max(first, ts.date()) if ts is not None else first


def _series_key(payload: Mapping[str, Any], counter: str, period: str, first: date,
                ctx: RowContext) -> dict[str, Any]:
    return {
        "snapshot_id": ctx.snapshot_id,
        "item": str(payload["item"]),
        "item_id": int(payload["item_id"]),
        "counter": counter,
        "scope": str(payload["scope"]),
        "granularity": str(payload["granularity"]),
        "period": period,
        "period_start": _period_start(period, first),
    }


def timeline_rows(
    payload: Mapping[str, Any], periods: Sequence[tuple[str, date]], ctx: RowContext
) -> list[dict[str, Any]]:
    """`stats_timeline` rows: every period of the range (`periods`, zeros included), counter by
    counter, plus any other period the host answered.

    `payload`: item, item_id, scope, granularity, start, end (ISO dates) and
    counters {counter: {period: n}} (statsdepth.StatsFetcher builds it).
    """
    first, last = date.fromisoformat(payload["start"]), date.fromisoformat(payload["end"])
    tail = {"range_start": first, "range_end": last, "fetched_at": ctx.fetched_at}
    rows = []
    for counter, counts in payload["counters"].items():
        keys = [k for k, _ in periods]
        keys += sorted(set(counts) - set(keys))
        for key in keys:
            rows.append({**_series_key(payload, counter, key, first, ctx),
                         "count": _int(counts.get(key, 0)) or 0, **tail})
    return rows


def breakdown_rows(payload: Mapping[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
    """`stats_breakdown` rows: per counter, period and country one row with city null (the
    country's total) and one per listed city.

    `payload` as for timeline_rows, with counters {counter: {period: {country: {city: n}}}}.
    """
    first, last = date.fromisoformat(payload["start"]), date.fromisoformat(payload["end"])
    tail = {"range_start": first, "range_end": last, "fetched_at": ctx.fetched_at}
    rows = []
    for counter, by_period in payload["counters"].items():
        for period in sorted(by_period):
            key = _series_key(payload, counter, period, first, ctx)
            for country in sorted(by_period[period]):
                cities = by_period[period][country]
                total = cities.get("total")
                if total is None:  # not served: the listed cities are all there is
                    total = sum(n for c, n in cities.items() if c != "total")
                rows.append({**key, "country": country, "city": None,
                             "count": _int(total) or 0, **tail})
                rows.extend({**key, "country": country, "city": city,
                             "count": _int(n) or 0, **tail}
                            for city, n in sorted(cities.items()) if city != "total")
    return rows


def download_rows(
    article_id: int, results: Iterable[Mapping[str, Any]], ctx: RowContext
) -> list[dict[str, Any]]:
    """`downloads` rows from the downloader's per-file results (see harvester.downloads)."""
    return [{
        "snapshot_id": ctx.snapshot_id,
        "article_id": article_id,
        "file_id": int(r["file_id"]),
        "name": _str(r.get("name")),
        "path": _str(r.get("path")),
        "size": _int(r.get("size")),
        "bytes": _int(r.get("bytes")),
        "md5": _str(r.get("md5")),
        "md5_expected": _str(r.get("md5_expected")),
        "md5_source": _str(r.get("md5_source")),
        "status": str(r["status"]),
        "reason": _str(r.get("reason")),
        "attempts": _int(r.get("attempts"), 32) or 0,
        "is_link_only": _bool(r.get("is_link_only")),
        "download_url": _str(r.get("download_url")),
        "checked_at": parse_timestamp(r.get("checked_at")) or ctx.fetched_at,
    } for r in results]


def _members(column: str, owner: int, ids: Iterable[Any], ctx: RowContext) -> list[dict[str, Any]]:
    rows = []
    for a in ids:
        # Accept ids or the light article dicts the listing endpoints return.
        n = _id(a.get("id") if isinstance(a, Mapping) else a)
        if n is not None:
            rows.append({"snapshot_id": ctx.snapshot_id, column: owner, "article_id": n})
    return rows


def collection_rows(
    record: Mapping[str, Any], ctx: RowContext, *, article_ids: Iterable[Any] = ()
) -> dict[str, list[dict[str, Any]]]:
    """`collections` and `collection_articles` rows for one full collection record.

    `article_ids` are the ids (or light article dicts) from GET /collections/{id}/articles.
    """
    cid = _entity_id(record, "collection")
    g = record.get
    row = {
        "snapshot_id": ctx.snapshot_id,
        "collection_id": cid,
        "version": _int(g("version"), 32),
        "title": _str(g("title")),
        "doi": _str(g("doi")),
        "handle": _str(g("handle")),
        "url": _str(g("url")),
        "published_date": parse_timestamp(g("published_date")),
        "created_date": parse_timestamp(g("created_date")),
        "modified_date": parse_timestamp(g("modified_date")),
        "description": _str(g("description")),
        "citation": _str(g("citation")),
        "institution_id": _id(g("institution_id")),
        "group_id": _id(g("group_id")),
        "articles_count": _int(g("articles_count")),
        "is_public": _bool(g("public")),
        "content_hash": content_hash(record),
        "fetched_at": ctx.fetched_at,
        "raw": served.dumps(record).decode(),
    }
    return {
        "collections": [row],
        "collection_articles": _members("collection_id", cid, article_ids, ctx),
    }


def project_rows(
    record: Mapping[str, Any], ctx: RowContext, *, article_ids: Iterable[Any] = ()
) -> dict[str, list[dict[str, Any]]]:
    """`projects` and `project_articles` rows for one full project record.

    `article_ids` are the ids (or light article dicts) from GET /projects/{id}/articles.
    """
    pid = _entity_id(record, "project")
    g = record.get
    row = {
        "snapshot_id": ctx.snapshot_id,
        "project_id": pid,
        "title": _str(g("title")),
        "url": _str(g("url")),
        "figshare_url": _str(g("figshare_url")),
        "published_date": parse_timestamp(g("published_date")),
        "created_date": parse_timestamp(g("created_date")),
        "modified_date": parse_timestamp(g("modified_date")),
        "description": _str(g("description")),
        "funding": _str(g("funding")),
        "institution_id": _id(g("institution_id")),
        "group_id": _id(g("group_id")),
        "content_hash": content_hash(record),
        "fetched_at": ctx.fetched_at,
        "raw": served.dumps(record).decode(),
    }
    return {
        "projects": [row],
        "project_articles": _members("project_id", pid, article_ids, ctx),
    }


def review_rows(review: Mapping[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
    """The `reviews` row of one Curation from GET /account/institution/reviews."""
    g = review.get
    rid = _entity_id(review, "review")
    return [{
        "snapshot_id": ctx.snapshot_id,
        "review_id": rid,
        "article_id": _id(g("article_id")) or 0,
        "version": _int(g("version"), 32),
        "group_id": _id(g("group_id")),
        "account_id": _id(g("account_id")),
        "assigned_to": _id(g("assigned_to")),
        "status": _str(g("status")),
        "comments_count": _int(g("comments_count"), 32),
        "request_number": _int(g("request_number")),
        "created_date": parse_timestamp(g("created_date")),
        "modified_date": parse_timestamp(g("modified_date")),
        "review_date": parse_timestamp(g("review_date")),
        "resolution_comment": _str(g("resolution_comment")),
        "content_hash": content_hash(review),
        "fetched_at": ctx.fetched_at,
        "raw": served.dumps(review).decode(),
    }]


def side_rows(kind: str, body: Mapping[str, Any],
              ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """Rows of a record a source yields besides ids (see sources.SideRecord)."""
    if kind == "collection":
        return collection_rows(body["record"], ctx, article_ids=body.get("articles", ()))
    if kind == "project":
        return project_rows(body["record"], ctx, article_ids=body.get("articles", ()))
    if kind == "review":
        return {"reviews": review_rows(body, ctx)}
    raise ValueError(f"unknown side record kind {kind!r}")
