"""Download host routes (ndownloader.figshare.com/files/<id>): file bytes, Range, per-file faults.

Every file's bytes are `corpus.file_content(seed, id, size)`, so their md5 is the record's
`computed_md5` (and `supplied_md5` when given). Fidelity limits:
- The real host redirects to signed storage URLs (another origin); this one answers directly.
- A draft's file, and a file under file embargo or confidentiality, needs `Authorization: token
  <owner's token>` (or `?token=`), else 403. The error bodies are JSON guesses, not recorded ones.
- Link-only files are not served here (their `download_url` points elsewhere): 404.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson
from aiohttp import web

from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.vocab import file_content

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True, slots=True)
class Served:
    """One download request as the download host answered it."""

    file_id: int
    range: str | None  # the Range header as sent
    status: int
    bytes: int  # body bytes actually written (a cut response writes fewer than promised)


@dataclass
class DownloadFaults:
    """Per-file misbehaviour of the download host, set by tests at run time (`sim.downloads`)."""

    ranges: bool = True  # honour Range; False: every answer is 200 with the whole file
    corrupt: dict[int, int] = field(default_factory=dict)  # file id -> answers to corrupt
    cut: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (bytes sent, answers)
    served: list[Served] = field(default_factory=list)

    def corrupt_next(self, file_id: int, times: int = 1) -> None:
        """The next `times` answers for this file flip one byte (the md5 no longer matches)."""
        self.corrupt[file_id] = times

    def cut_next(self, file_id: int, after: int, times: int = 1) -> None:
        """The next `times` answers promise the whole body, send `after` bytes, then hang up."""
        self.cut[file_id] = (after, times)

    def _take(self, table: dict[int, int], file_id: int) -> bool:
        left = table.get(file_id, 0)
        if left <= 0:
            return False
        table[file_id] = left - 1
        return True

    def _take_cut(self, file_id: int) -> int | None:
        after, left = self.cut.get(file_id, (0, 0))
        if left <= 0:
            return None
        self.cut[file_id] = (after, left - 1)
        return after


def _error(status: int, code: str, message: str) -> web.Response:
    body = orjson.dumps({"message": message, "code": code, "data": None})
    return web.Response(body=body, status=status, content_type="application/json")


def _token(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "token":
        return value.strip()
    return request.query.get("token", "")


async def download(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    faults: DownloadFaults = sim.downloads
    corpus = sim.corpus
    range_header = request.headers.get("Range")

    def served(status: int, sent: int = 0) -> None:
        faults.served.append(Served(file_id, range_header, status, sent))

    file_id = int(request.match_info["file_id"])
    try:
        found = corpus.download(file_id)
    except KeyError:
        served(404)
        return _error(404, "EntityNotFound", "File not found")
    if not (found.public and found.open):  # a draft's, embargoed or confidential: owner only
        account = corpus.account_for_token(_token(request), sim.settings)
        if account is None or account.id != found.owner:
            served(403)
            return _error(403, "Forbidden", "You do not have access to this file")

    size = int(found.file["size"])
    start, end, status = 0, size, 200
    match = _RANGE.fullmatch(range_header or "")
    if faults.ranges and match:
        start = int(match.group(1))
        end = min(size, int(match.group(2)) + 1) if match.group(2) else size
        if start >= size or start >= end:
            served(416)
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
    body = bytearray(file_content(corpus.seed, file_id, size, start, end))
    if body and faults._take(faults.corrupt, file_id):
        body[len(body) // 2] ^= 0xFF
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(str(found.file['name']))}",
        "ETag": f'"{found.file["computed_md5"] or "none"}"',
    }
    if faults.ranges:
        headers["Accept-Ranges"] = "bytes"
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    after = faults._take_cut(file_id)
    if after is None or after >= len(body):
        served(status, len(body))
        return web.Response(body=bytes(body), status=status, headers=headers)
    # Promise the whole body, send part of it, close the connection (a download cut short).
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(bytes(body[:after]))
    served(status, after)
    # A pause before the drop: the client reads what arrived first (a connection that stalls,
    # then dies), so the resumable prefix does not depend on scheduling.
    await asyncio.sleep(0.05)
    if request.transport is not None:
        request.transport.close()
    return response


def add_routes(app: web.Application) -> None:
    """Register the download host's one route (paths at the root, as on ndownloader)."""
    app.router.add_get(r"/files/{file_id:\d+}", download)
