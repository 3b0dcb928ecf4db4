"""Agent addresses: ``local@domain`` (SPEC.md §2).

* local part: ``[a-z0-9][a-z0-9._-]{0,63}`` after case folding;
* domain: a DNS name of at least two labels, normalised with IDNA 2008 / UTS #46 to its ASCII
  (A-label) form and lower case, with no trailing dot. IP literals are not addresses.

Normalisation happens once, at parse time, so two spellings of one address compare and hash
equal everywhere (store keys, dedup keys, policy rules).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

import idna

from relay.core.errors import InvalidAddress
from relay.core.limits import MAX_DOMAIN_LENGTH, MAX_LOCAL_PART

_LOCAL_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,%d}$" % (MAX_LOCAL_PART - 1))
_LABEL_RE: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

#: The relay itself: operator mail, abuse reports.
POSTMASTER: Final = "postmaster"
#: The sender of delivery-status (``dsn``) envelopes, as in SMTP (RFC 3464).
MAILER_DAEMON: Final = "mailer-daemon"
#: Local parts no agent may register.
RESERVED_LOCALS: Final = frozenset({POSTMASTER, MAILER_DAEMON})


def normalize_local(local: str) -> str:
    """Case-fold and check a local part; raise InvalidAddress if it is not one.

    Only ASCII is folded: Unicode case folding maps some non-ASCII letters onto ASCII ones
    (KELVIN SIGN to ``k``, LONG S to ``s``), which would let look-alike spellings reach another
    agent's address and make the result depend on the implementation's Unicode tables.
    ``fullmatch``, because ``$`` also matches before a trailing newline.
    """
    folded = local.lower() if local.isascii() else ""
    if not _LOCAL_RE.fullmatch(folded):
        raise InvalidAddress(
            f"invalid local part {local[:80]!r}: expected [a-z0-9][a-z0-9._-]{{0,63}}"
        )
    return folded


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """IDNA-normalise a domain to lower-case A-labels; raise InvalidAddress if it is not one.

    Cached: UTS #46 mapping costs tens of microseconds and a relay sees the same few domains
    on every envelope. The cache is bounded (LRU, 4096) so junk domains from a hostile peer
    cannot grow it; exceptions are not cached, so junk costs the full price each time.
    """
    raw = domain[:-1] if domain.endswith(".") else domain
    if not raw or len(raw) > MAX_DOMAIN_LENGTH * 4:
        raise InvalidAddress(f"invalid domain {domain[:80]!r}")
    try:
        ascii_name = idna.encode(raw, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise InvalidAddress(f"invalid domain {domain[:80]!r}") from exc
    labels = ascii_name.split(".")
    if (
        len(ascii_name) > MAX_DOMAIN_LENGTH
        or len(labels) < 2
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidAddress(f"invalid domain {domain[:80]!r}")
    return ascii_name


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A normalised ``local@domain``. Build with :meth:`parse`, not the constructor."""

    local: str
    domain: str

    @classmethod
    def parse(cls, text: object) -> Address:
        if not isinstance(text, str) or text.count("@") != 1:
            raise InvalidAddress(f"not an address: {str(text)[:80]!r} (expected local@domain)")
        local, _, domain = text.partition("@")
        return cls(normalize_local(local), normalize_domain(domain))

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normalize_address(text: str) -> str:
    """The canonical string form of an address."""
    return str(Address.parse(text))
