"""One exception tree for the whole relay, split by blame, each carrying its wire answer.

::

    SynqError                      code, status (RFC 3463), http_status, message
    ├── PeerError                  the other side sent something wrong (4xx; never retried as is)
    │   ├── MalformedRequest       400 malformed_request     5.5.2
    │   ├── InvalidAddress         400 invalid_address       5.1.3
    │   ├── InvalidEnvelope        422 invalid_envelope      5.6.0
    │   ├── EnvelopeExpired        422 expired               5.4.7
    │   ├── EnvelopeFromFuture     422 created_in_future     5.7.0
    │   ├── BadSignature           422 bad_signature         5.7.7
    │   ├── UnknownKey             422 unknown_key           5.7.7
    │   ├── Unauthenticated        401 unauthenticated       5.7.8
    │   ├── Forbidden              403 forbidden             5.7.1
    │   ├── NotFound               404 not_found             5.1.1
    │   ├── UnknownRecipient       422 unknown_recipient     5.1.1
    │   ├── WrongDomain            422 wrong_domain          5.1.2
    │   ├── Conflict               409 conflict              5.5.4
    │   ├── PayloadTooLarge        413 too_large             5.3.4
    │   └── RateLimited            429 rate_limited          4.7.0  (+ retry_after)
    └── RelayError                 our side failed (5xx; the peer may retry)
        ├── StoreUnavailable       503 store_unavailable     4.3.0
        ├── DiscoveryError         502 discovery_failed      4.4.3
        ├── ConfigError            (never on the wire: the CLI prints it and exits 1)
        └── InternalError          500 internal_error        4.0.0

Handlers raise; one middleware renders ``{"error": {"code", "status", "message"}}``. Messages
are written for the peer: they never carry exception text from a dependency. Errors from
dependencies are translated at the module boundary that calls them (``raise StoreUnavailable(...)
from exc``), so no ``sqlite3`` or ``jwcrypto`` exception crosses a layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from relay.core import status as st
from relay.core.status import Status


class SynqError(Exception):
    """Root of every error the relay raises on purpose."""

    code: ClassVar[str] = "error"
    status: ClassVar[Status] = st.PERMANENT
    http_status: int = 500
    default_message: ClassVar[str] = "error"

    def __init__(
        self, message: str | None = None, *, http_status: int | None = None, **details: Any
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        if http_status is not None:
            # The same refusal can deserve another HTTP status on another route (405 vs 400).
            self.http_status = http_status
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
    """The client or partner sent something we refuse. Sending it again unchanged won't help."""

    # Its own code, so a bare PeerError is never mistaken on the wire for the root's "error".
    code = "peer_error"
    http_status = 400
    default_message = "the request was refused"


class MalformedRequest(PeerError):
    code = "malformed_request"
    status = st.SYNTAX_ERROR
    http_status = 400
    default_message = "the request is not well-formed"


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
    """Our side failed. The peer may retry the same request later."""

    code = "relay_error"
    status = st.TRANSIENT
    http_status = 500


class StoreUnavailable(RelayError):
    code = "store_unavailable"
    status = st.STORE_UNAVAILABLE
    http_status = 503
    default_message = "the relay cannot store messages right now; retry later"


class DiscoveryError(RelayError):
    code = "discovery_failed"
    status = st.ROUTING_FAILED
    http_status = 502
    default_message = "the destination could not be resolved"


class ConfigError(RelayError):
    """A bad configuration or key file. Reported by the CLI, never sent on the wire."""

    code = "config_error"
    default_message = "invalid configuration"


class InternalError(RelayError):
    code = "internal_error"
    status = st.TRANSIENT
    http_status = 500
    default_message = "internal error"
