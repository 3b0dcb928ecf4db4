"""Back-pressure in front of the store: refuse what cannot be kept, instead of queueing it.

Every envelope the relay takes into custody is written before the answer (SPEC.md §8.6). When the
store cannot keep up — a slow disk, a PostgreSQL server under load, a full disk — writes pile up
in memory, each holding its envelope, and every caller waits. :class:`CustodyGate` bounds that
pile: past :data:`MAX_PENDING_WRITES` writes or :data:`MAX_PENDING_BYTES` bytes in flight, a new
write is refused at once with ``StoreUnavailable`` (``503`` on the API, ``4.3.0`` per envelope
in federation, RFC 3463 §3.4 "mail system full"), and the sender keeps the envelope and retries.

A write may also be given a deadline. Federation uses one (:data:`FEDERATION_WRITE_TIMEOUT`):
when it passes, the partner hears 4.3.0 and retries later. The write itself is not cancelled
(it may be half way through a group commit) — if it lands after all, the partner's retry is
answered ``duplicate`` (the store deduplicates by envelope), so nothing is lost or delivered
twice. The local API has no such deadline: a client that sends without an ``Idempotency-Key``
(SPEC.md §6.2) has no deduplication to fall back on, so a write that lands after a 503 would be
sent twice when it retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from relay.core.errors import StoreUnavailable

__all__ = [
    "FEDERATION_WRITE_TIMEOUT",
    "MAX_PENDING_BYTES",
    "MAX_PENDING_WRITES",
    "CustodyGate",
]

T = TypeVar("T")

#: Custody writes in flight at once. SQLite group commit takes ~1,000 concurrent accepts in
#: about 0.13 s, so a healthy store never comes near; a stalled one stops taking more work
#: here instead of holding thousands of requests (and their sockets) open. Stops memory and
#: connection exhaustion when the store stalls.
MAX_PENDING_WRITES: Final = 1_000

#: Envelope bytes held by writes in flight. One federation transaction may carry 4 MiB, so the
#: count alone would allow gigabytes; this bounds the memory pinned by a stalled store.
MAX_PENDING_BYTES: Final = 128 * 1024 * 1024

#: How long an inbound transaction waits for its commit before answering 4.3.0. Below the
#: sender's own transaction timeout (60 s in relay.federation.outbound), so a partner gets a
#: per-envelope "retry later" rather than a broken connection it cannot tell apart from ours.
FEDERATION_WRITE_TIMEOUT: Final = 20.0


class CustodyGate:
    """Counts custody writes in flight and refuses new ones past the bounds."""

    def __init__(
        self, max_writes: int = MAX_PENDING_WRITES, max_bytes: int = MAX_PENDING_BYTES
    ) -> None:
        self.max_writes = max_writes
        self.max_bytes = max_bytes
        self.writes = 0
        self.bytes = 0

    async def write(
        self, op: Coroutine[Any, Any, T], *, size: int, timeout: float | None = None
    ) -> T:
        """Run ``op`` (a store write of ``size`` envelope bytes) unless the gate is full.

        The write is shielded: a caller that gives up (its client hung up, its deadline passed)
        does not cancel a commit half done. It counts against the bounds until it really ends.
        """
        if self.writes >= self.max_writes or (self.writes and self.bytes + size > self.max_bytes):
            op.close()
            raise StoreUnavailable("the relay is storing too much at once; retry later")
        self.writes += 1
        self.bytes += size
        task = asyncio.ensure_future(op)
        task.add_done_callback(lambda done: self._release(done, size))
        try:
            if timeout is None:
                return await asyncio.shield(task)
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            raise StoreUnavailable("the store did not commit in time; retry later") from None

    def _release(self, task: asyncio.Future[Any], size: int) -> None:
        self.writes -= 1
        self.bytes -= size
        if not task.cancelled():
            # Retrieved here so that a write whose caller gave up does not log "exception
            # never retrieved"; the caller that still waits gets it from the shield.
            task.exception()
