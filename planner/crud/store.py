"""Open the store a command works on: the embedded SQLite file by default, a fleet's PostgreSQL when asked.

The embedded store migrates and seeds itself on first use, so `planner recommend` works on a fresh machine with
no services. A PostgreSQL store is a fleet's shared source of truth: it is never migrated implicitly (an
operator runs `planner db upgrade`), and a store behind its migrations is refused with that instruction.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from planner.core.config import Settings, get_settings
from planner.core.errors import PlannerError
from planner.crud.seed import needs_seed, seed
from planner.db import migrate
from planner.db.session import engine_for, session_factory


class StoreError(PlannerError):
    """The store cannot be reached or is not migrated."""


def open_store(url: str | None = None, *, settings: Settings | None = None) -> Engine:
    """An engine on a ready store (migrated; seeded when embedded and empty)."""
    settings = settings or get_settings()
    url = url or settings.database_url
    engine = engine_for(url)
    embedded = engine.dialect.name == "sqlite"
    try:
        up_to_date = migrate.is_up_to_date(engine)
    except OperationalError as exc:
        raise StoreError(
            f"cannot reach the store at {engine.url.render_as_string(hide_password=True)}: {exc.orig}; "
            "check PLANNER_DATABASE_URL (or --database-url) and that the server is up."
        ) from exc
    if not up_to_date:
        if not embedded:
            raise StoreError(
                f"the store at {engine.url.render_as_string(hide_password=True)} is not at the latest migration; "
                "run `planner db upgrade` (with the same --database-url) first."
            )
        migrate.upgrade(url)
    if embedded:
        with session_factory(engine)() as session:
            stale = needs_seed(session, reference=settings.seed_reference_data)
        if stale:
            seed(engine, reference=settings.seed_reference_data)
    return engine
