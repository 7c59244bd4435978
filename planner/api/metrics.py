"""Prometheus metrics, `planner_` prefix, base units: request latency by route template, and store gauges.

The store gauges (hosts by status, measurements stored, the cost of each fleet's plan in force) are read from
the store at scrape time, so every worker process reports the same values. The latency histogram is per
process: with several uvicorn workers a scrape sees one worker's; run one worker per container (as Kubernetes
deployments usually do) when the histogram matters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from planner.core.config import Settings
from planner.crud.hosts import count_by_status
from planner.db import models as m
from planner.measurements.store import count_measurements

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StoreCollector(Collector):
    """Gauges read from the store when Prometheus scrapes."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, clock: Callable[[], datetime]) -> None:
        self.factory = factory
        self.settings = settings
        self.clock = clock

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("planner_store_up", "1 when the store answered this scrape, else 0"),
            GaugeMetricFamily("planner_hosts", "Hosts by status (computed from heartbeats)", labels=["status"]),
            GaugeMetricFamily("planner_measurements_stored", "Measurements in the store (all runs)"),
            GaugeMetricFamily(
                "planner_active_plan_cost_dollars_per_hour",
                "Total cost per hour of each fleet's plan in force",
                labels=["fleet"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        up, hosts, measurements, cost = self._families()
        try:
            self._read(hosts, measurements, cost)
        except SQLAlchemyError:  # a scrape must answer; the store's state is the one gauge that says why
            up.add_metric([], 0)
            return (up,)
        up.add_metric([], 1)
        return (up, hosts, measurements, cost)

    def _read(self, hosts: GaugeMetricFamily, measurements: GaugeMetricFamily, cost: GaugeMetricFamily) -> None:
        with self.factory() as session:
            counts = count_by_status(
                session,
                now=self.clock(),
                stale_s=self.settings.heartbeat_stale_s,
                lost_s=self.settings.heartbeat_lost_s,
            )
            for status, n in counts.items():
                hosts.add_metric([status], n)
            measurements.add_metric([], count_measurements(session))
            rows = session.execute(
                select(m.Fleet.name, m.Plan.total_cost_per_hour)
                .join(m.Plan, m.Plan.fleet_id == m.Fleet.id)
                .where(m.Plan.status.in_(("active", "stale")), m.Plan.activated_at.is_not(None))
                .order_by(m.Plan.id)
            ).all()
            for fleet, total in rows:
                cost.add_metric([fleet], total)


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, clock: Callable[[], datetime]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "planner_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status code",
            labelnames=("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StoreCollector(factory, settings, clock))


class MetricsMiddleware:
    """Times every HTTP request by its route template (`/v1/hosts/{host_id}/heartbeat`, not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], template, str(status[0])).observe(
                time.perf_counter() - started
            )
