"""The relay's log: one structured line per recipient event and per HTTP request (SPEC.md §14.4).

Standard library logging, two formats:

* ``text``: ``2026-12-06T18:00:00.123Z INFO synq.delivery delivered id=0190… to=bob@acme.test``
  — the message, then every structured field as ``key=value``;
* ``json``: one JSON object a line (``{"ts", "level", "logger", "msg", …fields}``), for
  collectors.

A structured line passes its fields as ``extra={"fields": {...}}`` (see :func:`event`); the
field names are stable, part of what operators build dashboards on:

==============  ===============================================================================
``event``       ``accepted``, ``deferred``, ``bounced``, ``delivered``, ``sent``, ``expired``
``id``          the envelope id
``from``        the envelope's sender
``to``          the recipient
``destination`` the partner domain, or ``local:<agent>`` for a local agent
``relay``       the partner relay's URL or the agent's endpoint, when known
``code``        RFC 3463 status
``attempt``     which attempt this was (1 for the first)
``delay``       seconds until the next attempt (``deferred``)
==============  ===============================================================================

What is never logged: bearer tokens, ``Authorization`` headers, query strings (they may carry
secrets), envelope bodies. The access log (relay/server/http.py) writes the path only.

Library loggers (aiohttp's access log, httpx, httpcore, the MCP and A2A SDKs) are set to
``WARNING``: their per-request lines would repeat the relay's own and fill a CLI's output.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Final

import orjson

__all__ = [
    "FIELDS",
    "NOISY_LOGGERS",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "event",
    "quiet_libraries",
]

#: The attribute of a LogRecord that carries its structured fields.
FIELDS: Final = "fields"
#: Loggers of libraries whose INFO lines are noise for an operator.
NOISY_LOGGERS: Final = (
    "aiohttp.access",
    "aiohttp.server",
    "httpx",
    "httpx2",
    "httpcore",
    "mcp",
    "a2a",
    "asyncio",
    "opentelemetry",
)


def event(logger: logging.Logger, message: str, /, **fields: Any) -> None:
    """Log one structured INFO line: ``message`` and its ``fields`` (None values dropped).

    The record is made and handled as ``Logger.info`` would, less the search for the calling
    frame (``findCaller``): no format of ours prints it, and a relay writes one such line per
    recipient and event, so every microsecond of a line counts (bench ``throughput``)."""
    if logger.isEnabledFor(logging.INFO):
        clean = {k: v for k, v in fields.items() if v is not None}
        record = logger.makeRecord(
            logger.name, logging.INFO, "", 0, message, (), None, None, {FIELDS: clean}
        )
        logger.handle(record)


_last_second: list[Any] = [-1, ""]


def _timestamp(record: logging.LogRecord) -> str:
    """RFC 3339 UTC with milliseconds. The formatted second is kept: a busy relay writes many
    lines a second, and ``strftime`` is most of a line's cost otherwise."""
    second = int(record.created)
    cached = _last_second
    if cached[0] != second:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cached[0] = second
    return f"{cached[1]}.{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, FIELDS, None)
    return fields if isinstance(fields, Mapping) else {}


#: A text value that needs quoting to stay one ``key=value`` token.
_NEEDS_QUOTES: Final = re.compile(r'[\s"=]')


class TextFormatter(logging.Formatter):
    """``<UTC time> <LEVEL> <logger>: <message> key=value …``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            # Inlined, not a function per field: this runs for every field of every line.
            parts = []
            for key, value in fields.items():
                text = value if isinstance(value, str) else str(value)
                if not text or _NEEDS_QUOTES.search(text):
                    text = orjson.dumps(text).decode()
                parts.append(f"{key}={text}")
            line += " " + " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(
    format: str = "text",
    level: str | int = "info",
    stream: IO[str] | None = None,
    *,
    force: bool = True,
) -> logging.Handler | None:
    """Send the root logger to ``stream`` (stderr) in ``format``; quiet the library loggers.
    Replaces handlers set before, so a second call (``synq serve`` after the CLI's default)
    does not double every line. Without ``force``, a root logger that has handlers already (a
    host program's, a test runner's) is left as it is, as ``logging.basicConfig`` does; the
    libraries are quieted all the same. Returns the handler added, if any."""
    root = logging.getLogger()
    if not force and root.handlers:
        quiet_libraries()
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet_libraries()
    return handler


def quiet_libraries() -> dict[str, int]:
    """Set the library loggers of :data:`NOISY_LOGGERS` to WARNING; return their levels before
    (for a caller that restores them)."""
    before = {}
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        before[name] = logger.level
        logger.setLevel(logging.WARNING)
    return before
