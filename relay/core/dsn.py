"""Delivery-status envelopes (``kind: dsn``), after RFC 3464.

When an envelope cannot be delivered to a recipient — a permanent refusal or expiry — the relay
that holds it sends its sender one ``dsn`` envelope per failed recipient, from
``mailer-daemon@<reporting domain>``, threaded as a reply to the original. The body carries the
RFC 3464 per-recipient fields in JSON (``application/synq-dsn+json``, SPEC.md §9.4).

A DSN is never sent about a DSN (RFC 3464 §2: "a DSN MUST NOT be generated in response to a
DSN"): two relays that cannot reach each other would otherwise bounce bounces forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from relay.core.envelope import KIND_DSN, format_timestamp

CONTENT_TYPE: Final = "application/synq-dsn+json"


@dataclass(frozen=True, slots=True)
class Failure:
    original_id: str
    original_from: str
    original_kind: str
    thread: str | None
    recipient: str
    status: str  # RFC 3463 code of the bounce: a 5.x.x refusal, or 5.4.7 on expiry
    diagnostic: str
    attempts: int
    last_attempt: datetime | None


def should_report(failure: Failure) -> bool:
    """False for failures of DSNs themselves (RFC 3464 §2)."""
    return failure.original_kind != KIND_DSN


def dsn_body(
    failure: Failure, reporting_domain: str, arrival: datetime | None = None
) -> dict[str, Any]:
    """The JSON body: RFC 3464 §2.2 (per-message) and §2.3 (per-recipient) fields."""
    body: dict[str, Any] = {
        "reporting_mta": reporting_domain,
        "original_id": failure.original_id,
        "original_from": failure.original_from,
        "final_recipient": failure.recipient,
        "action": "failed",
        "status": failure.status,
        "diagnostic": failure.diagnostic,
        "attempts": failure.attempts,
    }
    if failure.last_attempt is not None:
        body["last_attempt"] = format_timestamp(failure.last_attempt)
    if arrival is not None:
        body["arrival"] = format_timestamp(arrival)
    return body


__all__ = ["CONTENT_TYPE", "KIND_DSN", "Failure", "dsn_body", "should_report"]
