"""The command line: exit codes, one-line errors for bad input of every kind, plan, logs."""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from aiohttp import web

from harvester import cli, console
from harvester.journal import Journal
from harvester.simulator import SimulatorThread, ThreadedApp
from harvester.simulator.settings import SimSettings
from harvester.store import list_snapshots

ROOT = Path(__file__).resolve().parent.parent
FAST_HTTP = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 4,
             "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}}


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimSettings(items=200, seed=9)) as s:
        yield s


def config_file(tmp_path: Path, api_url: str, stats_url: str, sources: list[dict[str, Any]],
                **top: Any) -> str:
    api = {"url": api_url, **top.pop("api", {})}
    stats = {"url": stats_url, **top.pop("stats", {})}
    body = {"name": "t", "api": api, "stats": stats, "http": FAST_HTTP,
            "output": {"dir": str(tmp_path / "out")}, "sources": sources, **top}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def records_served_by(
    article: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Application], None]:
    """Routes of a server whose records `article` answers; every stats total is 7."""

    async def total(request: web.Request) -> web.Response:
        return web.json_response({"totals": 7})

    def routes(app: web.Application) -> None:
        app.router.add_get("/v2/articles/{id}", article)
        app.router.add_get("/total/{counter}/article/{id}", total)

    return routes


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if " ERROR " in x or x.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ usage and config errors


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run"], "the following arguments are required: config"),
        (["simulate", "--items", "0"], "items must be within"),
        (["simulate", "--rate-limit", "fast"], "--rate-limit: 'fast' is not N/SECONDS"),
        (["simulate", "--api-port", "99999"], "--api-port: '99999' is not a port number"),
        (["simulate", "--latency-ms", "-1"], "--latency-ms must be a finite number of 0 or more"),
        (["simulate", "--latency-ms", "nan"], "--latency-ms must be a finite number"),
        (["simulate", "--rate-limit", "5/0"], "--rate-limit must be N requests (1 or more) per"),
        (["simulate", "--fault-rate", "2"], "--fault-rate must be within 0..1"),
        (["demo", "--items", "0"], "demo: --items: items must be within 1..1,000,000, got 0"),
        (["run", "c.yaml", "--output", ""], "argument --output: must not be empty"),
        (["plan", "c.yaml", "--api-url", " "], "argument --api-url: must not be empty"),
        (["simulate", "--stats-port", "http"], "--stats-port: 'http' is not a port number"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], expected: str,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def serve(*args: object, **kw: object) -> None:
        raise AssertionError("bad input was accepted: the simulator would serve forever")

    monkeypatch.setattr("harvester.simulator.Simulator", serve)
    assert cli.main(argv) == cli.USAGE
    assert expected in one_error_line(capsys.readouterr().err)


def test_bad_config_file_exit_2_naming_file_and_key(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsources:\n  - kind: group\n    group: eleven\n")
    assert cli.main(["validate", str(path)]) == cli.USAGE
    line = one_error_line(capsys.readouterr().err)
    assert f"{path}: sources[0].group: expected an integer" in line
    path.write_text("name: x\nsources: [\n")
    assert cli.main(["run", str(path)]) == cli.USAGE
    assert "malformed YAML" in one_error_line(capsys.readouterr().err)
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == cli.USAGE
    assert "no such config file" in one_error_line(capsys.readouterr().err)


def test_simulate_on_a_port_in_use_exits_2_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "harvester", "simulate", "--stats-port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == cli.USAGE
    line = one_error_line(done.stderr)
    assert "simulate: cannot listen on --host 127.0.0.1" in line
    assert f"('127.0.0.1', {port})" in line and "address already in use" in line


def test_a_report_path_that_cannot_be_written_stops_the_run_before_it_starts(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = config_file(tmp_path, sim.api_url, sim.stats_url,
                       [{"kind": "ids", "ids": sorted(sim.corpus.ids)[:2]}])
    for report, expected in ((tmp_path / "c.yaml" / "r.json", "a file stands where its folder"),
                             (tmp_path, "is a directory, not a file")):
        assert cli.main(["run", path, "--report", str(report)]) == cli.USAGE
        assert f"--report {report}: {expected}" in one_error_line(capsys.readouterr().err)
    assert sim.log.entries == []  # nothing was sent
    assert not (tmp_path / "out").exists()
    report = tmp_path / "reports" / "nightly" / "r.json"  # a missing folder is made
    assert cli.main(["run", path, "--report", str(report)]) == cli.OK
    assert orjson.loads(report.read_bytes())["outcome"] == "ok"


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path, "http://127.0.0.1:9/v2", "http://127.0.0.1:9",
                       [{"kind": "group", "group": 1}])
    assert cli.main(["validate", path]) == cli.OK
    assert "ok (1 sources" in capsys.readouterr().out


# ------------------------------------------------------------------ network and server trouble


def test_unreachable_host_aborts_with_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path, "http://127.0.0.1:9/v2", "http://127.0.0.1:9",
                       [{"kind": "group", "group": 1}])
    assert cli.main(["run", path]) == cli.ABORTED
    line = one_error_line(capsys.readouterr().err)
    assert "127.0.0.1:9" in line and "connect" in line
    assert list_snapshots(tmp_path / "out", "t") == []


def test_a_host_that_goes_unreachable_mid_run_stops_it_soon_and_it_resumes(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:  # a stats host that refuses every connection, for now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"http://127.0.0.1:{port}"
    ids = sorted(sim.corpus.ids)[:40]
    path = config_file(tmp_path, sim.api_url, down, [{"kind": "ids", "ids": ids}])
    assert cli.main(["run", path]) == cli.ABORTED
    line = one_error_line(capsys.readouterr().err)
    assert f"{down} is unreachable: 3 requests in a row could not connect" in line
    assert "the next run resumes" in line
    records = [e for e in sim.log.entries if e.host == "api"]
    assert len(records) < len(ids) // 2  # it stopped soon: not one failure per id
    assert list_snapshots(tmp_path / "out", "t") == []

    def stats(app: web.Application) -> None:
        async def total(request: web.Request) -> web.Response:
            return web.json_response({"totals": 7})

        app.router.add_get("/total/{counter}/article/{id}", total)

    with ThreadedApp(stats, port=port):  # the host is back: the same command resumes
        assert cli.main(["run", path]) == cli.OK
    assert "resuming snapshot" in capsys.readouterr().err
    snapshot = list_snapshots(tmp_path / "out", "t")[-1]
    assert len((snapshot / "articles.ndjson").read_bytes().splitlines()) == len(ids)


def test_refused_token_aborts_and_the_token_is_never_shown(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIGSHARE_TOKEN", "not-a-valid-token-5ec2e7")
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "account"}],
                       api={"token": "${FIGSHARE_TOKEN}"})
    assert cli.main(["run", path, "--report", str(tmp_path / "r.json")]) == cli.ABORTED
    err = capsys.readouterr().err
    assert "401" in one_error_line(err)
    report = (tmp_path / "r.json").read_text()
    assert "not-a-valid-token-5ec2e7" not in err + report
    assert orjson.loads(report)["outcome"] == "aborted"


def test_token_reaches_only_the_api_host_and_no_output(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = sim.settings.user_token
    monkeypatch.setenv("FIGSHARE_TOKEN", token)
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "account"}],
                       api={"token": "${FIGSHARE_TOKEN}"})
    assert cli.main(["run", path, "--json-logs"]) == cli.OK
    assert sim.log.credentials_seen("api") == {f"token {token}"}
    assert sim.log.credentials_seen("stats") == set()
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err
    for f in (tmp_path / "out").rglob("*"):  # snapshot files, journal, catalog, lock alike
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f
    snapshot = list_snapshots(tmp_path / "out", "t")[-1]
    lines = (snapshot / "articles.ndjson").read_bytes().splitlines()
    assert lines and any(orjson.loads(x)["published_date"] is None for x in lines)  # drafts
    for line in captured.err.splitlines():
        orjson.loads(line)  # --json-logs: every log line is a JSON object


def test_non_json_and_id_less_bodies_are_errors_not_crashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def article(request: web.Request) -> web.Response:
        aid = int(request.match_info["id"])
        if aid == 1:
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if aid == 2:
            return web.json_response({"title": "no id here"})
        return web.json_response({"id": aid, "title": "fine", "files": []})

    with ThreadedApp(records_served_by(article)) as server:
        path = config_file(tmp_path, server.url + "/v2", server.url,
                           [{"kind": "ids", "ids": [1, 2, 3]}], max_errors=0)
        code = cli.main(["run", path])
    assert code == cli.PARTIAL
    err = capsys.readouterr().err
    assert "Traceback" not in err
    snapshot = list_snapshots(tmp_path / "out", "t")[-1]
    errors = {e["id"]: e for e in map(orjson.loads,
                                       (snapshot / "errors.ndjson").read_bytes().splitlines())}
    assert errors[1]["reason"] == "bad-json"
    assert errors[2]["reason"] == "bad-record"
    assert orjson.loads((snapshot / "articles.ndjson").read_bytes())["id"] == 3


def test_a_record_with_text_that_is_not_unicode_is_kept_with_replacement_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def article(request: web.Request) -> web.Response:
        aid = int(request.match_info["id"])
        body = b'{"id": %d, "title": "cut \\ud83d", "files": []}' % aid
        return web.Response(body=body, content_type="application/json")

    with ThreadedApp(records_served_by(article)) as server:
        path = config_file(tmp_path, server.url + "/v2", server.url,
                           [{"kind": "ids", "ids": [5]}])
        assert cli.main(["run", path]) == cli.OK
    assert "/v2/articles/5: text that is not Unicode" in capsys.readouterr().err
    snapshot = list_snapshots(tmp_path / "out", "t")[-1]
    assert orjson.loads((snapshot / "articles.ndjson").read_bytes())["title"] == "cut \ufffd"
    titles = pq.read_table(snapshot / "articles").column("title").to_pylist()
    assert titles == ["cut \ufffd"]
    manifest = orjson.loads((snapshot / "manifest.json").read_bytes())
    assert manifest["http"]["json_mended"] == 1


def test_non_json_list_page_aborts_the_run(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def routes(app: web.Application) -> None:
        async def listing(request: web.Request) -> web.Response:
            return web.json_response({"not": "a list"})

        app.router.add_get("/v2/articles", listing)

    with ThreadedApp(routes) as server:
        path = config_file(tmp_path, server.url + "/v2", server.url,
                           [{"kind": "group", "group": 5}])
        assert cli.main(["run", path]) == cli.ABORTED
    assert "expected a JSON list of items" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ files on disk


@pytest.mark.parametrize(("name", "what", "then"), [
    ("journal.sqlite", "run journal", "the run starts over"),
    ("catalog.sqlite", "harvest catalog", "the next run is a full one"),
])
def test_a_damaged_state_file_stops_the_run_before_it_fetches(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    name: str, what: str, then: str,
) -> None:
    ids = sorted(sim.corpus.ids)[:3]
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "ids", "ids": ids}])
    assert cli.main(["run", path]) == cli.OK
    out = tmp_path / "out"
    published = list_snapshots(out, "t")
    damaged = out / "t" / ".state" / name
    damaged.write_bytes(b"not a database " * 100)
    capsys.readouterr()
    sent = len(sim.log.entries)
    assert cli.main(["run", path]) == cli.ABORTED
    line = one_error_line(capsys.readouterr().err)
    assert f"{damaged}: cannot open the {what}: file is not a database" in line
    assert f"move {name}* aside and {then}" in line
    assert len(sim.log.entries) == sent  # stopped before a single request
    assert list_snapshots(out, "t") == published
    damaged.rename(damaged.with_name(name + ".damaged"))  # as the message says
    assert cli.main(["run", path]) == cli.OK
    assert len(list_snapshots(out, "t")) == len(published) + 1


@pytest.mark.parametrize(("name", "other", "what", "missing"), [
    ("catalog.sqlite", "journal.sqlite", "harvest catalog",
     "bits, known, marks, queue, runs, windows"),
    ("journal.sqlite", "catalog.sqlite", "run journal", "errors, ids, meta, records"),
])
def test_a_state_file_holding_the_other_ones_tables_stops_the_run_naming_it(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    name: str, other: str, what: str, missing: str,
) -> None:
    """The journal copied over the catalog once ended in "no such table: windows", exit 1."""
    ids = sorted(sim.corpus.ids)[:3]
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "ids", "ids": ids}])
    assert cli.main(["run", path]) == cli.OK
    state = tmp_path / "out" / "t" / ".state"
    journal = Journal(state / "journal.sqlite")  # as an interrupted run leaves it
    journal.open()
    journal.close()
    shutil.copy(state / other, state / name)
    capsys.readouterr()
    sent = len(sim.log.entries)
    assert cli.main(["run", path]) == cli.ABORTED
    line = one_error_line(capsys.readouterr().err)
    assert f"{state / name}: cannot open the {what}: not a {what}: no table {missing}" in line
    assert f"move {name}* aside" in line
    assert len(sim.log.entries) == sent


def test_an_output_folder_with_a_colon_in_its_name_is_a_folder(
    sim: SimulatorThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Arrow read a relative 'nightly:2026' as a URI: every run crashed once all was fetched."""
    ids = sorted(sim.corpus.ids)[:5]
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "ids", "ids": ids}])
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", path, "--output", "nightly:2026"]) == cli.OK
    [snapshot] = list_snapshots(tmp_path / "nightly:2026", "t")
    assert sorted(pq.read_table(snapshot / "articles").column("article_id").to_pylist()) == ids
    manifest = orjson.loads((snapshot / "manifest.json").read_bytes())
    assert manifest["files"]["articles/part-00000.parquet"]["rows"] == 5
    assert not (tmp_path / "nightly:2026" / "t" / ".staging").exists()


# ------------------------------------------------------------------ plan, simulate, demo


def test_plan_lists_ids_and_prices_the_run(sim: SimulatorThread, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    group = max({sim.corpus.group_of(i) for i in sim.corpus.ids} - {0},
                key=lambda g: sum(1 for i in sim.corpus.ids if sim.corpus.group_of(i) == g))
    n = sum(1 for i in sim.corpus.ids if sim.corpus.group_of(i) == group)
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "group", "group": group}],
                       http={**FAST_HTTP, "rate": {"requests": 1, "per": 1}})
    sim.log.clear()
    assert cli.main(["plan", path]) == cli.OK
    out = capsys.readouterr().out
    assert f"{n:>10,} ids" in out
    assert f"record details       {n:>10,}" in out
    assert f"stats totals         {3 * n:>10,}" in out
    assert "shared by the API and stats hosts" in out
    assert sim.log.count(host="stats") == 0  # plan only lists
    assert not (tmp_path / "out" / "t").exists() or not list_snapshots(tmp_path / "out", "t")


def test_plan_price_for_twenty_thousand_items() -> None:
    # the issue's own arithmetic: 20,000 items with two counters at 1 request/s
    seconds = (20_000 + 2 * 20_000) / 1.0
    assert console.duration(seconds) == "16.7 hours"


def test_simulate_prints_an_export_line_and_its_tokens_first_and_stops_on_sigint() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harvester", "simulate", "--items", "100000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        tokens = proc.stdout.readline() if proc.stdout else ""
        # ready to paste into another shell: every later command then talks to the simulator
        assert first.startswith("export FIGSHARE_API_URL=http://127.0.0.1:"), first
        urls = dict(pair.split("=", 1) for pair in first.split()[1:])
        assert set(urls) == {"FIGSHARE_API_URL", "FIGSHARE_STATS_URL", "FIGSHARE_DOWNLOAD_URL"}
        settings = SimSettings()
        for token in (settings.user_token, settings.admin_token, settings.stats_user,
                      settings.stats_password):
            assert token in tokens
        import urllib.request

        api = urls["FIGSHARE_API_URL"]
        with urllib.request.urlopen(f"{api}/articles?page_size=3") as resp:
            assert len(orjson.loads(resp.read())) == 3
        with urllib.request.urlopen(f"{urls['FIGSHARE_STATS_URL']}/total/views/article/1") as r:
            assert "totals" in orjson.loads(r.read())
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_demo_runs_from_a_fresh_output_dir(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harvester", "demo", "--output", str(tmp_path), "--items", "300"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    assert "status    complete" in proc.stdout
    assert "tables   articles" in proc.stdout
    snapshot = list_snapshots(tmp_path, "demo")[-1]
    assert (snapshot / "manifest.json").exists()


def test_plan_prices_timelines_and_split_breakdowns(sim: SimulatorThread, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ids = sorted(sim.corpus.ids)[:4]
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "ids", "ids": ids}],
                       stats={"counters": ["views"],
                              "timeline": {"granularity": "month", "start": "2020-01-01",
                                           "end": "2022-12-31", "counters": ["views", "downloads"]},
                              "breakdown": {"granularity": "day", "start": "2020-01-01",
                                            "end": "2022-12-31", "counters": ["views"]}})
    assert cli.main(["plan", path]) == cli.OK
    out = capsys.readouterr().out
    # a timeline is one request per counter; a 3-year daily breakdown is 3 one-year windows
    assert f"timelines/breakdowns {4 * (2 + 3):>10,}" in out
    assert f"stats totals         {4:>10,}" in out


def test_user_agent_names_the_harvester_its_version_and_the_contact(tmp_path: Path) -> None:
    seen: list[str] = []

    def routes(app: web.Application) -> None:
        async def article(request: web.Request) -> web.Response:
            seen.append(request.headers.get("User-Agent", ""))
            return web.json_response({"id": int(request.match_info["id"]), "files": []})

        async def total(request: web.Request) -> web.Response:
            seen.append(request.headers.get("User-Agent", ""))
            return web.json_response({"totals": 1})

        app.router.add_get("/v2/articles/{id}", article)
        app.router.add_get("/total/{counter}/article/{id}", total)

    with ThreadedApp(routes) as server:
        path = config_file(tmp_path, server.url + "/v2", server.url,
                           [{"kind": "ids", "ids": [7]}], contact="mailto:data@uni.example")
        assert cli.main(["run", path, "--quiet"]) == cli.OK
    from harvester import __version__

    assert len(seen) == 4
    assert set(seen) == {f"figshare-harvester/{__version__} "
                         "(bulk metadata harvester; mailto:data@uni.example)"}


def test_a_log_line_clears_the_status_line_first(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the live status line is cleared before a log line, so they never merge."""
    console.setup_logging(json_logs=False, quiet=False)
    monkeypatch.setattr(console, "_status_shown", True)  # a status line is on screen
    logging.getLogger("harvester.test").warning("a warning mid-run")
    err = capsys.readouterr().err
    assert err.startswith("\r\033[K") and err.rstrip().endswith("WARNING a warning mid-run")
    assert console._status_shown is False


def test_plan_shows_listing_progress_on_a_terminal(sim: SimulatorThread, tmp_path: Path) -> None:
    """Listing can take minutes before plan prints anything: a terminal sees it counting."""
    ids = sorted(sim.corpus.ids)
    group = max({sim.corpus.group_of(i) for i in ids} - {0},
                key=lambda g: sum(1 for i in ids if sim.corpus.group_of(i) == g))
    path = config_file(tmp_path, sim.api_url, sim.stats_url, [{"kind": "group", "group": group}],
                       http={**FAST_HTTP, "rate": {"requests": 4, "per": 1}, "page_size": 5})
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "harvester", "plan", path],
                            stdout=subprocess.PIPE, stderr=follower,
                            env={**os.environ, "TERM": "xterm"})
    os.close(follower)
    out, _ = proc.communicate(timeout=120)
    seen = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed its end
        while chunk := os.read(leader, 65536):
            seen += chunk
    os.close(leader)
    assert proc.returncode == cli.OK, seen
    assert b"\r\x1b[Klisting: " in seen and b" ids" in seen
    assert b"record details" in out
