"""Prometheus metrics, `planner_` prefix, base units: request latency by route template, and store gauges.

The store gauges (hosts by status, measurements stored; of each fleet's plan in force: the cost per hour, the cost
per image of each workload, the planned capacity of each pool) are read from the store at scrape time, so every
worker process reports the same values. The latency histogram is per process: with several uvicorn workers a
scrape sees one worker's; run one worker per container (as Kubernetes deployments usually do) when the histogram
matters. Achieved throughput per pool is the workers' (scheduler/metrics.py), set beside the planned capacity here.
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
from planner.crud.probes import quarantined_total
from planner.db import models as m
from planner.measurements.store import count_measurements

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StoreCollector(Collector):
    """Gauges read from the store when Prometheus scrapes."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, clock: Callable[[], datetime]) -> None:
        self.factory = factory
        self.settings = settings
        self.clock = clock

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("planner_store_up", "1 when the store answered this scrape, else 0"),
            GaugeMetricFamily("planner_hosts", "Hosts by status (computed from heartbeats)", labels=["status"]),
            GaugeMetricFamily("planner_measurements_stored", "Measurements in the store (all runs)"),
            GaugeMetricFamily(
                "planner_measurements_quarantined", "Measurements held back from plans until an operator accepts them"
            ),
            GaugeMetricFamily(
                "planner_active_plan_cost_dollars_per_hour",
                "Total cost per hour of each fleet's plan in force",
                labels=["fleet"],
            ),
            GaugeMetricFamily(
                "planner_active_plan_cost_dollars_per_image",
                "Planned cost per image of each workload of each fleet's plan in force",
                labels=["fleet", "workload"],
            ),
            GaugeMetricFamily(
                "planner_active_plan_pool_capacity_images_per_second",
                "Planned capacity of each pool of the routing table in force (all its replicas together)",
                labels=["fleet", "pool"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        up, *rest = self._families()
        try:
            self._read(*rest)
        except SQLAlchemyError:  # a scrape must answer; the store's state is the one gauge that says why
            up.add_metric([], 0)
            return (up,)
        up.add_metric([], 1)
        return (up, *rest)

    def _read(
        self,
        hosts: GaugeMetricFamily,
        measurements: GaugeMetricFamily,
        quarantined: GaugeMetricFamily,
        cost: GaugeMetricFamily,
        cost_per_image: GaugeMetricFamily,
        capacity: GaugeMetricFamily,
    ) -> None:
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
            quarantined.add_metric([], quarantined_total(session))
            in_force = (m.Plan.status.in_(("active", "stale")), m.Plan.activated_at.is_not(None))
            rows = session.execute(
                select(m.Fleet.name, m.Plan.total_cost_per_hour, m.Plan.result)
                .join(m.Plan, m.Plan.fleet_id == m.Fleet.id)
                .where(*in_force)
                .order_by(m.Plan.id)
            ).all()
            for fleet, total, result in rows:
                cost.add_metric([fleet], total)
                for name, per_image in _cost_per_image(result):
                    cost_per_image.add_metric([fleet, name], per_image)
            pools = session.execute(
                select(m.Fleet.name, m.RoutingEntry.pool, m.RoutingEntry.capacity)
                .join(m.Plan, m.Plan.fleet_id == m.Fleet.id)
                .join(m.RoutingEntry, m.RoutingEntry.plan_id == m.Plan.id)
                .where(*in_force)
                .order_by(m.Plan.id, m.RoutingEntry.pool)
            ).all()
            for fleet, pool, pool_capacity in pools:
                capacity.add_metric([fleet, pool], pool_capacity)


def _cost_per_image(result: Any) -> Iterable[tuple[str, float]]:
    """(workload, $/image) of a plan's contract-3 result; entries without a number are skipped."""
    workloads = result.get("workloads") if isinstance(result, dict) else None
    for workload in workloads if isinstance(workloads, list) else ():
        if not isinstance(workload, dict):
            continue
        name, per_image = workload.get("name"), workload.get("cost_per_image")
        if isinstance(name, str) and isinstance(per_image, int | float) and not isinstance(per_image, bool):
            yield name, float(per_image)


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
