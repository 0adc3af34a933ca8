"""Deterministic Figshare-like corpus: compact per-item arrays, full records built on demand."""

from __future__ import annotations

import bisect
import hashlib
import html
import math
import random
import re
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import accumulate
from typing import Any, NamedTuple

import orjson

from harvester.simulator.settings import SimSettings

API = "https://api.figshare.com/v2"
NONE = 255  # "no value" in every one-byte slot array

START = int(datetime(2012, 1, 1, tzinfo=UTC).timestamp())
HORIZON = int(datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC).timestamp())  # the corpus' "now"
MIGRATION = int(
    datetime(2016, 1, 19, 9, 9, 40, tzinfo=UTC).timestamp()
)  # bulk re-save of old items
LEGACY_BEFORE = int(datetime(2016, 1, 1, tzinfo=UTC).timestamp())
DAY = 86_400
_M64 = (1 << 64) - 1

ITEM_TYPES: dict[int, str] = {
    1: "figure", 2: "media", 3: "dataset", 5: "poster", 6: "journal contribution",
    7: "presentation", 8: "thesis", 9: "software", 11: "online resource", 12: "preprint",
    13: "book", 14: "conference contribution", 15: "chapter", 16: "peer review",
    17: "educational resource", 18: "report", 19: "standard", 20: "composition", 21: "funding",
    22: "physical object", 23: "data management plan", 24: "workflow", 25: "monograph",
    26: "performance", 27: "event", 28: "service", 29: "model",
}  # fmt: skip
_TYPE_WEIGHTS = {3: 30, 1: 18, 6: 10, 2: 5, 9: 5, 5: 5, 7: 5, 8: 4, 12: 3, 11: 2, 14: 2, 18: 2}

_KNOWN_INSTITUTIONS = [
    (319, "iastate", "Iowa State University", "iastate.edu", "10.25380"),
    (2, "lboro", "Loughborough University", "lboro.ac.uk", "10.17028"),
    (11, "monash", "Monash University", "monash.edu", "10.26180"),
    (33, "melbourne", "The University of Melbourne", "unimelb.edu.au", "10.26188"),
    (51, "sheffield", "The University of Sheffield", "sheffield.ac.uk", "10.15131"),
    (87, "kcl", "King's College London", "kcl.ac.uk", "10.18742"),
    (99, "uct", "University of Cape Town", "uct.ac.za", "10.25375"),
    (146, "auckland", "The University of Auckland", "auckland.ac.nz", "10.17608"),
]
_GROUP_NAMES = [
    "Agriculture", "Engineering", "Library", "Sciences", "Medicine and Health",
    "Arts and Humanities", "Business School", "Social Sciences",
]  # fmt: skip

TITLE_WORDS = (  # noqa: SIM905
    "frog climate soil protein genome river ocean sediment neural network lattice polymer "
    "catalyst microbiome wheat maize cattle insect coral glacier aerosol rainfall drought urban "
    "traffic energy battery solar wind turbine graphene enzyme antibody vaccine virus bacteria "
    "fungus pollen forest wetland estuary seagrass plankton salmon whale bird bat honeybee "
    "mosquito malaria tuberculosis diabetes cancer tumour cardiac stroke dementia sleep memory "
    "language reading literacy migration housing poverty labour wage trade policy election "
    "media archive manuscript museum heritage music dance theatre film poetry novel pottery "
    "textile bridge concrete steel timber robot drone sensor laser photon quantum spin magnet "
    "superconductor crystal mineral basalt volcano earthquake tsunami landslide permafrost snow "
    "ice lake groundwater nitrogen phosphorus carbon methane ozone plastic microplastic "
    "recycling water sanitation hygiene nutrition obesity exercise ageing childhood adolescent "
    "pregnancy fertility genetics epigenetics rna dna transcriptome proteome metabolome imaging "
    "microscopy spectroscopy tomography simulation model algorithm benchmark dataset survey "
    "interview census cohort trial registry données étude réseau énergie santé über größe señal "
    "niño ciência pesquisa 数据 研究 気候 環境 모델 δ13c"
).split()
_TITLE_TEMPLATES = [
    ("{0} {1} in {2} {3}", 4),
    ("{0} of {1}: {2} and {3}", 4),
    ("Data for: {0} {1} {2}", 3),
    ("{0} {1} dataset", 2),
    ("Supplementary material for “{0} {1} {2}”", 3),
    ("<em>{0}</em> {1} {2} {3}", 4),
    ("{0} {1} {2} 🌊", 3),
    ("Figure: {0} {1}", 2),
]
_DESC_TEMPLATES = [
    "<p>This dataset contains {0} measurements collected during the {1} campaign.</p>",
    "<p>Supplementary data for the article on <em>{0}</em> and {1}. Files are provided in open "
    "formats.</p>",
    "<div><h3>Background</h3><p>{0} plays a key role in {1} &amp; related processes.</p>"
    "<h3>Methods</h3><p>Samples were analysed at 25 °C.</p></div>",
    "<p>Données sur {0} et {1} — collectées à Zürich. 研究データ。</p>",
    "<p>Code and notebooks for {0}/{1} analysis 🚀. See README for details.</p>",
    "{0} and {1} raw data.",
]
TAGS = [
    "machine learning", "climate change", "COVID-19", "RNA-seq", "open data", "biodiversity",
    "remote sensing", "deep learning", "public health", "mass spectrometry", "qualitative research",
    "agriculture", "soil science", "oceanography", "music and puppets", "cancer cell",
    "scrf=(cpcm,solvent=benzene)", "DFT", "genomics", "ecology", "hydrology", "geology",
    "education", "psychology", "economics", "history", "linguistics", "archaeology", "statistics",
    "bioinformatics", "neuroscience", "materials science", "nanotechnology", "robotics",
    "energy storage", "photovoltaics", "sustainability", "food security", "water quality",
    "air pollution", "epidemiology", "clinical trial", "mental health", "digital humanities",
    "oral history", "citizen science", "GIS", "LiDAR", "time series", "image analysis",
    "données ouvertes", "análisis de datos", "機械学習", "기후", "Ökologie", "😀 emoji tag",
    "x-ray diffraction", "NMR", "crystallography", "protein structure", "metagenomics",
    "phylogenetics", "evolution", "animal behaviour", "plant physiology", "urban planning",
    "transport", "policy analysis", "survey data", "interviews", "software", "R", "Python",
    "MATLAB", "simulation", "CFD", "finite element", "signal processing", "social media",
]  # fmt: skip
_CATEGORY_TREE = [
    (26_866, "Biological sciences", "31", [
        (26_868, "Genetics", "3105"), (26_870, "Microbiology", "3107"),
        (26_872, "Ecology", "3103"), (26_874, "Plant biology", "3108"),
        (26_876, "Zoology", "3109"), (26_878, "Biochemistry and cell biology", "3101")]),
    (26_880, "Earth sciences", "37", [
        (26_882, "Climate change science", "3701"), (26_884, "Geology", "3705"),
        (26_886, "Hydrology", "3707"), (26_888, "Oceanography", "3708")]),
    (26_890, "Engineering", "40", [
        (26_892, "Materials engineering", "4016"), (26_894, "Civil engineering", "4005"),
        (26_896, "Electrical engineering", "4008"), (26_898, "Mechanical engineering", "4017")]),
    (26_900, "Health sciences", "42", [
        (26_902, "Epidemiology", "4202"), (26_904, "Public health", "4206"),
        (26_906, "Health services and systems", "4203")]),
    (26_908, "Chemical sciences", "34", [
        (26_910, "Inorganic chemistry", "3402"), (26_912, "Physical chemistry", "3406"),
        (26_914, "Organic chemistry", "3405")]),
    (26_916, "Information and computing sciences", "46", [
        (26_918, "Machine learning", "4611"), (26_920, "Data management and data science", "4605"),
        (26_922, "Software engineering", "4612")]),
    (26_924, "History, heritage and archaeology", "43", [
        (26_926, "Archaeology", "4301"), (26_928, "Historical studies", "4303"),
        (26_930, "Heritage, archive and museum studies", "4302")]),
    (26_932, "Language, communication and culture", "47", [
        (26_934, "Linguistics", "4704"), (26_936, "Cultural studies", "4702")]),
    (26_938, "Economics", "38", [
        (26_940, "Applied economics", "3801"), (26_942, "Econometrics", "3802")]),
    (26_944, "Psychology", "52", [
        (26_946, "Cognitive and computational psychology", "5204"),
        (26_948, "Social and personality psychology", "5205")]),
]  # fmt: skip
FIRST_NAMES = (  # noqa: SIM905
    "Anna James Maria Wei Mohammed Olga Juan Aiko Priya Lars Chiara Kwame Fatima Liam Noor "
    "Sofia Hiroshi Amara Mateo Ingrid Ravi Zoë José Łukasz Søren Chloé Ahmet Yuki Elena Tomás "
    "Grace Ibrahim Mei Oliver Leila Pablo Nadia Ethan Ana Jonas Ayesha Daniel Freya Kofi Isabel "
    "Dmitri Hana Samuel Lucía Erik Aditi Marco Rosa Felix Thandiwe Jin Clara Omar Emily Björn "
    "Camille Tariq Sara Hugo Nia Andrés Ji-woo Olivia Mateus 翔太 Ngozi Ewa"
).split()
LAST_NAMES = (  # noqa: SIM905
    "Smith García Müller Nguyễn Wang Kowalski O'Brien Silva Kim Patel Rossi Johansson Okafor "
    "Dubois Tanaka Ivanova Hernández Cohen Andersen Novak Mensah Ali Fischer Lee Santos Yılmaz "  # noqa: RUF001
    "Popescu Schmidt Chen Jones Martínez Nakamura Singh Bianchi Larsen Mwangi Haddad Kovács "
    "Brown Rodríguez Wójcik Zhang Dlamini Costa Lindqvist Murphy Suzuki Khan Moreau Petrov "
    "Williams López Jensen Achebe Ferrari Horvath Taylor Pereira Sato Gupta Weber Kariuki "
    "Nielsen Romero Yamamoto Bakker Eriksson Walker Díaz Kaur Hoffmann Ogunleye Li Fernández "
    "Papadopoulos Moore Jovanović Hakimi Dupont Clarke Bergström Chowdhury Vargas Abe Mahlangu "
    "Keller Sánchez Thompson Castillo 王 Vandenberg"
).split()
_LICENSES = [
    {"value": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
    {"value": 2, "name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
    {"value": 3, "name": "MIT", "url": "https://opensource.org/licenses/MIT"},
    {"value": 4, "name": "GPL", "url": "https://www.gnu.org/copyleft/gpl.html"},
    {"value": 7, "name": "Apache 2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0.html"},
    {"value": 10, "name": "CC BY-NC 4.0", "url": "https://creativecommons.org/licenses/by-nc/4.0/"},
    {"value": 11, "name": "In Copyright", "url": "http://rightsstatements.org/vocab/InC/1.0/"},
]
_FUNDERS = [
    ("National Science Foundation", "https://www.nsf.gov"),
    ("European Research Council", "https://erc.europa.eu"),
    ("Wellcome Trust", "https://wellcome.org"),
    ("Australian Research Council", "https://www.arc.gov.au"),
    ("Deutsche Forschungsgemeinschaft", "https://www.dfg.de"),
    ("National Natural Science Foundation of China", "https://www.nsfc.gov.cn"),
]
_FILE_TYPES = [
    ("csv", "text/csv"),
    ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("zip", "application/zip"), ("pdf", "application/pdf"), ("png", "image/png"),
    ("tif", "image/tiff"), ("py", "text/x-python"), ("R", "text/plain"), ("txt", "text/plain"),
    ("h5", "application/x-hdf5"), ("nc", "application/x-netcdf"), ("mp4", "video/mp4"),
    ("json", "application/json"), ("docx", "application/vnd.openxmlformats-officedocument."
                                          "wordprocessingml.document"),
]  # fmt: skip
_FILE_STEMS = [
    "data", "raw_data", "supplementary", "Figure_1", "README", "analysis", "results", "table_S1",
    "données_brutes", "図1", "model_output", "code", "survey_responses", "images", "script",
]  # fmt: skip


# Every file's bytes are served by the download host (simulator/files.py), and its md5 is that of
# those bytes, so sizes stay small: 100 B to ~63 KB (real files reach 20 GB; fidelity limit;
# hashing bigger ones on the fly slows the loop the tests share with the harvester).
FILE_SIZE_EXP = (2.0, 4.8)
_FILE_BLOCK = 4_096


def file_content(
    seed: int, file_id: int, size: int, start: int = 0, end: int | None = None
) -> bytes:
    """Bytes [start, end) of a file's `size` bytes: a 4 KiB block from (seed, id), repeated."""
    end = size if end is None else min(end, size)
    if start >= end:
        return b""
    block = hashlib.shake_128(f"file:{seed}:{file_id}".encode()).digest(_FILE_BLOCK)
    first = start // _FILE_BLOCK
    data = block * ((end + _FILE_BLOCK - 1) // _FILE_BLOCK - first)
    offset = start - first * _FILE_BLOCK
    return data[offset : offset + end - start]


@lru_cache(maxsize=65_536)
def file_md5(seed: int, file_id: int, size: int) -> str:
    """md5 hex of the bytes the download host serves for this file."""
    return hashlib.md5(file_content(seed, file_id, size)).hexdigest()


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


class _Attrs(NamedTuple):
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


def _mix(x: int) -> int:
    """splitmix64: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _table(weights: Sequence[float], values: Sequence[int] | None = None) -> bytes:
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


def _mask_or(data: bytes, mask: bytes) -> bytes:
    """Bytewise OR of two equal-length byte strings, at C speed via big ints."""
    n = len(data)
    return (int.from_bytes(data, "little") | int.from_bytes(mask, "little")).to_bytes(n, "little")


def _positions(buf: bytes, value: int) -> list[int]:
    """All indices where buf holds value (a C-speed scan per hit)."""
    out: list[int] = []
    needle = bytes([value])
    i = buf.find(needle)
    while i >= 0:
        out.append(i)
        i = buf.find(needle, i + 1)
    return out


def tokens(text: str) -> list[str]:
    """Lowercased word tokens of text with HTML tags and entities removed."""
    return re.findall(r"\w+", html.unescape(re.sub(r"<[^>]+>", " ", text)).lower())


def iso(ts: int) -> str:
    """Epoch seconds -> Figshare's 'YYYY-MM-DDTHH:MM:SSZ'."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _naive(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _slug(text: str) -> str:
    return re.sub(r"\W+", "_", re.sub(r"<[^>]+>", "", text)).strip("_") or "_"


def _orcid(n: int) -> str:
    """A syntactically valid ORCID (ISO 7064 11,2 check digit) from a number."""
    digits = f"{n % 10**15:015d}"
    total = 0
    for d in digits:
        total = (total + int(d)) * 2
    check = (12 - total % 11) % 11
    s = digits + ("X" if check == 10 else str(check))
    return "-".join(s[i : i + 4] for i in range(0, 16, 4))


def _token_map(texts: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        for tok in set(tokens(text)):
            out.setdefault(tok, []).append(i)
    return out


class Corpus:
    """A deterministic Figshare corpus built from (seed, items); see docs/DESIGN.md."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.seed = settings.seed
        self.n = settings.items
        self._rng = random.Random(f"figshare-sim:{settings.seed}:{settings.items}")
        self._build_institutions()
        self._build_vocab()
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

    # ---- construction -------------------------------------------------------------------

    def _build_institutions(self) -> None:
        count = self.settings.institutions
        if not 1 <= count <= 200:
            raise ValueError(f"the corpus supports 1..200 institutions, got {count}")
        insts = [Institution(*row) for row in _KNOWN_INSTITUTIONS[:count]]
        for i in range(len(insts), count):
            insts.append(
                Institution(1_000 + i, f"inst{i}", f"Institution {i}", f"inst{i}.example.edu")
            )
        self.institutions: list[Institution] = insts
        per = max(1, min(len(_GROUP_NAMES), 250 // max(1, count)))
        groups: list[Group] = []
        self._inst_groups: list[list[int]] = []
        for i, inst in enumerate(insts):
            idxs: list[int] = []
            base = 11_962 + i * 731
            for j in range(per):
                parent = groups[idxs[0]].id if j >= 2 and j % 3 == 2 else 0
                code = "" if j % 2 else f"{inst.string_id.upper()}-{j:02d}"
                name = _GROUP_NAMES[j % len(_GROUP_NAMES)]
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

    def _build_vocab(self) -> None:
        cats: list[dict[str, Any]] = []
        leaf: list[int] = []
        for pid, title, src, children in _CATEGORY_TREE:
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
        self._cat_by_title = {c["title"].lower(): i for i, c in enumerate(cats)}
        self._tag_by_text = {t.lower(): i for i, t in enumerate(TAGS)}
        self._tw_tokens = _token_map(TITLE_WORDS)
        self._tag_tokens = _token_map(TAGS)
        self._cat_tokens = _token_map([c["title"] for c in cats])
        self._first_tokens = _token_map(FIRST_NAMES)
        self._last_tokens = _token_map(LAST_NAMES)
        self._tmpl_tokens = _token_map([t.format("", "", "", "") for t, _ in _TITLE_TEMPLATES])
        self._dtmpl_tokens = _token_map([t.format("", "") for t in _DESC_TEMPLATES])
        self._orcids: dict[str, tuple[int, int]] | None = None

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
        nver_all = rng.randbytes(n).translate(_table([85, 10, 3.5, 1, 0.5], [1, 2, 3, 4, 5]))
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
            self.busy_days = [_date(d) for d in days]
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
        self._inst = rng.randbytes(n).translate(_table(weights, [NONE, *range(ninst)]))
        gsel = rng.randbytes(n)
        gmap = bytearray([NONE]) * (256 * 256)
        for i, idxs in enumerate(self._inst_groups):
            tab = _table([1.0 / (j + 1) for j in range(len(idxs))], idxs)
            gmap[i * 256 : i * 256 + 256] = tab
        self._gidx = bytes(gmap[(i << 8) | g] for i, g in zip(self._inst, gsel, strict=True))
        tw = [_TYPE_WEIGHTS.get(code, 0.3) for code in ITEM_TYPES]
        self._itype = rng.randbytes(n).translate(_table(tw, list(ITEM_TYPES)))

        # searchable slots, each a one-byte index into a fixed vocabulary (NONE = empty)
        zipf = [1.0 / (i + 1) ** 0.6 for i in range(len(TITLE_WORDS))]
        word_tab = _table(zipf)
        self._tmpl = rng.randbytes(n).translate(_table([1] * len(_TITLE_TEMPLATES)))
        self._tw = []
        for slot in range(4):
            unused = bytes(0 if used > slot else NONE for _, used in _TITLE_TEMPLATES)
            mask = self._tmpl.translate(unused + bytes(256 - len(unused)))
            self._tw.append(_mask_or(rng.randbytes(n).translate(word_tab), mask))
        self._dtmpl = rng.randbytes(n).translate(_table([1] * len(_DESC_TEMPLATES)))
        self._dw = [rng.randbytes(n).translate(word_tab) for _ in range(2)]
        ntags = rng.randbytes(n).translate(_table([10, 30, 35, 25], [0, 1, 2, 3]))
        tag_tab = _table([1.0 / (i + 1) ** 0.5 for i in range(len(TAGS))])
        self._tags = [self._slot(rng, ntags, slot, tag_tab) for slot in range(3)]
        ncats = rng.randbytes(n).translate(_table([70, 30], [1, 2]))
        cat_tab = _table([1.0] * len(self._leaf_cats), self._leaf_cats)
        self._cats = [self._slot(rng, ncats, slot, cat_tab) for slot in range(2)]
        nauth = rng.randbytes(n).translate(_table([25, 25, 20, 15, 8, 7], [1, 2, 3, 4, 5, 6]))
        first_tab = _table([1.0] * len(FIRST_NAMES))
        last_tab = _table([1.0 / (i + 1) ** 0.3 for i in range(len(LAST_NAMES))])
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
        return _mask_or(rng.randbytes(self.n).translate(tab), counts.translate(empty))

    def _build_accounts_and_private(self) -> None:
        rng = random.Random(f"accounts:{self.seed}:{self.n}")
        inst0 = self.institutions[0].id if self.institutions else 0
        self.user = Account(1_000_001 + self.seed % 1_000, inst0, False)
        self.admin = Account(1_000_501 + self.seed % 1_000, inst0, True)
        in0 = _positions(self._inst, 0) if self.institutions else []
        pool = in0 or list(range(self.n))
        picks = rng.sample(pool, min(len(pool), 15))
        self._owner: dict[int, int] = {k: self.user.id for k in picks[:12]}
        self._owner.update({k: self.admin.id for k in picks[12:]})
        # private items: the user's drafts, plus the institution's other non-public items
        taken = set(self._ids)
        self._private: dict[int, _Attrs] = {}
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
            a = _Attrs(
                id=pid, k=-1, created=created, published=0,
                modified=min(HORIZON, created + rng.randrange(30 * DAY)), inst=inst,
                gidx=rng.choice(groups) if groups else NONE,
                itype=rng.choice([3, 3, 1, 9, 6]), nver=1,
                tmpl=rng.randrange(len(_TITLE_TEMPLATES)),
                tw=tuple(rng.randrange(len(TITLE_WORDS)) for _ in range(4)),
                dtmpl=rng.randrange(len(_DESC_TEMPLATES)),
                dw=(rng.randrange(len(TITLE_WORDS)), rng.randrange(len(TITLE_WORDS))),
                tags=tuple(rng.sample(range(len(TAGS)), rng.randrange(0, 3))),
                cats=(rng.choice(self._leaf_cats),),
                authors=((rng.randrange(len(FIRST_NAMES)), rng.randrange(len(LAST_NAMES))),),
                h=_mix(self.seed * 1_000_003 + pid), public=False, edits=0,
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

    def group_counts(self) -> dict[int, int]:
        """Public articles per group id (withdrawn ones included until the next build)."""
        return {g.id: self._gidx.count(bytes([i])) for i, g in enumerate(self.groups)}

    def ids_by_published(self, direction: str = "asc") -> array[int]:
        """Public ids ordered by (published, id)."""
        return self.select(order="published_date", direction=direction)

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

    def rename_file(self, article_id: int, file_id: int, name: str) -> None:
        """Serve the public item's file under `name` from now on (hostile-name tests)."""
        k = self._need(article_id)
        if not any(f["id"] == file_id for f in self._files(self._attrs(k), self._nver[k], False)):
            raise KeyError((article_id, file_id))
        self._file_names[file_id] = name
        self._changed(k)

    def download(self, file_id: int) -> Download:
        """The file a download URL names (ndownloader.figshare.com/files/<id>); KeyError if none.

        File ids are `article id * 31 + 1 + position`, so the item is found without an index.
        """
        article_id, j = divmod(file_id - 1, 31)
        owner: int | None
        if article_id in self._private:
            a, owner = self._private[article_id], self._private_owner[article_id]
            files, is_open = self._files(a, 1, private=False), True
        else:
            k = self._need(article_id)
            a, owner = self._attrs(k), self._owner.get(k)
            files, is_open = self._files(a, a.nver, private=False), self._access(a) == "open"
        if j >= len(files) or files[j]["id"] != file_id or files[j]["is_link_only"]:
            raise KeyError(file_id)
        return Download(files[j], owner, a.public, is_open)

    def _changed(self, k: int) -> None:
        self.generation += 1
        for key in [key for key in self._records if key[0] == self._ids[k]]:
            del self._records[key]
        self._select_cache.clear()
        self._orders.clear()

    # ---- attributes and texts -------------------------------------------------------------

    def _attrs(self, k: int) -> _Attrs:
        aid = self._ids[k]
        return _Attrs(
            id=aid, k=k, created=self._created[k], published=self._published[k],
            modified=self._mod_over.get(k, self._modified[k]), inst=self._inst[k],
            gidx=self._gidx[k], itype=self._itype[k], nver=self._nver[k], tmpl=self._tmpl[k],
            tw=tuple(s[k] for s in self._tw), dtmpl=self._dtmpl[k],
            dw=(self._dw[0][k], self._dw[1][k]),
            tags=tuple(s[k] for s in self._tags if s[k] != NONE),
            cats=tuple(s[k] for s in self._cats if s[k] != NONE),
            authors=tuple((f[k], la[k]) for f, la in zip(self._afirst, self._alast, strict=True)
                          if f[k] != NONE),
            h=_mix(self.seed * 1_000_003 + aid), public=True, edits=self._edits.get(k, 0),
        )  # fmt: skip

    @staticmethod
    def _title(a: _Attrs) -> str:
        template, used = _TITLE_TEMPLATES[a.tmpl]
        words = [TITLE_WORDS[w] for w in a.tw[:used]]
        words[0] = words[0][:1].upper() + words[0][1:]
        return template.format(*words, "", "", "")

    @staticmethod
    def _description(a: _Attrs) -> str:
        w0, w1 = TITLE_WORDS[a.dw[0]], TITLE_WORDS[a.dw[1]]
        return _DESC_TEMPLATES[a.dtmpl].format(w0[:1].upper() + w0[1:], w1)

    @staticmethod
    def _author(f: int, la: int) -> dict[str, Any]:
        combo = f * 256 + la
        first, last = FIRST_NAMES[f], LAST_NAMES[la]
        h = _mix(combo + 77)
        active = h % 10 < 7
        return {
            "id": 1_000_000 + combo * 17,
            "full_name": f"{first} {last}",
            "first_name": first,
            "last_name": last,
            "is_active": active,
            "url_name": _slug(f"{first} {last}") if active else "_",
            "orcid_id": _orcid(h >> 8) if (h >> 4) % 20 < 9 else "",
        }

    def texts(self, article_id: int) -> dict[str, list[str]]:
        """Searchable texts of a public item: title, description, tags, categories, authors."""
        return self._texts(self._attrs(self._need(article_id)))

    def _texts(self, a: _Attrs) -> dict[str, list[str]]:
        return {
            "title": [self._title(a)],
            "description": [self._description(a)],
            "tag": [TAGS[t] for t in a.tags],
            "category": [self.categories[c]["title"] for c in a.cats],
            "author": [f"{FIRST_NAMES[f]} {LAST_NAMES[la]}" for f, la in a.authors],
        }

    # ---- structural facts shared by the light and the full presenters ----------------------

    @staticmethod
    def _nfiles(a: _Attrs) -> int:
        sel = a.h & 1023
        if sel < 30:
            return 0
        if sel < 500:
            return 1
        r = (a.h >> 40) & 0xFFFF
        if sel < 800:
            return 2 + r % 4
        if sel < 950:
            return 6 + r % 5
        return 11 + r % 20

    @staticmethod
    def _access(a: _Attrs) -> str:
        """'embargo' (file embargo), 'confidential' or 'open'."""
        sel = (a.h >> 10) & 1023
        return "embargo" if sel < 25 else ("confidential" if sel < 45 else "open")

    def _legacy(self, a: _Attrs) -> bool:
        """Older bodies lack keywords, related_materials, folder_structure, names, mimetypes."""
        return a.public and a.published < LEGACY_BEFORE and (a.h >> 20) & 1 == 1

    def _version_time(self, a: _Attrs, v: int) -> int:
        if a.nver == 1 or v >= a.nver:
            return a.published
        frac = 0.05 + ((a.h >> 24) & 255) / 600.0
        first = a.created + int((a.published - a.created) * frac)
        return first + (a.published - first) * (v - 1) // (a.nver - 1)

    def _doi(self, a: _Attrs, v: int) -> str:
        if not a.public:
            return ""
        if a.inst != NONE and self.institutions[a.inst].doi_prefix != "10.6084":
            inst = self.institutions[a.inst]
            return f"{inst.doi_prefix}/{inst.string_id}.{a.id}.v{v}"
        return f"10.6084/m9.figshare.{a.id}.v{v}"

    def _handle(self, a: _Attrs, v: int) -> str:
        if a.public and a.inst != NONE and self.institutions[a.inst].string_id == "lboro":
            return f"2134/{a.id}.v{v}"
        return ""

    def _resource(self, a: _Attrs) -> tuple[str, str] | None:
        if (a.h >> 23) & 15 or not a.public:
            return None
        words = [TITLE_WORDS[w] for w in a.dw]
        return (f"On the {words[0]} of {words[1]}", f"10.1371/journal.pone.{a.id % 10**7:07d}")

    def _timeline(self, a: _Attrs, v: int) -> dict[str, str]:
        if not a.public:
            return {}
        first = self._version_time(a, 1)
        out = {
            "posted": _naive(self._version_time(a, v)),
            "firstOnline": _date(first) if (a.h >> 21) & 3 == 0 else _naive(first),
        }
        if self._resource(a) is not None:
            out["publisherPublication"] = _date(first - DAY * ((a.h >> 30) & 63))
        return out

    def _urls(self, a: _Attrs) -> tuple[str, str]:
        """(figshare_url, url_public_html): institutional items live on their portal."""
        portal = "figshare.com"
        if a.inst != NONE and a.public:
            portal = f"{self.institutions[a.inst].string_id}.figshare.com"
        kind = ITEM_TYPES[a.itype].replace(" ", "_")
        url = f"https://{portal}/articles/{kind}/{_slug(self._title(a))}/{a.id}"
        return url, url

    def _thumb(self, a: _Attrs) -> str:
        if a.itype in (1, 2, 5, 7) and self._nfiles(a) and self._access(a) == "open":
            fid = a.id * 31 + 1
            return f"https://ndownloader.figshare.com/files/{fid}/preview/{fid}/thumb.png"
        return ""

    # ---- presenters ----------------------------------------------------------------------

    def light(self, article_id: int) -> dict[str, Any]:
        """The list/search presenter (group_id 0 and resource fields "" when absent)."""
        return self._light(self._attrs(self._need(article_id)))

    def _light(self, a: _Attrs, private: bool = False) -> dict[str, Any]:
        v = a.nver if a.public else 1
        _, public_html = self._urls(a)
        res = self._resource(a)
        return {
            "id": a.id,
            "title": self._title(a),
            "doi": self._doi(a, v),
            "handle": self._handle(a, v),
            "url": f"{API}/account/articles/{a.id}" if private else f"{API}/articles/{a.id}",
            "published_date": iso(a.published) if a.published else None,
            "thumb": self._thumb(a),
            "defined_type": a.itype,
            "defined_type_name": ITEM_TYPES[a.itype],
            "group_id": 0 if a.gidx == NONE else self.groups[a.gidx].id,
            "url_private_api": f"{API}/account/articles/{a.id}",
            "url_public_api": f"{API}/articles/{a.id}",
            "url_private_html": f"https://figshare.com/account/articles/{a.id}",
            "url_public_html": public_html,
            "timeline": self._timeline(a, v),
            "resource_title": res[0] if res else (None if private else ""),
            "resource_doi": res[1] if res else (None if private else ""),
            "created_date": iso(a.created),
            "modified_date": iso(a.modified),
        }

    def search_light(self, article_id: int) -> dict[str, Any]:
        """Light presenter as /articles/search serves it (with project_id)."""
        k = self._need(article_id)
        out = self._light(self._attrs(k))
        out["project_id"] = self._project_of.get(k)
        return out

    def article(
        self, article_id: int, version: int | None = None, files_cap: int | None = None
    ) -> dict[str, Any]:
        """Full ArticleComplete of a public item (a version of it when given); KeyError if none.

        `files` holds at most `files_cap` entries (default: settings.full_record_files_cap).
        """
        a = self._attrs(self._need(article_id))
        v = a.nver if version is None else version
        if not 1 <= v <= a.nver:
            raise KeyError((article_id, version))
        return self._cached(a, v, private=False, files_cap=files_cap)

    def files(self, article_id: int) -> list[dict[str, Any]]:
        """The complete public file list ([] under file embargo or confidentiality)."""
        a = self._attrs(self._need(article_id))
        if self._access(a) != "open":
            return []
        return self._files(a, a.nver, private=False)

    def _cached(
        self, a: _Attrs, v: int, private: bool, files_cap: int | None = None
    ) -> dict[str, Any]:
        key = (a.id, v, private)
        rec = self._records.get(key)
        if rec is None:
            rec = self._record(a, v, private)
            self._records[key] = rec
            if len(self._records) > self._record_cap:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        # callers get their own copy: the cached record must never change under them
        out: dict[str, Any] = orjson.loads(orjson.dumps(rec))
        if "files" in out:
            cap = self.settings.full_record_files_cap if files_cap is None else files_cap
            out["files"] = out["files"][:cap]
        return out

    def _files(self, a: _Attrs, v: int, private: bool) -> list[dict[str, Any]]:
        nfiles = self._nfiles(a)
        if v < a.nver and nfiles > 1:
            nfiles -= 1  # older versions had one file fewer
        rng = random.Random(a.h ^ 0xF11E5)
        legacy = self._legacy(a)
        out = []
        for j in range(nfiles):
            fid = a.id * 31 + 1 + j
            ext, mime = _FILE_TYPES[rng.randrange(len(_FILE_TYPES))]
            stem = _FILE_STEMS[rng.randrange(len(_FILE_STEMS))]
            # names repeat inside one item now and then (different ids)
            name = f"{stem}.{ext}" if rng.random() < 0.3 else f"{stem}_{j + 1}.{ext}"
            if rng.random() < 0.06:
                host = rng.choice(["https://github.com/example-lab", "https://zenodo.org/records"])
                f: dict[str, Any] = {
                    "id": fid, "name": name, "size": 0, "is_link_only": True,
                    "download_url": f"{host}/{fid}", "supplied_md5": "", "computed_md5": "",
                }  # fmt: skip
            else:
                size = int(10 ** rng.uniform(*FILE_SIZE_EXP))
                md5 = file_md5(self.seed, fid, size)
                f = {
                    "id": fid, "name": name,
                    "size": size, "is_link_only": False,
                    "download_url": f"https://ndownloader.figshare.com/files/{fid}",
                    "supplied_md5": md5 if rng.random() < 0.6 else "",
                    "computed_md5": md5 if rng.random() < 0.97 else "",
                }  # fmt: skip
            if not legacy:
                f["mimetype"] = "" if f["is_link_only"] or rng.random() < 0.05 else mime
            if fid in self._file_names:
                f["name"] = self._file_names[fid]
            if private:
                f.update(
                    status="available", viewer_type="", preview_state="preview not available",
                    upload_url="" if f["is_link_only"] else
                    f"https://uploads.figshare.com/upload/{hashlib.md5(str(fid).encode()).hexdigest()}",
                    upload_token="" if f["is_link_only"] else
                    str(_uuid(_mix(fid))), is_attached_to_public_version=a.public,
                )  # fmt: skip
            out.append(f)
        return out

    def _record(self, a: _Attrs, v: int, private: bool) -> dict[str, Any]:
        """Build the full record; every key ArticleComplete serves, in Figshare's order."""
        rng = random.Random(a.h)
        legacy = self._legacy(a)
        access = self._access(a) if a.public else "open"
        files = self._files(a, v, private)
        latest = v == a.nver
        title = self._title(a)
        description = self._description(a)
        if not latest:
            description = f"{description}<p>Version {v}: preliminary release.</p>"
        for e in range(a.edits if latest else 0):
            description += f"<p>Metadata revised ({e + 1}).</p>"
        authors = [self._author(f, la) for f, la in a.authors]
        if legacy:
            for au in authors:
                del au["first_name"], au["last_name"]
        inst = self.institutions[a.inst] if a.inst != NONE else None
        tags = [TAGS[t] for t in a.tags]
        if not latest and len(tags) > 1:
            tags = tags[:-1]
        funding_list: list[dict[str, Any]] = []
        for i in range(rng.choice([0, 0, 0, 1, 1, 2])):
            name, url = _FUNDERS[rng.randrange(len(_FUNDERS))]
            funding_list.append({
                "id": 100_000 + (a.id * 7 + i) % 900_000, "title": f"{name} grant",
                "grant_code": f"G{rng.randrange(10**6):06d}" if rng.random() < 0.7 else "",
                "funder_name": name, "is_user_defined": rng.choice([0, 1]),
                "url": f"{url}/award/{rng.randrange(10**6)}" if rng.random() < 0.5 else "",
            })  # fmt: skip
        funding: str | None
        if funding_list and rng.random() < 0.7:
            funding = "; ".join(str(f["title"]) for f in funding_list)
        else:
            funding = None if rng.random() < 0.8 else ""
        custom: list[dict[str, Any]] = []
        if inst is not None:
            custom = [
                {"name": "Publisher", "value": inst.name, "field_type": "text", "settings": {},
                 "order": 0, "is_mandatory": True},
                {"name": "Research themes",
                 "value": rng.sample(["Climate", "Health", "Food", "Energy", "Culture"], 2),
                 "field_type": "dropdown_large_list", "settings": {}, "order": 1,
                 "is_mandatory": False},
                {"name": "Ethics approval", "value": "" if rng.random() < 0.5 else "Not required",
                 "field_type": "textarea",
                 "settings": {"validations": {"min_length": 0, "max_length": 1000}},
                 "order": 2, "is_mandatory": False},
            ]  # fmt: skip
            if legacy:
                custom = [{"name": c["name"], "value": c["value"]} for c in custom]
        license_ = _LICENSES[
            rng.choice([2, 3, 4]) if a.itype == 9 else rng.choice([0, 0, 0, 1, 5, 6])
        ]
        size = sum(f["size"] for f in files)
        year = datetime.fromtimestamp(self._version_time(a, v) or a.created, UTC).year
        doi = self._doi(a, v)
        surnames = "; ".join(f"{LAST_NAMES[la]}, {FIRST_NAMES[f]}" for f, la in a.authors)
        kind = ITEM_TYPES[a.itype]
        publisher = inst.name if inst else "figshare"
        citation = f"{surnames} ({year}). {re.sub(r'<[^>]+>', '', title)}. {publisher}. "
        citation += f"{kind[:1].upper()}{kind[1:]}. https://doi.org/{doi}" if doi else kind.title()
        res = self._resource(a)
        light = self._light(a)
        figshare_url = light["url_public_html"]
        rec: dict[str, Any] = {}
        if access == "open" or private:
            rec["files"] = files  # capped on the way out: the cap is a run-time knob
        if not legacy:
            rec["folder_structure"] = (
                {str(f["id"]): "raw" for f in files[:3]} if len(files) > 10 else {}
            )
        rec["custom_fields"] = custom
        rec["authors"] = authors
        rec["figshare_url"] = figshare_url
        if not legacy:
            rec["download_disabled"] = False
        rec["description"] = description
        rec["funding"] = funding
        rec["funding_list"] = funding_list
        rec["version"] = v if a.public else 0
        rec["status"] = "public" if a.public else "draft"
        rec["size"] = size
        rec["created_date"] = iso(a.created)
        older = max(self._version_time(a, v), self._version_time(a, v + 1) - 3600)
        rec["modified_date"] = iso(a.modified if latest else older)
        rec["is_public"] = a.public
        rec["is_confidential"] = access == "confidential"
        rec["is_metadata_record"] = not files
        rec["confidential_reason"] = (
            "Contains sensitive personal data" if access == "confidential" else ""
        )
        rec["metadata_reason"] = "Data held in an external repository" if not files else ""
        rec["license"] = license_
        rec["tags"] = tags
        if not legacy:
            rec["keywords"] = list(tags)
        rec["categories"] = [self.categories[c] for c in a.cats]
        rec["references"] = [
            f"https://doi.org/10.{1000 + rng.randrange(9000)}/{rng.randrange(10**6)}"
            for _ in range(rng.choice([0, 0, 1, 2]))
        ]
        if not legacy:
            rec["related_materials"] = (
                [{"id": 10_000 + a.id % 10**6, "identifier": res[1], "title": res[0],
                  "relation": "IsSupplementTo", "identifier_type": "DOI", "is_linkout": True,
                  "link": f"https://doi.org/{res[1]}"}]
                if res else []
            )  # fmt: skip
        rec["has_linked_file"] = any(f["is_link_only"] for f in files)
        rec["citation"] = citation
        embargoed = access == "embargo"
        rec["is_embargoed"] = embargoed
        rec["embargo_date"] = (
            f"{2027 + (a.h >> 50) % 2}-{1 + (a.h >> 52) % 12:02d}-01T00:00:00Z"
            if embargoed
            else None
        )
        rec["embargo_type"] = "file" if embargoed else None
        rec["embargo_title"] = "File(s) under embargo" if embargoed else ""
        rec["embargo_reason"] = (
            "Awaiting publication of the associated article" if embargoed else ""
        )
        rec["embargo_options"] = []
        rec["id"] = a.id
        rec["title"] = title
        rec["doi"] = doi
        rec["handle"] = self._handle(a, v)
        rec["url"] = f"{API}/articles/{a.id}"
        rec["published_date"] = iso(self._version_time(a, v)) if a.public else None
        rec["thumb"] = light["thumb"]
        rec["defined_type"] = a.itype
        rec["defined_type_name"] = kind
        rec["group_id"] = self.groups[a.gidx].id if a.gidx != NONE else None
        rec["url_private_api"] = f"{API}/account/articles/{a.id}"
        rec["url_public_api"] = f"{API}/articles/{a.id}"
        rec["url_private_html"] = f"https://figshare.com/account/articles/{a.id}"
        rec["url_public_html"] = light["url_public_html"]
        rec["timeline"] = self._timeline(a, v)
        rec["resource_title"] = res[0] if res else None
        rec["resource_doi"] = res[1] if res else None
        if private:
            rec["account_id"] = self._account_of(a)
            rec["group_resource_id"] = self.groups[a.gidx].resource_id if a.gidx != NONE else None
            rec["curation_status"] = "approved" if a.public else "draft"
        return rec

    # ---- private items and accounts ------------------------------------------------------

    def _account_of(self, a: _Attrs) -> int:
        if not a.public:
            return self._private_owner[a.id]
        return self._owner.get(a.k, 2_000_000 + (a.h >> 33) % 500_000)

    def account_for_token(self, token: str, settings: SimSettings | None = None) -> Account | None:
        """The account a token belongs to (tokens come from the current settings)."""
        settings = settings or self.settings
        if token and token == settings.admin_token:
            return self.admin
        if token and token == settings.user_token:
            return self.user
        return None

    def account_article_ids(self, account: Account) -> list[int]:
        """The account's own items: public ones and drafts, by created_date descending."""
        mine = [(self._created[k], self._ids[k]) for k, o in self._owner.items()
                if o == account.id and k not in self._withdrawn]  # fmt: skip
        mine += [(a.created, a.id) for a in self._private.values()
                 if self._private_owner[a.id] == account.id]  # fmt: skip
        return [i for _, i in sorted(mine, reverse=True)]

    def _owned(self, account: Account, article_id: int) -> _Attrs | None:
        if article_id in self._private:
            a = self._private[article_id]
            return a if self._private_owner[article_id] == account.id else None
        k = self._index(article_id)
        if k >= 0 and self._owner.get(k) == account.id:
            return self._attrs(k)
        return None

    def private_article(
        self, account: Account, article_id: int, files_cap: int | None = None
    ) -> dict[str, Any]:
        """ArticleCompletePrivate of an item the account owns; KeyError otherwise."""
        a = self._owned(account, article_id)
        if a is None:
            raise KeyError(article_id)
        return self._cached(a, a.nver if a.public else 1, private=True, files_cap=files_cap)

    def private_files(self, account: Account, article_id: int) -> list[dict[str, Any]]:
        """PrivateFile list of an item the account owns; KeyError otherwise."""
        a = self._owned(account, article_id)
        if a is None:
            raise KeyError(article_id)
        return self._files(a, a.nver if a.public else 1, private=True)

    def private_light(self, article_id: int) -> dict[str, Any]:
        """Light presenter as account listings serve it (private url, null resource fields)."""
        if article_id in self._private:
            return self._light(self._private[article_id], private=True)
        return self._light(self._attrs(self._need(article_id)), private=True)

    def institution_items(self) -> list[tuple[int, int, int, int, int, int, bool]]:
        """The first institution's items incl. non-public ones, as
        (id, published or 0, modified, item_type, group id, created, public)."""
        out: list[tuple[int, int, int, int, int, int, bool]] = []
        if not self.institutions:
            return out
        for k in _positions(self._inst, 0):
            if k in self._withdrawn:
                continue
            g = self._gidx[k]
            out.append((self._ids[k], self._published[k], self._mod_over.get(k, self._modified[k]),
                        self._itype[k], self.groups[g].id if g != NONE else 0, self._created[k],
                        True))  # fmt: skip
        for a in self._private.values():
            out.append((a.id, 0, a.modified, a.itype, self.groups[a.gidx].id if a.gidx != NONE
                        else 0, a.created, False))  # fmt: skip
        return out

    def institution_light(self, article_id: int) -> dict[str, Any]:
        """Light presenter for the admin's institution listing (public or not)."""
        if article_id in self._private:
            return self._light(self._private[article_id], private=True)
        return self.light(article_id)

    def institution_article(self, article_id: int, files_cap: int | None = None) -> dict[str, Any]:
        """Full record of any item of the first institution, as the admin sees it."""
        if article_id in self._private:
            a = self._private[article_id]
            return self._cached(a, 1, private=True, files_cap=files_cap)
        k = self._need(article_id)
        a = self._attrs(k)
        if a.inst != 0:
            raise KeyError(article_id)
        return self._cached(a, a.nver, private=True, files_cap=files_cap)

    def institution_files(self, article_id: int) -> list[dict[str, Any]]:
        """PrivateFile list of any item of the first institution, as the admin sees it."""
        if article_id in self._private:
            return self._files(self._private[article_id], 1, private=True)
        a = self._attrs(self._need(article_id))
        if a.inst != 0:
            raise KeyError(article_id)
        return self._files(a, a.nver, private=True)

    # ---- reviews ----------------------------------------------------------------------------

    @property
    def reviews(self) -> list[dict[str, Any]]:
        """Curation records of the first institution (id ascending)."""
        if self._reviews is None:
            self._reviews = self._build_reviews()
        return self._reviews

    def _build_reviews(self) -> list[dict[str, Any]]:
        rng = random.Random(f"reviews:{self.seed}:{self.n}")
        if not self.institutions:
            return []
        pool = _positions(self._inst, 0)
        chosen = sorted(rng.sample(pool, min(len(pool), 60)))
        out = []
        rid = 900_000 + self.seed % 1000
        entries: list[tuple[_Attrs, str]] = [(self._attrs(k), "approved") for k in chosen]
        for j, a in enumerate(self._private.values()):
            if self._private_owner[a.id] != self.user.id or j % 2 == 0:
                entries.append((a, ("pending", "rejected", "closed", "pending")[j % 4]))
        for num, (a, status) in enumerate(entries):
            rid += 1 + rng.randrange(40)
            created = (a.published or a.modified) - rng.randrange(1, 10 * DAY)
            created = max(created, a.created)
            reviewed = status != "pending"
            out.append({
                "id": rid,
                "group_id": self.groups[a.gidx].id if a.gidx != NONE else 0,
                "account_id": self._account_of(a),
                "assigned_to": self.admin.id if reviewed or rng.random() < 0.5 else None,
                "article_id": a.id,
                "version": a.nver if a.public else 1,
                "comments_count": rng.randrange(4),
                "status": status,
                "created_date": iso(created),
                "modified_date": iso(max(created, a.published or a.modified)),
                "review_date": _naive(a.published or a.modified) if reviewed else None,
                "request_number": num + 1,
                "resolution_comment": "" if status in ("approved", "pending")
                else "Please add a README describing the files.",
            })  # fmt: skip
        return out

    def review_item(self, review: dict[str, Any], files_cap: int | None = None) -> dict[str, Any]:
        """The full record a review is about (as the admin sees it)."""
        return self.institution_article(review["article_id"], files_cap)

    # ---- collections and projects ---------------------------------------------------------

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

    @property
    def collection_ids(self) -> list[int]:
        return [c["id"] for c in self._collections]

    @property
    def project_ids(self) -> list[int]:
        return [p["id"] for p in self._projects]

    def collection_meta(self, cid: int) -> dict[str, Any]:
        """Internal facts of a collection (institution index, dates...); KeyError if none."""
        return self._coll_by_id[cid]

    def project_meta(self, pid: int) -> dict[str, Any]:
        return self._proj_by_id[pid]

    def collection_articles(self, cid: int) -> list[int]:
        """Public article ids of a collection, ascending."""
        return [self._ids[k] for k in self._coll_by_id[cid]["members"] if k not in self._withdrawn]

    def project_articles(self, pid: int) -> list[int]:
        return [self._ids[k] for k in self._proj_by_id[pid]["members"] if k not in self._withdrawn]

    def collection_light(self, cid: int) -> dict[str, Any]:
        c = self._coll_by_id[cid]
        return {
            "id": cid,
            "title": c["title"],
            "doi": f"10.6084/m9.figshare.c.{cid}.v1",
            "handle": "",
            "url": f"{API}/collections/{cid}",
            "timeline": {"posted": _naive(c["published"]), "firstOnline": _naive(c["published"])},
            "published_date": iso(c["published"]),
        }

    def collection(self, cid: int, version: int | None = None) -> dict[str, Any]:
        """CollectionComplete; KeyError for an unknown id or version (collections have one)."""
        c = self._coll_by_id[cid]
        if version not in (None, 1):
            raise KeyError((cid, version))
        rng = random.Random(cid * 31 + self.seed)
        inst = self.institutions[c["inst"]] if c["inst"] != NONE else None
        group = self.groups[c["gidx"]] if c["gidx"] != NONE else None
        authors = [self._author(f, la) for f, la in c["authors"]]
        out = self.collection_light(cid)
        out.update({
            "funding": [], "resource_id": "", "resource_doi": "", "resource_title": "",
            "resource_link": "", "resource_version": 0, "version": 1,
            "description": f"<p>A curated collection about {html.escape(c['title'])}.</p>",
            "categories": [self.categories[i] for i in c["cats"]],
            "references": [], "related_materials": [], "tags": c["tags"],
            "keywords": list(c["tags"]), "authors": authors,
            "institution_id": inst.id if inst else None,
            "group_id": group.id if group else None,
            "group_resource_id": group.resource_id if group else None,
            "articles_count": len(self.collection_articles(cid)), "public": True,
            "citation": f"{authors[0]['last_name']}, {authors[0]['first_name']} "
            f"({datetime.fromtimestamp(c['published'], UTC).year}). {c['title']}. figshare. "
            f"Collection. https://doi.org/10.6084/m9.figshare.c.{cid}.v1",
            "custom_fields": [], "created_date": iso(c["created"]),
            "modified_date": iso(c["modified"]),
        })  # fmt: skip
        if rng.random() < 0.3:
            out["funding"] = [{"id": 7_000 + cid % 1000, "title": "Infrastructure grant",
                               "grant_code": "", "funder_name": _FUNDERS[0][0],
                               "is_user_defined": 0, "url": ""}]  # fmt: skip
        return out

    def project_light(self, pid: int) -> dict[str, Any]:
        p = self._proj_by_id[pid]
        return {
            "url": f"{API}/projects/{pid}",
            "id": pid,
            "title": p["title"],
            "created_date": iso(p["created"]),
            "modified_date": iso(p["modified"]),
            "published_date": iso(p["published"]),
        }

    def project(self, pid: int) -> dict[str, Any]:
        """ProjectComplete; KeyError for an unknown id."""
        p = self._proj_by_id[pid]
        out = self.project_light(pid)
        out.update({
            "funding": "", "funding_list": [],
            "description": f"<p>{html.escape(p['title'])}: shared data and code. 🔬</p>",
            "collaborators": [
                {"role_name": "Owner" if i == 0 else "Collaborator",
                 "user_id": 1_000_000 + (f * 256 + la) * 17, "name": f"{FIRST_NAMES[f]} "
                 f"{LAST_NAMES[la]}"} for i, (f, la) in enumerate(p["collaborators"])],
            "custom_fields": [],
            "figshare_url": f"https://figshare.com/projects/{_slug(p['title'])}/{pid}",
        })  # fmt: skip
        return out

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
        h = _mix(self.seed * 7_919 + article_id * 16 + salt)
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
        return _positions({"inst": self._inst, "group": self._gidx, "itype": self._itype}[kind],
                          value)  # fmt: skip

    # ---- search primitives (used by the search_for evaluator); results are index sets --------

    def all_indices(self) -> set[int]:
        """Every public index (the universe for NOT)."""
        return set(range(self.n)) - self._withdrawn

    def _slots(self, bufs: Sequence[bytes], values: Iterable[int]) -> set[int]:
        out: set[int] = set()
        for v in values:
            for buf in bufs:
                out.update(_positions(buf, v))
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
                    out.update(k for k in _positions(lbuf, la) if fbuf[k] != NONE)
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
            hits = [i for i, t in enumerate(texts) if _contains(tokens(t), words)]
            return self._slots(self._tags if field == "tag" else self._cats, hits)
        if field == "author":
            found: set[int] = set()
            for fi, first in enumerate(FIRST_NAMES):
                for la, last in enumerate(LAST_NAMES):
                    if _contains(tokens(f"{first} {last}"), words):
                        found |= self._author_positions(fi, la)
            return found
        cands = self.match_token(field, words[0])
        for w in words[1:]:
            cands &= self.match_token(field, w)
        render = self._title_at if field == "title" else self._description_at
        return {k for k in cands if _contains(tokens(render(k)), words)}

    def _title_at(self, k: int) -> str:
        template, used = _TITLE_TEMPLATES[self._tmpl[k]]
        words = [TITLE_WORDS[s[k]] for s in self._tw[:used]]
        words[0] = words[0][:1].upper() + words[0][1:]
        return template.format(*words, "", "", "")

    def _description_at(self, k: int) -> str:
        w0, w1 = TITLE_WORDS[self._dw[0][k]], TITLE_WORDS[self._dw[1][k]]
        return _DESC_TEMPLATES[self._dtmpl[k]].format(w0[:1].upper() + w0[1:], w1)

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
            out.update(k for k in _positions(fbuf, f) if lbuf[k] == la)
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


def _contains(toks: Sequence[str], words: Sequence[str]) -> bool:
    n = len(words)
    return any(list(toks[i : i + n]) == list(words) for i in range(len(toks) - n + 1))


def _uuid(h: int) -> str:
    x = f"{h:016x}{_mix(h):016x}"
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-a{x[17:20]}-{x[20:32]}"
