"""The relay's configuration file (TOML, DESIGN §10), validated by pydantic.

Unknown keys are an error, not a warning: a misspelt ``alow_private_addresses`` silently
ignored is how a relay ends up more open (or more closed) than its operator believes.
Relative paths are resolved against the directory of the config file, so a relay directory
can be moved as a whole.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from relay.core.address import normalize_domain
from relay.core.errors import ConfigError, SynqError

DEFAULT_CONFIG: Final = "synq.toml"
CONFIG_ENV: Final = "SYNQ_CONFIG"


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RelaySection(_Section):
    domain: str
    listen: str = "127.0.0.1:8443"
    public_url: str = ""

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        try:
            return normalize_domain(v)
        except SynqError as exc:
            raise ValueError(exc.message) from None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        if v:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"public_url must be an http(s) URL, got {v!r}")
        return v.rstrip("/")


class StoreSection(_Section):
    url: str = "sqlite:///./synq.db"
    #: SQLite only: FULL fsyncs every commit (durable across power loss); NORMAL is durable
    #: across process crashes only (SQLite docs, "PRAGMA synchronous", WAL mode).
    synchronous: Annotated[str, Field(pattern="^(FULL|NORMAL)$")] = "FULL"


class DiscoverySection(_Section):
    nameservers: list[str] | None = None
    allow_private_addresses: bool = False
    #: Non-public networks partners may nevertheless be reached in (CIDR strings), e.g. a
    #: partner across a private interconnect; like Synapse's ip_range_whitelist.
    allowed_networks: list[str] = []
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for item in v:
                _host_port(item)
        return v


class KeysSection(_Section):
    dir: str = "keys"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    relay: RelaySection
    store: StoreSection = StoreSection()
    discovery: DiscoverySection = DiscoverySection()
    keys: KeysSection = KeysSection()
    #: Directory of the config file; relative paths resolve against it. Not read from the file.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @property
    def public_url(self) -> str:
        return self.relay.public_url or f"http://{self.relay.listen}"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.relay.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def keys_dir(self) -> Path:
        return (self.base_dir / self.keys.dir).resolve()

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path resolved against ``base_dir``."""
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            return prefix + str((self.base_dir / url[len(prefix) :]).resolve())
        return url


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    """Read and validate a config file; raise ConfigError with one clear line."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path} (run 'synq init' or pass --config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate({**raw, "base_dir": path.resolve().parent})
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


def _toml_str(value: str) -> str:
    # A JSON string with ASCII escapes is a valid TOML basic string (TOML 1.0 §String).
    return json.dumps(value)


def render_config(config: Config) -> str:
    """The TOML text ``synq init`` writes."""
    lines = [
        "# Synq relay configuration. Unknown keys are an error.",
        "[relay]",
        f"domain = {_toml_str(config.relay.domain)}",
        f"listen = {_toml_str(config.relay.listen)}",
        f"public_url = {_toml_str(config.public_url)}   # what partners and agent cards point at",
        "",
        "[store]",
        f"url = {_toml_str(config.store.url)}   # or postgresql://user@host/db",
        f"synchronous = {_toml_str(config.store.synchronous)}",
        "",
        "[discovery]",
    ]
    if config.discovery.nameservers is not None:
        servers = ", ".join(_toml_str(s) for s in config.discovery.nameservers)
        lines.append(f"nameservers = [{servers}]   # absent: the system resolver")
    lines += [
        "allow_private_addresses = "
        + (
            "true   # loopback tests and demos only"
            if config.discovery.allow_private_addresses
            else "false"
        ),
        "",
        "[keys]",
        f"dir = {_toml_str(config.keys.dir)}",
        "",
    ]
    return "\n".join(lines)
