"""`harvester doctor`: probe, in a budget stated before the first request, the live service's
behaviour that the config relies on; a smaller page window it reveals goes to the catalog."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from xml.etree import ElementTree as ET

from harvester import figshare
from harvester.catalog import Catalog
from harvester.client import Client, RetryPolicy
from harvester.config import Config
from harvester.errors import Blocked, NotFound, OutputError, RequestError, Unreachable
from harvester.fetch import is_missing_entity
from harvester.figshare import WINDOW, ListQuery, article_path, list_query
from harvester.oaipmh import NS, portal_set
from harvester.partition import DAY, Limits, iso_second, parse_stamp
from harvester.periods import stamp_now
from harvester.pipeline import client_settings
from harvester.statsdepth import series_path

BUDGET = 30  # requests one doctor run may send, at most
MISSING_ID = 999_999_999_999  # an article id no repository has reached (8 digits today)
OAI_TOKEN_LIFETIME = 3_600  # seconds a resumption token lives (NOTES §11)
WINDOW_WORDS = "max page reached"  # how Figshare words a refused page (NOTES §3.2)
OK, DIFFERS, UNKNOWN = "ok", "differs", "unknown"
ADMIN_KINDS = ("institution_articles", "reviews")
BY_DATE = ("queries past the window continue by a moving date bound and splits (more requests; "
           "nothing lost)")


@dataclass
class Finding:
    """One assumption as probed: its verdict, the evidence, and what follows from it."""

    probe: str
    verdict: str
    evidence: str
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


def judge(probe: str, holds: bool | None, evidence: str, note: str = "") -> Finding:
    """ok when the assumption `holds`; else differs (unknown when None), with `note`."""
    verdict = UNKNOWN if holds is None else OK if holds else DIFFERS
    return Finding(probe, verdict, evidence, note if holds is False else "")


@dataclass
class Report:
    budget: int
    requests: int = 0
    findings: list[Finding] = field(default_factory=list)
    learned: dict[str, int] = field(default_factory=dict)  # endpoint -> page window stored
    unsaved: str = ""  # why `learned` could not be stored (said after the findings)

    @property
    def differs(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == DIFFERS]

    @property
    def unknown(self) -> int:
        return sum(f.verdict == UNKNOWN for f in self.findings)

    @property
    def failed(self) -> bool:
        """Something differs, or nothing could be checked (a wrong URL answers no probe)."""
        return bool(self.differs) or 0 < self.unknown == len(self.findings)

    def summary(self) -> str:
        said = f"doctor: {self.requests} requests; {len(self.differs)} differ"
        if self.unknown:
            said += f", {self.unknown} could not be checked"
        if self.failed:
            return said + (" (exit 3)" if self.differs else ": nothing answered as Figshare "
                           "does, is the URL right? (exit 3)")
        return said + (", the rest holds" if self.unknown else
                       ", everything the config relies on holds")

    def as_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "requests": self.requests,
                "findings": [f.as_dict() for f in self.findings], "learned": self.learned,
                "differs": len(self.differs), "unknown": self.unknown,
                **({"unsaved": self.unsaved} if self.unsaved else {})}

    def lines(self) -> list[str]:
        out = []
        for f in self.findings:
            out.append(f"{f.verdict:<8} {f.probe}: {f.evidence}")
            if f.note:
                out.append(f"{'':<8} -> {f.note}")
        out += [f"learned  page window of {endpoint}: {items:,} items (in the catalog; later "
                "runs page within it)" for endpoint, items in self.learned.items()
                if items < WINDOW]  # the documented window: nothing to tell
        return out


class KnownItem(NamedTuple):
    """An item to probe with, how fetch reads it, and whether a listing showed it exists."""

    id: int
    account: bool  # read at /account/...
    listed: bool  # False: named by the config or OAI-PMH, and may not exist


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

    @property
    def refused(self) -> bool:
        """Refused the way a page past the window is."""
        return self.error is not None and self.status in (400, 422)

    @property
    def items(self) -> list[dict[str, Any]]:
        return [i for i in self.data if isinstance(i, dict)] if isinstance(self.data, list) else []

    def shown(self, detail: str = "") -> str:
        if self.error is not None:  # its one-line message, less the request it repeats
            return str(self.error).split(" -> ", 1)[-1][:240]
        kind = self.headers.get("Content-Type", "").split(";")[0]
        return f"{self.status} {kind}" + (f": {detail}" if detail else "")


def served(answer: Answer, *refusals: int) -> bool | None:
    """True if served, False if refused with one of `refusals`; None (unknown) otherwise: a
    5xx, a lost connection or a request never sent says nothing about the credentials."""
    return True if answer.ok else False if answer.status in refusals else None


def list_queries(cfg: Config) -> list[ListQuery]:
    """The page-paged list queries the config's sources walk, one per endpoint."""
    seen: dict[str, ListQuery] = {}
    for source in cfg.sources:
        if source.kind not in ("ids", "ids_file", "oai"):  # those have no list to page
            query = list_query(source.kind, source.params)
            if query.paging == "page":
                seen.setdefault(Limits.endpoint(query), query)
    return list(seen.values())


def _window_cost(page_size: int, first: bool) -> int:
    """The window's last page, the page past it, a bisection if the last is refused, and for
    the first endpoint page 1 (its items serve the later probes)."""
    edge = max(WINDOW // page_size, 2)
    return 2 + first + (math.ceil(math.log2(edge - 1)) if edge > 2 else 0)


class Doctor:
    """Probes one config's assumptions through one Client; each probe's cost is an upper
    bound, so the budget stated before the first request holds."""

    def __init__(self, cfg: Config, client: Client, *, quick: bool = False) -> None:
        self.cfg, self.client, self.quick = cfg, client, quick
        self.api = cfg.api.url.rstrip("/")
        self.page_size = cfg.http.page_size
        self.limits = Limits(page_size=self.page_size)
        self.first: tuple[ListQuery, Answer] | None = None  # page 1 of the first endpoint
        self.oai_id: int | None = None  # an id OAI-PMH listed, for configs without a list
        self.probes: list[Callable[[], Awaitable[list[Finding]]]] = []
        self.skipped: list[Finding] = []
        self.report = Report(budget=self._plan())

    def _plan(self) -> int:
        """Choose the probes that fit in BUDGET; the requests they may send."""
        s, full = self.cfg.stats, not self.quick
        # the first endpoint's page 1 feeds the cursor and date probes: one that offers both
        queries = sorted(list_queries(self.cfg), key=lambda q: (not q.cursor, q.bound is None))
        head = queries[0] if queries else None
        windows = [(f"page window {Limits.endpoint(q)}", _window_cost(self.page_size, not k),
                    functools.partial(self._window, q, first=not k), True)
                   for k, q in enumerate(queries)]
        admin, token = self._token_queries()
        probes: list[tuple[str, int, Any, bool]] = [
            ("X-Cursor", 1, self._cursor, bool(head and head.cursor)),
            ("missing-item 404", 1, self._missing, True),
            ("date bounds", 2, self._dates, full and bool(head and head.bound)),
            ("OAI-PMH", 2, self._oai, full and self._oai_params() is not None),
            ("/files paging", 1, self._files, full),
            ("stats totals", 1, self._totals, full and bool(s.counters)),
            ("institution stats", 1, self._institution, full and bool(
                s.institution and s.user and (s.method == "tops" or s.timeline or s.breakdown))),
            ("token scope", len(token) + admin, self._token, full and bool(token)),
        ]
        spent = 0
        # the other endpoints' windows come after every other probe
        for name, cost, probe, wanted in [*windows[:1], *probes, *windows[1:]]:
            if wanted and spent + cost <= BUDGET:
                self.probes.append(probe)
                spent += cost
            elif wanted:
                self.skipped.append(Finding(name, UNKNOWN, "not probed",
                                            f"over the budget of {BUDGET} requests"))
        return spent

    async def run(self) -> Report:
        for probe in self.probes:
            self.report.findings += await probe()
        self.report.findings += self.skipped
        self.report.learned = dict(self.limits.windows)
        return self.report

    async def send(self, path: str, *, params: Mapping[str, Any] | None = None,
                   json: Any = None, headers: Mapping[str, str] | None = None,
                   base: str | None = None, expect: str = "json") -> Answer:
        """One request, sent once: a refusal is evidence, a lost host stops the command."""
        assert self.report.requests < self.report.budget, "a probe's cost was understated"
        self.report.requests += 1
        url = (base if base is not None else self.api) + path
        try:
            if json is not None:
                reply = await self.client.post(url, json=json, params=params, headers=headers)
            else:
                reply = await self.client.get(url, params=params, headers=headers,
                                              expect=expect)  # type: ignore[arg-type]
        except (Blocked, Unreachable):
            raise
        except RequestError as exc:
            return Answer(exc.status, {}, error=exc)
        return Answer(reply.status, reply.headers, reply.data, reply.body)

    async def page(self, q: ListQuery, number: int | None, extra: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> Answer:
        """Page `number` of `q`, or with None what `extra` alone asks (a cursor's limit)."""
        body = {**q.filters, **(extra or {})}
        if number is not None:
            body.update(page=number, page_size=self.page_size)
        if q.method == "POST":
            return await self.send(q.path, json=body, headers=headers)
        return await self.send(q.path, params=body, headers=headers)

    async def _window(self, q: ListQuery, *, first: bool) -> list[Finding]:
        endpoint, ps = Limits.endpoint(q), self.page_size
        name, out, listed = f"page window {endpoint}", [], ps
        if first:  # later endpoints skip page 1: the page_size check is made once
            one = await self.page(q, 1)
            if not one.ok:
                return [Finding(name, DIFFERS if one.refused else UNKNOWN,
                                f"page 1 with page_size={ps} -> {one.shown()}",
                                "lower http.page_size" if one.refused else "")]
            self.first = (q, one)
            listed = len(one.items)
        edge = max(WINDOW // ps, 2)
        last = await self.page(q, edge)
        if last.ok and listed < ps and last.items:
            out.append(Finding(
                f"page_size {endpoint}", DIFFERS,
                f"asked {ps}, page 1 held {listed} while page {edge} still lists items",
                f"the server caps pages silently: set http.page_size: {listed} or the walk "
                "ends after its first page"))
        if last.ok:
            past = await self.page(q, edge + 1)
            at = f"page {edge + 1} (offset {edge * ps:,}) -> {past.shown()}"
            if not past.ok and not past.refused:
                return [*out, Finding(name, UNKNOWN, at)]
            self.limits.learn(q, WINDOW)
            if past.ok:
                return [*out, Finding(name, DIFFERS, f"{at}: served past {WINDOW:,} items",
                                      f"harmless: the harvester still pages {WINDOW:,} items, "
                                      "then continues another way")]
            worded = WINDOW_WORDS in (past.error.body if past.error else "").lower()
            return [*out, judge(name, worded, at, "refused in other words: the harvester takes "
                                "any 400/422 past page 1 as the window")]
        if not last.refused:
            return [*out, Finding(name, UNKNOWN, f"page {edge} -> {last.shown()}")]
        good, bad, refusal = 1, edge, last  # page 1 served, page `bad` refused
        while bad - good > 1:
            mid = (good + bad) // 2
            probe = await self.page(q, mid)
            if probe.ok:
                good = mid
            elif probe.refused:
                bad, refusal = mid, probe
            else:
                return [*out, Finding(name, UNKNOWN, f"page {mid} -> {probe.shown()}")]
        window = good * ps
        self.limits.learn(q, window)
        return [*out, Finding(
            name, DIFFERS, f"page {bad} (offset {window:,}) -> {refusal.shown()}",
            f"the window is {window:,} items, not {WINDOW:,}: stored in the catalog, so later "
            "runs page within it instead of being refused")]

    async def _cursor(self) -> list[Finding]:
        name = "X-Cursor"
        if self.first is None:
            return [Finding(name, UNKNOWN, "no list page to take a cursor from")]
        q, first = self.first
        token = first.headers.get("X-Cursor", "").strip()
        if not token:
            return [Finding(name, DIFFERS, f"page 1 of {q.describe()} -> {first.shown()} "
                            "without an X-Cursor header", BY_DATE)]
        nxt = await self.page(q, None, {"limit": self.page_size}, {"X-Cursor": token})
        if not nxt.ok:
            return [Finding(name, DIFFERS, f"a cursor with limit -> {nxt.shown()}",
                            f"the cursor is refused: {BY_DATE}")]
        before = {i.get(q.id_key) for i in first.items}
        again = sum(i.get(q.id_key) in before for i in nxt.items)
        return [judge(name, not again, nxt.shown(f"{again} of {len(nxt.items)} items after "
                                                 "page 1 repeat it"),
                      f"the cursor restarts the list: the harvester stops it there; {BY_DATE}")]

    async def _missing(self) -> list[Finding]:
        answer = await self.send(article_path(MISSING_ID))
        shown = f"GET {article_path(MISSING_ID)} -> {answer.shown()}"
        if not isinstance(answer.error, NotFound):
            return [Finding("missing-item 404", UNKNOWN, shown, "expected a 404")]
        return [judge("missing-item 404", is_missing_entity(answer.error), shown,
                      "not Figshare's JSON error: a gone item counts as failed "
                      "(404-unconfirmed), never as gone, so incremental runs cannot record "
                      "deletions; full runs are unaffected")]

    def _known_id(self) -> KnownItem | None:
        """An item page 1 listed (under api.admin_read: documented, a public institution item
        is read at the public path); else one the config or OAI-PMH names."""
        if self.first is not None:
            q, answer = self.first
            public = (self.cfg.api.admin_read == "documented"
                      and q.path.startswith("/account/institution/"))
            items = [i for i in answer.items
                     if i.get(q.id_key) and (i.get("published_date") or not public)]
            if items:
                return KnownItem(int(items[len(items) // 2][q.id_key]), q.auth and not public, True)
        for source in self.cfg.sources:
            if source.kind == "ids":
                return KnownItem(int(source.params["ids"][0]), False, False)
        return KnownItem(self.oai_id, False, False) if self.oai_id is not None else None

    async def _dates(self) -> list[Finding]:
        name = "date bounds"
        by = self.first[0].bound if self.first else None
        if self.first is None or by is None:
            return [Finding(name, UNKNOWN, "no listed page to take an item from")]
        q, answer = self.first
        key, param = by.key, by.param
        dated: list[tuple[int, Any]] = sorted(
            (s, i.get(q.id_key)) for i in answer.items
            if (s := parse_stamp(i.get(key))) is not None)
        if not dated:
            return [Finding(name, UNKNOWN, "no dated item on page 1")]
        # an item with an earlier one on its day shows a whole-day reading at once
        at = next((k for k in range(1, len(dated)) if dated[k][0] // DAY ==
                   dated[k - 1][0] // DAY and dated[k][0] > dated[k - 1][0]), len(dated) // 2)
        stamp, known = dated[at]
        listed, shown = [], []
        for bound in (stamp, stamp + 1):
            since = iso_second(bound)
            ans = await self.page(q, 1, {"order": by.order, "order_direction": "asc", param: since})
            if not isinstance(ans.data, list):
                return [Finding(name, UNKNOWN, f"{param}={since} -> {ans.shown()}")]
            low = min((s for i in ans.items if (s := parse_stamp(i.get(key))) is not None),
                      default=None)
            listed.append(known in {i.get(q.id_key) for i in ans.items})
            shown.append(f"{param}={since} -> {ans.status}: earliest listed "
                         f"{iso_second(low) if low is not None else '-'}, item {known} "
                         f"{'listed' if listed[-1] else 'not listed'}")
            if low is not None and low < bound:
                return [Finding(name, DIFFERS, shown[-1], "read as a whole day: the harvester "
                                "sends day bounds and splits busy days (more requests)"
                                if low >= bound - bound % DAY else "the bound is ignored: "
                                "sources walked past the window by date are truncated")]
        if not listed[0]:
            return [Finding(name, DIFFERS, f"{shown[0]} (exclusive)", "windows overlap by one "
                            "second, so an exclusive bound loses nothing")]
        return [judge(name, None if listed[1] else True, "; ".join(shown))]

    async def _files(self) -> list[Finding]:
        known = self._known_id()
        if known is None:
            return [Finding("/files paging", UNKNOWN, "no item id to ask about")]
        path = figshare.files_path(known.id, account=known.account)
        ans = await self.send(path, params={"page": 1, "page_size": self.page_size})
        shown = f"GET {path} page 1 -> {ans.shown()}"
        if isinstance(ans.data, list):
            return [Finding("/files paging", OK, f"{shown}: {len(ans.data)} files")]
        if ans.status == 404 and not known.listed:  # an id the config names may not exist
            return [Finding("/files paging", UNKNOWN, f"{shown} (is item {known.id} there?)")]
        return [Finding("/files paging", DIFFERS if ans.status else UNKNOWN, shown,
                        "records listing 10 or more files will miss their other files")]

    async def _totals(self) -> list[Finding]:
        known = self._known_id()
        if known is None:
            return [Finding("stats totals", UNKNOWN, "no item id to ask about")]
        s = self.cfg.stats
        path = figshare.stats_total_path(s.counters[0], "article", known.id, s.institution)
        ans = await self.send(path, base=s.url.rstrip("/"))
        total = ans.data.get("totals") if isinstance(ans.data, dict) else None
        holds = ans.ok and isinstance(total, int) and not isinstance(total, bool)
        return [judge("stats totals", holds,
                      f"GET {path} -> {ans.shown(f'totals={total}' if holds else '')}",
                      "expected {\"totals\": <int>}: every item's stats fail")]

    async def _institution(self) -> list[Finding]:
        s, name = self.cfg.stats, "institution stats"
        if s.method == "tops":
            path = f"/{s.institution}/top/{s.counters[0] if s.counters else 'views'}/article"
            ans = await self.send(path, params={"count": s.top_count}, base=s.url.rstrip("/"))
            top = ans.data.get("top") if isinstance(ans.data, dict) else None
            holds = ans.ok and isinstance(top, dict)
            return [judge(name, holds, f"GET {path}?count={s.top_count} -> "
                          + ans.shown(f"{len(top)} ranked" if isinstance(top, dict) else ""),
                          "check stats.user/password and stats.top_count: the tops ranking "
                          "fails")]
        known = self._known_id()
        if known is None:
            return [Finding(name, UNKNOWN, "no item id to ask about")]
        path = series_path("timeline", "total", "views", "article", known.id, s.institution)
        ans = await self.send(path, base=s.url.rstrip("/"))
        return [judge(name, ans.ok, f"GET {path} with Basic credentials -> {ans.shown()}",
                      "institution timelines and breakdowns fail: check stats.user, "
                      "stats.password and stats.institution")]

    def _token_queries(self) -> tuple[bool, list[ListQuery]]:
        """Whether admin sources read institution items, and the listings the token must answer
        (the reviews too under api.admin_read: documented: they name a private item's owner)."""
        if not self.cfg.api.token:
            return False, []
        kinds = {src.kind for src in self.cfg.sources}
        admin = any(kind in kinds for kind in ADMIN_KINDS)
        documented = admin and self.cfg.api.admin_read == "documented"
        return admin, [list_query("account", {"listing": "list"}), *(
            list_query(kind, {}) for kind in ADMIN_KINDS
            if kind in kinds or (kind == "reviews" and documented))]

    async def _token(self) -> list[Finding]:
        admin, queries = self._token_queries()
        out, listed = [], []
        for q in queries:
            one = {"offset": 0, "limit": 1} if q.paging == "offset" else {"page": 1,
                                                                          "page_size": 1}
            ans = await self.send(q.path, params=one)
            out.append(judge(f"token scope {q.path}", served(ans, 401, 403), ans.shown(),
                             "sources reading it fail: check api.token and its rights"))
            if q.path != "/account/articles":  # the token's own items are no institution's
                listed += [(q, i) for i in ans.items[:1] if figshare.valid_id(i.get(q.id_key))]
        if not admin:
            return out
        # read an institution item the way fetch will: as its owner, or plain /account/...
        documented = self.cfg.api.admin_read == "documented"
        if documented:
            listed = [(q, i) for q, i in listed if figshare.valid_id(i.get("account_id"))]
        if not listed:
            return [*out, Finding("admin reads institution items", UNKNOWN,
                                  "no institution item listed to read")]
        q, item = listed[0]
        owner = {"impersonate": item["account_id"]} if documented else None
        ans = await self.send(article_path(item[q.id_key], account=True), params=owner)
        shown = "GET /account/articles/{id}" + ("?impersonate={owner}" if documented else "")
        return [*out, judge("admin reads institution items", served(ans, 401, 403, 404),
                            f"{shown} -> {ans.shown()}",
                            "private items of admin sources cannot be read as their owner: they "
                            "fail" if documented else "the service refuses api.admin_read: "
                            "account: use documented")]

    def _oai_params(self) -> dict[str, str] | None:
        params = {"verb": "ListIdentifiers", "metadataPrefix": "oai_dc"}
        for source in self.cfg.sources:
            p = source.params
            if source.kind == "oai":
                return {**params, **{k: p[k] for k in ("set", "from", "until") if k in p}}
            if p.get("reconcile") == "oai":
                return {**params, "set": portal_set(int(p["institution"]))}
        return None

    async def _oai(self) -> list[Finding]:
        params, stamps, pages, lifetime, size = self._oai_params() or {}, [], 0, None, 0
        while pages < 2 and params:
            ans = await self.send("", params=params, base=self.api + "/oai", expect="bytes")
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
            text = (token.text or "").strip() if token is not None else ""
            params = {"verb": "ListIdentifiers", "resumptionToken": text} if text else {}
            if token is not None and text and lifetime is None:
                expires = parse_stamp(token.get("expirationDate"))
                now = parse_stamp(root.findtext(f"{NS}responseDate"))
                lifetime = expires - now if expires is not None and now is not None else None
        if not size:
            return [Finding("OAI-PMH page size", UNKNOWN, "no header listed")]
        ordered = all(a <= b for a, b in itertools.pairwise(stamps))
        return [Finding("OAI-PMH page size", OK, f"{size} headers on page 1"),
                judge("OAI-PMH token lifetime",
                      None if lifetime is None else lifetime >= OAI_TOKEN_LIFETIME - 60,
                      "no expirationDate" if lifetime is None
                      else f"expirationDate - responseDate = {lifetime} s",
                      "" if lifetime is None else "tokens expire sooner: lists restart more "
                      "often (slower; unordered lists may end truncated)"),
                judge("OAI-PMH datestamp order", ordered, f"{len(stamps)} datestamps over "
                      f"{pages} pages {'ascending' if ordered else 'out of order'}",
                      "an expired token restarts the list from the source's `from`: OAI "
                      "sources may end truncated")]


async def run_doctor(cfg: Config, *, quick: bool = False,
                     said: Callable[[str], None] = print) -> Report:
    """Probe, then store the windows learned in the catalog; `said` gets the budget first."""
    Catalog(cfg.state_path() / "catalog.sqlite").close()  # unwritable: stop before a request
    settings = dataclasses.replace(client_settings(cfg), retry=RetryPolicy(attempts=1))
    rate = cfg.http.rate
    async with Client(settings) as client:
        doctor = Doctor(cfg, client, quick=quick)
        budget = doctor.report.budget
        said(f"{'quick checks' if quick else 'doctor'}: at most {budget} requests to "
             f"{cfg.api.url} at {rate.requests} per {rate.per:g} s "
             f"(about {budget * rate.per / rate.requests:.0f} s)")
        report = await doctor.run()
    path = cfg.state_path() / "catalog.sqlite"
    try:
        if report.learned:
            with closing(Catalog(path)) as catalog:
                catalog.set_windows(report.learned, stamp_now())
    except (OutputError, sqlite3.Error) as exc:  # read-only, locked: the findings still count
        report.unsaved = str(exc) if isinstance(exc, OutputError) else \
            f"{path}: cannot store the page windows learned: {exc}"
    return report


def learned_windows(cfg: Config) -> dict[str, int]:
    """Page windows an earlier doctor stored for this harvest (none before the first)."""
    path = cfg.state_path() / "catalog.sqlite"
    if not path.exists():
        return {}
    with closing(Catalog(path)) as catalog:
        return catalog.windows()
