"""API tests: the app over a fresh store per test, on each backend, with a fake clock.

A per-test store is a copy of a template store (migrated, catalogs seeded) made once per session: a file copy
on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL. Routes commit for real, so tests see exactly what a
client would, and nothing leaks from one test to the next.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from planner.api.main import create_app
from planner.core.config import Settings
from planner.db.session import make_engine, session_factory
from scheduler.config import get_settings as scheduler_settings
from scheduler.dispatch import for_store
from tests.conftest import PG_ADMIN_URL, _pg_admin, drop_database, seeded_database

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ENROLLMENT_TOKEN = "test-enrollment-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENROLL = {"Authorization": f"Bearer {ENROLLMENT_TOKEN}"}
T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


class FakeClock:
    """The app's clock, moved by the test."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Store:
    """A store for one test: its URL and the session factory the app gets."""

    url: str
    sessions: sessionmaker[Session]


@pytest.fixture(scope="session")
def template_store(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """A migrated store with the catalogs seeded, made once per session and backend. Not tests/conftest.py's
    template_db: the PostgreSQL tests here hold a connection to this one, and a database with a connection
    cannot be cloned from."""
    url, handle = seeded_database(backend, tmp_path_factory.mktemp("tpl"))
    yield url, handle
    drop_database(handle)


@pytest.fixture(scope="session")
def template_engine(template_store: tuple[str, object]) -> Iterator[Engine]:
    engine = make_engine(template_store[0])
    yield engine
    engine.dispose()


@pytest.fixture
def store(
    backend: str, template_store: tuple[str, object], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Store]:
    """SQLite: a copy of the template file. PostgreSQL: the template store inside a transaction rolled back after
    the test (routes' commits become savepoints), which PostgreSQL keeps exact and costs nothing."""
    if backend == "sqlite":
        handle = template_store[1]
        assert isinstance(handle, Path)
        path = tmp_path / "store.db"
        shutil.copyfile(handle, path)
        engine = make_engine(f"sqlite:///{path}")
        yield Store(f"sqlite:///{path}", session_factory(engine))
        engine.dispose()
        return
    engine: Engine = request.getfixturevalue("template_engine")
    conn = engine.connect()
    outer = conn.begin()
    try:
        yield Store(
            template_store[0], sessionmaker(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        )
    finally:
        outer.rollback()
        conn.close()


@pytest.fixture
def fresh_store_url(
    backend: str, template_store: tuple[str, object], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A store of its own with real commits (for tests of concurrent transactions), cloned from the template."""
    handle = template_store[1]
    if backend == "sqlite":
        assert isinstance(handle, Path)
        path = tmp_path / "fresh.db"
        shutil.copyfile(handle, path)
        yield f"sqlite:///{path}"
        return
    request.getfixturevalue("template_engine").dispose()  # a template database must have no connections
    name = f"planner_api_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{handle}"'))
    admin.dispose()
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    drop_database(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(store: Store) -> Settings:
    return Settings(
        environment="test",
        database_url=store.url,
        admin_token=SecretStr(ADMIN_TOKEN),
        enrollment_token=SecretStr(ENROLLMENT_TOKEN),
        heartbeat_stale_s=60,
        heartbeat_lost_s=300,
        heartbeat_sweep_s=0,
        seed_reference_data=False,
    )


@pytest.fixture
def app(settings: Settings, store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    # The job dispatcher checks the routing table on every job, in the request's thread: a PostgreSQL test
    # store is one connection, which a background refresh thread must not share.
    monkeypatch.setenv("SCHEDULER_ROUTING_REFRESH_S", "0")
    scheduler_settings.cache_clear()
    yield create_app(settings, sessions=store.sessions, clock=clock, dispatchers=for_store)
    scheduler_settings.cache_clear()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def gpu(index: int = 0, family: str | None = "h100-sxm-80gb", **extra: Any) -> dict[str, Any]:
    return {
        "uuid": f"GPU-{uuid.uuid4()}",
        "index": index,
        "product_name": "NVIDIA H100 80GB HBM3",
        "gpu_family": family,
        "memory_gib": 79.6,
        "compute_capability": "9.0",
        **extra,
    }


def register(
    client: TestClient,
    name: str | None = None,
    gpus: list[dict[str, Any]] | None = None,
    headers: dict[str, str] = ADMIN,
) -> tuple[str, dict[str, str], list[dict[str, Any]]]:
    """Register a host; returns (host_id, its agent's headers, its GPUs)."""
    gpus = [gpu(0), gpu(1)] if gpus is None else gpus
    resp = client.post(
        "/v1/hosts", json={"name": name or f"node-{uuid.uuid4().hex[:8]}", "gpus": gpus}, headers=headers
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return body["host_id"], {"Authorization": f"Bearer {body['token']}"}, gpus


def measurement(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "gpu_family": "h100-sxm-80gb",
        "model": "sdxl",
        "stage": "denoiser",
        "recipe": "bf16",
        "batch": 1,
        "height": 1024,
        "width": 1024,
        "latency_ms": 90.4,
        "latency_p95_ms": 91.8,
        "peak_mem_gib": 11.2,
        "power_w": 655.0,
        "weights": "synthetic",
        "source": "measured",
    }
    row.update(changes)
    return row


def probe_run(host_id: str, measurements: list[dict[str, Any]] | None = None, **changes: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "host_id": host_id,
        "kind": "probe",
        "gpu_family": "h100-sxm-80gb",
        "weights": "synthetic",
        "provenance": {"driver": "570.124.06", "cuda": "12.8", "torch": "2.8.0", "agent_version": "0.1.0"},
        "started_at": "2026-03-14T10:00:00Z",
        "finished_at": "2026-03-14T10:20:00Z",
        "measurements": measurements
        if measurements is not None
        else [measurement(batch=1), measurement(batch=4, latency_ms=148.0, latency_p95_ms=150.0)],
    }
    run.update(changes)
    return run
