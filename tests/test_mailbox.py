"""The mailbox (relay/delivery/mailbox.py): what a local agent does, on a real store.

Each test runs against a relay on every backend (a SQLite file, a fresh PostgreSQL database
from tests/pg.py) with a pinned clock. No face is involved: these are the operations the API,
the MCP face, the A2A face and the CLI all call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.config import StoreSection
from relay.core.address import Address
from relay.core.cards import inbox_agent_card
from relay.core.clock import FakeClock, SystemClock
from relay.core.draft import Draft
from relay.core.errors import (
    Forbidden,
    InvalidEnvelope,
    NotFound,
    RateLimited,
    SynqError,
    UnknownRecipient,
)
from relay.core.ids import hash_token, new_token
from relay.core.ratelimit import Rate
from relay.delivery import views
from relay.delivery.mailbox import Mailbox
from relay.delivery.router import Submitted
from relay.runtime import Relay
from relay.store.base import inbox_channel
from tests import pg
from tests.conftest import make_config
from tests.helpers import wait_until

ALICE = Address.parse("alice@acme.test")
BOB = Address.parse("bob@acme.test")


@pytest.fixture(params=pg.BACKENDS)
async def relay(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Relay]:
    config = make_config(tmp_path / "acme")
    if request.param == "postgresql":
        config = config.model_copy(update={"store": StoreSection(url=pg.database_url(request))})
    relay = await Relay.open(config, clock=FakeClock(SystemClock().now()))
    try:
        for name in ("alice", "bob", "carol"):
            await relay.store.create_agent(
                name, "inbox", hash_token(new_token()), None, relay.clock.now()
            )
        yield relay
    finally:
        await relay.close()


def note(text: str, to: Address = BOB, **fields: Any) -> Draft:
    return Draft(ALICE, (to,), "text/plain", text, **fields)


def metric(relay: Relay, line: str) -> bool:
    return line in relay.metrics.render().decode()


async def test_send_read_ack_round_trip(relay: Relay) -> None:
    mailbox = relay.mailbox
    sent = await mailbox.send(note("hi", thread="t1"), via="api")
    assert sent.result.duplicate is False

    [item] = await mailbox.read("bob")
    envelope = views.envelope_object(item)
    assert (envelope["id"], envelope["from"], envelope["to"], envelope["body"]) == (
        sent.envelope.id,
        "alice@acme.test",
        ["bob@acme.test"],
        "hi",
    )
    assert envelope["thread"] == "t1"
    # Reading never consumes: the entry is there until acked.
    assert [i.id for i in await mailbox.read("bob")] == [sent.envelope.id]
    assert await mailbox.read("alice") == []

    await mailbox.ack("bob", sent.envelope.id)
    await mailbox.ack("bob", sent.envelope.id)  # again is not an error
    assert await mailbox.read("bob") == []
    assert [i.id for i in await mailbox.read("bob", include_acked=True)] == [sent.envelope.id]
    with pytest.raises(NotFound):
        await mailbox.ack("alice", sent.envelope.id)  # not in alice's inbox
    assert metric(relay, 'synq_envelopes_accepted_total{via="api"} 1.0')
    assert metric(relay, "synq_inbox_acks_total 2.0")


async def test_long_poll_wakes_on_a_new_message(relay: Relay) -> None:
    mailbox = relay.mailbox
    poll = asyncio.create_task(mailbox.read("bob", wait=30))
    # The poll is registered on bob's channel before the message is sent.
    await wait_until(lambda: relay.store.notifier.listener_count(inbox_channel("bob")) == 1)
    sent = await mailbox.send(note("wake up"), via="api")
    items = await asyncio.wait_for(poll, 10)  # a bound, far below the poll's own 30 s
    assert [i.id for i in items] == [sent.envelope.id]
    assert relay.store.notifier.listener_count("inbox:") == 0


async def test_a_follower_misses_nothing_between_reads(relay: Relay) -> None:
    """What arrives while a follower is busy between two reads wakes its next read."""
    mailbox = relay.mailbox
    async with mailbox.follow("bob") as reader:
        assert await reader.read() == []
        first = await mailbox.send(note("one"), via="api")
        [item] = await reader.read(wait=30)
        assert item.id == first.envelope.id
        woken = asyncio.create_task(reader.read(wait=30, after=item.seq))
        second = await mailbox.send(note("two"), via="api")
        assert [i.id for i in await asyncio.wait_for(woken, 10)] == [second.envelope.id]


async def test_an_empty_read_without_wait_answers_at_once(relay: Relay) -> None:
    assert await relay.mailbox.read("bob", wait=0) == []


async def test_cursor_paging_and_thread_filter(relay: Relay) -> None:
    mailbox = relay.mailbox
    sent = [
        (await mailbox.send(note(f"m{i}", thread="even" if i % 2 == 0 else "odd"), via="api"))
        for i in range(5)
    ]
    ids = [s.envelope.id for s in sent]
    pages: list[list[str]] = []
    cursor = None
    while page := await mailbox.read("bob", limit=2, after=cursor):
        pages.append([i.id for i in page])
        cursor = page[-1].seq
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    assert [i.id for i in await mailbox.read("bob", thread="even")] == ids[0::2]
    await mailbox.ack_all("bob", ids[:3])
    assert [i.id for i in await mailbox.read("bob")] == ids[3:]
    assert [i.id for i in await mailbox.read("bob", include_acked=True, thread="odd")] == ids[1::2]


async def test_status_only_for_the_sender(relay: Relay) -> None:
    mailbox = relay.mailbox
    sent = await mailbox.send(note("hi"), via="api")
    status = await mailbox.status(sent.envelope.id, agent="alice")
    wire = views.status_to_wire(status)
    assert (wire["id"], wire["from"]) == (sent.envelope.id, "alice@acme.test")
    assert wire["recipients"]["bob@acme.test"]["state"] == "delivered"

    refusals: list[SynqError] = []
    for asker, id in [("bob", sent.envelope.id), ("carol", sent.envelope.id), ("alice", "x1")]:
        with pytest.raises(NotFound) as refused:
            await mailbox.status(id, agent=asker)
        refusals.append(refused.value)
    # The recipient, a stranger and a missing id get the very same answer: ids cannot be probed.
    assert {(r.code, r.http_status, r.message) for r in refusals} == {
        ("not_found", 404, "no such message")
    }
    # The operator (synq status) sees every message sent from the domain.
    assert (await mailbox.status(sent.envelope.id, agent=None)).id == sent.envelope.id
    with pytest.raises(NotFound) as missing:
        await mailbox.status("x1", agent=None)
    assert missing.value.message == "no message x1 sent from acme.test"


@pytest.mark.parametrize(
    ("draft", "error", "code"),
    [
        (lambda: note("x", kind="dsn"), Forbidden, "forbidden"),
        (lambda: Draft(ALICE, (BOB,), "text/plain", {"a": 1}), InvalidEnvelope, "invalid_envelope"),
        (
            lambda: note("x", expires=SystemClock().now().replace(year=2001)),
            InvalidEnvelope,
            "invalid_envelope",
        ),
        (
            lambda: note("x", to=Address.parse("nobody@acme.test")),
            UnknownRecipient,
            "unknown_recipient",
        ),
        (
            lambda: note("x", to=Address.parse("postmaster@acme.test")),
            UnknownRecipient,
            "unknown_recipient",
        ),
        (
            lambda: Draft(Address.parse("alice@globex.test"), (BOB,), "text/plain", "x"),
            InvalidEnvelope,
            "invalid_envelope",
        ),
    ],
    ids=["kind-dsn", "text-body", "expired", "unknown", "reserved", "foreign-sender"],
)
async def test_refused_sends_are_typed_errors_and_store_nothing(
    relay: Relay, draft: Callable[[], Draft], error: type[SynqError], code: str
) -> None:
    with pytest.raises(error) as refused:
        await relay.mailbox.send(draft(), via="api")
    assert refused.value.code == code
    assert await relay.mailbox.read("bob", include_acked=True) == []
    assert await relay.store.list_queue() == []


async def test_send_many_commits_the_good_and_refuses_each_bad_one_alone(relay: Relay) -> None:
    mailbox = relay.mailbox
    drafts = [note("one"), note("two", to=Address.parse("ghost@acme.test")), note("three")]
    outcomes = await mailbox.send_many(drafts, via="api")
    assert [type(o) for o in outcomes] == [Submitted, UnknownRecipient, Submitted]
    delivered = [i.id for i in await mailbox.read("bob")]
    assert delivered == [o.envelope.id for o in outcomes if isinstance(o, Submitted)]
    assert metric(relay, 'synq_envelopes_accepted_total{via="api"} 2.0')


async def test_send_many_charges_the_rate_limit_once_per_draft(relay: Relay) -> None:
    relay.router.agent_rates.reconfigure(Rate(1.0, 2.0))
    outcomes = await relay.mailbox.send_many([note(str(i)) for i in range(3)], via="api")
    assert [type(o) for o in outcomes] == [Submitted, Submitted, RateLimited]


async def test_cards_of_local_agents(relay: Relay) -> None:
    assert await relay.mailbox.card(BOB) == inbox_agent_card(BOB, relay.public_url)
    with pytest.raises(NotFound):
        await relay.mailbox.card(Address.parse("nobody@acme.test"))


async def test_one_custody_path_for_local_and_federated_envelopes(relay: Relay) -> None:
    assert relay.router.custody is relay.inbound.custody is relay.custody
    assert isinstance(relay.mailbox, Mailbox)
    assert relay.mailbox.router is relay.router
