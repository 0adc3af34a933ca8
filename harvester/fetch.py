"""Per-item requests (record, files, versions, stats, downloads) -> an Outcome for the journal.

Only the record's JSON 404 says an item is gone; a failing secondary request fails that part.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson

from harvester.budget import count_estimated
from harvester.catalog import Validators, read_validators
from harvester.client import Client, Reply
from harvester.config import ACCOUNT_KINDS, Config
from harvester.downloads import Downloader
from harvester.errors import Abort, AuthError, BadResponse, GiveUp, NotFound, RequestError
from harvester.figshare import (
    MAX_FILE_PAGES,
    MAX_VERSIONS,
    article_path,
    files_may_be_truncated,
    files_path,
    valid_id,
)
from harvester.journal import DONE, FAILED, FULL, GONE, STATS_ONLY, Journal, Outcome
from harvester.journalrows import bodies
from harvester.partition import parse_stamp
from harvester.periods import stamp_now, utc_now
from harvester.policy import http_date
from harvester.sources import SourceReport
from harvester.statsdepth import StatsFetcher

T = TypeVar("T")
REFUSED_IN_A_ROW = 20  # record reads refused with no success between: the token was revoked


class ItemFetcher:
    """Fetches what the config asks about one article; one fetcher serves a whole run.

    Never raises for one item's trouble (that becomes the Outcome's error), only Abort: the host
    or the credentials are gone. `requests` counts what it sent, by kind, for the manifest.
    """

    def __init__(self, cfg: Config, client: Client, *, catalog: Path | None = None) -> None:
        self.cfg = cfg
        self.client = client
        # an incremental run's catalog: known records are asked for conditionally
        self.catalog = catalog if cfg.incremental and cfg.incremental.conditional else None
        self.not_modified = 0  # records that answered 304
        self.refused = 0  # 304s the evidence contradicted: asked for again unconditionally
        self.listed: dict[int, int] = {}  # tonight's listed modified_date per id (note_listing)
        self.undated = 0  # sources whose listing dates were not kept: no 304 of theirs trusted
        # account sources list the token owner's items; admin sources others' (see _record)
        self.account_mask = sum(1 << i for i, s in enumerate(cfg.sources) if s.kind == "account")
        self.admin_mask = sum(
            1 << i for i, s in enumerate(cfg.sources) if s.kind in ACCOUNT_KINDS
        ) & ~self.account_mask
        self.requests: Counter[str] = Counter()
        self.items = 0  # ids fetched in this run (resumed runs count only their own)
        self.stats = StatsFetcher(cfg, client, self.requests)
        self.downloader = Downloader(cfg, client, self.requests) if cfg.files.download else None
        self.entities: list[dict[str, Any]] = []  # series of groups, collections, ...: run-wide
        self.entity_errors: list[dict[str, Any]] = []  # errors.ndjson lines of failed entities
        self.entities_at = utc_now()
        self._group_counts: dict[str, int] = {}
        self._token_ok = False  # something read with the token in this run
        self._probed = False
        self._refused_row = 0  # token-bearing record reads refused since the last success
        self._probe_lock = asyncio.Lock()

    def note_listing(self, reports: Sequence[SourceReport]) -> None:
        """Tonight's listed modified dates (reports in source order): a 304 must not say a
        record listed as changed is the one held. Kept only when records are asked for
        conditionally; an incremental run's date-bounded listings are small."""
        if self.catalog is None:
            return
        for idx, report in enumerate(reports):
            if report.modified is None:
                self.undated |= 1 << idx
                continue
            for aid, at in report.modified.items():
                self.listed[aid] = max(at, self.listed.get(aid, at))

    async def fetch(self, aid: int, sources: int, mode: int = FULL) -> Outcome:
        self.items += 1
        try:
            if mode == STATS_ONLY:  # incremental runs: an unchanged known item's new numbers
                return await self._stats_only(aid, sources)
            return await self._fetch(aid, sources)
        except AuthError as exc:
            if not await self._token_proven(exc):
                raise
            reason = "unauthorized" if exc.status == 401 else "forbidden"
            return Outcome(aid, FAILED, error=self._error(aid, sources, exc, reason))
        except Abort:
            raise
        except NotFound as exc:
            if is_missing_entity(exc):
                return Outcome(aid, GONE, error=self._error(aid, sources, exc, "not-found"))
            # an HTML page, an empty body: a wrong server or a broken proxy, not a deletion
            return Outcome(aid, FAILED, error=self._error(aid, sources, exc, "404-unconfirmed"))
        except RequestError as exc:
            return Outcome(aid, FAILED, error=self._error(aid, sources, exc, exc.reason))

    async def _stats_only(self, aid: int, sources: int, not_modified: bool = False) -> Outcome:
        try:
            series = await self.stats.item_series("article", aid)
            totals = await self.stats.totals(aid)
        except Abort:
            raise
        except RequestError as exc:  # stats never say an item is gone
            error = self._error(aid, sources, exc, "stats-failed")  # as a full run's part
            error["message"] = f"stats: {error['message']}"
            return Outcome(aid, FAILED, error=error, not_modified=not_modified)
        return Outcome(aid, DONE, stats=totals, fetched_at=stamp_now(),
                       payloads={"article_id": aid, **series} if series else None,
                       not_modified=not_modified)

    async def _fetch(self, aid: int, sources: int) -> Outcome:
        held = None
        if self.catalog is not None:  # a blocking SQLite read: off the event loop
            held = await asyncio.to_thread(read_validators, self.catalog, aid)
        reply, account, as_owner = await self._record(aid, sources, held)
        if reply.status == 304:  # unchanged: files, versions, downloads as last fetched
            self.not_modified += 1
            return await self._stats_only(aid, sources, not_modified=True)
        record = reply.data
        parts: list[dict[str, Any]] = []  # errors of the parts that failed

        async def part(name: str, work: Awaitable[T]) -> T | None:
            try:
                return await work
            except Abort:
                raise
            except RequestError as exc:
                error = self._error(aid, sources, exc, f"{name}-failed")
                parts.append({**error, "message": f"{name}: {error['message']}"})
                return None

        files = None
        if files_may_be_truncated(record):
            url = self.cfg.api.url + files_path(aid, account=account)
            files = await part("files", self._all_files(url, as_owner, record["files"]))
        stats = await part("stats", self.stats.totals(aid))
        payloads: dict[str, Any] = await part("stats", self.stats.item_series("article", aid)) or {}
        if self.cfg.versions == "all":
            versions = await part("versions", self._versions(aid, record))
            if versions is not None:
                payloads["versions"] = versions
        if self.downloader is not None:
            listed = orjson.loads(files) if files is not None else record.get("files")
            # not for everyone's eyes: a draft, or files under embargo or confidential
            private = account and (record.get("is_public") is not True
                                   or record.get("is_embargoed") is True
                                   or record.get("is_confidential") is True)
            if isinstance(listed, list):
                payloads["downloads"] = await self.downloader.item(aid, listed, private=private)
        published = record.get("published_date")
        error = None
        if parts:  # the record is kept; the item still counts as failed
            error = {**parts[0], "message": "; ".join(p["message"] for p in parts)}
        etag, modified = reply.headers.get("ETag"), reply.headers.get("Last-Modified")
        lm, changed = _http_stamp(modified), parse_stamp(record.get("modified_date"))
        if lm is None or (changed is not None and lm < changed):
            modified = None  # older than the record it came with: no evidence of "unchanged"
        url = _with_query(self.cfg.api.url + article_path(aid, account=account), as_owner)
        return Outcome(aid, DONE, body=reply.body, files=files, stats=stats,
                       fetched_at=stamp_now(), error=error,
                       published=published if isinstance(published, str) else None,
                       payloads={"article_id": aid, **payloads} if payloads else None,
                       validators=Validators(url, etag, modified) if etag or modified else None)

    async def _record(self, aid: int, sources: int, held: Validators | None
                      ) -> tuple[Reply, bool, dict[str, int]]:
        """(the record's reply, read from /account/..., the impersonate parameter it took).

        An admin source's item (api.admin_read): public from the public endpoint, else as its
        owner (`impersonate`, named by its curation review), else /account/articles/{id} as is.
        """
        own = bool(sources & self.account_mask)
        if own or not sources & self.admin_mask or self.cfg.api.admin_read == "account":
            account = own or bool(sources & self.admin_mask)
            return await self._get_record(aid, sources, account, {}, held), account, {}
        try:
            return await self._get_record(aid, sources, False, {}, held), False, {}
        except NotFound as exc:
            if not is_missing_entity(exc):
                raise
        owner = await self._owner(aid)
        as_owner = {"impersonate": owner} if owner is not None else {}
        try:
            return await self._get_record(aid, sources, True, as_owner, held), True, as_owner
        except NotFound as exc:
            if owner is not None or not is_missing_entity(exc):
                raise
            # listed by the admin listing, not public, no review names its owner: not gone
            raise RequestError(
                f"article {aid} is private and no curation review names its owner, so it "
                "cannot be read as them (impersonate); GET /account/articles/{id} without "
                "it -> 404 (api.admin_read: account reads it where the service allows)",
                url=exc.url, status=404, reason="private-unreadable") from None

    async def _get_record(self, aid: int, sources: int, account: bool, params: dict[str, int],
                          held: Validators | None) -> Reply:
        """The record, or a 304 Reply when `held` is this URL's and the record is unchanged
        (If-None-Match when an ETag is held: exact; else If-Modified-Since: to the second)."""
        url = self.cfg.api.url + article_path(aid, account=account)
        ask: dict[str, str] = {}
        if held is not None and held.url == _with_query(url, params):
            ask = ({"If-None-Match": held.etag} if held.etag
                   else {"If-Modified-Since": held.last_modified or ""})
        count_estimated(self.requests, "record")
        reply = await self.client.get(url, params=params or None, headers=ask or None)
        if account:  # the token was taken
            self._token_ok, self._refused_row = True, 0
        if reply.status == 304 and held is not None and ask:
            if not self._contradicted(aid, sources, held, reply):
                return reply
            self.refused += 1  # the evidence says it changed: ask for it whole
            count_estimated(self.requests, "record")
            reply = await self.client.get(url, params=params or None)
        if reply.status == 304:
            raise _bad(f"GET {url} -> 304 Not Modified to a request that was not conditional",
                       url, "bad-record", 304)
        record = reply.data
        if not isinstance(record, dict) or not _is_id(record.get("id"), aid):
            raise _bad(f"GET {url} -> {reply.status} but the body is not the record of article "
                       f"{aid}", url, "bad-record", reply.status)
        return reply

    async def _token_proven(self, exc: AuthError) -> bool:
        """A /account/ read refused (401, 403 JSON) fails only its item once the token read
        something in this run (else one listing request probes it); 20 refusals in a row abort."""
        if not exc.url.startswith(self.cfg.api.url + "/account/"):
            return False  # a public operation refused, or another credential's
        self._refused_row += 1
        if self._refused_row >= REFUSED_IN_A_ROW:
            return False
        async with self._probe_lock:
            if not self._token_ok and not self._probed:
                self._probed = True
                self.requests["token_check"] += 1
                try:
                    await self.client.get(self.cfg.api.url + "/account/articles",
                                          params={"page": 1, "page_size": 1})
                except AuthError:
                    return False
                except Abort:
                    raise
                except RequestError:
                    return False
                self._token_ok = True
        return self._token_ok

    def _contradicted(self, aid: int, sources: int, held: Validators, reply: Reply) -> bool:
        """A 304 is not the held record when its Last-Modified is not the held one's, or the
        listing shows the item modified after the Last-Modified the record was held with."""
        if sources & self.undated:
            return True  # its listing's dates were not kept: nothing shows it unchanged
        held_at, sent = _http_stamp(held.last_modified), reply.headers.get("Last-Modified")
        shown = _http_stamp(sent) if sent else held_at
        if sent and held_at is not None and shown != held_at:
            return True
        listed = self.listed.get(aid)
        return listed is not None and (shown is None or shown < listed)

    async def _owner(self, aid: int) -> int | None:
        """The account owning a private institution item, from its latest curation review."""
        url = self.cfg.api.url + "/account/institution/reviews"
        self.requests["owner"] += 1
        params = {"article_id": aid, "offset": 0, "limit": 100}
        listed = (await self.client.get(url, params=params)).data
        owners = sorted((r["id"], r["account_id"]) for r in listed if isinstance(r, dict)
                        and r.get("article_id") == aid and valid_id(r.get("id"))
                        and valid_id(r.get("account_id"))) if isinstance(listed, list) else []
        return owners[-1][1] if owners else None

    async def _all_files(self, url: str, params: dict[str, int], listed: list[Any],
                         kind: str = "files") -> bytes:
        """Every page of /files, the served JSON arrays joined (never re-serialized), holding
        every file id of `listed`, the record's own list; `kind`: what the manifest counts."""
        size = self.cfg.http.page_size
        chunks: list[bytes] = []
        previous: list[Any] | None = None
        missing: set[int] = {f["id"] for f in listed if isinstance(f, dict)
                             and valid_id(f.get("id"))}
        for page in range(1, MAX_FILE_PAGES + 1):
            self.requests[kind] += 1
            reply = await self.client.get(url, params={**params, "page": page,
                                                       "page_size": size})
            if not isinstance(reply.data, list):
                raise _bad(f"GET {url} -> expected a list of files", url, "bad-files",
                           reply.status)
            ids = [f.get("id") if isinstance(f, dict) else f for f in reply.data]
            if reply.data and ids == previous:
                raise _bad(f"GET {url} page {page} repeats page {page - 1}: the server ignores "
                           "paging", url, "bad-files", reply.status)
            previous = ids
            missing.difference_update(i for i in ids if valid_id(i))
            if inner := reply.body.strip()[1:-1].strip():
                chunks.append(inner)
            if len(reply.data) < size and missing:
                raise _bad(f"GET {url} -> the list lacks {len(missing)} file ids the record "
                           f"lists (one: {min(missing)})", url, "bad-files", reply.status)
            if len(reply.data) < size:
                return b"[" + b",".join(chunks) + b"]"
        raise _bad(f"GET {url} -> more than {MAX_FILE_PAGES} pages of files", url, "bad-files")

    async def _versions(self, aid: int, record: dict[str, Any]) -> dict[str, Any]:
        """The version list, and the full record (files complete) of every version but this.
        A draft has no public versions (404: none recorded); a public record's 404 fails."""
        base = f"{self.cfg.api.url}/articles/{aid}/versions"
        count_estimated(self.requests, "versions")
        try:
            listed = (await self.client.get(base)).data
        except NotFound:
            if record.get("is_public") is True:
                raise
            return {"list": [], "records": []}
        if not isinstance(listed, list):
            raise _bad(f"GET {base} -> expected a list of versions", base, "bad-versions")
        given: list[Any] = [v.get("version") if isinstance(v, dict) else v for v in listed]
        if wrong := [n for n in given if not valid_id(n)]:  # true, -5: a wrong list, not kept
            raise _bad(f"GET {base} -> {len(wrong)} entries without a valid version number "
                       f"(the first: {str(wrong[0])[:40]})", base, "bad-versions")
        numbers = sorted(set(given))
        if len(numbers) > MAX_VERSIONS:
            raise _bad(f"GET {base} -> {len(numbers)} versions, more than the {MAX_VERSIONS} "
                       "fetched at most", base, "bad-versions")
        older = []
        for n in numbers:
            if _is_id(record.get("version"), n):
                continue  # the record in hand is this version
            url = f"{base}/{n}"
            self.requests["version_record"] += 1
            body = (await self.client.get(url)).data
            if not isinstance(body, dict) or not _is_id(body.get("id"), aid) \
                    or not _is_id(body.get("version", n), n):
                raise _bad(f"GET {url} -> 200 but the body is not version {n} of {aid}", url,
                           "bad-record")
            if files_may_be_truncated(body):  # its own capped list: page that version's files
                body["files"] = orjson.loads(await self._all_files(
                    f"{url}/files", {}, body["files"], "version_files"))
            older.append(body)
        return {"list": listed, "records": older}

    async def after_fan_out(self, journal: Journal) -> None:
        """Stats of groups, collections, projects and authors, once per entity, once every
        article is in (held for the writer: a handful of entities)."""
        wanted = self.stats.entity_ids(())
        if "group" in wanted and self.cfg.stats.entities.group is None:
            wanted = self.stats.entity_ids(await journal.call(_harvested_groups, journal))
        if not wanted:
            return
        self.entities_at = utc_now()
        for item, ids in wanted.items():
            for item_id in ids:
                series = await self._entity(f"{item} {item_id} stats", item_id,
                                            self.stats.item_series(item, item_id))
                self.entities.extend((series or {}).values())
        if "group" in wanted:
            self._group_counts = await self._entity("group article counts", None,
                                                    self.stats.group_counts(wanted["group"])) or {}

    async def _entity(self, what: str, entity_id: int | None, work: Awaitable[T]) -> T | None:
        """A failed entity request fails that entity's stats (an errors.ndjson line naming it);
        only an Abort stops the run."""
        try:
            return await work
        except Abort:
            raise
        except RequestError as exc:
            error = self._error(0, 0, exc, "stats-failed")
            # `id` is an article's in errors.ndjson: a group's failure is named by the message
            self.entity_errors.append({**error, "id": None,
                                       "message": f"{what}: {error['message']}"})
            return None

    def report(self) -> dict[str, Any]:
        """The manifest's `fetch` entry: requests by kind and per item, downloads, counts."""
        total = sum(self.requests.values())
        out: dict[str, Any] = {
            "items": self.items,
            "requests": dict(sorted(self.requests.items())),
            "not_modified": self.not_modified,  # records that answered 304: stats only
            "not_modified_refused": self.refused,  # 304s that contradicted the evidence
            "requests_per_item": round(total / self.items, 3) if self.items else None,
        }
        if self.downloader is not None:
            out["downloads"] = {"files_dir": str(self.downloader.root),
                                **dict(sorted(self.downloader.summary.items()))}
        if self._group_counts:
            out["group_articles"] = self._group_counts  # POST /count/articles
        return out

    def _error(self, aid: int, sources: int, exc: RequestError, reason: str) -> dict[str, Any]:
        """One errors.ndjson line (keys: sinks.ERROR_KEYS)."""
        attempts = max(exc.attempts,
                       self.cfg.http.retry.attempts if isinstance(exc, GiveUp) else 1)
        return {
            "id": aid,
            "source": [s.name for i, s in enumerate(self.cfg.sources) if sources & (1 << i)],
            "url": exc.url,
            "status": exc.status,
            "reason": reason,
            "message": str(exc),
            "attempts": attempts,
            "at": stamp_now(),
        }


def _bad(message: str, url: str, reason: str, status: int = 200) -> BadResponse:
    return BadResponse(message, url=url, status=status, reason=reason)


def _is_id(value: Any, expected: int) -> bool:
    """`value` is the integer `expected` itself: true, 1.0 and "1" are not 1."""
    return valid_id(value) and value == expected


def _http_stamp(value: str | None) -> int | None:
    """Epoch seconds of an HTTP date (Last-Modified), read as the client reads Date headers."""
    moment = http_date(value or "")
    return None if moment is None else int(moment)


def _with_query(url: str, params: dict[str, int]) -> str:
    """The URL as asked for: what a record's validators belong to."""
    return f"{url}?{urlencode(params)}" if params else url


def is_missing_entity(exc: NotFound) -> bool:
    """The 404 carries Figshare's JSON error for a missing entity (NOTES.md: `{"message":
    "Entity not found: article", "code": "EntityNotFound"}`, or the older "... does not exist")."""
    with contextlib.suppress(orjson.JSONDecodeError):
        body = orjson.loads(exc.body)
        if isinstance(body, dict):
            message = body.get("message")
            text = message.lower() if isinstance(message, str) else ""
            return body.get("code") == "EntityNotFound" or any(
                words in text for words in ("not found", "does not exist"))
    return False


def _harvested_groups(journal: Journal) -> list[int]:
    """Group ids of the articles in the journal (runs on the journal thread)."""
    groups = (orjson.loads(body).get("group_id") for body in bodies(journal.db) if body)
    return sorted({g for g in groups if valid_id(g)})
