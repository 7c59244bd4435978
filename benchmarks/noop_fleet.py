"""A throwaway fleet for the scheduler benchmarks: one active plan with one no-op pool, real worker processes.

Each run gets its own PostgreSQL database (migrated, catalogs seeded) and Redis key prefix, and leaves nothing
behind: the workers are stopped, the keys deleted and the database dropped, whatever happened.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy
from sqlalchemy import Engine, create_engine, select, text

from planner.crud.seed import seed_catalogs
from planner.db import migrate
from planner.db import models as m
from planner.db.session import make_engine, session_factory, session_scope
from scheduler.config import SchedulerSettings
from scheduler.dispatch import Dispatcher

REPO = Path(__file__).resolve().parents[1]
POOL = "noop.0.h100-sxm-80gb"
STAGES = ["text_encoder", "denoiser", "vae_decoder"]


def add_service_args(parser: argparse.ArgumentParser) -> None:
    """--redis-url and --postgres-admin-url, defaulting to the test setup's services (127.0.0.1)."""
    parser.add_argument("--redis-url", default=os.environ.get("SCHEDULER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get("PLANNER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    )


def new_pg_database(admin_url: str, prefix: str = "sched_bench") -> tuple[str, str]:
    """An empty database beside `admin_url`'s: (its URL, its name)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{admin_url.rsplit('/', 1)[0]}/{name}", name


def drop_pg_database(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def settings_env(settings: SchedulerSettings) -> dict[str, str]:
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"SCHEDULER_{name.upper()}"] = str(value)
    return env


JobTimes = dict[str, tuple[datetime, datetime]]
"""job id -> (claimed by a worker, result recorded), for the jobs that finished."""


def wait_for_jobs(engine: Engine, ids: Sequence[str], timeout_s: float = 120.0) -> JobTimes:
    """Wait until every job is done (or `timeout_s` passes) and return the finished ones' times."""
    sessions = session_factory(engine)
    wait_until = time.monotonic() + timeout_s
    with sessions() as s:
        while True:
            done = s.scalar(select(sqlalchemy.func.count()).where(m.Job.id.in_(ids), m.Job.state == "done"))
            if done == len(ids) or time.monotonic() > wait_until:
                break
            time.sleep(0.2)
        rows = s.execute(select(m.Job.id, m.Job.started_at, m.Job.finished_at).where(m.Job.id.in_(ids))).all()
    return {i: (start, end) for i, start, end in rows if start is not None and end is not None}


@dataclass
class NoopFleet:
    settings: SchedulerSettings
    engine: Engine
    dispatcher: Dispatcher
    client: redis.Redis
    prefix: str
    metrics_ports: list[int]


@contextmanager
def noop_fleet(
    *,
    redis_url: str,
    postgres_admin_url: str,
    work_dir: Path,
    workers: int,
    batch: int,
    rate: float,
    capacity: float,
    replicas: int,
    worker_args: Sequence[str],
    name: str = "bench",
    engine_pool_size: int = 8,
    metrics_port: int | None = None,
    keep: bool = False,
    **settings_fields: Any,
) -> Iterator[NoopFleet]:
    """The workload `noop` (sd15 stages, 64x64, 1 step) routed to POOL, served by `workers` processes started
    with `python -m scheduler worker --pool POOL *worker_args`; waits until every worker is ready. `keep` keeps
    the database (to look at the jobs afterwards)."""
    db_url, db_name = new_pg_database(postgres_admin_url)
    prefix = f"{name}-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate.upgrade(db_url)
        engine = make_engine(db_url, pool_size=engine_pool_size)
        with session_scope(engine) as s:
            seed_catalogs(s)
            fleet = m.Fleet(name="bench")
            s.add(fleet)
            s.flush()
            s.add(m.Workload(fleet_id=fleet.id, name="noop", models=["sd15"], height=64, width=64, steps=1, rate=rate))
            plan = m.Plan(fleet_id=fleet.id, status="active", activated_at=datetime.now(UTC))
            s.add(plan)
            s.flush()
            s.add(
                m.RoutingEntry(
                    plan_id=plan.id,
                    pool=POOL,
                    workload_name="noop",
                    group_index=0,
                    model_id="sd15",
                    stages=STAGES,
                    gpu_family_id="h100-sxm-80gb",
                    recipes={},
                    batch=batch,
                    replicas=replicas,
                    capacity=capacity,
                    weight=1.0,
                )
            )
        settings = SchedulerSettings(
            broker_url=redis_url,
            result_backend=redis_url,
            database_url=db_url,
            key_prefix=prefix,
            fleet="bench",
            results_dir=work_dir / "results",
            heartbeat_s=1.0,
            **settings_fields,
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), **settings_env(settings)}
        ports = [metrics_port + k for k in range(workers)] if metrics_port is not None else []
        for k in range(workers):  # replicas of the pool, as a fleet runs one worker per GPU
            log = open(work_dir / f"worker{k}.log", "wb")  # noqa: SIM115
            worker_env = {**env, "SCHEDULER_METRICS_PORT": str(ports[k])} if ports else env
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "scheduler", "worker", "--pool", POOL, *worker_args,
                 "--name", f"{name}{k}@local", "--loglevel", "WARNING"],
                env=worker_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        dispatcher = Dispatcher(settings, engine=engine)
        deadline = time.monotonic() + 60
        while sum(w.ready for w in dispatcher.state.workers()) < workers:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"a worker did not start:\n{(work_dir / 'worker0.log').read_text()[-3000:]}")
            time.sleep(0.1)
        yield NoopFleet(settings, engine, dispatcher, client, prefix, ports)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        if not keep:
            drop_pg_database(postgres_admin_url, db_name)
