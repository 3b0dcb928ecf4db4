"""Federated search: asking partner relays' registries in parallel, and checking who asks us.

Two halves of one exchange (SPEC.md §12.6), each the other's counterpart:

**Asking** (:class:`PartnerSearch`), for a local search with ``federation: "auto"``:

1. the partners are ``[discovery] partners``; one the breaker knows to be down is left out at
   once, one whose answer to the same question is cached answers from the cache;
2. for each other partner, in parallel: find its relay base URL (``_synq`` record or
   well-known document, SPEC.md §7.4, cached), sign ``POST <base>/ard/search`` with the relay's
   Ed25519 key (RFC 9421, relay/core/httpsig.py) and send the ARD search body with
   ``federation: "none"`` — a partner never fans out again, so a request costs one hop;
3. read each answer up to :data:`MAX_SEARCH_ANSWER_BYTES`, parse it strictly, keep the results
   that are well-formed and speak for the partner's own domain, set each one's ``source``;
4. at :data:`DEFAULT_SEARCH_DEADLINE` stop waiting: every partner that has not answered by then,
   or answered anything but a usable ``200``, is **left out** — named, never an error — and
   counted by the breaker, which skips it for :data:`PARTNER_SKIP` (a dead partner costs the
   deadline once, not on every search);
5. merge by score, highest first, at most :data:`MAX_FEDERATED_RESULTS`.

The route answers the names of the left-out partners in :data:`PARTIAL_HEADER`.

**Answering** (:class:`SearchRequestVerifier`), for a partner's request to ``/ard/search``:

1. structure, profile and ``Content-Digest`` (no I/O, relay/core/httpsig.py);
2. the key at the keyid, ``<selector>._synqkey.<domain>``, through the resolver (cached);
3. the Ed25519 signature;
4. the times, against the relay's clock;
5. the replay cache: a (keyid, nonce) seen within its window is refused.

The asking domain it returns is what the registry applies visibility and ``[policy]`` to.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import aiohttp
from yarl import URL

from relay.core import httpsig, jsonutil
from relay.core.address import Address, normalize_domain
from relay.core.clock import Clock
from relay.core.errors import (
    ConfigError,
    InvalidAddress,
    RateLimited,
    ReplayedRequest,
    SynqError,
)
from relay.core.jws import PublicKey, SigningKey
from relay.core.retry import MAX_BACKOFF, Breaker
from relay.discovery.cache import TTLCache
from relay.discovery.ssrf import AddressPolicy
from relay.federation.transport import read_bounded

__all__ = [
    "DEFAULT_SEARCH_DEADLINE",
    "MAX_FEDERATED_RESULTS",
    "MAX_PARTNERS",
    "MAX_REPLAY_ENTRIES",
    "MAX_RESULTS_PER_PARTNER",
    "MAX_RESULT_CACHE_ENTRIES",
    "MAX_SEARCH_ANSWER_BYTES",
    "PARTIAL_HEADER",
    "PARTNER_SKIP",
    "REGISTRY_PATH",
    "REPLAY_WINDOW",
    "RESULT_CACHE_TTL",
    "SEARCH_PATH",
    "FederatedResults",
    "PartnerSearch",
    "ReplayCache",
    "SearchRequestVerifier",
    "partial_header_value",
]

log = logging.getLogger(__name__)

#: The ARD registry base under a relay's base URL, and its search route (ARD's OpenAPI).
REGISTRY_PATH: Final = "/ard"
SEARCH_PATH: Final = f"{REGISTRY_PATH}/search"

#: How long a federated search waits for partners. A person or a model is waiting on the
#: answer: a local search costs milliseconds, a loopback or same-region partner tens of
#: milliseconds; 1.5 s leaves room for a partner across an ocean (about 0.3 s per round trip,
#: TLS included) with a cold cache, and no more — beyond it the search answers without it.
DEFAULT_SEARCH_DEADLINE: Final = 1.5

#: The response header of a federated search that names the partners left out of it (not asked
#: because known down, or no usable answer within the deadline), as a comma-separated list of
#: domains (RFC 9110 §5.6.1): ``Synq-Partial: globex.example, initech.example``. Absent when
#: every partner answered.
PARTIAL_HEADER: Final = "Synq-Partial"

#: How long one partner's answer to one question is reused. Agents repeat searches (a model
#: retrying, several agents asking the same need); half a minute keeps a repeated search from
#: costing every partner a request, while a newly listed agent shows up within it.
RESULT_CACHE_TTL: Final = 30.0
#: Answers kept, across partners and questions (each at most MAX_RESULTS_PER_PARTNER results,
#: a few hundred kilobytes at worst). Bounds the memory distinct questions can pin.
MAX_RESULT_CACHE_ENTRIES: Final = 256

#: The largest answer read from a partner. A page of 100 ARD entries with long descriptions
#: and many skills is under 300 KB; 1 MiB is the bound of transaction answers too (SPEC.md
#: §10.2 ``MAX_ANSWER_BYTES``). Larger: that partner is left out, the rest is not read.
MAX_SEARCH_ANSWER_BYTES: Final = 1024 * 1024
#: Results taken from one partner's answer (ARD's page; more are ignored, not refused).
MAX_RESULTS_PER_PARTNER: Final = 100
#: Results of one federated search, all partners together, best first.
MAX_FEDERATED_RESULTS: Final = 100
#: Partners a relay asks. Each is one request per search: the bound keeps a search's fan-out,
#: and its cost to the partners, within what one search should cost.
MAX_PARTNERS: Final = 32

#: How long a partner that failed a search is skipped — at least; the skip then grows with the
#: outage (a fifth of it, as the federation breaker's probes, SPEC.md §9.3) up to MAX_BACKOFF,
#: with jitter down to half. A dead partner costs one search the deadline, then is left out at
#: no cost until the next probe.
PARTNER_SKIP: Final = timedelta(seconds=60)

#: How long a nonce must be remembered: an accepted request has ``created`` at most
#: MAX_SIGNATURE_SKEW ahead and ``expires`` at most MAX_SIGNATURE_SKEW behind the verifier's
#: clock and lives at most MAX_SIGNATURE_LIFETIME, so after this long any copy is stale.
REPLAY_WINDOW: Final = httpsig.MAX_SIGNATURE_LIFETIME + 2 * httpsig.MAX_SIGNATURE_SKEW
#: Nonces remembered at once. Only requests that verified are recorded, so only partners can
#: fill it, each within its rate limit; 100,000 is 140 searches a second over the whole
#: window, in about 20 MB. Full: new requests are refused 429 until entries expire, rather
#: than forgetting a nonce whose copy would then be accepted.
MAX_REPLAY_ENTRIES: Final = 100_000


def partial_header_value(left_out: Sequence[str]) -> str | None:
    """The value of :data:`PARTIAL_HEADER` for these left-out partners; None when none."""
    return ", ".join(left_out) if left_out else None


# ------------------------------------------------------------------------------ answering


class KeyResolver(Protocol):
    async def public_key(self, domain: str, selector: str) -> PublicKey: ...


class ReplayCache:
    """The (keyid, nonce) of every request accepted within its window. No I/O; the caller
    passes the time (seconds since the epoch, the clock's wall time as signatures use it)."""

    def __init__(self, max_entries: int = MAX_REPLAY_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("a replay cache holds at least one entry")
        self.max_entries = max_entries
        self._forget_at: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[int, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._forget_at)

    def _purge(self, now: int) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            self._forget_at.pop(key, None)

    def add(self, key: tuple[str, str], forget_at: int, now: int) -> None:
        """Record ``key`` until ``forget_at``; raise ReplayedRequest if it is already there, or
        RateLimited when the cache is full of entries that are all still needed."""
        self._purge(now)
        if key in self._forget_at:
            raise ReplayedRequest()
        if len(self._forget_at) >= self.max_entries:
            retry = max(1, self._heap[0][0] - now)
            raise RateLimited("too many signed requests in the replay window", retry_after=retry)
        self._forget_at[key] = forget_at
        heapq.heappush(self._heap, (forget_at, key))


class SearchRequestVerifier:
    """Verifies a partner relay's signed request (SPEC.md §12.6); returns the asking domain.

    ``keys`` finds published keys (relay.discovery.Discovery: DNS first, cached). ``url``, at
    :meth:`verify`, is the request's URL under the relay's own published base URL — the one in
    its ``_synq`` record, which is what the signer signed — followed by the request's path.
    """

    def __init__(
        self,
        keys: KeyResolver,
        clock: Clock,
        *,
        max_replay_entries: int = MAX_REPLAY_ENTRIES,
        skew: int = httpsig.MAX_SIGNATURE_SKEW,
    ) -> None:
        self.keys = keys
        self.clock = clock
        self.skew = skew
        self.replays = ReplayCache(max_replay_entries)

    async def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> str:
        """The asking relay's domain. Raises SignatureRequired (no signature at all),
        MalformedRequest, BadSignature, DigestMismatch, UnknownKey, StaleSignature,
        ReplayedRequest, RateLimited (replay cache full), or DiscoveryError when the key
        cannot be looked up now."""
        request = httpsig.parse_signed_request(method, url, headers, body)
        key = await self.keys.public_key(request.domain, request.selector)
        httpsig.verify_signature(request, key)
        now = int(self.clock.now().timestamp())
        httpsig.check_times(request, now, self.skew)
        # Kept until the request is stale everywhere: expires + skew.
        self.replays.add((request.keyid, request.nonce), request.expires + self.skew, now)
        return request.domain


# --------------------------------------------------------------------------------- asking


class RelayResolver(Protocol):
    async def relay_url(self, domain: str) -> str: ...


@dataclass(frozen=True, slots=True)
class FederatedResults:
    """What the partners answered: ARD search results, each with ``source`` set to the registry
    that answered it, best first; and the partners left out, in configuration order."""

    results: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


class _PartnerFailed(Exception):
    """One partner gave no usable answer; the reason is for the log."""


def _partner_body(request_body: Mapping[str, Any]) -> bytes:
    """What a partner is asked: the same query, ``federation: "none"`` (one hop), without the
    ``pageToken`` (a token is the local registry's; partners answer the first page)."""
    body = {k: v for k, v in request_body.items() if k != "pageToken"}
    body["federation"] = "none"
    return jsonutil.dumps(body)


def _score(item: Mapping[str, Any]) -> int | None:
    score = item.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 100:
        return None
    return score


def _speaks_for(item: Mapping[str, Any], partner: str) -> bool:
    """Whether an entry claims nothing outside the partner's own domain: an address in
    ``metadata.address`` must be at the partner's domain. A relay speaks only for its domain
    (SPEC.md §8.3 step 2); a partner listing another domain's agents could make our agents
    message whom it chose."""
    metadata = item.get("metadata")
    if metadata is None:
        return True
    if not isinstance(metadata, dict):
        return False
    address = metadata.get("address")
    if address is None:
        return True
    if not isinstance(address, str):
        return False
    try:
        return Address.parse(address).domain == partner
    except InvalidAddress:
        return False


def _results(answer: Any, partner: str, source: str) -> list[dict[str, Any]]:
    if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        raise _PartnerFailed("not an ARD search response")
    kept: list[dict[str, Any]] = []
    for item in answer["results"][:MAX_RESULTS_PER_PARTNER]:
        if (
            isinstance(item, dict)
            and _score(item) is not None
            and isinstance(item.get("identifier"), str)
            and _speaks_for(item, partner)
        ):
            kept.append({**item, "source": source})
    return kept


class PartnerSearch:
    """Asks the partners' registries in parallel, within a deadline (SPEC.md §12.6).

    ``signer`` gives the key that signs now (``Keyring.signing_key``), ``resolver`` the relay
    URLs of partners (relay.discovery.Discovery), ``session`` an aiohttp session on the SSRF
    guard's connector (relay.discovery.ssrf.make_guarded_connector); ``policy`` is the same
    guard's, applied to each URL before connecting, as the federation transport does.
    """

    def __init__(
        self,
        *,
        domain: str,
        signer: Callable[[datetime], SigningKey],
        resolver: RelayResolver,
        session: aiohttp.ClientSession,
        policy: AddressPolicy,
        partners: Sequence[str],
        clock: Clock,
        deadline: float = DEFAULT_SEARCH_DEADLINE,
        cache_ttl: float = RESULT_CACHE_TTL,
        cache_entries: int = MAX_RESULT_CACHE_ENTRIES,
        max_answer_bytes: int = MAX_SEARCH_ANSWER_BYTES,
        max_results: int = MAX_FEDERATED_RESULTS,
        breaker: Breaker | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.domain = normalize_domain(domain)
        try:
            normalised = [normalize_domain(p) for p in partners]
        except InvalidAddress as exc:
            raise ConfigError(f"[discovery] partners: {exc.message}") from None
        # Our own domain is answered locally, never over the network; each partner once.
        self.partners = [p for p in dict.fromkeys(normalised) if p != self.domain]
        if len(self.partners) > MAX_PARTNERS:
            raise ConfigError(f"[discovery] partners: at most {MAX_PARTNERS}")
        if deadline <= 0:
            raise ConfigError("the search deadline is positive")
        self.signer = signer
        self.resolver = resolver
        self.session = session
        self.policy = policy
        self.clock = clock
        self.deadline = deadline
        self.cache_ttl = cache_ttl
        self.max_answer_bytes = max_answer_bytes
        self.max_results = max_results
        self.breaker = breaker or Breaker(threshold=1, minimum=PARTNER_SKIP, maximum=MAX_BACKOFF)
        self.rng = rng or random.Random()  # noqa: S311 — jitter, not secrecy
        self._cache: TTLCache[tuple[str, bytes], list[dict[str, Any]]] = TTLCache(cache_entries)

    async def search(self, request_body: Mapping[str, Any]) -> FederatedResults:
        """The partners' results for an ARD search body, merged, and who was left out. Never
        raises for a partner's failure, and returns within the deadline (plus the moment it
        takes to cancel what is still in flight)."""
        if not self.partners:
            return FederatedResults()
        body = _partner_body(request_body)
        now = self.clock.now()
        answered: dict[str, list[dict[str, Any]]] = {}
        left_out: set[str] = set()
        tasks: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}
        for partner in self.partners:
            hit = self._cache.get((partner, body), self.clock.monotonic())
            if hit is not None:
                answered[partner] = hit
            elif not self.breaker.allows(partner, now):
                left_out.add(partner)
            else:
                tasks[partner] = asyncio.create_task(self._ask(partner, body))
        if tasks:
            try:
                await asyncio.wait(tasks.values(), timeout=self.deadline)
            finally:
                # At the deadline, or when the search itself is cancelled (its client went
                # away): cancelling an aiohttp request closes its connection at once. Wait for
                # that, so nothing of this search outlives it.
                pending = [task for task in tasks.values() if not task.done()]
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for partner, task in tasks.items():
                reason = self._outcome(task)
                if reason is None:
                    answered[partner] = task.result()
                    self.breaker.success(partner)
                    expires = self.clock.monotonic() + self.cache_ttl
                    self._cache.put((partner, body), answered[partner], expires)
                    continue
                log.info("federated search: %s left out (%s)", partner, reason)
                left_out.add(partner)
                self.breaker.failure(partner, now, self.clock.now(), self.rng)
        # Copies, so a caller adding to a result does not change the cached answer (nested
        # values are shared: read-only to callers).
        merged = [dict(item) for p in self.partners for item in answered.get(p, ())]
        # Stable: equal scores keep the partners' configured order and each one's own ranking.
        merged.sort(key=lambda item: -int(item["score"]))
        return FederatedResults(
            results=merged[: self.max_results],
            left_out=[p for p in self.partners if p in left_out],
        )

    def _outcome(self, task: asyncio.Task[list[dict[str, Any]]]) -> str | None:
        """None when the task answered; otherwise why the partner is left out."""
        if task.cancelled():
            return f"no answer within {self.deadline:g} s"
        exc = task.exception()
        if exc is None:
            return None
        if isinstance(exc, _PartnerFailed | SynqError):
            return str(exc)
        # Anything else is a bug here, not the partner's doing: keep it visible in the log,
        # but one partner still cannot fail the search.
        log.error("federated search: unexpected failure", exc_info=exc)
        return type(exc).__name__

    async def _ask(self, partner: str, body: bytes) -> list[dict[str, Any]]:
        base = (await self.resolver.relay_url(partner)).rstrip("/")
        url = f"{base}{SEARCH_PATH}"
        # IP literals and the scheme are checked here; names are checked by the guarded
        # connector when it resolves them (relay.discovery.ssrf rules 1-3).
        self.policy.check_url(URL(url))
        now = self.clock.now()
        headers = httpsig.sign_request(
            method="POST",
            url=url,
            body=body,
            key=self.signer(now),
            domain=self.domain,
            created=int(now.timestamp()),
            nonce=secrets.token_urlsafe(18),
        )
        headers["Accept"] = "application/json"
        # A compressed answer could inflate past any bound before it is counted.
        headers["Accept-Encoding"] = "identity"
        try:
            async with self.session.post(
                url, data=body, headers=headers, allow_redirects=False, auto_decompress=False
            ) as resp:
                if resp.status != 200:
                    raise _PartnerFailed(f"answered {resp.status}")
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    raise _PartnerFailed("a compressed answer")
                length = resp.content_length
                if length is not None and length > self.max_answer_bytes:
                    raise _PartnerFailed(f"an answer of {length} bytes")
                answer = await read_bounded(resp.content, self.max_answer_bytes)
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _PartnerFailed(f"connection failed ({type(exc).__name__})") from None
        if len(answer) > self.max_answer_bytes:
            raise _PartnerFailed(f"an answer over {self.max_answer_bytes} bytes")
        try:
            parsed = jsonutil.loads(answer, max_bytes=self.max_answer_bytes, what="search answer")
        except SynqError as exc:
            raise _PartnerFailed(exc.message) from None
        return _results(parsed, partner, f"{base}{REGISTRY_PATH}")
