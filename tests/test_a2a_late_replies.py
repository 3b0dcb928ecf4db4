"""Replies that arrive after the reply that ended their A2A face task (SPEC.md "A2A mapping",
"Replies"; relay/tasks/late.py).

Envelopes keep no order (SPEC.md §9.1): an agent's update can arrive after its final answer.
Each test writes a task of alice's to bob at a partner into a real relay's store, puts bob's
signed replies into alice's inbox in the order they "arrive", and runs the reply tracker over
them, as the relay's background loop does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from a2a.types import Message, Part, Role, SendMessageRequest, Task, TaskState

from adapters.a2a import tasks as folding
from adapters.a2a import wire
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.address import Address
from relay.core.envelope import Envelope, encode
from relay.runtime import Relay
from relay.store.base import A2ATask, NewEnvelope
from relay.tasks.late import StatusReply
from relay.tasks.store import Tail, parse_event, parse_task, task_json
from tests.conftest import AgentFactory
from tests.test_store_a2a import task as stored_task

BOB = "bob@globex.test"
KEY = jws.SigningKey.generate("s1")


@dataclass
class Scene:
    relay: Relay
    task_id: str
    start: datetime

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def reply(
        self,
        id: str,
        seconds: float,
        body: Any,
        *,
        kind: str = "task.update",
        content_type: str = "text/plain",
        sender: str = BOB,
    ) -> NewEnvelope:
        """A reply of bob's (or ``sender``'s) to the task, created ``seconds`` after the task."""
        created = self.at(seconds)
        envelope = Envelope(
            v=1,
            id=id,
            from_=sender,
            to=["alice@acme.test"],
            created=created,
            expires=created + timedelta(days=1),
            in_reply_to=self.task_id,
            kind=kind,
            content_type=content_type,
            body=body,
        )
        return NewEnvelope(
            origin=envelope.sender.domain,
            id=id,
            sender=envelope.from_,
            token=jws.sign(encode(envelope), KEY),
            created=created,
            expires=envelope.expires,
            thread=None,
            kind=kind,
            local=["alice"],
            remote=[],
            via="federation:globex.test",
            refused=[],
        )

    async def arrive(self, *replies: NewEnvelope) -> None:
        """The replies arrive, in this order, and the tracker folds them."""
        for reply in replies:
            await self.relay.store.accept_many([reply], self.relay.clock.now())
        await self.relay.reply_tracker.run_once()

    async def task(self) -> tuple[A2ATask, Task]:
        row = await self.relay.store.a2a_get_task(self.task_id)
        assert row is not None
        return row, parse_task(row.snapshot)

    async def logged(self) -> list[str]:
        """The states (or payload kinds) of the task's event log, in order."""
        rows = await self.relay.store.a2a_task_events(self.task_id, 0, 100)
        out = []
        for _, text in rows:
            state = folding.state_of(parse_event(text))
            out.append(TaskState.Name(state) if state is not None else "artifact")
        return out

    async def unread(self) -> list[str]:
        return [i.id for i in await self.relay.store.inbox("alice", limit=100)]


async def scene(relay: Relay, make_agent: AgentFactory, task_id: str = "") -> Scene:
    """A task of alice's to bob, written to the store as another process of the relay would
    (``task_id``), or started by this one's task store (no ``task_id``: its id is the one the
    task store gives it, and the task is known in memory while a reader waits)."""
    await make_agent("alice")
    now = relay.clock.now()
    # Envelopes carry milliseconds (SPEC.md §3.3): times the tests compare are whole ones.
    start = now.replace(microsecond=now.microsecond // 1000 * 1000) - timedelta(seconds=20)
    question = Message(role=Role.ROLE_USER, message_id="q", parts=[Part(text="what time is it?")])
    if not task_id:
        started = await relay.task_store.start(
            "alice", Address.parse(BOB), SendMessageRequest(message=question)
        )
        return Scene(relay, started.task_id, start)
    first = folding.new_task(task_id, "ctx", question, start)
    row = stored_task(
        task_id,
        address=BOB,
        context="ctx",
        snapshot=task_json(first),
        status_at=start,
        created=start,
        updated=start,
    )
    await relay.store.a2a_create_task(row, task_id)
    return Scene(relay, task_id, start)


def texts(task: Task) -> list[str]:
    return [m.parts[0].text for m in task.history]


def artifact_update(artifact_id: str, text: str, *, append: bool = False) -> dict[str, Any]:
    return {
        "artifactUpdate": {
            "taskId": "bob-task",
            "contextId": "bob-ctx",
            "artifact": {"artifactId": artifact_id, "parts": [{"text": text}]},
            "append": append,
        }
    }


async def test_an_update_that_arrives_after_the_answer_is_kept(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-late")
    update = s.reply("u1", 1, "looking")
    answer = s.reply("a1", 2, "noon", kind="message")
    await s.arrive(answer, update)
    row, task = await s.task()
    # The task ended as bob ended it, and his update is in its history, before the answer.
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.status.message.parts[0].text == "noon"
    assert texts(task) == ["what time is it?", "looking"]
    assert task.history[1].context_id == "ctx"
    # The late update logs no event: a stream ended at the answer.
    assert await s.logged() == ["TASK_STATE_COMPLETED"]
    assert row.state == "TASK_STATE_COMPLETED"
    assert await s.unread() == []
    record = StatusReply.parse(row.status_by)
    assert record is not None
    assert record.created == s.at(2)
    assert [r.source for r in record.late] == ["globex.test/u1"]


async def test_an_update_right_behind_the_answer_to_a_waiting_task_is_kept(
    relay: Relay, make_agent: AgentFactory
) -> None:
    # A task whose reader waits in this process is known in memory, until it ends: the answer
    # ends it in the middle of the tracker's batch, and the update behind it, in the same
    # batch, finds the task in the store.
    s = await scene(relay, make_agent)
    async with Tail(relay.task_store, s.task_id, 0) as tail:
        assert relay.task_store.knows(s.task_id)
        await s.arrive(s.reply("a1", 2, "noon", kind="message"), s.reply("u1", 1, "looking"))
        item = await tail.next(asyncio.get_running_loop().time() + 10)
        assert item is not None
        assert folding.state_of(item[1]) == TaskState.TASK_STATE_COMPLETED
    _, task = await s.task()
    assert texts(task) == ["what time is it?", "looking"]
    assert task.status.message.parts[0].text == "noon"
    assert await s.unread() == []


async def test_the_same_order_as_sent_folds_as_before(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-order")
    await s.arrive(s.reply("u1", 1, "looking"), s.reply("a1", 2, "noon", kind="message"))
    row, task = await s.task()
    assert texts(task) == ["what time is it?", "looking"]
    assert task.status.message.parts[0].text == "noon"
    assert await s.logged() == ["TASK_STATE_WORKING", "TASK_STATE_COMPLETED"]
    record = StatusReply.parse(row.status_by)
    assert record is not None
    assert (record.created, record.late) == (s.at(2), ())


async def test_late_updates_take_their_place_in_the_order_they_were_sent(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-three")
    await s.arrive(
        s.reply("u2", 2, "second"),
        s.reply("a1", 5, "done", kind="message"),
        s.reply("u4", 4, "fourth"),
        s.reply("u1", 1, "first"),
        s.reply("u3", 3, "third"),
    )
    _, task = await s.task()
    # u2 came before the end; u4, u1 and u3 after it: the late ones in the order bob made
    # them, after the history the task ended with.
    assert texts(task) == ["what time is it?", "second", "first", "third", "fourth"]
    assert task.status.message.parts[0].text == "done"
    assert await s.logged() == ["TASK_STATE_WORKING", "TASK_STATE_COMPLETED"]


async def test_a_reply_made_after_the_end_is_declined(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-after")
    await s.arrive(s.reply("a1", 2, "noon", kind="message"), s.reply("u3", 3, "one more thing"))
    _, task = await s.task()
    assert texts(task) == ["what time is it?"]
    assert task.status.message.parts[0].text == "noon"
    # Declined, and acked all the same: it was a reply to the task.
    assert await s.unread() == []


async def test_a_late_reply_offered_again_is_folded_once(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-again")
    before = s.reply("u1", 1, "looking")
    answer = s.reply("a1", 3, "noon", kind="message")
    late = s.reply("u2", 2, "almost")
    await s.arrive(before, answer, late)
    row, task = await s.task()
    assert texts(task) == ["what time is it?", "looking", "almost"]
    # A crash before the tracker's cursor was saved offers the replies again: the one folded
    # before the end is the store's duplicate, the late one the task's end recognises, and
    # the record one is both.
    for reply in (before, answer, late):
        envelope = env_mod.decode(jws.b64url_decode(reply.token.split(".")[1]))
        current, _ = await s.task()
        await relay.reply_tracker.apply(current, "alice", envelope)
    again, task = await s.task()
    assert texts(task) == ["what time is it?", "looking", "almost"]
    assert again.version == row.version


async def test_a_late_artifact_is_added_and_a_late_first_chunk_goes_first(
    relay: Relay, make_agent: AgentFactory
) -> None:
    s = await scene(relay, make_agent, "t-art")
    a2a = {"content_type": wire.CONTENT_TYPE}
    await s.arrive(
        s.reply("c2", 2, artifact_update("report", " world", append=True), **a2a),
        s.reply("a1", 4, "done", kind="message"),
        s.reply("c1", 1, artifact_update("report", "hello"), **a2a),
        s.reply("x1", 3, artifact_update("extra", "more"), **a2a),
    )
    _, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [(a.artifact_id, [p.text for p in a.parts]) for a in task.artifacts] == [
        ("report", ["hello", " world"]),
        ("extra", ["more"]),
    ]
    assert all(a.artifact_id for a in task.artifacts)
    assert await s.logged() == ["artifact", "TASK_STATE_COMPLETED"]


async def test_a_task_the_face_ended_takes_no_late_reply(
    relay: Relay, make_agent: AgentFactory
) -> None:
    # A cancel is the client's, not a reply: whatever the agent sends afterwards is ignored
    # (SPEC.md "A2A mapping", "Answers"), even what it made before the cancel.
    s = await scene(relay, make_agent, "t-cancel")
    await relay.task_store.cancel("alice", Address.parse(BOB), "t-cancel")
    await s.arrive(s.reply("u1", 1, "looking"))
    row, task = await s.task()
    assert task.status.state == TaskState.TASK_STATE_CANCELED
    assert texts(task) == ["what time is it?"]
    assert row.status_by is None
