"""The relay's signing keys on disk.

One JSON file per selector in the keys directory (``<selector>.json``)::

    {"selector": "s20261125", "created": "…", "activates": "…", "retires": null, "jwk": {…}}

A key is *published* from creation until ``retires`` (its DNS record and JWKS entry must exist
so partners can verify), and *signs* from ``activates``: the newest key that has activated and is
not retired signs. Rotation therefore is (``synq keys rotate``, SPEC.md §4.3)::

    rotate            new key written, activates = now + overlap; its DNS record is printed
                      and published; the well-known JWKS lists it at once
    now + overlap     the new key signs; the old one still verifies envelopes in flight
    rotate --retire   retires = the later of now + overlap and the moment the old key stopped
                      signing + MAX_LIFETIME + MAX_CLOCK_SKEW: every envelope it signed has
                      expired everywhere before its record may go, so none is refused 5.7.7

A running relay reloads the keys directory on SIGHUP and when its files change, so a rotation
needs no restart; the switch itself needs no reload at all (the keyring knows the times).

Private key files must not be readable by group or others (mode 0600, as OpenSSH requires for
identity files): a relay refuses to start with a looser file rather than sign with a key that
another local user may have copied.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from relay.core.envelope import format_timestamp, parse_timestamp
from relay.core.errors import ConfigError
from relay.core.jws import PublicKey, SigningKey, check_selector
from relay.core.limits import MAX_CLOCK_SKEW, MAX_LIFETIME

#: What ``synq keys list`` calls a key at a given moment.
KeyState = Literal["pending", "signing", "verifying", "retired"]


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

    def get(self, selector: str) -> KeyEntry:
        for e in self.entries:
            if e.selector == selector:
                return e
        raise ConfigError(f"no key with selector {selector!r}")

    def state(self, entry: KeyEntry, now: datetime) -> KeyState:
        """``pending`` (published, not signing yet), ``signing``, ``verifying`` (superseded but
        still published for envelopes in flight) or ``retired``."""
        if not entry.published_at(now):
            return "retired"
        if entry.activates > now:
            return "pending"
        try:
            signing = self.signing_key(now).selector
        except ConfigError:
            signing = None
        return "signing" if signing == entry.selector else "verifying"

    def superseded_at(self, entry: KeyEntry) -> datetime | None:
        """When ``entry`` stops signing because a newer key activates, if one does."""
        later = [
            e.activates
            for e in self.entries
            if (e.activates, e.selector) > (entry.activates, entry.selector)
            and (e.retires is None or e.retires > e.activates)
        ]
        return min(later, default=None)

    def retire_at(self, selector: str, now: datetime, overlap: timedelta) -> datetime:
        """When ``selector`` may stop being published without a single envelope it signed
        being refused. Raise ConfigError when retiring it would leave nothing to sign with.

        A key that never signed may go now. Otherwise every envelope it signed was created
        before a newer key took over and expires at most MAX_LIFETIME later (SPEC.md §3.4);
        MAX_CLOCK_SKEW more covers a verifier whose clock is behind ours. ``overlap`` is a
        floor on top: partners that cached the key keep working through it either way.
        """
        entry = self.get(selector)
        if entry.retires is not None and entry.retires <= now:
            raise ConfigError(f"key {selector!r} is already retired")
        if entry.activates > now:
            return now
        handover = self.superseded_at(entry)
        if handover is None:
            raise ConfigError(
                f"refusing to retire {selector!r}: no newer key takes over its signing "
                "(run 'synq keys rotate' first)"
            )
        return max(now + overlap, handover + MAX_LIFETIME + MAX_CLOCK_SKEW)


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


def rewrite_key(directory: Path, entry: KeyEntry) -> Path:
    """Replace an existing key file atomically, still 0600: written beside it under a name the
    loader ignores, fsynced, then renamed over it (rename is atomic within a directory, POSIX
    rename(2)), so a relay reloading at that moment reads the old file or the new, never half."""
    path = directory / f"{entry.selector}.json"
    if not path.exists():
        raise ConfigError(f"no key file {path}")
    tmp = directory / f".{entry.selector}.json.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(entry.to_json(), fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def selector_for(now: datetime) -> str:
    """The default selector name: the date, as DKIM deployments commonly do (``s20261125``)."""
    return now.strftime("s%Y%m%d")


def rotate_key(
    directory: Path, now: datetime, overlap: timedelta, selector: str | None = None
) -> KeyEntry:
    """Write a new key that is published now and signs from ``now + overlap``.

    The selector defaults to the activation date, with ``-2``, ``-3``… when that name is taken
    (two rotations in one day). A selector already used is refused: a partner may still hold
    the old key under that name in its cache.
    """
    # An empty (or missing) directory is allowed: this is also how a first key is made.
    existing = any(directory.glob("*.json"))
    taken = {e.selector for e in load_keyring(directory).entries} if existing else set()
    activates = now + overlap
    if selector is None:
        base = selector_for(activates)
        selector = base
        n = 2
        while selector in taken:
            selector, n = f"{base}-{n}", n + 1
    check_selector(selector)
    if selector in taken:
        raise ConfigError(f"selector {selector!r} is already used by a key")
    entry = KeyEntry(
        key=SigningKey.generate(selector), created=now, activates=activates, retires=None
    )
    write_key(directory, entry)
    return entry


def retire_key(directory: Path, selector: str, now: datetime, overlap: timedelta) -> KeyEntry:
    """Set ``retires`` on a key (see :meth:`Keyring.retire_at`) and rewrite its file."""
    keyring = load_keyring(directory)
    entry = keyring.get(selector)
    retired = replace(entry, retires=keyring.retire_at(selector, now, overlap))
    rewrite_key(directory, retired)
    return retired


def keys_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What the key files look like from outside (name, size, mtime), to notice a change
    without reading them. Empty when the directory cannot be listed."""
    try:
        return tuple(
            sorted(
                (p.name, st.st_size, st.st_mtime_ns)
                for p in directory.glob("*.json")
                for st in (p.stat(),)
            )
        )
    except OSError:
        return ()
