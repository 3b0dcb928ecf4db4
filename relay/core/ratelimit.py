"""Token buckets (pure arithmetic, the caller passes the time) and the relay's default rates.

A bucket holds up to ``burst`` tokens and gains ``per_second`` of them each second; one envelope
costs one token. A sender within its rate never waits; a burst is absorbed up to ``burst``; past
that the answer is "retry in N seconds" — ``429`` with ``Retry-After`` on the local API
(RFC 6585 §4, RFC 9110 §10.2.3) and ``4.7.0`` per envelope in federation, which the partner's
queue treats as a deferral (RFC 3463 §3.8: 4.7.x is a transient security/policy status), so a
limited envelope is delayed, never lost.

Time is a float of monotonic seconds passed in by the caller (``Clock.monotonic()``), so tests
move it by hand and nothing here reads a clock.

Bounded memory. Each table keeps at most ``max_buckets`` buckets. Keys are chosen by senders
(their domain, their address), so without the bound a sender that rotates names would grow the
table without limit. What is evicted matters as much: a bucket that has refilled to ``burst``
carries no information (it equals a new one), so those go first, oldest first; a bucket that is
still below ``burst`` is never evicted — were it, a sender could flood the table with fresh names
to push out its own throttled bucket and start again with a full one. When every bucket is
below ``burst`` the table is saturated and a *new* key is refused, with the time until the
oldest bucket refills: under that attack new senders wait a little, nobody gets a free burst.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_AGENT_RATE",
    "DEFAULT_SENDER_DOMAIN_RATE",
    "DEFAULT_SENDER_RATE",
    "MAX_BUCKETS",
    "Rate",
    "RateLimits",
    "TokenBuckets",
    "take_all",
]


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not self.per_second > 0 or not self.burst >= 1:
            raise ValueError("a rate needs per_second > 0 and burst >= 1")


#: Envelopes per second a partner *domain* may hand us, over all its senders. Stops one
#: partner (or one compromised relay) from taking all of this relay's verification, storage and
#: inbox capacity, starving every other partner. The burst is ten full transactions
#: (MAX_TXN_ENVELOPES = 200), so a partner draining its queue after an outage passes whole.
#: Postfix sets no such rate by default (anvil's limits are off until configured); Synapse's
#: rc_federation delays a remote server's requests past 10 a second and refuses past 50 waiting.
DEFAULT_SENDER_DOMAIN_RATE: Final = Rate(per_second=200.0, burst=2000.0)

#: Envelopes per second one partner *address* may send us. Stops a single runaway or hostile
#: agent at a partner (a loop between two agents, a spammer) from using its domain's whole
#: allowance and flooding our agents' inboxes.
DEFAULT_SENDER_RATE: Final = Rate(per_second=50.0, burst=500.0)

#: Messages per second one *local agent* may submit on the API. Stops a buggy or compromised
#: local agent (a retry loop, a stolen token) from filling the store and the federation queue,
#: and from spending this relay's reputation with its partners.
DEFAULT_AGENT_RATE: Final = Rate(per_second=50.0, burst=500.0)

#: Buckets kept per table (see the module docstring). At ~200 bytes a bucket, 10,000 buckets
#: cost about 2 MiB per table. Stops a sender rotating domains or addresses from growing the
#: table (memory exhaustion) and from evicting its own throttled bucket.
MAX_BUCKETS: Final = 10_000


class TokenBuckets:
    """One token bucket per key, all with the same :class:`Rate`."""

    def __init__(self, rate: Rate, *, max_buckets: int = MAX_BUCKETS) -> None:
        if max_buckets < 1:
            raise ValueError("a table holds at least one bucket")
        self.rate = rate
        self.max_buckets = max_buckets
        # key -> (tokens at ``stamp``, stamp); least recently touched first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def reconfigure(self, rate: Rate) -> None:
        """Change the rate (on reload) keeping every bucket's level: a reload must not hand
        a throttled sender a fresh burst."""
        self.rate = rate
        for key, (tokens, stamp) in self._buckets.items():
            self._buckets[key] = (min(tokens, rate.burst), stamp)

    def level(self, key: str, now: float) -> float:
        """Tokens in ``key``'s bucket at ``now`` (a bucket never seen is full)."""
        entry = self._buckets.get(key)
        if entry is None:
            return self.rate.burst
        tokens, stamp = entry
        # A clock that went back (it should not: monotonic) refills nothing.
        return min(self.rate.burst, tokens + max(0.0, now - stamp) * self.rate.per_second)

    def wait(self, key: str, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available to ``key``; 0 if they are now."""
        if cost > self.rate.burst:
            raise ValueError("a cost above the burst could never be paid")
        self._evict_full(now)
        if key not in self._buckets and len(self._buckets) >= self.max_buckets:
            return self._saturation_wait(now)
        missing = cost - self.level(key, now)
        return 0.0 if missing <= 0 else missing / self.rate.per_second

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens and return 0, or take nothing and return the seconds to wait."""
        wait = self.wait(key, now, cost)
        if wait == 0.0:
            self._charge(key, now, cost)
        return wait

    def _charge(self, key: str, now: float, cost: float) -> None:
        self._buckets[key] = (self.level(key, now) - cost, now)
        self._buckets.move_to_end(key)

    def _evict_full(self, now: float) -> None:
        # Amortised O(1): each bucket is evicted at most once per time it was charged.
        while self._buckets:
            oldest = next(iter(self._buckets))
            if self.level(oldest, now) < self.rate.burst:
                return
            del self._buckets[oldest]

    def _saturation_wait(self, now: float) -> float:
        oldest = next(iter(self._buckets))
        return (self.rate.burst - self.level(oldest, now)) / self.rate.per_second


def take_all(charges: Sequence[tuple[TokenBuckets, str]], now: float, cost: float = 1.0) -> float:
    """Charge every (table, key) pair or none: 0 when all could pay (and did), otherwise the
    longest wait, having taken nothing — so a sender refused by its address limit is not also
    billed against its domain's."""
    wait = max((table.wait(key, now, cost) for table, key in charges), default=0.0)
    if wait == 0.0:
        for table, key in charges:
            table._charge(key, now, cost)
    return wait


@dataclass(slots=True)
class RateLimits:
    """The three tables one relay keeps."""

    #: Federation, keyed by the canonical ``from`` domain of a verified envelope.
    sender_domain: TokenBuckets
    #: Federation, keyed by the canonical ``from`` address of a verified envelope.
    sender: TokenBuckets
    #: Local API, keyed by the agent's name.
    agent: TokenBuckets

    @classmethod
    def build(
        cls,
        sender_domain: Rate = DEFAULT_SENDER_DOMAIN_RATE,
        sender: Rate = DEFAULT_SENDER_RATE,
        agent: Rate = DEFAULT_AGENT_RATE,
        *,
        max_buckets: int = MAX_BUCKETS,
    ) -> RateLimits:
        return cls(
            TokenBuckets(sender_domain, max_buckets=max_buckets),
            TokenBuckets(sender, max_buckets=max_buckets),
            TokenBuckets(agent, max_buckets=max_buckets),
        )

    def reconfigure(self, sender_domain: Rate, sender: Rate, agent: Rate) -> None:
        self.sender_domain.reconfigure(sender_domain)
        self.sender.reconfigure(sender)
        self.agent.reconfigure(agent)
