"""The store's part of the A2A face (migration 0003): tasks, their event logs, the links from
envelopes to tasks and the reply tracker's feed — on every backend, through the same fixtures
as tests/test_store.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay.core.errors import Conflict
from relay.store.base import A2ATask, Store, a2a_task_channel
from tests import test_store
from tests.test_store import T0, add_agent, at, new

# The backend-parametrised fixtures of tests/test_store.py: every test here runs on each backend.
store_url = test_store.store_url
store = test_store.store


def task(
    id: str, *, owner: str = "alice", address: str = "tck@b.test", **fields: object
) -> A2ATask:
    base = A2ATask(
        id=id,
        owner=owner,
        address=address,
        context="ctx-1",
        state="TASK_STATE_SUBMITTED",
        remote_id=None,
        snapshot='{"id":"%s"}' % id,
        push="[]",
        version=0,
        status_at=T0,
        created=T0,
        updated=T0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


async def test_a_task_is_created_once_and_read_back(store: Store) -> None:
    await store.a2a_create_task(task("t1"), envelope="t1")
    got = await store.a2a_get_task("t1")
    assert got == task("t1")
    assert await store.a2a_get_task("t2") is None
    with pytest.raises(Conflict):
        await store.a2a_create_task(task("t1"), envelope="t1-again")
    assert await store.a2a_tasks_for_envelopes(["t1", "t1-again", "nope"]) == {"t1": "t1"}
    assert await store.a2a_owners() == ["alice"]


async def test_updates_are_compare_and_set_with_an_ordered_event_log(store: Store) -> None:
    await store.a2a_create_task(task("t1"), envelope="t1")
    changed = task(
        "t1", state="TASK_STATE_WORKING", remote_id="r-9", status_at=at(5), updated=at(5)
    )
    async with store.notifier.listen(a2a_task_channel("t1")) as listener:
        assert (
            await store.a2a_update_task(changed, 0, ["e1", "e2"], source="b.test/x1") == "updated"
        )
        assert await listener.wait(5)
    # The version moved on: a writer that read version 0 must read again.
    assert await store.a2a_update_task(changed, 0, ["e3"]) == "conflict"
    # The same reply applied twice (a crash before the cursor moved) writes nothing.
    assert await store.a2a_update_task(changed, 2, ["e1"], source="b.test/x1") == "duplicate"
    # A change with no event (a push config, a follow-up turn) still moves the version.
    assert await store.a2a_update_task(changed, 2, [], link="follow-up") == "updated"
    got = await store.a2a_get_task("t1")
    assert got is not None
    assert (got.version, got.state, got.remote_id, got.status_at) == (
        3,
        "TASK_STATE_WORKING",
        "r-9",
        at(5),
    )
    assert await store.a2a_task_events("t1", 0, 10) == [(1, "e1"), (2, "e2")]
    assert await store.a2a_task_events("t1", 1, 10) == [(2, "e2")]
    assert await store.a2a_tasks_for_envelopes(["follow-up"]) == {"follow-up": "t1"}
    with pytest.raises(Conflict):
        await store.a2a_update_task(changed, 3, [], link="follow-up")


async def test_listing_filters_pages_newest_first_and_counts(store: Store) -> None:
    for n in range(5):
        state = "TASK_STATE_COMPLETED" if n % 2 else "TASK_STATE_WORKING"
        context = "even" if n % 2 == 0 else "odd"
        await store.a2a_create_task(
            task(f"t{n}", state=state, context=context, status_at=at(n)), envelope=f"t{n}"
        )
    await store.a2a_create_task(task("other", owner="bob"), envelope="other")
    await store.a2a_create_task(task("elsewhere", address="x@b.test"), envelope="elsewhere")

    def ids(rows: list[A2ATask]) -> list[str]:
        return [r.id for r in rows]

    page, total = await store.a2a_list_tasks(
        "alice", "tck@b.test", context=None, state=None, status_after=None, before=None, limit=2
    )
    assert (ids(page), total) == (["t4", "t3"], 5)
    last = page[-1]
    page, total = await store.a2a_list_tasks(
        "alice", "tck@b.test", context=None, state=None, status_after=None,
        before=(last.status_at, last.id), limit=10,
    )  # fmt: skip
    assert (ids(page), total) == (["t2", "t1", "t0"], 5)
    page, total = await store.a2a_list_tasks(
        "alice", "tck@b.test", context="even", state="TASK_STATE_WORKING",
        status_after=at(1), before=None, limit=10,
    )  # fmt: skip
    assert (ids(page), total) == (["t4", "t2"], 2)


async def test_the_feed_offers_owners_mail_that_arrived_after_their_first_task(
    store: Store,
) -> None:
    await add_agent(store, "alice")
    await add_agent(store, "bob")
    await store.accept(new("old", local=["alice"]), at(0))  # before alice owned a task
    await store.a2a_create_task(task("t1", created=at(1)), envelope="t1")
    await store.accept(new("reply", local=["alice"]), at(2))
    await store.accept(new("for-bob", local=["bob"]), at(2))
    assert await store.a2a_feed_cursor() == 0
    feed = await store.a2a_feed(0, 10)
    assert [(item.agent, item.token.count(".")) for item in feed] == [("alice", 2)]
    await store.a2a_set_feed_cursor(feed[-1].seq)
    await store.a2a_set_feed_cursor(1)  # never moves back
    assert await store.a2a_feed_cursor() == feed[-1].seq
    assert await store.a2a_feed(feed[-1].seq, 10) == []


async def test_the_trackers_ack_fold_and_cursor_are_one_write(store: Store) -> None:
    await add_agent(store, "alice")
    await store.a2a_create_task(task("t1", created=at(1)), envelope="t1")
    await store.accept(new("reply", local=["alice"]), at(2))
    [item] = await store.a2a_feed(0, 10)
    # The task rows of the envelope ids that belong to one, in one read.
    assert await store.a2a_reply_tasks(["t1", "nope"]) == {"t1": task("t1", created=at(1))}
    assert await store.a2a_reply_tasks([]) == {}
    changed = task("t1", state="TASK_STATE_WORKING", created=at(1), updated=at(3))
    ack = ("alice", "reply", at(3))
    # A conflict acks (the reply stays part of the task's story) but keeps the cursor.
    assert (
        await store.a2a_update_task(changed, 5, ["e1"], source="b/reply", ack=ack, cursor=item.seq)
        == "conflict"
    )
    assert await store.inbox("alice", limit=10) == []
    assert await store.a2a_feed_cursor() == 0
    assert (
        await store.a2a_update_task(changed, 0, ["e1"], source="b/reply", ack=ack, cursor=item.seq)
        == "updated"
    )
    assert await store.a2a_feed_cursor() == item.seq
    assert await store.a2a_task_events("t1", 0, 10) == [(1, "e1")]
    # The same reply again (another process's tracker, a crash before the cursor moved): the
    # cursor moves on, nothing else is written.
    later = item.seq + 7
    assert (
        await store.a2a_update_task(changed, 1, ["e1"], source="b/reply", ack=ack, cursor=later)
        == "duplicate"
    )
    assert await store.a2a_feed_cursor() == later
    assert await store.a2a_task_events("t1", 0, 10) == [(1, "e1")]
    [acked] = await store.inbox("alice", limit=10, include_acked=True)
    assert (acked.id, acked.acked_at) == ("reply", at(3))


async def test_the_end_a_task_keeps_is_written_and_read_with_it(store: Store) -> None:
    # ``status_by`` (migrations 0010, 0011): opaque text the task store keeps once a reply
    # sets the task's status, read back by every read of the task; a change that logs no
    # event but names its reply (a late reply, relay/tasks/late.py) is still refused for a
    # reply logged before.
    await add_agent(store, "alice")
    await store.a2a_create_task(task("t1", created=at(1)), envelope="t1")
    assert (await store.a2a_get_task("t1")) == task("t1", created=at(1))
    ended = task(
        "t1",
        state="TASK_STATE_COMPLETED",
        created=at(1),
        updated=at(3),
        status_by='{"created":"x"}',
    )
    assert await store.a2a_update_task(ended, 0, ["e1"], source="b/answer") == "updated"
    got = await store.a2a_get_task("t1")
    assert got is not None
    assert (got.status_by, got.version) == ('{"created":"x"}', 1)
    assert (await store.a2a_reply_tasks(["t1"]))["t1"].status_by == '{"created":"x"}'
    rows, _ = await store.a2a_list_tasks(
        "alice",
        "tck@b.test",
        context=None,
        state=None,
        status_after=None,
        before=None,
        limit=10,
    )
    assert [r.status_by for r in rows] == ['{"created":"x"}']
    late = replace(ended, status_by='{"created":"x","late":[]}', version=1)
    assert await store.a2a_update_task(late, 1, [], source="b/answer") == "duplicate"
    assert await store.a2a_update_task(late, 1, [], source="b/late") == "updated"
    # A source is remembered with the event it logged: one that logged none is not (the task
    # store's end record tells its repeat, relay/tasks/late.py).
    assert await store.a2a_update_task(late, 2, [], source="b/late") == "updated"
    got = await store.a2a_get_task("t1")
    assert got is not None
    assert (got.status_by, got.version) == ('{"created":"x","late":[]}', 3)
    assert await store.a2a_task_events("t1", 0, 10) == [(1, "e1")]
    # A task created with an end keeps it (an import, a copy between stores).
    await store.a2a_create_task(task("t2", status_by="{}"), envelope="t2")
    assert (await store.a2a_get_task("t2")) == task("t2", status_by="{}")
