"""deploy/: what can be checked without a container engine or systemd on this machine.

The compose file is parsed and its wiring checked (PostgreSQL with a volume and a health check,
at least two identical relay replicas mounting the PostgreSQL config, a balancer in front of
exactly those replicas, every mounted file present); both example configs load; the container
file and the unit keep their non-root user and hardening.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CONFIG_IN_CONTAINER = "/etc/synq/synq.toml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return doc


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host source (as written) of a service's volumes."""
    out: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_mode = volume.split(":")
        out[target] = source
    return out


def relay_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("command") == ["serve"] and "build" in svc
    }


def test_postgres_service_keeps_its_data_in_a_volume(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].rsplit("/", 1)[-1].startswith("postgres:15")
    [data] = [src for target, src in mounts(postgres).items() if target.endswith("/data")]
    assert data in compose["volumes"]  # a named volume, not the container's own layer
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_two_identical_relay_replicas_share_the_postgresql_config(compose: dict[str, Any]) -> None:
    relays = relay_services(compose)
    assert len(relays) >= 2
    configs = {mounts(svc)[CONFIG_IN_CONTAINER] for svc in relays.values()}
    assert configs == {"./config/postgresql.toml"}
    for svc in relays.values():
        assert svc["image"] == next(iter(relays.values()))["image"]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "PGPASSWORD" in svc["environment"]  # the password stays out of the config
        assert "ports" not in svc  # reached through the balancer only
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["migrate"]
    assert mounts(migrate)[CONFIG_IN_CONTAINER] == "./config/postgresql.toml"


def test_the_balancer_is_the_one_address_in_front_of_every_replica(
    compose: dict[str, Any],
) -> None:
    relays = relay_services(compose)
    balancer = compose["services"]["balancer"]
    assert set(balancer["depends_on"]) == set(relays)
    [published] = balancer["ports"]
    haproxy = (DEPLOY / mounts(balancer)["/usr/local/etc/haproxy/haproxy.cfg"]).read_text()
    servers = re.findall(r"^\s*server\s+\S+\s+(\S+):(\d+)", haproxy, re.MULTILINE)
    assert {host for host, _port in servers} == set(relays)
    relay_config = load_config(DEPLOY / "config" / "postgresql.toml")
    host, port = relay_config.listen_host_port
    assert host == "0.0.0.0"  # reachable from the balancer's container
    assert {int(p) for _host, p in servers} == {port}
    assert published.split(":")[-1] == re.search(r"bind :(\d+)", haproxy).group(1)  # type: ignore[union-attr]
    assert "/healthz" in haproxy


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for target, source in mounts(svc).items():
            if source in compose.get("volumes", {}):
                continue
            if target == "/etc/synq/keys":
                continue  # created by the operator with `synq init` (see the file's header)
            assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_example_configs_load() -> None:
    sqlite = load_config(DEPLOY / "config" / "sqlite.toml")
    assert sqlite.store_url == "sqlite:////var/lib/synq/synq.db"
    postgresql = load_config(DEPLOY / "config" / "postgresql.toml")
    assert postgresql.store_url.startswith("postgresql://")
    assert ":" not in postgresql.store_url.split("@")[0].removeprefix("postgresql://")
    # Beside the config in the container: /etc/synq/keys, the compose file's keys mount.
    assert postgresql.keys.dir == "keys"
    assert sqlite.keys_dir == Path("/etc/synq/keys")
    for config in (sqlite, postgresql):
        assert config.public_url.startswith("https://")


def test_container_runs_synq_as_a_non_root_user() -> None:
    text = (DEPLOY / "Containerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    [user] = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert user not in ("root", "0")
    assert "pip install ." in text
    assert '"synq"' in text
    assert 'CMD ["serve"]' in text


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "synq.service", encoding="utf-8")
    service = unit["Service"]
    assert service["User"] == "synq"
    assert service["ExecStart"].endswith("serve")
    assert service["ExecStartPre"].endswith("migrate")
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/synq" in service["ReadWritePaths"]
    assert service["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == "multi-user.target"
