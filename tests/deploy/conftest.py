"""What the deployment files are checked against: the app's routes and the metrics the code registers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from planner.api.main import create_app
from planner.api.metrics import Metrics
from planner.core.config import Settings
from scheduler.metrics import WorkerMetrics

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


@dataclass(frozen=True)
class Routes:
    """The app's route templates (`/v1/hosts/{host_id}`), and a matcher for concrete paths."""

    templates: tuple[str, ...]

    def matches(self, path: str) -> bool:
        path = path.split("?", 1)[0].rstrip("/") or "/"
        for template in self.templates:
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, path):
                return True
        return False


@pytest.fixture(scope="session")
def routes() -> Routes:
    settings = Settings(environment="test", admin_token=SecretStr("x" * 32), heartbeat_sweep_s=0)
    engine = create_engine("sqlite://")  # never used: the routes are all that is read
    app = create_app(settings, sessions=sessionmaker(engine))
    # The OpenAPI document lists every route (included routers too; FastAPI nests those in app.routes).
    templates = tuple(sorted(app.openapi()["paths"]))
    engine.dispose()
    return Routes(templates)


def _series(registries: Iterable[CollectorRegistry]) -> dict[str, tuple[str, ...]]:
    """Every series name a query may use (counters' `_total`, histograms' `_bucket|_sum|_count`) -> label names.

    The collectors come from the registries; their families from `describe()` (no store needed). Label names
    are read from prometheus_client's private `_labelnames` (wrappers and MetricFamily objects both carry it).
    """
    table: dict[str, tuple[str, ...]] = {}
    for registry in registries:
        for collector in list(registry._collector_to_names):
            labels_of_wrapper = getattr(collector, "_labelnames", None)
            for family in collector.describe():  # type: ignore[attr-defined]
                labels: tuple[str, ...] = tuple(labels_of_wrapper or getattr(family, "_labelnames", None) or ())
                for suffix in SUFFIXES.get(family.type, ("",)):
                    table[family.name + suffix] = labels
    return table


@pytest.fixture(scope="session")
def metric_series() -> dict[str, tuple[str, ...]]:
    """planner.api's and scheduler.metrics' series names and their labels."""
    settings = Settings(environment="test", admin_token=SecretStr("x" * 32))
    planner = Metrics(sessionmaker(), settings, lambda: datetime.now(UTC))
    return _series([planner.registry, WorkerMetrics().registry])
