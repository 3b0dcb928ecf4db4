"""The packaged migrations of one dialect: ``relay/store/migrations/<dialect>/NNNN_name.sql``,
numbered from 0001 without gaps. ``SqlStore.open`` applies the pending ones in one transaction
and records each in ``schema_migrations``; the newest number is the schema version."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from relay.core.errors import InternalError

_MIGRATION_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    #: What the dialect runs, in order (``Tx.script``): the file's statements one by one, or
    #: the whole file as one script where the driver takes several statements at once.
    statements: tuple[str, ...]


@functools.cache
def load(folder: str, split: Callable[[str], tuple[str, ...]]) -> tuple[Migration, ...]:
    """The migrations in ``migrations/<folder>``, in order, each file cut by ``split``."""
    directory = resources.files("relay.store").joinpath("migrations").joinpath(folder)
    found: list[Migration] = []
    for entry in directory.iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match is None:
            continue
        text = entry.read_text(encoding="utf-8")
        found.append(Migration(int(match.group(1)), match.group(2), split(text)))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise InternalError(f"the packaged {folder} migrations are not numbered 0001, 0002, …")
    return tuple(found)
