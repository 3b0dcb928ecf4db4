"""Typed application keys (aiohttp ``AppKey``): handlers reach the running relay by type, not by string."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from relay.runtime import Relay

RELAY: web.AppKey[Relay] = web.AppKey("relay")
