"""Replies that arrive after the reply that set their A2A face task's current status, on a task
that has not ended: an update behind the answer that asked for input (SPEC.md "A2A mapping",
"Late replies"; relay/tasks/late.py).

Envelopes keep no order (SPEC.md §9.1): bob sends an update (working) and then asks the client
for input; the update arrives second. Each test writes a task of alice's to bob into a real
relay's store — SQLite and PostgreSQL — puts bob's signed replies into alice's inbox in the
order they "arrive", and runs the reply tracker over them, as the relay's background loop does;
the last test calls the face over HTTP with the relay's background loops running.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
from aiohttp.test_utils import TestClient

from adapters.a2a import tasks as folding
from adapters.a2a import wire
from relay.config import StoreSection
from relay.core.address import Address
from relay.runtime import Relay
from relay.store.base import inbox_channel
from relay.tasks.late import StatusReply
from relay.tasks.store import Tail
from tests import pg, test_store
from tests.conftest import AgentFactory, make_config
from tests.test_a2a_late_replies import BOB, Scene, artifact_update, scene, texts
from tests.test_store import T0, add_agent
from tests.test_store_a2a import task as stored_task

A2A = {"content_type": wire.CONTENT_TYPE}

# The backend-parametrised store of tests/test_store.py, for the migration's test.
store_url = test_store.store_url


@pytest.fixture(params=pg.BACKENDS)
async def relay(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Relay]:
    config = make_config(tmp_path / "acme")
    if request.param == "postgresql":
        config = config.model_copy(update={"store": StoreSection(url=pg.database_url(request))})
    r = await Relay.open(config)
    try:
        yield r
    finally:
        await r.close()


def waiting(text: str, state: str = "TASK_STATE_INPUT_REQUIRED") -> dict[str, Any]:
    """bob's status update that makes the task wait for the client, asking ``text``."""
    return {
        "statusUpdate": {
            "taskId": "bob-task",
            "contextId": "bob-ctx",
            "status": {
                "state": state,
                "message": {"role": "ROLE_AGENT", "messageId": text, "parts": [{"text": text}]},
            },
        }
    }


async def follow_up(s: Scene, text: str) -> None:
    """alice answers bob's question: a follow-up message to the task, through the face."""
    message = Message(
        role=Role.ROLE_USER,
        message_id=f"f-{text}",
        task_id=s.task_id,
        parts=[Part(text=text)],
    )
    await s.relay.task_store.start("alice", Address.parse(BOB), SendMessageRequest(message=message))


async def test_an_update_behind_the_question_leaves_the_task_waiting(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-wait")
    update = s.reply("u1", 1, "looking")
    question = s.reply("q1", 2, waiting("which city?"), **A2A)
    await s.arrive(question, update)
    row, task = await s.task()
    # The task waits for alice, as bob left it; his update is in its history all the same.
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert task.status.message.parts[0].text == "which city?"
    assert texts(task) == ["what time is it?", "looking"]
    assert task.history[1].context_id == "ctx"
    assert row.state == "TASK_STATE_INPUT_REQUIRED"
    # The stale update logs no event: no stream or webhook is told the task works again.
    assert await s.logged() == ["TASK_STATE_INPUT_REQUIRED"]
    assert await s.unread() == []
    record = StatusReply.parse(row.status_by)
    assert record is not None
    assert record.created == s.at(2)
    assert [r.source for r in record.late] == ["globex.test/u1"]
    # GetTask reads it waiting, as the client's blocking SendMessage was answered.
    _, got = await relay.task_store.get("alice", Address.parse(BOB), "t-wait")
    assert got.status.state == TaskState.TASK_STATE_INPUT_REQUIRED


async def test_auth_required_is_kept_too(relay: Relay, make_agent: AgentFactory) -> None:
    s = await scene(relay, make_agent, "t-auth")
    await s.arrive(
        s.reply("q1", 2, waiting("sign in", "TASK_STATE_AUTH_REQUIRED"), **A2A),
        s.reply("u1", 1, "looking"),
    )
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_AUTH_REQUIRED
    assert texts(task) == ["what time is it?", "looking"]
    assert await s.logged() == ["TASK_STATE_AUTH_REQUIRED"]


async def test_a_reader_of_the_waiting_task_hears_nothing_of_the_stale_update(
    relay: Relay, make_agent: AgentFactory
) -> None:
    # The task is known in memory while its reader waits: the stale update is folded into the
    # task the tracker holds there, and the reader gets the question, then nothing.
    s = await scene(relay, make_agent)
    async with Tail(relay.task_store, s.task_id, 0) as tail:
        assert relay.task_store.knows(s.task_id)
        await s.arrive(s.reply("q1", 2, waiting("which city?"), **A2A), s.reply("u1", 1, "looking"))
        loop = asyncio.get_running_loop()
        item = await tail.next(loop.time() + 10)
        assert item is not None
        assert folding.state_of(item[1]) == TaskState.TASK_STATE_INPUT_REQUIRED
        assert await tail.next(loop.time()) is None
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert texts(task) == ["what time is it?", "looking"]


async def test_the_same_order_as_sent_folds_as_before(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-order")
    await s.arrive(s.reply("u1", 1, "looking"), s.reply("q1", 2, waiting("which city?"), **A2A))
    row, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert texts(task) == ["what time is it?", "looking"]
    assert await s.logged() == ["TASK_STATE_WORKING", "TASK_STATE_INPUT_REQUIRED"]
    record = StatusReply.parse(row.status_by)
    assert record is not None
    assert (record.created, record.late) == (s.at(2), ())


async def test_an_older_update_behind_a_newer_one_does_not_replace_it(
    relay: Relay, make_agent: AgentFactory
) -> None:
    # Not only waiting states: no reply made before the one that set the status changes it.
    s = await scene(relay, make_agent, "t-working")
    await s.arrive(s.reply("u2", 2, "almost there"), s.reply("u1", 1, "looking"))
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_WORKING
    assert task.status.message.parts[0].text == "almost there"
    assert texts(task) == ["what time is it?", "looking"]
    assert await s.logged() == ["TASK_STATE_WORKING"]


async def test_an_answer_made_before_the_question_does_not_end_the_task(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-early")
    await s.arrive(
        s.reply("q1", 2, waiting("which city?"), **A2A), s.reply("a1", 1, "noon", kind="message")
    )
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert texts(task) == ["what time is it?", "noon"]
    assert await s.logged() == ["TASK_STATE_INPUT_REQUIRED"]


async def test_a_stale_artifact_is_added_without_an_event(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-art")
    await s.arrive(
        s.reply("q1", 2, waiting("which city?"), **A2A),
        s.reply("c1", 1, artifact_update("report", "hello"), **A2A),
        s.reply("c2", 3, artifact_update("report", " world", append=True), **A2A),
    )
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert [(a.artifact_id, [p.text for p in a.parts]) for a in task.artifacts] == [
        ("report", ["hello", " world"])
    ]
    # The chunk made after the question is a live event, as before; the stale one is not.
    assert await s.logged() == ["TASK_STATE_INPUT_REQUIRED", "artifact"]


async def test_a_reply_made_after_the_question_applies(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-next")
    await s.arrive(s.reply("q1", 2, waiting("which city?"), **A2A))
    await follow_up(s, "Paris")
    await s.arrive(s.reply("a1", 3, "noon in Paris", kind="message"))
    row, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.status.message.parts[0].text == "noon in Paris"
    assert "Paris" in texts(task)
    assert await s.logged() == ["TASK_STATE_INPUT_REQUIRED", "TASK_STATE_COMPLETED"]
    record = StatusReply.parse(row.status_by)
    assert record is not None
    assert record.created == s.at(3)


async def test_the_follow_up_clears_the_record(relay: Relay, make_agent: AgentFactory) -> None:
    # The client's input is the face's own action: it keeps no time of the agent's to compare
    # with, so the agent's next reply applies even if its clock went back meanwhile.
    s = await scene(relay, make_agent, "t-skew")
    await s.arrive(s.reply("q1", 2, waiting("which city?"), **A2A))
    await follow_up(s, "Paris")
    row, task = await s.task()
    assert row.status_by is None
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    await s.arrive(s.reply("a1", 1, "noon in Paris", kind="message"))
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.status.message.parts[0].text == "noon in Paris"


async def test_a_canceled_waiting_task_takes_no_stale_reply(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-cancel")
    await s.arrive(s.reply("q1", 2, waiting("which city?"), **A2A))
    await relay.task_store.cancel("alice", Address.parse(BOB), "t-cancel")
    await s.arrive(s.reply("u1", 1, "looking"))
    row, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_CANCELED
    assert texts(task) == ["what time is it?", "which city?"]
    assert row.status_by is None
    assert await s.unread() == []


async def test_replies_of_the_same_millisecond_on_a_working_task_apply_as_they_come(
    relay: Relay, make_agent: AgentFactory
) -> None:
    # Equal times tell no order: a working task takes them as they arrive, as before ...
    s = await scene(relay, make_agent, "t-tie")
    await s.arrive(s.reply("u1", 1, "looking"), s.reply("q1", 1, waiting("which city?"), **A2A))
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert await s.logged() == ["TASK_STATE_WORKING", "TASK_STATE_INPUT_REQUIRED"]


async def test_a_waiting_task_takes_no_update_of_the_same_millisecond(
    relay: Relay, make_agent: AgentFactory
) -> None:
    # ... but an agent asks for input and goes on working only once the client answered:
    # an update of the question's own millisecond was made before it.
    s = await scene(relay, make_agent, "t-tie2")
    await s.arrive(s.reply("q1", 1, waiting("which city?"), **A2A), s.reply("u1", 1, "looking"))
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert texts(task) == ["what time is it?", "looking"]
    assert await s.logged() == ["TASK_STATE_INPUT_REQUIRED"]


async def test_a_waiting_task_stored_without_a_record_takes_replies_as_before(
    relay: Relay, make_agent: AgentFactory
) -> None:
    # A task stored before the record was kept for every status: nothing to compare with.
    s = await scene(relay, make_agent, "t-old")
    await s.arrive(s.reply("q1", 2, waiting("which city?"), **A2A))
    row, _ = await s.task()
    await relay.store.a2a_update_task(replace(row, status_by=None), row.version, [])
    await s.arrive(s.reply("u1", 1, "looking"))
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_WORKING


def by_hand(url: str, statement: str) -> None:
    """One statement on the store's database, beside the store (as an operator would)."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
            db.execute(statement)
    else:
        test_store.sql(url, statement)


async def test_a_task_stored_before_the_rename_keeps_its_record(store_url: str) -> None:
    record = StatusReply(T0).to_json()
    store = await test_store.connect(store_url)
    try:
        await add_agent(store, "alice")
        await store.a2a_create_task(stored_task("t1", status_by=record), envelope="t1")
    finally:
        await store.close()
    # Back to the schema before the column was renamed (found by its name: the number is the
    # package's), holding the record of a task that ended: opening the store renames it.
    by_hand(store_url, "ALTER TABLE a2a_tasks RENAME COLUMN status_by TO ended_by")
    by_hand(store_url, "DELETE FROM schema_migrations WHERE name = 'a2a_status_by'")
    store = await test_store.connect(store_url)
    try:
        got = await store.a2a_get_task("t1")
        assert got is not None
        assert got.status_by == record
    finally:
        await store.close()


async def rpc(client: TestClient[Any, Any], token: str, method: str, params: Any) -> Any:
    """One JSON-RPC call to the face for bob, as alice's A2A client makes it."""
    response = await client.post(
        "/a2a/bob@acme.test",
        headers={"Authorization": f"Bearer {token}", "A2A-Version": "1.0"},
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
    )
    assert response.status == 200
    return (await response.json())["result"]


async def test_a_client_told_to_give_input_is_not_told_otherwise(
    relay: Relay, make_agent: AgentFactory, client: TestClient[Any, Any]
) -> None:
    # Through the face, the relay's background loops running: alice's blocking SendMessage to
    # bob (an agent of this relay) is answered input-required; bob's update, made before his
    # question, arrives after it; GetTask still reads input-required.
    alice = await make_agent("alice")
    await make_agent("bob")
    question = {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "what time is it?"}]}
    async with relay.store.notifier.listen(inbox_channel("bob")) as bobs_inbox:
        call = asyncio.create_task(rpc(client, alice.token, "SendMessage", {"message": question}))
        while not (sent := await relay.store.inbox("bob", limit=1)):
            assert await bobs_inbox.wait(10), "the face sent bob nothing"
    s = Scene(relay, sent[0].id, relay.clock.now().replace(microsecond=0))
    reply = partial(s.reply, sender="bob@acme.test")
    await s.arrive(reply("q1", 2, waiting("which city?"), **A2A))
    answered = (await call)["task"]
    assert answered["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    await s.arrive(reply("u1", 1, "looking"))
    got = await rpc(client, alice.token, "GetTask", {"id": s.task_id})
    assert got["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    assert [m["parts"][0]["text"] for m in got["history"]] == ["what time is it?", "looking"]
