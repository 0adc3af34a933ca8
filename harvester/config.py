"""YAML harvest configuration -> frozen, typed Config; every error names the file and the key."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
import yaml

from harvester.errors import ConfigError

DEFAULT_API_URL = "https://api.figshare.com/v2"
DEFAULT_STATS_URL = "https://stats.figshare.com"
DEFAULT_DOWNLOAD_URL = "https://ndownloader.figshare.com"
COUNTERS = ("views", "downloads", "shares")
STATS_ITEMS = ("article", "author", "collection", "group", "project")
GRANULARITIES = ("day", "month", "year", "total")
STATS_METHODS = ("per-item", "tops")
VERSION_MODES = ("latest", "all")
FORMATS = ("ndjson", "parquet")
S3_SCHEME = "s3://"
ORDERS = ("published_date", "created_date", "modified_date", "views", "shares", "downloads",
          "cites")

T = TypeVar("T")


class Secret(str):
    """A credential: behaves as a string, never shows itself in repr, logs or manifests."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Rate:
    requests: int = 1
    per: float = 1.0


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 60.0
    total: float = 120.0


@dataclass(frozen=True)
class Retry:
    attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0


@dataclass(frozen=True)
class Http:
    rate: Rate = field(default_factory=Rate)
    per_host: bool = False  # False: the API and stats hosts share one budget (Figshare's advice)
    concurrency: int = 4
    timeout: Timeouts = field(default_factory=Timeouts)
    retry: Retry = field(default_factory=Retry)
    page_size: int = 1000  # items asked per list page (1 to 1,000)
    max_body: int = 64 * 2**20  # bytes one buffered response may hold, decompressed


@dataclass(frozen=True)
class Api:
    url: str = DEFAULT_API_URL
    token: Secret | None = None


@dataclass(frozen=True)
class Series:
    """stats.timeline or stats.breakdown: granularity, date range, which items and counters."""

    granularity: str
    start: str  # YYYY-MM-DD
    end: str | None = None  # None: the day the run starts (UTC)
    items: tuple[str, ...] = ("article",)
    counters: tuple[str, ...] = COUNTERS


@dataclass(frozen=True)
class Entities:
    """Ids whose timelines/breakdowns are fetched once each (not per article).

    group None: the groups of the harvested articles; the other kinds must be listed.
    """

    group: tuple[int, ...] | None = None
    collection: tuple[int, ...] = ()
    project: tuple[int, ...] = ()
    author: tuple[int, ...] = ()


@dataclass(frozen=True)
class Stats:
    url: str = DEFAULT_STATS_URL
    counters: tuple[str, ...] = COUNTERS
    institution: str | None = None  # string id such as "lboro": institution-scoped numbers
    user: Secret | None = None
    password: Secret | None = None
    method: str = "per-item"  # or "tops": totals from one ranking per counter (institution scope)
    top_count: int = 10_000  # `count` asked of /top; a full ranking falls back to per-item calls
    timeline: Series | None = None
    breakdown: Series | None = None
    entities: Entities = field(default_factory=Entities)


@dataclass(frozen=True)
class Files:
    """Opt-in file downloads into a persistent tree beside the snapshots."""

    download: bool = False
    dir: str | None = None  # None: OUTPUT/NAME/files (see Config.files_path)
    url: str = DEFAULT_DOWNLOAD_URL  # where ndownloader.figshare.com is (a mirror, the simulator)
    extensions: tuple[str, ...] = ()  # lower case, no dot; () = every extension
    max_size: int | None = None  # bytes; larger files are recorded, not fetched
    max_total_bytes: int | None = None  # bytes one run may download; the rest are skipped
    link_only: bool = False  # fetch files hosted elsewhere (no md5 to check) too
    private_token: bool = False  # send the API token for a draft's files (account sources)
    share_rate: bool = False  # the download host draws on the API host's rate budget


@dataclass(frozen=True)
class Output:
    dir: str = "output"  # a local directory or s3://bucket/prefix
    formats: tuple[str, ...] = FORMATS
    keep: int = 0  # complete snapshots to keep (0: all); the one LATEST names is never deleted
    state_dir: str | None = None  # local home of the run journal and lock; see Config.state_path
    workers: int | None = None  # processes that help write the snapshot; None: by run size


@dataclass(frozen=True)
class Guard:
    """When a full run must not move LATEST: it would tell the warehouse items were deleted."""

    min_ratio: float = 0.5  # of the last complete snapshot's record count


@dataclass(frozen=True)
class Warehouse:
    duckdb: str  # the DuckDB file every published snapshot is loaded into


STATS_REFRESH = ("all", "recent", "none")


@dataclass(frozen=True)
class Incremental:
    """Nightly runs fetch only what changed since the last good run; stats for known items."""

    overlap_hours: float = 24.0  # re-ask this much before the high-water mark: nothing lost
    stats: str = "all"  # refresh totals of unchanged known items: all, recent or none
    recent_days: int = 90  # with stats: recent, items published within this many days
    full_every_days: float = 7.0  # a full run (which detects deletions) at least this often


@dataclass(frozen=True)
class Source:
    """One entry of `sources:`; `params` holds the kind's validated parameters."""

    kind: str
    name: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Config:
    name: str
    sources: tuple[Source, ...]
    contact: str = ""
    api: Api = field(default_factory=Api)
    stats: Stats = field(default_factory=Stats)
    http: Http = field(default_factory=Http)
    output: Output = field(default_factory=Output)
    incremental: Incremental | None = None  # None: every run is a full run
    max_errors: int = 0
    warehouse: Warehouse | None = None  # None: snapshots are not loaded anywhere after a run
    files: Files = field(default_factory=Files)
    versions: str = "latest"  # "all": every version's full record too (article_versions)
    guard: Guard = field(default_factory=Guard)
    path: str = "<config>"

    def fingerprint(self) -> str:
        """sha256 of the config with every secret left out: same harvest, same fingerprint."""
        view = public_view(self)
        del view["warehouse"]  # where snapshots are loaded afterwards is not part of the harvest
        del view["output"]["workers"]  # nor how many processes write it
        return hashlib.sha256(orjson.dumps(view, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def state_path(self) -> Path:
        """Local home of the run journal and lock: output.state_dir if given, else
        OUTPUT/NAME/.state, or .harvester-state/NAME in the working directory for s3:// output."""
        if self.output.state_dir:
            return Path(self.output.state_dir)
        if self.output.dir.startswith(S3_SCHEME):
            return Path(".harvester-state") / self.name
        return Path(self.output.dir) / self.name / ".state"

    def files_path(self) -> Path:
        """Root of the downloaded files: files.dir, else OUTPUT/NAME/files (kept across
        snapshots: files are large and stable, each snapshot's `downloads` table lists them)."""
        if self.files.dir:
            return Path(self.files.dir)
        return Path(self.output.dir) / self.name / "files"


def public_view(value: Any) -> Any:
    """The config as plain data, secrets replaced by a marker (for manifests and logs)."""
    if isinstance(value, Secret):
        return "***"
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: public_view(getattr(value, f.name))
                for f in fields(value) if f.name != "path"}
    if isinstance(value, Mapping):
        return {str(k): public_view(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [public_view(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# ---------------------------------------------------------------- the sources' parameter grammar

_INT = "int"
_STR = "str"
_DATE = "date"
_INT_LIST = "int list"

# filters accepted by GET /articles and POST /articles/search (NOTES §4.1, §4.2)
_FILTERS: dict[str, str] = {
    "institution": _INT,
    "group": _INT,
    "item_type": _INT,
    "published_since": _DATE,
    "modified_since": _DATE,
    "doi": _STR,
    "handle": _STR,
    "resource_doi": _STR,
    "order": _STR,
    "order_direction": _STR,
}

SOURCE_KINDS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    # kind: (parameters and their types, required parameters)
    "search": ({"search_for": _STR, "project_id": _INT, **_FILTERS}, ()),
    "articles": (dict(_FILTERS), ()),
    "group": ({**_FILTERS}, ("group",)),
    "institution": ({**_FILTERS, "reconcile": _STR}, ("institution",)),
    "ids": ({"ids": _INT_LIST}, ("ids",)),
    "account": ({}, ()),  # the token owner's items, drafts included (GET /account/articles)
    # one author (name or ORCID), an institution's items for its admins (drafts too), its review
    # queue, a collection or a project and their articles, a file of ids or DOIs, OAI-PMH ids
    "author": ({"full_name": _STR, "orcid": _STR, **_FILTERS}, ()),
    "institution_articles": ({k: _FILTERS[k] for k in (
        "published_since", "modified_since", "item_type", "group", "resource_doi", "order",
        "order_direction")} | {"status": _INT}, ()),
    "reviews": ({"status": _STR, "group_id": _INT}, ()),
    "collection": ({"collection": _INT}, ("collection",)),
    "project": ({"project": _INT}, ("project",)),
    "ids_file": ({"path": _STR}, ("path",)),
    "oai": ({"set": _STR, "from": _DATE, "until": _DATE}, ()),
}
# list sources that accept modified_since, so an incremental run can ask for changes only
INCREMENTAL_KINDS = frozenset({"search", "articles", "group", "institution", "author",
                               "institution_articles"})
# ids whose full record comes from /account/articles/{id}
ACCOUNT_KINDS = frozenset({"account", "institution_articles", "reviews"})


# ---------------------------------------------------------------- loading


def load(path: str | Path, env: Mapping[str, str] | None = None, **overrides: str | None) -> Config:
    """Read and validate a YAML config file. `overrides`: api_url, stats_url, output_dir."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return parse(text, str(p), os.environ if env is None else env, **overrides)


def parse(
    text: str,
    where: str = "<config>",
    env: Mapping[str, str] | None = None,
    *,
    api_url: str | None = None,
    stats_url: str | None = None,
    output_dir: str | None = None,
) -> Config:
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML{at}: {problem}") from None
    v = _Validator(where, env)
    top = v.mapping(raw, "")
    v.known(
        top,
        "",
        ("name", "contact", "api", "stats", "http", "sources", "output", "incremental",
         "max_errors", "warehouse", "files", "versions", "guard"),
    )
    name = v.string(top.get("name"), "name", required=True)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ConfigError(
            f"{where}: name: {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)"
        )

    api_raw = v.mapping(top.get("api", {}), "api")
    v.known(api_raw, "api", ("url", "token"))
    api = Api(
        url=_url(api_url or env.get("FIGSHARE_API_URL") or v.string(api_raw.get("url"), "api.url")
                 or DEFAULT_API_URL, where, "api.url"),
        token=v.secret(api_raw.get("token"), "api.token"),
    )

    st_raw = v.mapping(top.get("stats", {}), "stats")
    v.known(st_raw, "stats", ("url", "counters", "institution", "user", "password", "method",
                              "top_count", "timeline", "breakdown", "entities"))
    counters = tuple(v.choices(st_raw.get("counters", list(COUNTERS)), "stats.counters", COUNTERS))
    stats = Stats(
        url=_url(stats_url or env.get("FIGSHARE_STATS_URL")
                 or v.string(st_raw.get("url"), "stats.url")
                 or DEFAULT_STATS_URL, where, "stats.url"),
        counters=counters,
        institution=v.string(st_raw.get("institution"), "stats.institution") or None,
        user=v.secret(st_raw.get("user"), "stats.user"),
        password=v.secret(st_raw.get("password"), "stats.password"),
        method=v.one_of(st_raw.get("method", "per-item"), "stats.method", STATS_METHODS),
        top_count=v.integer(st_raw.get("top_count", 10_000), "stats.top_count", minimum=1,
                            maximum=1_000_000),
        timeline=_series(v, st_raw["timeline"], "stats.timeline") if "timeline" in st_raw else None,
        breakdown=(_series(v, st_raw["breakdown"], "stats.breakdown")
                   if "breakdown" in st_raw else None),
        entities=_entities(v, st_raw.get("entities")),
    )
    if (stats.user is None) != (stats.password is None):
        raise ConfigError(f"{where}: stats: give both user and password, or neither")
    _check_stats(v, stats)

    http = _http(v, top.get("http", {}))

    out_raw = v.mapping(top.get("output", {}), "output")
    v.known(out_raw, "output", ("dir", "formats", "keep", "state_dir", "workers"))
    workers = out_raw.get("workers", "auto")
    output = Output(
        dir=output_dir or v.string(out_raw.get("dir"), "output.dir") or "output",
        formats=tuple(v.choices(out_raw.get("formats", list(FORMATS)), "output.formats", FORMATS)),
        keep=v.integer(out_raw.get("keep", 0), "output.keep", minimum=0),
        state_dir=v.string(out_raw.get("state_dir"), "output.state_dir") or None,
        workers=None if workers == "auto" else v.integer(
            workers, "output.workers", minimum=0, maximum=64),
    )
    if not output.formats:
        raise ConfigError(f"{where}: output.formats: name at least one of {list(FORMATS)}")
    _output_dir(output.dir, where)
    if output.keep and output.dir.startswith(S3_SCHEME):
        raise ConfigError(f"{where}: output.keep: not supported for s3:// output yet; "
                          f"leave it 0 (retention on object storage is not implemented)")
    if output.state_dir and "://" in output.state_dir:
        raise ConfigError(f"{where}: output.state_dir: must be a local directory, "
                          f"got {output.state_dir!r}")
    warehouse = _warehouse(v, top["warehouse"], output) if "warehouse" in top else None

    sources = _sources(v, top.get("sources"))
    for i, source in enumerate(sources):
        if source.kind in ACCOUNT_KINDS and api.token is None:
            raise ConfigError(f"{where}: sources[{i}]: kind {source.kind!r} needs api.token")
    incremental = _incremental(v, top["incremental"]) if "incremental" in top else None
    files = _files(v, top.get("files"), env, output, api)
    max_errors = v.integer(top.get("max_errors", 0), "max_errors", minimum=0)
    return Config(
        name=name,
        sources=sources,
        contact=v.string(top.get("contact"), "contact") or "",
        api=api,
        stats=stats,
        http=http,
        output=output,
        incremental=incremental,
        max_errors=max_errors,
        warehouse=warehouse,
        files=files,
        versions=v.one_of(top.get("versions", "latest"), "versions", VERSION_MODES),
        guard=_guard(v, top.get("guard", {})),
        path=where,
    )


def _guard(v: _Validator, raw: Any) -> Guard:
    m = v.mapping(raw, "guard")
    v.known(m, "guard", ("min_ratio",))
    ratio = v.number(m.get("min_ratio", 0.5), "guard.min_ratio")
    if not 0 <= ratio <= 1:
        raise v.fail("guard.min_ratio", f"{ratio} is not between 0 and 1")
    return Guard(min_ratio=ratio)


def _series(v: _Validator, raw: Any, key: str) -> Series:
    m = v.mapping(raw, key)
    v.known(m, key, ("granularity", "start", "end", "items", "counters"))
    if "granularity" not in m:
        raise v.fail(f"{key}.granularity", f"required: one of {list(GRANULARITIES)}")
    if "start" not in m:
        raise v.fail(f"{key}.start", "required: the first day (YYYY-MM-DD)")
    start = v.day(m["start"], f"{key}.start")
    end = v.day(m["end"], f"{key}.end") if m.get("end") is not None else None
    if end is not None and end < start:
        raise v.fail(f"{key}.end", f"{end} is before start {start}")
    items = tuple(v.choices(m.get("items", ["article"]), f"{key}.items", STATS_ITEMS))
    if not items:
        raise v.fail(f"{key}.items", f"name at least one of {list(STATS_ITEMS)}")
    return Series(
        granularity=v.one_of(m["granularity"], f"{key}.granularity", GRANULARITIES),
        start=start,
        end=end,
        items=items,
        counters=tuple(v.choices(m.get("counters", list(COUNTERS)), f"{key}.counters", COUNTERS)),
    )


def _entities(v: _Validator, raw: Any) -> Entities:
    m = v.mapping(raw, "stats.entities")
    kinds = tuple(k for k in STATS_ITEMS if k != "article")
    v.known(m, "stats.entities", kinds)
    ids: dict[str, tuple[int, ...]] = {}
    for kind in kinds:
        if kind in m:
            value = m[kind]
            key = f"stats.entities.{kind}"
            if not isinstance(value, list):
                raise v.fail(key, "expected a list of integer ids")
            ids[kind] = tuple(v.integer(x, f"{key}[{i}]", minimum=1) for i, x in enumerate(value))
    return Entities(**ids)


def _check_stats(v: _Validator, stats: Stats) -> None:
    """Cross-key rules: what the institution scope needs, and entity ids that are used."""
    basic = stats.user is not None
    if stats.method == "tops" and not (stats.institution and basic):
        raise v.fail("stats.method", "'tops' ranks an institution's items: it needs "
                     "stats.institution and stats.user/password (HTTP Basic)")
    asked: set[str] = set()
    for key, series in (("stats.timeline", stats.timeline), ("stats.breakdown", stats.breakdown)):
        if series is None:
            continue
        if stats.institution and not basic:
            raise v.fail(key, f"the institution scope ({stats.institution}) needs stats.user "
                         "and stats.password (HTTP Basic; leave stats.institution out for "
                         "public numbers)")
        asked.update(series.items)
        for kind in series.items:
            if kind in ("collection", "project", "author") and not getattr(stats.entities, kind):
                raise v.fail(f"{key}.items", f"{kind!r} needs ids in stats.entities.{kind}")
    for kind in ("group", "collection", "project", "author"):
        if getattr(stats.entities, kind) and kind not in asked:
            raise v.fail(f"stats.entities.{kind}", f"{kind!r} is in neither "
                         "stats.timeline.items nor stats.breakdown.items")


def _files(v: _Validator, raw: Any, env: Mapping[str, str], output: Output, api: Api) -> Files:
    m = v.mapping(raw, "files")
    v.known(m, "files", ("download", "dir", "url", "extensions", "max_size", "max_total_bytes",
                         "link_only", "private_token", "share_rate"))
    exts = m.get("extensions", [])
    if not isinstance(exts, list) or not all(isinstance(e, str) and e.strip(". ") for e in exts):
        raise v.fail("files.extensions", "expected a list of extensions such as [csv, zip]")
    url = env.get("FIGSHARE_DOWNLOAD_URL") or v.string(m.get("url"), "files.url")
    files = Files(
        download=v.boolean(m.get("download", False), "files.download"),
        dir=v.string(m.get("dir"), "files.dir") or None,
        url=_url(url or DEFAULT_DOWNLOAD_URL, v.where, "files.url"),
        extensions=tuple(dict.fromkeys(e.strip(". ").lower() for e in exts)),
        max_size=(v.integer(m["max_size"], "files.max_size", minimum=1)
                  if m.get("max_size") is not None else None),
        max_total_bytes=(v.integer(m["max_total_bytes"], "files.max_total_bytes", minimum=1)
                         if m.get("max_total_bytes") is not None else None),
        link_only=v.boolean(m.get("link_only", False), "files.link_only"),
        private_token=v.boolean(m.get("private_token", False), "files.private_token"),
        share_rate=v.boolean(m.get("share_rate", False), "files.share_rate"),
    )
    if files.private_token and api.token is None:
        raise v.fail("files.private_token", "needs api.token")
    if files.dir and "://" in files.dir:
        raise v.fail("files.dir", f"must be a local directory, got {files.dir!r}")
    if files.download and not files.dir and output.dir.startswith(S3_SCHEME):
        raise v.fail("files.dir", "required (a local directory) when output.dir is s3://")
    return files


def _http(v: _Validator, raw: Any) -> Http:
    h = v.mapping(raw, "http")
    v.known(h, "http", ("rate", "per_host", "concurrency", "timeout", "retry", "page_size",
                        "max_body"))
    r = v.mapping(h.get("rate", {}), "http.rate")
    v.known(r, "http.rate", ("requests", "per"))
    rate = Rate(
        requests=v.integer(r.get("requests", 1), "http.rate.requests", minimum=1),
        per=v.number(r.get("per", 1.0), "http.rate.per", positive=True),
    )
    t = v.mapping(h.get("timeout", {}), "http.timeout")
    v.known(t, "http.timeout", ("connect", "read", "total"))
    timeouts = Timeouts(
        connect=v.number(t.get("connect", 10.0), "http.timeout.connect", positive=True),
        read=v.number(t.get("read", 60.0), "http.timeout.read", positive=True),
        total=v.number(t.get("total", 120.0), "http.timeout.total", positive=True),
    )
    rt = v.mapping(h.get("retry", {}), "http.retry")
    v.known(rt, "http.retry", ("attempts", "backoff_base", "backoff_max"))
    retry = Retry(
        attempts=v.integer(rt.get("attempts", 6), "http.retry.attempts", minimum=1),
        backoff_base=v.number(rt.get("backoff_base", 1.0), "http.retry.backoff_base",
                              positive=True),
        backoff_max=v.number(rt.get("backoff_max", 60.0), "http.retry.backoff_max", positive=True),
    )
    return Http(
        rate=rate,
        per_host=v.boolean(h.get("per_host", False), "http.per_host"),
        concurrency=v.integer(h.get("concurrency", 4), "http.concurrency", minimum=1, maximum=256),
        timeout=timeouts,
        retry=retry,
        page_size=v.integer(h.get("page_size", 1000), "http.page_size", minimum=1, maximum=1000),
        max_body=v.integer(h.get("max_body", 64 * 2**20), "http.max_body", minimum=1024),
    )


def _incremental(v: _Validator, raw: Any) -> Incremental:
    m = v.mapping(raw, "incremental")
    v.known(m, "incremental", ("overlap_hours", "stats", "recent_days", "full_every_days"))
    stats = v.string(m.get("stats", "all"), "incremental.stats")
    if stats not in STATS_REFRESH:
        raise v.fail("incremental.stats", f"{stats!r} is not one of {list(STATS_REFRESH)}")
    overlap = v.number(m.get("overlap_hours", 24), "incremental.overlap_hours")
    if overlap < 0:
        raise v.fail("incremental.overlap_hours", f"must not be negative, got {overlap:g}")
    return Incremental(
        overlap_hours=overlap,
        stats=stats,
        recent_days=v.integer(m.get("recent_days", 90), "incremental.recent_days", minimum=1),
        full_every_days=v.number(m.get("full_every_days", 7), "incremental.full_every_days",
                                 positive=True),
    )


def _sources(v: _Validator, raw: Any) -> tuple[Source, ...]:
    if raw is None:
        raise ConfigError(f"{v.where}: sources: required (a list of sources, e.g. '- kind: group')")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{v.where}: sources: expected a non-empty list of sources")
    out: list[Source] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        key = f"sources[{i}]"
        m = v.mapping(item, key)
        kind = m.get("kind")
        if kind not in SOURCE_KINDS:
            raise ConfigError(
                f"{v.where}: {key}.kind: {kind!r} is not a source kind; "
                f"valid: {sorted(SOURCE_KINDS)}"
            )
        spec, required = SOURCE_KINDS[kind]
        v.known(m, key, ("kind", "name", *spec))
        params: dict[str, Any] = {}
        for pname, ptype in spec.items():
            if pname in m:
                params[pname] = v.typed(m[pname], f"{key}.{pname}", ptype)
        for pname in required:
            if pname not in params:
                raise ConfigError(f"{v.where}: {key}.{pname}: required for kind {kind!r}")
        if "order" in params and params["order"] not in ORDERS:
            raise ConfigError(
                f"{v.where}: {key}.order: {params['order']!r} is not an order; "
                f"valid: {list(ORDERS)}"
            )
        if params.get("order_direction", "asc") not in ("asc", "desc"):
            raise ConfigError(f"{v.where}: {key}.order_direction: must be 'asc' or 'desc'")
        _check_source(v, key, kind, params)
        name = v.string(m.get("name"), f"{key}.name") or f"{kind}-{i + 1}"
        if name in names:
            raise ConfigError(f"{v.where}: {key}.name: {name!r} is used by another source")
        names.add(name)
        out.append(Source(kind=kind, name=name, params=params))
    if len(out) > 62:
        raise ConfigError(f"{v.where}: sources: at most 62 sources per harvest, got {len(out)}")
    return tuple(out)


def _check_source(v: _Validator, key: str, kind: str, params: dict[str, Any]) -> None:
    """Rules of the newer kinds that their parameter types alone do not say."""
    def fail(pname: str, problem: str) -> ConfigError:
        return ConfigError(f"{v.where}: {key}.{pname}: {problem}")

    if params.get("reconcile", "none") not in ("oai", "none"):
        raise fail("reconcile", "must be 'oai' (check against the OAI-PMH portal set) or 'none'")
    narrowing = [k for k in ("group", "item_type", "modified_since", "doi", "handle",
                             "resource_doi") if k in params]
    if params.get("reconcile") == "oai" and narrowing:
        raise fail("reconcile", f"oai compares with the whole portal set, but {narrowing[0]} "
                   "narrows this source: drop one of the two")
    if kind == "author" and ("full_name" in params) == ("orcid" in params):
        raise fail("full_name", "give exactly one of full_name or orcid")
    if kind == "institution_articles" and params.get("order", "modified_date") not in (
            "published_date", "modified_date"):
        raise fail("order", "must be published_date or modified_date for this endpoint")
    if kind == "reviews" and params.get("status", "pending") not in (
            "pending", "approved", "rejected", "closed"):
        raise fail("status", "must be one of pending, approved, rejected, closed")
    if kind == "oai" and "set" in params and not re.fullmatch(
            r"(portal|item_type|category)_\d+|month_year_\d{1,2}_\d{4}", params["set"]):
        raise fail("set", f"{params['set']!r} is not an OAI-PMH set such as portal_319, "
                   "item_type_3, category_42 or month_year_10_2016")
    if kind == "ids_file":
        path = Path(params["path"]).expanduser()
        if not path.is_absolute() and Path(v.where).is_file():
            path = Path(v.where).resolve().parent / path  # relative to the config file
        if not path.is_file():
            raise fail("path", f"{str(path)!r} is not a readable file")
        params["path"] = str(path.resolve())


def _output_dir(value: str, where: str) -> None:
    """A local path or s3://bucket[/prefix]; another scheme would silently become a folder."""
    if value.startswith(S3_SCHEME):
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", value):
            raise ConfigError(f"{where}: output.dir: {value!r} is not s3://bucket[/prefix]")
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise ConfigError(f"{where}: output.dir: {value!r}: only a local directory or an "
                          f"s3://bucket/prefix URL")


def _warehouse(v: _Validator, raw: Any, output: Output) -> Warehouse:
    wh = v.mapping(raw, "warehouse")
    v.known(wh, "warehouse", ("duckdb",))
    path = v.string(wh.get("duckdb"), "warehouse.duckdb", required=True)
    if not path:
        raise v.fail("warehouse.duckdb", "give the DuckDB file to load snapshots into")
    if "parquet" not in output.formats:
        raise v.fail("warehouse", "the warehouse loads the Parquet tables: add parquet to "
                     "output.formats")
    return Warehouse(duckdb=path)


def _url(value: str, where: str, key: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(f"{where}: {key}: {value!r} is not an http(s) URL")
    if re.search(r"\s", value):
        raise ConfigError(f"{where}: {key}: {value!r} has white space in it")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {value!r} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ConfigError(f"{where}: {key}: {value!r} names no host")
    return value.rstrip("/")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Validator:
    """Small typed accessors that raise ConfigError naming the file and the dotted key."""

    def __init__(self, where: str, env: Mapping[str, str]) -> None:
        self.where = where
        self.env = env

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key or 'top level'}: {problem}")

    def interpolate(self, value: Any, key: str) -> Any:
        if not isinstance(value, str):
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.env:
                raise self.fail(key, f"environment variable {name} is not set")
            return self.env[name]

        return _ENV.sub(sub, value)

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_kind(value)}")
        return value

    def known(self, m: Mapping[str, Any], key: str, valid: tuple[str, ...]) -> None:
        for k in m:
            if k not in valid:
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(where, f"unknown key; valid keys here: {', '.join(valid)}")

    def string(self, value: Any, key: str, *, required: bool = False) -> str:
        if value is None:
            if required:
                raise self.fail(key, "required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(key, f"expected a string, got {_kind(value)}")
        return str(self.interpolate(str(value), key))

    def secret(self, value: Any, key: str) -> Secret | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(key, "expected a string such as '${FIGSHARE_TOKEN}'")
        if not _ENV.search(value):
            raise self.fail(key, "credentials must come from the environment: write '${VAR}'")
        resolved = self.interpolate(value, key)
        return Secret(resolved) if resolved else None

    def integer(self, value: Any, key: str, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        value = self.interpolate(value, key)
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(key, f"must be at most {maximum}, got {value}")
        return value

    def number(self, value: Any, key: str, *, positive: bool = False) -> float:
        value = self.interpolate(value, key)
        if isinstance(value, str):  # "${VAR}": the environment holds only strings
            try:
                value = float(value.strip())
            except ValueError:
                raise self.fail(key, f"expected a number, got {_kind(value)}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):  # `.inf` would make a window that never ends
            raise self.fail(key, f"must be a finite number, got {value}")
        if positive and not value > 0:
            raise self.fail(key, f"must be greater than 0, got {value}")
        return float(value)

    def one_of(self, value: Any, key: str, valid: tuple[str, ...]) -> str:
        if value not in valid:
            raise self.fail(key, f"{value!r} is not one of {list(valid)}")
        return str(value)

    def day(self, value: Any, key: str) -> str:
        """A calendar date, YYYY-MM-DD."""
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value.isoformat()
        text = self.string(value, key)
        try:
            if len(text) != 10:
                raise ValueError(text)
            return dt.date.fromisoformat(text).isoformat()
        except ValueError:
            raise self.fail(key, f"{text!r} is not a date (YYYY-MM-DD)") from None

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def choices(self, value: Any, key: str, valid: tuple[str, ...]) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list drawn from {list(valid)}, got {_kind(value)}")
        out: list[str] = []
        for item in value:
            if item not in valid:
                raise self.fail(key, f"{item!r} is not one of {list(valid)}")
            if item not in out:
                out.append(item)
        return out

    def date(self, value: Any, key: str) -> str:
        if isinstance(value, dt.datetime):
            stamp = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return stamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(value, dt.date):
            return value.isoformat()
        text = self.string(value, key)
        for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ"):
            try:
                dt.datetime.strptime(text, fmt)
                return text
            except ValueError:
                pass
        raise self.fail(key, f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)")

    def typed(self, value: Any, key: str, kind: str) -> Any:
        readers: dict[str, Callable[[Any, str], Any]] = {
            _INT: lambda x, k: self.integer(x, k, minimum=0),
            _STR: self.string,
            _DATE: self.date,
            _INT_LIST: self.int_list,
        }
        return readers[kind](value, key)

    def int_list(self, value: Any, key: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, "expected a non-empty list of integer ids")
        return tuple(self.integer(x, f"{key}[{i}]", minimum=1) for i, x in enumerate(value))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {value!r}", bool: f"{value}"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )
