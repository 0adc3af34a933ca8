"""The generated corpus state: compact per-item arrays drawn from (seed, items), and lookups."""

from __future__ import annotations

import bisect
import math
import random
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, NamedTuple

from harvester.simulator.settings import SimSettings
from harvester.simulator.vocab import (
    CATEGORY_TREE,
    DAY,
    DESC_TEMPLATES,
    FIRST_NAMES,
    GROUP_NAMES,
    HORIZON,
    ITEM_TYPES,
    KNOWN_INSTITUTIONS,
    LAST_NAMES,
    MIGRATION,
    START,
    TAGS,
    TITLE_TEMPLATES,
    TITLE_WORDS,
    TYPE_WEIGHTS,
    iso_date,
)

NONE = 255  # "no value" in every one-byte slot array
_M64 = (1 << 64) - 1


class Download(NamedTuple):
    """What the download host needs to know about one file id."""

    file: dict[str, Any]  # the PublicFile dict (latest version)
    owner: int | None  # account id owning the item, if the simulator knows one
    public: bool  # False for a draft's file
    open: bool  # False under file embargo or confidentiality (only the owner gets the bytes)


class Institution(NamedTuple):
    """An institution: numeric id, the string id of its portal (stats host, search), its name."""

    id: int
    string_id: str
    name: str
    domain: str = ""
    doi_prefix: str = "10.6084"


class Group(NamedTuple):
    """A group inside an institution (parent_id 0 at the top level)."""

    id: int
    name: str
    institution_id: int
    parent_id: int
    resource_id: str
    association_criteria: str = ""
    upload_access: str = "All Users"


class Account(NamedTuple):
    """An account the simulator knows a token for."""

    id: int
    institution_id: int
    is_admin: bool


class Attrs(NamedTuple):
    """Everything needed to render one item; read from the arrays or a private item."""

    id: int
    k: int  # index in the public arrays, -1 for private items
    created: int
    published: int  # latest version's publish time; 0 when never published
    modified: int
    inst: int  # institution index or NONE
    gidx: int  # group index or NONE
    itype: int
    nver: int
    tmpl: int
    tw: tuple[int, ...]
    dtmpl: int
    dw: tuple[int, int]
    tags: tuple[int, ...]
    cats: tuple[int, ...]
    authors: tuple[tuple[int, int], ...]
    h: int
    public: bool
    edits: int


def mix64(x: int) -> int:
    """splitmix64: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def weighted_table(weights: Sequence[float], values: Sequence[int] | None = None) -> bytes:
    """A 256-byte translate table turning uniform random bytes into weighted values."""
    values = list(range(len(weights))) if values is None else list(values)
    total = float(sum(weights))
    counts = [max(1, round(256 * w / total)) if w > 0 else 0 for w in weights]
    while sum(counts) > 256:
        counts[counts.index(max(counts))] -= 1
    while sum(counts) < 256:
        counts[counts.index(max(counts))] += 1
    out = bytearray()
    for value, c in zip(values, counts, strict=True):
        out += bytes([value]) * c
    return bytes(out)


def mask_or(data: bytes, mask: bytes) -> bytes:
    """Bytewise OR of two equal-length byte strings, at C speed via big ints."""
    n = len(data)
    return (int.from_bytes(data, "little") | int.from_bytes(mask, "little")).to_bytes(n, "little")


def byte_positions(buf: bytes, value: int) -> list[int]:
    """All indices where buf holds value (a C-speed scan per hit)."""
    out: list[int] = []
    needle = bytes([value])
    i = buf.find(needle)
    while i >= 0:
        out.append(i)
        i = buf.find(needle, i + 1)
    return out


class ItemArrays:
    """The per-item arrays, accounts, private items, collections and projects; no presenters."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.seed = settings.seed
        self.n = settings.items
        self._rng = random.Random(f"figshare-sim:{settings.seed}:{settings.items}")
        self._build_institutions()
        self._build_categories()
        self._build_items()
        self.generation = 0  # bumped by modify/withdraw; caches key on it
        self._mod_over: dict[int, int] = {}  # index -> modified epoch
        self._edits: dict[int, int] = {}  # index -> number of modify() calls
        self._withdrawn: set[int] = set()  # indices
        self._file_names: dict[int, str] = {}  # file id -> name set by rename_file()
        self._records: OrderedDict[tuple[int, int, bool], dict[str, Any]] = OrderedDict()
        self._record_cap = settings.record_cache
        self._orders: dict[tuple[str, int], array[int]] = {}
        self._select_cache: OrderedDict[tuple[Any, ...], array[int]] = OrderedDict()
        self._public_ids: tuple[int, array[int]] | None = None
        self._build_accounts_and_private()
        self._build_collections_projects()
        self._reviews: list[dict[str, Any]] | None = None

    def _build_institutions(self) -> None:
        count = self.settings.institutions
        if not 1 <= count <= 200:
            raise ValueError(f"the corpus supports 1..200 institutions, got {count}")
        insts = [Institution(*row) for row in KNOWN_INSTITUTIONS[:count]]
        for i in range(len(insts), count):
            insts.append(
                Institution(1_000 + i, f"inst{i}", f"Institution {i}", f"inst{i}.example.edu")
            )
        self.institutions: list[Institution] = insts
        per = max(1, min(len(GROUP_NAMES), 250 // max(1, count)))
        groups: list[Group] = []
        self._inst_groups: list[list[int]] = []
        for i, inst in enumerate(insts):
            idxs: list[int] = []
            base = 11_962 + i * 731
            for j in range(per):
                parent = groups[idxs[0]].id if j >= 2 and j % 3 == 2 else 0
                code = "" if j % 2 else f"{inst.string_id.upper()}-{j:02d}"
                name = GROUP_NAMES[j % len(GROUP_NAMES)]
                if parent:
                    name = f"{name} (subgroup)"
                idxs.append(len(groups))
                groups.append(
                    Group(base + 3 * j, name, inst.id, parent, code, code[:3] if code else "")
                )
            self._inst_groups.append(idxs)
        self.groups: list[Group] = groups
        self._group_index = {g.id: i for i, g in enumerate(groups)}
        self._inst_index = {inst.id: i for i, inst in enumerate(insts)}
        self._inst_by_string = {inst.string_id.lower(): i for i, inst in enumerate(insts)}

    def _build_categories(self) -> None:
        cats: list[dict[str, Any]] = []
        leaf: list[int] = []
        for pid, title, src, children in CATEGORY_TREE:
            cats.append(
                {"id": pid, "title": title, "parent_id": 0, "path": f"/{pid}",
                 "source_id": src, "taxonomy_id": 100}
            )  # fmt: skip
            for cid, ctitle, csrc in children:
                leaf.append(len(cats))
                cats.append(
                    {"id": cid, "title": ctitle, "parent_id": pid, "path": f"/{pid}/{cid}",
                     "source_id": csrc, "taxonomy_id": 100}
                )  # fmt: skip
        self.categories: list[dict[str, Any]] = cats
        self._leaf_cats = leaf

    def _build_items(self) -> None:
        """The per-item arrays, ordered by id (= by creation time)."""
        n, rng, s = self.n, self._rng, self.settings
        rnd = rng.random

        # creation times: sorted via cumulative exponential spacings; density grows over time
        n_busy = min(n - 1, round(n * s.busy_day_share)) if s.busy_day_share > 0 else 0
        m = n - n_busy
        span = HORIZON - 30 * DAY - START
        acc = array("d", accumulate(-math.log(1.0 - rnd()) for _ in range(m + 1)))
        total = acc[-1]
        created = array("I", (START + int(span * (x / total) ** 0.55) for x in acc[:m]))
        del acc
        nver_tab = weighted_table([85, 10, 3.5, 1, 0.5], [1, 2, 3, 4, 5])
        nver_all = rng.randbytes(n).translate(nver_tab)
        published = array(
            "I", (self._publish_time(c, v, rnd) for c, v in zip(created, nver_all, strict=False))
        )

        # busy days: bulk imports published in batches, many items sharing the same second
        self.busy_days: list[str] = []
        if n_busy:
            n_days = 3 if n < 50_000 else (5 if n < 500_000 else 6)
            days = sorted(
                START + DAY * (730 + rng.randrange((HORIZON - START) // DAY - 760))
                for _ in range(n_days)
            )
            self.busy_days = [iso_date(d) for d in days]
            busy: list[tuple[int, int]] = []
            for i, day in enumerate(days):
                count = n_busy // n_days + (1 if i < n_busy % n_days else 0)
                seconds = [day + 8 * 3600 + rng.randrange(8 * 3600) for _ in range(count // 40 + 1)]
                for _ in range(count):
                    p = seconds[rng.randrange(len(seconds))]
                    busy.append((max(START, p - rng.randrange(3600, 90 * DAY)), p))
            busy.sort()
            created.extend(c for c, _ in busy)
            published.extend(p for _, p in busy)
            del busy
        perm = sorted(range(n), key=created.__getitem__)  # two sorted runs: a linear merge
        created = array("I", (created[i] for i in perm))
        published = array("I", (published[i] for i in perm))
        # busy-day imports are single-version items
        self._nver = bytes(nver_all[i] if i < m else 1 for i in perm)
        del perm

        self._ids = array("I", self._id_sequence(created, rnd))
        self._created = created
        self._published = published
        self._modified = array("I", (self._modified_time(p, rnd) for p in published))

        # institution, group, item type: weighted one-byte draws
        ninst = len(self.institutions)
        weights = [12.0] + [88.0 / (i + 1) ** 0.8 / sum(1 / (j + 1) ** 0.8 for j in range(ninst))
                            for i in range(ninst)]  # fmt: skip
        self._inst = rng.randbytes(n).translate(weighted_table(weights, [NONE, *range(ninst)]))
        gsel = rng.randbytes(n)
        gmap = bytearray([NONE]) * (256 * 256)
        for i, idxs in enumerate(self._inst_groups):
            tab = weighted_table([1.0 / (j + 1) for j in range(len(idxs))], idxs)
            gmap[i * 256 : i * 256 + 256] = tab
        self._gidx = bytes(gmap[(i << 8) | g] for i, g in zip(self._inst, gsel, strict=True))
        tw = [TYPE_WEIGHTS.get(code, 0.3) for code in ITEM_TYPES]
        self._itype = rng.randbytes(n).translate(weighted_table(tw, list(ITEM_TYPES)))

        # searchable slots, each a one-byte index into a fixed vocabulary (NONE = empty)
        zipf = [1.0 / (i + 1) ** 0.6 for i in range(len(TITLE_WORDS))]
        word_tab = weighted_table(zipf)
        self._tmpl = rng.randbytes(n).translate(weighted_table([1] * len(TITLE_TEMPLATES)))
        self._tw = []
        for slot in range(4):
            unused = bytes(0 if used > slot else NONE for _, used in TITLE_TEMPLATES)
            mask = self._tmpl.translate(unused + bytes(256 - len(unused)))
            self._tw.append(mask_or(rng.randbytes(n).translate(word_tab), mask))
        self._dtmpl = rng.randbytes(n).translate(weighted_table([1] * len(DESC_TEMPLATES)))
        self._dw = [rng.randbytes(n).translate(word_tab) for _ in range(2)]
        ntags = rng.randbytes(n).translate(weighted_table([10, 30, 35, 25], [0, 1, 2, 3]))
        tag_tab = weighted_table([1.0 / (i + 1) ** 0.5 for i in range(len(TAGS))])
        self._tags = [self._slot(rng, ntags, slot, tag_tab) for slot in range(3)]
        ncats = rng.randbytes(n).translate(weighted_table([70, 30], [1, 2]))
        cat_tab = weighted_table([1.0] * len(self._leaf_cats), self._leaf_cats)
        self._cats = [self._slot(rng, ncats, slot, cat_tab) for slot in range(2)]
        nauth_tab = weighted_table([25, 25, 20, 15, 8, 7], [1, 2, 3, 4, 5, 6])
        nauth = rng.randbytes(n).translate(nauth_tab)
        first_tab = weighted_table([1.0] * len(FIRST_NAMES))
        last_tab = weighted_table([1.0 / (i + 1) ** 0.3 for i in range(len(LAST_NAMES))])
        self._afirst = [self._slot(rng, nauth, s_, first_tab) for s_ in range(6)]
        self._alast = [rng.randbytes(n).translate(last_tab) for _ in range(6)]

    @staticmethod
    def _publish_time(created: int, nver: int, rnd: Any) -> int:
        """Most items go public within minutes, some after review or embargo."""
        p, r = rnd(), rnd()
        if p < 0.55:
            d = int(r * 600)
        elif p < 0.85:
            d = int(r * 3 * DAY)
        elif p < 0.97:
            d = int(r * 60 * DAY)
        else:
            d = int(r * 400 * DAY)
        if nver > 1:
            d += int((30 + r * 700) * DAY)  # later versions came out after a while
        room = HORIZON - 60 - created
        return created + (d if d < room else int(room * r))

    @staticmethod
    def _id_sequence(created: Sequence[int], rnd: Any) -> Iterable[int]:
        """Ids follow creation time like Figshare's global counter, with other users' gaps."""
        prev = 0
        for c in created:
            base = 1_000_000 + int(44_000_000 * ((c - START) / (HORIZON - START)) ** 1.6)
            prev = max(prev + 1, base + int(rnd() * 40))
            yield prev

    @staticmethod
    def _modified_time(published: int, rnd: Any) -> int:
        r = rnd()
        if published < MIGRATION and r < 0.6:
            return MIGRATION  # the 2016 platform migration re-saved most older items
        if r < 0.8:
            return published + int(rnd() * 120)
        return published + int((HORIZON - published) * rnd() ** 3)

    def _slot(self, rng: random.Random, counts: bytes, slot: int, tab: bytes) -> bytes:
        """One slot array: a weighted draw where the item has more than `slot` values."""
        empty = bytes(NONE if c <= slot else 0 for c in range(256))
        return mask_or(rng.randbytes(self.n).translate(tab), counts.translate(empty))

    def _build_accounts_and_private(self) -> None:
        rng = random.Random(f"accounts:{self.seed}:{self.n}")
        inst0 = self.institutions[0].id if self.institutions else 0
        self.user = Account(1_000_001 + self.seed % 1_000, inst0, False)
        self.admin = Account(1_000_501 + self.seed % 1_000, inst0, True)
        in0 = byte_positions(self._inst, 0) if self.institutions else []
        pool = in0 or list(range(self.n))
        picks = rng.sample(pool, min(len(pool), 15))
        self._owner: dict[int, int] = {k: self.user.id for k in picks[:12]}
        self._owner.update({k: self.admin.id for k in picks[12:]})
        # private items: the user's drafts, plus the institution's other non-public items
        taken = set(self._ids)
        self._private: dict[int, Attrs] = {}
        self._private_owner: dict[int, int] = {}
        n_inst = max(3, min(100, len(in0) // 200)) if self.institutions else 0
        for j in range(self.settings.private_items + n_inst):
            owner = self.user.id if j < self.settings.private_items else 2_500_000 + j
            created = HORIZON - rng.randrange(2 * 365 * DAY)
            pid = 1_000_000 + int(44_000_000 * ((created - START) / (HORIZON - START)) ** 1.6)
            while pid in taken:
                pid += 1
            taken.add(pid)
            inst = 0 if self.institutions else NONE
            groups = self._inst_groups[0] if self.institutions else []
            a = Attrs(
                id=pid, k=-1, created=created, published=0,
                modified=min(HORIZON, created + rng.randrange(30 * DAY)), inst=inst,
                gidx=rng.choice(groups) if groups else NONE,
                itype=rng.choice([3, 3, 1, 9, 6]), nver=1,
                tmpl=rng.randrange(len(TITLE_TEMPLATES)),
                tw=tuple(rng.randrange(len(TITLE_WORDS)) for _ in range(4)),
                dtmpl=rng.randrange(len(DESC_TEMPLATES)),
                dw=(rng.randrange(len(TITLE_WORDS)), rng.randrange(len(TITLE_WORDS))),
                tags=tuple(rng.sample(range(len(TAGS)), rng.randrange(0, 3))),
                cats=(rng.choice(self._leaf_cats),),
                authors=((rng.randrange(len(FIRST_NAMES)), rng.randrange(len(LAST_NAMES))),),
                h=mix64(self.seed * 1_000_003 + pid), public=False, edits=0,
            )  # fmt: skip
            self._private[pid] = a
            self._private_owner[pid] = owner
        self._private_ids = sorted(self._private)

    def _build_collections_projects(self) -> None:
        rng = random.Random(f"collections:{self.seed}:{self.n}")
        n = self.n
        self._projects: list[dict[str, Any]] = []
        self._project_of: dict[int, int] = {}  # article index -> project id
        used: set[int] = set()
        for j in range(max(3, min(30, n // 60))):
            pid = 80_000 + j * 197 + self.seed % 97
            size = min(n, rng.randint(2, 40))
            members = sorted(k for k in rng.sample(range(n), size) if k not in used)
            used.update(members)
            for k in members:
                self._project_of[k] = pid
            first = min((self._published[k] for k in members), default=HORIZON - DAY)
            self._projects.append(self._project_meta(rng, pid, j, members, first))
        self._collections: list[dict[str, Any]] = []
        for j in range(max(3, min(40, n // 50))):
            cid = 4_300_000 + j * 9_973 + self.seed % 89
            size = min(n, rng.randint(2, 60))
            members = sorted(rng.sample(range(n), size))
            last = max(self._published[k] for k in members)
            self._collections.append(self._collection_meta(rng, cid, j, members, last))
        self._coll_by_id = {c["id"]: c for c in self._collections}
        self._proj_by_id = {p["id"]: p for p in self._projects}

    def _collection_meta(
        self, rng: random.Random, cid: int, j: int, members: list[int], last: int
    ) -> dict[str, Any]:
        inst = rng.randrange(len(self.institutions)) if self.institutions and j % 3 else NONE
        words = rng.sample(TITLE_WORDS, 3)
        published = min(HORIZON - 60, last + rng.randrange(DAY, 30 * DAY))
        gidx = rng.choice(self._inst_groups[inst]) if inst != NONE else NONE
        return {
            "id": cid, "title": f"Collection: {words[0]} and {words[1]} ({words[2]})",
            "members": members, "inst": inst, "gidx": gidx, "published": published,
            "created": published - rng.randrange(DAY, 90 * DAY),
            "modified": min(HORIZON, published + rng.randrange(0, 200 * DAY)),
            "authors": [(rng.randrange(len(FIRST_NAMES)), rng.randrange(len(LAST_NAMES)))
                        for _ in range(rng.randint(1, 3))],
            "tags": rng.sample(TAGS, 2), "cats": rng.sample(self._leaf_cats, 1),
        }  # fmt: skip

    def _project_meta(
        self, rng: random.Random, pid: int, j: int, members: list[int], first: int
    ) -> dict[str, Any]:
        inst = rng.randrange(len(self.institutions)) if self.institutions and j % 2 else NONE
        words = rng.sample(TITLE_WORDS, 2)
        published = max(START, first - rng.randrange(0, 5 * DAY))
        return {
            "id": pid, "title": f"Project {words[0]} {words[1]}", "members": members,
            "inst": inst, "gidx": rng.choice(self._inst_groups[inst]) if inst != NONE else NONE,
            "published": published, "created": published - rng.randrange(DAY, 60 * DAY),
            "modified": min(HORIZON, published + rng.randrange(0, 300 * DAY)),
            "collaborators": [(rng.randrange(len(FIRST_NAMES)), rng.randrange(len(LAST_NAMES)))
                              for _ in range(rng.randint(1, 4))],
        }  # fmt: skip

    # ---- id lookups ----------------------------------------------------------------------

    def _index(self, article_id: int) -> int:
        """Index of a public (not withdrawn) article id, or -1."""
        k = bisect.bisect_left(self._ids, article_id)
        if k < self.n and self._ids[k] == article_id and k not in self._withdrawn:
            return k
        return -1

    def _need(self, article_id: int) -> int:
        k = self._index(article_id)
        if k < 0:
            raise KeyError(article_id)
        return k

    @property
    def ids(self) -> array[int]:
        """Public article ids, ascending (withdrawn ones left out)."""
        if not self._withdrawn:
            return self._ids
        if self._public_ids is None or self._public_ids[0] != self.generation:
            keep = array("I", (i for k, i in enumerate(self._ids) if k not in self._withdrawn))
            self._public_ids = (self.generation, keep)
        return self._public_ids[1]

    def exists(self, article_id: int) -> bool:
        """True for a public, not withdrawn article."""
        return self._index(article_id) >= 0

    def published(self, article_id: int) -> datetime:
        return datetime.fromtimestamp(self._published[self._need(article_id)], UTC)

    def modified(self, article_id: int) -> datetime:
        k = self._need(article_id)
        return datetime.fromtimestamp(self._mod_over.get(k, self._modified[k]), UTC)

    def created(self, article_id: int) -> datetime:
        return datetime.fromtimestamp(self._created[self._need(article_id)], UTC)

    def institution_of(self, article_id: int) -> int:
        """Numeric institution id; 0 for items of figshare.com's unaffiliated users."""
        i = self._inst[self._need(article_id)]
        return 0 if i == NONE else self.institutions[i].id

    def group_of(self, article_id: int) -> int:
        """Group id; 0 when the item has none."""
        g = self._gidx[self._need(article_id)]
        return 0 if g == NONE else self.groups[g].id

    def item_type_of(self, article_id: int) -> int:
        return self._itype[self._need(article_id)]

    def versions_of(self, article_id: int) -> int:
        return self._nver[self._need(article_id)]

    def category_ids_of(self, article_id: int) -> list[int]:
        k = self._need(article_id)
        return [self.categories[s[k]]["id"] for s in self._cats if s[k] != NONE]

    def project_of(self, article_id: int) -> int | None:
        return self._project_of.get(self._need(article_id))

    # ---- incremental-harvest hooks ------------------------------------------------------

    def modify(self, article_id: int, when: datetime) -> None:
        """Bump the item's modified date to `when` and edit its description."""
        k = self._need(article_id)
        self._mod_over[k] = int(when.timestamp())
        self._edits[k] = self._edits.get(k, 0) + 1
        self._changed(k)

    def withdraw(self, article_id: int) -> None:
        """The item answers 404 from now on and leaves every listing."""
        k = self._need(article_id)
        self._withdrawn.add(k)
        self._changed(k)

    def _changed(self, k: int) -> None:
        self.generation += 1
        for key in [key for key in self._records if key[0] == self._ids[k]]:
            del self._records[key]
        self._select_cache.clear()
        self._orders.clear()

    # ---- attributes and texts -------------------------------------------------------------

    def _attrs(self, k: int) -> Attrs:
        aid = self._ids[k]
        return Attrs(
            id=aid, k=k, created=self._created[k], published=self._published[k],
            modified=self._mod_over.get(k, self._modified[k]), inst=self._inst[k],
            gidx=self._gidx[k], itype=self._itype[k], nver=self._nver[k], tmpl=self._tmpl[k],
            tw=tuple(s[k] for s in self._tw), dtmpl=self._dtmpl[k],
            dw=(self._dw[0][k], self._dw[1][k]),
            tags=tuple(s[k] for s in self._tags if s[k] != NONE),
            cats=tuple(s[k] for s in self._cats if s[k] != NONE),
            authors=tuple((f[k], la[k]) for f, la in zip(self._afirst, self._alast, strict=True)
                          if f[k] != NONE),
            h=mix64(self.seed * 1_000_003 + aid), public=True, edits=self._edits.get(k, 0),
        )  # fmt: skip
