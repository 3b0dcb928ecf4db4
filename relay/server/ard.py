"""The relay as an Agentic Resource Discovery (ARD) registry for its domain (SPEC.md §12.4).

::

    GET  /.well-known/ard.json          the manifest: public entries + the registry entry
    POST /ard/search                    {"query": {"text", "filter"}, "federation", "pageSize",
                                         "pageToken"} → {"results", "referrals"?, "pageToken"?}
    POST /ard/explore                   {"query"?, "resultType": {"facets": [...]}} → facets
    GET  /ard/agents?filter=&pageSize=&pageToken=    → {"items", "total", "pageToken"?}
    GET  /ard/agents/{identifier}       one entry

Who asks decides what is seen (relay.core.catalog.visible): a local agent's bearer token is
that agent's view; a partner relay's signed request (``Relay.partner_auth``) its domain's;
nothing, the public entries. Errors on these routes are ARD's error object
(``{"errorCode", "message"}``, ARD Appendix B), not the local API's.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from relay.core import catalog as cat
from relay.core import errors as E
from relay.core import jsonutil
from relay.core.catalog import Viewer
from relay.server.auth import authenticate_bearer, charge_failed_auth, refuse_guessing
from relay.server.errors import Handler
from relay.server.http import read_body
from relay.server.keys import RELAY

routes = web.RouteTableDef()

#: A search or explore body. Far above any valid request (a text of ``MAX_QUERY_CHARS`` and a
#: full filter fit in a few KiB): stops a caller making the relay read and parse megabytes.
MAX_ARD_BODY_BYTES: Final = 64 * 1024

#: ARD Appendix B's error codes, by HTTP status.
_ERROR_CODES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    408: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RATE_LIMIT_EXCEEDED",
    503: "UNAVAILABLE",
}


def ard_error(exc: E.SynqError) -> web.Response:
    """ARD's error object for ``exc``, with the HTTP status and headers its class carries."""
    headers: dict[str, str] = {}
    if isinstance(exc, E.RateLimited):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    elif isinstance(exc, E.Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="synq"'
    code = _ERROR_CODES.get(exc.http_status, "INTERNAL_ERROR")
    message = exc.message if exc.http_status < 500 or exc.http_status == 503 else "internal error"
    return web.Response(
        status=exc.http_status,
        body=jsonutil.dumps({"errorCode": code, "message": message}),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def ard_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the ARD routes, render what the relay's error middleware would render as ARD's error
    object; elsewhere, nothing."""
    if not (request.path.startswith("/ard/") or request.path == "/.well-known/ard.json"):
        return await handler(request)
    try:
        return await handler(request)
    except E.SynqError as exc:
        if isinstance(exc, E.RelayError) and exc.http_status != 503:
            raise
        return ard_error(exc)
    except web.HTTPNotFound:
        return ard_error(E.NotFound("no such route"))
    except web.HTTPMethodNotAllowed:
        return ard_error(E.MethodNotAllowed("method not allowed"))


async def viewer(request: web.Request) -> Viewer:
    """The caller: a local agent by its bearer token (401 for a bad one), a partner relay by
    ``Relay.partner_auth``, otherwise anonymous. Charged one search of its rate."""
    relay = request.app[RELAY]
    if "Authorization" in request.headers:
        agent = await authenticate_bearer(relay, request.headers["Authorization"], request.remote)
        who = Viewer.local(f"{agent.name}@{relay.domain}")
        key = f"agent:{agent.name}"
    else:
        auth = relay.partner_auth or signed_partner
        domain = await auth(request)
        if domain is not None:
            who, key = Viewer.partner(domain), f"partner:{domain}"
        else:
            source = relay.sources.key(request.remote)
            who, key = Viewer.anonymous(), f"source:{source or 'exempt'}"
    wait = relay.search_rates.take(key, relay.clock.monotonic())
    if wait > 0:
        raise E.RateLimited(f"too many searches; retry in {wait:.0f} s", retry_after=wait)
    return who


#: The one route a partner relay signs its requests to (SPEC.md §12.6): its search.
SIGNED_ROUTE: Final = "/ard/search"


async def signed_partner(request: web.Request) -> str | None:
    """The domain of the partner relay whose HTTP Message Signature the request carries
    (SPEC.md §12.6), or None for a request without one (then it is anonymous). A signature
    that fails is refused with its error and charged to the source address's failed
    authentications (SPEC.md §10.3), as a wrong bearer token is: guessing costs the guesser."""
    if "Signature" not in request.headers and "Signature-Input" not in request.headers:
        return None
    relay = request.app[RELAY]
    if request.path != SIGNED_ROUTE:
        raise E.SignatureRequired(f"only {SIGNED_ROUTE} takes a partner's signed request")
    refuse_guessing(relay, request.remote)
    body = await read_body(request, MAX_ARD_BODY_BYTES, "request body")
    # @authority and @path are those of this relay's published base URL, which the partner
    # signed, whatever Host a proxy in front of the relay passes on.
    url = relay.public_url.rstrip("/") + request.path_qs
    try:
        return await relay.search_verifier.verify(request.method, url, request.headers, body)
    except E.SynqError as exc:
        if exc.http_status in (400, 401, 422):
            charge_failed_auth(relay, request.remote)
        raise


async def read_ard_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_ARD_BODY_BYTES:
        raise E.PayloadTooLarge(f"request body is larger than {MAX_ARD_BODY_BYTES} bytes")
    if request.content_type != "application/json":
        raise E.UnsupportedMediaType("Content-Type must be application/json")
    data = await read_body(request, MAX_ARD_BODY_BYTES, "request body")
    try:
        return jsonutil.loads(data, max_bytes=MAX_ARD_BODY_BYTES, what="request body")
    except E.PayloadTooLarge:
        raise
    except E.SynqError as exc:
        raise cat.InvalidArgument(exc.message) from None


def _json(data: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=jsonutil.dumps(data), content_type="application/json", headers=headers)


@routes.get("/.well-known/ard.json")
async def manifest(request: web.Request) -> web.Response:
    """The ARD manifest (ARD §4.1): public, the same for everyone."""
    relay = request.app[RELAY]
    return _json(await relay.catalog.manifest(), {"Cache-Control": "public, max-age=60"})


@routes.post("/ard/search")
async def search(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    who = await viewer(request)
    # "auto" is ARD's default; a caller that is not a local agent is not federated further
    # (a partner's search must not fan out again: no loops, no amplification).
    body = await read_ard_json(request)
    parsed = cat.parse_search(body)
    if who.kind != "local" and parsed.federation == "auto":
        parsed = cat.SearchRequest(
            parsed.text, parsed.filters, "none", parsed.page_size, parsed.offset
        )
    page = await relay.catalog.search(who, parsed)
    return _json(page.to_json(), page.headers or None)


@routes.post("/ard/explore")
async def explore(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    who = await viewer(request)
    parsed = cat.parse_explore(await read_ard_json(request))
    return _json(await relay.catalog.explore(who, parsed))


@routes.get("/ard/agents")
async def list_agents(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    who = await viewer(request)
    parsed = cat.parse_list(request.query)
    return _json(await relay.catalog.list(who, parsed))


@routes.get("/ard/agents/{identifier}")
async def get_agent(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    who = await viewer(request)
    return _json(await relay.catalog.get(who, request.match_info["identifier"]))
