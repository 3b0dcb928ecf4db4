"""Late events of a task, as tables: adapters/a2a/tasks.py ``fold_late`` (what a late event
adds) and relay/tasks/late.py ``StatusReply`` (which replies are late, and where they go)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from a2a.types import (
    Artifact,
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf.struct_pb2 import Struct

from adapters.a2a import tasks as folding
from adapters.a2a.wire import Event
from relay.tasks.late import LateReply, StatusReply

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def msg(id: str, text: str, role: Role = Role.ROLE_AGENT) -> Message:
    return Message(message_id=id, role=role, parts=[Part(text=text)], task_id="agent-task")


def artifact(id: str, *texts: str) -> Artifact:
    return Artifact(artifact_id=id, parts=[Part(text=t) for t in texts])


def ended() -> Task:
    """A completed task: the question, one update, the answer, one artifact."""
    task = Task(
        id="t1",
        context_id="c1",
        status=TaskStatus(state=TaskState.TASK_STATE_COMPLETED, message=msg("a", "done")),
        history=[msg("q", "question", Role.ROLE_USER), msg("w1", "working")],
        artifacts=[artifact("report", "hello")],
    )
    for message in [*task.history, task.status.message]:
        message.task_id, message.context_id = "t1", "c1"
    task.metadata.update({"k": "kept"})
    return task


def status(message: Message | None = None, **metadata: str) -> TaskStatusUpdateEvent:
    update = TaskStatusUpdateEvent(
        task_id="agent-task",
        context_id="agent-ctx",
        status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
    )
    if message is not None:
        update.status.message.CopyFrom(message)
    if metadata:
        update.metadata.update(metadata)
    return update


def chunk(art: Artifact, *, append: bool = False) -> TaskArtifactUpdateEvent:
    return TaskArtifactUpdateEvent(
        task_id="agent-task", context_id="agent-ctx", artifact=art, append=append
    )


def snapshot() -> Task:
    return Task(
        id="agent-task",
        context_id="agent-ctx",
        status=TaskStatus(state=TaskState.TASK_STATE_WORKING, message=msg("w0", "starting")),
        history=[msg("q", "question", Role.ROLE_USER), msg("w1", "working")],
        artifacts=[artifact("report", "other"), artifact("draft", "d")],
    )


# (case, event, before, history texts, artifacts as (id, texts), messages added); history and
# artifacts None: fold_late declines (nothing the task lacks).
FOLD_LATE: list[
    tuple[str, Event, int, list[str] | None, list[tuple[str, list[str]]] | None, int]
] = [
    (
        "an update's message goes last in the history",
        status(msg("w2", "late")),
        0,
        ["question", "working", "late"],
        [("report", ["hello"])],
        1,
    ),
    (
        "before the late messages sent after it",
        status(msg("w2", "late")),
        1,
        ["question", "late", "working"],
        [("report", ["hello"])],
        1,
    ),
    (
        "never before the start of the history",
        status(msg("w2", "late")),
        9,
        ["late", "question", "working"],
        [("report", ["hello"])],
        1,
    ),
    ("a bare change of state adds nothing", status(), 0, None, None, 0),
    ("a message the task holds is not added twice", status(msg("w1", "working")), 0, None, None, 0),
    ("nor the terminal status's message", status(msg("a", "done")), 0, None, None, 0),
    ("metadata the task has stays the task's", status(k="old"), 0, None, None, 0),
    (
        "metadata it lacks is added",
        status(other="x"),
        0,
        ["question", "working"],
        [("report", ["hello"])],
        0,
    ),
    (
        "a direct message answer goes into the history",
        msg("m2", "earlier answer"),
        0,
        ["question", "working", "earlier answer"],
        [("report", ["hello"])],
        1,
    ),
    (
        "a new artifact is added",
        chunk(artifact("extra", "x")),
        0,
        ["question", "working"],
        [("report", ["hello"]), ("extra", ["x"])],
        0,
    ),
    (
        "a chunk is appended",
        chunk(artifact("report", " world"), append=True),
        0,
        ["question", "working"],
        [("report", ["hello", " world"])],
        0,
    ),
    (
        "a first chunk of an artifact held goes before its parts",
        chunk(artifact("report", "well,")),
        0,
        ["question", "working"],
        [("report", ["well,", "hello"])],
        0,
    ),
    (
        "a first chunk the artifact begins with adds nothing",
        chunk(artifact("report", "hello")),
        0,
        None,
        None,
        0,
    ),
    (
        "a snapshot adds the messages and artifacts the task lacks",
        snapshot(),
        0,
        ["question", "working", "starting"],
        [("report", ["hello"]), ("draft", ["d"])],
        1,
    ),
]


@pytest.mark.parametrize(
    ("event", "before", "history", "artifacts", "messages"),
    [pytest.param(*case[1:], id=case[0]) for case in FOLD_LATE],
)
def test_fold_late(
    event: Event,
    before: int,
    history: list[str] | None,
    artifacts: list[tuple[str, list[str]]] | None,
    messages: int,
) -> None:
    task = ended()
    folded = folding.fold_late(task, event, before)
    assert task == ended()  # the caller's task is left as it was
    if history is None:
        assert folded is None
        return
    assert folded is not None
    out = folded.task
    # The task ended as it ended.
    assert out.status == task.status
    assert [m.parts[0].text for m in out.history] == history
    assert [(a.artifact_id, [p.text for p in a.parts]) for a in out.artifacts] == artifacts
    assert folded.messages == messages
    # Every message in the face's ids.
    assert {m.context_id for m in out.history} == {"c1"}
    assert {m.task_id for m in out.history} == {"t1"}
    assert out.metadata["k"] == "kept"


def test_fold_late_leaves_a_waiting_task_waiting() -> None:
    task = ended()
    task.status.state = TaskState.TASK_STATE_INPUT_REQUIRED
    folded = folding.fold_late(task, status(msg("w2", "late")), 0)
    assert folded is not None
    assert folded.task.status == task.status
    assert [m.parts[0].text for m in folded.task.history] == ["question", "working", "late"]


def test_fold_late_drops_the_relays_own_metadata() -> None:
    late = msg("w2", "late")
    late.metadata.update({"urn:synq:ext:address:1": {"from": "x"}, "mine": 1})
    folded = folding.fold_late(ended(), status(late), 0)
    assert folded is not None
    expected = Struct()
    expected.update({"mine": 1})
    assert folded.task.history[-1].metadata == expected


def late(source: str, seconds: float, messages: int = 1) -> LateReply:
    return LateReply(source, at(seconds), messages)


RECORD = StatusReply(at(10), (late("b/1", 2), late("b/2", 5, 0), late("b/3", 7, 2)))


# (created, late to a settled task (ended or waiting), late to a working one, messages before)
@pytest.mark.parametrize(
    ("created", "settled", "working", "before"),
    [
        (at(1), True, True, 3),  # before every late one: ahead of their three messages
        (at(2), True, True, 2),  # as old as b/1: after it
        (at(6), True, True, 2),  # after b/2, which added no message
        (at(8), True, True, 0),
        # The status reply's own millisecond: made before it when the task rests in a state
        # the agent does not leave by itself, in no telling order when it works.
        (at(10), True, False, 0),
        (at(10.001), False, False, 0),  # made after the status reply
    ],
)
def test_which_replies_are_late_and_where_they_go(
    created: datetime, settled: bool, working: bool, before: int
) -> None:
    assert RECORD.admits(created, settled=True) is settled
    assert RECORD.admits(created, settled=False) is working
    assert RECORD.before(created) == before


def test_a_late_reply_is_kept_in_the_order_it_was_made() -> None:
    record = StatusReply(at(10))
    for source, seconds in (("b/4", 4), ("b/1", 1), ("b/9", 9), ("b/4bis", 4)):
        record = record.with_late(source, at(seconds), 1)
    assert [r.source for r in record.late] == ["b/1", "b/4", "b/4bis", "b/9"]
    assert record.folded("b/9")
    assert not record.folded("b/10")
    assert record.created == at(10)


def test_the_record_reads_back_as_written() -> None:
    micro = StatusReply(at(10) + timedelta(microseconds=1), (late("b/1", 2.5),))
    for record in (RECORD, micro, StatusReply(at(0))):
        assert StatusReply.parse(record.to_json()) == record


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "{",
        "[]",
        '{"late":[]}',
        '{"created":"noon"}',
        '{"created":1}',
        '{"created":"2026-03-01T12:00:00"}',
        '{"created":"2026-03-01T12:00:00+00:00","late":[{"source":"b/1"}]}',
    ],
)
def test_no_record_or_a_broken_one_admits_no_late_reply(text: str | None) -> None:
    assert StatusReply.parse(text) is None
