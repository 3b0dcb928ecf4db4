"""The error tree and its wire form (SPEC.md §5), status codes, and the core's import boundary."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import relay.core
from relay.core import errors, status
from relay.core import status as st
from relay.core.errors import AttemptFailed, PeerError, RateLimited, RelayError, SynqError

CODE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def error_classes() -> list[type[SynqError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, SynqError) and obj.__module__ == errors.__name__
    ]


#: Every class of the tree with its wire answer: code, RFC 3463 status, HTTP status (SPEC.md
#: §5.3). ``AttemptFailed``'s status is its class default; each instance carries its own.
TREE: list[tuple[type[SynqError], str, str, int]] = [
    (SynqError, "error", "5.0.0", 500),
    (PeerError, "peer_error", "5.0.0", 400),
    (errors.MalformedRequest, "malformed_request", "5.5.2", 400),
    (errors.RequestTimeout, "malformed_request", "5.5.2", 408),
    (errors.MethodNotAllowed, "malformed_request", "5.5.2", 405),
    (errors.UnsupportedMediaType, "malformed_request", "5.5.2", 415),
    (errors.InvalidAddress, "invalid_address", "5.1.3", 400),
    (errors.InvalidEnvelope, "invalid_envelope", "5.6.0", 422),
    (errors.EnvelopeExpired, "expired", "5.4.7", 422),
    (errors.EnvelopeFromFuture, "created_in_future", "5.7.0", 422),
    (errors.BadSignature, "bad_signature", "5.7.7", 422),
    (errors.UnknownKey, "unknown_key", "5.7.7", 422),
    (errors.Unauthenticated, "unauthenticated", "5.7.8", 401),
    (errors.Forbidden, "forbidden", "5.7.1", 403),
    (errors.NotFound, "not_found", "5.1.1", 404),
    (errors.UnknownRecipient, "unknown_recipient", "5.1.1", 422),
    (errors.WrongDomain, "wrong_domain", "5.1.2", 422),
    (errors.Conflict, "conflict", "5.5.4", 409),
    (errors.IdempotencyKeyReused, "idempotency_key_reused", "5.5.4", 422),
    (errors.PayloadTooLarge, "too_large", "5.3.4", 413),
    (RateLimited, "rate_limited", "4.7.0", 429),
    (errors.SignatureRequired, "signature_required", "5.7.8", 401),
    (errors.StaleSignature, "stale_signature", "5.7.0", 401),
    (errors.ReplayedRequest, "replayed_request", "5.7.0", 401),
    (errors.DigestMismatch, "digest_mismatch", "5.7.7", 400),
    (RelayError, "relay_error", "4.0.0", 500),
    (errors.StoreUnavailable, "store_unavailable", "4.3.0", 503),
    (errors.DiscoveryError, "discovery_failed", "4.4.3", 502),
    (errors.NoSuchDomain, "no_such_domain", "5.1.2", 502),
    (errors.MisconfiguredDomain, "misconfigured_domain", "5.1.2", 502),
    (errors.AddressRefused, "address_refused", "5.7.1", 502),
    (errors.AgentUnreachable, "agent_unreachable", "4.4.1", 502),
    (errors.BadAgentCard, "bad_agent_card", "5.6.0", 502),
    (AttemptFailed, "attempt_failed", "4.0.0", 502),
    (errors.ConfigError, "config_error", "4.0.0", 500),
    (errors.InternalError, "internal_error", "4.0.0", 500),
]
TREE_PARAMS = [pytest.param(*row, id=row[0].__name__) for row in TREE]


def make(cls: type[SynqError], message: str | None = None) -> SynqError:
    if issubclass(cls, RateLimited):
        return cls(message, retry_after=1.5)
    if issubclass(cls, AttemptFailed):
        return cls(cls.status, message or "")
    return cls(message)


CLASSES = [pytest.param(cls, id=cls.__name__) for cls in error_classes()]


def test_the_table_lists_every_class() -> None:
    assert sorted(c.__name__ for c, *_ in TREE) == sorted(c.__name__ for c in error_classes())


@pytest.mark.parametrize(("cls", "code", "code_status", "http"), TREE_PARAMS)
def test_each_class_carries_its_wire_answer(
    cls: type[SynqError], code: str, code_status: str, http: int
) -> None:
    assert (cls.code, cls.status.code, cls.http_status) == (code, code_status, http)
    err = make(cls)
    assert err.http_status == http
    assert err.to_wire() == {
        "error": {"code": code, "status": code_status, "message": cls.default_message}
    }
    assert CODE_RE.fullmatch(code), "codes are stable snake_case"
    assert status.status_class(code_status) in (4, 5), "an error is never 2.x.x"
    assert cls.default_message


@pytest.mark.parametrize("cls", CLASSES)
def test_no_constructor_overrides_the_wire_answer(cls: type[SynqError]) -> None:
    # Rendering is by type alone (SPEC.md §5.3): no instance chooses its code or HTTP status.
    # Only a delivery attempt carries its own RFC 3463 status (SPEC.md §9).
    params = set(inspect.signature(cls.__init__).parameters)
    assert not params & {"code", "http_status"}
    assert ("status" in params) is issubclass(cls, AttemptFailed)
    args: tuple[Any, ...] = (st.TRANSIENT, "x") if issubclass(cls, AttemptFailed) else ("x",)
    kwargs: dict[str, Any] = {"retry_after": 1.0} if issubclass(cls, RateLimited) else {}
    for field in ("code", "status", "http_status"):
        with pytest.raises(TypeError, match=field):
            cls(*args, **kwargs, **{field: 405})


@pytest.mark.parametrize("cls", CLASSES)
def test_http_status_fits_blame(cls: type[SynqError]) -> None:
    # The requester's fault is 4xx; the relay's, or whatever it depends on, 5xx.
    if issubclass(cls, PeerError):
        assert 400 <= cls.http_status < 500
    else:
        assert issubclass(cls, RelayError) or cls is SynqError
        assert 500 <= cls.http_status < 600


@pytest.mark.parametrize("cls", CLASSES)
def test_a_peer_error_is_permanent_unless_rate_limited(cls: type[SynqError]) -> None:
    # 4.x.x tells a sender to retry, 5.x.x to bounce: the same request refused again would be
    # refused again, but for rate limiting.
    if issubclass(cls, PeerError):
        assert make(cls).status.is_transient is issubclass(cls, RateLimited)


def own_code(cls: type[SynqError]) -> bool:
    return "code" in vars(cls)


def test_codes_unique_per_class() -> None:
    codes = [cls.code for cls in error_classes() if own_code(cls)]
    assert len(codes) == len(set(codes)), codes


@pytest.mark.parametrize("cls", [c for c in CLASSES if not own_code(c.values[0])])
def test_a_class_without_its_own_code_only_refines_the_http_status(cls: type[SynqError]) -> None:
    # RequestTimeout, MethodNotAllowed, UnsupportedMediaType: a malformed request, answered with
    # the HTTP status that names the reason.
    parent = cls.__mro__[1]
    assert issubclass(parent, SynqError)
    assert (cls.code, cls.status) == (parent.code, parent.status)
    assert cls.http_status != parent.http_status


def test_every_class_is_in_the_docstring_tree() -> None:
    # The tree in the module docstring is what SPEC.md §5.3 copies: keep them in step.
    doc = errors.__doc__ or ""
    for cls in error_classes():
        assert re.search(rf"── {cls.__name__}\b|^\s+{cls.__name__}\b", doc, re.M), cls.__name__
    rows = re.findall(r"── (\w+)\s+(\d{3}) (\w+)\s+(\d\.\d+\.\d+)", doc)
    fixed = NOT_ON_THE_WIRE + REPORTED_BY_STATUS
    assert sorted(name for name, *_ in rows) == sorted(
        c.__name__ for c in error_classes() if c not in fixed
    )
    for name, http, code, code_status in rows:
        cls = getattr(errors, name)
        assert (cls.http_status, cls.code, cls.status.code) == (int(http), code, code_status)


def test_message_and_details() -> None:
    err = errors.InvalidEnvelope("to: too many recipients", field="to")
    assert str(err) == "to: too many recipients"
    assert err.to_wire() == {
        "error": {
            "code": "invalid_envelope",
            "status": "5.6.0",
            "message": "to: too many recipients",
            "details": {"field": "to"},
        }
    }


def test_rate_limited_carries_retry_after() -> None:
    err = RateLimited(retry_after=2.0)
    assert err.retry_after == 2.0
    assert err.http_status == 429
    assert err.to_wire()["error"]["status"] == "4.7.0"


def test_method_not_allowed_carries_the_allowed_methods() -> None:
    err = errors.MethodNotAllowed("method not allowed; allowed: GET,POST", allowed=("GET", "POST"))
    assert (err.allowed, err.http_status, err.code) == (("GET", "POST"), 405, "malformed_request")


@pytest.mark.parametrize(
    ("code_status", "transient"),
    [
        (st.NO_ANSWER, True),
        (st.BAD_CONNECTION, True),
        (st.CONGESTED, True),
        (st.REMOTE_PROTOCOL, True),
        (st.TRANSIENT, True),
        (st.PERMANENT, False),
        (st.MEDIA_ERROR, False),
        (st.TOO_BIG, False),
        (st.NOT_AUTHORIZED, False),
        (status.Status("4.9.12", "unknown to us"), True),
        (status.Status("5.999.1", "unknown to us"), False),
    ],
    ids=lambda v: v.code if isinstance(v, status.Status) else None,
)
def test_attempt_failed_carries_its_own_status(code_status: status.Status, transient: bool) -> None:
    # RFC 3463 §2: the class digit decides, for codes we do not know too.
    err = AttemptFailed(code_status, "the agent answered HTTP 503", retry_after=30.0)
    assert (err.transient, err.permanent) == (transient, not transient)
    assert err.status is code_status
    assert err.reason == err.message == str(err) == "the agent answered HTTP 503"
    assert err.retry_after == 30.0
    assert err.http_status == 502
    assert err.to_wire()["error"] == {
        "code": "attempt_failed",
        "status": code_status.code,
        "message": "the agent answered HTTP 503",
    }
    # The class keeps its default: one attempt's status never leaks to another's.
    assert AttemptFailed.status is st.TRANSIENT
    assert AttemptFailed(st.NO_ANSWER, "").retry_after is None


def test_attempt_failed_refuses_a_success_status() -> None:
    with pytest.raises(ValueError, match=r"4\.x\.x or 5\.x\.x"):
        AttemptFailed(st.DELIVERED, "delivered")


# ---------------------------------------------------------------------------- status codes


def status_constants() -> list[status.Status]:
    return [v for v in vars(status).values() if isinstance(v, status.Status)]


def test_status_constants_are_distinct_and_well_formed() -> None:
    codes = [s.code for s in status_constants()]
    assert len(codes) == len(set(codes))
    for s in status_constants():
        assert s.is_success + s.is_transient + s.is_permanent == 1
        assert s.meaning


@pytest.mark.parametrize(
    ("code", "klass"),
    [("2.0.0", 2), ("4.7.0", 4), ("5.7.7", 5), ("5.999.999", 5), ("4.9.12", 4)],
)
def test_status_class_of_unknown_codes(code: str, klass: int) -> None:
    # RFC 3463 §2: act on the class digit of any code, known or not.
    assert status.status_class(code) == klass


@pytest.mark.parametrize(
    "code",
    [
        "",
        "5",
        "5.1",
        "3.0.0",
        "5.1.1.1",
        "5.1.1\n",
        "5.\u0661.\u0661",
        "5.1000.1",
        " 5.1.1",
        "x.1.1",
    ],
)
def test_status_class_rejects_malformed(code: str) -> None:
    with pytest.raises(ValueError, match="RFC 3463"):
        status.status_class(code)


# ---------------------------------------------------------------------------- layering

CORE_DIR = Path(relay.core.__file__).parent
#: I/O, event loops and the layers above: relay/core must not reach any of them, so it is
#: tested with tables alone (ARCHITECTURE.md, "Layers").
FORBIDDEN = {
    "aiohttp",
    "aiosqlite",
    "asyncio",
    "asyncpg",
    "dns",
    "http",
    "psycopg",
    "requests",
    "selectors",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "urllib3",
}
FORBIDDEN_RELAY = ("relay.store", "relay.server", "relay.federation", "relay.discovery")
THIRD_PARTY = {"cryptography", "idna", "jwcrypto", "nacl", "orjson", "pydantic", "pydantic_core"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("relay.core." + (node.module or ""))
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


CORE_FILES = [pytest.param(p, id=p.name) for p in sorted(CORE_DIR.glob("*.py"))]


@pytest.mark.parametrize("path", CORE_FILES)
def test_core_imports_no_io(path: Path) -> None:
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {name}"
        assert not name.startswith(FORBIDDEN_RELAY), f"{path.name} imports {name}"
        if top == "relay":
            assert name.startswith("relay.core"), f"{path.name} imports {name}"
        else:
            assert top in sys.stdlib_module_names or top in THIRD_PARTY, (
                f"{path.name} imports {name}: not stdlib or an allowed dependency"
            )


def test_core_files_were_found() -> None:
    assert {"address.py", "envelope.py", "errors.py", "jws.py"} <= {
        p.name for p in CORE_DIR.glob("*.py")
    }


# ---------------------------------------------------------------------------- SPEC.md agrees

SPEC = Path(relay.core.__file__).parents[2] / "SPEC.md"


def spec_error_rows() -> dict[str, tuple[int, str, str]]:
    rows = re.findall(
        r"^\| `(\w+)` \| (\d{3}) \| (\d\.\d+\.\d+) \| (.*)\|$", SPEC.read_text("utf-8"), re.M
    )
    return {code: (int(http), code_status, meaning) for code, http, code_status, meaning in rows}


#: Abstract classes and ConfigError never reach the wire; SPEC.md §5.3 names them in prose.
NOT_ON_THE_WIRE = (SynqError, PeerError, RelayError, errors.ConfigError)
#: A failed delivery attempt reaches the sender as the status and reason of a delivery status
#: or a DSN (SPEC.md §9.4, §9.5), not as an error object.
REPORTED_BY_STATUS = (AttemptFailed,)
WIRE_CLASSES = [
    pytest.param(cls, id=cls.__name__)
    for cls in error_classes()
    if cls not in NOT_ON_THE_WIRE + REPORTED_BY_STATUS
]


@pytest.mark.parametrize("cls", WIRE_CLASSES)
def test_spec_lists_error_code(cls: type[SynqError]) -> None:
    http, code_status, meaning = spec_error_rows()[cls.code]
    assert code_status == cls.status.code
    if own_code(cls):
        assert http == cls.http_status
    else:
        # A refinement is named in its code's row: "(sent with 405)".
        assert f"sent with {cls.http_status}" in meaning


def test_spec_names_the_abstract_codes() -> None:
    text = SPEC.read_text("utf-8")
    for cls in NOT_ON_THE_WIRE:
        assert f"`{cls.code}`" in text


def test_spec_lists_every_limit() -> None:
    from relay.core import limits

    text = SPEC.read_text("utf-8")
    names = [n for n in vars(limits) if n.isupper()]
    assert names
    for name in names:
        assert f"| `{name}` |" in text, f"SPEC.md §10 does not list {name}"


def test_spec_lists_every_status_code() -> None:
    text = SPEC.read_text("utf-8")
    for s in status_constants():
        assert f"| {s.code} |" in text, f"SPEC.md §5.1 does not list {s.code}"
