"""`planner db`: apply, undo and check the store's migrations."""

from __future__ import annotations

import typer

from planner.cli.common import DatabaseUrlOption, console, handle_errors
from planner.core.config import get_settings
from planner.db import migrate
from planner.db.seed import seed
from planner.db.session import engine_for

app = typer.Typer(
    help="Migrate the store (SQLite embedded, or a fleet's PostgreSQL).", no_args_is_help=True, rich_markup_mode=None
)


@app.command()
@handle_errors
def upgrade(
    database_url: DatabaseUrlOption = None,
    revision: str = typer.Option("head", help="Target revision."),
    seed_catalogs: bool = typer.Option(True, "--seed/--no-seed", help="Seed catalogs and reference data after."),
) -> None:
    """Apply migrations up to REVISION, then seed the catalogs and the shipped reference measurements."""
    settings = get_settings()
    url = database_url or settings.database_url
    migrate.upgrade(url, revision)
    if seed_catalogs and revision == "head":
        seed(engine_for(url), reference=settings.seed_reference_data)
    console.print(f"store at revision {migrate.current_revision(engine_for(url))}")


@app.command()
@handle_errors
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. base."), database_url: DatabaseUrlOption = None
) -> None:
    """Undo migrations down to REVISION."""
    url = database_url or get_settings().database_url
    migrate.downgrade(url, revision)
    console.print(f"store at revision {migrate.current_revision(engine_for(url))}")


@app.command()
@handle_errors
def current(database_url: DatabaseUrlOption = None) -> None:
    """Print the store's current and head revisions."""
    url = database_url or get_settings().database_url
    console.print(f"current {migrate.current_revision(engine_for(url))}, head {migrate.head_revision(url)}")
