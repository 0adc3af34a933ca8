"""What Figshare documents each request may look like, and a checker naming every departure.

The REST API is read from the official OpenAPI spec (swagger.json); the stats host, OAI-PMH and
the download host are not in it, so their shapes are written here from NOTES.md, section cited.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from harvester.periods import add_years
from harvester.simulator.behaviour import LogEntry

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "figshare-api"
SWAGGER = SPEC_DIR / "swagger.json"
API_BASE = "/v2"  # swagger.json has no servers entry; NOTES §1: https://api.figshare.com/v2

DATE = r"\d{4}-\d{2}-\d{2}"
DATE_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"


@dataclass(frozen=True)
class Param:
    """One documented parameter or body field: its type, range, allowed values and format."""

    name: str
    type: str = "string"  # "integer" | "string" | "boolean" | "groups" (stats /count body)
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None  # a full-match regex for string values
    required: bool = False

    def problems(self, value: Any, *, typed: bool) -> list[str]:
        """What is wrong with `value`; `typed`: a JSON value, else a query string's text."""
        if self.type == "integer":
            if typed:
                if not isinstance(value, int) or isinstance(value, bool):
                    return [f"{self.name}={value!r} is not an integer"]
                number = value
            else:
                if not re.fullmatch(r"-?\d+", str(value)):
                    return [f"{self.name}={value!r} is not an integer"]
                number = int(value)
            if self.minimum is not None and number < self.minimum:
                return [f"{self.name}={number} is below the declared minimum {self.minimum:g}"]
            if self.maximum is not None and number > self.maximum:
                return [f"{self.name}={number} is above the declared maximum {self.maximum:g}"]
            return []
        if self.type == "boolean":
            ok = isinstance(value, bool) if typed else value in ("true", "false")
            return [] if ok else [f"{self.name}={value!r} is not a boolean"]
        if self.type == "groups":  # NOTES §10: {"groups": [{"id": 327}, ...]}
            ok = isinstance(value, list) and all(
                isinstance(g, dict) and set(g) == {"id"} and isinstance(g["id"], int)
                and not isinstance(g["id"], bool) for g in value)
            return [] if ok else [f"{self.name}={value!r} is not a list of {{\"id\": n}}"]
        if typed and not isinstance(value, str):
            return [f"{self.name}={value!r} is not a string"]
        if self.enum is not None and value not in self.enum:
            return [f"{self.name}={value!r} is not one of {list(self.enum)}"]
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return [f"{self.name}={value!r} does not have the documented format"]
        return []


# a rule across parameters: (query incl. X-Cursor, path parameters) -> problems
Rule = Callable[[Mapping[str, str], Mapping[str, str]], list[str]]


@dataclass(frozen=True)
class Operation:
    """One documented operation on one host."""

    host: str  # "api" | "stats" | "download" (the simulator's host names)
    method: str
    template: str  # the documented path, e.g. "/articles/{article_id}" (no /v2)
    source: str  # where it is documented
    auth: str | None  # None: public (security: []); "token": the API token; "basic": stats Basic
    path_params: Mapping[str, Param] = field(default_factory=dict)
    query: Mapping[str, Param] = field(default_factory=dict)
    headers: Mapping[str, Param] = field(default_factory=dict)
    body: Mapping[str, Param] | None = None  # the JSON body's fields; None: no body documented
    rules: tuple[Rule, ...] = ()  # rules across parameters (paging styles, date spans, verbs)

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        parts = re.split(r"(\{[^}]+\})", self.template)
        return re.compile("".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p)
                                  for p in parts))

    @property
    def specificity(self) -> tuple[int, int]:
        """Literal paths before templated ones (/account/articles/search before {article_id})."""
        return self.template.count("{"), -len(self.template)


# ---- swagger.json --------------------------------------------------------------------------


def _format_of(description: str) -> str | None:
    """The date format a parameter's description documents (swagger.json writes it in prose)."""
    if "date-time(ISO 8601) YYYY-MM-DDTHH:mm:ssZ" in description:
        return f"{DATE}|{DATE_TIME}"
    if "date(ISO 8601) YYYY-MM-DD" in description:
        return DATE
    return None


def _param(name: str, schema: Mapping[str, Any], description: str = "",
           required: bool = False) -> Param:
    enum = schema.get("enum")
    return Param(name, schema.get("type", "string"), schema.get("minimum"), schema.get("maximum"),
                 tuple(enum) if enum else None, _format_of(description), required)


def _properties(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """A body schema's properties with its $ref and allOf parts merged in."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][name]
    props = dict(schema.get("properties", {}))
    for part in schema.get("allOf", ()):
        props.update(_properties(spec, part))
    return props


def _one_paging_style(query: Mapping[str, str], _: Mapping[str, str]) -> list[str]:
    """NOTES §3.1: page/page_size or offset/limit, never both; §3.3: no offset with X-Cursor."""
    if {"page", "page_size"} & set(query) and {"offset", "limit"} & set(query):
        return ["mixes page/page_size with offset/limit (NOTES §3.1: 422)"]
    if "X-Cursor" in query and "offset" in query:
        return ["offset sent with X-Cursor (NOTES §3.3: offset is not available with it)"]
    return []


def swagger_operations(path: Path = SWAGGER) -> list[Operation]:
    spec = json.loads(path.read_bytes())
    ops = []
    for template, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            by_place: dict[str, dict[str, Param]] = {"path": {}, "query": {}, "header": {}}
            for p in op.get("parameters", ()):
                by_place[p["in"]][p["name"]] = _param(p["name"], p.get("schema", {}),
                                                      p.get("description", ""),
                                                      p.get("required", False))
            body = None
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                body = {name: _param(name, s, s.get("description", ""))
                        for name, s in _properties(spec, content["schema"]).items()}
            # no top-level security in this spec: an operation without one is public too
            security = op.get("security", [])
            if security and method in ("get", "delete"):
                # NOTES §1 (description_api_impersonation): an institution admin acts as
                # another account with impersonate=<account_id> in the query string
                by_place["query"].setdefault("impersonate", Param("impersonate", "integer",
                                                                  minimum=1))
            ops.append(Operation(
                "api", method.upper(), template, f"swagger.json {method.upper()} {template}",
                "token" if security else None, by_place["path"], by_place["query"],
                by_place["header"], body, (_one_paging_style,)))
    return ops


# ---- NOTES.md: the stats host (§10) --------------------------------------------------------

COUNTERS = ("views", "downloads", "shares")  # NOTES §10 General
ITEMS = ("article", "author", "collection", "group", "project")  # NOTES §10 General
GRANULARITIES = ("year", "month", "day", "total")  # NOTES §10 Timeline
BREAKDOWN_MAX_YEARS = {"day": 1, "month": 2, "year": 5, "total": 1}  # NOTES §10 Breakdown


def _series_params(sub_items: tuple[str, ...]) -> dict[str, Param]:
    # NOTES §10 Timeline/Breakdown/Tops: the documented examples give days as YYYY-MM-DD
    return {"start_date": Param("start_date", pattern=DATE),
            "end_date": Param("end_date", pattern=DATE),
            "sub_item": Param("sub_item", enum=sub_items),
            "sub_item_id": Param("sub_item_id")}


def _sub_item_needs_id(query: Mapping[str, str], _: Mapping[str, str]) -> list[str]:
    """NOTES §10 Timeline: sub_item_id is required with sub_item (400 MissingParams)."""
    return ["sub_item without sub_item_id"] if "sub_item" in query and \
        "sub_item_id" not in query else []


def _breakdown_span(query: Mapping[str, str], path: Mapping[str, str]) -> list[str]:
    """NOTES §10 Breakdown: a longer range than day 1y, month 2y, year 5y, total 1y is clamped."""
    try:
        start = dt.date.fromisoformat(query["start_date"])
        end = dt.date.fromisoformat(query["end_date"])
    except (KeyError, ValueError):
        return []  # one date or none: the host's defaults apply; a bad format is reported apart
    granularity = path.get("granularity", "")
    years = BREAKDOWN_MAX_YEARS.get(granularity)
    if years is not None and end >= add_years(start, years):
        return [f"breakdown {start}..{end} is longer than {years} year(s) at {granularity} "
                "(NOTES §10: the host clamps it silently)"]
    return []


def stats_operations() -> list[Operation]:
    path = {"counter": Param("counter", enum=COUNTERS), "item": Param("item", enum=ITEMS),
            "item_id": Param("item_id", "integer", minimum=1),
            "granularity": Param("granularity", enum=GRANULARITIES),
            "institution": Param("institution", pattern=r"[A-Za-z0-9_-]+")}
    ops = []
    for inst in ("", "/{institution}"):
        # totals need no auth in either scope; the institution's series and tops need Basic
        series_auth = "basic" if inst else None
        ops.append(Operation("stats", "GET", f"{inst}/total/{{counter}}/{{item}}/{{item_id}}",
                             "NOTES.md §10 Totals", None, path))
        for kind in ("timeline", "breakdown"):
            rules: tuple[Rule, ...] = (_sub_item_needs_id,)
            if kind == "breakdown":
                rules += (_breakdown_span,)
            ops.append(Operation(
                "stats", "GET", f"{inst}/{kind}/{{granularity}}/{{counter}}/{{item}}/{{item_id}}",
                f"NOTES.md §10 {kind.title()}", series_auth, path,
                _series_params(("category", "item_type")), rules=rules))
        top_query = {**_series_params(("category", "item_type", "referral")),
                     "item_id": Param("item_id", "integer", minimum=1),
                     "count": Param("count", "integer", minimum=1)}  # no maximum documented
        ops.append(Operation("stats", "GET", f"{inst}/top/{{counter}}/{{item}}",
                             "NOTES.md §10 Tops", series_auth, path, top_query))
    ops.append(Operation("stats", "POST", "/count/articles", "NOTES.md §10 Count", None,
                         body={"groups": Param("groups", "groups", required=True)}))
    return ops


# ---- NOTES.md: OAI-PMH (§11) and the download host (§5.1) -----------------------------------

OAI_PREFIXES = ("oai_dc", "oai_datacite", "rdf", "cerif", "qdc", "mets", "uketd_dc")
OAI_SET = r"(portal|item_type|category)_\d+|month_year_\d{1,2}_\d{4}"
# verb -> (required arguments, optional arguments, an exclusive argument) per OAI-PMH 2.0
OAI_VERBS: dict[str, tuple[set[str], set[str], str | None]] = {
    "Identify": (set(), set(), None),
    "ListMetadataFormats": (set(), {"identifier"}, None),
    "ListSets": (set(), set(), "resumptionToken"),
    "ListIdentifiers": ({"metadataPrefix"}, {"from", "until", "set"}, "resumptionToken"),
    "ListRecords": ({"metadataPrefix"}, {"from", "until", "set"}, "resumptionToken"),
    "GetRecord": ({"identifier", "metadataPrefix"}, set(), None),
}


def _oai_arguments(query: Mapping[str, str], _: Mapping[str, str]) -> list[str]:
    verb = query.get("verb")
    if verb not in OAI_VERBS:
        return []  # reported by the enum check
    required, optional, exclusive = OAI_VERBS[verb]
    given = set(query) - {"verb"}
    if exclusive is not None and exclusive in given:
        return [] if given == {exclusive} else [f"{verb}: {exclusive} with other arguments "
                                                f"{sorted(given - {exclusive})}"]
    problems = [f"{verb}: {name} is required" for name in sorted(required - given)]
    problems += [f"{verb}: {name} is not an argument of this verb"
                 for name in sorted(given - required - optional)]
    return problems


def oai_operations() -> list[Operation]:
    # NOTES §11: from/until at second precision, YYYY-MM-DDThh:mm:ssZ (or a day)
    query = {"verb": Param("verb", enum=tuple(OAI_VERBS), required=True),
             "metadataPrefix": Param("metadataPrefix", enum=OAI_PREFIXES),
             "set": Param("set", pattern=OAI_SET),
             "from": Param("from", pattern=f"{DATE}|{DATE_TIME}"),
             "until": Param("until", pattern=f"{DATE}|{DATE_TIME}"),
             "resumptionToken": Param("resumptionToken"),
             "identifier": Param("identifier", pattern=r"oai:figshare\.com:article/\d+")}
    return [Operation("api", method, "/oai", "NOTES.md §11", None, query=query,
                      rules=(_oai_arguments,)) for method in ("GET", "POST")]


def download_operations() -> list[Operation]:
    # NOTES §5.1: ndownloader.figshare.com/files/<id>; private files take a credential
    return [Operation("download", "GET", "/files/{file_id}", "NOTES.md §5.1", "token",
                      {"file_id": Param("file_id", "integer", minimum=1)})]


@functools.cache
def operations() -> tuple[Operation, ...]:
    ops = swagger_operations() + stats_operations() + oai_operations() + download_operations()
    return tuple(sorted(ops, key=lambda o: o.specificity))


# ---- departures knowingly kept ---------------------------------------------------------------

# (host, method, template, problem prefix) -> why it is allowed for now, naming the issue.
# A checker that finds nothing new stays as strict as written; only these exact shapes pass.
ALLOWED: dict[tuple[str, str, str, str], str] = {}


# ---- the checker -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    shape: str
    operation: Operation | None
    problems: tuple[str, ...]


def match(host: str, method: str, path: str) -> tuple[Operation | None, dict[str, str]]:
    """The documented operation for a request, with its path parameters."""
    if host == "api":
        if not path.startswith(API_BASE + "/"):
            return None, {}
        path = path[len(API_BASE):]
    on_path = [(op, m) for op in operations() if op.host == host
               for m in [op.regex.fullmatch(path)] if m is not None]
    for op, m in on_path:
        if op.method == method:
            return op, m.groupdict()
    return None, {}


def _credential_problems(op: Operation, authorization: str | None) -> list[str]:
    if authorization is None:
        return []
    scheme = authorization.split(" ", 1)[0].lower()
    if op.auth is None:
        return [f"a credential ({scheme}) sent to a public operation ({op.source})"]
    if scheme != op.auth:
        return [f"a {scheme} credential sent where only {op.auth} belongs ({op.source})"]
    return []


def shape(entry: LogEntry, op: Operation | None = None) -> str:
    """What identifies a request's shape: host, method, operation, parameter names, body keys,
    whether it carried a credential."""
    if op is None:
        op, _ = match(entry.host, entry.method, entry.path)
    names = sorted({k for k, _ in parse_qsl(entry.query, keep_blank_values=True)})
    if entry.cursor is not None:
        names.append("X-Cursor")
    body = ""
    if entry.body:
        try:
            parsed = json.loads(entry.body)
            body = " {" + ",".join(sorted(parsed)) + "}" if isinstance(parsed, dict) else " [..]"
        except ValueError:
            body = " <not JSON>"
    where = op.template if op is not None else entry.path
    auth = entry.authorization.split(" ", 1)[0] if entry.authorization else "-"
    return f"{entry.host} {entry.method} {where} ?{'&'.join(names)}{body} auth={auth}"


def check(entry: LogEntry) -> Finding:
    """Every way `entry` departs from its documented operation (ALLOWED ones left out)."""
    op, path_values = match(entry.host, entry.method, entry.path)
    if op is None:
        return Finding(shape(entry), None, ("no documented operation has this method and path",))
    problems: list[str] = []
    for name, value in path_values.items():
        if name in op.path_params:
            problems += op.path_params[name].problems(value, typed=False)
    pairs = parse_qsl(entry.query, keep_blank_values=True)
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            problems.append(f"query parameter {name} given twice")
        query[name] = value
        param = op.query.get(name)
        if param is None:
            problems.append(f"query parameter {name} is not declared")
        else:
            problems += param.problems(value, typed=False)
    problems += [f"query parameter {p.name} is required" for p in op.query.values()
                 if p.required and p.name not in query]
    if entry.cursor is not None:
        if "X-Cursor" not in op.headers:
            problems.append("header X-Cursor is not declared")
        query["X-Cursor"] = entry.cursor
    problems += _body_problems(op, entry)
    for rule in op.rules:
        problems += rule(query, path_values)
    problems += _credential_problems(op, entry.authorization)
    kept = tuple(p for p in problems if not _allowed(op, p))
    return Finding(shape(entry, op), op, kept)


def _body_problems(op: Operation, entry: LogEntry) -> list[str]:
    if not entry.body:
        return [f"body field {p.name} is required" for p in (op.body or {}).values()
                if p.required]
    if op.body is None:
        return ["a request body where none is documented"]
    try:
        parsed = json.loads(entry.body)
    except ValueError:
        return ["the request body is not JSON"]
    if not isinstance(parsed, dict):
        return ["the request body is not a JSON object"]
    problems = []
    for name, value in parsed.items():
        param = op.body.get(name)
        if param is None:
            problems.append(f"body field {name} is not declared")
        else:
            problems += param.problems(value, typed=True)
    problems += [f"body field {p.name} is required" for p in op.body.values()
                 if p.required and p.name not in parsed]
    return problems


def _allowed(op: Operation, problem: str) -> bool:
    return any(host == op.host and method == op.method and template == op.template
               and problem.startswith(prefix)
               for host, method, template, prefix in ALLOWED)
