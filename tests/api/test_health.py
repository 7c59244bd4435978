"""/healthz, /readyz and /metrics (planner_ prefix, base units)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine

from planner.api.main import create_app
from planner.core.config import Settings
from planner.db.session import session_factory
from tests.api.conftest import ADMIN, probe_run, register
from tests.api.test_fleets import WORKLOAD, make_fleet
from tests.api.test_plans import result


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_is_503_when_the_store_is_unreachable() -> None:
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    settings = Settings(environment="test", admin_token=SecretStr("x" * 32), heartbeat_sweep_s=0)
    app = create_app(settings, sessions=session_factory(engine))
    with TestClient(app) as c:
        resp = c.get("/readyz")
        metrics = c.get("/metrics")
        fleets = c.get("/v1/fleets", headers={"Authorization": f"Bearer {'x' * 32}"})
        summary = c.get("/v1/jobs/summary", headers={"Authorization": f"Bearer {'x' * 32}"})
    assert resp.status_code == 503
    assert "store unreachable" in resp.json()["detail"]
    for answer in (fleets, summary):  # every route, not only /readyz: a client retries a 503, not a 500
        assert answer.status_code == 503, answer.text
        assert "the store did not answer" in answer.json()["detail"]
        assert answer.headers["Retry-After"] == "5"
    assert metrics.status_code == 200
    assert "planner_store_up 0.0" in metrics.text
    engine.dispose()


def test_metrics_latency_by_route_template_and_store_gauges(client: TestClient) -> None:
    host_id, agent, _ = register(client)
    client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=agent)
    client.post("/v1/probe-runs", json=probe_run(host_id), headers=agent)
    fleet = make_fleet(client)
    client.post(f"/v1/fleets/{fleet['id']}/workloads", json=WORKLOAD, headers=ADMIN)
    client.post(f"/v1/fleets/{fleet['id']}/plans", json={"result": result(), "activate": True}, headers=ADMIN)
    text = client.get("/metrics").text
    heartbeat = 'method="POST",route="/v1/hosts/{host_id}/heartbeat",status="200"'
    assert f"planner_http_request_duration_seconds_count{{{heartbeat}}} 1.0" in text
    assert "planner_store_up 1.0" in text
    assert 'planner_hosts{status="active"} 1.0' in text
    assert 'planner_hosts{status="lost"} 0.0' in text
    assert "planner_measurements_stored 2.0" in text
    assert 'planner_active_plan_cost_dollars_per_hour{fleet="prod-eu"} 12.54' in text
    per_image = _sample(text, 'planner_active_plan_cost_dollars_per_image{fleet="prod-eu",workload="sdxl-prod"}')
    assert per_image == pytest.approx(12.54 / 3600 / 5)
    capacity = 'planner_active_plan_pool_capacity_images_per_second{fleet="prod-eu",pool="sdxl-prod.0.h100-sxm-80gb"}'
    assert _sample(text, capacity) == pytest.approx(6.3)
    assert host_id not in text  # routes are templates, not raw paths


def _sample(text: str, series: str) -> float:
    """The value of one series in a Prometheus text exposition."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")]
    assert len(values) == 1, (series, text)
    return values[0]


def test_a_body_that_is_not_json_is_400_saying_so(client: TestClient) -> None:
    resp = client.post("/v1/fleets", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status_code == 400
    assert "not JSON" in resp.json()["detail"]


def test_a_sqlite_store_behind_the_schema_says_to_upgrade_not_to_retry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    settings = Settings(
        environment="test", database_url=url, admin_token=SecretStr("x" * 32), heartbeat_sweep_s=0,
        seed_reference_data=False,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE fleets RENAME TO fleets_old")  # as a store from before that table
        engine.dispose()
        resp = c.get("/v1/fleets", headers={"Authorization": f"Bearer {'x' * 32}"})
    assert resp.status_code == 503, resp.text
    assert "planner db upgrade" in resp.json()["detail"]
    assert "Retry-After" not in resp.headers
