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

A draft's :meth:`~Draft.fingerprint` is what an idempotency key is checked against (SPEC.md
§6.2): a retry under a key must ask for the same envelope as the first request did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from relay.core.address import Address
from relay.core.dsn import DEFAULT_NOTIFY, KEYWORDS, Notify
from relay.core.envelope import (
    CONTENT_TYPE_PATTERN,
    ID_PATTERN,
    KIND_DSN,
    KIND_MESSAGE,
    KIND_PATTERN,
    TRACEPARENT_PATTERN,
    parse_timestamp,
)
from relay.core.errors import InvalidEnvelope
from relay.core.idempotency import digest
from relay.core.limits import MAX_ID_LENGTH, MAX_RECIPIENTS

__all__ = ["Draft", "parse_expires"]

_ID: Final = re.compile(ID_PATTERN)
_KIND: Final = re.compile(KIND_PATTERN)
_CONTENT_TYPE: Final = re.compile(CONTENT_TYPE_PATTERN)
_TRACEPARENT: Final = re.compile(TRACEPARENT_PATTERN)
# fullmatch throughout: ``$`` alone would also match before a trailing newline.


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
    notify: Notify = DEFAULT_NOTIFY

    def __post_init__(self) -> None:
        if self.notify is not DEFAULT_NOTIFY:
            _check_notify(self.notify, self.kind)
        _check(
            self.to,
            self.kind,
            self.content_type,
            self.body,
            self.thread,
            self.in_reply_to,
            self.expires,
            self.trace,
            self.id,
        )

    def fingerprint(self) -> str:
        """The request fingerprint of the IETF Idempotency-Key draft for this draft: a digest of
        every field the sender chooses, as parsed (``to`` normalised, defaults applied, an
        ``expires`` as the instant it names), so two requests asking for the same envelope have
        the same fingerprint however they spelled it. ``id`` is left out: it is the relay's
        choice, not the sender's (the A2A face picks a fresh one per call)."""
        expires = self.expires
        return digest(
            {
                "to": [str(a) for a in self.to],
                "content_type": self.content_type,
                "body": self.body,
                "kind": self.kind,
                "thread": self.thread,
                "in_reply_to": self.in_reply_to,
                "expires": None if expires is None else expires.astimezone(UTC).isoformat(),
                "trace": self.trace,
            }
        )


def _check(
    to: object,
    kind: object,
    content_type: object,
    body: object,
    thread: object,
    in_reply_to: object,
    expires: object,
    trace: object,
    id: object,
) -> None:
    """The envelope's field rules (relay.core.envelope.Envelope) for the fields of a draft.

    Typed ``object``: the annotations of Draft say as much, but not every caller is type-checked,
    and a list of strings in ``to`` would otherwise fail far from its cause. Every send pays for
    this, so the common case is a few comparisons and one ``fullmatch`` per field set; the
    words of a refusal are worked out only when there is one (:func:`_refuse`).
    """
    if not isinstance(to, tuple):
        raise InvalidEnvelope("to: recipients must be parsed addresses")
    for address in to:
        if not isinstance(address, Address):
            raise InvalidEnvelope("to: recipients must be parsed addresses")
    count = len(to)
    if count == 0:
        raise InvalidEnvelope("to: List should have at least 1 item after validation, not 0")
    if count > MAX_RECIPIENTS:
        raise InvalidEnvelope(
            f"to: List should have at most {MAX_RECIPIENTS} items after validation, not {count}"
        )
    if count > 1 and len(set(to)) != count:
        raise InvalidEnvelope("to: recipients must not repeat")
    # The kind pattern alone is unbounded; the content-type pattern allows at most
    # MAX_CONTENT_TYPE_LENGTH characters by itself, the id and traceparent patterns theirs.
    if not isinstance(kind, str) or len(kind) > MAX_ID_LENGTH or not _KIND.fullmatch(kind):
        _refuse("kind", kind, KIND_PATTERN, MAX_ID_LENGTH)
    if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
        _refuse("content_type", content_type, CONTENT_TYPE_PATTERN)
    if thread is not None and (not isinstance(thread, str) or not _ID.fullmatch(thread)):
        _refuse("thread", thread, ID_PATTERN)
    if in_reply_to is not None and (
        not isinstance(in_reply_to, str) or not _ID.fullmatch(in_reply_to)
    ):
        _refuse("in_reply_to", in_reply_to, ID_PATTERN)
    if trace is not None and (not isinstance(trace, str) or not _TRACEPARENT.fullmatch(trace)):
        _refuse("trace", trace, TRACEPARENT_PATTERN)
    if id is not None and (not isinstance(id, str) or not _ID.fullmatch(id)):
        _refuse("id", id, ID_PATTERN)
    if expires is not None and (not isinstance(expires, datetime) or expires.tzinfo is None):
        raise InvalidEnvelope("expires: timestamps must carry a UTC offset")
    if content_type.startswith("text/") and not isinstance(body, str):
        # The model's own words (Envelope._coherent), as its validation reports them.
        raise InvalidEnvelope("envelope: Value error, a text/* body must be a JSON string")


def _check_notify(notify: object, kind: object) -> None:
    """``notify`` is a set of keywords (relay.core.dsn.parse_notify made it), and a DSN asks for
    nothing beyond the default, which never reports on a DSN (RFC 3464 §2)."""
    if not isinstance(notify, frozenset) or not notify <= frozenset(KEYWORDS):
        raise InvalidEnvelope("notify: must be parsed keywords (relay.core.dsn.parse_notify)")
    if kind == KIND_DSN and notify != DEFAULT_NOTIFY:
        raise InvalidEnvelope("notify: a delivery-status envelope asks for no report")


def _refuse(name: str, value: object, pattern: str, longest: int | None = None) -> NoReturn:
    """Refuse a field that failed its rule, in the words pydantic gives the envelope model."""
    if not isinstance(value, str):
        raise InvalidEnvelope(f"{name}: Input should be a valid string")
    if longest is not None and len(value) > longest:
        raise InvalidEnvelope(f"{name}: String should have at most {longest} characters")
    raise InvalidEnvelope(f"{name}: String should match pattern '{pattern}'")


def parse_expires(value: object) -> datetime:
    """A sender's ``expires`` member (an RFC 3339 string, SPEC.md §3.3) as a datetime."""
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise InvalidEnvelope(f"expires: {exc}") from None
