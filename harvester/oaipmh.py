"""OAI-PMH id discovery (NOTES §11): ListIdentifiers by set and date range, through the Client.

An enumeration independent of the REST paging window. Expired resumption tokens restart the list;
a restart that lists no new id counts towards MAX_STALLED, past which the source is `truncated`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

from harvester.client import Client
from harvester.errors import BadResponse
from harvester.partition import Lister, Partition, iso_second, parse_stamp

NS = "{http://www.openarchives.org/OAI/2.0/}"
_ARTICLE = re.compile(r"oai:figshare\.com:article/([0-9]+)")
MAX_STALLED = 5  # restarts in a row that list no new id before a start is given up
MAX_IDLE_PAGES = 100  # pages in a row that list no new id before a list is given up
AT_LAST_MAX = 10_000  # ids kept at the latest datestamp for a restart to meet again
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def portal_set(institution: int) -> str:
    """The OAI-PMH set of an institution's portal (NOTES §8: `portal_<id>`)."""
    return f"portal_{institution}"


def _seconds(value: str | None, time: str) -> str | None:
    """A from/until day at second granularity, the granularity a restart uses."""
    if value is not None and _DAY.fullmatch(value):
        return f"{value}T{time}Z"
    return value


@dataclass
class _Pass:
    """What one list from one `from` ended with."""

    last: int | None = None  # the latest datestamp seen
    at_last: set[int] = field(default_factory=set)  # the ids listed at `last`
    crowded: bool = False  # more than AT_LAST_MAX at `last` (a bulk import): not kept, unchecked
    expired: bool = False


class OaiLister(Lister):
    """Lists the article ids of one OAI-PMH query, keeping what it took as partitions.

    An expired token restarts from the last datestamp seen (`from` is inclusive, so that second
    is listed again), or from the source's own `from` once datestamps were seen going backwards.
    """

    def __init__(self, client: Client, base_url: str, *, set_spec: str | None = None,
                 from_: str | None = None, until: str | None = None) -> None:
        super().__init__()
        self.client = client
        self.base_url = base_url
        self.set_spec = set_spec
        self.from_ = _seconds(from_, "00:00:00")
        self.until = _seconds(until, "23:59:59")
        self.deleted = 0  # headers marked deleted (skipped)
        self.restarts = 0
        self.unordered = False  # a datestamp went backwards: restarts go back to `from`

    def _params(self, start: str | None) -> dict[str, str]:
        params = {"verb": "ListIdentifiers", "metadataPrefix": "oai_dc", "set": self.set_spec,
                  "from": start, "until": self.until}
        return {k: v for k, v in params.items() if v}

    async def ids(self) -> AsyncIterator[list[int]]:
        """Batches of ids not yielded before (so counts of them are distinct ids)."""
        start = self.from_
        stalled = 0
        skipped = False  # a restart began after `from`: an unordered list may have lost ids
        expect: set[int] = set()  # ids a restart's first page must list again (`from` is inclusive)
        while True:
            shown = ", ".join(f"{k}={v}" for k, v in self._params(start).items() if k != "verb")
            part = self._partition(f"OAI-PMH ListIdentifiers [{shown}]")
            run = _Pass()
            async for batch in self._pass(start, part, run, expect):
                yield batch
            expect = set()
            if part.truncated:  # given up: the list would never end
                return
            if not run.expired:
                if not (self.unordered and skipped):
                    return
                part.note = ("datestamps out of order: listed again from the source's `from`, "
                             "for ids a restart from a datestamp skipped")
                start, skipped = self.from_, False
                continue
            self.restarts += 1
            stalled = 0 if part.new else stalled + 1
            if stalled >= MAX_STALLED:
                if self.unordered or run.last is None:
                    self._stalled(part, "resumption tokens expire before the list gets past "
                                        "what it already listed, and datestamps are not in "
                                        "order, so no restart can resume it")
                    return
                # More headers share this second than one token reaches: skip the second.
                self._stalled(part, f"more headers share datestamp {iso_second(run.last)} than "
                                    "one resumption token reaches; the rest of that second "
                                    "was skipped")
                if self.until is not None and (parse_stamp(self.until) or 0) <= run.last:
                    return
                start, stalled, skipped = iso_second(run.last + 1), 0, True
                continue
            if self.unordered:
                part.note = ("resumption token expired; datestamps out of order: "
                             "restarted from the source's `from`")
                start, skipped = self.from_, False
            else:
                part.note = "resumption token expired: restarted from the last datestamp seen"
                if run.last is not None:
                    start, expect = iso_second(run.last), run.at_last
                    skipped = skipped or start != self.from_

    def _stalled(self, part: Partition, why: str) -> None:
        self._give_up(part, f"truncated after {MAX_STALLED} restarts that listed no new id: {why}")

    async def _pass(self, start: str | None, part: Partition, run: _Pass,
                    expect: set[int]) -> AsyncIterator[list[int]]:
        """One list from `start` until it ends or its token expires (run.expired). A first
        page without any of `expect` means the restart datestamp misled: the list is unordered."""
        params = self._params(start)
        tokens: set[str] = set()
        idle = 0  # pages in a row without a new id
        headers = 0  # headers this list sent, deleted and foreign ones included
        while True:
            reply = await self.client.get(self.base_url, params=params, expect="bytes")
            part.requests += 1
            root = _parse(reply.body, self.base_url)
            error = root.find(f"{NS}error")
            if error is not None:
                code = error.get("code", "")
                if code == "noRecordsMatch" and "resumptionToken" in params:
                    self._give_up(part, "truncated: the server answered a resumption token "
                                        "with noRecordsMatch, which only a first request may")
                    return
                if code == "noRecordsMatch":
                    self.unordered = self.unordered or bool(expect)
                    return
                if code == "badResumptionToken" and "resumptionToken" in params:
                    run.expired = True
                    return
                raise BadResponse(f"OAI-PMH {self.base_url} -> error {code}: "
                                  f"{(error.text or '').strip()[:200]}", url=self.base_url,
                                  status=reply.status, reason=f"oai-{code or 'error'}")
            body = root.find(f"{NS}ListIdentifiers")
            if body is None:
                raise BadResponse(f"OAI-PMH {self.base_url} -> no ListIdentifiers element",
                                  url=self.base_url, status=reply.status)
            batch: list[int] = []
            listed: set[int] = set()
            for header in body.iterfind(f"{NS}header"):
                headers += 1
                if header.get("status") == "deleted":
                    self.deleted += 1
                    continue
                m = _ARTICLE.fullmatch((header.findtext(f"{NS}identifier") or "").strip())
                if m is None:
                    continue
                aid = int(m.group(1))
                stamp = parse_stamp(header.findtext(f"{NS}datestamp"))
                if stamp is not None:
                    if run.last is not None and stamp < run.last:
                        self.unordered = True
                    if run.last is None or stamp > run.last:
                        run.last, run.at_last, run.crowded = stamp, set(), False
                    if stamp == run.last and not run.crowded:
                        run.at_last.add(aid)
                        if len(run.at_last) > AT_LAST_MAX:  # memory stays bounded
                            run.at_last, run.crowded = set(), True
                listed.add(aid)
                part.ids += 1
                self.listed += 1
                if self.seen.add(aid):
                    batch.append(aid)
            if expect and "resumptionToken" not in params and not expect & listed:
                self.unordered = True
            part.new += len(batch)
            idle = 0 if batch else idle + 1
            if batch:
                yield batch
            element = body.find(f"{NS}resumptionToken")
            token = (element.text or "").strip() if element is not None else ""
            if not token:
                size = element.get("completeListSize", "") if element is not None else ""
                if size.isdigit() and headers < int(size):
                    self._give_up(part, f"truncated: the list ended after {headers} of the "
                                        f"{size} headers its completeListSize announced")
                return
            if token in tokens or idle >= MAX_IDLE_PAGES:
                why = ("the server sent a resumption token again" if token in tokens else
                       f"{MAX_IDLE_PAGES} pages in a row listed no new id")
                self._give_up(part, f"truncated: {why}, so the list would never end")
                return
            tokens.add(token)
            params = {"verb": "ListIdentifiers", "resumptionToken": token}


def _parse(body: bytes, url: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadResponse(f"OAI-PMH {url} -> not XML: {exc}", url=url, reason="bad-xml") from None
