"""`harvester doctor`: a few stated requests that check the live service against what the
harvester assumes (page window, X-Cursor, date bounds, 404s, /files, stats, tokens, OAI-PMH).

Only the assumptions the config relies on are probed, each request sent once (no retries, so
the budget stated before the first request holds), at the configured rate with the run's
credential scoping. What the harvester can adapt to (a smaller page window) is written to the
catalog, where later runs start from it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from harvester.catalog import Catalog
from harvester.client import Client, RetryPolicy
from harvester.config import Config
from harvester.errors import Blocked, RequestError, Unreachable
from harvester.fetch import is_missing_entity, stamp_now
from harvester.figshare import WINDOW, ListQuery, article_path, files_path, list_query
from harvester.partition import DAY, Limits, iso_second, parse_stamp
from harvester.pipeline import client_settings
from harvester.statsdepth import series_path

log = logging.getLogger("harvester.doctor")

BUDGET = 30  # requests one doctor run may send, at most
MISSING_ID = 999_999_999_999  # an article id no repository has reached (8 digits today)
OAI_TOKEN_LIFETIME = 3_600  # seconds a resumption token lives (NOTES §11)
WINDOW_WORDS = "max page reached"  # how Figshare words a refused page (NOTES §3.2)
NS = "{http://www.openarchives.org/OAI/2.0/}"
OK, DIFFERS, UNKNOWN = "ok", "differs", "unknown"
_NOT_LISTED = ("ids", "ids_file", "oai")  # source kinds with no list query to page


@dataclass
class Finding:
    """One assumption as probed: its verdict, the evidence, and what follows from it."""

    probe: str
    verdict: str
    evidence: str
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"probe": self.probe, "verdict": self.verdict, "evidence": self.evidence}
        return {**out, "note": self.note} if self.note else out


@dataclass
class Report:
    budget: int
    requests: int = 0
    findings: list[Finding] = field(default_factory=list)
    learned: dict[str, int] = field(default_factory=dict)  # endpoint -> page window stored

    @property
    def differs(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == DIFFERS]

    def as_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "requests": self.requests,
                "findings": [f.as_dict() for f in self.findings], "learned": self.learned,
                "differs": len(self.differs),
                "unknown": sum(f.verdict == UNKNOWN for f in self.findings)}

    def lines(self) -> list[str]:
        out = []
        for f in self.findings:
            out.append(f"{f.verdict:<8} {f.probe}: {f.evidence}")
            if f.note:
                out.append(f"{'':<8} -> {f.note}")
        for endpoint, items in self.learned.items():
            if items >= WINDOW:
                continue  # the documented window: nothing to tell
            out.append(f"learned  page window of {endpoint}: {items:,} items (in the catalog; "
                       "later runs page within it)")
        return out


@dataclass
class Answer:
    """One probe request as evidence: status, headers, parsed body or the error's summary."""

    status: int | None
    headers: Mapping[str, str]
    data: Any = None
    body: bytes = b""
    error: RequestError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def shown(self, detail: str = "") -> str:
        if self.error is not None:
            summary = self.error.body or self.error.reason
            return f"{self.status or self.error.reason} {summary[:100]}".strip()
        kind = self.headers.get("Content-Type", "").split(";")[0]
        return f"{self.status} {kind}" + (f": {detail}" if detail else "")


class _OverBudget(Exception):
    pass


# ---------------------------------------------------------------- what the config relies on


def list_queries(cfg: Config) -> list[ListQuery]:
    """The page-paged list queries the config's sources walk, one per endpoint."""
    seen: dict[str, ListQuery] = {}
    for source in cfg.sources:
        if source.kind in _NOT_LISTED:
            continue
        query = list_query(source.kind, source.params)
        if query.paging == "page":
            seen.setdefault(Limits.endpoint(query), query)
    return list(seen.values())


def _window_cost(page_size: int, first: bool) -> int:
    """The window's last page and the page past it, a bisection if the last is refused, and
    for the first endpoint page 1 too (its items serve the later probes)."""
    edge = max(WINDOW // page_size, 2)
    return 2 + first + (math.ceil(math.log2(edge - 1)) if edge > 2 else 0)


Step = tuple[str, int, Callable[[], Awaitable[list[Finding]]]]


class Doctor:
    """Probes one config's assumptions through one Client, within a stated budget."""

    def __init__(self, cfg: Config, client: Client, *, quick: bool = False) -> None:
        self.cfg, self.client, self.quick = cfg, client, quick
        self.api = cfg.api.url.rstrip("/")
        self.page_size = cfg.http.page_size
        self.limits = Limits(page_size=self.page_size)
        self.pages: dict[str, tuple[ListQuery, Answer]] = {}  # endpoint -> its page 1
        self.oai_id: int | None = None  # an id OAI-PMH listed, for configs without a list
        self.steps, self.skipped = self._plan()
        self.report = Report(budget=sum(cost for _, cost, _ in self.steps))

    def _plan(self) -> tuple[list[Step], list[Finding]]:
        cfg, steps, skipped = self.cfg, [], []
        wanted: list[Step] = []
        # the first endpoint's page 1 feeds the cursor and date probes: one that offers both
        queries = sorted(list_queries(cfg), key=lambda q: (not q.cursor, q.bound is None))
        windows: list[Step] = [(f"page window {Limits.endpoint(q)}",
                                _window_cost(self.page_size, not k),
                                functools.partial(self._window, q, first=not k))
                               for k, q in enumerate(queries)]
        wanted += windows[:1]  # the other endpoints' windows come after every other probe
        if queries and queries[0].cursor:
            wanted.append(("X-Cursor", 1, self._cursor))
        wanted.append(("missing-item 404", 1, self._missing))
        if not self.quick:
            if queries and queries[0].bound:
                wanted.append(("date bounds", 2, self._dates))
            if self._oai_params() is not None:
                wanted.append(("OAI-PMH", 2, self._oai))
            wanted.append(("/files paging", 1, self._files))
            if cfg.stats.counters:
                wanted.append(("stats totals", 1, self._totals))
            s = cfg.stats
            if s.institution and s.user and (s.method == "tops" or s.timeline or s.breakdown):
                wanted.append(("institution stats", 1, self._institution))
            if cfg.api.token:
                kinds = {src.kind for src in cfg.sources}
                cost = 1 + 2 * ("institution_articles" in kinds) + ("reviews" in kinds)
                wanted.append(("token scope", cost, self._token))
        wanted += windows[1:]
        spent = 0
        for step in wanted:
            if spent + step[1] <= BUDGET:
                steps.append(step)
                spent += step[1]
            else:
                skipped.append(Finding(step[0], UNKNOWN, "not probed",
                                       f"over the budget of {BUDGET} requests"))
        return steps, skipped

    async def run(self) -> Report:
        for name, _, probe in self.steps:
            try:
                self.report.findings += await probe()
            except _OverBudget:
                self.report.findings.append(Finding(name, UNKNOWN, "not probed",
                                                    "the budget ran out"))
        self.report.findings += self.skipped
        self.report.learned = dict(self.limits.windows)
        return self.report

    # -- one request ------------------------------------------------------------------------

    async def send(self, path: str, *, params: Mapping[str, Any] | None = None,
                   json: Any = None, headers: Mapping[str, str] | None = None,
                   base: str | None = None, expect: str = "json") -> Answer:
        if self.report.requests >= self.report.budget:
            raise _OverBudget
        self.report.requests += 1
        url = (base if base is not None else self.api) + path
        try:
            if json is not None:
                reply = await self.client.post(url, json=json, params=params, headers=headers)
            else:
                reply = await self.client.get(url, params=params, headers=headers,
                                              expect=expect)  # type: ignore[arg-type]
        except (Blocked, Unreachable):
            raise  # the host is gone for every probe: the command stops
        except RequestError as exc:
            return Answer(exc.status, {}, error=exc)
        return Answer(reply.status, reply.headers, reply.data, reply.body)

    async def page(self, q: ListQuery, extra: Mapping[str, Any],
                   headers: Mapping[str, str] | None = None) -> Answer:
        body = {**q.filters, **extra}
        if q.method == "POST":
            return await self.send(q.path, json=body, headers=headers)
        return await self.send(q.path, params=body, headers=headers)

    # -- the probes ---------------------------------------------------------------------------

    async def _window(self, q: ListQuery, *, first: bool) -> list[Finding]:
        name, ps = f"page window {Limits.endpoint(q)}", self.page_size
        listed = ps  # page 1 of a later endpoint is not asked: the page_size check is made once
        if first:
            one = await self.page(q, {"page": 1, "page_size": ps})
            if not one.ok:
                return [Finding(name, DIFFERS if one.status in (400, 422) else UNKNOWN,
                                f"page 1 with page_size={ps} -> {one.shown()}",
                                "lower http.page_size" if one.status in (400, 422) else "")]
            self.pages[Limits.endpoint(q)] = (q, one)
            listed = len(one.data) if isinstance(one.data, list) else 0
        edge = max(WINDOW // ps, 2)
        last = await self.page(q, {"page": edge, "page_size": ps})
        findings = []
        if last.ok and listed < ps and isinstance(last.data, list) and last.data:
            findings.append(Finding(f"page_size {Limits.endpoint(q)}", DIFFERS,
                                    f"asked {ps}, page 1 held {listed} while page {edge} "
                                    "still lists items",
                                    f"the server caps pages silently: set http.page_size: "
                                    f"{listed} or the walk ends after its first page"))
        if last.ok:
            past = await self.page(q, {"page": edge + 1, "page_size": ps})
            at = f"page {edge + 1} (offset {edge * ps:,}) -> {past.shown()}"
            if past.ok:
                self.limits.learn(q, WINDOW)
                findings.append(Finding(name, DIFFERS, f"{at}: served past {WINDOW:,} items",
                                        f"harmless: the harvester still pages {WINDOW:,} "
                                        "items, then continues another way"))
            elif _refused(past):
                self.limits.learn(q, WINDOW)
                words = WINDOW_WORDS in (past.error.body if past.error else "").lower()
                findings.append(Finding(name, OK if words else DIFFERS, at, "" if words else
                                        "refused in other words: the harvester takes any "
                                        "400/422 past page 1 as the window"))
            else:
                findings.append(Finding(name, UNKNOWN, at))
            return findings
        if not _refused(last):
            return [*findings, Finding(name, UNKNOWN, f"page {edge} -> {last.shown()}")]
        good, bad, refusal = 1, edge, last  # page 1 served, page `bad` refused
        while bad - good > 1:
            mid = (good + bad) // 2
            probe = await self.page(q, {"page": mid, "page_size": ps})
            if probe.ok:
                good = mid
            elif _refused(probe):
                bad, refusal = mid, probe
            else:
                return [*findings, Finding(name, UNKNOWN, f"page {mid} -> {probe.shown()}")]
        window = good * ps
        self.limits.learn(q, window)
        return [*findings, Finding(
            name, DIFFERS, f"page {bad} (offset {window:,}) -> {refusal.shown()}",
            f"the window is {window:,} items, not {WINDOW:,}: stored in the catalog, so later "
            "runs page within it instead of being refused")]

    async def _cursor(self) -> list[Finding]:
        name = "X-Cursor"
        q, first = next(((q, a) for q, a in self.pages.values() if q.cursor), (None, None))
        if q is None or first is None:
            return [Finding(name, UNKNOWN, "no list page to take a cursor from")]
        token = first.headers.get("X-Cursor", "").strip()
        if not token:
            return [Finding(name, DIFFERS, f"page 1 of {q.describe()} -> {first.shown()} "
                            "without an X-Cursor header",
                            "queries past the window continue by a moving date bound and "
                            "splits (more requests; nothing lost)")]
        nxt = await self.page(q, {"limit": self.page_size}, headers={"X-Cursor": token})
        before = {i.get(q.id_key) for i in first.data if isinstance(i, dict)}
        if not nxt.ok:
            return [Finding(name, DIFFERS, f"a cursor with limit -> {nxt.shown()}",
                            "the cursor is refused: queries past the window continue by a "
                            "moving date bound and splits")]
        items = nxt.data if isinstance(nxt.data, list) else []
        again = [i for i in items if isinstance(i, dict) and i.get(q.id_key) in before]
        if again:
            return [Finding(name, DIFFERS, nxt.shown(f"{len(again)} of {len(items)} items "
                                                     "repeat page 1"),
                            "the cursor restarts the list: the harvester stops it at the "
                            "repeated page and continues by date bound")]
        return [Finding(name, OK, nxt.shown(f"{len(items)} items after page 1, none repeated"))]

    async def _missing(self) -> list[Finding]:
        name = "missing-item 404"
        answer = await self.send(article_path(MISSING_ID))
        shown = f"GET /articles/{MISSING_ID} -> {answer.shown()}"
        if answer.status == 404 and answer.error is not None:
            if is_missing_entity(answer.error):  # type: ignore[arg-type]
                return [Finding(name, OK, shown)]
            return [Finding(name, DIFFERS, shown,
                            "not Figshare's JSON error: a gone item counts as failed "
                            "(404-unconfirmed), never as gone, so incremental runs cannot "
                            "record deletions; full runs are unaffected")]
        return [Finding(name, UNKNOWN, shown, "expected a 404")]

    def _known(self) -> tuple[ListQuery, dict[str, Any]] | None:
        """A listed item (from the first page of a query with a date bound if possible)."""
        for q, answer in sorted(self.pages.values(), key=lambda p: p[0].bound is None):
            items = [i for i in answer.data or [] if isinstance(i, dict) and i.get(q.id_key)]
            if items:
                return q, items[len(items) // 2]
        return None

    def _known_id(self) -> tuple[int, bool] | None:
        known = self._known()
        if known is not None:
            return int(known[1][known[0].id_key]), known[0].auth
        for source in self.cfg.sources:
            if source.kind == "ids":
                return int(source.params["ids"][0]), False
        return (self.oai_id, False) if self.oai_id is not None else None

    async def _dates(self) -> list[Finding]:
        name = "date bounds"
        pick = next(((q, a) for q, a in self.pages.values() if q.bound), None)
        if pick is None:
            return [Finding(name, UNKNOWN, "no listed page to take an item from")]
        q, answer = pick
        assert q.bound is not None
        dated: list[tuple[int, Any]] = sorted(
            (s, i.get(q.id_key)) for i in answer.data or [] if isinstance(i, dict)
            and (s := parse_stamp(i.get(q.bound.key))) is not None)
        if not dated:
            return [Finding(name, UNKNOWN, "no dated item on page 1")]
        # an item with an earlier one on its day shows a whole-day reading at once
        at = next((k for k in range(1, len(dated)) if dated[k][0] // DAY ==
                   dated[k - 1][0] // DAY and dated[k][0] > dated[k - 1][0]), len(dated) // 2)
        stamp, known = dated[at]
        base = {"order": q.bound.order, "order_direction": "asc", "page": 1,
                "page_size": self.page_size}
        seen = []
        for bound in (stamp, stamp + 1):
            ans = await self.page(q, {**base, q.bound.param: iso_second(bound)})
            if not ans.ok or not isinstance(ans.data, list):
                return [Finding(name, UNKNOWN, f"{q.bound.param}={iso_second(bound)} -> "
                                f"{ans.shown()}")]
            stamps = [s for i in ans.data if isinstance(i, dict)
                      and (s := parse_stamp(i.get(q.bound.key))) is not None]
            low = min(stamps, default=None)
            ids = {i.get(q.id_key) for i in ans.data if isinstance(i, dict)}
            shown = (f"{q.bound.param}={iso_second(bound)} -> {ans.status}: earliest listed "
                     f"{iso_second(low) if low is not None else '-'}, item {known} "
                     f"{'listed' if known in ids else 'not listed'}")
            seen.append((low, known in ids, shown))
            if low is not None and low < bound - bound % DAY:
                return [Finding(name, DIFFERS, shown, "the bound is ignored: sources walked "
                                "past the window by date are truncated")]
            if low is not None and low < bound:
                return [Finding(name, DIFFERS, shown, "read as a whole day: the harvester "
                                "sends day bounds and splits busy days (more requests)")]
        (_, first_in, shown), (_, second_in, shown2) = seen
        if first_in and not second_in:
            return [Finding(name, OK, f"{shown}; {shown2}")]
        if not first_in:
            return [Finding(name, DIFFERS, f"{shown} (exclusive)", "windows overlap by one "
                            "second, so an exclusive bound loses nothing")]
        return [Finding(name, UNKNOWN, f"{shown}; {shown2}")]

    async def _files(self) -> list[Finding]:
        known = self._known_id()
        if known is None:
            return [Finding("/files paging", UNKNOWN, "no item id to ask about")]
        aid, account = known
        ans = await self.send(files_path(aid, account=account),
                              params={"page": 1, "page_size": self.page_size})
        shown = f"GET {files_path(aid, account=account)} page 1 -> {ans.shown()}"
        if ans.ok and isinstance(ans.data, list):
            return [Finding("/files paging", OK, f"{shown}: {len(ans.data)} files")]
        return [Finding("/files paging", DIFFERS if ans.status else UNKNOWN, shown,
                        "records listing 10 or more files will miss their other files")]

    async def _totals(self) -> list[Finding]:
        known = self._known_id()
        if known is None:
            return [Finding("stats totals", UNKNOWN, "no item id to ask about")]
        s = self.cfg.stats
        prefix = f"/{s.institution}" if s.institution else ""
        path = f"{prefix}/total/{s.counters[0]}/article/{known[0]}"
        ans = await self.send(path, base=s.url.rstrip("/"))
        total = ans.data.get("totals") if isinstance(ans.data, dict) else None
        if ans.ok and isinstance(total, int) and not isinstance(total, bool):
            return [Finding("stats totals", OK, f"GET {path} -> {ans.shown(f'totals={total}')}")]
        return [Finding("stats totals", DIFFERS, f"GET {path} -> {ans.shown()}",
                        "expected {\"totals\": <int>}: every item's stats fail")]

    async def _institution(self) -> list[Finding]:
        s, name = self.cfg.stats, "institution stats"
        if s.method == "tops":
            path = f"/{s.institution}/top/{s.counters[0] if s.counters else 'views'}/article"
            ans = await self.send(path, params={"count": s.top_count}, base=s.url.rstrip("/"))
            top = ans.data.get("top") if isinstance(ans.data, dict) else None
            if ans.ok and isinstance(top, dict):
                return [Finding(name, OK, f"GET {path}?count={s.top_count} -> "
                                f"{ans.shown(f'{len(top)} ranked')}")]
            return [Finding(name, DIFFERS, f"GET {path}?count={s.top_count} -> {ans.shown()}",
                            "check stats.user/password and stats.top_count: the tops "
                            "ranking fails")]
        known = self._known_id()
        if known is None:
            return [Finding(name, UNKNOWN, "no item id to ask about")]
        path = series_path("timeline", "total", "views", "article", known[0], s.institution)
        ans = await self.send(path, base=s.url.rstrip("/"))
        if ans.ok:
            return [Finding(name, OK, f"GET {path} with Basic credentials -> {ans.shown()}")]
        return [Finding(name, DIFFERS, f"GET {path} with Basic credentials -> {ans.shown()}",
                        "institution timelines and breakdowns fail: check stats.user, "
                        "stats.password and stats.institution")]

    async def _token(self) -> list[Finding]:
        kinds = {src.kind for src in self.cfg.sources}
        out = []
        checks = [("/account/articles", {"page": 1, "page_size": 1})]
        if "institution_articles" in kinds:
            checks.append(("/account/institution/articles", {"page": 1, "page_size": 1}))
        if "reviews" in kinds:
            checks.append(("/account/institution/reviews", {"offset": 0, "limit": 1}))
        listed: Any = None
        for path, params in checks:
            ans = await self.send(path, params=params)
            verdict = OK if ans.ok else DIFFERS
            note = "" if ans.ok else "sources reading it fail: check api.token and its rights"
            out.append(Finding(f"token scope {path}", verdict, ans.shown(), note))
            if path.endswith("institution/articles") and ans.ok:
                listed = ans.data
        aid = (listed[0].get("id") if isinstance(listed, list) and listed
               and isinstance(listed[0], dict) else None)
        if isinstance(aid, int):
            ans = await self.send(article_path(aid, account=True))
            out.append(Finding("admin reads institution items", OK if ans.ok else DIFFERS,
                               f"GET /account/articles/{{id}} -> {ans.shown()}",
                               "" if ans.ok else "records of institution_articles sources "
                               "need impersonate: they fail"))
        return out

    def _oai_params(self) -> dict[str, str] | None:
        params = {"verb": "ListIdentifiers", "metadataPrefix": "oai_dc"}
        for source in self.cfg.sources:
            p = source.params
            if source.kind == "oai":
                return {**params, **{k: p[k] for k in ("set", "from", "until") if k in p}}
            if p.get("reconcile") == "oai":
                return {**params, "set": f"portal_{p['institution']}"}
        return None

    async def _oai(self) -> list[Finding]:
        params, stamps, base = self._oai_params() or {}, [], self.api + "/oai"
        pages, lifetime, size = 0, None, 0
        while pages < 2 and params:
            ans = await self.send("", params=params, base=base, expect="bytes")
            if not ans.ok:
                return [Finding("OAI-PMH", UNKNOWN, f"ListIdentifiers -> {ans.shown()}")]
            try:
                root = ET.fromstring(ans.body)
            except ET.ParseError as exc:
                return [Finding("OAI-PMH", DIFFERS, f"ListIdentifiers -> not XML: {exc}")]
            pages += 1
            error = root.find(f"{NS}error")
            if error is not None:
                return [Finding("OAI-PMH", UNKNOWN, f"ListIdentifiers {params.get('set', '')} "
                                f"-> error {error.get('code')}: {(error.text or '')[:80]}")]
            headers = root.findall(f"{NS}ListIdentifiers/{NS}header")
            size = size or len(headers)
            for h in headers[:1]:
                tail = (h.findtext(f"{NS}identifier") or "").rsplit("/", 1)[-1]
                self.oai_id = self.oai_id or (int(tail) if tail.isdigit() else None)
            stamps += [s for h in headers
                       if (s := parse_stamp(h.findtext(f"{NS}datestamp"))) is not None]
            token = root.find(f"{NS}ListIdentifiers/{NS}resumptionToken")
            params = {}
            if token is not None and (token.text or "").strip():
                expires = parse_stamp(token.get("expirationDate"))
                now = parse_stamp(root.findtext(f"{NS}responseDate"))
                if lifetime is None and expires is not None and now is not None:
                    lifetime = expires - now
                params = {"verb": "ListIdentifiers",
                          "resumptionToken": (token.text or "").strip()}
        if not size:
            return [Finding("OAI-PMH page size", UNKNOWN, "no header listed")]
        out = [Finding("OAI-PMH page size", OK, f"{size} headers on page 1")]
        if lifetime is None:
            out.append(Finding("OAI-PMH token lifetime", UNKNOWN, "no expirationDate"))
        else:
            long_enough = lifetime >= OAI_TOKEN_LIFETIME - 60
            out.append(Finding("OAI-PMH token lifetime", OK if long_enough else DIFFERS,
                               f"expirationDate - responseDate = {lifetime} s",
                               "" if long_enough else "tokens expire sooner: lists restart "
                               "more often (slower; unordered lists may end truncated)"))
        ordered = all(a <= b for a, b in itertools.pairwise(stamps))
        out.append(Finding("OAI-PMH datestamp order", OK if ordered else DIFFERS,
                           f"{len(stamps)} datestamps over {pages} pages "
                           f"{'ascending' if ordered else 'out of order'}",
                           "" if ordered else "an expired token restarts the list from the "
                           "source's `from`: OAI sources may end truncated"))
        return out


def _refused(answer: Answer) -> bool:
    return answer.error is not None and answer.status in (400, 422)


# ---------------------------------------------------------------- entry points


def announce(cfg: Config, budget: int, quick: bool) -> str:
    rate = cfg.http.rate
    seconds = budget * rate.per / rate.requests
    what = "quick checks" if quick else "doctor"
    return (f"{what}: at most {budget} requests to {cfg.api.url} at {rate.requests} per "
            f"{rate.per:g} s (about {seconds:.0f} s)")


async def run_doctor(cfg: Config, *, quick: bool = False,
                     said: Callable[[str], None] = print) -> Report:
    """Probe, then store the windows learned in the catalog; `said` gets the budget first."""
    Catalog(cfg.state_path() / "catalog.sqlite").close()  # unwritable: stop before a request
    settings = dataclasses.replace(client_settings(cfg), retry=RetryPolicy(attempts=1))
    async with Client(settings) as client:
        doctor = Doctor(cfg, client, quick=quick)
        said(announce(cfg, doctor.report.budget, quick))
        report = await doctor.run()
    if report.learned:
        catalog = Catalog(cfg.state_path() / "catalog.sqlite")
        try:
            catalog.set_windows(report.learned, stamp_now())
        finally:
            catalog.close()
    return report


def learned_windows(cfg: Config) -> dict[str, int]:
    """Page windows an earlier doctor stored for this harvest (none before the first)."""
    path = cfg.state_path() / "catalog.sqlite"
    if not path.exists():
        return {}
    catalog = Catalog(path)
    try:
        return catalog.windows()
    finally:
        catalog.close()
