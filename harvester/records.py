"""Full Figshare records -> normalized rows; the versioned Arrow schema of every table.

Every column is described in its field metadata (`description`, `source`); docs/TABLES.md is the
same information for readers. Values are normalized one way everywhere:

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

import pyarrow as pa

from harvester import served

# 2: a table is a folder of part files, TABLE/part-NNNNN.parquet (1: one TABLE.parquet)
# 3: `references`; timeline, embargo and confidentiality columns; categories/tags `position`
SCHEMA_VERSION = 3

_STR = pa.string()
_I32 = pa.int32()
_I64 = pa.int64()
_BOOL = pa.bool_()
_TS = pa.timestamp("us", tz="UTC")
_DAY = pa.date32()
_STRS = pa.list_(pa.field("element", pa.string(), nullable=False))  # Parquet's name

_I32_RANGE = (-(2**31), 2**31 - 1)
_I64_RANGE = (-(2**63), 2**63 - 1)

# (name, type, nullable, source in the Figshare record, meaning)
_Col = tuple[str, pa.DataType, bool, str, str]

_SNAP: _Col = ("snapshot_id", _STR, False, "harvester", "the snapshot this row belongs to")
_ART: _Col = ("article_id", _I64, False, "id", "Figshare article id (stable across versions)")
_VER: _Col = ("version", _I32, True, "version", "article version the record describes")
_KEY = [_SNAP, _ART, _VER]
_POS_DOC = "0-based position in the record's list"
_POS_V3 = f"{_POS_DOC}; null in snapshots before schema version 3"
_FETCHED: _Col = ("fetched_at", _TS, False, "harvester", "when the harvester fetched the record")
_HASH: _Col = ("content_hash", _STR, False, "harvester", "sha256 of the record's canonical JSON")
_RAW: _Col = ("raw", _STR, False, "harvester", "the full record as compact JSON text")

# stats_timeline and stats_breakdown: what was asked of the stats host, and for which period
_SERIES_KEY: list[_Col] = [
    ("item", _STR, False, "stats host", "article, group, collection, project or author"),
    ("item_id", _I64, False, "stats host", "the item's id (an article id for article)"),
    ("counter", _STR, False, "stats host", "views, downloads or shares"),
    ("scope", _STR, False, "stats host", "\"public\" or the institution string id"),
    ("granularity", _STR, False, "stats host", "day, month, year or total"),
    ("period", _STR, False, "stats host", "2024-03-05, 2024-03, 2024 or \"total\""),
    ("period_start", _DAY, False, "harvester",
     "first day of the period inside the range (total: range_start)"),
]
_SERIES_TAIL: list[_Col] = [
    ("range_start", _DAY, False, "harvester", "first day asked for (start_date)"),
    ("range_end", _DAY, False, "harvester", "last day asked for (end_date)"),
    ("fetched_at", _TS, False, "harvester", "when the series was fetched"),
]

_COLUMNS: dict[str, list[_Col]] = {
    "articles": [
        _SNAP, _ART, _VER,
        ("title", _STR, True, "title", "title (may contain HTML markup)"),
        ("doi", _STR, True, "doi", "DOI, often version-specific (suffix .vN)"),
        ("handle", _STR, True, "handle", "Handle identifier"),
        ("url_public_html", _STR, True, "url_public_html", "public landing page"),
        ("url_public_api", _STR, True, "url_public_api", "public API URL of the record"),
        ("defined_type", _I32, True, "defined_type", "item type id (3 = dataset, ...)"),
        ("defined_type_name", _STR, True, "defined_type_name", "item type name"),
        ("group_id", _I64, True, "group_id", "group the item belongs to (0 -> null)"),
        ("published_date", _TS, True, "published_date", "when first published (null if never)"),
        ("created_date", _TS, True, "created_date", "creation time"),
        ("modified_date", _TS, True, "modified_date", "last modification time"),
        ("embargo_date", _TS, True, "embargo_date", "when the embargo ends"),
        ("is_public", _BOOL, True, "is_public", "published"),
        ("is_embargoed", _BOOL, True, "is_embargoed", "under embargo"),
        ("is_confidential", _BOOL, True, "is_confidential", "files confidential"),
        ("is_metadata_record", _BOOL, True, "is_metadata_record", "a record without files"),
        ("has_linked_file", _BOOL, True, "has_linked_file", "some files are hosted elsewhere"),
        ("download_disabled", _BOOL, True, "download_disabled", "file downloads switched off"),
        ("status", _STR, True, "status", "publication status, e.g. public"),
        ("license_name", _STR, True, "license.name", "license name, e.g. CC BY 4.0"),
        ("license_url", _STR, True, "license.url", "license URL"),
        ("license_value", _I32, True, "license.value", "Figshare license id"),
        ("size", _I64, True, "size", "total size of the files in bytes"),
        ("citation", _STR, True, "citation", "formatted citation (may contain HTML)"),
        ("description", _STR, True, "description", "description, HTML as served"),
        ("funding", _STR, True, "funding", "free-text funding statement"),
        ("resource_title", _STR, True, "resource_title", "title of the supplemented paper"),
        ("resource_doi", _STR, True, "resource_doi", "DOI of the supplemented paper"),
        ("figshare_url", _STR, True, "figshare_url", "figshare.com URL of the item"),
        ("file_count", _I32, True, "len(files)",
         "files in the record as harvested; null when `files` is absent (embargo/confidential)"),
        ("timeline_posted", _TS, True, "timeline.posted", "posted date (bare date -> 00:00 UTC)"),
        ("timeline_first_online", _TS, True, "timeline.firstOnline",
         "first online date (bare date -> 00:00 UTC)"),
        ("timeline_publisher_publication", _TS, True, "timeline.publisherPublication",
         "publication date at the publisher (bare date -> 00:00 UTC)"),
        ("timeline_publisher_acceptance", _TS, True, "timeline.publisherAcceptance",
         "acceptance date at the publisher (bare date -> 00:00 UTC)"),
        ("timeline_submission", _TS, True, "timeline.submission", "submission date"),
        ("timeline_revision", _TS, True, "timeline.revision", "revision date"),
        ("embargo_type", _STR, True, "embargo_type", "article or file (null: no embargo)"),
        ("embargo_title", _STR, True, "embargo_title", "title shown for the embargo"),
        ("embargo_reason", _STR, True, "embargo_reason", "reason given for the embargo"),
        ("embargo_options", _STR, True, "embargo_options",
         "who may see it under embargo: the served list as compact JSON text (null if absent)"),
        ("confidential_reason", _STR, True, "confidential_reason",
         "why the files are confidential"),
        ("thumb", _STR, True, "thumb", "thumbnail URL"),
        ("is_active", _BOOL, True, "is_active", "record active (2016-era records only)"),
        ("sources", _STRS, False, "harvester", "configured sources that produced this id"),
        _HASH, _FETCHED, _RAW,
    ],
    "authors": [
        *_KEY,
        ("position", _I32, False, "authors[i]", f"author order: {_POS_DOC}"),
        ("author_id", _I64, True, "authors[].id", "Figshare author id (0 -> null)"),
        ("full_name", _STR, True, "authors[].full_name", "name as displayed"),
        ("first_name", _STR, True, "authors[].first_name", "given name (absent on old records)"),
        ("last_name", _STR, True, "authors[].last_name", "family name (absent on old records)"),
        ("orcid_id", _STR, True, "authors[].orcid_id", "ORCID iD (\"\" -> null)"),
        ("is_active", _BOOL, True, "authors[].is_active", "author has a Figshare account"),
        ("url_name", _STR, True, "authors[].url_name", "URL slug (\"_\" for inactive authors)"),
    ],
    "files": [
        *_KEY,
        ("position", _I32, False, "files[i]", _POS_DOC),
        ("file_id", _I64, True, "files[].id", "Figshare file id"),
        ("name", _STR, True, "files[].name", "file name (not unique within a record)"),
        ("size", _I64, True, "files[].size", "bytes"),
        ("is_link_only", _BOOL, True, "files[].is_link_only", "hosted elsewhere"),
        ("download_url", _STR, True, "files[].download_url", "download URL"),
        ("supplied_md5", _STR, True, "files[].supplied_md5", "md5 declared by the uploader"),
        ("computed_md5", _STR, True, "files[].computed_md5", "md5 computed by Figshare"),
        ("mimetype", _STR, True, "files[].mimetype", "MIME type (absent on old records)"),
    ],
    "categories": [
        *_KEY,
        ("position", _I32, True, "categories[i]", _POS_V3),
        ("category_id", _I64, True, "categories[].id", "category id"),
        ("title", _STR, True, "categories[].title", "category title"),
        ("parent_id", _I64, True, "categories[].parent_id", "parent category (0 -> null)"),
        ("path", _STR, True, "categories[].path", "ancestor ids path"),
        ("source_id", _STR, True, "categories[].source_id", "id in the source taxonomy"),
        ("taxonomy_id", _I64, True, "categories[].taxonomy_id", "Figshare taxonomy id"),
    ],
    "tags": [
        *_KEY,
        ("tag", _STR, False, "tags[] / keywords[]", "the tag text"),
        ("kind", _STR, False, "harvester", "\"tag\" (from tags) or \"keyword\" (from keywords)"),
        ("position", _I32, True, "tags[i] / keywords[i]", f"{_POS_V3} (of its own list)"),
    ],
    "references": [
        *_KEY,
        ("position", _I32, False, "references[i]", _POS_DOC),
        ("url", _STR, False, "references[]", "a reference (a URL), as served"),
    ],
    "funding": [
        *_KEY,
        ("position", _I32, False, "funding_list[i]", _POS_DOC),
        ("funding_id", _I64, True, "funding_list[].id", "Figshare funding id"),
        ("title", _STR, True, "funding_list[].title", "grant or funding title"),
        ("grant_code", _STR, True, "funding_list[].grant_code", "grant code"),
        ("funder_name", _STR, True, "funding_list[].funder_name", "funder"),
        ("is_user_defined", _BOOL, True, "funding_list[].is_user_defined", "entered by hand"),
        ("url", _STR, True, "funding_list[].url", "grant URL"),
    ],
    "custom_fields": [
        *_KEY,
        ("name", _STR, True, "custom_fields[].name", "field name"),
        ("position", _I32, False, "custom_fields[i]", f"field order: {_POS_DOC}"),
        ("value_index", _I32, True, "custom_fields[].value[j]",
         "j for a list value; 0 for a scalar value; null for an empty list"),
        ("value", _STR, True, "custom_fields[].value", "one value (\"\" -> null)"),
        ("is_list", _BOOL, False, "custom_fields[].value", "the value was served as a list"),
        ("field_type", _STR, True, "custom_fields[].field_type", "field type (newer records)"),
    ],
    "related_materials": [
        *_KEY,
        ("material_id", _I64, True, "related_materials[].id", "Figshare related-material id"),
        ("identifier", _STR, True, "related_materials[].identifier", "DOI, URL, ISBN, ..."),
        ("title", _STR, True, "related_materials[].title", "title"),
        ("relation", _STR, True, "related_materials[].relation", "e.g. IsSupplementTo"),
        ("identifier_type", _STR, True, "related_materials[].identifier_type", "e.g. DOI"),
        ("is_linkout", _BOOL, True, "related_materials[].is_linkout", "shown in the call-out"),
        ("link", _STR, True, "related_materials[].link", "resolved hyperlink"),
    ],
    "versions": [
        _SNAP, _ART,
        ("version", _I32, True, "GET /articles/{id}/versions: version", "a published version"),
        ("url", _STR, True, "GET /articles/{id}/versions: url", "API URL of that version"),
    ],
    "stats": [
        _SNAP, _ART,
        ("counter", _STR, False, "stats host", "views, downloads or shares"),
        ("scope", _STR, False, "stats host", "\"public\" or the institution string id"),
        ("total", _I64, True, "stats host: totals", "all-time total; null if not a number"),
        ("fetched_at", _TS, False, "harvester", "when the totals were fetched"),
    ],
    "stats_timeline": [
        _SNAP, *_SERIES_KEY,
        ("count", _I64, False, "stats host: timeline",
         "events in the period; 0 for a period the host did not list"),
        *_SERIES_TAIL,
    ],
    "stats_breakdown": [
        _SNAP, *_SERIES_KEY,
        ("country", _STR, False, "stats host: breakdown", "country name as served"),
        ("city", _STR, True, "stats host: breakdown",
         "city (top 10 per country); null on the row holding the country's total"),
        ("count", _I64, False, "stats host: breakdown", "events in that place and period"),
        *_SERIES_TAIL,
    ],
    "downloads": [
        _SNAP, _ART,
        ("file_id", _I64, False, "files[].id", "Figshare file id"),
        ("name", _STR, True, "files[].name", "file name as served (untrusted)"),
        ("path", _STR, True, "harvester",
         "stored at FILES/<path>: <article id>/<file id>/<safe name>; null if not stored"),
        ("size", _I64, True, "files[].size", "declared size in bytes"),
        ("bytes", _I64, True, "harvester", "bytes stored; null if not stored"),
        ("md5", _STR, True, "harvester", "md5 of the stored bytes; null if not stored"),
        ("md5_expected", _STR, True, "files[].computed_md5 / supplied_md5",
         "the md5 the bytes were checked against; null if the record gives none"),
        ("md5_source", _STR, True, "harvester", "computed_md5, supplied_md5 or null"),
        ("status", _STR, False, "harvester",
         "downloaded, present (already stored, verified), duplicate (file id listed again: "
         "the first entry's file), filtered, link-only, budget, failed"),
        ("reason", _STR, True, "harvester", "why it was filtered, skipped or failed"),
        ("attempts", _I32, False, "harvester", "download requests made for it in this run"),
        ("is_link_only", _BOOL, True, "files[].is_link_only", "hosted elsewhere"),
        ("download_url", _STR, True, "files[].download_url", "download URL as served"),
        ("checked_at", _TS, False, "harvester", "when the harvester handled the file"),
    ],
    "collections": [
        _SNAP,
        ("collection_id", _I64, False, "id", "Figshare collection id"),
        ("version", _I32, True, "version", "collection version"),
        ("title", _STR, True, "title", "title"),
        ("doi", _STR, True, "doi", "DOI"),
        ("handle", _STR, True, "handle", "Handle"),
        ("url", _STR, True, "url", "API URL"),
        ("published_date", _TS, True, "published_date", "first publication"),
        ("created_date", _TS, True, "created_date", "creation time"),
        ("modified_date", _TS, True, "modified_date", "last modification time"),
        ("description", _STR, True, "description", "description, HTML as served"),
        ("citation", _STR, True, "citation", "formatted citation"),
        ("institution_id", _I64, True, "institution_id", "institution (0 -> null)"),
        ("group_id", _I64, True, "group_id", "group (0 -> null)"),
        ("articles_count", _I64, True, "articles_count", "articles in the collection"),
        ("is_public", _BOOL, True, "public", "published"),
        _HASH, _FETCHED, _RAW,
    ],
    "projects": [
        _SNAP,
        ("project_id", _I64, False, "id", "Figshare project id"),
        ("title", _STR, True, "title", "title"),
        ("url", _STR, True, "url", "API URL"),
        ("figshare_url", _STR, True, "figshare_url", "public page"),
        ("published_date", _TS, True, "published_date", "first publication"),
        ("created_date", _TS, True, "created_date", "creation time"),
        ("modified_date", _TS, True, "modified_date", "last modification time"),
        ("description", _STR, True, "description", "description, HTML as served"),
        ("funding", _STR, True, "funding", "free-text funding statement"),
        ("institution_id", _I64, True, "institution_id", "institution, when served (0 -> null)"),
        ("group_id", _I64, True, "group_id", "group, when served (0 -> null)"),
        _HASH, _FETCHED, _RAW,
    ],
    "collection_articles": [
        _SNAP,
        ("collection_id", _I64, False, "GET /collections/{id}/articles", "collection"),
        ("article_id", _I64, False, "GET /collections/{id}/articles: id", "member article"),
    ],
    "project_articles": [
        _SNAP,
        ("project_id", _I64, False, "GET /projects/{id}/articles", "project"),
        ("article_id", _I64, False, "GET /projects/{id}/articles: id", "member article"),
    ],
    "reviews": [
        _SNAP,
        ("review_id", _I64, False, "id", "curation (review) id"),
        ("article_id", _I64, False, "article_id", "the article under review"),
        ("version", _I32, True, "version", "the article version reviewed"),
        ("group_id", _I64, True, "group_id", "group of the article (0 -> null)"),
        ("account_id", _I64, True, "account_id", "account that submitted the article"),
        ("assigned_to", _I64, True, "assigned_to", "reviewer's account (null: unassigned)"),
        ("status", _STR, True, "status", "pending, approved, rejected or closed"),
        ("comments_count", _I32, True, "comments_count", "comments on the review"),
        ("request_number", _I64, True, "request_number", "the institution's request number"),
        ("created_date", _TS, True, "created_date", "review requested"),
        ("modified_date", _TS, True, "modified_date", "last change of the review"),
        ("review_date", _TS, True, "review_date", "decision time (null while pending)"),
        ("resolution_comment", _STR, True, "resolution_comment", "the reviewer's comment"),
        _HASH, _FETCHED, _RAW,
    ],
}


# every version of an article but the latest (which is the `articles` row): same columns
_COLUMNS["article_versions"] = list(_COLUMNS["articles"])


def _schema(table: str, cols: list[_Col]) -> pa.Schema:
    fields = [
        pa.field(name, typ, nullable=nullable, metadata={"source": src, "description": doc})
        for name, typ, nullable, src, doc in cols
    ]
    meta = {"harvester.table": table, "harvester.schema_version": str(SCHEMA_VERSION)}
    return pa.schema(fields, metadata=meta)


SCHEMAS: dict[str, pa.Schema] = {t: _schema(t, cols) for t, cols in _COLUMNS.items()}
"""Every table's Arrow schema; fixed, never inferred from data."""

NO_STATISTICS = frozenset({"raw", "description", "citation"})
"""Long-text columns written without Parquet min/max statistics (they would prune nothing)."""

ARTICLE_TABLES: tuple[str, ...] = (
    "articles", "authors", "files", "categories", "tags", "funding", "custom_fields",
    "related_materials", "references", "versions",
)
"""The tables `article_rows` returns (always all of them, possibly empty)."""


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
