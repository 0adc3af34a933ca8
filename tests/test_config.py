"""Config validation: typed values, rejected unknown keys, ${ENV} secrets, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester import config
from harvester.config import Secret
from harvester.errors import ConfigError

MINIMAL = """
name: test
sources:
  - kind: group
    group: 11962
"""


def parse(text: str, env: dict[str, str] | None = None, **kw: str) -> config.Config:
    return config.parse(text, "cfg.yaml", env or {}, **kw)


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cfg.yaml: ")
    return message


def test_minimal_config_gets_figshare_defaults() -> None:
    cfg = parse(MINIMAL)
    assert cfg.api.url == "https://api.figshare.com/v2"
    assert cfg.stats.url == "https://stats.figshare.com"
    assert cfg.http.rate == config.Rate(1, 1.0)
    assert cfg.http.per_host is False
    assert cfg.stats.counters == ("views", "downloads", "shares")
    assert cfg.output.formats == ("ndjson", "parquet")
    assert cfg.sources[0].kind == "group"
    assert cfg.sources[0].name == "group-1"
    assert cfg.sources[0].params == {"group": 11962}


def test_config_is_frozen() -> None:
    cfg = parse(MINIMAL)
    with pytest.raises(AttributeError):
        cfg.name = "other"  # type: ignore[misc]


def test_every_search_filter_is_typed() -> None:
    cfg = parse("""
name: s
sources:
  - kind: search
    search_for: ":title: frog"
    institution: "319"
    group: 11962
    item_type: 3
    published_since: 2020-01-01
    modified_since: "2021-02-03T04:05:06Z"
    order: published_date
    order_direction: desc
    project_id: 5
    doi: 10.6084/m9.figshare.1
""")
    p = cfg.sources[0].params
    assert p["institution"] == 319
    assert p["published_since"] == "2020-01-01"
    assert p["modified_since"] == "2021-02-03T04:05:06Z"
    assert p["doi"] == "10.6084/m9.figshare.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [", "malformed YAML (line"),
        ("- a\n- b\n", "top level: expected a mapping"),
        (MINIMAL + "colour: blue\n", "colour: unknown key; valid keys here: name,"),
        ("name: x\n", "sources: required"),
        ("name: x\nsources: []\n", "sources: expected a non-empty list"),
        ("name: x\nsources:\n  - kind: spaceship\n",
         "sources[0].kind: 'spaceship' is not a source kind"),
        ("name: x\nsources:\n  - kind: group\n", "sources[0].group: required for kind 'group'"),
        ("name: x\nsources:\n  - kind: group\n    group: abc\n",
         "sources[0].group: expected an integer"),
        ("name: x\nsources:\n  - kind: group\n    group: 1\n    colour: 2\n",
         "sources[0].colour: unknown key"),
        ("name: x\nsources:\n  - kind: search\n    published_since: yesterday\n",
         "sources[0].published_since: 'yesterday' is not a date"),
        ("name: x\nsources:\n  - kind: search\n    order: random\n", "sources[0].order: 'random'"),
        ("name: x\nsources:\n  - kind: ids\n    ids: []\n",
         "sources[0].ids: expected a non-empty list"),
        (MINIMAL + "http:\n  rate:\n    requests: -1\n", "http.rate.requests: must be at least 1"),
        (MINIMAL + "http:\n  rate:\n    per: 0\n", "http.rate.per: must be greater than 0"),
        (MINIMAL + "http:\n  rate:\n    per: .inf\n", "http.rate.per: must be a finite number"),
        (MINIMAL + "http:\n  timeout:\n    read: .nan\n",
         "http.timeout.read: must be a finite number"),
        (MINIMAL + "incremental:\n  overlap_hours: .nan\n",
         "incremental.overlap_hours: must be a finite number"),
        (MINIMAL + "http:\n  rate:\n    per: soon\n",
         "http.rate.per: expected a number, got the string 'soon'"),
        (MINIMAL + "api:\n  url: http://api figshare.com/v2\n",
         "api.url: 'http://api figshare.com/v2' has white space in it"),
        (MINIMAL + "stats:\n  url: 'http://stats.example.org:99999'\n",
         "stats.url: 'http://stats.example.org:99999' is not a valid URL: Port out of range"),
        (MINIMAL + "api:\n  url: 'http://:8080/v2'\n", "api.url: 'http://:8080/v2' names no host"),
        (MINIMAL + "http:\n  concurrency: lots\n", "http.concurrency: expected an integer"),
        (MINIMAL + "stats:\n  counters: [views, hugs]\n", "stats.counters: 'hugs' is not one of"),
        (MINIMAL + "output:\n  formats: [csv]\n", "output.formats: 'csv' is not one of"),
        (MINIMAL + "output:\n  workers: many\n", "output.workers: expected an integer"),
        (MINIMAL + "output:\n  workers: -1\n", "output.workers: must be at least 0"),
        (MINIMAL + "api:\n  url: ftp://x\n", "api.url: 'ftp://x' is not an http(s) URL"),
        (MINIMAL + "api:\n  token: abc123\n",
         "api.token: credentials must come from the environment"),
        (MINIMAL + "api:\n  token: ${NOPE}\n", "api.token: environment variable NOPE is not set"),
        ("name: ../etc\n" + MINIMAL.split("\n", 2)[2], "name: '../etc' must be letters"),
    ],
)
def test_bad_config_gets_a_one_line_error_naming_the_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_secrets_come_from_the_environment_and_never_show() -> None:
    cfg = parse(MINIMAL + "api:\n  token: ${FIGSHARE_TOKEN}\n", {"FIGSHARE_TOKEN": "s3cr3t"})
    assert cfg.api.token == "s3cr3t"
    assert isinstance(cfg.api.token, Secret)
    assert "s3cr3t" not in repr(cfg)
    assert "s3cr3t" not in str(config.public_view(cfg))


def test_numbers_may_come_from_the_environment() -> None:
    cfg = parse(MINIMAL + "http:\n  rate: {requests: '${N}', per: '${PER}'}\n"
                "  timeout: {read: '${READ}'}\n", {"N": "5", "PER": "2.5", "READ": " 30 "})
    assert (cfg.http.rate.requests, cfg.http.rate.per, cfg.http.timeout.read) == (5, 2.5, 30.0)
    assert "http.rate.per: must be a finite number" in error_of(
        MINIMAL + "http:\n  rate: {per: '${PER}'}\n", {"PER": "inf"})


def test_fingerprint_ignores_secrets_but_not_settings() -> None:
    a = parse(MINIMAL + "api:\n  token: ${T}\n", {"T": "one"})
    b = parse(MINIMAL + "api:\n  token: ${T}\n", {"T": "two"})
    c = parse(MINIMAL.replace("11962", "11963"))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    # how many processes write the snapshot is not part of it: a resume may change it
    d = parse(MINIMAL + "output:\n  workers: 3\n")
    assert d.output.workers == 3 and parse(MINIMAL).output.workers is None  # None: auto
    assert parse(MINIMAL + "output:\n  workers: auto\n").output.workers is None
    assert d.fingerprint() == parse(MINIMAL).fingerprint()


def test_urls_from_environment_then_flags() -> None:
    env = {"FIGSHARE_API_URL": "http://127.0.0.1:1/v2/", "FIGSHARE_STATS_URL": "http://127.0.0.1:2"}
    cfg = parse(MINIMAL, env)
    assert cfg.api.url == "http://127.0.0.1:1/v2"
    assert cfg.stats.url == "http://127.0.0.1:2"
    cfg = parse(MINIMAL, env, api_url="http://127.0.0.1:3/v2", output_dir="/tmp/x")
    assert cfg.api.url == "http://127.0.0.1:3/v2"
    assert cfg.output.dir == "/tmp/x"


def test_duplicate_source_names_rejected() -> None:
    text = "name: x\nsources:\n  - kind: group\n    group: 1\n    name: a\n" \
           "  - kind: group\n    group: 2\n    name: a\n"
    assert "sources[1].name: 'a' is used by another source" in error_of(text)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.yaml")


def test_shipped_configs_validate() -> None:
    root = Path(__file__).resolve().parent.parent / "configs"
    shipped = sorted(root.glob("*.yaml"))
    assert len(shipped) >= 6
    for path in shipped:
        config.load(path, env={"FIGSHARE_TOKEN": "t", "FIGSHARE_STATS_USER": "u",
                               "FIGSHARE_STATS_PASSWORD": "p"})
