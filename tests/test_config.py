"""Config validation: typed values, rejected unknown keys, ${ENV} secrets, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester import config, typedyaml
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
        (MINIMAL + "output:\n  workers: 2\n", "output.workers: unknown key"),  # removed
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
    # where snapshots are loaded afterwards is not part of it
    d = parse(MINIMAL + "warehouse:\n  duckdb: w.duckdb\n")
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


# ------------------------------------------------------------------ inputs checked before a run


def test_dates_quoted_or_not_are_read_by_their_key() -> None:
    cfg = parse("name: s\nsources:\n  - kind: oai\n    from: 2020-01-01\n"
                "    until: '2021-02-03T04:05:06+01:00'\n")
    assert cfg.sources[0].params == {"from": "2020-01-01", "until": "2021-02-03T03:05:06Z"}
    for date in ("2020-13-01", "'2020-02-30'", "2020-1-1", "20200101"):
        message = error_of(f"name: s\nsources:\n  - kind: search\n    published_since: {date}\n")
        assert "sources[0].published_since: " in message and "is not a date" in message


@pytest.mark.parametrize(("source", "expected"), [
    ("{kind: oai, from: 2021-01-01, until: 2020-12-31}", "sources[0].until: 2020-12-31 is before"),
    ("{kind: search, published_since: 2999-01-01}", "sources[0].published_since: 2999-01-01 is in"),
    ("{kind: search, modified_since: '2999-01-01T00:00:00Z'}", "sources[0].modified_since: 2999"),
    ("{kind: ids, ids: [0]}", "sources[0].ids[0]: must be at least 1, got 0"),
    ("{kind: ids, ids: [99999999999999999999999]}", "sources[0].ids[0]: must be at most 922337"),
    ("{kind: group, group: 99999999999999999999999}", "sources[0].group: must be at most"),
])
def test_date_pairs_and_ids_are_checked(source: str, expected: str) -> None:
    assert expected in error_of(f"name: t\nsources:\n  - {source}\n")


def test_the_largest_id_is_accepted() -> None:
    cfg = parse(f"name: t\nsources:\n  - {{kind: ids, ids: [{2**63 - 1}]}}\n")
    assert cfg.sources[0].params["ids"] == (2**63 - 1,)


def test_series_dates_are_ordered() -> None:
    text = MINIMAL + "stats:\n  timeline: {granularity: day, start: 2021-01-02, end: 2021-01-01}\n"
    assert "stats.timeline.end: 2021-01-01 is before start 2021-01-02" in error_of(text)


def test_duplicate_keys_are_refused_naming_the_key_and_its_lines() -> None:
    message = error_of(MINIMAL + "http:\n  concurrency: 2\n  concurrency: 3\n")
    assert "(line 8, column 3): duplicate key 'concurrency' (first on line 7)" in message


def test_a_yaml_error_points_at_its_cause() -> None:
    message = error_of('name: "unclosed\nsources:\n  - kind: group\n    group: 1\nhttp: {}\n')
    assert "malformed YAML (line 1, column 7): this quoted string is never closed" in message
    message = error_of("name: x\nsources: [{kind: group, group: 1}\nhttp: {}\n")
    assert "(line 2, column 10): in the flow sequence that starts here" in message


def test_a_bad_url_is_blamed_on_the_flag_or_variable_that_gave_it() -> None:
    with pytest.raises(ConfigError, match=r"^--api-url: 'notaurl' is not an http\(s\) URL$"):
        parse(MINIMAL, api_url="notaurl")
    with pytest.raises(ConfigError, match=r"^FIGSHARE_STATS_URL: 'x' is not an http\(s\) URL$"):
        parse(MINIMAL, {"FIGSHARE_STATS_URL": "x"})
    with pytest.raises(ConfigError, match=r"^--output: 'gs://b': only a local directory"):
        parse(MINIMAL, output_dir="gs://b")


@pytest.mark.parametrize(("text", "expected"), [
    ("http:\n  page_size: 0\n", "http.page_size: must be at least 1"),
    ("http:\n  page_size: 1001\n", "http.page_size: must be at most 1000"),
    ("http:\n  max_body: 10\n", "http.max_body: must be at least 1024"),
    ("guard:\n  min_ratio: 1.5\n", "guard.min_ratio: must be at most 1"),
    ("guard:\n  min_ratio: -0.1\n", "guard.min_ratio: must be at least 0"),
])
def test_recent_keys_keep_their_ranges(text: str, expected: str) -> None:
    assert expected in error_of(MINIMAL + text)
    defaults = parse(MINIMAL)
    assert (defaults.http.page_size, defaults.http.max_body, defaults.guard.min_ratio) == \
        (1000, 64 * 2**20, 0.5)


def test_ids_file_is_read_at_validation_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: t\nsources:\n  - {kind: ids_file, path: ids.txt}\n")
    ids = tmp_path / "ids.txt"
    ids.write_text("# ours\n5616445\n10.6084/m9.figshare.1  # a DOI\n\n")
    assert config.load(tmp_path / "c.yaml", env={}).sources[0].params["path"] == str(ids)
    for line, problem in (("0", "'0' is neither an article id"),
                          ("99999999999999999999999", "is neither an article id (1 to 9223"),
                          ("five", "'five' is neither an article id")):
        ids.write_text(f"12\n{line}\n")
        with pytest.raises(ConfigError) as info:
            config.load(tmp_path / "c.yaml", env={})
        assert str(info.value).startswith(f"{ids}:2: ") and problem in str(info.value)


def test_docs_config_md_is_the_reference_the_fields_render() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md").read_text()
    assert config.reference() in doc, (
        "docs/CONFIG.md is out of date: paste the output of "
        "`python -c 'from harvester import config; print(config.reference())'`")
    for key, _, _ in typedyaml.keys(config.Config):
        assert f"| `{key}` |" in doc
