"""The simulator's corpus: determinism, scale, record shapes, the quirks a harvester meets."""

from __future__ import annotations

import collections
import itertools
import re
from datetime import UTC, datetime

import pytest

from harvester.simulator.corpus import Corpus
from harvester.simulator.settings import SimSettings

ARTICLE_COMPLETE_KEYS = {
    "figshare_url", "download_disabled", "files", "folder_structure", "authors", "custom_fields",
    "embargo_options", "citation", "confidential_reason", "is_confidential", "size", "funding",
    "funding_list", "tags", "keywords", "version", "is_metadata_record", "metadata_reason",
    "status", "description", "is_embargoed", "is_public", "created_date", "has_linked_file",
    "categories", "license", "embargo_title", "embargo_reason", "embargo_date", "embargo_type",
    "references", "related_materials", "id", "title", "doi", "handle", "url", "url_public_html",
    "url_public_api", "url_private_html", "url_private_api", "timeline", "thumb", "defined_type",
    "defined_type_name", "resource_doi", "resource_title", "modified_date", "published_date",
    "group_id",
}  # fmt: skip
LIGHT_KEYS = {
    "id", "title", "doi", "handle", "url", "url_public_html", "url_public_api", "url_private_html",
    "url_private_api", "published_date", "thumb", "defined_type", "defined_type_name", "group_id",
    "timeline", "resource_title", "resource_doi", "created_date", "modified_date",
}  # fmt: skip
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(SimSettings(items=3_000, seed=11))


def _records(corpus: Corpus) -> list[dict]:
    return [corpus.article(i) for i in corpus.ids]


def test_same_seed_same_corpus_other_seed_differs() -> None:
    a, b = Corpus(SimSettings(items=500, seed=3)), Corpus(SimSettings(items=500, seed=3))
    c = Corpus(SimSettings(items=500, seed=4))
    assert a.ids == b.ids
    assert [a.article(i) for i in a.ids[:50]] == [b.article(i) for i in b.ids[:50]]
    assert a.reviews == b.reviews and a.collection_ids == b.collection_ids
    assert a.ids != c.ids


def test_record_cache_bounds_memory_not_content() -> None:
    """record_cache only says how many built records are kept: none, a few or all, the
    records served are the same (a benchmark raises it to keep the server fast)."""
    ids = Corpus(SimSettings(items=200, seed=5)).ids[:40]
    served = {}
    for cap in (0, 7, 4_000):
        c = Corpus(SimSettings(items=200, seed=5, record_cache=cap))
        served[cap] = [c.article(i) for i in ids] + [c.article(i) for i in ids[:5]]
        assert len(c._records) == min(cap, len(ids))
    assert served[0] == served[7] == served[4_000]
    with pytest.raises(ValueError, match="record_cache"):
        SimSettings(record_cache=-1)


def test_ids_realistic_ascending_and_publish_order_only_roughly(corpus: Corpus) -> None:
    ids = list(corpus.ids)
    assert ids == sorted(set(ids)) and len(ids) == 3_000
    assert all(1_000_000 <= i < 100_000_000 for i in ids)
    published = [corpus.published(i) for i in ids]
    inversions = sum(1 for x, y in itertools.pairwise(published) if y < x)
    assert 0 < inversions < len(ids) // 2
    years = {p.year for p in published}
    assert min(years) <= 2013 and max(years) == 2026


def test_busy_days_share_seconds() -> None:
    c = Corpus(SimSettings(items=100_000, seed=2))
    per_day = collections.Counter(c.published(i).date() for i in c.ids[::1])
    assert max(per_day.values()) >= 900
    per_second = collections.Counter(c.published(i) for i in c.ids)
    assert per_second.most_common(1)[0][1] >= 20


def test_million_items_build_with_busy_days_and_lazy_records() -> None:
    c = Corpus(SimSettings(items=1_000_000, seed=1))
    assert len(c.ids) == 1_000_000 == len(set(c.ids))
    busy = [datetime.fromisoformat(d).replace(tzinfo=UTC) for d in c.busy_days]
    per_day = [len(c.match_published(int(d.timestamp()), int(d.timestamp()) + 86_400))
               for d in busy]
    assert len(busy) >= 3 and all(n > 1_000 for n in per_day)
    full = c.article(c.ids[777_777])
    assert full["id"] == c.ids[777_777]


def test_full_record_shape(corpus: Corpus) -> None:
    records = _records(corpus)
    modern = [r for r in records if "keywords" in r]
    assert modern and all(ARTICLE_COMPLETE_KEYS - {"files"} <= r.keys() for r in modern)
    assert all(r["tags"] == r["keywords"] for r in modern)
    legacy = [r for r in records if "keywords" not in r]
    assert legacy and all(r["published_date"] < "2016" for r in legacy)
    for r in records[:200]:
        assert ISO.match(r["created_date"]) and ISO.match(r["modified_date"])
        assert ISO.match(r["published_date"])
        assert r["created_date"] <= r["published_date"] <= r["modified_date"] or r["version"] > 1
        assert r["status"] == "public" and r["is_public"] is True
        assert r["funding"] is None or isinstance(r["funding"], str)
        assert all(c.keys() >= {"id", "title", "parent_id", "path"} for c in r["categories"])
    # bare-date and date-time firstOnline both occur
    first_online = {len(r["timeline"]["firstOnline"]) for r in records}
    assert first_online == {10, 19}
    assert any(not a["orcid_id"] for r in records for a in r["authors"])
    assert any(a["orcid_id"] for r in records for a in r["authors"])
    assert any(isinstance(f["value"], list) for r in records for f in r["custom_fields"])
    assert any(re.search(r"[^\x00-\x7f]", r["title"]) for r in records)
    assert any("<" in r["description"] for r in records)
    assert any(r["funding_list"] for r in records)
    assert any(r["related_materials"] for r in modern)


def test_files_capped_in_record_complete_in_files(corpus: Corpus) -> None:
    many = [i for i in corpus.ids if len(corpus.files(i)) > 10]
    assert many
    for i in many[:5]:
        rec = corpus.article(i)
        assert len(rec["files"]) == 10
        assert rec["files"] == corpus.files(i)[:10]
        assert rec["size"] == sum(f["size"] for f in corpus.files(i))
    files = [f for i in corpus.ids for f in corpus.files(i)]
    assert any(f["is_link_only"] and not f["download_url"].startswith("https://ndownloader")
               for f in files)  # fmt: skip
    assert any(f["supplied_md5"] == "" for f in files)
    assert any("mimetype" not in f for f in files) and any("mimetype" in f for f in files)
    assert len({f["id"] for f in files}) == len(files)


def test_embargoed_and_confidential_items_have_no_files_key(corpus: Corpus) -> None:
    records = _records(corpus)
    embargoed = [r for r in records if r["is_embargoed"]]
    confidential = [r for r in records if r["is_confidential"]]
    assert embargoed and confidential
    assert all("files" not in r and r["embargo_type"] == "file" for r in embargoed)
    assert all("files" not in r for r in confidential)
    assert all(corpus.files(r["id"]) == [] for r in embargoed + confidential)
    metadata_only = [r for r in records if r["is_metadata_record"] and "files" in r]
    assert metadata_only and all(r["files"] == [] for r in metadata_only)


def test_light_vs_full_nulls(corpus: Corpus) -> None:
    loose = [i for i in corpus.ids if corpus.group_of(i) == 0]
    assert loose
    light, full = corpus.light(loose[0]), corpus.article(loose[0])
    assert set(light) == LIGHT_KEYS
    assert light["group_id"] == 0 and full["group_id"] is None
    assert corpus.institution_of(loose[0]) == 0
    no_resource = next(i for i in corpus.ids if corpus.article(i)["resource_title"] is None)
    assert corpus.light(no_resource)["resource_title"] == ""
    for key in ("title", "doi", "published_date", "timeline", "thumb", "url_public_html"):
        assert light[key] == full[key]


def test_versions(corpus: Corpus) -> None:
    multi = next(i for i in corpus.ids if corpus.versions_of(i) >= 3)
    n = corpus.versions_of(multi)
    versions = [corpus.article(multi, v) for v in range(1, n + 1)]
    assert corpus.article(multi) == versions[-1]
    assert [v["version"] for v in versions] == list(range(1, n + 1))
    assert [v["doi"].rsplit(".", 1)[1] for v in versions] == [f"v{v}" for v in range(1, n + 1)]
    assert versions[0]["published_date"] < versions[-1]["published_date"]
    assert versions[0]["modified_date"] < versions[-1]["modified_date"]
    assert versions[0]["description"] != versions[-1]["description"]
    with pytest.raises(KeyError):
        corpus.article(multi, n + 1)


def test_modify_and_withdraw() -> None:
    c = Corpus(SimSettings(items=300, seed=9))
    target, gone = c.ids[10], c.ids[20]
    before = c.article(target)
    when = datetime(2026, 11, 1, 12, tzinfo=UTC)
    c.modify(target, when)
    after = c.article(target)
    assert c.modified(target) == when and after["modified_date"] == "2026-11-01T12:00:00Z"
    assert after["description"] != before["description"]
    assert c.select(order="modified_date")[0] == target
    assert list(c.select(modified_since=int(when.timestamp()))) == [target]
    c.withdraw(gone)
    assert not c.exists(gone) and gone not in c.ids and len(c.ids) == 299
    assert gone not in c.select()
    with pytest.raises(KeyError):
        c.article(gone)


def test_private_items_and_reviews(corpus: Corpus) -> None:
    own = corpus.account_article_ids(corpus.user)
    drafts = [i for i in own if not corpus.exists(i)]
    assert len(drafts) == 20 and len(own) > 20
    draft = corpus.private_article(corpus.user, drafts[0])
    assert draft["published_date"] is None and draft["doi"] == "" and draft["timeline"] == {}
    assert draft["account_id"] == corpus.user.id and "curation_status" in draft
    with pytest.raises(KeyError):
        corpus.article(drafts[0])
    with pytest.raises(KeyError):
        corpus.private_article(corpus.admin, drafts[0])
    statuses = {r["status"] for r in corpus.reviews}
    assert statuses == {"pending", "approved", "rejected", "closed"}
    assert all(corpus.review_item(r)["id"] == r["article_id"] for r in corpus.reviews[:5])
    assert any(not row[6] for row in corpus.institution_items())


def test_collections_and_projects(corpus: Corpus) -> None:
    assert len(corpus.collection_ids) >= 3 and len(corpus.project_ids) >= 3
    cid = corpus.collection_ids[0]
    full = corpus.collection(cid)
    assert full["articles_count"] == len(corpus.collection_articles(cid))
    assert all(corpus.exists(i) for i in corpus.collection_articles(cid))
    pid = corpus.project_ids[0]
    assert corpus.project(pid)["collaborators"]
    assert all(corpus.project_of(i) == pid for i in corpus.project_articles(pid))


def test_search_primitives(corpus: Corpus) -> None:
    some = corpus.ids[42]
    texts = corpus.texts(some)
    k = corpus.ids.index(some)
    word = re.findall(r"\w+", texts["title"][0].lower())[0]
    assert k in corpus.match_token("title", word) and k in corpus.match_token("all", word)
    if texts["tag"]:
        assert k in corpus.match_tag(texts["tag"][0].upper())
    assert k in corpus.match_author(texts["author"][0].lower())
    assert k in corpus.match_category(texts["category"][0])
    assert corpus.match_doi(corpus.article(some)["doi"]) == {k}
    stamp = int(corpus.published(some).timestamp())
    assert k in corpus.match_published(stamp, stamp + 1)
    assert k not in corpus.match_published(None, stamp)
