"""Token-bucket arithmetic (relay.core.ratelimit): the caller's clock, as tables."""

from __future__ import annotations

import pytest

from relay.core.ratelimit import Rate, RateLimits, TokenBuckets, take_all

RATE = Rate(per_second=2.0, burst=4.0)


def test_burst_then_rate() -> None:
    buckets = TokenBuckets(RATE)
    now = 100.0
    assert [buckets.take("a", now) for _ in range(4)] == [0.0] * 4
    assert buckets.take("a", now) == pytest.approx(0.5)  # one token refills in 1/2 s
    assert buckets.take("a", now + 0.25) == pytest.approx(0.25)
    assert buckets.take("a", now + 0.5) == 0.0
    # Refill stops at the burst: an idle hour buys four tokens, not 7,200.
    later = now + 3600
    assert [buckets.take("a", later) for _ in range(5)][-1] > 0


def test_refused_take_costs_nothing() -> None:
    buckets = TokenBuckets(RATE)
    for _ in range(4):
        buckets.take("a", 0.0)
    for _ in range(100):
        assert buckets.take("a", 0.0) > 0
    assert buckets.take("a", 0.5) == 0.0  # hammering while refused did not dig a deeper hole


def test_keys_are_independent() -> None:
    buckets = TokenBuckets(RATE)
    for _ in range(4):
        buckets.take("a", 0.0)
    assert buckets.take("a", 0.0) > 0
    assert buckets.take("b", 0.0) == 0.0


def test_clock_going_back_refills_nothing() -> None:
    buckets = TokenBuckets(RATE)
    for _ in range(4):
        buckets.take("a", 10.0)
    assert buckets.take("a", 5.0) > 0


@pytest.mark.parametrize(
    ("per_second", "burst"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.5), (float("nan"), 1.0)]
)
def test_invalid_rates(per_second: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate(per_second, burst)


def test_cost_above_burst_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBuckets(RATE).take("a", 0.0, cost=5.0)


def test_table_is_bounded_and_evicts_only_full_buckets() -> None:
    buckets = TokenBuckets(RATE, max_buckets=3)
    for key in "abc":
        assert buckets.take(key, 0.0) == 0.0
    assert len(buckets) == 3
    # Saturated: every bucket is below its burst, so a new key waits — until the oldest
    # bucket has refilled (one token at 2/s: 0.5 s) and can go without losing anything.
    assert buckets.take("d", 0.0) == pytest.approx(0.5)
    assert len(buckets) == 3
    assert buckets.take("d", 0.5) == 0.0
    assert len(buckets) <= 3


def test_flooding_the_table_does_not_reset_a_throttled_bucket() -> None:
    """An attacker that drained its bucket cannot push it out by touching many new keys."""
    buckets = TokenBuckets(RATE, max_buckets=10)
    for _ in range(4):
        buckets.take("attacker", 0.0)
    assert buckets.take("attacker", 0.0) > 0
    for i in range(1000):
        buckets.take(f"sybil{i}", 0.0)
    assert len(buckets) == 10
    assert buckets.take("attacker", 0.0) > 0


def test_idle_buckets_are_forgotten() -> None:
    buckets = TokenBuckets(RATE, max_buckets=100)
    for i in range(50):
        buckets.take(f"k{i}", 0.0)
    buckets.take("late", 10.0)  # everyone else refilled long ago
    assert len(buckets) == 1


def test_take_all_is_all_or_nothing() -> None:
    domain, address = TokenBuckets(Rate(2.0, 10.0)), TokenBuckets(RATE)
    charges = [(domain, "globex.test"), (address, "bob@globex.test")]
    for _ in range(4):
        assert take_all(charges, 0.0) == 0.0
    assert take_all(charges, 0.0) == pytest.approx(0.5)
    # The refused attempt did not bill the domain: it still has 6 of its 10.
    assert domain.level("globex.test", 0.0) == pytest.approx(6.0)


def test_reconfigure_keeps_levels_and_caps_at_the_new_burst() -> None:
    limits = RateLimits.build(RATE, RATE, RATE)
    for _ in range(4):
        limits.agent.take("alice", 0.0)
    limits.reconfigure(Rate(100.0, 1000.0), Rate(1.0, 2.0), Rate(1.0, 2.0))
    assert limits.agent.take("alice", 0.0) > 0  # a reload hands out no fresh burst
    assert limits.sender_domain.rate.burst == 1000.0
    assert limits.sender.level("x", 0.0) == 2.0
