"""Synq's benchmark suite: every figure beside a baseline measured in the same run.

    python -m bench                     the quick run (about 2 minutes on an idle 2-core machine)
    python -m bench --full              N = 10,000 and 100,000; queues of 100,000 and 1,000,000
    python -m bench --json              the same figures as one JSON document
    python -m bench --store postgresql  adds relay→relay with the receiver on PostgreSQL (1, 3 procs)
    python -m bench --profile DIR       py-spy profiles of the relays, summarised at the end
    python bench/run.py …               the same

Sections (``--only``/``--skip`` pick them): ``throughput`` (bare aiohttp baseline, local
send→inbox and relay→relay, each with single messages and with ``--batch`` messages per request;
bench/throughput.py), ``floor`` (the same per-envelope work with no
HTTP and no processes; bench/floor.py), ``postfix`` (the SMTP anchor; bench/postfix.py),
``protocols`` (A2A and MCP direct vs through two relays; bench/protocols.py), ``breakdown``
(the same relayed calls with tracing on, cut into steps by their spans; bench/breakdown.py),
``backlog``
(memory with a queue for a partner that is down, and the drain; bench/backlog.py),
``discovery`` (a search over 10,000 catalog entries beside one agent card look-up;
bench/discovery.py), ``soak``
(steady traffic for ``--soak-seconds`` with retention compressed to seconds, the store's size
sampled until it stops growing; bench/soak.py — run by ``--only soak`` or ``--full`` only),
``fedsearch`` (federated search over three partner registries of 10,000 entries beside one
round trip, and a dead partner's cost; bench/fedsearch.py),
``coordination`` (signals beside a central dispatcher on a SQLite queue: tens of workers,
Poisson arrivals, churn; one relay, two relays, and two relays with the partner links cut; sized
by ``--coord-seconds``, ``--coord-agents``, ``--coord-rate``; bench/coordination.py),
``tracing`` (relay→relay with tracing off, on without export, on with OTLP export, in one
process; bench/tracing.py — run by ``--only tracing`` or ``--full`` only).

Every server is its own process on loopback, on ports the OS chose; the load generator is this
process. Relays run with SQLite ``synchronous=FULL`` (committed and fsynced before any 202 or
"accepted") and with the per-sender rate limits lifted (the suite measures capacity).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# ``python bench/run.py`` puts bench/ first on the path; the suite imports bench.* and tests.pg.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    backlog,
    breakdown,
    coordination,
    discovery,
    fedsearch,
    floor,
    postfix,
    protocols,
    signals,
    soak,
    throughput,
    tracing,
)  # fmt: skip
from bench.common import Proc
from bench.profile import Profile, Profiler

#: Envelopes the floor also takes one at a time (batches of one: a commit per step).
SINGLE_FLOOR_N = 300
#: Seconds the soak sends by default: SQLite's store levels off after about 6 minutes,
#: PostgreSQL's a few minutes later.
SOAK_SECONDS = 600.0
SOAK_SECONDS_POSTGRESQL = 900.0

SECTIONS = (
    "throughput", "floor", "postfix", "protocols", "breakdown", "backlog", "discovery", "fedsearch",
    "signals", "coordination", "tracing", "soak",
)  # fmt: skip
#: What a run without ``--only`` measures: the soak takes ten minutes, so only ``--full`` or
#: ``--only soak`` runs it; tracing's cost is measured by ``--only tracing`` or ``--full``.
DEFAULT_SECTIONS = SECTIONS[:-2]

#: The performance targets the run judges, printed under "targets" (README.md, "Benchmarks").
TARGET_RATE = 5_000.0
TARGET_FLOOR_SHARE = 0.60
#: Relay -> relay against Postfix relaying the same messages: batched, and one message per
#: request.
TARGET_POSTFIX_RATIO = 6.0
TARGET_POSTFIX_SINGLE_RATIO = 2.5
#: A2A and MCP through two relays: p50 at most this many times the direct call's p50, and
#: the relayed p99 at most this many times the relayed p50 (no long tail).
TARGET_RELAYED_RATIO = 3.0
TARGET_RELAYED_TAIL = 2.0
#: A relayed call costs the same late in a run as early: the p50 of the last third of the calls
#: at most this many times that of the first third. A cost that grows with what the relay has
#: handled (a query that walks an agent's whole inbox) shows here before the absolute figures.
TARGET_RELAYED_DRIFT = 1.25
TARGET_RSS_GROWTH = 0.20
TARGET_DRAIN_SHARE = 0.80
TARGET_SOAK_PLATEAU = soak.PLATEAU_SHARE
#: Federated search over 3 partners: p50 at most this many times one round trip to one partner
#: (one search at a registry of 10,000 entries plus one loopback round trip).
TARGET_FEDSEARCH_RATIO = 3.0
#: Search p50 over 10,000 catalog entries against one card look-up's p50 (SPEC.md §12).
TARGET_SEARCH_RATIO = 3.0
#: Signals beside a central dispatcher (bench/coordination.py): emit -> claim p50 at most this
#: many times the dispatcher's, and an orphaned claim taken again within the lease plus this.
TARGET_CLAIM_RATIO = 2.0
TARGET_RECOVERY_SLACK = 1.0


def _relay_ratios(
    report: Report,
    doc: dict[str, Any],
    what: str,
    key: str,
    fresh: dict[int, float],
    batched: dict[int, float],
    n: int,
    base: float,
    base_unit: str,
    shown: str,
    goal: str,
    target: float,
    suffix: str = "",
) -> None:
    """Relay -> relay (single messages, and batched) over ``base``: one row each, and the
    target judged on the batched run where there is one. The single-message run carries one
    HTTP request per envelope, which neither the floor nor the relay's own batching has; an
    agent that fans out sends batches (SPEC.md §6.2.1), as the 5,000 env/s target assumes."""
    for label, runs in (("", fresh), (", batched", batched)):
        if runs:
            ratio = runs.get(n, max(runs.values())) / base
            doc[key + label.replace(", ", "_")] = ratio
            report.row(
                f"relay -> relay{label} / {what}", f"{ratio:.2f}{suffix}", _rate(base, base_unit),
                f"{ratio:.2f}",
            )  # fmt: skip
    judged = batched or fresh
    if judged:
        ratio = judged.get(n, max(judged.values())) / base
        label = ", batched" if batched else ""
        report.target(f"relay -> relay{label} / {what}", shown.format(ratio), goal, ratio >= target)


def _sizes(text: str) -> list[int]:
    return sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Report:
    """The figures of one run: rows for the table, values for --json, notes for what was not
    measured and why."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self.rows: list[tuple[str, str, str, str]] = []
        self.notes: list[str] = []
        self.targets: list[tuple[str, str, str, bool | None]] = []
        self.profiles: list[Profile] = []

    def section(self, title: str) -> None:
        self.rows.append((f"[{title}]", "", "", ""))

    def row(self, name: str, value: str, baseline: str = "", ratio: str = "") -> None:
        self.rows.append((name, value, baseline, ratio))

    def target(self, what: str, reached: str, goal: str, met: bool | None) -> None:
        self.targets.append((what, reached, goal, met))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def print(self) -> None:
        doc = self.doc
        print(
            f"\nSynq benchmarks: {doc['cpus']} CPUs, load average {doc['load_before']} before "
            f"and {doc['load_after']} after, SQLite synchronous=FULL, "
            f"{doc['seconds']:.0f} s in all"
        )
        widths = (52, 20, 26, 10)
        head = ("figure", "value", "beside", "ratio")
        print("  " + "".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
        for name, value, baseline, ratio in self.rows:
            if name.startswith("["):
                print(f"  {name}")
                continue
            cells = (name, value, baseline, ratio)
            print("  " + "".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if self.targets:
            print("\n  targets")
            for what, reached, goal, met in self.targets:
                mark = "n/a" if met is None else ("met" if met else "MISSED")
                print(f"  {what:52}{reached:20}{goal:26}{mark}")
        for text in self.notes:
            print(f"  note: {text}")
        for profile in self.profiles:
            print(f"\n  profile {profile.label}: {profile.samples} samples ({profile.path})")
            print("    self                                                        total")
            totals = profile.top("total", 12)
            for i, (name, share) in enumerate(profile.top("self", 12)):
                other = f"{totals[i][1]:5.1%} {totals[i][0][:55]}" if i < len(totals) else ""
                print(f"    {share:5.1%} {name[:55]:55} {other}")


def _rate(value: float, unit: str = "/s") -> str:
    return f"{value:,.0f} {unit}".strip()


def _cpu_row(report: Report, doc: dict[str, Any], key: str, cpu: dict[str, float]) -> None:
    """The CPU each relay spent per envelope in a relay -> relay run (all its threads):
    unlike the rate it hardly moves with the machine's load, so it compares two builds."""
    report.row(
        "  CPU us per envelope: acme / globex",
        f"{cpu['acme'] * 1e6:.0f} / {cpu['globex'] * 1e6:.0f}",
    )
    doc[f"{key}_cpu_us_per_envelope"] = {k: v * 1e6 for k, v in cpu.items()}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _mb(value: float) -> str:
    return f"{value / 2**20:.0f} MB"


def _breakdown(report: Report, b: breakdown.Breakdown) -> None:
    """One relayed call of ``b.protocol`` step by step: each step's p50 and its share of the
    relayed p50, with the direct call's p50 beside the total (bench/breakdown.py)."""
    key = f"{b.protocol.lower()}_breakdown"
    relayed = b.relayed.p50
    report.section(
        f"{b.protocol} relayed call, step by step (tracing on): p50 of "
        f"{len(b.relayed.samples) - b.incomplete} calls, share of the relayed p50"
    )
    report.row(f"{b.protocol} direct, p50", _ms(b.direct.p50))
    report.row(
        f"{b.protocol} through two relays, p50",
        _ms(relayed),
        f"{_ms(b.direct.p50)} direct p50",
        f"{relayed / b.direct.p50:.1f}",
    )
    report.doc[key] = {"direct_p50_ms": b.direct.p50 * 1000, "relayed_p50_ms": relayed * 1000}
    for step, samples in b.steps.items():
        if not samples:
            continue
        p50 = b.p50(step)
        report.row(f"  {step}", _ms(p50), "", f"{p50 / relayed:.0%}")
        report.doc[key][step] = p50 * 1000
    if b.incomplete:
        report.note(f"{b.protocol} breakdown: {b.incomplete} calls lacked a span, left out")


async def run(args: argparse.Namespace) -> Report:
    report = Report()
    default = SECTIONS if args.full else DEFAULT_SECTIONS
    sections = [s for s in (args.only or default) if s not in (args.skip or ())]
    profiler: Profiler | None = None
    if args.profile is not None:
        why = Profiler.missing()
        if why:
            report.note(f"no profile: {why}")
        else:
            profiler = Profiler(args.profile, gil=args.profile_gil)
    on_serve: Callable[[str, list[Proc]], Any] | None = profiler.attach if profiler else None
    sizes: list[int] = args.n
    doc = report.doc
    doc.update(
        cpus=os.cpu_count(), concurrency=args.c, load_before=_loadavg(), n=sizes,
        backlog_sizes=args.backlog, calls=args.calls,
    )  # fmt: skip
    started = time.perf_counter()
    fresh: dict[int, float] = {}
    #: relay -> relay with batched submission, by n (empty with --batch 1).
    batched: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="synq-bench-") as tmp:
        base = Path(tmp)
        if "throughput" in sections:
            report.section(f"throughput over HTTP, concurrency {args.c}")
            n0 = sizes[0]
            base_rate = await throughput.baseline(n0, args.c, base)
            local_rate = await throughput.local(n0, args.c, base)
            doc["baseline_aiohttp_post_per_s"] = base_rate
            doc["local_send_to_inbox_per_s"] = local_rate
            report.row(f"bare aiohttp POST (baseline), n={n0:,}", _rate(base_rate, "req/s"))
            report.row(
                f"local send -> inbox, n={n0:,}", _rate(local_rate, "msg/s"),
                _rate(base_rate, "req/s baseline"), f"{local_rate / base_rate:.2f}",
            )  # fmt: skip
            batch = args.batch
            local_batched = 0.0
            if batch > 1:
                local_batched = await throughput.local(n0, args.c, base, batch=batch)
                doc["batch"] = batch
                doc["local_send_to_inbox_batched_per_s"] = local_batched
                report.row(
                    f"local send -> inbox, batches of {batch}, n={n0:,}",
                    _rate(local_batched, "msg/s"), _rate(base_rate, "req/s baseline"),
                    f"{local_batched / base_rate:.2f}",
                )  # fmt: skip
            for n in sizes:
                hook = on_serve if n == sizes[-1] else None
                cpu: dict[str, float] = {}
                rate = await throughput.federated(
                    n, args.c, base / f"federated-{n}", on_serve=hook, cpu=cpu
                )
                fresh[n] = rate
                report.row(
                    f"relay -> relay, SQLite, n={n:,}", _rate(rate, "env/s"),
                    _rate(local_rate, "msg/s local"), f"{rate / local_rate:.2f}",
                )  # fmt: skip
                _cpu_row(report, doc, f"federated_{n}", cpu)
            doc["federated_relay_to_relay_per_s"] = fresh[sizes[0]]
            doc["federated_by_n"] = {str(k): v for k, v in fresh.items()}
            if batch > 1:
                for n in sizes:
                    cpu = {}
                    hook = on_serve if n == sizes[-1] else None
                    rate = await throughput.federated(
                        n, args.c, base / f"federated-batch-{n}", batch=batch, cpu=cpu,
                        on_serve=hook, label="relay-to-relay-batched",
                    )  # fmt: skip
                    batched[n] = rate
                    report.row(
                        f"relay -> relay, SQLite, batches of {batch}, n={n:,}",
                        _rate(rate, "env/s"), _rate(local_batched, "msg/s local batched"),
                        f"{rate / local_batched:.2f}",
                    )  # fmt: skip
                    _cpu_row(report, doc, f"federated_batched_{n}", cpu)
                doc["federated_relay_to_relay_batched_per_s"] = batched[sizes[0]]
                doc["federated_batched_by_n"] = {str(k): v for k, v in batched.items()}
            if args.store == "postgresql":
                why = throughput.postgresql_available()
                if why is None:
                    try:
                        pg = await throughput.federated_postgresql(
                            sizes[0], args.c, base, batch=batch
                        )
                    except Exception as exc:
                        why = f"PostgreSQL run failed: {exc}"
                    else:
                        # Beside the SQLite run with the same intake (batched when --batch > 1).
                        same = batched.get(sizes[0]) or fresh[sizes[0]]
                        how = " batched" if batch > 1 else ""
                        for count, rate in pg.items():
                            word = "process" if count == 1 else "processes"
                            doc[f"federated_postgresql_{count}_{word}_per_s"] = rate
                            report.row(
                                f"relay -> relay{how}, PostgreSQL x{count}",
                                _rate(rate, "env/s"), _rate(same, "env/s SQLite"),
                                f"{rate / same:.2f}",
                            )  # fmt: skip
                if why is not None:
                    report.note(f"relay -> relay on PostgreSQL skipped: {why}")
            else:
                report.note("PostgreSQL not measured (add --store postgresql)")
            # The target is judged on batched submission (an agent fanning out sends batches,
            # SPEC.md §6.2.1); the single-message figure is printed beside it, not judged.
            best = max(fresh.values())
            if batched:
                best_batched = max(batched.values())
                report.target(
                    f"relay -> relay, SQLite durable, batches of {batch}",
                    _rate(best_batched, "env/s"), ">= 5,000 env/s", best_batched >= TARGET_RATE,
                )  # fmt: skip
                report.target(
                    "relay -> relay, SQLite durable, single", _rate(best, "env/s"),
                    "(shown, not judged)", None,
                )  # fmt: skip
            else:
                report.target(
                    "relay -> relay, SQLite durable", _rate(best, "env/s"), ">= 5,000 env/s",
                    best >= TARGET_RATE,
                )  # fmt: skip

        if "floor" in sections:
            n = sizes[-1]
            result = await floor.run(n, base / "floor")
            doc["floor"] = {
                "n": n,
                "batch": result.batch,
                "per_envelope_us": result.per_envelope_us(),
                "floor_per_s": result.floor_rate,
                "floor_with_queue_per_s": result.with_queue_rate,
                "cpu_only_per_s": result.cpu_only_rate,
            }
            report.section(f"the floor: no HTTP, no processes, one core, batches of {result.batch}")
            report.row(
                f"floor: build+sign+verify+2 accepts, n={n:,}", _rate(result.floor_rate, "env/s")
            )
            report.row("floor + sender lease and settle", _rate(result.with_queue_rate, "env/s"))
            report.row("build+sign+verify only (no store)", _rate(result.cpu_only_rate, "env/s"))
            # The same steps one envelope at a time: each store step is then a whole commit
            # (its fsync, and its round trips to the store's threads), as on a relayed call's
            # path, where the batched figures above hide that cost.
            one = await floor.run(SINGLE_FLOOR_N, base / "floor-single", batch=1)
            doc["floor"]["single_envelope_us"] = one.per_envelope_us()
            single_us = one.per_envelope_us()
            for stage, us in result.per_envelope_us().items():
                report.row(
                    f"  {stage}", f"{us:.0f} us/env", f"one at a time {single_us[stage]:.0f} us"
                )
            # The floor is the per-envelope work as the relay batches it, without HTTP: the
            # batched relay -> relay run is the one it bounds, and the one judged; the
            # single-message run (one HTTP request per envelope) is shown beside it.
            _relay_ratios(
                report, doc, "floor", "relay_share_of_floor", fresh, batched, n,
                result.floor_rate, "env/s floor", "{:.0%}", ">= 60%", TARGET_FLOOR_SHARE,
            )  # fmt: skip

        if "postfix" in sections:
            n = sizes[0]
            why = postfix.ensure_installed() if args.install_postfix else postfix.missing()
            if why is None:
                pf = await postfix.run(n)
                doc["postfix_per_s"] = pf.rate
                doc["postfix_version"] = pf.version
                report.section("SMTP anchor: Postfix, on-disk queue, smtp-source -> smtp-sink")
                report.row(f"Postfix {pf.version} relaying, n={n:,}", _rate(pf.rate, "msg/s"))
                # Judged with batched submission, as the 5,000 env/s target is; Postfix's
                # smtp-source sends one message per SMTP transaction, so the single-message
                # figure is printed beside it.
                _relay_ratios(
                    report, doc, "Postfix", "ratio_relay_to_postfix", fresh, batched, n,
                    pf.rate, "msg/s Postfix", "{:.2f}x", ">= 6x", TARGET_POSTFIX_RATIO, "x",
                )  # fmt: skip
                if fresh:
                    single = fresh.get(n, max(fresh.values())) / pf.rate
                    report.target(
                        "relay -> relay / Postfix", f"{single:.2f}x", ">= 2.5x",
                        single >= TARGET_POSTFIX_SINGLE_RATIO,
                    )  # fmt: skip
            else:
                report.note(f"Postfix anchor skipped: {why}")

        if "protocols" in sections:
            why = protocols.bridges_missing()
            if why is None:
                results = await protocols.run(args.calls, base / "protocols", on_serve=on_serve)
                report.section(f"protocol overhead: {args.calls} sequential calls, after warm-up")
                for o in results:
                    key = o.protocol.lower()
                    doc[f"{key}_direct_p50_ms"] = o.direct.p50 * 1000
                    doc[f"{key}_direct_p99_ms"] = o.direct.p99 * 1000
                    doc[f"{key}_relayed_p50_ms"] = o.relayed.p50 * 1000
                    doc[f"{key}_relayed_p99_ms"] = o.relayed.p99 * 1000
                    report.row(
                        f"{o.protocol} direct, p50 / p99",
                        f"{_ms(o.direct.p50)} / {_ms(o.direct.p99)}",
                    )
                    report.row(
                        f"{o.protocol} through two relays, p50 / p99",
                        f"{_ms(o.relayed.p50)} / {_ms(o.relayed.p99)}",
                        f"{_ms(o.direct.p50)} direct p50", f"{o.ratio_p50:.1f}",
                    )  # fmt: skip
                    cpu = o.relayed.cpu
                    if cpu:
                        doc[f"{key}_relayed_cpu_ms"] = {k: v * 1000 for k, v in cpu.items()}
                        report.row(
                            f"  CPU ms per call: {', '.join(cpu)}",
                            " / ".join(f"{v * 1000:.1f}" for v in cpu.values()),
                            f"agent direct {o.direct.cpu.get('agent', 0) * 1000:.1f} ms",
                        )
                    early, late = o.relayed.thirds()
                    drift = late / early
                    doc[f"{key}_relayed_drift"] = drift
                    report.row(
                        "  p50 of the last third of the calls", _ms(late),
                        f"{_ms(early)} first third", f"{drift:.2f}",
                    )  # fmt: skip
                    report.target(
                        f"{o.protocol} relayed p50 / direct p50", f"{o.ratio_p50:.1f}x",
                        f"<= {TARGET_RELAYED_RATIO:g}x", o.ratio_p50 <= TARGET_RELAYED_RATIO,
                    )  # fmt: skip
                    tail = o.relayed.p99 / o.relayed.p50
                    report.target(
                        f"{o.protocol} relayed p99 / relayed p50", f"{tail:.1f}x",
                        f"<= {TARGET_RELAYED_TAIL:g}x", tail <= TARGET_RELAYED_TAIL,
                    )  # fmt: skip
                    report.target(
                        f"{o.protocol} relayed, last third / first third", f"{drift:.2f}x",
                        f"<= {TARGET_RELAYED_DRIFT:g}x", drift <= TARGET_RELAYED_DRIFT,
                    )  # fmt: skip
            else:
                report.note(f"A2A/MCP overhead skipped: the relay's bridges are {why}")

        if "breakdown" in sections:
            why = protocols.bridges_missing()
            if why is None:
                for b in await breakdown.run(args.calls, base / "breakdown"):
                    _breakdown(report, b)
            else:
                report.note(f"breakdown skipped: the relay's bridges are {why}")

        if "signals" in sections:
            series = await signals.run(base / "signals")
            report.section(
                f"signals: emit -> claim -> complete -> result read, {signals.ROUNDS} rounds"
            )
            for plain, signal in (series[0:2], series[2:4]):
                for s in (plain, signal):
                    key = s.name.replace(", ", "_").replace(" -> ", "_to_").replace(" ", "_")
                    doc[f"{key}_p50_ms"] = s.p50 * 1000
                    doc[f"{key}_p99_ms"] = s.p99 * 1000
                report.row(f"{plain.name}, p50 / p99", f"{_ms(plain.p50)} / {_ms(plain.p99)}")
                report.row(
                    f"{signal.name}, p50 / p99",
                    f"{_ms(signal.p50)} / {_ms(signal.p99)}",
                    f"{_ms(plain.p50)} plain p50",
                    f"{signal.p50 / plain.p50:.1f}",
                )

        if "coordination" in sections:
            found = await coordination.run(
                base / "coordination", args.coord_agents, args.coord_seconds, args.coord_rate
            )
            _coordination(report, doc, args, found)

        if "backlog" in sections:
            report.section("backlog: queue for a partner that is down, then the drain")
            results_b = []
            for q in args.backlog:
                hook = on_serve if q == args.backlog[-1] else None
                r = await backlog.run(q, base / f"backlog-{q}", on_serve=hook)
                results_b.append(r)
                doc[f"backlog_{q}"] = {
                    "fill_s": r.fill_seconds, "sweep_s": r.sweep_seconds,
                    "rss_start": r.rss_start, "rss_peak": r.rss_peak, "rss_end": r.rss_end,
                    "rss_per_envelope": r.rss_per_envelope, "drain_s": r.drain_seconds,
                    "drain_per_s": r.drain_rate, "console_s": r.console_seconds,
                    "rss_console": r.rss_console,
                }  # fmt: skip
                report.row(
                    f"queued {q:,}: RSS peak / at sweep end", f"{_mb(r.rss_peak)} / {_mb(r.rss_end)}",
                    f"{_mb(r.rss_start)} at start", f"{r.rss_per_envelope:,.0f} B/env",
                )  # fmt: skip
                report.row(
                    f"queued {q:,}: console snapshot, RSS after",
                    f"{r.console_seconds * 1000:,.0f} ms",
                    f"{_mb(r.rss_console)} after",
                )
                report.row(
                    f"queued {q:,}: sweep while down",
                    f"{r.sweep_seconds:.1f} s",
                    _rate(r.sweep_rate, "rows/s"),
                )
                fresh_rate = fresh.get(q) or (max(fresh.values()) if fresh else None)
                report.row(
                    f"queued {q:,}: drain", f"{r.drain_seconds:.1f} s", _rate(r.drain_rate, "env/s"),
                    f"{r.drain_rate / fresh_rate:.2f}" if fresh_rate else "",
                )  # fmt: skip
            small, large = results_b[0], results_b[-1]
            if len(results_b) > 1:
                growth = large.rss_peak / small.rss_peak - 1
                doc["rss_growth"] = growth
                report.target(
                    f"RSS growth {small.queued:,} -> {large.queued:,}", f"{growth:+.0%}", "< +20%",
                    growth < TARGET_RSS_GROWTH,
                )  # fmt: skip
            if fresh:
                fresh_rate = max(fresh.values())
                for r in results_b:
                    share = r.drain_rate / fresh_rate
                    doc[f"drain_share_{r.queued}"] = share
                    report.target(
                        f"drain {r.queued:,} vs fresh relay -> relay", f"{share:.0%}", ">= 80%",
                        share >= TARGET_DRAIN_SHARE,
                    )  # fmt: skip

        if "discovery" in sections:
            d = await discovery.run(base / "discovery")
            report.section(f"discovery: {d.entries:,} catalog entries, sequential requests")
            doc["discovery_card_p50_ms"] = d.card_p50 * 1000
            doc["discovery_search_p50_ms"] = d.search_p50 * 1000
            doc["discovery_search_ratio"] = d.ratio
            report.row("agent card, p50 / p99 (baseline)", f"{_ms(d.card_p50)} / {_ms(d.card_p99)}")
            report.row(
                f"POST /ard/search, {d.matched} results, p50 / p99",
                f"{_ms(d.search_p50)} / {_ms(d.search_p99)}",
                f"{_ms(d.card_p50)} card p50", f"{d.ratio:.1f}",
            )  # fmt: skip
            report.target(
                "search p50 / card p50", f"{d.ratio:.1f}x", "<= 3x", d.ratio <= TARGET_SEARCH_RATIO
            )
        if "fedsearch" in sections:
            _fedsearch(report, doc, await fedsearch.run(base / "fedsearch", args.searches))
        if "tracing" in sections:
            n = args.tracing_n
            report.section(f"tracing, relay -> relay in one process, n={n:,}, concurrency 16")
            t = await tracing.run(n, 16, base / "tracing")
            doc["tracing"] = {"n": n, "rates": t.rates}
            off = t.rates["off"]
            report.row("tracing off (baseline)", _rate(off, "msg/s"))
            for mode, label in (("on", "on, no export"), ("export", "on, OTLP/HTTP export")):
                report.row(
                    f"tracing {label}", _rate(t.rates[mode], "msg/s"),
                    _rate(off, "msg/s off"), f"{t.ratio(mode):.2f}",
                )  # fmt: skip

        if "soak" in sections:
            _soak(report, doc, await _run_soak(args, base / "soak"))

    if profiler is not None:
        report.profiles = await profiler.finish()
        doc["profiles"] = {
            p.label: {"samples": p.samples, "file": str(p.path), "self": p.top("self", 25),
                      "total": p.top("total", 25)}
            for p in report.profiles
        }  # fmt: skip
    doc["load_after"] = _loadavg()
    doc["seconds"] = time.perf_counter() - started
    doc["targets"] = [
        {"what": w, "reached": r, "goal": g, "met": m} for w, r, g, m in report.targets
    ]
    doc["notes"] = report.notes
    return report


async def _run_soak(args: argparse.Namespace, base: Path) -> soak.SoakResult:
    def progress(line: str) -> None:
        if not args.json:
            print(f"  {line}", file=sys.stderr, flush=True)

    store = "sqlite"
    if args.store == "postgresql" and throughput.postgresql_available() is None:
        store = "postgresql"
    # PostgreSQL's store levels off only after autovacuum has passed over the churned tables,
    # a few minutes after SQLite's: judged at 600 s it is still growing (README, "Running it
    # for months").
    seconds = args.soak_seconds or (
        SOAK_SECONDS_POSTGRESQL if store == "postgresql" else SOAK_SECONDS
    )
    return await soak.run(seconds, args.soak_rate, base, store, progress)


def _fedsearch(report: Report, doc: dict[str, Any], r: fedsearch.FedSearchResult) -> None:
    p = fedsearch.FedSearchResult.p
    rtt, one, three, after = (p(s, 50) for s in (r.round_trip, r.one_partner,
                                                 r.three_partners, r.dead_after))  # fmt: skip
    doc["fedsearch"] = {
        "searches": r.searches, "entries_per_partner": fedsearch.ENTRIES,
        "answer_bytes": r.answer_bytes, "deadline_s": r.deadline,
        "round_trip_p50_ms": rtt * 1000, "round_trip_p99_ms": p(r.round_trip, 99) * 1000,
        "one_partner_p50_ms": one * 1000, "three_partners_p50_ms": three * 1000,
        "three_partners_p99_ms": p(r.three_partners, 99) * 1000,
        "dead_first_ms": r.dead_first * 1000, "dead_after_p50_ms": after * 1000,
        "dead_hits": r.dead_hits, "asker_cpu_per_search_ms": r.asker_cpu * 1000,
    }  # fmt: skip
    report.section(
        f"federated search: {len(fedsearch.PARTNERS)} partner registries of "
        f"{fedsearch.ENTRIES:,} entries on loopback, {r.searches} sequential searches"
    )
    report.row(
        "one signed round trip to one partner, p50 / p99",
        f"{_ms(rtt)} / {_ms(p(r.round_trip, 99))}", f"answer {r.answer_bytes:,} B",
    )  # fmt: skip
    report.row(
        "PartnerSearch, 1 partner, p50", _ms(one), f"{_ms(rtt)} round trip", f"{one / rtt:.2f}"
    )
    report.row(
        f"PartnerSearch, {len(fedsearch.PARTNERS)} partners, p50 / p99",
        f"{_ms(three)} / {_ms(p(r.three_partners, 99))}", f"{_ms(rtt)} round trip",
        f"{three / rtt:.2f}",
    )  # fmt: skip
    report.row("  the asking relay's CPU per search", _ms(r.asker_cpu), "(this process)")
    report.row(
        "  + a silent partner: the first search", _ms(r.dead_first),
        f"deadline {r.deadline:g} s", f"{r.dead_first / r.deadline:.2f}",
    )  # fmt: skip
    report.row(
        "  + a silent partner: the searches after, p50", _ms(after), f"{_ms(three)} without",
        f"{after / three:.2f}",
    )  # fmt: skip
    report.row(
        "  the silent partner's requests in all", f"{r.dead_hits}", f"{r.searches + 1} searches"
    )
    report.target(
        f"federated search p50 / one round trip ({len(fedsearch.PARTNERS)} partners)",
        f"{three / rtt:.2f}x", f"<= {TARGET_FEDSEARCH_RATIO:g}x", three / rtt <= TARGET_FEDSEARCH_RATIO,
    )  # fmt: skip
    added = r.dead_first - three
    report.target(
        "a dead partner adds at most the deadline, once", f"+{_ms(added)}, {r.dead_hits} request",
        f"<= +{r.deadline:g} s, 1 request", added <= r.deadline * 1.05 and r.dead_hits == 1,
    )  # fmt: skip


def _coordination(
    report: Report, doc: dict[str, Any], args: argparse.Namespace, found: list[coordination.Outcome]
) -> None:
    base, scenarios = found[0], found[1:]
    doc["coordination"] = {
        "seconds": args.coord_seconds, "agents": args.coord_agents, "rate": args.coord_rate,
        "lease_s": coordination.LEASE, "scenarios": [vars(o) | {"throughput": o.throughput}
                                                      for o in found],
    }  # fmt: skip
    report.section(
        f"coordination: {args.coord_agents} workers, Poisson {args.coord_rate:g} tasks/s for "
        f"{args.coord_seconds:g} s, lease {coordination.LEASE:g} s, a holder killed every "
        f"{coordination.CHURN_EVERY:g} s"
    )
    lease = coordination.LEASE
    for o in found:
        judged = o is not base
        ratio = o.claim_p50 / base.claim_p50
        report.row(
            f"{o.name}: emit -> claim p50/p99", f"{_ms(o.claim_p50)} / {_ms(o.claim_p99)}",
            f"{_ms(base.claim_p50)} dispatcher p50" if judged else "", f"{ratio:.1f}" if judged else "",
        )  # fmt: skip
        if judged:
            report.row("  emit -> heard (the feed's answer), p50", _ms(o.heard_p50))
            report.row("  claims refused per task", f"{o.refused_claims:.1f}")
        report.row(
            f"  throughput, {o.completed} of {o.emitted} tasks", f"{o.throughput:.1f} tasks/s",
            f"{base.throughput:.1f} dispatcher" if judged else "",
            f"{o.throughput / base.throughput:.2f}" if judged else "",
        )  # fmt: skip
        report.row("  completions counted twice", str(o.doubles), "must be 0")
        if o.lost_leases or o.refused_emits:
            # Not churn: a live worker whose lease ran out under load, or an emit over its rate.
            report.row(
                "  leases lost by live workers / emits refused",
                f"{o.lost_leases} / {o.refused_emits}",
            )
        report.row(
            f"  orphan recovery, p50 / max ({o.kills} kills)",
            f"{o.recovery_p50:.2f} s / {o.recovery_max:.2f} s",
            f"lease {lease:g} s + {TARGET_RECOVERY_SLACK:g} s",
            f"{o.unrecovered} not taken" if o.unrecovered else "",
        )  # fmt: skip
        report.row(
            f"  Jain's fairness, {args.coord_agents} workers", f"{o.jain:.3f}",
            f"{base.jain:.3f} dispatcher" if judged else "",
        )  # fmt: skip
        between = f" ({o.relay_per_task:.1f} between)" if o.relay_per_task else ""
        report.row(
            "  HTTP requests per task (between relays)", f"{o.per_task:.1f}{between}",
            f"{base.per_task:.1f} dispatcher" if judged else "",
            f"{o.per_task / base.per_task:.1f}" if judged else "",
        )  # fmt: skip
    doubles = sum(o.doubles for o in found)
    report.target(
        "coordination: completions counted twice", str(doubles), "0 (all four runs)", doubles == 0
    )
    for o in scenarios:
        recovered = o.unrecovered == 0 and not o.recovery_max > lease + TARGET_RECOVERY_SLACK
        report.target(
            f"{o.name}: orphan recovery max", f"{o.recovery_max:.2f} s",
            f"<= {lease + TARGET_RECOVERY_SLACK:g} s", recovered,
        )  # fmt: skip
        ratio = o.claim_p50 / base.claim_p50
        # Across connected relays a claim of the other relay's signal takes two more hops
        # (SPEC.md §13.6); the target holds on one relay and with the partner links cut.
        met = None if o is scenarios[1] else ratio <= TARGET_CLAIM_RATIO
        report.target(
            f"{o.name}: claim p50 / dispatcher", f"{ratio:.2f}x",
            f"<= {TARGET_CLAIM_RATIO:g}x" if met is not None else "(shown, not judged)", met,
        )  # fmt: skip


def _soak(report: Report, doc: dict[str, Any], result: soak.SoakResult) -> None:
    first, second, last = result.thirds()
    doc["soak"] = {
        "seconds": result.seconds, "rate": result.rate, "store": result.store,
        "sent": result.sent, "read": result.read, "growth_thirds": [first, second, last],
        "plateau": result.plateau, "peak": result.peak,
        "samples": [[s.at, s.size, s.partner_size, s.envelopes] for s in result.samples],
    }  # fmt: skip
    report.section(
        f"soak: {result.rate} msg/s for {result.seconds:.0f} s, retention {soak.RETENTION}, "
        f"acme on {result.store}"
    )
    step = max(1, round(60 / soak.SAMPLE_INTERVAL))
    shown = result.samples[::step]
    if shown[-1] is not result.samples[-1]:
        shown.append(result.samples[-1])
    for s in shown:
        report.row(
            f"store at {s.at:4.0f} s", _mb(s.size) if s.size >= 2**20 else f"{s.size:,} B",
            f"{s.envelopes:,} envelopes", f"partner {_mb(s.partner_size)}",
        )  # fmt: skip
    thirds = " / ".join(f"{g / 2**20:.1f}" for g in (first, second, last))
    report.row(
        "growth by third, MB", thirds, f"sent {result.sent:,}, read {result.read:,}",
    )  # fmt: skip
    share = last / first if first > 0 else 0.0
    report.target(
        "store size, last third's growth / first's", f"{share:.1%}",
        f"< {TARGET_SOAK_PLATEAU:.0%} (plateau)", result.plateau,
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ap.add_argument("-n", type=_sizes, default=None, help="relay->relay sizes, e.g. 10000,100000")
    ap.add_argument("-c", type=int, default=32, help="concurrent client connections (32)")
    ap.add_argument(
        "--batch", type=int, default=100,
        help="messages per POST /synq/v1/messages/batch in the batched throughput rows (100); "
        "1 leaves those rows out",
    )  # fmt: skip
    ap.add_argument("--backlog", type=_sizes, default=None, help="queue sizes, e.g. 100000,1000000")
    ap.add_argument("--calls", type=int, default=None, help="A2A/MCP calls per side")
    ap.add_argument(
        "--searches", type=int, default=200, help="federated searches per measurement (200)"
    )
    ap.add_argument("--full", action="store_true", help="the documented full run (with soak)")
    ap.add_argument(
        "--soak-seconds", type=float, default=None,
        help=(
            "how long the soak sends (600, 900 with acme on PostgreSQL: its store levels off "
            "after about 6 minutes, PostgreSQL's once autovacuum has passed)"
        ),
    )  # fmt: skip
    ap.add_argument("--soak-rate", type=int, default=100, help="soak messages a second (100)")
    ap.add_argument(
        "--coord-seconds", type=float, default=coordination.SECONDS,
        help=f"seconds of arrivals per coordination run ({coordination.SECONDS:g})",
    )  # fmt: skip
    ap.add_argument(
        "--coord-agents", type=int, default=coordination.AGENTS,
        help=f"workers in each coordination run ({coordination.AGENTS})",
    )  # fmt: skip
    ap.add_argument(
        "--coord-rate", type=float, default=coordination.RATE,
        help=f"coordination tasks a second, Poisson ({coordination.RATE:g})",
    )  # fmt: skip
    ap.add_argument(
        "--tracing-n", type=int, default=2000, help="messages per mode in the tracing section"
    )
    ap.add_argument("--only", type=lambda s: s.split(","), help=f"sections: {','.join(SECTIONS)}")
    ap.add_argument("--skip", type=lambda s: s.split(","), help="sections to leave out")
    ap.add_argument(
        "--store",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="postgresql: also run relay->relay with the receiver on PostgreSQL, 1 and 3 processes",
    )
    ap.add_argument("--profile", type=Path, help="py-spy profiles of the relays into this dir")
    ap.add_argument(
        "--profile-gil", action="store_true",
        help="profile only the thread holding the GIL (Python CPU, not waits)",
    )  # fmt: skip
    ap.add_argument(
        "--no-install", dest="install_postfix", action="store_false",
        help="do not apt-get install postfix when it is missing (skip the anchor instead)",
    )  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print one JSON document instead")
    ap.add_argument("--json-file", type=Path, help="also write the JSON document to this file")
    args = ap.parse_args(argv)
    args.n = args.n or ([10_000, 100_000] if args.full else [10_000])
    args.backlog = args.backlog or ([100_000, 1_000_000] if args.full else [10_000, 30_000])
    args.calls = args.calls or 200
    for section in (args.only or []) + (args.skip or []):
        if section not in SECTIONS:
            ap.error(f"unknown section {section!r}; sections: {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(report.doc, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(report.doc, indent=2, default=str))
    else:
        report.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
