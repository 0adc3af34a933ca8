"""Listing and search over the arrays: ordered, filtered selections and search_for primitives."""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from harvester.simulator.generator import NONE, byte_positions, mix64
from harvester.simulator.presenters import Presenters
from harvester.simulator.settings import SimSettings
from harvester.simulator.vocab import (
    DESC_TEMPLATES,
    FIRST_NAMES,
    ITEM_TYPES,
    LAST_NAMES,
    TAGS,
    TITLE_TEMPLATES,
    TITLE_WORDS,
    contains_phrase,
    token_map,
    tokens,
)


class SearchIndex(Presenters):
    """Ordered selections (cached per generation) and token, phrase and field matches."""

    def __init__(self, settings: SimSettings) -> None:
        super().__init__(settings)
        self._cat_by_title = {c["title"].lower(): i for i, c in enumerate(self.categories)}
        self._tag_by_text = {t.lower(): i for i, t in enumerate(TAGS)}
        self._tw_tokens = token_map(TITLE_WORDS)
        self._tag_tokens = token_map(TAGS)
        self._cat_tokens = token_map([c["title"] for c in self.categories])
        self._first_tokens = token_map(FIRST_NAMES)
        self._last_tokens = token_map(LAST_NAMES)
        self._tmpl_tokens = token_map([t.format("", "", "", "") for t, _ in TITLE_TEMPLATES])
        self._dtmpl_tokens = token_map([t.format("", "") for t in DESC_TEMPLATES])
        self._orcids: dict[str, tuple[int, int]] | None = None

    def ids_by_published(self, direction: str = "asc") -> array[int]:
        """Public ids ordered by (published, id)."""
        return self.select(order="published_date", direction=direction)

    # ---- listing -------------------------------------------------------------------------

    def _order(self, order: str) -> array[int]:
        """All indices sorted ascending by the order key, ties by id (cached per generation)."""
        key = (order, self.generation)
        cached = self._orders.get(key)
        if cached is not None:
            return cached
        n = self.n
        if order == "created_date":
            perm = array("I", range(n))  # ids follow creation time
        elif order == "published_date":
            perm = array("I", sorted(range(n), key=self._published.__getitem__))
        elif order == "modified_date":
            over, mod = self._mod_over, self._modified
            keyf = (lambda k: over.get(k, mod[k])) if over else mod.__getitem__
            perm = array("I", sorted(range(n), key=keyf))
        else:
            ids = self._ids
            perm = array("I", sorted(range(n), key=lambda k: self.pseudo_count(ids[k], order)))
        self._orders[key] = perm
        return perm

    def pseudo_count(self, article_id: int, counter: str) -> int:
        """A stable heavy-tailed number per (id, counter) used for views/shares/downloads/cites."""
        salt = {"views": 1, "shares": 2, "downloads": 3, "cites": 4}.get(counter, 5)
        h = mix64(self.seed * 7_919 + article_id * 16 + salt)
        scale = {"views": 5_000, "downloads": 2_000, "shares": 40, "cites": 25}.get(counter, 10)
        return int(scale * ((h & 0xFFFFFF) / 0x1000000) ** 6)

    def select(
        self,
        *,
        institution: int | None = None,
        group: int | None = None,
        item_type: int | None = None,
        published_since: int | None = None,
        modified_since: int | None = None,
        doi: str | None = None,
        handle: str | None = None,
        resource_doi: str | None = None,
        project_id: int | None = None,
        subset: Iterable[int] | None = None,
        order: str = "published_date",
        direction: str = "desc",
    ) -> array[int]:
        """Public article ids matching every filter, ordered, ties broken by id.

        Bounds are epoch seconds and inclusive; `subset` holds indices (a search result).
        Orders: created_date, published_date, modified_date, views, shares, downloads, cites.
        """
        key = (institution, group, item_type, published_since, modified_since, doi, handle,
               resource_doi, project_id, order, direction, self.generation)  # fmt: skip
        if subset is None and key in self._select_cache:
            self._select_cache.move_to_end(key)
            return self._select_cache[key]
        pub, mod, over = self._published, self._modified, self._mod_over
        inst_i = self._inst_index.get(institution, NONE + 1) if institution is not None else None
        grp_i = self._group_index.get(group, NONE + 1) if group is not None else None
        # cheap per-index predicates, checked on whatever candidates we start from
        preds: list[Any] = []
        if inst_i is not None:
            preds.append(lambda k, b=self._inst, v=inst_i: b[k] == v)
        if grp_i is not None:
            preds.append(lambda k, b=self._gidx, v=grp_i: b[k] == v)
        if item_type is not None:
            preds.append(lambda k, b=self._itype, v=item_type: b[k] == v)
        if modified_since is not None:
            preds.append(lambda k: over.get(k, mod[k]) >= modified_since)
        if self._withdrawn:
            preds.append(lambda k, gone=self._withdrawn: k not in gone)
        cands = self._candidates(subset, doi, handle, resource_doi, project_id, grp_i, inst_i,
                                 item_type)  # fmt: skip
        if cands is None or len(cands) > self.n // 4:
            perm: Sequence[int] = self._order(order)
            if order == "published_date" and published_since is not None:
                perm = perm[bisect.bisect_left(perm, published_since, key=pub.__getitem__) :]
            elif published_since is not None:
                preds.append(lambda k: pub[k] >= published_since)
            if cands is not None:
                preds.append(cands.__contains__)
            idx = [k for k in perm if all(p(k) for p in preds)] if preds else perm
        else:
            if published_since is not None:
                preds.append(lambda k: pub[k] >= published_since)
            keep = [k for k in cands if all(p(k) for p in preds)]
            keyf = self._sort_key(order)
            idx = sorted(keep, key=keyf) if keyf else sorted(keep)
        ids = self._ids
        out = array("I", (ids[k] for k in (reversed(idx) if direction == "desc" else idx)))
        if subset is None:
            self._select_cache[key] = out
            if len(self._select_cache) > 8:
                self._select_cache.popitem(last=False)
        return out

    def _sort_key(self, order: str) -> Any:
        if order == "created_date":
            return None
        if order == "published_date":
            return lambda k: (self._published[k], k)
        if order == "modified_date":
            return lambda k: (self._mod_over.get(k, self._modified[k]), k)
        return lambda k: (self.pseudo_count(self._ids[k], order), k)

    def _candidates(
        self,
        subset: Iterable[int] | None,
        doi: str | None,
        handle: str | None,
        resource_doi: str | None,
        project_id: int | None,
        grp_i: int | None,
        inst_i: int | None,
        item_type: int | None,
    ) -> set[int] | None:
        """A small starting set of indices from the most selective filter, or None."""
        sets: list[set[int]] = []
        if subset is not None:
            sets.append(set(subset))
        if project_id is not None:
            p = self._proj_by_id.get(project_id)
            sets.append(set(p["members"]) if p else set())
        if doi is not None:
            sets.append(set(self.match_doi(doi)))
        if handle is not None:
            sets.append(set(self._match_handle(handle)))
        if resource_doi is not None:
            sets.append(set(self.match_resource_doi(resource_doi)))
        if not sets:
            # a byte scan, then the predicates do the rest
            if grp_i is not None:
                return set(self.positions("group", grp_i))
            if inst_i is not None:
                return set(self.positions("inst", inst_i))
            if item_type is not None:
                return set(self.positions("itype", item_type))
            return None
        sets.sort(key=len)
        out = sets[0]
        for s in sets[1:]:
            out &= s
        return out

    def positions(self, kind: str, value: int) -> list[int]:
        """Indices whose one-byte attribute `kind` (inst, group, itype) equals value."""
        if not 0 <= value < NONE:
            return []
        return byte_positions({"inst": self._inst, "group": self._gidx, "itype": self._itype}[kind],
                          value)  # fmt: skip

    # ---- search primitives (used by the search_for evaluator); results are index sets --------

    def all_indices(self) -> set[int]:
        """Every public index (the universe for NOT)."""
        return set(range(self.n)) - self._withdrawn

    def _slots(self, bufs: Sequence[bytes], values: Iterable[int]) -> set[int]:
        out: set[int] = set()
        for v in values:
            for buf in bufs:
                out.update(byte_positions(buf, v))
        return out

    def match_token(self, field: str, token: str) -> set[int]:
        """Indices whose `field` (title, description, tag, category, author, all) has token."""
        token = token.lower()
        out: set[int] = set()
        if field in ("title", "all"):
            out |= self._slots(self._tw, self._tw_tokens.get(token, ()))
            out |= self._slots([self._tmpl], self._tmpl_tokens.get(token, ()))
        if field in ("description", "all"):
            out |= self._slots(self._dw, self._tw_tokens.get(token, ()))
            out |= self._slots([self._dtmpl], self._dtmpl_tokens.get(token, ()))
        if field in ("tag", "all"):
            out |= self._slots(self._tags, self._tag_tokens.get(token, ()))
        if field in ("category", "all"):
            out |= self._slots(self._cats, self._cat_tokens.get(token, ()))
        if field in ("author", "all"):
            out |= self._slots(self._afirst, self._first_tokens.get(token, ()))
            for la in self._last_tokens.get(token, ()):
                for fbuf, lbuf in zip(self._afirst, self._alast, strict=True):
                    out.update(k for k in byte_positions(lbuf, la) if fbuf[k] != NONE)
        return out

    def match_phrase(self, field: str, words: Sequence[str]) -> set[int]:
        """Items whose `field` (or any field for "all") holds the lowercase words in sequence."""
        if field == "all":
            out: set[int] = set()
            for f in ("title", "description", "tag", "category", "author"):
                out |= self.match_phrase(f, words)
            return out
        words = list(words)
        if len(words) == 1:
            return self.match_token(field, words[0])
        if field in ("tag", "category"):
            # vocabulary entries holding the phrase, then one byte scan each
            texts = TAGS if field == "tag" else [c["title"] for c in self.categories]
            hits = [i for i, t in enumerate(texts) if contains_phrase(tokens(t), words)]
            return self._slots(self._tags if field == "tag" else self._cats, hits)
        if field == "author":
            found: set[int] = set()
            for fi, first in enumerate(FIRST_NAMES):
                for la, last in enumerate(LAST_NAMES):
                    if contains_phrase(tokens(f"{first} {last}"), words):
                        found |= self._author_positions(fi, la)
            return found
        cands = self.match_token(field, words[0])
        for w in words[1:]:
            cands &= self.match_token(field, w)
        render = self._title_at if field == "title" else self._description_at
        return {k for k in cands if contains_phrase(tokens(render(k)), words)}

    def _title_at(self, k: int) -> str:
        template, used = TITLE_TEMPLATES[self._tmpl[k]]
        words = [TITLE_WORDS[s[k]] for s in self._tw[:used]]
        words[0] = words[0][:1].upper() + words[0][1:]
        return template.format(*words, "", "", "")

    def _description_at(self, k: int) -> str:
        w0, w1 = TITLE_WORDS[self._dw[0][k]], TITLE_WORDS[self._dw[1][k]]
        return DESC_TEMPLATES[self._dtmpl[k]].format(w0[:1].upper() + w0[1:], w1)

    def match_tag(self, tag: str) -> set[int]:
        """Items with exactly this tag (case-insensitive)."""
        t = self._tag_by_text.get(" ".join(tag.split()).lower())
        return set() if t is None else self._slots(self._tags, [t])

    def match_category(self, title: str) -> set[int]:
        """Items with exactly this category title (case-insensitive)."""
        c = self._cat_by_title.get(" ".join(title.split()).lower())
        return set() if c is None else self._slots(self._cats, [c])

    def match_author(self, name: str) -> set[int]:
        """Items with an author of exactly this full name (case-insensitive)."""
        target = " ".join(name.split()).lower()
        out: set[int] = set()
        for f, first in enumerate(FIRST_NAMES):
            if target.startswith(first.lower() + " "):
                for la, last in enumerate(LAST_NAMES):
                    if f"{first} {last}".lower() == target:
                        out |= self._author_positions(f, la)
        return out

    def _author_positions(self, f: int, la: int) -> set[int]:
        out: set[int] = set()
        for fbuf, lbuf in zip(self._afirst, self._alast, strict=True):
            out.update(k for k in byte_positions(fbuf, f) if lbuf[k] == la)
        return out

    def match_orcid(self, orcid: str) -> set[int]:
        if self._orcids is None:
            self._orcids = {}
            for f in range(len(FIRST_NAMES)):
                for la in range(len(LAST_NAMES)):
                    o = self._author(f, la)["orcid_id"]
                    if o:
                        self._orcids[o] = (f, la)
        hit = self._orcids.get(orcid.strip().upper())
        return self._author_positions(*hit) if hit else set()

    def match_doi(self, doi: str) -> set[int]:
        """Items whose DOI (a version's, or without the .vN suffix) equals doi."""
        doi = doi.strip()
        m = re.fullmatch(r"(10\.\d+)/(?:m9\.figshare|[\w-]+)\.(\d+)(?:\.v(\d+))?", doi)
        if not m:
            return set()
        k = self._index(int(m.group(2)))
        if k < 0:
            return set()
        a = self._attrs(k)
        v = int(m.group(3)) if m.group(3) else a.nver
        wanted = doi if m.group(3) else f"{doi}.v{v}"
        return {k} if 1 <= v <= a.nver and self._doi(a, v).lower() == wanted.lower() else set()

    def _match_handle(self, handle: str) -> set[int]:
        m = re.fullmatch(r"2134/(\d+)(?:\.v(\d+))?", handle.strip())
        k = self._index(int(m.group(1))) if m else -1
        return {k} if k >= 0 and self._handle(self._attrs(k), 1) else set()

    def match_resource_doi(self, rdoi: str) -> set[int]:
        m = re.fullmatch(r"10\.1371/journal\.pone\.(\d{7})", rdoi.strip())
        if not m:
            return set()
        out = set()
        for base in range(0, 100_000_000, 10**7):  # the DOI encodes id % 10**7
            k = self._index(base + int(m.group(1)))
            if k >= 0 and (r := self._resource(self._attrs(k))) and r[1] == rdoi.strip():
                out.add(k)
        return out

    def match_project(self, title: str) -> set[int]:
        """Public items of the project with exactly this title (case-insensitive)."""
        wanted = " ".join(title.split()).lower()
        return {k for p in self._projects if p["title"].lower() == wanted for k in p["members"]}

    def match_institution(self, string_id: str) -> set[int]:
        i = self._inst_by_string.get(string_id.strip().lower())
        return set() if i is None else set(self.positions("inst", i))

    def match_item_type(self, name: str) -> set[int]:
        """By defined_type_name, plus the older names in Figshare's search docs."""
        aliases = {"paper": "journal contribution", "code": "software", "fileset": "dataset"}
        wanted = name.strip().lower().replace("_", " ")
        wanted = aliases.get(wanted, wanted)
        out: set[int] = set()
        for code, tname in ITEM_TYPES.items():
            if tname == wanted:
                out.update(self.positions("itype", code))
        return out

    def match_published(self, lo: int | None, hi: int | None) -> set[int]:
        """Items with lo <= published < hi (either bound optional)."""
        perm = self._order("published_date")
        pub = self._published
        a = 0 if lo is None else bisect.bisect_left(perm, lo, key=pub.__getitem__)
        b = len(perm) if hi is None else bisect.bisect_left(perm, hi, key=pub.__getitem__)
        return set(perm[a:b])

    def index_to_id(self, k: int) -> int:
        return self._ids[k]
