"""Delivery-status envelopes (``kind: dsn``), after RFC 3464, and what a sender asks for
(``notify``), after RFC 3461.

A sender says which reports it wants about each recipient with ``notify`` (RFC 3461 §4.1, the
``NOTIFY`` parameter of ``RCPT TO``): any of ``success``, ``delay``, ``failure``, or ``never``
alone; the default is ``failure`` (SPEC.md §6.2). The relay that holds a recipient then sends the
envelope's sender one ``dsn`` envelope per reported recipient, from
``mailer-daemon@<reporting domain>``, threaded as a reply to the original. The body carries the
RFC 3464 per-recipient fields in JSON (``application/synq-dsn+json``, SPEC.md §9.4); its
``action`` says what happened:

========== ================ ==============================================================
action     asked by         when
========== ================ ==============================================================
failed     ``failure``      the recipient bounced: a permanent refusal, or expiry
delayed    ``delay``        still not delivered :data:`DELAY_NOTICE_AFTER` after custody
delivered  ``success``      in the inbox of an inbox agent, or handed to an adapter's agent
========== ================ ==============================================================

A DSN is never sent about a DSN (RFC 3464 §2: "a DSN MUST NOT be generated in response to a
DSN"), and never asks for one (SMTP sends DSNs with a null reverse-path, RFC 5321 §4.5.5): two
relays that cannot reach each other would otherwise bounce bounces forever, and receipts would
answer receipts.

Pure: no I/O, no clock (times come in as arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from relay.core.address import MAILER_DAEMON, Address
from relay.core.envelope import KIND_DSN, Envelope, format_timestamp
from relay.core.errors import InvalidEnvelope, SynqError
from relay.core.status import status_class

__all__ = [
    "ACTION_DELAYED",
    "ACTION_DELIVERED",
    "ACTION_FAILED",
    "CONTENT_TYPE",
    "DEFAULT_NOTIFY",
    "DELAY",
    "DELAY_NOTICE_AFTER",
    "FAILURE",
    "KEYWORDS",
    "KIND_DSN",
    "NEVER",
    "SUCCESS",
    "Failure",
    "Notify",
    "Receipt",
    "Report",
    "decode_notify",
    "delay_due",
    "dsn_body",
    "encode_notify",
    "is_failure",
    "notify_to_wire",
    "parse_notify",
    "read_receipt",
    "should_report",
]

CONTENT_TYPE: Final = "application/synq-dsn+json"

#: The ``notify`` keywords (RFC 3461 §4.1, in lower case as JSON members are).
SUCCESS: Final = "success"
DELAY: Final = "delay"
FAILURE: Final = "failure"
NEVER: Final = "never"
#: The keywords that ask for a report, in the order Synq writes them.
KEYWORDS: Final = (SUCCESS, DELAY, FAILURE)

#: What a sender asks for: the set of keywords whose reports it wants. ``never`` is the empty
#: set — no report of any kind — which is how RFC 3461 §4.1 defines it.
Notify = frozenset[str]

#: Without ``notify``: a report on failure only, what every relay did before receipts existed.
DEFAULT_NOTIFY: Final[Notify] = frozenset({FAILURE})

#: The ``action`` member of a DSN body (RFC 3464 §2.3.3).
ACTION_FAILED: Final = "failed"
ACTION_DELAYED: Final = "delayed"
ACTION_DELIVERED: Final = "delivered"
#: Which keyword asks for which action.
_ASKED_BY: Final = {ACTION_FAILED: FAILURE, ACTION_DELAYED: DELAY, ACTION_DELIVERED: SUCCESS}

#: How long a recipient waits at one relay — in the federation queue for a partner that does
#: not take it, or in an adapter-backed agent's inbox for an agent that does not answer — before
#: that relay sends a ``delayed`` report to a sender that asked for ``delay``; once per recipient
#: and relay. Sendmail warns after 4 hours (``Timeout.queuewarn``), Postfix when configured
#: (``delay_warning_time``, commonly 4h): tuned to mail that lives 5 days. Synq's envelopes live
#: 2 days by default, its retries reach their 10-minute cap within 10 minutes, and an agent
#: waiting for an answer wants to know within the hour, not the afternoon.
DELAY_NOTICE_AFTER: Final = timedelta(minutes=30)

#: Characters of a partner's diagnostic this relay keeps from a receipt (SPEC.md §8.4 asks
#: receivers to keep reasons under 300 characters; a longer one is cut, not refused).
MAX_DIAGNOSTIC: Final = 300


def parse_notify(value: object) -> Notify:
    """A sender's ``notify`` member (SPEC.md §6.2) as a :data:`Notify`; None is the default.

    The rules of RFC 3461 §4.1: a non-empty list of ``success``, ``delay`` and ``failure``, or
    ``never`` alone; no keyword twice. Raises InvalidEnvelope naming the fault.
    """
    if value is None:
        return DEFAULT_NOTIFY
    if not isinstance(value, list):
        raise InvalidEnvelope('notify: expected a list such as ["success", "failure"]')
    if not value:
        raise InvalidEnvelope('notify: the list is empty (["never"] asks for no report)')
    seen: set[str] = set()
    for word in value:
        if not isinstance(word, str) or (word not in KEYWORDS and word != NEVER):
            shown = word[:40] if isinstance(word, str) else type(word).__name__
            raise InvalidEnvelope(
                f"notify: {shown!r} is not one of success, delay, failure or never"
            )
        if word in seen:
            raise InvalidEnvelope(f"notify: {word!r} appears twice")
        seen.add(word)
    if NEVER in seen:
        if len(seen) > 1:
            raise InvalidEnvelope("notify: never cannot be combined with other keywords")
        return frozenset()
    return frozenset(seen)


def notify_to_wire(notify: Notify) -> list[str]:
    """The JSON form of ``notify``: its keywords in a fixed order, or ``["never"]``."""
    words: list[str] = [k for k in KEYWORDS if k in notify]
    return words or [NEVER]


def encode_notify(notify: Notify) -> str | None:
    """``notify`` as the store keeps it: None for the default, else the keywords joined by
    commas (``never`` for none)."""
    if notify == DEFAULT_NOTIFY:
        return None
    return ",".join(notify_to_wire(notify))


def decode_notify(text: str | None) -> Notify:
    """The inverse of :func:`encode_notify`. Unknown words are dropped: a store written by a
    later version may know more."""
    if text is None:
        return DEFAULT_NOTIFY
    return frozenset(w for w in text.split(",") if w in KEYWORDS)


def delay_due(notify: Notify, reported: bool, since: datetime | None, now: datetime) -> bool:
    """Whether a recipient still waiting at ``now``, in this relay's custody since ``since``,
    is owed its one ``delayed`` report (:data:`DELAY_NOTICE_AFTER`)."""
    return (
        DELAY in notify and not reported and since is not None and now - since >= DELAY_NOTICE_AFTER
    )


@dataclass(frozen=True, slots=True)
class Report:
    """What one delivery-status envelope reports about one recipient of one envelope."""

    original_id: str
    original_from: str
    original_kind: str
    thread: str | None
    recipient: str
    #: RFC 3463 code: of the bounce (5.x.x; 5.4.7 on expiry), of the last deferral (4.x.x),
    #: or of the delivery (2.x.x).
    status: str
    diagnostic: str
    attempts: int
    last_attempt: datetime | None
    #: failed, delayed or delivered (RFC 3464 §2.3.3).
    action: str = ACTION_FAILED
    #: What the original's sender asked for this recipient: decides whether it is sent.
    notify: Notify = DEFAULT_NOTIFY

    @classmethod
    def about(
        cls,
        envelope: Envelope,
        recipient: str,
        *,
        status: str,
        diagnostic: str,
        attempts: int,
        at: datetime | None,
        action: str,
        notify: Notify = DEFAULT_NOTIFY,
    ) -> Report:
        """The report on ``recipient`` of ``envelope``, the original fields taken from it."""
        return cls(
            original_id=envelope.id,
            original_from=envelope.from_,
            original_kind=envelope.kind,
            thread=envelope.thread,
            recipient=recipient,
            status=status,
            diagnostic=diagnostic,
            attempts=attempts,
            last_attempt=at,
            action=action,
            notify=notify,
        )


#: A report of a bounce: the name the bounce paths use.
Failure = Report


def should_report(report: Report) -> bool:
    """True when the sender asked for this action (RFC 3461 §4.1) and the original is not a
    DSN itself (RFC 3464 §2)."""
    return report.original_kind != KIND_DSN and _ASKED_BY.get(report.action, "") in report.notify


def dsn_body(
    report: Report, reporting_domain: str, arrival: datetime | None = None
) -> dict[str, Any]:
    """The JSON body: RFC 3464 §2.2 (per-message) and §2.3 (per-recipient) fields."""
    body: dict[str, Any] = {
        "reporting_mta": reporting_domain,
        "original_id": report.original_id,
        "original_from": report.original_from,
        "final_recipient": report.recipient,
        "action": report.action,
        "status": report.status,
        "diagnostic": report.diagnostic,
        "attempts": report.attempts,
    }
    if report.last_attempt is not None:
        body["last_attempt"] = format_timestamp(report.last_attempt)
    if arrival is not None:
        body["arrival"] = format_timestamp(arrival)
    return body


def is_failure(body: object) -> bool:
    """Whether a DSN body reports a failure. A body without ``action`` (or not an object) counts
    as one: every DSN before receipts existed was a bounce."""
    if not isinstance(body, Mapping):
        return True
    return bool(body.get("action", ACTION_FAILED) == ACTION_FAILED)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A ``delivered`` report received about an envelope this relay sent (SPEC.md §9.4)."""

    #: The envelope it reports on (the DSN's ``in_reply_to``).
    original_id: str
    #: Its recipient, canonical, at the reporting domain.
    recipient: str
    status: str
    diagnostic: str


def read_receipt(envelope: Envelope) -> Receipt | None:
    """The receipt ``envelope`` carries, or None when it is no authentic-looking one.

    Authentic-looking: a ``dsn`` from ``mailer-daemon`` of some domain D, ``in_reply_to`` an
    envelope, whose body says ``delivered`` with a 2.x.x status about that envelope and about a
    recipient at D — a relay reports only on its own recipients. Whether the envelope is signed
    by D, and whether D's recipient of that envelope is one this relay sent to, is the caller's
    to establish (the signature check, the store). Readers ignore members they do not know
    (SPEC.md §9.4).
    """
    body = envelope.body
    if (
        envelope.kind != KIND_DSN
        or envelope.sender.local != MAILER_DAEMON
        or envelope.in_reply_to is None
        or not isinstance(body, Mapping)
        or body.get("action") != ACTION_DELIVERED
        or body.get("original_id") != envelope.in_reply_to
    ):
        return None
    recipient, status, diagnostic = (
        body.get("final_recipient"),
        body.get("status"),
        body.get("diagnostic", ""),
    )
    if not isinstance(recipient, str) or not isinstance(status, str):
        return None
    try:
        address = Address.parse(recipient)
        if status_class(status) != 2:
            return None
    except (SynqError, ValueError):
        return None
    if address.domain != envelope.sender.domain:
        return None
    # A partner's words end up in our status and logs: bounded, and printable only.
    text = diagnostic[:MAX_DIAGNOSTIC] if isinstance(diagnostic, str) else ""
    if not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    return Receipt(envelope.in_reply_to, str(address), status, text)
