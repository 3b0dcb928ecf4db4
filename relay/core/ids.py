"""Identifiers: UUIDv7 (RFC 9562 §5.7) for envelope ids, random tokens for agents.

UUIDv7 sorts by creation time, which keeps store indexes append-mostly, and carries 74 random
bits, so two relays never pick the same id. The dedup key is (sender domain, id), so even a
sender that reuses ids only collides with itself.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime


def uuid7(now: datetime) -> str:
    """A UUIDv7 string for the given time (RFC 9562 §5.7)."""
    ms = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    rand = secrets.randbits(74)
    value = (
        (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    )
    # The canonical 8-4-4-4-12 lower-case hex form (RFC 9562 §4), without a UUID object.
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Agent tokens carry 256 random bits: guessing one is not a threat worth rate-limiting for.
TOKEN_PREFIX = "synq_"  # noqa: S105 — a prefix that makes leaked tokens greppable, not a secret


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """How tokens are stored: SHA-256 hex.

    A slow password hash buys nothing here: tokens are 256-bit random strings, not something a
    person chose, so a stolen hash table cannot be brute-forced; a fast hash keeps every
    authenticated request cheap.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
