"""/v1/jobs/summary: counts by state and pool from the jobs table."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from planner.api.main import create_app
from planner.core.config import Settings, get_settings
from planner.db import models as m
from tests.api.conftest import ADMIN, Store, register


def add_jobs(store: Store, *jobs: tuple[str, str | None, str]) -> None:
    with store.sessions() as session:
        for state, pool, workload in jobs:
            session.add(
                m.Job(
                    id=str(uuid.uuid4()),
                    idempotency_key=uuid.uuid4().hex,
                    workload_name=workload,
                    pool=pool,
                    prompt="a lighthouse at dusk",
                    seed=1,
                    height=1024,
                    width=1024,
                    state=state,
                )
            )
        session.commit()


def test_summary_counts_by_state_and_pool(client: TestClient, store: Store) -> None:
    empty = client.get("/v1/jobs/summary", headers=ADMIN).json()
    assert empty == {"total": 0, "by_state": dict.fromkeys(m.JOB_STATES, 0), "by_pool": {}}
    add_jobs(
        store,
        ("queued", "sdxl-prod.0.h100-sxm-80gb", "sdxl-prod"),
        ("running", "sdxl-prod.0.h100-sxm-80gb", "sdxl-prod"),
        ("done", "sdxl-prod.0.h100-sxm-80gb", "sdxl-prod"),
        ("queued", None, "drafts"),
    )
    body = client.get("/v1/jobs/summary", headers=ADMIN).json()
    assert body["total"] == 4
    assert body["by_state"]["queued"] == 2
    assert body["by_pool"] == {
        "(none)": {"queued": 1},
        "sdxl-prod.0.h100-sxm-80gb": {"queued": 1, "running": 1, "done": 1},
    }
    assert client.get("/v1/jobs/summary?workload=drafts", headers=ADMIN).json()["total"] == 1


def test_summary_is_admin_only(client: TestClient) -> None:
    _, agent, _ = register(client)
    assert client.get("/v1/jobs/summary", headers=agent).status_code == 403
    assert client.get("/v1/jobs/summary").status_code == 401


def test_an_app_without_a_dispatcher_says_how_to_wire_one(settings: Settings, store: Store) -> None:
    """The API knows the scheduler only through planner.api.dispatch's interface: an app built without a factory
    answers the job submission with 503 and how to fix it (`planner serve` wires the scheduler's)."""
    bare = create_app(settings, sessions=store.sessions)
    with TestClient(bare) as client:
        sent = client.post("/v1/jobs", json={"workload": "w", "prompt": "a cat"}, headers=ADMIN)
    assert sent.status_code == 503, sent.text
    assert "planner serve" in sent.json()["detail"]


def test_planner_serve_wires_the_schedulers_dispatcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from planner.cli.serve import app_from_env
    from scheduler.dispatch import for_store

    monkeypatch.setenv("PLANNER_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    monkeypatch.setenv("PLANNER_DEV_MODE", "true")
    get_settings.cache_clear()
    try:
        app = app_from_env()
    finally:
        get_settings.cache_clear()
    assert app.state.dispatchers is for_store
