"""One exception tree for the whole relay, split by blame, each carrying its wire answer.

::

    SynqError                          code, status (RFC 3463), http_status, message
    ├── PeerError                      the requester is at fault (4xx; sending the same again
    │   │                              won't help: 5.x.x, but for rate limits)
    │   ├── MalformedRequest           400 malformed_request    5.5.2
    │   │   ├── RequestTimeout         408 malformed_request    5.5.2  (the connection is closed)
    │   │   ├── MethodNotAllowed       405 malformed_request    5.5.2  (+ allowed)
    │   │   └── UnsupportedMediaType   415 malformed_request    5.5.2
    │   ├── InvalidAddress             400 invalid_address      5.1.3
    │   ├── InvalidEnvelope            422 invalid_envelope     5.6.0
    │   ├── EnvelopeExpired            422 expired              5.4.7
    │   ├── EnvelopeFromFuture         422 created_in_future    5.7.0
    │   ├── BadSignature               422 bad_signature        5.7.7
    │   ├── UnknownKey                 422 unknown_key          5.7.7
    │   ├── Unauthenticated            401 unauthenticated      5.7.8
    │   ├── Forbidden                  403 forbidden            5.7.1
    │   ├── NotFound                   404 not_found            5.1.1
    │   ├── UnknownRecipient           422 unknown_recipient    5.1.1
    │   ├── WrongDomain                422 wrong_domain         5.1.2
    │   ├── Conflict                   409 conflict             5.5.4
    │   ├── IdempotencyKeyReused       422 idempotency_key_reused 5.5.4
    │   ├── PayloadTooLarge            413 too_large            5.3.4
    │   ├── RateLimited                429 rate_limited         4.7.0  (+ retry_after)
    │   ├── SignatureRequired          401 signature_required   5.7.8  (signed partner requests:
    │   ├── StaleSignature             401 stale_signature      5.7.0   relay/core/httpsig.py)
    │   ├── ReplayedRequest            401 replayed_request     5.7.0
    │   └── DigestMismatch             400 digest_mismatch      5.7.7
    └── RelayError                     the relay, or what it depends on, failed (5xx)
        ├── StoreUnavailable           503 store_unavailable    4.3.0
        ├── DiscoveryError             502 discovery_failed     4.4.3
        │   ├── NoSuchDomain           502 no_such_domain       5.1.2
        │   ├── MisconfiguredDomain    502 misconfigured_domain 5.1.2
        │   └── AddressRefused         502 address_refused      5.7.1
        ├── AgentUnreachable           502 agent_unreachable    4.4.1
        ├── BadAgentCard               502 bad_agent_card       5.6.0
        ├── AttemptFailed              502 attempt_failed       (each its own; + retry_after)
        ├── ConfigError                (never on the wire: the CLI prints it and exits 1)
        └── InternalError              500 internal_error       4.0.0

Blame decides the HTTP class: a ``PeerError`` is the requester's to fix, a ``RelayError`` is not
(the relay's store, a DNS server, a partner relay or an agent behind the relay failed it). The
RFC 3463 class digit decides what a sender does (RFC 3463 §2): retry on 4.x.x, bounce on 5.x.x.
The two are independent below ``RelayError``: a domain that does not exist (5.1.2) is answered
``502`` — the relay could not get an answer for its client — yet retrying cannot help.

The refinements of ``MalformedRequest`` keep its code and status and differ only in the HTTP
status the route answers with (SPEC.md §5.3): clients branch on ``code``, HTTP intermediaries on
the status line. Every class is rendered by its type alone; no constructor takes an HTTP status.

``AttemptFailed`` is one failed delivery attempt to a peer the relay delivers to — an agent
behind an adapter, a partner relay, an MCP server. Unlike the rest of the tree its status is
per instance: the queue that made the attempt (relay/delivery/dispatch.py,
relay/federation/outbound.py) retries it on 4.x.x and bounces it with a DSN on 5.x.x (SPEC.md
§9), and the sender sees that status and ``reason`` in the DSN and the delivery status, not as
an error object. A module whose callers act on a finer distinction subclasses it
(``adapters.mcp.translate.CallRefused``, ``relay.federation.outbound.TransactionTooLarge``)
without adding a status of its own.

Handlers raise; one middleware renders ``{"error": {"code", "status", "message"}}``. Messages
are written for the peer: they never carry exception text from a dependency. Errors from
dependencies are translated at the module boundary that calls them (``raise StoreUnavailable(...)
from exc``), so no ``sqlite3`` or ``jwcrypto`` exception crosses a layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from relay.core import status as st
from relay.core.status import Status

_WIRE_FIELDS = frozenset({"code", "status", "http_status"})


class SynqError(Exception):
    """Root of every error the relay raises on purpose."""

    code: ClassVar[str] = "error"
    #: A class attribute everywhere but on ``AttemptFailed``, whose instances carry their own.
    status: Status = st.PERMANENT
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        if reserved := _WIRE_FIELDS & details.keys():
            # The wire answer is the class's: a detail by one of these names would only
            # shadow it in ``details`` while the HTTP status line kept the class's own.
            raise TypeError(f"{', '.join(sorted(reserved))}: set by the class, not per error")
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def to_wire(self) -> dict[str, Any]:
        """The JSON error object of SPEC.md §5.2."""
        err: dict[str, Any] = {
            "code": self.code,
            "status": self.status.code,
            "message": self.message,
        }
        if self.details:
            err["details"] = self.details
        return {"error": err}


class PeerError(SynqError):
    """The client or partner that sent the request is at fault. Sending it again unchanged
    won't help."""

    # Its own code, so a bare PeerError is never mistaken on the wire for the root's "error".
    code = "peer_error"
    http_status = 400
    default_message = "the request was refused"


class MalformedRequest(PeerError):
    code = "malformed_request"
    status = st.SYNTAX_ERROR
    http_status = 400
    default_message = "the request is not well-formed"


class RequestTimeout(MalformedRequest):
    """The request body did not arrive within the server's deadline. The server closes the
    connection after answering (RFC 9110 §15.5.9), so a slow client cannot dribble the rest of
    its body into what would be read as the next request."""

    http_status = 408
    default_message = "the request did not arrive in time"


class MethodNotAllowed(MalformedRequest):
    """A known route, another method. The answer names the route's methods in ``Allow``
    (RFC 9110 §15.5.6)."""

    http_status = 405
    default_message = "method not allowed"

    def __init__(
        self, message: str | None = None, *, allowed: tuple[str, ...] = (), **details: Any
    ) -> None:
        super().__init__(message, **details)
        self.allowed = allowed


class UnsupportedMediaType(MalformedRequest):
    """A body in a media type the route does not take (RFC 9110 §15.5.16)."""

    http_status = 415
    default_message = "the request body's Content-Type is not accepted here"


class InvalidAddress(PeerError):
    code = "invalid_address"
    status = st.BAD_RECIPIENT_SYNTAX
    http_status = 400
    default_message = "not a valid Synq address"


class InvalidEnvelope(PeerError):
    code = "invalid_envelope"
    status = st.MEDIA_ERROR
    http_status = 422
    default_message = "the envelope does not follow SPEC.md"


class EnvelopeExpired(PeerError):
    code = "expired"
    status = st.EXPIRED
    http_status = 422
    default_message = "the envelope has expired"


class EnvelopeFromFuture(PeerError):
    code = "created_in_future"
    status = st.SECURITY
    http_status = 422
    default_message = "the envelope is dated too far in the future"


class BadSignature(PeerError):
    code = "bad_signature"
    status = st.BAD_SIGNATURE
    http_status = 422
    default_message = "the signature does not verify"


class UnknownKey(PeerError):
    code = "unknown_key"
    status = st.BAD_SIGNATURE
    http_status = 422
    default_message = "no published key matches the signature's selector"


class Unauthenticated(PeerError):
    code = "unauthenticated"
    status = st.BAD_CREDENTIALS
    http_status = 401
    default_message = "a valid bearer token is required"


class Forbidden(PeerError):
    code = "forbidden"
    status = st.NOT_AUTHORIZED
    http_status = 403
    default_message = "not allowed"


class NotFound(PeerError):
    code = "not_found"
    status = st.UNKNOWN_RECIPIENT
    http_status = 404
    default_message = "no such resource"


class UnknownRecipient(PeerError):
    code = "unknown_recipient"
    status = st.UNKNOWN_RECIPIENT
    http_status = 422
    default_message = "no such agent"


class WrongDomain(PeerError):
    code = "wrong_domain"
    status = st.NO_SUCH_DOMAIN
    http_status = 422
    default_message = "no recipient is at this relay's domain"


class Conflict(PeerError):
    code = "conflict"
    status = st.INVALID_PARAMETER
    http_status = 409
    default_message = "conflicts with existing state"


class IdempotencyKeyReused(PeerError):
    """An idempotency key used before, by the same agent, for a request that asked for something
    else (SPEC.md §6.2; the IETF Idempotency-Key draft's 422). Nothing is sent: the key still
    answers for its first request, and a new request needs a new key."""

    code = "idempotency_key_reused"
    status = st.INVALID_PARAMETER
    http_status = 422
    default_message = "this idempotency key was used before for a different request"


class PayloadTooLarge(PeerError):
    code = "too_large"
    status = st.TOO_BIG
    http_status = 413
    default_message = "the request is larger than this relay accepts"


class RateLimited(PeerError):
    code = "rate_limited"
    status = st.RATE_LIMITED
    http_status = 429
    default_message = "too many requests; retry later"

    def __init__(self, message: str | None = None, *, retry_after: float, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class RelayError(SynqError):
    """The relay, or something it depends on, failed. The request itself was acceptable."""

    code = "relay_error"
    status = st.TRANSIENT
    http_status = 500


class StoreUnavailable(RelayError):
    code = "store_unavailable"
    status = st.STORE_UNAVAILABLE
    http_status = 503
    default_message = "the relay cannot store messages right now; retry later"


class DiscoveryError(RelayError):
    """A DNS or well-known look-up failed for now (DNS timeout, SERVFAIL, an unreachable or
    failing well-known server). Its subclasses are the failures that retrying cannot mend; the
    look-ups that raise them are described in relay/discovery/errors.py."""

    code = "discovery_failed"
    status = st.ROUTING_FAILED
    http_status = 502
    default_message = "the destination could not be resolved"


class NoSuchDomain(DiscoveryError):
    """The destination domain does not exist or publishes no Synq records at all."""

    code = "no_such_domain"
    status = st.NO_SUCH_DOMAIN
    default_message = "the destination domain does not exist or does not accept Synq messages"


class MisconfiguredDomain(DiscoveryError):
    """The destination domain's Synq records or well-known document cannot be used."""

    code = "misconfigured_domain"
    status = st.NO_SUCH_DOMAIN
    default_message = "the destination domain publishes unusable Synq records"


class AddressRefused(DiscoveryError):
    """Fetching the domain's well-known document would mean connecting to a refused address."""

    code = "address_refused"
    status = st.NOT_AUTHORIZED
    default_message = "the destination resolves to an address this relay does not connect to"


class AgentUnreachable(RelayError):
    """An agent behind the relay did not answer for its card (connection refused, timeout,
    5xx, 408, 429)."""

    code = "agent_unreachable"
    status = st.NO_ANSWER
    http_status = 502
    default_message = "the agent did not answer"


class BadAgentCard(RelayError):
    """An agent, or a partner relay for its agent, answered with no usable A2A agent card. The
    requester is not to blame; the card's publisher has to fix it, so retrying cannot help."""

    code = "bad_agent_card"
    status = st.MEDIA_ERROR
    http_status = 502
    default_message = "not an A2A agent card"


class AttemptFailed(RelayError):
    """One delivery attempt to a peer failed: an agent adapter, a partner relay, an MCP server.

    ``status`` is this attempt's RFC 3463 status: 4.x.x (``transient``) keeps the envelope
    queued for another attempt, 5.x.x (``permanent``) bounces it with a DSN (SPEC.md §9).
    ``reason`` is the diagnostic recorded with the status, in words for the sender.
    ``retry_after`` is the peer's own hint in seconds (``Retry-After``), when it gave one.
    """

    code = "attempt_failed"
    status = st.TRANSIENT
    http_status = 502
    default_message = "the delivery attempt failed"

    def __init__(self, status: Status, reason: str, *, retry_after: float | None = None) -> None:
        if status.is_success:
            raise ValueError(f"a failed attempt needs a 4.x.x or 5.x.x status, not {status}")
        super().__init__(reason)
        self.status = status
        self.reason = self.message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Whether another attempt may succeed (a 4.x.x status)."""
        return self.status.is_transient

    @property
    def permanent(self) -> bool:
        """Whether the envelope is to be bounced (a 5.x.x status)."""
        return self.status.is_permanent


class ConfigError(RelayError):
    """A bad configuration or key file. Reported by the CLI, never sent on the wire."""

    code = "config_error"
    default_message = "invalid configuration"


class InternalError(RelayError):
    code = "internal_error"
    status = st.TRANSIENT
    http_status = 500
    default_message = "internal error"


# ---- signed partner requests (RFC 9421; relay/core/httpsig.py, relay/federation/search.py).
# A signature that does not verify is ``BadSignature`` and a selector nobody publishes
# ``UnknownKey``, as for envelopes; these are the failures an envelope cannot have.


class SignatureRequired(PeerError):
    """A request to a route that takes partner relays' signed requests carries no
    ``Signature``/``Signature-Input`` at all. A route may answer it as anonymous instead."""

    code = "signature_required"
    status = st.BAD_CREDENTIALS
    http_status = 401
    default_message = "this request must carry an HTTP message signature (RFC 9421)"


class StaleSignature(PeerError):
    """The signature's ``expires`` has passed, or its ``created`` lies further ahead of the
    verifier's clock than the allowed skew: a captured request cannot be used later."""

    code = "stale_signature"
    status = st.SECURITY
    http_status = 401
    default_message = "the request's signature is outside its validity window"


class ReplayedRequest(PeerError):
    """A signature (keyid and nonce) the verifier has already accepted within its window."""

    code = "replayed_request"
    status = st.SECURITY
    http_status = 401
    default_message = "this signed request was already received"


class DigestMismatch(PeerError):
    """The body does not match its ``Content-Digest`` (RFC 9530), or the field is missing or
    names no ``sha-256``: the signature covers the digest, the digest the body."""

    code = "digest_mismatch"
    status = st.BAD_SIGNATURE
    http_status = 400
    default_message = "the body does not match its Content-Digest"
