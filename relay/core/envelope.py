"""The ``synq/1`` envelope (SPEC.md §3): model, codec and time checks.

Every message, whatever protocol it came from, is one envelope. The envelope JSON bytes are the
JWS payload exactly as sent (see :mod:`relay.core.jws`), so this module never has to
re-serialise a received envelope: relays store and forward the signed token untouched.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from relay.core import jsonutil
from relay.core.address import Address, normalize_address
from relay.core.errors import (
    EnvelopeExpired,
    EnvelopeFromFuture,
    InvalidEnvelope,
    SynqError,
)
from relay.core.limits import (
    MAX_CLOCK_SKEW,
    MAX_CONTENT_TYPE_LENGTH,
    MAX_ENVELOPE_BYTES,
    MAX_ID_LENGTH,
    MAX_LIFETIME,
    MAX_RECIPIENTS,
)

VERSION: Final = 1

#: Envelope ids, threads and in_reply_to: opaque, printable, bounded.
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,%d}$" % (MAX_ID_LENGTH - 1)
#: ``kind``: lower-case dotted words (``message``, ``task.update``, ``dsn``, ``signal``).
KIND_PATTERN: Final = r"^[a-z][a-z0-9]*(?:[.-][a-z0-9]+)*$"
#: A media type without parameters (RFC 6838 §4.2 restricted-name).
CONTENT_TYPE_PATTERN: Final = r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$"
#: W3C Trace Context ``traceparent`` (version 00).
TRACEPARENT_PATTERN: Final = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"

#: RFC 3339 §5.6 date-time. Python's ``fromisoformat`` alone would also take forms RFC 3339
#: forbids (week dates, no separator), so the shape is checked first.
_RFC3339_RE: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$",
    re.ASCII,
)

KIND_MESSAGE: Final = "message"
KIND_TASK_UPDATE: Final = "task.update"
KIND_DSN: Final = "dsn"
KIND_SIGNAL: Final = "signal"


def parse_timestamp(value: Any) -> datetime:
    """An RFC 3339 date-time string with an offset, as an aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamps must carry a UTC offset")
        return value.astimezone(UTC)
    if not isinstance(value, str) or not _RFC3339_RE.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time such as 2026-01-01T00:00:00Z")
    if len(value) == 24 and value[10] == "T" and value[19] == "." and value[23] == "Z":
        # The form Synq writes (format_timestamp), which fromisoformat reads as it is.
        return datetime.fromisoformat(value)
    text = value.upper().replace("Z", "+00:00")
    # fromisoformat takes at most 6 fractional digits; RFC 3339 allows more.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = head + "." + digits.group(0)[:6].ljust(6, "0") + rest[digits.end() :]
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:59:59-01:00 is a valid RFC 3339 string whose UTC instant is past
        # datetime.max; it must be refused as a bad value, not escape as OverflowError.
        raise ValueError("timestamp out of range") from None


def format_timestamp(value: datetime) -> str:
    """RFC 3339 UTC with millisecond precision and a ``Z``: the form Synq writes."""
    utc = value.astimezone(UTC).replace(tzinfo=None)
    # isoformat, not strftime: a third of the time, and it pads years below 1000 to four digits
    # as RFC 3339 requires (glibc's %Y does not).
    return utc.isoformat(timespec="milliseconds") + "Z"


def _check_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("an address is a string local@domain")
    try:
        return normalize_address(value)
    except SynqError as exc:
        raise ValueError(exc.message) from None


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    PlainSerializer(format_timestamp, return_type=str),
]
AddressStr = Annotated[str, BeforeValidator(_check_address)]
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("recipients must not repeat")
    return values


class Envelope(BaseModel):
    """One ``synq/1`` envelope. Unknown fields are refused: a later version bumps ``v``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        strict=False,
        str_max_length=MAX_ENVELOPE_BYTES,
    )

    v: Literal[1]
    id: Identifier
    from_: AddressStr = Field(alias="from")
    to: Annotated[
        list[AddressStr],
        Field(min_length=1, max_length=MAX_RECIPIENTS),
        AfterValidator(_unique),
    ]
    created: Timestamp
    expires: Timestamp
    thread: Identifier | None = None
    in_reply_to: Identifier | None = None
    kind: Annotated[str, Field(pattern=KIND_PATTERN, max_length=MAX_ID_LENGTH)]
    content_type: Annotated[
        str, Field(pattern=CONTENT_TYPE_PATTERN, max_length=MAX_CONTENT_TYPE_LENGTH)
    ]
    body: Any
    trace: Annotated[str, Field(pattern=TRACEPARENT_PATTERN)] | None = None

    @model_validator(mode="after")
    def _coherent(self) -> Envelope:
        if self.expires <= self.created:
            raise ValueError("expires must be later than created")
        if self.content_type.startswith("text/") and not isinstance(self.body, str):
            raise ValueError("a text/* body must be a JSON string")
        return self

    # Parsed once per envelope: a relay asks for them at several steps of every check.
    @functools.cached_property
    def sender(self) -> Address:
        return Address.parse(self.from_)

    @functools.cached_property
    def recipients(self) -> list[Address]:
        return [Address.parse(a) for a in self.to]

    def to_json_dict(self) -> dict[str, Any]:
        """The wire object (``from`` spelt as on the wire, optional fields left out when unset)."""
        # Written out field by field rather than through model_dump (a third of the cost of
        # building an envelope): every field but ``body`` has a fixed JSON type. A container body
        # still goes through pydantic's JSON mode, which converts what it holds exactly as before.
        body = self.body
        if not isinstance(body, str | int | float | bool | None):
            body = self.model_dump(mode="json", include={"body"})["body"]
        data: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "from": self.from_,
            "to": list(self.to),
            "created": format_timestamp(self.created),
            "expires": format_timestamp(self.expires),
            "thread": self.thread,
            "in_reply_to": self.in_reply_to,
            "kind": self.kind,
            "content_type": self.content_type,
            "body": body,
            "trace": self.trace,
        }
        # Not exclude_none: a JSON null body is a value, and dropping it would leave the
        # re-encoded envelope without its required ``body``.
        return {k: v for k, v in data.items() if v is not None or k == "body"}


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "envelope"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def from_dict(obj: Any) -> Envelope:
    """Validate a decoded JSON value as an envelope; raise InvalidEnvelope."""
    if not isinstance(obj, dict):
        raise InvalidEnvelope("an envelope is a JSON object")
    # By type as well as value: Python (and pydantic's lax mode) take true and 1.0 for 1.
    if "v" in obj and (type(obj["v"]) is not int or obj["v"] != VERSION):
        raise InvalidEnvelope(f"unsupported envelope version {obj['v']!r}; this relay speaks v=1")
    try:
        return Envelope.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEnvelope(_describe(exc)) from None


def decode(data: bytes) -> Envelope:
    """Bytes (a JWS payload) to a validated envelope.

    Raises PayloadTooLarge, MalformedRequest or InvalidEnvelope — never anything else.
    """
    return from_dict(jsonutil.loads(data, max_bytes=MAX_ENVELOPE_BYTES, what="envelope"))


def encode(envelope: Envelope) -> bytes:
    """The compact JSON bytes a sender signs."""
    return jsonutil.dumps(envelope.to_json_dict())


def check_times(
    envelope: Envelope,
    now: datetime,
    *,
    max_skew: timedelta = MAX_CLOCK_SKEW,
    max_lifetime: timedelta = MAX_LIFETIME,
) -> None:
    """The receiver's time checks (SPEC.md §3.4).

    Refuses an expired envelope, one created further in the future than the allowed clock skew,
    and one whose lifetime exceeds the maximum (which would let it outlive any replay window).
    """
    if envelope.expires <= now:
        raise EnvelopeExpired(
            f"envelope {envelope.id} expired at {format_timestamp(envelope.expires)}"
        )
    if envelope.created > now + max_skew:
        raise EnvelopeFromFuture(
            f"envelope {envelope.id} is dated {format_timestamp(envelope.created)}, "
            f"more than {int(max_skew.total_seconds())} s ahead of this relay's clock"
        )
    if envelope.expires - envelope.created > max_lifetime:
        raise InvalidEnvelope(f"envelope lifetime exceeds the maximum of {max_lifetime.days} days")
