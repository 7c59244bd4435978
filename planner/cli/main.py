"""The `planner` command: the store, measurements, catalogs, the service and capacity reviews."""

from __future__ import annotations

import typer

from planner import __version__
from planner.cli import catalog, db, measurements, recommend, serve

app = typer.Typer(
    name="planner",
    help="Plan a GPU fleet for image generation at the least dollars per image.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # Plain click help: rich markup would eat every `[default: ...]` (as "Port .") and show flags as <bool>.
    rich_markup_mode=None,
)
app.add_typer(db.app, name="db")
app.add_typer(measurements.app, name="measurements")
app.command("families")(catalog.families)
app.command("models")(catalog.models)
app.command("recipes")(catalog.recipes)
app.command("recommend")(recommend.recommend)
app.command("serve")(serve.serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Plan a GPU fleet for image generation at the least dollars per image."""
