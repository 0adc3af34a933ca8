"""Shared fixtures: a simulator on loopback and configs pointed at it."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from harvester import config
from harvester.simulator import Simulator
from harvester.simulator.settings import SimSettings


@pytest.fixture(autouse=True)
def _heap_of_earlier_tests_frozen(request: pytest.FixtureRequest) -> Iterator[None]:
    """A `timing` test counts arrivals to the millisecond, client and server in this process:
    a full collection of the heap earlier tests left (100 ms measured) would stall one send
    and bunch the next. The harvester's own process has no such heap."""
    if request.node.get_closest_marker("timing") is None:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session for tests that talk to the simulator directly."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimSettings(items=400, seed=11)) as s:
        yield s


def write_config(
    tmp_path: Path,
    sim: Any,
    sources: list[dict[str, Any]],
    *,
    env: dict[str, str] | None = None,
    **top: Any,
) -> config.Config:
    """A config file under tmp_path pointed at `sim`, fast by default (no politeness wait)."""
    body: dict[str, Any] = {
        "name": top.pop("name", "t"),
        "sources": sources,
        "http": top.pop("http", {"rate": {"requests": 10_000, "per": 1}, "concurrency": 8,
                                 "retry": {"attempts": 4, "backoff_base": 0.01,
                                           "backoff_max": 0.05}}),
        **top,
        # under tmp_path unless the test says where: never the working directory's output/
        "output": {"dir": str(tmp_path / "out"), **top.get("output", {})},
    }
    body.setdefault("api", {})["url"] = sim.api_url
    body.setdefault("stats", {})["url"] = sim.stats_url
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "harvest.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return config.load(path, env=env or {})


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a loopback port for the block; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
