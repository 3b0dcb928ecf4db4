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
    # SPEC.md §9.3: 5 s first retry, doubling, 10 min cap, breaker after 3 failed transactions.
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


def test_unknown_destination_is_allowed() -> None:
    breaker = Breaker()
    assert breaker.allows(PARTNER, NOW)
    assert breaker.open_until(PARTNER) is None


# (consecutive failures, breaker open for — with U = 0 — or None while still closed).
# It opens after BREAKER_THRESHOLD failures for the backoff of the k-th attempt, k being the
# failures beyond the threshold plus one (SPEC.md §9.3).
OPENINGS = [
    (1, None),
    (2, None),
    (3, 2.5),
    (4, 5),
    (5, 10),
    (9, 160),
    (10, 300),
    (11, 300),
    (60, 300),
]


@pytest.mark.parametrize(("failures", "open_for"), OPENINGS)
def test_breaker_opens_after_the_threshold_and_backs_off(
    failures: int, open_for: float | None
) -> None:
    breaker = Breaker()
    returned = [breaker.failure(PARTNER, NOW, Fixed(0.0)) for _ in range(failures)]
    if open_for is None:
        assert returned == [None] * failures
        assert breaker.allows(PARTNER, NOW)
        assert breaker.open_until(PARTNER) is None
        return
    until = NOW + seconds(open_for)
    # failure() says when it opens, from the threshold on, and only from then.
    assert returned[: BREAKER_THRESHOLD - 1] == [None] * (BREAKER_THRESHOLD - 1)
    assert returned[-1] == until
    assert breaker.open_until(PARTNER) == until
    assert not breaker.allows(PARTNER, NOW)
    assert not breaker.allows(PARTNER, until - timedelta(microseconds=1))
    assert breaker.allows(PARTNER, until)  # the probe may go at the instant it closes
    assert breaker.allows(PARTNER, until + seconds(1))


def test_breaker_jitter_within_the_band_with_a_seeded_random() -> None:
    rng = random.Random(99)
    for _ in range(200):
        breaker = Breaker()
        *closed, until = [breaker.failure(PARTNER, NOW, rng) for _ in range(BREAKER_THRESHOLD)]
        assert closed == [None] * (BREAKER_THRESHOLD - 1)
        assert until is not None
        assert NOW + seconds(2.5) <= until < NOW + seconds(5)


def test_a_failed_probe_opens_it_again_for_longer() -> None:
    breaker = Breaker()
    openings = [breaker.failure(PARTNER, NOW, Fixed(0.0)) for _ in range(BREAKER_THRESHOLD)]
    assert openings[-1] == NOW + seconds(2.5)
    # The probe goes when the breaker closes, and fails: measured from then, twice as long.
    probe_time = NOW + seconds(2.5)
    assert breaker.allows(PARTNER, probe_time)
    assert breaker.failure(PARTNER, probe_time, Fixed(0.0)) == probe_time + seconds(5)
    assert not breaker.allows(PARTNER, probe_time + seconds(4.9))


def test_success_closes_it_and_restarts_the_count() -> None:
    breaker = Breaker()
    for _ in range(BREAKER_THRESHOLD + 2):
        breaker.failure(PARTNER, NOW, Fixed(0.0))
    breaker.success(PARTNER)
    assert breaker.allows(PARTNER, NOW)
    assert breaker.open_until(PARTNER) is None
    # Consecutive failures: the count starts again from zero, and the first opening is short again.
    assert [breaker.failure(PARTNER, NOW, Fixed(0.0)) for _ in range(BREAKER_THRESHOLD)] == [
        None,
        None,
        NOW + seconds(2.5),
    ]


def test_success_of_an_unknown_destination_is_harmless() -> None:
    breaker = Breaker()
    breaker.success(PARTNER)
    assert breaker.allows(PARTNER, NOW)


def test_destinations_are_independent() -> None:
    breaker = Breaker()
    for _ in range(BREAKER_THRESHOLD):
        breaker.failure(PARTNER, NOW, Fixed(0.0))
    breaker.failure(OTHER, NOW, Fixed(0.0))
    assert not breaker.allows(PARTNER, NOW)
    assert breaker.allows(OTHER, NOW)
    assert breaker.open_until(OTHER) is None
    breaker.success(OTHER)
    assert not breaker.allows(PARTNER, NOW)


def test_reset_one_destination_or_all() -> None:
    breaker = Breaker()
    for destination in (PARTNER, OTHER):
        for _ in range(BREAKER_THRESHOLD):
            breaker.failure(destination, NOW, Fixed(0.0))
    breaker.reset(PARTNER)
    assert breaker.allows(PARTNER, NOW)
    assert not breaker.allows(OTHER, NOW)
    assert breaker.failure(PARTNER, NOW, Fixed(0.0)) is None  # its count restarted
    breaker.reset()
    assert breaker.allows(OTHER, NOW)
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
    for _ in range(failures):
        breaker.failure(PARTNER, NOW, Fixed(0.0))
    assert breaker.allows(PARTNER, NOW) is not is_open


def test_breaker_follows_its_policy() -> None:
    policy = RetryPolicy(initial=seconds(60), maximum=seconds(90), multiplier=2.0)
    breaker = Breaker(policy, threshold=1)
    assert breaker.failure(PARTNER, NOW, Fixed(0.0)) == NOW + seconds(30)
    assert breaker.failure(PARTNER, NOW, Fixed(0.0)) == NOW + seconds(45)  # 120 capped to 90
