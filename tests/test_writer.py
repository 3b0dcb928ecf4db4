"""How the group-commit writer forms its groups (relay/store/sql/writer.py): the way out
first, then the rest in order within the group's bounds. The store-level behaviour is in
tests/test_store.py (group commit)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from relay.store.sql.writer import MAX_GROUP_ACCEPTS, MAX_GROUP_OPS, Op, next_group


async def _run(tx: Any) -> tuple[None, tuple[str, ...]]:
    raise AssertionError("not run here")


#: The name of each test operation, by its future.
_NAMES: dict[asyncio.Future[Any], str] = {}


def op(name: str, *, accepts: int = 0, way_out: bool = False, durable: bool = True) -> Op:
    """An operation called ``name`` (read back by :func:`names`) with ``accepts`` envelopes."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    _NAMES[future] = name
    pairs: tuple[tuple[Any, Any], ...] | None = ((None, None),) * accepts if accepts else None
    return Op(_run, future, pairs, durable=durable, way_out=way_out)


def names(ops: list[Op] | deque[Op]) -> list[str]:
    return [_NAMES[o.future] for o in ops]


async def test_leases_form_a_group_of_their_own_ahead_of_older_operations() -> None:
    waiting = deque([op("a1", accepts=100), op("ack"), op("lease", way_out=True, durable=False)])
    waiting.extend([op("a2", accepts=100), op("leased", way_out=True, durable=False)])
    assert names(next_group(waiting)) == ["lease", "leased"]
    assert names(waiting) == ["a1", "ack", "a2"]
    assert names(next_group(waiting)) == ["a1", "ack", "a2"]
    assert not waiting


async def test_a_settle_leads_a_group_the_older_operations_share() -> None:
    # A settle syncs anyway: the operations before it join its group, after it.
    waiting = deque([op("a1", accepts=100), op("lease", way_out=True, durable=False)])
    waiting.extend([op("a2", accepts=100), op("settle", way_out=True)])
    assert names(next_group(waiting)) == ["lease", "settle", "a1", "a2"]
    assert not waiting
    many = MAX_GROUP_ACCEPTS // 2
    waiting = deque([op("a1", accepts=many), op("a2", accepts=many), op("a3", accepts=many)])
    waiting.append(op("settle", way_out=True))
    assert names(next_group(waiting)) == ["settle", "a1", "a2"]
    assert names(waiting) == ["a3"]


async def test_after_a_group_of_the_way_out_the_next_is_taken_in_order() -> None:
    waiting = deque([op("a1", accepts=10), op("lease", way_out=True, durable=False)])
    waiting.append(op("a2", accepts=10))
    assert names(next_group(waiting, way_out_first=False)) == ["a1", "lease", "a2"]


async def test_a_group_holds_a_bounded_number_of_accepted_envelopes() -> None:
    per = MAX_GROUP_ACCEPTS // 4
    waiting = deque(op(f"a{n}", accepts=per) for n in range(10))
    assert names(next_group(waiting)) == ["a0", "a1", "a2", "a3"]
    assert names(next_group(waiting)) == ["a4", "a5", "a6", "a7"]
    assert names(next_group(waiting)) == ["a8", "a9"]
    # Operations without accepts do not count; one larger than the bound runs alone.
    waiting = deque([op("big", accepts=MAX_GROUP_ACCEPTS * 3), op("ack"), op("a", accepts=1)])
    assert names(next_group(waiting)) == ["big", "ack"]
    assert names(next_group(waiting)) == ["a"]


async def test_a_group_holds_a_bounded_number_of_operations() -> None:
    waiting = deque(op(f"o{n}") for n in range(MAX_GROUP_OPS + 3))
    assert len(next_group(waiting)) == MAX_GROUP_OPS
    assert names(waiting) == [f"o{n}" for n in range(MAX_GROUP_OPS, MAX_GROUP_OPS + 3)]
    ways = deque(op(f"w{n}", way_out=True, durable=False) for n in range(MAX_GROUP_OPS + 1))
    assert len(next_group(ways)) == MAX_GROUP_OPS
    assert names(ways) == [f"w{MAX_GROUP_OPS}"]
