"""OAI-PMH id discovery (NOTES §11): ListIdentifiers by set and date range, through the Client.

Figshare's OAI-PMH lists the latest version of every public article with no depth cap, so it
is an enumeration independent of the REST paging window: an alternative source of ids for a
full export, and the cross-check that proves one complete. Resumption tokens expire (60 min on
Figshare); an expired one restarts the list from the datestamp of the last header seen (`from`
is inclusive, so that second is listed again and ids are deduplicated).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from xml.etree import ElementTree as ET

from harvester.errors import BadResponse
from harvester.partition import IdSet, Partition, iso_second, parse_stamp

NS = "{http://www.openarchives.org/OAI/2.0/}"
ID_PREFIX = "oai:figshare.com:article/"
MAX_RESTARTS = 20  # expired tokens in a row without progress before giving up
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def portal_set(institution: int) -> str:
    """The OAI-PMH set of an institution's portal (NOTES §8: `portal_<id>`)."""
    return f"portal_{institution}"


def _seconds(value: str | None, *, until: bool) -> str | None:
    """A from/until argument at second granularity, so a restart can use the same granularity."""
    if value is None:
        return None
    if _DAY.fullmatch(value):
        return f"{value}T23:59:59Z" if until else f"{value}T00:00:00Z"
    return value


class OaiLister:
    """Lists the article ids of one OAI-PMH query, keeping what it took as partitions."""

    def __init__(self, client: Any, base_url: str, *, set_spec: str | None = None,
                 from_: str | None = None, until: str | None = None,
                 prefix: str = "oai_dc") -> None:
        self.client = client
        self.base_url = base_url
        self.set_spec = set_spec
        self.from_ = _seconds(from_, until=False)
        self.until = _seconds(until, until=True)
        self.prefix = prefix
        self.partitions: list[Partition] = []
        self.seen = IdSet()
        self.listed = 0
        self.deleted = 0  # headers marked deleted (skipped)
        self.restarts = 0

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.partitions)

    def _describe(self, start: str | None) -> str:
        args = [f"metadataPrefix={self.prefix}"]
        args += [f"{k}={v}" for k, v in (("set", self.set_spec), ("from", start),
                                         ("until", self.until)) if v]
        return "OAI-PMH ListIdentifiers [" + ", ".join(args) + "]"

    async def ids(self) -> AsyncIterator[list[int]]:
        start = self.from_
        stalled = 0
        while True:
            part = Partition(self._describe(start))
            self.partitions.append(part)
            params: dict[str, str] = {"verb": "ListIdentifiers", "metadataPrefix": self.prefix}
            for key, value in (("set", self.set_spec), ("from", start), ("until", self.until)):
                if value:
                    params[key] = value
            last: int | None = None
            expired = False
            while True:
                reply = await self.client.get(self.base_url, params=params, expect="bytes")
                part.requests += 1
                root = _parse(reply.body, self.base_url)
                error = root.find(f"{NS}error")
                if error is not None:
                    code = error.get("code", "")
                    if code == "noRecordsMatch":
                        return
                    if code == "badResumptionToken" and "resumptionToken" in params:
                        expired = True
                        break
                    raise BadResponse(f"OAI-PMH {self.base_url} -> error {code}: "
                                      f"{(error.text or '').strip()[:200]}", url=self.base_url,
                                      status=reply.status, reason=f"oai-{code or 'error'}")
                body = root.find(f"{NS}ListIdentifiers")
                if body is None:
                    raise BadResponse(f"OAI-PMH {self.base_url} -> no ListIdentifiers element",
                                      url=self.base_url, status=reply.status)
                batch: list[int] = []
                for header in body.iterfind(f"{NS}header"):
                    if header.get("status") == "deleted":
                        self.deleted += 1
                        continue
                    aid = _article_id(header.findtext(f"{NS}identifier"))
                    if aid is None:
                        continue
                    stamp = parse_stamp(header.findtext(f"{NS}datestamp"))
                    if stamp is not None:
                        last = stamp if last is None else max(last, stamp)
                    batch.append(aid)
                    if self.seen.add(aid):
                        part.new += 1
                part.ids += len(batch)
                self.listed += len(batch)
                if batch:
                    yield batch
                token = (body.findtext(f"{NS}resumptionToken") or "").strip()
                if not token:
                    return
                params = {"verb": "ListIdentifiers", "resumptionToken": token}
            if not expired:
                return
            # The token expired: list again from the last datestamp seen (inclusive).
            self.restarts += 1
            part.note = "resumption token expired: restarted from the last datestamp seen"
            if last is None:
                stalled += 1
                if stalled > MAX_RESTARTS:
                    raise BadResponse(f"OAI-PMH {self.base_url}: resumption tokens keep "
                                      "expiring before any progress", url=self.base_url)
                continue
            stalled = 0
            start = iso_second(last)


def _parse(body: bytes, url: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadResponse(f"OAI-PMH {url} -> not XML: {exc}", url=url, reason="bad-xml") from None


def _article_id(identifier: str | None) -> int | None:
    if not identifier:
        return None
    tail = identifier.strip().removeprefix(ID_PREFIX)
    return int(tail) if tail != identifier.strip() and tail.isdigit() else None
