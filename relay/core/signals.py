"""Signals: work offered by urgency, heard by threshold, taken by lease (SPEC.md §13).

An agent that needs help emits a *signal* instead of choosing a worker. Agents subscribed to its
topic hear it while its *intensity* is at least their *threshold* (the response-threshold model
of division of labour), claim it for a *lease*, and complete it. This module is the pure model:
values in, values out, time as an argument. The store keeps the rows
(relay/store/sql/store.py), the service drives them (relay/delivery/signals.py).

1. **Validation** (:func:`check_emit`): every field of an emit request against a named limit.
2. **Intensity** (:func:`intensity`): evaporation from timestamps, never a timer per signal::

       I(t) = u · 2^(−(t − created)/h)  +  Σ_i a_i · 2^(−(t − t_i)/h)

   ``u`` the urgency, ``h`` the half-life, ``a_i`` the amount of reinforcement ``i`` made at
   ``t_i`` (an agent's, once per agent, or the relay's boost when a lease lapsed): each decays
   from its own time.
3. **Claims** (:func:`claim`, :func:`heartbeat`, :func:`complete`, :func:`release`,
   :func:`withdraw`): a state machine over :class:`Signal`, after :func:`settle` brought the
   row up to ``now``::

       open ──claim──► claimed ──complete──► done
        ▲                │
        └──release───────┤
        └──lease lapses──┘   (+ a boost of LAPSE_BOOST · u at the lapse time)
       open | claimed ──withdraw (emitter)──► withdrawn
       open | claimed ──expires passes──────► expired

   Each claim moves the *generation*; the claim token is ``<generation>.<secret>`` and the
   store keeps only the secret's SHA-256. A token whose generation is not the current claim's,
   or whose secret is not the one issued, is stale (:class:`StaleClaim`, 409): that fence is
   what keeps a worker whose lease lapsed from completing a signal another worker now holds.
4. **Topics** (:func:`check_topic`, :func:`check_pattern`, :func:`matches`) and **hearing**
   (:func:`hears`).
5. **Staggered offers** (:func:`offer_draw`, :func:`first_hearers`, :func:`offered_from`): a
   new signal is heard at once by ``OFFER_FIRST`` hearers — of those waiting when it is first
   looked at, the ones that draw the lowest response threshold for it; while fewer were
   waiting, the next to look — and by the others ``OFFER_DELAY`` after it was created — so a new signal wakes a few claims, not
   a stampede of every capable agent, and no agent is chosen by the relay: each draw is a hash,
   uniform and independent per signal, and whoever claims first takes it.

Defaults beside the systems this borrows from:

=================  =======================  ===================  =============================
                   Amazon SQS               JavaSpaces/Jini      Synq
=================  =======================  ===================  =============================
lease              visibility timeout 30 s  lease, granted by    ``lease`` 60 s (5 s…1 h),
                   (0 s…12 h)               the space            heartbeat extends it
lapse              message visible again    entry returns        signal reopens, boosted
fencing            receipt handle per       none                 generation in the token
                   receive
=================  =======================  ===================  =============================
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from relay.core import envelope as envelope_kinds
from relay.core import jsonutil
from relay.core.address import normalize_domain
from relay.core.draft import parse_expires
from relay.core.envelope import CONTENT_TYPE_PATTERN, parse_timestamp
from relay.core.errors import (
    Conflict,
    Forbidden,
    InvalidEnvelope,
    PayloadTooLarge,
    RelayError,
    SynqError,
)
from relay.core.ratelimit import Rate
from relay.core.status import NO_ANSWER

__all__ = [
    "DEFAULT_EMIT_RATE",
    "DEFAULT_EXPIRES",
    "DEFAULT_HALF_LIFE",
    "DEFAULT_LEASE",
    "DEFAULT_THRESHOLD",
    "LAPSE_BOOST",
    "MAX_EXPIRES",
    "MAX_HALF_LIFE",
    "MAX_LEASE",
    "MAX_OPEN_PER_AGENT",
    "MAX_PATTERN_LENGTH",
    "MAX_REINFORCE",
    "MAX_SCOPE_DOMAINS",
    "MAX_SIGNAL_BODY_BYTES",
    "MAX_SUBSCRIPTION_TOPICS",
    "MAX_TEXT_LENGTH",
    "MAX_TOPIC_LENGTH",
    "MIN_HALF_LIFE",
    "MIN_LEASE",
    "OFFER_DELAY",
    "OFFER_FIRST",
    "AlreadyClaimed",
    "ClaimRecord",
    "Emit",
    "OwnerUnreachable",
    "Reinforcement",
    "Scope",
    "Signal",
    "SignalClosed",
    "SignalState",
    "StaleClaim",
    "Subscription",
    "Transition",
    "capability_topics",
    "check_emit",
    "check_pattern",
    "check_subscription",
    "check_topic",
    "claim",
    "complete",
    "first_hearers",
    "hash_secret",
    "hears",
    "heartbeat",
    "intensity",
    "is_relay_signal",
    "matches",
    "offer_draw",
    "offer_pending",
    "offered_from",
    "parse_token",
    "reinforce",
    "release",
    "settle",
    "withdraw",
]

# --- limits, each with the abuse it stops -------------------------------------------------------

#: A topic is a short dotted name, not a payload: longer ones only cost index and match time.
MAX_TOPIC_LENGTH: Final = 128
#: A subscription pattern, the same bound as a topic.
MAX_PATTERN_LENGTH: Final = 128
#: What a listing shows of a signal; the work itself goes in ``body``.
MAX_TEXT_LENGTH: Final = 2000
#: The optional body travels to every partner in scope and sits in every subscriber's feed;
#: 64 KiB keeps a flood of large signals from costing what a flood of envelopes costs.
MAX_SIGNAL_BODY_BYTES: Final = 64 * 1024
#: Below a second, a signal has evaporated before a long poll returns it.
MIN_HALF_LIFE: Final = timedelta(seconds=1)
#: Past a week a signal no longer evaporates on any useful scale (and outlives MAX_EXPIRES).
MAX_HALF_LIFE: Final = timedelta(days=7)
DEFAULT_HALF_LIFE: Final = timedelta(minutes=10)
#: A lease shorter than a few seconds lapses between a worker's heartbeats on a busy relay; a
#: lease longer than an hour pins the work to a worker that died (the failure leases exist for).
MIN_LEASE: Final = timedelta(seconds=5)
MAX_LEASE: Final = timedelta(hours=1)
DEFAULT_LEASE: Final = timedelta(seconds=60)
#: A signal lives at most as long as an envelope may (relay.core.limits.MAX_LIFETIME).
DEFAULT_EXPIRES: Final = timedelta(days=1)
MAX_EXPIRES: Final = timedelta(days=7)
#: A list scope names partner relays one by one; a long list is a broadcast by another name.
MAX_SCOPE_DOMAINS: Final = 16
#: One agent's reinforcement adds at most this much: no single agent can make a signal loud.
MAX_REINFORCE: Final = 1.0
#: A lease that lapsed gives the signal back with this share of its urgency added, at the lapse
#: time: work that a worker dropped becomes easier to hear, not harder.
LAPSE_BOOST: Final = 0.5
#: Open (or claimed) signals one agent may have at a time: a flood of signals fills every
#: subscriber's feed, so the emitter is capped, not only rate-limited.
MAX_OPEN_PER_AGENT: Final = 100
#: Signals one agent may emit: 5 a second, 50 at once. Beside the cap on open signals this stops
#: an agent churning signals (emit, withdraw, emit) that every subscriber's feed re-reads.
DEFAULT_EMIT_RATE: Final = Rate(per_second=5.0, burst=50.0)
#: Topic patterns in one subscription.
MAX_SUBSCRIPTION_TOPICS: Final = 64
#: A subscription without a threshold hears every matching open signal stronger than this.
DEFAULT_THRESHOLD: Final = 0.0


# --- errors -------------------------------------------------------------------------------------


class AlreadyClaimed(Conflict):
    """``409 already_claimed``: another worker holds the lease."""

    code = "already_claimed"
    default_message = "the signal is claimed by another agent"


class StaleClaim(Conflict):
    """``409 stale_claim``: the token is not the current claim's (the lease lapsed, the signal
    was released or claimed again, or the token was never issued)."""

    code = "stale_claim"
    default_message = "the claim token is not the signal's current claim"


class SignalClosed(Conflict):
    """``409 signal_closed``: the signal is done, withdrawn or expired."""

    code = "signal_closed"
    default_message = "the signal is no longer open"


class OwnerUnreachable(RelayError):
    """``503 owner_unreachable`` (4.4.1): the relay that owns a partner's signal did not answer
    a claim, heartbeat, complete or release; try again later."""

    code = "owner_unreachable"
    status = NO_ANSWER
    http_status = 503
    default_message = "the signal's owner relay cannot be reached"


# --- topics -------------------------------------------------------------------------------------

#: A topic: dot-separated labels of lower-case letters, digits, ``_`` and ``-`` (1–63 each).
_LABEL: Final = r"[a-z0-9_-]{1,63}"
_TOPIC: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
#: A pattern: a topic whose labels may be ``*`` (exactly one label), and whose last label may be
#: ``**`` (one or more labels). ``invoice.*`` hears ``invoice.overdue`` but not ``invoice`` nor
#: ``invoice.overdue.eu``; ``invoice.**`` hears the last two.
_PLABEL: Final = rf"(?:{_LABEL}|\*)"
_PATTERN: Final = re.compile(rf"{_PLABEL}(?:\.{_PLABEL})*(?:\.\*\*)?|\*\*")


def check_topic(topic: object) -> str:
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC_LENGTH or not _TOPIC.fullmatch(topic):
        raise InvalidEnvelope(
            "topic: dot-separated labels of a-z, 0-9, '_' and '-', "
            f"at most {MAX_TOPIC_LENGTH} characters"
        )
    return topic


def check_pattern(pattern: object) -> str:
    if (
        not isinstance(pattern, str)
        or len(pattern) > MAX_PATTERN_LENGTH
        or not _PATTERN.fullmatch(pattern)
    ):
        raise InvalidEnvelope(
            "topics: each is a topic whose labels may be '*' (one label), the last one "
            f"'**' (one or more labels), at most {MAX_PATTERN_LENGTH} characters"
        )
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` is one that ``pattern`` names (both already checked)."""
    want = pattern.split(".")
    have = topic.split(".")
    if want[-1] == "**":
        head = want[:-1]
        if len(have) <= len(head):
            return False
        have = have[: len(head)]
        want = head
    elif len(want) != len(have):
        return False
    return all(w in ("*", h) for w, h in zip(want, have, strict=True))


def capability_topics(capabilities: Iterable[object]) -> list[str]:
    """The patterns a subscription by capability listens to: for each skill id or tag of the
    agent's card that is a valid label once lower-cased, the topic itself and everything below
    it (``invoice`` → ``invoice``, ``invoice.**``). Others are skipped: a card's tags are
    free text, and a tag that cannot be a topic names no signal."""
    out: list[str] = []
    for raw in capabilities:
        label = raw.strip().lower() if isinstance(raw, str) else ""
        if re.fullmatch(_LABEL, label) and label not in out:
            out.append(label)
    patterns = [p for label in out for p in (label, f"{label}.**")]
    return patterns[:MAX_SUBSCRIPTION_TOPICS]


# --- emit ---------------------------------------------------------------------------------------

#: ``local`` (this relay's agents only), ``partners`` (also the relays of ``[discovery]
#: partners``), or a tuple of partner domains.
Scope = Literal["local", "partners"] | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Emit:
    """An emit request, valid once it exists (made by :func:`check_emit`)."""

    topic: str
    text: str
    urgency: float
    half_life: timedelta
    lease: timedelta
    scope: Scope
    expires: datetime
    content_type: str | None
    body: Any


def _number(data: dict[str, Any], name: str, default: float | None) -> float:
    value = data.get(name, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEnvelope(f"{name}: a number is required")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidEnvelope(f"{name}: must be finite")
    return value


def _seconds(
    data: dict[str, Any], name: str, default: timedelta, lo: timedelta, hi: timedelta
) -> timedelta:
    value = _number(data, name, default.total_seconds())
    if not lo.total_seconds() <= value <= hi.total_seconds():
        raise InvalidEnvelope(
            f"{name}: between {lo.total_seconds():g} and {hi.total_seconds():g} seconds"
        )
    return timedelta(seconds=value)


def _scope(value: object) -> Scope:
    if value in ("local", "partners"):
        return value
    if isinstance(value, list) and 1 <= len(value) <= MAX_SCOPE_DOMAINS:
        try:
            domains = tuple(dict.fromkeys(normalize_domain(d) for d in value if isinstance(d, str)))
        except SynqError:
            domains = ()
        if domains and len(domains) == len(value):
            return domains
    raise InvalidEnvelope(
        f'scope: "local", "partners", or a list of 1 to {MAX_SCOPE_DOMAINS} partner domains'
    )


#: The members of an emit request (SPEC.md §13.2).
EMIT_FIELDS: Final = frozenset(
    {"topic", "text", "urgency", "half_life", "lease", "scope", "expires", "content_type", "body"}
)


def check_emit(data: object, now: datetime) -> Emit:
    """An emit request's JSON object as an :class:`Emit`, or ``InvalidEnvelope`` (422) naming
    the first field at fault; a body over ``MAX_SIGNAL_BODY_BYTES`` is ``PayloadTooLarge``."""
    if not isinstance(data, dict):
        raise InvalidEnvelope("the request body must be a JSON object")
    unknown = sorted(set(data) - EMIT_FIELDS)
    if unknown:
        raise InvalidEnvelope(f"{unknown[0]}: not a member of a signal")
    topic = check_topic(data.get("topic"))
    text = data.get("text", "")
    if not isinstance(text, str) or len(text) > MAX_TEXT_LENGTH:
        raise InvalidEnvelope(f"text: a string of at most {MAX_TEXT_LENGTH} characters")
    urgency = _number(data, "urgency", None)
    if not 0.0 < urgency <= 1.0:
        raise InvalidEnvelope("urgency: 0 < urgency ≤ 1")
    half_life = _seconds(data, "half_life", DEFAULT_HALF_LIFE, MIN_HALF_LIFE, MAX_HALF_LIFE)
    lease = _seconds(data, "lease", DEFAULT_LEASE, MIN_LEASE, MAX_LEASE)
    scope = _scope(data.get("scope", "local"))
    raw_expires = data.get("expires")
    if raw_expires is None:
        expires = now + DEFAULT_EXPIRES
    else:
        if not isinstance(raw_expires, str):
            raise InvalidEnvelope("expires: an RFC 3339 timestamp")
        expires = parse_expires(raw_expires)
        if expires <= now:
            raise InvalidEnvelope("expires: must be in the future")
        if expires > now + MAX_EXPIRES:
            raise InvalidEnvelope(f"expires: at most {MAX_EXPIRES.days} days ahead")
    content_type = data.get("content_type")
    body = data.get("body")
    if content_type is not None and (
        not isinstance(content_type, str) or not re.fullmatch(CONTENT_TYPE_PATTERN, content_type)
    ):
        raise InvalidEnvelope("content_type: a media type")
    if body is not None:
        if content_type is None:
            content_type = "text/plain" if isinstance(body, str) else "application/json"
        if len(jsonutil.dumps(body)) > MAX_SIGNAL_BODY_BYTES:
            raise PayloadTooLarge(f"body: at most {MAX_SIGNAL_BODY_BYTES} bytes of JSON")
    return Emit(topic, text, urgency, half_life, lease, scope, expires, content_type, body)


# --- the signal and its intensity ---------------------------------------------------------------

SignalState = Literal["open", "claimed", "done", "withdrawn", "expired"]
#: States a signal never leaves.
CLOSED: Final = frozenset({"done", "withdrawn", "expired"})


@dataclass(frozen=True, slots=True)
class Reinforcement:
    """``amount`` added at ``at``; ``source`` is the reinforcing agent's address, or
    ``lapse:<generation>`` for the boost of a lapsed lease (so each is counted once)."""

    source: str
    amount: float
    at: datetime


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """One claim of the signal's history: who held generation ``generation`` from ``claimed``
    until ``until`` (the lease's end, moved by heartbeats), and how it ``ended`` (None while
    held): ``done``, ``released``, ``lapsed`` or ``withdrawn``."""

    generation: int
    holder: str
    claimed: datetime
    until: datetime
    ended: datetime | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal as the store keeps it. ``owner`` is the domain of the relay that owns it (the
    emitter's); ``version`` moves with every change and is what the store compares and sets.
    ``token_hash``: SHA-256 of the current claim's secret; ``lease_until``: its end."""

    id: str
    owner: str
    emitter: str
    topic: str
    text: str
    urgency: float
    half_life: float
    lease: float
    scope: Scope
    created: datetime
    expires: datetime
    content_type: str | None = None
    body: Any = None
    state: SignalState = "open"
    generation: int = 0
    holder: str | None = None
    token_hash: str | None = None
    lease_until: datetime | None = None
    version: int = 0
    updated: datetime | None = None
    reinforcements: tuple[Reinforcement, ...] = ()
    #: The envelope id of the completion's result, chosen when the signal is completed, so a
    #: result sent again after a crash is the same envelope (the store's accept deduplicates).
    result_id: str | None = None
    result_type: str | None = None
    result_body: Any = None
    result_sent: bool = False


def _decay(amount: float, since: datetime, now: datetime, half_life: float) -> float:
    age = max(0.0, (now - since).total_seconds())
    return float(amount * 2.0 ** (-age / half_life))


def intensity(signal: Signal, now: datetime) -> float:
    """``I(now)`` of the module docstring; 0 for a signal that is not open (nobody should take
    it), rounded to 6 places so two reads at the same instant compare equal."""
    if signal.state != "open":
        return 0.0
    total = _decay(signal.urgency, signal.created, now, signal.half_life)
    for r in signal.reinforcements:
        if r.at <= now:
            total += _decay(r.amount, r.at, now, signal.half_life)
    return round(total, 6)


# --- the state machine --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """A change to write: the new signal (its version moved on), the claim history to write
    (the claim opened or ended by this change), the reinforcements added, and a token to hand
    the caller (claims only); ``changed`` False when there is nothing to write."""

    signal: Signal
    claims: tuple[ClaimRecord, ...] = ()
    reinforcements: tuple[Reinforcement, ...] = ()
    token: str | None = None
    changed: bool = True


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_token(token: object) -> tuple[int, str]:
    """``<generation>.<secret>`` → (generation, secret); anything else is a stale claim: a
    token that does not parse was never issued."""
    if isinstance(token, str) and len(token) <= 128:
        gen, sep, secret = token.partition(".")
        if sep and gen.isdigit() and len(gen) <= 18 and secret:
            return int(gen), secret
    raise StaleClaim()


def settle(signal: Signal, history: ClaimRecord | None, now: datetime) -> Transition:
    """``signal`` brought up to ``now``: expired past ``expires``; a claim whose lease ran out
    reopened (its claim ended ``lapsed`` at ``lease_until``, the boost added then). ``history``
    is the current claim's record, if any. ``changed`` is False when nothing is due."""
    if signal.state in CLOSED:
        return Transition(signal, changed=False)
    claims: list[ClaimRecord] = []
    boosts: list[Reinforcement] = []
    current = signal
    if (
        current.state == "claimed"
        and current.lease_until is not None
        and current.lease_until <= now
    ):
        lapse_at = current.lease_until
        boost = Reinforcement(
            f"lapse:{current.generation}", round(LAPSE_BOOST * current.urgency, 6), lapse_at
        )
        boosts.append(boost)
        if history is not None and history.generation == current.generation:
            claims.append(replace(history, ended=lapse_at, outcome="lapsed"))
        current = replace(
            current,
            state="open",
            holder=None,
            token_hash=None,
            lease_until=None,
            reinforcements=(*current.reinforcements, boost),
        )
    if current.expires <= now:
        if current.state == "claimed" and history is not None:
            claims.append(replace(history, ended=current.expires, outcome="expired"))
        current = replace(current, state="expired", holder=None, token_hash=None, lease_until=None)
    if current is signal:
        return Transition(signal, changed=False)
    return Transition(
        replace(current, version=signal.version + 1, updated=now),
        tuple(claims),
        tuple(boosts),
    )


def _open_or_refuse(signal: Signal) -> None:
    if signal.state in CLOSED:
        raise SignalClosed(f"the signal is {signal.state}")


def claim(signal: Signal, agent: str, now: datetime, secret: str | None = None) -> Transition:
    """``agent`` (an address) takes the settled ``signal`` for one lease."""
    _open_or_refuse(signal)
    if agent == signal.emitter:
        raise Forbidden("an agent cannot claim its own signal")
    if signal.state == "claimed":
        raise AlreadyClaimed()
    secret = secret or secrets.token_urlsafe(24)
    generation = signal.generation + 1
    until = min(now + timedelta(seconds=signal.lease), signal.expires)
    new = replace(
        signal,
        state="claimed",
        generation=generation,
        holder=agent,
        token_hash=hash_secret(secret),
        lease_until=until,
        version=signal.version + 1,
        updated=now,
    )
    record = ClaimRecord(generation, agent, now, until)
    return Transition(new, (record,), token=f"{generation}.{secret}")


def _held(signal: Signal, agent: str, token: object) -> None:
    """Refuse unless ``token`` (of ``agent``) is the settled signal's current claim."""
    generation, secret = parse_token(token)
    if signal.state == "claimed" and generation == signal.generation:
        if (
            signal.holder == agent
            and signal.token_hash is not None
            and secrets.compare_digest(signal.token_hash, hash_secret(secret))
        ):
            return
        raise StaleClaim()
    if signal.state in CLOSED and signal.state != "done":
        raise SignalClosed(f"the signal is {signal.state}")
    raise StaleClaim()


def heartbeat(
    signal: Signal, history: ClaimRecord, agent: str, token: object, now: datetime
) -> Transition:
    """Extend the current claim by one lease from ``now`` (never past ``expires``)."""
    _held(signal, agent, token)
    until = min(now + timedelta(seconds=signal.lease), signal.expires)
    new = replace(signal, lease_until=until, version=signal.version + 1, updated=now)
    return Transition(new, (replace(history, until=until),))


def complete(
    signal: Signal,
    history: ClaimRecord,
    agent: str,
    token: object,
    now: datetime,
    *,
    result_id: str,
    content_type: str | None = None,
    body: Any = None,
) -> Transition:
    """The current claim's holder finishes the signal; the result (if any) is kept with it,
    to go to the emitter as the envelope ``result_id``."""
    _held(signal, agent, token)
    new = replace(
        signal,
        state="done",
        token_hash=None,
        lease_until=None,
        version=signal.version + 1,
        updated=now,
        result_id=result_id,
        result_type=content_type,
        result_body=body,
    )
    return Transition(new, (replace(history, ended=now, outcome="done"),))


def release(
    signal: Signal, history: ClaimRecord, agent: str, token: object, now: datetime
) -> Transition:
    """The holder gives the signal back: open again, with no boost (nothing lapsed)."""
    _held(signal, agent, token)
    new = replace(
        signal,
        state="open",
        holder=None,
        token_hash=None,
        lease_until=None,
        version=signal.version + 1,
        updated=now,
    )
    return Transition(new, (replace(history, ended=now, outcome="released"),))


def withdraw(signal: Signal, history: ClaimRecord | None, agent: str, now: datetime) -> Transition:
    """The emitter takes its signal back, claimed or not."""
    if agent != signal.emitter:
        raise Forbidden("only the emitter may withdraw a signal")
    _open_or_refuse(signal)
    claims: tuple[ClaimRecord, ...] = ()
    if signal.state == "claimed" and history is not None:
        claims = (replace(history, ended=now, outcome="withdrawn"),)
    new = replace(
        signal,
        state="withdrawn",
        holder=None,
        token_hash=None,
        lease_until=None,
        version=signal.version + 1,
        updated=now,
    )
    return Transition(new, claims)


def reinforce(signal: Signal, agent: str, amount: object, now: datetime) -> Reinforcement:
    """``agent``'s one reinforcement of the open ``signal`` (the store refuses a second)."""
    if signal.state in CLOSED:
        raise SignalClosed(f"the signal is {signal.state}")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise InvalidEnvelope("amount: a number is required")
    value = float(amount)
    if not (math.isfinite(value) and 0.0 < value <= MAX_REINFORCE):
        raise InvalidEnvelope(f"amount: 0 < amount ≤ {MAX_REINFORCE:g}")
    if any(r.source == agent for r in signal.reinforcements):
        raise Conflict("this agent has reinforced the signal already")
    return Reinforcement(agent, value, now)


# --- subscriptions and hearing ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    """What one agent hears: open signals whose topic matches one of ``topics`` and whose
    intensity is at least ``threshold``. ``capabilities``: ``topics`` were taken from the
    agent's card (:func:`capability_topics`) when it subscribed."""

    agent: str
    topics: tuple[str, ...]
    threshold: float = DEFAULT_THRESHOLD
    capabilities: bool = False


def check_subscription(
    agent: str, data: object, capabilities: Sequence[str] | None
) -> Subscription:
    """The body of ``PUT /synq/v1/subscriptions``. With ``"capabilities": true`` the agent's
    card's skill ids and tags (``capabilities``, looked up by the caller) become topics too."""
    if not isinstance(data, dict):
        raise InvalidEnvelope("the request body must be a JSON object")
    unknown = sorted(set(data) - {"topics", "threshold", "capabilities"})
    if unknown:
        raise InvalidEnvelope(f"{unknown[0]}: not a member of a subscription")
    topics = data.get("topics", [])
    if not isinstance(topics, list) or len(topics) > MAX_SUBSCRIPTION_TOPICS:
        raise InvalidEnvelope(f"topics: a list of at most {MAX_SUBSCRIPTION_TOPICS} patterns")
    patterns = [check_pattern(t) for t in topics]
    by_card = data.get("capabilities", False)
    if not isinstance(by_card, bool):
        raise InvalidEnvelope("capabilities: true or false")
    if by_card:
        patterns += capability_topics(capabilities or ())
    patterns = list(dict.fromkeys(patterns))[:MAX_SUBSCRIPTION_TOPICS]
    threshold = _number(data, "threshold", DEFAULT_THRESHOLD)
    if not 0.0 <= threshold <= 2.0:
        raise InvalidEnvelope("threshold: 0 ≤ threshold ≤ 2")
    return Subscription(agent, tuple(patterns), threshold, by_card)


def hears(subscription: Subscription, signal: Signal, now: datetime) -> float | None:
    """The signal's intensity if ``subscription`` hears it at ``now``, else None: open, not
    the agent's own, topic matching, intensity at least the threshold (and above zero)."""
    if signal.state != "open" or signal.emitter == subscription.agent:
        return None
    if not any(matches(p, signal.topic) for p in subscription.topics):
        return None
    level = intensity(signal, now)
    if level <= 0.0 or level < subscription.threshold:
        return None
    return level


# --- staggered offers (SPEC.md §13.1) ------------------------------------------------------------

#: How many of the agents waiting for signals hear a new signal at once. Every capable agent
#: that hears a signal tries to claim it, and all but one are refused: with 20 agents, half of
#: them capable, each new signal cost ten claims, nine of them refused, and the winner's claim
#: waited behind the others' in the relay. Two keep a spare when one of them claims something
#: else; a central dispatcher, for comparison, offers each task to one worker.
OFFER_FIRST: Final = 2
#: After this, every agent that hears a signal hears it: longer than a claim's round trip, so a
#: signal the first hearers took is no longer offered when the others would hear it; short
#: beside a lease and beside an agent's own reaction time.
OFFER_DELAY: Final = timedelta(milliseconds=100)


def offer_draw(agent: str, signal_id: str) -> float:
    """``agent``'s response threshold for signal ``signal_id``, uniform in [0, 1): the first 8
    bytes of SHA-256(``signal_id`` LF ``agent``) over 2⁶⁴. A hash, not a random source: every
    read of every feed orders the same hearers the same way, and no agent is first twice more
    often than chance."""
    digest = hashlib.sha256(f"{signal_id}\n{agent}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def offer_pending(signal: Signal, now: datetime) -> bool:
    """Whether ``signal`` is young enough at ``now`` for its offer to be staggered."""
    return signal.created <= now < signal.created + OFFER_DELAY


def first_hearers(
    signal_id: str,
    hearers: Iterable[str],
    fixed: frozenset[str] = frozenset(),
    busy: Collection[str] = frozenset(),
) -> frozenset[str]:
    """The hearers a new signal is offered to at once: those ``fixed`` already, completed to
    ``OFFER_FIRST`` with the ``hearers`` whose draw for it is lowest (:func:`offer_draw`),
    those holding no claim (not in ``busy``) before those that hold one: an agent at work on a
    signal may take another only after it, and a free one can start now. At the first look,
    ``hearers`` are the agents waiting for signals then that hear it; while fewer than
    ``OFFER_FIRST`` were, each agent that looks next (:func:`hears` it) joins."""
    if len(fixed) >= OFFER_FIRST:
        return fixed
    ranked = sorted(
        set(hearers) - fixed, key=lambda agent: (agent in busy, offer_draw(agent, signal_id))
    )
    return fixed | frozenset(ranked[: OFFER_FIRST - len(fixed)])


def offered_from(
    signal: Signal, agent: str, first: Collection[str], now: datetime
) -> datetime | None:
    """When ``agent``, which hears ``signal`` (:func:`hears`), may be offered it: None for now,
    else ``created + OFFER_DELAY``. At once for the ``first`` hearers (:func:`first_hearers`)
    and once the signal is ``OFFER_DELAY`` old; a signal dated after ``now`` (another relay's
    clock ahead of this one) is not held back."""
    if not offer_pending(signal, now) or agent in first:
        return None
    return signal.created + OFFER_DELAY


# --- across organisations (SPEC.md §13.6) -------------------------------------------------------

#: Envelope kinds: a signal offered to a partner relay (the control-traffic kind of SPEC.md
#: §3.1, told apart from agents' control traffic by its content type), a change of its state,
#: and the four requests a partner relay makes of the owner on behalf of one of its agents.
KIND_SIGNAL: Final = envelope_kinds.KIND_SIGNAL
KIND_SIGNAL_UPDATE: Final = "signal.update"
REQUEST_OPS: Final = ("claim", "heartbeat", "complete", "release")
REQUEST_KINDS: Final = frozenset(f"signal.{op}" for op in REQUEST_OPS)
#: The body of ``signal`` and ``signal.update`` envelopes, and of the requests.
SIGNAL_CONTENT_TYPE: Final = "application/synq-signal+json"
REQUEST_CONTENT_TYPE: Final = "application/synq-signal-request+json"
#: The local part offers are addressed to at a partner relay, which handles envelopes of kind
#: ``signal`` and ``signal.update`` itself, whatever their local part.
SIGNALS_LOCAL: Final = "signals"
#: A request lives at most this long (its ``expires`` − ``created``): the owner remembers the
#: ids of the requests it served for that long plus the clock skew, and refuses older ones as
#: expired, so a captured request cannot be replayed later.
MAX_REQUEST_LIFETIME: Final = timedelta(minutes=5)


def is_relay_signal(kind: str, content_type: str) -> bool:
    """Whether an envelope is one the relays exchange about a signal (an offer or an update),
    which a relay handles itself instead of delivering; agents' own ``signal`` envelopes
    (control traffic, SPEC.md §3.1) have another content type."""
    return kind == KIND_SIGNAL_UPDATE or (
        kind == KIND_SIGNAL and content_type == SIGNAL_CONTENT_TYPE
    )


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def offer_body(signal: Signal) -> dict[str, Any]:
    """The body of a ``signal`` or ``signal.update`` envelope: the signal as the owner holds it,
    without its token hash or result."""
    body: dict[str, Any] = {
        "id": signal.id,
        "topic": signal.topic,
        "text": signal.text,
        "urgency": signal.urgency,
        "half_life": signal.half_life,
        "lease": signal.lease,
        "scope": list(signal.scope) if isinstance(signal.scope, tuple) else signal.scope,
        "created": _ts(signal.created),
        "expires": _ts(signal.expires),
        "state": signal.state,
        "generation": signal.generation,
        "version": signal.version,
        "reinforcements": [
            {"source": r.source, "amount": r.amount, "at": _ts(r.at)} for r in signal.reinforcements
        ],
    }
    if signal.content_type is not None:
        body["content_type"] = signal.content_type
        body["body"] = signal.body
    if signal.holder is not None and signal.lease_until is not None:
        body["holder"] = signal.holder
        body["lease_until"] = _ts(signal.lease_until)
    return body


def parse_offer(data: object, emitter: str, owner: str, now: datetime) -> Signal:
    """A partner's ``signal`` or ``signal.update`` body as the replica to keep (``emitter``:
    the envelope's ``from``, ``owner``: its domain); ``InvalidEnvelope`` for anything else."""
    if not isinstance(data, dict):
        raise InvalidEnvelope("a signal is a JSON object")
    try:
        topic = check_topic(data.get("topic"))
        state = data.get("state")
        if state not in ("open", "claimed", "done", "withdrawn", "expired"):
            raise InvalidEnvelope("state: not a signal state")
        urgency = _number(data, "urgency", None)
        half_life = _number(data, "half_life", None)
        lease = _number(data, "lease", None)
        if not (0 < urgency <= 1 and half_life >= 1 and lease >= 1):
            raise InvalidEnvelope("urgency, half_life, lease: out of range")
        generation, version = data.get("generation"), data.get("version")
        if not isinstance(generation, int) or not isinstance(version, int):
            raise InvalidEnvelope("generation, version: integers")
        sid, text = data.get("id"), data.get("text", "")
        if not isinstance(sid, str) or not isinstance(text, str) or len(text) > MAX_TEXT_LENGTH:
            raise InvalidEnvelope("id, text: strings")
        boosts = data.get("reinforcements", [])
        if not isinstance(boosts, list):
            raise InvalidEnvelope("reinforcements: a list")
        holder = data.get("holder")
        lease_until = data.get("lease_until")
        return Signal(
            id=sid,
            owner=owner,
            emitter=emitter,
            topic=topic,
            text=text,
            urgency=urgency,
            half_life=half_life,
            lease=lease,
            scope=_scope(data.get("scope", "partners")),
            created=parse_timestamp(data.get("created")),
            expires=parse_timestamp(data.get("expires")),
            content_type=data.get("content_type")
            if isinstance(data.get("content_type"), str)
            else None,
            body=data.get("body"),
            state=state,
            generation=generation,
            holder=holder if isinstance(holder, str) else None,
            lease_until=None if lease_until is None else parse_timestamp(lease_until),
            version=version,
            updated=now,
            reinforcements=tuple(
                Reinforcement(str(r["source"]), float(r["amount"]), parse_timestamp(r["at"]))
                for r in boosts
                if isinstance(r, dict)
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEnvelope(f"not a signal ({type(exc).__name__})") from None
