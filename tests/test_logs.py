"""The relay's log (SPEC.md §14.4): one structured line per recipient event and per request, in
text or JSON, and never a token, an Authorization header, a query string or a body."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay import logs
from tests.fedenv import world
from tests.helpers import wait_until
from tests.mcpenv import add_mcp_agent, await_message, running, stdio_endpoint

# --- the formats, without a relay ---------------------------------------------------------------


def record(msg: str, fields: dict[str, Any] | None = None) -> logging.LogRecord:
    rec = logging.makeLogRecord(
        {"name": "synq.delivery", "levelname": "INFO", "levelno": 20, "msg": msg}
    )
    if fields is not None:
        rec.fields = fields
    rec.created = 1_700_000_000.25
    rec.msecs = 250
    return rec


@pytest.mark.parametrize(
    ("fields", "text_tail"),
    [
        (None, "sent"),
        ({"event": "sent", "id": "01", "code": "2.0.0"}, "sent event=sent id=01 code=2.0.0"),
        ({"reason": "two words"}, 'sent reason="two words"'),
        ({"quote": 'a"b'}, 'sent quote="a\\"b"'),
        ({"empty": ""}, 'sent empty=""'),
        ({"delay": 1.5, "attempt": 2}, "sent delay=1.5 attempt=2"),
    ],
)
def test_text_lines(fields: dict[str, Any] | None, text_tail: str) -> None:
    line = logs.TextFormatter().format(record("sent", fields))
    assert line == f"2023-11-14T22:13:20.250Z INFO synq.delivery: {text_tail}"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (None, {}),
        ({"event": "sent", "to": "b@x.test"}, {"event": "sent", "to": "b@x.test"}),
        ({"delay": 1.5}, {"delay": 1.5}),
        # A field never overwrites the line's own members.
        ({"msg": "forged", "level": "ERROR"}, {}),
    ],
)
def test_json_lines(fields: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    doc = json.loads(logs.JsonFormatter().format(record("sent", fields)))
    assert doc == {
        "ts": "2023-11-14T22:13:20.250Z",
        "level": "INFO",
        "logger": "synq.delivery",
        "msg": "sent",
        **expected,
    }


def test_none_fields_are_left_out() -> None:
    out = io.StringIO()
    logger = logging.getLogger("synq.test.none")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logs.event(logger, "x", event="x", relay=None, code="2.0.0")
    finally:
        logger.removeHandler(handler)
    assert json.loads(out.getvalue()) | {"ts": ""} == {
        "ts": "",
        "level": "INFO",
        "logger": "synq.test.none",
        "msg": "x",
        "event": "x",
        "code": "2.0.0",
    }


# --- a full send across two relays --------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything the relays log at INFO, as JSON lines (a handler on the root logger), with the
    libraries quiet as ``synq serve`` keeps them."""
    out = io.StringIO()
    quieted = logs.quiet_libraries()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, before in quieted.items():
            logging.getLogger(name).setLevel(before)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line]


async def test_a_full_send_logs_every_recipient_event_and_request_and_no_secret(
    tmp_path: Path, captured: io.StringIO
) -> None:
    marker = "BODY-MARKER-7f3a"
    async with world(tmp_path, "acme.test", "globex.test") as w:
        acme, globex = w.orgs["acme.test"], w.orgs["globex.test"]
        alice, bob = await acme.agent("alice"), await globex.agent("bob")
        await add_mcp_agent(globex, "tools", stdio_endpoint())
        async with running(w):
            sent = await w.send(
                acme,
                alice,
                {
                    "to": [bob.address, "tools@globex.test"],
                    "content_type": "application/mcp-call+json",
                    "body": {"tool": "echo", "arguments": {"text": marker}},
                },
            )
            await await_message(w, acme, alice, lambda m: m["in_reply_to"] == sent["id"])
            # A query string that names a secret stays out of the access log.
            async with w.http.get(
                f"{globex.url}/synq/v1/inbox",
                params={"wait": 0, "access_token": alice.token},
                headers=bob.auth,
            ) as resp:
                assert resp.status == 200
            await asyncio.sleep(0)

    text = captured.getvalue()
    assert alice.token not in text
    assert bob.token not in text
    assert "Bearer" not in text
    assert marker not in text

    events = [line for line in lines(captured) if line["logger"] == "synq.delivery"]
    about = [e for e in events if e["id"] == sent["id"]]
    seen = {(e["event"], e["to"], e["destination"]) for e in about}
    assert ("accepted", bob.address, "globex.test") in seen  # at acme, queued
    assert ("sent", bob.address, "globex.test") in seen
    assert ("accepted", bob.address, "local:bob") in seen  # at globex
    assert ("accepted", "tools@globex.test", "local:tools") in seen
    assert ("delivered", "tools@globex.test", "local:tools") in seen
    for e in about:
        assert e["from"] == alice.address
    sent_line = next(e for e in about if e["event"] == "sent")
    assert sent_line["code"].startswith("2.")
    assert sent_line["attempt"] == 1
    assert sent_line["relay"] == globex.url

    access = [line for line in lines(captured) if line["logger"] == "synq.access"]
    paths = {(a["method"], a["path"]) for a in access}
    assert ("POST", "/synq/v1/messages") in paths
    assert any(m == "PUT" and p.startswith("/synq/v1/federation/txn/") for m, p in paths)
    inbox = [a for a in access if a["path"] == "/synq/v1/inbox" and a["status"] == 200]
    assert inbox
    assert {"method", "path", "status", "bytes", "duration_ms", "remote"} <= set(inbox[0])
    assert all("?" not in a["path"] for a in access)


async def test_a_client_that_hangs_up_is_logged_499_not_a_server_error(
    tmp_path: Path, captured: io.StringIO
) -> None:
    """A long poll whose client leaves before the answer: the handler is cancelled, and the
    access log says 499 ("client closed request"), not 500 — the relay did not fail."""
    async with world(tmp_path, "acme.test") as w:
        acme = w.orgs["acme.test"]
        alice = await acme.agent("alice")
        async with running(w):
            poll = asyncio.create_task(
                w.http.get(
                    f"{acme.url}/synq/v1/inbox", params={"wait": 30}, headers=alice.auth
                ).__aenter__()
            )

            await wait_until(lambda: acme.relay.sources.in_flight.held("127.0.0.1") == 1)
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll

            def logged() -> list[dict[str, Any]]:
                return [
                    a
                    for a in lines(captured)
                    if a["logger"] == "synq.access" and a["path"] == "/synq/v1/inbox"
                ]

            await wait_until(lambda: bool(logged()))
    [line] = logged()
    assert line["status"] == 499


def test_configure_quiets_the_libraries_and_replaces_its_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in logs.NOISY_LOGGERS}
    out = io.StringIO()
    try:
        logs.configure("json", "info", out)
        logs.configure("json", "info", out)  # a second call does not double lines
        logging.getLogger("httpx").info("HTTP Request: GET http://x")
        logging.getLogger("synq.delivery").info("delivered")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before[0]:
            root.addHandler(handler)
        root.setLevel(before[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [w["msg"] for w in written] == ["delivered"]
