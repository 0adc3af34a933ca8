"""records.py: every quirk of real Figshare records shaped into rows that fit the fixed schemas."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from harvester.records import (
    RowContext,
    article_rows,
    content_hash,
    parse_timestamp,
    side_rows,
    stats_rows,
    version_rows,
)
from harvester.schema import ARTICLE_TABLES, SCHEMA_VERSION, SCHEMAS

CTX = RowContext("20240501T120000Z", datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC), ("search", "oai"))

# The full record printed in Figshare's own API workshop (seed/figshare-api-workshop.md),
# with the description shortened; note handle "", orcid_id "", funding null, timeline without Z.
WORKSHOP = {
    "files": [
        {
            "id": 3074543,
            "name": "2011-02-15_14-24-56-228.png",
            "size": 470683,
            "is_link_only": False,
            "download_url": "https://ndownloader.figshare.com/files/3074543",
            "supplied_md5": "eb5c9c6b278b533f98aa02feae57c266",
            "computed_md5": "eb5c9c6b278b533f98aa02feae57c266",
        }
    ],
    "custom_fields": [],
    "authors": [
        {"id": 155524, "full_name": "Yunyan Deng", "is_active": False, "url_name": "_",
         "orcid_id": ""},
        {"id": 155526, "full_name": "Jianting Yao", "is_active": False, "url_name": "_",
         "orcid_id": ""},
        {"id": 155529, "full_name": "Xiuliang Wang", "is_active": False, "url_name": "_",
         "orcid_id": ""},
        {"id": 110581, "full_name": "Hui Guo", "is_active": False, "url_name": "_",
         "orcid_id": ""},
        {"id": 155532, "full_name": "Delin Duan", "is_active": False, "url_name": "_",
         "orcid_id": ""},
    ],
    "figshare_url": "https://plos.figshare.com/articles/dataset/Transcriptome_Sequencing_and_"
    "Comparative_Analysis_of_Saccharina_japonica_Laminariales_Phaeophyceae_under_Blue_Light_"
    "Induction/123456",
    "description": "<div><h3>Background</h3><p>Light has significant effect on the growth and "
    "development of <em>Saccharina japonica</em> ... (E-value &lt;10<sup>\u22125</sup>) ...</p>"
    "</div>",
    "funding": None,
    "funding_list": [],
    "version": 1,
    "status": "public",
    "size": 470683,
    "created_date": "2012-06-27T00:57:36Z",
    "modified_date": "2016-01-19T09:09:40Z",
    "is_public": True,
    "is_confidential": False,
    "is_metadata_record": False,
    "confidential_reason": "",
    "metadata_reason": "",
    "license": {"value": 1, "name": "CC BY 4.0",
                "url": "https://creativecommons.org/licenses/by/4.0/"},
    "tags": ["transcriptome", "sequencing", "comparative", "induction"],
    "categories": [
        {"id": 69, "title": "Inorganic Chemistry", "parent_id": 38, "path": "", "source_id": "",
         "taxonomy_id": 10},
        {"id": 13, "title": "Genetics", "parent_id": 48, "path": "", "source_id": "",
         "taxonomy_id": 10},
        {"id": 61, "title": "Developmental Biology", "parent_id": 48, "path": "",
         "source_id": "", "taxonomy_id": 10},
    ],
    "references": [],
    "has_linked_file": False,
    "citation": "Deng, Yunyan; Yao, Jianting; Wang, Xiuliang; Guo, Hui; Duan, Delin (2016): "
    "Transcriptome Sequencing and Comparative Analysis of <em>Saccharina japonica</em> "
    "(Laminariales, Phaeophyceae) under Blue Light Induction. PLOS ONE. Dataset. "
    "https://doi.org/10.1371/journal.pone.0039704",
    "is_embargoed": False,
    "embargo_date": None,
    "embargo_type": None,
    "embargo_title": "",
    "embargo_reason": "",
    "embargo_options": [],
    "id": 123456,
    "title": "Transcriptome Sequencing and Comparative Analysis of <em>Saccharina japonica</em> "
    "(Laminariales, Phaeophyceae) under Blue Light Induction",
    "doi": "10.1371/journal.pone.0039704",
    "handle": "",
    "url": "https://api.figshare.com/v2/articles/123456",
    "published_date": "2012-06-27T00:57:36Z",
    "thumb": "https://s3-eu-west-1.amazonaws.com/ppreviews-plos-725668748/3074543/thumb.png",
    "defined_type": 3,
    "defined_type_name": "dataset",
    "group_id": 107,
    "url_private_api": "https://api.figshare.com/v2/account/articles/123456",
    "url_public_api": "https://api.figshare.com/v2/articles/123456",
    "url_private_html": "https://figshare.com/account/articles/123456",
    "url_public_html": "https://plos.figshare.com/articles/dataset/Transcriptome_Sequencing/123456",
    "timeline": {"posted": "2012-06-27T00:57:36", "firstOnline": "2016-01-19T09:09:40"},
    "resource_title": "Transcriptome Sequencing and Comparative Analysis of <em>Saccharina "
    "japonica</em> (Laminariales, Phaeophyceae) under Blue Light Induction",
    "resource_doi": "10.1371/journal.pone.0039704",
}

# A current (2024-era) record: keywords next to tags, a list-valued custom field, funding_list,
# related materials, a bare-date firstOnline, group_id null and resource_title null.
CURRENT = {
    "id": 24681357,
    "version": 3,
    "title": "Soil moisture time series, Lake District 2019\u20132023",
    "doi": "10.6084/m9.figshare.24681357.v3",
    "handle": "",
    "url": "https://api.figshare.com/v2/articles/24681357",
    "url_public_html": "https://figshare.com/articles/dataset/Soil_moisture/24681357",
    "url_public_api": "https://api.figshare.com/v2/articles/24681357",
    "published_date": "2024-02-01T10:11:12Z",
    "created_date": "2023-12-01T08:00:00Z",
    "modified_date": "2024-02-02T09:30:00Z",
    "defined_type": 3,
    "defined_type_name": "dataset",
    "group_id": None,
    "timeline": {"posted": "2024-02-01T10:11:12", "firstOnline": "2021-07-07",
                 "publisherPublication": "2021-07"},
    "resource_title": None,
    "resource_doi": None,
    "citation": "Smith, Ann (2024): Soil moisture. figshare. Dataset.",
    "confidential_reason": "",
    "is_confidential": False,
    "size": 0,
    "funding": "NERC grant NE/X000000/1",
    "funding_list": [
        {"id": 5501, "title": "Soil carbon", "grant_code": "NE/X000000/1",
         "funder_name": "Natural Environment Research Council", "is_user_defined": 0,
         "url": "https://gtr.ukri.org/projects?ref=NE/X000000/1"},
        {"id": 0, "title": "Internal seed fund", "grant_code": "", "funder_name": "",
         "is_user_defined": True, "url": ""},
    ],
    "tags": ["soil moisture", "hydrology"],
    "keywords": ["soil moisture", "hydrology"],
    "is_metadata_record": False,
    "metadata_reason": "",
    "status": "public",
    "description": "<p>Hourly readings. Caf\u00e9 &amp; <b>bold</b></p>",
    "is_embargoed": False,
    "is_public": True,
    "has_linked_file": True,
    "download_disabled": False,
    "categories": [
        {"id": 30043, "title": "Hydrology", "parent_id": 30040, "path": "/30000/30040/30043",
         "source_id": "370704", "taxonomy_id": 100},
        {"id": 30000, "title": "Earth sciences", "parent_id": 0, "path": "/30000",
         "source_id": "37", "taxonomy_id": 100},
    ],
    "license": {"value": 1, "name": "CC BY 4.0",
                "url": "https://creativecommons.org/licenses/by/4.0/"},
    "embargo_date": None,
    "embargo_type": None,
    "embargo_title": "",
    "embargo_reason": "",
    "embargo_options": [],
    "references": ["https://doi.org/10.1000/xyz"],
    "related_materials": [
        {"id": 9001, "identifier": "10.1000/xyz", "title": "The paper",
         "relation": "IsSupplementTo", "identifier_type": "DOI", "is_linkout": True, "link": "https://doi.org/10.1000/xyz"},
    ],
    "figshare_url": "https://figshare.com/articles/dataset/Soil_moisture/24681357",
    "files": [
        {"id": 43000001, "name": "readings.csv", "size": 1048576, "is_link_only": False,
         "download_url": "https://ndownloader.figshare.com/files/43000001",
         "supplied_md5": "", "computed_md5": "0f343b0931126a20f133d67c2b018a3b",
         "mimetype": "text/csv"},
        {"id": 43000002, "name": "readings.csv", "size": 0, "is_link_only": True,
         "download_url": "https://example.org/mirror/readings.csv",
         "supplied_md5": "", "computed_md5": "", "mimetype": ""},
    ],
    "folder_structure": {"43000001": "raw"},
    "authors": [
        {"id": 8877001, "full_name": "Ann Smith", "first_name": "Ann", "last_name": "Smith",
         "is_active": True, "url_name": "Ann_Smith", "orcid_id": "0000-0002-1825-0097"},
        {"id": 0, "full_name": "J\u00fcrgen M\u00fcller", "first_name": "J\u00fcrgen",
         "last_name": "M\u00fcller", "is_active": False, "url_name": "_", "orcid_id": ""},
    ],
    "custom_fields": [
        {"name": "Sampling sites", "value": ["Keswick", "Ambleside", "Grasmere"],
         "field_type": "dropdown_large_list", "settings": {}, "order": 0, "is_mandatory": False},
        {"name": "Instrument", "value": "TDR probe", "field_type": "text", "order": 1},
        {"name": "Notes", "value": "", "field_type": "textarea"},
        {"name": "Keywords (legacy)", "value": []},
    ],
    "a_key_figshare_added_later": {"nested": [1, 2, 3]},
}

# Under file embargo: the public record has no `files` key at all.
EMBARGOED = {
    "id": 31415926,
    "version": 1,
    "title": "Interview transcripts",
    "doi": "10.6084/m9.figshare.31415926.v1",
    "published_date": "2025-03-03T03:03:03Z",
    "created_date": "2025-03-01T00:00:00Z",
    "modified_date": "2025-03-03T03:03:03Z",
    "defined_type": 3,
    "defined_type_name": "dataset",
    "group_id": 4242,
    "is_embargoed": True,
    "embargo_date": "2030-01-01",
    "embargo_type": "file",
    "embargo_title": "File(s) under embargo",
    "embargo_reason": "",
    "is_confidential": False,
    "is_public": True,
    "is_metadata_record": False,
    "has_linked_file": False,
    "size": 123456789,
    "timeline": {"posted": "2025-03-03T03:03:03", "firstOnline": "2025-03-03T03:03:03"},
    "authors": [],
    "tags": ["qualitative"],
    "keywords": ["qualitative"],
    "categories": [],
    "custom_fields": [],
    "license": {"value": 2, "name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
}

# A 2016-era body: no keywords, names only as full_name, files without mimetype, no
# defined_type_name/url_public_html/download_disabled, numbers served as strings, timeline {}.
OLD = {
    "id": "1001",
    "version": "2",
    "title": "Untitled",
    "doi": "",
    "url": "https://api.figshare.com/v2/articles/1001",
    "published_date": "2016-05-04T03:02:01",
    "defined_type": "1",
    "group_id": "0",
    "size": "2048",
    "timeline": {},
    "tags": ["", "figure", None],
    "authors": [{"id": "77", "full_name": "A. N. Other", "is_active": 1}, "not a dict"],
    "files": [{"id": 5, "name": "fig.png", "size": "2048", "is_link_only": "false",
               "download_url": "https://ndownloader.figshare.com/files/5"}],
    "figshare_url": "https://figshare.com/articles/_/1001",
    "license": None,
    "categories": None,
    "custom_fields": [{"name": "Year", "value": 2016}, {"name": "Meta", "value": {"a": 1}}],
}

# Non-ASCII and HTML everywhere it can be.
NON_ASCII = {
    "id": 777,
    "version": 1,
    "title": "\u65e5\u672c\u8a9e\u306e\u30bf\u30a4\u30c8\u30eb <i>&amp;</i> "
    "\u00e9t\u00e9 \U0001f30a",
    "description": "<p>\u0394\u03b5\u03b4\u03bf\u03bc\u03ad\u03bd\u03b1 "
    "<a href=\"x?a=1&b=2\">link</a></p>\n<script>alert(1)</script>",
    "tags": ["\u00e9t\u00e9", "\u6c34"],
    "keywords": ["\u00e9t\u00e9", "\u6c34"],
    "authors": [{"id": 1, "full_name": "Zo\u00eb \u0141ukasz", "orcid_id": None}],
}

FIXTURES = {"workshop": WORKSHOP, "current": CURRENT, "embargoed": EMBARGOED, "old": OLD,
            "non_ascii": NON_ASCII}

UTC_DT = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731

# The documented column list (docs/TABLES.md): name, Arrow type, nullable.
S, I32, I64, B, TS = "string", "int32", "int64", "bool", "timestamp[us, tz=UTC]"
L = "list<element: string not null>"
KEY = [("snapshot_id", S, False), ("article_id", I64, False), ("version", I32, True)]
EXPECTED = {
    "articles": [*KEY, ("title", S, True), ("doi", S, True), ("handle", S, True),
                 ("url_public_html", S, True), ("url_public_api", S, True),
                 ("defined_type", I32, True), ("defined_type_name", S, True),
                 ("group_id", I64, True), ("published_date", TS, True),
                 ("created_date", TS, True), ("modified_date", TS, True),
                 ("embargo_date", TS, True), ("is_public", B, True), ("is_embargoed", B, True),
                 ("is_confidential", B, True), ("is_metadata_record", B, True),
                 ("has_linked_file", B, True), ("download_disabled", B, True),
                 ("status", S, True), ("license_name", S, True), ("license_url", S, True),
                 ("license_value", I32, True), ("size", I64, True), ("citation", S, True),
                 ("description", S, True), ("funding", S, True), ("resource_title", S, True),
                 ("resource_doi", S, True), ("figshare_url", S, True),
                 ("file_count", I32, True), ("timeline_posted", TS, True),
                 ("timeline_first_online", TS, True),
                 ("timeline_publisher_publication", TS, True),
                 ("timeline_publisher_acceptance", TS, True), ("timeline_submission", TS, True),
                 ("timeline_revision", TS, True), ("embargo_type", S, True),
                 ("embargo_title", S, True), ("embargo_reason", S, True),
                 ("embargo_options", S, True), ("confidential_reason", S, True),
                 ("thumb", S, True), ("is_active", B, True), ("sources", L, False),
                 ("content_hash", S, False), ("fetched_at", TS, False), ("raw", S, False)],
    "authors": [*KEY, ("position", I32, False), ("author_id", I64, True),
                ("full_name", S, True), ("first_name", S, True), ("last_name", S, True),
                ("orcid_id", S, True), ("is_active", B, True), ("url_name", S, True)],
    "files": [*KEY, ("position", I32, False), ("file_id", I64, True), ("name", S, True),
              ("size", I64, True), ("is_link_only", B, True), ("download_url", S, True),
              ("supplied_md5", S, True), ("computed_md5", S, True), ("mimetype", S, True)],
    "categories": [*KEY, ("position", I32, True), ("category_id", I64, True), ("title", S, True),
                   ("parent_id", I64, True), ("path", S, True), ("source_id", S, True),
                   ("taxonomy_id", I64, True)],
    "tags": [*KEY, ("tag", S, False), ("kind", S, False), ("position", I32, True)],
    "references": [*KEY, ("position", I32, False), ("url", S, False)],
    "funding": [*KEY, ("position", I32, False), ("funding_id", I64, True), ("title", S, True),
                ("grant_code", S, True), ("funder_name", S, True),
                ("is_user_defined", B, True), ("url", S, True)],
    "custom_fields": [*KEY, ("name", S, True), ("position", I32, False),
                      ("value_index", I32, True), ("value", S, True), ("is_list", B, False),
                      ("field_type", S, True)],
    "related_materials": [*KEY, ("material_id", I64, True), ("identifier", S, True),
                          ("title", S, True), ("relation", S, True),
                          ("identifier_type", S, True), ("is_linkout", B, True),
                          ("link", S, True)],
    "versions": [*KEY[:2], ("version", I32, True), ("url", S, True)],
    "stats": [*KEY[:2], ("counter", S, False), ("scope", S, False), ("total", I64, True),
              ("fetched_at", TS, False)],
    "collections": [("snapshot_id", S, False), ("collection_id", I64, False),
                    ("version", I32, True), ("title", S, True), ("doi", S, True),
                    ("handle", S, True), ("url", S, True), ("published_date", TS, True),
                    ("created_date", TS, True), ("modified_date", TS, True),
                    ("description", S, True), ("citation", S, True),
                    ("institution_id", I64, True), ("group_id", I64, True),
                    ("articles_count", I64, True), ("is_public", B, True),
                    ("content_hash", S, False), ("fetched_at", TS, False), ("raw", S, False)],
    "projects": [("snapshot_id", S, False), ("project_id", I64, False), ("title", S, True),
                 ("url", S, True), ("figshare_url", S, True), ("published_date", TS, True),
                 ("created_date", TS, True), ("modified_date", TS, True),
                 ("description", S, True), ("funding", S, True), ("institution_id", I64, True),
                 ("group_id", I64, True), ("content_hash", S, False), ("fetched_at", TS, False),
                 ("raw", S, False)],
    "collection_articles": [("snapshot_id", S, False), ("collection_id", I64, False),
                            ("article_id", I64, False)],
    "project_articles": [("snapshot_id", S, False), ("project_id", I64, False),
                         ("article_id", I64, False)],
    "reviews": [("snapshot_id", S, False), ("review_id", I64, False), ("article_id", I64, False),
                ("version", I32, True), ("group_id", I64, True), ("account_id", I64, True),
                ("assigned_to", I64, True), ("status", S, True), ("comments_count", I32, True),
                ("request_number", I64, True), ("created_date", TS, True),
                ("modified_date", TS, True), ("review_date", TS, True),
                ("resolution_comment", S, True), ("content_hash", S, False),
                ("fetched_at", TS, False), ("raw", S, False)],
}
D = "date32[day]"
SERIES_KEY = [("snapshot_id", S, False), ("item", S, False), ("item_id", I64, False),
              ("counter", S, False), ("scope", S, False), ("granularity", S, False),
              ("period", S, False), ("period_start", D, False)]
SERIES_TAIL = [("range_start", D, False), ("range_end", D, False), ("fetched_at", TS, False)]
EXPECTED.update({
    "stats_timeline": [*SERIES_KEY, ("count", I64, False), *SERIES_TAIL],
    "stats_breakdown": [*SERIES_KEY, ("country", S, False), ("city", S, True),
                        ("count", I64, False), *SERIES_TAIL],
    "downloads": [*KEY[:2], ("file_id", I64, False), ("name", S, True), ("path", S, True),
                  ("size", I64, True), ("bytes", I64, True), ("md5", S, True),
                  ("md5_expected", S, True), ("md5_source", S, True), ("status", S, False),
                  ("reason", S, True), ("attempts", I32, False), ("is_link_only", B, True),
                  ("download_url", S, True), ("checked_at", TS, False)],
    "article_versions": EXPECTED["articles"],
})


def by(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


# --- schemas ---------------------------------------------------------------------------------


def test_every_schema_matches_the_documented_column_list():
    assert set(SCHEMAS) == set(EXPECTED)
    for table, schema in SCHEMAS.items():
        got = [(f.name, str(f.type), f.nullable) for f in schema]
        assert got == EXPECTED[table], table
        assert schema.metadata[b"harvester.schema_version"] == str(SCHEMA_VERSION).encode()
        for f in schema:
            assert f.metadata[b"description"] and f.metadata[b"source"], (table, f.name)


def test_docs_tables_md_describes_every_column_with_its_type_and_nullability():
    text = (Path(__file__).parents[1] / "docs" / "TABLES.md").read_text(encoding="utf-8")
    sections = re.split(r"^### `(\w+)`", text, flags=re.M)
    documented = {sections[i]: sections[i + 1] for i in range(1, len(sections), 2)}
    assert set(documented) == set(SCHEMAS)
    for table, schema in SCHEMAS.items():
        rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| (yes|no) \|", documented[table], flags=re.M)
        want = [(f.name, "list<string>" if pa.types.is_list(f.type) else str(f.type),
                 "yes" if f.nullable else "no") for f in schema]
        assert [(n, t.strip(), null) for n, t, null in rows] == want, table


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_fixture_yields_every_table_and_fits_the_schemas(name):
    rows = article_rows(FIXTURES[name], CTX)
    assert tuple(rows) == ARTICLE_TABLES
    for table, table_rows in rows.items():
        arrow = pa.Table.from_pylist(table_rows, schema=SCHEMAS[table])
        assert arrow.num_rows == len(table_rows)
        for field in SCHEMAS[table]:
            if not field.nullable:
                assert arrow.column(field.name).null_count == 0, (name, table, field.name)
        for row in table_rows:
            assert set(row) == set(SCHEMAS[table].names), (name, table)


# --- the workshop record ---------------------------------------------------------------------


def test_workshop_record_articles_row():
    (row,) = article_rows(WORKSHOP, CTX)["articles"]
    assert row["snapshot_id"] == CTX.snapshot_id
    assert row["article_id"] == 123456 and row["version"] == 1
    assert row["title"].startswith("Transcriptome Sequencing") and "<em>" in row["title"]
    assert row["doi"] == "10.1371/journal.pone.0039704"
    assert row["handle"] is None  # "" -> null
    assert row["defined_type"] == 3 and row["defined_type_name"] == "dataset"
    assert row["group_id"] == 107
    assert row["published_date"] == UTC_DT(2012, 6, 27, 0, 57, 36)
    assert row["modified_date"] == UTC_DT(2016, 1, 19, 9, 9, 40)
    assert row["embargo_date"] is None
    assert row["is_public"] is True and row["is_confidential"] is False
    assert row["download_disabled"] is None  # key absent on this record
    assert (row["license_name"], row["license_value"]) == ("CC BY 4.0", 1)
    assert row["size"] == 470683 and row["file_count"] == 1
    assert row["funding"] is None
    assert row["description"] == WORKSHOP["description"]  # HTML as served, \u2212 kept
    assert row["timeline_posted"] == UTC_DT(2012, 6, 27, 0, 57, 36)
    assert row["timeline_first_online"] == UTC_DT(2016, 1, 19, 9, 9, 40)
    assert row["sources"] == ["search", "oai"]
    assert row["fetched_at"] == CTX.fetched_at
    assert orjson.loads(row["raw"]) == WORKSHOP
    assert row["content_hash"] == content_hash(WORKSHOP)


def test_workshop_record_child_tables():
    rows = article_rows(WORKSHOP, CTX)
    assert [(a["position"], a["author_id"], a["full_name"]) for a in rows["authors"]] == [
        (0, 155524, "Yunyan Deng"), (1, 155526, "Jianting Yao"), (2, 155529, "Xiuliang Wang"),
        (3, 110581, "Hui Guo"), (4, 155532, "Delin Duan"),
    ]
    assert all(a["orcid_id"] is None and a["url_name"] == "_" and a["is_active"] is False
               and a["first_name"] is None for a in rows["authors"])
    (f,) = rows["files"]
    assert (f["file_id"], f["name"], f["size"], f["is_link_only"], f["mimetype"]) == (
        3074543, "2011-02-15_14-24-56-228.png", 470683, False, None)
    assert f["supplied_md5"] == f["computed_md5"] == "eb5c9c6b278b533f98aa02feae57c266"
    assert [(c["category_id"], c["title"], c["parent_id"], c["path"], c["source_id"],
             c["taxonomy_id"]) for c in rows["categories"]] == [
        (69, "Inorganic Chemistry", 38, None, None, 10), (13, "Genetics", 48, None, None, 10),
        (61, "Developmental Biology", 48, None, None, 10),
    ]
    assert [(t["tag"], t["kind"]) for t in rows["tags"]] == [
        ("transcriptome", "tag"), ("sequencing", "tag"), ("comparative", "tag"),
        ("induction", "tag"),
    ]
    assert rows["funding"] == rows["custom_fields"] == rows["related_materials"] == []
    assert rows["versions"] == []


# --- quirks ----------------------------------------------------------------------------------


def test_list_valued_custom_field_is_one_row_per_element():
    rows = article_rows(CURRENT, CTX)["custom_fields"]
    got = [(r["position"], r["name"], r["value_index"], r["value"], r["is_list"], r["field_type"])
           for r in rows]
    assert got == [
        (0, "Sampling sites", 0, "Keswick", True, "dropdown_large_list"),
        (0, "Sampling sites", 1, "Ambleside", True, "dropdown_large_list"),
        (0, "Sampling sites", 2, "Grasmere", True, "dropdown_large_list"),
        (1, "Instrument", 0, "TDR probe", False, "text"),
        (2, "Notes", 0, None, False, "textarea"),  # "" -> null, the field stays visible
        (3, "Keywords (legacy)", None, None, True, None),  # an empty list: one empty row
    ]


def test_current_record_tags_keywords_funding_related_and_nulls():
    rows = article_rows(CURRENT, CTX)
    art = rows["articles"][0]
    assert art["group_id"] is None and art["resource_title"] is None
    assert art["size"] == 0  # a count keeps its 0
    assert art["timeline_first_online"] == UTC_DT(2021, 7, 7)  # bare date -> midnight UTC
    assert art["download_disabled"] is False and art["has_linked_file"] is True
    assert [(t["tag"], t["kind"]) for t in rows["tags"]] == [
        ("soil moisture", "tag"), ("hydrology", "tag"),
        ("soil moisture", "keyword"), ("hydrology", "keyword"),
    ]
    f0, f1 = rows["funding"]
    assert (f0["position"], f0["funding_id"], f0["is_user_defined"], f0["grant_code"]) == (
        0, 5501, False, "NE/X000000/1")
    assert (f1["position"], f1["funding_id"], f1["is_user_defined"], f1["grant_code"],
            f1["url"]) == (1, None, True, None, None)
    (m,) = rows["related_materials"]
    assert (m["material_id"], m["relation"], m["identifier_type"], m["is_linkout"]) == (
        9001, "IsSupplementTo", "DOI", True)
    a0, a1 = rows["authors"]
    assert (a0["first_name"], a0["last_name"], a0["orcid_id"]) == (
        "Ann", "Smith", "0000-0002-1825-0097")
    assert (a1["author_id"], a1["full_name"], a1["orcid_id"]) == (None, "J\u00fcrgen M\u00fcller",
                                                                 None)
    files = rows["files"]
    assert [f["name"] for f in files] == ["readings.csv", "readings.csv"]  # names repeat
    assert [f["mimetype"] for f in files] == ["text/csv", None]
    assert files[1]["is_link_only"] is True and files[1]["supplied_md5"] is None
    cats = rows["categories"]
    assert [c["parent_id"] for c in cats] == [30040, None]  # 0 = top level -> null


def test_unknown_keys_are_ignored_by_columns_but_kept_in_raw():
    art = article_rows(CURRENT, CTX)["articles"][0]
    assert "a_key_figshare_added_later" not in art
    assert orjson.loads(art["raw"])["a_key_figshare_added_later"] == {"nested": [1, 2, 3]}
    assert orjson.loads(art["raw"]) == CURRENT


def test_embargoed_record_without_files():
    rows = article_rows(EMBARGOED, CTX)
    art = rows["articles"][0]
    assert art["file_count"] is None  # unknown, not zero
    assert rows["files"] == []
    assert art["is_embargoed"] is True
    assert art["embargo_date"] == UTC_DT(2030, 1, 1)
    assert art["size"] == 123456789
    assert art["group_id"] == 4242
    assert rows["authors"] == [] and rows["categories"] == []


def test_old_record_missing_keys_and_numbers_as_strings():
    rows = article_rows(OLD, CTX)
    art = rows["articles"][0]
    assert (art["article_id"], art["version"], art["defined_type"], art["size"]) == (
        1001, 2, 1, 2048)
    assert art["group_id"] is None  # "0"
    assert art["doi"] is None and art["defined_type_name"] is None
    assert art["url_public_html"] is None and art["download_disabled"] is None
    assert art["license_name"] is None and art["license_value"] is None
    assert art["published_date"] == UTC_DT(2016, 5, 4, 3, 2, 1)  # no zone -> UTC
    assert art["timeline_posted"] is None and art["timeline_first_online"] is None
    assert [(t["tag"], t["kind"]) for t in rows["tags"]] == [("figure", "tag")]
    (a,) = rows["authors"]  # the non-dict element is skipped
    assert (a["position"], a["author_id"], a["first_name"], a["last_name"], a["is_active"]) == (
        0, 77, None, None, True)
    (f,) = rows["files"]
    assert (f["size"], f["is_link_only"], f["mimetype"]) == (2048, False, None)
    assert rows["categories"] == []
    assert [(c["value"], c["is_list"]) for c in rows["custom_fields"]] == [
        ("2016", False), ('{"a":1}', False)]


def test_non_ascii_and_html_are_kept_exactly():
    rows = article_rows(NON_ASCII, CTX)
    art = rows["articles"][0]
    assert art["title"] == NON_ASCII["title"]
    assert art["description"] == NON_ASCII["description"]
    assert orjson.loads(art["raw"]) == NON_ASCII
    assert [(t["tag"], t["kind"]) for t in rows["tags"]] == [
        ("\u00e9t\u00e9", "tag"), ("\u6c34", "tag"), ("\u00e9t\u00e9", "keyword"),
        ("\u6c34", "keyword")]
    assert rows["authors"][0]["full_name"] == "Zo\u00eb \u0141ukasz"
    assert rows["authors"][0]["orcid_id"] is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2012-06-27T00:57:36Z", UTC_DT(2012, 6, 27, 0, 57, 36)),
        ("2012-06-27T00:57:36", UTC_DT(2012, 6, 27, 0, 57, 36)),
        ("2021-07-07", UTC_DT(2021, 7, 7)),
        ("2021-07", UTC_DT(2021, 7, 1)),
        ("2021", UTC_DT(2021, 1, 1)),
        ("2012-06-27T02:57:36+02:00", UTC_DT(2012, 6, 27, 0, 57, 36)),
        ("2012-06-27T00:57:36.123456Z", UTC_DT(2012, 6, 27, 0, 57, 36, 123456)),
        ("2012-06-27 00:57:36", UTC_DT(2012, 6, 27, 0, 57, 36)),
        (datetime(2020, 1, 1, 5, tzinfo=timezone(timedelta(hours=5))), UTC_DT(2020, 1, 1)),
        ("", None),
        ("   ", None),
        (None, None),
        ("not a date", None),
        (1466000000, None),
        ({"posted": "2020"}, None),
        ("9999-12-31T23:59:59-12:00", None),  # past year 9999 in UTC
        ("0001-01-01T00:00:00+14:00", None),  # before year 1 in UTC
    ],
)
def test_parse_timestamp(value, expected):
    got = parse_timestamp(value)
    assert got == expected
    if got is not None:
        assert got.utcoffset() == timedelta(0)


def test_hostile_shapes_never_break_a_row():
    record = {
        "id": 5,
        "version": 2**40,  # does not fit int32 -> null rather than a failing row group
        "size": 2**64 - 1,  # orjson reads up to u64; too big for int64 -> null
        "funding": 1.2345678901234568e29,
        "authors": None,
        "files": {"not": "a list"},
        "categories": [None, 3, {"id": "x", "title": 12}],
        "tags": "not a list",
        "keywords": [1, 2.5, True],
        "custom_fields": [{"value": None}, {"name": None, "value": [None, "", "x"]}],
        "funding_list": [{"is_user_defined": "maybe"}],
        "license": "CC BY",
        "timeline": ["posted"],
        "title": {"en": "dict title"},
        "is_public": "yes",
        "group_id": True,
    }
    rows = article_rows(record, CTX)
    for table, table_rows in rows.items():
        pa.Table.from_pylist(table_rows, schema=SCHEMAS[table])
    art = rows["articles"][0]
    assert art["version"] is None and art["size"] is None and art["group_id"] is None
    assert art["file_count"] is None and art["title"] == '{"en":"dict title"}'
    assert art["is_public"] is None and art["funding"] == "1.2345678901234568e+29"
    assert rows["categories"][0]["category_id"] is None
    assert rows["categories"][0]["title"] == "12"
    assert [t["tag"] for t in rows["tags"]] == ["1", "2.5", "true"]
    assert [(c["name"], c["value_index"], c["value"]) for c in rows["custom_fields"]] == [
        (None, 0, None), (None, 0, None), (None, 1, None), (None, 2, "x")]
    assert rows["funding"][0]["is_user_defined"] is None


@pytest.mark.parametrize("record", [{}, {"id": None}, {"id": ""}, {"id": "abc"}, [], "x"])
def test_a_record_without_id_is_a_caller_error(record):
    with pytest.raises(ValueError) as info:
        article_rows(record, CTX)
    assert "\n" not in str(info.value)


def test_content_hash_is_canonical():
    shuffled = dict(reversed(list(WORKSHOP.items())))
    assert content_hash(shuffled) == content_hash(WORKSHOP)
    assert re.fullmatch(r"[0-9a-f]{64}", content_hash(WORKSHOP))
    changed = copy.deepcopy(WORKSHOP)
    changed["authors"][0]["full_name"] = "Yunyan Deng (ed.)"
    assert content_hash(changed) != content_hash(WORKSHOP)


def test_row_context_normalizes_time_and_sources():
    ctx = RowContext("s", datetime(2024, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))), ["a"])
    assert ctx.fetched_at == UTC_DT(2024, 1, 1, 12) and ctx.sources == ("a",)
    assert RowContext("s", datetime(2024, 1, 1)).fetched_at == UTC_DT(2024, 1, 1)


# --- the other entities ----------------------------------------------------------------------


def test_versions_rows_from_the_versions_answer():
    answer = [{"version": 1, "url": "https://api.figshare.com/v2/articles/24681357/versions/1"},
              {"version": "2", "url": "https://api.figshare.com/v2/articles/24681357/versions/2"}]
    rows = article_rows(CURRENT, CTX, versions=answer)["versions"]
    assert [(r["article_id"], r["version"], r["url"][-10:]) for r in rows] == [
        (24681357, 1, "versions/1"), (24681357, 2, "versions/2")]
    assert version_rows(24681357, answer, CTX) == rows


def test_stats_rows():
    rows = stats_rows(123456, {"views": 7552, "downloads": 3030, "shares": None}, CTX)
    assert [(r["article_id"], r["counter"], r["scope"], r["total"]) for r in rows] == [
        (123456, "views", "public", 7552), (123456, "downloads", "public", 3030),
        (123456, "shares", "public", None)]
    assert all(r["fetched_at"] == CTX.fetched_at for r in rows)
    inst = stats_rows(1, {"views": 3}, CTX, scope="lboro")
    assert inst[0]["scope"] == "lboro"
    pa.Table.from_pylist(rows + inst, schema=SCHEMAS["stats"])


def test_collection_rows():
    record = {
        "id": 6100001, "title": "Lake District data", "doi": "10.6084/m9.figshare.c.6100001.v2",
        "handle": "", "url": "https://api.figshare.com/v2/collections/6100001",
        "published_date": "2023-01-02T03:04:05Z", "created_date": "2022-12-01T00:00:00Z",
        "modified_date": "2023-01-02T03:04:05Z", "timeline": {"posted": "2023-01-02"},
        "description": "<p>All of it</p>", "citation": "Smith (2023)", "institution_id": 0,
        "group_id": 4242, "articles_count": 2, "public": True, "version": 2,
        "authors": [{"id": 1, "full_name": "Ann Smith"}],
    }
    rows = side_rows("collection", {"record": record,
                                    "articles": [24681357, {"id": 31415926}, 0, None]}, CTX)
    (c,) = rows["collections"]
    assert (c["collection_id"], c["version"], c["handle"], c["institution_id"], c["group_id"],
            c["articles_count"], c["is_public"]) == (6100001, 2, None, None, 4242, 2, True)
    assert c["published_date"] == UTC_DT(2023, 1, 2, 3, 4, 5)
    assert orjson.loads(c["raw"]) == record and c["content_hash"] == content_hash(record)
    assert [(r["collection_id"], r["article_id"]) for r in rows["collection_articles"]] == [
        (6100001, 24681357), (6100001, 31415926)]
    for table, table_rows in rows.items():
        pa.Table.from_pylist(table_rows, schema=SCHEMAS[table])


def test_project_rows():
    record = {
        "id": 88001, "title": "Ants", "url": "https://api.figshare.com/v2/projects/88001",
        "published_date": "2023-03-22T09:57:21Z", "created_date": "2023-03-01T00:00:00Z",
        "modified_date": "2023-03-22T09:57:21Z", "funding": "", "description": "<p>Ants</p>",
        "figshare_url": "https://figshare.com/projects/Ants/88001",
        "collaborators": [{"role_name": "Owner", "user_id": 1, "name": "Ann"}],
        "custom_fields": [],
    }
    rows = side_rows("project", {"record": record, "articles": [8327074]}, CTX)
    (p,) = rows["projects"]
    assert (p["project_id"], p["funding"], p["institution_id"], p["figshare_url"]) == (
        88001, None, None, "https://figshare.com/projects/Ants/88001")
    assert rows["project_articles"] == [
        {"snapshot_id": CTX.snapshot_id, "project_id": 88001, "article_id": 8327074}]
    for table, table_rows in rows.items():
        pa.Table.from_pylist(table_rows, schema=SCHEMAS[table])
    with pytest.raises(ValueError, match="project record has no usable 'id'"):
        side_rows("project", {"record": {"title": "x"}}, CTX)
