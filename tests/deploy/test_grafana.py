"""deploy/grafana: the dashboard's queries use only metrics (and labels) the planner and the workers register."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.deploy.project import DASHBOARD

METRIC = re.compile(r"\b(?:planner|scheduler)_[a-zA-Z0-9_:]+")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
MATCHERS = re.compile(r"(?P<metric>\b(?:planner|scheduler)_[a-zA-Z0-9_:]+)\{(?P<body>[^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\((?P<labels>[^)]*)\)")


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"variable {var['name']}", query


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_the_dashboard_is_a_grafana_dashboard_with_unique_panels() -> None:
    data = dashboard()
    assert data["uid"]
    assert data["title"]
    assert isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in panels(data["panels"])]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "fleet", "pool"} <= names
    for panel in panels(data["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_queries_use_only_registered_metrics_and_their_labels(metric_series: dict[str, tuple[str, ...]]) -> None:
    used: set[str] = set()
    for title, expr in queries(dashboard()):
        names = METRIC.findall(STRING.sub('""', expr))
        assert names, f"{title}: {expr} reads no planner_/scheduler_ metric"
        for name in names:
            assert name in metric_series, f"{title}: {name} is not registered by planner.api or scheduler.metrics"
        used.update(names)
        for m in MATCHERS.finditer(expr):
            for matcher in filter(None, (part.strip() for part in STRING.sub('""', m.group("body")).split(","))):
                label = re.split(r"[=!~]", matcher, maxsplit=1)[0].strip()
                assert label in metric_series[m.group("metric")], f"{title}: {m.group('metric')} has no label {label}"
        grouped = {label.strip() for g in GROUPING.finditer(expr) for label in g.group("labels").split(",")} - {
            "le",
            "",
        }
        for label in grouped:
            assert any(label in metric_series[n] for n in names), f"{title}: no metric of {expr} has label {label}"
    # The panels: plan cost per hour and per image, planned against achieved throughput per pool, queue
    # depth, GPU busy share.
    assert {
        "planner_active_plan_cost_dollars_per_hour",
        "planner_active_plan_cost_dollars_per_image",
        "planner_active_plan_pool_capacity_images_per_second",
        "scheduler_pool_throughput_images_per_second",
        "scheduler_pool_planned_rate_images_per_second",
        "scheduler_pool_service_rate_images_per_second",
        "scheduler_queue_depth_jobs",
        "scheduler_gpu_busy_ratio",
    } <= used
