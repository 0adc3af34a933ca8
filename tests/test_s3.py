"""Snapshots on object storage: published to a real S3 API on loopback (moto's server), read
back with pyarrow and DuckDB, loaded into the warehouse; an interrupted upload never looks
complete."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml
from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
from werkzeug.serving import make_server

from harvester import cli, config
from harvester.errors import ConfigError, OutputError
from harvester.records import RowContext, article_rows, stats_rows
from harvester.simulator import SimulatorThread
from harvester.simulator.settings import SimSettings
from harvester.sinks import SnapshotWriter
from harvester.store import open_store, read_manifest, s3_filesystem, table_files
from harvester.warehouse import load

NAME = "nightly"
S1, S2 = "20240501T020000Z", "20240502T020000Z"
ROOT_DIR = Path(__file__).parents[1]


def aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The standard AWS variables, pointed at the loopback server; nothing else is read."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


def new_bucket(endpoint: str) -> str:
    name = f"harvest-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a free loopback port; its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    aws_env(monkeypatch, endpoint)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    try:
        yield endpoint
    finally:
        server.stop()


class FaultyS3:
    """moto's S3 app (what ThreadedMotoServer serves) behind one fault: PUTs of manifest.json
    fail with 500, or hang until released and then fail, as when the uploader is killed."""

    def __init__(self) -> None:
        self.mode = ""  # "", "fail" or "hang"
        self.manifest_puts = 0
        self.arrived = threading.Event()
        self.release = threading.Event()
        app = DomainDispatcherApplication(create_backend_app)

        def faulty(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if (self.mode and environ["REQUEST_METHOD"] == "PUT"
                    and environ["PATH_INFO"].endswith("/manifest.json")):
                self.manifest_puts += 1
                self.arrived.set()
                if self.mode == "hang":
                    self.release.wait(30)
                start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
                return [b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"]
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, faulty, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyS3:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.thread.join()
        self.server.server_close()


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyS3]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with FaultyS3() as s3:
        aws_env(monkeypatch, s3.endpoint)
        yield s3


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    logger = logging.getLogger("harvester")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def record(aid: int, **changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": aid, "version": 1, "title": f"Item {aid}",
                           "authors": [{"id": aid * 10, "full_name": f"Author {aid}"}],
                           "tags": ["frogs"]}
    rec.update(changes)
    return rec


def publish(root: str | Path, sid: str, records: list[dict[str, Any]], staging: Path,
            **manifest: Any) -> Path | str:
    ctx = RowContext(sid, datetime.strptime(sid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC))
    with SnapshotWriter(root, NAME, snapshot_id=sid,
                        staging_dir=staging if str(root).startswith("s3://") else None) as w:
        for rec in records:
            w.add_article(rec, article_rows(rec, ctx))
            w.add_stats(stats_rows(rec["id"], {"views": rec["id"]}, ctx))
        return w.publish({"name": NAME, "kind": "full", "status": "complete", **manifest})


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for (t,) in con.execute("SELECT table_name FROM information_schema.tables "
                                "WHERE table_schema = 'main' ORDER BY 1").fetchall():
            skip = {"loaded_at", "source"} if t == "loaded_snapshots" else set()
            cols = [c for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position", [t]).fetchall() if c not in skip]
            names = ", ".join(f'"{c}"' for c in cols)
            out[t] = con.execute(f"SELECT {names} FROM {t} ORDER BY ALL").fetchall()
        return out
    finally:
        con.close()


# --- the round trip -----------------------------------------------------------------------


def test_publish_to_s3_read_back_with_pyarrow_and_duckdb_and_load(moto, tmp_path):
    bucket = new_bucket(moto)
    root = f"s3://{bucket}/harvests"
    staging = tmp_path / "state" / "staging"
    first = publish(root, S1, [record(1), record(2), record(3)], staging)
    second = publish(root, S2, [record(1), record(2, title="edited"), record(4)], staging)
    assert first == f"{root}/{NAME}/snapshot={S1}" and second == f"{root}/{NAME}/snapshot={S2}"
    assert list(staging.iterdir()) == []  # uploaded: nothing left locally

    # the layout, as any S3 client sees it: every file of the manifest, LATEST last
    listed = keys(moto, bucket, f"harvests/{NAME}/")
    manifest = read_manifest(second)
    assert manifest["snapshot_id"] == S2 and manifest["kind"] == "full"
    assert [k for k in listed if f"snapshot={S2}/" in k] == sorted(
        f"harvests/{NAME}/snapshot={S2}/{f}" for f in [*manifest["files"], "manifest.json"])
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    latest = s3.get_object(Bucket=bucket, Key=f"harvests/{NAME}/LATEST")["Body"].read()
    assert latest == f"snapshot={S2}\n".encode()

    store = open_store(root)
    assert store.snapshots(NAME) == [f"snapshot={S1}", f"snapshot={S2}"]
    assert store.latest(NAME) == f"snapshot={S2}"

    # pyarrow.dataset over s3, as the README shows: one dataset, the snapshot as a column
    fs = s3_filesystem()
    base = f"{bucket}/harvests/{NAME}"
    def parts(table: str) -> list[str]:  # the manifest's part files, as the README shows
        return [f"{base}/{s}/{f}" for s in store.snapshots(NAME)
                for f in table_files(read_manifest(store.url(NAME, s))["files"], table)]

    assert parts("articles") == [f"{base}/snapshot={s}/articles/part-00000.parquet"
                                 for s in (S1, S2)]
    dataset = ds.dataset(parts("articles"), filesystem=fs, format="parquet", partitioning="hive",
                         partition_base_dir=base)
    table = dataset.to_table(columns=["snapshot", "article_id", "title"])
    assert sorted(zip(*table.to_pydict().values(), strict=True)) == [
        (S1, 1, "Item 1"), (S1, 2, "Item 2"), (S1, 3, "Item 3"),
        (S2, 1, "Item 1"), (S2, 2, "edited"), (S2, 4, "Item 4")]
    assert table.schema.field("article_id").type == pa.int64()

    # DuckDB queries the Arrow dataset directly (no httpfs needed)
    authors = ds.dataset(parts("authors"), filesystem=fs, format="parquet", partitioning="hive",
                         partition_base_dir=base)
    con = duckdb.connect()
    con.register("authors", authors)
    assert con.execute("SELECT snapshot, count(*) FROM authors GROUP BY 1 ORDER BY 1"
                       ).fetchall() == [(S1, 3), (S2, 3)]

    # the warehouse loads straight from s3:// and agrees with a load of a local copy
    local = tmp_path / "local"
    publish(local, S1, [record(1), record(2), record(3)], staging)
    publish(local, S2, [record(1), record(2, title="edited"), record(4)], staging)
    from_s3, from_disk = tmp_path / "s3.duckdb", tmp_path / "disk.duckdb"
    assert cli.main(["load", f"{root}/{NAME}", "--duckdb", str(from_s3), "--quiet"]) == 0
    load(local, NAME, from_disk)
    assert dump(from_s3) == dump(from_disk)
    con = duckdb.connect(str(from_s3), read_only=True)
    assert con.execute("SELECT source FROM loaded_snapshots ORDER BY 1").fetchall() == [
        (f"{root}/{NAME}/snapshot={S1}",), (f"{root}/{NAME}/snapshot={S2}",)]
    assert con.execute("SELECT article_id, withdrawn FROM articles_current ORDER BY 1"
                       ).fetchall() == [(1, False), (2, False), (3, True), (4, False)]


def test_a_tampered_object_is_refused_by_the_loader(moto, tmp_path):
    bucket = new_bucket(moto)
    root = f"s3://{bucket}"
    publish(root, S1, [record(1)], tmp_path / "staging")
    boto3.client("s3", endpoint_url=moto, region_name="us-east-1").put_object(
        Bucket=bucket, Key=f"{NAME}/snapshot={S1}/tags/part-00000.parquet",
        Body=b"PAR1 not the same")
    with pytest.raises(OutputError, match=rf"s3://{bucket}/{NAME}/snapshot={S1}/tags/"
                                          r"part-00000\.parquet: sha256 .* does not match"):
        load(root, NAME, tmp_path / "wh.duckdb")


# --- interrupted uploads ------------------------------------------------------------------


def assert_nothing_complete(endpoint: str, bucket: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{bucket}")
    assert store.snapshots(NAME) == [] and store.latest(NAME) is None
    assert not [k for k in keys(endpoint, bucket) if k.endswith(("manifest.json", "LATEST"))]
    report = load(f"s3://{bucket}", NAME, tmp_path / "wh.duckdb")
    assert report.loaded == [] and report.current == 0


def test_a_failed_manifest_upload_leaves_no_complete_snapshot_and_a_retry_publishes(
        faulty, tmp_path):
    bucket = new_bucket(faulty.endpoint)
    root = f"s3://{bucket}"
    staging = tmp_path / "staging"
    faulty.mode = "fail"
    with pytest.raises(OutputError, match=rf"cannot upload s3://{bucket}/{NAME}/snapshot={S1}/"
                                          r"manifest\.json"):
        publish(root, S1, [record(1), record(2)], staging)
    assert faulty.manifest_puts >= 1
    data = keys(faulty.endpoint, bucket)
    assert f"{NAME}/snapshot={S1}/articles/part-00000.parquet" in data  # the data went up first...
    assert_nothing_complete(faulty.endpoint, bucket, tmp_path)  # ...but it is not a snapshot
    assert list(staging.iterdir()) == []  # the failed writer cleaned up after itself

    # the next run resumes the same snapshot id and publishes it whole (overwriting)
    faulty.mode = ""
    publish(root, S1, [record(1), record(2)], staging)
    store = open_store(root)
    assert store.snapshots(NAME) == [f"snapshot={S1}"] and store.latest(NAME) == f"snapshot={S1}"
    manifest = read_manifest(f"{root}/{NAME}/snapshot={S1}")
    assert keys(faulty.endpoint, bucket, f"{NAME}/snapshot={S1}/") == sorted(
        f"{NAME}/snapshot={S1}/{f}" for f in [*manifest["files"], "manifest.json"])
    assert [s.snapshot_id for s in load(root, NAME, tmp_path / "wh2.duckdb").loaded] == [S1]


UPLOADER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from harvester.records import RowContext, article_rows
from harvester.sinks import SnapshotWriter

root, staging = sys.argv[1], Path(sys.argv[2])
ctx = RowContext("{sid}", datetime(2024, 5, 1, tzinfo=UTC))
with SnapshotWriter(root, "{name}", snapshot_id="{sid}", staging_dir=staging) as w:
    for i in range(1, 50):
        rec = {{"id": i, "title": f"Item {{i}}"}}
        w.add_article(rec, article_rows(rec, ctx))
    w.publish({{"kind": "full", "status": "complete"}})
print("published")
"""


def test_an_uploader_killed_before_the_manifest_leaves_no_complete_snapshot(faulty, tmp_path):
    bucket = new_bucket(faulty.endpoint)
    faulty.mode = "hang"  # the manifest PUT arrives, then the process dies
    script = UPLOADER.format(sid=S1, name=NAME)
    proc = subprocess.Popen([sys.executable, "-c", script, f"s3://{bucket}",
                             str(tmp_path / "staging")], cwd=ROOT_DIR,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert faulty.arrived.wait(30), "the uploader never reached manifest.json"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        faulty.release.set()
    assert f"{NAME}/snapshot={S1}/articles/part-00000.parquet" in keys(faulty.endpoint, bucket)
    assert_nothing_complete(faulty.endpoint, bucket, tmp_path)


# --- configuration and the pipeline ---------------------------------------------------------


def test_config_accepts_s3_output_and_keeps_state_local(tmp_path):
    base = "name: n\nsources: [{kind: ids, ids: [1]}]\n"
    cfg = config.parse(base + "output: {dir: s3://my-bucket/harvests}\n", env={})
    assert cfg.output.dir == "s3://my-bucket/harvests"
    assert cfg.state_path() == Path(".harvester-state") / "n"
    cfg = config.parse(base + f"output: {{dir: s3://b-1/p, state_dir: {tmp_path}}}\n", env={})
    assert cfg.state_path() == tmp_path
    assert config.parse(base, env={}).state_path() == Path("output") / "n" / ".state"
    for bad, message in [
        ("output: {dir: 'gs://b/p'}", "only a local directory or an s3://bucket/prefix URL"),
        ("output: {dir: 's3://B_/p'}", "is not s3://bucket"),
        ("output: {dir: 's3://b-1/p', state_dir: 's3://b-1/state'}", "must be a local dir"),
        ("output: {dir: 's3://b-1/p', keep: 3}", "output.keep: not supported for s3://"),
    ]:
        with pytest.raises(ConfigError, match=message):
            config.parse(base + bad + "\n", env={})


def test_a_harvest_runs_to_s3_and_loads_its_warehouse(moto, tmp_path, monkeypatch):
    bucket = new_bucket(moto)
    monkeypatch.chdir(tmp_path)
    with SimulatorThread(SimSettings(items=40, seed=9)) as sim:
        ids = sorted(sim.corpus.ids)[:5]
        body = {
            "name": NAME,
            "sources": [{"kind": "ids", "ids": ids}],
            "api": {"url": sim.api_url},
            "stats": {"url": sim.stats_url},
            "http": {"rate": {"requests": 10_000, "per": 1}, "concurrency": 8,
                     "retry": {"attempts": 2, "backoff_base": 0.01, "backoff_max": 0.05}},
            "output": {"dir": f"s3://{bucket}/prefix"},
            "warehouse": {"duckdb": "wh.duckdb"},
        }
        (tmp_path / "h.yaml").write_text(yaml.safe_dump(body))
        assert cli.main(["run", "h.yaml", "--quiet"]) == 0
    snapshots = open_store(f"s3://{bucket}/prefix").snapshots(NAME)
    assert len(snapshots) == 1
    # the journal and lock stayed on local disk, in the documented default place
    assert (tmp_path / ".harvester-state" / NAME).is_dir()
    assert not [k for k in keys(moto, bucket) if "/.state/" in k or "/.staging/" in k]
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM articles_current").fetchone() == (5,)
    assert con.execute("SELECT count(*) FROM stats_history").fetchone() == (15,)
