"""File downloads into one persistent tree, FILES/<article id>/<file id>/<safe name>.

Bytes go to `<name>.part` (resumed with Range) and are renamed into place only once their size
and md5 match the record; a file stored with the right md5 is not fetched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from yarl import URL

from harvester.client import Client
from harvester.config import DEFAULT_DOWNLOAD_URL, Config
from harvester.errors import (
    Abort,
    AuthError,
    Blocked,
    NotFound,
    OutputError,
    RequestError,
    RetryableError,
)
from harvester.figshare import valid_id
from harvester.periods import stamp_now
from harvester.urls import origin_of, sanitize_url

MD5_ATTEMPTS = 3  # whole-file attempts when the bytes do not match the record's md5
_DISCARD = frozenset({"size-mismatch", "max_size", "too-large", "max_total_bytes"})
NAME_MAX_BYTES = 200
EXT_MAX_BYTES = 16
SIDECAR = ".harvester.json"  # per file-id directory: what was verified (names never start with .)

_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
             *(f"LPT{i}" for i in range(10))}
_UNPORTABLE = re.compile(r'[<>:"|?*]')
_MD5 = re.compile(r"[0-9a-f]{32}")


def safe_name(name: Any, file_id: int) -> str:
    """A file name that is one plain path component on any OS: no control or bidi characters,
    none Windows forbids, no leading dot or device name, at most NAME_MAX_BYTES (extension kept)."""
    text = unicodedata.normalize("NFC", name) if isinstance(name, str) else ""
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    text = _UNPORTABLE.sub("_", text).strip()
    if text.startswith("."):
        text = "_" + text.lstrip(".")
    text = text.rstrip(" .")
    if not text.strip("_"):
        return f"file-{file_id}"
    if text.split(".", 1)[0].upper() in _RESERVED:
        text = "_" + text
    data = text.encode()
    if len(data) > NAME_MAX_BYTES:
        stem, dot, ext = text.rpartition(".")
        tail = f".{ext}".encode() if dot and stem and len(ext.encode()) < EXT_MAX_BYTES else b""
        head = data[: NAME_MAX_BYTES - len(tail)].decode(errors="ignore").rstrip(" .")
        text = (head or f"file-{file_id}") + tail.decode()
    return text


def file_path(root: Path, article_id: int, file_id: int, name: Any) -> Path:
    """FILES/<article id>/<file id>/<safe name>; ValueError if it would leave the root."""
    path = root / str(int(article_id)) / str(int(file_id)) / safe_name(name, file_id)
    base = root.resolve()
    if not path.resolve().is_relative_to(base):  # e.g. a directory replaced by a symlink
        raise ValueError(f"{path} resolves outside {base}")
    return path


def extension(name: Any) -> str:
    """Lower-case extension without the dot ("" if none)."""
    if not isinstance(name, str) or "." not in name:
        return ""
    return name.rsplit(".", 1)[1].strip().lower()


def expected_md5(f: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(md5, which field) to check the bytes against: computed_md5, else supplied_md5."""
    for key in ("computed_md5", "supplied_md5"):
        value = f.get(key)
        if isinstance(value, str) and _MD5.fullmatch(value.strip().lower()):
            return value.strip().lower(), key
    return None, None


class _Failed(Exception):
    """One file could not be stored; its text is the reason the downloads table gives."""


class Downloader:
    """Downloads the files of one article at a time (workers run several articles at once)."""

    def __init__(self, cfg: Config, client: Client, requests: Counter[str]) -> None:
        self.cfg = cfg
        self.files = cfg.files
        self.client = client
        self.root = cfg.files_path()
        self.requests = requests
        self.bytes_taken = 0  # of files.max_total_bytes, by files stored or being fetched
        self.summary: Counter[str] = Counter()  # status -> files, plus "bytes" downloaded
        self._figshare = origin_of(DEFAULT_DOWNLOAD_URL)
        self._download_host = origin_of(cfg.files.url)

    async def item(self, article_id: int, files: list[Any], *, private: bool = False
                   ) -> list[dict[str, Any]]:
        """One result per file dict (see records.download_rows); never raises for one file.
        A file id listed twice (under two names) is stored once: the repeat is a `duplicate`."""
        out = []
        first: dict[int, dict[str, Any]] = {}
        for f in files:
            fid = _as_id(f.get("id")) if isinstance(f, Mapping) else None
            if fid is None:
                continue
            if fid in first:
                result = {**first[fid], "name": f.get("name"), "status": "duplicate",
                          "reason": f"file id listed again; stored once as {first[fid]['name']!r}",
                          "attempts": 0}
            else:
                result = first[fid] = await self._one(article_id, fid, f, private)
            self.summary[result["status"]] += 1
            out.append(result)
        return out

    def _take(self, n: int) -> bool:
        """Whether `n` more bytes fit files.max_total_bytes (and if so, they are taken)."""
        limit = self.files.max_total_bytes
        if limit is not None and self.bytes_taken + n > limit:
            return False
        self.bytes_taken += n
        return True

    def _url_for(self, download_url: str) -> str:
        """Figshare's download host moved to files.url (a mirror, the simulator); others kept."""
        url = URL(download_url)
        if self.files.url == DEFAULT_DOWNLOAD_URL or not url.absolute \
                or origin_of(url) != self._figshare:
            return download_url
        return self.files.url + url.raw_path_qs

    async def _one(self, article_id: int, fid: int, f: Mapping[str, Any], private: bool
                   ) -> dict[str, Any]:
        md5, source = expected_md5(f)
        size = f.get("size")
        size = size if type(size) is int and 0 <= size < 2**63 else None  # not true, not -1
        link_only = f.get("is_link_only") is True
        # the bytes the file must have: a link-only file's size (0) says nothing, see _write
        known = None if link_only else size
        raw_url = f.get("download_url") if isinstance(f.get("download_url"), str) else ""
        try:  # a URL no client can send is that file's failure, never the run's
            url = self._url_for(raw_url) if raw_url else ""
            bad_url = bool(url) and (URL(url).scheme not in ("http", "https") or not URL(url).host)
            shown = sanitize_url(raw_url) if raw_url else None
        except ValueError:
            url, bad_url, shown = "", True, None
        result: dict[str, Any] = {
            "file_id": fid, "name": f.get("name"), "size": size, "is_link_only": link_only,
            "download_url": shown, "md5_expected": md5, "md5_source": source, "attempts": 0,
        }

        def done(status: str, reason: str | None = None, **more: Any) -> dict[str, Any]:
            result.update(status=status, reason=reason, checked_at=stamp_now(), **more)
            return result

        max_size = self.files.max_size
        if link_only and not self.files.link_only:
            return done("link-only", "files.link_only is false")
        if self.files.extensions and extension(f.get("name")) not in self.files.extensions:
            return done("filtered", "extension")
        if max_size is not None and size is not None and size > max_size:
            return done("filtered", "max_size")
        if not raw_url:
            return done("failed", "no-download-url")
        if bad_url:
            return done("failed", "bad-download-url")
        try:
            path = file_path(self.root, article_id, fid, f.get("name"))
        except (ValueError, OSError):
            return done("failed", "unsafe-path")
        rel = path.relative_to(self.root).as_posix()
        try:
            present = await asyncio.to_thread(_verified_copy, path, known, md5)
        except OSError as exc:
            return done("failed", f"disk: {exc.strerror or exc}")
        if present is not None:
            return done("present", path=rel, bytes=present[1], md5=present[0])
        if known and not self._take(known):
            return done("budget", "max_total_bytes")
        headers = {}
        if private and self.files.private_token and self.cfg.api.token \
                and origin_of(url) == self._download_host:  # never a link-only file's host
            headers["Authorization"] = f"token {self.cfg.api.token}"
        try:
            got_md5, nbytes = await self._download(url, path, known, md5, headers, result)
        except _Failed as exc:
            self.bytes_taken -= known or 0
            return done("failed", str(exc))
        except OSError as exc:  # a full or read-only disk fails every file: stop the run
            raise OutputError(f"cannot store {path}: {exc.strerror or exc}") from None
        self.summary["bytes"] += nbytes
        return done("downloaded", path=rel, bytes=nbytes, md5=got_md5)

    async def _download(self, url: str, path: Path, size: int | None, md5: str | None,
                        headers: dict[str, str], result: dict[str, Any]) -> tuple[str, int]:
        """Fetch into <name>.part (resuming what is there), check, rename into place."""
        part = path.with_name(path.name + ".part")
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        reason = "md5-mismatch"
        for _ in range(MD5_ATTEMPTS):
            try:
                got, nbytes = await self._fetch_part(url, part, size, headers, result)
            except _Failed as exc:
                if str(exc) in _DISCARD:  # what arrived is no prefix of the right file
                    await asyncio.to_thread(part.unlink, missing_ok=True)
                raise
            if size is not None and nbytes != size:
                reason = "size-mismatch"
            elif md5 is not None and got != md5:
                reason = "md5-mismatch"
            else:
                await asyncio.to_thread(_publish, part, path, got)
                return got, nbytes
            # the bytes are wrong: start over from nothing
            await asyncio.to_thread(part.unlink, missing_ok=True)
        raise _Failed(reason)

    async def _fetch_part(self, url: str, part: Path, size: int | None,
                          headers: dict[str, str], result: dict[str, Any]) -> tuple[str, int]:
        """The whole file in `part`: continue a partial one with Range, restart if refused."""
        resumes = 0
        while True:
            have = await asyncio.to_thread(_size_of, part)
            if size is not None and have > size:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                have = 0
            if size and have == size:
                return await asyncio.to_thread(_hash_file, part), have  # finished earlier
            hdrs = {**headers, "Range": f"bytes={have}-"} if have else headers
            result["attempts"] += 1
            self.requests["download"] += 1
            try:
                async with self.client.stream(url, headers=hdrs) as stream:
                    start = _resume_offset(stream.status, stream.headers, have)
                    if start is not None:
                        return await self._write(stream, part, start, size)
                # a range we did not ask for: drop the partial file, ask for everything
                await asyncio.to_thread(part.unlink, missing_ok=True)
                reason = "bad-range"
            except RetryableError:
                reason = "interrupted"  # cut off mid-body: go on from what arrived
            except (AuthError, Blocked) as exc:  # a file's host blocks it: the API goes on
                raise _Failed(f"forbidden ({exc.status})") from None
            except Abort as exc:  # its host is unreachable: that file fails
                raise _Failed(exc.reason) from None
            except NotFound:
                raise _Failed("not-found") from None
            except RequestError as exc:
                if exc.status != 416 or not have:
                    raise _Failed(exc.reason) from None
                await asyncio.to_thread(part.unlink, missing_ok=True)  # no prefix the host knows
                continue
            resumes += 1
            if resumes >= self.cfg.http.retry.attempts:
                raise _Failed(reason)

    async def _write(self, stream: Any, part: Path, start: int, size: int | None
                     ) -> tuple[str, int]:
        cap = self.files.max_size or self.cfg.http.max_body  # an unknown size: still bounded
        limit = size if size is not None else cap
        sink = await asyncio.to_thread(_Sink, part, start)
        try:
            async for chunk in stream:
                if sink.written + len(chunk) > limit:
                    raise _Failed("size-mismatch" if size is not None
                                  else "max_size" if self.files.max_size else "too-large")
                if not size and not self._take(len(chunk)):
                    raise _Failed("max_total_bytes")
                await asyncio.to_thread(sink.write, chunk)
        finally:
            # what arrived before a cut is a good prefix: keep it for the Range request
            await asyncio.to_thread(sink.close)
        return sink.md5.hexdigest(), sink.written


def _resume_offset(status: int, headers: Mapping[str, str], have: int) -> int | None:
    """Where the body goes in the .part file: `have` when the server honoured our Range, 0
    for a whole body (restart), None for a partial body that does not start at `have`."""
    if status != 206:
        return 0
    m = re.match(r"bytes (\d+)-", headers.get("Content-Range", ""))
    return have if m and int(m.group(1)) == have else None


class _Sink:
    """The .part file being written and the md5 of everything in it (blocking: threads)."""

    def __init__(self, part: Path, start: int) -> None:
        self.md5 = hashlib.md5()
        if start:  # resuming: the md5 goes on from the bytes already there
            with open(part, "rb") as f:
                self.md5 = hashlib.file_digest(f, "md5")
        self.f: BinaryIO = open(part, "r+b" if start else "wb")  # noqa: SIM115 - close() closes
        self.f.seek(start)
        self.written = start

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.md5.update(data)
        self.written += len(data)

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _as_id(value: Any) -> int | None:
    return value if valid_id(value) else None


def _size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _read_sidecar(directory: Path) -> dict[str, Any]:
    try:
        data = orjson.loads((directory / SIDECAR).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sidecar(path: Path, md5: str) -> None:
    st = path.stat()
    side = {"name": path.name, "md5": md5, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = path.parent / f"{SIDECAR}.tmp"
    tmp.write_bytes(orjson.dumps(side))
    os.replace(tmp, path.parent / SIDECAR)


def _verified_copy(path: Path, size: int | None, md5: str | None) -> tuple[str, int] | None:
    """(md5, bytes) of the stored file if it is the right one, else None. The sidecar saves
    hashing it again while size and mtime hold; a file stored under an older name is renamed."""
    side = _read_sidecar(path.parent)
    old = side.get("name")
    if not path.exists() and isinstance(old, str) and old != path.name \
            and old == safe_name(old, 0) and (path.parent / old).is_file():
        os.replace(path.parent / old, path)  # renamed upstream: same file id, same bytes
    if not path.is_file():
        return None
    st = path.stat()
    if size is not None and st.st_size != size:
        return None
    stored = side.get("md5") if isinstance(side.get("md5"), str) else None
    reference = md5 or stored  # no md5 in the record: what we verified when we stored it
    if reference is None:
        return None  # nothing to check it against: fetch it again
    fresh = stored == reference and side.get("size") == st.st_size \
        and side.get("mtime_ns") == st.st_mtime_ns
    if not fresh and _hash_file(path) != reference:
        return None
    if not fresh or side.get("name") != path.name:
        _write_sidecar(path, reference)
    return reference, st.st_size


def _publish(part: Path, path: Path, md5: str) -> None:
    os.replace(part, path)
    with contextlib.suppress(OSError):  # durability of the rename; not every FS allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _write_sidecar(path, md5)
