"""Where snapshots live: a local directory or `s3://bucket/prefix`, both through pyarrow.fs.

    ROOT/NAME/snapshot=<id>/     one published snapshot; complete once manifest.json is in it
    ROOT/NAME/LATEST             "snapshot=<id>", replaced whole after the snapshot is out
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
import pyarrow.fs as pafs

from harvester.config import S3_SCHEME
from harvester.errors import ConfigError, OutputError

ID_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST = "manifest.json"
LATEST = "LATEST"
STAGING = ".staging"
PREFIX = "snapshot="
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BUFFER = 1 << 20
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
# manifest keys that hold an object; `files` (every snapshot lists errors.ndjson) is required
_OBJECTS = ("files", "tables", "config", "ids", "http", "fetch", "budget", "errors_by_reason")


def why(e: BaseException) -> str:
    """The first line of an error's reason."""
    text = getattr(e, "strerror", None) or str(e)
    return text.splitlines()[0] if text else type(e).__name__


def fail(action: str, path: Path | str, e: OSError) -> OutputError:
    return OutputError(f"cannot {action} {path}: {why(e)}")


def is_remote(root: Path | str) -> bool:
    return str(root).startswith(S3_SCHEME)


def table_part(table: str, number: int) -> str:
    return f"{table}/part-{number:05d}.parquet"


def table_files(files: Collection[str], table: str) -> list[str]:
    """A table's Parquet files among a snapshot's file names, in order: its part files, or
    `TABLE.parquet` in snapshots before schema version 2."""
    if f"{table}.parquet" in files:
        return [f"{table}.parquet"]
    prefix = f"{table}/"
    parts = {int(m.group(1)): f for f in files
             if f.startswith(prefix) and (m := _PART.match(f[len(prefix):]))}
    return [parts[n] for n in sorted(parts)]


def split_harvest(path: Path | str) -> tuple[str, str]:
    """`OUTPUT/NAME` (a directory or an s3:// URL) -> (OUTPUT, NAME)."""
    text = str(path).rstrip("/")
    remote = is_remote(text)
    root, _, name = text.removeprefix(S3_SCHEME).rpartition("/")
    if not name or not SAFE_NAME.match(name) or (remote and not root):
        raise ValueError(f"{path!s}: expected OUTPUT/NAME, the folder of one harvest")
    return (S3_SCHEME + root, name) if remote else (root or ".", name)


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem from the standard AWS environment, including the endpoint
    variables (MinIO, moto) that pyarrow does not read by itself."""
    kw: dict[str, Any] = {}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        kw["endpoint_override"] = endpoint
        kw["scheme"] = urlsplit(endpoint).scheme or "https"
    if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        kw["region"] = region
    try:
        # delayed open: a small object is one PutObject, so manifest.json and LATEST each
        # appear whole or not at all
        return pafs.S3FileSystem(allow_delayed_open=True, **kw)
    except (OSError, ValueError) as e:
        raise OutputError(f"cannot set up S3 access: {why(e)}") from e


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """manifest.json's bytes -> its object; `where` names it in errors."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise OutputError(f"malformed manifest {where}: {why(e)}") from e
    if not isinstance(doc, dict):
        raise OutputError(f"malformed manifest {where}: expected a JSON object")
    # checked once here, so that no reader takes a string or a list for a mapping
    for key in _OBJECTS:
        if not isinstance(doc.get(key, None if key == "files" else {}), dict):
            raise OutputError(f"malformed manifest {where}: {key} is not an object")
    for file, entry in doc["files"].items():
        if not isinstance(entry, dict) or not _is_count(entry.get("rows")) or \
                not isinstance(entry.get("sha256"), str):
            raise OutputError(f"malformed manifest {where}: files[{file!r}] is not an object "
                              "with integer rows and a sha256")
    return doc


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hash_copy(src: IO[bytes] | Any, dst: IO[bytes] | Any | None) -> str:
    """sha256 of a stream, copied to `dst` on the way when given."""
    digest = hashlib.sha256()
    while chunk := src.read(BUFFER):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise fail("sync directory", path, e) from e


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small local file so readers see the old content or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise fail("write", path, e) from e
    _fsync_dir(path.parent)


def check_written(path: Path, flag: str, suffix: str, folder: bool = False) -> None:
    """Before a report or an export writes `path` (a `suffix` file, or a `folder` of them): a
    typo must not overwrite a snapshot, the harvester's state or a file of another kind."""
    if any(p.startswith(PREFIX) or p in (STAGING, ".state") for p in path.resolve().parts):
        raise ConfigError(f"{flag} {path}: inside a snapshot or the harvester's state; "
                          "write it elsewhere")
    own = (suffix, f"{suffix}.body", f"{suffix}.tmp")  # and what an interrupted export left
    try:
        other = next((p.name for p in sorted(path.iterdir())
                      if not p.is_file() or not p.name.lower().endswith(own)), None) \
            if folder and path.is_dir() else None
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot list it: {why(e)}") from None
    if other is not None:
        raise ConfigError(f"{flag} {path}: holds {other!r}, not only {suffix} files; "
                          "write into a new or empty folder")
    if not folder and path.is_file() and path.suffix.lower() != suffix:
        raise ConfigError(f"{flag} {path}: exists and is not a {suffix} file; not overwritten")


def list_files(path: Path) -> dict[str, Path]:
    """Every file under a local directory by its relative name (`articles/part-00000.parquet`),
    in name order."""
    try:
        return {p.relative_to(path).as_posix(): p
                for p in sorted(path.rglob("*")) if p.is_file()}
    except OSError as e:
        raise fail("list", path, e) from e


class Store:
    """Published snapshots under one output location, local or `s3://`, read and written alike.

    Every reader here ignores a `snapshot=` folder without its manifest (an interrupted upload).
    """

    def __init__(self, root: Path | str) -> None:
        self.remote = is_remote(root)
        if self.remote:
            text = str(root)
            if not text[len(S3_SCHEME):].strip("/"):
                raise ValueError(f"expected s3://bucket[/prefix], got {root!r}")
            self.root: str = text.rstrip("/")
            self.base = text[len(S3_SCHEME):].strip("/")
            self.fs: pafs.FileSystem = s3_filesystem()
        else:  # Path() would quietly turn s3://b into a local s3:/b: never given one here
            self.root = str(root)
            self.base = os.path.abspath(root)
            self.fs = pafs.LocalFileSystem()

    def _path(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def url(self, *parts: str) -> str:
        """Where a file is, as users name it: a local path or an s3:// URL."""
        return "/".join((self.root, *parts)) if self.remote else \
            str(Path(self.root).joinpath(*parts))

    def _type(self, *parts: str) -> pafs.FileType:
        try:
            return self.fs.get_file_info(self._path(*parts)).type
        except OSError as e:
            raise fail("look up", self.url(*parts), e) from e

    def exists(self, name: str) -> bool:
        found = self._type(name)
        return found != pafs.FileType.NotFound if self.remote else \
            found == pafs.FileType.Directory

    def is_complete(self, name: str, folder: str) -> bool:
        return self._type(name, folder, MANIFEST) == pafs.FileType.File

    def published(self, name: str, folder: str) -> bool:
        """Out already: renamed into place locally, or uploaded up to its manifest."""
        if self.remote:
            return self.is_complete(name, folder)
        return self._type(name, folder) != pafs.FileType.NotFound

    def snapshots(self, name: str) -> list[str]:
        """Folder names (`snapshot=<id>`) of the complete snapshots, oldest first."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self._path(name),
                                                            allow_not_found=True))
        except OSError as e:
            raise fail("list", self.url(name), e) from e
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                      and _is_folder(i.base_name) and self.is_complete(name, i.base_name))

    def latest(self, name: str) -> str | None:
        """The snapshot LATEST names if it is complete, else the newest complete one."""
        try:
            pointed = self.read_bytes(name, LATEST).decode("utf-8").strip()
        except (OutputError, UnicodeDecodeError):
            pointed = ""
        if _is_folder(pointed) and self.is_complete(name, pointed):
            return pointed
        found = self.snapshots(name)
        return found[-1] if found else None

    def new_snapshot_id(self, name: str, now: datetime | None = None) -> str:
        """UTC time as YYYYMMDDTHHMMSSZ, bumped a second at a time past any id already used
        (published, or staged locally)."""
        t = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        while True:
            sid = t.strftime(ID_FORMAT)
            taken = self._type(name, f"{PREFIX}{sid}") != pafs.FileType.NotFound or (
                not self.remote and self._type(name, STAGING, sid) != pafs.FileType.NotFound)
            if not taken:
                return sid
            t += timedelta(seconds=1)

    def read_bytes(self, *parts: str, what: str = "") -> bytes:
        try:
            with self.fs.open_input_stream(self._path(*parts)) as f:
                return bytes(f.read())
        except OSError as e:
            raise fail(f"read {what}".rstrip(), self.url(*parts), e) from e

    def fetch(self, name: str, folder: str, file: str, workdir: Path) -> tuple[Path, str]:
        """A local copy of one file (a local store's own file, not copied) and its sha256."""
        dest = workdir / file if self.remote else Path(self._path(name, folder, file))
        try:
            with self.fs.open_input_stream(self._path(name, folder, file)) as src:
                if not self.remote:
                    return dest, _hash_copy(src, None)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as dst:
                    return dest, _hash_copy(src, dst)
        except OSError as e:
            raise fail("download" if self.remote else "read", self.url(name, folder, file),
                       e) from e

    def publish(self, staging: Path, name: str, snapshot_id: str) -> str:
        """Put a finished local staging directory in place, then point LATEST at it.

        Local: one rename. Object storage: the data files, then manifest.json, then LATEST;
        a retry after an interrupted upload overwrites what the first try left."""
        folder = f"{PREFIX}{snapshot_id}"
        if self.published(name, folder):
            raise OutputError(f"cannot publish {self.url(name, folder)}: it already exists")
        pointer = f"{folder}\n".encode()
        if not self.remote:
            dest = Path(self._path(name, folder))
            try:
                os.rename(staging, dest)
            except OSError as e:
                raise fail(f"rename {staging} to", dest, e) from e
            _fsync_dir(dest.parent)
            _fsync_dir(staging.parent)
            write_atomic(dest.parent / LATEST, pointer)
            return self.url(name, folder)
        files = list_files(staging)
        for file in sorted(files, key=lambda f: f == MANIFEST):  # the manifest last
            try:
                with open(files[file], "rb") as src, \
                        self.fs.open_output_stream(self._path(name, folder, file)) as dst:
                    _hash_copy(src, dst)
            except OSError as e:
                raise fail("upload", self.url(name, folder, file), e) from e
        try:
            with self.fs.open_output_stream(self._path(name, LATEST)) as dst:
                dst.write(pointer)
        except OSError as e:
            raise fail("write", self.url(name, LATEST), e) from e
        return self.url(name, folder)


def open_store(root: Path | str) -> Store:
    return Store(root)


def _is_folder(name: str) -> bool:
    return name.startswith(PREFIX) and bool(SAFE_NAME.match(name[len(PREFIX):]))


def list_snapshots(root: Path | str, name: str) -> list[Path]:
    """Published snapshots of a local output (directories holding a manifest), oldest first."""
    return [Path(root) / name / f for f in _local(root).snapshots(name)]


def latest_snapshot(root: Path | str, name: str) -> Path | None:
    """The local snapshot LATEST names if complete, else the newest complete one, else None."""
    folder = _local(root).latest(name)
    return Path(root) / name / folder if folder else None


def _local(root: Path | str) -> Store:
    if is_remote(root):
        raise ValueError(f"{root} is object storage: read it with open_store(root)")
    return Store(root)


def read_manifest(path: Path | str) -> dict[str, Any]:
    """A snapshot's manifest; `path` is the snapshot directory (or its s3:// URL) or the
    manifest file itself."""
    text = str(path).rstrip("/")
    if not text.endswith(f"/{MANIFEST}") if is_remote(text) else Path(text).is_dir():
        text = f"{text}/{MANIFEST}"
    root, _, file = text.rpartition("/")
    return parse_manifest(Store(root or ".").read_bytes(file, what="manifest"), text)
