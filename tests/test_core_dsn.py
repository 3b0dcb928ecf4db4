"""Delivery-status bodies (relay.core.dsn, SPEC.md §9.4 after RFC 3464), as tables."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from relay.core import dsn
from relay.core import envelope as env_mod
from relay.core.address import MAILER_DAEMON
from relay.core.envelope import (
    KIND_DSN,
    KIND_MESSAGE,
    KIND_SIGNAL,
    KIND_TASK_UPDATE,
    Envelope,
)

ORIGINAL_ID = "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d"

# The failure behind SPEC.md §9.4's example body.
GHOST = dsn.Failure(
    original_id=ORIGINAL_ID,
    original_from="alice@alpha.example",
    original_kind=KIND_MESSAGE,
    thread=None,
    recipient="ghost@beta.example",
    status="5.1.1",
    diagnostic="no such agent",
    attempts=1,
    last_attempt=datetime(2026, 3, 1, 11, 59, 0, 412_000, tzinfo=UTC),
)
ARRIVAL = datetime(2026, 3, 1, 11, 59, tzinfo=UTC)

#: SPEC.md §9.4's example, byte for byte as the specification prints it.
SPEC_EXAMPLE = """
{"reporting_mta":"alpha.example","original_id":"0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d",
 "original_from":"alice@alpha.example","final_recipient":"ghost@beta.example","action":"failed",
 "status":"5.1.1","diagnostic":"no such agent","attempts":1,
 "last_attempt":"2026-03-01T11:59:00.412Z","arrival":"2026-03-01T11:59:00.000Z"}
"""

#: The members of SPEC.md §9.4's body table, required and optional.
REQUIRED = {
    "reporting_mta",
    "original_id",
    "original_from",
    "final_recipient",
    "action",
    "status",
    "diagnostic",
    "attempts",
}
OPTIONAL = {"last_attempt", "arrival"}


def test_wire_names() -> None:
    assert dsn.CONTENT_TYPE == "application/synq-dsn+json"
    assert dsn.KIND_DSN == KIND_DSN == "dsn"
    assert MAILER_DAEMON == "mailer-daemon"
    assert set(dsn.__all__) == {
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
    }
    assert (dsn.ACTION_FAILED, dsn.ACTION_DELAYED, dsn.ACTION_DELIVERED) == (
        "failed",
        "delayed",
        "delivered",
    )
    assert dsn.KEYWORDS == ("success", "delay", "failure")


def test_body_is_the_spec_example() -> None:
    assert dsn.dsn_body(GHOST, "alpha.example", ARRIVAL) == json.loads(SPEC_EXAMPLE)


# (failure's original kind, a DSN is due?) — RFC 3464 §2: never a DSN about a DSN.
KINDS = [
    (KIND_MESSAGE, True),
    (KIND_TASK_UPDATE, True),
    (KIND_SIGNAL, True),
    ("signal.update", True),
    ("x-custom", True),
    (KIND_DSN, False),
]


@pytest.mark.parametrize(("kind", "due"), KINDS)
def test_never_a_dsn_about_a_dsn(kind: str, due: bool) -> None:
    assert dsn.should_report(replace(GHOST, original_kind=kind)) is due


# (last_attempt, arrival, the optional members present, their values)
OPTIONALS: list[tuple[datetime | None, datetime | None, dict[str, Any]]] = [
    (None, None, {}),
    (
        datetime(2026, 3, 1, 11, 59, 0, 412_000, tzinfo=UTC),
        None,
        {"last_attempt": "2026-03-01T11:59:00.412Z"},
    ),
    (None, ARRIVAL, {"arrival": "2026-03-01T11:59:00.000Z"}),
    (
        # Times are written in UTC with milliseconds (SPEC.md §3.3), whatever zone they carry:
        # 13:59:00.412999 at +02:00 is 11:59:00.412 UTC (truncated, not rounded).
        datetime(2026, 3, 1, 13, 59, 0, 412_999, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 2, 28, 19, 0, tzinfo=timezone(timedelta(hours=-5))),
        {"last_attempt": "2026-03-01T11:59:00.412Z", "arrival": "2026-03-01T00:00:00.000Z"},
    ),
]


@pytest.mark.parametrize(("last_attempt", "arrival", "optional"), OPTIONALS)
def test_optional_members(
    last_attempt: datetime | None, arrival: datetime | None, optional: dict[str, Any]
) -> None:
    body = dsn.dsn_body(replace(GHOST, last_attempt=last_attempt), "alpha.example", arrival)
    assert set(body) == REQUIRED | set(optional)
    assert {k: body[k] for k in OPTIONAL & set(body)} == optional


# The failures a relay reports (SPEC.md §9.2–9.4): the code, diagnostic and attempt count are
# the failure's, copied as they are; the action is always "failed" (a receipt of success is
# not a bounce).
# (status, diagnostic, attempts)
FAILURES = [
    ("5.1.1", "no such agent", 1),  # refused by the receiver in a transaction result
    ("5.7.1", "refused by policy", 1),
    ("5.1.2", "no Synq relay for nowhere.test", 0),  # permanent discovery failure, no attempt
    (
        "5.4.7",
        "not delivered before it expired at 2026-03-03T11:59:00.000Z; "
        "last error: 4.4.1 cannot connect (Connection refused)",
        37,
    ),
    ("5.0.0", "the agent refused it", 3),  # an adapter-backed agent's permanent refusal
]


@pytest.mark.parametrize(("status", "diagnostic", "attempts"), FAILURES)
def test_per_recipient_fields(status: str, diagnostic: str, attempts: int) -> None:
    failure = replace(GHOST, status=status, diagnostic=diagnostic, attempts=attempts)
    body = dsn.dsn_body(failure, "alpha.example")
    assert body["status"] == status
    assert body["diagnostic"] == diagnostic
    assert body["attempts"] == attempts
    assert body["action"] == "failed"
    assert body["final_recipient"] == "ghost@beta.example"


@pytest.mark.parametrize(
    ("reporting", "sender", "recipient"),
    [
        # The sender's relay bounces a refusal it received (SPEC.md §9.4).
        ("alpha.example", "alice@alpha.example", "ghost@beta.example"),
        # The receiver bounces what it accepted and then failed to deliver locally.
        ("beta.example", "alice@alpha.example", "bob@beta.example"),
    ],
)
def test_reporting_domain_and_addresses(reporting: str, sender: str, recipient: str) -> None:
    body = dsn.dsn_body(replace(GHOST, original_from=sender, recipient=recipient), reporting)
    assert (body["reporting_mta"], body["original_from"], body["final_recipient"]) == (
        reporting,
        sender,
        recipient,
    )
    assert body["original_id"] == ORIGINAL_ID


def test_body_does_not_leak_the_thread() -> None:
    # The thread travels in the DSN envelope's own ``thread`` field, not in its body.
    body = dsn.dsn_body(replace(GHOST, thread="conv-42"), "alpha.example", ARRIVAL)
    assert "conv-42" not in json.dumps(body)


def test_a_dsn_envelope_carries_the_body_through_the_codec() -> None:
    # The body is plain JSON that a signed envelope of kind dsn from mailer-daemon carries as it
    # is: what the sender's inbox reads is what the reporting relay wrote.
    body = dsn.dsn_body(GHOST, "alpha.example", ARRIVAL)
    created = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    envelope = Envelope.model_validate(
        {
            "v": 1,
            "id": "0195a3c1-0000-7000-8000-000000000001",
            "from": f"{MAILER_DAEMON}@alpha.example",
            "to": [GHOST.original_from],
            "created": created,
            "expires": created + timedelta(days=2),
            "in_reply_to": GHOST.original_id,
            "kind": dsn.KIND_DSN,
            "content_type": dsn.CONTENT_TYPE,
            "body": body,
        }
    )
    decoded = env_mod.decode(env_mod.encode(envelope))
    assert decoded.body == json.loads(SPEC_EXAMPLE)
    assert (decoded.kind, decoded.content_type, decoded.in_reply_to) == (
        "dsn",
        "application/synq-dsn+json",
        ORIGINAL_ID,
    )
