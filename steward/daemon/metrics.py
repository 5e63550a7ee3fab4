"""Prometheus metrics, in the text format prometheus-client writes.

Counters and histograms are updated once per request from its metadata record; queue and
backlog gauges are read from the gateway at scrape time. With several workers (the server sets
PROMETHEUS_MULTIPROC_DIR before they start), every worker writes its values to shared files and
a scrape, whichever worker answers it, sums them all; each worker publishes its gauges there
every few seconds, so other workers' gauges can be that old.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from steward.records.record import Record

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
               "reasoning_tokens")


class _Gauges(Collector):
    def __init__(self, read: Callable[[], dict[str, float]]):
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in self.read().items():
            yield GaugeMetricFamily(f"steward_{name}", name.replace("_", " "), value=value)


# Per budget scope (bounded: scopes are what operators configured). Every worker sees every
# holder's spend as of its last sync, so across workers the freshest is the largest spend and
# the smallest remainder.
BUDGET_GAUGES = (("budget_limit_usd", "Budget amount for the current period", "livemax"),
                 ("budget_spent_usd", "Settled spend in the current period, all workers",
                  "livemax"),
                 ("budget_remaining_usd", "Budget left in the current period (limit - spent)",
                  "livemin"))
Figures = dict[str, tuple[float, float, float]]  # scope -> (limit, spent, remaining)


class _BudgetGauges(Collector):
    def __init__(self, read: Callable[[], Figures]):
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self.read()
        for index, (name, doc, _) in enumerate(BUDGET_GAUGES):
            family = GaugeMetricFamily(f"steward_{name}", doc, labels=["scope"])
            for scope, values in sorted(figures.items()):
                family.add_metric([scope], values[index])
            yield family


class Metrics:
    def __init__(self, gauges: Callable[[], dict[str, float]],
                 budgets: Callable[[], Figures] = dict):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("steward_requests", "Requests by provider, endpoint and status",
                                ["provider", "endpoint", "status"], registry=r)
        self.latency = Histogram("steward_request_duration_seconds", "Time to the last byte",
                                 ["provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("steward_time_to_first_byte_seconds",
                              "Streams: time to the first byte", ["provider"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("steward_tokens", "Tokens by provider, model and kind",
                              ["provider", "model", "kind"], registry=r)
        self.cost = Counter("steward_cost_usd", "Cost in US dollars by provider and model",
                            ["provider", "model"], registry=r)
        # Requests without a valid gateway key: counted here only, never in the series above.
        self.auth_refusals = Counter("steward_auth_refusals",
                                     "Requests refused for a missing or invalid gateway key",
                                     ["reason"], registry=r)
        for reason in ("missing", "invalid"):
            self.auth_refusals.labels(reason)
        self.unreadable = Counter("steward_usage_unreadable",
                                  "Responses whose usage could not be read, by provider",
                                  ["provider"], registry=r)
        # OpenTelemetry export (steward/daemon/telemetry.py): what reached the collector, what not.
        self.telemetry_exported = Counter("steward_telemetry_spans_exported",
                                          "Spans the OTLP collector accepted", registry=r)
        self.telemetry_dropped = Counter("steward_telemetry_spans_dropped",
                                         "Spans not exported: the queue was full (collector down "
                                         "or slow) or the collector refused them", registry=r)
        self.telemetry_failures = Counter("steward_telemetry_export_failures",
                                          "Failed OTLP export attempts by signal", ["signal"],
                                          registry=r)
        # Refused by a budget or rate limit, by the record's error (kind and scope).
        self.governed = Counter("steward_budget_refusals",
                                "Requests refused by a budget or rate limit, by kind and scope",
                                ["kind", "scope"], registry=r)
        self.read_gauges = gauges
        self.read_budgets = budgets
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._budget_gauges: list[Gauge] = []
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self._shared_gauges: dict[str, Gauge] = {}
        if self.multiprocess:
            self.registry = CollectorRegistry()  # what a scrape shows: every worker's files
            multiprocess.MultiProcessCollector(self.registry)
            self._budget_gauges = [Gauge(f"steward_{name}", doc, ["scope"], registry=None,
                                         multiprocess_mode=mode)
                                   for name, doc, mode in BUDGET_GAUGES]
        else:
            r.register(_Gauges(gauges))
            r.register(_BudgetGauges(budgets))

    def publish_gauges(self) -> None:
        """Several workers: write this worker's gauges where every worker's scrape sees them."""
        if not self.multiprocess:
            return
        for name, value in self.read_gauges().items():
            gauge = self._shared_gauges.get(name)
            if gauge is None:
                gauge = self._shared_gauges[name] = Gauge(
                    f"steward_{name}", name.replace("_", " "), registry=None,
                    multiprocess_mode="livesum")
            gauge.set(value)
        for scope, values in self.read_budgets().items():
            for gauge, value in zip(self._budget_gauges, values, strict=True):
                gauge.labels(scope).set(value)

    def worker_exiting(self) -> None:
        """Drop this worker's gauges from the sums (its counters stay counted)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())

    def _child(self, metric: Any, *labels: str) -> Any:
        """A metric's child for these labels, bound once: prometheus_client's labels()
        validates and locks on every call, several times per request otherwise."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: Record) -> None:
        provider = record.get("provider") or "none"
        child = self._child
        child(self.requests, provider, record.get("endpoint") or "none",
              str(record.get("status"))).inc()
        if record.get("latency_ms") is not None:
            child(self.latency, provider).observe(record["latency_ms"] / 1000)
        if record.get("ttft_ms") is not None:
            child(self.ttfb, provider).observe(record["ttft_ms"] / 1000)
        error = record.get("error") or ""
        if error.startswith("usage_unreadable"):
            child(self.unreadable, provider).inc()
        elif error.startswith(("budget_", "rate_limited:")):
            kind, _, scope = error.partition(":")
            child(self.governed, kind, scope).inc()
        model = record.get("response_model") or record.get("model")
        if model is None or record.get("input_tokens") is None:
            return
        for kind in TOKEN_KINDS:
            if record.get(kind):
                child(self.tokens, provider, model, kind.removesuffix("_tokens")).inc(
                    record[kind])
        if record.get("cost") is not None:
            child(self.cost, provider, model).inc(float(Decimal(record["cost"])))

    def refused(self, reason: str) -> None:
        self.auth_refusals.labels(reason).inc()

    def render(self) -> bytes:
        self.publish_gauges()  # this worker's are current; the others' a few seconds old
        return generate_latest(self.registry)
