"""Per-item requests: the full record, its complete file list and its stats; what one item costs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson

from harvester.client import Client
from harvester.config import ACCOUNT_KINDS, Config, Source
from harvester.errors import Abort, BadResponse, GiveUp, NotFound, RequestError
from harvester.figshare import article_path, files_may_be_truncated, files_path, stats_total_path
from harvester.records import RowContext
from harvester.state import DONE, FAILED, FULL, GONE, STATS_ONLY, Outcome

FILES_PAGE = 1_000


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def source_names(sources: Sequence[Source], mask: int) -> list[str]:
    """Provenance: the configured sources whose bit is set in `mask`."""
    return [s.name for i, s in enumerate(sources) if mask & (1 << i)]


class ItemFetcher:
    """Fetches everything the config asks for about one article and says how it went.

    Never raises for a single item's trouble (404, retries exhausted, a malformed body): that
    becomes an Outcome for errors.ndjson. Raises only Abort: the host or credentials are gone.
    """

    def __init__(self, cfg: Config, client: Client) -> None:
        self.cfg = cfg
        self.client = client
        # ids listed by these sources may be private: fetch them from /account/articles/{id}
        self.account_mask = sum(
            1 << i for i, s in enumerate(cfg.sources) if s.kind in ACCOUNT_KINDS
        )

    async def fetch(self, aid: int, sources: int, mode: int = FULL) -> Outcome:
        try:
            if mode == STATS_ONLY:  # incremental runs: an unchanged known item's new totals
                return Outcome(aid, DONE, stats=await self._totals(aid),
                               fetched_at=stamp(utc_now()))
            return await self._fetch(aid, sources)
        except Abort:
            raise
        except NotFound as exc:
            return Outcome(aid, GONE, error=self._error(aid, sources, exc, "not-found"))
        except GiveUp as exc:
            return Outcome(aid, FAILED, error=self._error(
                aid, sources, exc, exc.reason, attempts=self.cfg.http.retry.attempts))
        except RequestError as exc:
            return Outcome(aid, FAILED, error=self._error(aid, sources, exc, exc.reason))

    async def _fetch(self, aid: int, sources: int) -> Outcome:
        api = self.cfg.api.url
        account = bool(sources & self.account_mask)
        url = api + article_path(aid, account=account)
        reply = await self.client.get(url)
        record = reply.data
        if not isinstance(record, dict) or record.get("id") != aid:
            raise BadResponse(
                f"GET {url} -> 200 but the body is not the record of article {aid}",
                url=url, status=reply.status, reason="bad-record",
            )
        files = None
        if files_may_be_truncated(record):
            files = await self._all_files(api + files_path(aid, account=account))
        stats = await self._totals(aid)
        published = record.get("published_date")
        return Outcome(aid, DONE, body=reply.body, files=files, stats=stats,
                       fetched_at=stamp(utc_now()),
                       published=published if isinstance(published, str) else None)

    async def _totals(self, aid: int) -> dict[str, int]:
        stats: dict[str, int] = {}
        for counter in self.cfg.stats.counters:
            url = self.cfg.stats.url + stats_total_path(counter, "article", aid,
                                                        self.cfg.stats.institution)
            body = (await self.client.get(url)).data
            total = body.get("totals") if isinstance(body, dict) else None
            if isinstance(total, bool) or not isinstance(total, int):
                raise BadResponse(f"GET {url} -> 200 without an integer 'totals'",
                                  url=url, status=200, reason="bad-stats")
            stats[counter] = total
        return stats

    async def _all_files(self, url: str) -> bytes:
        files: list[Any] = []
        page = 1
        while True:
            reply = await self.client.get(url, params={"page": page, "page_size": FILES_PAGE})
            if not isinstance(reply.data, list):
                raise BadResponse(f"GET {url} -> expected a list of files", url=url,
                                  status=reply.status, reason="bad-files")
            files.extend(reply.data)
            if len(reply.data) < FILES_PAGE:
                return orjson.dumps(files)
            page += 1

    def _error(self, aid: int, sources: int, exc: RequestError, reason: str,
               attempts: int = 1) -> dict[str, Any]:
        """One errors.ndjson line (keys: sinks.ERROR_KEYS)."""
        return {
            "id": aid,
            "source": source_names(self.cfg.sources, sources),
            "url": exc.url,
            "status": exc.status,
            "reason": reason,
            "message": str(exc),
            "attempts": attempts,
            "at": stamp(utc_now()),
        }


def extra_rows(extra: dict[str, Any] | None, ctx: RowContext) -> dict[str, list[dict[str, Any]]]:
    """Table rows for the optional per-item payloads kept in Outcome.extra (none yet)."""
    return {}
