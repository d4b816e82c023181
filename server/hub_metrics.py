"""Prometheus metrics of the hub: HTTP traffic plus the registry's state, per scrape.

Each app gets its own :class:`prometheus_client.CollectorRegistry`, so several hubs (tests,
benchmarks) in one process never collide on metric names. HTTP metrics are recorded by a
plain ASGI middleware (cheaper than Starlette's ``BaseHTTPMiddleware`` on the download hot
path) and labelled by route *template* (``/v1/adapters/{version}``), never by raw path, so
a scanner cannot blow up the label cardinality. Registry gauges (latest round, ε, committed
and failed rounds per run) are read from the database when Prometheus scrapes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .registry import Registry

log = logging.getLogger(__name__)


class RegistryCollector(Collector):
    """Gauges computed from the registry at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        latest = GaugeMetricFamily(
            "fedlora_latest_round", "Latest committed round of a run", labels=["run"]
        )
        eps = GaugeMetricFamily(
            "fedlora_epsilon", "Cumulative epsilon after the latest committed round", labels=["run"]
        )
        rounds = GaugeMetricFamily(
            "fedlora_rounds", "Rounds of a run by final status", labels=["run", "status"]
        )
        up = GaugeMetricFamily("fedlora_registry_up", "1 if the registry answered this scrape")
        try:
            stats = self.registry.stats()
        except Exception:  # a scrape must not fail because the DB is down: report it instead
            log.warning("registry unreachable during a metrics scrape", exc_info=True)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        for _run_id, name, latest_round, epsilon, committed, failed in stats:
            if latest_round is not None:
                latest.add_metric([name], float(latest_round))
            if epsilon is not None:
                eps.add_metric([name], epsilon if math.isfinite(epsilon) else math.inf)
            rounds.add_metric([name, "committed"], float(committed))
            rounds.add_metric([name, "failed"], float(failed))
        yield from (up, latest, eps, rounds)


class HubMetrics:
    """The metric objects of one hub app."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.collectors = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fedlora_hub_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.collectors,
        )
        self.latency = Histogram(
            "fedlora_hub_request_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.collectors,
        )
        self.adapter_bytes = Counter(
            "fedlora_hub_adapter_bytes",
            "Adapter bytes served (safetensors and PEFT zips)",
            registry=self.collectors,
        )
        self.not_modified = Counter(
            "fedlora_hub_not_modified",
            "Adapter downloads answered 304 thanks to If-None-Match",
            registry=self.collectors,
        )
        if registry is not None:
            self.collectors.register(RegistryCollector(registry))


class MetricsMiddleware:
    """Pure ASGI middleware counting requests and timing them."""

    def __init__(self, app: ASGIApp, metrics: HubMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope.get("method", ""), str(status_code)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
