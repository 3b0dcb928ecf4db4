"""Signals on a relay (SPEC.md §13): the store's part (migration 0007) and the service
(relay/delivery/signals.py), on every backend, with a fake clock; concurrent claims and
completes through several store instances on one database (exactly one completion)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.config import RateSection, SignalsSection, StoreSection
from relay.core import signals as sg
from relay.core.clock import FakeClock, SystemClock
from relay.core.errors import Conflict, Forbidden, InvalidEnvelope, NotFound, RateLimited
from relay.core.ids import hash_token, new_token
from relay.core.jws import parse_compact
from relay.delivery.signals import DEFAULT_EMIT_RATE, SCAN_MAX_AGE, TooManySignals
from relay.delivery.views import envelope_object
from relay.keyring import load_keyring
from relay.runtime import Relay
from relay.store import open_store
from relay.store.base import QUEUE_CHANNEL, SIGNALS_CHANNEL, NewEnvelope, Store
from tests import pg, test_store
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.test_store import T0, add_agent, at

store_url = test_store.store_url
store = test_store.store


def signal(id: str = "0190aaaa-0000-7000-8000-000000000001", **kw: Any) -> sg.Signal:
    base = sg.Signal(
        id=id,
        owner="a.test",
        emitter="alice@a.test",
        topic="invoice.overdue",
        text="chase it",
        urgency=0.8,
        half_life=60.0,
        lease=30.0,
        scope=("b.test",),
        created=T0,
        expires=at(3600),
        content_type="application/json",
        body={"invoice": 7},
        updated=T0,
    )
    return replace(base, **kw)


# --- the store ----------------------------------------------------------------------------------


async def test_insert_get_and_replica_offered_twice(store: Store) -> None:
    s = signal()
    assert await store.signal_insert(s)
    assert not await store.signal_insert(replace(s, text="other"))
    got = await store.signal_get(s.id)
    assert got == s
    assert await store.signal_get("nope") is None
    assert await store.signal_open_count("alice@a.test") == 1


async def test_write_is_a_compare_and_set(store: Store) -> None:
    s = signal()
    await store.signal_insert(s)
    a = sg.claim(s, "bob@a.test", at(1), "x")
    b = sg.claim(s, "carol@a.test", at(1), "y")
    async with store.notifier.listen(SIGNALS_CHANNEL) as listener:
        assert await store.signal_write(a, s.version)
        assert await listener.wait(5)
    assert not await store.signal_write(b, s.version)
    got = await store.signal_get(s.id)
    assert got is not None
    assert (got.state, got.holder, got.generation, got.version) == ("claimed", "bob@a.test", 1, 1)
    assert await store.signal_claims(s.id) == [a.claims[0]]
    # The lapse: the claim ended and the boost, in the same write.
    lapse = sg.settle(got, a.claims[0], at(60))
    assert await store.signal_write(lapse, got.version)
    after = await store.signal_get(s.id)
    assert after is not None
    assert after.state == "open"
    assert after.reinforcements == lapse.reinforcements
    assert (await store.signal_claims(s.id))[0].outcome == "lapsed"


def offer_of(id: str, kind: str = sg.KIND_SIGNAL) -> NewEnvelope:
    """An offer or update to the partner b.test, as the router builds it (SPEC.md §13.6)."""
    return test_store.new(
        id, remote=[f"{sg.SIGNALS_LOCAL}@b.test"], kind=kind, via="signals", created=T0
    )


async def owed(store: Store) -> list[tuple[str, int, str]]:
    return [(s.id, s.version, kind) for s, kind in await store.signals_untold(100)]


async def test_an_offer_is_owed_from_the_signals_write_until_it_is_in_custody(
    store: Store,
) -> None:
    s = signal()
    assert await store.signal_insert(s, tell=True)
    # The id taken (an emit retried): nothing is written, nothing more is owed.
    assert not await store.signal_insert(replace(s, text="other"), tell=True)
    assert await owed(store) == [(s.id, 0, sg.KIND_SIGNAL)]
    [(read, _kind)] = await store.signals_untold(1, s.id)
    assert read == s
    offer = offer_of("0190aaaa-0000-7000-8000-0000000000f1")
    async with store.notifier.listen(QUEUE_CHANNEL) as queue:
        assert await store.signal_told(s.id, s.version, offer)
        assert await queue.wait(5)  # the sender is woken for it, as by any accept
    assert await owed(store) == []
    assert await store.signals_untold(1, s.id) == []
    # Told already (by another process): nothing more is queued.
    assert not await store.signal_told(
        s.id, s.version, offer_of("0190aaaa-0000-7000-8000-0000000000f9")
    )
    queued = await store.list_queue("b.test")
    assert [(e.id, e.recipient) for e in queued] == [(offer.id, "signals@b.test")]
    assert queued[0].next_attempt == offer.created
    assert await store.signal_get(s.id) == s


async def test_a_signal_nobody_is_owed_is_never_untold(store: Store) -> None:
    s = signal()
    await store.signal_insert(s)
    # Scope local, or a partner's replica: the write says nothing is owed.
    claimed = sg.claim(s, "bob@a.test", at(1), "x")
    assert await store.signal_write(claimed, s.version)
    assert await owed(store) == []


async def test_an_update_is_owed_exactly_when_its_change_is_written(store: Store) -> None:
    s = signal()
    await store.signal_insert(s)
    a = sg.claim(s, "bob@a.test", at(1), "x")
    b = sg.claim(s, "carol@a.test", at(1), "y")
    assert await store.signal_write(a, s.version, tell=True)
    # The compare-and-set refused: it owes nothing, and changes nothing.
    assert not await store.signal_write(b, s.version, tell=True)
    assert await owed(store) == [(s.id, 1, sg.KIND_SIGNAL_UPDATE)]
    got = await store.signal_get(s.id)
    assert got is not None
    assert (got.state, got.holder) == ("claimed", "bob@a.test")
    update = offer_of("0190aaaa-0000-7000-8000-0000000000f3", sg.KIND_SIGNAL_UPDATE)
    await store.signal_told(s.id, 1, update)
    assert await owed(store) == []
    assert [e.id for e in await store.list_queue("b.test")] == [update.id]


async def test_what_is_owed_follows_the_signal_past_the_version_told(store: Store) -> None:
    s = signal()
    await store.signal_insert(s, tell=True)
    claimed = sg.claim(s, "bob@a.test", at(1), "x")
    # An offer still owed stays the offer: it will carry the claimed state.
    assert await store.signal_write(claimed, s.version, tell=True)
    assert await owed(store) == [(s.id, 1, sg.KIND_SIGNAL)]
    # The offer built at version 0 went out while the claim was being written: the claim's
    # update is still owed.
    await store.signal_told(s.id, 0, offer_of("0190aaaa-0000-7000-8000-0000000000f5"))
    assert await owed(store) == [(s.id, 1, sg.KIND_SIGNAL_UPDATE)]
    # A write that owes nothing (a heartbeat) leaves an owed update owed.
    got = await store.signal_get(s.id)
    assert got is not None
    beat = sg.Transition(replace(got, lease_until=at(40), version=2))
    assert await store.signal_write(beat, 1)
    assert await owed(store) == [(s.id, 2, sg.KIND_SIGNAL_UPDATE)]
    # Nothing to send (no partner in scope any more): told all the same.
    await store.signal_told(s.id, 2, None)
    assert await owed(store) == []
    assert [e.id for e in await store.list_queue("b.test")] == [
        "0190aaaa-0000-7000-8000-0000000000f5"
    ]


async def test_reinforce_once_per_source(store: Store) -> None:
    await store.signal_insert(signal())
    r = sg.Reinforcement("bob@a.test", 0.5, at(2))
    assert await store.signal_reinforce(signal().id, r)
    assert not await store.signal_reinforce(signal().id, replace(r, amount=1.0))
    got = await store.signal_get(signal().id)
    assert got is not None
    assert got.reinforcements == (r,)


async def test_active_due_and_unsent(store: Store) -> None:
    open_ = signal("0190aaaa-0000-7000-8000-00000000000a", created=at(1))
    claimed = sg.claim(signal("0190aaaa-0000-7000-8000-00000000000b"), "bob@a.test", T0, "k")
    await store.signal_insert(open_)
    await store.signal_insert(claimed.signal)
    await store.signal_reinforce(open_.id, sg.Reinforcement("carol@a.test", 0.1, at(3)))
    active = await store.signals_active(10)
    assert [s.id for s in active] == [open_.id, claimed.signal.id]
    assert active[0].reinforcements == (sg.Reinforcement("carol@a.test", 0.1, at(3)),)
    assert await store.signals_due(at(29), 10) == []
    assert await store.signals_due(at(30), 10) == [claimed.signal.id]
    assert await store.signals_due(at(3600), 10) == [open_.id, claimed.signal.id]
    done = replace(claimed.signal, state="done", result_id="r1", version=2)
    assert await store.signal_write(sg.Transition(done), 1)
    assert [s.id for s in await store.signal_results_unsent(10)] == [claimed.signal.id]
    await store.signal_mark_sent(claimed.signal.id)
    assert await store.signal_results_unsent(10) == []


async def test_subscriptions(store: Store) -> None:
    await add_agent(store, "bob")
    assert await store.subscription_get("bob") is None
    sub = sg.Subscription("bob", ("invoice.*", "ocr.**"), 0.25, True)
    await store.subscription_set(sub, T0)
    assert await store.subscription_get("bob") == sub
    await store.subscription_set(replace(sub, topics=("a",)), T0)
    assert await store.subscription_get("bob") == replace(sub, topics=("a",))


# --- the service --------------------------------------------------------------------------------


async def open_relay(directory: Path, url: str) -> Relay:
    """A relay of a.test on ``url`` with a fake clock started at the wall clock's now, after
    its signing key was made (make_config)."""
    config = make_config(directory, domain="a.test")
    config = config.model_copy(update={"store": StoreSection(url=url)})
    return await Relay.open(config, clock=FakeClock(SystemClock().now()))


@pytest.fixture
async def relay(store_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    r = await open_relay(tmp_path / "a", store_url)
    try:
        for name in ("alice", "bob", "carol"):
            await r.store.create_agent(name, "inbox", hash_token(new_token()), None, r.clock.now())
        yield r
    finally:
        await r.close()


def clock_of(relay: Relay) -> FakeClock:
    assert isinstance(relay.clock, FakeClock)
    return relay.clock


EMIT = {"topic": "invoice.overdue", "text": "chase #7", "urgency": 0.8, "half_life": 60}


async def test_emit_hear_claim_complete_result_reaches_the_emitter(relay: Relay) -> None:
    svc = relay.signals
    await svc.subscribe("bob", {"topics": ["invoice.*"], "threshold": 0.3})
    await svc.subscribe("carol", {"topics": ["invoice.*"], "threshold": 0.5})
    s = await svc.emit("alice", {**EMIT, "lease": 30})
    assert [h.signal.id for h in await svc.heard("bob", 10)] == [s.id]
    clock_of(relay).advance(60)  # intensity 0.4: bob (0.3) still hears it, carol (0.5) not
    assert [h.intensity for h in await svc.heard("bob", 10)] == [0.4]
    assert await svc.heard("carol", 10) == []
    assert await svc.heard("alice", 10) == []  # not subscribed; never one's own anyway
    token, until = await svc.claim("bob", s.id)
    assert until == relay.clock.now() + timedelta(seconds=30)
    with pytest.raises(sg.AlreadyClaimed):
        await svc.claim("carol", s.id)
    assert await svc.heard("bob", 10) == []  # claimed: no longer offered
    done = await svc.complete("bob", s.id, token, "text/plain", "chased")
    assert done.state == "done"
    with pytest.raises(sg.StaleClaim):
        await svc.complete("bob", s.id, token, "text/plain", "again")
    (item,) = await relay.store.inbox("alice", limit=10)
    envelope = envelope_object(item)
    assert (envelope["from"], envelope["in_reply_to"], envelope["body"]) == (
        "bob@a.test",
        s.id,
        "chased",
    )
    shown, history = await svc.show(s.id)
    assert shown.state == "done"
    assert [(c.holder, c.outcome) for c in history] == [("bob@a.test", "done")]
    assert await relay.store.signal_results_unsent(10) == []


async def test_lapse_reopens_with_boost_and_fences_the_late_worker(relay: Relay) -> None:
    svc = relay.signals
    clock = clock_of(relay)
    t0 = clock.now()
    s = await svc.emit("alice", {**EMIT, "lease": 10})
    token, _ = await svc.claim("bob", s.id)
    clock.advance(5)
    await svc.heartbeat("bob", s.id, token)  # the lease now ends at 15 s
    clock.advance(9)
    await svc.heartbeat("bob", s.id, token)  # ... and now at 24 s
    clock.advance(10)
    assert await svc.run_once() == 1  # the sweep writes the lapse
    shown, history = await svc.show(s.id)
    assert shown.state == "open"
    assert history[0].outcome == "lapsed"
    assert history[0].ended == t0 + timedelta(seconds=24)
    # Boosted: 0.8·2^(−24/60)·... plus 0.4 decayed from the lapse.
    expected = round(0.8 * 2 ** (-24 / 60) + 0.4, 6)
    assert sg.intensity(shown, t0 + timedelta(seconds=24)) == pytest.approx(expected)
    with pytest.raises(sg.StaleClaim):
        await svc.heartbeat("bob", s.id, token)
    token2, _ = await svc.claim("carol", s.id)
    with pytest.raises(sg.StaleClaim):
        await svc.complete("bob", s.id, token)
    await svc.complete("carol", s.id, token2)
    (item,) = await relay.store.inbox("alice", limit=10)
    assert envelope_object(item)["from"] == "carol@a.test"


async def test_lapse_is_seen_without_the_sweep(relay: Relay) -> None:
    svc = relay.signals
    s = await svc.emit("alice", {**EMIT, "lease": 10})
    await svc.claim("bob", s.id)
    clock_of(relay).advance(11)
    # No sweep has run: the next claim settles the lapse itself, in its own write.
    await svc.claim("carol", s.id)
    _, history = await svc.show(s.id)
    assert [(c.holder, c.outcome) for c in history] == [
        ("bob@a.test", "lapsed"),
        ("carol@a.test", None),
    ]


async def test_refusals(relay: Relay) -> None:
    svc = relay.signals
    s = await svc.emit("alice", EMIT)
    with pytest.raises(Forbidden):
        await svc.claim("alice", s.id)
    with pytest.raises(Forbidden):
        await svc.withdraw("bob", s.id)
    with pytest.raises(NotFound):
        await svc.claim("bob", "0190aaaa-0000-7000-8000-0000000000ff")
    with pytest.raises(sg.StaleClaim):
        await svc.complete("bob", s.id, "1.forged")
    await svc.reinforce("bob", s.id, 0.2)
    with pytest.raises(Conflict):
        await svc.reinforce("bob", s.id, 0.2)
    with pytest.raises(InvalidEnvelope):
        await svc.emit("alice", {**EMIT, "urgency": 2})
    await svc.withdraw("alice", s.id)
    with pytest.raises(sg.SignalClosed):
        await svc.claim("bob", s.id)
    expires = relay.clock.now() + timedelta(seconds=10)
    late = await svc.emit("alice", {**EMIT, "expires": expires.isoformat()})
    clock_of(relay).advance(11)
    with pytest.raises(sg.SignalClosed):
        await svc.claim("bob", late.id)


async def test_caps_per_agent(relay: Relay) -> None:
    svc = relay.signals
    svc.max_open = 3
    for _ in range(3):
        await svc.emit("alice", EMIT)
    with pytest.raises(TooManySignals):
        await svc.emit("alice", EMIT)
    svc.max_open = 1000
    for _ in range(int(DEFAULT_EMIT_RATE.burst)):
        await svc.emit("bob", EMIT)
    with pytest.raises(RateLimited):
        await svc.emit("bob", EMIT)


async def test_subscribe_by_capability(relay: Relay) -> None:
    # An inbox agent's card names the skill "inbox" with tags "synq", "inbox".
    sub = await relay.signals.subscribe("bob", {"capabilities": True, "threshold": 0.1})
    assert sub.topics == ("inbox", "inbox.**", "synq", "synq.**")
    await relay.signals.emit("alice", {**EMIT, "topic": "synq.triage"})
    assert len(await relay.signals.heard("bob", 10)) == 1


async def test_long_poll_wakes_on_emit(relay: Relay) -> None:
    svc = relay.signals
    await svc.subscribe("bob", {"topics": ["invoice.**"]})
    waiting = asyncio.create_task(svc.feed("bob", wait=30, limit=10))
    await asyncio.sleep(0)
    s = await svc.emit("alice", EMIT)
    heard = await asyncio.wait_for(waiting, 10)
    assert [h.signal.id for h in heard] == [s.id]


async def test_a_new_signal_is_offered_first_to_the_lowest_draws(relay: Relay) -> None:
    svc = relay.signals
    names = ["bob", "carol", "dave", "erin", "frank"]
    for name in names[2:]:
        await relay.store.create_agent(
            name, "inbox", hash_token(new_token()), None, relay.clock.now()
        )
    for name in names:
        await svc.subscribe(name, {"topics": ["invoice.*"]})
    feeds = {n: asyncio.create_task(svc.feed(n, wait=30, limit=10)) for n in names}
    await wait_until(lambda: svc.waiting == set(names))
    s = await svc.emit("alice", EMIT)
    order = sorted(names, key=lambda n: sg.offer_draw(f"{n}@a.test", s.id))
    first = order[: sg.OFFER_FIRST]
    done, _ = await asyncio.wait([feeds[n] for n in first], timeout=10)
    assert len(done) == sg.OFFER_FIRST
    assert all([h.signal.id for h in feeds[n].result()] == [s.id] for n in first)
    # The fake clock stands still: the others cannot have heard it yet.
    assert not any(feeds[n].done() for n in order[sg.OFFER_FIRST :])
    clock_of(relay).advance(sg.OFFER_DELAY.total_seconds())
    for n in order[sg.OFFER_FIRST :]:
        heard = await asyncio.wait_for(feeds[n], 10)
        assert [h.signal.id for h in heard] == [s.id]
    assert svc.waiting == set()


async def test_a_new_signal_is_offered_first_to_agents_holding_no_claim(relay: Relay) -> None:
    svc = relay.signals
    names = ["bob", "carol", "dave", "erin", "frank"]
    for name in names[2:]:
        await relay.store.create_agent(
            name, "inbox", hash_token(new_token()), None, relay.clock.now()
        )
    busy, free = names[:4], names[4]
    for name in names:
        await svc.subscribe(name, {"topics": ["invoice.*"]})
    for name in busy:
        await svc.claim(name, (await svc.emit("alice", EMIT)).id)
    feeds = {n: asyncio.create_task(svc.feed(n, wait=30, limit=10)) for n in names}
    await wait_until(lambda: svc.waiting == set(names))
    s = await svc.emit("alice", EMIT)
    # The one holding no claim, then the lowest draw of those holding one.
    first = {free, min(busy, key=lambda n: sg.offer_draw(f"{n}@a.test", s.id))}
    done, _ = await asyncio.wait([feeds[n] for n in first], timeout=10)
    assert len(done) == len(first)
    assert not any(feeds[n].done() for n in set(names) - first)
    clock_of(relay).advance(sg.OFFER_DELAY.total_seconds())
    await asyncio.wait_for(asyncio.gather(*feeds.values()), 10)


async def test_feeds_share_one_scan_until_something_changes(relay: Relay) -> None:
    svc = relay.signals
    first = await svc.active.signals()
    assert await svc.active.signals() is first
    s = await svc.emit("alice", EMIT)
    second = await svc.active.signals()
    assert [x.id for x in second] == [s.id]
    assert await svc.active.signals() is second
    assert svc.active.recent(s.id) == s
    # Changes this process cannot name (another process's commits) are looked for once the
    # copy is SCAN_MAX_AGE old: read again behind its back, it serves meanwhile.
    clock_of(relay).advance(SCAN_MAX_AGE)
    assert await svc.active.signals() is second
    assert svc.active.recent(s.id) == s
    await wait_until(lambda: svc.active.current() is not second)
    third = svc.active.current()
    assert third is not None
    assert third == second


async def test_a_change_the_copy_missed_is_found_by_its_refresh(relay: Relay) -> None:
    svc = relay.signals
    await svc.subscribe("bob", {"topics": ["invoice.due"]})
    feed = asyncio.create_task(svc.feed("bob", wait=30, limit=10))
    await wait_until(lambda: svc.waiting == {"bob"} and svc.active.current() is not None)
    # A write this service is not told of, committed with one it is (so their one wake-up is
    # taken as explained by the emit): missed, as a lost wake-up would be.
    now = relay.clock.now()
    other = replace(
        signal(), scope="local", topic="invoice.due", created=now, updated=now,
        expires=now + timedelta(hours=1),
    )  # fmt: skip
    await asyncio.gather(relay.store.signal_insert(other), svc.emit("alice", EMIT))
    assert svc.active.accounted
    assert [s.id for s in await svc.active.signals()] != [other.id]
    assert not feed.done()
    # Found when the copy is read again, SCAN_MAX_AGE after its read: every feed looks.
    clock_of(relay).advance(SCAN_MAX_AGE)
    await svc.active.signals()
    heard = await asyncio.wait_for(feed, 10)
    assert [h.signal.id for h in heard] == [other.id]


async def test_changes_written_here_keep_the_scan_current_without_a_read(relay: Relay) -> None:
    svc = relay.signals
    await svc.active.signals()
    s = await svc.emit("alice", EMIT)
    # The emit's own wake-up is accounted for by the signal it wrote: no read needed.
    current = svc.active.current()
    assert current is not None
    assert [x.id for x in current] == [s.id]
    token, _ = await svc.claim("bob", s.id)
    current = svc.active.current()
    assert current is not None
    assert [(x.id, x.state, x.holder) for x in current] == [(s.id, "claimed", "bob@a.test")]
    assert current == await relay.store.signals_active(10)
    await svc.complete("bob", s.id, token)
    assert svc.active.current() == []
    # A write this service did not make (as another process's would be) is not accounted
    # for: the next feed reads, and finds it.
    other = replace(signal(), owner="a.test", scope="local", created=relay.clock.now())
    assert await relay.store.signal_insert(other)
    assert svc.active.current() is None
    assert [x.id for x in await svc.active.signals()] == [other.id]


async def test_a_change_wakes_only_the_feeds_it_concerns(relay: Relay) -> None:
    svc = relay.signals
    await svc.subscribe("bob", {"topics": ["invoice.*"]})
    await svc.subscribe("carol", {"topics": ["weather.*"]})
    feeds = {n: asyncio.create_task(svc.feed(n, wait=30, limit=10)) for n in ("bob", "carol")}
    await wait_until(lambda: svc.waiting == {"bob", "carol"})
    s = await svc.emit("alice", EMIT)
    heard = await asyncio.wait_for(feeds["bob"], 10)
    assert [h.signal.id for h in heard] == [s.id]
    # Woken (and woken first) are those whose subscription names the topic; carol's feed was
    # left waiting, not made to look again.
    (carol,) = svc._feeds
    assert not carol._event.is_set()
    # A subscription changed wakes every feed (any of them may hear something new).
    await svc.subscribe("carol", {"topics": ["invoice.*", "weather.*"]})
    heard = await asyncio.wait_for(feeds["carol"], 10)
    assert [h.signal.id for h in heard] == [s.id]


async def test_a_heartbeat_or_a_completion_wakes_no_feed(relay: Relay) -> None:
    svc = relay.signals
    await svc.subscribe("bob", {"topics": ["invoice.*"]})
    await svc.subscribe("carol", {"topics": ["invoice.*", "weather.*"]})
    s = await svc.emit("alice", EMIT)
    clock_of(relay).advance(sg.OFFER_DELAY.total_seconds())
    token, _ = await svc.claim("bob", s.id)
    feeds = {n: asyncio.create_task(svc.feed(n, wait=30, limit=10)) for n in ("bob", "carol")}
    await wait_until(lambda: svc.waiting == {"bob", "carol"})
    # Feeds list open signals only: a claimed signal kept claimed, or closed, changes none.
    await svc.heartbeat("bob", s.id, token)
    await svc.complete("bob", s.id, token)
    weather = await svc.emit("alice", {**EMIT, "topic": "weather.storm"})
    heard = await asyncio.wait_for(feeds["carol"], 10)
    assert [h.signal.id for h in heard] == [weather.id]
    # Every wake-up before the emit's was passed on first: bob's feed was woken by none.
    (bob,) = svc._feeds
    assert not bob._event.is_set()
    feeds["bob"].cancel()


async def test_caps_per_agent_counted_from_a_current_scan(relay: Relay) -> None:
    svc = relay.signals
    svc.max_open = 2
    await svc.active.signals()
    first = await svc.emit("alice", EMIT)
    await svc.emit("alice", EMIT)
    await svc.active.signals()
    assert svc.active.open_count("alice@a.test") == 2
    with pytest.raises(TooManySignals):
        await svc.emit("alice", EMIT)
    token, _ = await svc.claim("bob", first.id)
    await svc.active.signals()
    with pytest.raises(TooManySignals):  # a claimed signal counts
        await svc.emit("alice", EMIT)
    await svc.complete("bob", first.id, token)
    await svc.active.signals()
    assert svc.active.open_count("alice@a.test") == 1
    await svc.emit("alice", EMIT)


async def test_concurrent_feeds_read_once(relay: Relay) -> None:
    svc = relay.signals
    await svc.emit("alice", EMIT)
    scans = await asyncio.gather(*(svc.active.signals() for _ in range(20)))
    assert all(scan is scans[0] for scan in scans)


async def test_result_lost_in_a_crash_is_sent_once_by_the_sweep(relay: Relay) -> None:
    svc = relay.signals
    s = await svc.emit("alice", EMIT)
    token, _ = await svc.claim("bob", s.id)
    # The complete as written before a crash that came before the result was sent.
    stored = await relay.store.signal_get(s.id)
    (current,) = await relay.store.signal_claims(s.id)
    assert stored is not None
    change = sg.complete(
        stored,
        current,
        "bob@a.test",
        token,
        relay.clock.now(),
        result_id=("0190aaaa-0000-7000-8000-0000000000aa"),
        content_type="text/plain",
        body="ok",
    )
    assert await relay.store.signal_write(change, stored.version)
    assert await svc.run_once() == 1
    assert await svc.run_once() == 0
    # The sweep of another process that read the row before it was marked sent: the same
    # envelope id, so nothing new.
    await svc._send_result(change.signal)
    items = await relay.store.inbox("alice", limit=10)
    assert [i.id for i in items] == ["0190aaaa-0000-7000-8000-0000000000aa"]


async def test_an_offer_owed_when_the_relay_stopped_is_told_after_its_restart(
    store_url: str, tmp_path: Path
) -> None:
    """The emit and the claim are answered before partners are told (SPEC.md §13.6): a relay
    stopped in between (no teller ran here) leaves the store owing them, and the restarted
    relay's sweep tells them once, with the state as it then stands."""
    first = await open_relay(tmp_path / "a", store_url)
    try:
        for name in ("alice", "bob"):
            await first.store.create_agent(name, "inbox", hash_token(new_token()), None, T0)
        s = await first.signals.emit("alice", {**EMIT, "scope": ["b.test"]})
        await first.signals.claim("bob", s.id)
        assert await first.store.list_queue("b.test") == []
    finally:
        await first.close()
    again = await open_relay(tmp_path / "b", store_url)
    try:
        assert [(x.id, kind) for x, kind in await again.store.signals_untold(10)] == [
            (s.id, sg.KIND_SIGNAL)
        ]
        assert await again.signals.run_once() == 1
        assert await again.signals.run_once() == 0
        [queued] = await again.store.list_queue("b.test")
        assert queued.recipient == f"{sg.SIGNALS_LOCAL}@b.test"
        offer = json.loads(parse_compact(queued.token).payload)
        assert (offer["kind"], offer["body"]["id"]) == (sg.KIND_SIGNAL, s.id)
        assert (offer["body"]["state"], offer["body"]["holder"]) == ("claimed", "bob@a.test")
    finally:
        await again.close()


def queued_body(entry: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(parse_compact(entry.token).payload)
    return body


async def test_an_offer_waits_for_the_first_hearers_here_until_a_claim_or_its_delay(
    relay: Relay,
) -> None:
    """SPEC.md §13.6: partners' agents are among the others of the staggered offer (§13.1)."""
    svc, clock = relay.signals, clock_of(relay)
    running = asyncio.create_task(svc.run())
    try:
        await svc.subscribe("bob", {"topics": ["invoice.**"]})
        waiting = asyncio.create_task(svc.feed("bob", wait=30, limit=10))
        await wait_until(lambda: "bob" in svc._listening)
        async with relay.store.notifier.listen(QUEUE_CHANNEL) as queue:
            taken = await svc.emit("alice", {**EMIT, "scope": ["b.test"]})
            assert [h.signal.id for h in await asyncio.wait_for(waiting, 10)] == [taken.id]
            await svc.claim("bob", taken.id)
            assert await queue.wait(5)
        # One envelope, not an offer and an update: the offer held back for bob went with his
        # claim, showing the signal taken.
        [offer] = [queued_body(e) for e in await relay.store.list_queue("b.test")]
        assert (offer["kind"], offer["body"]["id"]) == (sg.KIND_SIGNAL, taken.id)
        assert (offer["body"]["state"], offer["body"]["holder"]) == ("claimed", "bob@a.test")

        # Heard here and not taken: offered, open, once it is OFFER_DELAY old (the clock is
        # the relay's: it stands still until the test moves it).
        waiting = asyncio.create_task(svc.feed("bob", wait=30, limit=10))
        await wait_until(lambda: "bob" in svc._listening)
        left = await svc.emit("alice", {**EMIT, "scope": ["b.test"], "topic": "invoice.late"})
        assert [h.signal.id for h in await asyncio.wait_for(waiting, 10)] == [left.id]
        assert await svc.tell_owed() == 0  # the sweep leaves a held offer alone too
        async with relay.store.notifier.listen(QUEUE_CHANNEL) as queue:
            clock.advance(sg.OFFER_DELAY.total_seconds())
            assert await queue.wait(5)
        bodies = {
            b["body"]["id"]: b for b in map(queued_body, await relay.store.list_queue("b.test"))
        }
        assert (bodies[left.id]["kind"], bodies[left.id]["body"]["state"]) == (
            sg.KIND_SIGNAL,
            "open",
        )

        # Heard by nobody here: offered at once.
        async with relay.store.notifier.listen(QUEUE_CHANNEL) as queue:
            alone = await svc.emit("alice", {**EMIT, "scope": ["b.test"], "topic": "ocr.scan"})
            assert await queue.wait(5)
        assert alone.id in {
            queued_body(e)["body"]["id"] for e in await relay.store.list_queue("b.test")
        }
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


# --- concurrency: several store instances on one database ---------------------------------------


@pytest.mark.parametrize("instances", [1, 3])
async def test_concurrent_claims_and_completes_count_once(
    store_url: str, tmp_path: Path, instances: int
) -> None:
    first = await open_relay(tmp_path / "a", store_url)
    clock = first.clock
    relays = [first]
    try:
        for _ in range(1, instances):
            other = await open_store(first.config.store_url, domain="a.test")
            relays.append(Relay(first.config, other, load_keyring(first.config.keys_dir), clock))
        names = [f"w{i}" for i in range(12)]
        for name in ["alice", *names]:
            await first.store.create_agent(
                name, "inbox", hash_token(new_token()), None, clock.now()
            )
        s = await first.signals.emit("alice", EMIT)
        outcomes = await asyncio.gather(
            *(relays[i % len(relays)].signals.claim(n, s.id) for i, n in enumerate(names)),
            return_exceptions=True,
        )
        won = [(n, o) for n, o in zip(names, outcomes, strict=True) if isinstance(o, tuple)]
        assert len(won) == 1, outcomes
        assert all(isinstance(o, sg.AlreadyClaimed) for o in outcomes if not isinstance(o, tuple))
        winner, (token, _) = won[0]
        done = await asyncio.gather(
            *(r.signals.complete(winner, s.id, token, "text/plain", "r") for r in relays * 4),
            return_exceptions=True,
        )
        assert sum(1 for d in done if isinstance(d, sg.Signal)) == 1, done
        assert all(isinstance(d, sg.StaleClaim) for d in done if not isinstance(d, sg.Signal))
        assert len(await first.store.inbox("alice", limit=10)) == 1
    finally:
        for r in relays:
            await r.close()


def test_pg_module_is_the_session_cluster() -> None:
    # The PostgreSQL half of the fixtures above comes from tests/pg.py's session cluster.
    assert callable(pg.database_url)


async def test_signals_section_configures_and_reloads(relay: Relay) -> None:
    assert relay.signals.max_open == sg.MAX_OPEN_PER_AGENT
    section = SignalsSection(emit_rate=RateSection(per_second=1, burst=2), max_open=3)
    relay.reload(relay.config.model_copy(update={"signals": section}))
    assert relay.signals.max_open == 3
    for _ in range(2):
        await relay.signals.emit("alice", EMIT)
    with pytest.raises(RateLimited):
        await relay.signals.emit("alice", EMIT)
