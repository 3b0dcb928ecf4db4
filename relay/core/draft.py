"""What a local sender asks the relay to send: a ``Draft``, valid from the moment it exists.

Every way a local agent sends — the API (SPEC.md §6.2), the MCP face's ``send_message``, the
A2A face, an adapter-backed agent's replies, ``synq send``, and the relay's own delivery-status
envelopes — describes the envelope it wants as one ``Draft``. The draft holds the fields the
sender chooses (SPEC.md §3.1); the router adds ``v``, ``id`` (unless given), ``created`` and the
signature.

A draft is validated on construction, once, against the envelope's own rules (the patterns and
limits of relay.core.envelope): a ``Draft`` that exists is one the router can turn into an
envelope without validating it again. What a draft cannot know is checked when the envelope is
built — ``expires`` against the relay's clock, the encoded size against ``MAX_ENVELOPE_BYTES`` —
and who may send what (rate, recipients, policy) when it is submitted.

Refusals are ``InvalidEnvelope`` (422, 5.6.0), worded as the envelope model words the same
fault, so a face answers the same message whichever path found it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from relay.core.address import Address
from relay.core.envelope import (
    CONTENT_TYPE_PATTERN,
    ID_PATTERN,
    KIND_MESSAGE,
    KIND_PATTERN,
    TRACEPARENT_PATTERN,
    parse_timestamp,
)
from relay.core.errors import InvalidEnvelope
from relay.core.limits import MAX_ID_LENGTH, MAX_RECIPIENTS

__all__ = ["Draft", "parse_expires"]

_ID: Final = re.compile(ID_PATTERN)
_KIND: Final = re.compile(KIND_PATTERN)
_CONTENT_TYPE: Final = re.compile(CONTENT_TYPE_PATTERN)
_TRACEPARENT: Final = re.compile(TRACEPARENT_PATTERN)

#: (field, compiled pattern, the pattern's text) for every optional string field. Each pattern
#: bounds the length itself.
_OPTIONAL: Final = (
    ("thread", _ID, ID_PATTERN),
    ("in_reply_to", _ID, ID_PATTERN),
    ("trace", _TRACEPARENT, TRACEPARENT_PATTERN),
    ("id", _ID, ID_PATTERN),
)


@dataclass(frozen=True, slots=True)
class Draft:
    """An envelope as its sender asks for it (SPEC.md §3.1), before the relay dates, numbers
    and signs it.

    ``to``: normalised addresses (``Address.parse``), 1 to ``MAX_RECIPIENTS``, none repeated.
    ``expires``: an aware datetime, or None for the relay's default lifetime. ``id``: the
    envelope id when the sender must know it before custody (the A2A face links its task to
    the envelope first, so that no reply can outrun the link); a fresh UUIDv7 otherwise.
    """

    sender: Address
    to: tuple[Address, ...]
    content_type: str
    body: Any
    kind: str = KIND_MESSAGE
    thread: str | None = None
    in_reply_to: str | None = None
    expires: datetime | None = None
    trace: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        _check(self)


def _check(d: Draft) -> None:
    """The envelope's field rules (relay.core.envelope.Envelope) for the fields of a draft."""
    # The annotations say as much, but not every caller is type-checked: a list of strings
    # here would fail far from its cause.
    to: object = d.to
    if not isinstance(to, tuple) or not all(isinstance(a, Address) for a in to):
        raise InvalidEnvelope("to: recipients must be parsed addresses")
    if not d.to:
        raise InvalidEnvelope("to: List should have at least 1 item after validation, not 0")
    if len(d.to) > MAX_RECIPIENTS:
        raise InvalidEnvelope(
            f"to: List should have at most {MAX_RECIPIENTS} items after validation, not {len(d.to)}"
        )
    if len(set(d.to)) != len(d.to):
        raise InvalidEnvelope("to: recipients must not repeat")
    # The kind pattern alone is unbounded; the content-type pattern allows at most
    # MAX_CONTENT_TYPE_LENGTH characters by itself.
    _match("kind", d.kind, _KIND, KIND_PATTERN, MAX_ID_LENGTH)
    _match("content_type", d.content_type, _CONTENT_TYPE, CONTENT_TYPE_PATTERN)
    for name, compiled, pattern in _OPTIONAL:
        value = getattr(d, name)
        if value is not None:
            _match(name, value, compiled, pattern)
    expires: object = d.expires
    if expires is not None and (not isinstance(expires, datetime) or expires.tzinfo is None):
        raise InvalidEnvelope("expires: timestamps must carry a UTC offset")
    if d.content_type.startswith("text/") and not isinstance(d.body, str):
        # The model's own words (Envelope._coherent), as its validation reports them.
        raise InvalidEnvelope("envelope: Value error, a text/* body must be a JSON string")


def _match(
    name: str, value: object, compiled: re.Pattern[str], pattern: str, longest: int | None = None
) -> None:
    if not isinstance(value, str):
        raise InvalidEnvelope(f"{name}: Input should be a valid string")
    if longest is not None and len(value) > longest:
        raise InvalidEnvelope(f"{name}: String should have at most {longest} characters")
    # fullmatch: ``$`` alone would also match before a trailing newline.
    if not compiled.fullmatch(value):
        raise InvalidEnvelope(f"{name}: String should match pattern '{pattern}'")


def parse_expires(value: object) -> datetime:
    """A sender's ``expires`` member (an RFC 3339 string, SPEC.md §3.3) as a datetime."""
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise InvalidEnvelope(f"expires: {exc}") from None
