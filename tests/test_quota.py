"""Mailbox quotas (SPEC.md §9.7): the arithmetic as tables, the store's usage counters and held
mail on every backend, and both paths of mail for a full mailbox through real relays — deferred
with 4.2.2 and retried, never dropped, the sender's status saying why.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.cli import main
from relay.core.envelope import format_timestamp
from relay.core.quota import Quota, Room, full_reason, room
from relay.store.base import (
    DELIVERY_CHANNEL,
    HELD_CHANNEL,
    QUEUE_CHANNEL,
    DeliveryOutcome,
    MailboxUsage,
    NewEnvelope,
    Store,
    inbox_channel,
)
from relay.store.sql import accept
from tests import pg, test_store
from tests.fedenv import World, world
from tests.test_store import HERE, T0, add_agent, at, new

store_url = test_store.store_url
store = test_store.store

FULL = ("4.2.2", "mailbox full")


# the arithmetic -------------------------------------------------------------------------------

ROOMS = [
    # unacked, bytes, quota, room
    (0, 0, Quota(10, 1000), Room(10, 1000)),
    (9, 999, Quota(10, 1000), Room(1, 1)),
    (10, 0, Quota(10, 1000), Room(0, 1000)),
    (0, 1000, Quota(10, 1000), Room(10, 0)),
    (12, 5000, Quota(10, 1000), Room(0, 0)),  # over: never negative
    (12, 5000, Quota(0, 0), Room(None, None)),  # 0: no quota
    (3, 5000, Quota(10, 0), Room(7, None)),
]


@pytest.mark.parametrize(("unacked", "size", "quota", "expected"), ROOMS)
def test_room(unacked: int, size: int, quota: Quota, expected: Room) -> None:
    assert room(unacked, size, quota) == expected
    assert expected.any == (full_reason(unacked, size, quota) is None)


def test_full_reason_names_the_quota_reached() -> None:
    assert full_reason(10, 0, Quota(10, 1000)) == (
        "mailbox full: 10 unacknowledged messages (quota 10); retried until it has room"
    )
    reason = full_reason(1, 1000, Quota(10, 1000))
    assert reason is not None
    assert reason.startswith("mailbox full: 1000 bytes unacknowledged (quota 1000)")


def test_own_quotas_override_the_default_one_by_one() -> None:
    default = Quota(10, 1000)
    assert default.own(None, None) == default
    assert default.own(3, None) == Quota(3, 1000)
    assert default.own(None, 0) == Quota(10, 0)
    with pytest.raises(ValueError, match="never negative"):
        Quota(-1, 0)


def test_the_plan_holds_a_full_mailbox_in_a_queued_row_due_at_expiry() -> None:
    item = NewEnvelope(
        origin=HERE,
        id="e1",
        sender=f"alice@{HERE}",
        token="t",
        created=T0,
        expires=T0 + timedelta(days=2),
        thread=None,
        kind="message",
        local=["bob"],
        remote=[],
        via="api",
        held=[("carol", *FULL)],
    )
    plan = accept.plan([(item, "at")], HERE, lambda d: d.isoformat())
    [rows] = plan.recipients
    assert [r[2:] for r in rows] == [
        # The last member is what the sender asked to be told (None: the default).
        # Then whether its event is implied, set by ``accept.recipient_statements``.
        (f"bob@{HERE}", None, "delivered", False, None, None, None, "at", None, False),
        (
            f"carol@{HERE}",
            HERE,
            "queued",
            False,
            *FULL,
            item.expires.isoformat(),
            "at",
            None,
            False,
        ),
    ]
    out = accept.interpret(plan, [(HERE, "e1")], [(7, HERE, "e1", r[2], False) for r in rows])
    assert out.inbox == [("bob", 7, "at")]
    # Bob's "delivered" is implied by his row; a held row keeps its event (its code).
    assert out.events == [(7, "at", f"carol@{HERE}", "deferred", *FULL, "api")]
    assert out.channels == {inbox_channel("bob")}  # no queue wake-up for a held row


# the store: usage counters --------------------------------------------------------------------


async def usage_by_listing(store: Store, agent: str) -> tuple[int, int]:
    """What the counters must say, recounted from the inbox."""
    items = await store.inbox(agent, limit=500)
    return len(items), sum(len(i.token) for i in items)


async def assert_counted(store: Store, *agents: str) -> None:
    usage = await store.mailbox_usage(agents)
    for agent in agents:
        u = usage.get(agent, MailboxUsage())
        assert (u.unacked, u.bytes) == await usage_by_listing(store, agent), agent


async def test_usage_follows_every_inbox_row_and_ack(store: Store) -> None:
    await add_agent(store, "bob")
    await add_agent(store, "carol")
    await add_agent(store, "mcp", "mcp", "stdio:x")
    assert await store.mailbox_usage(["bob", "nobody"]) == {}
    await store.accept_many(
        [new("e1", local=["bob", "carol"]), new("e2", local=["bob"]), new("e3", local=["mcp"])],
        at(1),
    )
    await store.accept(new("e1", local=["bob", "carol"]), at(2))  # a replay adds nothing
    await assert_counted(store, "bob", "carol", "mcp")
    assert (await store.mailbox_usage(["bob"]))["bob"].unacked == 2

    async with store.notifier.listen(HELD_CHANNEL) as room_made:
        assert await store.ack("bob", "e1", at(3))
        assert await room_made.wait(1)
        assert await store.ack("bob", "e1", at(4))  # again: counted once
        assert not await room_made.wait(0)
    await assert_counted(store, "bob", "carol")
    assert (await store.mailbox_usage(["bob"]))["bob"].unacked == 1

    # An adapter-backed agent's row is acked by the dispatcher's settle.
    [row] = await store.lease_deliveries(at(5), lease_until=at(60), limit=10)
    done = DeliveryOutcome(agent="mcp", seq=row.seq, state="delivered", code="2.1.5", reason="ok")
    await store.settle_deliveries([done], [], at(6))
    await assert_counted(store, "mcp")
    assert (await store.mailbox_usage(["mcp"]))["mcp"].unacked == 0

    # A removed agent takes its counters along; a new one of the name starts empty.
    assert await store.remove_agent("carol")
    await add_agent(store, "carol")
    assert "carol" not in await store.mailbox_usage(["carol"])


async def test_own_quotas_are_kept_per_agent(store: Store) -> None:
    await add_agent(store, "bob")
    assert await store.set_mailbox_quota("nobody", max_unacked=1, max_bytes=None) is False
    assert await store.set_mailbox_quota("bob", max_unacked=1, max_bytes=0)
    assert await store.mailbox_usage(["bob"]) == {"bob": MailboxUsage(0, 0, 1, 0)}
    await store.accept(new("e1", local=["bob"]), at(1))
    usage = (await store.mailbox_usage(["bob"]))["bob"]
    assert (usage.unacked, usage.max_unacked, usage.max_bytes) == (1, 1, 0)
    assert await store.set_mailbox_quota("bob", max_unacked=None, max_bytes=None)
    assert (await store.mailbox_usage(["bob"]))["bob"].max_unacked is None


# the store: held mail -------------------------------------------------------------------------


def held_for(id: str, agent: str, **kwargs: object) -> NewEnvelope:
    return replace(new(id, **kwargs), held=[(agent, *FULL)])  # type: ignore[arg-type]


async def test_held_mail_waits_outside_the_inbox_and_the_federation_queue(store: Store) -> None:
    await add_agent(store, "bob")
    async with store.notifier.listen(QUEUE_CHANNEL) as queue:
        result = await store.accept(held_for("e1", "bob"), at(1))
        assert not result.duplicate
        assert not await queue.wait(0)
    assert await store.inbox("bob", limit=10) == []
    status = await store.message_status(HERE, "e1")
    assert status is not None
    [rec] = status.recipients
    assert (rec.address, rec.state, rec.code, rec.reason) == (f"bob@{HERE}", "queued", *FULL)
    assert rec.next_attempt == status.expires
    assert [(e.event, e.code) for e in status.events] == [("deferred", "4.2.2")]
    # Never leased for federation, never "due" for the sender; listed for the operator.
    far = at(10**7)
    assert await store.lease_due(far, lease_until=far, limit=10) == []
    assert await store.next_due() is None
    assert [(e.id, e.code) for e in await store.list_queue()] == [("e1", "4.2.2")]
    assert await store.held_agents() == {"bob": 1}
    await assert_counted(store, "bob")


async def test_deliver_held_takes_the_oldest_within_the_room(store: Store) -> None:
    await add_agent(store, "bob")
    for n in range(4):
        await store.accept(held_for(f"e{n}", "bob"), at(n))
    size = len(new("e0").token)
    async with (
        store.notifier.listen(inbox_channel("bob")) as woken,
        store.notifier.listen(DELIVERY_CHANNEL) as dispatcher,
    ):
        # Room for 3 messages, but the bytes are still under the quota after the first only:
        # the second takes the mailbox over it, and nothing follows.
        assert await store.deliver_held("bob", at(10), limit=3, max_bytes=size + 1) == 2
        assert await woken.wait(1)
        assert not await dispatcher.wait(0)  # an inbox agent: no delivery row
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["e0", "e1"]
    assert await store.held_agents() == {"bob": 2}
    status = await store.message_status(HERE, "e0")
    assert status is not None
    [rec] = status.recipients
    assert (rec.state, rec.code, rec.next_attempt) == ("delivered", None, None)
    assert [e.event for e in status.events] == ["deferred", "delivered"]
    await assert_counted(store, "bob")
    assert await store.deliver_held("bob", at(11), limit=0, max_bytes=None) == 0
    assert await store.deliver_held("bob", at(11), limit=10, max_bytes=None) == 2
    assert await store.deliver_held("bob", at(11), limit=10, max_bytes=None) == 0
    assert await store.held_agents() == {}


async def test_held_mail_of_an_adapter_backed_agent_goes_to_the_dispatcher(store: Store) -> None:
    await add_agent(store, "mcp", "mcp", "stdio:x")
    await store.accept(held_for("e1", "mcp"), at(1))
    async with store.notifier.listen(DELIVERY_CHANNEL) as dispatcher:
        assert await store.deliver_held("mcp", at(2), limit=10, max_bytes=None) == 1
        assert await dispatcher.wait(1)
    [row] = await store.lease_deliveries(at(3), lease_until=at(60), limit=10)
    assert row.id == "e1"


async def test_expired_held_mail_is_found_for_its_bounce(store: Store) -> None:
    await add_agent(store, "bob")
    await store.accept(held_for("e1", "bob"), at(1))  # expires at T0 + 2 days
    await store.accept(held_for("e2", "bob", created=T0 + timedelta(days=1)), at(2))
    assert await store.expired_held(T0 + timedelta(days=2) - timedelta(seconds=1), 10) == []
    [entry] = await store.expired_held(T0 + timedelta(days=2), 10)
    assert (entry.id, entry.recipient, entry.code) == ("e1", f"bob@{HERE}", "4.2.2")


# both paths through real relays ---------------------------------------------------------------


@pytest.fixture(params=pg.BACKENDS)
async def w(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    urls = pg.store_urls(request, request.param)
    async with world(tmp_path, "acme.test", "globex.test", store_url=urls) as env:
        yield env


async def test_local_mail_for_a_full_mailbox_is_held_then_delivered(w: World) -> None:
    acme = w.orgs["acme.test"]
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    await acme.relay.store.set_mailbox_quota("bob", max_unacked=1, max_bytes=None)
    first = await w.send(acme, alice, {"to": ["bob@acme.test"], "body": "one"})
    second = await w.send(acme, alice, {"to": ["bob@acme.test"], "body": "two"})
    assert second["status"] == "queued"  # the 202 is the same

    status = await w.status(acme, alice, second["id"])
    rec = status["recipients"]["bob@acme.test"]
    assert (rec["state"], rec["code"]) == ("queued", "4.2.2")
    assert rec["reason"].startswith("mailbox full: 1 unacknowledged messages (quota 1)")
    assert [m["id"] for m in await w.inbox(acme, bob)] == [first["id"]]

    held = acme.relay.held_mail
    assert await held.run_once() == (0, 0)  # still full
    async with w.http.post(f"{acme.url}/synq/v1/inbox/{first['id']}/ack", headers=bob.auth) as resp:
        assert resp.status == 200
    assert await held.run_once() == (1, 0)
    assert [m["id"] for m in await w.inbox(acme, bob)] == [second["id"]]
    status = await w.status(acme, alice, second["id"])
    assert status["recipients"]["bob@acme.test"]["state"] == "delivered"
    events = [(e["event"], e.get("code")) for e in status["events"]]
    assert events == [("deferred", "4.2.2"), ("delivered", None)]


async def test_a_batch_to_a_full_mailbox_is_held_and_the_others_delivered(w: World) -> None:
    """The batch route reads the mailboxes once for all its messages (SPEC.md §6.2.1): a full
    one holds its messages, the others are delivered, and every result is the same 202 kind."""
    acme = w.orgs["acme.test"]
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    carol = await acme.agent("carol")
    await acme.relay.store.set_mailbox_quota("bob", max_unacked=1, max_bytes=None)
    first = await w.send(acme, alice, {"to": ["bob@acme.test"], "body": "fills bob"})
    messages = [
        {"to": ["bob@acme.test"], "body": "held"},
        {"to": ["carol@acme.test"], "body": "delivered"},
        {"to": ["bob@acme.test", "carol@acme.test"], "body": "both"},
    ]
    async with w.http.post(
        f"{acme.url}/synq/v1/messages/batch", json={"messages": messages}, headers=alice.auth
    ) as resp:
        assert resp.status == 202
        results = (await resp.json())["results"]
    assert [r["status"] for r in results] == ["queued"] * 3
    ids = [r["id"] for r in results]
    assert [m["id"] for m in await w.inbox(acme, bob)] == [first["id"]]
    assert sorted(m["id"] for m in await w.inbox(acme, carol)) == sorted([ids[1], ids[2]])
    for i in (0, 2):
        rec = (await w.status(acme, alice, ids[i]))["recipients"]["bob@acme.test"]
        assert (rec["state"], rec["code"]) == ("queued", "4.2.2")


async def test_local_mail_held_until_it_expires_bounces_with_a_dsn(w: World) -> None:
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    await acme.agent("bob")
    await acme.relay.store.set_mailbox_quota("bob", max_unacked=1, max_bytes=None)
    await w.send(acme, alice, {"to": ["bob@acme.test"], "body": "one"})
    expires = w.clock.now() + timedelta(minutes=10)
    held = await w.send(
        acme,
        alice,
        {"to": ["bob@acme.test"], "body": "two", "expires": format_timestamp(expires)},
    )
    w.clock.advance(600)
    assert await acme.relay.held_mail.run_once() == (0, 1)
    status = await w.status(acme, alice, held["id"])
    rec = status["recipients"]["bob@acme.test"]
    assert (rec["state"], rec["code"]) == ("bounced", "5.4.7")
    assert "last error: 4.2.2 mailbox full" in rec["reason"]
    [dsn] = await w.inbox(acme, alice)
    assert dsn["kind"] == "dsn"
    assert (dsn["body"]["original_id"], dsn["body"]["status"]) == (held["id"], "5.4.7")


async def test_partner_mail_for_a_full_mailbox_is_deferred_4_2_2_and_retried(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    carol = await globex.agent("carol")
    await globex.relay.store.set_mailbox_quota("bob", max_unacked=1, max_bytes=None)
    first = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "one"})
    assert await acme.relay.sender.run_once() == 1
    both = await w.send(
        acme, alice, {"to": ["bob@globex.test", "carol@globex.test"], "body": "two"}
    )
    assert await acme.relay.sender.run_once() == 2  # rows: one per recipient

    # carol has it; bob's recipient is deferred at acme with globex's 4.2.2 and reason.
    assert [m["id"] for m in await w.inbox(globex, carol)] == [both["id"]]
    assert [m["id"] for m in await w.inbox(globex, bob)] == [first["id"]]
    status = await w.status(acme, alice, both["id"])
    rec = status["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"], rec["attempts"]) == ("queued", "4.2.2", 1)
    assert rec["reason"].startswith("mailbox full")
    assert status["recipients"]["carol@globex.test"]["state"] == "sent"

    # Still full at the retry: deferred again, nothing dropped.
    w.clock.advance(60)
    assert await acme.relay.sender.run_once() == 1
    assert (await w.status(acme, alice, both["id"]))["recipients"]["bob@globex.test"][
        "attempts"
    ] == 2

    # bob reads and acks; the next retry delivers, exactly once.
    async with w.http.post(
        f"{globex.url}/synq/v1/inbox/{first['id']}/ack", headers=bob.auth
    ) as resp:
        assert resp.status == 200
    w.clock.advance(120)
    assert await acme.relay.sender.run_once() == 1
    assert [m["id"] for m in await w.inbox(globex, bob)] == [both["id"]]
    assert [m["id"] for m in await w.inbox(globex, carol)] == [both["id"]]
    rec = (await w.status(acme, alice, both["id"]))["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"]) == ("sent", "2.0.0")


async def test_partner_mail_for_a_single_full_mailbox_is_rejected_4_2_2(w: World) -> None:
    """With no other recipient, the whole envelope is refused 4.2.2: nothing is stored at
    the receiver, and the sender keeps it queued."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    await globex.agent("bob")
    await globex.relay.store.set_mailbox_quota("bob", max_unacked=0, max_bytes=1)
    await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "one"})
    assert await acme.relay.sender.run_once() == 1  # empty mailbox: takes one more
    sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "two"})
    assert await acme.relay.sender.run_once() == 1
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"]) == ("queued", "4.2.2")
    assert rec["reason"].startswith("bob@globex.test: mailbox full: ")
    assert await globex.relay.store.message_status("acme.test", sent["id"]) is None


# the command ----------------------------------------------------------------------------------


def test_synq_agent_set_gives_one_agent_its_own_quotas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def synq(*argv: str) -> tuple[int, Any, str]:
        code = main(["--json", "--config", str(tmp_path / "synq.toml"), *argv])
        captured = capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err

    assert main(["init", "--domain", "acme.test", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert synq("agent", "add", "bob")[0] == 0
    code, shown, _ = synq("agent", "set", "bob", "--max-unacked", "5")
    assert code == 0
    assert shown == {
        "address": "bob@acme.test",
        "max_unacked": 5,
        "max_bytes": 100 * 1024 * 1024,
        "own": {"max_unacked": 5, "max_bytes": None},
    }
    _, shown, _ = synq("agent", "set", "bob", "--max-bytes", "2MB")
    assert (shown["max_unacked"], shown["max_bytes"]) == (5, 2 * 1024 * 1024)
    _, shown, _ = synq("agent", "set", "bob", "--max-unacked", "default", "--max-bytes", "0")
    assert shown["own"] == {"max_unacked": None, "max_bytes": 0}
    assert (shown["max_unacked"], shown["max_bytes"]) == (10_000, 0)
    code, _, err = synq("agent", "set", "ghost", "--max-unacked", "1")
    assert code == 1
    assert "no agent ghost@acme.test" in err
    assert synq("agent", "set", "bob")[0] == 1
