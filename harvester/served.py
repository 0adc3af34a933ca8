"""JSON exactly as served: the NDJSON line, exact values, duplicate keys, bodies orjson refuses.

orjson reads integers beyond 64 bits as floats, keeps the last of duplicate keys and writes at most
255 levels, so the text is kept as served and re-read by the stdlib where orjson would change it.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

# a JSON string, or whitespace outside strings (all JSON allows there)
_STRING_OR_SPACE = re.compile(rb'("(?:[^"\\]|\\.)*")|[ \t\r\n]+')
_LONG_DIGITS = re.compile(rb"\d{19,}")  # an integer orjson may read as a float
_DEPTH = 3_000  # above orjson's 1,024 levels: the stdlib reads and writes whatever it read
_depth_lock = threading.Lock()


@dataclass(frozen=True)
class Served:
    """A record as served: its values, its text (the NDJSON line, `raw`) and what was odd."""

    record: Any
    text: bytes  # the served JSON text without whitespace outside strings
    canonical: bool  # orjson's reading loses nothing: the canonical form hashes it
    duplicate_keys: int = 0  # objects in the text that give a key twice


def parse(body: bytes) -> Served:
    """The record in `body` (JSON that orjson reads), its text as served and its oddities."""
    record = orjson.loads(body)
    try:
        compact: bytes | None = orjson.dumps(record)
    except orjson.JSONEncodeError:  # nested beyond 255 levels
        compact = None
    if compact == body:  # served compact: no second copy of a large body
        return Served(record, body, canonical=True)
    # no whitespace outside strings, and a raw line break inside one escaped: one NDJSON line
    text = _STRING_OR_SPACE.sub(rb"\1", body).replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    if compact == text:  # nothing orjson could have changed
        return Served(record, text, canonical=True)
    duplicates = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicates
        obj = dict(items)
        duplicates += len(obj) != len(items)
        return obj

    with _deep():
        exact = json.loads(text, object_pairs_hook=pairs)
    canonical = compact is not None and not duplicates and not _LONG_DIGITS.search(text)
    return Served(exact, text, canonical=canonical, duplicate_keys=duplicates)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON of a value read from JSON, however deep and whatever its integers."""
    option = orjson.OPT_SORT_KEYS if sort_keys else 0
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError:  # too deep, or an integer beyond 64 bits
        with _deep():
            return json.dumps(value, sort_keys=sort_keys, ensure_ascii=False,
                              separators=(",", ":"), allow_nan=False).encode()


@contextmanager
def _deep() -> Iterator[None]:
    """Lets the stdlib's JSON code recurse as deep as orjson reads (a thread at a time)."""
    with _depth_lock:
        before = sys.getrecursionlimit()
        sys.setrecursionlimit(max(before, _DEPTH))
        try:
            yield
        finally:
            sys.setrecursionlimit(before)


class Unkept(ValueError):
    """JSON that Python's reader took but that cannot be kept as JSON (NaN, depth, huge ints)."""


def lenient_json(raw: bytes) -> tuple[Any, bytes]:
    """A body orjson refused, read by Python's json, which takes a lone UTF-16 surrogate or bytes
    that are not UTF-8 (they become U+FFFD): (data, its JSON). ValueError when it is not JSON,
    Unkept when it is but cannot be written back unchanged."""
    def refuse(name: str) -> Any:
        raise Unkept(f"{name} is not a JSON number")

    def finite(text: str) -> float:  # 1e400 reads as inf, which orjson would write as null
        value = float(text)
        if not math.isfinite(value):
            raise Unkept(f"{text[:40]} is beyond the range of a JSON number")
        return value

    try:
        data = _mend(json.loads(raw.decode("utf-8", "replace"), parse_constant=refuse,
                                parse_float=finite))
    except RecursionError:
        raise Unkept("nested too deeply") from None
    try:
        return data, orjson.dumps(data)
    except TypeError as exc:  # orjson: an integer beyond 64 bits, more than 255 levels
        raise Unkept(str(exc).lower()) from None


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_mend(v) for v in value]
    if isinstance(value, dict):
        return {_mend(k): _mend(v) for k, v in value.items()}
    return value
