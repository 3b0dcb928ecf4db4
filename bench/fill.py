"""Fill a relay's federation queue fast, through the store API, while the relay is not running.

    python -m bench.fill CONFIG N TO [--workers 2]

writes N envelopes from ``alice@<domain>`` to ``TO`` (an address at another domain), each
signed with the relay's current key exactly as a submission would be, and accepted with
``Store.accept_many`` in batches: the same rows an API submission leaves (envelope, queued
recipient, ``accepted`` event). Signing runs in worker processes, the writes in this one; the
store is opened with ``synchronous=NORMAL`` since only the result matters here, not the
durability of the fill. Prints ``filled N in S s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import BODY
from relay.config import load_config
from relay.core import jws
from relay.core.ids import uuid7
from relay.core.limits import DEFAULT_LIFETIME
from relay.keyring import load_keyring
from relay.store import open_store
from relay.store.base import NewEnvelope

CHUNK = 2_000

_key: jws.SigningKey | None = None


def _init(keys_dir: str) -> None:
    global _key
    _key = load_keyring(Path(keys_dir)).signing_key(datetime.now(UTC))


def _timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _sign_chunk(args: tuple[str, str, int]) -> list[tuple[str, str, str]]:
    """(id, created, token) for ``count`` envelopes from ``sender`` to ``to``."""
    sender, to, count = args
    assert _key is not None
    now = datetime.now(UTC).replace(microsecond=0)
    created, expires = _timestamp(now), _timestamp(now + DEFAULT_LIFETIME)
    out = []
    for _ in range(count):
        id_ = uuid7(now)
        payload = json.dumps(
            {
                "v": 1,
                "id": id_,
                "from": sender,
                "to": [to],
                "created": created,
                "expires": expires,
                "kind": "message",
                "content_type": "text/plain",
                "body": BODY,
            },
            separators=(",", ":"),
        ).encode()
        out.append((id_, created, jws.sign(payload, _key)))
    return out


async def fill(config_path: Path, n: int, to: str, workers: int) -> float:
    config = load_config(config_path)
    domain = config.relay.domain
    sender = f"alice@{domain}"
    store = await open_store(config.store_url, domain=domain, synchronous="NORMAL")
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        with ProcessPoolExecutor(
            workers, initializer=_init, initargs=(str(config.keys_dir),)
        ) as pool:
            chunks = [(sender, to, min(CHUNK, n - i)) for i in range(0, n, CHUNK)]
            pending = [loop.run_in_executor(pool, _sign_chunk, c) for c in chunks[: workers * 2]]
            next_chunk = len(pending)
            while pending:
                signed = await pending.pop(0)
                if next_chunk < len(chunks):
                    pending.append(loop.run_in_executor(pool, _sign_chunk, chunks[next_chunk]))
                    next_chunk += 1
                now = datetime.now(UTC)
                created = now.replace(microsecond=0)
                items = [
                    NewEnvelope(
                        origin=domain,
                        id=id_,
                        sender=sender,
                        token=token,
                        created=created,
                        expires=created + timedelta(seconds=DEFAULT_LIFETIME.total_seconds()),
                        thread=None,
                        kind="message",
                        local=[],
                        remote=[to],
                        via="api",
                    )
                    for id_, _created, token in signed
                ]
                await store.accept_many(items, now)
    finally:
        await store.close()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("to")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    seconds = asyncio.run(fill(args.config, args.n, args.to, args.workers))
    print(f"filled {args.n} in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
