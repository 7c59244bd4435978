"""Solve a fleet: the one place the service calls the solver.

`solve_fleet` loads the fleet (families, prices, availability), its workloads and the stored measurements,
puts them in the scenario shape of DESIGN.md's contract 2, and calls `planner.solver.solve`. The solver is
imported lazily: the service runs without it, and the solve route answers 503 "solver not installed" until
the package is there. The call itself is the single wiring point (see `_call_solver`).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from sqlalchemy.orm import Session

from planner.core.config import Settings, get_settings
from planner.core.errors import InputError, PlannerError
from planner.crud.fleets import availability, get_fleet
from planner.db import models as m
from planner.db.base import utcnow
from planner.measurements.contract import MeasurementRow
from planner.measurements.store import stored_rows


class SolverUnavailable(PlannerError):
    """The solver package is not installed in this deployment."""


@dataclass(frozen=True)
class SolveOutcome:
    """The solver's answer (contract 3 JSON and its extras), what it was asked, and how long it took."""

    result: dict[str, Any]
    scenario: dict[str, Any]
    measurements: int
    solve_time_s: float


def build_scenario(
    session: Session, *, fleet: m.Fleet, now: datetime, settings: Settings, **options: Any
) -> dict[str, Any]:
    """The fleet and its workloads as a scenario (contract 2), availability taken from hosts when opted in."""
    entries: list[dict[str, Any]] = []
    for fam in availability(
        session, fleet=fleet, now=now, stale_s=settings.heartbeat_stale_s, lost_s=settings.heartbeat_lost_s
    ):
        entry: dict[str, Any] = {"family": fam.family, "price_per_hour": fam.price_per_hour}
        if fam.available_effective is not None:
            entry["available"] = fam.available_effective
        if fam.memory_gib is not None:
            entry["memory_gib"] = fam.memory_gib
        if fleet.energy_price_per_kwh is not None:
            entry["energy_price_per_kwh"] = fleet.energy_price_per_kwh
        entries.append(entry)
    workloads: list[dict[str, Any]] = []
    for w in sorted(fleet.workloads, key=lambda w: w.name):
        spec: dict[str, Any] = {
            "name": w.name,
            "model": w.models[0] if len(w.models) == 1 else list(w.models),
            "height": w.height,
            "width": w.width,
            "rate": w.rate,
            "headroom": w.headroom,
        }
        if w.steps is not None:
            spec["steps"] = w.steps
        if w.p95_latency_s is not None:
            spec["p95_latency_s"] = w.p95_latency_s
        if w.recipes:
            spec["recipes"] = {k: list(v) for k, v in w.recipes.items()}
        if w.quality:
            spec["quality"] = dict(w.quality)
        workloads.append(spec)
    solver: dict[str, Any] = {"memory_reserve_gib": settings.memory_reserve_gib}
    solver.update({k: v for k, v in options.items() if v is not None})
    return {"fleet": entries, "workloads": workloads, "solver": solver}


def load_solver() -> ModuleType:
    """`planner.solver`, or SolverUnavailable when this deployment lacks it."""
    try:
        return importlib.import_module("planner.solver")
    except ModuleNotFoundError as exc:
        if exc.name in ("planner.solver", "planner"):
            raise SolverUnavailable(
                "solver not installed: this planner has no `planner.solver` package; install the full planner, "
                "or compute a plan elsewhere and store it with POST /v1/fleets/{fleet}/plans"
            ) from exc
        raise


def _call_solver(solver: ModuleType, scenario: dict[str, Any], rows: list[MeasurementRow]) -> dict[str, Any]:
    """THE wiring point: the solver's entry point, given the scenario and the stored measurements."""
    result = solver.solve(scenario, measurements=rows)
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    if not isinstance(result, dict):
        raise PlannerError(f"planner.solver.solve returned {type(result).__name__}, not a contract-3 object")
    return result


def solve_fleet(
    session: Session, *, fleet_id: int, now: datetime | None = None, settings: Settings | None = None, **options: Any
) -> SolveOutcome:
    """Solve a fleet's workloads against the stored measurements (latest per cell); nothing is stored here."""
    settings = settings or get_settings()
    fleet = get_fleet(session, fleet=fleet_id)
    if not fleet.workloads:
        raise InputError(f"fleet {fleet.name!r} has no workloads; add one with POST /v1/fleets/{fleet.id}/workloads")
    if not fleet.families:
        raise InputError(f"fleet {fleet.name!r} has no GPU families; give it some with PUT /v1/fleets/{fleet.id}")
    solver = load_solver()
    scenario = build_scenario(session, fleet=fleet, now=now or utcnow(), settings=settings, **options)
    rows = stored_rows(session, status="ok")
    started = time.perf_counter()
    result = _call_solver(solver, scenario, rows)
    return SolveOutcome(
        result=result, scenario=scenario, measurements=len(rows), solve_time_s=time.perf_counter() - started
    )
