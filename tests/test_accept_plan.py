"""Accept's plan and interpretation (relay/store/sql/accept.py): tables, no database.

Each case is a batch, what the database answers (which envelope rows it inserted, which
recipient rows it inserted or upgraded), and what must come of it: the rows planned per
statement, the results, the inbox and event rows, and the channels to wake. The store contract
(tests/test_store.py) runs the same logic against SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.core.errors import InvalidAddress
from relay.store.base import QUEUE_CHANNEL, Hold, NewEnvelope, inbox_channel
from relay.store.sql import accept

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HERE = "a.test"
AT = "at"  # the accepted-at parameter, opaque to the planner
#: Envelope pks the database hands out, by envelope id.
PK = {"e1": 11, "e2": 12}


def env(
    id: str,
    *,
    local: Sequence[str] = (),
    remote: Sequence[str] = (),
    refused: Sequence[str] = (),
    via: str = "api",
    holds: Sequence[str] = (),
) -> NewEnvelope:
    return NewEnvelope(
        origin=HERE,
        id=id,
        sender=f"alice@{HERE}",
        token=f"token-{id}",
        created=T0,
        expires=T0 + timedelta(days=2),
        thread=None,
        kind="message",
        local=list(local),
        remote=list(remote),
        via=via,
        refused=[(address, "5.1.1", "no such agent") for address in refused],
        holds={domain: HOLD for domain in holds},
    )


def ts(value: datetime) -> str:
    return value.isoformat()


@dataclass
class Case:
    name: str
    batch: list[NewEnvelope]
    #: The database's answer: ids whose envelope row it inserted, and the recipient rows it
    #: inserted or upgraded as (id, recipient, refused).
    inserted: set[str]
    changed: list[tuple[str, str, bool]]
    #: The plan: per statement, its rows as (id, recipient, state, refused, implied), implied
    #: as set once the envelope rows inserted are known (``accept.recipient_statements``).
    statements: list[list[tuple[str, str, str, bool, bool]]]
    duplicates: list[bool]
    inbox: list[tuple[str, str]] = field(default_factory=list)  # (agent, id)
    #: Event rows (id, recipient, event): none for a row whose event the envelope row implies.
    events: list[tuple[str, str, str]] = field(default_factory=list)
    channels: set[str] = field(default_factory=set)


BOB, CAROL = f"bob@{HERE}", f"carol@{HERE}"
DAVE = "dave@b.test"
ERIN = "erin@c.test"
#: b.test is down: its breaker's next probe is in ten minutes.
HOLD = Hold(T0 + timedelta(minutes=10), "4.4.1", "b.test is down; held until its next probe")

CASES = [
    Case(
        "new envelope, local and remote recipients",
        batch=[env("e1", local=["bob"], remote=[DAVE])],
        inserted={"e1"},
        changed=[("e1", BOB, False), ("e1", DAVE, False)],
        statements=[[("e1", BOB, "delivered", False, True), ("e1", DAVE, "queued", False, True)]],
        duplicates=[False],
        inbox=[("bob", "e1")],
        channels={inbox_channel("bob"), QUEUE_CHANNEL},
    ),
    Case(
        "refused at acceptance: bounced, nobody woken",
        batch=[env("e1", local=["bob"], refused=[CAROL])],
        inserted={"e1"},
        changed=[("e1", BOB, False), ("e1", CAROL, True)],
        statements=[[("e1", BOB, "delivered", False, True), ("e1", CAROL, "bounced", True, False)]],
        duplicates=[False],
        inbox=[("bob", "e1")],
        events=[("e1", CAROL, "bounced")],
        channels={inbox_channel("bob")},
    ),
    Case(
        "duplicate: the database changed nothing",
        batch=[env("e1", local=["bob"], remote=[DAVE])],
        inserted=set(),
        changed=[],
        statements=[[("e1", BOB, "delivered", False, False), ("e1", DAVE, "queued", False, False)]],
        duplicates=[True],
    ),
    Case(
        "partial duplicate: the union adds the missing recipient only",
        batch=[env("e1", local=["bob", "carol"])],
        inserted=set(),
        changed=[("e1", CAROL, False)],
        statements=[
            [("e1", BOB, "delivered", False, False), ("e1", CAROL, "delivered", False, False)]
        ],
        duplicates=[False],
        inbox=[("carol", "e1")],
        events=[("e1", CAROL, "delivered")],
        channels={inbox_channel("carol")},
    ),
    Case(
        "a recipient refused before and taken now is upgraded",
        batch=[env("e1", local=["bob"])],
        inserted=set(),
        changed=[("e1", BOB, False)],  # the refused row, upgraded
        statements=[[("e1", BOB, "delivered", False, False)]],
        duplicates=[False],
        inbox=[("bob", "e1")],
        events=[("e1", BOB, "delivered")],
        channels={inbox_channel("bob")},
    ),
    Case(
        "a refusal after an acceptance changes nothing",
        batch=[env("e1", refused=[DAVE])],
        inserted=set(),
        changed=[],
        statements=[[("e1", DAVE, "bounced", True, False)]],
        duplicates=[True],
    ),
    Case(
        "an address both taken and refused in one envelope counts as taken",
        batch=[env("e1", remote=[DAVE], refused=[DAVE])],
        inserted={"e1"},
        changed=[("e1", DAVE, False)],
        statements=[[("e1", DAVE, "queued", False, True)]],
        duplicates=[False],
        channels={QUEUE_CHANNEL},
    ),
    Case(
        "several envelopes in one batch",
        batch=[env("e1", local=["bob"]), env("e2", remote=[DAVE])],
        inserted={"e1", "e2"},
        changed=[("e2", DAVE, False), ("e1", BOB, False)],  # RETURNING has no order
        statements=[[("e1", BOB, "delivered", False, True), ("e2", DAVE, "queued", False, True)]],
        duplicates=[False, False],
        inbox=[("bob", "e1")],
        channels={inbox_channel("bob"), QUEUE_CHANNEL},
    ),
    Case(
        "the same envelope twice: the first copy counts, the second is a duplicate",
        batch=[env("e1", local=["bob"]), env("e1", local=["bob"])],
        inserted={"e1"},
        changed=[("e1", BOB, False)],
        statements=[[("e1", BOB, "delivered", False, True)]],
        duplicates=[False, True],
        inbox=[("bob", "e1")],
        channels={inbox_channel("bob")},
    ),
    Case(
        "the same envelope twice, the second copy adding a recipient",
        batch=[env("e1", local=["bob"]), env("e1", local=["bob", "carol"])],
        inserted={"e1"},
        changed=[("e1", BOB, False), ("e1", CAROL, False)],
        statements=[
            [("e1", BOB, "delivered", False, True), ("e1", CAROL, "delivered", False, False)]
        ],
        duplicates=[False, False],
        inbox=[("bob", "e1"), ("carol", "e1")],
        events=[("e1", CAROL, "delivered")],
        channels={inbox_channel("bob"), inbox_channel("carol")},
    ),
    Case(
        "refused by one copy, taken by a later one: insert, then upgrade in a second statement",
        batch=[env("e1", refused=[DAVE]), env("e1", remote=[DAVE])],
        inserted={"e1"},
        changed=[("e1", DAVE, True), ("e1", DAVE, False)],
        statements=[[("e1", DAVE, "bounced", True, False)], [("e1", DAVE, "queued", False, False)]],
        duplicates=[False, False],
        events=[("e1", DAVE, "bounced"), ("e1", DAVE, "accepted")],
        channels={QUEUE_CHANNEL},
    ),
    Case(
        "taken by one copy, refused by a later one: one statement, the refusal a duplicate",
        batch=[env("e1", remote=[DAVE]), env("e1", refused=[DAVE])],
        inserted={"e1"},
        changed=[("e1", DAVE, False)],
        statements=[[("e1", DAVE, "queued", False, True)]],
        duplicates=[False, True],
        channels={QUEUE_CHANNEL},
    ),
    Case(
        "refused twice then taken twice: one upgrade, credited to the first taker",
        batch=[
            env("e1", refused=[BOB]),
            env("e1", refused=[BOB]),
            env("e1", local=["bob"]),
            env("e1", local=["bob"]),
        ],
        inserted=set(),  # known, and bob refused, before this batch
        changed=[("e1", BOB, False)],
        statements=[
            [("e1", BOB, "bounced", True, False)],
            [("e1", BOB, "delivered", False, False)],
        ],
        duplicates=[True, True, False, True],
        inbox=[("bob", "e1")],
        events=[("e1", BOB, "delivered")],
        channels={inbox_channel("bob")},
    ),
    Case(
        "held at accept: queued, accepted implied, a held event, no sender woken",
        batch=[env("e1", remote=[DAVE], holds=["b.test"])],
        inserted={"e1"},
        changed=[("e1", DAVE, False)],
        statements=[[("e1", DAVE, "queued", False, True)]],
        duplicates=[False],
        events=[("e1", DAVE, "held")],
    ),
    Case(
        "held and not held destinations in one envelope: the sender woken for the other",
        batch=[env("e1", local=["bob"], remote=[DAVE, ERIN], holds=["b.test"])],
        inserted={"e1"},
        changed=[("e1", BOB, False), ("e1", DAVE, False), ("e1", ERIN, False)],
        statements=[
            [
                ("e1", BOB, "delivered", False, True),
                ("e1", DAVE, "queued", False, True),
                ("e1", ERIN, "queued", False, True),
            ]
        ],
        duplicates=[False],
        inbox=[("bob", "e1")],
        events=[("e1", DAVE, "held")],
        channels={inbox_channel("bob"), QUEUE_CHANNEL},
    ),
    Case(
        "a hold for a domain the envelope does not name changes nothing",
        batch=[env("e1", remote=[ERIN], holds=["b.test"])],
        inserted={"e1"},
        changed=[("e1", ERIN, False)],
        statements=[[("e1", ERIN, "queued", False, True)]],
        duplicates=[False],
        channels={QUEUE_CHANNEL},
    ),
    Case(
        "a held replay: the database changed nothing, no event, nobody woken",
        batch=[env("e1", remote=[DAVE], holds=["b.test"])],
        inserted=set(),
        changed=[],
        statements=[[("e1", DAVE, "queued", False, False)]],
        duplicates=[True],
    ),
    Case(
        "refused before, taken now while its destination is down: upgraded and held",
        batch=[env("e1", remote=[DAVE], holds=["b.test"])],
        inserted=set(),
        changed=[("e1", DAVE, False)],
        statements=[[("e1", DAVE, "queued", False, False)]],
        duplicates=[False],
        events=[("e1", DAVE, "accepted"), ("e1", DAVE, "held")],
    ),
    Case(
        "refused by one copy, taken held by a later one: the upgrade is held",
        batch=[env("e1", refused=[DAVE]), env("e1", remote=[DAVE], holds=["b.test"])],
        inserted={"e1"},
        changed=[("e1", DAVE, True), ("e1", DAVE, False)],
        statements=[[("e1", DAVE, "bounced", True, False)], [("e1", DAVE, "queued", False, False)]],
        duplicates=[False, False],
        events=[("e1", DAVE, "bounced"), ("e1", DAVE, "accepted"), ("e1", DAVE, "held")],
    ),
]


def _changed_rows(case: Case) -> list[tuple[Any, ...]]:
    return [(PK[id], HERE, id, recipient, refused) for id, recipient, refused in case.changed]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_and_interpret(case: Case) -> None:
    batch = [(item, AT) for item in case.batch]
    plan = accept.plan(batch, HERE, ts)
    inserted = [(HERE, id) for id in sorted(case.inserted)]
    statements = accept.recipient_statements(plan, inserted)
    assert [[(r[1], r[2], r[4], r[5], r[11]) for r in rows] for rows in statements] == (
        case.statements
    )
    out = accept.interpret(plan, inserted, _changed_rows(case))
    assert [(r.id, r.duplicate) for r in out.results] == [
        (item.id, dup) for item, dup in zip(case.batch, case.duplicates, strict=True)
    ]
    assert out.inbox == [(agent, PK[id], AT) for agent, id in case.inbox]
    pk_ids = {pk: id for id, pk in PK.items()}
    assert [(pk_ids[e[0]], e[2], e[3]) for e in out.events] == case.events
    assert out.channels == case.channels


def test_plan_rows_carry_every_column() -> None:
    """One envelope row per distinct (origin, id), the first copy's; recipient rows in the
    dialects' column order, due at once when queued, with the refusal's code and reason."""
    first = env("e1", local=["bob"], remote=[DAVE], refused=[CAROL], via="federation:b.test")
    plan = accept.plan([(first, "t1"), (env("e1", via="api"), "t2")], HERE, ts)
    assert plan.envelopes == [
        (
            HERE,
            "e1",
            f"alice@{HERE}",
            "token-e1",
            ts(T0),
            ts(T0 + timedelta(days=2)),
            None,
            "message",
            "federation:b.test",
            "t1",
        )
    ]
    [rows] = plan.recipients
    assert rows == [
        (HERE, "e1", BOB, None, "delivered", False, None, None, None, "t1", None, False),
        (HERE, "e1", DAVE, "b.test", "queued", False, None, None, "t1", "t1", None, False),
        (
            HERE,
            "e1",
            CAROL,
            HERE,
            "bounced",
            True,
            "5.1.1",
            "no such agent",
            None,
            "t1",
            None,
            False,
        ),
    ]
    # Implied once the envelope row is known to be new: the taken rows of its first copy.
    [marked] = accept.recipient_statements(plan, [(HERE, "e1")])
    assert [row[11] for row in marked] == [True, True, False]
    assert marked[0][:11] == rows[0][:11]
    assert all(len(row) == accept.RECIPIENT_WIDTH for row in rows)
    assert len(plan.envelopes[0]) == accept.ENVELOPE_WIDTH


@pytest.mark.parametrize(
    ("until", "due"),
    [
        (HOLD.until, HOLD.until),
        (T0 + timedelta(days=3), T0 + timedelta(days=2)),  # past expiry: due at expiry
    ],
    ids=["at the next probe", "never after expiry"],
)
def test_a_held_row_is_due_at_the_hold_with_its_code(until: datetime, due: datetime) -> None:
    """A held remote row: queued, due at the hold's end (or the envelope's expiry, to be
    bounced then), the hold's code and reason on the row and on its ``held`` event, no hop,
    at the accept's time; the envelope's other destination is due at once."""
    item = replace(
        env("e1", remote=[DAVE, ERIN]),
        holds={"b.test": replace(HOLD, until=until)},
    )
    plan = accept.plan([(item, "t1")], HERE, ts)
    [rows] = plan.recipients
    assert rows == [
        (
            HERE,
            "e1",
            DAVE,
            "b.test",
            "queued",
            False,
            HOLD.code,
            HOLD.reason,
            ts(due),
            "t1",
            None,
            False,
        ),
        (HERE, "e1", ERIN, "c.test", "queued", False, None, None, "t1", "t1", None, False),
    ]
    out = accept.interpret(
        plan, [(HERE, "e1")], [(11, HERE, "e1", DAVE, 0), (11, HERE, "e1", ERIN, 0)]
    )
    assert out.events == [(11, "t1", DAVE, "held", HOLD.code, HOLD.reason, None)]
    assert out.channels == {QUEUE_CHANNEL}


def test_events_carry_the_hop_and_the_refusal() -> None:
    item = env("e1", refused=[CAROL], via="federation:b.test")
    plan = accept.plan([(item, AT)], HERE, ts)
    out = accept.interpret(plan, [(HERE, "e1")], [(11, HERE, "e1", CAROL, 1)])  # SQLite's 1
    assert out.events == [(11, AT, CAROL, "bounced", "5.1.1", "no such agent", "federation:b.test")]
    assert all(len(row) == accept.EVENT_WIDTH for row in out.events)


@pytest.mark.parametrize(
    ("domain", "keys"),
    [(HERE, [BOB, DAVE, CAROL]), (None, ["bob", DAVE, CAROL])],
    ids=["with the store's domain", "without"],
)
def test_recipient_keys(domain: str | None, keys: list[str]) -> None:
    """With the store's domain a local row is keyed by address, so a refused address and a
    later local delivery name one row; without it, by the bare agent name."""
    item = env("e1", local=["bob", "bob"], remote=[DAVE, DAVE], refused=[CAROL])
    assert [r.key for r in accept.recipients_of(item, domain)] == keys


def test_an_empty_batch_plans_nothing() -> None:
    plan = accept.plan([], HERE, ts)
    assert (plan.envelopes, plan.recipients) == ([], [])
    assert accept.interpret(plan, [], []) == accept.Accepted()


@pytest.mark.parametrize("address", ["dave", "@b.test", "dave@"])
def test_a_remote_recipient_must_be_an_address(address: str) -> None:
    with pytest.raises(InvalidAddress):
        accept.plan([(env("e1", remote=[address]), AT)], HERE, ts)
