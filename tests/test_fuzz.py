"""Hostile records never crash a run, change a value or tombstone a live article.

Hypothesis mutates real-shaped records (the simulator's ArticleComplete) into wrong types,
extreme sizes, bad encodings and duplicate keys, and an inline server serves them as raw bytes
(record, /files and stats totals). Every run accounts for every id, keeps kept records as
served, and the load that follows withdraws nothing that answered 200.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harvester import cli
from harvester.simulator import ThreadedApp
from harvester.simulator.corpus import Corpus
from harvester.simulator.settings import SimSettings
from harvester.store import list_snapshots

CORPUS = Corpus(SimSettings(items=12, seed=26))
IDS = list(CORPUS.ids)
HTTP = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 4, "page_size": 10,
        "retry": {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.02}}
HOLE = "\u0000hole\u0000"  # stands for a raw JSON fragment in a record being serialized
# FUZZ_EXAMPLES=300 hunts with fresh random examples; by default 25, the same ones every run
HUNT = os.environ.get("FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(HUNT or 25), deadline=None, derandomize=not HUNT,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


# ---- raw JSON fragments ----------------------------------------------------------------------


def deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def dumped(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


fragments = st.one_of(
    st.sampled_from([b'"12"', b"[1,2]", b"{}", b"[]", b"null", b"true", b"3.5", b"-0.0",
                     b"1e308", b'""', b'{"id":"x"}', b"[[[]]]", b"-1", b"0"]),
    st.integers(2**64, 2**200).flatmap(lambda n: st.sampled_from([n, -n])).map(dumped),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"]),
    st.tuples(st.integers(200, 1100), st.sampled_from(["list", "dict"])).map(
        lambda t: deep(*t)),
    st.integers(10_000, 300_000).map(lambda n: b'"' + b"x\\u00e9" * (n // 7) + b'"'),
    st.sampled_from([b'"\\ud800"', b'"a\\udc00b"', b'"\\udbff\\u0041"', b'"\\ud83d"']),
    st.sampled_from([b'"\xff\xfe"', b'"caf\xe9"', b'"\xc3"', b'"\xed\xa0\x80"']),
    st.sampled_from([b'"line\nbreak"', b'"tab\there"', b'"\\u0000"']),
)

# where a fragment goes: a top-level key, or inside the record's lists and objects
PATHS = [("id",), ("title",), ("doi",), ("published_date",), ("modified_date",),
         ("created_date",), ("defined_type",), ("group_id",), ("version",), ("size",),
         ("tags",), ("categories",), ("authors",), ("files",), ("license",), ("timeline",),
         ("custom_fields",), ("references",), ("funding_list",), ("description",),
         ("is_public",), ("embargo_date",), ("url",), ("thumb",), ("status",),
         ("tags", 0), ("authors", 0), ("authors", 0, "id"), ("authors", 0, "full_name"),
         ("authors", 0, "orcid_id"), ("categories", 0), ("categories", 0, "id"),
         ("categories", 0, "title"), ("files", 0), ("files", 0, "id"), ("files", 0, "size"),
         ("files", 0, "name"), ("files", 0, "download_url"), ("license", "value"),
         ("license", "name"), ("timeline", "posted"), ("timeline", "firstOnline"),
         ("custom_fields", 0, "value"), ("custom_fields", 0, "name"), ("new_key",)]


@dataclass
class Case:
    """One article's mutations: the served record, /files page and stats totals."""

    aid: int
    edits: list[tuple[tuple[Any, ...], bytes]] = field(default_factory=list)
    duplicate: tuple[str, bytes] | None = None
    many: str | None = None  # "tags" or "authors": 10,000 elements
    files: bytes | None = None  # a fragment placed in the /files page
    totals: bytes = b"7"

    def record(self) -> bytes:
        rec = CORPUS.article(self.aid)
        holes: list[bytes] = []
        if self.many == "tags":
            rec["tags"] = [f"tag {k}" for k in range(10_000)]
        elif self.many == "authors":
            rec["authors"] = [{**rec["authors"][0], "id": 10**6 + k} for k in range(10_000)]
        for path, raw in self.edits:
            if put(rec, path, HOLE + str(len(holes))):
                holes.append(raw)
        text = orjson.dumps(rec)
        for k in range(len(holes)):
            text = text.replace(orjson.dumps(HOLE + str(k)), holes[k])
        if self.duplicate is not None:
            key, raw = self.duplicate
            text = text[:-1] + b"," + orjson.dumps(key) + b":" + raw + b"}"
        return text

    def files_page(self) -> bytes:
        listed = CORPUS.article(self.aid)["files"]  # every file the record lists, then more
        text = orjson.dumps(listed)
        if self.files is not None:
            text = text[:-1] + (b"," if listed else b"") + self.files + b"]"
        return text


def put(rec: Any, path: tuple[Any, ...], value: Any) -> bool:
    """Set `value` at `path` in `rec` where the path exists (its last step may be new)."""
    *head, last = path
    for step in head:
        try:
            rec = rec[step]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(rec, dict) and isinstance(last, str):
        rec[last] = value
        return True
    if isinstance(rec, list) and isinstance(last, int) and last < len(rec):
        rec[last] = value
        return True
    return False


@st.composite
def cases(draw: st.DrawFn, aid: int) -> Case:
    case = Case(aid)
    case.edits = draw(st.lists(st.tuples(st.sampled_from(PATHS), fragments), max_size=3))
    if draw(st.integers(0, 5)) == 0:
        case.duplicate = (draw(st.sampled_from(["title", "id", "tags", "x"])), draw(fragments))
    if draw(st.integers(0, 11)) == 0:
        case.many = draw(st.sampled_from(["tags", "authors"]))
    if draw(st.integers(0, 3)) == 0:
        case.files = draw(fragments)
    if draw(st.integers(0, 2)) == 0:
        case.totals = draw(fragments)
    return case


examples = st.lists(st.sampled_from(IDS), min_size=1, max_size=4, unique=True).flatmap(
    lambda ids: st.tuples(*(cases(aid) for aid in ids)))


# ---- the server, the run and what must hold -------------------------------------------------


def routes_for(by_id: dict[int, Case]) -> Any:
    def json_bytes(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def article(request: web.Request) -> web.Response:
        return json_bytes(by_id[int(request.match_info["id"])].record())

    async def files(request: web.Request) -> web.Response:
        case = by_id[int(request.match_info["id"])]
        page = int(request.query.get("page", 1))
        return json_bytes(case.files_page() if page == 1 else b"[]")

    async def total(request: web.Request) -> web.Response:
        return json_bytes(b'{"totals":' + by_id[int(request.match_info["id"])].totals + b"}")

    def routes(app: web.Application) -> None:
        app.router.add_get("/v2/articles/{id}", article)
        app.router.add_get("/v2/articles/{id}/files", files)
        app.router.add_get("/total/{counter}/article/{id}", total)

    return routes


@contextmanager
def deep_json() -> Iterator[None]:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, 5_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def reference(body: bytes) -> Any:
    """The served record as the standard library reads it; a lone surrogate or bytes that are
    not UTF-8 read as U+FFFD (the harvester keeps such records mended, with a warning)."""
    def refuse(name: str) -> Any:
        raise ValueError(name)

    def mend(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if isinstance(value, list):
            return [mend(v) for v in value]
        if isinstance(value, dict):
            return {mend(k): mend(v) for k, v in value.items()}
        return value

    with deep_json():
        return mend(json.loads(body.decode("utf-8", "replace"), parse_constant=refuse))


def harvest(root: Path, by_id: dict[int, Case]) -> tuple[int, Path]:
    with ThreadedApp(routes_for(by_id)) as server:
        body = {"name": "t", "api": {"url": server.url + "/v2"}, "stats": {"url": server.url},
                "http": HTTP, "output": {"dir": str(root / "out")},
                "sources": [{"kind": "ids", "ids": sorted(by_id)}]}
        path = root / "c.yaml"
        path.write_text(yaml.safe_dump(body))
        code = cli.main(["run", str(path), "--accept-drop"])  # publish even if all failed
    return code, root / "out" / "t"


def check(root: Path, by_id: dict[int, Case],
          capsys: pytest.CaptureFixture[str]) -> tuple[set[int], dict[int, dict[str, Any]]]:
    """Run, then load: the invariants every case holds. (kept ids, errors by id)."""
    code, out = harvest(root, by_id)
    err = capsys.readouterr().err
    assert code != cli.INTERNAL and "Traceback" not in err, err
    assert code in (cli.OK, cli.PARTIAL), err
    snap = list_snapshots(root / "out", "t")[-1]
    with deep_json():
        kept = {r["id"]: r for r in map(json.loads,
                                        (snap / "articles.ndjson").read_bytes().splitlines())}
    failed = {e["id"]: e for e in map(orjson.loads,
                                      (snap / "errors.ndjson").read_bytes().splitlines())}
    assert set(kept) | set(failed) == set(by_id), (kept.keys(), failed)
    for aid, case in by_id.items():
        if aid in kept:
            with deep_json():
                assert kept[aid] == reference(case.record()), aid
        else:
            assert failed[aid]["reason"] and failed[aid]["message"]
    db = root / "w.duckdb"
    assert cli.main(["load", str(out), "--duckdb", str(db)]) == cli.OK, capsys.readouterr().err
    with duckdb.connect(str(db)) as con:
        rows = dict(con.execute("SELECT article_id, withdrawn FROM articles_current").fetchall())
    assert rows == {aid: False for aid in kept}  # every id served with 200: none withdrawn
    return set(kept), failed


@FUZZ
@given(drawn=examples)
def test_mutated_records_are_kept_as_served_or_reported(
    drawn: tuple[Case, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        kept, failed = check(Path(tmp), {c.aid: c for c in drawn}, capsys)
    for case in drawn:  # --hypothesis-show-statistics tells how the examples ended
        reason = failed.get(case.aid, {}).get("reason")
        event(("kept" if case.aid in kept else "failed") + (f": {reason}" if reason else ""))


# ---- the explicit cases ---------------------------------------------------------------

A, B = IDS[0], next(i for i in IDS if len(CORPUS.article(i)["files"]) == 10)
HUGE = b"123456789012345678901234567890"


@pytest.mark.parametrize(("case", "kept", "reason"), [
    pytest.param(Case(A, edits=[(("title",), b"1e400")]), False, "bad-json", id="1e400"),
    pytest.param(Case(A, duplicate=("title", b"1e400")), False, "bad-json",
                 id="duplicate-1e400"),
    pytest.param(Case(A, edits=[(("size",), HUGE), (("tags", 0), b"-" + HUGE)]), True, None,
                 id="ints-beyond-2^64"),
    pytest.param(Case(A, edits=[(("custom_fields", 0, "value"), deep(1_000, "dict"))]), True,
                 None, id="nested-1000"),
    pytest.param(Case(A, edits=[(("title",), b'"\\ud800"'), (("size",), HUGE)]), False,
                 "bad-json", id="surrogate-and-huge-int"),
    pytest.param(Case(A, totals=b"9223372036854775808"), True, "stats-failed",
                 id="totals-2^63"),
    pytest.param(Case(B, files=deep(600, "list")), True, None, id="deep-files-element"),
    pytest.param(Case(A, many="tags"), True, None, id="10k-tags"),
])
def test_explicit_hostile_records(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  case: Case, kept: bool, reason: str | None) -> None:
    got, failed = check(tmp_path, {case.aid: case}, capsys)
    assert (case.aid in got) is kept
    assert failed.get(case.aid, {}).get("reason") == reason


def test_duplicate_keys_are_kept_and_counted(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    got, _ = check(tmp_path, {A: Case(A, duplicate=("title", b'"second"'))}, capsys)
    assert got == {A}
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    line = (snap / "articles.ndjson").read_bytes()
    first = orjson.dumps({"title": CORPUS.article(A)["title"]})[1:-1]
    assert first in line and line.rstrip().endswith(b',"title":"second"}')
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    assert manifest["served_json"] == {"records_with_duplicate_keys": 1}


def test_a_files_404_keeps_the_record(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    case = Case(B)
    routes = routes_for({B: case})

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"message": "Entity not found: article",
                                  "code": "EntityNotFound"}, status=404)

    def with_missing_files(app: web.Application) -> None:
        app.router.add_get("/v2/articles/{id}/files", missing)
        routes(app)

    with ThreadedApp(with_missing_files) as server:
        body = {"name": "t", "api": {"url": server.url + "/v2"}, "stats": {"url": server.url},
                "http": HTTP, "output": {"dir": str(tmp_path / "out")},
                "sources": [{"kind": "ids", "ids": [B]}]}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(body))
        assert cli.main(["run", str(tmp_path / "c.yaml")]) == cli.PARTIAL
    snap = list_snapshots(tmp_path / "out", "t")[-1]
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    assert manifest["ids"]["gone"] == 0 and manifest["ids"]["fetched"] == 1
    errors = [orjson.loads(x) for x in (snap / "errors.ndjson").read_bytes().splitlines()]
    assert [e["reason"] for e in errors] == ["files-failed"]
