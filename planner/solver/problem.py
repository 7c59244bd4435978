"""What the solver is asked: fleet families, workloads, the performance model and the solver's knobs.

Plain typed inputs so the CLI, the API and tests build a `Problem` the same way: `build_problem` from a parsed
scenario, or the dataclasses directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from planner.catalog.schema import GpuFamily, ModelSpec, Price, Recipe
from planner.core import solver_defaults as defaults
from planner.core.batching import BatchingPolicy, CompiledBatches
from planner.core.errors import InputError
from planner.measurements.contract import MeasurementRow
from planner.measurements.csvio import read_csv
from planner.perf.model import PerfModel, PerfSettings
from planner.perf.roofline import Calibration
from planner.scenario import QualityFloor, QualityScores, Scenario, WorkloadSpec
from planner.solver.replan import RunningPlan

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FleetFamily:
    """A family the plan may rent: price, how many, memory, and (optionally) its energy price."""

    id: str
    price_per_hour: float
    memory_gib: float
    available: int | None = None
    spec: GpuFamily | None = None
    energy_price_per_kwh: float | None = None
    power_w: float | None = None
    price: Price | None = None
    """The catalog price used, with provider, offering, date and source; None when the user gave the price."""
    price_source: str = "catalog"
    """Where the price comes from: `catalog`, an operator's override, the scenario file, a flag."""

    def price_dict(self) -> dict[str, object]:
        """The price and its source, as the plan's JSON `prices` shows it per family."""
        p = self.price
        if p is None:
            return {
                "price_per_hour": self.price_per_hour,
                "provider": None,
                "offering": None,
                "kind": None,
                "region": None,
                "date": None,
                "source": self.price_source,
                "status": "given",
            }
        return {
            "price_per_hour": self.price_per_hour,
            "provider": p.provider,
            "offering": p.offering,
            "kind": p.offering_kind,
            "region": p.region,
            "date": p.as_of,
            "source": p.source if not p.override else f"operator override: {p.source}",
            "status": p.status,
        }

    @property
    def busy_power_w(self) -> float | None:
        if self.power_w is not None:
            return self.power_w
        return self.spec.tdp_w if self.spec is not None else None

    def energy_cost_per_hour(self, power_w: float | None) -> float:
        """$/hour of a replica drawing `power_w` (the family's busy power when unknown); 0 if not owned."""
        if not self.energy_price_per_kwh:
            return 0.0
        watts = power_w if power_w is not None else self.busy_power_w
        return (watts or 0.0) / 1000 * self.energy_price_per_kwh


@dataclass(frozen=True)
class Workload:
    """Demand resolved against the catalog: per-model steps and resolution, allow-lists, floors."""

    name: str
    models: tuple[str, ...]
    rate: float
    steps: Mapping[str, int]
    resolution: Mapping[str, tuple[int, int]]
    headroom: float = 0.2
    p95_latency_s: float | None = None
    recipes: Mapping[str, tuple[str, ...]] | None = None
    batches: tuple[int, ...] | None = None
    families: tuple[str, ...] | None = None
    quality: QualityFloor | None = None
    quality_scores: QualityScores | None = None
    max_startup_s: float | None = None
    """Options whose replicas take longer to become ready are left out (planner.solver.startup)."""

    @classmethod
    def from_spec(cls, spec: WorkloadSpec, models: Mapping[str, ModelSpec]) -> Workload:
        found = [models[m] for m in spec.models]
        return cls(
            name=spec.name,
            models=tuple(spec.models),
            rate=spec.rate,
            steps={m.id: spec.steps_for(m) for m in found},
            resolution={m.id: spec.resolution_for(m) for m in found},
            headroom=spec.headroom,
            p95_latency_s=spec.p95_latency_s,
            recipes={k: tuple(v) for k, v in spec.recipes.items()} if spec.recipes else None,
            batches=tuple(spec.batches) if spec.batches else None,
            families=tuple(spec.families) if spec.families else None,
            quality=spec.quality,
            quality_scores=spec.quality_scores,
            max_startup_s=spec.max_startup_s,
        )


@dataclass(frozen=True)
class SolverOptions:
    """Knobs of option generation and the MILP; defaults are the documented behaviour."""

    memory_reserve_gib: float = defaults.MEMORY_RESERVE_GIB
    share_gpus: bool = defaults.SHARE_GPUS
    share_max_utilization: float = defaults.SHARE_MAX_UTILIZATION
    share_max_fraction: float = 0.5
    exact_packing_max_items: int = 24
    exact_packing_retry_max_items: int = 400
    """Where a solve packed shared GPUs fluidly (more than `exact_packing_max_items` candidates) and has at most
    this many, it is solved again with exact packing within `exact_packing_retry_s` and the cheaper plan kept."""
    exact_packing_retry_s: float = 5.0
    bound_time_limit_s: float = 3.0
    """Time for the lower bound's MILP (planner.solver.milp.relaxation_bound); its dual bound at the limit is
    still a bound, only a looser one."""
    mip_rel_gap: float = defaults.MIP_REL_GAP
    time_limit_s: float = defaults.TIME_LIMIT_S
    verbose: bool = False
    baselines: bool = True
    sensitivity: bool = True
    what_if_rates: tuple[float, ...] = defaults.WHAT_IF_RATES
    latency_repair_rounds: int = 4
    max_latency_extra_replicas: int = 64
    simulate_p95: bool = True
    """Simulate the scheduler's batching on the solved plan's pools (planner.solver.simulate) and report that
    p95 next to the analytic bound."""
    simulated_p95_binds: bool = defaults.SIMULATED_P95_BINDS
    """Hold the plan to the simulated p95 too: where the simulation misses an objective that the bound meets,
    solve again with the bound held to a tighter objective (planner.solver.engine, step 5). Needs
    `simulate_p95`."""
    simulation_repair_rounds: int = 3
    """Re-solves at most, each tightening a missing workload's bound objective by objective / simulated p95."""
    batching: BatchingPolicy | None = None
    """The workers' batching policy the simulation assumes, as a scenario's `batching:` section set it (the plan
    carries it to the workers); None: planner.core.batching's defaults, which workers run when a plan has none."""
    running: RunningPlan | None = field(default=None, compare=False)
    """The plan that runs now (`planner recommend --from plan.json`): the re-solve weighs each replica it moves
    against its saving (planner.solver.replan); None solves from scratch."""
    move_cost_per_hour: float = 0.5
    """$/hour a replica moved must save to be worth moving (with `running`): at 0, today's optimum; the default
    moves a replica only for at least $0.50/h (about $360/month)."""
    progress: Progress | None = field(default=None, compare=False)
    inputs: Literal["scenario", "flags", "any"] = "any"
    """How the user gave the workloads, so an infeasible answer's fix names the scenario key (`p95_latency_s`)
    or the `planner recommend` flag (`--p95`) they used; `any` names both."""

    @property
    def policy(self) -> BatchingPolicy:
        return self.batching or BatchingPolicy()

    @property
    def batch_wait_s(self) -> float:
        """The workers' `batch_wait_s` the simulation assumes."""
        return self.policy.batch_wait_s

    @property
    def compiled_batches(self) -> CompiledBatches:
        """The workers' `compiled_batches` padding the simulation assumes."""
        return self.policy.compiled_batches


def options_from_scenario(scenario: Scenario, base: SolverOptions | None = None) -> SolverOptions:
    """The options a scenario sets over `base` (default `SolverOptions()`): the `solver:` keys it gives (each
    named as the option it sets) and its `batching:` section. The one mapping from a scenario to options."""
    given = scenario.solver.model_dump(exclude_unset=True)
    if "what_if_rates" in given:
        given["what_if_rates"] = tuple(given["what_if_rates"])
    if scenario.batching is not None:
        given["batching"] = scenario.batching.policy()
    return replace(base or SolverOptions(), **given)


@dataclass(frozen=True)
class Problem:
    """Everything `solve` needs."""

    families: Mapping[str, FleetFamily]
    perf: PerfModel
    workloads: Sequence[Workload]
    models: Mapping[str, ModelSpec]
    recipes: Mapping[str, Recipe]
    options: SolverOptions = field(default_factory=SolverOptions)
    offering: str | None = None
    """The offering kind catalog prices were taken at (the scenario's `offering`)."""

    @property
    def allow_estimates(self) -> bool:
        return self.perf.settings.estimates

    def with_workloads(self, workloads: Sequence[Workload]) -> Problem:
        return replace(self, workloads=list(workloads))

    def with_options(self, **changes: object) -> Problem:
        return replace(self, options=replace(self.options, **changes))  # type: ignore[arg-type]


def fleet_from_scenario(scenario: Scenario, families: Mapping[str, GpuFamily]) -> dict[str, FleetFamily]:
    """Fleet entries merged with the catalog (price and memory default to the catalog's)."""
    out: dict[str, FleetFamily] = {}
    for i, entry in enumerate(scenario.fleet):
        spec = families.get(entry.family)
        price = entry.price_per_hour
        listed = spec.price_for(scenario.offering) if spec is not None and price is None else None
        if listed is not None:
            price = listed.price_per_hour
        memory = entry.memory_gib if entry.memory_gib is not None else (spec.memory_gib if spec else None)
        if price is None or memory is None:
            raise InputError(
                f"{scenario.locate(('fleet', i))}: fleet[{i}]: {entry.family!r} needs price_per_hour and "
                "memory_gib (not in the catalog). Fix: add them to this entry."
            )
        out[entry.family] = FleetFamily(
            id=entry.family,
            price_per_hour=price,
            memory_gib=memory,
            available=entry.available,
            spec=spec,
            energy_price_per_kwh=entry.energy_price_per_kwh,
            power_w=entry.power_w,
            price=listed,
            price_source="catalog" if listed is not None else (entry.price_source or "the scenario file"),
        )
    return out


def build_problem(
    scenario: Scenario,
    rows: Iterable[MeasurementRow],
    *,
    families: Mapping[str, GpuFamily],
    models: Mapping[str, ModelSpec],
    recipes: Mapping[str, Recipe],
    calibration: Mapping[str, Calibration] | None = None,
    perf_settings: PerfSettings | None = None,
    options: SolverOptions | None = None,
) -> Problem:
    """A Problem from a parsed scenario and the store's rows (plus the scenario's own measurements file).

    The scenario file's rows win their cells over the store's (`PerfModel`'s `override_rows`): contract 2 says
    the file is "used for this run", so a stored row of the same cell must not outrank it by being dated.
    """
    scenario.check_catalog(families, models)
    store_rows = list(rows)
    scenario_rows: list[MeasurementRow] = []
    extra = scenario.measurements_path()
    if extra is not None:
        if not extra.is_file():
            raise InputError(
                f"{scenario.locate(('measurements',))}: measurements: {extra} does not exist. Fix: give the "
                "path of a measurements CSV relative to the scenario file, or remove the key."
            )
        scenario_rows = [located.row for located in read_csv(extra)]
    all_rows = [*store_rows, *scenario_rows]
    fleet = fleet_from_scenario(scenario, families)
    known_recipes = set(recipes) | {r.recipe for r in all_rows}
    for i, spec in enumerate(scenario.workloads):
        for stage, names in (spec.recipes or {}).items():
            for j, name in enumerate(names):
                if name not in known_recipes:
                    raise InputError(
                        f"{scenario.locate(('workloads', i, 'recipes', stage, j))}: workloads[{i}].recipes."
                        f"{stage}: unknown recipe {name!r}. Fix: use a catalog recipe or one the "
                        f"measurements name ({', '.join(sorted(known_recipes)) or 'none known'})."
                    )
    perf = PerfModel(
        store_rows,
        families=families,  # a fleet-only family has no ceilings: it gets only its measured cells
        models=models,
        recipes=recipes,
        calibration=calibration,
        settings=perf_settings or PerfSettings(estimates=scenario.allow_estimates),
        override_rows=scenario_rows,
    )
    opts = options or options_from_scenario(scenario)
    workloads = [Workload.from_spec(w, models) for w in scenario.workloads]
    return Problem(
        families=fleet,
        perf=perf,
        workloads=workloads,
        models=models,
        recipes=recipes,
        options=opts,
        offering=scenario.offering,
    )
