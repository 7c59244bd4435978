"""Fixtures of the scheduler tests: a key prefix per test in the real Redis, plans in the real store, workers.

Every test gets its own Redis key prefix (queues, backlogs, results, intermediates: kombu's global_keyprefix
too), under one prefix per test session that is deleted at the end, so parallel runs and other users of the
Redis never see each other's keys. Plans are committed (worker processes must read them) under a fleet name
unique to the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, select, update

from planner.db import models as m
from planner.db.session import session_factory, session_scope
from scheduler.config import SchedulerSettings
from scheduler.stages import BuildStage
from scheduler.state import SchedulerState
from scheduler.table import find_pool
from scheduler.worker import WorkerRuntime
from tests.helpers import REPO

REDIS_URL = os.environ.get("SCHEDULER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_session_prefix() -> Iterator[str]:
    prefix = f"schedtest-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # a missing Redis is an error, not a skip
    yield client
    client.close()


@pytest.fixture
def fleet_name() -> str:
    return f"fleet-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(
    db_url: str, redis_session_prefix: str, tmp_path: Path, fleet_name: str, request: pytest.FixtureRequest
) -> SchedulerSettings:
    """Settings for one test: its own prefix and directories; short timers so tests stay quick."""
    overrides: dict[str, Any] = getattr(request, "param", {}) or {}
    values: dict[str, Any] = {
        "broker_url": REDIS_URL,
        "result_backend": REDIS_URL,
        "database_url": db_url,
        "key_prefix": f"{redis_session_prefix}{uuid.uuid4().hex[:8]}:",
        "fleet": fleet_name,
        "results_dir": tmp_path / "results",
        "intermediates_dir": tmp_path / "intermediates",
        "job_timeout_s": 30.0,
        "visibility_timeout_s": 60.0,
        "unacked_restore_interval_s": 1.0,
        "routing_refresh_s": 0.0,
        "backlog_refresh_s": 0.0,
        "heartbeat_s": 0.5,
        "worker_lost_s": 5.0,
        "retry_backoff_s": 0.1,
        "retry_backoff_max_s": 0.5,
        "batch_wait_s": 0.02,
        "dispatch_grace_s": 1.0,
        "device": "cpu",
        "tiny": True,
        "synthetic": True,  # the tiny stand-in models; tests of real folders turn it off and name their folders
    }
    values.update(overrides)
    return SchedulerSettings(**values)


def settings_env(settings: SchedulerSettings) -> dict[str, str]:
    """The settings as SCHEDULER_* variables, for a worker process."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"SCHEDULER_{name.upper()}"] = str(value)
    return env


@dataclass
class PoolDef:
    workload: str
    group: int
    family: str
    model: str
    stages: list[str]
    batch: int = 4
    capacity: float = 1.0
    replicas: float = 1.0
    weight: float = 1.0
    recipes: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.workload}.{self.group}.{self.family}"


def create_plan(
    engine: Engine,
    fleet: str,
    pools: list[PoolDef],
    *,
    sizes: dict[str, tuple[int, int, int]] | None = None,
    activate: bool = True,
) -> int:
    """A plan for a fleet with these pools (committed); activating supersedes the plan in force."""
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        row = s.scalar(select(m.Fleet).where(m.Fleet.name == fleet))
        if row is None:
            row = m.Fleet(name=fleet)
            s.add(row)
            s.flush()
        known = set(s.scalars(select(m.Workload.name).where(m.Workload.fleet_id == row.id)))
        for p in pools:
            if p.workload not in known:
                h, w, steps = (sizes or {}).get(p.workload, (64, 64, 2))
                s.add(
                    m.Workload(
                        fleet_id=row.id, name=p.workload, models=[p.model], height=h, width=w, steps=steps, rate=1.0
                    )
                )
                known.add(p.workload)
        if activate:
            s.execute(
                update(m.Plan)
                .where(m.Plan.fleet_id == row.id, m.Plan.status.in_(("active", "stale")))
                .values(status="superseded")
            )
        plan = m.Plan(fleet_id=row.id, status="active" if activate else "draft", activated_at=now if activate else None)
        s.add(plan)
        s.flush()
        for p in pools:
            s.add(
                m.RoutingEntry(
                    plan_id=plan.id,
                    pool=p.name,
                    workload_name=p.workload,
                    group_index=p.group,
                    model_id=p.model,
                    stages=p.stages,
                    gpu_family_id=p.family,
                    recipes=p.recipes,
                    batch=p.batch,
                    replicas=p.replicas,
                    capacity=p.capacity,
                    weight=p.weight,
                )
            )
        return plan.id


class WorkerProcess:
    """`python -m scheduler worker ...` in a subprocess, as an operator would run it."""

    def __init__(
        self,
        settings: SchedulerSettings,
        pools: list[str],
        *,
        name: str,
        log_path: Path,
        noop_ms: float | None = None,
        concurrency: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.log_path = log_path
        cmd = [sys.executable, "-m", "scheduler", "worker", "--name", name, "--loglevel", "INFO"]
        for p in pools:
            cmd += ["--pool", p]
        if noop_ms is not None:
            cmd += ["--noop-ms", str(noop_ms)]
        if concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            **settings_env(settings),
            **(env or {}),
        }
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        state = SchedulerState(redis.Redis.from_url(self.settings.state_redis_url), self.settings.key_prefix)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if any(w.name == self.name and w.ready for w in state.workers()):
                return
            time.sleep(0.1)
        raise AssertionError(f"worker {self.name} not ready after {timeout_s} s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Start workers with `workers.append(WorkerProcess(...))`; all are stopped at the end."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def in_process_worker(
    settings: SchedulerSettings,
    engine: Engine,
    redis_client: redis.Redis,
    pooldef: PoolDef,
    build: BuildStage,
    *,
    name: str,
    concurrency: int,
) -> WorkerRuntime:
    """A worker runtime in this process for one pool of a new active plan (not started)."""
    create_plan(engine, settings.fleet, [pooldef])
    with session_factory(engine)() as s:
        pool = find_pool(s, fleet=settings.fleet, pool=pooldef.name)
    assert pool is not None
    return WorkerRuntime(
        settings,
        [pool],
        name=name,
        concurrency=concurrency,
        build_stage=build,
        engine=engine,
        client=redis_client,
    )
