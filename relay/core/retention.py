"""The retention periods of ``[retention]`` and their defaults (SPEC.md §8.5, "Retention").

A value, no I/O: the configuration reads it (relay/config.py), the retention service acts on it
(relay/delivery/retention.py, whose docstring tables what each period governs).

Why a week: it covers an envelope's longest life (MAX_LIFETIME, 7 days), so the status of any
message stays readable for as long as a DSN about it may still arrive, and a weekend away; an
operator who needs a longer audit trail raises it, one short of disk lowers it. Postfix keeps
nothing once delivered (its logs are the history); Synapse's ``retention`` is off by default,
and its purge jobs run every day with bounds of the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

__all__ = ["DEFAULT_RETENTION_PERIOD", "DEFAULT_SWEEP_INTERVAL", "RetentionPolicy"]

DEFAULT_RETENTION_PERIOD: Final = timedelta(days=7)
#: Time between two sweeps. Each sweep that finds little costs a few reads; five minutes keeps
#: one sweep's work (at 5,000 envelopes a second, 1.5 million rows) a few minutes of batches.
DEFAULT_SWEEP_INTERVAL: Final = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of row outlives its use (relay/delivery/retention.py), and how often
    the relay sweeps. ``enabled = False`` keeps everything."""

    acked: timedelta = DEFAULT_RETENTION_PERIOD
    settled: timedelta = DEFAULT_RETENTION_PERIOD
    events: timedelta = DEFAULT_RETENTION_PERIOD
    tasks: timedelta = DEFAULT_RETENTION_PERIOD
    interval: timedelta = DEFAULT_SWEEP_INTERVAL
    enabled: bool = True

    def __post_init__(self) -> None:
        if min(self.acked, self.settled, self.events, self.tasks) < timedelta(0):
            raise ValueError("a retention period is never negative")
        if self.interval <= timedelta(0):
            raise ValueError("the sweep interval must be positive")
