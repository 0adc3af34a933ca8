"""One harvest: sources -> journal -> bounded concurrent fetches -> snapshot, resumable."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from harvester import __version__
from harvester.catalog import Catalog, RunLock
from harvester.client import Client, ClientSettings, RateLimit, RetryPolicy, origin_of
from harvester.config import INCREMENTAL_KINDS, Config, Source, public_view
from harvester.errors import HarvesterError, OutputError
from harvester.fetch import (
    ItemFetcher,
    incomplete_count,
    stamp,
    store_outcomes,
    unconfirm_gone,
    utc_now,
)
from harvester.journal import DONE, FAILED, GONE, PENDING, Journal, Outcome
from harvester.partition import Limits
from harvester.records import RowContext, side_rows
from harvester.render import CHUNK_BYTES, CHUNK_RECORDS, RenderSpec, parse_stamp, render
from harvester.sinks import SnapshotWriter
from harvester.sources import SourceReport, enumerate_source
from harvester.store import (
    MANIFEST,
    STAGING,
    is_remote,
    latest_snapshot,
    list_snapshots,
    open_store,
    parse_manifest,
    read_manifest,
)

log = logging.getLogger("harvester")

COMMIT_EVERY = 200  # outcomes per journal transaction at most
COMMIT_WITHIN = 0.05  # seconds an outcome may wait for others to share its transaction
PENDING_CHUNK = 1_000  # ids read from the journal at a time


@dataclass
class Progress:
    """Live counters the CLI renders; the pipeline only ever increments them."""

    phase: str = "starting"
    listed: int = 0  # ids seen while enumerating, duplicates included
    total: int = 0  # distinct ids to fetch in this run
    done: int = 0
    failed: int = 0
    gone: int = 0
    written: int = 0
    started: float = field(default_factory=time.monotonic)
    earlier: int = 0  # items finished by the runs this one resumes: not in its rate
    fetching_since: float | None = None  # when this run's fan-out began


class PublishGuarded(HarvesterError):
    """A full run fetched nothing, or far fewer records than the last complete snapshot:
    not published (LATEST unchanged), the journal kept for a rerun or --accept-drop."""


@dataclass
class RunResult:
    snapshot: Path | str | None  # a directory, or the s3:// URL of the published snapshot
    manifest: dict[str, Any]
    errors: int  # ids that failed (gone ones excluded)
    truncated: bool


def user_agent(cfg: Config) -> str:
    contact = f"; {cfg.contact}" if cfg.contact else ""
    return f"figshare-harvester/{__version__} (bulk metadata harvester{contact})"


def client_settings(cfg: Config) -> ClientSettings:
    """The transport's settings: rate, concurrency, retries, and each credential scoped to the
    operations that need it (NOTES §1, §9): the token to /account/, Basic to institution stats."""
    account = cfg.api.url.rstrip("/") + "/account/"
    credentials: dict[str, str] = {}
    hints = {account: "api.token"}
    if cfg.api.token:
        credentials[account] = f"token {cfg.api.token}"
    if cfg.stats.institution:  # totals and /count are public in either scope; the rest is not
        inst = f"{cfg.stats.url.rstrip('/')}/{cfg.stats.institution}/"
        private = [inst + op + "/" for op in ("timeline", "breakdown", "top")]
        hints.update(dict.fromkeys(private, "stats.user and stats.password"))
        if cfg.stats.user and cfg.stats.password:
            pair = base64.b64encode(f"{cfg.stats.user}:{cfg.stats.password}".encode()).decode()
            credentials.update(dict.fromkeys(private, f"Basic {pair}"))
    rate = RateLimit(cfg.http.rate.requests, cfg.http.rate.per)
    shared: tuple[str, ...] = (origin_of(cfg.api.url),)
    if not cfg.http.per_host:  # Figshare asks for one budget over the API and stats hosts
        shared += (origin_of(cfg.stats.url),)
    if cfg.files.download and cfg.files.share_rate:  # else the download host has its own budget
        shared += (origin_of(cfg.files.url),)
    return ClientSettings(
        user_agent=user_agent(cfg),
        concurrency=cfg.http.concurrency,
        default_rate=rate,
        shared_origins=shared if len(shared) > 1 else (),
        connect_timeout=cfg.http.timeout.connect,
        read_timeout=cfg.http.timeout.read,
        total_timeout=cfg.http.timeout.total,
        max_body=cfg.http.max_body,
        retry=RetryPolicy(
            attempts=cfg.http.retry.attempts,
            backoff_base=cfg.http.retry.backoff_base,
            backoff_max=cfg.http.retry.backoff_max,
        ),
        credentials=credentials,
        auth_hints=hints,
    )


class Harvest:
    """Runs one configured harvest end to end. `run()` is safe to repeat after a crash."""

    def __init__(
        self,
        cfg: Config,
        *,
        progress: Progress | None = None,
        client_factory: Callable[[ClientSettings], Client] = Client,
        full: bool = False,
        accept_drop: bool = False,
    ) -> None:
        self.cfg = cfg
        self.progress = progress or Progress()
        self.root = cfg.output.dir  # a directory or s3://bucket/prefix
        self.state_dir = cfg.state_path()
        self.catalog_path = self.state_dir / "catalog.sqlite"
        self.client_factory = client_factory
        self.force_full = full
        self.accept_drop = accept_drop  # publish even what the guard would hold back
        self.limits = Limits(page_size=cfg.http.page_size)  # shared by the run's sources
        self._client: Client | None = None
        self.reports: list[SourceReport] = []
        # set when the run is cancelled (SIGINT/SIGTERM) while the journal thread writes the
        # snapshot: the write gives up at its next chunk instead of finishing and publishing
        self._stop_write = threading.Event()

    async def run(self) -> RunResult:
        with RunLock(self.state_dir / "lock"):
            # a catalog that cannot be read stops the run before it fetches, not after it
            # published (every run ends by recording itself there)
            Catalog(self.catalog_path).close()
            journal, meta = await self._open_journal()
            try:
                async with self.client_factory(client_settings(self.cfg)) as client:
                    self._client = client
                    self.fetcher = ItemFetcher(self.cfg, client)
                    await self._enumerate(client, journal, meta)
                    await self._fan_out(client, journal)
                    await self.fetcher.after_fan_out(journal)  # group/collection/... stats
                    metrics = client.metrics()
                result = await self._publish(journal, meta, metrics)
            except BaseException:
                self._keep_requests(journal, meta)
                journal.close()  # kept: the next run with the same config resumes from here
                raise
            finally:
                self._remove_empty_staging()
            journal.discard()
            return result

    def _keep_requests(self, journal: Journal, meta: dict[str, str]) -> None:
        """A run that ends unpublished adds its requests to the journal's running total, so
        the run that publishes reports every request the snapshot cost."""
        if self._client is None:
            return
        with contextlib.suppress(Exception):  # never hide why the run ended
            total = _requests_total(meta, self._client.metrics())
            meta["requests_earlier"] = orjson.dumps(total).decode()
            journal.run(journal.set_meta, {"requests_earlier": meta["requests_earlier"]})

    def _remove_empty_staging(self) -> None:
        staging = self.state_dir / "staging" if is_remote(self.root) \
            else Path(self.root) / self.cfg.name / STAGING
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when empty: a killed run's leftovers stay for the next

    # -- phases ----------------------------------------------------------------------------

    async def _open_journal(self) -> tuple[Journal, dict[str, str]]:
        """The interrupted run's journal if the config is unchanged, else a fresh one."""
        path = self.state_dir / "journal.sqlite"
        journal = Journal(path)
        journal.open()
        meta = await journal.call(journal.get_meta)
        fingerprint = self.cfg.fingerprint()
        stale = ""
        if meta and meta.get("fingerprint") != fingerprint:
            stale = "the config changed since the interrupted run"
        elif meta and self.force_full and meta.get("kind") != "full":
            stale = "--full asked for while an incremental run was interrupted"
        if stale:
            log.warning("%s; starting over", stale)
            journal.discard()
            journal = Journal(path)
            journal.open()
            meta = {}
        if meta:
            meta["runs"] = str(int(meta.get("runs", "1")) + 1)
            retried = await journal.call(journal.retry_failed)
            log.info("resuming snapshot %s (run %s; %d failed ids get another try)",
                     meta["snapshot_id"], meta["runs"], retried)
        else:
            now = utc_now()
            kind, since = self._choose_kind(now)
            meta = {
                # unique even when two runs start within the same second
                "snapshot_id": open_store(self.root).new_snapshot_id(self.cfg.name, now),
                "started_at": stamp(now),
                "fingerprint": fingerprint,
                "runs": "1",
                "kind": kind,
                "since": orjson.dumps(since).decode(),
            }
        await journal.call(journal.set_meta, meta)
        return journal, meta

    def _choose_kind(self, now: dt.datetime) -> tuple[str, dict[str, str]]:
        """Full or incremental, and per list source the modified_since bound to ask with."""
        inc = self.cfg.incremental
        if inc is None or self.force_full:
            return "full", {}
        catalog = Catalog(self.catalog_path)
        try:
            last_full = catalog.last_run("full")
            marks = catalog.marks()
        finally:
            catalog.close()
        if last_full is None:
            log.info("no earlier full run: this one is full")
            return "full", {}
        age = now - parse_stamp(last_full["started_at"])
        if age > dt.timedelta(days=inc.full_every_days):
            log.info("last full run is %.1f days old (full_every_days: %g): this one is full",
                     age.total_seconds() / 86400, inc.full_every_days)
            return "full", {}
        since: dict[str, str] = {}
        overlap = dt.timedelta(hours=inc.overlap_hours)
        for source in self.cfg.sources:
            mark = marks.get(source.name)
            if source.kind in INCREMENTAL_KINDS and mark and mark[0] == _source_fp(source):
                since[source.name] = stamp(parse_stamp(mark[1]) - overlap)
        return "incremental", since

    def _narrowed(self, source: Source, meta: dict[str, str]) -> Source:
        """In an incremental run, a list source asks only for what changed since its mark."""
        bound = orjson.loads(meta.get("since", "{}")).get(source.name)
        if bound is None:
            return source
        own = source.params.get("modified_since")
        if own and own > bound:
            return source
        return replace(source, params={**source.params, "modified_since": bound})

    async def _enumerate(self, client: Client, journal: Journal, meta: dict[str, str]) -> None:
        self.progress.phase = "listing"
        for idx, configured in enumerate(self.cfg.sources):
            source = self._narrowed(configured, meta)
            done = await journal.call(journal.source_done, idx)
            report = SourceReport(source.name, source.kind)
            self.reports.append(report)
            if done is not None:
                report.restore(done)  # partitions, reconcile: the manifest keeps them
                self.progress.listed += report.listed
                continue
            await journal.call(journal.start_source, idx, source.name)
            async for batch in enumerate_source(client, self.cfg.api.url, source, report,
                                                self.limits):
                await journal.call(journal.add_ids, idx, batch)
                self.progress.listed += len(batch)
            if report.side:  # collections, projects, reviews: written with the snapshot
                await journal.call(journal.add_source_records, idx,
                                   [(s.kind, s.key, s.body) for s in report.side],
                                   stamp(utc_now()))
            info = report.as_dict()
            await journal.call(journal.finish_source, idx, info)
            log.info("source %s: %d ids listed in %d requests%s", source.name, report.listed,
                     report.requests, " (TRUNCATED)" if report.truncated else "")
        inc = self.cfg.incremental
        if meta.get("kind") == "incremental" and inc and inc.stats != "none" \
                and "stats_queued" not in meta:
            after = None
            if inc.stats == "recent":
                after = stamp(utc_now() - dt.timedelta(days=inc.recent_days))
            queued = await journal.call(journal.add_known_for_stats, self.catalog_path, after)
            meta["stats_queued"] = str(queued)
            await journal.call(journal.set_meta, meta)
            log.info("%d known items queued for a stats refresh (%s)", queued, inc.stats)

    async def _fan_out(self, client: Client, journal: Journal) -> None:
        counts = await journal.call(journal.counts)
        p = self.progress
        p.phase = "fetching"
        p.total = sum(counts.values())
        p.done, p.failed, p.gone = counts.get(DONE, 0), counts.get(FAILED, 0), counts.get(GONE, 0)
        p.earlier, p.fetching_since = p.done + p.failed + p.gone, time.monotonic()
        if counts.get(PENDING, 0) == 0:
            return
        workers = self.cfg.http.concurrency
        todo: asyncio.Queue[tuple[int, int, int] | None] = asyncio.Queue(maxsize=workers * 2)
        # small on purpose: what a kill can lose is what sits here uncommitted
        results: asyncio.Queue[Outcome | None] = asyncio.Queue(maxsize=workers * 2)
        committer = asyncio.create_task(self._commit(journal, results))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._produce(journal, todo, workers))
                for _ in range(workers):
                    tg.create_task(self._work(self.fetcher, todo, results))
        except BaseExceptionGroup as group:
            # surface the first meaningful error (an Abort, usually), not the group
            raise _first(group) from None
        finally:
            await asyncio.shield(results.put(None))
            await asyncio.shield(committer)

    async def _produce(self, journal: Journal, todo: asyncio.Queue[Any], workers: int) -> None:
        after = -1
        while True:
            chunk = await journal.call(journal.pending, after, PENDING_CHUNK)
            if not chunk:
                break
            for item in chunk:
                await todo.put(item)
            after = chunk[-1][0]
        for _ in range(workers):
            await todo.put(None)

    async def _work(self, fetcher: ItemFetcher, todo: asyncio.Queue[Any],
                    results: asyncio.Queue[Outcome | None]) -> None:
        while (item := await todo.get()) is not None:
            aid, sources, mode = item
            outcome = await fetcher.fetch(aid, sources, mode)
            p = self.progress
            if outcome.state == DONE:
                p.done += 1
            elif outcome.state == GONE:
                p.gone += 1
            else:
                p.failed += 1
            await results.put(outcome)

    async def _commit(self, journal: Journal, results: asyncio.Queue[Outcome | None]) -> None:
        """Store outcomes in small transactions: an outcome waits at most COMMIT_WITHIN for
        others to share its commit (a commit per outcome, a thread hop and a WAL write each,
        was a sixth of an unthrottled harvest's CPU), so a kill loses at most what is in flight
        and the last COMMIT_WITHIN seconds. Keeps draining after a failure so no worker blocks."""
        loop = asyncio.get_running_loop()
        batch: list[Outcome] = []
        failure: BaseException | None = None
        due: float | None = None  # when the oldest outcome in the batch must be stored
        while True:
            outcome: Outcome | None = None
            ended = False
            try:
                if results.empty():  # wait for one, but not past the batch's due time
                    async with asyncio.timeout_at(due):
                        outcome = await results.get()
                else:  # the busy case: no timer armed and cancelled per outcome
                    outcome = results.get_nowait()
            except TimeoutError:
                pass
            else:
                ended = outcome is None
            if outcome is not None:
                batch.append(outcome)
                due = due or loop.time() + COMMIT_WITHIN
            if batch and (ended or len(batch) >= COMMIT_EVERY or loop.time() >= (due or 0)):
                if failure is None:
                    try:
                        await journal.call(store_outcomes, journal, batch)
                    except Exception as exc:
                        failure = exc
                batch, due = [], None
            if ended:
                if failure is not None:
                    raise failure
                return

    async def _publish(self, journal: Journal, meta: dict[str, str],
                       metrics: dict[str, Any]) -> RunResult:
        self.progress.phase = "writing"
        kind = meta.get("kind", "full")
        counts = await journal.call(journal.counts)
        if counts.get(GONE) and not counts.get(DONE):
            # every id answered 404 (or failed): a wrong server, not a repository emptied
            await journal.call(unconfirm_gone, journal)
            counts = await journal.call(journal.counts)
        if kind == "full" and not self.accept_drop:
            refusal = await asyncio.to_thread(self._guard, counts)
            if refusal:
                raise PublishGuarded(refusal)
        per_source = await journal.call(journal.ids_per_source, len(self.cfg.sources))
        incomplete = await journal.call(incomplete_count, journal)
        failed, gone = counts.get(FAILED, 0) + incomplete, counts.get(GONE, 0)
        truncated = any(r.truncated for r in self.reports)
        since = orjson.loads(meta.get("since", "{}"))
        manifest: dict[str, Any] = {
            "name": self.cfg.name,
            "snapshot_id": meta["snapshot_id"],
            "status": "complete" if not failed and not truncated else "partial",
            "kind": kind,
            # what the snapshot covers: a full run lists everything its sources select; an
            # incremental one what changed since each source's bound, plus refreshed stats
            "covers": {
                "modified_since": since,
                "stats_refreshed": int(meta.get("stats_queued", 0)),
            },
            "started_at": meta["started_at"],
            "harvester_version": __version__,
            "config_sha256": meta["fingerprint"],
            "config": public_view(self.cfg),
            "runs": int(meta["runs"]),
            "sources": [
                {**r.as_dict(), "ids": per_source[i]} for i, r in enumerate(self.reports)
            ],
            "ids": {
                "total": sum(counts.values()),
                "fetched": counts.get(DONE, 0),
                "failed": counts.get(FAILED, 0),
                "gone": gone,
                "incomplete": incomplete,  # records kept while their stats/files/versions failed
            },
            "errors": failed,
            # this run's requests; requests_total adds the interrupted runs it resumed
            "http": {**metrics, "requests_total": _requests_total(meta, metrics)},
            "fetch": self.fetcher.report(),  # requests per item, downloads
        }
        writer = SnapshotWriter(
            self.root, self.cfg.name, snapshot_id=meta["snapshot_id"],
            formats=frozenset(self.cfg.output.formats),
            # object storage: stage on local disk beside the journal, then upload
            staging_dir=self.state_dir / "staging" if is_remote(self.root) else None,
        )
        if await journal.call(writer.is_published):
            # an earlier run was killed between publishing and forgetting its journal: the
            # snapshot is complete, only what follows publishing is left to do
            log.info("snapshot %s was published by the interrupted run; finishing it",
                     meta["snapshot_id"])
            path = writer.path
        else:
            try:
                path = await journal.call(self._write, journal, writer, manifest)
            except asyncio.CancelledError:
                self._stop_write.set()  # journal.close() then waits for the thread to give up
                raise
        published = read_manifest(path)
        await journal.call(journal.update_catalog, self.catalog_path, meta["snapshot_id"],
                           kind == "full")
        self._remember(meta, published, advance=not failed and not truncated)
        self._prune()
        return RunResult(path, published, failed, truncated)

    def _guard(self, counts: dict[int, int]) -> str:
        """Why this full run must not be published, or "" (a thread: reads manifests)."""
        fetched, listed = counts.get(DONE, 0), sum(counts.values())
        after = ("LATEST not moved; the journal is kept: run again to retry, or "
                 "'harvester run --accept-drop' to publish it")
        if listed and not fetched:
            return (f"publish guard: this full run fetched 0 records of the {listed:,} ids "
                    f"listed; {after}")
        last = _last_complete_full(self.root, self.cfg.name)
        if last is None:
            return ""
        sid, before = last
        ratio = self.cfg.guard.min_ratio
        if fetched < ratio * before:
            return (f"publish guard: this full run fetched {fetched:,} records, fewer than "
                    f"{ratio:g} x the {before:,} of snapshot {sid}, the last complete one; "
                    f"{after}")
        return ""

    def _remember(self, meta: dict[str, str], manifest: dict[str, Any], *, advance: bool) -> None:
        """Record the run; move the high-water marks only when nothing was lost, so a run
        with failed ids is asked again (from the old marks) next night."""
        catalog = Catalog(self.catalog_path)
        try:
            catalog.add_run(meta["snapshot_id"], manifest["kind"], manifest["status"],
                            meta["started_at"], manifest.get("finished_at", meta["started_at"]))
            if advance:
                catalog.set_marks({
                    s.name: (_source_fp(s), meta["started_at"])
                    for s in self.cfg.sources if s.kind in INCREMENTAL_KINDS
                })
        except sqlite3.OperationalError as exc:  # a full disk: the journal is kept
            raise OutputError(f"{self.catalog_path}: cannot record the run: {exc} (snapshot "
                              f"{meta['snapshot_id']} is published; the next run finishes "
                              "recording it)") from None
        finally:
            catalog.close()

    def _prune(self) -> None:
        """Keep the newest `output.keep` complete snapshots; never the one LATEST names."""
        keep = self.cfg.output.keep
        if not keep or is_remote(self.root):  # object stores: use a bucket lifecycle rule
            return
        snapshots = list_snapshots(self.root, self.cfg.name)
        latest = latest_snapshot(self.root, self.cfg.name)
        for old in snapshots[:-keep]:
            if latest is not None and old.resolve() == latest.resolve():
                continue
            log.info("retention: removing %s (output.keep: %d)", old.name, keep)
            # the manifest goes first: a half-removed folder must not look complete
            (old / "manifest.json").unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)

    def _check_stop(self) -> None:
        if self._stop_write.is_set():
            raise _WriteStopped("interrupted while writing the snapshot")

    def _write(self, journal: Journal, writer: SnapshotWriter,
               manifest: dict[str, Any]) -> Path | str:
        """Runs on the journal thread: records in id order -> the snapshot's files."""
        snapshot_id = manifest["snapshot_id"]
        spec = RenderSpec(
            snapshot_id=snapshot_id,
            sources=tuple(s.name for s in self.cfg.sources),
            scope=self.cfg.stats.institution or "public",
            ndjson="ndjson" in writer.formats,
            parquet="parquet" in writer.formats,
        )
        duplicate_keys = 0
        writer.open()
        try:
            # records in id order, a chunk of bounded size at a time
            for rows in journal.chunks(CHUNK_RECORDS, CHUNK_BYTES):
                self._check_stop()
                chunk = render(spec, rows)
                writer.add_rendered(chunk)
                self.progress.written += chunk.articles
                duplicate_keys += chunk.duplicate_keys
            for table, once in self.fetcher.run_rows(snapshot_id).items():
                writer.add_rows(table, once)  # group/collection/... series, fetched once each
            for source_record in journal.source_records():
                side_ctx = RowContext(snapshot_id=snapshot_id,
                                      fetched_at=parse_stamp(source_record.fetched_at))
                for table, shaped in side_rows(source_record.kind, source_record.body,
                                               side_ctx).items():
                    writer.add_rows(table, shaped)
            for error in journal.errors():
                writer.add_error(error)
            if duplicate_keys:  # kept as served in articles.ndjson and `raw`; columns: the last
                log.warning("%d records give a JSON key twice; the tables keep the last value",
                            duplicate_keys)
            manifest["served_json"] = {"records_with_duplicate_keys": duplicate_keys}
            manifest["finished_at"] = stamp(utc_now())
            self._check_stop()
            return writer.publish(manifest)
        except BaseException:
            writer.abort()
            raise


class _WriteStopped(Exception):
    """The run was interrupted while its snapshot was being written (nothing is published)."""


def _requests_total(meta: dict[str, str], metrics: dict[str, Any]) -> dict[str, int]:
    """Requests per host of the runs this journal saw before, plus this run's."""
    total: dict[str, int] = dict(orjson.loads(meta.get("requests_earlier", "{}")))
    for host, n in metrics.get("requests", {}).items():
        total[host] = total.get(host, 0) + n
    return dict(sorted(total.items()))


def _last_complete_full(root: Path | str, name: str) -> tuple[str, int] | None:
    """(snapshot id, records) of the newest complete full snapshot of `name`, if any."""
    store = open_store(root)
    if not store.exists(name):
        return None
    for folder in reversed(store.snapshots(name)):
        where = store.url(name, folder, MANIFEST)
        try:
            manifest = parse_manifest(store.read_bytes(name, folder, MANIFEST), where)
        except (HarvesterError, OSError):
            continue  # unreadable: not a snapshot to compare with
        if manifest.get("kind") == "full" and manifest.get("status") == "complete":
            fetched = manifest.get("ids", {}).get("fetched")
            if isinstance(fetched, int):
                return str(manifest.get("snapshot_id", folder)), fetched
    return None


def _source_fp(source: Source) -> str:
    """A source's identity for its high-water mark: change its parameters, lose its mark."""
    return hashlib.sha256(orjson.dumps(
        {"kind": source.kind, "params": public_view(source.params)}, option=orjson.OPT_SORT_KEYS
    )).hexdigest()[:16]


def _first(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
