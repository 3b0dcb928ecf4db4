"""Discovery: where another domain's relay listens and which keys sign for it (SPEC.md §7).

DNS TXT records first (``_synq.<domain>``, ``<selector>._synqkey.<domain>``), the well-known
document ``https://<domain>/.well-known/synq.json`` when DNS has none; answers cached for their
TTL, so verifying an envelope needs no request to the sender's relay. Imports relay.core only.
"""

from relay.discovery.errors import AddressRefused, MisconfiguredDomain, NoSuchDomain
from relay.discovery.resolver import Discovery
from relay.discovery.ssrf import AddressPolicy
from relay.discovery.wellknown import (
    WELL_KNOWN_CACHE_CONTROL,
    WELL_KNOWN_CONTENT_TYPE,
    WELL_KNOWN_PATH,
    Policy,
    WellKnown,
    build_well_known,
    parse_well_known,
)

__all__ = [
    "WELL_KNOWN_CACHE_CONTROL",
    "WELL_KNOWN_CONTENT_TYPE",
    "WELL_KNOWN_PATH",
    "AddressPolicy",
    "AddressRefused",
    "Discovery",
    "MisconfiguredDomain",
    "NoSuchDomain",
    "Policy",
    "WellKnown",
    "build_well_known",
    "parse_well_known",
]
