"""A throwaway PostgreSQL cluster for the tests (and the benchmark), from the machine's binaries.

One cluster per test session, started at first use and stopped when pytest ends
(``config.add_cleanup``); an empty database per test. A database a test is done with is wiped
(its sessions ended, its ``public`` schema dropped and made anew: a few milliseconds) and handed
to a later test, because CREATE DATABASE costs 60–400 ms here.
The cluster lives in a private temporary directory: data, log and unix socket, so nothing
is shared with another run or a system cluster. It listens on loopback on a free port too, but
the tests connect through the socket.

Why not the pytest-postgresql plugin: it runs ``pg_ctl`` as the invoking user and keeps its
data directory under pytest's temporary root, which is private to root. Development containers
and CI run as root, and ``initdb`` refuses root, so the plugin would need a wrapper script, a
changed owner for its directories and a relaxed mode on pytest's; this module does only what is
needed, visibly.

Running as root, the server runs as the ``postgres`` system user (Debian's packages create it),
or ``nobody`` where there is none. Binaries: the directory of ``pg_ctl`` on PATH (followed
through its symlink, as Debian's wrapper points into ``/usr/lib/postgresql/N/bin``), else the
newest ``/usr/lib/postgresql/*/bin``.

Where PostgreSQL is missing or cannot start, the PostgreSQL-backed tests are skipped with the
reason — except in CI (``CI=true``), where they fail: a CI run must not pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import pytest

#: The store backends every store and federation test runs on.
BACKENDS = ["sqlite", "postgresql"]

#: Server settings for the throwaway cluster. fsync and full-page writes off: a test cluster
#: never survives a power cut anyway, and they cost most of a commit's time. A durable cluster
#: (``durable=True``, the benchmark's) keeps PostgreSQL's defaults for them.
_FAST: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_COMMON: dict[str, str] = {
    # Every test opens stores of up to 11 connections (pool, writer, listener), the scale-out
    # test several processes of them.
    "max_connections": "300",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}

_STARTUP_TIMEOUT = 60


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pg_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    found = shutil.which("pg_ctl")
    candidates: list[Path] = []
    if found:
        candidates.append(Path(os.path.realpath(found)).parent)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL cluster in a private temporary directory."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.base = Path(tempfile.mkdtemp(prefix="synq-pg-"))
        self.data = self.base / "data"
        self.port = 0
        self._user: tuple[int, int] | None = None
        self._admin: Any = None
        self._lock = threading.Lock()
        self._count = 0
        self._free: list[str] = []
        self.started = False

    def _run(self, *argv: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user[0], "group": self._user[1], "extra_groups": []}
        subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            check=True,
            capture_output=True,
            timeout=_STARTUP_TIMEOUT,
            cwd=self.base,
            **kwargs,
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            # initdb refuses root: run the server as an unprivileged system user.
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    entry = pwd.getpwnam(name)
                    self._user = (entry.pw_uid, entry.pw_gid)
                    break
            if self._user is None:
                raise RuntimeError("running as root and no postgres or nobody user exists")
            os.chown(self.base, *self._user)
        self._run(
            "initdb", "-D", str(self.data), "--no-sync", "--auth=trust", "--username=postgres",
            "--encoding=UTF8", "--locale=C",
        )  # fmt: skip
        settings = {**_COMMON, **({} if self.durable else _FAST)}
        last: subprocess.CalledProcessError | None = None
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port = _free_port()
            options = " ".join(
                [
                    f"-c port={self.port}",
                    "-c listen_addresses=127.0.0.1",
                    f"-c unix_socket_directories={self.base}",
                    *(f"-c {key}={value}" for key, value in settings.items()),
                ]
            )
            try:
                self._run(
                    "pg_ctl", "start", "-D", str(self.data), "-l", str(self.base / "server.log"),
                    "-w", "-t", str(_STARTUP_TIMEOUT), "-o", options,
                )  # fmt: skip
            except subprocess.CalledProcessError as exc:
                last = exc
                continue
            self.started = True
            return
        raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}") from last

    def log_tail(self) -> str:
        try:
            return (self.base / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no server log)"

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` through the cluster's unix socket."""
        return f"postgresql://postgres@/{dbname}?host={self.base}&port={self.port}"

    def _admin_conn(self) -> Any:
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url(), autocommit=True)
        return self._admin

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement on the ``postgres`` database as the superuser."""
        with self._lock:
            cursor = self._admin_conn().execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def acquire_database(self) -> str:
        """An empty database: a wiped one a previous test released, or a new one."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return self.create_database()

    def release_database(self, name: str) -> None:
        """Wipe ``name`` and keep it for the next test. Ending its sessions first: a store a
        test forgot to close must not hold locks or see the next test's data."""
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        import psycopg

        with psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        with self._lock:
            self._free.append(name)

    def create_database(self, prefix: str = "t") -> str:
        with self._lock:
            self._count += 1
            name = f"{prefix}_{os.getpid()}_{self._count}"
        # FILE_COPY: copying template0's files measured several times faster here than
        # PostgreSQL 15's default WAL_LOG strategy (which writes the whole template into the
        # WAL); its checkpoint costs little with fsync off.
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return name

    def stop(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        if self.started:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)


_cluster: Cluster | None = None
_failure: str | None = None


def _unavailable(reason: str) -> NoReturn:
    import pytest

    if _in_ci():
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available here: {reason}")


def cluster(config: pytest.Config) -> Cluster:
    """The session's cluster, started on first use and stopped when pytest ends."""
    global _cluster, _failure
    if _cluster is not None:
        return _cluster
    if _failure is not None:
        _unavailable(_failure)
    bindir = pg_bindir()
    if bindir is None:
        _failure = "no initdb/pg_ctl/postgres binaries (install PostgreSQL 15's server package)"
        _unavailable(_failure)
    candidate = Cluster(bindir)
    try:
        candidate.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        detail = (
            exc.stderr.decode(errors="replace") if hasattr(exc, "stderr") and exc.stderr else ""
        )
        candidate.stop()
        _failure = f"{exc} {detail}".strip()
        _unavailable(_failure)
    _cluster = candidate

    def stop() -> None:
        global _cluster
        candidate.stop()
        _cluster = None

    config.add_cleanup(stop)
    return candidate


def current() -> Cluster:
    """The running session cluster (for a test that already holds one of its databases)."""
    assert _cluster is not None, "no PostgreSQL cluster is running"
    return _cluster


def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of the session's cluster for the requesting test."""
    pg = cluster(request.config)
    name = pg.acquire_database()
    request.addfinalizer(lambda: pg.release_database(name))
    return pg.url(name)


def store_urls(request: pytest.FixtureRequest, backend: str) -> Callable[[str], str]:
    """For ``backend``, a function giving each relay (by domain) the store URL of its own,
    empty database: a relative SQLite file in the relay's directory, or a fresh PostgreSQL
    database."""
    if backend == "sqlite":
        return lambda _domain: "sqlite:///synq.db"
    if backend == "postgresql":
        cluster(request.config)  # skip or fail before creating anything
        return lambda _domain: database_url(request)
    raise AssertionError(f"no store for backend {backend!r}")
