"""Enhanced status codes (RFC 3463) as Synq uses them on the wire.

A code is ``class.subject.detail``. The class tells the sender what to do:

* ``2`` — success: the envelope is in the receiver's custody;
* ``4`` — persistent transient failure: keep the envelope queued and retry later;
* ``5`` — permanent failure: stop retrying and bounce (send a ``dsn`` envelope).

Only the codes listed here are emitted by Synq; a receiver MUST act on the class digit of any
code it does not know (RFC 3463 §2), so new codes never break old senders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_CODE_RE: Final = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$", re.ASCII)


@dataclass(frozen=True, slots=True)
class Status:
    """One enhanced status code with the short meaning RFC 3463 gives it."""

    code: str
    meaning: str

    def __post_init__(self) -> None:
        if not _CODE_RE.fullmatch(self.code):
            raise ValueError(f"not an RFC 3463 enhanced status code: {self.code!r}")

    @property
    def klass(self) -> int:
        """The class digit: 2 success, 4 transient, 5 permanent."""
        return int(self.code[0])

    @property
    def is_success(self) -> bool:
        return self.klass == 2

    @property
    def is_transient(self) -> bool:
        return self.klass == 4

    @property
    def is_permanent(self) -> bool:
        return self.klass == 5

    def __str__(self) -> str:
        return self.code


def status_class(code: str) -> int:
    """The class digit of any well-formed code, known to us or not (RFC 3463 §2).

    Raises ``ValueError`` for a malformed code: a sender treats that like a transient failure.
    """
    m = _CODE_RE.fullmatch(code)
    if m is None:
        raise ValueError(f"not an RFC 3463 enhanced status code: {code!r}")
    return int(m.group(1))


# 2.x.x — accepted
OK: Final = Status("2.0.0", "accepted")
DELIVERED: Final = Status("2.1.5", "destination address valid, delivered")

# 4.x.x — transient: the sender keeps the envelope and retries
TRANSIENT: Final = Status("4.0.0", "temporary failure")
MAILBOX_FULL: Final = Status("4.2.2", "mailbox full")
STORE_UNAVAILABLE: Final = Status("4.3.0", "mail system (store) unavailable")
NO_ANSWER: Final = Status("4.4.1", "no answer from host")
BAD_CONNECTION: Final = Status("4.4.2", "bad connection")
ROUTING_FAILED: Final = Status("4.4.3", "directory server (DNS) failure")
CONGESTED: Final = Status("4.4.5", "system congestion")
RATE_LIMITED: Final = Status("4.7.0", "rate limited, try again later")
REMOTE_PROTOCOL: Final = Status("4.5.0", "unexpected answer from the partner relay")

# 5.x.x — permanent: the sender bounces
PERMANENT: Final = Status("5.0.0", "permanent failure")
UNKNOWN_RECIPIENT: Final = Status("5.1.1", "bad destination mailbox address")
NO_SUCH_DOMAIN: Final = Status("5.1.2", "bad destination system address")
BAD_RECIPIENT_SYNTAX: Final = Status("5.1.3", "bad destination mailbox address syntax")
BAD_SENDER_SYNTAX: Final = Status("5.1.7", "bad sender's mailbox address syntax")
BAD_SENDER_DOMAIN: Final = Status("5.1.8", "bad sender's system address")
TOO_BIG: Final = Status("5.3.4", "message too big for system")
EXPIRED: Final = Status("5.4.7", "delivery time expired")
INVALID_COMMAND: Final = Status("5.5.1", "invalid command")
SYNTAX_ERROR: Final = Status("5.5.2", "syntax error")
TOO_MANY_RECIPIENTS: Final = Status("5.5.3", "too many recipients")
INVALID_PARAMETER: Final = Status("5.5.4", "invalid command arguments")
MEDIA_ERROR: Final = Status("5.6.0", "other or undefined media error")
SECURITY: Final = Status("5.7.0", "other or undefined security status")
NOT_AUTHORIZED: Final = Status("5.7.1", "delivery not authorized, message refused")
BAD_SIGNATURE: Final = Status("5.7.7", "message integrity failure")
BAD_CREDENTIALS: Final = Status("5.7.8", "authentication credentials invalid")
