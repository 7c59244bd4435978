"""Prometheus metrics of the agent daemon (`agent run`), prefix `agent_`, served when AGENT_METRICS_PORT is set.

A run the planner refuses is an error an operator must see: it is logged and counted here
(`agent_runs_total{outcome="refused"}`), since nothing of it reaches the planner's own metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "agent_runs",
            "Probe and calibration runs by outcome: sent (stored by the planner), refused (the planner answered "
            "4xx; the run is kept in the spool's rejected/ folder), unsendable (could not be encoded).",
            ["outcome"],
            registry=r,
        )
        self.requests = Counter(
            "agent_requests",
            "Queued probe/calibration requests this agent ended, by kind and final state (done, failed).",
            ["kind", "state"],
            registry=r,
        )
        self.planner_errors = Counter(
            "agent_planner_errors", "Planner calls that failed after their retries (planner down or refusing).", [],
            registry=r,
        )  # fmt: skip
        self.spooled = Gauge("agent_spooled_runs", "Runs waiting in the spool for the planner.", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never counted): for tests and logs."""
        got = self.registry.get_sample_value(name, labels)
        return float(got) if got is not None else 0.0

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
