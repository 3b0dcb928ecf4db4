"""The error tree and its wire form (SPEC.md §5), status codes, and the core's import boundary."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pytest

import relay.core
from relay.core import errors, status
from relay.core.errors import PeerError, RateLimited, RelayError, SynqError

CODE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def error_classes() -> list[type[SynqError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, SynqError) and obj.__module__ == errors.__name__
    ]


def make(cls: type[SynqError], message: str | None = None) -> SynqError:
    if issubclass(cls, RateLimited):
        return cls(message, retry_after=1.5)
    return cls(message)


CLASSES = [pytest.param(cls, id=cls.__name__) for cls in error_classes()]


@pytest.mark.parametrize("cls", CLASSES)
def test_renders_wire_error(cls: type[SynqError]) -> None:
    wire = make(cls).to_wire()
    assert set(wire) == {"error"}
    body = wire["error"]
    assert set(body) == {"code", "status", "message"}
    assert body["code"] == cls.code
    assert CODE_RE.fullmatch(body["code"]), "codes are stable snake_case"
    assert status.status_class(body["status"]) in (4, 5), "an error is never 2.x.x"
    assert body["message"] == cls.default_message
    assert body["message"]


@pytest.mark.parametrize("cls", CLASSES)
def test_http_status_fits_blame(cls: type[SynqError]) -> None:
    err = make(cls)
    assert isinstance(err.http_status, int)
    if issubclass(cls, PeerError):
        assert 400 <= err.http_status < 500
    else:
        assert issubclass(cls, RelayError) or cls is SynqError
        assert 500 <= err.http_status < 600


@pytest.mark.parametrize("cls", CLASSES)
def test_status_class_fits_retry_semantics(cls: type[SynqError]) -> None:
    # 4.x.x tells a sender to retry, 5.x.x to bounce: only rate limiting and our own failures
    # are worth retrying unchanged.
    transient = issubclass(cls, RateLimited | RelayError)
    assert make(cls).status.is_transient is transient or cls is SynqError


def test_codes_unique_per_class() -> None:
    codes = [cls.code for cls in error_classes()]
    assert len(codes) == len(set(codes)), codes


def test_every_class_is_in_the_docstring_tree() -> None:
    # The tree in the module docstring is what SPEC.md §5.3 copies: keep them in step.
    doc = errors.__doc__ or ""
    for cls in error_classes():
        assert re.search(rf"── {cls.__name__}\b|^\s+{cls.__name__}\b", doc, re.M), cls.__name__
    rows = re.findall(r"── (\w+)\s+(\d{3}) (\w+)\s+(\d\.\d+\.\d+)", doc)
    assert len(rows) >= 17
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


def test_http_status_override_per_route() -> None:
    assert errors.MalformedRequest(http_status=405).http_status == 405
    assert errors.MalformedRequest().http_status == 400


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
#: I/O, event loops and the layers above: relay/core must not reach any of them
#: (ARCHITECTURE.md, "Layers").
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


def spec_error_rows() -> dict[str, tuple[int, str]]:
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \| (\d\.\d+\.\d+) \|", SPEC.read_text("utf-8"), re.M)
    return {code: (int(http), status_code) for code, http, status_code in rows}


#: Abstract classes and ConfigError never reach the wire; SPEC.md §5.3 names them in prose.
NOT_ON_THE_WIRE = (SynqError, PeerError, RelayError, errors.ConfigError)
WIRE_CLASSES = [
    pytest.param(cls, id=cls.__name__) for cls in error_classes() if cls not in NOT_ON_THE_WIRE
]


@pytest.mark.parametrize("cls", WIRE_CLASSES)
def test_spec_lists_error_code(cls: type[SynqError]) -> None:
    assert spec_error_rows().get(cls.code) == (cls.http_status, cls.status.code)


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
