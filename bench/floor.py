"""The floor: the per-envelope work of relay→relay with no HTTP and no processes in between.

One process, one event loop, the relay's own functions, sequentially, in batches of
``MAX_TXN_ENVELOPES`` (what one federation transaction carries and the receiver commits at
once):

1. **build**: validate the envelope (``envelope.from_dict``) and encode its JSON, as the
   router does for a submission;
2. **sign**: ``jws.sign``;
3. **accept at the sender**: ``SQLiteStore.accept_many`` of the batch, the recipient queued for
   the partner, ``synchronous=FULL`` (one fsync per batch);
4. **verify at the receiver**: ``jws.parse_compact`` + ``jws.verify`` + ``envelope.decode`` +
   ``check_times``;
5. **accept at the receiver**: ``accept_many`` into bob's inbox on a second store, FULL.

``queue`` adds what the sender's queue does besides: ``lease_due`` of the batch before the
transaction and ``settle`` (recipients ``sent``) after it: two more commits per batch. The relay
does both; the floor proper (``floor``) leaves them out, so relay / floor is conservative.

Each stage is timed on its own, so the table shows where the CPU goes per envelope.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import BODY, workdir
from relay.core import envelope as env_mod
from relay.core import jws
from relay.core.ids import hash_token, new_token, uuid7
from relay.core.limits import MAX_TXN_ENVELOPES
from relay.store.base import NewEnvelope, Outcome
from relay.store.sqlite import SQLiteStore

STAGES = ("build", "sign", "accept_sender", "verify", "accept_receiver", "lease", "settle")


@dataclass
class FloorResult:
    n: int
    batch: int
    seconds: dict[str, float] = field(default_factory=dict)

    def per_envelope_us(self) -> dict[str, float]:
        return {k: v / self.n * 1e6 for k, v in self.seconds.items()}

    def rate(self, stages: tuple[str, ...]) -> float:
        return self.n / sum(self.seconds.get(s, 0.0) for s in stages)

    @property
    def floor_rate(self) -> float:
        """Envelopes/s of build, sign, verify and the two accepts."""
        return self.rate(("build", "sign", "accept_sender", "verify", "accept_receiver"))

    @property
    def with_queue_rate(self) -> float:
        """The floor plus the sender's lease and settle."""
        return self.rate(STAGES)

    @property
    def cpu_only_rate(self) -> float:
        """Envelopes/s of build, sign and verify alone (no store)."""
        return self.rate(("build", "sign", "verify"))


async def run(n: int, base: Path, batch: int = MAX_TXN_ENVELOPES) -> FloorResult:
    workdir(base)
    key = jws.SigningKey.generate("s1")
    public = key.public_key
    sender_store = SQLiteStore(base / "acme.db", domain="acme.test", synchronous="FULL")
    receiver_store = SQLiteStore(base / "globex.db", domain="globex.test", synchronous="FULL")
    await sender_store.open()
    await receiver_store.open()
    result = FloorResult(n=n, batch=batch, seconds=dict.fromkeys(STAGES, 0.0))
    t = result.seconds
    try:
        now = datetime.now(UTC)
        await receiver_store.create_agent("bob", "inbox", hash_token(new_token()), None, now)
        done = 0
        while done < n:
            size = min(batch, n - done)
            done += size

            tick = time.perf_counter()
            now = datetime.now(UTC).replace(microsecond=0)
            envelopes = [
                env_mod.from_dict(
                    {
                        "v": 1,
                        "id": uuid7(now),
                        "from": "alice@acme.test",
                        "to": ["bob@globex.test"],
                        "created": now,
                        "expires": now + timedelta(days=2),
                        "kind": "message",
                        "content_type": "text/plain",
                        "body": BODY,
                    }
                )
                for _ in range(size)
            ]
            payloads = [env_mod.encode(e) for e in envelopes]
            t["build"] += time.perf_counter() - tick

            tick = time.perf_counter()
            tokens = [jws.sign(p, key) for p in payloads]
            t["sign"] += time.perf_counter() - tick

            tick = time.perf_counter()
            items = [
                NewEnvelope(
                    origin="acme.test",
                    id=e.id,
                    sender=e.from_,
                    token=tok,
                    created=e.created,
                    expires=e.expires,
                    thread=None,
                    kind=e.kind,
                    local=[],
                    remote=["bob@globex.test"],
                    via="api",
                )
                for e, tok in zip(envelopes, tokens, strict=True)
            ]
            await sender_store.accept_many(items, now)
            t["accept_sender"] += time.perf_counter() - tick

            tick = time.perf_counter()
            leased = await sender_store.lease_due(
                datetime.now(UTC), lease_until=now + timedelta(minutes=2), limit=size
            )
            t["lease"] += time.perf_counter() - tick

            tick = time.perf_counter()
            received = []
            check_at = datetime.now(UTC)
            for row in leased:
                parsed = jws.parse_compact(row.token)
                jws.verify(parsed, public)
                envelope = env_mod.decode(parsed.payload)
                env_mod.check_times(envelope, check_at)
                received.append((envelope, row.token))
            t["verify"] += time.perf_counter() - tick

            tick = time.perf_counter()
            inbound = [
                NewEnvelope(
                    origin=e.sender.domain,
                    id=e.id,
                    sender=e.from_,
                    token=tok,
                    created=e.created,
                    expires=e.expires,
                    thread=e.thread,
                    kind=e.kind,
                    local=["bob"],
                    remote=[],
                    via="federation:acme.test",
                )
                for e, tok in received
            ]
            accepted = await receiver_store.accept_many(inbound, check_at)
            t["accept_receiver"] += time.perf_counter() - tick
            if len(accepted) != size or any(a.duplicate for a in accepted):
                raise RuntimeError("the floor's receiver did not accept every envelope")

            tick = time.perf_counter()
            outcomes = [
                Outcome(
                    origin=r.origin,
                    id=r.id,
                    recipient=r.recipient,
                    state="sent",
                    code="2.0.0",
                    reason="accepted",
                    hop="http://127.0.0.1",
                )
                for r in leased
            ]
            await sender_store.settle(outcomes, [], datetime.now(UTC))
            t["settle"] += time.perf_counter() - tick
    finally:
        await sender_store.close()
        await receiver_store.close()
    return result
