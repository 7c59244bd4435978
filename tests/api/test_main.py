"""The app factory and the heartbeat sweep (fake clock, real store)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from planner.api.main import sweep_once
from planner.core.config import Settings
from planner.db import models as m
from tests.api.conftest import ADMIN, FakeClock, Store, register


def stored_status(store: Store, host_id: str) -> str:
    with store.sessions() as session:
        return session.get_one(m.Host, host_id).status


def test_sweep_writes_computed_status_to_the_store(
    client: TestClient, store: Store, settings: Settings, clock: FakeClock
) -> None:
    host_a, agent_a, _ = register(client)
    host_b, _agent_b, _ = register(client)
    client.post(f"/v1/hosts/{host_b}/drain", headers=ADMIN)
    assert sweep_once(store.sessions, settings, clock) == {"active": 0, "stale": 0, "lost": 0, "draining": 1}
    assert stored_status(store, host_b) == "draining"
    clock.advance(90)
    client.post(f"/v1/hosts/{host_a}/heartbeat", json={}, headers=agent_a)
    moved: dict[str, Any] = sweep_once(store.sessions, settings, clock)
    assert moved["stale"] == 1
    assert stored_status(store, host_b) == "stale"
    assert stored_status(store, host_a) == "active"
    clock.advance(300)
    sweep_once(store.sessions, settings, clock)
    assert (stored_status(store, host_a), stored_status(store, host_b)) == ("lost", "lost")
    assert sweep_once(store.sessions, settings, clock) == {"active": 0, "stale": 0, "lost": 0, "draining": 0}


def test_openapi_is_complete_with_examples(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert "/v1/hosts/{host_id}/heartbeat" in paths
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    for name in ("HostRegister", "HeartbeatIn", "ProbeRunIn", "FleetIn", "WorkloadIn", "PlanIn", "PlanEventIn"):
        assert schemas[name].get("examples"), name
    for path, ops in paths.items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            if path.startswith("/v1/"):
                assert {"401", "403", "422"} <= set(op["responses"]), (method, path)


def test_every_example_in_the_openapi_document_is_accepted_by_its_model() -> None:
    from planner.schemas import catalog, fleets, hosts, jobs, plans, probes

    for module in (catalog, fleets, hosts, jobs, plans, probes):
        for obj in vars(module).values():
            extra = getattr(obj, "model_config", {}).get("json_schema_extra") if isinstance(obj, type) else None
            if isinstance(extra, dict) and extra.get("examples") and hasattr(obj, "model_validate"):
                for example in extra["examples"]:
                    obj.model_validate(example)


def test_job_dispatcher_reads_the_store_the_app_was_given(app: FastAPI, store: Store) -> None:
    """An app made from a session factory routes jobs on that store, not on the settings' default database
    (schemathesis once reached `POST /v1/jobs` on an app whose dispatcher had opened an empty SQLite file)."""
    from starlette.requests import Request

    from planner.api.routes.jobs import get_dispatcher

    dispatcher = get_dispatcher(Request({"type": "http", "app": app}))
    assert dispatcher.sessions is store.sessions
    with dispatcher.sessions() as session:  # the migrated store: the plan tables are there
        assert session.execute(select(func.count()).select_from(m.Plan)).scalar_one() == 0
