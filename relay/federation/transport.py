"""HTTP transport for outbound transactions (aiohttp). Every client-side failure becomes an
``AttemptFailed`` with the status the sender records (SPEC.md §8.7), here at the boundary: no
aiohttp exception reaches the sender."""

from __future__ import annotations

import asyncio
import io

import aiohttp
from yarl import URL

from relay.core import status as st
from relay.core.errors import AttemptFailed, SynqError
from relay.core.limits import MAX_TXN_BYTES
from relay.discovery.ssrf import AddressPolicy
from relay.federation.outbound import TRANSACTION_TIMEOUT, TransactionTooLarge

#: Largest answer read from a partner: results for MAX_TXN_ENVELOPES envelopes with reasons fit
#: in far less; the bound stops a hostile partner streaming an endless body into our memory.
MAX_ANSWER_BYTES = min(MAX_TXN_BYTES, 1024 * 1024)


async def read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes when it is longer (the caller refuses
    it). A loop, because ``StreamReader.read(n)`` returns what is buffered — up to ``n`` bytes,
    often a single TCP segment's worth — not ``n`` bytes: reading once would cut an answer of a
    few hundred results short and make the sender retry a transaction that succeeded."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in delay-seconds (RFC 9110 §10.2.3), or None. The HTTP-date form is
    not read: Synq relays send seconds (SPEC.md §5.2), and a date would need the partner's
    clock to agree with ours."""
    if value is None or not value.strip().isdigit() or not value.strip().isascii():
        return None
    return float(value.strip())


class HttpTransport:
    """Sends transactions over a shared ``aiohttp.ClientSession`` (connection reuse per
    partner; the session's connector carries the SSRF guard)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        policy: AddressPolicy,
        timeout: float = TRANSACTION_TIMEOUT,
    ) -> None:
        self.session = session
        self.policy = policy
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def put_transaction(self, relay_url: str, txn_id: str, body: bytes) -> bytes:
        url = f"{relay_url.rstrip('/')}/synq/v1/federation/txn/{txn_id}"
        try:
            # aiohttp does not pass IP literals through the guarded resolver: the scheme and
            # literal-address rules must be applied here, before any connection is made.
            self.policy.check_url(URL(url))
            async with self.session.put(
                url,
                # A file-like body is streamed; raw bytes over 1 MiB would be copied in one go on
                # the event loop (aiohttp warns about exactly that).
                data=io.BytesIO(body),
                headers={"Content-Type": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            ) as resp:
                answer = await read_bounded(resp.content, MAX_ANSWER_BYTES)
                if len(answer) > MAX_ANSWER_BYTES:
                    raise AttemptFailed(st.REMOTE_PROTOCOL, "answer too large")
                if resp.status == 200:
                    return answer
                if resp.status == 413:
                    raise TransactionTooLarge(
                        st.TOO_BIG, "partner relay refused the transaction's size"
                    )
                if resp.status in (429, 503):
                    raise AttemptFailed(
                        st.CONGESTED,
                        f"partner relay answered {resp.status}",
                        retry_after=retry_after(resp.headers.get("Retry-After")),
                    )
                if resp.status >= 500:
                    raise AttemptFailed(st.REMOTE_PROTOCOL, f"partner relay answered {resp.status}")
                # A 4xx for the whole transaction means the two relays disagree about the
                # protocol (or a proxy is in the way). Nothing about one envelope is known to be
                # permanent, so keep it queued: it bounces at expiry if nobody fixes it.
                raise AttemptFailed(
                    st.REMOTE_PROTOCOL, f"partner relay refused the transaction ({resp.status})"
                )
        except AttemptFailed:
            raise
        except SynqError as exc:
            # The guarded connector refuses the relay host at connect time (discovery errors
            # pass through aiohttp untouched): keep the refusal's own status.
            raise AttemptFailed(exc.status, exc.message) from None
        except TimeoutError:
            raise AttemptFailed(st.NO_ANSWER, "timed out") from None
        except aiohttp.ClientConnectorError as exc:
            raise AttemptFailed(
                st.NO_ANSWER, f"cannot connect ({exc.os_error.strerror or 'refused'})"
            ) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AttemptFailed(
                st.BAD_CONNECTION, f"connection failed ({type(exc).__name__})"
            ) from None
