"""The relay's signing keys on disk.

One JSON file per selector in the keys directory (``<selector>.json``)::

    {"selector": "s20261125", "created": "…", "activates": "…", "retires": null, "jwk": {…}}

A key is *published* from creation until ``retires`` (its DNS record and JWKS entry must exist
so partners can verify), and *signs* from ``activates``: the newest key that has activated and is
not retired signs. Rotation therefore is: write a new key with ``activates`` after the DNS
overlap, let it take over, later set ``retires`` on the old one.

Private key files must not be readable by group or others (mode 0600, as OpenSSH requires for
identity files): a relay refuses to start with a looser file rather than sign with a key that
another local user may have copied.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from relay.core.envelope import format_timestamp, parse_timestamp
from relay.core.errors import ConfigError
from relay.core.jws import PublicKey, SigningKey, check_selector


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key: SigningKey
    created: datetime
    activates: datetime
    retires: datetime | None

    @property
    def selector(self) -> str:
        return self.key.selector

    def published_at(self, now: datetime) -> bool:
        return self.retires is None or now < self.retires

    def to_json(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "created": format_timestamp(self.created),
            "activates": format_timestamp(self.activates),
            "retires": format_timestamp(self.retires) if self.retires else None,
            "jwk": self.key.private_jwk_dict(),
        }


class Keyring:
    def __init__(self, entries: list[KeyEntry]) -> None:
        if not entries:
            raise ConfigError("no signing keys (run 'synq init' or 'synq keys rotate')")
        self.entries = sorted(entries, key=lambda e: (e.activates, e.selector))

    def signing_key(self, now: datetime) -> SigningKey:
        active = [e for e in self.entries if e.activates <= now and e.published_at(now)]
        if not active:
            raise ConfigError("no signing key is active now")
        return active[-1].key

    def published(self, now: datetime) -> list[PublicKey]:
        return [e.key.public_key for e in self.entries if e.published_at(now)]

    def public_key(self, selector: str, now: datetime) -> PublicKey | None:
        for e in self.entries:
            if e.selector == selector and e.published_at(now):
                return e.key.public_key
        return None


def _parse_entry(path: Path, data: Any) -> KeyEntry:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a key file")
    try:
        selector = check_selector(data["selector"])
        if path.stem != selector:
            raise ConfigError(f"{path}: file name does not match selector {selector!r}")
        retires = data.get("retires")
        return KeyEntry(
            key=SigningKey.from_jwk_dict(selector, data["jwk"]),
            created=parse_timestamp(data["created"]),
            activates=parse_timestamp(data["activates"]),
            retires=parse_timestamp(retires) if retires else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed key file ({exc})") from None


def load_keyring(directory: Path) -> Keyring:
    """Load every key file; refuse files readable by group or others."""
    if not directory.is_dir():
        raise ConfigError(f"keys directory {directory} does not exist")
    entries = []
    for path in sorted(directory.glob("*.json")):
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable key file ({exc})") from None
        entries.append(_parse_entry(path, data))
    return Keyring(entries)


def write_key(directory: Path, entry: KeyEntry) -> Path:
    """Write a key file with mode 0600 from the start (no window with a looser mode)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{entry.selector}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(entry.to_json(), fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def selector_for(now: datetime) -> str:
    """The default selector name: the date, as DKIM deployments commonly do (``s20261125``)."""
    return now.strftime("s%Y%m%d")
