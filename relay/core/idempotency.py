"""Idempotent submission (SPEC.md §6.2): the key a client names a send by, and the fingerprint
that tells a retry from another request under the same key.

A client that loses the answer to a send cannot tell whether the relay stored the message; a
retry under the same key gets the first answer instead of a second envelope. The key travels as
the ``Idempotency-Key`` header field of the IETF HTTPAPI draft "The Idempotency-Key HTTP Header
Field" on ``POST /synq/v1/messages``, as the ``idempotency_key`` member of each message of a
batch (SPEC.md §6.2.1), as the ``idempotency_key`` argument of the MCP face's ``send_message``.

* :func:`parse_header` — the header's value: an RFC 8941 String (``"8e03978e-…"``, §3.3.3), as
  the draft defines the field, or a bare token (``8e03978e-…``), as many clients send it.
* :func:`check_key` — a key given as a JSON string (the batch member, the MCP argument).
* :func:`digest` — the SHA-256 of a JSON value's canonical form: the request fingerprint of the
  draft, computed over what the request asks for (``Draft.fingerprint``), so that a retry whose
  bytes differ only in member order or whitespace is still the same request.

Every key is 1 to ``MAX_IDEMPOTENCY_KEY_LENGTH`` printable ASCII characters (0x20–0x7E): the
characters an RFC 8941 String can carry, so any key a JSON member names can also be sent in the
header. Anything else is ``MalformedRequest`` (400).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

from relay.core.errors import MalformedRequest
from relay.core.limits import MAX_IDEMPOTENCY_KEY_LENGTH

__all__ = ["HEADER", "check_key", "digest", "parse_header"]

#: The request header field (IETF HTTPAPI draft "The Idempotency-Key HTTP Header Field" §2).
HEADER: Final = "Idempotency-Key"

#: A key: printable ASCII, the characters of an RFC 8941 String (§3.3.3).
_KEY: Final = re.compile(r"[\x20-\x7e]+")
#: The header's bare form: RFC 9110 §5.6.2 ``tchar``s, ``:`` and ``/`` (RFC 8941 §3.3.4's token
#: characters), without the token's rule that the first be a letter, so that a bare UUID is a key.
_BARE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z:/]+")
#: RFC 8941 §4.2.5: inside a String, a backslash escapes only ``"`` and ``\``.
_STRING: Final = re.compile(r'"((?:[\x20-\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')


def _checked(key: str, where: str) -> str:
    if not key:
        raise MalformedRequest(f"{where} must not be empty")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise MalformedRequest(f"{where} is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    return key


def parse_header(value: str) -> str:
    """The key an ``Idempotency-Key`` field value names: ``"…"`` (an RFC 8941 String, escapes
    undone) or a bare token. Parameters (``;a=1``) and lists are refused: the draft defines the
    field as a single String."""
    text = value.strip(" \t")
    where = f"the {HEADER} header"
    if text.startswith('"'):
        match = _STRING.fullmatch(text)
        if match is None:
            raise MalformedRequest(
                f"{where} must be one quoted string of printable ASCII (RFC 8941 §3.3.3)"
            )
        return _checked(re.sub(r"\\(.)", r"\1", match.group(1)), where)
    if not _BARE.fullmatch(text):
        raise MalformedRequest(
            f"{where} must be a quoted string (RFC 8941 §3.3.3) or a token"
            if text
            else f"{where} must not be empty"
        )
    return _checked(text, where)


def check_key(value: object, where: str = "idempotency_key") -> str:
    """A key given as a JSON value: a string of 1 to ``MAX_IDEMPOTENCY_KEY_LENGTH`` printable
    ASCII characters."""
    if not isinstance(value, str):
        raise MalformedRequest(f"{where} must be a string")
    _checked(value, where)
    if not _KEY.fullmatch(value):
        raise MalformedRequest(f"{where} must be printable ASCII (0x20 to 0x7E)")
    return value


def digest(value: Any) -> str:
    """SHA-256 (hex) of ``value``'s canonical JSON: object members sorted, no whitespace, UTF-8.
    Equal JSON values give equal digests however their requests spelled them."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
