"""The admin token (SPEC.md §14.1): what the console and its actions ask of the operator.

One token per relay directory, made by ``synq admin token`` and kept only as its SHA-256 in
``Config.admin_token_path`` (mode 0600), beside the signing keys rather than in the store:

- the same trust boundary as the keys — whoever can read the relay's directory runs the relay
  anyway, and file permissions are the operator's own tool for that;
- no schema change, and nothing to migrate on either store;
- replicas on one PostgreSQL database already share the config and keys directory
  (README.md, "Scaling out"), so they share this file the same way.

Stored hashed, like agents' tokens (relay/core/ids.py ``hash_token``): a 256-bit random token
cannot be brute-forced from its hash, and a copied file does not hand out the console. The
file is read on every check (a stat and 64 bytes), so a rotation takes effect at once in a
running relay and ends every console session made with the old token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from relay.core.errors import ConfigError
from relay.core.ids import hash_token

__all__ = ["ADMIN_TOKEN_PREFIX", "check_admin_token", "new_admin_token", "read_admin_token_hash"]

#: Tells an admin token from an agent's (``synq_…``) in a shell history or a leaked log.
ADMIN_TOKEN_PREFIX: Final = "synq_admin_"  # noqa: S105 (a prefix, not a secret)


def read_admin_token_hash(path: Path) -> str | None:
    """The stored hash, or None when no token was made yet (the console then refuses every
    request: there is nothing an operator could log in with)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the admin token hash {path}: {exc}") from None
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(f"{path} is not an admin token hash; run 'synq admin token --rotate'")
    return text


def check_admin_token(path: Path, token: str) -> str | None:
    """The stored hash when ``token`` is the admin token, else None. Constant-time compare:
    the hash of a guess tells nothing, but the comparison should not either."""
    stored = read_admin_token_hash(path)
    if stored is None or not token:
        return None
    return stored if hmac.compare_digest(stored, hash_token(token)) else None


def new_admin_token(path: Path, *, replace: bool) -> str:
    """Make a token, store its hash (0600, written to a temporary file and renamed, so a
    running relay reads the old hash or the new one, never half of one) and return it — the
    only time it is seen. Without ``replace`` an existing token is kept: ConfigError."""
    if path.exists() and not replace:
        raise ConfigError(
            "an admin token exists (only its hash is kept, so it cannot be shown again); "
            "'synq admin token --rotate' replaces it"
        )
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(hash_token(token) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return token
