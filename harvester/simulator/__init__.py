"""A Figshare-compatible server on loopback: the API, stats and download hosts as aiohttp apps.

Fidelity limits of the harness (the route modules list their own):
- Plain HTTP on loopback; the real service is HTTPS only, behind a CDN.
- Rate limiting, abuse blocking, latency and faults are this simulator's guesses: Figshare documents
  no automatic rate limit (NOTES.md §12); the 429 JSON body and the Cloudflare-style 403 page are
  plausible shapes, not recorded ones.
- Abuse is counted per client address, the rate limit per host across all clients.
- Fault and latency draws follow each host's arrival order: deterministic only for sequential
  requests. aiohttp's client silently retries an idempotent request once after a reset.
- An injected 429 sends `fault_retry_after` verbatim: fractional values break RFC 9110 on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from dataclasses import fields
from importlib import import_module
from types import ModuleType, TracebackType
from typing import Any

from aiohttp import web

from harvester.simulator.appkeys import SIMULATOR
from harvester.simulator.behaviour import RequestLog, middlewares
from harvester.simulator.files import DownloadFaults
from harvester.simulator.settings import SimSettings

__all__ = ["Simulator", "SimulatorThread", "serve_forever"]

# The corpus is built once from these; changing them at run time would need a new corpus.
_CORPUS_FIELDS = ("items", "seed", "institutions", "busy_day_share", "private_items",
                  "record_cache")
# Stalled requests would otherwise hold shutdown for aiohttp's default 60 s.
_SHUTDOWN_TIMEOUT = 0.1


def _sibling(name: str) -> ModuleType | None:
    """Import harvester.simulator.<name>, or None if that module does not exist yet."""
    # TODO(lead): drop this guard once corpus, rest, oai and stats have landed; a missing module
    # is a bug from then on, and the callers below can import the modules directly.
    qualified = f"{__name__}.{name}"
    try:
        return import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name != qualified:
            raise  # the module exists but something it imports is missing: a real error
        return None


class Simulator:
    """The API host (REST and OAI-PMH under /v2), the stats host and the download host
    (ndownloader: file bytes), each on its own port.

    Routes may be added to `api_app` / `stats_app` / `download_app` before `start()`.
    `downloads` holds the download host's per-file faults and what it served.
    """

    def __init__(
        self,
        settings: SimSettings | None = None,
        *,
        host: str = "127.0.0.1",
        api_port: int = 0,
        stats_port: int = 0,
        download_port: int = 0,
    ) -> None:
        self.settings = settings if settings is not None else SimSettings()
        self.log = RequestLog()
        self.corpus: Any = None
        self.downloads = DownloadFaults()
        self._host = host
        self._ports = {"api": api_port, "stats": stats_port, "download": download_port}
        self._urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self.api_app = self._make_app("api", ("rest", "oai"))
        self.stats_app = self._make_app("stats", ("stats",))
        self.download_app = self._make_app("download", ("files",))

    def _make_app(self, host: str, route_modules: tuple[str, ...]) -> web.Application:
        app = web.Application(middlewares=middlewares(host))
        app[SIMULATOR] = self
        for name in route_modules:
            module = _sibling(name)
            if module is not None:
                module.add_routes(app)
        return app

    @property
    def api_url(self) -> str:
        return self._url("api")

    @property
    def stats_url(self) -> str:
        return self._url("stats")

    @property
    def download_url(self) -> str:
        """Stands for https://ndownloader.figshare.com (config: files.url)."""
        return self._url("download")

    def _url(self, host: str) -> str:
        if host not in self._urls:
            raise RuntimeError("the simulator is not running: call start() first")
        return self._urls[host]

    async def start(self) -> None:
        if self._runners:
            raise RuntimeError("the simulator is already running")
        corpus = _sibling("corpus")
        if corpus is not None:
            self.corpus = corpus.Corpus(self.settings)
        try:
            apps = (("api", self.api_app), ("stats", self.stats_app),
                    ("download", self.download_app))
            for host, app in apps:
                runner = web.AppRunner(
                    app,
                    access_log=None,
                    handle_signals=False,
                    shutdown_timeout=_SHUTDOWN_TIMEOUT,
                    # A client that gives up ends its handler (e.g. a stall), logged as status 0.
                    handler_cancellation=True,
                )
                await runner.setup()
                self._runners.append(runner)
                await web.TCPSite(runner, self._host, self._ports[host]).start()
                port = runner.addresses[0][1]
                netloc = f"[{self._host}]" if ":" in self._host else self._host
                self._urls[host] = f"http://{netloc}:{port}" + ("/v2" if host == "api" else "")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        self._urls.clear()
        await asyncio.gather(*(runner.cleanup() for runner in runners))

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def update(self, **changes: Any) -> SimSettings:
        """Swap knobs at run time; the next request to arrive sees them."""
        valid = {f.name for f in fields(SimSettings)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; valid: {sorted(valid)}")
        frozen = sorted(
            k for k in _CORPUS_FIELDS if k in changes and changes[k] != getattr(self.settings, k)
        )
        if frozen:
            raise ValueError(f"{frozen} shape the corpus and cannot change; start a new Simulator")
        self.settings = self.settings.with_(**changes)
        return self.settings


class SimulatorThread:
    """A Simulator on its own event loop in a background thread, for synchronous callers."""

    def __init__(
        self,
        settings: SimSettings | None = None,
        *,
        host: str = "127.0.0.1",
        api_port: int = 0,
        stats_port: int = 0,
        download_port: int = 0,
    ) -> None:
        self.simulator = Simulator(settings, host=host, api_port=api_port, stats_port=stats_port,
                                   download_port=download_port)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    api_url = property(lambda self: self.simulator.api_url)
    stats_url = property(lambda self: self.simulator.stats_url)
    download_url = property(lambda self: self.simulator.download_url)
    downloads = property(lambda self: self.simulator.downloads)
    log = property(lambda self: self.simulator.log)
    corpus = property(lambda self: self.simulator.corpus)
    settings = property(lambda self: self.simulator.settings)

    def update(self, **changes: Any) -> SimSettings:
        # Swapping one attribute is atomic; the loop thread reads it at each arrival.
        return self.simulator.update(**changes)

    def start(self) -> None:
        """Start serving; returns once both ports are listening."""
        if self._thread is not None:
            raise RuntimeError("the simulator thread is already running")
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        thread.join()
        self._ready.clear()

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.simulator.start()
        except Exception as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.simulator.stop()


def serve_forever(
    settings: SimSettings,
    *,
    host: str = "127.0.0.1",
    api_port: int = 0,
    stats_port: int = 0,
) -> None:
    """Serve until SIGINT or SIGTERM; the first line on stdout is `api=<url> stats=<url>`,
    the second `download=<url>` (the stand-in for ndownloader.figshare.com)."""
    asyncio.run(_serve_until_signalled(settings, host, api_port, stats_port))


async def _serve_until_signalled(
    settings: SimSettings, host: str, api_port: int, stats_port: int
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        async with Simulator(settings, host=host, api_port=api_port, stats_port=stats_port) as sim:
            print(f"api={sim.api_url} stats={sim.stats_url}", flush=True)
            print(f"download={sim.download_url}", flush=True)
            await stopping.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class ThreadedApp:
    """An inline aiohttp.web app served on loopback from its own thread, for synchronous callers
    (tests of cli.main, benchmarks whose harvest runs in a child process)."""

    def __init__(self, routes: Callable[[web.Application], None], port: int = 0) -> None:
        self.port = port
        self.app = web.Application()
        routes(self.app)
        self.url = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> ThreadedApp:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
