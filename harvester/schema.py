"""The versioned Arrow schema of every table: columns, types, sources and descriptions.

A source that is a key path (`title`, `license.name`, `authors[].id`) is where records.py reads
the column; docs/TABLES.md is the same information for readers.
"""

from __future__ import annotations

import pyarrow as pa

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
    fields = [pa.field(name, typ, nullable, {"source": src, "description": doc})
              for name, typ, nullable, src, doc in cols]
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
"""The tables `records.article_columns` returns (always all of them, possibly empty)."""
