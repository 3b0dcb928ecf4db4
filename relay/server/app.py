"""The aiohttp application of one relay and its lifecycle."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from relay.core.errors import SynqError
from relay.runtime import Relay
from relay.server import api, ard, federation, mcp, signals
from relay.server.ard import ard_errors
from relay.server.errors import Handler, error_middleware
from relay.server.http import (
    DEFAULT_HTTP_LIMITS,
    HTTP_LIMITS,
    HttpLimits,
    source_limits,
    trace_and_log,
)
from relay.server.keys import RELAY


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


def build_app(
    relay: Relay, *, own_relay: bool = False, http_limits: HttpLimits = DEFAULT_HTTP_LIMITS
) -> web.Application:
    """The application for ``relay``. With ``own_relay`` the app runs the relay's background
    work (``Relay.start_background``: the queues and the A2A reply tracker) while it serves, and
    closes the relay on cleanup; without it the caller runs and closes them.
    ``http_limits`` are the HTTP server's limits; run the app with ``make_runner`` (or pass
    ``http_limits.server_kwargs()`` to a test server) so the server-side ones apply too, and on
    a ``GatedSite`` so the relay's per-source connection limit does."""
    app = web.Application(
        # The span and access log around everything, so refusals are seen too; then per source
        # address: a request over its address's limits costs nothing more.
        middlewares=[
            trace_and_log,
            source_limits,
            metrics_middleware,
            error_middleware,
            ard_errors,
            count_errors,
        ],
        client_max_size=http_limits.client_max_size,
    )
    app[RELAY] = relay
    app[HTTP_LIMITS] = http_limits
    app.add_routes(api.routes)
    app.add_routes(signals.routes)
    app.add_routes(federation.routes)
    app.add_routes(ard.routes)
    mcp.setup(app, relay)
    if own_relay:

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            await relay.start_background()
            yield
            await relay.close()

        app.cleanup_ctx.append(lifecycle)
    # After the relay's own lifecycle, so the face's SDK host stops taking calls before the
    # relay closes the task store under it. Imported here: the a2a-sdk server routes cost every
    # ``synq`` command start-up time, and only a serving relay needs them.
    from relay.server.a2a_face import A2AFace

    A2AFace(relay).install(app)
    return app
