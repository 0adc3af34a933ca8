"""The corpus' fixed vocabulary: calendar, item types, words, names, categories, licences, files."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache

API = "https://api.figshare.com/v2"

START = int(datetime(2012, 1, 1, tzinfo=UTC).timestamp())
HORIZON = int(datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC).timestamp())  # the corpus' "now"
MIGRATION = int(
    datetime(2016, 1, 19, 9, 9, 40, tzinfo=UTC).timestamp()
)  # bulk re-save of old items
LEGACY_BEFORE = int(datetime(2016, 1, 1, tzinfo=UTC).timestamp())
DAY = 86_400

ITEM_TYPES: dict[int, str] = {
    1: "figure", 2: "media", 3: "dataset", 5: "poster", 6: "journal contribution",
    7: "presentation", 8: "thesis", 9: "software", 11: "online resource", 12: "preprint",
    13: "book", 14: "conference contribution", 15: "chapter", 16: "peer review",
    17: "educational resource", 18: "report", 19: "standard", 20: "composition", 21: "funding",
    22: "physical object", 23: "data management plan", 24: "workflow", 25: "monograph",
    26: "performance", 27: "event", 28: "service", 29: "model",
}  # fmt: skip
TYPE_WEIGHTS = {3: 30, 1: 18, 6: 10, 2: 5, 9: 5, 5: 5, 7: 5, 8: 4, 12: 3, 11: 2, 14: 2, 18: 2}

KNOWN_INSTITUTIONS = [
    (319, "iastate", "Iowa State University", "iastate.edu", "10.25380"),
    (2, "lboro", "Loughborough University", "lboro.ac.uk", "10.17028"),
    (11, "monash", "Monash University", "monash.edu", "10.26180"),
    (33, "melbourne", "The University of Melbourne", "unimelb.edu.au", "10.26188"),
    (51, "sheffield", "The University of Sheffield", "sheffield.ac.uk", "10.15131"),
    (87, "kcl", "King's College London", "kcl.ac.uk", "10.18742"),
    (99, "uct", "University of Cape Town", "uct.ac.za", "10.25375"),
    (146, "auckland", "The University of Auckland", "auckland.ac.nz", "10.17608"),
]
GROUP_NAMES = [
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
TITLE_TEMPLATES = [
    ("{0} {1} in {2} {3}", 4),
    ("{0} of {1}: {2} and {3}", 4),
    ("Data for: {0} {1} {2}", 3),
    ("{0} {1} dataset", 2),
    ("Supplementary material for “{0} {1} {2}”", 3),
    ("<em>{0}</em> {1} {2} {3}", 4),
    ("{0} {1} {2} 🌊", 3),
    ("Figure: {0} {1}", 2),
]
DESC_TEMPLATES = [
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
CATEGORY_TREE = [
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
LICENSES = [
    {"value": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
    {"value": 2, "name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
    {"value": 3, "name": "MIT", "url": "https://opensource.org/licenses/MIT"},
    {"value": 4, "name": "GPL", "url": "https://www.gnu.org/copyleft/gpl.html"},
    {"value": 7, "name": "Apache 2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0.html"},
    {"value": 10, "name": "CC BY-NC 4.0", "url": "https://creativecommons.org/licenses/by-nc/4.0/"},
    {"value": 11, "name": "In Copyright", "url": "http://rightsstatements.org/vocab/InC/1.0/"},
]
FUNDERS = [
    ("National Science Foundation", "https://www.nsf.gov"),
    ("European Research Council", "https://erc.europa.eu"),
    ("Wellcome Trust", "https://wellcome.org"),
    ("Australian Research Council", "https://www.arc.gov.au"),
    ("Deutsche Forschungsgemeinschaft", "https://www.dfg.de"),
    ("National Natural Science Foundation of China", "https://www.nsfc.gov.cn"),
]
FILE_TYPES = [
    ("csv", "text/csv"),
    ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("zip", "application/zip"), ("pdf", "application/pdf"), ("png", "image/png"),
    ("tif", "image/tiff"), ("py", "text/x-python"), ("R", "text/plain"), ("txt", "text/plain"),
    ("h5", "application/x-hdf5"), ("nc", "application/x-netcdf"), ("mp4", "video/mp4"),
    ("json", "application/json"), ("docx", "application/vnd.openxmlformats-officedocument."
                                          "wordprocessingml.document"),
]  # fmt: skip
FILE_STEMS = [
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


def tokens(text: str) -> list[str]:
    """Lowercased word tokens of text with HTML tags and entities removed."""
    return re.findall(r"\w+", html.unescape(re.sub(r"<[^>]+>", " ", text)).lower())


def iso(ts: int) -> str:
    """Epoch seconds -> Figshare's 'YYYY-MM-DDTHH:MM:SSZ'."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_naive(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_date(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def slug(text: str) -> str:
    return re.sub(r"\W+", "_", re.sub(r"<[^>]+>", "", text)).strip("_") or "_"


def make_orcid(n: int) -> str:
    """A syntactically valid ORCID (ISO 7064 11,2 check digit) from a number."""
    digits = f"{n % 10**15:015d}"
    total = 0
    for d in digits:
        total = (total + int(d)) * 2
    check = (12 - total % 11) % 11
    s = digits + ("X" if check == 10 else str(check))
    return "-".join(s[i : i + 4] for i in range(0, 16, 4))


def token_map(texts: Sequence[str]) -> dict[str, list[int]]:
    """Token -> indices of the texts holding it."""
    out: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        for tok in set(tokens(text)):
            out.setdefault(tok, []).append(i)
    return out


def contains_phrase(toks: Sequence[str], words: Sequence[str]) -> bool:
    """True when `words` occur in `toks` in sequence."""
    n = len(words)
    return any(list(toks[i : i + n]) == list(words) for i in range(len(toks) - n + 1))
