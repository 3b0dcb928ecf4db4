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

Tables keyed by source address (:class:`SourceLimits`) choose the other policy,
``evict_throttled``: when full, the least recently charged bucket goes, throttled or not. There
the argument above turns around. A new address already *is* a fresh bucket, so an attacker who
controls many addresses gains nothing by evicting one of them; refusing new keys instead would
let that attacker, by draining ten thousand addresses, lock every legitimate client out.

Per-source limits (SPEC.md §10.3). Besides rates, a relay bounds what one source address may
hold at once — connections and requests in flight (:class:`Concurrency`) — and charges some
failures after the fact (:meth:`TokenBuckets.charge`): whether a bearer token or a signature was
good is known only once it has been checked, so the check is refused up front while the
source's bucket is in debt, and each failure is paid for afterwards. Postfix's anvil(8) bounds
the same things per SMTP client (``smtpd_client_connection_count_limit`` = 50 connections,
``smtpd_client_connection_rate_limit``, ``smtpd_client_auth_rate_limit``; all but the first off
by default, and clients in ``$mynetworks`` exempt); Synapse's ``rc_login.failed_attempts``
allows 3 failed logins, then one every ~6 seconds.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_AGENT_RATE",
    "DEFAULT_FAILED_AUTH_RATE",
    "DEFAULT_SENDER_DOMAIN_RATE",
    "DEFAULT_SENDER_RATE",
    "DEFAULT_SOURCE_REQUEST_RATE",
    "DEFAULT_UNVERIFIED_RATE",
    "IPV6_SOURCE_PREFIX",
    "MAX_BUCKETS",
    "MAX_CONNECTIONS_PER_SOURCE",
    "MAX_REQUESTS_IN_FLIGHT_PER_SOURCE",
    "Concurrency",
    "Rate",
    "RateLimits",
    "SourceLimits",
    "TokenBuckets",
    "source_key",
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

# --- per source address (SPEC.md §10.3) ---------------------------------------------------------

#: Failed bearer-token authentications (SPEC.md §6.1) per source address, on every face that
#: takes a local agent's token: the local API, MCP, A2A. Stops online token guessing — and the
#: log and store traffic of a client hammering with a stale token. Twenty failures are free (an
#: agent restarted with an old token, an operator's typo); past them, one attempt every five
#: seconds, and every attempt from that address is answered ``429`` before its token is looked
#: at, so a guesser learns nothing more. A successful authentication costs nothing.
#: (Synapse, rc_login.failed_attempts: 0.17/s, burst 3; fail2ban: 5 failures per 10 minutes.)
DEFAULT_FAILED_AUTH_RATE: Final = Rate(per_second=0.2, burst=20.0)

#: Federation envelopes per source address that failed to prove authentic: sent under another
#: domain than the transaction's ``origin``, or whose key could not be found, or whose signature
#: does not verify (SPEC.md §8.3 steps 2–3). Stops unauthenticated floods from making the
#: relay look up keys (DNS and HTTPS, for names the sender chooses) and check Ed25519 signatures
#: without end: once a source is in debt, its transactions are refused ``429`` before their
#: body is read. One full transaction (MAX_TXN_ENVELOPES = 200) of failures is free, then one a
#: second. A partner whose envelopes verify is never charged.
DEFAULT_UNVERIFIED_RATE: Final = Rate(per_second=1.0, burst=200.0)

#: HTTP requests per source address, any route. Stops one address from taking the whole
#: server — its request parsing, routing, and the cheap unauthenticated routes (agent cards,
#: the well-known document, 404s) — away from every other client. Generous on purpose: the
#: agents on the relay's own host all come from one loopback address, and a single client
#: sending one message per request reaches ~1,000 requests a second on a small machine.
#: (nginx's limit_req and Postfix's smtpd_client_connection_rate_limit: off by default.)
DEFAULT_SOURCE_REQUEST_RATE: Final = Rate(per_second=2000.0, burst=20_000.0)

#: Open connections per source address, counted from accept to close and refused at accept
#: (closed before a byte is read). Stops one address from holding every file descriptor of
#: the process — idle keep-alive connections, slow-loris headers — so that others cannot
#: connect. (Postfix: smtpd_client_connection_count_limit = 50; nginx limit_conn: off.)
MAX_CONNECTIONS_PER_SOURCE: Final = 256

#: Requests in flight per source address: from the start of their handler to the end of their
#: answer, long polls and SSE streams included. Stops one address from pinning handlers and the
#: memory of their bodies (up to MAX_TXN_BYTES each: 128 of them pin ~0.5 GiB). Agents on the
#: relay's own host share one address, so more than ~100 of them long-polling at once need a
#: larger value (or their network in ``exempt``).
MAX_REQUESTS_IN_FLIGHT_PER_SOURCE: Final = 128

#: IPv6 sources are limited per /64: one end site is handed at least a /64 (RFC 6177), so a
#: limit per /128 would hand an attacker 2^64 fresh buckets.
IPV6_SOURCE_PREFIX: Final = 64


class TokenBuckets:
    """One token bucket per key, all with the same :class:`Rate`.

    ``evict_throttled``: what a full table does for a new key (module docstring) — False:
    refuse it until a bucket has refilled; True: evict the least recently charged bucket.
    """

    def __init__(
        self, rate: Rate, *, max_buckets: int = MAX_BUCKETS, evict_throttled: bool = False
    ) -> None:
        if max_buckets < 1:
            raise ValueError("a table holds at least one bucket")
        self.rate = rate
        self.max_buckets = max_buckets
        self.evict_throttled = evict_throttled
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
        if (
            not self.evict_throttled
            and key not in self._buckets
            and len(self._buckets) >= self.max_buckets
        ):
            return self._saturation_wait(now)
        missing = cost - self.level(key, now)
        return 0.0 if missing <= 0 else missing / self.rate.per_second

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens and return 0, or take nothing and return the seconds to wait."""
        wait = self.wait(key, now, cost)
        if wait == 0.0:
            self._charge(key, now, cost)
        return wait

    def charge(self, key: str, now: float, cost: float = 1.0) -> None:
        """Take ``cost`` tokens whatever the level: below zero it is a debt, repaid by refill
        before :meth:`wait` lets ``key`` through again. For work whose cost is known only once
        it is done (failures, counted after the check), admitted while :meth:`wait` was 0.

        Only for tables that evict throttled buckets: a charge always finds room, which would
        break a refusing table's promise never to evict a throttled bucket."""
        if not self.evict_throttled:
            raise ValueError("charge() is for tables that evict throttled buckets")
        if cost < 0:
            raise ValueError("a charge is not a refund")
        self._evict_full(now)
        self._charge(key, now, cost)

    def _charge(self, key: str, now: float, cost: float) -> None:
        level = self.level(key, now)
        if key not in self._buckets and len(self._buckets) >= self.max_buckets:
            # Only an evicting table gets here (a refusing one answered with a wait).
            self._buckets.popitem(last=False)
        self._buckets[key] = (level - cost, now)
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


# --- per source address -------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


#: Peer addresses whose parse is remembered: every request is keyed by its peer, and parsing
#: an address was some 3 % of a relay's CPU per API request. Bounded (least recently used
#: forgotten first) so that a client cycling through its IPv6 addresses grows nothing.
ADDRESS_CACHE: Final = 4096


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # no zone: fe80::1%eth0
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: the same client.
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def source_key(host: str | None) -> str:
    """The key a per-source limit counts ``host`` (a peer's address as the socket reports it)
    under: an IPv4 address as itself, an IPv6 address by its /64 (IPV6_SOURCE_PREFIX), an
    IPv4-mapped IPv6 address as the IPv4 address. Anything else — a Unix socket, no peer — is
    one key, ``"local"``."""
    address = _address(host)
    if address is None:
        return "local"
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False)
        return str(network)
    return str(address)


class Concurrency:
    """How many of something (connections, requests) each key holds at once, at most
    ``limit`` each. A key is kept only while it holds something, so the table is never larger
    than what is open — bounded by the process's file descriptors, not by the keys seen."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency limit is at least 1")
        self.limit = limit
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def enter(self, key: str) -> bool:
        """Take one place for ``key``: False (and nothing taken) when it holds ``limit``."""
        held = self._held.get(key, 0)
        if held >= self.limit:
            return False
        self._held[key] = held + 1
        return True

    def leave(self, key: str) -> None:
        """Give back a place taken by :meth:`enter`."""
        held = self._held.get(key, 0)
        if held <= 1:
            self._held.pop(key, None)
        else:
            self._held[key] = held - 1


@dataclass(slots=True)
class SourceLimits:
    """What one source address may do (SPEC.md §10.3), kept per relay process. Sources in
    ``exempt`` networks are not limited (:meth:`key` answers None): a trusted proxy in front of
    the relay, or the relay's own host when its agents are trusted."""

    #: HTTP requests, any route.
    requests: TokenBuckets
    #: Bearer tokens presented that named no agent (SPEC.md §6.1).
    failed_auth: TokenBuckets
    #: Federation envelopes that failed to prove authentic (SPEC.md §8.3 steps 2–3).
    unverified: TokenBuckets
    #: Open connections, counted by the listener (relay.server.http.GatedSite).
    connections: Concurrency
    #: Requests whose handler is running.
    in_flight: Concurrency
    exempt: tuple[Network, ...] = field(default=())

    @classmethod
    def build(
        cls,
        requests: Rate = DEFAULT_SOURCE_REQUEST_RATE,
        failed_auth: Rate = DEFAULT_FAILED_AUTH_RATE,
        unverified: Rate = DEFAULT_UNVERIFIED_RATE,
        *,
        connections: int = MAX_CONNECTIONS_PER_SOURCE,
        in_flight: int = MAX_REQUESTS_IN_FLIGHT_PER_SOURCE,
        exempt: Iterable[str] = (),
        max_buckets: int = MAX_BUCKETS,
    ) -> SourceLimits:
        def table(rate: Rate) -> TokenBuckets:
            return TokenBuckets(rate, max_buckets=max_buckets, evict_throttled=True)

        return cls(
            table(requests),
            table(failed_auth),
            table(unverified),
            Concurrency(connections),
            Concurrency(in_flight),
            tuple(ipaddress.ip_network(n, strict=False) for n in exempt),
        )

    def key(self, host: str | None) -> str | None:
        """The key ``host`` is limited under, or None when it is exempt."""
        if self.exempt:
            address = _address(host)
            if address is not None and any(address in n for n in self.exempt):
                return None
        return source_key(host)

    def reconfigure(self, new: SourceLimits) -> None:
        """Take ``new``'s rates, limits and exemptions (on reload), keeping every bucket's
        level and every count here: a reload hands nobody a fresh burst."""
        self.requests.reconfigure(new.requests.rate)
        self.failed_auth.reconfigure(new.failed_auth.rate)
        self.unverified.reconfigure(new.unverified.rate)
        self.connections.limit = new.connections.limit
        self.in_flight.limit = new.in_flight.limit
        self.exempt = new.exempt
