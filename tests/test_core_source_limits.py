"""Per-source-address limits (relay.core.ratelimit, SPEC.md §10.3) as tables: the key an address
is counted under, the evicting token-bucket tables, debts charged after the fact, concurrency
counts, exemptions and reloads. The clock is the caller's; nothing here sleeps."""

from __future__ import annotations

import pytest

from relay.core.ratelimit import (
    DEFAULT_FAILED_AUTH_RATE,
    Concurrency,
    Rate,
    SourceLimits,
    TokenBuckets,
    source_key,
)

RATE = Rate(per_second=2.0, burst=4.0)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("127.0.0.1", "127.0.0.1"),
        # IPv6 by its /64: one end site holds at least a /64 (RFC 6177).
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        # A dual-stack socket's view of an IPv4 client is that client.
        ("::ffff:192.0.2.7", "192.0.2.7"),
        # A link-local address with its zone.
        ("fe80::1%eth0", "fe80::/64"),
        # No IP peer (a Unix socket, a closed transport): one shared key.
        (None, "local"),
        ("", "local"),
        ("not an address", "local"),
    ],
)
def test_source_key(host: str | None, key: str) -> None:
    assert source_key(host) == key


def test_charge_runs_into_debt_that_refill_repays() -> None:
    buckets = TokenBuckets(RATE, evict_throttled=True)
    assert buckets.wait("a", 0.0) == 0.0  # admitted: the cost is not known yet
    buckets.charge("a", 0.0, 10.0)  # ten failures found by the work
    assert buckets.level("a", 0.0) == pytest.approx(-6.0)
    # 7 tokens short of one: 3.5 s at 2/s — the whole debt is paid, not forgiven.
    assert buckets.wait("a", 0.0) == pytest.approx(3.5)
    assert buckets.wait("a", 3.5) == 0.0


def test_charge_is_only_for_evicting_tables() -> None:
    with pytest.raises(ValueError, match="evict"):
        TokenBuckets(RATE).charge("a", 0.0)
    with pytest.raises(ValueError, match="refund"):
        TokenBuckets(RATE, evict_throttled=True).charge("a", 0.0, -1.0)


def test_threat_rotating_source_addresses_cannot_grow_the_tables() -> None:
    """A full table keyed by address evicts its least recently charged bucket (throttled or not)
    instead of refusing new addresses: memory stays bounded, and an attacker who drains
    thousands of addresses cannot lock everyone else out — a new address is served at once."""
    buckets = TokenBuckets(RATE, max_buckets=10, evict_throttled=True)
    for i in range(10_000):
        buckets.charge(f"198.51.100.{i % 250}/{i}", 0.0, 4.0)
        assert len(buckets) <= 10
    assert len(buckets) == 10
    assert buckets.wait("192.0.2.1", 0.0) == 0.0  # a legitimate newcomer is not refused
    buckets.charge("192.0.2.1", 0.0)
    assert len(buckets) == 10


def test_evicting_table_keeps_the_most_recently_charged() -> None:
    buckets = TokenBuckets(RATE, max_buckets=3, evict_throttled=True)
    for key in ("a", "b", "c"):
        buckets.charge(key, 0.0, 4.0)
    buckets.charge("a", 0.0)  # "a" is charged again: now the most recent
    buckets.charge("d", 0.0, 4.0)  # the table is full: "b", the oldest, goes
    assert buckets.wait("a", 0.0) > 0
    assert buckets.wait("b", 0.0) == 0.0  # forgotten: what any new address gets
    assert buckets.wait("c", 0.0) > 0
    assert buckets.wait("d", 0.0) > 0
    # Refilled buckets still go first, before any throttled one: at 2 s "c" has refilled and
    # makes room for "e", while "a" (one token short) is kept.
    buckets.charge("e", 2.0)
    assert len(buckets) == 3
    assert buckets.level("a", 2.0) == pytest.approx(3.0)


def test_take_on_an_evicting_table_never_waits_for_room() -> None:
    buckets = TokenBuckets(RATE, max_buckets=2, evict_throttled=True)
    for key in ("a", "b", "c"):
        for _ in range(4):
            assert buckets.take(key, 0.0) == 0.0
    assert len(buckets) == 2
    assert buckets.take("c", 0.0) == pytest.approx(0.5)


def test_concurrency_counts_each_key_up_to_its_limit() -> None:
    held = Concurrency(2)
    assert [held.enter("a") for _ in range(3)] == [True, True, False]
    assert held.enter("b")  # another key has its own share
    assert (held.held("a"), held.held("b")) == (2, 1)
    held.leave("a")
    assert held.enter("a")
    for _ in range(2):
        held.leave("a")
    held.leave("b")
    # A key holding nothing is not kept: the table is as large as what is open, no larger.
    assert len(held) == 0
    held.leave("never-entered")
    assert len(held) == 0


def test_concurrency_limit_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Concurrency(0)


@pytest.mark.parametrize(
    ("host", "limited"),
    [
        ("10.1.2.3", False),
        ("::ffff:10.1.2.3", False),
        ("2001:db8::5", False),
        ("11.0.0.1", True),
        ("2001:db9::5", True),
        (None, True),
    ],
)
def test_exempt_networks_are_not_limited(host: str | None, limited: bool) -> None:
    sources = SourceLimits.build(exempt=["10.0.0.0/8", "2001:db8::/32"])
    assert (sources.key(host) is not None) is limited


def test_tables_evict_and_defaults_are_the_named_ones() -> None:
    sources = SourceLimits.build()
    for table in (sources.requests, sources.failed_auth, sources.unverified):
        assert table.evict_throttled
    assert sources.failed_auth.rate == DEFAULT_FAILED_AUTH_RATE


def test_reconfigure_keeps_debts_and_counts() -> None:
    sources = SourceLimits.build(failed_auth=RATE, connections=4, in_flight=4)
    sources.failed_auth.charge("192.0.2.1", 0.0, 6.0)
    assert sources.connections.enter("192.0.2.1")
    sources.reconfigure(
        SourceLimits.build(
            failed_auth=Rate(10.0, 100.0), connections=1, in_flight=2, exempt=["10.0.0.0/8"]
        )
    )
    assert sources.failed_auth.level("192.0.2.1", 0.0) == pytest.approx(-2.0)  # no fresh burst
    assert sources.failed_auth.rate.burst == 100.0
    assert sources.connections.held("192.0.2.1") == 1
    assert not sources.connections.enter("192.0.2.1")  # the new limit applies to what is open
    assert sources.in_flight.limit == 2
    assert sources.key("10.0.0.1") is None
