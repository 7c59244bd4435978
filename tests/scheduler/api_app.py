"""A small FastAPI app carrying the job routes, as the planner service mounts them (`/v1` prefix)."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine

from planner.api.routes import jobs
from planner.core.config import Settings
from planner.db.session import session_factory
from scheduler.config import SchedulerSettings
from scheduler.dispatch import Dispatcher

TOKEN = "test-admin-token"


def make_app(settings: SchedulerSettings, engine: Engine) -> FastAPI:
    app = FastAPI()
    app.state.settings = Settings(admin_token=SecretStr(TOKEN), database_url=str(engine.url))
    app.state.sessionmaker = session_factory(engine)
    app.state.dispatcher = Dispatcher(settings, engine=engine)
    app.include_router(jobs.router, prefix="/v1")
    return app
