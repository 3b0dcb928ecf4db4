"""What discovery can fail with, split by whether retrying can help.

::

    DiscoveryError                       4.4.3  transient: DNS timeout, SERVFAIL, an unreachable
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

The classes live in relay/core/errors.py with the rest of the error tree (each carries its code,
status and HTTP status there); this module names the ones discovery raises.
"""

from __future__ import annotations

from relay.core.errors import AddressRefused, DiscoveryError, MisconfiguredDomain, NoSuchDomain

__all__ = ["AddressRefused", "DiscoveryError", "MisconfiguredDomain", "NoSuchDomain"]
