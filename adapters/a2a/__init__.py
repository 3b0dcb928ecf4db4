"""The A2A bridge: an existing A2A agent gains a Synq address and an inbox (adapter.py); the
translation between A2A objects and envelopes (wire.py) and the agent cards the relay
publishes (cards.py). The relay's A2A face, which serves any reachable address to unmodified
A2A clients, lives in relay/server/a2a_face.py and uses these."""

from adapters.a2a.adapter import A2AAdapter

__all__ = ["A2AAdapter"]
