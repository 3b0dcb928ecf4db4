"""The ``Store`` contract (relay/store/base.py), run against every backend.

Everything above the "SQLite dialect" section goes through the ``Store`` interface and
``open_store`` only, through the ``store_url`` fixture, on every backend: SQLite, and a fresh
database of the session's throwaway PostgreSQL cluster (tests/pg.py). To add a backend, add
its name to ``BACKENDS`` and teach ``store_url`` to hand out a fresh, empty database for it.

Time is always an explicit ``now``: nothing here sleeps or reads the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.envelope import Envelope, encode
from relay.core.errors import (
    ConfigError,
    Conflict,
    StoreUnavailable,
    UnknownRecipient,
)
from relay.core.ids import hash_token
from relay.store import (
    QUEUE_CHANNEL,
    AgentKind,
    AgentRecord,
    NewEnvelope,
    Outcome,
    Store,
    inbox_channel,
    open_store,
    schema_version,
)
from relay.store import postgres as pg_dialect
from relay.store.base import DELIVERY_CHANNEL, DeliveryOutcome, Hold, MessageStatus
from relay.store.sql import SqlStore
from relay.store.sqlite import MAX_INLINE_COMMITS, SQLiteStore
from tests import pg

BACKENDS = ["sqlite", "postgresql"]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = jws.SigningKey.generate("s1")
HERE = "a.test"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL naming a fresh, empty database of one backend (opened as often as a test likes)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    if request.param == "postgresql":
        return pg.database_url(request)
    raise AssertionError(f"no database for backend {request.param!r}")


async def connect(url: str) -> Store:
    """Open a store the way the relay of domain ``HERE`` does."""
    return await open_store(url, domain=HERE)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await connect(store_url)
    try:
        yield s
    finally:
        await s.close()


def new(
    id: str,
    *,
    local: Sequence[str] = (),
    remote: Sequence[str] = (),
    refused: Sequence[tuple[str, str, str]] = (),
    sender: str = f"alice@{HERE}",
    thread: str | None = None,
    created: datetime = T0,
    kind: str = "message",
    via: str = "api",
) -> NewEnvelope:
    """A real signed envelope, handed to the store the way the router does."""
    to = [f"{n}@{HERE}" for n in local] + list(remote) + [r[0] for r in refused]
    envelope = Envelope(
        v=1,
        id=id,
        from_=sender,
        to=list(dict.fromkeys(to)) or [f"nobody@{HERE}"],
        created=created,
        expires=created + timedelta(days=2),
        thread=thread,
        kind=kind,
        content_type="text/plain",
        body=f"body of {id}",
    )
    token = jws.sign(encode(envelope), KEY)
    return NewEnvelope(
        origin=envelope.sender.domain,
        id=envelope.id,
        sender=envelope.from_,
        token=token,
        created=envelope.created,
        expires=envelope.expires,
        thread=envelope.thread,
        kind=envelope.kind,
        local=list(local),
        remote=list(remote),
        via=via,
        refused=list(refused),
    )


async def add_agent(
    store: Store, name: str, kind: AgentKind = "inbox", endpoint: str | None = None
) -> AgentRecord:
    return await store.create_agent(name, kind, hash_token(f"token-{name}"), endpoint, T0)


def sent(id: str, recipient: str) -> Outcome:
    """The outcome of a delivery the partner relay took custody of."""
    domain = recipient.split("@")[1]
    return Outcome(HERE, id, recipient, "sent", "2.0.0", "accepted", f"relay.{domain}")


# agents ---------------------------------------------------------------------------------------


async def test_agents_create_get_list_remove(store: Store) -> None:
    bob = await add_agent(store, "bob")
    carol = await add_agent(store, "carol", "a2a", "http://127.0.0.1:9/a2a")
    assert bob == AgentRecord("bob", "inbox", None, T0)
    assert carol.kind == "a2a"
    assert carol.endpoint == "http://127.0.0.1:9/a2a"
    assert bob.created.tzinfo is UTC

    assert await store.get_agent("bob") == bob
    assert await store.get_agent("nobody") is None
    assert await store.agent_for_token(hash_token("token-carol")) == carol
    assert await store.agent_for_token(hash_token("wrong")) is None
    assert await store.list_agents() == [bob, carol]
    assert await store.existing_agents(["bob", "zed", "carol", "bob"]) == {"bob", "carol"}
    assert await store.existing_agents([]) == set()

    assert await store.remove_agent("bob") is True
    assert await store.remove_agent("bob") is False
    assert await store.get_agent("bob") is None
    assert await store.list_agents() == [carol]


async def test_taken_agent_name_is_conflict(store: Store) -> None:
    await add_agent(store, "bob")
    with pytest.raises(Conflict):
        await store.create_agent("bob", "mcp", hash_token("other"), None, T0)
    # A token hash names one agent, or agent_for_token would be ambiguous.
    with pytest.raises(Conflict):
        await store.create_agent("carol", "inbox", hash_token("token-bob"), None, T0)
    assert [a.name for a in await store.list_agents()] == ["bob"]


async def test_removing_an_agent_removes_its_inbox(store: Store) -> None:
    await add_agent(store, "bob")
    await store.accept(new("e1", local=["bob"]), T0)
    assert await store.remove_agent("bob")
    await add_agent(store, "bob")
    assert await store.inbox("bob", limit=10, include_acked=True) == []


# custody and inbox ----------------------------------------------------------------------------


async def test_accept_delivers_to_inbox_and_ack(store: Store) -> None:
    await add_agent(store, "bob")
    await add_agent(store, "carol")
    item = new("e1", local=["bob"])
    result = await store.accept(item, at(1))
    assert (result.origin, result.id, result.duplicate) == (HERE, "e1", False)

    [row] = await store.inbox("bob", limit=10)
    assert (row.origin, row.id, row.token) == (HERE, "e1", item.token)
    assert row.delivered_at == at(1)
    assert row.delivered_at.tzinfo is UTC
    assert row.acked_at is None
    # The token is stored untouched: it still parses to the envelope that was signed.
    assert env_mod.decode(jws.parse_compact(row.token).payload).id == "e1"

    assert await store.ack("carol", "e1", at(2)) is False  # not carol's
    assert await store.ack("bob", "nope", at(2)) is False
    assert await store.ack("bob", "e1", at(2)) is True
    assert await store.ack("bob", "e1", at(3)) is True  # twice is not an error
    assert await store.inbox("bob", limit=10) == []
    [acked] = await store.inbox("bob", limit=10, include_acked=True)
    assert acked.acked_at == at(2)  # the first ack time is kept


async def test_accept_is_an_idempotent_union(store: Store) -> None:
    await add_agent(store, "bob")
    await add_agent(store, "carol")
    assert not (await store.accept(new("e1", local=["bob"]), T0)).duplicate
    assert (await store.accept(new("e1", local=["bob"]), at(1))).duplicate
    assert len(await store.inbox("bob", limit=10)) == 1

    # A replay that adds a recipient inserts only that row, and is not a duplicate.
    assert not (await store.accept(new("e1", local=["bob", "carol"]), at(2))).duplicate
    assert len(await store.inbox("bob", limit=10)) == 1
    assert len(await store.inbox("carol", limit=10)) == 1
    more = new("e1", local=["bob", "carol"], remote=["dave@b.test"])
    assert not (await store.accept(more, at(3))).duplicate
    assert (await store.accept(more, at(4))).duplicate
    assert [q.recipient for q in await store.list_queue()] == ["dave@b.test"]

    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert sorted(r.address for r in status.recipients) == [
        f"bob@{HERE}",
        f"carol@{HERE}",
        "dave@b.test",
    ]
    assert len(status.events) == 3  # one per recipient row, none for the replays


async def test_accept_many_reports_each_item(store: Store) -> None:
    await add_agent(store, "bob")
    await store.accept(new("old", local=["bob"]), T0)
    results = await store.accept_many(
        [
            new("e1", local=["bob"]),
            new("old", local=["bob"]),
            new("e2", local=["bob"]),
            new("e1", local=["bob"]),
        ],
        at(1),
    )
    assert [(r.id, r.duplicate) for r in results] == [
        ("e1", False),
        ("old", True),
        ("e2", False),
        ("e1", True),  # the same envelope twice in one batch: the first copy counts
    ]
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["old", "e1", "e2"]
    assert await store.accept_many([], at(2)) == []


async def test_concurrent_accepts_of_one_envelope_count_once(store: Store) -> None:
    await add_agent(store, "bob")
    first, second = await asyncio.gather(
        store.accept(new("e1", local=["bob"]), T0), store.accept(new("e1", local=["bob"]), T0)
    )
    assert (first.duplicate, second.duplicate) == (False, True)
    assert len(await store.inbox("bob", limit=10)) == 1


async def test_refused_then_taken_in_one_batch(store: Store) -> None:
    refused = new("e1", refused=[("carol@b.test", "5.7.1", "refused by policy")])
    taken = new("e1", remote=["carol@b.test"])
    for results in (
        await store.accept_many([refused, taken], T0),
        await asyncio.gather(
            store.accept(new("e2", refused=[("carol@b.test", "5.7.1", "no")]), T0),
            store.accept(new("e2", remote=["carol@b.test"]), T0),
        ),
    ):
        assert [r.duplicate for r in results] == [False, False]
    for id in ("e1", "e2"):
        status = await store.message_status(HERE, id)
        assert status is not None
        assert [(r.address, r.state) for r in status.recipients] == [("carol@b.test", "queued")]
        assert [e.event for e in status.events] == ["bounced", "accepted"]


async def test_refused_recipients_are_recorded_as_bounced(store: Store) -> None:
    await add_agent(store, "bob")
    item = new("e1", local=["bob"], refused=[(f"zed@{HERE}", "5.1.1", "no such agent")])
    await store.accept(item, T0)
    status = await store.message_status(HERE, "e1")
    assert status is not None
    zed = next(r for r in status.recipients if r.address == f"zed@{HERE}")
    assert (zed.state, zed.code, zed.reason, zed.attempts) == (
        "bounced",
        "5.1.1",
        "no such agent",
        0,
    )
    assert any(
        e.recipient == f"zed@{HERE}" and e.event == "bounced" and e.code == "5.1.1"
        for e in status.events
    )
    assert await store.list_queue() == []


async def test_a_retry_may_take_a_recipient_the_first_try_refused(store: Store) -> None:
    refused = ("carol@b.test", "5.7.1", "refused by policy")
    await store.accept(new("e1", refused=[refused]), T0)
    taken = await store.accept(new("e1", remote=["carol@b.test"]), at(1))
    assert not taken.duplicate
    [queued] = await store.list_queue()
    assert (queued.recipient, queued.next_attempt) == ("carol@b.test", at(1))
    # A later refusal does not undo an acceptance.
    assert (await store.accept(new("e1", refused=[refused]), at(2))).duplicate
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert [(r.address, r.state) for r in status.recipients] == [("carol@b.test", "queued")]


async def test_a_retry_may_deliver_to_a_local_agent_the_first_try_refused(store: Store) -> None:
    """A partner's envelope for bob before bob existed, replayed after: one row, now delivered."""
    await add_agent(store, "alice")
    unknown = (f"bob@{HERE}", "5.1.1", "no such agent")
    await store.accept(new("e1", local=["alice"], refused=[unknown]), T0)
    await add_agent(store, "bob")
    assert not (await store.accept(new("e1", local=["alice", "bob"]), at(1))).duplicate
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["e1"]
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert {r.address: r.state for r in status.recipients} == {
        f"alice@{HERE}": "delivered",
        f"bob@{HERE}": "delivered",
    }


async def test_a_retry_delivers_what_the_first_try_refused_though_an_agent_left_since(
    store: Store,
) -> None:
    """The idempotent union (SPEC.md §8.5) asks only that agents getting a new inbox row exist.
    A copy that reaches bob, refused 5.1.1 by the first copy, is delivered to bob although
    alice, delivered by the first copy, was removed since; a replay is still a duplicate."""
    await add_agent(store, "alice")
    unknown = (f"bob@{HERE}", "5.1.1", "no such agent")
    await store.accept(new("e1", local=["alice"], refused=[unknown]), T0)
    await store.remove_agent("alice")
    await add_agent(store, "bob")
    # The caller's existence check ran before alice left.
    assert not (await store.accept(new("e1", local=["alice", "bob"]), at(1))).duplicate
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["e1"]
    assert (await store.accept(new("e1", local=["alice", "bob"]), at(2))).duplicate
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert {r.address: r.state for r in status.recipients} == {
        f"alice@{HERE}": "delivered",
        f"bob@{HERE}": "delivered",
    }
    # An agent that would get a new row must exist: the accept fails and changes nothing.
    with pytest.raises(UnknownRecipient, match="carol"):
        await store.accept(new("e1", local=["bob", "carol"]), at(3))
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert len(status.recipients) == 2


async def test_inbox_order_limit_thread_and_paging(store: Store) -> None:
    await add_agent(store, "bob")
    await add_agent(store, "carol")
    threads = {"e1": "t1", "e2": None, "e3": "t1", "e4": "t2", "e5": "t1"}
    for n, (id, thread) in enumerate(threads.items()):
        await store.accept(new(id, local=["bob"], thread=thread), at(n))
    await store.accept(new("c1", local=["carol"], thread="t1"), at(9))

    items = await store.inbox("bob", limit=10)
    assert [i.id for i in items] == ["e1", "e2", "e3", "e4", "e5"]
    seqs = [i.seq for i in items]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5

    first = await store.inbox("bob", limit=2)
    assert [i.id for i in first] == ["e1", "e2"]
    rest = await store.inbox("bob", limit=10, after_seq=first[-1].seq)
    assert [i.id for i in rest] == ["e3", "e4", "e5"]
    assert await store.inbox("bob", limit=10, after_seq=items[-1].seq) == []
    assert await store.inbox("bob", limit=0) == []

    assert [i.id for i in await store.inbox("bob", limit=10, thread="t1")] == ["e1", "e3", "e5"]
    assert [i.id for i in await store.inbox("bob", limit=1, thread="t1")] == ["e1"]

    await store.ack("bob", "e1", at(20))
    await store.ack("bob", "e4", at(20))
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["e2", "e3", "e5"]
    assert [i.id for i in await store.inbox("bob", limit=10, thread="t1")] == ["e3", "e5"]
    history = await store.inbox("bob", limit=10, include_acked=True)
    assert [i.id for i in history] == ["e1", "e2", "e3", "e4", "e5"]
    assert [i.acked_at is not None for i in history] == [True, False, False, True, False]
    assert [i.id for i in await store.inbox("bob", limit=10, include_acked=True, thread="t1")] == [
        "e1",
        "e3",
        "e5",
    ]
    assert [i.id for i in await store.inbox("carol", limit=10)] == ["c1"]
    assert await store.inbox("nobody", limit=10) == []


async def test_message_status_shows_recipients_and_events(store: Store) -> None:
    assert await store.message_status(HERE, "missing") is None
    await add_agent(store, "bob")
    item = new(
        "e1",
        local=["bob"],
        remote=["dave@b.test"],
        refused=[(f"zed@{HERE}", "5.1.1", "no such agent")],
        via="federation:b.test",
    )
    await store.accept(item, at(1))
    assert await store.message_status("other.test", "e1") is None  # the key is (origin, id)

    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert (status.origin, status.id, status.sender) == (HERE, "e1", f"alice@{HERE}")
    assert (status.created, status.expires) == (item.created, item.expires)
    by_address = {r.address: r for r in status.recipients}
    assert {a: r.state for a, r in by_address.items()} == {
        f"bob@{HERE}": "delivered",
        "dave@b.test": "queued",
        f"zed@{HERE}": "bounced",
    }
    assert by_address["dave@b.test"].next_attempt == at(1)
    assert all(r.updated == at(1) and r.updated.tzinfo is UTC for r in status.recipients)
    assert [(e.recipient, e.event, e.hop) for e in status.events] == [
        (f"bob@{HERE}", "delivered", "federation:b.test"),
        ("dave@b.test", "accepted", "federation:b.test"),
        (f"zed@{HERE}", "bounced", "federation:b.test"),
    ]

    await store.lease_due(at(2), lease_until=at(60), limit=10)
    await store.settle([sent("e1", "dave@b.test")], [], at(3))
    status = await store.message_status(HERE, "e1")
    assert status is not None
    dave = next(r for r in status.recipients if r.address == "dave@b.test")
    assert (dave.state, dave.code, dave.attempts, dave.updated) == ("sent", "2.0.0", 1, at(3))
    assert (status.events[-1].event, status.events[-1].hop, status.events[-1].at) == (
        "sent",
        "relay.b.test",
        at(3),
    )


# federation queue -----------------------------------------------------------------------------


async def test_lease_due_respects_due_time_limit_and_domain(store: Store) -> None:
    await store.accept(new("e1", remote=["x@b.test"]), at(0))
    await store.accept(new("e2", remote=["y@c.test"]), at(60))
    await store.accept(new("e3", remote=["z@b.test"]), at(120))

    assert await store.lease_due(at(-1), lease_until=at(600), limit=10) == []
    assert await store.lease_due(at(200), lease_until=at(600), limit=0) == []

    only_b = await store.lease_due(at(90), lease_until=at(600), limit=10, domain="b.test")
    assert [(q.id, q.recipient, q.domain) for q in only_b] == [("e1", "x@b.test", "b.test")]
    entry = only_b[0]
    assert (entry.origin, entry.sender, entry.attempts) == (HERE, f"alice@{HERE}", 0)
    assert (entry.next_attempt, entry.code, entry.reason) == (at(0), None, None)
    assert entry.expires == at(0) + timedelta(days=2)
    assert env_mod.decode(jws.parse_compact(entry.token).payload).to == ["x@b.test"]

    # Oldest first, up to the limit; e1 is leased and stays invisible.
    [oldest] = await store.lease_due(at(200), lease_until=at(600), limit=1)
    assert oldest.id == "e2"
    [last] = await store.lease_due(at(200), lease_until=at(600), limit=10)
    assert last.id == "e3"
    assert await store.lease_due(at(300), lease_until=at(900), limit=10) == []
    assert len(await store.list_queue()) == 3  # leased rows are still queued


async def test_leased_row_is_not_leased_again_until_the_lease_lapses(store: Store) -> None:
    await store.accept(new("e1", remote=["x@b.test"]), T0)
    assert len(await store.lease_due(T0, lease_until=at(60), limit=10)) == 1
    assert await store.lease_due(at(30), lease_until=at(90), limit=10) == []
    assert await store.lease_due(at(59.999), lease_until=at(90), limit=10) == []
    again = await store.lease_due(at(60), lease_until=at(120), limit=10)
    assert [q.id for q in again] == ["e1"]

    # Two workers racing for the same row: exactly one gets it.
    racing = await asyncio.gather(
        *(store.lease_due(at(200), lease_until=at(300), limit=10) for _ in range(5))
    )
    assert sorted(len(r) for r in racing) == [0, 0, 0, 0, 1]


async def test_settle_sent_deferred_and_bounced_with_dsn(store: Store) -> None:
    await add_agent(store, "alice")
    await store.accept(new("e1", remote=["x@b.test", "y@c.test", "z@d.test"]), T0)
    assert len(await store.lease_due(T0, lease_until=at(60), limit=10)) == 3

    dsn = new(
        "dsn1",
        sender=f"mailer-daemon@{HERE}",
        local=["alice"],
        kind="dsn",
        via="relay",
        created=at(5),
    )
    outcomes = [
        sent("e1", "x@b.test"),
        Outcome(HERE, "e1", "y@c.test", "queued", "4.4.1", "no answer", "relay.c.test", at(600)),
        Outcome(HERE, "e1", "z@d.test", "bounced", "5.1.1", "unknown recipient", "relay.d.test"),
    ]
    async with store.notifier.listen(inbox_channel("alice")) as woken:
        await store.settle(outcomes, [dsn], at(5))
        assert await woken.wait(5)

    status = await store.message_status(HERE, "e1")
    assert status is not None
    rows = {r.address: (r.state, r.code, r.attempts, r.next_attempt) for r in status.recipients}
    assert rows == {
        "x@b.test": ("sent", "2.0.0", 1, None),
        "y@c.test": ("queued", "4.4.1", 1, at(600)),
        "z@d.test": ("bounced", "5.1.1", 1, None),
    }
    assert [e.event for e in status.events[3:]] == ["sent", "deferred", "bounced"]
    assert [i.id for i in await store.inbox("alice", limit=10)] == ["dsn1"]

    # The deferred row is queued again, its lease released, due at its next attempt.
    [queued] = await store.list_queue()
    assert (queued.recipient, queued.attempts, queued.code) == ("y@c.test", 1, "4.4.1")
    assert await store.next_due() == at(600)
    assert await store.lease_due(at(599), lease_until=at(700), limit=10) == []
    assert [q.recipient for q in await store.lease_due(at(600), lease_until=at(700), limit=10)] == [
        "y@c.test"
    ]

    # An expiry is not an attempt; a row that already left the queue is left alone.
    expired = Outcome(HERE, "e1", "y@c.test", "bounced", "5.4.7", "expired", None, event="expired")
    await store.settle([expired, sent("e1", "x@b.test")], [], at(700))
    status = await store.message_status(HERE, "e1")
    assert status is not None
    final = {r.address: (r.state, r.code, r.attempts) for r in status.recipients}
    assert final["y@c.test"] == ("bounced", "5.4.7", 1)
    assert final["x@b.test"] == ("sent", "2.0.0", 1)
    assert status.events[-1].event == "expired"
    assert await store.list_queue() == []
    assert await store.next_due() is None


async def test_settle_and_its_dsn_commit_together(store: Store) -> None:
    """A DSN that cannot be stored (its local recipient is gone) takes the bounce with it."""
    await store.accept(new("e1", remote=["z@d.test"]), T0)
    await store.lease_due(T0, lease_until=at(60), limit=10)
    bounce = Outcome(HERE, "e1", "z@d.test", "bounced", "5.1.1", "unknown", "relay.d.test")
    dsn = new("dsn1", sender=f"mailer-daemon@{HERE}", local=["ghost"], kind="dsn", via="relay")
    with pytest.raises(UnknownRecipient):
        await store.settle([bounce], [dsn], at(5))
    [still] = await store.list_queue()
    assert (still.recipient, still.attempts) == ("z@d.test", 0)
    assert await store.message_status(HERE, "dsn1") is None


async def test_a_recipient_held_by_its_accept_waits_for_the_hold(store: Store) -> None:
    """SPEC.md §9.3: a remote recipient accepted while its destination is down is queued held
    by its accept — due at the hold's end with its code and reason, not an attempt, with its
    ``held`` event after the ``accepted`` one — while the envelope's other destination is due
    at once; a flush (the breaker's release, ``synq queue flush``) makes it due."""
    until = at(600)
    hold = Hold(until, "4.4.1", "b.test is down; held until its next probe")
    item = replace(new("e1", remote=["x@b.test", "y@c.test"]), holds={"b.test": hold})
    [result] = await store.accept_many([item], T0)
    assert not result.duplicate
    queue = {q.recipient: q for q in await store.list_queue()}
    held, other = queue["x@b.test"], queue["y@c.test"]
    assert (held.next_attempt, held.code, held.reason, held.attempts) == (
        until,
        hold.code,
        hold.reason,
        0,
    )
    assert (other.next_attempt, other.code) == (T0, None)
    assert [q.recipient for q in await store.lease_due(at(1), lease_until=at(60), limit=10)] == [
        "y@c.test"
    ]
    assert await store.lease_due(at(2), lease_until=at(60), limit=10) == []
    await store.settle([sent("e1", "y@c.test")], [], at(2))
    assert await store.next_due() == until
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert [(e.recipient, e.event, e.code, e.reason, e.at) for e in status.events] == [
        ("x@b.test", "accepted", None, None, T0),
        ("y@c.test", "accepted", None, None, T0),
        ("x@b.test", "held", hold.code, hold.reason, T0),
        ("y@c.test", "sent", "2.0.0", "accepted", at(2)),
    ]
    # A replay changes nothing: not the row, not its events.
    [again] = await store.accept_many([replace(item, holds={})], at(3))
    assert again.duplicate
    assert (await store.list_queue("b.test"))[0].next_attempt == until
    replayed = await store.message_status(HERE, "e1")
    assert replayed is not None
    assert replayed.events == status.events
    # Due at the hold's end...
    [leased] = await store.lease_due(until, lease_until=until + timedelta(seconds=60), limit=10)
    assert leased.recipient == "x@b.test"
    await store.settle(
        [Outcome(HERE, "e1", "x@b.test", "queued", "4.4.1", "no answer", None, at(900))],
        [],
        until,
    )
    # ...or at once when released, as the first success after the outage releases it.
    await store.accept_many([replace(new("e2", remote=["z@b.test"]), holds={"b.test": hold})], T0)
    async with store.notifier.listen(QUEUE_CHANNEL) as woken:
        assert await store.flush(at(5), domain="b.test") == 2
        assert await woken.wait(5)
    due = sorted(q.recipient for q in await store.lease_due(at(5), lease_until=at(60), limit=10))
    assert due == ["x@b.test", "z@b.test"]


async def test_recent_envelopes_newest_first_and_matching(store: Store) -> None:
    """The console's list and search (SPEC.md §14.2): newest first, each with its recipients'
    states; a match on the id, the thread, the sender or any recipient, exactly."""
    await add_agent(store, "bob")
    assert await store.recent_envelopes(10) == []
    await store.accept(new("e1", local=["bob"], thread="t1"), T0)
    await store.accept(new("e2", remote=["x@b.test", "y@c.test"]), at(1))
    await store.accept(new("e3", local=["bob"], sender="zed@b.test"), at(2))
    recent = await store.recent_envelopes(10)
    assert [e.id for e in recent] == ["e3", "e2", "e1"]
    assert [(r.address, r.state, r.next_attempt) for r in recent[1].recipients] == [
        ("x@b.test", "queued", at(1)),
        ("y@c.test", "queued", at(1)),
    ]
    assert [(r.address, r.state) for r in recent[2].recipients] == [(f"bob@{HERE}", "delivered")]
    assert (recent[2].thread, recent[2].accepted, recent[2].kind) == ("t1", T0, "message")
    assert [e.id for e in await store.recent_envelopes(2)] == ["e3", "e2"]
    for match, ids in [
        ("e2", ["e2"]),
        ("t1", ["e1"]),
        ("zed@b.test", ["e3"]),
        ("y@c.test", ["e2"]),
        (f"bob@{HERE}", ["e3", "e1"]),
        ("bob", []),  # exact, not a substring
    ]:
        assert [e.id for e in await store.recent_envelopes(10, match)] == ids, match


async def test_next_due_list_queue_flush_and_delete(store: Store) -> None:
    assert await store.next_due() is None
    assert await store.list_queue() == []
    await store.accept(new("e1", remote=["x@b.test", "y@c.test"]), T0)
    await store.accept(new("e2", remote=["w@b.test"]), at(10))
    await store.lease_due(T0, lease_until=at(60), limit=10)
    await store.settle(
        [
            Outcome(HERE, "e1", r, "queued", "4.4.1", "no answer", None, at(3600))
            for r in ("x@b.test", "y@c.test")
        ],
        [],
        at(1),
    )
    assert await store.next_due() == at(10)
    assert [(q.id, q.recipient) for q in await store.list_queue()] == [
        ("e2", "w@b.test"),
        ("e1", "x@b.test"),
        ("e1", "y@c.test"),
    ]
    assert [q.recipient for q in await store.list_queue("b.test")] == ["w@b.test", "x@b.test"]
    assert await store.list_queue("nowhere.test") == []
    assert await store.queue_depth() == 3

    async with store.notifier.listen(QUEUE_CHANNEL) as woken:
        assert await store.flush(at(20), domain="b.test") == 2
        assert await woken.wait(5)
    due = {q.recipient: q.next_attempt for q in await store.list_queue()}
    assert due == {"w@b.test": at(10), "x@b.test": at(20), "y@c.test": at(3600)}
    assert await store.flush(at(30), domain="nowhere.test") == 0

    assert await store.flush(at(40), id="e1") == 2
    assert await store.next_due() == at(10)
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert [e.event for e in status.events].count("flushed") == 3

    assert await store.delete_queued(at(50), id="e1") == 2
    assert [q.id for q in await store.list_queue()] == ["e2"]
    assert await store.delete_queued(at(50), id="e1") == 0
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert {(r.state, r.code) for r in status.recipients} == {("bounced", "5.0.0")}
    assert [e.event for e in status.events][-2:] == ["deleted", "deleted"]
    # A worker that still held a lease cannot resurrect a deleted row.
    await store.settle([sent("e1", "x@b.test")], [], at(60))
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert {r.state for r in status.recipients} == {"bounced"}

    assert await store.delete_queued(at(70), domain="b.test") == 1
    assert await store.list_queue() == []
    assert await store.queue_depth() == 0
    assert await store.next_due() is None


async def test_queue_summary_counts_by_destination_and_names_recent_failures(
    store: Store,
) -> None:
    """The console's queue (SPEC.md §14.2): each destination counted, its oldest row and next
    attempt, its distinct recent failures latest first; the first rows as list_queue orders
    them; the deepest destinations when they are more than asked for."""
    empty = await store.queue_summary(10, 10)
    assert (empty.depth, empty.destinations, empty.first) == (0, [], [])

    await add_agent(store, "echo", "a2a", "http://127.0.0.1:9/a2a")
    await store.accept(new("e1", remote=["x@b.test", "y@c.test"]), T0)
    await store.accept(new("e2", remote=["w@b.test"]), at(10))
    await store.accept(new("e3", local=["echo"]), at(20))
    await store.lease_due(at(20), lease_until=at(60), limit=10)
    await store.settle(
        [
            Outcome(HERE, "e1", "x@b.test", "queued", "4.4.1", "no answer", None, at(3600)),
            Outcome(HERE, "e1", "y@c.test", "queued", "4.4.1", "no answer", None, at(3600)),
            Outcome(HERE, "e2", "w@b.test", "queued", "4.7.0", "TLS failed", None, at(7200)),
        ],
        [],
        at(21),
    )
    [row] = await store.lease_deliveries(at(20), lease_until=at(60), limit=10)
    down = DeliveryOutcome("echo", row.seq, "queued", "4.4.1", "agent down", None, at(30))
    await store.settle_deliveries([down], [], at(22))

    queue = await store.queue_summary(2, 10)
    assert queue.depth == await store.queue_depth() == 4
    listed = await store.list_queue()
    assert [(e.id, e.recipient) for e in queue.first] == [(e.id, e.recipient) for e in listed[:2]]
    by_domain = {d.domain: d for d in queue.destinations}
    assert queue.destinations[0].domain == "b.test"  # deepest first
    b, c, echo = by_domain["b.test"], by_domain["c.test"], by_domain["local:echo"]
    assert (b.depth, b.next_attempt) == (2, at(3600))
    assert b.oldest == min(e.accepted or e.next_attempt for e in await store.list_queue("b.test"))
    # The latest-due row failed last: its failure leads.
    assert b.failures == (("4.7.0", "TLS failed"), ("4.4.1", "no answer"))
    assert (c.depth, c.next_attempt, c.failures) == (1, at(3600), (("4.4.1", "no answer"),))
    assert (echo.depth, echo.next_attempt, echo.failures) == (1, at(30), (("4.4.1", "agent down"),))
    assert echo.oldest == (await store.list_queue("local:echo"))[0].accepted

    [deepest] = (await store.queue_summary(1, 1)).destinations
    assert (deepest.domain, deepest.depth) == ("b.test", 2)

    # A row not yet tried names no failure.
    await store.accept(new("e4", remote=["v@d.test"]), at(40))
    fresh = {d.domain: d for d in (await store.queue_summary(10, 10)).destinations}
    assert (fresh["d.test"].depth, fresh["d.test"].failures) == (1, ())


async def test_iter_queue_pages_through_rows_due_at_one_instant(store: Store) -> None:
    """``synq queue list`` reads the queue a page at a time (Store.iter_queue): pages of any
    size give the rows in list order — next attempt, then custody order, the federation queue
    before a local hand-over due at the same instant — also when a flush made them all due at
    one instant, the case a page that starts after a row's (time, key) must seek through."""
    await add_agent(store, "echo", "a2a", "http://127.0.0.1:9/a2a")
    await store.accept(new("e1", remote=["x@b.test", "y@c.test"]), T0)
    await store.accept(new("e2", remote=["w@b.test"]), at(10))
    await store.accept(new("e3", local=["echo"]), at(5))
    await store.accept(new("e4", remote=["v@b.test"]), at(20))
    # Every row deferred to an hour on, then flushed: all due at one instant.
    await store.lease_due(at(30), lease_until=at(60), limit=10)
    later = [("e1", "x@b.test"), ("e1", "y@c.test"), ("e2", "w@b.test"), ("e4", "v@b.test")]
    await store.settle(
        [Outcome(HERE, i, r, "queued", "4.4.1", "no answer", None, at(3600)) for i, r in later],
        [],
        at(31),
    )
    [row] = await store.lease_deliveries(at(30), lease_until=at(60), limit=10)
    down = DeliveryOutcome("echo", row.seq, "queued", "4.4.1", "agent down", None, at(3600))
    await store.settle_deliveries([down], [], at(31))
    assert await store.flush(at(40)) == 5
    assert {e.next_attempt for e in await store.list_queue()} == {at(40)}
    # And one deferred again: last.
    await store.lease_due(at(40), lease_until=at(60), limit=10)
    deferred = Outcome(HERE, "e2", "w@b.test", "queued", "4.4.1", "no answer", None, at(3600))
    await store.settle([deferred], [], at(41))

    async def listed(domain: str | None, page: int) -> list[tuple[str, str]]:
        return [(e.id, e.recipient) async for e in store.iter_queue(domain, page)]

    everything = [
        ("e1", "x@b.test"),
        ("e1", "y@c.test"),
        ("e4", "v@b.test"),
        ("e3", f"echo@{HERE}"),
        ("e2", "w@b.test"),
    ]
    for page in (1, 2, 1000):
        assert await listed(None, page) == everything, page
        assert await listed("b.test", page) == [
            ("e1", "x@b.test"),
            ("e4", "v@b.test"),
            ("e2", "w@b.test"),
        ]
        assert await listed("local:echo", page) == [("e3", f"echo@{HERE}")]
        assert await listed("nowhere.test", page) == []
    assert [(e.id, e.recipient) for e in await store.list_queue()] == everything


# local deliveries -----------------------------------------------------------------------------


async def test_adapter_backed_agents_get_delivery_rows(store: Store) -> None:
    await add_agent(store, "echo", "a2a", "http://127.0.0.1:9/a2a")
    await add_agent(store, "bob")
    async with store.notifier.listen(DELIVERY_CHANNEL) as woken:
        await store.accept(new("e1", local=["echo", "bob"]), T0)
        assert await woken.wait(5)
    assert await store.next_delivery_due() == T0
    # Only the A2A agent's row is handed over; bob reads his inbox himself.
    [row] = await store.lease_deliveries(T0, lease_until=at(60), limit=10)
    assert (row.agent, row.origin, row.id, row.attempts, row.code) == ("echo", HERE, "e1", 0, None)
    assert await store.lease_deliveries(at(1), lease_until=at(60), limit=10) == []

    down = DeliveryOutcome("echo", row.seq, "queued", "4.4.1", "agent down", None, at(30))
    await store.settle_deliveries([down], [], at(2))
    assert await store.next_delivery_due() == at(30)
    assert await store.lease_deliveries(at(29), lease_until=at(90), limit=10) == []
    [again] = await store.lease_deliveries(at(30), lease_until=at(90), limit=10)
    assert (again.seq, again.attempts, again.code) == (row.seq, 1, "4.4.1")

    taken = DeliveryOutcome("echo", again.seq, "delivered", "2.0.0", "taken", "a2a")
    await store.settle_deliveries([taken], [], at(31))
    assert await store.next_delivery_due() is None
    assert await store.inbox("echo", limit=10) == []  # handed over means acked
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["e1"]
    status = await store.message_status(HERE, "e1")
    assert status is not None
    echo_events = [e.event for e in status.events if e.recipient == f"echo@{HERE}"]
    assert echo_events == ["delivered", "deferred", "delivered"]


async def test_queue_commands_change_a_large_queue_one_chunk_at_a_time(store: Store) -> None:
    # A partner's backlog is released (and an operator's delete runs) a chunk per write, so no
    # write holds the lock for the whole queue; the outcome is the one of a single statement.
    assert isinstance(store, SqlStore)
    store.queue_chunk = 3
    items = [new(f"c{n}", remote=["x@b.test", "y@c.test"]) for n in range(8)]
    await store.accept_many(items, T0)
    assert len(await store.lease_due(T0, lease_until=at(60), limit=100)) == 16
    await store.settle(
        [
            Outcome(HERE, i.id, r, "queued", "4.4.1", "down", None, at(600))
            for i in items
            for r in ("x@b.test", "y@c.test")
        ],
        [],
        at(1),
    )
    async with store.notifier.listen(QUEUE_CHANNEL) as woken:
        assert await store.flush(at(10), domain="b.test") == 8
        assert await woken.wait(5)
    due = {(e.id, e.recipient): e.next_attempt for e in await store.list_queue()}
    assert due == {
        **{(i.id, "x@b.test"): at(10) for i in items},
        **{(i.id, "y@c.test"): at(600) for i in items},
    }
    status = await store.message_status(HERE, "c7")
    assert status is not None
    assert [e.event for e in status.events if e.recipient == "x@b.test"][-1] == "flushed"
    assert "flushed" not in [e.event for e in status.events if e.recipient == "y@c.test"]
    assert await store.delete_queued(at(20)) == 16
    assert await store.list_queue() == []
    assert await store.delete_queued(at(30)) == 0


async def test_a_local_delivery_waiting_for_its_agent_is_queued_listed_and_flushed(
    store: Store,
) -> None:
    """SPEC.md §9.5, §9.6: until the agent takes it, a local adapter-backed recipient is
    ``queued`` with its deferral, is in the queue as ``local:<agent>``, and flush acts on it."""
    await add_agent(store, "tools", "mcp", "stdio:true")
    await add_agent(store, "bob")
    await store.accept(new("e1", local=["tools", "bob"], remote=["x@b.test"]), T0)

    def states(status: MessageStatus | None) -> dict[str, tuple[Any, ...]]:
        assert status is not None
        return {
            r.address: (r.state, r.code, r.reason, r.attempts, r.next_attempt)
            for r in status.recipients
        }

    before = states(await store.message_status(HERE, "e1"))
    assert before[f"tools@{HERE}"] == ("queued", None, None, 0, T0)
    assert before[f"bob@{HERE}"][0] == "delivered"
    queue = await store.list_queue()
    assert [(q.id, q.recipient, q.domain) for q in queue] == [
        ("e1", "x@b.test", "b.test"),
        ("e1", f"tools@{HERE}", "local:tools"),
    ]
    assert await store.list_queue("b.test") == [queue[0]]
    assert await store.list_queue("local:tools") == [queue[1]]
    assert await store.list_queue("local:bob") == []
    assert await store.queue_depth() == 2

    [row] = await store.lease_deliveries(T0, lease_until=at(60), limit=10)
    down = DeliveryOutcome("tools", row.seq, "queued", "4.4.1", "agent down", None, at(300))
    await store.settle_deliveries([down], [], at(2))
    after = states(await store.message_status(HERE, "e1"))
    assert after[f"tools@{HERE}"] == ("queued", "4.4.1", "agent down", 1, at(300))
    [local] = await store.list_queue("local:tools")
    assert (local.attempts, local.code, local.next_attempt) == (1, "4.4.1", at(300))
    assert local.token == queue[1].token

    # A partner's flush leaves the local delivery alone; the agent's, or the message's, not.
    assert await store.flush(at(3), domain="b.test") == 1
    assert (await store.list_queue("local:tools"))[0].next_attempt == at(300)
    async with store.notifier.listen(DELIVERY_CHANNEL) as woken:
        assert await store.flush(at(4), domain="local:tools") == 1
        assert await woken.wait(5)
    assert await store.next_delivery_due() == at(4)
    assert await store.flush(at(5), id="e1") == 2  # the partner's row and the agent's
    assert await store.flush(at(6)) == 2
    assert await store.flush(at(7), domain="local:bob") == 0
    status = await store.message_status(HERE, "e1")
    assert status is not None
    flushed = [e.recipient for e in status.events if e.event == "flushed"]
    assert flushed.count(f"tools@{HERE}") == 3

    [again] = await store.lease_deliveries(at(8), lease_until=at(60), limit=10)
    taken = DeliveryOutcome("tools", again.seq, "delivered", "2.0.0", "taken", "stdio:true")
    await store.settle_deliveries([taken], [], at(9))
    done = states(await store.message_status(HERE, "e1"))
    assert done[f"tools@{HERE}"][0] == "delivered"
    assert [q.domain for q in await store.list_queue()] == ["b.test"]


async def test_deleting_a_local_delivery_bounces_it_without_a_dsn_and_empties_the_inbox(
    store: Store,
) -> None:
    await add_agent(store, "tools", "mcp", "stdio:true")
    await add_agent(store, "echo", "a2a", "http://127.0.0.1:9/a2a")
    await store.accept(new("e1", local=["tools", "echo"], remote=["x@b.test"]), T0)
    await store.accept(new("e2", local=["tools"]), T0)
    # One agent's waiting hand-overs: nothing of the partner's, nothing of the other agent's.
    assert await store.delete_queued(at(1), domain="local:tools") == 2
    assert [(q.id, q.domain) for q in await store.list_queue()] == [
        ("e1", "b.test"),
        ("e1", "local:echo"),
    ]
    assert await store.inbox("tools", limit=10) == []
    assert (await store.mailbox_usage(["tools"]))["tools"].unacked == 0
    status = await store.message_status(HERE, "e2")
    assert status is not None
    [tools] = status.recipients
    assert (tools.state, tools.code) == ("bounced", "5.0.0")
    assert [e.event for e in status.events if e.recipient == f"tools@{HERE}"] == [
        "delivered",
        "deleted",
    ]
    assert await store.lease_deliveries(at(2), lease_until=at(60), limit=10) != []
    # By message id: the partner's row and the agent's alike.
    assert await store.delete_queued(at(3), id="e1") == 2
    assert await store.list_queue() == []


# notifications --------------------------------------------------------------------------------


async def test_wake_ups_come_after_the_commit(store: Store) -> None:
    await add_agent(store, "bob")
    seen: list[list[str]] = []

    async def long_poll() -> None:
        async with store.notifier.listen(inbox_channel("bob")) as woken:
            ready.set()
            assert await woken.wait(5)
            # Woken means committed: the row must be readable right now.
            seen.append([i.id for i in await store.inbox("bob", limit=10)])

    ready = asyncio.Event()
    poller = asyncio.create_task(long_poll())
    await ready.wait()
    async with store.notifier.listen(QUEUE_CHANNEL) as queue_woken:
        await store.accept(new("e1", local=["bob"], remote=["x@b.test"]), T0)
        assert await queue_woken.wait(5)
    await poller
    assert seen == [["e1"]]


async def test_replays_and_other_agents_wake_nobody(store: Store) -> None:
    await add_agent(store, "bob")
    await add_agent(store, "carol")
    await store.accept(new("e1", local=["bob"], remote=["x@b.test"]), T0)
    async with (
        store.notifier.listen(inbox_channel("bob")) as bob,
        store.notifier.listen(inbox_channel("carol")) as carol,
        store.notifier.listen(QUEUE_CHANNEL) as queue,
    ):
        await store.accept(new("e1", local=["bob"], remote=["x@b.test"]), at(1))
        # wait(0) returns at once: True only if the wake-up already happened.
        assert not await bob.wait(0)
        assert not await queue.wait(0)
        await store.accept(new("e2", local=["bob"]), at(2))
        assert await bob.wait(0)
        assert not await carol.wait(0)
        assert not await queue.wait(0)


async def test_a_commit_by_another_process_wakes_listeners(store_url: str) -> None:
    """``synq send`` writes from another process while ``synq serve`` waits on a long poll."""
    serving = await connect(store_url)
    try:
        await add_agent(serving, "bob")
        cli = await connect(store_url)
        try:
            async with serving.notifier.listen(inbox_channel("bob")) as woken:
                await cli.accept(new("e1", local=["bob"]), T0)
                assert await woken.wait(10)
        finally:
            await cli.close()
        assert [i.id for i in await serving.inbox("bob", limit=10)] == ["e1"]
    finally:
        await serving.close()


# group commit ---------------------------------------------------------------------------------


async def test_a_failing_operation_does_not_fail_the_others_in_its_group(store: Store) -> None:
    await add_agent(store, "bob")
    results = await asyncio.gather(
        store.accept(new("e1", local=["bob"]), T0),
        store.accept(new("e2", local=["ghost"]), T0),  # removed after the caller's check
        store.create_agent("bob", "inbox", hash_token("again"), None, T0),
        store.accept(new("e3", local=["bob"]), T0),
        store.ack("bob", "e1", at(1)),
        return_exceptions=True,
    )
    ok1, ghost, taken, ok3, acked = results
    assert not isinstance(ok1, BaseException)
    assert not ok1.duplicate
    assert isinstance(ghost, UnknownRecipient)
    assert "ghost" in ghost.message
    assert isinstance(taken, Conflict)
    assert not isinstance(ok3, BaseException)
    assert not ok3.duplicate
    assert acked is True  # sees e1, written earlier in the same group
    assert [i.id for i in await store.inbox("bob", limit=10, include_acked=True)] == ["e1", "e3"]
    assert await store.message_status(HERE, "e2") is None  # rolled back as a whole


async def test_the_way_out_runs_ahead_of_the_accepts_that_wait_before_it(store: Store) -> None:
    # Eight batched submissions queue, then the sender's lease: the lease commits first (it
    # sees only what was there before), so a flood of submissions cannot hold delivery back.
    await store.accept(new("old", remote=["x@b.test"]), T0)
    floods = [[new(f"f{i}-{n:03d}", remote=["x@b.test"]) for n in range(100)] for i in range(8)]
    *accepted, leased = await asyncio.gather(
        *(store.accept_many(flood, T0) for flood in floods),
        store.lease_due(at(1), lease_until=at(60), limit=10_000),
    )
    assert [e.id for e in leased] == ["old"]
    assert [len(results) for results in accepted] == [100] * 8
    assert not any(r.duplicate for results in accepted for r in results)
    later = await store.lease_due(at(2), lease_until=at(60), limit=10_000)
    assert sorted(e.id for e in later) == sorted(i.id for flood in floods for i in flood)


async def test_concurrent_accepts_all_land_and_survive_reopening(store_url: str) -> None:
    store = await connect(store_url)
    try:
        await add_agent(store, "bob")
        items = [new(f"m{n:03d}", local=["bob"], remote=["x@b.test"]) for n in range(200)]
        async with store.notifier.listen(inbox_channel("bob")) as woken:
            results = await asyncio.gather(*(store.accept(i, T0) for i in items))
            assert await woken.wait(5)
        assert [r.id for r in results] == [i.id for i in items]
        assert not any(r.duplicate for r in results)
    finally:
        await store.close()

    reopened = await connect(store_url)
    try:
        inbox = await reopened.inbox("bob", limit=500)
        assert sorted(i.id for i in inbox) == [i.id for i in items]
        assert len(await reopened.list_queue("b.test")) == 200
        status = await reopened.message_status(HERE, "m199")
        assert status is not None
        assert {r.address for r in status.recipients} == {f"bob@{HERE}", "x@b.test"}
    finally:
        await reopened.close()


async def test_reopening_keeps_everything(store_url: str) -> None:
    store = await connect(store_url)
    try:
        bob = await add_agent(store, "bob")
        await store.accept(new("e1", local=["bob"], remote=["x@b.test"], thread="t"), T0)
        await store.ack("bob", "e1", at(1))
        leased = await store.lease_due(T0, lease_until=at(60), limit=10)
    finally:
        await store.close()
    for _ in range(2):  # opening an up-to-date store applies nothing and loses nothing
        again = await connect(store_url)
        try:
            assert await again.get_agent("bob") == bob
            assert await again.agent_for_token(hash_token("token-bob")) == bob
            [row] = await again.inbox("bob", limit=10, include_acked=True, thread="t")
            assert row.acked_at == at(1)
            assert await again.list_queue() == leased
            # The lease is durable too.
            assert await again.lease_due(at(30), lease_until=at(90), limit=10) == []
        finally:
            await again.close()


async def test_release_leases_frees_only_a_single_process_stores_leases(store: Store) -> None:
    """At relay start: a store one process owns releases every lease (their holder is gone); a
    store shared by processes releases none (the live ones keep theirs)."""
    await store.accept(new("e1", remote=["x@b.test"]), T0)
    await add_agent(store, "echo", "a2a", "http://echo.test/")
    await store.accept(new("e2", local=["echo"]), T0)
    assert len(await store.lease_due(T0, lease_until=at(60), limit=10)) == 1
    assert len(await store.lease_deliveries(T0, lease_until=at(60), limit=10)) == 1
    released = await store.release_leases()
    queue = await store.lease_due(at(1), lease_until=at(60), limit=10)
    deliveries = await store.lease_deliveries(at(1), lease_until=at(60), limit=10)
    if store.shared_by_processes:
        assert (released, queue, deliveries) == (0, [], [])
    else:
        assert released == 2
        assert ([q.id for q in queue], [d.id for d in deliveries]) == (["e1"], ["e2"])


async def test_schema_version_is_reported_and_kept(store_url: str) -> None:
    first = await connect(store_url)
    version = first.schema_version
    await first.close()
    again = await connect(store_url)
    try:
        assert schema_version(again) == again.schema_version == version >= 3
    finally:
        await again.close()


async def test_a_closed_store_is_unavailable(store: Store) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_agent("bob")
    with pytest.raises(StoreUnavailable):
        await store.accept(new("e1", local=["bob"]), T0)
    await store.close()  # closing twice is harmless


async def test_open_store_refuses_unknown_schemes() -> None:
    for url in ("mysql://db/x", "relay.db", "file:///tmp/relay.db"):
        with pytest.raises(ConfigError, match="scheme"):
            await open_store(url)
    # A PostgreSQL URL selects the dialect; a server that is not there is unavailable, and the
    # message never repeats the URL's password.
    with pytest.raises(StoreUnavailable) as info:
        await open_store("postgresql://synq:s3cret@127.0.0.1:1/synq")
    assert "s3cret" not in info.value.message
    with pytest.raises(ConfigError, match="unknown PostgreSQL store option"):
        await open_store("postgres://synq:s3cret@127.0.0.1:1/synq", busy_timeout=1)


# SQLite dialect -------------------------------------------------------------------------------
# What the interface cannot show: URL forms, pragmas' consequences, migrations bookkeeping, and
# the translation of driver errors.


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "sqlite:///", "sqlite://", "sqlite:relay.db", "sqlite:///file:x"]
)
async def test_sqlite_url_must_name_a_file(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:///"):
        await open_store(url)


async def test_sqlite_without_a_domain_names_local_recipients_by_agent(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    try:
        await add_agent(store, "bob")
        await store.accept(new("e1", local=["bob"]), T0)
        status = await store.message_status(HERE, "e1")
        assert status is not None
        assert [r.address for r in status.recipients] == ["bob"]
    finally:
        await store.close()
    with pytest.raises(ConfigError, match="domain"):
        await open_store(f"sqlite:///{tmp_path / 'relay.db'}", domain="not a domain")


def _vm_steps(path: Path, sql: str, params: dict[str, Any]) -> tuple[int, list[Any]]:
    """The rows of ``sql`` and how many SQLite virtual-machine steps they took."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        conn.set_progress_handler(count, 1)
        result = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    return steps, result


async def fill_inbox_then_new_thread(url: str, earlier: int, *, acked: bool) -> None:
    """``earlier`` messages for bob, each of a thread of its own (acked or not), then the one
    answer of the thread ``new``: the inbox of a client that has called a tool many times."""
    store = await open_store(url, domain=HERE)
    try:
        await add_agent(store, "bob")
        for n in range(earlier):
            await store.accept(new(f"old{n}", local=["bob"], thread=f"t{n}"), at(n))
            if acked:
                await store.ack("bob", f"old{n}", at(n))
        await store.accept(new("answer", local=["bob"], thread="new"), at(earlier))
    finally:
        await store.close()


THREAD_PAGE = {"agent": "bob", "after": 0, "thread": "new", "limit": 10}


@pytest.mark.parametrize("acked", [True, False])
async def test_sqlite_a_thread_page_does_not_walk_the_agents_inbox(
    tmp_path: Path, acked: bool
) -> None:
    """A caller waiting for the one answer of a new thread (the MCP gateway) reads a page of
    that thread: its cost must not grow with the messages the agent received before."""
    from relay.store.sqlite import _SQL

    statement = _SQL.inbox_all_thread if acked else _SQL.inbox_unacked_thread
    costs = []
    for earlier in (10, 300):
        path = tmp_path / f"relay-{earlier}.db"
        await fill_inbox_then_new_thread(f"sqlite:///{path}", earlier, acked=acked)
        steps, rows = _vm_steps(path, statement, THREAD_PAGE)
        assert [row[2] for row in rows] == ["answer"]
        costs.append(steps)
    assert costs[1] <= costs[0] + 10, costs


async def test_sqlite_relative_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = await open_store("sqlite:///rel.db")
    await relative.close()
    assert (tmp_path / "rel.db").is_file()
    absolute = await open_store(f"sqlite:///{tmp_path / 'abs.db'}")
    await absolute.close()
    assert (tmp_path / "abs.db").is_file()


async def test_sqlite_options_are_checked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    with pytest.raises(ConfigError, match="synchronous"):
        await open_store(url, synchronous="OFF")
    with pytest.raises(ConfigError, match="unknown SQLite store option"):
        await open_store(url, journal="memory")
    with pytest.raises(ConfigError, match="does not exist"):
        await open_store(f"sqlite:///{tmp_path / 'missing' / 'relay.db'}")
    normal = await open_store(url, synchronous="normal")
    await normal.close()


async def test_sqlite_migrations_are_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    for _ in range(3):
        s = await open_store(f"sqlite:///{path}")
        await s.close()
    # Every packaged migration once, in order (numbers from the package: branches add theirs).
    packaged = [(m.version, m.name) for m in SQLiteStore.migrations()]
    assert packaged[:3] == [(1, "init"), (2, "local_deliveries"), (3, "a2a_tasks")]
    with sqlite3.connect(path) as db:
        # Every packaged migration once, in order (whatever their number: branches add some).
        packaged = [(m.version, m.name) for m in SQLiteStore.migrations()]
        assert packaged[:3] == [(1, "init"), (2, "local_deliveries"), (3, "a2a_tasks")]
        assert db.execute("SELECT version, name FROM schema_migrations").fetchall() == packaged
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


async def test_sqlite_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    s = await open_store(f"sqlite:///{path}")
    await s.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    db.close()
    with pytest.raises(ConfigError, match="newer"):
        await open_store(f"sqlite:///{path}")


async def test_sqlite_not_a_database_is_unavailable_without_sql(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(b"this is not an SQLite database file" * 200)
    with pytest.raises(StoreUnavailable) as info:
        await open_store(f"sqlite:///{path}")
    assert "not an SQLite database" in info.value.message
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


async def test_sqlite_another_process_writes_while_the_relay_never_rests(tmp_path: Path) -> None:
    """SQLite queues nobody for its write lock: a second connection (``synq queue flush``
    beside ``synq serve``) gets it only between two of the relay's groups. Four submitters keep
    the relay's writer busy group after group; the other's write still lands, in its wait."""
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    serving = await connect(url)
    other: Store | None = None
    stop = asyncio.Event()
    busy = asyncio.Event()  # set once the writer has committed a few groups

    async def submit(k: int) -> None:
        n = 0
        while not stop.is_set():
            items = [new(f"f{k}-{n}-{i}", remote=["x@b.test"]) for i in range(40)]
            await serving.accept_many(items, T0)
            n += 1
            if n == 3:
                busy.set()

    submitters = [asyncio.create_task(submit(k)) for k in range(4)]
    try:
        await busy.wait()
        other = await connect(url)
        result = await other.accept(new("theirs", remote=["y@c.test"]), T0)
        assert not result.duplicate
        assert not any(t.done() for t in submitters)  # the writer was busy all along
    finally:
        stop.set()
        await asyncio.gather(*submitters)
        if other is not None:
            await other.close()
        await serving.close()


async def test_sqlite_locked_database_fails_the_group_cleanly(tmp_path: Path) -> None:
    """Another process holding the write lock past busy_timeout: every operation of the group
    gets StoreUnavailable (never a driver exception, never SQL), reads go on (WAL), and the
    store recovers when the lock is released."""
    path = tmp_path / "relay.db"
    store = await open_store(f"sqlite:///{path}", busy_timeout=0.05)
    try:
        await add_agent(store, "bob")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            results = await asyncio.gather(
                *(store.accept(new(f"e{n}", local=["bob"]), T0) for n in range(3)),
                return_exceptions=True,
            )
            for error in results:
                assert isinstance(error, StoreUnavailable)
                assert "locked" in error.message
                for word in ("INSERT", "BEGIN", "SELECT", "sqlite3"):
                    assert word not in error.message
            assert await store.get_agent("bob") is not None
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert not (await store.accept(new("e0", local=["bob"]), T0)).duplicate
        assert [i.id for i in await store.inbox("bob", limit=10)] == ["e0"]
    finally:
        await store.close()


async def test_sqlite_a_write_waiting_for_another_process_leaves_the_event_loop_free(
    tmp_path: Path,
) -> None:
    """A group's statements run inline on the event loop; a BEGIN that finds another process's
    write lock waits on the writer's thread instead, so reads and everything else go on, and
    the write lands once the lock is released."""
    path = tmp_path / "relay.db"
    store = await open_store(f"sqlite:///{path}", busy_timeout=30)
    try:
        await add_agent(store, "bob")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            write = asyncio.create_task(store.accept(new("e1", local=["bob"]), T0))
            assert await store.get_agent("bob") is not None
            assert await store.inbox("bob", limit=10) == []
            assert not write.done()
            other.execute("COMMIT")
        finally:
            other.close()
        assert not (await write).duplicate
        assert [i.id for i in await store.inbox("bob", limit=10)] == ["e1"]
    finally:
        await store.close()


async def test_sqlite_the_checkpoint_after_reclaimed_space_leaves_the_next_commit_free(
    tmp_path: Path,
) -> None:
    """Pages given back by incremental vacuum make the writer's next idle pass checkpoint the
    WAL. That pragma answers with a row, which must be read to its end: left unread, the
    writer's connection still had a statement in progress, and the next COMMIT on the writer's
    thread failed ("cannot commit transaction - SQL statements in progress": a 503 to whoever
    sent, after every retention sweep that reclaimed space)."""
    path = tmp_path / "relay.db"
    store = await open_store(f"sqlite:///{path}", domain=HERE)
    try:
        await add_agent(store, "bob")
        other = sqlite3.connect(path, isolation_level=None)
        try:  # free pages in the file, as a purge leaves them
            other.execute(
                "CREATE TABLE junk AS WITH RECURSIVE n(i) AS "
                "(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
                "SELECT randomblob(4096) AS b FROM n"
            )
            other.execute("DROP TABLE junk")
        finally:
            other.close()
        assert await store.reclaim_space(10_000) > 0
        assert isinstance(store, SQLiteStore)
        await store._on_idle()  # the checkpoint the reclaimed pages call for
        # A durable group: its COMMIT runs on the writer's thread, after the checkpoint.
        await store.accept(new("e1", local=["bob"]), T0)
        assert [i.id for i in await store.inbox("bob", limit=10)] == ["e1"]
    finally:
        await store.close()


async def test_sqlite_groups_without_a_sync_commit_inline_a_bounded_number_in_a_row(
    tmp_path: Path,
) -> None:
    """A group of leases commits inline with the automatic checkpoint off (it only appends to
    the WAL); after MAX_INLINE_COMMITS such groups in a row, the next commits on the writer's
    thread with the checkpoint on, so the WAL cannot grow without bound."""
    store = await open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    try:
        assert isinstance(store, SQLiteStore)
        assert store._writer is not None
        conn = store._writer.conn

        def autocheckpoint() -> int:
            return int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

        for _ in range(MAX_INLINE_COMMITS):
            assert await store.lease_due(at(1), lease_until=at(60), limit=10) == []
            assert autocheckpoint() == 0
        assert await store.lease_due(at(1), lease_until=at(60), limit=10) == []
        assert autocheckpoint() == 1000
        assert await store.lease_due(at(1), lease_until=at(60), limit=10) == []
        assert autocheckpoint() == 0
    finally:
        await store.close()


# PostgreSQL dialect ---------------------------------------------------------------------------
# What the interface cannot show: migrations under a lock, leases of a dead process, the
# listener connection coming back, a lost connection, notification payload bounds, and inbox
# order with several writers. Each runs on a fresh database of the session's cluster.


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    return pg.database_url(request)


def sql(url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """One statement on ``url``'s database, beside the store (as an operator's psql would)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _inbox_rows_touched(plan: dict[str, Any]) -> int:
    """Rows of ``inbox`` an EXPLAIN ANALYZE plan node and its children produced or filtered."""
    touched = 0
    if plan.get("Relation Name") == "inbox":
        loops = plan.get("Actual Loops", 1)
        touched += (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * loops
    for child in plan.get("Plans", ()):
        touched += _inbox_rows_touched(child)
    return touched


@pytest.mark.parametrize("acked", [True, False])
async def test_postgres_a_thread_page_does_not_walk_the_agents_inbox(
    pg_url: str, acked: bool
) -> None:
    """As on SQLite: the page of a new thread touches that thread's inbox rows only, however
    many messages the agent has received (with the planner's estimates from an empty table,
    as right after they arrived)."""
    from relay.store.postgres import _SQL

    await fill_inbox_then_new_thread(pg_url, 300, acked=acked)
    statement = _SQL.inbox_all_thread if acked else _SQL.inbox_unacked_thread
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert [row[2] for row in conn.execute(statement, THREAD_PAGE)] == ["answer"]
        [(explained,)] = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, THREAD_PAGE
        ).fetchall()
    assert _inbox_rows_touched(explained[0]["Plan"]) == 1


async def test_postgres_replicas_starting_together_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(connect(pg_url) for _ in range(4)))
    try:
        newest = pg_dialect.PostgresStore.newest_schema_version()
        assert {schema_version(s) for s in stores} == {newest}
        applied = [getattr(s, "applied_migrations", None) for s in stores]
        assert sorted(applied, key=len) == [[], [], [], list(range(1, newest + 1))]
        rows = sql(pg_url, "SELECT version FROM schema_migrations ORDER BY 1")
        assert [r[0] for r in rows] == list(range(1, newest + 1))
    finally:
        for s in stores:
            await s.close()


async def test_postgres_schema_newer_than_the_code_is_refused(pg_url: str) -> None:
    s = await connect(pg_url)
    await s.close()
    sql(pg_url, "INSERT INTO schema_migrations (version, name) VALUES (99, 'future')")
    with pytest.raises(ConfigError, match="newer"):
        await connect(pg_url)


def _backend_gone(pid: int) -> bool:
    rows = pg.current().execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (f"synq/{pid}",)
    )
    return bool(rows[0][0] == 0)


_LEASE_AND_HANG = """
import asyncio, sys
from datetime import datetime, timedelta
from relay.store import open_store
async def main():
    store = await open_store(sys.argv[1], domain="a.test")
    now = datetime.fromisoformat(sys.argv[2])
    rows = await store.lease_due(now, lease_until=now + timedelta(minutes=2), limit=10)
    print(len(rows), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def test_postgres_leases_of_a_killed_process_are_taken_over_at_once(pg_url: str) -> None:
    """A relay process SIGKILLed mid-delivery: its rows are leased again by the next pass of
    another process, not after the two-minute lease."""
    store = await connect(pg_url)
    try:
        await store.accept(new("e1", remote=["x@b.test"]), T0)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _LEASE_AND_HANG, pg_url, T0.isoformat(),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"1"
        # While the other process lives, its lease holds.
        assert await store.lease_due(at(1), lease_until=at(60), limit=10) == []
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        async with asyncio.timeout(10):  # the server notices the closed socket
            while not _backend_gone(proc.pid):  # noqa: ASYNC110
                await asyncio.sleep(0)
        [row] = await store.lease_due(at(2), lease_until=at(60), limit=10)
        assert row.id == "e1"
    finally:
        await store.close()


async def test_postgres_listener_reconnects_and_wakes_everyone(pg_url: str) -> None:
    serving = await connect(pg_url)
    other = await connect(pg_url)
    try:
        await add_agent(serving, "bob")
        instance = serving.instance  # type: ignore[attr-defined]
        async with serving.notifier.listen(inbox_channel("bob")) as woken:
            killed = pg.current().execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = %s AND objid = %s AND objsubid = 2",
                (pg_dialect.LEASE_LOCK_CLASS, instance),
            )
            assert killed == [(True,)]
            # Nothing was committed: the wake-up says "you may have missed one, look again".
            assert await woken.wait(10)
            # LISTEN is back: another process's commit wakes the long poll again.
            await other.accept(new("e1", local=["bob"]), T0)
            assert await woken.wait(10)
        assert [i.id for i in await serving.inbox("bob", limit=10)] == ["e1"]
    finally:
        await other.close()
        await serving.close()


async def test_postgres_lost_connections_fail_cleanly_then_recover(pg_url: str) -> None:
    store = await connect(pg_url)
    try:
        await add_agent(store, "bob")
        name = pg_url.split("/")[3].split("?")[0]
        pg.current().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        # The group on the dead writer connection fails as a whole, in words, without SQL.
        with pytest.raises(StoreUnavailable) as info:
            await store.accept(new("e0", local=["bob"]), T0)
        for word in ("INSERT", "BEGIN", "SELECT", "psycopg", "postgresql://"):
            assert word not in info.value.message
        # The next group reconnects; a read on a dead pooled connection is retried once.
        assert not (await store.accept(new("e1", local=["bob"]), T0)).duplicate
        assert await store.get_agent("bob") is not None
        assert [i.id for i in await store.inbox("bob", limit=10)] == ["e1"]
    finally:
        await store.close()


def test_postgres_notify_payloads_are_bounded() -> None:
    channels = [inbox_channel("a" * 60 + str(n)) for n in range(400)] + [QUEUE_CHANNEL]
    payloads = pg_dialect._notify_payloads(42, channels)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= pg_dialect.MAX_NOTIFY_PAYLOAD for p in payloads)
    assert all(p.split("\n")[0] == "42" for p in payloads)
    assert sorted(c for p in payloads for c in p.split("\n")[1:]) == sorted(channels)
    # A channel that could never fit becomes "wake everyone".
    [huge] = pg_dialect._notify_payloads(7, ["x" * 9000])
    assert huge == "7\n*"


async def test_postgres_a_commit_waking_many_agents_reaches_another_process(pg_url: str) -> None:
    names = [f"agent-{n:03d}-" + "x" * 50 for n in range(150)]  # > one payload of channels
    serving = await connect(pg_url)
    cli = await connect(pg_url)
    try:
        for name in names:
            await add_agent(serving, name)
        async with contextlib.AsyncExitStack() as stack:
            listeners = [
                await stack.enter_async_context(serving.notifier.listen(inbox_channel(n)))
                for n in names
            ]
            # Local parts are ≤ 64 characters and an envelope names ≤ 100 recipients: two
            # envelopes in one transaction then wake more agents than one payload can name.
            await cli.accept_many([new("e1", local=names[:75]), new("e2", local=names[75:])], T0)
            woken = await asyncio.gather(*(listener.wait(10) for listener in listeners))
        assert all(woken)
    finally:
        await cli.close()
        await serving.close()


async def test_postgres_inbox_numbers_follow_commit_order_across_processes(pg_url: str) -> None:
    """Two processes delivering to one agent while a reader pages with ``after_seq``: a row
    committed late with a lower number would be skipped by the reader for good."""
    first, second = await connect(pg_url), await connect(pg_url)
    try:
        await add_agent(first, "bob")
        total = 300

        async def deliver(store: Store, prefix: str) -> None:
            for start in range(0, total // 2, 10):
                await asyncio.gather(
                    *(
                        store.accept(new(f"{prefix}{n:03d}", local=["bob"]), T0)
                        for n in range(start, start + 10)
                    )
                )

        seen: list[str] = []

        async def read() -> None:
            cursor = 0
            async with first.notifier.listen(inbox_channel("bob")) as woken:
                while len(seen) < total:
                    page = await first.inbox("bob", limit=7, include_acked=True, after_seq=cursor)
                    if not page:
                        await woken.wait(1)
                        continue
                    seen.extend(i.id for i in page)
                    cursor = page[-1].seq

        async with asyncio.timeout(45):
            await asyncio.gather(deliver(first, "a"), deliver(second, "b"), read())
        assert len(seen) == len(set(seen)) == total
    finally:
        await second.close()
        await first.close()


async def test_postgres_url_problems_are_config_errors_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        await open_store("postgresql://synq:s3cret@host/db?nonsense=1")
    assert "s3cret" not in info.value.message
    with pytest.raises(ConfigError, match="synchronous"):
        await open_store("postgresql://synq:s3cret@host/db", synchronous="OFF")


def test_store_exports() -> None:
    import relay.store

    for name in relay.store.__all__:
        assert hasattr(relay.store, name), name
