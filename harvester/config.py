"""YAML harvest configuration -> frozen, typed Config; every error names the file and the key.

Each key is one field with its default, rules and doc line (`opt`); harvester.typedyaml reads
YAML into them and renders them for docs/CONFIG.md, so no key is listed twice.
"""
# ruff: noqa: RUF009 -- opt() returns a dataclasses.field

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import stat
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from harvester.errors import ConfigError
from harvester.typedyaml import MAX_ID, Invalid, Reader, Secret, load_yaml, opt, table

DEFAULT_API_URL = "https://api.figshare.com/v2"
DEFAULT_STATS_URL = "https://stats.figshare.com"
DEFAULT_DOWNLOAD_URL = "https://ndownloader.figshare.com"
COUNTERS = ("views", "downloads", "shares")
DOCTOR_MODES = ("off", "quick")
FORMATS = ("ndjson", "parquet")
S3_SCHEME = "s3://"


def check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    if re.search(r"\s", value):
        raise ValueError(f"{value!r} has white space in it")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"{value!r} names no host")
    return value.rstrip("/")


def check_output_dir(value: str) -> str:
    """A local path or s3://bucket[/prefix]; another scheme would silently become a folder."""
    if value.startswith(S3_SCHEME):
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", value):
            raise ValueError(f"{value!r} is not s3://bucket[/prefix]")
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise ValueError(f"{value!r}: only a local directory or an s3://bucket/prefix URL")
    elif typo := re.match(r"([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", value):
        raise ValueError(f"{value!r} looks like a URL with one slash: did you mean "
                         f"{typo[1]}://{value[typo.end():]} (or ./{value} for a folder)?")
    if inside := [p for p in os.path.normpath(value).split("/") if p.startswith("snapshot=")
                  or p in (".state", ".staging", ".harvester-state")]:
        raise ValueError(f"{value!r} is inside a harvest's {inside[0]} folder, which runs "
                         "replace or delete: choose a folder of its own")
    return value


def _local(value: str) -> str:
    if "://" in value:
        raise ValueError(f"must be a local directory, got {value!r}")
    return value


def _name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
        raise ValueError(f"{value!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return value


_MOMENT = re.compile(r"\d{4}-\d\d-\d\d([T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?)?")


def check_date(value: str, *, day_only: bool = False) -> str:
    """YYYY-MM-DD, or a stamp kept as YYYY-MM-DDTHH:MM:SSZ (UTC): normalized, so that two
    dates compare as strings."""
    form = "YYYY-MM-DD" if day_only else "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"
    if not _MOMENT.fullmatch(value) or (day_only and len(value) != 10):
        raise ValueError(f"{value!r} is not a date ({form})")
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value).isoformat()
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a date on the calendar ({exc})") from None
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(value: str) -> str:
    return check_date(value, day_only=True)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_DURATION = 366 * 86400


def parse_duration(text: str) -> float:
    """'8h', '90m', '1h30m', '45s', '1.5h' -> seconds (ValueError naming what is wrong)."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration such as 8h, 90m or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a duration longer than 0")
    if seconds > MAX_DURATION:  # a typo, not a budget: it would overflow the manifest
        raise ValueError(f"{text!r} is longer than {MAX_DURATION // 86400} days")
    return seconds


def _duration(value: str) -> str:
    parse_duration(value)
    return value


@dataclass(frozen=True)
class Rate:
    requests: int = opt(1, "requests started in any window of `per` seconds", min=1)
    per: float = opt(1.0, "that window, in seconds", gt=0)


@dataclass(frozen=True)
class Timeouts:
    connect: float = opt(10.0, "seconds to open a connection", gt=0)
    read: float = opt(60.0, "seconds without a byte before an attempt fails", gt=0)
    total: float = opt(120.0, "seconds for one whole answer (downloads have no total)", gt=0)


@dataclass(frozen=True)
class Retry:
    attempts: int = opt(6, "tries for 429, 5xx, resets, timeouts and bad JSON", min=1)
    backoff_base: float = opt(1.0, "seconds before the first retry; doubling, jittered", gt=0)
    backoff_max: float = opt(60.0, "longest wait between two tries, in seconds", gt=0)


@dataclass(frozen=True)
class Http:
    rate: Rate = opt(Rate, "the politeness budget (Figshare asks for 1 request per second)")
    per_host: bool = opt(False, "true: API and stats hosts get a budget each; false: one shared")
    concurrency: int = opt(4, "requests in flight; separate from the rate", min=1, max=256)
    timeout: Timeouts = opt(Timeouts, "per attempt")
    retry: Retry = opt(Retry, "an id still failing after them goes to errors.ndjson")
    page_size: int = opt(1000, "items asked per list page", min=1, max=1000)
    max_body: int = opt(64 * 2**20, "bytes one buffered answer may hold (64 MiB)", min=1024,
                    max=2**30)


@dataclass(frozen=True)
class Api:
    url: str = opt(DEFAULT_API_URL, "REST API base; FIGSHARE_API_URL, --api-url override it",
                   check=check_url, allowed="http(s) URL")
    token: Secret | None = opt(None, "personal token; account and admin sources need it")
    admin_read: str = opt("documented", "institution_articles/reviews records: documented (public "
                          "ones from /articles/{id}, private ones as their owner via "
                          "impersonate) or account (GET /account/articles/{id} for all, where "
                          "the service allows it)", choices=("documented", "account"))


@dataclass(frozen=True)
class Series:
    """stats.timeline or stats.breakdown: granularity, date range, which items and counters."""

    granularity: str = opt(doc="one number per period",
                           choices=("day", "month", "year", "total"))
    start: str = opt(doc="the first day", check=_day, allowed="YYYY-MM-DD")
    end: str | None = opt(None, "the last day; unset: the day the run starts (UTC)", check=_day,
                          allowed="YYYY-MM-DD, not before start")
    items: tuple[str, ...] = opt(("article",), "whose series", nonempty=True, choices=(
        "article", "author", "collection", "group", "project"))
    counters: tuple[str, ...] = opt(COUNTERS, "which counters", choices=COUNTERS)

    def __post_init__(self) -> None:
        if self.end is not None and self.end < self.start:
            raise Invalid("end", f"{self.end} is before start {self.start}")


@dataclass(frozen=True)
class Entities:
    """Ids whose timelines/breakdowns are fetched once each (not per article)."""

    group: tuple[int, ...] | None = opt(None, "unset: the groups of the harvested articles")
    collection: tuple[int, ...] = opt((), "collection ids")
    project: tuple[int, ...] = opt((), "project ids")
    author: tuple[int, ...] = opt((), "author ids")


@dataclass(frozen=True)
class Stats:
    url: str = opt(DEFAULT_STATS_URL, "stats host; FIGSHARE_STATS_URL, --stats-url override it",
                   check=check_url, allowed="http(s) URL")
    counters: tuple[str, ...] = opt(COUNTERS, "totals per article ([]: none)", choices=COUNTERS)
    institution: str | None = opt(None, "string id such as lboro: institution-scoped numbers")
    user: Secret | None = opt(None, "HTTP Basic user, for the institution scope")
    password: Secret | None = opt(None, "HTTP Basic password, with user")
    method: str = opt("auto", "tops: one ranking per counter (institution scope); auto: tops "
                      "for institution-wide sources with user/password, else per-item",
                      choices=("auto", "per-item", "tops"))
    top_count: int = opt(10_000, "`count` asked of /top; a full ranking falls back to per-item",
                         min=1, max=1_000_000)
    top_verify: int = opt(3, "unranked items whose per-item total must be 0 before a ranking "
                          "shorter than top_count is trusted to be complete", min=1, max=1_000)
    timeline: Series | None = opt(None, "a timeline per item (counts per period)")
    breakdown: Series | None = opt(None, "a breakdown per item (by country; long ranges split)")
    entities: Entities = opt(Entities, "groups, collections, projects, authors with series")

    def __post_init__(self) -> None:
        basic = self.user is not None
        if basic != (self.password is not None):
            raise Invalid("", "give both user and password, or neither")
        if self.method == "tops" and not (self.institution and basic):
            raise Invalid("method", "'tops' ranks an institution's items: it needs "
                          "stats.institution and stats.user/password (HTTP Basic)")
        asked: set[str] = set()
        for key, series in (("timeline", self.timeline), ("breakdown", self.breakdown)):
            if series and self.institution and not basic:
                raise Invalid(key, f"the institution scope ({self.institution}) needs stats.user "
                              "and stats.password (HTTP Basic; leave stats.institution out for "
                              "public numbers)")
            for kind in series.items if series else ():
                if kind not in ("article", "group") and not getattr(self.entities, kind):
                    raise Invalid(f"{key}.items", f"{kind!r} needs ids in stats.entities.{kind}")
                asked.add(kind)
        for kind in ("group", "collection", "project", "author"):
            if getattr(self.entities, kind) and kind not in asked:
                raise Invalid(f"entities.{kind}", f"{kind!r} is in neither "
                              "stats.timeline.items nor stats.breakdown.items")


def _extension(value: str) -> str:
    if not value.strip(". "):
        raise ValueError("expected a list of extensions such as [csv, zip]")
    return value.strip(". ").lower()


def _doctor(ctx: Reader, value: Any, key: str) -> str:
    if value is False or value is None:  # YAML reads a bare `off` as false
        return "off"
    if value is True:
        raise ctx.fail(key, f"expected one of {list(DOCTOR_MODES)}, got true")
    return str(ctx.scalar(str, value, key, {"choices": DOCTOR_MODES}))


@dataclass(frozen=True)
class Files:
    """Opt-in file downloads into a persistent tree beside the snapshots."""

    download: bool = opt(False, "download the harvested articles' files")
    dir: str | None = opt(None, "the files' tree; unset: OUTPUT/NAME/files", check=_local,
                          allowed="local path")
    url: str = opt(DEFAULT_DOWNLOAD_URL, "the download host; FIGSHARE_DOWNLOAD_URL overrides it",
                   check=check_url, allowed="http(s) URL")
    extensions: tuple[str, ...] = opt((), "only these (no dot, any case); []: every file",
                                      check=_extension)
    max_size: int | None = opt(None, "bytes; larger files are recorded, not fetched", min=1)
    max_total_bytes: int | None = opt(None, "bytes one run may download; the rest skipped", min=1)
    link_only: bool = opt(False, "fetch files hosted elsewhere (no md5 to check) too")
    private_token: bool = opt(False, "send the API token for drafts' files (account sources)")
    share_rate: bool = opt(False, "the download host draws on the API host's rate budget")
    max_failures: int = opt(0, "failed downloads a run may have and still exit 0", min=0)


@dataclass(frozen=True)
class Output:
    dir: str = opt("output", "where snapshots go; --output overrides it",
                   check=check_output_dir, allowed="local path or s3://bucket/prefix")
    formats: tuple[str, ...] = opt(FORMATS, "either or both", choices=FORMATS, nonempty=True)
    keep: int = opt(0, "complete snapshots kept (0: all); LATEST's is never deleted", min=0)
    state_dir: str | None = opt(None, "journal, catalog and lock; unset: OUTPUT/NAME/.state, or "
                                ".harvester-state/NAME for s3://", check=_local,
                                allowed="local path")

    def __post_init__(self) -> None:
        if self.keep and self.dir.startswith(S3_SCHEME):
            raise Invalid("keep", "not supported for s3:// output yet; leave it 0 "
                          "(retention on object storage is not implemented)")


@dataclass(frozen=True)
class Guard:
    """When a full run must not move LATEST: it would tell the warehouse items were deleted."""

    min_ratio: float = opt(0.5, "least share of the last complete snapshot's records a full "
                           "run must have to be published", min=0, max=1)


@dataclass(frozen=True)
class Warehouse:
    duckdb: str = opt(doc="the DuckDB file every published snapshot is loaded into",
                      nonempty=True)


@dataclass(frozen=True)
class Incremental:
    """Nightly runs fetch only what changed since the last good run; stats for known items."""

    overlap_hours: float = opt(24.0, "ask again this far before the last good run's start", min=0)
    stats: str = opt("all", "refresh totals of unchanged known items",
                     choices=("all", "recent", "none"))
    recent_days: int = opt(90, "with stats: recent, items published within this many days",
                           min=1)
    full_every_days: float = opt(7.0, "a full run (which sees deletions) at least this often",
                                 gt=0)
    budget: str | None = opt(None, "each run stops fetching after this long (8h, 90m) and "
                             "publishes; stalest stats wait (--budget, --until override it)",
                             check=_duration, allowed="a duration such as 8h or 1h30m")
    conditional: bool = opt(True, "ask for known records with If-None-Match/If-Modified-Since; "
                            "a 304 keeps the record, refreshes its stats only")


@dataclass(frozen=True)
class Source:
    """One entry of `sources:`; `params` holds the kind's validated parameters."""

    kind: str
    name: str
    params: Mapping[str, Any]


# A source parameter is "int", "str", "date", "ids" (a non-empty list), or a tuple of its values.

_FILTERS: dict[str, Any] = {  # accepted by GET /articles and POST /articles/search (NOTES 4.1)
    "institution": "int", "group": "int", "item_type": "int", "published_since": "date",
    "modified_since": "date", "doi": "str", "handle": "str", "resource_doi": "str",
    "order": ("published_date", "created_date", "modified_date", "views", "shares", "downloads",
              "cites"), "order_direction": ("asc", "desc")}
SOURCE_KINDS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # kind: (parameters and their types, required parameters)
    "search": ({"search_for": "str", "project_id": "int", **_FILTERS}, ()),
    "articles": (dict(_FILTERS), ()),
    "group": (dict(_FILTERS), ("group",)),
    "institution": ({**_FILTERS, "reconcile": "str"}, ("institution",)),
    "ids": ({"ids": "ids"}, ("ids",)),
    # the token owner's items, drafts included: POST /account/articles/search, or (listing:
    # list, no filters) GET /account/articles
    "account": ({"listing": ("search", "list"), **{k: _FILTERS[k] for k in (
        "published_since", "modified_since", "item_type", "group")}}, ()),
    # one author (name or ORCID), an institution's items for its admins (drafts too), its review
    # queue, a collection or a project and their articles, a file of ids or DOIs, OAI-PMH ids
    "author": ({"full_name": "str", "orcid": "str", **_FILTERS}, ()),
    "institution_articles": ({k: _FILTERS[k] for k in (
        "published_since", "modified_since", "item_type", "group", "resource_doi",
        "order_direction")} | {"order": ("published_date", "modified_date"), "status": "int"},
        ()),
    "reviews": ({"status": ("pending", "approved", "rejected", "closed"), "group_id": "int"}, ()),
    "collection": ({"collection": "int"}, ("collection",)),
    "collections": ({"institution": "int", "group": "int"}, ()),  # theirs, via GET /collections
    "project": ({"project": "int"}, ("project",)),
    "ids_file": ({"path": "str", "doi_match": ("doi", "any")}, ("path",)),
    "oai": ({"set": "str", "from": "date", "until": "date"}, ()),
}
# list sources that accept modified_since, so an incremental run can ask for changes only
INCREMENTAL_KINDS = frozenset({"search", "articles", "group", "institution", "author",
                               "institution_articles", "account"})
# ids whose full record comes from /account/articles/{id}
ACCOUNT_KINDS = frozenset({"account", "institution_articles", "reviews"})
MAX_SOURCES = 62
_OAI_SET = re.compile(r"(portal|item_type|category)_\d+|month_year_\d{1,2}_\d{4}")


def read_sources(ctx: Reader, raw: Any, key: str) -> tuple[Source, ...]:
    if not isinstance(raw, list) or not raw:
        raise ctx.fail(key, "expected a non-empty list of sources, e.g. '- kind: group'")
    if len(raw) > MAX_SOURCES:
        raise ctx.fail(key, f"at most {MAX_SOURCES} sources per harvest, got {len(raw)}")
    out: list[Source] = []
    for i, item in enumerate(raw):
        at = f"{key}[{i}]"
        m = ctx.mapping(item, at)
        kind = m.get("kind")
        if kind not in SOURCE_KINDS:
            raise ctx.fail(f"{at}.kind", f"{kind!r} is not a source kind; "
                           f"valid: {sorted(SOURCE_KINDS)}")
        spec, required = SOURCE_KINDS[kind]
        ctx.known(m, at, ("kind", "name", *spec))
        params = {p: _param(ctx, m[p], f"{at}.{p}", t) for p, t in spec.items() if p in m}
        for p in required:
            if p not in params:
                raise ctx.fail(f"{at}.{p}", f"required for kind {kind!r}")
        try:
            _check_source(ctx, kind, params)
        except Invalid as exc:
            raise ctx.fail(f"{at}.{exc.key}", exc.problem) from None
        name = ctx.scalar(str, m["name"], f"{at}.name") if m.get("name") else f"{kind}-{i + 1}"
        if name in {s.name for s in out}:
            raise ctx.fail(f"{at}.name", f"{name!r} is used by another source")
        out.append(Source(kind=kind, name=name, params=params))
    return tuple(out)


def _param(ctx: Reader, value: Any, key: str, kind: Any) -> Any:
    if kind == "ids":
        return ctx.ids(value, key)
    if kind == "int":
        return ctx.scalar(int, value, key, {"min": 0})
    rules = {"str": {}, "date": {"check": check_date}}.get(kind, {"choices": kind})
    return ctx.scalar(str, value, key, rules)


def _check_source(ctx: Reader, kind: str, params: dict[str, Any]) -> None:
    """Rules that the parameters' types alone do not say."""
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    for p in ("published_since", "modified_since", "from"):
        if params.get(p, "")[:10] > tomorrow:
            raise Invalid(p, f"{params[p]} is in the future: nothing would match it")
    if params.get("until", "9") < params.get("from", ""):
        raise Invalid("until", f"{params['until']} is before from {params['from']}")
    if params.get("reconcile", "none") not in ("oai", "none"):
        raise Invalid("reconcile", "must be 'oai' (check against the OAI-PMH portal set) or "
                      "'none'")
    narrowing = [k for k in ("group", "item_type", "modified_since", "doi", "handle",
                             "resource_doi") if k in params]
    if params.get("reconcile") == "oai" and narrowing:
        raise Invalid("reconcile", f"oai compares with the whole portal set, but {narrowing[0]} "
                      "narrows this source: drop one of the two")
    if kind == "collections" and not {"institution", "group"} & set(params):
        raise Invalid("institution", "give institution or group (or both): whose collections")
    if kind == "account" and params.get("listing") == "list" and len(params) > 1:
        raise Invalid("listing", "list (GET /account/articles) takes no filters; drop them "
                      "or use search")
    if kind == "author" and ("full_name" in params) == ("orcid" in params):
        raise Invalid("full_name", "give exactly one of full_name or orcid")
    if kind == "oai" and not _OAI_SET.fullmatch(params.get("set", "portal_0")):
        raise Invalid("set", f"{params['set']!r} is not an OAI-PMH set such as portal_319, "
                      "item_type_3, category_42 or month_year_10_2016")
    if kind == "ids_file":
        path = Path(params["path"]).expanduser()
        if not path.is_absolute() and Path(ctx.where).is_file():
            path = Path(ctx.where).resolve().parent / path  # relative to the config file
        if not path.is_file():
            raise Invalid("path", f"{str(path)!r} is not a readable file")
        read_ids_file(path)
        params["path"] = str(path.resolve())


_DOI = re.compile(r"10\.\d{4,9}/\S+")
MAX_CONFIG_BYTES = 1 << 20
MAX_IDS_FILE_BYTES = 256 << 20  # millions of ids or DOIs


def read_text(path: Path, cap: int, what: str) -> str:
    """A regular file's UTF-8 text of at most `cap` bytes: a device, a pipe or a huge file
    named by mistake is refused, never read whole."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: cannot read {what}: not a regular file")
        with path.open("rb") as f:  # /proc's files say size 0: what is read is capped too
            data = f.read(cap + 1) if info.st_size <= cap else b""
        if info.st_size > cap or len(data) > cap:
            raise ConfigError(f"{path}: cannot read {what}: larger than {cap >> 20} MiB")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None


def read_ids_file(path: Path) -> tuple[list[int], list[str]]:
    """An ids_file's article ids and DOIs, one a line ('#' comments); errors name file:line."""
    text = read_text(path, MAX_IDS_FILE_BYTES, "ids file")
    ids: list[int] = []
    dois: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if re.fullmatch(r"[0-9]{1,19}", line) and 1 <= int(line) <= MAX_ID:
            ids.append(int(line))
        elif doi := _DOI.search(line):
            dois.append(doi.group(0).rstrip(".,;"))
        elif line:
            raise ConfigError(f"{path}:{n}: {line[:80]!r} is neither an article id "
                              f"(1 to {MAX_ID}) nor a DOI")
    return ids, dois


@dataclass(frozen=True)
class Config:
    name: str = opt(doc="names the harvest's folder", check=_name, allowed="letters, digits, ._-")
    sources: tuple[Source, ...] = opt(doc="where ids come from (kinds below)", read=read_sources)
    contact: str = opt("", "an address for the User-Agent, e.g. mailto:you@example.org")
    api: Api = opt(Api, "the REST API")
    stats: Stats = opt(Stats, "the stats host")
    http: Http = opt(Http, "transport")
    output: Output = opt(Output, "snapshots")
    incremental: Incremental | None = opt(None, "present: nightly runs fetch only what changed")
    max_errors: int = opt(0, "failed ids tolerated before the exit code says partial", min=0)
    warehouse: Warehouse | None = opt(None, "present: load each published snapshot into DuckDB")
    files: Files = opt(Files, "file downloads")
    versions: str = opt("latest", "all: every version's full record too (article_versions)",
                        choices=("latest", "all"))
    guard: Guard = opt(Guard, "the publish guard")
    doctor: str = opt("off", "quick: each run starts with `harvester doctor`'s cheap checks",
                      choices=DOCTOR_MODES, read=_doctor)
    path: str = opt("<config>", internal=True)

    def __post_init__(self) -> None:
        if self.stats.method == "auto":  # a ranking per counter replaces 3 requests per item
            wide = any(s.kind in ("institution", "institution_articles") for s in self.sources)
            tops = wide and self.stats.institution and self.stats.user is not None
            object.__setattr__(self, "stats", replace(
                self.stats, method="tops" if tops else "per-item"))
        for i, source in enumerate(self.sources):
            if source.kind in ACCOUNT_KINDS and self.api.token is None:
                raise Invalid(f"sources[{i}]", f"kind {source.kind!r} needs api.token")
        if self.files.private_token and self.api.token is None:
            raise Invalid("files.private_token", "needs api.token")
        if self.files.download and not self.files.dir and self.output.dir.startswith(S3_SCHEME):
            raise Invalid("files.dir", "required (a local directory) when output.dir is s3://")
        if self.warehouse and "parquet" not in self.output.formats:
            raise Invalid("warehouse", "the warehouse loads the Parquet tables: add parquet to "
                          "output.formats")

    def fingerprint(self) -> str:
        """sha256 of the config with every secret left out: same harvest, same fingerprint."""
        view = public_view(self)
        del view["warehouse"]  # where snapshots are loaded afterwards is not part of the harvest
        del view["doctor"]  # nor are the checks a run starts with
        if view.get("incremental"):  # nor how long each night may run: a budgeted full
            del view["incremental"]["budget"]  # run resumes whatever tonight's budget
        return hashlib.sha256(orjson.dumps(view, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def state_path(self) -> Path:
        """Local home of the journal and lock (for s3:// output: .harvester-state/NAME here)."""
        if self.output.state_dir:
            return Path(self.output.state_dir)
        if self.output.dir.startswith(S3_SCHEME):
            return Path(".harvester-state") / self.name
        return Path(self.output.dir) / self.name / ".state"

    def files_path(self) -> Path:
        """Root of the downloaded files, kept across snapshots (large and stable)."""
        if self.files.dir:
            return Path(self.files.dir)
        return Path(self.output.dir) / self.name / "files"


def public_view(value: Any) -> Any:
    """The config as plain data, secrets replaced by a marker (for manifests and logs)."""
    if isinstance(value, Secret):
        return "***"
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: public_view(getattr(value, f.name))
                for f in fields(value) if not f.metadata.get("internal")}
    if isinstance(value, Mapping):
        return {str(k): public_view(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [public_view(v) for v in value]
    return value


def load(path: str | Path, env: Mapping[str, str] | None = None, **overrides: str | None) -> Config:
    """Read and validate a YAML config file. `overrides`: api_url, stats_url, output_dir."""
    text = read_text(Path(path), MAX_CONFIG_BYTES, "config file")
    return parse(text, str(path), env, **overrides)


def parse(text: str, where: str = "<config>", env: Mapping[str, str] | None = None, *,
          api_url: str | None = None, stats_url: str | None = None,
          output_dir: str | None = None) -> Config:
    """Validate YAML text. A flag beats the environment, which beats the file; a bad value is
    blamed on the flag or variable that gave it."""
    env = os.environ if env is None else env
    ctx = Reader(where, env)
    top = dict(ctx.mapping(load_yaml(text, where), ""))
    for section, key, flag, given, var, check in (
            ("api", "url", "--api-url", api_url, "FIGSHARE_API_URL", check_url),
            ("stats", "url", "--stats-url", stats_url, "FIGSHARE_STATS_URL", check_url),
            ("files", "url", "", None, "FIGSHARE_DOWNLOAD_URL", check_url),
            ("output", "dir", "--output", output_dir, "", check_output_dir)):
        label, value = (flag, given) if given else (var, env.get(var) if var else None)
        if value and isinstance(top.get(section) or {}, dict):
            try:
                top[section] = {**(top.get(section) or {}), key: check(value)}
            except ValueError as exc:
                raise ConfigError(f"{label}: {exc}") from None
    return typing.cast(Config, ctx.build(Config, top, path=where))


def reference() -> str:
    """docs/CONFIG.md's tables of keys and of source kinds, rendered from the fields' rules."""
    rows = [*table(Config), "", "| source kind | parameters (**required**) |", "|---|---|"]
    for name, (spec, required) in SOURCE_KINDS.items():
        params = [f"**{p}**" if p in required else p for p in spec]
        rows.append(f"| `{name}` | {', '.join(params) or '(none)'} |")
    return "\n".join(rows)
