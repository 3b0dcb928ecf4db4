"""The relay's small adapter interface: what an adapter implements, and the only relay types an
adapter sees.

An adapter translates between envelopes and one protocol (A2A, MCP). For an agent it backs,
the relay hands it each envelope from the agent's inbox (``deliver``) together with a
``Replier``: everything the agent answers — a direct reply, each task status or artifact
update, progress — goes back to the original sender as envelopes, in the order the adapter
emits them, each durable before ``reply`` returns. Adapters hold no routing and no storage:
the relay's store is the inbox, its dispatcher does the retrying, its router does the rest.

An adapter reports failure by raising ``relay.core.errors.AttemptFailed`` with an RFC 3463
status: a 4.x.x status keeps the envelope in the inbox for another attempt (the agent is down,
timed out, answered 5xx), a 5.x.x status bounces it to its sender with a DSN (the agent refused
the message for good; SPEC.md §9.4). Any other ``SynqError`` counts as transient, keeping its
own status when that is 4.x.x; any other exception counts as transient (4.0.0) and is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from relay.core.envelope import Envelope
from relay.store.base import AgentRecord


@dataclass(frozen=True, slots=True)
class Reply:
    """One envelope the agent sends back to the original sender. ``thread`` and
    ``in_reply_to`` default to the original's thread and id."""

    kind: str
    content_type: str
    body: Any
    thread: str | None = None
    in_reply_to: str | None = None


class Replier(Protocol):
    async def __call__(self, reply: Reply) -> str:
        """Submit the reply (signed, durable); return its envelope id."""
        ...


class AgentAdapter(Protocol):
    #: The agent kind this adapter serves (``a2a``, ``mcp``): ``AgentRecord.kind``.
    kind: str

    async def check(self, endpoint: str) -> str:
        """Validate an endpoint at ``synq agent add`` time (fetch and validate the A2A card,
        start the MCP server and list its tools); return the endpoint in the form to store.
        Raise a ``relay.core.errors.SynqError`` with a one-line message if it is unusable."""
        ...

    async def card(self, agent: AgentRecord, address: str, public_url: str) -> dict[str, Any]:
        """The A2A agent card the relay publishes for this agent's address."""
        ...

    async def deliver(self, agent: AgentRecord, envelope: Envelope, reply: Replier) -> None:
        """Hand ``envelope`` to the agent; send what it answers through ``reply``.
        Return when the agent has taken the envelope and everything it answered is sent."""
        ...

    async def close(self) -> None:
        """Release connections and child processes."""
        ...
