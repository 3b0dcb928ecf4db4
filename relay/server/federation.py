"""Federation routes: the transaction endpoint and the well-known document (SPEC.md §7, §8)."""

from __future__ import annotations

from aiohttp import web

from relay.core import txn as txn_mod
from relay.core.limits import MAX_TXN_BYTES
from relay.discovery.wellknown import (
    WELL_KNOWN_CACHE_CONTROL,
    WELL_KNOWN_CONTENT_TYPE,
    WELL_KNOWN_PATH,
    build_well_known,
)
from relay.server.http import read_body
from relay.server.keys import RELAY

routes = web.RouteTableDef()


@routes.put("/synq/v1/federation/txn/{txn_id}")
async def put_transaction(request: web.Request) -> web.Response:
    """``PUT /synq/v1/federation/txn/{txn_id}`` ``{"origin": "globex.test", "envelopes": [jws…]}``
    → ``200 {"results": {"<id>": {"status": "accepted", "code": "2.0.0"}, …}}``.

    No bearer token: every envelope carries its own signature, checked against the key its
    ``from`` domain publishes. Accepted envelopes are durable before the answer.

    A source address whose envelopes keep failing verification gets ``429 rate_limited`` with
    ``Retry-After`` (SPEC.md §10.3) before its body is read, let alone any key looked up.
    """
    relay = request.app[RELAY]
    txn_id = txn_mod.check_txn_id(request.match_info["txn_id"])
    source = relay.sources.key(request.remote)
    relay.inbound.admit(source)
    txn = txn_mod.parse_request(await read_body(request, MAX_TXN_BYTES, "transaction"))
    results = await relay.inbound.handle(txn_id, txn, source=source)
    for result in results.values():
        relay.metrics.federation_results.labels(status=result.status).inc()
    return web.Response(body=txn_mod.encode_results(results), content_type="application/json")


@routes.get(WELL_KNOWN_PATH)
async def well_known(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    doc = build_well_known(
        relay.domain, relay.public_url, relay.keyring.published(relay.clock.now())
    )
    return web.Response(
        body=doc.to_json(),
        content_type=WELL_KNOWN_CONTENT_TYPE,
        headers={"Cache-Control": WELL_KNOWN_CACHE_CONTROL},
    )
