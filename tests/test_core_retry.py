"""The retry schedule and the per-destination breaker (relay.core.retry, SPEC.md §9.3), as tables.

The random source is injected: ``Fixed`` pins the jitter factor U to one value so a schedule can
be written down exactly, and a seeded ``random.Random`` checks the bounds over many draws.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from relay.core.retry import (
    BACKOFF_MULTIPLIER,
    BREAKER_MIN_PROBE,
    BREAKER_PROBE_FRACTION,
    BREAKER_THRESHOLD,
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    Breaker,
    RetryPolicy,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PARTNER = "globex.test"
OTHER = "initech.test"


class Fixed(random.Random):
    """A random source whose every draw is ``u``: the jitter factor becomes 0.5 + 0.5·u."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def test_defaults_are_the_ones_spec_md_tables() -> None:
    # SPEC.md §9.3: 5 s first retry, doubling, 10 min cap, breaker after 3 failed probes.
    assert seconds(5) == INITIAL_BACKOFF
    assert BACKOFF_MULTIPLIER == 2.0
    assert seconds(600) == MAX_BACKOFF
    assert BREAKER_THRESHOLD == 3
    policy = RetryPolicy()
    assert (policy.initial, policy.maximum, policy.multiplier) == (seconds(5), seconds(600), 2.0)


# (attempts, shortest wait with U = 0, longest wait as U → 1): SPEC.md §9.3's list, "2.5–5 s,
# 5–10 s, 10–20 s, 20–40 s, 40–80 s, 80–160 s, 160–320 s, then 300–600 s for every later attempt".
SCHEDULE = [
    (1, 2.5, 5),
    (2, 5, 10),
    (3, 10, 20),
    (4, 20, 40),
    (5, 40, 80),
    (6, 80, 160),
    (7, 160, 320),
    (8, 300, 600),  # 5 × 2^7 = 640 s: the cap of 600 s applies from here on
    (9, 300, 600),
    (20, 300, 600),
    (1_000, 300, 600),  # the exponent is bounded: no overflow however long a row has failed
]


@pytest.mark.parametrize(("attempts", "low", "high"), SCHEDULE)
def test_schedule_bounds(attempts: int, low: float, high: float) -> None:
    policy = RetryPolicy()
    assert policy.delay(attempts, Fixed(0.0)) == seconds(low)
    assert policy.delay(attempts, Fixed(0.5)) == seconds((low + high) / 2)
    # random() is below 1, but the wait is a timedelta (microseconds): its largest draw rounds
    # to the top of the band, never past it.
    assert policy.delay(attempts, Fixed(1.0 - 2**-53)) == seconds(high)
    assert policy.delay(attempts, Fixed(0.9999)) == seconds(high * 0.99995) < seconds(high)


@pytest.mark.parametrize(("attempts", "low", "high"), SCHEDULE)
def test_seeded_jitter_stays_within_bounds_and_spreads(
    attempts: int, low: float, high: float
) -> None:
    rng = random.Random(20260301 + attempts)
    policy = RetryPolicy()
    waits = [policy.delay(attempts, rng).total_seconds() for _ in range(2_000)]
    assert all(low <= w <= high for w in waits)
    # Full jitter spreads the waits over the whole band, not a sliver of it (thundering herd).
    width = high - low
    assert min(waits) < low + 0.05 * width
    assert max(waits) > high - 0.05 * width
    assert len(set(waits)) > 1_900


@pytest.mark.parametrize("attempts", [0, -1, -50])
def test_attempts_below_one_wait_like_the_first(attempts: int) -> None:
    # "after the n-th failed attempt (1-based)": a caller passing 0 must not get a shorter wait
    # than the first retry, which would turn a zero or negative count into a tight loop.
    assert RetryPolicy().delay(attempts, Fixed(0.0)) == seconds(2.5)


# (initial s, maximum s, multiplier, attempts, U, expected wait s)
CUSTOM = [
    (2, 300, 2.0, 1, 0.0, 1),  # the local-delivery policy of relay/delivery/dispatch.py
    (2, 300, 2.0, 8, 0.0, 128),
    (2, 300, 2.0, 9, 0.0, 150),  # 2 × 2^8 = 512 > 300: capped
    (1, 3600, 3.0, 1, 0.0, 0.5),
    (1, 3600, 3.0, 4, 0.0, 13.5),  # 3^3 = 27, halved
    (1, 3600, 3.0, 4, 0.5, 20.25),  # 27 × 0.75
    (1, 3600, 3.0, 9, 0.0, 1800),  # 3^8 = 6561 > 3600: capped, halved
    (10, 10, 2.0, 5, 0.0, 5),  # maximum = initial: a flat schedule
    (4, 60, 1.0, 30, 0.0, 2),  # multiplier 1: constant waits
]


@pytest.mark.parametrize(("initial", "maximum", "multiplier", "attempts", "u", "wait"), CUSTOM)
def test_custom_policies(
    initial: float, maximum: float, multiplier: float, attempts: int, u: float, wait: float
) -> None:
    policy = RetryPolicy(seconds(initial), seconds(maximum), multiplier)
    assert policy.delay(attempts, Fixed(u)) == seconds(wait)


@pytest.mark.parametrize("attempts", [1, 3, 8, 40])
def test_next_attempt_is_now_plus_the_same_draw(attempts: int) -> None:
    policy = RetryPolicy()
    expected = NOW + policy.delay(attempts, random.Random(7))
    assert policy.next_attempt(NOW, attempts, random.Random(7)) == expected
    assert policy.next_attempt(NOW, attempts, random.Random(7)).tzinfo is UTC


def test_policy_is_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.initial = seconds(1)  # type: ignore[misc]


# --- the breaker ------------------------------------------------------------------------------
#
# SPEC.md §9.3: it counts failed probes — a failure counts only if its attempt began after the
# last counted failure — opens after BREAKER_THRESHOLD of them, and probes again after a fifth
# of the outage so far (at least BREAKER_MIN_PROBE, at most MAX_BACKOFF), with jitter U.


def fail_in_turn(breaker: Breaker, times: list[float], u: float = 0.0) -> list[datetime | None]:
    """Failures each begun after the previous one was recorded, at NOW + t for t in ``times``."""
    return [breaker.failure(PARTNER, NOW + seconds(t), NOW + seconds(t), Fixed(u)) for t in times]


def test_defaults_of_the_breaker() -> None:
    assert BREAKER_THRESHOLD == 3
    assert BREAKER_PROBE_FRACTION == 0.2
    assert seconds(1) == BREAKER_MIN_PROBE
    breaker = Breaker()
    assert (breaker.threshold, breaker.fraction, breaker.minimum, breaker.maximum) == (
        3,
        0.2,
        seconds(1),
        MAX_BACKOFF,
    )


def test_unknown_destination_is_allowed() -> None:
    breaker = Breaker()
    assert breaker.allows(PARTNER, NOW)
    assert breaker.open_until(PARTNER) is None
    assert not breaker.failing(PARTNER)


# (outage so far in seconds, probe period with U = 0, i.e. half the band's top)
PROBE_PERIODS = [
    (0, 0.5),  # the minimum, 1 s × U
    (4, 0.5),
    (5, 0.5),  # 5 × 0.2 = 1 s: still the minimum
    (10, 1.0),
    (60, 6.0),  # a one-minute outage: probed every 6–12 s
    (600, 60.0),
    (3000, 300.0),  # 3000 × 0.2 = 600 s: the cap
    (86400, 300.0),
]


@pytest.mark.parametrize(("outage", "period"), PROBE_PERIODS)
def test_probe_period_is_a_fifth_of_the_outage_within_bounds(outage: float, period: float) -> None:
    breaker = Breaker()
    assert breaker.probe_period(seconds(outage), Fixed(0.0)) == seconds(period)
    top = breaker.probe_period(seconds(outage), Fixed(1.0))
    assert top == seconds(period * 2)


def test_opens_after_the_threshold_for_a_fifth_of_the_outage() -> None:
    breaker = Breaker()
    assert fail_in_turn(breaker, [0, 20]) == [None, None]
    assert breaker.allows(PARTNER, NOW + seconds(20))
    returned = fail_in_turn(breaker, [60])
    until = NOW + seconds(60) + seconds(6)  # 60 s of outage × 0.2 × U(0) = 6 s
    assert returned == [until]
    assert breaker.open_until(PARTNER) == until
    assert not breaker.allows(PARTNER, until - timedelta(microseconds=1))
    assert breaker.allows(PARTNER, until)  # the probe may go at the instant it opens up


def test_failures_in_flight_together_count_once() -> None:
    # Four transactions of three pipelined passes began before the first failure came back:
    # one outage, one counted failure (the breaker is not open after twelve of them).
    breaker = Breaker()
    started = [NOW + seconds(i * 0.001) for i in range(12)]
    results = [
        breaker.failure(PARTNER, begun, NOW + seconds(0.1 + i * 0.001), Fixed(0.0))
        for i, begun in enumerate(started)
    ]
    assert results == [None] * 12
    assert breaker.allows(PARTNER, NOW + seconds(1))
    # A probe begun after that failure was known counts.
    assert breaker.failure(PARTNER, NOW + seconds(1), NOW + seconds(1), Fixed(0.0)) is None
    assert breaker.failure(PARTNER, NOW + seconds(2), NOW + seconds(2), Fixed(0.0)) is not None


def test_a_failed_probe_opens_it_again_for_longer() -> None:
    breaker = Breaker()
    *_, first = fail_in_turn(breaker, [0, 10, 20])
    assert first == NOW + seconds(20 + 2)  # 20 s × 0.2 × 0.5
    probe = NOW + seconds(100)
    assert breaker.allows(PARTNER, probe)
    assert breaker.failure(PARTNER, probe, probe, Fixed(0.0)) == probe + seconds(10)


def test_jitter_within_the_band_with_a_seeded_random() -> None:
    rng = random.Random(99)
    for _ in range(200):
        breaker = Breaker()
        for t in (0, 30):
            breaker.failure(PARTNER, NOW + seconds(t), NOW + seconds(t), rng)
        until = breaker.failure(PARTNER, NOW + seconds(50), NOW + seconds(50), rng)
        assert until is not None
        assert NOW + seconds(55) <= until < NOW + seconds(60)  # 50 × 0.2 = 10 s × [0.5, 1)


def test_success_closes_it_says_it_was_failing_and_restarts_the_outage() -> None:
    breaker = Breaker()
    fail_in_turn(breaker, [0, 100, 200, 300])
    assert breaker.failing(PARTNER)
    assert breaker.success(PARTNER) is True
    assert breaker.allows(PARTNER, NOW)
    assert breaker.open_until(PARTNER) is None
    assert not breaker.failing(PARTNER)
    # A new outage starts from zero: the first opening is short again.
    later = [400, 400.5, 401]
    assert fail_in_turn(breaker, later)[2] == NOW + seconds(401) + seconds(0.5)


def test_success_of_an_unknown_destination_is_harmless() -> None:
    breaker = Breaker()
    assert breaker.success(PARTNER) is False
    assert breaker.allows(PARTNER, NOW)


def test_destinations_are_independent() -> None:
    breaker = Breaker()
    fail_in_turn(breaker, [0, 1, 2])
    breaker.failure(OTHER, NOW, NOW, Fixed(0.0))
    at = NOW + seconds(2)
    assert not breaker.allows(PARTNER, at)
    assert breaker.allows(OTHER, at)
    assert breaker.open_until(OTHER) is None
    assert breaker.success(OTHER) is True
    assert not breaker.allows(PARTNER, at)


def test_reset_one_destination_or_all() -> None:
    breaker = Breaker()
    for destination in (PARTNER, OTHER):
        for t in (0, 1, 2):
            at = NOW + seconds(t)
            breaker.failure(destination, at, at, Fixed(0.0))
    at = NOW + seconds(2)
    breaker.reset(PARTNER)
    assert breaker.allows(PARTNER, at)
    assert not breaker.allows(OTHER, at)
    assert breaker.failure(PARTNER, at, at, Fixed(0.0)) is None  # its count restarted
    breaker.reset()
    assert breaker.allows(OTHER, at)
    assert breaker.open_until(OTHER) is None


# (threshold, failures, open?)
THRESHOLDS = [
    (1, 1, True),
    (2, 1, False),
    (2, 2, True),
    (5, 4, False),
    (5, 5, True),
]


@pytest.mark.parametrize(("threshold", "failures", "is_open"), THRESHOLDS)
def test_custom_threshold(threshold: int, failures: int, is_open: bool) -> None:
    breaker = Breaker(threshold=threshold)
    times = [float(t) for t in range(failures)]
    fail_in_turn(breaker, times)
    assert breaker.allows(PARTNER, NOW + seconds(failures - 1)) is not is_open


def test_custom_bounds() -> None:
    breaker = Breaker(threshold=1, fraction=0.5, minimum=seconds(60), maximum=seconds(90))
    assert breaker.failure(PARTNER, NOW, NOW, Fixed(0.0)) == NOW + seconds(30)  # the minimum
    late = NOW + seconds(1000)
    assert breaker.failure(PARTNER, late, late, Fixed(0.0)) == late + seconds(45)  # the cap


def test_next_probe_is_the_earliest_open_breakers_probe() -> None:
    """What the sender's loop waits for while breakers are open: the earliest probe still
    ahead; a breaker that is failing but not open, or whose probe time has come, has none."""
    breaker = Breaker()
    assert breaker.next_probe(NOW) is None
    fail_in_turn(breaker, [0, 10])
    assert breaker.next_probe(NOW + seconds(10)) is None  # failing, not open
    [partner] = fail_in_turn(breaker, [20])
    assert partner is not None
    for t in (0, 10, 60):
        breaker.failure(OTHER, NOW + seconds(t), NOW + seconds(t), Fixed(0.0))
    other = breaker.open_until(OTHER)
    assert other is not None
    assert partner < other
    assert breaker.next_probe(NOW + seconds(20)) == partner
    assert breaker.next_probe(partner) == other  # the first one's probe time has come
    assert breaker.next_probe(other) is None
