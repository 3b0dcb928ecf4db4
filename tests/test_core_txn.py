"""Federation transaction documents (relay.core.txn, SPEC.md §8.1 and §8.4), as tables.

``parse_results`` reads a partner's answer, which is untrusted input: every shape below yields
either the documented result (a malformed entry left out, so the sender retries that envelope)
or ``MalformedRequest`` / ``PayloadTooLarge`` for the whole answer — never anything else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core import txn
from relay.core.errors import MalformedRequest, PayloadTooLarge
from relay.core.limits import MAX_TXN_BYTES, MAX_TXN_ENVELOPES
from relay.core.txn import EnvelopeResult, RecipientResult

ID1 = "0195a3c0-5f1e-7c3a-9b2d-4e5f6a7b8c9d"
ID2 = "0195a3bf-2a10-7e55-8c01-6d7e8f9a0b1c"
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJ2IjoxfQ.c2ln"


def raw(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- transaction ids (SPEC.md §8.1) -----------------------------------------------------------


@pytest.mark.parametrize(
    "txn_id",
    [
        "a",
        "0",
        "0195a3c1-0b7e-7d21-8f3a-2c4d5e6f7a8b",  # a UUIDv7, what Synq sends
        "Txn.1_2:3-4",
        "a" * 128,
    ],
)
def test_txn_id_accepted(txn_id: str) -> None:
    assert txn.check_txn_id(txn_id) == txn_id


@pytest.mark.parametrize(
    "txn_id",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param(".a", id="leading-dot"),
        pytest.param("-a", id="leading-dash"),
        pytest.param("_a", id="leading-underscore"),
        pytest.param("a/b", id="slash"),
        pytest.param("a b", id="space"),
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("a%2F", id="percent"),
        pytest.param("é", id="non-ascii"),
        pytest.param("\uff41", id="fullwidth-letter"),
        pytest.param("a\u0661", id="arabic-indic-digit"),
    ],
)
def test_txn_id_refused(txn_id: str) -> None:
    with pytest.raises(MalformedRequest):
        txn.check_txn_id(txn_id)


# --- the request (SPEC.md §8.1) ---------------------------------------------------------------

# (body, origin as the receiver reads it)
VALID_REQUESTS = [
    pytest.param({"origin": "alpha.example", "envelopes": [TOKEN]}, "alpha.example", id="plain"),
    pytest.param(
        {"origin": "Alpha.EXAMPLE.", "envelopes": [TOKEN]}, "alpha.example", id="normalised"
    ),
    pytest.param(
        {"origin": "bücher.example", "envelopes": [TOKEN]}, "xn--bcher-kva.example", id="idna"
    ),
    pytest.param(
        {"envelopes": [TOKEN, "not.even.jws"], "origin": "alpha.example"},
        "alpha.example",
        # The envelopes are judged one by one later (§8.3), not here.
        id="member-order-and-content-free",
    ),
]


@pytest.mark.parametrize(("body", "origin"), VALID_REQUESTS)
def test_request_accepted(body: dict[str, Any], origin: str) -> None:
    request = txn.parse_request(raw(body))
    assert request == txn.TxnRequest(origin=origin, envelopes=body["envelopes"])


def test_request_at_the_envelope_limit() -> None:
    body = raw({"origin": "alpha.example", "envelopes": [TOKEN] * MAX_TXN_ENVELOPES})
    assert len(txn.parse_request(body).envelopes) == MAX_TXN_ENVELOPES == 200


# (body bytes, the error). SPEC.md §8.1's order: size, I-JSON, shape, then the envelope count.
BAD_REQUESTS = [
    pytest.param(b"", MalformedRequest, id="empty"),
    pytest.param(b"{", MalformedRequest, id="truncated"),
    pytest.param(b"\xef\xbb\xbf{}", MalformedRequest, id="byte-order-mark"),
    pytest.param(b'{"origin":"a\xff"}', MalformedRequest, id="invalid-utf8"),
    pytest.param(raw([]), MalformedRequest, id="array"),
    pytest.param(raw("alpha.example"), MalformedRequest, id="string"),
    pytest.param(raw(None), MalformedRequest, id="null"),
    pytest.param(raw({}), MalformedRequest, id="empty-object"),
    pytest.param(raw({"origin": "alpha.example"}), MalformedRequest, id="no-envelopes"),
    pytest.param(raw({"envelopes": [TOKEN]}), MalformedRequest, id="no-origin"),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": [TOKEN], "txn": "x"}),
        MalformedRequest,
        id="extra-member",
    ),
    pytest.param(
        b'{"origin":"alpha.example","origin":"evil.example","envelopes":["a"]}',
        MalformedRequest,
        id="duplicate-member",
    ),
    pytest.param(raw({"origin": 7, "envelopes": [TOKEN]}), MalformedRequest, id="origin-number"),
    pytest.param(raw({"origin": None, "envelopes": [TOKEN]}), MalformedRequest, id="origin-null"),
    pytest.param(
        raw({"origin": ["alpha.example"], "envelopes": [TOKEN]}),
        MalformedRequest,
        id="origin-array",
    ),
    pytest.param(raw({"origin": "", "envelopes": [TOKEN]}), MalformedRequest, id="origin-empty"),
    pytest.param(
        raw({"origin": "localhost", "envelopes": [TOKEN]}), MalformedRequest, id="origin-one-label"
    ),
    pytest.param(
        raw({"origin": "alice@alpha.example", "envelopes": [TOKEN]}),
        MalformedRequest,
        id="origin-address",
    ),
    pytest.param(
        raw({"origin": "a..example", "envelopes": [TOKEN]}),
        MalformedRequest,
        id="origin-empty-label",
    ),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": TOKEN}),
        MalformedRequest,
        id="envelopes-string",
    ),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": {"0": TOKEN}}),
        MalformedRequest,
        id="envelopes-object",
    ),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": []}), MalformedRequest, id="envelopes-empty"
    ),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": [TOKEN, {"jws": TOKEN}]}),
        MalformedRequest,
        id="envelope-object",
    ),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": [None]}), MalformedRequest, id="envelope-null"
    ),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": [TOKEN] * (MAX_TXN_ENVELOPES + 1)}),
        PayloadTooLarge,
        id="201-envelopes",
    ),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": [TOKEN] * MAX_TXN_ENVELOPES + [1]}),
        MalformedRequest,  # the shape is checked before the count
        id="201-entries-one-not-a-string",
    ),
    pytest.param(b"[" * 65 + b"]" * 65, MalformedRequest, id="nested-65-deep"),
    pytest.param(b" " * (MAX_TXN_BYTES + 1), PayloadTooLarge, id="over-max-txn-bytes-not-json"),
    pytest.param(
        raw({"origin": "alpha.example", "envelopes": ["x" * MAX_TXN_BYTES]}),
        PayloadTooLarge,
        id="over-max-txn-bytes-valid",
    ),
]


@pytest.mark.parametrize(("body", "error"), BAD_REQUESTS)
def test_request_refused(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        txn.parse_request(body)
    assert type(info.value) is error


def test_encode_request_is_compact_and_reads_back() -> None:
    body = txn.encode_request("alpha.example", [TOKEN, "a.b.c"])
    assert body == b'{"origin":"alpha.example","envelopes":["' + TOKEN.encode() + b'","a.b.c"]}'
    assert txn.parse_request(body) == txn.TxnRequest("alpha.example", [TOKEN, "a.b.c"])


# --- the result document, as a receiver writes it (SPEC.md §8.4) --------------------------------

SPEC_8_8_RESULTS = {
    "#2": EnvelopeResult(
        "rejected", "5.6.0", 'JWS protected header must be exactly {"alg","kid","typ"}'
    ),
    ID1: EnvelopeResult(
        "accepted",
        "2.0.0",
        recipients={"ghost@beta.example": RecipientResult("5.1.1", "no such agent")},
    ),
    ID2: EnvelopeResult("duplicate", "2.0.0"),
}


def test_encode_results_is_the_spec_example() -> None:
    # SPEC.md §8.8's answer, without the line breaks it adds for display.
    assert txn.encode_results(SPEC_8_8_RESULTS) == (
        b'{"results":{'
        b'"#2":{"status":"rejected","code":"5.6.0",'
        b'"reason":"JWS protected header must be exactly {\\"alg\\",\\"kid\\",\\"typ\\"}"},'
        b'"' + ID1.encode() + b'":{"status":"accepted","code":"2.0.0",'
        b'"recipients":{"ghost@beta.example":{"code":"5.1.1","reason":"no such agent"}}},'
        b'"' + ID2.encode() + b'":{"status":"duplicate","code":"2.0.0"}}}'
    )


def test_results_read_back_as_written() -> None:
    assert txn.parse_results(txn.encode_results(SPEC_8_8_RESULTS)) == SPEC_8_8_RESULTS


@pytest.mark.parametrize(
    ("result", "wire"),
    [
        (EnvelopeResult("accepted", "2.0.0"), {"status": "accepted", "code": "2.0.0"}),
        (  # an empty reason is left out, not sent as ""
            EnvelopeResult("rejected", "4.7.0", ""),
            {"status": "rejected", "code": "4.7.0"},
        ),
        (
            EnvelopeResult("rejected", "5.7.7", "bad signature"),
            {"status": "rejected", "code": "5.7.7", "reason": "bad signature"},
        ),
        (
            EnvelopeResult(
                "accepted", "2.0.0", recipients={"x@b.test": RecipientResult("5.1.1", "")}
            ),
            {
                "status": "accepted",
                "code": "2.0.0",
                "recipients": {"x@b.test": {"code": "5.1.1", "reason": ""}},
            },
        ),
    ],
)
def test_result_to_wire(result: EnvelopeResult, wire: dict[str, Any]) -> None:
    assert result.to_wire() == wire


# --- the result document, as a sender reads it (SPEC.md §8.4, "How a sender reads the answer") --


def results(entries: dict[str, Any]) -> bytes:
    return raw({"results": entries})


# (answer's results member, what parse_results returns)
READ = [
    pytest.param({}, {}, id="no-results"),
    pytest.param(
        {ID1: {"status": "accepted", "code": "2.0.0"}},
        {ID1: EnvelopeResult("accepted", "2.0.0")},
        id="accepted",
    ),
    pytest.param(
        {ID1: {"status": "duplicate", "code": "2.0.0"}},
        {ID1: EnvelopeResult("duplicate", "2.0.0")},
        id="duplicate",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "5.1.1", "reason": "no such agent"}},
        {ID1: EnvelopeResult("rejected", "5.1.1", "no such agent")},
        id="rejected-permanent",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "4.4.3", "reason": "key look-up failed"}},
        {ID1: EnvelopeResult("rejected", "4.4.3", "key look-up failed")},
        id="rejected-transient",
    ),
    pytest.param(
        {ID1: {"status": "accepted", "code": "2.1.5"}},
        {ID1: EnvelopeResult("accepted", "2.1.5")},
        id="other-2xx-code",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "5.999.999"}},
        {ID1: EnvelopeResult("rejected", "5.999.999")},
        id="unknown-but-well-formed-code",  # RFC 3463 §2: act on the class
    ),
    # Without a code: 2.0.0 for accepted and duplicate, 5.0.0 for rejected.
    pytest.param(
        {ID1: {"status": "accepted"}}, {ID1: EnvelopeResult("accepted", "2.0.0")}, id="no-code-acc"
    ),
    pytest.param(
        {ID1: {"status": "duplicate"}},
        {ID1: EnvelopeResult("duplicate", "2.0.0")},
        id="no-code-dup",
    ),
    pytest.param(
        {ID1: {"status": "rejected"}}, {ID1: EnvelopeResult("rejected", "5.0.0")}, id="no-code-rej"
    ),
    # Keyed by id or, for an envelope whose id could not be read, by "#<index>".
    pytest.param(
        {"#0": {"status": "rejected", "code": "5.6.0"}, ID2: {"status": "accepted"}},
        {"#0": EnvelopeResult("rejected", "5.6.0"), ID2: EnvelopeResult("accepted", "2.0.0")},
        id="index-and-id-keys",
    ),
    pytest.param(
        {"#17": {"status": "rejected", "code": "5.3.4"}},
        {"#17": EnvelopeResult("rejected", "5.3.4")},
        id="index-key",
    ),
    # Keys the sender did not send are kept here; the sender looks up only its own (§8.4).
    pytest.param(
        {"never-sent": {"status": "accepted"}},
        {"never-sent": EnvelopeResult("accepted", "2.0.0")},
        id="unknown-key-kept-for-the-sender-to-ignore",
    ),
    # Members a later version may add are ignored.
    pytest.param(
        {ID1: {"status": "accepted", "code": "2.0.0", "hop": "x", "score": [1]}},
        {ID1: EnvelopeResult("accepted", "2.0.0")},
        id="extra-members",
    ),
    # Contradictions are reported as the partner wrote them: the sender, not the parser,
    # refuses to read "accepted 5.x" or "rejected 2.x" either way and retries (SPEC.md §8.4).
    pytest.param(
        {ID1: {"status": "accepted", "code": "5.1.1"}},
        {ID1: EnvelopeResult("accepted", "5.1.1")},
        id="contradiction-accepted-5xx",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "2.0.0"}},
        {ID1: EnvelopeResult("rejected", "2.0.0")},
        id="contradiction-rejected-2xx",
    ),
    # The per-recipient map.
    pytest.param(
        {
            ID1: {
                "status": "accepted",
                "code": "2.0.0",
                "recipients": {
                    "ghost@beta.example": {"code": "5.1.1", "reason": "no such agent"},
                    "slow@beta.example": {"code": "4.2.2"},
                },
            }
        },
        {
            ID1: EnvelopeResult(
                "accepted",
                "2.0.0",
                recipients={
                    "ghost@beta.example": RecipientResult("5.1.1", "no such agent"),
                    "slow@beta.example": RecipientResult("4.2.2", ""),
                },
            )
        },
        id="recipients",
    ),
    pytest.param(
        {ID1: {"status": "accepted", "recipients": {}}},
        {ID1: EnvelopeResult("accepted", "2.0.0")},
        id="recipients-empty",
    ),
    pytest.param(
        {ID1: {"status": "accepted", "recipients": None}},
        {ID1: EnvelopeResult("accepted", "2.0.0")},
        id="recipients-null",
    ),
    pytest.param(
        {ID1: {"status": "accepted", "recipients": {"a@b.test": {"code": "5.1.1", "x": 1}}}},
        {
            ID1: EnvelopeResult(
                "accepted", "2.0.0", recipients={"a@b.test": RecipientResult("5.1.1", "")}
            )
        },
        id="recipient-extra-member",
    ),
    # Reasons: for people, bounded to 300 characters, printable only; a non-string is no reason.
    pytest.param(
        {ID1: {"status": "rejected", "code": "5.7.1", "reason": "x" * 1000}},
        {ID1: EnvelopeResult("rejected", "5.7.1", "x" * 300)},
        id="reason-truncated",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "5.7.1", "reason": "no\r\nX-Injected: 1\x00\x1b[31m"}},
        {ID1: EnvelopeResult("rejected", "5.7.1", "noX-Injected: 1[31m")},
        id="reason-control-characters-dropped",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "5.7.1", "reason": "refusé ✗ 拒否"}},
        {ID1: EnvelopeResult("rejected", "5.7.1", "refusé ✗ 拒否")},
        id="reason-unicode-kept",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "5.7.1", "reason": 42}},
        {ID1: EnvelopeResult("rejected", "5.7.1", "")},
        id="reason-number",
    ),
    pytest.param(
        {ID1: {"status": "rejected", "code": "5.7.1", "reason": ["a", "b"]}},
        {ID1: EnvelopeResult("rejected", "5.7.1", "")},
        id="reason-array",
    ),
    pytest.param(
        {
            ID1: {
                "status": "accepted",
                "recipients": {"a@b.test": {"code": "5.1.1", "reason": "\x07" + "y" * 400}},
            }
        },
        {
            ID1: EnvelopeResult(
                "accepted", "2.0.0", recipients={"a@b.test": RecipientResult("5.1.1", "y" * 299)}
            )
        },
        id="recipient-reason-bounded",
    ),
    # One bad entry is left out; its neighbours stand.
    pytest.param(
        {ID1: {"status": "accepted"}, ID2: {"status": "maybe"}, "#1": "rejected"},
        {ID1: EnvelopeResult("accepted", "2.0.0")},
        id="good-entry-survives-bad-neighbours",
    ),
]


@pytest.mark.parametrize(("entries", "expected"), READ)
def test_results_read(entries: dict[str, Any], expected: dict[str, EnvelopeResult]) -> None:
    assert txn.parse_results(results(entries)) == expected


# Entries left out, as if absent: the sender defers that envelope with 4.5.0 (SPEC.md §9.2), so a
# malformed entry can delay an envelope but never bounce it.
LEFT_OUT = [
    pytest.param("accepted", id="entry-string"),
    pytest.param(None, id="entry-null"),
    pytest.param(["accepted", "2.0.0"], id="entry-array"),
    pytest.param(1, id="entry-number"),
    pytest.param({}, id="no-status"),
    pytest.param({"code": "2.0.0"}, id="code-without-status"),
    pytest.param({"status": "ok", "code": "2.0.0"}, id="status-unknown"),
    pytest.param({"status": "Accepted", "code": "2.0.0"}, id="status-case"),
    pytest.param({"status": None}, id="status-null"),
    pytest.param({"status": 200}, id="status-number"),
    pytest.param({"status": ["accepted"]}, id="status-array"),
    pytest.param({"status": {"accepted": True}}, id="status-object"),
    pytest.param({"status": "accepted", "code": None}, id="code-null"),
    pytest.param({"status": "accepted", "code": 200}, id="code-number"),
    pytest.param({"status": "accepted", "code": ["2.0.0"]}, id="code-array"),
    pytest.param({"status": "accepted", "code": ""}, id="code-empty"),
    pytest.param({"status": "accepted", "code": "200"}, id="code-http-style"),
    pytest.param({"status": "accepted", "code": "2.0"}, id="code-two-parts"),
    pytest.param({"status": "accepted", "code": "2.0.0.0"}, id="code-four-parts"),
    pytest.param({"status": "rejected", "code": "3.0.0"}, id="code-class-3"),
    pytest.param({"status": "rejected", "code": "6.0.0"}, id="code-class-6"),
    pytest.param({"status": "rejected", "code": "5.1000.1"}, id="code-subject-4-digits"),
    pytest.param({"status": "rejected", "code": " 5.1.1"}, id="code-leading-space"),
    pytest.param({"status": "rejected", "code": "5.1.1\n"}, id="code-trailing-newline"),
    pytest.param({"status": "rejected", "code": "\u0665.1.1"}, id="code-arabic-indic-digit"),
    pytest.param(
        {"status": "accepted", "recipients": {"a@b.test": {"code": "bounce"}}},
        id="recipient-code-malformed",
    ),
    pytest.param(
        {"status": "accepted", "recipients": {"a@b.test": {"reason": "no such agent"}}},
        id="recipient-code-missing",
    ),
    pytest.param(
        {"status": "accepted", "recipients": {"a@b.test": {"code": 511}}},
        id="recipient-code-number",
    ),
    pytest.param({"status": "accepted", "recipients": ["a@b.test"]}, id="recipients-array"),
    pytest.param({"status": "accepted", "recipients": "a@b.test"}, id="recipients-string"),
    pytest.param({"status": "accepted", "recipients": 5}, id="recipients-number"),
    pytest.param({"status": "accepted", "recipients": True}, id="recipients-true"),
]


@pytest.mark.parametrize("entry", LEFT_OUT)
def test_malformed_entry_left_out(entry: Any) -> None:
    assert txn.parse_results(results({ID1: entry, ID2: {"status": "duplicate"}})) == {
        ID2: EnvelopeResult("duplicate", "2.0.0")
    }


@pytest.mark.parametrize(
    "value", [pytest.param("5.1.1", id="code-string"), pytest.param(None, id="null")]
)
def test_recipient_value_not_an_object_leaves_the_entry_out(value: Any) -> None:
    # Dropping only the member would leave ghost to the envelope's "accepted" and record it as
    # sent (SPEC.md §8.4): the whole entry goes, and the sender retries the envelope.
    entry = {"status": "accepted", "code": "2.0.0", "recipients": {"ghost@b.test": value}}
    assert txn.parse_results(results({ID1: entry})) == {}


def test_recipient_keys_are_canonicalised() -> None:
    # The sender looks its rows up by canonical address (SPEC.md §2.2): a partner that spells
    # the key in capitals must not have its refusal missed.
    entry = {
        "status": "accepted",
        "code": "2.0.0",
        "recipients": {"Bob@B.Test": {"code": "5.1.1", "reason": "no such agent"}},
    }
    parsed = txn.parse_results(results({ID1: entry}))
    assert parsed[ID1].recipients == {"bob@b.test": txn.RecipientResult("5.1.1", "no such agent")}


def test_recipient_key_that_is_not_an_address_leaves_the_entry_out() -> None:
    entry = {"status": "accepted", "code": "2.0.0", "recipients": {"no-at-sign": {"code": "5.1.1"}}}
    assert txn.parse_results(results({ID1: entry})) == {}


# The whole answer is unusable (SPEC.md §8.7: the transaction failed, 4.5.0, every envelope retried).
BAD_ANSWERS = [
    pytest.param(b"", MalformedRequest, id="empty"),
    pytest.param(b"<html>502 Bad Gateway</html>", MalformedRequest, id="html"),
    pytest.param(b'{"results":{', MalformedRequest, id="truncated"),
    pytest.param(raw([]), MalformedRequest, id="array"),
    pytest.param(raw("ok"), MalformedRequest, id="string"),
    pytest.param(raw(None), MalformedRequest, id="null"),
    pytest.param(raw({}), MalformedRequest, id="no-results"),
    pytest.param(raw({"result": {}}), MalformedRequest, id="misspelt-results"),
    pytest.param(raw({"results": None}), MalformedRequest, id="results-null"),
    pytest.param(raw({"results": []}), MalformedRequest, id="results-array"),
    pytest.param(
        raw({"results": [{"status": "accepted"}]}), MalformedRequest, id="results-index-array"
    ),
    pytest.param(raw({"results": "accepted"}), MalformedRequest, id="results-string"),
    pytest.param(
        # The same envelope answered twice, differently: I-JSON has no duplicate members, and
        # choosing either answer would let the partner's parser and ours disagree.
        b'{"results":{"'
        + ID1.encode()
        + b'":{"status":"accepted"},"'
        + ID1.encode()
        + b'":{"status":"rejected","code":"5.7.1"}}}',
        MalformedRequest,
        id="same-key-twice-contradicting",
    ),
    pytest.param(
        b'{"results":{"' + ID1.encode() + b'":{"status":"accepted","status":"rejected"}}}',
        MalformedRequest,
        id="same-member-twice",
    ),
    pytest.param(b'{"results":{},"results":{}}', MalformedRequest, id="results-twice"),
    pytest.param(b'{"results":{"a":{"status":NaN}}}', MalformedRequest, id="nan"),
    pytest.param(b"\xef\xbb\xbf" + raw({"results": {}}), MalformedRequest, id="byte-order-mark"),
    pytest.param(b'{"results":{"\xff":{}}}', MalformedRequest, id="invalid-utf8"),
    pytest.param(b'{"results":{"\\ud800":{}}}', MalformedRequest, id="unpaired-surrogate"),
    pytest.param(
        b'{"results":{"a":{"status":"accepted","reason":' + b"[" * 70 + b"]" * 70 + b"}}}",
        MalformedRequest,
        id="nested-too-deep",
    ),
    pytest.param(b'{"results":{}}' + b" " * MAX_TXN_BYTES, PayloadTooLarge, id="oversized-padding"),
    pytest.param(
        raw({"results": {f"id-{i}": {"status": "accepted"} for i in range(200_000)}}),
        PayloadTooLarge,
        id="oversized-entries",
    ),
]


@pytest.mark.parametrize(("answer", "error"), BAD_ANSWERS)
def test_unusable_answer(answer: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        txn.parse_results(answer)
    assert type(info.value) is error


def test_answer_at_the_byte_limit_is_read() -> None:
    # Padding inside a reason brings the answer to exactly MAX_TXN_BYTES; the reason is then cut.
    head = b'{"results":{"' + ID1.encode() + b'":{"status":"rejected","code":"4.7.0","reason":"'
    tail = b'"}}}'
    answer = head + b"z" * (MAX_TXN_BYTES - len(head) - len(tail)) + tail
    assert len(answer) == MAX_TXN_BYTES
    assert txn.parse_results(answer) == {ID1: EnvelopeResult("rejected", "4.7.0", "z" * 300)}


def test_extra_top_level_members_are_ignored() -> None:
    answer = raw({"results": {ID1: {"status": "accepted"}}, "server": "other-relay/2"})
    assert txn.parse_results(answer) == {ID1: EnvelopeResult("accepted", "2.0.0")}


# --- property: arbitrary input, the documented errors only --------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["accepted", "duplicate", "rejected", "2.0.0", "5.1.1", "4.7.0", "#0"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["results", "status", "code", "reason", "recipients", "origin"])
            | st.sampled_from(["envelopes", ID1, "#0", "a@b.test"])
            | st.text(max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=30,
)

ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["accepted", "duplicate", "rejected"]) | JSON,
        "code": st.sampled_from(["2.0.0", "4.4.3", "5.1.1", "5.0"]) | JSON,
        "reason": st.text(max_size=40) | JSON,
        "recipients": st.dictionaries(
            st.text(max_size=12),
            st.fixed_dictionaries(
                {}, optional={"code": st.sampled_from(["5.1.1", "x"]) | JSON, "reason": JSON}
            )
            | JSON,
            max_size=3,
        )
        | JSON,
    },
)

ANSWERS = (
    JSON.map(raw)
    | st.dictionaries(st.text(max_size=12), ENTRY | JSON, max_size=5).map(
        lambda e: raw({"results": e})
    )
    | st.binary(max_size=64)
)

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(ANSWERS)
def test_any_answer_yields_results_or_a_documented_error(answer: bytes) -> None:
    try:
        parsed = txn.parse_results(answer)
    except (MalformedRequest, PayloadTooLarge):
        return
    for key, result in parsed.items():
        assert isinstance(key, str)
        assert result.status in ("accepted", "duplicate", "rejected")
        assert result.code[0] in "245"
        assert len(result.reason) <= 300
        assert result.reason.isprintable()
        for address, recipient in result.recipients.items():
            assert isinstance(address, str)
            assert recipient.code[0] in "245"
            assert len(recipient.reason) <= 300
            assert recipient.reason.isprintable()
        # What was read can be written back and reads back the same.
        assert txn.parse_results(txn.encode_results({key: result})) == {key: result}


REQUESTS = (
    JSON.map(raw)
    | st.fixed_dictionaries({"origin": JSON | st.text(max_size=30), "envelopes": JSON}).map(raw)
    | st.binary(max_size=64)
)


@PROPERTY
@given(REQUESTS)
def test_any_request_yields_a_request_or_a_documented_error(body: bytes) -> None:
    try:
        request = txn.parse_request(body)
    except (MalformedRequest, PayloadTooLarge):
        return
    assert 1 <= len(request.envelopes) <= MAX_TXN_ENVELOPES
    assert all(isinstance(e, str) for e in request.envelopes)
    assert request.origin == request.origin.lower()
    assert "." in request.origin


@PROPERTY
@given(st.text(max_size=140))
def test_any_txn_id_is_itself_or_refused(txn_id: str) -> None:
    try:
        assert txn.check_txn_id(txn_id) == txn_id
    except MalformedRequest:
        return
    assert 1 <= len(txn_id) <= 128
    assert txn_id.isascii()
