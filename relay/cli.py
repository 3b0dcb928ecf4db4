"""The ``synq`` command (SPEC.md §9.6 for the queue commands; README.md for all of them).

Exit codes: 0 success, 1 a user error (one line on stderr, ``synq: error: …``), 2 bad usage
(argparse). ``--json`` makes every data-printing command print one JSON document instead.

Operator commands (``send``, ``inbox``, ``status``, ``agent``) work on the store directly, as
Postfix's ``postqueue``/``postsuper`` work on the queue directory: they run whether or not the
relay is up, and a running relay sees their writes (the store wakes it).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from relay import __version__, logs
from relay.config import (
    Config,
    DiscoverySection,
    KeysSection,
    RelaySection,
    StoreSection,
    config_path,
    format_size,
    load_config,
    parse_duration,
    parse_size,
    render_config,
    validation_message,
)
from relay.core import catalog, dsn, idempotency, records
from relay.core.address import RESERVED_LOCALS, Address, normalize_local
from relay.core.clock import SystemClock
from relay.core.draft import Draft
from relay.core.envelope import format_timestamp
from relay.core.errors import SynqError
from relay.core.ids import hash_token, new_token
from relay.core.jws import SigningKey
from relay.delivery import views
from relay.delivery.catalog import set_operator_fields
from relay.delivery.router import AGENT_CACHE_TTL
from relay.keyring import (
    KeyEntry,
    load_keyring,
    retire_key,
    rotate_key,
    selector_for,
    write_key,
)
from relay.runtime import Relay
from relay.store.base import AgentKind, local_agent

log = logging.getLogger("synq")


class UserError(Exception):
    """A mistake the operator can fix; printed as one line, exit status 1."""


def out(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif text:
        print(text)


# --- init ---------------------------------------------------------------------------------------


def dns_records(config: Config, keys: Sequence[Any]) -> list[dict[str, str]]:
    domain = config.relay.domain
    recs = [
        {
            "name": records.relay_record_name(domain) + ".",
            "type": "TXT",
            "value": records.RelayRecord(config.public_url).to_txt(),
        }
    ]
    for key in keys:
        recs.append(
            {
                "name": records.key_record_name(key.selector, domain) + ".",
                "type": "TXT",
                "value": records.KeyRecord(key).to_txt(),
            }
        )
    return recs


def format_records(recs: list[dict[str, str]]) -> str:
    return "\n".join(f'{r["name"]} IN TXT "{r["value"]}"' for r in recs)


#: The config keys ``synq init`` fills, by the option that gives each (for its error messages).
_INIT_OPTIONS = {
    "domain": "--domain",
    "listen": "--listen",
    "public_url": "--public-url",
    "url": "--store",
    "nameservers": "--nameserver",
}


def cmd_init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    path = directory / "synq.toml"
    if path.exists():
        raise UserError(f"{path} already exists; refusing to overwrite it")
    try:
        config = Config(
            relay=RelaySection(
                domain=args.domain,
                listen=args.listen,
                public_url=args.public_url or f"http://{args.listen}",
            ),
            store=StoreSection(url=args.store),
            discovery=DiscoverySection(
                nameservers=args.nameserver or None,
                allow_private_addresses=args.allow_private_addresses,
            ),
            keys=KeysSection(dir="keys"),
            base_dir=directory.resolve(),
        )
    except ValidationError as exc:
        raise UserError(validation_message(exc, _INIT_OPTIONS)) from None
    now = SystemClock().now()
    key = SigningKey.generate(selector_for(now))
    directory.mkdir(parents=True, exist_ok=True)
    # Before the key exists: a relay directory inside a git working tree must never offer the
    # private key to ``git add -A``.
    ignored = write_gitignore(config, directory)
    write_key(config.keys_dir, KeyEntry(key=key, created=now, activates=now, retires=None))
    path.write_text(render_config(config), encoding="utf-8")
    recs = dns_records(config, [key.public_key])
    gitignore = directory / ".gitignore"
    out(
        args,
        {
            "config": str(path),
            "domain": config.relay.domain,
            "selector": key.selector,
            "dns": recs,
            "gitignore": {"path": str(gitignore), "entries": ignored},
        },
        f"wrote {path} and key {key.selector}\n"
        f"wrote {gitignore}: git ignores {', '.join(ignored)} (private keys and the database)"
        f"\n\nPublish these DNS records:\n{format_records(recs)}",
    )
    return 0


def gitignore_entries(config: Config, directory: Path) -> list[str]:
    """What must stay out of version control in a relay directory: the keys directory (private
    signing keys) and, when it lives there, the SQLite database with its ``-wal``, ``-shm`` and
    ``-journal`` companions. Patterns are anchored (``/keys/``): they name this directory's
    entries, not files of the same name deeper in the tree."""
    base = directory.resolve()
    entries = []
    for target, suffix in ((config.keys_dir, "/"), (_sqlite_file(config), "")):
        if target is None:
            continue
        try:
            relative = target.relative_to(base).as_posix()
        except ValueError:
            continue  # outside the relay directory: not this .gitignore's business
        entries.append(f"/{relative}{suffix}")
        if suffix == "":
            entries.append(f"/{relative}-*")
    return entries


def _sqlite_file(config: Config) -> Path | None:
    url = config.store_url
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]).resolve() if url.startswith(prefix) else None


def write_gitignore(config: Config, directory: Path) -> list[str]:
    """Write (or complete) ``directory/.gitignore`` with :func:`gitignore_entries`; return them.
    An existing file keeps its lines; missing entries are appended."""
    entries = gitignore_entries(config, directory)
    path = directory / ".gitignore"
    try:
        existing = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = ""
    present = {line.strip() for line in existing.splitlines()}
    missing = [e for e in entries if e not in present]
    if missing:
        head = "" if not existing or existing.endswith("\n") else "\n"
        head += "# Written by synq init: private signing keys and the relay's database.\n"
        path.write_text(existing + head + "\n".join(missing) + "\n", encoding="utf-8")
    return entries


# --- serve --------------------------------------------------------------------------------------


#: Connections the kernel queues on a listening socket before the relay accepts them (aiohttp's
#: and asyncio's default).
LISTEN_BACKLOG = 128


def _listen_error(
    listen: str, exc: OSError, config_file: Path | None, section: str = "relay"
) -> UserError:
    where = f" in {config_file}" if config_file is not None else ""
    if exc.errno == errno.EADDRINUSE:
        why = (
            "the address is already in use (is another synq serve running?); stop that "
            f"process, or choose another [{section}] listen{where}"
        )
    elif exc.errno == errno.EACCES:
        why = (
            f"permission denied (ports below 1024 need privileges); change [{section}] "
            f"listen{where}"
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"no interface of this machine has that address; change [{section}] listen{where}"
    else:
        why = exc.strerror or str(exc)
    return UserError(f"cannot listen on {listen}: {why}")


def bind_listeners(
    host: str, port: int, *, config_file: Path | None = None, section: str = "relay"
) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (one per address the host names, as asyncio's
    ``create_server`` binds them), or UserError with one line saying what is wrong.

    ``synq serve`` binds before it opens anything else: a second relay started on a busy port
    must stop before it touches the first one's store (whose SQLite write lock it would
    otherwise contend for) and its keys. Connections that arrive while the store opens wait in
    the kernel's queue (``LISTEN_BACKLOG``)."""
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {listen}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            # As aiohttp's TCPSite(reuse_address=True): a restart may bind at once while the
            # previous process's connections sit in TIME_WAIT. (Linux still refuses a port
            # another socket listens on, which is the check wanted here.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # As asyncio does: an IPv6 socket beside an IPv4 one must not claim both.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                # Port 0 on a name with several addresses: the same port on all of them.
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _listen_error(listen, exc, config_file, section) from None
    return sockets


async def serve(
    config: Config, ready: Callable[[str], None], config_file: Path | None = None
) -> None:
    host, port = config.listen_host_port
    sockets = bind_listeners(host, port, config_file=config_file)
    # The admin listener (SPEC.md §14.1): bound as early, for the same reason.
    admin_host, admin_port = config.admin_host_port
    try:
        admin_sockets = bind_listeners(
            admin_host, admin_port, config_file=config_file, section="admin"
        )
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    sockets += admin_sockets
    try:
        relay = await Relay.open(config)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    # The web faces (and the SDKs behind them) are imported only by the commands that serve:
    # operator commands such as ``synq queue list`` start in a fraction of the time.
    from relay.server.a2a_face import A2A_FACE
    from relay.server.admin import build_admin_app
    from relay.server.app import build_app
    from relay.server.http import GatedSite, make_runner

    try:
        app = build_app(relay, own_relay=True)
        # The server's limits (header sizes, idle and body deadlines) and handler cancellation:
        # a client that hangs up mid long-poll or mid SSE stream frees its handler at once.
        runner = make_runner(app)
        # Setup starts the relay's background work; from here on runner.cleanup() closes it.
        await runner.setup()
    except BaseException:
        for sock in sockets:
            sock.close()
        await relay.close()
        raise
    admin_runner = make_runner(build_admin_app(relay))
    try:
        await admin_runner.setup()
        for sock in sockets:
            if sock in admin_sockets:
                continue
            # Connections per source address are held at accept (SPEC.md §10.3).
            await GatedSite(runner, host, port, relay.sources, sock=sock).start()
        for sock in admin_sockets:
            await GatedSite(admin_runner, admin_host, admin_port, relay.sources, sock=sock).start()
        # Everything alive now (modules, the SDKs' schemas, the application) lives as long as
        # the process. gc.freeze moves it out of the collector's generations, so that a full
        # collection under load no longer walks some 150,000 objects that can never be garbage
        # (measured: the collector's share of the floor's CPU fell from 7% to 2%).
        gc.collect()
        gc.freeze()
        bound = sockets[0].getsockname()[1]
        ready(f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}")
        admin_bound = admin_sockets[0].getsockname()[1]
        admin_url = (
            f"http://[{admin_host}]:{admin_bound}"
            if ":" in admin_host
            else f"http://{admin_host}:{admin_bound}"
        )
        print(f"synq: admin listener on {admin_url} (console: {admin_url}/console)", flush=True)
        # The A2A face's gRPC binding (SPEC.md "The A2A face"): on when [a2a] grpc_listen is
        # set; the face's lifecycle bound it during setup.
        grpc_face = app[A2A_FACE].grpc
        if grpc_face is not None:
            print(f"synq: A2A gRPC listener on {grpc_face.bound}", flush=True)
        if not config.admin_is_loopback:
            log.warning(
                "the admin listener is on %s, not loopback: /metrics and the console's login "
                "are reachable from that network",
                admin_url,
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def reload() -> None:
            # SIGHUP, as for Postfix and nginx: reread the keys directory and the config file's
            # [policy], [rate_limits] and [keys]; nothing queued is dropped.
            problem = None
            try:
                relay.reload(load_config(config_file) if config_file is not None else None)
            except SynqError as exc:
                problem = exc.message
            if problem is not None:
                log.error(
                    "reload failed; still running with the previous keys and policy: %s", problem
                )
                return
            log.info(
                "reloaded: keys %s; policy default %s",
                ", ".join(e.selector for e in relay.keyring.entries),
                relay.policy.default,
            )

        loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
    finally:
        await admin_runner.cleanup()
        await runner.cleanup()
        for sock in sockets:
            sock.close()


def cmd_serve(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    config = load_config(path)
    # The serving relay logs at [log] level (default info): one line per recipient event and
    # per request (SPEC.md §14.4), in the format --log-format or [log] format names.
    logs.configure(args.log_format or config.log.format, config.log.level)

    def ready(url: str) -> None:
        print(f"synq: {config.relay.domain} listening on {url}", flush=True)

    asyncio.run(serve(config, ready, path))
    return 0


# --- commands on the store ----------------------------------------------------------------------


async def with_relay(
    args: argparse.Namespace, fn: Callable[[Relay], Awaitable[int]], *, adapters: bool
) -> int:
    config = load_config(config_path(args.config))
    # Store-only commands run without the protocol adapters (and their SDK imports).
    relay = await Relay.open(config, adapters=None if adapters else {})
    try:
        return await fn(relay)
    finally:
        await relay.close()


def run_on_relay(
    fn: Callable[[argparse.Namespace, Relay], Awaitable[int]], *, adapters: bool = False
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        return asyncio.run(with_relay(args, lambda relay: fn(args, relay), adapters=adapters))

    return command


def local_name(relay: Relay, name: str) -> str:
    """Accept ``bob`` or ``bob@<our domain>``."""
    if "@" in name:
        addr = Address.parse(name)
        if addr.domain != relay.domain:
            raise UserError(f"{addr} is not an address of {relay.domain}")
        return addr.local
    return normalize_local(name)


async def agent_add(args: argparse.Namespace, relay: Relay) -> int:
    name = local_name(relay, args.name)
    if name in RESERVED_LOCALS:
        raise UserError(f"{name} is reserved for the relay itself")
    kind: AgentKind = "inbox"
    endpoint: str | None = None
    if args.a2a:
        kind, endpoint = "a2a", args.a2a
    elif args.mcp_stdio:
        kind, endpoint = "mcp", "stdio:" + args.mcp_stdio
    elif args.mcp_http:
        kind, endpoint = "mcp", args.mcp_http
    if endpoint is not None:
        adapter = relay.dispatcher.adapters.get(kind)
        if adapter is None:
            raise UserError(f"this relay has no {kind} adapter")
        # The adapter checks the endpoint now (card, tool list), not at the first message.
        endpoint = await adapter.check(endpoint)
    fields = _catalog_fields(args)
    token = new_token()
    record = await relay.store.create_agent(
        name, kind, hash_token(token), endpoint, relay.clock.now()
    )
    if fields:
        await set_operator_fields(relay.store, name, relay.clock.now(), **fields)
    # What an A2A agent or MCP server says it can do is searchable at once (SPEC.md §12.1).
    await relay.catalog.refresh(record)
    address = f"{name}@{relay.domain}"
    out(
        args,
        {"address": address, "kind": kind, "endpoint": endpoint, "token": token},
        f"{address} ({kind}{', ' + endpoint if endpoint else ''})\ntoken: {token}\n"
        "(the token is shown once; store it now)",
    )
    return 0


async def agent_list(args: argparse.Namespace, relay: Relay) -> int:
    agents = await relay.store.list_agents()
    rows = [
        {
            "address": f"{a.name}@{relay.domain}",
            "kind": a.kind,
            "endpoint": a.endpoint,
            "created": format_timestamp(a.created),
        }
        for a in agents
    ]
    out(args, rows, "\n".join(f"{r['address']}\t{r['kind']}\t{r['endpoint'] or '-'}" for r in rows))
    return 0


#: ``synq agent set`` value that gives the quota back to the relay's ``[quotas]`` default.
QUOTA_DEFAULT = "default"


def _count_or_default(text: str) -> int | str:
    if text == QUOTA_DEFAULT:
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a count (0 for none) or {QUOTA_DEFAULT!r}")
    return int(text)


def _size_or_default(text: str) -> int | str:
    if text == QUOTA_DEFAULT:
        return text
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (0 for none, or {QUOTA_DEFAULT!r})") from None


async def agent_set(args: argparse.Namespace, relay: Relay) -> int:
    """One agent's own mailbox quotas (SPEC.md §9.7): a value given replaces the agent's own,
    ``default`` hands it back to ``[quotas]``, one not given stays as it was."""
    name = local_name(relay, args.name)
    fields = _catalog_fields(args)
    if args.max_unacked is None and args.max_bytes is None:
        if not fields:
            raise UserError(
                "give --max-unacked, --max-bytes, --description, --tag, --query or --visibility"
            )
        if await relay.store.get_agent(name) is None:
            raise UserError(f"no agent {name}@{relay.domain}")
        await set_operator_fields(relay.store, name, relay.clock.now(), **fields)
        return await _show_entry(args, relay, name)
    if fields:
        if await relay.store.get_agent(name) is None:
            raise UserError(f"no agent {name}@{relay.domain}")
        await set_operator_fields(relay.store, name, relay.clock.now(), **fields)
    current = (await relay.store.mailbox_usage([name])).get(name)
    own_unacked = current.max_unacked if current else None
    own_bytes = current.max_bytes if current else None
    if args.max_unacked is not None:
        own_unacked = None if args.max_unacked == QUOTA_DEFAULT else args.max_unacked
    if args.max_bytes is not None:
        own_bytes = None if args.max_bytes == QUOTA_DEFAULT else args.max_bytes
    if not await relay.store.set_mailbox_quota(name, max_unacked=own_unacked, max_bytes=own_bytes):
        raise UserError(f"no agent {name}@{relay.domain}")
    quota = relay.quotas.default.own(own_unacked, own_bytes)
    address = f"{name}@{relay.domain}"

    def shown(value: int, own: int | None, text: str) -> str:
        return f"{text if value else 'none'}{'' if own is not None else ' (default)'}"

    out(
        args,
        {
            "address": address,
            "max_unacked": quota.max_unacked,
            "max_bytes": quota.max_bytes,
            "own": {"max_unacked": own_unacked, "max_bytes": own_bytes},
        },
        f"{address}: max unacked "
        f"{shown(quota.max_unacked, own_unacked, str(quota.max_unacked))}, max bytes "
        f"{shown(quota.max_bytes, own_bytes, format_size(quota.max_bytes))}",
    )
    return 0


def _catalog_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The catalog options of ``synq agent add|set`` that were given (SPEC.md §12.1); an empty
    ``--tag ''`` or ``--query ''`` clears the list."""
    fields: dict[str, Any] = {
        "visibility": args.visibility,
        "description": args.description,
        "tags": None if args.tag is None else [t for t in args.tag if t],
        "queries": None if args.query is None else [q for q in args.query if q],
    }
    if all(v is None for v in fields.values()):
        return {}
    try:
        catalog.validate_operator_fields(fields["description"], fields["tags"], fields["queries"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return fields


async def _show_entry(args: argparse.Namespace, relay: Relay, name: str) -> int:
    record = await relay.store.catalog_get(name)
    assert record is not None
    address = f"{name}@{relay.domain}"
    data = {
        "address": address,
        "visibility": record.visibility,
        "description": record.description,
        "tags": list(record.tags),
        "queries": list(record.queries),
    }
    out(args, data, f"{address}: {record.visibility}; {record.description or '(no description)'}")
    return 0


async def find(args: argparse.Namespace, relay: Relay) -> int:
    """``synq find TEXT``: the catalog searched as the operator sees it (every listed agent,
    never a private one), or as local agent ``--as NAME`` sees it."""
    who = (
        catalog.Viewer.local(f"{local_name(relay, args.as_agent)}@{relay.domain}")
        if args.as_agent
        else catalog.Viewer.operator()
    )
    body: dict[str, Any] = {
        "query": {"text": args.text},
        "federation": args.federation,
        "pageSize": args.limit,
    }
    filters: dict[str, list[str]] = {}
    if args.tag:
        filters["tags"] = args.tag
    if args.type:
        filters["type"] = [catalog.A2A_TYPE if args.type == "a2a" else catalog.MCP_TYPE]
    if filters:
        body["query"]["filter"] = filters
    try:
        request = catalog.parse_search(body)
    except catalog.InvalidArgument as exc:
        raise UserError(exc.message) from None
    page = await relay.catalog.search(who, request)
    data = page.to_json()
    lines = [
        f"{r['score']:>3}  {r['metadata']['address'] if 'metadata' in r else r['identifier']}"
        f"  {r.get('description', '')[:80]}"
        for r in page.results
        if r.get("type") == catalog.A2A_TYPE or args.type == "mcp"
    ]
    lines += [f"  →  {r['url']} (registry of {r['displayName']})" for r in page.referrals or []]
    out(args, data, "\n".join(lines) if lines else "no agent found")
    return 0


async def agent_remove(args: argparse.Namespace, relay: Relay) -> int:
    name = local_name(relay, args.name)
    if not await relay.router.agents.remove(name):
        raise UserError(f"no agent {name}@{relay.domain}")
    out(args, {"removed": f"{name}@{relay.domain}"}, f"removed {name}@{relay.domain}")
    return 0


async def agent_token(args: argparse.Namespace, relay: Relay) -> int:
    """``synq agent token NAME --rotate``: a new bearer token for an agent that keeps its
    address and inbox. Only the token's hash is stored, so a lost token cannot be shown again:
    it can only be replaced."""
    name = local_name(relay, args.name)
    address = f"{name}@{relay.domain}"
    if not args.rotate:
        raise UserError(
            "tokens are stored only as hashes and cannot be shown again; "
            f"'synq agent token {name} --rotate' issues a new one (the old one stops working)"
        )
    token = new_token()
    if not await relay.store.set_agent_token(name, hash_token(token)):
        raise UserError(f"no agent {address}")
    relay.router.agents.forget([name])
    out(
        args,
        {"address": address, "token": token},
        f"{address}\ntoken: {token}\n(the token is shown once; store it now. The old token no "
        f"longer works; a running relay may still take it for up to {AGENT_CACHE_TTL:g} s. "
        "The inbox is kept.)",
    )
    return 0


async def send(args: argparse.Namespace, relay: Relay) -> int:
    sender = Address(local_name(relay, args.sender), relay.domain)
    if await relay.store.get_agent(sender.local) is None:
        raise UserError(f"no local agent {sender}")
    to = tuple(Address.parse(a) for a in args.to.split(","))
    # Malformed keywords or keys raise SynqError, which main() prints as a typed error.
    notify = dsn.parse_notify(args.notify.split(",") if args.notify is not None else None)
    key = (
        idempotency.check_key(args.idempotency_key, "--idempotency-key")
        if args.idempotency_key is not None
        else None
    )
    draft = Draft(sender, to, "text/plain", args.text, thread=args.thread, notify=notify)
    # A retry under the same key is answered with the first send's id (SPEC.md §6.2).
    sent = await relay.mailbox.send(draft, via="cli", key=key)
    out(args, views.queued(sent.id), sent.id)
    return 0


async def inbox(args: argparse.Namespace, relay: Relay) -> int:
    name = local_name(relay, args.name)
    if await relay.store.get_agent(name) is None:
        raise UserError(f"no local agent {name}@{relay.domain}")
    items = await relay.mailbox.read(name, wait=args.wait, limit=args.limit, include_acked=args.all)
    messages = [views.envelope_object(i) for i in items]
    if args.ack:
        await relay.mailbox.ack_all(name, [item.id for item in items])
    lines = []
    for m in messages:
        body = (
            m["body"] if isinstance(m["body"], str) else json.dumps(m["body"], ensure_ascii=False)
        )
        lines.append(
            f"{m['created']}  {m['id']}  from {m['from']}  [{m['content_type']}]\n    {body}"
        )
    out(args, {"messages": messages}, "\n".join(lines) if lines else "(inbox empty)")
    return 0


async def status(args: argparse.Namespace, relay: Relay) -> int:
    wire = views.status_to_wire(await relay.mailbox.status(args.id, agent=None))
    lines = [
        f"{wire['id']}  from {wire['from']}  created {wire['created']}  expires {wire['expires']}"
    ]
    for addr, r in wire["recipients"].items():
        code = f" {r['code']}" if "code" in r else ""
        reason = f" ({r['reason']})" if "reason" in r else ""
        # A queued recipient says when it is tried next: a partner, or a local agent that is
        # down (SPEC.md §9.5).
        when = f", next {r['next_attempt']}" if "next_attempt" in r else ""
        lines.append(f"  {addr}: {r['state']}{code}{reason}, attempts {r['attempts']}{when}")
    for ev in wire["events"]:
        hop = f" via {ev['hop']}" if "hop" in ev else ""
        code = f" {ev['code']}" if "code" in ev else ""
        lines.append(f"    {ev['at']} {ev['recipient']} {ev['event']}{code}{hop}")
    out(args, wire, "\n".join(lines))
    return 0


# --- signals ------------------------------------------------------------------------------------


async def signals_list(args: argparse.Namespace, relay: Relay) -> int:
    """Open and claimed signals (this relay's and partners' replicas), strongest first."""
    from relay.core import signals as sg
    from relay.delivery.signals import MAX_ACTIVE_SCAN, signal_view

    now = relay.clock.now()
    # Settled to now: a lapsed lease shows as open, as every read shows it.
    found = [
        sg.settle(s, None, now).signal for s in await relay.store.signals_active(MAX_ACTIVE_SCAN)
    ]
    rows = sorted((signal_view(s, now) for s in found), key=lambda v: (-v["intensity"], v["id"]))
    lines = [
        f"{r['id']}  {r['state']:<7}  {r['intensity']:.3f}  {r['topic']}  from {r['emitter']}"
        + (
            f"  held by {r['claim']['holder']} until {r['claim']['expires']}"
            if "claim" in r
            else ""
        )
        for r in rows
    ]
    out(args, rows, "\n".join(lines) + f"\n-- {len(rows)} signals" if rows else "no open signals")
    return 0


async def signals_show(args: argparse.Namespace, relay: Relay) -> int:
    """One signal, its state and intensity now, and its claim history."""
    from relay.delivery.signals import signal_view

    signal, history = await relay.signals.show(args.id)
    view = signal_view(signal, relay.clock.now(), history)
    lines = [
        f"{view['id']}  {view['topic']}  from {view['emitter']}  {view['state']}  "
        f"intensity {view['intensity']:.3f}",
        f"  urgency {view['urgency']}  half-life {view['half_life']:g} s  lease "
        f"{view['lease']:g} s  scope {view['scope']}  expires {view['expires']}",
    ]
    if view["text"]:
        lines.append(f"  {view['text']}")
    for h in view["history"]:
        end = f" -> {h['outcome']} {h['ended']}" if "ended" in h else f" (lease until {h['until']})"
        lines.append(f"  claim {h['generation']}: {h['holder']} {h['claimed']}{end}")
    out(args, view, "\n".join(lines))
    return 0


# --- migrate ------------------------------------------------------------------------------------


async def migrate(config: Config) -> dict[str, Any]:
    """Open the store, which applies pending migrations (on PostgreSQL under an advisory lock, so
    replicas starting together apply each once), and say where the schema stands. ``serve``
    does the same at start; running this first lets a deploy migrate before rolling replicas."""
    from relay.store import open_store, schema_version

    store = await open_store(
        config.store_url, domain=config.relay.domain, synchronous=config.store.synchronous
    )
    try:
        applied = list(getattr(store, "applied_migrations", []))
        # The scheme only: a PostgreSQL URL may carry a password.
        return {
            "store": config.store_url.partition(":")[0],
            "schema_version": schema_version(store),
            "applied": applied,
        }
    finally:
        await store.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    result = asyncio.run(migrate(load_config(config_path(args.config))))
    applied = ", ".join(str(v) for v in result["applied"])
    out(
        args,
        result,
        f"{result['store']} store at schema version {result['schema_version']}"
        + (f" (applied now: {applied})" if applied else ""),
    )
    return 0


# --- mcp ----------------------------------------------------------------------------------------


async def mcp_stdio(args: argparse.Namespace, relay: Relay) -> int:
    """``synq mcp --agent NAME``: the relay's MCP face on stdin/stdout, acting as NAME (for a
    desktop MCP client that starts its servers as commands). Logs go to stderr."""
    name = local_name(relay, args.agent)
    agent = await relay.store.get_agent(name)
    if agent is None:
        raise UserError(f"no local agent {name}@{relay.domain}")
    from relay.server.mcp import serve_stdio as serve_mcp_stdio

    await serve_mcp_stdio(relay, agent)
    return 0


# --- dns ----------------------------------------------------------------------------------------


async def _txt_values(config: Config, name: str) -> list[str] | str:
    """The TXT strings DNS returns for ``name`` (chunks joined), or a one-word problem."""
    from relay.discovery.dnsclient import make_resolver, query

    resolver = make_resolver(config.discovery.nameservers, timeout=config.discovery.timeout)
    try:
        answer = await query(resolver, name, "TXT", lifetime=config.discovery.timeout)
    except SynqError as exc:
        return f"error: {exc.message}"
    if answer.rrset is None:
        return "missing"
    return [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer.rrset]


async def dns_command(args: argparse.Namespace, relay: Relay) -> int:
    recs = dns_records(relay.config, relay.keyring.published(relay.clock.now()))
    if not args.check:
        out(args, recs, format_records(recs))
        return 0
    problems = 0
    for rec in recs:
        found = await _txt_values(relay.config, rec["name"])
        if isinstance(found, str):
            rec["check"], problems = found, problems + 1
        elif found == [rec["value"]]:
            rec["check"] = "ok"
        else:
            rec["check"], problems = "different: " + " | ".join(found), problems + 1
    out(args, recs, "\n".join(f'{r["check"]:10} {r["name"]} "{r["value"]}"' for r in recs))
    if problems:
        raise UserError(f"{problems} of {len(recs)} DNS records are missing or differ")
    return 0


# --- keys ---------------------------------------------------------------------------------------


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key_row(config: Config, entry: KeyEntry, state: str) -> dict[str, Any]:
    return {
        "selector": entry.selector,
        "state": state,
        "created": format_timestamp(entry.created),
        "activates": format_timestamp(entry.activates),
        "retires": format_timestamp(entry.retires) if entry.retires else None,
        "dns": dns_records(config, [entry.key.public_key])[1],
    }


_RELOAD_HINT = "a running relay picks this up within seconds (or at once on SIGHUP)"


def keys_list(args: argparse.Namespace) -> int:
    """Every key file and its state now: pending, signing, verifying (superseded, still
    published for envelopes in flight) or retired (its DNS record can go)."""
    config = load_config(config_path(args.config))
    keyring = load_keyring(config.keys_dir)
    now = SystemClock().now()
    rows = [_key_row(config, e, keyring.state(e, now)) for e in keyring.entries]
    lines = [
        f"{r['selector']:16} {r['state']:9}  activates {r['activates']}"
        + (f"  retires {r['retires']}" if r["retires"] else "")
        for r in rows
    ]
    out(args, rows, "\n".join(lines))
    return 0


def keys_rotate(args: argparse.Namespace) -> int:
    """A new key, published now and signing after the overlap; or, with ``--retire``, the end
    of an old key's publication once nothing it signed can still be in flight."""
    config = load_config(config_path(args.config))
    now = SystemClock().now()
    overlap = args.overlap if args.overlap is not None else config.keys.overlap
    if args.retire is not None:
        entry = retire_key(config.keys_dir, args.retire, now, overlap)
        row = _key_row(config, entry, load_keyring(config.keys_dir).state(entry, now))
        rec = row["dns"]
        text = (
            f"key {entry.selector} stays published until {row['retires']}; after that, remove\n"
            f'    {rec["name"]} IN TXT "{rec["value"]}"\n({_RELOAD_HINT})'
        )
        out(args, row, text)
        return 0
    entry = rotate_key(config.keys_dir, now, overlap, args.selector)
    row = _key_row(config, entry, "pending")
    text = (
        f"wrote key {entry.selector}; it signs from {row['activates']}.\n\n"
        f"Publish this DNS record now:\n{format_records([row['dns']])}\n\n"
        f"({_RELOAD_HINT}; then 'synq keys rotate --retire OLD' retires the old key)"
    )
    out(args, row, text)
    return 0


# --- queue --------------------------------------------------------------------------------------


async def queue_list(args: argparse.Namespace, relay: Relay) -> int:
    """Like ``postqueue -p``: what waits for which destination, and why. Printed as it is read,
    a page at a time (Store.iter_queue): a queue of a million rows is listed in the memory of
    one page, and its first lines show at once."""
    write = sys.stdout.write
    count = 0
    async for entry in relay.store.iter_queue(args.domain):
        row = views.queue_row(entry)
        if args.json:
            # One JSON array, written element by element, as json.dumps(rows, indent=2) would.
            item = json.dumps(row, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            write(("[\n  " if count == 0 else ",\n  ") + item)
        else:
            write(
                f"{row['id']}  {row['from']} -> {row['recipient']}"
                # A local agent's hand-over waits in the queue too (SPEC.md §9.6): say so.
                + (f" [{row['domain']}]" if local_agent(str(row["domain"])) else "")
                + f"  attempts {row['attempts']}  next {row['next_attempt']}"
                + (f"\n    ({row['code']} {row['reason']})" if row["code"] else "")
                + "\n"
            )
        count += 1
    if args.json:
        write("\n]\n" if count else "[]\n")
    else:
        write(f"-- {count} queued\n" if count else "queue is empty\n")
    return 0


async def queue_flush(args: argparse.Namespace, relay: Relay) -> int:
    """Like ``postqueue -f`` (or ``-s DOMAIN``): everything queued is due now."""
    count = await relay.flush_queue(domain=args.domain)
    out(args, {"flushed": count}, f"{count} queued recipients are due now")
    return 0


async def queue_retry(args: argparse.Namespace, relay: Relay) -> int:
    """Requeue one message (``postsuper -r``): its queued recipients are due now."""
    count = await relay.flush_queue(id=args.id)
    if count == 0:
        raise UserError(f"no queued recipients for message {args.id}")
    out(args, {"retried": count}, f"{count} recipients of {args.id} are due now")
    return 0


async def queue_delete(args: argparse.Namespace, relay: Relay) -> int:
    """Like ``postsuper -d``: drop queued recipients without a DSN."""
    if args.id is None and args.domain is None and not args.all:
        raise UserError("say which: an ID, --domain D, or --all")
    count = await relay.delete_queued(id=args.id, domain=args.domain)
    if count == 0 and args.id is not None:
        raise UserError(f"no queued recipients for message {args.id}")
    out(args, {"deleted": count}, f"{count} queued recipients deleted")
    return 0


# --- admin --------------------------------------------------------------------------------------


def admin_token(args: argparse.Namespace) -> int:
    """Make the admin token of the console and print it, once (SPEC.md §14.1)."""
    from relay.admintoken import new_admin_token

    config = load_config(config_path(args.config))
    token = new_admin_token(config.admin_token_path, replace=args.rotate)
    host, port = config.admin_host_port
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/console"
    text = (
        f"{token}\n(shown this once; the relay keeps only its hash in {config.admin_token_path}.\n"
        f" Open {url} and paste it, or send it as 'Authorization: Bearer'.)"
    )
    out(args, {"token": token, "console": url}, text)
    return 0


# --- parser -------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from relay.demo import run_demo

    return run_demo()


def _catalog_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--description", help="what the agent does, for discovery")
    parser.add_argument("--tag", action="append", metavar="T", help="a tag (repeatable)")
    parser.add_argument(
        "--query",
        action="append",
        metavar="Q",
        help="a representative query, as a user would ask (2 to 5, repeatable)",
    )
    parser.add_argument(
        "--visibility",
        choices=catalog.VISIBILITIES,
        help="who sees it listed: private, local (default), partners, public",
    )


def build_parser() -> argparse.ArgumentParser:
    # The global options are accepted before and after the command. The copies on the
    # subcommands default to SUPPRESS, or their default would overwrite a value given earlier.
    top = argparse.ArgumentParser(add_help=False)
    top.add_argument("--config", help="config file (default ./synq.toml or $SYNQ_CONFIG)")
    top.add_argument("--json", action="store_true", help="print JSON for scripts")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )

    p = argparse.ArgumentParser(prog="synq", description="Synq relay", parents=[top])
    p.add_argument("--version", action="version", version=f"synq {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser(
        "init",
        parents=[common],
        help="write a config file and a key pair",
        description="Write DIR/synq.toml, a signing key in DIR/keys/ (mode 0600) and a "
        "DIR/.gitignore that keeps the keys and the database out of git; print the DNS "
        "records to publish.",
    )
    init.add_argument(
        "--domain", required=True, help="the domain whose agents this relay serves (acme.example)"
    )
    init.add_argument(
        "--listen",
        default="127.0.0.1:8443",
        metavar="HOST:PORT",
        help="where synq serve listens (default: %(default)s)",
    )
    init.add_argument(
        "--public-url",
        default="",
        metavar="URL",
        help="the URL partners and agent cards use (default: http://HOST:PORT of --listen)",
    )
    init.add_argument(
        "--store",
        default="sqlite:///./synq.db",
        metavar="URL",
        help="sqlite:///PATH (relative to DIR) or postgresql://USER@HOST/DB (default: %(default)s)",
    )
    init.add_argument(
        "--dir", default=".", help="the relay directory to write (default: the current one)"
    )
    init.add_argument(
        "--nameserver",
        action="append",
        metavar="HOST:PORT",
        help="a DNS server for discovering partners, repeatable (default: the system's)",
    )
    init.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="let partners and webhooks be on loopback or private networks, over http "
        "(loopback tests and demos only)",
    )
    init.set_defaults(func=cmd_init)

    sv = sub.add_parser("serve", parents=[common], help="run the relay")
    sv.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines for people (text) or one JSON object a line; default: [log] format",
    )
    sv.set_defaults(func=cmd_serve)

    agent = sub.add_parser("agent", parents=[common], help="manage local agents")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    add = asub.add_parser("add", parents=[common], help="register a local agent")
    add.add_argument("name")
    backing = add.add_mutually_exclusive_group()
    backing.add_argument(
        "--a2a",
        metavar="URL",
        help="an A2A agent: its base URL (card at URL/.well-known/agent-card.json)",
    )
    backing.add_argument(
        "--mcp-stdio", metavar="CMD", help="an MCP server started as CMD, spoken to on stdio"
    )
    backing.add_argument("--mcp-http", metavar="URL", help="an MCP server at a streamable HTTP URL")
    _catalog_options(add)
    add.set_defaults(func=run_on_relay(agent_add, adapters=True))
    ls = asub.add_parser("list", parents=[common], help="list local agents")
    ls.set_defaults(func=run_on_relay(agent_list))
    st = asub.add_parser(
        "set",
        parents=[common],
        help="an agent's own mailbox quotas (default: [quotas]) and catalog entry",
    )
    st.add_argument("name")
    st.add_argument(
        "--max-unacked",
        type=_count_or_default,
        metavar="N",
        help=f"unacknowledged messages before new mail waits (0: none; {QUOTA_DEFAULT!r})",
    )
    st.add_argument(
        "--max-bytes",
        type=_size_or_default,
        metavar="SIZE",
        help=f"their bytes, e.g. 50MB (0: none; {QUOTA_DEFAULT!r})",
    )
    _catalog_options(st)
    st.set_defaults(func=run_on_relay(agent_set))
    rm = asub.add_parser("remove", parents=[common], help="remove a local agent and its inbox")
    rm.add_argument("name")
    rm.set_defaults(func=run_on_relay(agent_remove))
    tk = asub.add_parser(
        "token", parents=[common], help="issue a new bearer token (--rotate); the inbox stays"
    )
    tk.add_argument("name")
    tk.add_argument(
        "--rotate",
        action="store_true",
        help="replace the token: prints the new one, the old one stops working",
    )
    tk.set_defaults(func=run_on_relay(agent_token))

    sd = sub.add_parser("send", parents=[common], help="send as a local agent (operator)")
    sd.add_argument("sender", metavar="FROM")
    sd.add_argument("to", metavar="TO", help="address, or several separated by commas")
    sd.add_argument("text", metavar="TEXT")
    sd.add_argument("--thread")
    sd.add_argument(
        "--notify",
        metavar="KEYWORDS",
        help="receipts to ask for, comma-separated: success,delay,failure or never (SPEC.md §6.2)",
    )
    sd.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a retry with the same key sends nothing twice (SPEC.md §6.2)",
    )
    sd.set_defaults(func=run_on_relay(send))

    ib = sub.add_parser("inbox", parents=[common], help="read a local agent's inbox")
    ib.add_argument("name")
    ib.add_argument("--wait", type=float, default=0.0, metavar="S")
    ib.add_argument("--ack", action="store_true", help="acknowledge what is printed")
    ib.add_argument("--all", action="store_true", help="include acknowledged messages")
    ib.add_argument("--limit", type=int, default=50)
    ib.set_defaults(func=run_on_relay(inbox))

    mg = sub.add_parser(
        "migrate", parents=[common], help="apply pending store migrations; print the version"
    )
    mg.set_defaults(func=cmd_migrate)

    dn = sub.add_parser("dns", parents=[common], help="DNS records to publish; --check compares")
    dn.add_argument("--check", action="store_true", help="compare with what DNS returns")
    dn.set_defaults(func=run_on_relay(dns_command))

    ky = sub.add_parser(
        "keys", parents=[common], help="signing keys: list, rotate (rotate --retire OLD ends one)"
    )
    ksub = ky.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kl = ksub.add_parser("list", parents=[common], help="key selectors and their state")
    kl.set_defaults(func=keys_list)
    kr = ksub.add_parser(
        "rotate", parents=[common], help="publish a new key that signs after the overlap"
    )
    kr.add_argument(
        "--overlap",
        type=_duration,
        metavar="DURATION",
        help="publication before signing, e.g. 48h (default: [keys] overlap)",
    )
    kr.add_argument("--selector", help="the new key's selector (default: s<activation date>)")
    kr.add_argument(
        "--retire",
        metavar="SELECTOR",
        help="instead: retire this key once nothing it signed can be in flight",
    )
    kr.set_defaults(func=keys_rotate)

    q = sub.add_parser("queue", parents=[common], help="the federation queue (postqueue/postsuper)")
    qsub = q.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    ql = qsub.add_parser("list", parents=[common], help="list queued recipients (postqueue -p)")
    ql.add_argument("--domain", help="one destination: a partner domain, or local:AGENT")
    ql.set_defaults(func=run_on_relay(queue_list))
    qf = qsub.add_parser("flush", parents=[common], help="retry everything now (postqueue -f)")
    qf.add_argument("--domain", help="one destination: a partner domain, or local:AGENT")
    qf.set_defaults(func=run_on_relay(queue_flush))
    qr = qsub.add_parser("retry", parents=[common], help="retry one message now (postsuper -r)")
    qr.add_argument("id")
    qr.set_defaults(func=run_on_relay(queue_retry))
    qd = qsub.add_parser("delete", parents=[common], help="drop queued recipients (postsuper -d)")
    qd.add_argument("id", nargs="?")
    qd.add_argument("--domain")
    qd.add_argument("--all", action="store_true", help="everything queued")
    qd.set_defaults(func=run_on_relay(queue_delete))

    ad = sub.add_parser("admin", parents=[common], help="the admin listener and console")
    adsub = ad.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    at = adsub.add_parser(
        "token", parents=[common], help="make the console's admin token and print it once"
    )
    at.add_argument(
        "--rotate", action="store_true", help="replace it: the old one and its sessions end"
    )
    at.set_defaults(func=admin_token)

    dm = sub.add_parser(
        "demo", parents=[common], help="two relays federating on loopback, step by step"
    )
    dm.set_defaults(func=_demo)

    mc = sub.add_parser(
        "mcp", parents=[common], help="the relay's MCP face on stdio, acting as a local agent"
    )
    mc.add_argument("--agent", required=True, metavar="NAME")
    mc.set_defaults(func=run_on_relay(mcp_stdio, adapters=True))

    sg = sub.add_parser("signals", parents=[common], help="signals: work offered by urgency")
    sgsub = sg.add_subparsers(dest="signals_command", required=True, metavar="ACTION")
    sgl = sgsub.add_parser("list", parents=[common], help="open and claimed signals")
    sgl.set_defaults(func=run_on_relay(signals_list))
    sgs = sgsub.add_parser("show", parents=[common], help="one signal and its claim history")
    sgs.add_argument("id")
    sgs.set_defaults(func=run_on_relay(signals_show))

    fd = sub.add_parser("find", parents=[common], help="search the agent catalog (SPEC.md §12)")
    fd.add_argument("text", metavar="TEXT", help="what you need, in plain words")
    fd.add_argument("--tag", action="append", metavar="T", help="only entries with this tag")
    fd.add_argument("--type", choices=("a2a", "mcp"), help="only A2A agents or MCP servers")
    fd.add_argument("--federation", choices=("auto", "referrals", "none"), default="auto")
    fd.add_argument("--limit", type=int, default=10, metavar="N", help="results (1-100)")
    fd.add_argument("--as", dest="as_agent", metavar="NAME", help="search as this local agent")
    fd.set_defaults(func=run_on_relay(find))
    stt = sub.add_parser("status", parents=[common], help="per-recipient state of a message")
    stt.add_argument("id")
    stt.set_defaults(func=run_on_relay(status))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands other than serve print their answer on stdout; their log keeps to warnings, and
    # the libraries' INFO lines (httpx's per request, the SDKs') stay out of it.
    logs.configure("text", "warning", force=False)
    try:
        return int(args.func(args))
    except (UserError, SynqError) as exc:
        message = exc.message if isinstance(exc, SynqError) else str(exc)
        print(f"synq: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
