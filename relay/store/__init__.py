"""The relay's durable state: one :class:`Store` interface, a dialect per database.

``open_store(url)`` picks the dialect from the URL scheme, opens it (applying migrations) and
returns it; nothing else in the relay names a dialect.

* ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` — the embedded default.
  Options: ``synchronous`` (``FULL``, ``NORMAL``, ``EXTRA``), ``busy_timeout`` (seconds),
  ``max_size`` (bytes: a cap on the file, ``Store.set_max_size``).
* ``postgresql://user:password@host:port/dbname?…`` (or ``postgres://…``) — the scale-out
  engine: several relay processes share one database (relay/store/postgres.py). Options:
  ``synchronous`` (``FULL``, ``NORMAL``). The URL is libpq's, passed to it as it is.

Every dialect takes ``domain``, the relay's own domain: local recipients are then reported by
address (``bob@acme.test``) rather than by bare agent name.
"""

from __future__ import annotations

from typing import Any, Final

from relay.core.errors import ConfigError
from relay.store.base import (
    QUEUE_CHANNEL,
    AcceptResult,
    AgentKind,
    AgentRecord,
    DeliveryEvent,
    IdempotencyKey,
    IdempotencyRecord,
    InboxItem,
    Listener,
    MessageStatus,
    NewEnvelope,
    Notifier,
    Outcome,
    QueueEntry,
    RecipientState,
    RecipientStatus,
    Store,
    inbox_channel,
)

__all__ = [
    "QUEUE_CHANNEL",
    "AcceptResult",
    "AgentKind",
    "AgentRecord",
    "DeliveryEvent",
    "IdempotencyKey",
    "IdempotencyRecord",
    "InboxItem",
    "Listener",
    "MessageStatus",
    "NewEnvelope",
    "Notifier",
    "Outcome",
    "QueueEntry",
    "RecipientState",
    "RecipientStatus",
    "Store",
    "inbox_channel",
    "open_store",
    "schema_version",
]

_SQLITE_PREFIX: Final = "sqlite:///"
_SQLITE_OPTIONS: Final = frozenset({"domain", "synchronous", "busy_timeout", "max_size"})
_POSTGRES_OPTIONS: Final = frozenset({"domain", "synchronous"})


def _sqlite_path(url: str) -> str:
    path = url[len(_SQLITE_PREFIX) :]
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ConfigError(
            f"store URL {url!r} names no file: an in-memory SQLite database would lose every "
            "message on restart; use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return path


async def open_store(url: str, **options: Any) -> Store:
    """Open the store named by ``url``, apply pending migrations, and return it.

    Raises ConfigError for a URL or option this relay cannot use (the message names the scheme
    but never repeats a URL that may carry a password), StoreUnavailable if the database cannot
    be opened.
    """
    scheme, sep, _rest = url.partition(":")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not url.startswith(_SQLITE_PREFIX):
            raise ConfigError(
                "an SQLite store URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        unknown = sorted(set(options) - _SQLITE_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown SQLite store option(s): {', '.join(unknown)}")
        # Imported here so a relay configured for another dialect never loads aiosqlite.
        from relay.store.sqlite import SQLiteStore

        store: Store = SQLiteStore(_sqlite_path(url), **options)
    elif scheme in ("postgresql", "postgres"):
        unknown = sorted(set(options) - _POSTGRES_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown PostgreSQL store option(s): {', '.join(unknown)}")
        # Imported here so a relay on SQLite never loads the PostgreSQL driver.
        from relay.store.postgres import PostgresStore

        store = PostgresStore(url, **options)
    else:
        shown = f"{scheme!r}" if sep else "none"
        raise ConfigError(
            f"unknown store URL scheme {shown}: expected sqlite:///PATH or postgresql://…"
        )
    await store.open()
    return store


def schema_version(store: Store) -> int:
    """The schema version of an opened store (``Store.schema_version``)."""
    return store.schema_version
