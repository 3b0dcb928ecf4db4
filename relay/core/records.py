"""The DNS TXT records a relay publishes (SPEC.md §4.3), built and parsed without I/O.

Both use DKIM's tag=value list syntax (RFC 6376 §3.2): ``;``-separated, whitespace (SP, HTAB,
CR, LF) around tags and values ignored, a tag may appear once, unknown tags are ignored so later
versions can add some. The first tag is ``v=synq1``: that is what tells a Synq record from the
other TXT records that may share its name (DKIM's ``v=`` must come first too, RFC 6376 §3.6.1;
SPF picks its records by the same prefix, RFC 7208 §4.5).

* ``_synq.<domain>``: ``v=synq1; relay=https://relay.example.com:8443``
* ``<selector>._synqkey.<domain>``: ``v=synq1; k=ed25519; p=<base64url public key>``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from relay.core.jws import PublicKey, check_selector

VERSION_TAG: Final = "synq1"
RELAY_LABEL: Final = "_synq"
KEY_LABEL: Final = "_synqkey"


#: Whitespace around tags and values. Spelt out: ``str.strip()`` would also drop Unicode spaces
#: and ASCII 0x1C-0x1F, which another implementation would not.
_WSP: Final = " \t\r\n"


class RecordError(ValueError):
    """A TXT record that is not a valid Synq record."""


def is_synq_record(text: str) -> bool:
    """Whether a TXT record is a Synq record (first tag ``v=synq1``), valid or not.

    Records that are not are another protocol's and are ignored; one that is but does not parse
    is an error, not something to skip.
    """
    name, sep, value = text.split(";", 1)[0].partition("=")
    return bool(sep) and name.strip(_WSP) == "v" and value.strip(_WSP) == VERSION_TAG


def _check_version(text: str) -> None:
    if not is_synq_record(text):
        raise RecordError("not a synq1 record (the first tag must be v=synq1)")


def relay_record_name(domain: str) -> str:
    return f"{RELAY_LABEL}.{domain}"


def key_record_name(selector: str, domain: str) -> str:
    return f"{selector}.{KEY_LABEL}.{domain}"


def parse_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for raw in text.split(";"):
        item = raw.strip(_WSP)
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip(_WSP)
        if not sep or not name:
            raise RecordError(f"malformed tag {item[:40]!r}")
        if name in tags:
            raise RecordError(f"duplicate tag {name!r}")
        tags[name] = value.strip(_WSP)
    return tags


@dataclass(frozen=True, slots=True)
class RelayRecord:
    relay_url: str

    def to_txt(self) -> str:
        return f"v={VERSION_TAG}; relay={self.relay_url}"

    @classmethod
    def parse(cls, text: str) -> RelayRecord:
        _check_version(text)
        tags = parse_tags(text)
        url = tags.get("relay", "")
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("https", "http") and bool(parts.hostname)
        except ValueError:  # e.g. "https://[::1": urlsplit refuses an unclosed IPv6 literal
            ok = False
        if not ok:
            raise RecordError("relay= must be an http(s) URL")
        return cls(url.rstrip("/"))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key: PublicKey

    def to_txt(self) -> str:
        return f"v={VERSION_TAG}; k=ed25519; p={self.key.b64url}"

    @classmethod
    def parse(cls, selector: str, text: str) -> KeyRecord:
        check_selector(selector)
        _check_version(text)
        tags = parse_tags(text)
        if tags.get("k", "ed25519") != "ed25519":
            raise RecordError(f"unsupported key type {tags.get('k')!r}")
        try:
            return cls(PublicKey.from_b64url(selector, tags.get("p", "")))
        except ValueError as exc:
            raise RecordError("p= is not a base64url Ed25519 public key") from exc
