"""Federation transactions (SPEC.md §8): the request and result documents.

``PUT /synq/v1/federation/txn/{txn_id}`` with ``{"origin": "<domain>", "envelopes": [jws…]}``
answers ``200 {"results": {"<envelope id>": {"status", "code", "reason"?, "recipients"?}}}``.

Idempotency is by envelope: the receiver deduplicates on ``(from-domain, id)``, so a replayed
transaction — same id or not — delivers nothing twice and reports ``duplicate``. The txn id
names one attempt in both relays' logs.

The request may carry one more member, ``notify`` (SPEC.md §8.1): per envelope id and recipient
address, the reports the original sender asked for (relay.core.dsn, RFC 3461 §4.1). It is a
transport parameter — SMTP's ``NOTIFY`` on ``RCPT TO`` — so it travels beside the signed
envelope, never in it, and only to partners that advertise the ``receipts`` capability
(SPEC.md §7.3): a relay that knows nothing of it refuses a transaction that carries it.

Synq's one addition to the plain per-envelope result is the optional ``recipients`` map
(SPEC.md §8.4), the equivalent of SMTP's per-RCPT replies: an envelope addressed to two agents
of the receiving domain, one of which does not exist, is accepted for the other and refused
(5.1.1) for that one, and the sender bounces exactly that recipient.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from relay.core import jsonutil
from relay.core.address import normalize_address, normalize_domain
from relay.core.dsn import Notify, notify_to_wire, parse_notify
from relay.core.errors import MalformedRequest, PayloadTooLarge, SynqError
from relay.core.limits import MAX_ID_LENGTH, MAX_RECIPIENTS, MAX_TXN_BYTES, MAX_TXN_ENVELOPES
from relay.core.status import status_class

TXN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,%d}$" % (MAX_ID_LENGTH - 1))
#: Result key for an envelope too broken to yield an id: ``#`` + its index in the request.
INDEX_PREFIX: Final = "#"

ResultStatus = Literal["accepted", "duplicate", "rejected"]


#: Per envelope id, per canonical recipient address: what the sender asked (``notify``).
TxnNotify = Mapping[str, Mapping[str, Notify]]

#: The members of a transaction: the two every relay knows, and ``notify``, which only
#: receipt-capable relays accept (SPEC.md §8.1).
_MEMBERS: Final = frozenset({"origin", "envelopes", "notify"})


@dataclass(frozen=True, slots=True)
class TxnRequest:
    origin: str
    envelopes: list[str]
    notify: TxnNotify = field(default_factory=dict)


def check_txn_id(txn_id: str) -> str:
    if not TXN_ID_RE.fullmatch(txn_id):
        raise MalformedRequest("transaction id must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
    return txn_id


def parse_request(data: bytes) -> TxnRequest:
    """Validate a transaction body; raise MalformedRequest or PayloadTooLarge."""
    doc = jsonutil.loads(data, max_bytes=MAX_TXN_BYTES, what="transaction")
    if (
        not isinstance(doc, dict)
        or not {"origin", "envelopes"} <= doc.keys()
        or not doc.keys() <= _MEMBERS
    ):
        raise MalformedRequest(
            'a transaction is exactly {"origin": …, "envelopes": […]}, and optionally "notify"'
        )
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
    notify = _notify(doc["notify"]) if doc.get("notify") is not None else {}
    return TxnRequest(origin=origin, envelopes=envelopes, notify=notify)


def _notify(raw: Any) -> dict[str, dict[str, Notify]]:
    """The ``notify`` member: ``{"<envelope id>": {"<recipient>": ["success", …]}}``, each list
    by the rules of RFC 3461 §4.1 (relay.core.dsn.parse_notify), each address canonical. A
    malformed member refuses the whole transaction, as any other malformed member does: only
    a relay that advertised receipts is sent one, so a fault here is a broken sender."""
    if not isinstance(raw, dict) or len(raw) > MAX_TXN_ENVELOPES:
        raise MalformedRequest(
            'notify must be an object {"<envelope id>": {"<recipient>": [keyword…]}}'
        )
    out: dict[str, dict[str, Notify]] = {}
    for env_id, per in raw.items():
        if len(env_id) > MAX_ID_LENGTH or not isinstance(per, dict) or len(per) > MAX_RECIPIENTS:
            raise MalformedRequest(f"notify of {env_id[:80]!r} must map recipients to keywords")
        entry: dict[str, Notify] = {}
        for address, words in per.items():
            try:
                entry[normalize_address(address)] = parse_notify(words)
            except SynqError as exc:
                raise MalformedRequest(f"notify of {env_id[:80]!r}: {exc.message}") from None
        out[env_id] = entry
    return out


def encode_request(origin: str, envelopes: list[str], notify: TxnNotify | None = None) -> bytes:
    """The request body. ``notify``, when given and not empty, only for a partner that
    advertises receipts (the module docstring)."""
    doc: dict[str, Any] = {"origin": origin, "envelopes": envelopes}
    if notify:
        doc["notify"] = notify_to_json(notify)
    return jsonutil.dumps(doc)


def notify_to_json(notify: TxnNotify) -> dict[str, dict[str, list[str]]]:
    """The JSON form of a ``notify`` member."""
    return {
        env_id: {addr: notify_to_wire(words) for addr, words in per.items()}
        for env_id, per in notify.items()
    }


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
