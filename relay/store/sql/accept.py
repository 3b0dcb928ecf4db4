"""Accept as a computation: what to insert for a batch of envelopes, and what the database's
answer means. No I/O, no database, no event loop; both SQL dialects run the same plan.

Taking custody of a batch of ``(NewEnvelope, accepted-at)`` pairs is three steps, of which
only the middle one touches the database (relay/store/sql/store.py runs it):

1. :func:`plan` — the rows to insert: one envelope row per distinct ``(origin, id)``, and the
   recipient rows in one or two statements. Each envelope's recipients are its local agents
   (delivered at once), its remote addresses (queued for federation) and the addresses refused
   at acceptance (recorded as bounced, ``refused``), each address once; an address both taken
   and refused counts as taken.
2. The dialect inserts the envelope rows (``ON CONFLICT DO NOTHING``, returning the rows it
   inserted) and the recipient rows of each statement (:func:`recipient_statements`, which
   marks the implied rows below once it knows which envelopes are new): a missing row is
   inserted, and an existing row changes only when it was refused and this accept takes the
   recipient. Each statement returns the rows it inserted or changed: ``(envelope pk, origin,
   id, recipient, refused)``.
3. :func:`interpret` — from what came back: one :class:`~relay.store.base.AcceptResult` per
   pair, the inbox rows and hop-log events of the rows that changed, the receipts those new
   inbox rows may owe (``NewEnvelope.receipts``: a row that did not change owes none, so a
   replay reports nothing twice), and the notifier channels to wake after COMMIT.

Implied events (0009). Nearly every recipient row is taken — delivered to a local inbox or
queued for federation — by the accept that creates its envelope, and its hop-log event
(``delivered`` or ``accepted``, no code, the envelope's ``via`` as hop, at the envelope's
``accepted``) then says nothing the envelope row and the recipient row do not: such a row is
marked ``implied`` and gets no event row; ``message_status`` reads the event back from the two
rows (relay/store/sqlite.py and postgres.py, ``message_status``). That is one row and two index
entries fewer per recipient on each side of a relayed message. Every other change keeps its
event row: a refused or held recipient (the code and reason are the event's), a recipient added
by a later copy of the envelope or by a later pair of the batch (its time or hop may differ from
the envelope row's), an upgrade of a refused row.

Accept is an idempotent union (relay/store/base.py; SPEC.md §8.5): a replay changes nothing and
is a duplicate, except a copy that reaches a recipient the first did not — an address refused
before (say 5.1.1, no such agent, since registered) and taken now is upgraded in place and
delivered, and the copy is not a duplicate. The outcome of a batch is the one a sequence of
single accepts would have: each row change is credited to the first pair that named it, so an
envelope repeated in a batch is a duplicate unless it takes what an earlier copy refused.

Idempotency keys (SPEC.md §6.2) come first: :func:`key_claims` says which key rows to insert
(each (agent, key) once, for the first item naming it) and which items repeat a key an earlier
item of the batch named. An item whose key was taken — before, or by an earlier item — is left
out of the plan altogether: it is a retry, answered with the key's first use.

Why two recipient statements: PostgreSQL refuses to change one row twice in one statement
(``ON CONFLICT DO UPDATE`` "cannot affect row a second time"), and a batch in which one copy
refuses an address and a later copy takes it changes that row twice (insert, then upgrade). The
first statement therefore carries each ``(envelope, recipient)`` as its first mention in the
batch names it, and the second the upgrades: a later mention that takes what the first mention
refused. Any other later mention changes nothing a sequence of single accepts would change.

Held recipients (``NewEnvelope.held``: local agents whose mailbox is over its quota, SPEC.md
§9.7) get a ``queued`` row of the store's own domain with their 4.2.2 code, due at the
envelope's expiry, and no inbox row: the quota service (relay/delivery/quota.py) moves them into
the inbox once the agent has made room (``Store.deliver_held``), or bounces them at expiry.

Remote recipients of a destination known to be down (``NewEnvelope.holds``, SPEC.md §9.3) are
held by their accept: a ``queued`` row due at the hold's end (the breaker's next probe, never
after the envelope's expiry) with the hold's code and reason, as the federation sender's hold
of a row due at once would have left it, but without that row's lease, hold and second lease.
The row was accepted — its ``accepted`` event stays implied or written as for any remote row —
and was held: a ``held`` event (the hold's code and reason, the accept's time, no hop) is
written beside it, as the sender's settle writes it. A hold is not an attempt (``attempts``
stays 0), and a batch whose remote rows are all held wakes no sender (no ``queue`` channel):
nothing is due.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from relay.core.dsn import encode_notify
from relay.core.errors import InternalError, InvalidAddress
from relay.store.base import QUEUE_CHANNEL, AcceptResult, Hold, NewEnvelope, inbox_channel

__all__ = [
    "AcceptPlan",
    "Accepted",
    "KeyClaims",
    "Recipient",
    "interpret",
    "key_claims",
    "plan",
    "recipient_statements",
    "recipients_of",
]

#: One envelope row: (origin, id, sender, token, created, expires, thread, kind, via, accepted).
ENVELOPE_WIDTH = 10
#: One recipient row: (origin, id, recipient, domain, state, refused, code, reason,
#: next_attempt, updated, notify, implied). The dialect resolves (origin, id) to the envelope's
#: key. ``implied``: the row's hop-log event is the envelope row's (the module docstring).
RECIPIENT_WIDTH = 12
#: One inbox row: (agent, envelope pk, delivered at).
INBOX_WIDTH = 3
#: One event row: (envelope pk, at, recipient, event, code, reason, hop).
EVENT_WIDTH = 7
#: One idempotency key row: (agent, key, fingerprint, origin, id, recorded at).
KEY_WIDTH = 6


@dataclass(frozen=True, slots=True)
class KeyClaims:
    """The idempotency keys a batch names (:func:`key_claims`)."""

    #: Key rows (:data:`KEY_WIDTH` wide) to insert, by the index of the first item naming each.
    rows: dict[int, tuple[Any, ...]]
    #: (agent, key) → index of the first item naming it.
    first: dict[tuple[str, str], int]
    #: Index of an item repeating a key → index of the first item naming it.
    repeats: dict[int, int]


def key_claims(batch: Sequence[tuple[NewEnvelope, Any]]) -> KeyClaims:
    """The key rows of ``batch``'s items that carry an idempotency key, each (agent, key) once:
    a later item naming the same key again repeats the first one's request."""
    claims = KeyClaims({}, {}, {})
    for i, (it, at) in enumerate(batch):
        key = it.idempotency
        if key is None:
            continue
        owner = (key.agent, key.key)
        first = claims.first.get(owner)
        if first is not None:
            claims.repeats[i] = first
            continue
        claims.first[owner] = i
        claims.rows[i] = (key.agent, key.key, key.fingerprint, it.origin, it.id, at)
    return claims


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient row of one envelope, before it is written."""

    #: The row's key: the address, or for a local agent without a store domain its bare name.
    key: str
    #: The destination domain; None for local rows.
    domain: str | None
    klass: Literal["local", "remote", "held", "refused"]
    #: The inbox owner, for local rows.
    agent: str | None = None
    #: Why it was refused or held, for refused and held rows.
    code: str | None = None
    reason: str | None = None
    #: What the sender asked to be told about it, as the store keeps it (None: the default).
    notify: str | None = None
    #: For a remote row whose destination is known to be down: its hold (code and reason
    #: above are the hold's).
    hold: Hold | None = None


def _domain_of(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress(f"not an address: {address[:80]!r} (expected local@domain)")
    return domain


def recipients_of(item: NewEnvelope, local_domain: str | None) -> list[Recipient]:
    """The recipient rows of one envelope, each key once: local agents first, then remote
    addresses, then held local agents, then refused ones. An address both taken and refused
    counts as taken.

    With the store's ``local_domain`` a local agent's row is keyed by its address, like remote
    and refused rows, so a retry that takes a local recipient an earlier copy refused upgrades
    that row; without it, by the bare agent name.
    """
    rows: list[Recipient] = []
    seen: set[str] = set()
    asked = item.notify
    for name in item.local:
        key = f"{name}@{local_domain}" if local_domain else name
        if key not in seen:
            seen.add(key)
            notify = encode_notify(asked[name]) if name in asked else None
            rows.append(Recipient(key, None, "local", agent=name, notify=notify))
    holds = item.holds
    for address in item.remote:
        if address not in seen:
            seen.add(address)
            notify = encode_notify(asked[address]) if address in asked else None
            remote_domain = _domain_of(address)
            hold = holds.get(remote_domain) if holds else None
            if hold is None:
                rows.append(Recipient(address, remote_domain, "remote", notify=notify))
            else:
                rows.append(
                    Recipient(
                        address,
                        remote_domain,
                        "remote",
                        code=hold.code,
                        reason=hold.reason,
                        notify=notify,
                        hold=hold,
                    )
                )
    for name, code, reason in item.held:
        if not local_domain:
            # A held row is a queued row of the store's own domain (the module docstring).
            raise InternalError("holding mail for a local agent needs the store's domain")
        key = f"{name}@{local_domain}"
        if key not in seen:
            seen.add(key)
            notify = encode_notify(asked[name]) if name in asked else None
            rows.append(
                Recipient(key, local_domain, "held", code=code, reason=reason, notify=notify)
            )
    for address, code, reason in item.refused:
        if address not in seen:
            seen.add(address)
            domain = address.rpartition("@")[2] or None
            rows.append(Recipient(address, domain, "refused", code=code, reason=reason))
    return rows


@dataclass(frozen=True, slots=True)
class AcceptPlan:
    """What :func:`plan` asks the database to insert, and what :func:`interpret` needs."""

    #: The batch: (item, accepted-at, its recipient rows).
    items: list[tuple[NewEnvelope, Any, list[Recipient]]]
    #: Envelope rows (:data:`ENVELOPE_WIDTH` wide), one per distinct (origin, id).
    envelopes: list[tuple[Any, ...]]
    #: Recipient rows (:data:`RECIPIENT_WIDTH` wide), one list per statement, in order: the
    #: first mentions, then the upgrades if any. Empty when the batch names no recipient.
    #: ``implied`` is False here: :func:`recipient_statements` sets it.
    recipients: list[list[tuple[Any, ...]]]
    #: (origin, id, recipient) of the first mentions whose event the envelope row implies if
    #: this accept inserts the envelope: taken rows named by the pair that wrote the envelope
    #: row (its ``accepted`` and ``via`` are theirs).
    derivable: set[tuple[str, str, str]] = field(default_factory=set)


def plan(
    batch: Sequence[tuple[NewEnvelope, Any]],
    local_domain: str | None,
    ts: Callable[[datetime], Any],
) -> AcceptPlan:
    """The rows to insert for ``batch``, a sequence of (item, accepted-at) pairs.

    ``ts`` turns a datetime into the dialect's timestamp parameter; accepted-at is already one.
    """
    items: list[tuple[NewEnvelope, Any, list[Recipient]]] = []
    envelopes: dict[tuple[str, str], tuple[Any, ...]] = {}
    first: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    upgrades: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    derivable: set[tuple[str, str, str]] = set()
    for it, at in batch:
        rows = recipients_of(it, local_domain)
        items.append((it, at, rows))
        key = (it.origin, it.id)
        head = key not in envelopes
        if head:
            envelopes[key] = (
                it.origin,
                it.id,
                it.sender,
                it.token,
                ts(it.created),
                ts(it.expires),
                it.thread,
                it.kind,
                it.via,
                at,
            )
        for r in rows:
            refused = r.klass == "refused"
            if r.klass == "local":
                state, next_attempt = "delivered", None
            elif r.klass == "remote":
                # Due at once; held: at the destination's next probe, or at expiry to be
                # bounced then.
                state = "queued"
                next_attempt = at if r.hold is None else ts(min(r.hold.until, it.expires))
            elif r.klass == "held":
                # Due at expiry: never before it in the order of the federation queue's index,
                # and ``Store.expired_held`` finds it then.
                state, next_attempt = "queued", ts(it.expires)
            else:
                state, next_attempt = "bounced", None
            row = (
                it.origin,
                it.id,
                r.key,
                r.domain,
                state,
                refused,
                r.code,
                r.reason,
                next_attempt,
                at,
                r.notify,
                False,
            )
            row_key = (it.origin, it.id, r.key)
            earlier = first.get(row_key)
            if earlier is None:
                first[row_key] = row
                if head and r.klass in ("local", "remote"):
                    derivable.add(row_key)
            elif earlier[5] and not refused and row_key not in upgrades:
                upgrades[row_key] = row
    return AcceptPlan(
        items=items,
        envelopes=list(envelopes.values()),
        recipients=[list(rows.values()) for rows in (first, upgrades) if rows],
        derivable=derivable,
    )


def _implied(accept_plan: AcceptPlan, new: set[tuple[str, str]]) -> set[tuple[str, str, str]]:
    """The derivable rows of the envelopes this accept inserted (``new``): their events are
    implied. A derivable row of an envelope that existed before (a replay) is a recipient the
    earlier copies did not name, with a time of its own: it keeps its event row."""
    if not new:
        return set()
    return {k for k in accept_plan.derivable if (k[0], k[1]) in new}


def recipient_statements(
    accept_plan: AcceptPlan, inserted_envelopes: Iterable[Sequence[Any]]
) -> list[list[tuple[Any, ...]]]:
    """The plan's recipient statements with ``implied`` set, given the envelope rows the
    database inserted, ``(origin, id, …)``. The upgrades' statement is never implied."""
    implied = _implied(accept_plan, {(row[0], row[1]) for row in inserted_envelopes})
    if not implied:
        return accept_plan.recipients
    first, *rest = accept_plan.recipients
    marked = [(*row[:-1], True) if (row[0], row[1], row[2]) in implied else row for row in first]
    return [marked, *rest]


@dataclass(slots=True)
class Accepted:
    """What :func:`interpret` makes of the database's answer."""

    #: One per pair of the batch, in order.
    results: list[AcceptResult] = field(default_factory=list)
    #: Inbox rows to insert (:data:`INBOX_WIDTH` wide): (agent, envelope pk, delivered at).
    inbox: list[tuple[str, Any, Any]] = field(default_factory=list)
    #: Hop-log rows to insert (:data:`EVENT_WIDTH` wide).
    events: list[tuple[Any, ...]] = field(default_factory=list)
    #: Notifier channels to wake after COMMIT: ``inbox:<agent>`` per agent with a new inbox
    #: row, ``queue`` when a remote row was queued due at once (not held).
    channels: set[str] = field(default_factory=set)
    #: The receipts the new inbox rows owe: (agent, receipt, accepted-at). The caller keeps
    #: those of agents that read their inbox themselves (an adapter-backed agent's is sent on
    #: hand-over).
    receipts: list[tuple[str, NewEnvelope, Any]] = field(default_factory=list)


def interpret(
    accept_plan: AcceptPlan,
    inserted_envelopes: Iterable[Sequence[Any]],
    changed_recipients: Iterable[Sequence[Any]],
) -> Accepted:
    """The outcome of ``accept_plan`` given what the database reported: the envelope rows it
    inserted, ``(origin, id, …)``, and the recipient rows it inserted or upgraded, ``(envelope
    pk, origin, id, recipient, refused)`` from every statement of the plan."""
    new_envelopes = {(row[0], row[1]) for row in inserted_envelopes}
    implied = _implied(accept_plan, new_envelopes)
    # (origin, id, recipient, refused) → envelope pk. A row refused by one pair and taken by a
    # later one changed twice, once per refusedness, so each of the two pairs gets its change.
    changed = {(row[1], row[2], row[3], bool(row[4])): row[0] for row in changed_recipients}
    out = Accepted()
    for it, at, rows in accept_plan.items:
        key = (it.origin, it.id)
        fresh = key in new_envelopes
        new_envelopes.discard(key)
        for r in rows:
            pk = changed.pop((it.origin, it.id, r.key, r.klass == "refused"), None)
            if pk is None:
                continue
            fresh = True
            logged = (it.origin, it.id, r.key) not in implied
            if r.agent is not None:
                out.inbox.append((r.agent, pk, at))
                if logged:
                    out.events.append((pk, at, r.key, "delivered", None, None, it.via))
                out.channels.add(inbox_channel(r.agent))
                receipt = it.receipts.get(r.agent)
                if receipt is not None:
                    out.receipts.append((r.agent, receipt, at))
            elif r.klass == "remote":
                if logged:
                    out.events.append((pk, at, r.key, "accepted", None, None, it.via))
                if r.hold is None:
                    out.channels.add(QUEUE_CHANNEL)
                else:
                    out.events.append((pk, at, r.key, "held", r.code, r.reason, None))
            elif r.klass == "held":
                out.events.append((pk, at, r.key, "deferred", r.code, r.reason, it.via))
            else:
                out.events.append((pk, at, r.key, "bounced", r.code, r.reason, it.via))
        out.results.append(AcceptResult(origin=it.origin, id=it.id, duplicate=not fresh))
    return out
