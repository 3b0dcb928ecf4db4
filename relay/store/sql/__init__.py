"""The SQL store layer: everything the SQLite and PostgreSQL dialects share.

* :mod:`relay.store.sql.store` — :class:`SqlStore`, the public ``Store`` methods written once
  over a dialect's statements;
* :mod:`relay.store.sql.writer` — the group-commit writer and the :class:`Tx` a write runs on;
* :mod:`relay.store.sql.accept` — accept's plan and interpretation, pure;
* :mod:`relay.store.sql.statements` — the statements a dialect provides, and their parameters;
* :mod:`relay.store.sql.rows` — rows to records;
* :mod:`relay.store.sql.migrations` — the packaged migrations of a dialect.

A dialect (relay/store/sqlite.py, relay/store/postgres.py) subclasses :class:`SqlStore` with its
SQL text, its connections, the translation of its driver's errors and its notifications.
"""

from relay.store.sql import rows
from relay.store.sql.statements import Statements, portable
from relay.store.sql.store import DELETED_CODE, DELETED_REASON, SqlStore
from relay.store.sql.writer import MAX_GROUP_OPS, Op, Tx

__all__ = [
    "DELETED_CODE",
    "DELETED_REASON",
    "MAX_GROUP_OPS",
    "Op",
    "SqlStore",
    "Statements",
    "Tx",
    "portable",
    "rows",
]
