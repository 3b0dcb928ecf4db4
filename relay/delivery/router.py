"""Submission and routing: turn a local agent's request into a signed envelope in custody.

This is the relay's equivalent of Postfix's cleanup + trivial-rewrite: it decides, per
recipient, "local inbox now" or "queue for the partner relay", builds and signs the envelope,
and hands it to the store in one call, so the answer 202 means every row is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from relay.core import dsn as dsn_mod
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.address import MAILER_DAEMON, RESERVED_LOCALS, Address
from relay.core.clock import Clock
from relay.core.envelope import KIND_MESSAGE, Envelope
from relay.core.errors import (
    Forbidden,
    InvalidEnvelope,
    PayloadTooLarge,
    RateLimited,
    UnknownRecipient,
)
from relay.core.ids import uuid7
from relay.core.limits import DEFAULT_LIFETIME, MAX_ENVELOPE_BYTES, MAX_LIFETIME
from relay.core.policy import Policy
from relay.core.ratelimit import DEFAULT_AGENT_RATE, TokenBuckets
from relay.store.backpressure import CustodyGate
from relay.store.base import AcceptResult, NewEnvelope, Store

#: Submissions the per-agent rate limit does not meter: an adapter-backed agent's replies to a
#: message the relay delivered to it (bounded by the traffic that caused them, and refusing one
#: would make the dispatcher deliver the original again) and the operator's own ``synq send``.
UNMETERED_VIA: Final = frozenset({"adapter", "cli"})


@dataclass(frozen=True, slots=True)
class Submitted:
    envelope: Envelope
    token: str
    result: AcceptResult


class Router:
    def __init__(
        self,
        store: Store,
        domain: str,
        signer: Callable[[datetime], jws.SigningKey],
        clock: Clock,
    ) -> None:
        self.store = store
        self.domain = domain
        self._signer = signer
        self._clock = clock
        #: The partner policy local submissions obey (the relay swaps it on reload).
        self.policy = Policy.open(domain)
        #: Bounds the custody writes in flight (relay.store.backpressure).
        self.custody = CustodyGate()
        #: Per local agent token buckets (relay.core.ratelimit), charged on every submission an
        #: agent makes, whatever face it came through (API, A2A, MCP); see UNMETERED_VIA.
        self.agent_rates = TokenBuckets(DEFAULT_AGENT_RATE)

    def split(self, recipients: Sequence[Address]) -> tuple[list[str], list[str]]:
        """(local agent names, remote addresses)."""
        local = [a.local for a in recipients if a.domain == self.domain]
        remote = [str(a) for a in recipients if a.domain != self.domain]
        return local, remote

    async def check_local(self, names: Sequence[str]) -> None:
        """Refuse the whole submission if any local recipient does not exist (SMTP's 550 5.1.1
        at RCPT time: better to tell the sender now than to accept and bounce later)."""
        wanted = set(names)
        missing = sorted(wanted - await self.store.existing_agents(wanted))
        if missing:
            addrs = [f"{n}@{self.domain}" for n in missing]
            raise UnknownRecipient(f"no such agent: {', '.join(addrs)}", recipients=addrs)

    def check_policy(self, sender: Address, recipients: Sequence[Address]) -> None:
        """Refuse the whole submission if the partner policy refuses any recipient, naming them
        in ``details.recipients`` as ``check_local`` does (403, 5.7.1)."""
        refused = [(a, self.policy.refusal(sender, a)) for a in recipients]
        refused = [(a, why) for a, why in refused if why is not None]
        if refused:
            raise Forbidden(
                f"refused by policy: {refused[0][1]}", recipients=[str(a) for a, _ in refused]
            )

    def build(
        self,
        sender: Address,
        to: Sequence[Address],
        content_type: str,
        body: Any,
        *,
        kind: str = KIND_MESSAGE,
        thread: str | None = None,
        in_reply_to: str | None = None,
        expires: datetime | None = None,
        trace: str | None = None,
        id: str | None = None,
    ) -> tuple[Envelope, str]:
        """``id``: the envelope id when the caller had to know it before custody (the A2A face
        links its task to the envelope first, so that no reply can outrun the link); a fresh
        UUIDv7 otherwise."""
        # Millisecond precision, as the envelope is written on the wire (SPEC.md §3), so the
        # model and the signed bytes say exactly the same time.
        now = self._clock.now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if expires is None:
            expires = now + DEFAULT_LIFETIME
        elif expires <= now:
            raise InvalidEnvelope("expires lies in the past")
        elif expires - now > MAX_LIFETIME:
            raise InvalidEnvelope(f"expires lies more than {MAX_LIFETIME.days} days ahead")
        envelope = env_mod.from_dict(
            {
                "v": 1,
                "id": id or uuid7(now),
                "from": str(sender),
                "to": [str(a) for a in to],
                "created": now,
                "expires": expires,
                "kind": kind,
                "content_type": content_type,
                "body": body,
                "thread": thread,
                "in_reply_to": in_reply_to,
                "trace": trace,
            }
        )
        payload = env_mod.encode(envelope)
        if len(payload) > MAX_ENVELOPE_BYTES:
            raise PayloadTooLarge(
                f"envelope is {len(payload)} bytes; the limit is {MAX_ENVELOPE_BYTES}"
            )
        return envelope, jws.sign(payload, self._signer(now))

    async def submit(
        self,
        sender: Address,
        to: Sequence[Address],
        content_type: str,
        body: Any,
        *,
        kind: str = KIND_MESSAGE,
        thread: str | None = None,
        in_reply_to: str | None = None,
        expires: datetime | None = None,
        trace: str | None = None,
        via: str = "api",
        id: str | None = None,
    ) -> Submitted:
        """Build, sign and take custody of an envelope from a local sender."""
        if sender.domain != self.domain:
            raise InvalidEnvelope(f"sender {sender} is not an address of {self.domain}")
        wait = (
            0.0
            if via in UNMETERED_VIA
            else self.agent_rates.take(sender.local, self._clock.monotonic())
        )
        if wait > 0:
            raise RateLimited(
                f"{sender} is sending faster than this relay accepts", retry_after=wait
            )
        local, remote = self.split(to)
        for name in local:
            if name in RESERVED_LOCALS:
                raise UnknownRecipient(f"{name}@{self.domain} does not accept agent messages")
        await self.check_local(local)
        self.check_policy(sender, to)
        envelope, token = self.build(
            sender,
            to,
            content_type,
            body,
            kind=kind,
            thread=thread,
            in_reply_to=in_reply_to,
            expires=expires,
            trace=trace,
            id=id,
        )
        result = await self.custody.write(
            self.store.accept(new_envelope(envelope, token, local, remote, via), self._clock.now()),
            size=len(token),
        )
        return Submitted(envelope, token, result)

    async def dsn(self, failure: dsn_mod.Failure, arrival: datetime | None) -> NewEnvelope | None:
        """The delivery-status envelope reporting ``failure`` to the original sender, from
        ``mailer-daemon@<this domain>`` (RFC 3464), ready for the store — queued for federation
        when the sender is remote. None when no DSN is due: a failure of a DSN (RFC 3464 §2),
        or a local sender that no longer exists."""
        if not dsn_mod.should_report(failure):
            return None
        sender = Address.parse(failure.original_from)
        local, remote = self.split([sender])
        if local and not await self.store.existing_agents(local):
            return None
        envelope, token = self.build(
            Address(MAILER_DAEMON, self.domain),
            [sender],
            dsn_mod.CONTENT_TYPE,
            dsn_mod.dsn_body(failure, self.domain, arrival),
            kind=dsn_mod.KIND_DSN,
            thread=failure.thread,
            in_reply_to=failure.original_id,
        )
        return new_envelope(envelope, token, local, remote, "relay")


def new_envelope(
    envelope: Envelope,
    token: str,
    local: Sequence[str],
    remote: Sequence[str],
    via: str,
    refused: Sequence[tuple[str, str, str]] = (),
) -> NewEnvelope:
    return NewEnvelope(
        origin=envelope.sender.domain,
        id=envelope.id,
        sender=envelope.from_,
        token=token,
        created=envelope.created,
        expires=envelope.expires,
        thread=envelope.thread,
        kind=envelope.kind,
        local=list(local),
        remote=list(remote),
        via=via,
        refused=list(refused),
    )
