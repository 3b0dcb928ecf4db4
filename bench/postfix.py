"""The SMTP anchor: Postfix relaying N ~1 KB messages to a sink, end to end, on loopback.

A private Postfix instance, configured here in a temporary directory of its own (its own
``config_directory``, ``queue_directory`` and ``data_directory``), listening on 127.0.0.1 on a
port chosen free, relays everything to ``smtp-sink`` on another free loopback port
(``relayhost = [127.0.0.1]:<sink>``), with its default queue durability: every message is a
queue file written and fsynced before Postfix answers 250 (the cleanup daemon), then moved
through the queue by qmgr and deleted once the sink took it. ``smtp-source`` injects the
messages over ``-s`` parallel sessions; the clock runs from the first connection to the
sink's count reaching N (``smtp-sink -M N`` exits then).

Debian's ``postfix`` package carries all three programs. ``ensure_installed`` installs it
when it is missing (``apt-get`` with "No configuration", so nothing system-wide is set up or
started); the system's own Postfix is never started or touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port

POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"

#: Message length handed to smtp-source (headers are added on top): ~1 KB messages.
MESSAGE_BYTES = 1024

MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {dir}/etc
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtputf8_enable = no
biff = no
append_dot_mydomain = no
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog
"""


@dataclass
class PostfixResult:
    n: int
    seconds: float
    version: str

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def missing() -> str | None:
    """None when Postfix and its tools are installed, else what is missing."""
    absent = [p for p in (POSTFIX, SMTP_SOURCE, SMTP_SINK) if not os.path.exists(p)]
    return f"not installed: {', '.join(absent)}" if absent else None


def ensure_installed() -> str | None:
    """Install Debian's ``postfix`` package if needed; None when it is there, else why not."""
    if missing() is None:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "postfix is not installed (apt-get install postfix, as root, with no configuration)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    selection = "postfix postfix/main_mailer_type select No configuration\n"
    subprocess.run(["debconf-set-selections"], input=selection.encode(), check=False, env=env)
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postfix"]):
        done = subprocess.run(argv, capture_output=True, env=env, timeout=900, check=False)
        if done.returncode != 0:
            return f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-300:]}"
    return missing()


def version() -> str:
    done = subprocess.run(
        ["/usr/sbin/postconf", "-d", "-h", "mail_version"], capture_output=True, check=False
    )
    return done.stdout.decode().strip() or "?"


async def run(n: int, sessions: int = 32, timeout: float = 1800.0) -> PostfixResult:
    """Seconds for Postfix to relay ``n`` messages from smtp-source to smtp-sink."""
    base, smtpd_port, sink_port = _configure()
    sink = None
    started_postfix = False
    try:
        sink = await asyncio.create_subprocess_exec(
            SMTP_SINK, "-u", "postfix", "-M", str(n), f"127.0.0.1:{sink_port}", "1024",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _postfix(base, "start")
        started_postfix = True
        await _wait_listening(smtpd_port)
        started = time.perf_counter()
        source = await asyncio.create_subprocess_exec(
            SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(n), "-l", str(MESSAGE_BYTES),
            "-f", "alice@acme.test", "-t", "bob@globex.test", "-M", "source.bench.test",
            f"127.0.0.1:{smtpd_port}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, source_err = await source.communicate()
        if source.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {source_err.decode(errors='replace')}")
        try:
            await asyncio.wait_for(sink.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"smtp-sink did not receive {n} messages in {timeout:.0f} s"
            ) from None
        seconds = time.perf_counter() - started
        return PostfixResult(n=n, seconds=seconds, version=version())
    finally:
        if started_postfix:
            _postfix(base, "abort")
        if sink is not None and sink.returncode is None:
            sink.kill()
            await sink.wait()
        shutil.rmtree(base, ignore_errors=True)


def _configure() -> tuple[Path, int, int]:
    """A private instance's directories and configuration: (its directory, smtpd's port,
    smtp-sink's port)."""
    # Postfix's daemons run as the postfix user: its directories must be reachable by it.
    base = Path(tempfile.mkdtemp(prefix="synq-bench-postfix-"))
    base.chmod(0o755)
    etc = base / "etc"
    etc.mkdir()
    # queue_directory: root's (postfix start makes its subdirectories); data_directory: postfix's.
    (base / "queue").mkdir()
    (base / "data").mkdir(mode=0o700)
    shutil.chown(base / "data", user="postfix")
    smtpd_port, sink_port = free_port(), free_port()
    while sink_port == smtpd_port:
        sink_port = free_port()
    (etc / "main.cf").write_text(MAIN_CF.format(dir=base, sink=sink_port))
    (etc / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{smtpd_port}"))
    return base, smtpd_port, sink_port


def _postfix(base: Path, command: str) -> None:
    done = subprocess.run(
        [POSTFIX, "-c", str(base / "etc"), command], capture_output=True, timeout=60, check=False
    )
    if done.returncode != 0 and command == "start":
        log = (
            (base / "maillog").read_text(errors="replace")[-1000:]
            if (base / "maillog").exists()
            else ""
        )
        raise RuntimeError(f"postfix {command} failed: {done.stderr.decode(errors='replace')}{log}")


async def _wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("postfix's smtpd did not start listening") from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
