"""Command line: argument parsing, logs and progress, exit codes; the one asyncio.run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from harvester import __version__, config, console
from harvester.errors import Abort, ConfigError, HarvesterError, LockedError, OutputError

log = logging.getLogger("harvester")

# Exit codes (documented in the README).
OK = 0
INTERNAL = 1
USAGE = 2  # bad config or command line
PARTIAL = 3  # published, but errors exceeded max_errors, a source was truncated, failed
#             downloads exceeded files.max_failures, or the warehouse load after the run failed;
#             for `doctor`: the service differs from an assumption the config relies on
LOCKED = 4  # another run of the same harvest holds the lock
ABORTED = 5  # blocked by the server, credentials refused, host unreachable: nothing published
INTERRUPTED = 130  # SIGINT/SIGTERM: stopped cleanly, resumable


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit 2, as for every user mistake
        raise ConfigError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    logs = _ArgumentParser(add_help=False)  # flag groups that several commands share
    logs.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    logs.add_argument("--quiet", action="store_true", help="warnings and errors only")
    budget = _ArgumentParser(add_help=False)
    budget.add_argument("--budget", metavar="DURATION", type=_nonempty, help="stop fetching "
                        "after this long (8h, 90m) and publish; the stalest stats wait "
                        "(overrides incremental.budget)")
    budget.add_argument("--until", metavar="HH:MM", type=_nonempty, help="stop fetching in "
                        "time to publish by then: local time, or with a zone (06:00 "
                        "Europe/Berlin, 06:00+02:00)")
    configured = _ArgumentParser(add_help=False, parents=[logs])
    configured.add_argument("config", help="path to the harvest's YAML config")
    configured.add_argument("--api-url", type=_nonempty,
                            help="REST API base URL (overrides config and FIGSHARE_API_URL)")
    configured.add_argument("--stats-url", type=_nonempty,
                            help="stats base URL (overrides config and FIGSHARE_STATS_URL)")
    configured.add_argument("--output", type=_nonempty,
                            help="output directory (overrides output.dir)")
    snapshot = _ArgumentParser(add_help=False)
    snapshot.add_argument("harvest", metavar="OUTPUT/NAME", help="harvest folder or warehouse:FILE")
    snapshot.add_argument("--snapshot", metavar="ID", help="this snapshot instead of LATEST")

    p = _ArgumentParser(prog="harvester", description="Bulk harvester for the Figshare APIs.")
    p.add_argument("--version", action="version", version=f"harvester {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    def command(name: str, help_: str, *parents: _ArgumentParser,
                description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=description or help_,
                              parents=parents)

    sp = command("run", "run a harvest and publish a snapshot", configured, budget)
    sp.add_argument("--full", action="store_true",
                    help="a full run even when the config asks for incremental ones")
    sp.add_argument("--accept-drop", action="store_true",
                    help="publish a full run the publish guard held back (it fetched nothing, "
                    "or fewer records than guard.min_ratio of the last complete snapshot)")
    sp.add_argument("--report", metavar="FILE",
                    help="write a machine-readable JSON run report here (also on failure)")
    command("plan", "list ids only and show what the full run would cost", configured, budget)
    sp = command("doctor", "check the service against the harvester's assumptions in a few "
                 "stated requests (exit 3 when something differs)", configured)
    sp.add_argument("--json", action="store_true", help="the findings as one JSON object")
    sp = command("validate", "check a config without touching the network")
    sp.add_argument("config")
    sp = command("load", "load a harvest's snapshots into a DuckDB warehouse", logs,
                 description="Load every complete snapshot of OUTPUT/NAME not loaded yet into a "
                 "DuckDB file (created or migrated); loading again changes nothing.")
    sp.add_argument("harvest", metavar="OUTPUT/NAME",
                    help="the harvest's folder: a directory or s3://bucket/prefix/NAME")
    sp.add_argument("--duckdb", required=True, metavar="FILE", help="the warehouse file")
    sp = command("report", "write an offline HTML report of a harvest", snapshot,
                 description="One self-contained HTML page (no network needed) of a harvest's "
                 "latest snapshot, or of a warehouse: warehouse:FILE.")
    sp.add_argument("--out", metavar="FILE.html",
                    help="where to write it (default: OUTPUT/NAME/report.html)")
    sp = command("export", "write a harvest's tables as CSV files and/or XLSX", snapshot,
                 description="Items, authors, categories, tags, funding, files and per-item "
                 "stats as spreadsheets.")
    sp.add_argument("--csv", metavar="DIR", help="write one CSV file per table here")
    sp.add_argument("--xlsx", metavar="FILE", help="write one workbook, a sheet per table")
    sp = command("demo", "harvest the built-in simulator with configs/demo.yaml", logs)
    sp.add_argument("--output", type=_nonempty, default="output",
                    help="output directory (default: output)")
    sp.add_argument("--items", type=int, default=2_000, help="simulated repository size")
    sp = command("simulate", "serve a Figshare-compatible simulator on loopback")
    sp.add_argument("--items", type=int, default=10_000)
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--api-port", type=_port, default=0, help="0 picks a free port")
    sp.add_argument("--stats-port", type=_port, default=0, help="0 picks a free port")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--latency-ms", type=float, default=0.0)
    sp.add_argument("--fault-rate", type=float, default=0.0)
    sp.add_argument("--rate-limit", help="server-side limit as N/SECONDS, e.g. 10/1")
    sp.add_argument("--no-cursor", action="store_true", help="do not offer X-Cursor paging")
    return p


def _budget(args: argparse.Namespace, cfg: config.Config) -> Any:
    from harvester.budget import budget_of

    try:
        return budget_of(args.budget, args.until,
                         cfg.incremental.budget if cfg.incremental else None)
    except ValueError as exc:
        flag = "--until" if args.until else "--budget"
        raise ConfigError(f"{flag}: {exc}") from None


def _nonempty(text: str) -> str:
    if not text.strip():  # an unset shell variable: never fall back to the config silently
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return port


_REPORT: dict[str, Any] = {}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    console.setup_logging(getattr(args, "json_logs", False), getattr(args, "quiet", False))
    import pyarrow as pa

    # snapshots are rendered in this process: the system allocator hands freed buffers back
    # to the OS, where Arrow's default pool keeps them (benchmarks/README.md has the figures)
    pa.set_memory_pool(pa.system_memory_pool())
    report = getattr(args, "report", None)
    if report:
        try:
            _check_file_path(Path(report), "--report")
        except ConfigError as exc:
            log.error("%s", exc)  # no report: there is nowhere to write it
            return USAGE
    started = time.time()
    _REPORT.clear()
    code = _dispatch(_COMMANDS[args.command], args)
    if report:
        _write_report(Path(report), args, code, started)
    return code


# a failure's exit code and how it is said; the first class that matches wins
_FAILURES: tuple[tuple[type[HarvesterError], int, str], ...] = (
    (ConfigError, USAGE, "{}"),
    (LockedError, LOCKED, "{}"),
    (Abort, ABORTED, "aborted: {} (what was fetched is kept; the next run resumes)"),
    (HarvesterError, ABORTED, "{}"),
)


def _dispatch(command: Any, args: argparse.Namespace) -> int:
    try:
        code = command(args)
        return _run_async(code) if asyncio.iscoroutine(code) else int(code)
    except HarvesterError as exc:
        code, template = next((c, t) for cls, c, t in _FAILURES if isinstance(exc, cls))
        _fail(exc, template)
        return int(code)
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume")
        return INTERRUPTED
    except Exception as exc:  # a bug, not a user mistake: say so in one line
        if os.environ.get("HARVESTER_DEBUG"):
            raise
        _fail(exc, f"internal error: {type(exc).__name__}: {{}} "
                   "(rerun with HARVESTER_DEBUG=1 for the traceback)")
        return INTERNAL


def _fail(exc: BaseException, template: str = "{}") -> None:
    message = template.format(exc)
    log.error("%s", message)
    _REPORT["error"] = message


_MEANING = {OK: "ok", INTERNAL: "internal-error", USAGE: "usage-error", PARTIAL: "partial",
            LOCKED: "locked", ABORTED: "aborted", INTERRUPTED: "interrupted"}


def _report_view(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "snapshot_id", "status", "kind", "covers", "started_at", "finished_at",
            "ids", "errors", "errors_by_reason", "sources", "runs")
    out = {k: manifest[k] for k in keys if k in manifest}
    http = manifest.get("http", {})
    out.update(requests=http.get("requests", {}), retries=http.get("retries", {}))
    downloads = manifest.get("fetch", {}).get("downloads")
    if downloads:
        out["downloads"] = downloads  # files by status, "failed" among them
    return out


def _check_file_path(path: Path, flag: str) -> None:
    """--report or --duckdb names a file in a folder we can write (made if missing)."""
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory, not a file")
    _check_folder(path.parent, f"{flag} {path}", "a file stands where its folder would be",
                  "its folder is not writable")


def _check_output_dir(cfg: config.Config, flag: str | None) -> None:
    if not cfg.output.dir.startswith(config.S3_SCHEME):
        name = f"--output {flag}" if flag else f"{cfg.path}: output.dir {cfg.output.dir}"
        _check_folder(Path(cfg.output.dir), name, "is a file, not a folder", "cannot write there")


def _check_folder(folder: Path, name: str, is_file: str, unwritable: str) -> None:
    """Before the command, so that a typo costs nothing rather than a whole night's run."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{name}: {is_file}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # a test write: root passes os.access in /proc
            pass
    except OSError as exc:
        raise ConfigError(f"{name}: {unwritable}: {exc.strerror or exc}") from None


def _write_report(path: Path, args: argparse.Namespace, code: int, started: float) -> None:
    """The machine-readable run report: written for every outcome, atomically."""
    report = {
        "exit_code": code,
        "outcome": _MEANING.get(code, "unknown"),
        "command": args.command,
        "config": getattr(args, "config", None),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 3),
        **_REPORT,
    }
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        tmp.replace(path)
    except OSError as exc:
        log.error("--report %s: cannot write the run report: %s", path, exc)


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    """asyncio.run with SIGINT/SIGTERM turned into a clean, resumable stop."""

    async def guarded() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await coro
        except asyncio.CancelledError:
            log.error("interrupted; the journal is flushed: run the same command again to resume")
            return INTERRUPTED
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(guarded())


def _load(args: argparse.Namespace) -> config.Config:
    return config.load(
        args.config, api_url=args.api_url, stats_url=args.stats_url, output_dir=args.output
    )


async def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    budget = _budget(args, cfg)
    _check_output_dir(cfg, args.output)
    return await run_harvest(cfg, full=args.full, accept_drop=args.accept_drop, budget=budget)


async def run_harvest(cfg: config.Config, *, full: bool = False,
                      accept_drop: bool = False, budget: Any = None) -> int:
    from harvester.doctor import learned_windows
    from harvester.pipeline import Harvest, Progress, PublishGuarded

    if cfg.doctor == "quick":
        await _quick_doctor(cfg)
    progress = Progress()
    harvest = Harvest(cfg, progress=progress, full=full, accept_drop=accept_drop,
                      budget=budget)
    harvest.limits.windows.update(learned_windows(cfg))  # what `doctor` measured
    log.info("harvest %s: %d sources -> %s", cfg.name, len(cfg.sources), cfg.output.dir)
    try:
        async with console.showing(progress):
            result = await harvest.run()
    except PublishGuarded as exc:
        _fail(exc)
        return PARTIAL
    if not result.published:  # a budgeted full run: resumes next time, nothing published
        ids = result.manifest["ids"]
        print(f"not published: {ids['fetched']:,} of {ids['total']:,} records in; the budget "
              "is spent and the next run resumes (LATEST unchanged)")
        _REPORT.update(published=False, manifest=result.manifest)
        return OK
    console.print_summary(result.manifest, result.snapshot, time.monotonic() - progress.started)
    _REPORT.update(snapshot=str(result.snapshot), manifest=_report_view(result.manifest))
    loaded = OK if cfg.warehouse is None else await asyncio.to_thread(_load_after_run, cfg)
    if result.truncated:
        log.error("some source could not be enumerated completely; see the manifest's partitions")
        return PARTIAL
    if result.errors > cfg.max_errors:
        reasons = result.manifest.get("errors_by_reason", {})
        said = ", ".join(f"{n:,} {r}" for r, n in reasons.items())
        log.error("%d ids failed (max_errors: %d): %s; see errors.ndjson", result.errors,
                  cfg.max_errors, said)
        return PARTIAL
    files_failed = int(result.manifest.get("fetch", {}).get("downloads", {}).get("failed", 0))
    if files_failed > cfg.files.max_failures:
        log.error("%d file downloads failed (files.max_failures: %d); see the downloads table",
                  files_failed, cfg.files.max_failures)
        return PARTIAL
    return loaded


def _load_after_run(cfg: config.Config) -> int:
    """The configured warehouse catches up; a failure leaves the snapshot published."""
    from harvester import warehouse

    assert cfg.warehouse is not None
    try:
        report = warehouse.load(cfg.output.dir, cfg.name, cfg.warehouse.duckdb)
    except HarvesterError as exc:
        _fail(exc, "snapshot published, but the warehouse load failed: {} "
                   "(the next run, or 'harvester load', catches up)")
        return PARTIAL
    console.print_load(report, cfg.warehouse.duckdb)
    return OK


def _cmd_report(args: argparse.Namespace) -> int:
    """`report` and `export`: read a snapshot or warehouse, write files people open."""
    if args.command == "report":
        from harvester.report import write_report

        print(f"report    {write_report(args.harvest, args.snapshot, args.out)}")
        return OK
    from harvester.export import export

    counts = export(args.harvest, args.snapshot, csv_dir=args.csv, xlsx=args.xlsx)
    rows = ", ".join(f"{t} {n:,}" for t, n in counts.items())
    for kind, where in (("csv", args.csv), ("xlsx", args.xlsx)):
        if where:
            print(f"{kind:<9} {where}: {rows}")
    return OK


def _cmd_load(args: argparse.Namespace) -> int:
    from harvester import warehouse
    from harvester.store import open_store, split_harvest

    try:
        root, name = split_harvest(args.harvest)
    except ValueError as exc:
        raise ConfigError(f"load: {exc}") from None
    if not open_store(root).exists(name):
        raise ConfigError(f"load: {args.harvest}: no such harvest folder")
    _check_file_path(Path(args.duckdb), "--duckdb")
    # SIGINT rolls back the snapshot being loaded and exits 130. DuckDB may stop a running query
    # on it and report that as an error of its own, so the handler notes that one came.
    # (SIGTERM keeps its default: the process ends, DuckDB's transaction with it.)
    interrupted: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        report = warehouse.load(root, name, args.duckdb)
    except Exception:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    console.print_load(report, args.duckdb)
    return OK


async def _cmd_doctor(args: argparse.Namespace) -> int:
    from harvester.doctor import run_doctor

    cfg = _load(args)
    said = (lambda line: log.info("%s", line)) if args.json else print
    report = await run_doctor(cfg, said=said)
    code = ABORTED if report.unsaved else PARTIAL if report.failed else OK
    _REPORT["doctor"] = report.as_dict()
    if args.json:
        print(orjson.dumps({"harvest": cfg.name, **report.as_dict(), "exit_code": code},
                           option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(report.lines()))
        print(report.summary())
    if report.unsaved:
        raise OutputError(report.unsaved)
    return code


async def _quick_doctor(cfg: config.Config) -> None:
    """`doctor: quick`: the cheap checks before the run; a difference is a warning, since the
    harvester adapts (a window learned here is the run's from its first request)."""
    from harvester.doctor import run_doctor

    report = await run_doctor(cfg, quick=True, said=lambda line: log.info("%s", line))
    for line in report.lines():
        (log.warning if line.startswith("differs") else log.info)("doctor %s", line)
    (log.warning if report.failed else log.info)("%s", report.summary())
    _REPORT["doctor"] = report.as_dict()
    if report.unsaved:  # the run could not record itself either: stop before it fetches
        raise OutputError(report.unsaved)


async def _cmd_demo(args: argparse.Namespace) -> int:
    from harvester.simulator import Simulator
    from harvester.simulator.settings import SimSettings

    demo_config = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    try:
        settings = SimSettings(items=args.items, seed=42)
    except ValueError as exc:
        raise ConfigError(f"demo: --items: {exc}") from None
    async with Simulator(settings) as sim:
        log.info("simulator: api %s, stats %s (%d articles)", sim.api_url, sim.stats_url,
                 args.items)
        cfg = config.load(demo_config, api_url=sim.api_url, stats_url=sim.stats_url,
                          output_dir=args.output)
        _check_output_dir(cfg, args.output)
        code = await run_harvest(cfg)
    snap = Path(args.output) / cfg.name / "LATEST"
    if code == OK and snap.exists():
        where = snap.parent / snap.read_text().strip()
        print("\nread it back, for example:")
        python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) \
            else sys.executable
        print(f"  {python} -c \"import duckdb; duckdb.sql(\\\"SELECT article_id, title, "
              f"published_date FROM '{where}/articles/*.parquet' LIMIT 5\\\").show()\"")
        print("tables and columns: docs/TABLES.md")
    return code


_SIMULATE_FLAGS = ("items", "latency_ms", "fault_rate", "rate_limit")


def _simulate(args: argparse.Namespace) -> int:
    from harvester.simulator.settings import SimSettings

    rate_limit = None
    if args.rate_limit:
        try:
            n, per = args.rate_limit.split("/")
            rate_limit = (int(n), float(per))
        except ValueError:
            raise ConfigError(f"--rate-limit: {args.rate_limit!r} is not N/SECONDS") from None
    try:
        settings = SimSettings(items=args.items, seed=args.seed, latency_ms=args.latency_ms,
                               fault_rate=args.fault_rate, rate_limit=rate_limit,
                               cursor=not args.no_cursor)
    except ValueError as exc:  # named as the flag that set it: items -> --items
        message = str(exc)
        setting = message.split(" ", 1)[0]
        if setting in _SIMULATE_FLAGS:
            message = f"--{setting.replace('_', '-')}{message[len(setting):]}"
        raise ConfigError(f"simulate: {message}") from None
    return _run_async(_serve_simulator(settings, args))


async def _serve_simulator(settings: Any, args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; the first line is an `export` to paste into another shell."""
    from harvester.simulator import Simulator

    try:
        async with Simulator(settings, host=args.host, api_port=args.api_port,
                             stats_port=args.stats_port) as sim:
            print(f"export FIGSHARE_API_URL={sim.api_url} FIGSHARE_STATS_URL={sim.stats_url} "
                  f"FIGSHARE_DOWNLOAD_URL={sim.download_url}")
            print(f"# test tokens: api.token {settings.user_token} (an account, with drafts) or "
                  f"{settings.admin_token} (institution admin); stats.user {settings.stats_user}"
                  f", stats.password {settings.stats_password}")
            print(f"# {settings.items:,} items; Ctrl-C stops it", flush=True)
            await asyncio.Event().wait()
    except OSError as exc:  # a port in use, a host name that does not resolve here
        raise ConfigError(f"simulate: cannot listen on --host {args.host}: {exc}") from None
    except asyncio.CancelledError:  # SIGINT/SIGTERM: a clean stop
        pass
    return OK


async def _cmd_plan(args: argparse.Namespace) -> int:
    from harvester.plan import plan

    cfg = _load(args)
    return PARTIAL if await plan(cfg, _budget(args, cfg)) else OK


def _cmd_validate(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    print(f"{args.config}: ok ({len(cfg.sources)} sources, harvest {cfg.name!r})")
    return OK


_COMMANDS = {"run": _cmd_run, "plan": _cmd_plan, "demo": _cmd_demo, "doctor": _cmd_doctor,
             "validate": _cmd_validate, "simulate": _simulate, "load": _cmd_load,
             "report": _cmd_report, "export": _cmd_report}
