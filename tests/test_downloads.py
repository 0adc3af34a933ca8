"""File downloads over loopback: md5 checks, retries, resume, hostile names, filters, tokens."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from harvester.client import Client, ClientSettings, RetryPolicy
from harvester.config import parse
from harvester.downloads import NAME_MAX_BYTES, SIDECAR, Downloader, file_path, safe_name
from harvester.errors import ConfigError, OutputError
from harvester.pipeline import Harvest
from harvester.simulator import Simulator
from harvester.simulator.corpus import file_content
from tests.conftest import serving, write_config

HOSTILE = [
    "../../escape.csv", "/etc/passwd", "..\\..\\windows\\evil.dll", "a\x00b.csv", "..", ".",
    "", "   ", ".bashrc", "CON.txt", "nul", "x" * 300 + ".csv", "é" * 150 + ".tar",
    "report\u202ecod.exe", "a/b/../../../c.txt", "what?.csv", "trailing. . ",
]


def test_safe_names_are_one_plain_component() -> None:
    for name in HOSTILE:
        safe = safe_name(name, 7)
        assert safe and "/" not in safe and "\\" not in safe and "\x00" not in safe, name
        assert not safe.startswith(".") and safe not in (".", "..")
        assert len(safe.encode()) <= NAME_MAX_BYTES
        assert not any(ch in safe for ch in '<>:"|?*\u202e')
    assert safe_name("../../escape.csv", 7) == "escape.csv"
    assert safe_name("/etc/passwd", 7) == "passwd"
    assert safe_name("a\x00b.csv", 7) == "ab.csv"
    assert safe_name("", 7) == safe_name("..", 7) == "file-7"
    assert safe_name(".bashrc", 7) == "_bashrc"
    assert safe_name("CON.txt", 7) == "_CON.txt"
    assert safe_name("x" * 300 + ".csv", 7) == "x" * (NAME_MAX_BYTES - 4) + ".csv"
    assert safe_name("é" * 150 + ".tar", 7).endswith("é.tar")  # cut on a character boundary
    assert safe_name(None, 7) == "file-7"
    assert safe_name("données_brutes.csv", 7) == "données_brutes.csv"


def test_paths_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "files"
    for name in HOSTILE:
        path = file_path(root, 12, 34, name)
        assert path.parent == root / "12" / "34"
    (tmp_path / "elsewhere").mkdir()
    root.mkdir()
    (root / "12").symlink_to(tmp_path / "elsewhere")  # a directory swapped for a link
    with pytest.raises(ValueError, match="outside"):
        file_path(root, 12, 34, "data.csv")


# --- harvests with downloads ----------------------------------------------------------------


def downloads(snapshot: Path) -> list[dict[str, Any]]:
    return pq.read_table(snapshot / "downloads").to_pylist()


def files_of(sim: Simulator, ids: list[int]) -> list[tuple[int, dict[str, Any]]]:
    return [(aid, f) for aid in ids for f in sim.corpus.files(aid)]


def with_files(sim: Simulator, n: int, *, link_only: bool = False) -> list[int]:
    """The first n items whose files are served (and, if asked, one with a link-only file)."""
    out = [aid for aid in sorted(sim.corpus.ids)
           if sim.corpus.files(aid) and not any(f["is_link_only"] for f in sim.corpus.files(aid))]
    picked = out[:n]
    if link_only:
        picked.append(next(a for a in sorted(sim.corpus.ids)
                           if any(f["is_link_only"] for f in sim.corpus.files(a))))
    return sorted(picked)


def config(tmp_path: Path, sim: Simulator, ids: list[int], **files: Any) -> Any:
    return write_config(tmp_path, sim, [{"kind": "ids", "ids": ids}], name=files.pop("name", "t"),
                        stats={"counters": []},
                        files={"download": True, "url": sim.download_url, **files})


async def test_files_are_stored_verified_and_not_fetched_twice(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = with_files(sim, 8, link_only=True)
    cfg = config(tmp_path, sim, ids)
    snap = (await Harvest(cfg).run()).snapshot
    rows = downloads(snap)
    expected = files_of(sim, ids)
    assert len(rows) == len(expected)
    root = tmp_path / "out" / "t" / "files"
    served = sim.corpus
    for aid, f in expected:
        row = next(r for r in rows if r["file_id"] == f["id"])
        assert row["article_id"] == aid and row["name"] == f["name"] and row["size"] == f["size"]
        if f["is_link_only"]:
            assert (row["status"], row["path"]) == ("link-only", None)
            continue
        assert row["status"] == "downloaded" and row["attempts"] == 1
        data = (root / row["path"]).read_bytes()
        assert data == file_content(served.seed, f["id"], f["size"])
        assert row["md5"] == hashlib.md5(data).hexdigest()
        assert f["computed_md5"] in ("", row["md5"])
        assert row["bytes"] == f["size"] and row["path"] == f"{aid}/{f['id']}/{f['name']}"
    assert not list(root.rglob("*.part"))
    links = [f for _, f in expected if f["is_link_only"]]
    assert links and sim.log.count("download") == len(expected) - len(links)
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    assert manifest["fetch"]["downloads"]["downloaded"] == len(expected) - len(links)
    assert manifest["fetch"]["downloads"]["bytes"] == sum(f["size"] for f in
                                                          (f for _, f in expected) if
                                                          not f["is_link_only"])

    # the next snapshot finds them in place: verified by the sidecar, nothing fetched again
    sim.log.clear()
    snap2 = (await Harvest(cfg).run()).snapshot
    assert snap2 != snap
    again = collections.Counter(r["status"] for r in downloads(snap2))
    assert again == {"present": len(expected) - len(links), "link-only": len(links)}
    assert sim.log.count("download") == 0
    # a stored file damaged on disk is fetched again
    damaged = root / next(r["path"] for r in rows if r["path"])
    damaged.write_bytes(b"rot" + damaged.read_bytes()[3:])
    os.utime(damaged, ns=(1, 1))
    snap3 = (await Harvest(cfg).run()).snapshot
    assert collections.Counter(r["status"] for r in downloads(snap3))["downloaded"] == 1
    assert sim.log.count("download") == 1


async def test_md5_mismatch_is_retried_then_reported(sim: Simulator, tmp_path: Path) -> None:
    ids = with_files(sim, 3)
    (_, once), (b_id, always) = files_of(sim, ids)[:2]
    sim.downloads.corrupt_next(once["id"], times=1)
    sim.downloads.corrupt_next(always["id"], times=99)
    snap = (await Harvest(config(tmp_path, sim, ids)).run()).snapshot
    rows = {r["file_id"]: r for r in downloads(snap)}
    assert rows[once["id"]]["status"] == "downloaded" and rows[once["id"]]["attempts"] == 2
    bad = rows[always["id"]]
    assert (bad["status"], bad["reason"], bad["attempts"]) == ("failed", "md5-mismatch", 3)
    assert bad["path"] is None and bad["md5"] is None
    fid_dir = tmp_path / "out" / "t" / "files" / str(b_id) / str(always["id"])
    assert not fid_dir.exists() or not [p for p in fid_dir.iterdir()]  # no part, no file
    assert sum(1 for s in sim.downloads.served if s.file_id == always["id"]) == 3
    manifest = orjson.loads((snap / "manifest.json").read_bytes())
    assert manifest["fetch"]["downloads"]["failed"] == 1


async def test_a_download_cut_short_resumes_with_range(sim: Simulator, tmp_path: Path) -> None:
    ids = with_files(sim, 6)
    f = max((f for _, f in files_of(sim, ids)), key=lambda f: f["size"])
    assert f["size"] > 5_000
    sim.downloads.cut_next(f["id"], after=3_000)
    snap = (await Harvest(config(tmp_path, sim, ids)).run()).snapshot
    row = next(r for r in downloads(snap) if r["file_id"] == f["id"])
    assert (row["status"], row["attempts"], row["md5"]) == ("downloaded", 2, f["computed_md5"])
    seen = [(s.range, s.status, s.bytes) for s in sim.downloads.served if s.file_id == f["id"]]
    assert seen == [(None, 200, 3_000), ("bytes=3000-", 206, f["size"] - 3_000)]

    # a server that ignores Range: the download starts over and still verifies
    sim.downloads.ranges = False
    sim.downloads.cut_next(f["id"], after=1_000)
    sim.downloads.served.clear()
    snap = (await Harvest(config(tmp_path, sim, ids, name="noranges")).run()).snapshot
    row = next(r for r in downloads(snap) if r["file_id"] == f["id"])
    assert (row["status"], row["attempts"], row["md5"]) == ("downloaded", 2, f["computed_md5"])
    seen = [(s.range, s.status) for s in sim.downloads.served if s.file_id == f["id"]]
    assert seen == [(None, 200), ("bytes=1000-", 200)]


async def test_a_partial_file_left_by_a_killed_run_is_continued(
    sim: Simulator, tmp_path: Path
) -> None:
    ids = with_files(sim, 6)
    (aid, good), (bid, bad) = sorted(files_of(sim, ids), key=lambda p: -p[1]["size"])[:2]
    root = tmp_path / "out" / "t" / "files"
    for article, f, prefix in ((aid, good, file_content(sim.corpus.seed, good["id"], 2_000)),
                               (bid, bad, b"\xff" * 2_000)):
        part = root / str(article) / str(f["id"]) / (f["name"] + ".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(prefix)
    snap = (await Harvest(config(tmp_path, sim, ids)).run()).snapshot
    rows = {r["file_id"]: r for r in downloads(snap)}
    assert (rows[good["id"]]["status"], rows[good["id"]]["attempts"]) == ("downloaded", 1)
    # a wrong prefix fails the md5 check once, then the file is fetched whole
    assert (rows[bad["id"]]["status"], rows[bad["id"]]["attempts"]) == ("downloaded", 2)
    ranges = {s.file_id: s.range for s in sim.downloads.served if s.range}
    assert ranges == {good["id"]: "bytes=2000-", bad["id"]: "bytes=2000-"}
    for r in rows.values():
        assert (root / r["path"]).read_bytes() == file_content(sim.corpus.seed, r["file_id"],
                                                                r["size"])


async def test_hostile_file_names_never_escape_or_clobber(sim: Simulator, tmp_path: Path) -> None:
    many = next(a for a in sorted(sim.corpus.ids)
                if len([f for f in sim.corpus.files(a) if not f["is_link_only"]]) >= 6)
    files = [f for f in sim.corpus.files(many) if not f["is_link_only"]]
    names = ["../../escape.csv", "/tmp/abs.csv", "a\x00b.csv", "x" * 400 + ".csv", "dup.csv",
             "dup.csv"]
    for f, name in zip(files, names, strict=False):
        sim.corpus.rename_file(many, f["id"], name)
    out = tmp_path / "deep" / "out"
    cfg = write_config(tmp_path, sim, [{"kind": "ids", "ids": [many]}], stats={"counters": []},
                       output={"dir": str(out)},
                       files={"download": True, "url": sim.download_url})
    snap = (await Harvest(cfg).run()).snapshot
    rows = downloads(snap)
    root = out / "t" / "files"
    stored = sorted(p for p in root.rglob("*") if p.is_file() and p.name != SIDECAR)
    assert len(stored) == len(files) == len(rows)
    assert all(r["status"] == "downloaded" for r in rows)
    assert {r["name"] for r in rows} >= set(names)  # the served names are kept, as served
    for r in rows:
        path = (root / r["path"]).resolve()
        assert path.is_relative_to(root.resolve()) and path.parent.name == str(r["file_id"])
        assert path.read_bytes() == file_content(sim.corpus.seed, r["file_id"], r["size"])
    assert not (tmp_path / "deep" / "escape.csv").exists()
    assert not (tmp_path / "escape.csv").exists()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(out)]
    assert [p.name for p in outside] == ["harvest.yaml"]
    dup = [r for r in rows if r["name"] == "dup.csv"]
    assert len({r["path"] for r in dup}) == 2  # same name, two files: both kept
    long = next(r for r in rows if r["name"].startswith("xxx"))
    assert len(long["path"].rsplit("/", 1)[1].encode()) == NAME_MAX_BYTES


async def test_filters_and_the_byte_budget(sim: Simulator, tmp_path: Path) -> None:
    ids = with_files(sim, 30)
    all_files = [f for _, f in files_of(sim, ids)]
    csv = [f for f in all_files if f["name"].lower().endswith(".csv")]
    assert csv and len(csv) < len(all_files)
    snap = (await Harvest(config(tmp_path, sim, ids, extensions=[".CSV"])).run()).snapshot
    status = {r["file_id"]: (r["status"], r["reason"]) for r in downloads(snap)}
    assert {k for k, v in status.items() if v[0] == "downloaded"} == {f["id"] for f in csv}
    assert {v for v in status.values() if v[0] != "downloaded"} == {("filtered", "extension")}

    limit = sorted(f["size"] for f in all_files)[len(all_files) // 2]
    snap = (await Harvest(config(tmp_path, sim, ids, name="small",
                                 max_size=limit)).run()).snapshot
    for r in downloads(snap):
        assert (r["status"] == "downloaded") == (r["size"] <= limit), r

    budget = sum(sorted(f["size"] for f in all_files)[:5])
    sim.downloads.served.clear()
    snap = (await Harvest(config(tmp_path, sim, ids, name="budget", max_total_bytes=budget))
            .run()).snapshot
    rows = downloads(snap)
    got = sum(r["bytes"] for r in rows if r["status"] == "downloaded")
    assert 0 < got <= budget
    assert {r["reason"] for r in rows if r["status"] == "budget"} == {"max_total_bytes"}
    assert sum(s.bytes for s in sim.downloads.served) == got


async def test_the_api_token_reaches_the_download_host_only_for_private_files_when_asked(
    sim: Simulator, tmp_path: Path
) -> None:
    env = {"TOKEN": sim.settings.user_token}
    public = with_files(sim, 2)
    sources = [{"kind": "account"}, {"kind": "ids", "ids": public}]

    def cfg(name: str, private_token: bool) -> Any:
        return write_config(tmp_path, sim, sources, env=env, name=name, api={"token": "${TOKEN}"},
                            stats={"counters": ["views"]},
                            files={"download": True, "url": sim.download_url,
                                   "private_token": private_token})

    snap = (await Harvest(cfg("no-token", False)).run()).snapshot
    rows = downloads(snap)
    records = [orjson.loads(line) for line in (snap / "articles.ndjson").read_bytes().splitlines()]
    # drafts, and the owner's own items under embargo or confidentiality: not public files
    drafts = {a["id"] for a in records if not a.get("is_public") or a.get("is_confidential")
              or a.get("is_embargoed")}
    assert any(not a.get("is_public") for a in records) and any(a.get("is_public") and a["id"]
                                                                 in drafts for a in records)
    assert sim.log.credentials_seen("download") == set()
    assert sim.log.credentials_seen("stats") == set()
    for r in rows:
        if r["article_id"] in drafts and not r["is_link_only"]:
            assert (r["status"], r["reason"]) == ("failed", "forbidden (403)")
        elif not r["is_link_only"]:
            assert r["status"] == "downloaded"

    sim.log.clear()
    snap = (await Harvest(cfg("token", True)).run()).snapshot
    rows = downloads(snap)
    assert all(r["status"] in ("downloaded", "link-only") for r in rows)
    token = f"token {sim.settings.user_token}"
    assert sim.log.credentials_seen("download") == {token}
    assert sim.log.credentials_seen("stats") == set()
    draft_files = {r["file_id"] for r in rows if r["article_id"] in drafts}
    for e in sim.log.entries:
        if e.host == "download":
            fid = int(e.path.rsplit("/", 1)[1])
            assert (e.authorization == token) == (fid in draft_files), e.path


# --- link-only files on an external host (inline server) ------------------------------------


@pytest.fixture
async def external() -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.Response:
        assert "Authorization" not in request.headers
        return web.Response(body=b"external bytes" * (3 if request.match_info["name"] == "big"
                                                      else 1))

    app = web.Application()
    app.router.add_get("/records/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_link_only_files_are_fetched_when_allowed(external: str, tmp_path: Path) -> None:
    text = f"""
name: links
api: {{token: "${{TOKEN}}"}}
sources: [{{kind: ids, ids: [1]}}]
output: {{dir: {tmp_path}}}
files: {{download: true, link_only: true, max_size: 20}}
"""
    cfg = parse(text, env={"TOKEN": "secret"})
    f = {"id": 9, "name": "elsewhere.txt", "size": 0, "is_link_only": True,
         "download_url": f"{external}/records/9", "supplied_md5": "", "computed_md5": ""}
    settings = ClientSettings(user_agent="t", retry=RetryPolicy(attempts=2, backoff_base=0.01),
                              credentials={"https://api.figshare.com": "token secret"})
    async with Client(settings) as client:
        downloader = Downloader(cfg, client, collections.Counter())
        (row,) = await downloader.item(5, [f], private=True)
        (capped,) = await Downloader(cfg, client, collections.Counter()).item(
            5, [{**f, "id": 10, "download_url": f"{external}/records/big"}])
    assert row["status"] == "downloaded" and row["md5_source"] is None
    assert (tmp_path / "links" / "files" / "5" / "9" / "elsewhere.txt").read_bytes() == \
        b"external bytes"
    assert (capped["status"], capped["reason"]) == ("failed", "max_size")  # 42 bytes > 20


def test_files_config_errors_name_the_key(sim: Simulator, tmp_path: Path) -> None:
    ids = [{"kind": "ids", "ids": [1]}]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"download": "yes"}, "files.download"),
        ({"extensions": "csv"}, "files.extensions"),
        ({"max_size": 0}, "files.max_size"),
        ({"max_total_bytes": -1}, "files.max_total_bytes"),
        ({"private_token": True}, "files.private_token: needs api.token"),
        ({"url": "ftp://mirror"}, "files.url"),
        ({"dir": "s3://bucket/files"}, "files.dir"),
        ({"checksum": "sha1"}, "files.checksum: unknown key"),
    ]
    for files, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            write_config(tmp_path, sim, ids, files=files)
    with pytest.raises(ConfigError, match=r"files\.dir: required"):
        write_config(tmp_path, sim, ids, output={"dir": "s3://bucket/out"},
                     files={"download": True})
    cfg = write_config(tmp_path, sim, ids, files={"download": True, "extensions": [".CSV", "zip"],
                                                  "dir": str(tmp_path / "archive")})
    assert cfg.files.extensions == ("csv", "zip")
    assert cfg.files_path() == tmp_path / "archive"


async def test_a_files_dir_that_cannot_be_written_stops_the_run(
    sim: Simulator, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the files tree should be")
    cfg = config(tmp_path, sim, with_files(sim, 2), dir=str(blocker / "files"))
    with pytest.raises(OutputError, match="cannot store"):
        await Harvest(cfg).run()


async def test_the_token_never_reaches_a_link_only_files_own_host(tmp_path: Path) -> None:
    """A draft's link-only file lives on a third host (Zenodo, say): no token goes there."""
    seen: list[str | None] = []

    async def serve(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=b"external bytes")

    app = web.Application()
    app.router.add_get("/records/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    third = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        cfg = parse(f"""
name: links
api: {{token: "${{TOKEN}}"}}
sources: [{{kind: account}}]
output: {{dir: {tmp_path}}}
files: {{download: true, link_only: true, private_token: true}}
""", env={"TOKEN": "secret"})
        f = {"id": 9, "name": "elsewhere.txt", "size": 0, "is_link_only": True,
             "download_url": f"{third}/records/9", "supplied_md5": "", "computed_md5": ""}
        settings = ClientSettings(user_agent="t", retry=RetryPolicy(attempts=2, backoff_base=0.01))
        async with Client(settings) as client:
            (row,) = await Downloader(cfg, client, collections.Counter()).item(5, [f],
                                                                              private=True)
    finally:
        await runner.cleanup()
    assert row["status"] == "downloaded"
    assert seen == [None]


# --- one file id listed twice; failed downloads reach the exit code -------------------------


async def test_a_file_id_listed_twice_is_stored_once_and_reruns_touch_nothing(
    tmp_path: Path,
) -> None:
    """A real record lists one file id under two names: one file, rows that name it, stable."""
    data = {7: b"seven" * 100, 8: b"eight" * 50}
    fetched: list[int] = []

    async def article(request: web.Request) -> web.Response:
        base = f"http://{request.host}"

        def f(fid: int, name: str) -> dict[str, Any]:
            return {"id": fid, "name": name, "size": len(data[fid]), "is_link_only": False,
                    "download_url": f"{base}/files/{fid}", "supplied_md5": "",
                    "computed_md5": hashlib.md5(data[fid]).hexdigest()}

        return web.json_response({"id": 5, "title": "twice", "is_public": True,
                                  "files": [f(7, "first.csv"), f(8, "other.csv"),
                                            f(7, "second name.csv")]})

    async def download(request: web.Request) -> web.Response:
        fetched.append(int(request.match_info["id"]))
        return web.Response(body=data[int(request.match_info["id"])])

    app = web.Application()
    app.router.add_get("/v2/articles/{id}", article)
    app.router.add_get("/files/{id}", download)
    async with serving(app) as url:
        cfg = parse(f"""
name: t
api: {{url: "{url}/v2"}}
stats: {{url: "{url}", counters: []}}
sources: [{{kind: ids, ids: [5]}}]
output: {{dir: "{tmp_path / 'out'}"}}
files: {{download: true}}
""", env={})
        root = tmp_path / "out" / "t" / "files"
        snaps = []
        for _ in range(3):
            snaps.append((await Harvest(cfg).run()).snapshot)
            tree = sorted((p.relative_to(root).as_posix(), p.stat().st_ino)
                          for p in root.rglob("*") if p.is_file())
            if len(snaps) == 1:
                stored = tree
            assert tree == stored  # reruns rename nothing, write nothing
    assert fetched == [7, 8]  # one request per distinct file, none on the reruns
    assert [name for name, _ in stored] == ["5/7/.harvester.json", "5/7/first.csv",
                                            "5/8/.harvester.json", "5/8/other.csv"]
    for snap, status in zip(snaps, ("downloaded", "present", "present"), strict=True):
        rows = downloads(snap)
        assert [(r["file_id"], r["name"], r["status"], r["path"]) for r in rows] == [
            (7, "first.csv", status, "5/7/first.csv"),
            (8, "other.csv", status, "5/8/other.csv"),
            (7, "second name.csv", "duplicate", "5/7/first.csv")]
        assert all((root / r["path"]).is_file() for r in rows)
        assert rows[2]["attempts"] == 0 and "first.csv" in rows[2]["reason"]
        assert rows[2]["md5"] == rows[0]["md5"] == hashlib.md5(data[7]).hexdigest()


def test_failed_downloads_past_files_max_failures_exit_3_and_reach_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harvester import cli
    from harvester.simulator import SimulatorThread
    from harvester.simulator.settings import SimSettings

    with SimulatorThread(SimSettings(items=200, seed=9)) as thread:
        sim = thread.simulator
        ids = with_files(sim, 3)  # type: ignore[arg-type]
        bad = files_of(sim, ids)[0][1]  # type: ignore[arg-type]
        for allowed, code in ((0, cli.PARTIAL), (1, cli.OK)):
            sim.downloads.corrupt_next(bad["id"], times=99)
            cfg = config(tmp_path / str(allowed), sim, ids, max_failures=allowed)  # type: ignore[arg-type]
            report = tmp_path / f"report-{allowed}.json"
            assert cli.main(["run", str(cfg.path), "--quiet", "--report", str(report)]) == code
            got = orjson.loads(report.read_bytes())
            assert got["manifest"]["downloads"]["failed"] == 1
            errors = [x for x in capsys.readouterr().err.splitlines() if "ERROR" in x]
            if code == cli.PARTIAL:
                assert len(errors) == 1 and "1 file downloads failed (files.max_failures: 0)" \
                    in errors[0]
            else:
                assert errors == []


async def test_a_hostile_download_url_fails_that_file_only(tmp_path: Path) -> None:
    """URLs no client can send (no host, a bad port, another scheme) fail the file, not the run."""
    cfg = parse(f"""
name: links
sources: [{{kind: ids, ids: [1]}}]
output: {{dir: {tmp_path}}}
files: {{download: true, link_only: true}}
""", env={})
    urls = ["mailto:a@b.c", "data:text/plain,hi", "http:///x", "https://h:99999/x",
            "http://[::1/x", "ftp://127.0.0.1:9/x"]
    files = [{"id": i + 1, "name": f"f{i}.txt", "size": 2, "is_link_only": True,
              "download_url": u, "supplied_md5": "", "computed_md5": ""}
             for i, u in enumerate(urls)]
    settings = ClientSettings(user_agent="t", retry=RetryPolicy(attempts=1))
    async with Client(settings) as client:
        rows = await Downloader(cfg, client, collections.Counter()).item(5, files)
    assert [r["status"] for r in rows] == ["failed"] * len(urls)
    assert all(r["reason"] for r in rows)


async def test_a_file_host_blocking_us_or_an_id_past_int64_fails_that_file_only(
    tmp_path: Path,
) -> None:
    """A 403 HTML page from a link-only file's host or from the download host fails those files
    (the run goes on); a file id past 2^63-1 is no id: nothing fetched, no downloads row."""
    asked: list[str] = []
    hosts: dict[str, str] = {}

    async def forbidden(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=403, text="<html><body>Access denied</body></html>",
                            content_type="text/html")

    async def article(request: web.Request) -> web.Response:
        aid, third = int(request.match_info["id"]), hosts["third"]
        files = {1: [{"id": 11, "name": "page.html", "size": 0, "is_link_only": True,
                      "download_url": f"{third}/paper"}],
                 2: [{"id": 12, "name": "data.csv", "size": 5, "is_link_only": False,
                      "download_url": f"{third}/files/12"}],
                 3: [{"id": 2**63 + 5, "name": "a.txt", "size": 5, "is_link_only": False,
                      "download_url": f"{third}/files/big"},
                     {"id": 2**64 - 1, "name": "b.txt", "size": 5, "is_link_only": False,
                      "download_url": f"{third}/files/big"}]}[aid]
        return web.json_response({"id": aid, "title": f"t{aid}", "is_public": True,
                                  "files": files})

    runners = []
    for routes in ([("/v2/articles/{id}", article)], [("/{tail:.*}", forbidden)]):
        app = web.Application()
        for path, handler in routes:
            app.router.add_get(path, handler)
        runners.append(web.AppRunner(app, access_log=None))
        await runners[-1].setup()
        await web.TCPSite(runners[-1], "127.0.0.1", 0).start()
    api, third = (f"http://127.0.0.1:{r.addresses[0][1]}" for r in runners)
    hosts["third"] = third
    try:
        cfg = parse(f"""
name: t
api: {{url: "{api}/v2"}}
stats: {{url: "{api}", counters: []}}
sources: [{{kind: ids, ids: [1, 2, 3]}}]
output: {{dir: "{tmp_path / 'out'}"}}
http: {{rate: {{requests: 10000, per: 1}}}}
files: {{download: true, link_only: true, url: "{third}", max_failures: 2}}
""", env={})
        result = await Harvest(cfg).run()
    finally:
        for runner in runners:
            await runner.cleanup()
    assert result.manifest["ids"]["fetched"] == 3
    rows = downloads(result.snapshot)
    assert [(r["article_id"], r["file_id"], r["status"], r["reason"]) for r in rows] == [
        (1, 11, "failed", "forbidden (403)"), (2, 12, "failed", "forbidden (403)")]
    assert result.manifest["fetch"]["downloads"]["failed"] == 2
    assert "/files/big" not in asked and not (tmp_path / "out" / "t" / "files" / "3").exists()
    files = pq.read_table(result.snapshot / "files").to_pylist()
    assert [r["file_id"] for r in files if r["article_id"] == 3] == [None, None]


@pytest.mark.parametrize(("file", "files", "reason"), [
    ({"size": 0, "is_link_only": False}, {}, "size-mismatch"),  # 0 bytes means 0 bytes
    ({"is_link_only": False}, {}, "too-large"),  # no size: http.max_body bounds it
    ({"size": 0, "is_link_only": True}, {"max_size": 100_000}, "max_size"),
    ({"size": 0, "is_link_only": True}, {}, "too-large"),
])
async def test_a_body_without_end_stops_at_the_files_bound(
    tmp_path: Path, file: dict[str, Any], files: dict[str, Any], reason: str
) -> None:
    """Without a size to hold the bytes to, the stream is cut at files.max_size, else at
    http.max_body: never a full disk, never a run that does not end."""
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            while sent[0] < 256 << 20:  # the test's own guard: the client must stop first
                await resp.write(b"A" * 65536)
                sent[0] += 65536
        return resp

    app = web.Application()
    app.router.add_get("/endless", endless)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    extra = "".join(f", {k}: {v}" for k, v in files.items())
    cfg = parse(f"""
name: t
sources: [{{kind: ids, ids: [1]}}]
output: {{dir: {tmp_path}}}
http: {{max_body: 1000000}}
files: {{download: true, link_only: true{extra}}}
""", env={})
    f = {"id": 9, "name": "big.bin", "computed_md5": "",
         "download_url": f"http://127.0.0.1:{runner.addresses[0][1]}/endless", **file}
    settings = ClientSettings(user_agent="t", retry=RetryPolicy(attempts=1))
    try:
        async with Client(settings) as client:
            (row,) = await Downloader(cfg, client, collections.Counter()).item(5, [f])
    finally:
        await runner.cleanup()
    assert (row["status"], row["reason"]) == ("failed", reason)
    assert sent[0] < 64 << 20
    assert not list((tmp_path / "t" / "files").rglob("big.bin*"))  # nor a .part left
