"""YAML -> frozen dataclasses whose fields carry their own rules and docs; errors name file and key.

A field made with `opt` states its default, one line of doc and its rules; `Reader.build` applies
them by the field's type, and `table` renders them, so a key is described in one place only.
"""

from __future__ import annotations

import contextlib
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any

import yaml

from harvester.errors import ConfigError

MAX_ID = 2**63 - 1  # ids are stored as int64 (SQLite, Arrow): a larger one cannot be kept
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Secret(str):
    """A credential: behaves as a string, never shows itself in repr, logs or manifests."""

    def __repr__(self) -> str:
        return "Secret('***')"


class Invalid(ConfigError):
    """A rule broken at `key`, relative to the section that checks it; the reader adds the rest."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def opt(default: Any = MISSING, doc: str = "", **rules: Any) -> Any:
    """A key: its default (a class: that section), one line of doc, and rules: min, max, gt,
    choices, nonempty, check (text -> value or ValueError), read (the raw value), allowed."""
    meta = {"doc": doc, **rules}
    if isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys and leaves dates as text for their keys to read."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in first:
                    raise yaml.constructor.ConstructorError(None, None, (
                        f"duplicate key {key.value!r} (first on line {first[key.value]})"),
                        key.start_mark)
                first[key.value] = key.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {  # no timestamps: 2020-13-01 is the key's to refuse
    c: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:timestamp"]
    for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_yaml(text: str, where: str) -> Any:
    """Parsed YAML, or one line naming the line and column where the problem starts."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark, problem, context = exc.problem_mark, exc.problem or "", exc.context or ""
        if exc.context_mark and "quoted scalar" in context and "end of stream" in problem:
            # a quote never closed: the cause is where it opens, not where the text runs out
            mark, problem = exc.context_mark, "this quoted string is never closed"
        elif exc.context_mark and re.search(r"flow (mapping|sequence)", context):
            mark = exc.context_mark
            problem = f"in the {context.split(' a ', 1)[-1]} that starts here: {problem}"
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: malformed YAML{at}: {problem}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of 4,300+ digits
        raise ConfigError(f"{where}: malformed YAML: {str(exc).splitlines()[0]}") from None


class Reader:
    """Reads YAML values into dataclasses by their fields' types and rules; `${VAR}` comes from
    `env`; every error names the file (`where`) and the dotted key."""

    def __init__(self, where: str, env: Mapping[str, str]) -> None:
        self.where = where
        self.env = env

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key or 'top level'}: {problem}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_kind(value)}")
        return value

    def known(self, m: Mapping[str, Any], key: str, valid: tuple[str, ...]) -> None:
        for k in m:
            if k not in valid:
                raise self.fail(_join(key, str(k)),
                                f"unknown key; valid keys here: {', '.join(valid)}")

    def build(self, cls: type, raw: Any, key: str = "", **values: Any) -> Any:
        """One section: unknown keys refused, each field read by its type and rules."""
        m = self.mapping(raw, key)
        keys = [f for f in fields(cls) if not f.metadata.get("internal")]
        self.known(m, key, tuple(f.name for f in keys))
        hints = typing.get_type_hints(cls)
        for f in keys:
            at = _join(key, f.name)
            if f.name in m:
                values[f.name] = self.value(hints[f.name], m[f.name], at, f.metadata)
            elif f.default is MISSING and f.default_factory is MISSING:
                choices = f.metadata.get("choices")
                raise self.fail(at, f"required: one of {list(choices)}" if choices else
                                f"required ({f.metadata['doc']})")
        try:
            return cls(**values)
        except Invalid as exc:
            raise self.fail(_join(key, exc.key), exc.problem) from None

    def value(self, tp: Any, value: Any, key: str, rules: Mapping[str, Any]) -> Any:
        if inner := _optional(tp):
            if is_dataclass(inner):  # present, even empty: that section is on
                return self.build(typing.cast(type, inner), value, key)
            if value is None or value == "":
                return None
            tp = inner
        if "read" in rules:
            return rules["read"](self, value, key)
        if is_dataclass(tp):
            return self.build(typing.cast(type, tp), value, key)
        if typing.get_origin(tp) is not tuple:
            return self.scalar(tp, value, key, rules)
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {_kind(value)}")
        if rules.get("nonempty") and not value:
            raise self.fail(key, f"name at least one of {list(rules['choices'])}")
        if typing.get_args(tp)[0] is int:
            return self.ids(value, key, nonempty=False)
        return tuple(dict.fromkeys(self.scalar(str, x, key, rules) for x in value))

    def scalar(self, tp: Any, value: Any, key: str, rules: Mapping[str, Any] = {}) -> Any:
        if tp is Secret:
            if not isinstance(value, str):
                raise self.fail(key, "expected a string such as '${FIGSHARE_TOKEN}'")
            if not _ENV.search(value):
                raise self.fail(key, "credentials must come from the environment: write '${VAR}'")
            return Secret(self.interpolate(value, key)) or None
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {_kind(value)}")
            return value
        value = self.interpolate(value, key)
        if tp is str:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise self.fail(key, f"expected a string, got {_kind(value)}")
            if rules.get("nonempty") and not str(value).strip():
                raise self.fail(key, "must not be empty")
            if "choices" in rules and str(value) not in rules["choices"]:
                raise self.fail(key, f"{value!r} is not one of {list(rules['choices'])}")
            try:
                return rules["check"](str(value)) if "check" in rules else str(value)
            except ValueError as exc:
                raise self.fail(key, str(exc)) from None
        if isinstance(value, str):  # "${VAR}": the environment holds only strings
            with contextlib.suppress(ValueError):
                value = int(value) if tp is int else float(value)
        if isinstance(value, bool) or not isinstance(value, int if tp is int else int | float):
            raise self.fail(key, f"expected {'an integer' if tp is int else 'a number'}, "
                            f"got {_kind(value)}")
        if not math.isfinite(value):  # `.inf` would make a window that never ends
            raise self.fail(key, f"must be a finite number, got {value}")
        low, high = rules.get("min"), rules.get("max", MAX_ID if tp is int else None)
        if "gt" in rules and not value > rules["gt"]:
            raise self.fail(key, f"must be greater than {rules['gt']}, got {value}")
        if low is not None and value < low:
            raise self.fail(key, f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise self.fail(key, f"must be at most {high}, got {value}")
        return value if tp is int else float(value)

    def ids(self, value: Any, key: str, *, nonempty: bool = True) -> tuple[int, ...]:
        if not isinstance(value, list) or (nonempty and not value):
            raise self.fail(key, "expected a non-empty list of integer ids")
        return tuple(self.scalar(int, x, f"{key}[{i}]", {"min": 1}) for i, x in enumerate(value))

    def interpolate(self, value: Any, key: str) -> Any:
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in self.env:
                raise self.fail(key, f"environment variable {m.group(1)} is not set")
            return self.env[m.group(1)]

        return _ENV.sub(sub, value) if isinstance(value, str) else value


def _optional(tp: Any) -> Any:
    """X for `X | None`, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return None


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key and sub else key or sub


def _kind(value: Any) -> str:
    names = {type(None): "nothing", dict: "a mapping", list: "a list", bool: f"{value}",
             str: f"the string {value!r}"}
    return names.get(type(value), f"{type(value).__name__} {value!r}")


def keys(cls: type, prefix: str = "") -> Iterator[tuple[str, Field[Any], Any]]:
    """Every key as (dotted name, field, type without `| None`), each section before its keys."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if not f.metadata.get("internal"):
            tp = _optional(hints[f.name]) or hints[f.name]
            yield _join(prefix, f.name), f, tp
            if is_dataclass(tp):
                yield from keys(typing.cast(type, tp), _join(prefix, f.name))


def table(cls: type) -> list[str]:
    """A Markdown table of every key: type, default, what is allowed, and its doc line."""
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for key, f, tp in keys(cls):
        r, d = f.metadata, f.default
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
        kind = ("section" if is_dataclass(tp) else "list of ids" if item is int else "list"
                if item else {bool: "true/false", int: "integer", float: "number",
                              Secret: "`${VAR}`"}.get(tp, "string"))
        default = ("" if f.default_factory is not MISSING else "*required*" if d is MISSING
                   else "unset" if d is None else f"[{', '.join(d)}]" if isinstance(d, tuple)
                   else f"`{str(d).lower() if isinstance(d, bool) else d}`")
        allowed = (", ".join(r["choices"]) if "choices" in r else r.get("allowed") or (
            "1 to 2^63-1 each" if item is int else f"> {r['gt']}" if "gt" in r else
            f"{r['min']} to {r['max']}" if "max" in r else f">= {r['min']}" if "min" in r
            else ""))
        rows.append(f"| `{key}` | {kind} | {default} | {allowed} | {r['doc']} |")
    return rows
