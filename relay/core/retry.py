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
                       (…_failed_cohort_      backs off                 failed probes; probes
                       limit)                                           every 1/5 of the outage
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
#: Failed probes after which a destination is considered down: no new envelope is sent to it
#: until the breaker's probe time, so a dead partner costs one connection attempt per probe
#: period rather than one per queued envelope.
BREAKER_THRESHOLD: Final = 3
#: The breaker's probe period is this share of the outage so far (SPEC.md §9.3): the time lost
#: after a partner returns is at most a fifth of how long it was away — 12 s after a one-minute
#: restart — where a doubling schedule can lose as much again as the whole outage.
BREAKER_PROBE_FRACTION: Final = 0.2
#: The shortest probe period: a partner that just went down is probed at most once a second.
BREAKER_MIN_PROBE: Final = timedelta(seconds=1)


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
    failures: int
    #: When the first failure of this run of failures was recorded: the outage's start.
    since: datetime
    #: When the last counted failure was recorded; attempts begun before it do not count.
    last: datetime
    open_until: datetime | None = None


@dataclass
class Breaker:
    """Per-destination circuit breaker (Postfix's "dead destination", Synapse's
    ``NotRetryingDestination``). Pure: the caller passes the times.

    It counts failed *probes*, not failed transactions (SPEC.md §9.3): a failure counts only if
    its attempt began after the last counted failure was recorded (strictly: an attempt begun
    at the same instant was in flight with it). A sender keeps several
    transactions to one destination in flight, over several pipelined passes; when the partner
    goes away they all fail within milliseconds, and counting each would open the breaker for
    its longest period within seconds of a short restart.
    """

    threshold: int = BREAKER_THRESHOLD
    fraction: float = BREAKER_PROBE_FRACTION
    minimum: timedelta = BREAKER_MIN_PROBE
    maximum: timedelta = MAX_BACKOFF
    _state: dict[str, _DestinationState] = field(default_factory=dict)

    def allows(self, destination: str, now: datetime) -> bool:
        st = self._state.get(destination)
        return st is None or st.open_until is None or st.open_until <= now

    def open_until(self, destination: str) -> datetime | None:
        st = self._state.get(destination)
        return st.open_until if st else None

    def next_probe(self, now: datetime) -> datetime | None:
        """The earliest time after ``now`` an open breaker allows its next probe; None when no
        breaker is open until after ``now``."""
        ahead = [
            st.open_until
            for st in self._state.values()
            if st.open_until is not None and st.open_until > now
        ]
        return min(ahead, default=None)

    def failing(self, destination: str) -> bool:
        """True while failures of ``destination`` are on record (open or not yet open)."""
        return destination in self._state

    def probe_period(self, outage: timedelta, rng: random.Random) -> timedelta:
        """The wait before the next probe of a destination down for ``outage``, with jitter:
        ``clamp(outage × fraction, minimum, maximum) × U``, U uniform in [0.5, 1)."""
        base = outage.total_seconds() * self.fraction
        base = min(max(base, self.minimum.total_seconds()), self.maximum.total_seconds())
        return timedelta(seconds=base * (0.5 + 0.5 * rng.random()))

    def failure(
        self, destination: str, started: datetime, now: datetime, rng: random.Random
    ) -> datetime | None:
        """Record a failed attempt that began at ``started`` and failed at ``now``. Returns the
        time the breaker is open until, if this failure (re)opened it; None if it did not count
        or the breaker stays closed."""
        st = self._state.get(destination)
        if st is None:
            st = self._state[destination] = _DestinationState(failures=0, since=now, last=now)
        elif started <= st.last:
            return None  # in flight together with a failure already counted: the same outage
        st.failures += 1
        st.last = now
        if st.failures < self.threshold:
            return None
        st.open_until = now + self.probe_period(now - st.since, rng)
        return st.open_until

    def success(self, destination: str) -> bool:
        """Record a usable answer; True if the destination had failures on record (it is back:
        the caller releases what it held back)."""
        return self._state.pop(destination, None) is not None

    def reset(self, destination: str | None = None) -> None:
        """Forget failures (the partner contacted us, or the operator says it is back)."""
        if destination is None:
            self._state.clear()
        else:
            self._state.pop(destination, None)
