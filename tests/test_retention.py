"""Retention (SPEC.md §8.5): what the purge deletes, what it keeps, in what batches — on every
backend, through the fixtures of tests/test_store.py, with explicit times (nothing sleeps).

The promise under test above all: an envelope is remembered at least until it has expired (plus
MAX_CLOCK_SKEW), so a replay after everything else was purged is still a duplicate.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from relay.config import format_size, load_config, parse_size, render_config
from relay.core.clock import FakeClock
from relay.core.errors import ConfigError
from relay.core.limits import MAX_CLOCK_SKEW
from relay.core.retention import RetentionPolicy
from relay.delivery.retention import RetentionService
from relay.store import open_store
from relay.store.base import NewEnvelope, PurgeBatch, Store
from tests import test_store
from tests.test_store import HERE, T0, add_agent, at, new, sent
from tests.test_store_a2a import task

store_url = test_store.store_url
store = test_store.store

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


def expiring(item: NewEnvelope, expires: datetime) -> NewEnvelope:
    """``item`` with another expiry (the store reads it from the row, not from the token)."""
    return replace(item, expires=expires)


async def drain(purge: object, **kwargs: object) -> tuple[int, list[PurgeBatch]]:
    """Run one purge kind's batches from the start to the end of its sweep."""
    batches: list[PurgeBatch] = []
    after: int | None = 0
    while after is not None:
        batch = await purge(after=after, **kwargs)  # type: ignore[operator]
        batches.append(batch)
        after = batch.after
    return sum(b.deleted for b in batches), batches


async def ids_known(store: Store, *ids: str) -> set[str]:
    return {id for id in ids if await store.message_status(HERE, id) is not None}


# acknowledged inbox rows ----------------------------------------------------------------------


async def test_acked_rows_go_after_their_retention_and_unacked_ones_stay(store: Store) -> None:
    await add_agent(store, "bob")
    for n in range(4):
        await store.accept(new(f"e{n}", local=["bob"]), T0)
    await store.ack("bob", "e0", T0 + DAY)
    await store.ack("bob", "e1", T0 + 3 * DAY)

    # Acked at T0+1d: gone with a cutoff of T0+2d; acked at T0+3d and unacked: kept.
    deleted, _ = await drain(store.purge_acked, before=T0 + 2 * DAY, limit=10)
    assert deleted == 1
    history = await store.inbox("bob", limit=10, include_acked=True)
    assert [i.id for i in history] == ["e1", "e2", "e3"]
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["e2", "e3"]
    # The envelope itself is still inside its window: a replay is a duplicate, and delivers
    # nothing, though its inbox row is gone.
    assert (await store.accept(new("e0", local=["bob"]), T0 + 2 * DAY)).duplicate
    first = (await store.inbox("bob", limit=10, include_acked=True))[0]
    assert first.id == "e1"


async def test_acked_rows_the_reply_tracker_has_not_read_stay(store: Store) -> None:
    """An A2A face owner's acked row past the tracker's cursor is kept: the tracker reads acked
    rows too (relay/tasks/replies.py)."""
    await add_agent(store, "alice")
    await store.a2a_create_task(task("t1", owner="alice"), "first")
    await store.accept(new("r1", local=["alice"]), T0 + timedelta(seconds=1))
    await store.ack("alice", "r1", T0 + timedelta(seconds=2))
    deleted, _ = await drain(store.purge_acked, before=T0 + WEEK, limit=10)
    assert deleted == 0
    [item] = await store.inbox("alice", limit=10, include_acked=True)
    await store.a2a_set_feed_cursor(item.seq)
    deleted, _ = await drain(store.purge_acked, before=T0 + WEEK, limit=10)
    assert deleted == 1


# envelopes and deduplication state ------------------------------------------------------------


async def test_envelopes_are_purged_only_when_nothing_is_left_to_do(store: Store) -> None:
    await add_agent(store, "bob")
    gone = T0 + DAY  # every envelope below expires then, unless said otherwise
    # Acked, expired: purged.
    await store.accept(expiring(new("acked", local=["bob"]), gone), T0)
    await store.ack("bob", "acked", T0)
    # Sent to a partner, expired: purged (a settled queue row).
    await store.accept(expiring(new("sent", remote=["x@b.test"]), gone), T0)
    await store.settle([sent("sent", "x@b.test")], [], T0)
    # Bounced at acceptance, expired: purged.
    refused = [("ghost@a.test", "5.1.1", "no such agent")]
    await store.accept(expiring(new("refused", refused=refused), gone), T0)
    # Unacked: kept, whatever its age (quotas bound those).
    await store.accept(expiring(new("unacked", local=["bob"]), gone), T0)
    # Still queued for a partner: kept until the queue settles it.
    await store.accept(expiring(new("queued", remote=["y@b.test"]), gone), T0)
    # Held for a full mailbox: kept.
    held = expiring(new("held"), gone)
    await store.accept(replace(held, held=[("bob", "4.2.2", "mailbox full")]), T0)
    # Sent, but not yet expired: its deduplication window is open.
    await store.accept(expiring(new("open", remote=["z@b.test"]), T0 + 30 * DAY), T0)
    await store.settle([sent("open", "z@b.test")], [], T0)

    now = T0 + 10 * DAY
    deleted, _ = await drain(
        store.purge_envelopes,
        expired_before=now - MAX_CLOCK_SKEW,
        settled_before=now - WEEK,
        acked_before=now - WEEK,
        limit=100,
    )
    assert deleted == 3
    everything = ("acked", "sent", "refused", "unacked", "queued", "held", "open")
    assert await ids_known(store, *everything) == {"unacked", "queued", "held", "open"}
    # What stayed is whole: its recipient rows and its hop log.
    status = await store.message_status(HERE, "open")
    assert status is not None
    assert [r.state for r in status.recipients] == ["sent"]
    assert [e.event for e in status.events] == ["accepted", "sent"]
    # A replay of the envelope whose window is open is still a duplicate: nothing is
    # delivered or queued again.
    again = await store.accept(expiring(new("open", remote=["z@b.test"]), T0 + 30 * DAY), now)
    assert again.duplicate
    assert [e.id for e in await store.list_queue()] == ["queued", "held"]
    # Unacked mail stays readable.
    assert [i.id for i in await store.inbox("bob", limit=10)] == ["unacked"]


async def test_the_deduplication_window_ends_a_clock_skew_after_expiry(store: Store) -> None:
    await store.accept(expiring(new("e1", remote=["x@b.test"]), T0), T0 - DAY)
    await store.settle([sent("e1", "x@b.test")], [], T0 - DAY)

    async def purge(now: datetime) -> int:
        deleted, _ = await drain(
            store.purge_envelopes,
            expired_before=now - MAX_CLOCK_SKEW,
            settled_before=now,
            acked_before=now,
            limit=10,
        )
        return deleted

    # Expired, but within MAX_CLOCK_SKEW of it: a partner whose clock is behind ours may still
    # take a copy as valid, so the key stays.
    assert await purge(T0 + MAX_CLOCK_SKEW - timedelta(seconds=1)) == 0
    assert (await store.accept(new("e1", remote=["x@b.test"]), T0)).duplicate
    assert await purge(T0 + MAX_CLOCK_SKEW) == 1
    assert await store.message_status(HERE, "e1") is None


async def test_a_settled_envelope_keeps_its_status_for_the_settled_retention(
    store: Store,
) -> None:
    await store.accept(expiring(new("e1", remote=["x@b.test"]), T0), T0 - DAY)
    await store.settle([sent("e1", "x@b.test")], [], T0 + DAY)  # settled after it expired

    async def purge(settled_before: datetime) -> int:
        deleted, _ = await drain(
            store.purge_envelopes,
            expired_before=T0 + 30 * DAY,
            settled_before=settled_before,
            acked_before=T0 + 30 * DAY,
            limit=10,
        )
        return deleted

    assert await purge(T0 + DAY - timedelta(seconds=1)) == 0
    assert await purge(T0 + DAY) == 1


# events ---------------------------------------------------------------------------------------


async def test_old_hop_log_events_go_and_the_status_stays(store: Store) -> None:
    await store.accept(new("e1", remote=["x@b.test"]), T0)
    later = T0 + 3 * DAY
    await store.settle([sent("e1", "x@b.test")], [], later)
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert [e.event for e in status.events] == ["accepted", "sent"]
    deleted, _ = await drain(store.purge_events, before=T0 + DAY, limit=10)
    # "accepted", at T0, is implied by the recipient row (no row to delete): the horizon
    # forgets it.
    assert deleted == 0
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert [e.event for e in status.events] == ["sent"]
    assert [r.state for r in status.recipients] == ["sent"]


# batches --------------------------------------------------------------------------------------


async def test_batches_examine_at_most_their_limit_and_stop_at_newer_rows(store: Store) -> None:
    """Five purgeable envelopes, then four too new to purge, in batches of two: each batch
    deletes at most two, and the sweep ends at the first batch that reaches the new ones
    instead of reading the rest of the table."""
    for n in range(5):
        item = expiring(new(f"old{n}", remote=["x@b.test"]), T0)
        await store.accept(item, T0 - DAY)
        await store.settle([sent(f"old{n}", "x@b.test")], [], T0 - DAY)
    for n in range(4):
        await store.accept(new(f"new{n}", remote=["x@b.test"]), T0 + 20 * DAY)
    now = T0 + 10 * DAY
    deleted, batches = await drain(
        store.purge_envelopes,
        expired_before=now,
        settled_before=now,
        acked_before=now,
        limit=2,
    )
    assert deleted == 5
    assert [b.deleted for b in batches] == [2, 2, 1]
    assert all(b.after is not None for b in batches[:-1])
    assert batches[-1].after is None
    assert len(await store.list_queue()) == 4


async def test_a_sweep_passes_rows_it_keeps(store: Store) -> None:
    """Rows the purge keeps (unacked) at the head of the table do not stop it: the window
    moves past them."""
    await add_agent(store, "bob")
    for n in range(3):
        await store.accept(new(f"keep{n}", local=["bob"]), T0)
    for n in range(3):
        await store.accept(new(f"go{n}", local=["bob"]), T0)
        await store.ack("bob", f"go{n}", T0)
    deleted, batches = await drain(store.purge_acked, before=T0 + DAY, limit=2)
    assert deleted == 3
    # Windows of two: the kept rows, a kept and a purged one, two purged, the end.
    assert [b.deleted for b in batches] == [0, 1, 2, 0]
    assert [i.id for i in await store.inbox("bob", limit=10, include_acked=True)] == [
        "keep0",
        "keep1",
        "keep2",
    ]


# implied events (0009) ------------------------------------------------------------------------
# A recipient row taken by the accept that created its envelope gets no event row: its event is
# read back from the envelope row (relay/store/sql/accept.py, "Implied events"), and forgotten
# by the event horizon rather than deleted.


def raw(url: str, statement: str) -> None:
    """One statement on ``url``'s database beside the store, on either backend (as an operator
    or an older relay would write)."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
            db.execute(statement)
    else:
        test_store.sql(url, statement)


async def test_implied_events_read_as_event_rows_and_go_by_the_horizon(store: Store) -> None:
    await add_agent(store, "bob")
    await add_agent(store, "carol")
    refused = (f"zed@{HERE}", "5.1.1", "no such agent")
    first = new("e1", local=["bob"], remote=["dave@b.test"], refused=[refused], via="api")
    await store.accept(first, at(1))
    # A later copy adds carol: her row has a time and a hop of its own, so an event row.
    later = new("e1", local=["bob", "carol"], via="federation:b.test")
    assert not (await store.accept(later, at(5))).duplicate
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert [(e.at, e.recipient, e.event, e.code, e.hop) for e in status.events] == [
        (at(1), f"bob@{HERE}", "delivered", None, "api"),
        (at(1), "dave@b.test", "accepted", None, "api"),
        (at(1), f"zed@{HERE}", "bounced", "5.1.1", "api"),
        (at(5), f"carol@{HERE}", "delivered", None, "federation:b.test"),
    ]
    # Two event rows (zed's refusal, carol's delivery); bob's and dave's are implied: the
    # purge deletes the one row at or before its cutoff, and the horizon hides the implied.
    deleted, _ = await drain(store.purge_events, before=at(2), limit=10)
    assert deleted == 1
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert [(e.recipient, e.event) for e in status.events] == [(f"carol@{HERE}", "delivered")]
    assert len(status.recipients) == 4  # the rows stay: only their events are forgotten
    # The horizon never moves back: an earlier cutoff shows nothing again.
    assert (await drain(store.purge_events, before=at(0), limit=10))[0] == 0
    status = await store.message_status(HERE, "e1")
    assert status is not None
    assert len(status.events) == 1


async def test_rows_written_before_0009_keep_their_event_rows(store_url: str) -> None:
    store = await test_store.connect(store_url)
    try:
        await add_agent(store, "bob")
        await store.accept(new("e1", local=["bob"], remote=["dave@b.test"]), at(1))
        # What a relay before 0009 wrote: the rows unmarked, each event a row.
        raw(
            store_url,
            """
            INSERT INTO events (envelope, at, recipient, event, hop)
            SELECT r.envelope, e.accepted, r.recipient,
                   CASE WHEN r.domain IS NULL THEN 'delivered' ELSE 'accepted' END, e.via
            FROM recipients AS r JOIN envelopes AS e ON e.pk = r.envelope
            WHERE r.implied
            """,
        )
        raw(store_url, "UPDATE recipients SET implied = false")
        status = await store.message_status(HERE, "e1")
        assert status is not None
        assert [(e.recipient, e.event, e.at) for e in status.events] == [
            (f"bob@{HERE}", "delivered", at(1)),
            ("dave@b.test", "accepted", at(1)),
        ]
        # And they are purged as rows.
        assert (await drain(store.purge_events, before=at(2), limit=10))[0] == 2
    finally:
        await store.close()


# A2A face tasks -------------------------------------------------------------------------------


async def test_tasks_that_ended_long_ago_go_with_their_logs(store: Store) -> None:
    ended = ["TASK_STATE_COMPLETED", "TASK_STATE_FAILED"]
    await store.a2a_create_task(task("old-done", state="TASK_STATE_COMPLETED"), "m1")
    await store.a2a_create_task(task("old-failed", state="TASK_STATE_FAILED"), "m2")
    await store.a2a_create_task(task("old-working", state="TASK_STATE_WORKING"), "m3")
    recent = task("recent-done", state="TASK_STATE_COMPLETED", status_at=T0 + 5 * DAY)
    await store.a2a_create_task(recent, "m4")
    batch = await store.purge_a2a_tasks(ended, T0 + DAY, limit=1)
    assert batch == PurgeBatch(1, 0)  # more may be left
    batch = await store.purge_a2a_tasks(ended, T0 + DAY, limit=10)
    assert batch == PurgeBatch(1, None)
    for gone in ("old-done", "old-failed"):
        assert await store.a2a_get_task(gone) is None
        assert await store.a2a_task_events(gone, 0, 10) == []
    assert await store.a2a_tasks_for_envelopes(["m1", "m2", "m3", "m4"]) == {
        "m3": "old-working",
        "m4": "recent-done",
    }


# the service ----------------------------------------------------------------------------------


async def test_a_sweep_purges_every_kind_and_a_replay_inside_the_window_stays_duplicate(
    store: Store,
) -> None:
    await add_agent(store, "bob")
    clock = FakeClock(T0)
    policy = RetentionPolicy(
        acked=timedelta(hours=1),
        settled=timedelta(hours=1),
        events=timedelta(hours=1),
        tasks=timedelta(hours=1),
    )
    service = RetentionService(
        store, clock, policy, task_states=["TASK_STATE_COMPLETED"], batch=3, pause=0
    )
    short = T0 + timedelta(hours=2)
    for n in range(7):
        await store.accept(expiring(new(f"e{n}", local=["bob"]), short), T0)
        await store.ack("bob", f"e{n}", T0)
    await store.accept(new("long", local=["bob"]), T0)  # expires in two days
    await store.ack("bob", "long", T0)
    await store.a2a_create_task(task("t1", state="TASK_STATE_COMPLETED"), "m1")

    clock.set(T0 + timedelta(minutes=30))
    report = await service.sweep()
    assert report.total == 0

    clock.set(short + MAX_CLOCK_SKEW)
    report = await service.sweep()
    assert report.deleted["envelopes"] == 7
    assert report.deleted["tasks"] == 1
    # Acked rows and events go first, all eight; then the seven expired envelopes. The eight
    # "delivered" events are implied by their recipient rows (no event rows to delete): they
    # go by the event horizon, and "long", which stays, shows none.
    assert report.deleted["acked"] == 8
    assert report.deleted["events"] == 0
    assert report.batches >= 7 // 3
    assert await ids_known(store, *[f"e{n}" for n in range(7)], "long") == {"long"}
    status = await store.message_status(HERE, "long")
    assert status is not None
    assert (status.events, [r.state for r in status.recipients]) == ([], ["delivered"])
    # Everything else about "long" went, but its deduplication key did not.
    assert (await store.accept(new("long", local=["bob"]), clock.now())).duplicate
    assert await store.inbox("bob", limit=10, include_acked=True) == []


async def test_bad_retention_values_are_refused() -> None:
    with pytest.raises(ValueError, match="never negative"):
        RetentionPolicy(acked=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="must be positive"):
        RetentionPolicy(interval=timedelta(0))


# SQLite: space back to the file system --------------------------------------------------------


async def test_sqlite_purged_space_is_reclaimed_by_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"

    def pages() -> tuple[int, int]:
        """(pages in the database, of which free), as another connection sees them."""
        with sqlite3.connect(path) as db:
            found = (
                db.execute("PRAGMA page_count").fetchone()[0],
                db.execute("PRAGMA freelist_count").fetchone()[0],
            )
            assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
        db.close()
        return found

    s = await open_store(f"sqlite:///{path}", domain=HERE)
    try:
        await add_agent(s, "bob")
        body = "x" * 4000
        for n in range(300):
            item = new(f"e{n}", local=["bob"], created=T0 - 3 * DAY)
            await s.accept(replace(item, token=item.token + body), T0 - 3 * DAY)
            await s.ack("bob", f"e{n}", T0 - 3 * DAY)
        assert await s.reclaim_space(10_000) == 0  # nothing freed yet
        full, free = pages()
        assert free == 0
        deleted, _ = await drain(
            s.purge_envelopes,
            expired_before=T0,
            settled_before=T0,
            acked_before=T0,
            limit=500,
        )
        assert deleted == 300
        assert pages()[1] > full / 2  # freed inside the file
        assert await s.reclaim_space(100) == 100  # a bounded step
        assert await s.reclaim_space(10_000) > 0
        assert await s.reclaim_space(10_000) == 0
        now, free = pages()
        assert free == 0
        assert now < full / 2
    finally:
        await s.close()
    # Closing checkpoints: the file itself has shrunk.
    assert path.stat().st_size < full * 4096 / 2


async def test_sqlite_database_from_before_incremental_vacuum_is_converted_at_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.db"
    s = await open_store(f"sqlite:///{path}", domain=HERE)
    await add_agent(s, "bob")
    await s.accept(new("e1", local=["bob"]), T0)
    await s.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA auto_vacuum = NONE")
        db.execute("VACUUM")
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    db.close()
    s = await open_store(f"sqlite:///{path}", domain=HERE)
    try:
        assert [i.id for i in await s.inbox("bob", limit=10)] == ["e1"]
    finally:
        await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    db.close()


# configuration --------------------------------------------------------------------------------

SIZES = [
    (524288, 524288),
    ("524288", 524288),
    ("512KB", 512 * 1024),
    ("100MB", 100 * 1024**2),
    ("100 MiB", 100 * 1024**2),
    ("2gb", 2 * 1024**3),
    ("1TB", 1024**4),
    ("0", 0),
]


@pytest.mark.parametrize(("text", "size"), SIZES)
def test_sizes_read_and_write_back(text: object, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["", "12 parsecs", "-5MB", "1.5GB", True, 2.5])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_retention_quotas_and_cap_come_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "synq.toml"
    path.write_text(
        "\n".join(
            [
                "[relay]",
                'domain = "acme.test"',
                "[store]",
                'max_size = "2GB"',
                "[retention]",
                'acked = "1h"',
                'settled = "2d"',
                'interval = "30s"',
                "[quotas]",
                "max_unacked = 0",
                'max_bytes = "1GB"',
            ]
        ),
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.store.max_size == 2 * 1024**3
    assert config.retention.policy == RetentionPolicy(
        acked=timedelta(hours=1), settled=timedelta(days=2), interval=timedelta(seconds=30)
    )
    assert (config.quotas.quota.max_unacked, config.quotas.quota.max_bytes) == (0, 1024**3)
    # What ``synq init`` writes reads back as the defaults.
    again = tmp_path / "again.toml"
    again.write_text(render_config(config), encoding="utf-8")
    reread = load_config(again)
    assert (reread.retention, reread.quotas, reread.store) == (
        config.retention,
        config.quotas,
        config.store,
    )
    path.write_text('[relay]\ndomain = "acme.test"\n[retention]\ninterval = "0"\n')
    with pytest.raises(ConfigError, match=r"retention\.interval"):
        load_config(path)
