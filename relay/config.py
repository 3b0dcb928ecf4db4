"""The relay's configuration file (TOML, written by ``synq init``), validated by pydantic.

Unknown keys are an error, not a warning: a misspelt ``alow_private_addresses`` silently
ignored is how a relay ends up more open (or more closed) than its operator believes.
Relative paths are resolved against the directory of the config file, so a relay directory
can be moved as a whole.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.core import ratelimit, signals
from relay.core.address import Address, normalize_domain, normalize_local
from relay.core.catalog import SEARCH_RATE
from relay.core.errors import ConfigError, SynqError
from relay.core.limits import DEFAULT_MAX_UNACKED, DEFAULT_MAX_UNACKED_BYTES
from relay.core.policy import Policy
from relay.core.quota import Quota
from relay.core.ratelimit import SourceLimits
from relay.core.retention import DEFAULT_RETENTION_PERIOD, DEFAULT_SWEEP_INTERVAL, RetentionPolicy

DEFAULT_CONFIG: Final = "synq.toml"
#: The admin token's hash, in the relay directory (``Config.admin_token_path``).
ADMIN_TOKEN_FILE: Final = "admin-token.sha256"  # noqa: S105 (a file name)
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


class DiscoverySection(_Section):
    nameservers: list[str] | None = None
    allow_private_addresses: bool = False
    #: Non-public networks partners may nevertheless be reached in (CIDR strings), e.g. a
    #: partner across a private interconnect; like Synapse's ip_range_whitelist.
    allowed_networks: list[str] = []
    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    #: Partner relays' domains whose registries a search with ``federation: "auto"`` asks, in
    #: parallel, with a signed request (SPEC.md §12.6), and a search with ``"referrals"`` names;
    #: each found through its ``_synq`` record or well-known document.
    partners: list[str] = Field(default_factory=list)
    #: How long a federated search waits for partners before answering without them (named in
    #: the ``Synq-Partial`` header); relay/federation/search.py ``DEFAULT_SEARCH_DEADLINE``.
    search_deadline: Annotated[float, Field(gt=0, le=30)] = 1.5

    @field_validator("partners")
    @classmethod
    def _partners(cls, v: list[str]) -> list[str]:
        return [normalize_domain(d) for d in v]

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for item in v:
                _host_port(item)
        return v


#: How long ``synq keys rotate`` publishes a new key before it signs, and the least time a
#: retired key stays published. Partners must be able to look the new selector up before the
#: first envelope signed with it reaches them: 48 hours covers slow DNS publication (a zone
#: edited by hand, a provider's propagation delay) plus any TTL, as DKIM operators allow for
#: (M3AAWG, "DKIM Key Rotation Best Common Practices", 2019).
DEFAULT_KEY_OVERLAP: Final = timedelta(hours=48)

_DURATION_RE: Final = re.compile(r"(\d+)([smhdw])", re.ASCII)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """``90s``, ``30m``, ``48h``, ``7d``, ``2w`` or a sum such as ``1d12h``; ``0`` is zero."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("a duration is a string such as 48h, 30m or 1d12h")
    text = value.strip().lower()
    if text == "0":
        return timedelta(0)
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r} (expected e.g. 48h, 30m, 1d12h)")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def format_duration(value: timedelta) -> str:
    """The shortest spelling :func:`parse_duration` reads back as ``value`` (whole seconds)."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0"
    out = []
    for unit in "dhms":
        step = _UNIT_SECONDS[unit]
        if seconds >= step:
            out.append(f"{seconds // step}{unit}")
            seconds %= step
    return "".join(out)


Duration = Annotated[timedelta, BeforeValidator(parse_duration), Field(ge=timedelta(0))]

_SIZE_RE: Final = re.compile(r"(\d+)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?", re.ASCII)
_SIZE_UNITS: Final = {"b": 0, "kb": 1, "kib": 1, "mb": 2, "mib": 2, "gb": 3, "gib": 3}
_SIZE_UNITS.update({"tb": 4, "tib": 4})


def parse_size(value: object) -> int:
    """Bytes: an integer, or ``"512KB"``, ``"100MB"``, ``"2GB"``, ``"1TB"`` — units of 1024, as
    operators mean them for disks and mailboxes (``MiB`` and the like are read the same)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string such as 100MB")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError("a size is a number of bytes or a string such as 100MB")
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(f"not a size: {value!r} (expected e.g. 524288, 512KB, 100MB, 2GB)")
    return int(match.group(1)) << (10 * _SIZE_UNITS[match.group(2) or "b"])


def format_size(value: int) -> str:
    """The shortest spelling :func:`parse_size` reads back as ``value``."""
    for unit, power in (("TB", 4), ("GB", 3), ("MB", 2), ("KB", 1)):
        if value and value % 1024**power == 0:
            return f"{value // 1024**power}{unit}"
    return str(value)


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


#: Store URL schemes a relay can open (relay/store/__init__.py, ``open_store``). Checked when the
#: config is written or read, so ``synq init --store mysql://…`` is refused at once rather than
#: at the first ``synq serve``; the rest of the URL is checked when the store opens.
STORE_SCHEMES: Final = ("sqlite", "postgresql", "postgres")


class StoreSection(_Section):
    url: str = "sqlite:///./synq.db"
    #: SQLite only: FULL fsyncs every commit (durable across power loss); NORMAL is durable
    #: across process crashes only (SQLite docs, "PRAGMA synchronous", WAL mode).
    synchronous: Annotated[str, Field(pattern="^(FULL|NORMAL)$")] = "FULL"
    #: SQLite only: a cap on the database file (bytes or "10GB"; 0, the default, for none). A
    #: write past it is refused like a write to a full disk (503, 4.3.0) while the relay keeps
    #: answering, so the relay's store never fills the host's disk; a larger cap (SIGHUP) or
    #: space freed by retention lets writes through again, without a restart (SPEC.md §10.4).
    max_size: Size = 0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme, sep, _ = v.partition(":")
        if not sep or scheme.lower() not in STORE_SCHEMES:
            # The scheme only: the rest of a PostgreSQL URL may carry a password.
            shown = repr(scheme[:20]) if sep else "none"
            raise ValueError(
                f"unsupported store URL scheme {shown}: expected sqlite:///PATH or "
                "postgresql://USER@HOST/DB"
            )
        if scheme.lower() == "sqlite" and not v.startswith("sqlite:///"):
            raise ValueError(
                "an SQLite store URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        return v

    @model_validator(mode="after")
    def _cap_is_sqlite_only(self) -> StoreSection:
        if self.max_size and not self.url.lower().startswith("sqlite:"):
            raise ValueError(
                "max_size caps an SQLite file; cap a PostgreSQL database with the server's "
                "own means (a tablespace on a volume of that size)"
            )
        return self


class RetentionSection(_Section):
    """``[retention]``: how long what the relay no longer needs is kept (SPEC.md §8.5,
    relay/delivery/retention.py). Reloaded on SIGHUP."""

    enabled: bool = True
    acked: Duration = DEFAULT_RETENTION_PERIOD
    settled: Duration = DEFAULT_RETENTION_PERIOD
    events: Duration = DEFAULT_RETENTION_PERIOD
    tasks: Duration = DEFAULT_RETENTION_PERIOD
    interval: Annotated[
        timedelta, BeforeValidator(parse_duration), Field(ge=timedelta(seconds=1))
    ] = DEFAULT_SWEEP_INTERVAL

    @property
    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(
            acked=self.acked,
            settled=self.settled,
            events=self.events,
            tasks=self.tasks,
            interval=self.interval,
            enabled=self.enabled,
        )


class QuotasSection(_Section):
    """``[quotas]``: the default mailbox quotas of local agents, 0 for none (SPEC.md §9.7;
    ``synq agent set`` gives one agent its own). Reloaded on SIGHUP."""

    max_unacked: Annotated[int, Field(ge=0)] = DEFAULT_MAX_UNACKED
    max_bytes: Size = DEFAULT_MAX_UNACKED_BYTES

    @property
    def quota(self) -> Quota:
        return Quota(self.max_unacked, self.max_bytes)


class KeysSection(_Section):
    dir: str = "keys"
    overlap: Duration = DEFAULT_KEY_OVERLAP


class AgentRulesSection(_Section):
    """``[policy.agents.<name>]``: who may message one local agent (``*``, a domain, an
    address); see relay.core.policy for how the lists combine."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


class PolicySection(_Section):
    """``[policy]``: the partner policy (relay.core.policy). Reloaded on SIGHUP."""

    #: Domains in neither list.
    default: Literal["allow", "deny"] = "allow"
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    agents: dict[str, AgentRulesSection] = Field(default_factory=dict)


class RateSection(_Section):
    per_second: Annotated[float, Field(gt=0)]
    burst: Annotated[float, Field(ge=1)]

    @classmethod
    def of(cls, rate: ratelimit.Rate) -> RateSection:
        return cls(per_second=rate.per_second, burst=rate.burst)

    @property
    def rate(self) -> ratelimit.Rate:
        return ratelimit.Rate(self.per_second, self.burst)


class RateLimitsSection(_Section):
    """``[rate_limits]``: token buckets (relay.core.ratelimit, where each default is explained
    by the abuse it stops). Reloaded on SIGHUP, keeping every bucket's level."""

    sender_domain: RateSection = RateSection.of(ratelimit.DEFAULT_SENDER_DOMAIN_RATE)
    sender: RateSection = RateSection.of(ratelimit.DEFAULT_SENDER_RATE)
    agent: RateSection = RateSection.of(ratelimit.DEFAULT_AGENT_RATE)
    #: Per source address (SPEC.md §10.3): HTTP requests, failed bearer tokens, federation
    #: envelopes that failed verification.
    source_requests: RateSection = RateSection.of(ratelimit.DEFAULT_SOURCE_REQUEST_RATE)
    failed_auth: RateSection = RateSection.of(ratelimit.DEFAULT_FAILED_AUTH_RATE)
    unverified: RateSection = RateSection.of(ratelimit.DEFAULT_UNVERIFIED_RATE)
    #: Discovery searches per local agent, partner domain or anonymous source (SPEC.md §12.5).
    search: RateSection = RateSection.of(SEARCH_RATE)


class SignalsSection(_Section):
    """``[signals]`` (SPEC.md §13): what one local agent may emit — a rate, and a cap on its
    open signals (relay.core.signals, where each is explained by the abuse it stops). Reloaded
    on SIGHUP."""

    emit_rate: RateSection = RateSection.of(signals.DEFAULT_EMIT_RATE)
    max_open: Annotated[int, Field(ge=1)] = signals.MAX_OPEN_PER_AGENT


class LimitsSection(_Section):
    """``[limits]``: what one source address may hold at once (SPEC.md §10.3,
    relay.core.ratelimit). Reloaded on SIGHUP."""

    connections_per_source: Annotated[int, Field(ge=1)] = ratelimit.MAX_CONNECTIONS_PER_SOURCE
    requests_in_flight_per_source: Annotated[int, Field(ge=1)] = (
        ratelimit.MAX_REQUESTS_IN_FLIGHT_PER_SOURCE
    )
    #: Networks (CIDR) whose addresses no per-source limit applies to: a reverse proxy in
    #: front of the relay (which then sees every client as the proxy), or the relay's own host
    #: when every agent on it is trusted. Like Postfix's ``$mynetworks`` exceptions.
    exempt: list[str] = Field(default_factory=list)

    @field_validator("exempt")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not a network: {item!r} (expected e.g. 10.0.0.0/8)") from None
        return v


class McpSection(_Section):
    """``[mcp]``: the relay's MCP faces (SPEC.md "MCP mapping")."""

    #: A local agent that requests to ``/mcp/<address>`` without an ``Authorization`` header act
    #: as. Absent (the default), every request needs an agent's bearer token. For an MCP
    #: gateway on a trusted network, or a client that cannot send headers.
    anonymous_agent: str | None = None

    @field_validator("anonymous_agent")
    @classmethod
    def _local(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return normalize_local(v)
        except SynqError as exc:
            raise ValueError(exc.message) from None


class A2ASection(_Section):
    """``[a2a]``: the relay's A2A face (SPEC.md "A2A mapping")."""

    #: A local agent that calls to ``/a2a/<address>`` without an ``Authorization`` header act
    #: as; the face's cards then declare no security requirement. Absent (the default), every
    #: call needs a local agent's bearer token. For conformance runs (the A2A TCK sends no
    #: credentials) and A2A clients on a trusted network.
    anonymous_agent: str | None = None
    #: Where the face's gRPC binding listens (``HOST:PORT``; port 0 picks a free one). Absent
    #: (the default): no gRPC listener, and the cards list JSON-RPC and HTTP+JSON only. Off by
    #: default because gRPC needs HTTP/2 on a port of its own (aiohttp serves HTTP/1.1), and a
    #: relay should open no port its operator did not ask for; the listener is plaintext h2c,
    #: so a public one belongs behind a TLS-terminating proxy.
    grpc_listen: str | None = None
    #: The address a gRPC call that names none (an empty ``tenant``) is for. Clients created
    #: from a card send the card's tenant by themselves; this serves those that do not (the
    #: A2A TCK's gRPC client). Absent: such a call is NOT_FOUND.
    grpc_default_address: str | None = None

    @field_validator("grpc_default_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(Address.parse(v))
        except SynqError as exc:
            raise ValueError(exc.message) from None

    @field_validator("grpc_listen")
    @classmethod
    def _grpc_listen(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v)

    @field_validator("anonymous_agent")
    @classmethod
    def _local(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return normalize_local(v)
        except SynqError as exc:
            raise ValueError(exc.message) from None


#: The admin listener's default port is the relay's ``listen`` port plus this: one number for
#: the operator to remember, next to the public one.
ADMIN_PORT_OFFSET: Final = 1


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminSection(_Section):
    """``[admin]``: the operator's listener (SPEC.md §14.1): ``/metrics``, ``/healthz`` and the
    console, apart from the public API so that none of it is reachable where partners and agents
    are. Absent ``listen``: ``127.0.0.1:<[relay] listen port + 1>`` — loopback whatever the
    public listener's address, so that an operator exposes it only by writing an address here."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v)


class TelemetrySection(_Section):
    """``[telemetry]``: OpenTelemetry tracing (relay/telemetry.py, SPEC.md §14.3). Without an
    endpoint nothing is recorded or exported; a caller's ``traceparent`` is still carried."""

    #: OTLP/HTTP collector, e.g. ``http://127.0.0.1:4318`` (traces go to ``/v1/traces`` below a
    #: base URL). Empty: no export.
    otlp_endpoint: str = ""
    #: The ``service.name`` of the relay's spans.
    service_name: str = "synq"
    #: Share of new traces recorded; a trace a caller started follows the caller's decision.
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"expected an http(s) URL, got {v!r}")
        return v


#: Log line formats (relay/logs.py): ``text`` for people, ``json`` (one object a line) for
#: collectors.
LogFormat = Literal["text", "json"]


class LogSection(_Section):
    """``[log]``: how ``synq serve`` writes its log (SPEC.md §14.4); ``--log-format`` wins."""

    format: LogFormat = "text"
    #: ``debug``, ``info``, ``warning`` or ``error``.
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    relay: RelaySection
    store: StoreSection = StoreSection()
    discovery: DiscoverySection = DiscoverySection()
    keys: KeysSection = KeysSection()
    policy: PolicySection = PolicySection()
    rate_limits: RateLimitsSection = RateLimitsSection()
    limits: LimitsSection = LimitsSection()
    retention: RetentionSection = RetentionSection()
    quotas: QuotasSection = QuotasSection()
    signals: SignalsSection = SignalsSection()
    mcp: McpSection = McpSection()
    a2a: A2ASection = A2ASection()
    admin: AdminSection = AdminSection()
    telemetry: TelemetrySection = TelemetrySection()
    log: LogSection = LogSection()
    #: Directory of the config file; relative paths resolve against it. Not read from the file.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _admin_port_exists(self) -> Config:
        if self.admin.listen is None and self.listen_host_port[1] == 65535:
            raise ValueError("admin.listen: the relay listens on 65535; set [admin] listen")
        return self

    @model_validator(mode="after")
    def _policy_is_coherent(self) -> Config:
        self.partner_policy()  # raises ValueError naming the bad entry
        return self

    def source_limits(self) -> SourceLimits:
        """The per-source tables that ``[rate_limits]`` and ``[limits]`` describe."""
        rates, limits = self.rate_limits, self.limits
        return SourceLimits.build(
            rates.source_requests.rate,
            rates.failed_auth.rate,
            rates.unverified.rate,
            connections=limits.connections_per_source,
            in_flight=limits.requests_in_flight_per_source,
            exempt=limits.exempt,
        )

    def partner_policy(self) -> Policy:
        """The ``[policy]`` section, normalised and checked."""
        section = self.policy
        try:
            return Policy.build(
                self.relay.domain,
                default=section.default,
                allow=section.allow,
                deny=section.deny,
                agents={name: (r.allow, r.deny) for name, r in section.agents.items()},
            )
        except SynqError as exc:
            raise ValueError(f"policy: {exc.message}") from None
        except ValueError as exc:
            raise ValueError(f"policy: {exc}") from None

    @property
    def public_url(self) -> str:
        return self.relay.public_url or f"http://{self.relay.listen}"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.relay.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def admin_listen(self) -> str:
        """Where the admin listener binds: ``[admin] listen``, or loopback on the relay's port
        + 1 (port 0, an OS-chosen port, stays 0: tests and ``synq demo`` run many relays)."""
        if self.admin.listen is not None:
            return self.admin.listen
        port = self.listen_host_port[1]
        return f"127.0.0.1:{port + ADMIN_PORT_OFFSET if port else 0}"

    @property
    def admin_host_port(self) -> tuple[str, int]:
        host, _, port = self.admin_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def admin_is_loopback(self) -> bool:
        return _is_loopback(self.admin_host_port[0])

    @property
    def admin_token_path(self) -> Path:
        """The SHA-256 of the admin token (``synq admin token``), mode 0600, beside the keys:
        the same trust boundary — whoever can read the relay's directory runs the relay."""
        return (self.base_dir / ADMIN_TOKEN_FILE).resolve()

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
        raise ConfigError(f"{path}: {validation_message(exc)}") from None


def validation_message(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """The first problem pydantic found, as one line: ``relay.listen: expected HOST:PORT, …``.
    ``names`` renames a location (``synq init`` names its options instead of config keys).
    Never the input value (it may be a secret, such as a store URL's password) nor pydantic's
    documentation link."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    where = (names or {}).get(where, where)
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


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
        f"max_size = {_toml_str(format_size(config.store.max_size))}"
        '   # SQLite: a cap on the file, e.g. "10GB"; "0": none',
        "",
        "[retention]   # how long what is done with is kept (SPEC.md §8.5)",
        f"acked = {_toml_str(format_duration(config.retention.acked))}"
        "     # acknowledged inbox messages",
        f"settled = {_toml_str(format_duration(config.retention.settled))}"
        "   # delivery status, once every recipient is settled (and the envelope expired)",
        f"events = {_toml_str(format_duration(config.retention.events))}"
        "    # the hop log of synq status",
        f"tasks = {_toml_str(format_duration(config.retention.tasks))}"
        "     # A2A face tasks that ended",
        f"interval = {_toml_str(format_duration(config.retention.interval))}  # between two sweeps",
        *([] if config.retention.enabled else ["enabled = false   # keep everything"]),
        "",
        "[quotas]   # per agent, unacknowledged mail; over it, new mail waits (4.2.2); 0: none",
        f"max_unacked = {config.quotas.max_unacked}",
        f"max_bytes = {_toml_str(format_size(config.quotas.max_bytes))}",
        "",
        "[signals]   # per agent (SPEC.md §13)",
        f"emit_rate = {{ per_second = {config.signals.emit_rate.per_second!r}, "
        f"burst = {config.signals.emit_rate.burst!r} }}",
        f"max_open = {config.signals.max_open}   # open or claimed signals at once",
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
        "partners = ["
        + ", ".join(_toml_str(p) for p in config.discovery.partners)
        + ']   # relays a search with federation "auto" also asks (SPEC.md §12.6)',
        f"search_deadline = {config.discovery.search_deadline:g}"
        "   # seconds a federated search waits for partners",
        # [policy] stays the last section: keys appended to the file land in it.
        "",
        "[telemetry]   # OpenTelemetry traces over OTLP/HTTP (SPEC.md §14.3)",
        f"otlp_endpoint = {_toml_str(config.telemetry.otlp_endpoint)}"
        '   # e.g. "http://127.0.0.1:4318"; empty: nothing recorded or exported',
        f"service_name = {_toml_str(config.telemetry.service_name)}",
        f"sample_ratio = {config.telemetry.sample_ratio:g}   # share of new traces recorded",
        "",
        "[log]   # synq serve's log (SPEC.md §14.4)",
        f'format = {_toml_str(config.log.format)}   # "text" or "json" (one object a line)',
        f"level = {_toml_str(config.log.level)}",
        "",
        "[keys]",
        f"dir = {_toml_str(config.keys.dir)}",
        f"overlap = {_toml_str(format_duration(config.keys.overlap))}"
        "   # a new key is published this long before it signs",
        "",
        '[a2a]   # the A2A face (SPEC.md "A2A mapping")',
        f"grpc_listen = {_toml_str(config.a2a.grpc_listen)}   # its gRPC binding"
        if config.a2a.grpc_listen is not None
        else '# grpc_listen = "127.0.0.1:PORT"   # its gRPC binding; default: off',
        *(
            [f"anonymous_agent = {_toml_str(config.a2a.anonymous_agent)}"]
            if config.a2a.anonymous_agent is not None
            else []
        ),
        *(
            [f"grpc_default_address = {_toml_str(config.a2a.grpc_default_address)}"]
            if config.a2a.grpc_default_address is not None
            else []
        ),
        "",
        "[admin]   # the operator's listener: /metrics, /healthz, /console (SPEC.md §14)",
        f"listen = {_toml_str(config.admin.listen)}"
        if config.admin.listen is not None
        else '# listen = "127.0.0.1:PORT"   # default: loopback, the [relay] listen port + 1',
        "",
        "[policy]",
        f"default = {_toml_str(config.policy.default)}"
        '   # domains in neither allow = [...] nor deny = [...]; "deny" = closed federation',
    ]
    for name in ("allow", "deny"):
        if entries := getattr(config.policy, name):
            lines.append(f"{name} = [{', '.join(_toml_str(e) for e in entries)}]")
    for agent, rules in config.policy.agents.items():
        lines += ["", f"[policy.agents.{_toml_str(agent)}]"]
        lines += [
            f"{name} = [{', '.join(_toml_str(e) for e in getattr(rules, name))}]"
            for name in ("allow", "deny")
        ]
    lines.append("")
    return "\n".join(lines)
