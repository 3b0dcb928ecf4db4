"""Delivery receipts: ``notify`` (RFC 3461 NOTIFY) from submission to the partner relay and back
as ``delivered`` and ``delayed`` delivery-status envelopes (SPEC.md §6.2, §7.3, §8.1, §9.4).

Three rings: the pure pieces as tables (relay.core.dsn, relay.core.txn, the well-known
document); the store's part on every backend (receipts committed with the delivery, a
partner's receipt marking the row); and two real relays on loopback (tests/fedenv.py) under a
fake clock, with a stand-in partner for one that does not advertise receipts and a real
a2a-sdk agent for an adapter-backed recipient.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageConfiguration, SendMessageRequest
from a2a.utils import errors as a2a_errors
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from relay import cli
from relay.core import dsn, records
from relay.core import envelope as env_mod
from relay.core.address import Address
from relay.core.draft import Draft
from relay.core.envelope import KIND_DSN, KIND_MESSAGE, Envelope
from relay.core.errors import InvalidEnvelope, MalformedRequest
from relay.core.ids import hash_token, new_token
from relay.core.jws import SigningKey
from relay.core.txn import encode_request, parse_request
from relay.discovery.errors import MisconfiguredDomain
from relay.discovery.wellknown import (
    CAPABILITY_RECEIPTS,
    WELL_KNOWN_PATH,
    build_well_known,
    parse_well_known,
)
from relay.store import NewEnvelope, Outcome, Store, open_store
from relay.store.base import ReceiptMark
from relay.store.sql import accept
from relay.tasks.store import NOTIFY_METADATA
from tests import pg
from tests.a2a_peers import Peer, sdk_app
from tests.conftest import Agent, AgentFactory
from tests.fedenv import Org, World, world
from tests.mcpenv import mcp_client, text_of

ORIGINAL = "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVERYTHING = frozenset({"success", "delay", "failure"})


# --- ring 1: the pure pieces ----------------------------------------------------------------------

# (the JSON value, the parsed keywords) — RFC 3461 §4.1
NOTIFY_OK: list[tuple[Any, frozenset[str]]] = [
    (None, frozenset({"failure"})),
    (["failure"], frozenset({"failure"})),
    (["success"], frozenset({"success"})),
    (["delay", "success"], frozenset({"success", "delay"})),
    (["failure", "delay", "success"], EVERYTHING),
    (["never"], frozenset()),
]


@pytest.mark.parametrize(("value", "parsed"), NOTIFY_OK)
def test_rfc3461_4_1_notify_values(value: Any, parsed: frozenset[str]) -> None:
    assert dsn.parse_notify(value) == parsed
    # The wire form reads back as itself, in one order; the store keeps the default as NULL.
    assert dsn.parse_notify(dsn.notify_to_wire(parsed)) == parsed
    assert dsn.decode_notify(dsn.encode_notify(parsed)) == parsed
    assert (dsn.encode_notify(parsed) is None) == (parsed == dsn.DEFAULT_NOTIFY)


# (the JSON value, words the refusal names)
NOTIFY_BAD: list[tuple[Any, str]] = [
    ([], "empty"),
    ("success", "expected a list"),
    ({"success": True}, "expected a list"),
    (["never", "success"], "never cannot be combined"),
    (["success", "never"], "never cannot be combined"),
    (["success", "success"], "appears twice"),
    (["never", "never"], "appears twice"),
    (["SUCCESS"], "not one of"),
    (["relayed"], "not one of"),
    ([1], "not one of"),
    ([None], "not one of"),
]


@pytest.mark.parametrize(("value", "words"), NOTIFY_BAD)
def test_rfc3461_4_1_notify_refusals(value: Any, words: str) -> None:
    with pytest.raises(InvalidEnvelope, match=words) as caught:
        dsn.parse_notify(value)
    assert caught.value.message.startswith("notify: ")


def report(**changes: Any) -> dsn.Report:
    base = dsn.Report(
        original_id=ORIGINAL,
        original_from="alice@alpha.example",
        original_kind=KIND_MESSAGE,
        thread=None,
        recipient="bob@beta.example",
        status="2.0.0",
        diagnostic="delivered to the agent's inbox",
        attempts=1,
        last_attempt=T0,
        action=dsn.ACTION_DELIVERED,
        notify=frozenset({"success"}),
    )
    return replace(base, **changes)


# (action, what the sender asked, the original's kind, a report is due?)
SHOULD_REPORT = [
    (dsn.ACTION_DELIVERED, frozenset({"success"}), KIND_MESSAGE, True),
    (dsn.ACTION_DELIVERED, frozenset({"failure"}), KIND_MESSAGE, False),
    (dsn.ACTION_DELIVERED, frozenset(), KIND_MESSAGE, False),
    (dsn.ACTION_DELAYED, frozenset({"delay"}), KIND_MESSAGE, True),
    (dsn.ACTION_DELAYED, frozenset({"success", "failure"}), KIND_MESSAGE, False),
    (dsn.ACTION_FAILED, dsn.DEFAULT_NOTIFY, KIND_MESSAGE, True),
    (dsn.ACTION_FAILED, frozenset({"success"}), KIND_MESSAGE, False),
    (dsn.ACTION_FAILED, frozenset(), KIND_MESSAGE, False),
    # Never a report about a DSN (RFC 3464 §2), whatever was asked.
    (dsn.ACTION_DELIVERED, EVERYTHING, KIND_DSN, False),
    (dsn.ACTION_DELAYED, EVERYTHING, KIND_DSN, False),
    (dsn.ACTION_FAILED, EVERYTHING, KIND_DSN, False),
]


@pytest.mark.parametrize(("action", "notify", "kind", "due"), SHOULD_REPORT)
def test_a_report_goes_only_where_it_was_asked_for(
    action: str, notify: frozenset[str], kind: str, due: bool
) -> None:
    assert dsn.should_report(report(action=action, notify=notify, original_kind=kind)) is due


def test_the_body_says_the_action() -> None:
    body = dsn.dsn_body(report(), "beta.example", T0)
    assert (body["action"], body["status"], body["final_recipient"]) == (
        "delivered",
        "2.0.0",
        "bob@beta.example",
    )
    assert dsn.dsn_body(report(action=dsn.ACTION_DELAYED), "beta.example")["action"] == "delayed"
    assert not dsn.is_failure(body)
    assert dsn.is_failure({"action": "failed"})
    assert dsn.is_failure({"status": "5.1.1"})  # every DSN before receipts was a bounce
    assert dsn.is_failure("not an object")


AFTER = dsn.DELAY_NOTICE_AFTER
# (asked, already reported, in custody for, due?)
DELAY_DUE = [
    (frozenset({"delay"}), False, AFTER, True),
    (frozenset({"delay"}), False, AFTER - timedelta(seconds=1), False),
    (frozenset({"delay"}), True, AFTER * 10, False),  # at most once
    (frozenset({"success", "failure"}), False, AFTER * 10, False),
    (dsn.DEFAULT_NOTIFY, False, AFTER * 10, False),
]


@pytest.mark.parametrize(("notify", "reported", "waited", "due"), DELAY_DUE)
def test_one_delay_report_after_the_threshold(
    notify: frozenset[str], reported: bool, waited: timedelta, due: bool
) -> None:
    assert dsn.delay_due(notify, reported, T0, T0 + waited) is due
    assert not dsn.delay_due(notify, reported, None, T0 + waited)


def receipt_envelope(**changes: Any) -> Envelope:
    body = dsn.dsn_body(report(), "beta.example", T0)
    body.update(changes.pop("body", {}))
    fields: dict[str, Any] = {
        "v": 1,
        "id": "0195a3c1-0000-7000-8000-000000000001",
        "from": "mailer-daemon@beta.example",
        "to": ["alice@alpha.example"],
        "created": T0,
        "expires": T0 + timedelta(days=2),
        "in_reply_to": ORIGINAL,
        "kind": KIND_DSN,
        "content_type": dsn.CONTENT_TYPE,
        "body": body,
    }
    fields.update(changes)
    return Envelope.model_validate({k: v for k, v in fields.items() if v is not None})


# (changes to a good receipt, read as a receipt?)
RECEIPTS: list[tuple[str, dict[str, Any], bool]] = [
    ("good", {}, True),
    ("not-a-dsn", {"kind": KIND_MESSAGE}, False),
    ("not-mailer-daemon", {"from": "bob@beta.example"}, False),
    ("no-in-reply-to", {"in_reply_to": None}, False),
    ("a-bounce", {"body": {"action": "failed", "status": "5.1.1"}}, False),
    ("a-delay", {"body": {"action": "delayed", "status": "4.4.1"}}, False),
    ("about-another-envelope", {"body": {"original_id": "another"}}, False),
    ("recipient-elsewhere", {"body": {"final_recipient": "carol@gamma.example"}}, False),
    ("recipient-not-an-address", {"body": {"final_recipient": "bob"}}, False),
    ("failure-code", {"body": {"status": "5.0.0"}}, False),
    ("garbage-code", {"body": {"status": "ok"}}, False),
    ("body-not-an-object", {"body": None}, False),
]


def test_a_receipts_diagnostic_is_bounded_and_printable() -> None:
    found = dsn.read_receipt(receipt_envelope(body={"diagnostic": "in\x1b[31m the inbox" * 100}))
    assert found is not None
    assert len(found.diagnostic) <= dsn.MAX_DIAGNOSTIC
    assert found.diagnostic.isprintable()
    assert found.diagnostic.startswith("in[31m the inbox")


@pytest.mark.parametrize(
    ("changes", "is_receipt"), [(c, r) for _, c, r in RECEIPTS], ids=[n for n, _, _ in RECEIPTS]
)
def test_what_counts_as_a_receipt(changes: dict[str, Any], is_receipt: bool) -> None:
    if changes.get("body", {}) is None:
        envelope = receipt_envelope()
        envelope = envelope.model_copy(update={"body": None})
    else:
        envelope = receipt_envelope(**changes)
    found = dsn.read_receipt(envelope)
    assert (found is not None) is is_receipt
    if found is not None:
        assert found == dsn.Receipt(
            ORIGINAL, "bob@beta.example", "2.0.0", "delivered to the agent's inbox"
        )


# (the notify member, the parsed notify) — SPEC.md §8.1
TXN_NOTIFY_OK: list[tuple[Any, dict[str, dict[str, frozenset[str]]]]] = [
    (None, {}),
    ({}, {}),
    (
        {"e1": {"Bob@Beta.Example": ["success"]}},
        {"e1": {"bob@beta.example": frozenset({"success"})}},
    ),
    (
        {"e1": {"bob@beta.example": ["never"]}, "e2": {}},
        {"e1": {"bob@beta.example": frozenset()}, "e2": {}},
    ),
]


@pytest.mark.parametrize(("member", "parsed"), TXN_NOTIFY_OK)
def test_a_transaction_may_carry_notify(member: Any, parsed: dict[str, Any]) -> None:
    doc = {"origin": "alpha.example", "envelopes": ["x.y.z"], "notify": member}
    assert parse_request(json.dumps(doc).encode()).notify == parsed


TXN_NOTIFY_BAD: list[Any] = [
    ["success"],
    {"e1": ["success"]},
    {"e1": {"bob@beta.example": "success"}},
    {"e1": {"bob@beta.example": ["never", "delay"]}},
    {"e1": {"bob@beta.example": ["success", "success"]}},
    {"e1": {"not an address": ["success"]}},
    {"e" * 200: {}},
]


@pytest.mark.parametrize("member", TXN_NOTIFY_BAD)
def test_a_malformed_notify_refuses_the_transaction(member: Any) -> None:
    doc = {"origin": "alpha.example", "envelopes": ["x.y.z"], "notify": member}
    with pytest.raises(MalformedRequest):
        parse_request(json.dumps(doc).encode())


WORDS = st.sampled_from(["success", "delay", "failure", "never", "SUCCESS", "", "relayed"])
NOTIFY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | WORDS | st.lists(WORDS, max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(member=st.dictionaries(st.text(max_size=12), NOTIFY_JSON, max_size=3) | NOTIFY_JSON)
def test_any_notify_member_is_read_or_refused_as_malformed(member: Any) -> None:
    """Accepted, or the documented error (400 malformed_request), never anything else."""
    doc = {"origin": "alpha.example", "envelopes": ["x.y.z"], "notify": member}
    try:
        parsed = parse_request(json.dumps(doc).encode())
    except MalformedRequest:
        return
    for per in parsed.notify.values():
        for words in per.values():
            assert words <= EVERYTHING


def test_notify_is_written_only_when_there_is_one() -> None:
    # A partner that knows nothing of receipts refuses any third member (SPEC.md §8.1), so a
    # transaction without notify must stay exactly {origin, envelopes}.
    assert set(json.loads(encode_request("alpha.example", ["t"]))) == {"origin", "envelopes"}
    assert set(json.loads(encode_request("alpha.example", ["t"], {}))) == {"origin", "envelopes"}
    asked = {"e1": {"bob@beta.example": frozenset({"delay", "success"})}}
    body = encode_request("alpha.example", ["t"], asked)
    assert json.loads(body)["notify"] == {"e1": {"bob@beta.example": ["success", "delay"]}}
    assert parse_request(body).notify == asked
    with pytest.raises(MalformedRequest):
        parse_request(b'{"origin":"alpha.example","envelopes":["t"],"receipts":true}')


def test_the_well_known_document_advertises_receipts() -> None:
    key = SigningKey.generate("s1").public_key
    ours = build_well_known("beta.example", "https://relay.beta.example", [key])
    assert json.loads(ours.to_json())["capabilities"] == [CAPABILITY_RECEIPTS]
    assert parse_well_known(ours.to_json(), domain="beta.example").supports("receipts")
    doc = json.loads(ours.to_json())
    for capabilities, supported in [(None, False), (["x-later", "receipts"], True), ([], False)]:
        doc["capabilities"] = capabilities
        parsed = parse_well_known(json.dumps(doc).encode(), domain="beta.example")
        assert parsed.supports(CAPABILITY_RECEIPTS) is supported
    del doc["capabilities"]
    assert not parse_well_known(json.dumps(doc).encode(), domain="beta.example").supports(
        CAPABILITY_RECEIPTS
    )
    for wrong in ["receipts", [1], ["x" * 65]]:
        doc["capabilities"] = wrong
        with pytest.raises(MisconfiguredDomain, match="capabilities"):
            parse_well_known(json.dumps(doc).encode(), domain="beta.example")


def test_a_dsn_asks_for_no_report() -> None:
    daemon, alice = Address("mailer-daemon", "beta.example"), Address("alice", "alpha.example")
    Draft(daemon, (alice,), dsn.CONTENT_TYPE, {}, kind=KIND_DSN)
    with pytest.raises(InvalidEnvelope, match="notify"):
        Draft(daemon, (alice,), dsn.CONTENT_TYPE, {}, kind=KIND_DSN, notify=frozenset())
    with pytest.raises(InvalidEnvelope, match="notify"):
        Draft(alice, (daemon,), "text/plain", "x", notify=frozenset({"relayed"}))


def test_the_plan_keeps_notify_and_owes_receipts_for_new_rows_only() -> None:
    receipt = item("r1", local=["alice"])
    first = item(
        "e1",
        local=["bob"],
        remote=["dave@b.test"],
        notify={"bob": frozenset({"success"}), "dave@b.test": EVERYTHING},
        receipts={"bob": receipt},
    )
    plan = accept.plan([(first, "t1"), (first, "t2")], "a.test", str)
    [rows] = plan.recipients
    assert [(r[2], r[10]) for r in rows] == [
        ("bob@a.test", "success"),
        ("dave@b.test", "success,delay,failure"),
    ]
    changed = [(1, "a.test", "e1", "bob@a.test", False), (1, "a.test", "e1", "dave@b.test", False)]
    out = accept.interpret(plan, [("a.test", "e1")], changed)
    # The second copy changed nothing: it is a duplicate and owes nothing.
    assert [r.duplicate for r in out.results] == [False, True]
    assert out.receipts == [("bob", receipt, "t1")]


def item(id: str, **fields: Any) -> NewEnvelope:
    base = NewEnvelope(
        origin="a.test",
        id=id,
        sender="carol@a.test",
        token=f"token-{id}",
        created=T0,
        expires=T0 + timedelta(days=2),
        thread=None,
        kind=KIND_MESSAGE,
        local=[],
        remote=[],
        via="api",
    )
    return replace(base, **fields)


# --- ring 2: the store, on every backend ------------------------------------------------------------

HERE = "a.test"


@pytest.fixture(params=pg.BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'relay.db'}"
    else:
        url = pg.database_url(request)
    s = await open_store(url, domain=HERE)
    try:
        for name, kind in [("alice", "inbox"), ("bob", "inbox"), ("echo", "a2a")]:
            await s.create_agent(name, kind, hash_token(new_token()), None, T0)  # type: ignore[arg-type]
        yield s
    finally:
        await s.close()


def receipt_for(agent: str, id: str) -> NewEnvelope:
    """A stand-in receipt: a dsn from mailer-daemon to alice about ``agent``'s delivery."""
    return item(
        f"rcpt-{id}-{agent}", sender=f"mailer-daemon@{HERE}", kind=KIND_DSN, local=["alice"]
    )


async def test_store_receipt_is_committed_with_an_inbox_delivery_once(store: Store) -> None:
    asked = {"bob": frozenset({"success"}), "echo": frozenset({"success"})}
    original = item(
        "e1",
        sender=f"alice@{HERE}",
        local=["bob", "echo"],
        notify=asked,
        receipts={"bob": receipt_for("bob", "e1"), "echo": receipt_for("echo", "e1")},
    )
    [result] = await store.accept_many([original], T0)
    assert not result.duplicate
    # Bob reads his inbox: his receipt is in alice's inbox. Echo is adapter-backed: its receipt
    # waits for the hand-over (the dispatcher), so it is not there.
    assert [i.id for i in await store.inbox("alice", limit=10)] == ["rcpt-e1-bob"]
    [leased] = await store.lease_deliveries(T0, lease_until=T0 + timedelta(minutes=1), limit=10)
    assert (leased.agent, leased.notify, leased.delay_reported) == ("echo", asked["echo"], False)
    assert leased.accepted == T0
    # A replay delivers nothing new and reports nothing again.
    [again] = await store.accept_many([original], T0 + timedelta(seconds=1))
    assert again.duplicate
    assert [i.id for i in await store.inbox("alice", limit=10)] == ["rcpt-e1-bob"]


async def test_store_notify_and_delay_flag_travel_with_the_queued_row(store: Store) -> None:
    original = item("e2", remote=["dave@b.test"], notify={"dave@b.test": EVERYTHING})
    await store.accept_many([original], T0)
    [row] = await store.lease_due(T0, lease_until=T0 + timedelta(minutes=1), limit=10)
    assert (row.notify, row.delay_reported, row.accepted) == (EVERYTHING, False, T0)
    later = T0 + dsn.DELAY_NOTICE_AFTER
    deferred = Outcome(
        "a.test", "e2", "dave@b.test", "queued", "4.4.1", "down", None, later, None, True
    )
    await store.settle([deferred], [], later)
    [row] = await store.lease_due(later, lease_until=later + timedelta(minutes=1), limit=10)
    assert (row.notify, row.delay_reported, row.attempts) == (EVERYTHING, True, 1)
    # Once set, the flag stays set.
    await store.settle([replace(deferred, delay_reported=False)], [], later)
    [row] = await store.list_queue()
    assert row.delay_reported


async def test_store_a_partners_receipt_marks_the_sent_row_delivered(store: Store) -> None:
    await store.accept_many([item("e3", sender=f"alice@{HERE}", remote=["dave@b.test"])], T0)
    await store.lease_due(T0, lease_until=T0 + timedelta(minutes=1), limit=10)
    await store.settle(
        [Outcome(HERE, "e3", "dave@b.test", "sent", "2.0.0", "accepted", "h")], [], T0
    )
    mark = ReceiptMark(
        HERE, "e3", f"alice@{HERE}", "dave@b.test", "2.0.0", "delivered", "federation:b.test"
    )
    forged = replace(mark, sender=f"bob@{HERE}")  # not the envelope's sender: changes nothing
    incoming = item(
        "dsn1", origin="b.test", sender="mailer-daemon@b.test", kind=KIND_DSN, local=["alice"]
    )
    await store.accept_many([replace(incoming, receipt_of=forged)], T0)
    status = await store.message_status(HERE, "e3")
    assert status is not None
    assert status.recipients[0].state == "sent"
    t1 = T0 + timedelta(seconds=5)
    incoming = replace(incoming, id="dsn2", receipt_of=mark)
    await store.accept_many([incoming], t1)
    await store.accept_many([incoming], t1 + timedelta(seconds=5))  # a replay marks nothing
    status = await store.message_status(HERE, "e3")
    assert status is not None
    [rec] = status.recipients
    assert (rec.state, rec.code, rec.reason, rec.updated) == ("delivered", "2.0.0", "delivered", t1)
    assert [(e.event, e.hop) for e in status.events] == [
        ("accepted", "api"),
        ("sent", "h"),
        ("delivered", "federation:b.test"),
    ]


# --- ring 3: two relays ---------------------------------------------------------------------------


@pytest.fixture(params=pg.BACKENDS)
async def w(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    urls = pg.store_urls(request, request.param)
    async with world(tmp_path, "acme.test", "globex.test", store_url=urls) as env:
        yield env


async def reports(w: World, org: Org, agent: Agent) -> list[dict[str, Any]]:
    """The delivery-status envelopes in ``agent``'s inbox, oldest first."""
    return [m for m in await w.inbox(org, agent, all=1) if m["kind"] == KIND_DSN]


def actions(found: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(m["body"]["action"], m["body"]["final_recipient"], m["in_reply_to"]) for m in found]


async def test_success_receipt_crosses_back_and_the_status_says_delivered(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, bob = await acme.agent("alice"), await globex.agent("bob")
    sent = await w.send(
        acme, alice, {"to": ["bob@globex.test"], "body": "hi", "thread": "t", "notify": ["success"]}
    )
    assert await acme.relay.sender.run_once() == 1
    assert [m["id"] for m in await w.inbox(globex, bob)] == [sent["id"]]
    assert await globex.relay.sender.run_once() == 1  # the receipt, committed with the delivery
    [receipt] = await reports(w, acme, alice)
    assert receipt["from"] == "mailer-daemon@globex.test"
    assert (receipt["in_reply_to"], receipt["thread"]) == (sent["id"], "t")
    assert receipt["body"]["action"] == "delivered"
    assert receipt["body"]["status"] == "2.0.0"
    assert receipt["body"]["final_recipient"] == "bob@globex.test"
    assert receipt["body"]["reporting_mta"] == "globex.test"
    status = await w.status(acme, alice, sent["id"])
    rec = status["recipients"]["bob@globex.test"]
    assert (rec["state"], rec["code"]) == ("delivered", "2.0.0")
    assert [(e["event"], e.get("hop")) for e in status["events"]][-2:] == [
        ("sent", globex.url),
        ("delivered", "federation:globex.test"),
    ]
    # The receipt is no message of its own: no receipt comes back for it.
    assert await acme.relay.sender.run_once() == 0
    assert await globex.relay.store.list_queue() == []
    # synq status shows it too.
    args = argparse.Namespace(id=sent["id"], json=False)
    assert await cli.status(args, acme.relay) == 0
    assert "bob@globex.test: delivered 2.0.0" in capsys.readouterr().out


async def test_without_notify_the_status_stays_sent_and_no_receipt_comes(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, _bob = await acme.agent("alice"), await globex.agent("bob")
    plain = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "hi"})
    failure = await w.send(
        acme, alice, {"to": ["bob@globex.test"], "body": "hi", "notify": ["failure", "delay"]}
    )
    assert await acme.relay.sender.run_once() == 2
    assert await globex.relay.sender.run_once() == 0
    assert await reports(w, acme, alice) == []
    for sent in (plain, failure):
        rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
        assert rec["state"] == "sent"


async def test_local_delivery_with_success_puts_a_receipt_in_the_senders_inbox(w: World) -> None:
    acme = w.orgs["acme.test"]
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    sent = await w.send(acme, alice, {"to": ["bob@acme.test"], "body": "hi", "notify": ["success"]})
    assert [m["id"] for m in await w.inbox(acme, bob)] == [sent["id"]]
    assert actions(await reports(w, acme, alice)) == [("delivered", "bob@acme.test", sent["id"])]
    [receipt] = await reports(w, acme, alice)
    assert receipt["from"] == "mailer-daemon@acme.test"
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@acme.test"]
    assert rec["state"] == "delivered"
    # Nothing left the relay, and never-ending receipts do not start.
    assert await acme.relay.sender.run_once() == 0
    assert len(await reports(w, acme, bob)) == 0


async def test_a_replayed_envelope_brings_no_second_receipt(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, _bob = await acme.agent("alice"), await globex.agent("bob")
    sent = await w.send(
        acme, alice, {"to": ["bob@globex.test"], "body": "x", "notify": ["success"]}
    )
    await acme.relay.sender.run_once()
    [held] = await globex.relay.store.inbox("bob", limit=5)
    # acme's relay sends the same envelope again (say the answer was lost), notify and all.
    replay = encode_request(
        "acme.test", [held.token], {sent["id"]: {"bob@globex.test": frozenset({"success"})}}
    )
    async with w.http.put(
        f"{globex.url}/synq/v1/federation/txn/replay-1",
        data=replay,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["results"][sent["id"]]["status"] == "duplicate"
    assert await globex.relay.sender.run_once() == 1  # the first delivery's receipt, only
    assert await globex.relay.sender.run_once() == 0
    assert len(await reports(w, acme, alice)) == 1
    status = await w.status(acme, alice, sent["id"])
    assert [e["event"] for e in status["events"]].count("delivered") == 1


async def test_a_dsn_never_brings_a_receipt(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    bob = await globex.agent("bob")
    # A bounce from acme to bob, sent with a notify asking for success: globex keeps it in
    # bob's inbox and reports nothing (RFC 3464 §2).
    bounce = acme.relay.router.report_envelope(
        dsn.Report(
            original_id=ORIGINAL,
            original_from="bob@globex.test",
            original_kind=KIND_MESSAGE,
            thread=None,
            recipient="ghost@acme.test",
            status="5.1.1",
            diagnostic="no such agent",
            attempts=1,
            last_attempt=w.clock.now(),
        ),
        None,
    )
    body = encode_request("acme.test", [bounce.token], {bounce.id: {bob.address: EVERYTHING}})
    async with w.http.put(
        f"{globex.url}/synq/v1/federation/txn/dsn-1",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert (await resp.json())["results"][bounce.id]["status"] == "accepted"
    assert [m["id"] for m in await w.inbox(globex, bob)] == [bounce.id]
    assert await globex.relay.sender.run_once() == 0
    assert await globex.relay.store.list_queue() == []
    # A receipt sent to an agent that sends a receipt… is not: receipts are DSNs too.
    alice = await acme.agent("alice")
    sent = await w.send(
        acme, alice, {"to": ["bob@globex.test"], "body": "x", "notify": ["success"]}
    )
    await acme.relay.sender.run_once()
    await globex.relay.sender.run_once()
    assert await acme.relay.sender.run_once() == 0
    assert actions(await reports(w, acme, alice)) == [("delivered", "bob@globex.test", sent["id"])]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def stand_in_globex(w: World, app: web.Application) -> AsyncIterator[TestServer]:
    """A stand-in relay for globex.test (a relay of another implementation, or of an older
    Synq), published in the loopback DNS for as long as it runs."""
    async with TestServer(app) as server:
        w.dns.set_txt(
            records.relay_record_name("globex.test"),
            [records.RelayRecord(str(server.make_url("")).rstrip("/")).to_txt()],
            ttl=60,
        )
        yield server


@pytest.mark.parametrize("document", ["none", "without-receipts"])
async def test_a_partner_that_does_not_advertise_receipts_gets_plain_transactions(
    w: World, document: str
) -> None:
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    bodies: list[dict[str, Any]] = []

    async def txn(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        bodies.append(doc)
        if set(doc) != {"origin", "envelopes"}:  # as strict as SPEC.md §8.1 was before notify
            return web.json_response({"error": {"code": "malformed_request"}}, status=400)
        results = {
            f"#{i}": {"status": "accepted", "code": "2.0.0"} for i in range(len(doc["envelopes"]))
        }
        return web.json_response({"results": results})

    app = web.Application()
    app.router.add_put("/synq/v1/federation/txn/{txn}", txn)
    if document == "without-receipts":

        async def well_known(request: web.Request) -> web.Response:
            doc = build_well_known(
                "globex.test", str(request.url.origin()), [acme.key.public_key], capabilities=()
            )
            return web.Response(body=doc.to_json(), content_type="application/json")

        app.router.add_get(WELL_KNOWN_PATH, well_known)
    async with stand_in_globex(w, app):
        sent = await w.send(
            acme, alice, {"to": ["bob@globex.test"], "body": "x", "notify": ["success", "delay"]}
        )
        assert await acme.relay.sender.run_once() == 1
    assert [set(b) for b in bodies] == [{"origin", "envelopes"}]
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    assert rec["state"] == "sent"


async def test_a_forged_receipt_changes_nothing(w: World) -> None:
    """Only globex's mailer-daemon may report on a recipient at globex, and only about an
    envelope acme's relay sent to it from the agent the receipt goes to."""
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, carol = await acme.agent("alice"), await acme.agent("carol")
    await globex.agent("bob")
    sent = await w.send(acme, alice, {"to": ["bob@globex.test"], "body": "x"})
    await acme.relay.sender.run_once()
    forgeries = [
        # To carol, who did not send it.
        ("carol@acme.test", "bob@globex.test"),
        # About a recipient at another domain than the reporter's.
        ("alice@acme.test", "bob@initech.test"),
    ]
    for to, recipient in forgeries:
        claim = globex.relay.router.report_envelope(
            dsn.Report(
                original_id=sent["id"],
                original_from=to,
                original_kind=KIND_MESSAGE,
                thread=None,
                recipient=recipient,
                status="2.0.0",
                diagnostic="delivered",
                attempts=1,
                last_attempt=w.clock.now(),
                action=dsn.ACTION_DELIVERED,
            ),
            None,
        )
        await globex.relay.store.accept_many([claim], w.clock.now())
    assert await globex.relay.sender.run_once() == 2
    assert len(await reports(w, acme, carol)) == 1
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    assert rec["state"] == "sent"


async def test_the_sender_reports_a_delay_once_when_the_partner_is_down(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    await globex.stop()
    sent = await w.send(
        acme, alice, {"to": ["bob@globex.test"], "body": "x", "notify": ["delay", "failure"]}
    )
    assert await acme.relay.sender.run_once() == 1
    assert await reports(w, acme, alice) == []
    for _ in range(3):
        w.clock.advance(dsn.DELAY_NOTICE_AFTER.total_seconds())
        assert await acme.relay.sender.run_once() == 1
    [delayed] = await reports(w, acme, alice)
    assert delayed["from"] == "mailer-daemon@acme.test"
    assert (delayed["body"]["action"], delayed["body"]["status"]) == ("delayed", "4.4.1")
    assert delayed["in_reply_to"] == sent["id"]
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["bob@globex.test"]
    assert rec["state"] == "queued"


async def test_never_and_success_only_bounce_without_a_report(w: World) -> None:
    """Without ``failure`` in ``notify`` a bounce reports nothing (RFC 3461 §4.1); the default
    reports it, as before receipts existed."""
    acme = w.orgs["acme.test"]
    alice = await acme.agent("alice")
    ids = {}
    for notify in (["never"], ["success"], None):
        payload: dict[str, Any] = {"to": ["ghost@globex.test"], "body": "x"}
        if notify is not None:
            payload["notify"] = notify
        ids[str(notify)] = (await w.send(acme, alice, payload))["id"]
    assert await acme.relay.sender.run_once() == 3
    for id in ids.values():
        rec = (await w.status(acme, alice, id))["recipients"]["ghost@globex.test"]
        assert (rec["state"], rec["code"]) == ("bounced", "5.1.1")
    assert actions(await reports(w, acme, alice)) == [("failed", "ghost@globex.test", ids["None"])]


# --- adapter-backed recipients: a real a2a-sdk agent ------------------------------------------------


@asynccontextmanager
async def tck_agent(org: Org) -> AsyncIterator[Peer]:
    """The a2a-sdk scenario agent behind ``tck@<org>`` (``synq agent add tck --a2a URL``)."""
    peer = Peer(sdk_app)
    await peer.start()
    try:
        await org.relay.store.create_agent(
            "tck", "a2a", hash_token(new_token()), peer.url, org.relay.clock.now()
        )
        yield peer
    finally:
        await peer.stop()


async def test_an_adapter_backed_agent_is_reported_delivered_on_hand_over(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    async with tck_agent(globex):
        sent = await w.send(
            acme,
            alice,
            {"to": ["tck@globex.test"], "body": "tck-complete-task", "notify": ["success"]},
        )
        assert await acme.relay.sender.run_once() == 1
        # In the agent's inbox, not yet handed over: nothing to report yet. The queue shows
        # the hand-over to come, and nothing for a partner.
        queued = await globex.relay.store.list_queue()
        assert [(q.id, q.domain) for q in queued] == [(sent["id"], "local:tck")]
        assert await globex.relay.dispatcher.run_once() == 1
        await globex.relay.sender.run_once()
    found = await reports(w, acme, alice)
    assert actions(found) == [("delivered", "tck@globex.test", sent["id"])]
    assert found[0]["body"]["status"] == "2.1.5"
    # The agent's answers came back too.
    assert any(m["kind"] == "task.update" for m in await w.inbox(acme, alice))
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["tck@globex.test"]
    assert rec["state"] == "delivered"


async def test_an_agent_that_stays_down_is_reported_delayed_once_then_delivered(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    dispatcher = globex.relay.dispatcher
    async with tck_agent(globex) as peer:
        await peer.stop()
        sent = await w.send(
            acme,
            alice,
            {
                "to": ["tck@globex.test"],
                "body": "tck-complete-task",
                "notify": ["success", "delay"],
            },
        )
        await acme.relay.sender.run_once()
        assert await dispatcher.run_once() == 1  # down: deferred, too soon to say so
        # Nothing for a partner: the one entry is the hand-over that waits.
        queued = await globex.relay.store.list_queue()
        assert [(q.id, q.domain, q.attempts) for q in queued] == [(sent["id"], "local:tck", 1)]
        for _ in range(3):
            w.clock.advance(dsn.DELAY_NOTICE_AFTER.total_seconds())
            assert await dispatcher.run_once() == 1
        await globex.relay.sender.run_once()
        found = await reports(w, acme, alice)
        assert actions(found) == [("delayed", "tck@globex.test", sent["id"])]
        assert found[0]["body"]["status"] == "4.4.1"
        assert found[0]["body"]["attempts"] == 2
        rec = (await w.status(acme, alice, sent["id"]))["recipients"]["tck@globex.test"]
        assert rec["state"] == "sent"

        await peer.start()  # back, at the same URL
        w.clock.advance(600)
        assert await dispatcher.run_once() == 1
        await globex.relay.sender.run_once()
    assert actions(await reports(w, acme, alice)) == [
        ("delayed", "tck@globex.test", sent["id"]),
        ("delivered", "tck@globex.test", sent["id"]),
    ]
    rec = (await w.status(acme, alice, sent["id"]))["recipients"]["tck@globex.test"]
    assert rec["state"] == "delivered"


# --- every face takes notify ------------------------------------------------------------------------


async def test_batch_messages_each_take_their_own_notify(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, _bob = await acme.agent("alice"), await globex.agent("bob")
    messages = [
        {"to": ["bob@globex.test"], "body": "1", "notify": ["success"]},
        {"to": ["bob@globex.test"], "body": "2"},
        {"to": ["bob@globex.test"], "body": "3", "notify": ["never", "failure"]},
    ]
    async with w.http.post(
        f"{acme.url}/synq/v1/messages/batch", json={"messages": messages}, headers=alice.auth
    ) as resp:
        assert resp.status == 202
        results = (await resp.json())["results"]
    assert results[2]["error"]["code"] == "invalid_envelope"
    assert "never cannot be combined" in results[2]["error"]["message"]
    await acme.relay.sender.run_once()
    await globex.relay.sender.run_once()
    assert actions(await reports(w, acme, alice)) == [
        ("delivered", "bob@globex.test", results[0]["id"])
    ]
    states = [
        (await w.status(acme, alice, r["id"]))["recipients"]["bob@globex.test"]["state"]
        for r in results[:2]
    ]
    assert states == ["delivered", "sent"]


async def test_the_mcp_face_send_message_takes_notify(w: World) -> None:
    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice, _bob = await acme.agent("alice"), await globex.agent("bob")
    async with mcp_client(f"{acme.url}/mcp", alice) as client:
        sent = await client.call_tool(
            "send_message", {"to": "bob@globex.test", "body": "hi", "notify": ["success"]}
        )
        message_id = sent.structured_content["id"]  # type: ignore[index]
        bad = await client.call_tool(
            "send_message", {"to": "bob@globex.test", "body": "x", "notify": ["never", "delay"]}
        )
        assert bad.is_error
        assert "invalid_envelope" in text_of(bad)
        await acme.relay.sender.run_once()
        await globex.relay.sender.run_once()
        status = await client.call_tool("message_status", {"id": message_id})
        recipients = status.structured_content["recipients"]  # type: ignore[index]
        assert recipients["bob@globex.test"]["state"] == "delivered"
        inbox = await client.call_tool("check_inbox", {})
        [receipt] = inbox.structured_content["messages"]  # type: ignore[index]
        assert (receipt["kind"], receipt["body"]["action"]) == ("dsn", "delivered")


async def test_the_a2a_face_takes_notify_in_the_message_metadata(w: World) -> None:
    """A client of the A2A face asks in its message's metadata; the receipt comes to the calling
    agent's inbox and leaves the task as the agent's answers make it."""

    acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
    alice = await acme.agent("alice")
    await globex.agent("bob")

    def request(text: str, notify: list[Any]) -> SendMessageRequest:
        metadata = struct_pb2.Struct()
        metadata.update({NOTIFY_METADATA: notify})
        message = Message(
            role=Role.ROLE_USER, message_id=text, parts=[Part(text=text)], metadata=metadata
        )
        return SendMessageRequest(
            message=message,
            configuration=SendMessageConfiguration(return_immediately=True),
        )

    async with httpx.AsyncClient(headers=alice.auth, timeout=30) as http:
        url = f"{acme.url}/a2a/bob@globex.test"
        card = await A2ACardResolver(http, url).get_agent_card()
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        [submitted] = [e async for e in client.send_message(request("hello", ["success"]))]
        task_id = submitted.task.id
        with pytest.raises(a2a_errors.InvalidParamsError, match="never"):
            [e async for e in client.send_message(request("again", ["never", "success"]))]
        await acme.relay.sender.run_once()
        await globex.relay.sender.run_once()
        await acme.relay.reply_tracker.run_once()
        # The face's task id is the envelope id: its status and its receipt name it.
        assert actions(await reports(w, acme, alice)) == [("delivered", "bob@globex.test", task_id)]
        rec = (await w.status(acme, alice, task_id))["recipients"]["bob@globex.test"]
        assert rec["state"] == "delivered"
        task = await acme.relay.task_store.load(task_id)
        assert task is not None
        assert task[0].state == "TASK_STATE_SUBMITTED"  # a receipt is no failure


# --- the local API's refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "words"), NOTIFY_BAD)
async def test_the_api_refuses_a_bad_notify(
    client: TestClient[Any, Any], make_agent: AgentFactory, value: Any, words: str
) -> None:
    alice = await make_agent("alice")
    await make_agent("bob")
    async with client.post(
        "/synq/v1/messages",
        json={"to": ["bob@acme.test"], "body": "x", "notify": value},
        headers=alice.auth,
    ) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert (error["code"], error["status"]) == ("invalid_envelope", "5.6.0")
    assert words in error["message"]


def test_envelope_codec_is_untouched() -> None:
    """notify never enters the signed envelope: the envelope's members are those of SPEC.md
    §3.1, and one with a notify member is refused as any unknown member is (§3.2)."""
    good = receipt_envelope()
    payload = json.loads(env_mod.encode(good))
    assert "notify" not in payload
    payload["notify"] = ["success"]
    with pytest.raises(InvalidEnvelope):
        env_mod.decode(json.dumps(payload).encode())
