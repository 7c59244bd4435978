"""`planner families|models|recipes`: what the store knows, as tables."""

from __future__ import annotations

from rich.table import Table
from sqlalchemy import select

from planner.cli.common import DatabaseUrlOption, console, handle_errors
from planner.db import models as m
from planner.db.session import session_scope
from planner.db.store import open_store


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


@handle_errors
def families(database_url: DatabaseUrlOption = None) -> None:
    """List GPU families: memory, bandwidth, dense TFLOP/s per precision, default price."""
    engine = open_store(database_url)
    table = Table(
        "family", "name", "memory GiB", "TB/s", "bf16", "fp8", "int8", "$/h", "unverified", title="GPU families"
    )
    with session_scope(engine) as session:
        for fam in session.scalars(select(m.GpuFamily).order_by(m.GpuFamily.id)):
            prices = sorted(fam.prices, key=lambda p: (not p.is_override, p.position))
            table.add_row(
                fam.id,
                fam.name,
                _fmt(fam.memory_gib, 1),
                _fmt(fam.memory_bandwidth_tbps, 2),
                _fmt(fam.tflops.get("bf16")),
                _fmt(fam.tflops.get("fp8")),
                _fmt(fam.tflops.get("int8")),
                _fmt(prices[0].price_per_hour, 2) if prices else "-",
                (f"{len(fam.unverified)} fields" if fam.unverified else "")
                + ("" if fam.in_catalog else "not in catalog"),
            )
    console.print(table)


@handle_errors
def models(database_url: DatabaseUrlOption = None) -> None:
    """List models: stages, default steps, resolution, guidance."""
    engine = open_store(database_url)
    table = Table("model", "name", "stages", "steps", "size", "CFG", "distilled from", title="Models")
    with session_scope(engine) as session:
        for mod in session.scalars(select(m.Model).order_by(m.Model.id)):
            table.add_row(
                mod.id,
                mod.name,
                " > ".join(s.stage for s in mod.stages),
                str(mod.default_steps),
                f"{mod.width}x{mod.height}",
                "yes" if mod.cfg else "no",
                mod.distilled_from or "",
            )
    console.print(table)


@handle_errors
def recipes(database_url: DatabaseUrlOption = None) -> None:
    """List recipes and the stages each applies to."""
    engine = open_store(database_url)
    table = Table("recipe", "stages", "description", title="Recipes")
    with session_scope(engine) as session:
        for rec in session.scalars(select(m.Recipe).order_by(m.Recipe.id)):
            table.add_row(rec.id, ", ".join(rec.stages), rec.description + ("" if rec.in_catalog else " (imported)"))
    console.print(table)
