"""What discovery can fail with, split by whether retrying can help.

::

    DiscoveryError (relay.core.errors)   4.4.3  transient: DNS timeout, SERVFAIL, an unreachable
    │                                           or failing well-known server; retry later
    ├── NoSuchDomain                     5.1.2  NXDOMAIN, or no Synq record and no well-known
    │                                           document: the domain does not speak Synq
    ├── MisconfiguredDomain              5.1.2  the domain publishes Synq records that cannot be
    │                                           used: malformed, ambiguous (two synq1 records),
    │                                           a well-known document that fails validation
    └── AddressRefused                   5.7.1  the domain's well-known host resolves only to
                                                addresses this relay's policy refuses (SSRF)

    UnknownKey (relay.core.errors)       5.7.7  a key look-up that failed for good: no key
                                                record, a malformed or revoked one, and no key
                                                of that selector in the well-known JWKS

The class digit of ``status`` is what a sender acts on (RFC 3463 §2): a transient failure keeps
the envelope queued, a permanent one bounces it. Key look-ups turn every permanent failure into
``UnknownKey``, the way a DKIM verifier returns PERMFAIL for a missing or unusable key record
(RFC 6376 §6.1.2), and leave transient ones as ``DiscoveryError`` (TEMPFAIL).
"""

from __future__ import annotations

from relay.core import status as st
from relay.core.errors import DiscoveryError

__all__ = ["AddressRefused", "DiscoveryError", "MisconfiguredDomain", "NoSuchDomain"]


class NoSuchDomain(DiscoveryError):
    """The destination domain does not exist or publishes no Synq records at all."""

    code = "no_such_domain"
    status = st.NO_SUCH_DOMAIN
    default_message = "the destination domain does not exist or does not accept Synq messages"


class MisconfiguredDomain(DiscoveryError):
    """The destination domain's Synq records or well-known document cannot be used."""

    code = "misconfigured_domain"
    status = st.NO_SUCH_DOMAIN
    default_message = "the destination domain publishes unusable Synq records"


class AddressRefused(DiscoveryError):
    """Fetching the domain's well-known document would mean connecting to a refused address."""

    code = "address_refused"
    status = st.NOT_AUTHORIZED
    default_message = "the destination resolves to an address this relay does not connect to"
