"""The one solve path of the planner: a store (+ a scenario) -> `planner.solver.build_problem` -> `solve`.

`planner recommend` (a scenario file, or one built from its quick flags) and the service's
`POST /v1/fleets/{fleet}/plans/solve` (a stored fleet and its workloads) both come through here, so both plan
from the same things:
- the store's measurements (latest per cell, status `ok`), plus the scenario's own measurements file, whose
  rows win the cells they have (`planner.perf.model`, 1.);
- the store's catalog: package catalog entries with the store's prices (an operator's price override comes
  first), families an operator defined (`PUT /v1/gpu-families/{id}`: used with their ceilings when they have
  them, otherwise as fleet-only families of known memory), recipes that imported measurements named;
- the agents' calibrations (latest unflagged per family) for the roofline ceilings;
- solver knobs from Settings (`memory_reserve_gib`) unless the scenario's `solver:` section sets them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from planner import catalog as package_catalog
from planner.catalog.schema import GpuFamily, ModelSpec, Price, Recipe
from planner.core.config import Settings, get_settings
from planner.core.errors import ConflictError, InputError
from planner.crud.catalog import ordered_prices
from planner.crud.fleets import availability, get_fleet
from planner.crud.measurements import stored_rows
from planner.db import models as m
from planner.db.base import utcnow
from planner.measurements.contract import MeasurementRow
from planner.perf.roofline import Calibration
from planner.scenario import Scenario
from planner.solver import Plan, Problem, SolverOptions, build_problem, solve
from planner.solver.distilled import with_distilled_quality
from planner.solver.problem import options_from_scenario
from planner.solver.replan import RunningPlan


class InfeasibleError(ConflictError):
    """The fleet cannot carry the workloads; the message says how much it carries and what would carry it."""

    exit_code = 3

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        super().__init__(describe_infeasible(plan))


def describe_infeasible(plan: Plan) -> str:
    """The solver's Infeasibility entries as sentences: how much is carried, why, and what would carry it."""
    lines = ["no plan carries every workload:"]
    for item in plan.infeasible:
        carried = "" if "%" in item.message else f" (carries {item.carried_fraction:.0%} of its rate)"
        lines.append(f"  {item.workload}: {item.message}{carried}.")
        lines.append(f"    What would: {item.suggestion}.")
    if not plan.infeasible:
        lines.append("  the solver found no plan and no reason: " + "; ".join(plan.warnings or ("none given",)))
    lines.extend(f"  {w}" for w in plan.warnings if w.startswith("Left out: ") and plan.infeasible)
    return "\n".join(lines)


@dataclass(frozen=True)
class StoreCatalog:
    """The catalog as the store holds it, in the solver's types."""

    families: dict[str, GpuFamily]
    """Families with ceilings (catalog, or operator-defined with bandwidth, TFLOP/s and TDP)."""
    memory_gib: dict[str, float]
    """Every stored family's memory, fleet-only ones included."""
    prices: dict[str, float]
    """The price a plan uses when none is given: an operator's override first, then the catalog's first."""
    models: dict[str, ModelSpec]
    recipes: dict[str, Recipe]
    calibration: dict[str, Calibration] = field(default_factory=dict)
    price_lists: dict[str, list[Price]] = field(default_factory=dict)
    """Every stored family's prices with their sources, an operator's override first."""

    def priced_families(self, offering: str | None = None) -> list[str]:
        """Families a plan may rent without being told a price (of an offering kind, when given)."""
        if offering is None:
            return sorted(self.prices)
        return sorted(f for f in self.price_lists if self.price_for(f, offering) is not None)

    def price_for(self, family: str, offering: str) -> Price | None:
        """The price of a family for an offering kind (`GpuFamily.price_for`: an operator's override first)."""
        spec = self.families.get(family)
        if spec is None:
            spec_prices = self.price_lists.get(family, [])
            override = next((p for p in spec_prices if p.override), None)
            return override or next((p for p in spec_prices if p.offering_kind == offering), None)
        return spec.model_copy(update={"prices": self.price_lists.get(family, spec.prices)}).price_for(offering)


def _price(row: m.GpuPrice, package: GpuFamily | None = None) -> Price | None:
    """A stored price in the catalog's type; the package catalog's entry of the same offering gives its
    explicit kind and region (the store has no column for them)."""
    same = None
    if package is not None and not row.is_override:
        same = next(
            (p for p in package.prices if (p.provider, p.offering, p.as_of) == (row.provider, row.offering, row.as_of)),
            None,
        )
    try:
        return Price.model_validate(
            {
                "price_per_hour": row.price_per_hour,
                "provider": row.provider,
                "offering": row.offering,
                "source": row.source,
                "as_of": row.as_of,
                "status": row.status if row.status in ("read", "secondary", "computed", "measured") else "unverified",
                "kind": same.kind if same is not None else None,
                "region": same.region if same is not None else None,
                "override": bool(row.is_override),
            }
        )
    except ValidationError:
        return None


def _spec_from_row(row: m.GpuFamily) -> GpuFamily | None:
    """An operator-defined family as a catalog spec, when it has the ceilings a roofline transfer needs."""
    if not row.memory_bandwidth_tbps or not row.tdp_w or not row.tflops:
        return None
    try:
        return GpuFamily.model_validate(
            {
                "id": row.id,
                "name": row.name or row.id,
                "vendor": row.vendor if row.vendor in ("nvidia", "amd") else "other",
                "memory_gib": row.memory_gib,
                "memory_bandwidth_tbps": row.memory_bandwidth_tbps,
                "tflops": dict(row.tflops),
                "tdp_w": row.tdp_w,
                "compute_capability": row.compute_capability,
            }
        )
    except ValidationError:
        return None


def _recipe_from_row(row: m.Recipe) -> Recipe | None:
    try:
        return Recipe.model_validate(
            {**(row.options or {}), "id": row.id, "description": row.description, "stages": list(row.stages)}
        )
    except ValidationError:
        return None


def calibrations(session: Session) -> dict[str, Calibration]:
    """The newest unflagged calibration per family (what `agent calibrate` measured), as roofline ceilings."""
    out: dict[str, Calibration] = {}
    query = (
        select(m.Calibration)
        .where(m.Calibration.flagged.is_(False), m.Calibration.gpu_family_id.is_not(None))
        .order_by(m.Calibration.measured_at.desc(), m.Calibration.id.desc())
    )
    for cal in session.scalars(query):
        fid = cal.gpu_family_id
        if fid is None or fid in out:
            continue
        tflops = {p: v for p, v in (("bf16", cal.bf16_tflops), ("fp8", cal.fp8_tflops)) if v}
        if tflops or cal.memory_tbps:
            out[fid] = Calibration(tflops=tflops, tbps=cal.memory_tbps)
    return out


def load_catalog(session: Session) -> StoreCatalog:
    """The store's families (with their prices), the package's models, catalog and imported recipes."""
    package = package_catalog.gpu_families()
    families: dict[str, GpuFamily] = {}
    memory: dict[str, float] = {}
    prices: dict[str, float] = {}
    price_lists: dict[str, list[Price]] = {}
    for row in session.scalars(select(m.GpuFamily).options(selectinload(m.GpuFamily.prices))):
        memory[row.id] = row.memory_gib
        packaged = package.get(row.id) if row.in_catalog else None
        spec = packaged or _spec_from_row(row)
        ordered = ordered_prices(row)
        if ordered:
            prices[row.id] = ordered[0].price_per_hour
        stored = [p for p in (_price(r, packaged) for r in ordered) if p is not None]
        price_lists[row.id] = stored
        if spec is not None:
            families[row.id] = spec.model_copy(update={"prices": stored or list(spec.prices)})
    recipes = dict(package_catalog.recipes())
    for rec in session.scalars(select(m.Recipe).where(m.Recipe.in_catalog.is_(False))):
        parsed = _recipe_from_row(rec)
        if parsed is not None and rec.id not in recipes:
            recipes[rec.id] = parsed
    return StoreCatalog(
        families=families,
        memory_gib=memory,
        prices=prices,
        models=dict(package_catalog.models()),
        recipes=recipes,
        calibration=calibrations(session),
        price_lists=price_lists,
    )


def solver_options(scenario: Scenario, settings: Settings, **overrides: Any) -> SolverOptions:
    """SolverOptions from the scenario's `solver:` section; Settings fill the knobs the section leaves out."""
    opts = options_from_scenario(scenario, SolverOptions(memory_reserve_gib=settings.memory_reserve_gib))
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(opts, **changes) if changes else opts


def store_problem(
    session: Session,
    scenario: Scenario,
    *,
    settings: Settings | None = None,
    store_catalog: StoreCatalog | None = None,
    rows: list[MeasurementRow] | None = None,
    **overrides: Any,
) -> Problem:
    """The solver's Problem for a scenario against the store: its measurements, catalog and calibrations."""
    settings = settings or get_settings()
    cat = store_catalog or load_catalog(session)
    rows = rows if rows is not None else stored_rows(session, status="ok")
    return build_problem(
        scenario,
        rows,
        families=cat.families,
        models=cat.models,
        recipes=cat.recipes,
        calibration=cat.calibration,
        options=solver_options(scenario, settings, **overrides),
    )


# ---- the service's fleets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SolveOutcome:
    """The solver's answer (contract 3 JSON and its extras), what it was asked, and how long it took."""

    result: dict[str, Any]
    scenario: dict[str, Any]
    measurements: int
    solve_time_s: float
    plan: Plan


def build_scenario(session: Session, *, fleet: m.Fleet, now: datetime, settings: Settings) -> dict[str, Any]:
    """A stored fleet and its workloads as a scenario (contract 2), availability from hosts when opted in."""
    entries: list[dict[str, Any]] = []
    memory = {f.id: f.memory_gib for f in session.scalars(select(m.GpuFamily))}
    for fam in availability(
        session, fleet=fleet, now=now, stale_s=settings.heartbeat_stale_s, lost_s=settings.heartbeat_lost_s
    ):
        entry: dict[str, Any] = {
            "family": fam.family,
            "price_per_hour": fam.price_per_hour,
            "price_source": f"fleet {fleet.name!r}"[:300],
        }
        if fam.available_effective is not None:
            entry["available"] = fam.available_effective
        mem = fam.memory_gib if fam.memory_gib is not None else memory.get(fam.family)
        if mem is not None:
            entry["memory_gib"] = mem
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
    return {"fleet": entries, "workloads": workloads, "solver": {"memory_reserve_gib": settings.memory_reserve_gib}}


def scenario_from_data(data: Mapping[str, Any], *, name: str, fix: str = "correct the stored values") -> Scenario:
    """A Scenario from already-structured data (no file lines): errors name `name`, the key path and `fix`."""
    try:
        scenario = Scenario.model_validate(dict(data))
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}" for err in exc.errors()[:10]]
        raise InputError(f"{name}: " + "; ".join(problems) + f". Fix: {fix}.") from exc
    scenario._name = name
    return scenario


def solve_fleet(
    session: Session,
    *,
    fleet_id: int,
    now: datetime | None = None,
    settings: Settings | None = None,
    allow_estimates: bool = False,
    running: RunningPlan | None = None,
    move_cost_per_hour: float | None = None,
    **options: Any,
) -> SolveOutcome:
    """Solve a stored fleet's workloads against the stored measurements; nothing is stored here.

    `options` are `solver:` keys of the scenario (`time_limit_s`, `mip_rel_gap`, `share_gpus`); `allow_estimates`
    also plans on families no agent measured (docs/recommend.md, "Evidence first"). A fleet that cannot carry its
    workloads raises InfeasibleError (409) saying how much it carries and what would carry it.
    """
    settings = settings or get_settings()
    fleet = get_fleet(session, fleet=fleet_id)
    if not fleet.workloads:
        raise InputError(f"fleet {fleet.name!r} has no workloads; add one with POST /v1/fleets/{fleet.id}/workloads")
    if not fleet.families:
        raise InputError(f"fleet {fleet.name!r} has no GPU families; give it some with PUT /v1/fleets/{fleet.id}")
    data = build_scenario(session, fleet=fleet, now=now or utcnow(), settings=settings)
    data["solver"].update({k: v for k, v in options.items() if v is not None})
    data["allow_estimates"] = allow_estimates
    scenario = scenario_from_data(data, name=f"fleet {fleet.name!r}")
    rows = stored_rows(session, status="ok")
    started = time.perf_counter()
    problem = store_problem(session, scenario, settings=settings, rows=rows)
    if running is not None:  # re-plan close to the plan in force (planner.solver.replan)
        problem = problem.with_options(
            running=running,
            move_cost_per_hour=problem.options.move_cost_per_hour if move_cost_per_hour is None else move_cost_per_hour,
        )
    plan = with_distilled_quality(solve(problem), problem)
    elapsed = time.perf_counter() - started
    if not plan.feasible:
        raise InfeasibleError(plan)
    return SolveOutcome(result=plan.to_dict(), scenario=data, measurements=len(rows), solve_time_s=elapsed, plan=plan)
