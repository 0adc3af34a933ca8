"""One harvest: sources -> journal -> bounded concurrent fetches -> snapshot, resumable."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from harvester import __version__
from harvester import budget as bud
from harvester.catalog import Catalog, last_complete_full, run_lock
from harvester.client import Client, ClientSettings, large_body_turn
from harvester.config import INCREMENTAL_KINDS, Config, parse_duration, public_view
from harvester.errors import BudgetSpent, HarvesterError, OutputError
from harvester.fetch import ItemFetcher
from harvester.journal import DONE, FAILED, FULL, GONE, PENDING, Counts, Journal, Outcomes
from harvester.journalrows import chunks
from harvester.partition import Limits
from harvester.periods import parse_stamp, stamp, utc_now
from harvester.policy import RateLimit, RetryPolicy
from harvester.records import RowContext, side_rows
from harvester.render import CHUNK_BYTES, CHUNK_RECORDS, RenderSpec, render, series_rows
from harvester.sinks import SnapshotWriter, clean_staging
from harvester.sources import SourceReport, enumerate_source
from harvester.store import (
    STAGING,
    is_remote,
    latest_snapshot,
    list_snapshots,
    open_store,
    read_manifest,
)
from harvester.urls import origin_of

log = logging.getLogger("harvester")

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
    manifest: dict[str, Any]  # unpublished: what a budgeted full run has in so far
    errors: int  # ids that failed (gone ones excluded)
    truncated: bool
    published: bool = True  # False: a budgeted full run resumes next time (LATEST unchanged)


def client_settings(cfg: Config) -> ClientSettings:
    """The transport's settings, each credential scoped to the operations that need it
    (NOTES §1, §9): the token to /account/, Basic to institution stats."""
    api = cfg.api.url
    tokened = (api + "/account/", api + "/item_types")  # item_types: security OAuth2 in the spec
    hints = dict.fromkeys(tokened, "api.token")
    credentials = dict.fromkeys(tokened, f"token {cfg.api.token}") if cfg.api.token else {}
    if cfg.stats.institution:  # totals and /count are public in either scope; the rest is not
        inst = f"{cfg.stats.url}/{cfg.stats.institution}/"
        private = [inst + op + "/" for op in ("timeline", "breakdown", "top")]
        hints.update(dict.fromkeys(private, "stats.user and stats.password"))
        if cfg.stats.user and cfg.stats.password:
            pair = base64.b64encode(f"{cfg.stats.user}:{cfg.stats.password}".encode()).decode()
            credentials.update(dict.fromkeys(private, f"Basic {pair}"))
    shared: tuple[str, ...] = (origin_of(cfg.api.url),)
    if not cfg.http.per_host:  # Figshare asks for one budget over the API and stats hosts
        shared += (origin_of(cfg.stats.url),)
    if cfg.files.download and cfg.files.share_rate:  # else the download host has its own budget
        shared += (origin_of(cfg.files.url),)
    contact = f"; {cfg.contact}" if cfg.contact else ""
    return ClientSettings(
        user_agent=f"figshare-harvester/{__version__} (bulk metadata harvester{contact})",
        concurrency=cfg.http.concurrency,
        default_rate=RateLimit(cfg.http.rate.requests, cfg.http.rate.per),
        shared_origins=shared if len(shared) > 1 else (),
        connect_timeout=cfg.http.timeout.connect,
        read_timeout=cfg.http.timeout.read,
        total_timeout=cfg.http.timeout.total,
        max_body=cfg.http.max_body,
        retry=RetryPolicy(**dataclasses.asdict(cfg.http.retry)),
        credentials=credentials,
        auth_hints=hints,
    )


class Harvest:
    """Runs one configured harvest end to end. `run()` is safe to repeat after a crash."""

    def __init__(self, cfg: Config, *, progress: Progress | None = None,
                 client_factory: Callable[[ClientSettings], Client] = Client, full: bool = False,
                 accept_drop: bool = False, budget: bud.Budget | None = None) -> None:
        self.cfg = cfg
        self.progress = progress or Progress()
        self.root = cfg.output.dir  # a directory or s3://bucket/prefix
        self.state_dir = cfg.state_path()
        self.catalog_path = self.state_dir / "catalog.sqlite"
        self.client_factory = client_factory
        self.force_full = full
        self.accept_drop = accept_drop  # publish even what the guard would hold back
        self.limits = Limits(page_size=cfg.http.page_size)  # shared by the run's sources
        inc = cfg.incremental
        if budget is None and inc is not None and inc.budget:
            budget = bud.Budget(seconds=parse_duration(inc.budget), said=inc.budget)
        self.budget = budget
        self.costs = bud.Costs.of(cfg)
        self.rate = RateLimit(cfg.http.rate.requests, cfg.http.rate.per)
        self.spend = bud.Spend(None, None, lambda: 0)
        self.schedule: bud.Schedule | None = None
        self._writing = 0  # records the snapshot will hold: writing them takes time too
        self._client: Client | None = None
        self.reports: list[SourceReport] = []
        # a cancelled run (SIGINT/SIGTERM) tells the journal thread writing the snapshot to
        # give up at its next chunk instead of publishing
        self._stop_write = threading.Event()
        # object storage: stage on local disk beside the journal, then upload
        self._staging = self.state_dir / "staging" if is_remote(self.root) else None

    async def run(self) -> RunResult:
        with run_lock(self.state_dir / "lock"):
            # unreadable, it stops the run before it fetches, not after it published
            with contextlib.closing(Catalog(self.catalog_path)) as catalog:
                catalog.adopt_sources([bud.source_fp(s) for s in self.cfg.sources])
            started = time.monotonic()
            journal, meta = await self._open_journal()
            full = meta["kind"] == "full"
            result = None
            try:
                async with self.client_factory(client_settings(self.cfg)) as client:
                    self._client = client
                    self.fetcher = ItemFetcher(self.cfg, client,
                                               catalog=None if full else self.catalog_path)
                    await self._enumerate(client, journal, meta)
                    self.fetcher.note_listing(self.reports)  # what a 304 must not contradict
                    self.schedule = await self._schedule(journal, full)
                    await self._fan_out(client, journal, started)
                    counts = await journal.call(journal.counts)
                    if counts.get(PENDING) and full:
                        return self._unfinished(meta, counts)
                    await self.fetcher.after_fan_out(journal)  # group/collection/... stats
                    metrics = client.metrics()
                result = await self._publish(journal, meta, metrics)
                return result
            finally:
                if result is None:  # kept: the next run with the same config resumes from here
                    self._keep_requests(journal, meta)
                    journal.close()
                else:
                    journal.discard()
                self._clean_staging()

    def _unfinished(self, meta: dict[str, str], counts: Counts) -> RunResult:
        """A budgeted full run publishes only once every record is in: the next run resumes."""
        ids = {"total": sum(counts.values()), "fetched": counts.get(DONE, 0),
               "failed": counts.get(FAILED, 0), "pending": counts.get(PENDING, 0)}
        log.warning("budget spent: %(fetched)d of %(total)d records fetched, %(failed)d failed "
                    "(asked again), %(pending)d pending; not published (LATEST unchanged), the "
                    "next run resumes", ids)
        manifest = {"name": self.cfg.name, "snapshot_id": meta["snapshot_id"], "kind": "full",
                    "status": "unpublished", "runs": int(meta["runs"]), "ids": ids,
                    "budget": self.spend.view(self.budget, self.schedule, {})}
        return RunResult(None, manifest, counts.get(FAILED, 0), False, published=False)

    def _keep_requests(self, journal: Journal, meta: dict[str, str]) -> None:
        """An unpublished run's requests join the journal's total: the publishing run reports
        every request the snapshot cost."""
        if self._client is None:
            return
        with contextlib.suppress(Exception):  # never hide why the run ended
            total = bud.requests_total(meta, self._client.metrics())
            meta["requests_earlier"] = orjson.dumps(total).decode()
            journal.run(journal.set_meta, {"requests_earlier": meta["requests_earlier"]})

    def _clean_staging(self) -> None:
        """Killed runs' half-written snapshots go: the journal is what resumes."""
        staging = self._staging or Path(self.root) / self.cfg.name / STAGING
        with contextlib.suppress(OSError):
            for left in (p for p in clean_staging(staging) if p.suffix != ".lock"):
                log.info("removed %s, left by a killed run", left)
            staging.rmdir()  # if empty

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
            try:
                journal.check_meta(meta)
            except OutputError:
                journal.close()
                raise
            meta["runs"] = str(int(meta["runs"]) + 1)
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
        if self.cfg.incremental is None or self.force_full:
            return "full", {}
        with contextlib.closing(Catalog(self.catalog_path)) as catalog:
            last_full, marks = catalog.last_run("full"), catalog.marks()
        kind, since, why = bud.choose_kind(self.cfg.incremental, self.cfg.sources, now,
                                       last_full["started_at"] if last_full else None, marks)
        if why:
            log.info("%s", why)
        return kind, since

    async def _enumerate(self, client: Client, journal: Journal, meta: dict[str, str]) -> None:
        self.progress.phase = "listing"
        for idx, configured in enumerate(self.cfg.sources):
            source = bud.narrowed(configured, orjson.loads(meta["since"]))
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
            await journal.call(journal.finish_source, idx, report.as_dict())
            log.info("source %s: %d ids listed in %d requests%s", source.name, report.listed,
                     report.requests, " (TRUNCATED)" if report.truncated else "")
        if meta["kind"] == "full" and "unlisted_queued" not in meta:
            # a known item no listing showed is asked for by id: only the record endpoint may
            # say it is gone, not a page that shifted while items were deleted or edited
            last = await asyncio.to_thread(last_complete_full, self.root, self.cfg.name)
            same = last is not None and last.get("config", {}).get("sources") == \
                public_view(self.cfg.sources)
            queued = await journal.call(journal.add_unlisted, self.catalog_path) if same else 0
            if queued:
                log.warning("%d items of the last full snapshot were not listed: each is asked "
                            "for by id, so none is taken for deleted without a 404", queued)
            meta["unlisted_queued"] = str(queued)
            await journal.call(journal.set_meta, meta)
        inc = self.cfg.incremental
        if meta["kind"] == "incremental" and inc and "stats_queued" not in meta:
            # last night's deferred records first, then its failures, then stalest stats
            left = await journal.call(journal.add_queued, self.catalog_path)
            after = stamp(utc_now() - dt.timedelta(days=inc.recent_days)) \
                if inc.stats == "recent" else None
            queued = 0 if inc.stats == "none" else await journal.call(
                journal.add_known_for_stats, self.catalog_path, after)
            log.info("queued from the last run: %s; %d known items for a stats refresh (%s)",
                     left or "nothing", queued, inc.stats)
            meta["stats_queued"] = str(queued)
            await journal.call(journal.set_meta, meta)

    async def preview(self) -> bud.Schedule:
        """`plan`: tonight's listing, into a scratch journal, and what the budget holds of it."""
        with tempfile.TemporaryDirectory(prefix="harvester-plan-") as tmp:
            journal = Journal(Path(tmp) / "plan.sqlite")
            journal.open()
            try:
                kind, since = self._choose_kind(utc_now())
                meta = {"kind": kind, "since": orjson.dumps(since).decode()}
                async with self.client_factory(client_settings(self.cfg)) as client:
                    await self._enumerate(client, journal, meta)
                return await self._schedule(journal, kind == "full")
            finally:
                journal.close()

    async def _schedule(self, journal: Journal, full: bool) -> bud.Schedule:
        """What tonight's budget holds of the work in the journal (as `plan` shows it)."""
        records, stats, known, self._writing = await journal.call(journal.workload,
                                                                  self.catalog_path)
        work = bud.Workload(sum(r.requests for r in self.reports), records, stats, known,
                            self.costs, full)
        allowance = self.budget.allowance(self.rate, self._writing) if self.budget else None
        plan = bud.schedule(work, allowance, self.rate)
        log.info("tonight: %s", plan)
        return plan

    async def _fan_out(self, client: Client, journal: Journal, started: float) -> None:
        """Pending items fetched until done or the budget is spent; a budget spent with no
        record fetched, items failed or cut short, is no night to publish (PublishGuarded)."""
        self.spend = bud.Spend.of(self.budget, self.rate, self._writing, started,
                                  lambda: sum(client.metrics()["requests"].values()))
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
        results = Outcomes(workers * 2)  # small: a kill loses what sits here uncommitted
        committer = asyncio.create_task(journal.store_from(results))
        client.deadline = self.spend.stop_at  # no wait or retry ends past the budget's stop
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._produce(journal, todo, workers))
                for _ in range(workers):
                    tg.create_task(self._work(todo, results))
        except BaseExceptionGroup as group:  # the first error (an Abort, usually), not the group
            raise group.exceptions[0] from None
        finally:
            client.deadline = None
            await asyncio.shield(results.put(None))
            await asyncio.shield(committer)
        counts = await journal.call(journal.counts)
        if counts.get(PENDING) and not counts.get(DONE) and (counts.get(FAILED) or self.spend.cut):
            why = await journal.call(journal.failure_summary) or f"cut short: {self.spend.cut}"
            raise PublishGuarded(f"the budget ran out with no record fetched ({why}); "
                                 f"{counts[PENDING]:,} pending: not published (LATEST not moved), "
                                 "the journal is kept and the next run resumes")

    async def _produce(self, journal: Journal, todo: asyncio.Queue[Any], workers: int) -> None:
        """Pending ids in spending order (journal.Priority), until the budget is spent."""
        after: tuple[int, str, int] = (-1, "", -1)
        while not self.spend.spent:  # once spent, the workers skip what is queued (in order)
            chunk = await journal.call(journal.pending, after, PENDING_CHUNK)
            if not chunk:
                break
            for item in chunk:
                await todo.put(item)
            after = chunk[-1].key
        for _ in range(workers):
            await todo.put(None)

    async def _work(self, todo: asyncio.Queue[Any], results: Outcomes) -> None:
        while (item := await todo.get()) is not None:
            await results.room()
            cost = self.costs.record if item.mode == FULL else self.costs.stats
            if not self.spend.admit(cost):
                continue  # spent: the rest stays pending (deferred), in order
            async with results.item(item.article_id) as turn:
                token = large_body_turn.set(turn)
                try:
                    with self.spend.fetching(cost):
                        outcome = await self.fetcher.fetch(item.article_id, item.sources,
                                                           item.mode)
                except BudgetSpent:
                    continue  # a wait would end past the stop: pending, asked first next run
                finally:
                    large_body_turn.reset(token)
                p = self.progress
                if outcome.state == DONE:
                    p.done += 1
                elif outcome.state == GONE:
                    p.gone += 1
                else:
                    p.failed += 1
                await results.put(outcome)
                del outcome  # its body may be near http.max_body: not held until the next item

    async def _publish(self, journal: Journal, meta: dict[str, str],
                       metrics: dict[str, Any]) -> RunResult:
        self.progress.phase = "writing"
        kind = meta["kind"]
        counts = await journal.call(journal.counts)
        if counts.get(GONE) and not counts.get(DONE):
            # every id answered 404 (or failed): a wrong server, not a repository emptied
            await journal.call(journal.unconfirm_gone)
            counts = await journal.call(journal.counts)
        if kind == "full" and not self.accept_drop:
            refusal = await asyncio.to_thread(self._guard, counts)
            if refusal:
                reasons = await journal.call(journal.failure_summary)
                why = f"{refusal}; {reasons}" if reasons else refusal
                raise PublishGuarded(f"publish guard: {why}; LATEST not moved; the journal is "
                                     "kept: run again to retry, or 'harvester run "
                                     "--accept-drop' to publish it")
        deferred: dict[str, int] = {}
        if kind == "incremental":  # the unrefreshed keep their last totals in the snapshot
            deferred = await journal.call(journal.defer_pending, self.catalog_path)
            counts = await journal.call(journal.counts)
            if deferred.get("full"):
                log.warning("%d new or changed records did not fit the budget: the next run "
                            "fetches them first", deferred["full"])
        per_source = await journal.call(journal.ids_per_source, len(self.cfg.sources))
        entity_errors = self.fetcher.entity_errors  # group/collection/... stats that failed
        failed = counts.get(FAILED, 0) + counts.incomplete + len(entity_errors)
        by_reason = Counter({r: n for r, n, _ in await journal.call(journal.failure_reasons)})
        by_reason.update(e["reason"] for e in entity_errors)
        refreshed = await journal.call(journal.refreshed)
        truncated = any(r.truncated for r in self.reports)
        manifest: dict[str, Any] = {
            "name": self.cfg.name,
            "snapshot_id": meta["snapshot_id"],
            "status": "complete" if not failed and not truncated else "partial",
            "kind": kind,
            # a full run: all its sources select; incremental: changes since, refreshed stats
            "covers": {"modified_since": orjson.loads(meta["since"]),
                       "stats_refreshed": refreshed["stats"]},
            "started_at": meta["started_at"],
            "harvester_version": __version__,
            "config_sha256": meta["fingerprint"],
            "config": public_view(self.cfg),
            "runs": int(meta["runs"]),
            "sources": [{**r.as_dict(), "ids": n} for r, n in zip(self.reports, per_source,
                                                                   strict=True)],
            "ids": {"total": sum(counts.values()), "fetched": counts.get(DONE, 0),
                    "failed": counts.get(FAILED, 0), "gone": counts.get(GONE, 0),
                    "incomplete": counts.incomplete,  # records kept while a part failed
                    # not listed tonight, fetched by id and still there: kept, not deleted
                    "unlisted": await journal.call(journal.unlisted)},
            "budget": self.spend.view(self.budget, self.schedule, {
                "refreshed": refreshed,
                "deferred": {"records": deferred.get("full", 0),
                             "stats": deferred.get("stats_only", 0)},
                "records_first_next_run": deferred.get("full", 0),
                **bud.stats_age(await journal.call(journal.oldest_stats), utc_now()),
            }),
            "errors": failed,
            "errors_by_reason": dict(sorted(by_reason.items(), key=lambda rn: (-rn[1], rn[0]))),
            # this run's requests; requests_total adds the interrupted runs it resumed
            "http": {**metrics, "requests_total": bud.requests_total(meta, metrics)},
            "fetch": self.fetcher.report(),  # requests per item, downloads
        }
        writer = SnapshotWriter(self.root, self.cfg.name, snapshot_id=meta["snapshot_id"],
                                formats=frozenset(self.cfg.output.formats),
                                staging_dir=self._staging)
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
        try:  # a full disk, a lock held by another process: the journal is kept
            await journal.call(journal.update_catalog, self.catalog_path, meta["snapshot_id"],
                               kind == "full")
            self._remember(meta, published, advance=published["status"] == "complete")
        except (OutputError, sqlite3.OperationalError) as exc:
            what = exc if isinstance(exc, OutputError) else \
                f"{self.catalog_path}: cannot record the run: {exc}"
            raise OutputError(f"{what} (snapshot {meta['snapshot_id']} is published; the next "
                              "run finishes recording it)") from None
        self._prune()
        return RunResult(path, published, published["errors"], truncated)  # left-out records too

    def _guard(self, counts: Counts) -> str:
        """Why this full run must not be published, or "" (a thread: reads manifests)."""
        fetched, listed = counts.get(DONE, 0), sum(counts.values())
        if listed and not fetched:
            return f"this full run fetched 0 records of the {listed:,} ids listed"
        last = last_complete_full(self.root, self.cfg.name) or {"ids": {"fetched": 0}}
        before, ratio = last["ids"]["fetched"], self.cfg.guard.min_ratio
        if fetched < ratio * before:
            return (f"this full run fetched {fetched:,} records, fewer than {ratio:g} x the "
                    f"{before:,} of snapshot {last.get('snapshot_id')}, the last complete one")
        return ""

    def _remember(self, meta: dict[str, str], manifest: dict[str, Any], *, advance: bool) -> None:
        """Record the run; move the high-water marks only when nothing was lost, so a run
        with failed ids is asked again (from the old marks) next night."""
        mark, behind = meta["started_at"], manifest.get("http", {}).get(
            "clock_behind_s", {}).get(origin_of(self.cfg.api.url), 0)
        if advance and behind > 60:  # modified dates are stamped on the API's clock
            log.warning("the API's clock is %d s behind this machine's: the high-water marks "
                        "move back as much", behind)
            mark = stamp(parse_stamp(mark) - dt.timedelta(seconds=behind))
        marks = {s.name: (bud.source_fp(s), mark)
                 for s in self.cfg.sources if s.kind in INCREMENTAL_KINDS}
        with contextlib.closing(Catalog(self.catalog_path)) as catalog:
            catalog.record_run(meta["snapshot_id"], manifest["kind"], manifest["status"],
                               meta["started_at"], manifest["finished_at"],
                               marks if advance else None)

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
        spec = RenderSpec(snapshot_id=snapshot_id, sources=tuple(s.name for s in self.cfg.sources),
                          scope=self.cfg.stats.institution or "public",
                          ndjson="ndjson" in writer.formats, parquet="parquet" in writer.formats)
        duplicate_keys, left_out = 0, []
        with writer:  # aborted unless published
            for rows in chunks(journal.db, CHUNK_RECORDS, CHUNK_BYTES):
                self._check_stop()
                chunk = render(spec, rows)
                writer.add_rendered(chunk)
                self.progress.written += chunk.articles
                duplicate_keys += chunk.duplicate_keys
                left_out += chunk.left_out
                del rows, chunk  # one may be a record near http.max_body: not kept for the next
            ctx = RowContext(snapshot_id=snapshot_id, fetched_at=self.fetcher.entities_at)
            for payload in self.fetcher.entities:  # group/collection/... series, once each
                for table, series in series_rows(payload, ctx).items():
                    writer.add_rows(table, series)
            for side in journal.source_records():
                ctx = RowContext(snapshot_id=snapshot_id, fetched_at=parse_stamp(side.fetched_at))
                for table, shaped in side_rows(side.kind, side.body, ctx).items():
                    writer.add_rows(table, shaped)
            for error in [*journal.errors(), *self.fetcher.entity_errors, *left_out]:
                writer.add_error(error)
            if left_out:  # a record the tables cannot hold: absent, so never "complete"
                journal.fail_left_out([e["id"] for e in left_out])  # asked again next run
                manifest.update(status="partial", errors=manifest["errors"] + len(left_out))
                reasons = manifest["errors_by_reason"]
                reasons["bad-record"] = reasons.get("bad-record", 0) + len(left_out)
            if duplicate_keys:  # kept as served in articles.ndjson and `raw`; columns: the last
                log.warning("%d records give a JSON key twice; the tables keep the last value",
                            duplicate_keys)
            manifest["served_json"] = {"records_with_duplicate_keys": duplicate_keys}
            manifest["finished_at"] = stamp(utc_now())
            self._check_stop()
            return writer.publish(manifest)


class _WriteStopped(Exception):
    """The run was interrupted while its snapshot was being written (nothing is published)."""

