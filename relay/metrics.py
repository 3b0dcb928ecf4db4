"""Prometheus metrics of one relay (``GET /metrics``).

A registry per relay instance, not the process-global default: tests and ``synq demo`` run
several relays in one process, and each must count only its own traffic.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, waiters: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "synq_envelopes_accepted",
            "Envelopes taken into custody, by where they came from",
            ["via"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "synq_requests_rejected",
            "Requests refused with a Synq error, by error code",
            ["code"],
            registry=self.registry,
        )
        self.federation_results = Counter(
            "synq_federation_inbound_envelopes",
            "Envelopes received from partner relays, by result",
            ["status"],
            registry=self.registry,
        )
        self.federation_outcomes = Counter(
            "synq_federation_outbound_recipients",
            "Outbound recipient rows settled, by outcome (sent, deferred, bounced)",
            ["outcome"],
            registry=self.registry,
        )
        self.inbox_acks = Counter(
            "synq_inbox_acks", "Inbox messages acknowledged", registry=self.registry
        )
        self.request_seconds = Histogram(
            "synq_http_request_duration_seconds",
            "HTTP request handling time by route",
            ["route"],
            registry=self.registry,
        )
        self.waiters = Gauge(
            "synq_inbox_waiters",
            "Long polls and SSE streams currently waiting for inbox messages",
            registry=self.registry,
        )
        self.waiters.set_function(lambda: float(waiters()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
