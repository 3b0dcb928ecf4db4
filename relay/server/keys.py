"""Typed application keys (aiohttp ``AppKey``, STYLE §4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from relay.runtime import Relay

RELAY: web.AppKey[Relay] = web.AppKey("relay")
