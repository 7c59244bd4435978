"""The planner service (the real app, `planner.api.main.create_app`) on a test's store, with its dispatcher."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine

from planner.api.main import create_app
from planner.core.config import Settings
from scheduler.config import SchedulerSettings
from scheduler.dispatch import Dispatcher

TOKEN = "test-admin-token"


def make_app(settings: SchedulerSettings, engine: Engine) -> FastAPI:
    app = create_app(
        Settings(admin_token=SecretStr(TOKEN), database_url=str(engine.url), heartbeat_sweep_s=0), engine=engine
    )
    app.state.dispatcher = Dispatcher(settings, engine=engine)
    return app
