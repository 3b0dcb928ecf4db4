"""The aiohttp application of one relay and its lifecycle."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from relay.core.errors import SynqError
from relay.core.limits import MAX_TXN_BYTES
from relay.server import api, federation
from relay.server.errors import Handler, error_middleware
from relay.server.keys import RELAY
from relay.server.runtime import Relay

#: aiohttp's request body cap. The federation transaction is the largest body any route takes;
#: aiohttp answers 413 before reading more (its default is 1 MiB).
CLIENT_MAX_SIZE = MAX_TXN_BYTES + 64 * 1024


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    relay = request.app[RELAY]
    started = time.perf_counter()
    try:
        response = await handler(request)
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        relay.metrics.request_seconds.labels(route=route).observe(time.perf_counter() - started)
    return response


@web.middleware
async def count_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SynqError as exc:
        request.app[RELAY].metrics.rejected.labels(code=exc.code).inc()
        raise


def build_app(relay: Relay, *, own_relay: bool = False) -> web.Application:
    """The application for ``relay``. With ``own_relay`` the app runs the relay's background
    work (the federation queue) while it serves, and closes the relay on cleanup."""
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, count_errors],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[RELAY] = relay
    app.add_routes(api.routes)
    app.add_routes(federation.routes)
    if own_relay:

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            await relay.start_background()
            yield
            await relay.close()

        app.cleanup_ctx.append(lifecycle)
    return app
