"""Every user input is checked before the first request: one line, exit 2, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harvester import cli

ROOT = Path(__file__).resolve().parent.parent
HARVESTER = [sys.executable, "-m", "harvester"]
GROUP = "sources:\n  - kind: group\n    group: 1\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# (name, config text or None for no config, argv with CONFIG/TMP placeholders, expected text)
CASES: list[tuple[str, str | None, list[str], str]] = [
    ("impossible unquoted date", "name: t\nsources:\n  - kind: search\n"
     "    published_since: 2020-13-01\n", ["validate", "CONFIG"],
     "CONFIG: sources[0].published_since: '2020-13-01' is not a date on the calendar"),
    ("impossible quoted date", "name: t\nsources:\n  - kind: oai\n    from: '2020-02-30'\n",
     ["run", "CONFIG"], "CONFIG: sources[0].from: '2020-02-30' is not a date on the calendar"),
    ("not a date", "name: t\nsources:\n  - kind: search\n    modified_since: yesterday\n",
     ["plan", "CONFIG"], "CONFIG: sources[0].modified_since: 'yesterday' is not a date"),
    ("from after until",
     "name: t\nsources:\n  - {kind: oai, from: 2021-01-01, until: 2020-12-31}\n",
     ["validate", "CONFIG"], "CONFIG: sources[0].until: 2020-12-31 is before from 2021-01-01"),
    ("start after end", "name: t\n" + GROUP + "stats:\n  breakdown: {granularity: day, "
     "start: 2021-01-02, end: 2021-01-01}\n", ["validate", "CONFIG"],
     "CONFIG: stats.breakdown.end: 2021-01-01 is before start 2021-01-02"),
    ("since in the future", "name: t\nsources:\n  - {kind: search, published_since: 2999-01-01}\n",
     ["validate", "CONFIG"], "CONFIG: sources[0].published_since: 2999-01-01 is in the future"),
    ("id too large", "name: t\nsources:\n  - {kind: ids, ids: [99999999999999999999999]}\n",
     ["run", "CONFIG"], "CONFIG: sources[0].ids[0]: must be at most 9223372036854775807"),
    ("id zero", "name: t\nsources:\n  - {kind: ids, ids: [0]}\n", ["validate", "CONFIG"],
     "CONFIG: sources[0].ids[0]: must be at least 1, got 0"),
    ("ids_file id too large", "name: t\nsources:\n  - {kind: ids_file, path: ids.txt}\n",
     ["run", "CONFIG"], "TMP/ids.txt:2: '99999999999999999999999' is neither an article id"),
    ("ids_file id zero", "name: t\nsources:\n  - {kind: ids_file, path: zero.txt}\n",
     ["validate", "CONFIG"], "TMP/zero.txt:1: '0' is neither an article id"),
    ("ids_file garbage", "name: t\nsources:\n  - {kind: ids_file, path: garbage.txt}\n",
     ["validate", "CONFIG"],
     "TMP/garbage.txt:3: 'not an id' is neither an article id (1 to 9223372036854775807) "
     "nor a DOI"),
    ("duplicate key", "name: t\n" + GROUP + "name: u\n", ["validate", "CONFIG"],
     "CONFIG: malformed YAML (line 5, column 1): duplicate key 'name' (first on line 1)"),
    ("unclosed quote", 'name: "t\n' + GROUP + "http: {}\n", ["validate", "CONFIG"],
     "CONFIG: malformed YAML (line 1, column 7): this quoted string is never closed"),
    ("unknown key", "name: t\n" + GROUP + "outptu: {}\n", ["validate", "CONFIG"],
     "CONFIG: outptu: unknown key; valid keys here: name, sources,"),
    ("removed key", "name: t\n" + GROUP + "output: {workers: 2}\n", ["validate", "CONFIG"],
     "CONFIG: output.workers: unknown key; valid keys here: dir, formats, keep, state_dir"),
    ("config is a folder", None, ["validate", "TMP"], "TMP: cannot read config"),
    ("config not UTF-8", "name: \xff\n", ["validate", "CONFIG"], "CONFIG: cannot read config"),
    ("--api-url not a URL", "name: t\n" + GROUP, ["run", "CONFIG", "--api-url", "notaurl"],
     "--api-url: 'notaurl' is not an http(s) URL"),
    ("--stats-url not http", "name: t\n" + GROUP, ["plan", "CONFIG", "--stats-url", "ftp://x"],
     "--stats-url: 'ftp://x' is not an http(s) URL"),
    ("--output is a file", "name: t\n" + GROUP, ["run", "CONFIG", "--output", "CONFIG"],
     "--output CONFIG: is a file, not a folder"),
    ("--output under a file", "name: t\n" + GROUP, ["run", "CONFIG", "--output", "CONFIG/out"],
     "--output CONFIG/out: cannot write there"),
    ("--output in /proc", "name: t\n" + GROUP, ["run", "CONFIG", "--output", "/proc/harvest"],
     "--output /proc/harvest: cannot write there"),
    ("output.dir is a file", "name: t\n" + GROUP + "output: {dir: ids.txt}\n", ["run", "CONFIG"],
     "CONFIG: output.dir ids.txt: is a file, not a folder"),
    ("--output empty", "name: t\n" + GROUP, ["run", "CONFIG", "--output", ""],
     "argument --output: must not be empty"),
    ("--report in /proc", "name: t\n" + GROUP, ["run", "CONFIG", "--report", "/proc/r.json"],
     "--report /proc/r.json: its folder is not writable"),
    ("--report is a folder", "name: t\n" + GROUP, ["run", "CONFIG", "--report", "TMP"],
     "--report TMP: is a directory, not a file"),
    ("--report under a file", "name: t\n" + GROUP, ["run", "CONFIG", "--report", "CONFIG/r.json"],
     "--report CONFIG/r.json: a file stands where its folder would be"),
    ("--items not a number", None, ["simulate", "--items", "many"],
     "argument --items: invalid int value: 'many'"),
    ("demo --items 0", None, ["demo", "--items", "0", "--output", "TMP/demo"],
     "demo: --items: items must be within 1..1,000,000, got 0"),
    ("unknown flag", None, ["validate", "x.yaml", "--fast"], "unrecognized arguments: --fast"),
    ("load: not a harvest", None, ["load", "TMP/none", "--duckdb", "TMP/w.duckdb"],
     "load: TMP/none: no such harvest folder"),
    ("--duckdb in /proc", None, ["load", "TMP/h/t", "--duckdb", "/proc/w.duckdb"],
     "--duckdb /proc/w.duckdb: its folder is not writable"),
    ("--duckdb under a file", None, ["load", "TMP/h/t", "--duckdb", "TMP/ids.txt/w.duckdb"],
     "--duckdb TMP/ids.txt/w.duckdb: a file stands where its folder would be"),
    ("--duckdb is a folder", None, ["load", "TMP/h/t", "--duckdb", "TMP"],
     "--duckdb TMP: is a directory, not a file"),
    ("report: a file without warehouse:", None, ["report", "TMP/ids.txt"],
     "TMP/ids.txt: is a file, not a harvest folder (a DuckDB warehouse reads as "
     "warehouse:TMP/ids.txt)"),
    # each of these passed validate, then crashed once the whole harvest was fetched
    ("output.dir s3: with one slash", "name: t\n" + GROUP + "output: {dir: 's3:/x'}\n",
     ["run", "CONFIG"], "CONFIG: output.dir: 's3:/x' looks like a URL with one slash: did you "
     "mean s3://x (or ./s3:/x for a folder)?"),
    ("--output gs: with one slash", "name: t\n" + GROUP, ["run", "CONFIG", "--output", "gs:/b/x"],
     "--output: 'gs:/b/x' looks like a URL with one slash: did you mean gs://b/x"),
    ("--budget past a year", "name: t\n" + GROUP,
     ["run", "CONFIG", "--budget", "9999999999999999h"],
     "--budget: '9999999999999999h' is longer than 366 days"),
    ("incremental.budget past a year", "name: t\n" + GROUP + "incremental: {budget: 367d}\n",
     ["validate", "CONFIG"], "CONFIG: incremental.budget: '367d' is longer than 366 days"),
    # a device or a huge file is refused, never read whole
    ("config is a device", None, ["validate", "/dev/zero"],
     "/dev/zero: cannot read config file: not a regular file"),
    ("config too large", None, ["validate", "TMP/huge.yaml"],
     "TMP/huge.yaml: cannot read config file: larger than 1 MiB"),
    ("ids_file too large", "name: t\nsources:\n  - {kind: ids_file, path: huge.txt}\n",
     ["validate", "CONFIG"], "TMP/huge.txt: cannot read ids file: larger than 256 MiB"),
    # an empty --until was a run without a budget; an offset past a day, Python's own words
    ("--until empty", "name: t\n" + GROUP, ["run", "CONFIG", "--until", ""],
     "argument --until: must not be empty"),
    ("--budget empty", "name: t\n" + GROUP, ["plan", "CONFIG", "--budget", ""],
     "argument --budget: must not be empty"),
    ("--until offset past a day", "name: t\n" + GROUP, ["run", "CONFIG", "--until", "06:00+99:00"],
     "--until: '06:00+99:00': '+99:00' is not a UTC offset (-23:59 to +23:59)"),
    # a run there would be replaced or deleted with the folder it sits in
    ("--output inside a snapshot", "name: t\n" + GROUP,
     ["run", "CONFIG", "--output", "TMP/h/t/snapshot=20260101T000000Z"],
     "is inside a harvest's snapshot=20260101T000000Z folder, which runs replace or delete"),
    ("output.dir inside the state", "name: t\n" + GROUP + "output: {dir: h/t/.state}\n",
     ["run", "CONFIG"], "CONFIG: output.dir: 'h/t/.state' is inside a harvest's .state folder"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "ids.txt").write_text("12\n99999999999999999999999\n")
    (tmp_path / "zero.txt").write_text("0\n")
    (tmp_path / "garbage.txt").write_text("12\n10.6084/m9.figshare.1\nnot an id\n")
    (tmp_path / "h" / "t").mkdir(parents=True)  # a harvest folder, empty
    for name, size in (("huge.yaml", 2 << 20), ("huge.txt", 257 << 20)):  # sparse: no disk
        with open(tmp_path / name, "wb") as f:
            f.truncate(size)
    monkeypatch.chdir(tmp_path)
    for var in ("FIGSHARE_API_URL", "FIGSHARE_STATS_URL", "FIGSHARE_DOWNLOAD_URL"):
        monkeypatch.delenv(var, raising=False)
    # nothing may reach a server: the only one configured is a closed port
    monkeypatch.setenv("FIGSHARE_API_URL", f"http://127.0.0.1:{closed_port()}/v2")
    return tmp_path


@pytest.mark.parametrize(("config_text", "argv", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_exit_2(
    workdir: Path, capsys: pytest.CaptureFixture[str], config_text: str | None, argv: list[str],
    expected: str,
) -> None:
    path = workdir / "c.yaml"
    if config_text is not None:
        path.write_bytes(config_text.encode("latin-1"))

    def fill(text: str) -> str:
        return text.replace("CONFIG", str(path)).replace("TMP", str(workdir))

    assert cli.main([fill(a) for a in argv]) == cli.USAGE
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert fill(expected) in lines[0]
    assert "Traceback" not in err and "internal error" not in err
    assert out == ""
    assert not (workdir / "t").exists() and not (workdir / "output").exists()


def test_the_real_command_says_one_line_too(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nsources:\n  - kind: search\n    published_since: 2020-13-01\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIGSHARE_")}
    done = subprocess.run([*HARVESTER, "run", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert f"{path}: sources[0].published_since: '2020-13-01' is not a date" in done.stderr


def test_demo_with_an_output_that_is_a_file_stops_before_harvesting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "taken").write_text("")
    assert cli.main(["demo", "--items", "10", "--output", str(tmp_path / "taken")]) == cli.USAGE
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--output {tmp_path / 'taken'}: is a file, not a folder" in line


def test_a_bad_url_in_the_environment_is_blamed_on_the_variable(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    (workdir / "c.yaml").write_text("name: t\n" + GROUP)
    monkeypatch.setenv("FIGSHARE_API_URL", "api.figshare.com/v2")
    assert cli.main(["run", str(workdir / "c.yaml")]) == cli.USAGE
    line = capsys.readouterr().err.strip()
    assert line.endswith("ERROR FIGSHARE_API_URL: 'api.figshare.com/v2' is not an http(s) URL")
