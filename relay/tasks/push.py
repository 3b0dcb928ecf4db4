"""Push notifications of the A2A face's tasks: each event of a task POSTed to its webhooks.

A client names webhooks for a task (A2A 1.0 §4.3, ``TaskPushNotificationConfig``); the task
store keeps them with the task, and every event the task logs is sent to each of them by this
sender, in the background and best effort (A2A 1.0 §4.3.3): a webhook that is slow, down or
refusing costs a slot for at most ``PUSH_TIMEOUT`` and is logged, never a task's progress. A
webhook is a URL a client chose, so it is checked and fetched under the same SSRF rules as a
partner's documents (relay/discovery/ssrf.py, SPEC.md §7.6), before it is stored and again before
each POST, and redirects are never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Final

import aiohttp
from a2a.types import StreamResponse, TaskPushNotificationConfig
from a2a.utils import errors as a2a
from google.protobuf import json_format
from yarl import URL

from adapters.a2a import wire
from relay.core import jsonutil
from relay.core.errors import SynqError

__all__ = [
    "MAX_CONCURRENT_PUSHES",
    "MAX_PENDING_PUSHES",
    "MAX_PUSH_CONFIGS",
    "PUSH_TIMEOUT",
    "PushSender",
    "push_configs",
    "push_json",
]

log = logging.getLogger("synq.a2a.face")

#: Push-notification configs per task (A2A 1.0 §4.3). Each one is a POST per event: stops a
#: client from multiplying the relay's outbound requests without bound.
MAX_PUSH_CONFIGS: Final = 10
#: Push deliveries in flight at once, and how long one may take. Pushes are best effort
#: (A2A 1.0 §4.3.3): a slow webhook costs a slot for this long, never a task's progress.
MAX_CONCURRENT_PUSHES: Final = 16
PUSH_TIMEOUT: Final = 10.0
#: Pushes waiting for a slot. Beyond it new pushes are dropped (and logged) rather than
#: queued without bound behind dead webhooks.
MAX_PENDING_PUSHES: Final = 1_000


def push_configs(text: str) -> list[TaskPushNotificationConfig]:
    """A task's stored webhook configs (``A2ATask.push``)."""
    configs: list[TaskPushNotificationConfig] = []
    for item in json.loads(text):
        configs.append(json_format.ParseDict(item, TaskPushNotificationConfig()))
    return configs


def push_json(configs: Sequence[TaskPushNotificationConfig]) -> str:
    """Webhook configs in the form a task stores them."""
    return json.dumps([wire.to_json(c) for c in configs], separators=(",", ":"))


class PushSender:
    """Posts task events to webhooks in the background; see the module docstring.

    ``session`` is the HTTP client the posts are made with (its connector carries the SSRF
    guard); without one nothing is pushed. ``check_url`` refuses a URL the SSRF policy refuses
    (``AddressPolicy.check_url``) by raising a ``SynqError``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        check_url: Callable[[URL], URL] | None = None,
    ) -> None:
        self._session = session
        self._check_url = check_url
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_PUSHES)
        self._pushes: set[asyncio.Task[None]] = set()

    def normalise(
        self, task_id: str, config: TaskPushNotificationConfig
    ) -> TaskPushNotificationConfig:
        """``config`` for task ``task_id`` as it is stored: its id defaulted, its URL checked
        (an http(s) URL the SSRF policy allows) — or A2A's invalid-params error."""
        normal = TaskPushNotificationConfig()
        normal.CopyFrom(config)
        normal.task_id = task_id
        normal.id = normal.id or task_id
        try:
            url = URL(normal.url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("not an http(s) URL")
            if self._check_url is not None:
                self._check_url(url)
        except (ValueError, SynqError) as exc:
            why = exc.message if isinstance(exc, SynqError) else str(exc)
            raise a2a.InvalidParamsError(message=f"push notification URL refused: {why}") from None
        return normal

    def send(self, push: str, events: Sequence[StreamResponse]) -> None:
        """Send ``events`` to the webhooks of ``push`` (a task's stored configs) in the
        background."""
        if not events or self._session is None or push == "[]":
            return
        for config in push_configs(push):
            for event in events:
                if len(self._pushes) >= MAX_PENDING_PUSHES:
                    log.warning(
                        "push to %s dropped: too many pushes pending", URL(config.url).origin()
                    )
                    return
                task = asyncio.create_task(self._send(config, event))
                self._pushes.add(task)
                task.add_done_callback(self._pushes.discard)

    async def _send(self, config: TaskPushNotificationConfig, event: StreamResponse) -> None:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if config.token:
            headers["X-A2A-Notification-Token"] = config.token
        if config.HasField("authentication") and config.authentication.scheme:
            auth = config.authentication
            if auth.credentials:
                headers["Authorization"] = f"{auth.scheme} {auth.credentials}"
        try:
            url = URL(config.url)
            if self._check_url is not None:
                self._check_url(url)
            async with (
                self._slots,
                asyncio.timeout(PUSH_TIMEOUT),
                self._session.post(
                    url,
                    data=jsonutil.dumps(wire.to_json(event)),
                    headers=headers,
                    allow_redirects=False,
                ) as response,
            ):
                await response.read()
                if response.status >= 300:
                    log.info("push to %s answered HTTP %d", url.origin(), response.status)
        except (aiohttp.ClientError, TimeoutError, SynqError, ValueError) as exc:
            log.info("push to %s failed: %s", config.url[:100], type(exc).__name__)

    async def close(self) -> None:
        """Stop the pushes in flight (they are best effort: nothing waits for them)."""
        for task in list(self._pushes):
            task.cancel()
        for task in list(self._pushes):
            with contextlib.suppress(asyncio.CancelledError):
                await task
