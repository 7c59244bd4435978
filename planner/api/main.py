"""The app factory: `create_app(settings)` builds the service over a store; `planner serve` runs it.

The lifespan opens the store (an embedded SQLite store migrates and seeds itself; a PostgreSQL store must be
migrated by `planner db upgrade` and is refused otherwise) and runs the heartbeat sweep, which writes hosts'
computed status to the store every `heartbeat_sweep_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from planner import __version__
from planner.api import errors
from planner.api.guard import RequestGuard
from planner.api.metrics import Metrics, MetricsMiddleware
from planner.api.routes import catalog, fleets, health, hosts, jobs, plans, probes
from planner.core.config import Settings, get_settings
from planner.crud.hosts import sweep_hosts
from planner.db.base import utcnow
from planner.db.session import install_watchdog, make_engine, session_factory, timeout_kwargs

log = logging.getLogger("planner.api")

TAGS = [
    {"name": "hosts", "description": "Agents register their hosts, heartbeat with telemetry, and take requests."},
    {"name": "probes", "description": "Probe runs and their measurements: submit (idempotent), query, export CSV."},
    {"name": "catalog", "description": "GPU families with prices (overridable), models, recipes."},
    {"name": "fleets", "description": "Fleets: families, prices, availability; their workloads."},
    {"name": "plans", "description": "Solve, store, compare and activate plans; the routing table; drift events."},
    {"name": "jobs", "description": "Generation jobs: submit (idempotent), state, result image, requeue, counts."},
    {"name": "service", "description": "Health, readiness and Prometheus metrics."},
]

DESCRIPTION = """\
The fleet's source of truth: hosts and their GPUs, measurements, catalogs, fleets, workloads, plans and the
routing table the scheduler follows.

Authentication: `Authorization: Bearer <token>`, with the admin token, the enrollment token (registers hosts
only) or a host's agent token (its own host's data only). 401: no or unknown credentials; 403: the wrong ones.
"""


def sweep_once(factory: sessionmaker[Session], settings: Settings, clock: Callable[[], datetime]) -> dict[str, int]:
    """One liveness sweep in its own transaction."""
    with factory() as session:
        moved = sweep_hosts(session, now=clock(), stale_s=settings.heartbeat_stale_s, lost_s=settings.heartbeat_lost_s)
        session.commit()
    return moved


async def _sweep_forever(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    while True:
        await asyncio.sleep(settings.heartbeat_sweep_s)
        try:
            moved = await run_in_threadpool(sweep_once, app.state.sessionmaker, settings, app.state.clock)
            if any(moved.values()):
                log.info("heartbeat sweep: %s", {k: v for k, v in moved.items() if v})
        except Exception:  # the sweep must outlive a store hiccup; the next one tries again
            log.exception("heartbeat sweep failed")


def service_engine(settings: Settings) -> Engine:
    """The service's pool: every wait on the store bounded (`planner.db.session.timeout_kwargs`), optimistic
    disconnect handling unless asked (see Settings.db_pool_pre_ping)."""
    bounds = timeout_kwargs(
        settings.database_url,
        connect_s=settings.db_connect_timeout_s,
        statement_s=settings.db_statement_timeout_s,
        pool_s=settings.db_pool_timeout_s,
    )
    engine = make_engine(settings.database_url, pool_pre_ping=settings.db_pool_pre_ping, **bounds)
    install_watchdog(engine, statement_s=settings.db_statement_timeout_s)
    return engine


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    sessions: sessionmaker[Session] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> FastAPI:
    """The service. By default it opens the store of `settings.database_url`; tests pass their own store."""
    settings = settings or get_settings()
    if sessions is None:
        if engine is None:
            from planner.db.store import open_store

            open_store(settings.database_url, settings=settings).dispose()  # reachable, migrated (seeded if embedded)
            engine = service_engine(settings)
        sessions = session_factory(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_sweep_forever(app)) if settings.heartbeat_sweep_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="GPU fleet planner",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = sessions
    app.state.engine = engine
    app.state.clock = clock
    app.state.metrics = Metrics(sessions, settings, clock)
    errors.install(app)
    for module in (hosts, probes, catalog, fleets, plans, jobs):
        app.include_router(module.router)  # each router carries its /v1 prefix: route templates are whole
    app.include_router(health.router)
    app.add_middleware(RequestGuard, settings=settings)  # before any route reads a body (planner.api.guard)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def app_from_env() -> FastAPI:
    """The factory uvicorn calls in each worker (`planner serve`): settings from the environment."""
    settings = get_settings()
    settings.check_serving()
    return create_app(settings)
