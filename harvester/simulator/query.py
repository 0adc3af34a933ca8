"""Figshare's `search_for` language: parse into a small tree, evaluate against the corpus."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harvester.simulator.corpus import Corpus

# Operators are upper case only: ":tag: music and puppets" is one tag (Figshare's search docs).
OPERATORS = ("AND", "OR", "NOT")
FIELDS = {
    "title", "description", "tag", "category", "author", "orcid", "doi", "institution",
    "item_type", "search_term", "project", "resource_doi",
    "published_before", "published_after", "posted_before", "posted_after",
}  # fmt: skip
_TOKEN = re.compile(
    r'\s*(?:(?P<open>\()|(?P<close>\))|"(?P<phrase>[^"]*)"|(?P<quote>")'
    r"|:(?P<field>[A-Za-z][A-Za-z_ ]*):|(?P<word>[^\s()\"]+))"
)


class SearchSyntaxError(ValueError):
    """search_for could not be parsed; the REST layer answers 400."""


Node = tuple[Any, ...]


def tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, value) pairs: open, close, phrase, field, op, word."""
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SearchSyntaxError(f"Unexpected character at position {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind) if kind else ""
        if kind == "quote":
            raise SearchSyntaxError("Unterminated quoted phrase")
        if kind == "field":
            value = value.strip().lower().replace(" ", "_")
            if value not in FIELDS:
                raise SearchSyntaxError(f"Unsupported search field :{value}:")
        if kind == "word" and value in OPERATORS:
            kind = "op"
        out.append((kind, value))
    return out


class _Parser:
    """Left-to-right, equal-precedence AND/OR (a bare space is OR), unary and binary NOT."""

    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.expr()
        if self.peek() is not None:
            raise SearchSyntaxError("Unbalanced parentheses")
        return node

    def expr(self) -> Node:
        node = self.unary()
        while (tok := self.peek()) is not None and tok[0] != "close":
            if tok[0] == "op":
                self.take()
                if tok[1] == "NOT":
                    node = ("and", node, ("not", self.unary()))
                    continue
                node = (tok[1].lower(), node, self.unary())
            else:
                node = ("or", node, self.unary())
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise SearchSyntaxError("Search expression ends where a term was expected")
        if tok == ("op", "NOT"):
            self.take()
            return ("not", self.unary())
        return self.primary()

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "open":
            node = self.expr()
            if self.peek() != ("close", ")"):
                raise SearchSyntaxError("Unbalanced parentheses")
            self.take()
            return node
        if kind == "field":
            parts: list[tuple[str, str]] = []
            while (tok := self.peek()) is not None and tok[0] in ("word", "phrase"):
                parts.append(self.take())
            if not parts:
                raise SearchSyntaxError(f"No value after :{value}:")
            return ("field", value, parts)
        if kind in ("word", "phrase"):
            return (kind, value)
        raise SearchSyntaxError(f"Unexpected {value or kind!r}")


def parse(text: str) -> Node | None:
    """The tree for a search_for string; None when it is blank."""
    toks = tokenize(text)
    return _Parser(toks).parse() if toks else None


def evaluate(node: Node, corpus: Corpus) -> set[int]:
    """Corpus indices matching the tree."""
    kind = node[0]
    if kind == "and":
        return evaluate(node[1], corpus) & evaluate(node[2], corpus)
    if kind == "or":
        return evaluate(node[1], corpus) | evaluate(node[2], corpus)
    if kind == "not":
        return corpus.all_indices() - evaluate(node[1], corpus)
    if kind == "word":
        return _phrase(corpus, "all", node[1])
    if kind == "phrase":
        return _phrase(corpus, "all", node[1])
    return _field(corpus, node[1], node[2])


def search(text: str, corpus: Corpus) -> set[int] | None:
    """Indices for a search_for string (None when blank); SearchSyntaxError when unparseable."""
    node = parse(text)
    return None if node is None else evaluate(node, corpus)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _phrase(corpus: Corpus, field: str, text: str) -> set[int]:
    """Items whose `field` texts contain the words of text in sequence (one word: any match)."""
    words = _words(text)
    return corpus.match_phrase(field, words) if words else set()


def _field(corpus: Corpus, name: str, parts: list[tuple[str, str]]) -> set[int]:
    value = " ".join(v for _, v in parts).strip()
    if name in ("title", "description"):
        if len(parts) == 1 and parts[0][0] == "phrase":
            return _phrase(corpus, name, value)
        out: set[int] = set()
        for w in _words(value):  # unquoted: any of the words (Figshare's docs)
            out |= corpus.match_token(name, w)
        return out
    value = value.strip("'\"")
    if name == "tag":
        return corpus.match_tag(value)
    if name == "category":
        return corpus.match_category(value)
    if name == "author":
        return corpus.match_author(value)
    if name == "orcid":
        return corpus.match_orcid(value)
    if name == "doi":
        return corpus.match_doi(value)
    if name == "resource_doi":
        return corpus.match_resource_doi(value)
    if name == "institution":
        return corpus.match_institution(value)
    if name == "item_type":
        return corpus.match_item_type(value)
    if name == "search_term":
        return _phrase(corpus, "all", value)
    if name == "project":
        return corpus.match_project(value)
    # published_/posted_ before/after: exclusive bounds on the publish time
    stamp, whole_day = _instant(value)
    if name.endswith("_before"):
        return corpus.match_published(None, stamp)
    return corpus.match_published(stamp + (86_400 if whole_day else 1), None)


def _instant(value: str) -> tuple[int, bool]:
    """(epoch seconds, is a bare date) for YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[Z]."""
    try:
        if re.fullmatch(r"\d{4}-\d\d-\d\d", value):
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            return int(day.timestamp()), True
        if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ?", value):
            moment = datetime.strptime(value.rstrip("Z"), "%Y-%m-%dT%H:%M:%S")
            return int(moment.replace(tzinfo=UTC).timestamp()), False
    except ValueError:
        pass
    raise SearchSyntaxError(f"Invalid date {value!r}: use YYYY-MM-DD")
