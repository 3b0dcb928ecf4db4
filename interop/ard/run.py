"""Run the Agentic Resource Discovery (ARD) conformance tool against a running Synq relay.

    python interop/ard/run.py [--ard-spec DIR]      (or ARD_SPEC=DIR)

DIR is a checkout of github.com/ards-project/ard-spec; the tool is its
``conformance/bin/conformance-test``, a Python script with no dependency (it validates the
manifest against the ARD JSON Schema too when ``jsonschema`` is installed, as it is beside
Synq). What runs, on loopback: ``synq init`` and ``synq serve`` for ``acme.test`` in a
temporary directory, with three agents — one ``public``, one ``local``, one ``private`` — then
the tool in both modes:

* ``registry <relay>/ard`` — ``GET /agents``, ``POST /search``, ``POST /explore``;
* ``manifest <relay>/.well-known/ard.json``.

Its output is printed as it is; the exit status is 0 when both modes pass.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

#: The agents the relay lists: (name, visibility, description, tags, queries).
AGENTS = (
    (
        "translator",
        "public",
        "Translates invoice documents to German",
        ["finance", "translation"],
        ["translate an invoice into German", "German invoice translation"],
    ),
    ("weather", "local", "Weather forecasts for any city", ["weather"], []),
    ("payroll", "private", "Runs the payroll", ["finance"], []),
)


def tool_path(checkout: Path) -> Path:
    return checkout / "conformance" / "bin" / "conformance-test"


def find_checkout(given: str | None) -> Path | None:
    text = given or os.environ.get("ARD_SPEC")
    if not text:
        return None
    path = Path(text)
    return path if tool_path(path).is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _synq(directory: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "relay.cli", "--config", str(directory / "synq.toml"), *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def run(checkout: Path) -> int:
    """Start a relay, run both modes, stop the relay; 0 when both passed."""
    with tempfile.TemporaryDirectory(prefix="synq-ard-") as tmp:
        directory = Path(tmp) / "acme"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        subprocess.run(
            [
                sys.executable, "-m", "relay.cli", "init", "--domain", "acme.test",
                "--dir", str(directory), "--listen", f"127.0.0.1:{port}", "--public-url", url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for name, visibility, description, tags, queries in AGENTS:
            extra = [a for t in tags for a in ("--tag", t)]
            extra += [a for q in queries for a in ("--query", q)]
            _synq(directory, "agent", "add", name, "--visibility", visibility,
                  "--description", description, *extra)  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "--config", str(directory / "synq.toml"), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("the relay did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            status = 0
            for mode, target in (
                ("registry", f"{url}/ard"),
                ("manifest", f"{url}/.well-known/ard.json"),
            ):
                print(f"$ conformance-test {mode} {target}", flush=True)
                done = subprocess.run(
                    [sys.executable, str(tool_path(checkout)), mode, target], check=False
                )
                status |= done.returncode
            return status
        finally:
            server.terminate()
            server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ard-spec", help="a checkout of ards-project/ard-spec (or $ARD_SPEC)")
    args = parser.parse_args(argv)
    checkout = find_checkout(args.ard_spec)
    if checkout is None:
        print(
            "give a checkout of ards-project/ard-spec: --ard-spec DIR or ARD_SPEC", file=sys.stderr
        )
        return 2
    return run(checkout)


if __name__ == "__main__":
    sys.exit(main())
