"""Retry schedule and per-destination breaker for the federation queue (SPEC.md §9).

Defaults beside the two systems this design learns from:

=====================  =====================  ========================  ======================
                       Postfix 3.x            Synapse (federation       Synq
                                              config / retryutils)
=====================  =====================  ========================  ======================
first retry            300 s                  10 min                    5 s
                       (minimal_backoff_time) (destination_min_retry_
                                              interval)
growth                 doubling               ×2 (destination_retry_    ×2
                                              multiplier)
longest wait           4000 s (maximal_       7 days (destination_max_  600 s
                       backoff_time)          retry_interval)
jitter                 none (queue scans      × U(0.8, 1.4)             full: × U(0.5, 1.0)
                       every 300 s)
lifetime               5 days (maximal_       none: events wait for     the envelope's
                       queue_lifetime)        the destination           ``expires`` (≤ 7 days)
dead destination       after 1 failed cohort  the whole destination     breaker opens after 3
                       (…_failed_cohort_      backs off                 consecutive failed
                       limit)                                           transactions
=====================  =====================  ========================  ======================

Why ours are shorter: an agent conversation is interactive at human-plus-machine speed and
envelopes expire in days, not the week mail allows; a partner relay's outage is usually a
deploy or restart measured in seconds to minutes, and a 5-minute first retry (Postfix) would
turn a 10-second blip into a 5-minute stall. The cap of 10 minutes keeps a long outage cheap
(144 attempts a day per destination, batched) while bounding the delay after recovery;
``synq queue flush`` retries at once, as ``postqueue -f`` does. Jitter spreads the retries of
many relays that lost the same partner at the same moment (thundering herd).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

INITIAL_BACKOFF: Final = timedelta(seconds=5)
MAX_BACKOFF: Final = timedelta(minutes=10)
BACKOFF_MULTIPLIER: Final = 2.0
#: Consecutive failed transactions after which a destination is considered down: no further
#: attempts until its backoff passes, so a dead partner costs one connection attempt per
#: backoff period rather than one per queued envelope.
BREAKER_THRESHOLD: Final = 3


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: timedelta = INITIAL_BACKOFF
    maximum: timedelta = MAX_BACKOFF
    multiplier: float = BACKOFF_MULTIPLIER

    def delay(self, attempts: int, rng: random.Random) -> timedelta:
        """The wait after the ``attempts``-th failed attempt (1-based), with full jitter."""
        exponent = max(attempts - 1, 0)
        base = self.initial.total_seconds() * (self.multiplier ** min(exponent, 64))
        capped = min(base, self.maximum.total_seconds())
        return timedelta(seconds=capped * (0.5 + 0.5 * rng.random()))

    def next_attempt(self, now: datetime, attempts: int, rng: random.Random) -> datetime:
        return now + self.delay(attempts, rng)


@dataclass(slots=True)
class _DestinationState:
    failures: int = 0
    open_until: datetime | None = None


@dataclass
class Breaker:
    """Per-destination circuit breaker (Postfix's "dead destination", Synapse's
    ``NotRetryingDestination``). Pure: the caller passes the time."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    threshold: int = BREAKER_THRESHOLD
    _state: dict[str, _DestinationState] = field(default_factory=dict)

    def allows(self, destination: str, now: datetime) -> bool:
        st = self._state.get(destination)
        return st is None or st.open_until is None or st.open_until <= now

    def open_until(self, destination: str) -> datetime | None:
        st = self._state.get(destination)
        return st.open_until if st else None

    def failure(self, destination: str, now: datetime, rng: random.Random) -> datetime | None:
        """Record a failed transaction; returns the time the breaker opens until, if it opened."""
        st = self._state.setdefault(destination, _DestinationState())
        st.failures += 1
        if st.failures >= self.threshold:
            st.open_until = self.policy.next_attempt(now, st.failures - self.threshold + 1, rng)
            return st.open_until
        return None

    def success(self, destination: str) -> None:
        self._state.pop(destination, None)

    def reset(self, destination: str | None = None) -> None:
        """Forget failures (``synq queue flush``: the operator says the partner is back)."""
        if destination is None:
            self._state.clear()
        else:
            self._state.pop(destination, None)
