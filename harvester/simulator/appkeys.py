"""The typed aiohttp app key under which route handlers find the running simulator."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# request.app[SIMULATOR] -> the Simulator (or any object with .corpus, .settings, .log)
SIMULATOR: web.AppKey[Any] = web.AppKey("simulator", object)
