"""The Draft (relay/core/draft.py): validated once, on construction, by the envelope's rules.

Table-driven, no I/O. Every fault the envelope model also checks is refused with the model's
own words, so a face answers the same message whichever path finds it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from relay.core import envelope as env_mod
from relay.core.address import Address
from relay.core.draft import Draft, parse_expires
from relay.core.errors import InvalidEnvelope
from relay.core.limits import MAX_ID_LENGTH, MAX_RECIPIENTS

ALICE = Address.parse("alice@acme.test")
BOB = Address.parse("bob@acme.test")
CAROL = Address.parse("carol@globex.test")
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

VALID: list[dict[str, Any]] = [
    {},
    {"to": (BOB, CAROL)},
    {"content_type": "application/json", "body": {"n": [1, None]}},
    {"content_type": "application/json", "body": None},
    {"kind": "task.update", "thread": "conv-42", "in_reply_to": "0195a3c0-5f1e-7c3a"},
    {"trace": TRACE, "id": "x1", "expires": datetime(2030, 1, 1, tzinfo=UTC)},
    {"kind": "a" * MAX_ID_LENGTH},
    {"to": tuple(Address("a" + str(i), "acme.test") for i in range(MAX_RECIPIENTS))},
]


def draft(**fields: Any) -> Draft:
    base: dict[str, Any] = {"sender": ALICE, "to": (BOB,), "content_type": "text/plain"}
    base["body"] = "hi"
    base.update(fields)
    return Draft(**base)


@pytest.mark.parametrize("fields", VALID, ids=[str(i) for i in range(len(VALID))])
def test_valid_drafts_are_made(fields: dict[str, Any]) -> None:
    made = draft(**fields)
    assert made.to == fields.get("to", (BOB,))


#: (fields, the envelope member to check the model's words against or None, message part)
INVALID: list[tuple[dict[str, Any], str | None, str]] = [
    ({"to": ()}, None, "at least 1 item"),
    ({"to": (BOB,) * 2}, None, "must not repeat"),
    (
        {"to": tuple(Address("a" + str(i), "acme.test") for i in range(MAX_RECIPIENTS + 1))},
        None,
        f"at most {MAX_RECIPIENTS} items",
    ),
    ({"to": ["bob@acme.test"]}, None, "parsed addresses"),
    ({"to": ("bob@acme.test",)}, None, "parsed addresses"),
    ({"kind": "Message"}, "kind", "should match pattern"),
    ({"kind": "a" * (MAX_ID_LENGTH + 1)}, "kind", "at most 128 characters"),
    ({"kind": 7}, None, "valid string"),
    ({"content_type": "text"}, "content_type", "should match pattern"),
    ({"content_type": "text/plain; charset=utf-8"}, "content_type", "should match pattern"),
    ({"thread": "a b"}, "thread", "should match pattern"),
    ({"thread": "x" * (MAX_ID_LENGTH + 1)}, "thread", "should match pattern"),
    ({"thread": "conv\n"}, "thread", "should match pattern"),
    ({"in_reply_to": "-x"}, "in_reply_to", "should match pattern"),
    ({"trace": "00-xyz"}, "trace", "should match pattern"),
    ({"id": ""}, "id", "should match pattern"),
    ({"body": {"a": 1}}, "body", "a text/* body must be a JSON string"),
    ({"body": None}, "body", "a text/* body must be a JSON string"),
    ({"expires": datetime(2030, 1, 1)}, None, "UTC offset"),  # naive: the fault tested
]


@pytest.mark.parametrize(
    ("fields", "member", "part"), INVALID, ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(INVALID)]
)
def test_invalid_drafts_are_refused_as_the_envelope_model_refuses_them(
    fields: dict[str, Any], member: str | None, part: str
) -> None:
    with pytest.raises(InvalidEnvelope) as refused:
        draft(**fields)
    assert part in refused.value.message
    assert (refused.value.code, refused.value.status.code) == ("invalid_envelope", "5.6.0")
    if member is None:
        return
    valid = draft()
    wire = {
        "v": 1,
        "id": "x1",
        "from": str(valid.sender),
        "to": [str(a) for a in valid.to],
        "created": "2026-01-01T00:00:00.000Z",
        "expires": "2026-01-02T00:00:00.000Z",
        "kind": valid.kind,
        "content_type": valid.content_type,
        "body": valid.body,
        member: fields[member],
    }
    with pytest.raises(InvalidEnvelope) as model:
        env_mod.from_dict(wire)
    assert refused.value.message == model.value.message


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("2030-01-01T00:00:00Z", None),
        ("2030-01-01T01:00:00+01:00", None),
        ("tomorrow", "expires: expected an RFC 3339 date-time"),
        ("2030-01-01", "expires: expected an RFC 3339 date-time"),
        (42, "expires: expected an RFC 3339 date-time"),
    ],
)
def test_parse_expires(text: object, error: str | None) -> None:
    if error is None:
        assert parse_expires(text) == datetime(2030, 1, 1, tzinfo=UTC)
        return
    with pytest.raises(InvalidEnvelope) as refused:
        parse_expires(text)
    assert refused.value.message.startswith(error)
