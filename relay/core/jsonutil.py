"""Strict JSON for everything a peer sends.

Python's ``json`` accepts things a signed-protocol parser must not: duplicate keys (two parsers
may pick different values — the ambiguity behind several JWT and SAML signature bypasses),
``NaN``/``Infinity`` (not JSON, RFC 8259 §6), and unbounded nesting (stack exhaustion).
What it accepts is I-JSON (RFC 7493): UTF-8 without a byte-order mark, unique member names and
no unpaired surrogates, so every value read here can also be written back out.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

from relay.core.errors import MalformedRequest, PayloadTooLarge
from relay.core.limits import MAX_JSON_DEPTH


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedRequest(f"duplicate key {key[:64]!r} in JSON object")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise MalformedRequest(f"{name} is not valid JSON")


#: json.loads joins an escaped surrogate pair into one code point, so any surrogate code point
#: left in a decoded string is unpaired.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def depth(value: Any, *, check_strings: bool = False) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), computed without recursion.

    With ``check_strings``, also refuse unpaired surrogates (``"\\ud800"``): RFC 7493 §2.1
    forbids them, and they cannot be encoded as UTF-8, so a relay could not write them out again.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            d += 1
            deepest = max(deepest, d)
            stack.extend((v, d) for v in item.values())
            if check_strings and any(_has_surrogate(k) for k in item):
                raise MalformedRequest("unpaired surrogate in a JSON string")
        elif isinstance(item, list):
            d += 1
            deepest = max(deepest, d)
            stack.extend((v, d) for v in item)
        elif check_strings and isinstance(item, str) and _has_surrogate(item):
            raise MalformedRequest("unpaired surrogate in a JSON string")
    return deepest


#: orjson leaves to ``json`` (by raising TypeError) everything it would write differently from
#: the standard library: datetimes, dataclasses and subclasses of str/int/dict/list.
_ORJSON_DUMPS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def loads(data: bytes | str, *, max_bytes: int, what: str = "request") -> Any:
    """Parse untrusted JSON; raise MalformedRequest or PayloadTooLarge, never anything else."""
    size = len(data)
    if size > max_bytes:
        raise PayloadTooLarge(f"{what} is {size} bytes; the limit is {max_bytes}")
    value = _canonical_loads(data)
    if value is _NOT_CANONICAL:
        value = _strict_loads(data, what)
    elif depth(value) > MAX_JSON_DEPTH:
        raise MalformedRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


_NOT_CANONICAL: Final = object()


def _canonical_loads(data: bytes | str) -> Any:
    """The fast path: orjson's parse, kept only when writing it back gives exactly ``data``.

    That equality is what makes the fast path as strict as ``_strict_loads``: a duplicate key
    would have been dropped (fewer members written back), and orjson itself refuses NaN,
    Infinity, a byte-order mark, invalid UTF-8 and unpaired surrogates. What ``dumps`` writes —
    so every envelope and transaction one Synq relay sends another — passes; anything else
    (whitespace, other escapes, integers beyond 64 bits) takes the strict path, which decides.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    try:
        value = orjson.loads(raw)
        if orjson.dumps(value) == raw:
            return value
    except (orjson.JSONDecodeError, TypeError):
        pass
    return _NOT_CANONICAL


def _strict_loads(data: bytes | str, what: str) -> Any:
    try:
        # Decode UTF-8 ourselves: given bytes, json.loads would also guess UTF-16/32 and skip a
        # UTF-8 BOM, which RFC 8259 §8.1 does not allow a peer to send.
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except MalformedRequest:
        raise
    except RecursionError as exc:
        raise MalformedRequest(f"{what} is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"{what} is not valid JSON") from exc
    if depth(value, check_strings=True) > MAX_JSON_DEPTH:
        raise MalformedRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the form Synq sends on the wire.

    orjson writes it (a tenth of ``json``'s time for an envelope); what orjson would write
    differently from ``json.dumps(separators=(",", ":"), ensure_ascii=False)`` — integers
    beyond 64 bits, non-string keys, subclasses, datetimes — goes to ``json``, so the bytes
    are always those of the standard library (including its TypeError for what JSON cannot
    hold).
    """
    try:
        return orjson.dumps(value, option=_ORJSON_DUMPS)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
