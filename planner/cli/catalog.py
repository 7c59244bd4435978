"""`planner families|models|recipes`: what the store knows, as tables."""

from __future__ import annotations

from sqlalchemy import select

from planner.cli.common import DatabaseUrlOption, console, handle_errors
from planner.cli.tables import render_table
from planner.crud.store import open_store
from planner.db import models as m
from planner.db.session import session_scope


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


@handle_errors
def families(database_url: DatabaseUrlOption = None) -> None:
    """List GPU families: memory, bandwidth, dense TFLOP/s per precision, default price."""
    engine = open_store(database_url)
    rows: list[tuple[str, ...]] = []
    with session_scope(engine) as session:
        for fam in session.scalars(select(m.GpuFamily).order_by(m.GpuFamily.id)):
            prices = sorted(fam.prices, key=lambda p: (not p.is_override, p.position))
            rows.append(
                (
                    fam.id,
                    fam.name + ("" if fam.in_catalog else " (not in the catalog)"),
                    _fmt(fam.memory_gib, 1),
                    _fmt(fam.memory_bandwidth_tbps, 2),
                    _fmt(fam.tflops.get("bf16")),
                    _fmt(fam.tflops.get("fp8")),
                    _fmt(fam.tflops.get("int8")),
                    _fmt(prices[0].price_per_hour, 2) if prices else "-",
                    str(len(fam.unverified)) if fam.unverified else "",
                )
            )
    columns = ("family", "name", "GiB", "TB/s", "bf16 TFLOP/s", "fp8", "int8", "$/h", "unsure")
    render_table(
        "GPU families", columns, rows, out=console, right={2, 3, 4, 5, 6, 7, 8}, whole={0},
        caption="GiB: memory; TB/s: its bandwidth; TFLOP/s: dense. $/h: the catalog's first price (a fleet's own "
        "price overrides it). unsure: how many figures the sources could not verify (planner/catalog/data/"
        "gpu_families.yaml says which).",
    )  # fmt: skip


@handle_errors
def models(database_url: DatabaseUrlOption = None) -> None:
    """List models: stages, default steps, resolution, guidance, and the families with measured cells (a model
    measured nowhere can only be planned after probing it)."""
    engine = open_store(database_url)
    rows: list[tuple[str, ...]] = []
    with session_scope(engine) as session:
        measured: dict[str, list[str]] = {}
        for model_id, family in session.execute(
            select(m.Measurement.model_id, m.Measurement.gpu_family_id)
            .where(m.Measurement.source == "measured")
            .distinct()
            .order_by(m.Measurement.model_id, m.Measurement.gpu_family_id)
        ):
            measured.setdefault(model_id, []).append(family)
        for mod in session.scalars(select(m.Model).order_by(m.Model.id)):
            rows.append(
                (
                    mod.id,
                    mod.name,
                    " > ".join(s.stage for s in mod.stages),
                    str(mod.default_steps),
                    f"{mod.width}x{mod.height}",
                    "yes" if mod.cfg else "no",
                    mod.distilled_from or "",
                    ", ".join(measured.get(mod.id, [])) or "not measured",
                )
            )
    columns = ("model", "name", "stages", "steps", "size", "CFG", "distilled from", "measured on")
    render_table("Models", columns, rows, out=console, right={3}, whole={0, 4, 6})


@handle_errors
def recipes(database_url: DatabaseUrlOption = None) -> None:
    """List recipes and the stages each applies to."""
    engine = open_store(database_url)
    with session_scope(engine) as session:
        rows = [
            (rec.id, ", ".join(rec.stages), rec.description + ("" if rec.in_catalog else " (imported)"))
            for rec in session.scalars(select(m.Recipe).order_by(m.Recipe.id))
        ]
    render_table("Recipes", ("recipe", "stages", "description"), rows, out=console, whole={0})
