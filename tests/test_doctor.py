"""`harvester doctor` against the simulator in each variant it must tell apart; requests are
counted from the simulator's log, never timed."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from harvester import cli
from harvester.catalog import Catalog
from harvester.doctor import BUDGET, Report
from harvester.simulator import SimulatorThread, ThreadedApp
from harvester.simulator.settings import SimSettings

FAST = {"rate": {"requests": 10_000, "per": 1}, "concurrency": 4,
        "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}}
OTHER_WORDS = "Pagination beyond the allowed window"


def config(tmp_path: Path, sim: SimulatorThread, sources: list[dict[str, Any]],
           **top: Any) -> str:
    body = {"name": "t", "api": {"url": sim.api_url, **top.pop("api", {})},
            "stats": {"url": sim.stats_url, "counters": [], **top.pop("stats", {})},
            "http": {**FAST, **top.pop("http", {})},
            "output": {"dir": str(tmp_path / "out")}, "sources": sources, **top}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def doctor(path: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()  # what came before is not the report
    code = cli.main(["doctor", path, "--json", "--quiet"])
    return code, orjson.loads(capsys.readouterr().out)


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {f["probe"]: f["verdict"] for f in report["findings"]}


def refused(sim: SimulatorThread) -> int:
    return sum(e.status == 400 for e in sim.log.entries)


ARTICLES = [{"kind": "articles"}]


def test_a_website_instead_of_the_api_is_never_said_to_hold(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """api.url pointed at a web page: every probe answers HTML, so nothing is known, and
    doctor says so with exit 3 instead of "everything holds"."""
    page = "<html><head><title>figshare - credit for all your research</title></head></html>"

    def routes(app: web.Application) -> None:
        async def html(request: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")
        app.router.add_route("*", "/{tail:.*}", html)

    with ThreadedApp(routes) as site:
        path = config(tmp_path, SimpleNamespace(api_url=site.url, stats_url=site.url),
                      ARTICLES, stats={"counters": ["views"]})
        capsys.readouterr()
        code = cli.main(["doctor", path])
        out = capsys.readouterr().out.splitlines()
        json_code, report = doctor(path, capsys)
    assert code == json_code == cli.PARTIAL
    assert out[-1].startswith("doctor: ") and out[-1].endswith(
        "0 differ, 6 could not be checked: nothing answered as Figshare does, is the URL "
        "right? (exit 3)")
    assert report["unknown"] == len(report["findings"]) == 6 and report["exit_code"] == 3
    assert not Report(budget=BUDGET).failed  # no probe asked: nothing was found wanting


def test_an_id_the_config_names_that_does_not_exist_is_not_a_service_difference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SimulatorThread(SimSettings(items=50, seed=3)) as sim:
        missing = max(sim.corpus.ids) + 1_000
        code, report = doctor(config(tmp_path, sim, [{"kind": "ids", "ids": [missing]}]),
                              capsys)
    files = next(f for f in report["findings"] if f["probe"] == "/files paging")
    assert files["verdict"] == "unknown" and f"is item {missing} there?" in files["evidence"]
    assert code == cli.OK and report["differs"] == 0


def test_the_documented_service_holds_within_the_stated_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SimulatorThread(SimSettings(items=1_500, seed=3)) as sim:
        path = config(tmp_path, sim, [*ARTICLES, {"kind": "oai", "set": "portal_0"}],
                      stats={"counters": ["views"]})
        code = cli.main(["doctor", path])
        out = capsys.readouterr().out.splitlines()
        seen = len(sim.log.entries)
    # the budget is said before the first request, and the log stays within it
    stated = int(out[0].split("at most ")[1].split()[0])
    assert out[0].startswith("doctor: at most") and stated <= BUDGET
    assert 0 < seen <= stated
    assert code == cli.OK, out
    assert out[-1] == f"doctor: {seen} requests; 0 differ, everything the config relies on holds"
    probes = {line.split(":")[0] for line in out if line.startswith("ok ")}
    assert probes == {f"ok       {p}" for p in (
        "page window GET /articles", "X-Cursor", "missing-item 404", "date bounds",
        "/files paging", "stats totals", "OAI-PMH page size", "OAI-PMH token lifetime",
        "OAI-PMH datestamp order")}


def test_a_smaller_window_in_other_words_is_learned_and_used_by_the_next_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = SimSettings(items=1_200, seed=4, window=1_000, window_message=OTHER_WORDS)
    with SimulatorThread(settings) as sim:
        http = {"page_size": 250}
        # a run that did not ask the doctor first: refused once, learns it for that run only
        blind = config(tmp_path / "blind", sim, ARTICLES, http=http)
        assert cli.main(["run", blind, "--quiet"]) == cli.OK
        blind_refused = refused(sim)
        sim.log.clear()

        path = config(tmp_path / "doc", sim, ARTICLES, http=http)
        code, report = doctor(path, capsys)
        assert len(sim.log.entries) == report["requests"] <= report["budget"] <= BUDGET
        assert code == cli.PARTIAL
        window = next(f for f in report["findings"] if f["probe"] == "page window GET /articles")
        assert window["verdict"] == "differs"
        assert OTHER_WORDS in window["evidence"] and "1,000 items" in window["note"]
        assert report["learned"] == {"GET /articles": 1_000}
        sim.log.clear()

        assert cli.main(["run", path, "--quiet"]) == cli.OK
        assert refused(sim) == 0 < blind_refused
        snapshot = tmp_path / "doc" / "out" / "t"
        manifest = orjson.loads(
            (snapshot / (snapshot / "LATEST").read_text().strip() / "manifest.json").read_bytes())
    assert manifest["ids"]["total"] == 1_200
    assert "refused" not in orjson.dumps(manifest["sources"]).decode()


@pytest.mark.parametrize(("knobs", "sources", "probe"), [
    ({"cursor": False}, ARTICLES, "X-Cursor"),
    ({"date_bounds": "day"}, ARTICLES, "date bounds"),
    ({"oai_order": "shuffled"}, [{"kind": "oai"}], "OAI-PMH datestamp order"),
    ({"html_404": True}, ARTICLES, "missing-item 404"),
])
def test_each_variant_differs_where_it_should_and_only_there(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], knobs: dict[str, Any],
        sources: list[dict[str, Any]], probe: str) -> None:
    with SimulatorThread(SimSettings(items=1_500, seed=5, **knobs)) as sim:
        code, report = doctor(config(tmp_path, sim, sources), capsys)
        assert len(sim.log.entries) == report["requests"] <= report["budget"] <= BUDGET
    found = verdicts(report)
    assert code == cli.PARTIAL
    assert {p for p, v in found.items() if v == "differs"} == {probe}
    assert all(v == "ok" for p, v in found.items() if p != probe), found
    differing = next(f for f in report["findings"] if f["probe"] == probe)
    assert differing["note"]  # says what follows: the harvester adapts, or what is at risk


def test_every_probe_of_a_rich_config_stays_within_thirty_and_shows_no_credential(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SimSettings(items=1_500, seed=6)
    monkeypatch.setenv("TOKEN", settings.admin_token)
    monkeypatch.setenv("STATS_USER", settings.stats_user)
    monkeypatch.setenv("STATS_PASSWORD", settings.stats_password)
    sources = [{"kind": "articles"}, {"kind": "search", "search_for": "data"},
               {"kind": "institution_articles"}, {"kind": "reviews"},
               {"kind": "institution", "institution": 1, "reconcile": "oai"}]
    with SimulatorThread(settings) as sim:
        path = config(tmp_path, sim, sources, api={"token": "${TOKEN}"},
                      stats={"counters": ["views"], "institution": "inst1",
                             "user": "${STATS_USER}", "password": "${STATS_PASSWORD}",
                             "method": "tops"})
        code, report = doctor(path, capsys)
        assert len(sim.log.entries) == report["requests"] <= report["budget"] <= BUDGET
    text = orjson.dumps(report).decode()
    for secret in (settings.admin_token, settings.stats_password):
        assert secret not in text
    found = verdicts(report)
    assert code == cli.OK, found
    assert {"token scope /account/articles", "token scope /account/institution/articles",
            "token scope /account/institution/reviews", "admin reads institution items",
            "institution stats", "page window POST /articles/search",
            "page window GET /account/institution/articles"} <= set(found)
    assert set(found.values()) <= {"ok", "unknown"}


@pytest.mark.parametrize(("admin_read", "verdict", "asked"), [
    ("documented", "ok", "?impersonate={owner}"),  # as the owner its review names
    ("account", "differs", " -> "),  # the service reads only the token's own items there
])
def test_admin_reads_are_probed_the_way_the_config_reads_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        admin_read: str, verdict: str, asked: str) -> None:
    settings = SimSettings(items=600, seed=6, admin_reads_any=False)
    monkeypatch.setenv("TOKEN", settings.admin_token)
    with SimulatorThread(settings) as sim:
        path = config(tmp_path, sim, [{"kind": "institution_articles"}],
                      api={"token": "${TOKEN}", "admin_read": admin_read})
        code, report = doctor(path, capsys)
        assert len(sim.log.entries) == report["requests"] <= report["budget"] <= BUDGET
    read = next(f for f in report["findings"] if f["probe"] == "admin reads institution items")
    assert read["verdict"] == verdict
    assert read["evidence"].startswith("GET /account/articles/{id}" + asked)
    assert code == (cli.OK if verdict == "ok" else cli.PARTIAL)


def test_doctor_quick_opens_every_run_and_the_run_pages_within_what_it_learned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = SimSettings(items=1_200, seed=4, window=1_000, window_message=OTHER_WORDS)
    with SimulatorThread(settings) as sim:
        path = config(tmp_path, sim, ARTICLES, http={"page_size": 250}, doctor="quick")
        report_file = tmp_path / "report.json"
        assert cli.main(["run", path, "--quiet", "--report", str(report_file)]) == cli.OK
        entries = list(sim.log.entries)
    run = orjson.loads(report_file.read_bytes())
    # the quick checks come first, one request at a time; the run after them is never refused
    checks = run["doctor"]["requests"]
    assert any(e.status == 400 for e in entries[:checks])
    assert all(e.status != 400 for e in entries[checks:])
    assert run["doctor"]["learned"] == {"GET /articles": 1_000}
    assert {f["probe"] for f in run["doctor"]["findings"]} == {
        "page window GET /articles", "X-Cursor", "missing-item 404"}
    assert run["doctor"]["requests"] <= run["doctor"]["budget"]


@pytest.mark.parametrize("value", ["full", "yes", "[quick]"])
def test_doctor_key_takes_quick_or_off_only(tmp_path: Path, value: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: t\nsources: [{{kind: articles}}]\ndoctor: {value}\n")
    assert cli.main(["validate", str(path)]) == cli.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "doctor" in err[0] and "quick" in err[0]


def test_a_catalog_that_cannot_store_what_was_learned_still_shows_the_findings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only or locked catalog once made doctor end in an internal error after its
    requests: the findings are shown, then one line names the file (exit 5)."""
    with SimulatorThread(SimSettings(items=300, seed=3)) as sim:
        path = config(tmp_path, sim, ARTICLES)
        catalog = tmp_path / "out" / "t" / ".state" / "catalog.sqlite"
        Catalog(catalog).close()
        holder = sqlite3.connect(catalog, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer: doctor may read, not write
        try:
            code = cli.main(["doctor", path, "--json"])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        out, err = capsys.readouterr()
        report = orjson.loads(out)
        assert code == report["exit_code"] == cli.ABORTED
        assert report["learned"] and verdicts(report)["page window GET /articles"] == "ok"
        said = f"{catalog}: cannot store the page windows learned: database is locked"
        assert report["unsaved"] == said
        assert next(line for line in err.splitlines() if " ERROR " in line).endswith(said)
        assert "internal error" not in err
        assert doctor(path, capsys)[0] == cli.OK  # unlocked: stored
    with closing(Catalog(catalog)) as stored:
        assert stored.windows() == report["learned"]


@pytest.mark.parametrize("token", ["user", "wrong"])
def test_the_token_is_judged_only_by_a_refusal_and_evidence_is_the_errors_own_words(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        token: str) -> None:
    """A stats host holding the shared budget by Retry-After keeps the token-scope request from
    being sent: that says nothing of the token (unknown, in the error's words, not "retry-after
    retry-after ... check api.token"); a 401 still says the token is refused."""
    def routes(app: web.Application) -> None:
        async def slow(request: web.Request) -> web.Response:
            return web.json_response({"message": "slow down"}, status=503,
                                     headers={"Retry-After": "100000"})
        app.router.add_route("*", "/{tail:.*}", slow)

    settings = SimSettings(items=300, seed=3)
    monkeypatch.setenv("TOKEN", settings.user_token if token == "user" else "not-a-token")
    with SimulatorThread(settings) as sim, ThreadedApp(routes) as stats:
        path = config(tmp_path, SimpleNamespace(api_url=sim.api_url, stats_url=stats.url),
                      [{"kind": "account"}], api={"token": "${TOKEN}"},
                      stats={"counters": ["views"]})
        code, report = doctor(path, capsys)
    found = {f["probe"]: f for f in report["findings"]}
    scope = found["token scope /account/articles"]
    assert code == cli.PARTIAL
    if token == "wrong":  # refused before any stats request: the token is what differs
        assert scope["verdict"] == "differs" and scope["evidence"].startswith("401 ")
        assert "check api.token" in scope["note"]
        return
    assert "-> 503 Service Unavailable: " in found["stats totals"]["evidence"]
    assert scope["verdict"] == "unknown" and "note" not in scope  # no word on the token
    assert scope["evidence"].startswith("retry-after: ") and "by Retry-After" in \
        scope["evidence"]
