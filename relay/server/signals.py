"""The signal routes of the local agent API (SPEC.md §13.3). Every route acts as one local
agent, identified by its bearer token; what it does is relay.delivery.signals', how the answer
looks is ``signal_view``. This module only reads HTTP requests and writes HTTP answers."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from relay.core import errors as E
from relay.core import jsonutil
from relay.core.envelope import format_timestamp
from relay.core.limits import MAX_LONG_POLL_SECONDS
from relay.delivery.signals import MAX_FEED_PAGE, Heard, signal_view
from relay.federation.signals import MAX_REQUEST_BYTES
from relay.server.api import SSE_HEARTBEAT_SECONDS, authenticate, json_response, read_json
from relay.server.http import query_number, read_body
from relay.server.keys import RELAY

routes = web.RouteTableDef()


async def _optional_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or {} for a request without one (``/claim`` needs none)."""
    if not request.can_read_body:
        return {}
    data = await read_json(request)
    if not isinstance(data, dict):
        raise E.MalformedRequest("the request body must be a JSON object")
    return data


def _heard(items: list[Heard], now: Any) -> dict[str, Any]:
    return {"signals": [signal_view(h.signal, now) for h in items]}


@routes.post("/synq/v1/signals")
async def emit(request: web.Request) -> web.Response:
    """``POST /synq/v1/signals {"topic": "invoice.overdue", "text": "…", "urgency": 0.8,
    "half_life": 600, "lease": 60, "scope": "local"}`` → ``201 {"id", "state": "open",
    "intensity": 0.8}``."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    signal = await relay.signals.emit(agent.name, await read_json(request))
    now = relay.clock.now()
    view = signal_view(signal, now)
    return json_response(
        {"id": signal.id, "state": signal.state, "intensity": view["intensity"]},
        status=201,
        headers={"Location": f"/synq/v1/signals/{signal.id}"},
    )


@routes.get("/synq/v1/signals")
async def feed(request: web.Request) -> web.Response:
    """``GET /synq/v1/signals?wait=30&limit=50`` → ``{"signals": [signal…]}``: the open signals
    the token's agent hears (its subscription), strongest first; waits up to ``wait`` seconds
    for the first."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    wait = query_number(request, "wait", 0.0, 0.0, MAX_LONG_POLL_SECONDS)
    limit = int(query_number(request, "limit", 50, 1, MAX_FEED_PAGE))
    items = await relay.signals.feed(agent.name, wait=wait, limit=limit)
    return json_response(_heard(items, relay.clock.now()))


@routes.get("/synq/v1/signals/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events (WHATWG HTML §9.2): a ``signals`` event with ``{"signals": […]}``
    at once and each time the set of signals the agent hears changes; a comment line as
    keepalive."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        async for items in relay.signals.watch(agent.name, every=SSE_HEARTBEAT_SECONDS):
            if items is None:
                await response.write(b": keepalive\n\n")
                continue
            data = jsonutil.dumps(_heard(items, relay.clock.now()))
            await response.write(b"event: signals\ndata: " + data + b"\n\n")
    return response


@routes.put("/synq/v1/subscriptions")
async def subscribe(request: web.Request) -> web.Response:
    """``PUT /synq/v1/subscriptions {"topics": ["invoice.*"], "threshold": 0.2}`` (with
    ``"capabilities": true`` the agent's card's skill ids and tags become topics too) →
    ``200 {"topics": […], "threshold": 0.2, "capabilities": false}``."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    sub = await relay.signals.subscribe(agent.name, await read_json(request))
    return json_response(
        {"topics": list(sub.topics), "threshold": sub.threshold, "capabilities": sub.capabilities}
    )


@routes.get("/synq/v1/subscriptions")
async def subscription(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    agent = await authenticate(request)
    sub = await relay.signals.subscription(agent.name)
    if sub is None:
        return json_response({"topics": [], "threshold": 0.0, "capabilities": False})
    return json_response(
        {"topics": list(sub.topics), "threshold": sub.threshold, "capabilities": sub.capabilities}
    )


@routes.get("/synq/v1/signals/{id}")
async def show(request: web.Request) -> web.Response:
    """``GET /synq/v1/signals/{id}`` → the signal, its state and intensity now, and its claim
    history (``history``: generation, holder, claimed, until, ended, outcome)."""
    relay = request.app[RELAY]
    await authenticate(request)
    signal, history = await relay.signals.show(request.match_info["id"])
    return json_response(signal_view(signal, relay.clock.now(), history))


@routes.delete("/synq/v1/signals/{id}")
async def withdraw(request: web.Request) -> web.Response:
    """Withdraw a signal (its emitter only) → ``200 {"id", "state": "withdrawn"}``."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    signal = await relay.signals.withdraw(agent.name, request.match_info["id"])
    return json_response({"id": signal.id, "state": signal.state})


@routes.post("/synq/v1/signals/{id}/reinforce")
async def reinforce(request: web.Request) -> web.Response:
    """``{"amount": 0.2}`` → ``200 {"id", "intensity"}``; a second time ``409 conflict``."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    data = await _optional_json(request)
    signal = await relay.signals.reinforce(agent.name, request.match_info["id"], data.get("amount"))
    return json_response(
        {"id": signal.id, "intensity": signal_view(signal, relay.clock.now())["intensity"]}
    )


@routes.post("/synq/v1/signals/{id}/claim")
async def claim(request: web.Request) -> web.Response:
    """→ ``200 {"claim": {"token": "1.…", "expires": "…"}}``, or ``409 already_claimed``."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    await _optional_json(request)
    token, until = await relay.signals.claim(agent.name, request.match_info["id"])
    return json_response({"claim": {"token": token, "expires": format_timestamp(until)}})


@routes.post("/synq/v1/signals/{id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    """``{"token"}`` → ``200 {"claim": {"token", "expires"}}`` with the lease extended;
    ``409 stale_claim`` for a token that is not the current claim's."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    data = await _optional_json(request)
    token = data.get("token")
    until = await relay.signals.heartbeat(agent.name, request.match_info["id"], token)
    return json_response({"claim": {"token": token, "expires": format_timestamp(until)}})


@routes.post("/synq/v1/signals/{id}/complete")
async def complete(request: web.Request) -> web.Response:
    """``{"token", "content_type"?, "body"?}`` → ``200 {"id", "state": "done"}``; the result
    goes to the emitter's inbox as an envelope ``in_reply_to`` the signal."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    data = await _optional_json(request)
    signal = await relay.signals.complete(
        agent.name,
        request.match_info["id"],
        data.get("token"),
        data.get("content_type"),
        data.get("body"),
    )
    return json_response({"id": signal.id, "state": signal.state})


@routes.post("/synq/v1/signals/{id}/release")
async def release(request: web.Request) -> web.Response:
    """``{"token"}`` → ``200 {"id", "state": "open"}``."""
    relay = request.app[RELAY]
    agent = await authenticate(request)
    data = await _optional_json(request)
    signal = await relay.signals.release(agent.name, request.match_info["id"], data.get("token"))
    return json_response({"id": signal.id, "state": signal.state})


@routes.post("/synq/v1/federation/signals/{id}/{op}")
async def federation_request(request: web.Request) -> web.Response:
    """A partner relay's request for one of its agents (SPEC.md §13.6): ``POST
    /synq/v1/federation/signals/{id}/claim`` with ``Content-Type: application/jose`` and a
    compact JWS of a ``signal.claim`` envelope → what ``POST /synq/v1/signals/{id}/claim``
    answers a local agent (``heartbeat``, ``complete``, ``release`` alike)."""
    relay = request.app[RELAY]
    if request.content_type != "application/jose":
        raise E.UnsupportedMediaType("Content-Type must be application/jose")
    token = await read_body(request, MAX_REQUEST_BYTES, "request body")
    answer = await relay.signal_federation.serve(
        request.match_info["id"], request.match_info["op"], token
    )
    return json_response(answer)
