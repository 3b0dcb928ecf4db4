"""The import rules of ARCHITECTURE.md ("Layers"), checked on the source: every import between
the relay's units points down, so a reader can take each layer on its own and a store dialect or
a face can be replaced without touching what lies below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_EVERYTHING_BELOW_THE_RUNTIME = {
    "core/",
    "store/",
    "discovery/",
    "delivery/",
    "federation/",
    "tasks/",
    "config",
    "keyring",
    "admintoken",
    "metrics",
    "telemetry",
    "logs",
    "adapters/a2a",
    "adapters/mcp",
    "adapters/keepalive",
}

#: unit → the units it may import. A unit is a package of relay/ ("store/"), a module directly in
#: relay/ ("runtime"), or an adapter package ("adapters/mcp").
ALLOWED: dict[str, set[str]] = {
    "core/": set(),
    "store/": {"core/"},
    "discovery/": {"core/"},
    "config": {"core/"},
    "keyring": {"core/"},
    "admintoken": {"core/"},
    "metrics": set(),
    "telemetry": set(),
    "logs": set(),
    "dnsserver": {"core/"},
    "delivery/": {"core/", "store/", "telemetry", "logs"},
    "adapters/keepalive": set(),
    "adapters/a2a": {"core/", "delivery/", "store/", "adapters/keepalive"},
    "adapters/mcp": {"core/", "delivery/", "store/", "adapters/keepalive"},
    "tasks/": {"core/", "delivery/", "store/", "adapters/a2a"},
    "federation/": {"core/", "store/", "discovery/", "delivery/", "telemetry", "logs"},
    "runtime": _EVERYTHING_BELOW_THE_RUNTIME,
    "server/": _EVERYTHING_BELOW_THE_RUNTIME | {"runtime"},
    "demo": _EVERYTHING_BELOW_THE_RUNTIME | {"runtime", "server/", "dnsserver"},
    "cli": _EVERYTHING_BELOW_THE_RUNTIME | {"runtime", "server/", "dnsserver", "demo"},
}


def unit_of_file(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "adapters":
        return f"adapters/{parts[1]}"
    return parts[1] if len(parts) == 2 else f"{parts[1]}/"


def unit_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "adapters" and len(parts) > 1:
        return f"adapters/{parts[1]}"
    if parts[0] != "relay" or len(parts) < 2:
        return None
    return parts[1] if (ROOT / "relay" / f"{parts[1]}.py").exists() else f"{parts[1]}/"


def imports_of(path: Path) -> set[str]:
    units: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        units.update(u for u in map(unit_of_module, names) if u is not None)
    return units


def sources() -> list[Path]:
    files = [*(ROOT / "relay").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]
    return [
        p for p in files if p.name != "__init__.py" or p.parent.name not in ("relay", "adapters")
    ]


def test_every_unit_of_the_tree_has_its_rule() -> None:
    units = {unit_of_file(p) for p in sources()}
    assert units <= set(ALLOWED), sorted(units - set(ALLOWED))


def test_imports_point_down() -> None:
    wrong = []
    for path in sources():
        unit = unit_of_file(path)
        for target in sorted(imports_of(path) - {unit} - ALLOWED.get(unit, set())):
            wrong.append(f"{path.relative_to(ROOT)} ({unit}) imports {target}")
    assert wrong == []
