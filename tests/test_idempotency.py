"""Idempotent submission (SPEC.md §6.2): a retry under the same key gets the first answer and
never a second envelope.

Three rings: the key's wire forms and the request fingerprint as tables (relay/core/
idempotency.py, ``Draft.fingerprint``); the store's contract on every backend (the key recorded
in the accept transaction, races between two stores, purge, release); relays on every backend
over loopback HTTP — the send API, the batch, the MCP face's ``send_message`` — and the A2A face,
whose ``messageId`` is the key, across a restart of the relay. The crash of a real ``synq
serve`` between its commit and its answer is tests/test_idempotency_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from a2a.types import GetTaskRequest, ListTasksRequest, TaskState
from a2a.utils import errors as a2a_errors

from relay.core import jws
from relay.core.address import Address
from relay.core.draft import Draft
from relay.core.envelope import Envelope, encode
from relay.core.errors import Conflict, MalformedRequest, UnknownRecipient
from relay.core.idempotency import check_key, digest, parse_header
from relay.core.ids import hash_token
from relay.core.limits import MAX_IDEMPOTENCY_KEY_LENGTH
from relay.runtime import Relay
from relay.store import IdempotencyKey, NewEnvelope, Store, open_store
from relay.store.backpressure import MAX_PENDING_WRITES
from relay.store.base import A2ATask
from relay.store.sqlite import SQLiteStore
from tests import pg
from tests.a2a_peers import eventually
from tests.conftest import Agent
from tests.fedenv import Org, World, world
from tests.helpers import wait_until
from tests.mcpenv import mcp_client, text_of
from tests.test_a2a_bridge import TCK, Bridge, bridge, collect, message

HERE = "acme.test"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = jws.SigningKey.generate("s1")
SEND = "/synq/v1/messages"
BATCH = "/synq/v1/messages/batch"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the key's wire forms and the fingerprint -----------------------------------------------------

LONGEST = "k" * MAX_IDEMPOTENCY_KEY_LENGTH

#: ``Idempotency-Key`` values and the key each names.
HEADER_KEYS: list[tuple[str, str]] = [
    ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    # Bare, as many clients send it; a UUID's first character may be a digit.
    ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    ("tok:en/1.x~*", "tok:en/1.x~*"),
    ('  "padded"\t', "padded"),
    ('"with space, and comma"', "with space, and comma"),
    (r'"a \"quote\" and a \\ backslash"', 'a "quote" and a \\ backslash'),
    (f'"{LONGEST}"', LONGEST),
    (LONGEST, LONGEST),
]

#: ``Idempotency-Key`` values refused (RFC 8941 §3.3.3 Strings, §4.2.5 parsing).
HEADER_REFUSED: list[str] = [
    "",
    '""',
    '"unterminated',
    '"a";p=1',  # parameters
    "a;p=1",
    '"a", "b"',  # a list
    "a b",
    '"a"b',
    r'"bad \n escape"',
    '"tab\there"',
    '"naïve"',
    "naïve",
    f'"{LONGEST}k"',
    LONGEST + "k",
]


@pytest.mark.parametrize(("value", "key"), HEADER_KEYS)
def test_header_values_name_their_key(value: str, key: str) -> None:
    assert parse_header(value) == key


@pytest.mark.parametrize("value", HEADER_REFUSED)
def test_header_values_refused_are_malformed(value: str) -> None:
    with pytest.raises(MalformedRequest):
        parse_header(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("k-1", True),
        ('with space and "quotes" \\ ~', True),
        (LONGEST, True),
        (LONGEST + "k", False),
        ("", False),
        ("naïve", False),
        ("line\nbreak", False),
        ("\x7f", False),
        (1, False),
        (None, False),
        (["k"], False),
    ],
)
def test_json_keys_are_printable_ascii_strings(value: object, ok: bool) -> None:
    if ok:
        assert check_key(value) == value
    else:
        with pytest.raises(MalformedRequest):
            check_key(value)


def test_a_digest_is_of_the_json_value_not_its_spelling() -> None:
    assert digest({"a": 1, "b": [1, {"c": "é"}]}) == digest({"b": [1, {"c": "é"}], "a": 1})
    assert digest({"a": 1, "b": [1, 2]}) != digest({"a": 1, "b": [2, 1]})
    assert digest("1") != digest(1)


ALICE = Address.parse(f"alice@{HERE}")
BOB = Address.parse(f"bob@{HERE}")
CAROL = Address.parse(f"carol@{HERE}")
BASE = Draft(ALICE, (BOB,), "text/plain", "hi", thread="t1", expires=T0)


@pytest.mark.parametrize(
    "same",
    [
        Draft(
            ALICE, (Address.parse("Bob@ACME.test"),), "text/plain", "hi", thread="t1", expires=T0
        ),
        replace(BASE, expires=T0.astimezone(timezone(timedelta(hours=5)))),  # the same instant
        replace(BASE, kind="message"),  # the default, spelled out
        replace(BASE, id="0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d"),  # the relay's choice
    ],
)
def test_requests_for_the_same_envelope_have_one_fingerprint(same: Draft) -> None:
    assert same.fingerprint() == BASE.fingerprint()


@pytest.mark.parametrize(
    "other",
    [
        replace(BASE, body="hi!"),
        replace(BASE, to=(BOB, CAROL)),
        replace(BASE, thread="t2"),
        replace(BASE, thread=None),
        replace(BASE, in_reply_to="m1"),
        replace(BASE, expires=T0 + timedelta(milliseconds=1)),
        replace(BASE, expires=None),
        replace(BASE, content_type="text/markdown"),
        replace(BASE, kind="note"),
        replace(BASE, trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ],
)
def test_requests_for_another_envelope_have_another_fingerprint(other: Draft) -> None:
    assert other.fingerprint() != BASE.fingerprint()


# --- the store, on every backend ------------------------------------------------------------------


@pytest.fixture(params=pg.BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    return pg.database_url(request)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url, domain=HERE)
    try:
        for name in ("alice", "bob", "carol"):
            await s.create_agent(name, "inbox", hash_token(f"token-{name}"), None, T0)
        yield s
    finally:
        await s.close()


def item(
    id: str,
    *,
    key: str | None = None,
    sender: str = "alice",
    fingerprint: str = "f1",
    local: Sequence[str] = ("bob",),
    remote: Sequence[str] = (),
) -> NewEnvelope:
    """A real signed envelope from ``sender``, under ``key`` if given, as the router hands it."""
    envelope = Envelope(
        v=1,
        id=id,
        from_=f"{sender}@{HERE}",
        to=[f"{n}@{HERE}" for n in local] + list(remote),
        created=T0,
        expires=T0 + timedelta(days=2),
        kind="message",
        content_type="text/plain",
        body=f"body of {id}",
    )
    return NewEnvelope(
        origin=HERE,
        id=id,
        sender=envelope.from_,
        token=jws.sign(encode(envelope), KEY),
        created=envelope.created,
        expires=envelope.expires,
        thread=None,
        kind="message",
        local=list(local),
        remote=list(remote),
        via="api",
        idempotency=None if key is None else IdempotencyKey(sender, key, fingerprint),
    )


async def inbox_ids(store: Store, agent: str = "bob") -> list[str]:
    return [i.id for i in await store.inbox(agent, limit=100, include_acked=True)]


async def test_a_key_is_recorded_with_its_envelope_and_its_second_use_stores_nothing(
    store: Store,
) -> None:
    first = await store.accept(item("e1", key="k1"), at(0))
    assert (first.id, first.duplicate, first.prior) == ("e1", False, None)
    [record] = (await store.idempotency_records("alice", ["k1", "k2"])).values()
    assert (record.agent, record.key, record.fingerprint) == ("alice", "k1", "f1")
    assert (record.origin, record.id, record.created) == (HERE, "e1", at(0))

    again = await store.accept(item("e2", key="k1", fingerprint="f2"), at(1))
    assert again.duplicate
    assert again.prior == record
    assert await store.message_status(HERE, "e2") is None
    assert await inbox_ids(store) == ["e1"]
    # Without a key, the same accept is the envelope's own idempotent union (SPEC.md §8.5).
    assert (await store.accept(item("e3"), at(2))).prior is None


async def test_a_key_repeated_in_one_batch_answers_for_the_first_item(store: Store) -> None:
    results = await store.accept_many(
        [item("b1", key="k"), item("b2", key="k", fingerprint="f2"), item("b3", key="other")],
        at(0),
    )
    assert [r.prior is None for r in results] == [True, False, True]
    prior = results[1].prior
    assert prior is not None
    assert (prior.id, prior.fingerprint, prior.created) == ("b1", "f1", at(0))
    assert await inbox_ids(store) == ["b1", "b3"]


async def test_one_key_of_two_agents_names_two_envelopes(store: Store) -> None:
    await store.accept(item("a1", key="k", sender="alice"), at(0))
    other = await store.accept(item("c1", key="k", sender="carol"), at(0))
    assert other.prior is None
    assert await inbox_ids(store) == ["a1", "c1"]
    assert (await store.idempotency_records("carol", ["k"]))["k"].id == "c1"


async def test_an_accept_that_fails_records_no_key(store: Store) -> None:
    with pytest.raises(UnknownRecipient):
        await store.accept(item("x1", key="k", local=("ghost",)), at(0))
    assert await store.idempotency_records("alice", ["k"]) == {}
    assert (await store.accept(item("x2", key="k"), at(1))).prior is None


async def test_a_key_of_a_queued_envelope_queues_it_once(store: Store) -> None:
    await store.accept(item("r1", key="k", local=(), remote=["zed@globex.test"]), at(0))
    again = await store.accept(item("r2", key="k", local=(), remote=["zed@globex.test"]), at(0))
    assert again.prior is not None
    assert [e.id for e in await store.list_queue()] == ["r1"]


async def test_two_stores_racing_for_one_key_keep_one_envelope(store_url: str) -> None:
    """Two relay processes on one database (or one SQLite file), the same key at once: the one
    that commits first stores its envelope, the other's accept stores nothing and answers with
    the first use (on PostgreSQL it waits for the first's COMMIT on the key's row)."""
    first = await open_store(store_url, domain=HERE)
    second = await open_store(store_url, domain=HERE)
    try:
        for name in ("alice", "bob"):
            await first.create_agent(name, "inbox", hash_token(f"token-{name}"), None, T0)
        for round in range(5):
            key = f"race-{round}"
            a, b = await asyncio.gather(
                first.accept(item(f"a{round}", key=key), at(round)),
                second.accept(item(f"b{round}", key=key), at(round)),
            )
            winner, loser = (a, b) if a.prior is None else (b, a)
            assert winner.prior is None
            assert loser.prior is not None
            assert loser.prior.id == winner.id
            assert await first.message_status(HERE, loser.id) is None
        assert len(await inbox_ids(first)) == 5
    finally:
        await second.close()
        await first.close()


async def test_purge_forgets_the_oldest_keys_first_up_to_the_limit(store: Store) -> None:
    keys = [f"k{i}" for i in range(5)]
    for i, key in enumerate(keys):
        await store.accept(item(f"p{i}", key=key), at(i))
    assert await store.purge_idempotency_keys(at(3), limit=2) == 2
    assert sorted(await store.idempotency_records("alice", keys)) == ["k2", "k3", "k4"]
    assert await store.purge_idempotency_keys(at(3), limit=10) == 1
    assert await store.purge_idempotency_keys(at(3), limit=10) == 0
    assert await store.purge_idempotency_keys(at(9), limit=0) == 0
    assert sorted(await store.idempotency_records("alice", keys)) == ["k3", "k4"]
    # The envelopes stay; a purged key is free again.
    assert await store.message_status(HERE, "p0") is not None
    assert (await store.accept(item("p5", key="k0"), at(5))).prior is None


async def test_release_forgets_a_key_only_while_it_names_the_envelope(store: Store) -> None:
    await store.accept(item("r1", key="k"), at(0))
    assert not await store.release_idempotency_key("alice", "k", "another")
    assert not await store.release_idempotency_key("carol", "k", "r1")
    assert await store.release_idempotency_key("alice", "k", "r1")
    assert await store.idempotency_records("alice", ["k"]) == {}
    assert (await store.accept(item("r2", key="k"), at(1))).prior is None


async def test_an_agents_keys_go_with_it(store: Store) -> None:
    await store.accept(item("g1", key="k", sender="carol"), at(0))
    assert await store.remove_agent("carol")
    assert await store.idempotency_records("carol", ["k"]) == {}


def a2a_task(id: str) -> A2ATask:
    return A2ATask(
        id=id,
        owner="alice",
        address=f"tck@{HERE}",
        context="ctx",
        state="TASK_STATE_SUBMITTED",
        remote_id=None,
        snapshot="{}",
        push="[]",
        version=0,
        status_at=T0,
        created=T0,
        updated=at(1),
    )


async def test_the_a2a_face_records_a_key_with_its_task_or_its_turn(store: Store) -> None:
    call = IdempotencyKey("alice", "a2a:call", "f")
    await store.a2a_create_task(a2a_task("t1"), "t1", key=call)
    record = (await store.idempotency_records("alice", ["a2a:call"]))["a2a:call"]
    assert (record.origin, record.id, record.created) == (HERE, "t1", T0)
    with pytest.raises(Conflict):
        await store.a2a_create_task(a2a_task("t2"), "t2", key=call)
    assert await store.a2a_get_task("t2") is None  # nothing of the second call was written

    turn = IdempotencyKey("alice", "a2a:turn", "g")
    task = await store.a2a_get_task("t1")
    assert task is not None
    assert await store.a2a_update_task(task, 0, link="e2", key=turn) == "updated"
    assert (await store.idempotency_records("alice", ["a2a:turn"]))["a2a:turn"].id == "e2"
    task = await store.a2a_get_task("t1")
    assert task is not None
    with pytest.raises(Conflict):
        await store.a2a_update_task(task, 1, link="e3", key=turn)
    unchanged = await store.a2a_get_task("t1")
    assert unchanged is not None
    assert unchanged.version == 1
    assert await store.a2a_tasks_for_envelopes(["e2", "e3"]) == {"e2": "t1"}
    # The key of a task is the agent's, whatever face uses it next.
    assert (await store.accept(item("e4", key="a2a:call"), at(2))).prior == record


# --- relays over HTTP, on every backend -----------------------------------------------------------


@pytest.fixture(params=pg.BACKENDS)
async def w(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path, HERE, store_url=pg.store_urls(request, request.param)) as env:
        yield env


@pytest.fixture
def acme(w: World) -> Org:
    return w.orgs[HERE]


async def post(
    w: World,
    org: Org,
    agent: Agent,
    payload: Any,
    *,
    key: str | None = None,
    path: str = SEND,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST as ``agent``, with ``Idempotency-Key: key`` if given (sent exactly as written)."""
    sent = {**agent.auth, **(headers or {})}
    if key is not None:
        sent["Idempotency-Key"] = key
    async with w.http.post(f"{org.url}{path}", json=payload, headers=sent) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def ids_in(w: World, org: Org, agent: Agent) -> list[str]:
    return [m["id"] for m in await w.inbox(org, agent, all=1)]


async def test_the_same_key_twice_is_one_envelope_and_the_first_answer(w: World, acme: Org) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    payload = {"to": ["bob@acme.test"], "body": "hi", "thread": "t1"}
    status, headers, body = await post(w, acme, alice, payload, key='"k-1"')
    assert status == 202
    assert body == {"id": body["id"], "status": "queued"}
    # The same key, bare; the same request, spelled otherwise.
    again = {"thread": "t1", "body": "hi", "to": ["Bob@ACME.test"], "kind": "message"}
    status2, headers2, body2 = await post(w, acme, alice, again, key="k-1")
    assert (status2, body2, headers2["Location"]) == (status, body, headers["Location"])
    assert await ids_in(w, acme, bob) == [body["id"]]


async def test_the_same_key_for_another_request_is_422_and_sends_nothing(
    w: World, acme: Org
) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    status, _, first = await post(w, acme, alice, {"to": ["bob@acme.test"], "body": "a"}, key="k")
    assert status == 202
    status, _, body = await post(w, acme, alice, {"to": ["bob@acme.test"], "body": "b"}, key="k")
    assert status == 422
    assert body["error"]["code"] == "idempotency_key_reused"
    assert body["error"]["status"] == "5.5.4"
    assert await ids_in(w, acme, bob) == [first["id"]]


async def test_two_agents_may_use_one_key(w: World, acme: Org) -> None:
    alice, carol, bob = [await acme.agent(n) for n in ("alice", "carol", "bob")]
    payload = {"to": ["bob@acme.test"], "body": "hi"}
    _, _, one = await post(w, acme, alice, payload, key="shared")
    _, _, two = await post(w, acme, carol, payload, key="shared")
    assert one["id"] != two["id"]
    assert sorted(await ids_in(w, acme, bob)) == sorted([one["id"], two["id"]])


async def test_a_refused_request_leaves_its_key_free(w: World, acme: Org) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    status, _, body = await post(w, acme, alice, {"to": ["ghost@acme.test"], "body": "x"}, key="k")
    assert (status, body["error"]["code"]) == (422, "unknown_recipient")
    status, _, body = await post(w, acme, alice, {"to": ["bob@acme.test"], "body": "x"}, key="k")
    assert status == 202
    assert await ids_in(w, acme, bob) == [body["id"]]


async def test_a_retry_is_not_charged_to_the_rate_limit(w: World, acme: Org) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    payload = {"to": ["bob@acme.test"], "body": "hi"}
    _, _, first = await post(w, acme, alice, payload, key="k")
    rates = acme.relay.router.agent_rates
    while rates.take("alice", acme.relay.clock.monotonic()) == 0:  # spend the whole bucket
        pass
    status, _, body = await post(w, acme, alice, payload, key="k")
    assert (status, body) == (202, first)
    status, _, body = await post(w, acme, alice, payload, key="k2")
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert await ids_in(w, acme, bob) == [first["id"]]


@pytest.mark.parametrize("value", ["", '"', '"a";p=1', "naïve", "k" * 256])
async def test_a_bad_key_is_400(w: World, acme: Org, value: str) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    status, _, body = await post(w, acme, alice, {"to": ["bob@acme.test"], "body": "x"}, key=value)
    assert (status, body["error"]["code"]) == (400, "malformed_request")
    assert await ids_in(w, acme, bob) == []


async def test_the_header_twice_is_400(w: World, acme: Org) -> None:
    alice = await acme.agent("alice")
    async with w.http.post(
        f"{acme.url}{SEND}",
        json={"to": ["alice@acme.test"], "body": "x"},
        headers=[*alice.auth.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "a")],
    ) as resp:
        assert resp.status == 400


@contextlib.contextmanager
def writes_held(relay: Relay) -> Iterator[None]:
    """Hold the store's writes from another connection, as another process's long transaction
    would: the relay's next commit waits until the block ends."""
    store = relay.store
    if isinstance(store, SQLiteStore):
        db = sqlite3.connect(store.path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("COMMIT")
            db.close()
    else:
        with psycopg.connect(relay.config.store_url) as conn:
            # Reads go on (idempotency_records); the insert of a key waits.
            conn.execute("LOCK TABLE idempotency_keys IN EXCLUSIVE MODE")
            try:
                yield
            finally:
                conn.rollback()


async def test_a_key_whose_first_request_is_in_flight_is_409(w: World, acme: Org) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    payload = {"to": ["bob@acme.test"], "body": "slow"}
    gate = acme.relay.custody.gate
    with writes_held(acme.relay):
        first = asyncio.create_task(post(w, acme, alice, payload, key="k"))
        await wait_until(lambda: gate.writes == 1)  # committing, not answered yet
        status, _, body = await post(w, acme, alice, payload, key="k")
        assert (status, body["error"]["code"]) == (409, "conflict")
    status, _, answer = await first
    assert status == 202
    status, headers, replayed = await post(w, acme, alice, payload, key="k")
    assert (status, replayed) == (202, answer)
    assert headers["Location"] == f"/synq/v1/messages/{answer['id']}"
    assert await ids_in(w, acme, bob) == [answer["id"]]


async def test_batch_messages_carry_their_own_keys(w: World, acme: Org) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    messages = [
        {"to": ["bob@acme.test"], "body": "one", "idempotency_key": "b-1"},
        {"to": ["bob@acme.test"], "body": "two", "idempotency_key": "b-2"},
        {"to": ["bob@acme.test"], "body": "three"},
    ]
    status, _, first = await post(w, acme, alice, {"messages": messages}, path=BATCH)
    assert status == 202
    ids = [r["id"] for r in first["results"]]
    # The client lost that answer and sends the batch again: the keyed messages come back with
    # their first ids, the one without a key is sent anew.
    _, _, again = await post(w, acme, alice, {"messages": messages}, path=BATCH)
    assert [r["id"] for r in again["results"]][:2] == ids[:2]
    assert again["results"][2]["id"] != ids[2]
    assert sorted(await ids_in(w, acme, bob)) == sorted([*ids, again["results"][2]["id"]])
    # The single endpoint's header and a batch member name the same key.
    _, _, single = await post(w, acme, alice, {"to": ["bob@acme.test"], "body": "one"}, key="b-1")
    assert single["id"] == ids[0]

    mixed = [
        {"to": ["bob@acme.test"], "body": "other", "idempotency_key": "b-1"},  # reused
        {"to": ["bob@acme.test"], "body": "four", "idempotency_key": "b-4"},
        {"to": ["bob@acme.test"], "body": "four", "idempotency_key": "b-4"},  # still in flight
        {"to": ["bob@acme.test"], "body": "five", "idempotency_key": ""},
        {"to": ["bob@acme.test"], "body": "six", "idempotency_key": 6},
    ]
    status, _, answer = await post(w, acme, alice, {"messages": mixed}, path=BATCH)
    assert status == 202
    codes = [r.get("error", {}).get("code") for r in answer["results"]]
    assert codes == [
        "idempotency_key_reused",
        None,
        "conflict",
        "malformed_request",
        "malformed_request",
    ]
    assert answer["results"][1]["id"] in await ids_in(w, acme, bob)
    assert len(await ids_in(w, acme, bob)) == 5


async def test_a_batch_takes_no_idempotency_key_header(w: World, acme: Org) -> None:
    alice = await acme.agent("alice")
    body = {"messages": [{"to": ["alice@acme.test"], "body": "x"}]}
    status, _, answer = await post(w, acme, alice, body, path=BATCH, key="k")
    assert (status, answer["error"]["code"]) == (400, "malformed_request")
    assert "idempotency_key" in answer["error"]["message"]


async def test_the_mcp_faces_send_message_takes_a_key(w: World, acme: Org) -> None:
    alice, bob = await acme.agent("alice"), await acme.agent("bob")
    async with mcp_client(f"{acme.url}/mcp", alice) as client:
        args = {"to": "bob@acme.test", "body": "via mcp", "idempotency_key": "m-1"}
        first = await client.call_tool("send_message", args)
        again = await client.call_tool("send_message", args)
        assert not first.is_error
        assert again.structured_content == first.structured_content
        other = await client.call_tool("send_message", {**args, "body": "else"})
        assert other.is_error
        assert "idempotency_key_reused" in text_of(other)
        bad = await client.call_tool("send_message", {**args, "idempotency_key": "naïve"})
        assert bad.is_error
        assert "malformed_request" in text_of(bad)
    sent_id = first.structured_content["id"]  # type: ignore[index]
    assert await ids_in(w, acme, bob) == [sent_id]
    # The same key through the API: the same message.
    status, _, body = await post(
        w, acme, alice, {"to": ["bob@acme.test"], "body": "via mcp"}, key="m-1"
    )
    assert (status, body["id"]) == (202, sent_id)


# --- the A2A face: messageId is the key ------------------------------------------------------------


async def restart_acme(b: Bridge) -> None:
    """Stop acme's relay and open it again on the same store, as a restarted process would."""
    await b.stop_loops()
    config = b.acme.relay.config
    await b.acme.stop()
    await b.acme.relay.close()
    b.acme.relay = await Relay.open(config, clock=b.w.clock)
    await b.acme.start()
    b.run(b.acme)
    b.run(b.globex)


async def delivered_to_tck(b: Bridge) -> list[str]:
    return [i.id for i in await b.globex.relay.store.inbox("tck", limit=20, include_acked=True)]


async def test_an_a2a_call_cut_off_before_custody_is_completed_by_its_retry_after_a_restart(
    tmp_path: Path,
) -> None:
    """The first call writes its task and the key, then the store takes nothing (its custody
    gate is shut): the client hears an internal error. After a restart the client sends the same
    message again: the face sends the envelope the task expects, and the agent gets it once."""
    async with bridge(tmp_path) as b:
        client = await b.client(streaming=False)
        b.acme.relay.custody.gate.max_writes = 0
        with pytest.raises(a2a_errors.InternalError):
            await collect(client, message("tck-complete-task-cut", message_id="m-cut"))
        b.acme.relay.custody.gate.max_writes = MAX_PENDING_WRITES
        listed = await client.list_tasks(ListTasksRequest())
        [waiting] = listed.tasks
        assert waiting.status.state == TaskState.TASK_STATE_SUBMITTED

        await restart_acme(b)
        client = await b.client(streaming=False)
        [done] = await collect(client, message("tck-complete-task-cut", message_id="m-cut"))
        assert done.task.id == waiting.id
        assert done.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert await delivered_to_tck(b) == [waiting.id]

        # That answer was written in full: after another restart, another message under the
        # same messageId is a new call, not invalid params (SPEC.md "The A2A face", "Retries").
        await restart_acme(b)
        client = await b.client(streaming=False)
        [other] = await collect(client, message("tck-complete-task-other", message_id="m-cut"))
        assert other.task.id != waiting.id
        assert other.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert (await client.list_tasks(ListTasksRequest())).total_size == 2
        assert sorted(await delivered_to_tck(b)) == sorted([waiting.id, other.task.id])


async def test_a_follow_up_whose_answer_was_lost_is_retried_into_the_same_turn(
    tmp_path: Path,
) -> None:
    """A follow-up's turn is written with its key, the envelope sent, and the relay stops before
    the client hears the answer: after the restart the same message is the same turn, answered
    from the task, and the agent got it once. That answer written in full, the same messageId
    on another task's follow-up (as the A2A TCK sends) is a new turn of its own."""
    async with bridge(tmp_path) as b:
        client = await b.client(streaming=False)
        [open_task] = await collect(client, message("tck-input-required-f", message_id="f-1"))
        task_id = open_task.task.id
        turn = message("tck-complete-task-f", task_id=task_id, message_id="f-2")
        # What the first call did before its answer was lost: the turn and its envelope.
        started = await b.acme.relay.task_store.start("alice", Address.parse(TCK), turn)
        assert (started.task_id, started.replay) == (task_id, False)

        async def answered() -> bool:  # the agent's answer reached acme, not the client
            row = await b.acme.relay.store.a2a_get_task(task_id)
            return row is not None and row.state == "TASK_STATE_COMPLETED"

        await eventually(answered)
        await restart_acme(b)
        client = await b.client(streaming=False)
        [replayed] = await collect(client, turn)
        assert replayed.task.id == task_id
        assert replayed.task.status.state == TaskState.TASK_STATE_COMPLETED
        task = await client.get_task(GetTaskRequest(id=task_id))
        turns = [m.message_id for m in task.history if m.message_id in ("f-1", "f-2")]
        assert turns == ["f-1", "f-2"]
        assert len(await delivered_to_tck(b)) == 2  # f-1 and f-2, each once

        [other] = await collect(client, message("tck-input-required-f3", message_id="f-3"))
        reused = message("tck-complete-task-f", task_id=other.task.id, message_id="f-2")
        [done] = await collect(client, reused)
        assert (done.task.id, done.task.status.state) == (
            other.task.id,
            TaskState.TASK_STATE_COMPLETED,
        )
        assert len(await delivered_to_tck(b)) == 4


async def test_a_refused_a2a_call_leaves_its_message_id_free(tmp_path: Path) -> None:
    async with bridge(tmp_path) as b:
        client = await b.client(streaming=False)
        rates = b.acme.relay.router.agent_rates
        while rates.take("alice", b.acme.relay.clock.monotonic()) == 0:
            pass
        with pytest.raises(a2a_errors.InvalidRequestError):
            await collect(client, message("tck-complete-task-rl", message_id="rl-1"))
        b.w.clock.advance(3600)  # the bucket refills
        [done] = await collect(client, message("tck-complete-task-rl", message_id="rl-1"))
        assert done.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert await delivered_to_tck(b) == [done.task.id]
