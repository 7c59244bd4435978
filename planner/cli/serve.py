"""`planner serve`: the planner service (FastAPI under uvicorn) over the store."""

from __future__ import annotations

import os

import typer
from rich.text import Text

from planner.cli.common import DatabaseUrlOption, console, handle_errors
from planner.core.config import get_settings


@handle_errors
def serve(
    host: str | None = typer.Option(None, help="Address to listen on [default: PLANNER_API_HOST or 127.0.0.1]."),
    port: int | None = typer.Option(None, help="Port [default: PLANNER_API_PORT or 8000]."),
    workers: int | None = typer.Option(None, help="uvicorn worker processes [default: PLANNER_API_WORKERS or 1]."),
    database_url: DatabaseUrlOption = None,
    dev: bool = typer.Option(
        False, "--dev", help="Development only: serve on 127.0.0.1 with the placeholder admin token (no tokens set)."
    ),
) -> None:
    """Serve the REST API (/v1, /docs, /metrics). A PostgreSQL store must be migrated first (`planner db upgrade`).

    Needs PLANNER_ADMIN_TOKEN, unless --dev (PLANNER_DEV_MODE=true) on 127.0.0.1."""
    import uvicorn

    from planner.db.store import open_store

    # Workers are fresh processes that read the settings from the environment: pass the options through it.
    for name, value in (
        ("PLANNER_DATABASE_URL", database_url),
        ("PLANNER_API_HOST", host),
        ("PLANNER_API_PORT", port),
        ("PLANNER_API_WORKERS", workers),
        ("PLANNER_DEV_MODE", "true" if dev else None),
    ):
        if value is not None:
            os.environ[name] = str(value)
    get_settings.cache_clear()
    settings = get_settings()  # refuses unsafe defaults before anything listens
    settings.check_serving()
    engine = open_store(settings.database_url, settings=settings)  # refuses a store behind its migrations
    engine.dispose()
    # Text, not markup: an IPv6 address (`[fe80::1]`) or a URL would otherwise lose its brackets.
    console.print(
        Text(
            f"planner API on http://{settings.api_host}:{settings.api_port} "
            f"({settings.api_workers} worker(s), store {engine.url.render_as_string(hide_password=True)})"
        ),
        highlight=False,
    )
    uvicorn.run(
        "planner.api.main:app_from_env",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
    )
