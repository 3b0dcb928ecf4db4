"""Local agents' bearer tokens (SPEC.md §6.1, RFC 6750 §2.1), one path for every face that takes
them: the local API, the MCP faces and the A2A face.

Online guessing is limited per source address (SPEC.md §10.3): each token presented that names
no agent is charged to its address's ``failed_auth`` bucket (relay.core.ratelimit), and while
that bucket is in debt every token from the address is refused ``429`` with ``Retry-After``
*before* it is looked up — so a refused guess tells the guesser nothing, and the store is not
asked. A token that names an agent costs nothing, and other addresses are not affected. The
check comes first (:func:`refuse_guessing`), the charge after the look-up
(:func:`agent_for_token`): a guesser's requests racing in together may all be looked up, but
each failure is charged, and the debt they leave is repaid before the next look-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.core import errors as E
from relay.core.ids import hash_token
from relay.store.base import AgentRecord

if TYPE_CHECKING:
    from relay.runtime import Relay

__all__ = ["agent_for_token", "authenticate_bearer", "bearer_token", "refuse_guessing"]


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive,
    RFC 9110 §11.1), or None for any other header."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def refuse_guessing(relay: Relay, peer: str | None) -> None:
    """Raise RateLimited when ``peer`` (the client's address) has no failed authentication
    left to spend."""
    key = relay.sources.key(peer)
    if key is None:
        return
    wait = relay.sources.failed_auth.wait(key, relay.clock.monotonic())
    if wait > 0:
        raise E.RateLimited(
            f"too many invalid bearer tokens from this address; retry in {wait:.0f} s",
            retry_after=wait,
        )


async def agent_for_token(relay: Relay, token: str, peer: str | None) -> AgentRecord | None:
    """The agent ``token`` belongs to, or None — then charged to ``peer``'s failures.

    Looked up through the router's agent cache (relay.delivery.router.AgentCache): a token
    stays valid for up to AGENT_CACHE_TTL seconds after another process removed its agent
    (SPEC.md §6.1); a removal in this process ends it at once."""
    agent = await relay.router.agents.for_token(hash_token(token))
    if agent is None:
        charge_failed_auth(relay, peer)
    return agent


def charge_failed_auth(relay: Relay, peer: str | None) -> None:
    """One failed authentication from ``peer`` (SPEC.md §10.3): a wrong token or signature."""
    key = relay.sources.key(peer)
    if key is not None:
        relay.sources.failed_auth.charge(key, relay.clock.monotonic())


async def authenticate_bearer(relay: Relay, header: str, peer: str | None) -> AgentRecord:
    """The agent an ``Authorization`` header's bearer token names, for a request from ``peer``.

    Raises Unauthenticated (401) for a missing, malformed or unknown token, and RateLimited
    (429) while ``peer`` may not try another."""
    token = bearer_token(header)
    if token is None:
        raise E.Unauthenticated()
    refuse_guessing(relay, peer)
    agent = await agent_for_token(relay, token, peer)
    if agent is None:
        raise E.Unauthenticated("the bearer token is not valid")
    return agent
