"""Local delivery to adapter-backed agents: the dispatcher's retry, bounce and reply paths.

The adapter here is a small in-test implementation of the adapter interface whose agent can be
switched between answering, being down and refusing — the A2A and MCP adapters are tested
against real SDK peers in their own tests; this pins the dispatcher's own rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.core import status as st
from relay.core.envelope import Envelope
from relay.core.errors import AttemptFailed
from relay.core.ids import hash_token, new_token
from relay.delivery.adapters import Replier, Reply
from relay.delivery.dispatch import LEASE_DURATION
from relay.store.base import AgentRecord
from relay.store.sqlite import SQLiteStore
from tests.fedenv import World, world


class EchoAgent:
    """Answers each message with an uppercased copy, unless told to be down or to refuse."""

    kind = "a2a"

    def __init__(self) -> None:
        self.mode = "up"
        self.received: list[str] = []

    async def deliver(self, agent: AgentRecord, envelope: Envelope, reply: Replier) -> None:
        if self.mode == "down":
            raise AttemptFailed(st.NO_ANSWER, "connection refused")
        if self.mode == "refuse":
            raise AttemptFailed(st.NOT_AUTHORIZED, "the agent refused the message")
        self.received.append(envelope.id)
        await reply(Reply(kind="task.update", content_type="text/plain", body="working"))
        await reply(
            Reply(kind="message", content_type="text/plain", body=str(envelope.body).upper())
        )

    async def close(self) -> None:
        return None


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, "acme.test", "globex.test") as env:
        yield env


async def setup(w: World) -> tuple[EchoAgent, object]:
    globex = w.orgs["globex.test"]
    agent = EchoAgent()
    globex.relay.dispatcher.adapters["a2a"] = agent
    await globex.relay.store.create_agent(
        "echo", "a2a", hash_token(new_token()), "http://agent.invalid", w.clock.now()
    )
    return agent, globex


async def test_agent_gets_the_message_and_its_replies_cross_back_in_order(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    agent, _ = await setup(w)
    alice = await acme.agent("alice")
    sent = await w.send(acme, alice, {"to": ["echo@globex.test"], "body": "ping", "thread": "t"})
    await acme.relay.sender.run_once()
    assert await globex.relay.dispatcher.run_once() == 1
    assert agent.received == [sent["id"]]
    await globex.relay.sender.run_once()
    replies = await w.inbox(acme, alice)
    assert [(m["kind"], m["body"], m["in_reply_to"], m["thread"]) for m in replies] == [
        ("task.update", "working", sent["id"], "t"),
        ("message", "PING", sent["id"], "t"),
    ]
    # Handed over once: the inbox row is acked and nothing is due any more.
    assert await globex.relay.dispatcher.run_once() == 0
    assert await globex.relay.store.inbox("echo", limit=10) == []


async def test_agent_down_keeps_the_message_in_its_inbox_until_it_is_back(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    agent, _ = await setup(w)
    alice = await acme.agent("alice")
    agent.mode = "down"
    sent = await w.send(acme, alice, {"to": ["echo@globex.test"], "body": "are you there"})
    await acme.relay.sender.run_once()
    for _ in range(3):
        assert await globex.relay.dispatcher.run_once() == 1
        assert await globex.relay.dispatcher.run_once() == 0  # backing off
        w.clock.advance(600)
    assert [i.id for i in await globex.relay.store.inbox("echo", limit=10)] == [sent["id"]]
    agent.mode = "up"
    assert await globex.relay.dispatcher.run_once() == 1
    assert agent.received == [sent["id"]]


async def test_refusal_bounces_across_federation_from_the_receivers_mailer_daemon(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    agent, _ = await setup(w)
    alice = await acme.agent("alice")
    agent.mode = "refuse"
    sent = await w.send(acme, alice, {"to": ["echo@globex.test"], "body": "x"})
    await acme.relay.sender.run_once()
    assert await globex.relay.dispatcher.run_once() == 1
    await globex.relay.sender.run_once()
    [dsn] = await w.inbox(acme, alice)
    assert (dsn["kind"], dsn["from"], dsn["in_reply_to"]) == (
        "dsn",
        "mailer-daemon@globex.test",
        sent["id"],
    )
    assert dsn["body"]["status"] == "5.7.1"


async def test_expiry_while_the_agent_is_down_bounces(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    agent, _ = await setup(w)
    alice = await acme.agent("alice")
    agent.mode = "down"
    expires = w.clock.now().replace(microsecond=0).isoformat().replace("+00:00", "Z")
    w.clock.advance(-3600)
    sent = await w.send(acme, alice, {"to": ["echo@globex.test"], "body": "x", "expires": expires})
    await acme.relay.sender.run_once()
    assert await globex.relay.dispatcher.run_once() == 1
    w.clock.advance(7200)
    assert await globex.relay.dispatcher.run_once() == 1
    await globex.relay.sender.run_once()
    [dsn] = await w.inbox(acme, alice)
    assert (dsn["in_reply_to"], dsn["body"]["status"]) == (sent["id"], "5.4.7")


async def test_a_delivery_lease_is_committed_without_fsync_and_the_writes_around_it_with(
    w: World,
) -> None:
    # SQLite leases are all released at the next start (release_leases), so a lease lost to a
    # power cut costs nothing: a group of leases commits with synchronous NORMAL, one fsync less
    # on every delivery's path. Every other write stays at the configured level (FULL).
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    await setup(w)
    store = globex.relay.store
    assert isinstance(store, SQLiteStore)
    assert store.synchronous == "FULL"
    writer = store._writer
    assert writer is not None

    async def level() -> tuple[int, int]:
        # The sync level, and the automatic checkpoint: off for a lease's group, whose COMMIT
        # then runs inline on the event loop and only appends to the WAL.
        [(sync,)] = writer.conn.execute("PRAGMA synchronous").fetchall()
        [(pages,)] = writer.conn.execute("PRAGMA wal_autocheckpoint").fetchall()
        return int(sync), int(pages)

    alice = await acme.agent("alice")
    await w.send(acme, alice, {"to": ["echo@globex.test"], "body": "x"})
    await acme.relay.sender.run_once()
    assert await level() == (2, 1000)  # FULL: the accept of the federated envelope
    now = w.clock.now()
    [leased] = await store.lease_deliveries(now, lease_until=now + LEASE_DURATION, limit=10)
    assert await level() == (1, 0)  # NORMAL: the lease
    await store.ack("echo", leased.id, now)
    assert await level() == (2, 1000)  # FULL again before the next durable write commits
