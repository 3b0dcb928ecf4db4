"""Signals across organisations (SPEC.md §13.6): offers and updates out and in, and the signed
requests by which a partner relay's agent claims, heartbeats, completes or releases a signal
this relay owns.

The owner relay alone grants claims. Everything else follows from that:

1. **Offers** (:meth:`SignalFederation.prepare_offer`): a new signal of scope ``partners``
   (the relays of ``[discovery] partners``) or a list of domains goes to each partner relay as
   an envelope of kind ``signal`` from the emitter, to ``signals@<partner>``, body the signal
   (``offer_body``); each change of its state or claim as one of kind ``signal.update``. Each
   is checked, built and signed by the router as any submission (the partner policy applies)
   from the signal as it stands once its write is answered, and taken into custody in the
   transaction that clears the write's mark of what partners are owed (``Store.signal_told``;
   relay/delivery/signals.py, step 6): a signal or change that is durable has its offer or
   update owed until it is in the federation queue, which retries it.
   :meth:`SignalFederation.offered` closes the submission once that write is decided.
2. **Replicas** (:meth:`SignalFederation.receive`, called by the inbound handler after it
   verified the envelope, its times and the partner's rates): kept as a replica the partner's
   agents hear like a local signal, or applied to it when newer. A partner floods no faster
   than ``PARTNER_SIGNAL_RATE``.
3. **Requests** (:meth:`SignalFederation.request`, the partner's side): a signed envelope of
   kind ``signal.<op>`` from the agent, to the signal's emitter, ``in_reply_to`` the signal,
   body ``{"signal", "token"?, "content_type"?, "body"?}``, living at most
   ``MAX_REQUEST_LIFETIME``, POSTed as compact JWS to the owner's
   ``/synq/v1/federation/signals/{id}/{op}``. The owner answers at once with what the local API
   answers; an owner that does not answer within ``REQUEST_TIMEOUT`` fails the request with
   ``owner_unreachable`` (503, 4.4.1), and the partner's agents go on with everything else.
4. **Verification** (:meth:`SignalFederation.verify`, the owner's side), in this order: the
   JWS and envelope structure; the kind and ``in_reply_to`` name this operation and signal; the
   ``from`` domain is a partner, not this relay's own; the partner policy admits it; the key of
   the ``from`` domain (SPEC.md §4.4), then the signature — a relay that signs for a domain it
   does not host fails here; the times, and a lifetime within ``MAX_REQUEST_LIFETIME``; the id
   not seen before (the replay cache holds each id until its ``expires`` plus the skew, after
   which the time check refuses it anyway). Then the partner's request rate
   (``PARTNER_REQUEST_RATE``, 4.7.0), and the signal's scope must include its domain.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import aiohttp
from opentelemetry.trace import Status, StatusCode
from yarl import URL

from relay.core import envelope as env_mod
from relay.core import errors as E
from relay.core import jsonutil, jws
from relay.core import signals as sg
from relay.core import status as st
from relay.core.address import Address
from relay.core.clock import Clock
from relay.core.draft import Draft
from relay.core.envelope import Envelope
from relay.core.jws import PublicKey
from relay.core.limits import MAX_API_BODY_BYTES, MAX_CLOCK_SKEW
from relay.core.policy import Policy
from relay.core.ratelimit import Rate, TokenBuckets
from relay.core.txn import EnvelopeResult
from relay.delivery.router import Prepared, Router
from relay.delivery.signals import Signals
from relay.discovery.ssrf import AddressPolicy
from relay.logs import event

__all__ = [
    "MAX_ANSWER_BYTES",
    "OFFER_VIA",
    "PARTNER_REQUEST_RATE",
    "PARTNER_SIGNAL_RATE",
    "REQUEST_TIMEOUT",
    "SEEN_CACHE_SIZE",
    "SignalFederation",
]

log = logging.getLogger("synq.federation.signals")
#: Recipient events (SPEC.md §14.4) of the offers and updates taken into custody here, under the
#: logger every other accepted envelope's line uses (relay/delivery/custody.py).
delivery_log = logging.getLogger("synq.delivery")

#: How long a partner's agent waits for the owner relay's answer. Short: a claim is
#: interactive, and an owner that is down must not hold the partner's agents.
REQUEST_TIMEOUT: Final = 5.0
#: The owner's answer is a small JSON object; anything larger is not an answer.
MAX_ANSWER_BYTES: Final = 64 * 1024
#: Signals and updates one partner domain may send: beside the inbound handler's per-domain
#: envelope rate, this keeps one partner from filling every local feed with its signals.
PARTNER_SIGNAL_RATE: Final = Rate(per_second=20.0, burst=200.0)
#: Claims, heartbeats, completes and releases one partner domain may ask of this relay: an
#: authentic partner still cannot make the owner spend its writes on a storm of requests.
PARTNER_REQUEST_RATE: Final = Rate(per_second=50.0, burst=500.0)
#: The ``via`` of offers and updates (the hop log, the metrics; each charged to the emitter's
#: send rate, relay/delivery/router.py): the relay sends them, made from a signal it owns.
OFFER_VIA: Final = "signals"
#: Request ids remembered for replay: a partner sending more distinct requests than this within
#: ``MAX_REQUEST_LIFETIME`` pushes out the oldest, which the time check then still bounds.
SEEN_CACHE_SIZE: Final = 100_000

#: Error codes an owner answers with, as the classes the partner's face raises again.
_ANSWERED: Final[dict[str, type[E.SynqError]]] = {
    c.code: c
    for c in (
        sg.AlreadyClaimed,
        sg.StaleClaim,
        sg.SignalClosed,
        E.Conflict,
        E.Forbidden,
        E.NotFound,
        E.InvalidEnvelope,
        E.PayloadTooLarge,
    )
}


class Keys(Protocol):
    async def public_key(self, domain: str, selector: str) -> PublicKey: ...

    async def relay_url(self, domain: str) -> str: ...


class SignalFederation:
    """Steps 1–4 of the module docstring for one relay."""

    def __init__(
        self,
        *,
        signals: Signals,
        router: Router,
        keys: Keys,
        session: aiohttp.ClientSession,
        url_policy: AddressPolicy,
        clock: Clock,
        partners: Callable[[], Sequence[str]],
        policy: Callable[[], Policy],
        on_accepted: Callable[[str, int], None] = lambda _via, _count: None,
    ) -> None:
        self.signals = signals
        self.router = router
        self.keys = keys
        self.session = session
        self.url_policy = url_policy
        self.clock = clock
        self.partners = partners
        self.policy = policy
        #: Told of each offer or update taken into custody, as the mailbox tells of a send (relay/delivery/mailbox.py)
        #: (the relay's ``accepted`` metric, ``via="signals"``).
        self.on_accepted = on_accepted
        self.rates = TokenBuckets(PARTNER_SIGNAL_RATE)
        self.request_rates = TokenBuckets(PARTNER_REQUEST_RATE)
        self._seen: OrderedDict[tuple[str, str], datetime] = OrderedDict()

    @property
    def domain(self) -> str:
        return self.router.domain

    def in_scope(self, signal: sg.Signal, domain: str) -> bool:
        """Whether a relay of ``domain`` may hear and take ``signal``."""
        if signal.scope == "local":
            return False
        if signal.scope == "partners":
            return domain in self.partners()
        return domain in signal.scope

    # --- 1. offers ------------------------------------------------------------------------------

    async def prepare_offer(self, signal: sg.Signal, kind: str) -> Prepared | None:
        """The envelope of kind ``kind`` (``signal`` or ``signal.update``) that tells the
        partners in the scope of ``signal`` of it, checked, built and signed as the mailbox
        sends any envelope, not yet stored: the caller takes it into custody (step 1) and
        then calls :meth:`offered`. None when no partner relay is in scope. Raises what the
        router refuses it with (the partner policy)."""
        targets = signal.scope if isinstance(signal.scope, tuple) else tuple(self.partners())
        to = tuple(Address(sg.SIGNALS_LOCAL, d) for d in targets if d != self.domain)
        if not to:
            return None
        draft = Draft(
            Address.parse(signal.emitter),
            to,
            sg.SIGNAL_CONTENT_TYPE,
            sg.offer_body(signal),
            kind=kind,
            in_reply_to=None if kind == sg.KIND_SIGNAL else signal.id,
            thread=signal.id,
            expires=min(signal.expires, self.clock.now() + timedelta(days=1)),
        )
        return await self.router.prepare(draft, via=OFFER_VIA)

    def offered(self, prepared: Prepared, error: BaseException | None = None) -> None:
        """The write that was to take ``prepared`` into custody is decided: committed (``error``
        None: its recipient events and the metric, as a send's), or not (its accept span ends
        failed: the signal was not written, or another change won the compare-and-set)."""
        span = prepared.span
        if error is None:
            self.on_accepted(OFFER_VIA, 1)
            item = prepared.item
            for address in item.remote:
                event(
                    delivery_log,
                    "accepted",
                    event="accepted",
                    id=item.id,
                    to=address,
                    destination=address.rpartition("@")[2],
                    via=item.via,
                    **{"from": item.sender},
                )
        elif span is not None and span.is_recording():
            # The class name only, as the router marks a refused submission.
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        if span is not None:
            span.end()

    # --- 2. replicas ----------------------------------------------------------------------------

    async def receive(self, envelope: Envelope) -> EnvelopeResult:
        """A partner's ``signal`` or ``signal.update``, authentic (the inbound handler checked
        origin, key, signature, times and rates): kept or applied; the per-envelope result."""
        origin = envelope.sender.domain
        try:
            if self.rates.take(origin, self.clock.monotonic()) > 0:
                raise E.RateLimited(f"{origin} is offering signals too fast", retry_after=1.0)
            if envelope.content_type != sg.SIGNAL_CONTENT_TYPE:
                raise E.InvalidEnvelope(f"a signal's content type is {sg.SIGNAL_CONTENT_TYPE}")
            offer = sg.parse_offer(envelope.body, str(envelope.sender), origin, self.clock.now())
            if not self.in_scope(offer, self.domain) and offer.scope != "partners":
                raise E.Forbidden("this relay is not in the signal's scope")
            await self.signals.apply_offer(offer)
        except E.SynqError as exc:
            return EnvelopeResult("rejected", exc.status.code, exc.message)
        return EnvelopeResult("accepted", st.OK.code)

    # --- 3. requests (the partner's side) -------------------------------------------------------

    async def request(
        self, signal: sg.Signal, address: str, op: str, data: Mapping[str, Any]
    ) -> Any:
        """Ask the owner of ``signal`` to apply ``op`` for the local agent ``address``."""
        body: dict[str, Any] = {"signal": signal.id}
        for name in ("token", "content_type", "body"):
            if data.get(name) is not None:
                body[name] = data[name]
        draft = Draft(
            Address.parse(address),
            (Address.parse(signal.emitter),),
            sg.REQUEST_CONTENT_TYPE,
            body,
            kind=f"signal.{op}",
            in_reply_to=signal.id,
            expires=self.clock.now() + sg.MAX_REQUEST_LIFETIME,
        )
        _, token = self.router.build(draft)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                base = await self.keys.relay_url(signal.owner)
                return await self._post(base, signal.id, op, token)
        except TimeoutError:
            raise sg.OwnerUnreachable(f"{signal.owner} did not answer in time") from None
        except (E.DiscoveryError, E.AttemptFailed) as exc:
            raise sg.OwnerUnreachable(f"{signal.owner}: {exc.message}") from None

    async def _post(self, base: str, id: str, op: str, token: str) -> Any:
        url = f"{base.rstrip('/')}/synq/v1/federation/signals/{id}/{op}"
        try:
            # IP literals bypass the guarded resolver: check the URL before connecting, as the
            # federation transport does (relay/federation/transport.py).
            self.url_policy.check_url(URL(url))
            async with self.session.post(
                url,
                data=token.encode("ascii"),
                headers={"Content-Type": "application/jose"},
                allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise sg.OwnerUnreachable(f"cannot reach the owner ({type(exc).__name__})") from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise sg.OwnerUnreachable("the owner's answer is too large")
        try:
            answer = jsonutil.loads(raw, max_bytes=MAX_ANSWER_BYTES, what="answer")
        except E.SynqError:
            raise sg.OwnerUnreachable(f"the owner answered {status} without JSON") from None
        if status == 200:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        cls = _ANSWERED.get(code) if isinstance(code, str) else None
        if cls is None:
            raise sg.OwnerUnreachable(f"the owner answered {status}")
        # The owner's words, bounded: they reach our agent as our own error's message.
        raise cls(str(message)[:300] if message else None)

    # --- 4. requests (the owner's side) ---------------------------------------------------------

    async def verify(self, id: str, op: str, token: bytes) -> tuple[str, dict[str, Any]]:
        """A partner's request for ``op`` on signal ``id`` (step 4): (the agent's address, the
        request body), or the refusal."""
        if op not in sg.REQUEST_OPS:
            raise E.NotFound(f"no signal operation {op!r}")
        try:
            text = token.decode("ascii").strip()
            parsed = jws.parse_compact(text)
            envelope = env_mod.decode(parsed.payload)
        except UnicodeDecodeError:
            raise E.MalformedRequest("the request is a compact JWS") from None
        if envelope.kind != f"signal.{op}" or envelope.in_reply_to != id:
            raise E.InvalidEnvelope(f"the envelope is not a signal.{op} request for {id}")
        body = envelope.body
        if not isinstance(body, dict) or body.get("signal") != id:
            raise E.InvalidEnvelope("the request's body does not name the signal")
        sender = envelope.sender
        if sender.domain == self.domain:
            raise E.Forbidden("this relay's own agents use the local API")
        if not self.policy().domain_permitted(sender.domain):
            raise E.Forbidden(f"this relay does not exchange messages with {sender.domain}")
        key = await self.keys.public_key(sender.domain, parsed.kid)
        jws.verify(parsed, key)
        now = self.clock.now()
        env_mod.check_times(envelope, now)
        if envelope.expires - envelope.created > sg.MAX_REQUEST_LIFETIME:
            raise E.InvalidEnvelope(
                f"a signal request lives at most {sg.MAX_REQUEST_LIFETIME.total_seconds():g} s"
            )
        self._remember(sender.domain, envelope.id, envelope.expires, now)
        return str(sender), body

    def _remember(self, domain: str, id: str, expires: datetime, now: datetime) -> None:
        """The replay cache: refuse an id seen before; forget ids whose time is up."""
        seen = self._seen
        while seen:
            oldest_key, until = next(iter(seen.items()))
            if until > now and len(seen) < SEEN_CACHE_SIZE:
                break
            del seen[oldest_key]
        if (domain, id) in seen:
            raise E.Conflict("this request was seen before")
        seen[(domain, id)] = expires + MAX_CLOCK_SKEW

    async def serve(self, id: str, op: str, token: bytes) -> dict[str, Any]:
        """The owner's route: verify, check the scope, apply; the answer the local API gives."""
        address, body = await self.verify(id, op, token)
        domain = Address.parse(address).domain
        wait = self.request_rates.take(domain, self.clock.monotonic())
        if wait > 0:
            raise E.RateLimited(f"{domain} is asking too fast", retry_after=wait)
        signal = await self.signals.store.signal_get(id)
        if signal is None or signal.owner != self.domain:
            raise E.NotFound("no such signal")
        if not self.in_scope(signal, domain):
            raise E.Forbidden("the signal is not offered to that relay")
        done = await self.signals.act(address, id, op, body, remote=True)
        if op in ("claim", "heartbeat"):
            assert done.until is not None
            token_out = done.token if done.token is not None else body.get("token")
            return {"claim": {"token": token_out, "expires": env_mod.format_timestamp(done.until)}}
        return {"id": done.signal.id, "state": done.signal.state}


#: The request's size bound at the owner's route: an envelope with a result body.
MAX_REQUEST_BYTES: Final = MAX_API_BODY_BYTES
