"""relay/telemetry.py and the ``[telemetry]``/``[log]`` configuration, without a relay."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relay.config import (
    Config,
    LogSection,
    RelaySection,
    TelemetrySection,
    load_config,
    render_config,
)
from relay.core.errors import ConfigError
from relay.telemetry import Telemetry, context_of, extract, otlp_traces_url, traceparent

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
        ("https://otel.example/custom/path", "https://otel.example/custom/path"),
    ],
)
def test_otlp_traces_url(endpoint: str, url: str) -> None:
    assert otlp_traces_url(endpoint) == url


@pytest.mark.parametrize(
    ("carrier", "valid"),
    [
        ({"traceparent": TP}, True),
        ({"traceparent": TP, "tracestate": "k=v"}, True),
        ({}, False),
        ({"traceparent": "garbage"}, False),
        ({"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"}, False),
        ({"tracestate": "k=v"}, False),
    ],
)
def test_extract_takes_only_a_valid_traceparent(carrier: dict[str, str], valid: bool) -> None:
    assert (extract(carrier) is not None) is valid


def test_the_no_op_tracer_carries_the_callers_context_unchanged() -> None:
    tracer = Telemetry.off().tracer
    with tracer.start_as_current_span("x", context=context_of(TP)) as span:
        assert traceparent(span) == TP
        assert traceparent() == TP
    assert traceparent() is None
    assert not Telemetry.off().recording


def test_two_relays_record_apart() -> None:
    spans_a, spans_b = InMemorySpanExporter(), InMemorySpanExporter()
    a = Telemetry.build(processors=[SimpleSpanProcessor(spans_a)])
    b = Telemetry.build(processors=[SimpleSpanProcessor(spans_b)])
    with a.tracer.start_as_current_span("a", context=context_of(TP)) as span:
        child = traceparent(span)
    b.tracer.start_span("b").end()
    assert child is not None
    assert child.split("-")[1] == TP.split("-")[1]
    assert child != TP
    assert [s.name for s in spans_a.get_finished_spans()] == ["a"]
    assert [s.name for s in spans_b.get_finished_spans()] == ["b"]
    a.shutdown()
    b.shutdown()


def test_sampling_follows_the_callers_decision_and_the_ratio_for_new_traces() -> None:
    spans = InMemorySpanExporter()
    never = Telemetry.build(sample_ratio=0.0, processors=[SimpleSpanProcessor(spans)])
    never.tracer.start_span("new").end()
    never.tracer.start_span("continued", context=context_of(TP)).end()  # flags 01: sampled
    assert [s.name for s in spans.get_finished_spans()] == ["continued"]


def test_unconfigured_is_off_and_configured_exports(tmp_path: Path) -> None:
    assert not Telemetry.configured("", service_name="s", sample_ratio=1, domain="a.test").recording
    on = Telemetry.configured(
        "http://127.0.0.1:9", service_name="s", sample_ratio=1, domain="a.test"
    )
    assert on.recording
    on.shutdown()


def test_the_sections_round_trip_through_the_config_file(tmp_path: Path) -> None:
    config = Config(
        relay=RelaySection(domain="a.test"),
        telemetry=TelemetrySection(otlp_endpoint="http://127.0.0.1:4318", sample_ratio=0.25),
        log=LogSection(format="json", level="warning"),
    )
    path = tmp_path / "synq.toml"
    path.write_text(render_config(config), encoding="utf-8")
    again = load_config(path)
    assert (again.telemetry, again.log) == (config.telemetry, config.log)
    # [policy] stays last: a key appended to the file is a policy key.
    path.write_text(path.read_text() + 'deny = ["evil.test"]\n', encoding="utf-8")
    assert load_config(path).policy.deny == ["evil.test"]


@pytest.mark.parametrize(
    "section",
    [
        '[telemetry]\notlp_endpoint = "ftp://x"\n',
        "[telemetry]\nsample_ratio = 1.5\n",
        '[log]\nformat = "xml"\n',
        "[telemetry]\nendpoint = 1\n",
    ],
)
def test_bad_sections_are_refused(tmp_path: Path, section: str) -> None:
    path = tmp_path / "synq.toml"
    path.write_text('[relay]\ndomain = "a.test"\n' + section, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path)
