"""Agent cards for Synq addresses, in the A2A 1.0 AgentCard JSON shape (SPEC.md §7.8).

A card tells any A2A client where the address is reachable: the relay's A2A face rooted at
``<public_url>/a2a/<address>``. Cards of agents backed by an A2A or MCP server are richer (the
adapters republish the agent's own skills); an inbox-only agent's card says what every Synq
address can do: receive messages.
"""

from __future__ import annotations

from typing import Any, Final

from relay.core.address import Address

#: A2A protocol version the relay's A2A face speaks.
A2A_PROTOCOL_VERSION: Final = "1.0"
#: A2A extension URI carrying the Synq address of an agent (A2A 1.0 §4.6 extensions).
SYNQ_ADDRESS_EXTENSION: Final = "urn:synq:ext:address:1"


def a2a_base_url(public_url: str, address: Address) -> str:
    return f"{public_url.rstrip('/')}/a2a/{address}"


def inbox_agent_card(
    address: Address, public_url: str, description: str | None = None
) -> dict[str, Any]:
    base = a2a_base_url(public_url, address)
    return {
        "name": str(address),
        "description": description
        or f"Synq agent {address}: send it messages; it reads its inbox.",
        "version": "1",
        "supportedInterfaces": [
            {"url": base, "protocolBinding": "JSONRPC", "protocolVersion": A2A_PROTOCOL_VERSION},
            {"url": base, "protocolBinding": "HTTP+JSON", "protocolVersion": A2A_PROTOCOL_VERSION},
        ],
        "capabilities": {
            "streaming": True,
            "pushNotifications": False,
            "extensions": [
                {
                    "uri": SYNQ_ADDRESS_EXTENSION,
                    "description": "The agent's Synq address",
                    "required": False,
                    "params": {"address": str(address)},
                }
            ],
        },
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [
            {
                "id": "inbox",
                "name": "Inbox",
                "description": "Accepts messages for asynchronous reading.",
                "tags": ["synq", "inbox"],
            }
        ],
    }
