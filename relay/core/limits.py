"""Named size and count limits, each with the abuse it stops.

Every number a peer can push against lives here, so an operator can read in one place what a
relay will accept. Changing one is a wire-visible decision: SPEC.md §10 lists the same values.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

#: Largest envelope JSON (the JWS payload, before base64url). Bounds the memory and signature
#: work one envelope can cost; bodies larger than this belong in a URL part, not inline.
MAX_ENVELOPE_BYTES: Final = 256 * 1024

#: Largest compact JWS token: base64url inflates by 4/3, plus header and signature.
MAX_JWS_BYTES: Final = (MAX_ENVELOPE_BYTES * 4) // 3 + 1024

#: Recipients in one envelope's ``to``. Stops one accepted envelope fanning out into an
#: unbounded number of deliveries (the "RCPT TO" amplification Postfix caps with
#: smtpd_recipient_limit = 1000; agents address few peers, so ours is lower).
MAX_RECIPIENTS: Final = 100

#: Nesting depth of any JSON document a peer sends. Stops stack exhaustion in recursive
#: decoders and validators (deeply nested ``[[[[…]]]]`` bodies).
MAX_JSON_DEPTH: Final = 64

#: Length of ids (envelope id, thread, in_reply_to) and of the ``kind`` field.
MAX_ID_LENGTH: Final = 128

#: Length of a ``content_type`` value (RFC 6838 limits each name part to 127 characters).
MAX_CONTENT_TYPE_LENGTH: Final = 255

#: Length of the local part of an address (SPEC.md §2.1: 1 + 63 characters).
MAX_LOCAL_PART: Final = 64

#: Length of a domain in its ASCII (A-label) form (RFC 1035 §2.3.4).
MAX_DOMAIN_LENGTH: Final = 253

#: Largest JWS protected header, decoded. Stops header-stuffing before any crypto is done.
MAX_JWS_HEADER_BYTES: Final = 1024

#: Largest request body on the local agent API (an envelope body plus the request framing).
MAX_API_BODY_BYTES: Final = MAX_ENVELOPE_BYTES + 16 * 1024

#: Messages in one ``POST /synq/v1/messages/batch`` (SPEC.md §6.2.1). Each is built, signed and
#: stored like a single send, all in one request and one commit, so this bounds the CPU one
#: request can demand (~0.1 ms of signing each) and the rows one commit writes; a bigger fan-out
#: is several batches. Past it: ``too_large``. (SMTP servers bound a pipelined session the same
#: way: Postfix's smtpd_recipient_limit, 1000.)
MAX_BATCH_MESSAGES: Final = 500

#: Largest ``POST /synq/v1/messages/batch`` body: the same bound as a federation transaction
#: (MAX_TXN_BYTES below), so a local agent cannot make one request pin more memory than a
#: partner relay can. 500 messages of ~8 KB fit; batches of large bodies must be smaller.
MAX_BATCH_BODY_BYTES: Final = 4 * 1024 * 1024

#: Envelopes in one federation transaction (Matrix caps a transaction at 50 PDUs; we batch
#: more because envelopes are independent and group-committed).
MAX_TXN_ENVELOPES: Final = 200

#: Bytes in one federation transaction body. Bounds the memory one PUT can pin.
MAX_TXN_BYTES: Final = 4 * 1024 * 1024

#: Default lifetime of an envelope when the sender gives none (Postfix's
#: maximal_queue_lifetime is 5 days; agents' conversations go stale sooner).
DEFAULT_LIFETIME: Final = timedelta(days=2)

#: Longest lifetime a sender may ask for. Stops a queue full of envelopes that never expire.
MAX_LIFETIME: Final = timedelta(days=7)

#: How far in the future ``created`` may lie (clock skew between relays). Stops envelopes
#: pre-dated to outlive the replay window.
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)

#: Longest long-poll a client may ask for on ``GET /synq/v1/inbox?wait=``. Bounds how long an
#: idle connection pins a handler; clients simply poll again.
MAX_LONG_POLL_SECONDS: Final = 60.0

#: How long a relay keeps the record of an idempotency key (SPEC.md §6.2): a retry under the key
#: within this time gets the first answer and never a second envelope. A day covers what makes a
#: client retry — a relay restart, a lost connection, the client's own crash and restart, an
#: outage through a night — and is the expiry the IETF Idempotency-Key draft's examples and
#: Stripe's API use. Past it a record may be purged (``Store.purge_idempotency_keys``), which bounds
#: the table to about a day of keyed sends.
IDEMPOTENCY_RETENTION: Final = timedelta(hours=24)

#: Longest idempotency key, in characters (printable ASCII, SPEC.md §6.2). Every key is stored and
#: indexed for IDEMPOTENCY_RETENTION: the bound stops a client making each send park kilobytes of
#: key in the store for a day (growing the table and its index at will), and keeps every key
#: within what one B-tree index entry can hold. A UUID is 36 characters; Stripe allows 255 too.
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255

#: Most messages one inbox read returns.
MAX_INBOX_PAGE: Final = 500
DEFAULT_INBOX_PAGE: Final = 50

#: Unacknowledged messages one local agent's mailbox holds before new mail for it is deferred
#: with 4.2.2 (SPEC.md §9.7; relay/core/quota.py tables it beside Postfix and Dovecot). Stops an
#: agent that stopped reading (or a peer flooding it) from growing the store without bound:
#: retention never purges an unacknowledged message. ``[quotas] max_unacked``; 0 for none.
DEFAULT_MAX_UNACKED: Final = 10_000

#: Bytes of unacknowledged signed envelopes one mailbox holds before new mail is deferred: the
#: same bound by size, so a few hundred envelopes near MAX_ENVELOPE_BYTES cannot do what the
#: count alone would allow. ``[quotas] max_bytes``; 0 for none.
DEFAULT_MAX_UNACKED_BYTES: Final = 100 * 1024 * 1024
