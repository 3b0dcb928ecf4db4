"""Federation transactions (SPEC.md §8): the request and result documents.

``PUT /synq/v1/federation/txn/{txn_id}`` with ``{"origin": "<domain>", "envelopes": [jws…]}``
answers ``200 {"results": {"<envelope id>": {"status", "code", "reason"?, "recipients"?}}}``.

Idempotency is by envelope: the receiver deduplicates on ``(from-domain, id)``, so a replayed
transaction — same id or not — delivers nothing twice and reports ``duplicate``. The txn id
names one attempt in both relays' logs.

Synq's one addition to the plain per-envelope result is the optional ``recipients`` map
(SPEC.md §8.4), the equivalent of SMTP's per-RCPT replies: an envelope addressed to two agents
of the receiving domain, one of which does not exist, is accepted for the other and refused
(5.1.1) for that one, and the sender bounces exactly that recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from relay.core import jsonutil
from relay.core.address import normalize_address, normalize_domain
from relay.core.errors import MalformedRequest, PayloadTooLarge, SynqError
from relay.core.limits import MAX_ID_LENGTH, MAX_TXN_BYTES, MAX_TXN_ENVELOPES
from relay.core.status import status_class

TXN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,%d}$" % (MAX_ID_LENGTH - 1))
#: Result key for an envelope too broken to yield an id: ``#`` + its index in the request.
INDEX_PREFIX: Final = "#"

ResultStatus = Literal["accepted", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class TxnRequest:
    origin: str
    envelopes: list[str]


def check_txn_id(txn_id: str) -> str:
    if not TXN_ID_RE.fullmatch(txn_id):
        raise MalformedRequest("transaction id must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
    return txn_id


def parse_request(data: bytes) -> TxnRequest:
    """Validate a transaction body; raise MalformedRequest or PayloadTooLarge."""
    doc = jsonutil.loads(data, max_bytes=MAX_TXN_BYTES, what="transaction")
    if not isinstance(doc, dict) or set(doc) != {"origin", "envelopes"}:
        raise MalformedRequest('a transaction is exactly {"origin": …, "envelopes": […]}')
    origin, envelopes = doc["origin"], doc["envelopes"]
    if not isinstance(origin, str):
        raise MalformedRequest("origin must be a domain name")
    try:
        origin = normalize_domain(origin)
    except SynqError:
        raise MalformedRequest("origin must be a domain name") from None
    if not isinstance(envelopes, list) or not all(isinstance(e, str) for e in envelopes):
        raise MalformedRequest("envelopes must be a list of JWS compact strings")
    if not envelopes:
        raise MalformedRequest("a transaction carries at least one envelope")
    if len(envelopes) > MAX_TXN_ENVELOPES:
        raise PayloadTooLarge(
            f"transaction carries {len(envelopes)} envelopes; the limit is {MAX_TXN_ENVELOPES}"
        )
    return TxnRequest(origin=origin, envelopes=envelopes)


def encode_request(origin: str, envelopes: list[str]) -> bytes:
    return jsonutil.dumps({"origin": origin, "envelopes": envelopes})


@dataclass(frozen=True, slots=True)
class RecipientResult:
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class EnvelopeResult:
    status: ResultStatus
    code: str
    reason: str = ""
    #: Recipients whose outcome differs from the envelope's (refused while others accepted).
    recipients: dict[str, RecipientResult] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "code": self.code}
        if self.reason:
            out["reason"] = self.reason
        if self.recipients:
            out["recipients"] = {
                addr: {"code": r.code, "reason": r.reason} for addr, r in self.recipients.items()
            }
        return out


def encode_results(results: dict[str, EnvelopeResult]) -> bytes:
    return jsonutil.dumps({"results": {k: v.to_wire() for k, v in results.items()}})


def _code(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("code must be a string")
    status_class(value)
    return value


def _reason(value: Any) -> str:
    # A partner's reason ends up in our logs and DSNs: bound it, keep it printable.
    text = value[:300] if isinstance(value, str) else ""
    if text.isprintable():  # the usual case, checked in C
        return text
    return "".join(ch for ch in text if ch.isprintable())


def parse_results(data: bytes) -> dict[str, EnvelopeResult]:
    """The sender's view of a receiver's answer. Raise MalformedRequest if it is not one.

    Entries that are malformed are left out (the sender treats a missing result as a transient
    failure and retries), so one bad entry cannot make the sender bounce good envelopes.
    """
    doc = jsonutil.loads(data, max_bytes=MAX_TXN_BYTES, what="transaction result")
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise MalformedRequest('expected {"results": {…}}')
    results: dict[str, EnvelopeResult] = {}
    for key, raw in doc["results"].items():
        if not isinstance(raw, dict) or raw.get("status") not in (
            "accepted",
            "duplicate",
            "rejected",
        ):
            continue
        try:
            recipients = _recipient_results(raw.get("recipients") or {})
            code = _code(raw.get("code", "2.0.0" if raw["status"] != "rejected" else "5.0.0"))
        except (ValueError, AttributeError, SynqError):
            continue
        results[key] = EnvelopeResult(raw["status"], code, _reason(raw.get("reason")), recipients)
    return results


def _recipient_results(raw: dict[str, Any]) -> dict[str, RecipientResult]:
    """The per-recipient map of one result, keyed by canonical address (SPEC.md §2.2), which is
    how the sender looks its rows up. Any unusable member makes the whole entry unusable
    (ValueError or InvalidAddress): a member dropped on its own would leave that recipient to
    the envelope's overall status and record as sent what the partner may have refused
    (SPEC.md §8.4)."""
    out: dict[str, RecipientResult] = {}
    for addr, r in raw.items():
        if not isinstance(r, dict):
            raise ValueError("recipient result is not an object")
        out[normalize_address(addr)] = RecipientResult(
            _code(r.get("code")), _reason(r.get("reason"))
        )
    return out
