"""The scenario file of `planner recommend --scenario FILE` (DESIGN.md contract 2 plus extensions).

The file is composed with PyYAML's node API rather than loaded, so every key keeps its line: a malformed
scenario raises `InputError` naming the file, the line and the key path (`workloads[1].rate`) and ends with
how to fix it. docs/scenario.md documents the format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from planner.catalog.schema import ID_PATTERN, STAGES, GpuFamily, ModelSpec, Stage
from planner.core import solver_defaults as defaults
from planner.core.batching import DEFAULT_BATCH_WAIT_S, DEFAULT_COMPILED_BATCHES, BatchingPolicy, CompiledBatches
from planner.core.errors import InputError
from planner.core.yamlsafe import MAX_YAML_BYTES, check_bounded, read_bounded

QualityMetricName = Literal["ssim_image", "psnr_image", "psnr_latent"]
METRIC_RANGES: dict[str, tuple[float, float]] = {"ssim_image": (-1.0, 1.0)}
"""Where a quality metric's values can lie (the measurements contract's bounds); PSNR has none (inf: identical)."""


def floor_range_problem(metric: str, floor: float) -> str | None:
    """Why a quality floor outside its metric's range is refused: above it nothing passes, below it everything
    does, and either is a typo (ssim_image>=95 for 0.95) better named than answered with 'no plan' (exit 3)."""
    bounds = METRIC_RANGES.get(metric)
    if bounds is None or bounds[0] <= floor <= bounds[1]:
        return None
    lo, hi = bounds
    effect = "no measurement can meet" if floor > hi else "every measurement meets"
    return f"{metric} lies in [{lo:g}, {hi:g}] (1 = identical to the reference recipe): {effect} a floor of {floor:g}"


KeyPath = tuple[str | int, ...]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")]
Ident = Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetEntry(_Strict):
    """A family the plan may use, at a price, at most `available` GPUs of it."""

    family: Ident
    price_per_hour: PositiveFloat | None = Field(
        default=None, description="$/GPU-hour; default: the catalog's first listed price"
    )
    price_source: str | None = Field(
        default=None,
        max_length=300,
        description="where price_per_hour comes from (a contract, a quote), shown next to the price",
    )
    available: NonNegativeInt | None = Field(default=None, description="GPUs the plan may use; None = unlimited")
    memory_gib: PositiveFloat | None = Field(
        default=None, description="required for a family not in the catalog; overrides the catalog otherwise"
    )
    energy_price_per_kwh: NonNegativeFloat | None = Field(
        default=None, description="owned GPUs: add power x $/kWh to the hourly cost"
    )
    power_w: PositiveFloat | None = Field(
        default=None, description="busy power for the energy cost when no measurement gives it; default TDP"
    )


class QualityFloor(_Strict):
    """A floor on a measured drift metric of each stage's recipe against the reference recipe."""

    metric: QualityMetricName = "ssim_image"
    min: float
    weights: Literal["real", "any"] = Field(
        default="real", description="real: only quality measured with real weights counts; any: synthetic too"
    )
    missing: Literal["exclude", "allow"] = Field(
        default="exclude", description="what a recipe without a quality measurement gets"
    )

    @field_validator("min")
    @classmethod
    def _within_the_metric_range(cls, value: float, info: ValidationInfo) -> float:
        if "metric" not in info.data:
            return value  # the metric itself is wrong: its own error says so, a range would only mislead
        problem = floor_range_problem(str(info.data["metric"]), value)
        if problem is not None:
            raise ValueError(problem)
        return value


class QualityScores(_Strict):
    """The user's own scores per (model, recipe), e.g. from a rating study; `*` scores a whole model."""

    min_score: float
    scores: dict[Ident, dict[str, float]]
    missing: Literal["exclude", "allow"] = "exclude"

    def score(self, model: str, recipe: str) -> float | None:
        table = self.scores.get(model)
        if table is None:
            return None
        return table.get(recipe, table.get("*"))


class WorkloadSpec(_Strict):
    """Demand: model(s), resolution, rate, latency objective and quality floor."""

    name: Name
    model: Ident | list[Ident]
    height: PositiveInt | None = Field(default=None, description="default: the model's")
    width: PositiveInt | None = Field(default=None, description="default: the model's")
    steps: PositiveInt | dict[Ident, PositiveInt] | None = Field(
        default=None, description="denoiser steps; a mapping gives each model its own; default: the model's"
    )
    rate: PositiveFloat = Field(description="images/s")
    p95_latency_s: PositiveFloat | None = None
    headroom: NonNegativeFloat = 0.2
    recipes: dict[Stage, list[Ident]] | None = Field(default=None, description="allow-list per stage")
    batches: list[PositiveInt] | None = Field(default=None, description="allow-list of batch sizes")
    families: list[Ident] | None = Field(default=None, description="allow-list of fleet families")
    quality: QualityFloor | None = None
    quality_scores: QualityScores | None = None
    max_startup_s: PositiveFloat | None = Field(
        default=None,
        description="longest a replica may take to become ready (weights load + compile of every batch size it "
        "runs); options slower to start are left out, for fleets that autoscale",
    )

    @field_validator("model")
    @classmethod
    def _models_listed(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("a list of models must be non-empty and name each model once")
        return value

    @property
    def models(self) -> list[str]:
        return [self.model] if isinstance(self.model, str) else list(self.model)

    def steps_for(self, model: ModelSpec) -> int:
        if isinstance(self.steps, int):
            return self.steps
        if isinstance(self.steps, dict) and model.id in self.steps:
            return self.steps[model.id]
        return model.default_steps

    def resolution_for(self, model: ModelSpec) -> tuple[int, int]:
        return (self.height or model.height, self.width or model.width)


class SolverSection(_Strict):
    """`solver:` knobs (all optional)."""

    memory_reserve_gib: NonNegativeFloat = Field(
        default=defaults.MEMORY_RESERVE_GIB, description="GiB kept free on every GPU"
    )
    share_gpus: bool = defaults.SHARE_GPUS
    share_max_utilization: Annotated[float, Field(gt=0, le=1)] = defaults.SHARE_MAX_UTILIZATION
    mip_rel_gap: Annotated[float, Field(ge=0, le=0.5)] = defaults.MIP_REL_GAP
    time_limit_s: PositiveFloat = defaults.TIME_LIMIT_S
    what_if_rates: list[PositiveFloat] = Field(default_factory=lambda: list(defaults.WHAT_IF_RATES))
    simulated_p95_binds: bool = Field(
        default=defaults.SIMULATED_P95_BINDS,
        description="hold the plan to the scheduler's simulated batching as well as to the analytic p95 bound",
    )


class BatchingSection(_Strict):
    """`batching:` how the fleet's workers form batches (planner.core.batching.BatchingPolicy): the solver's
    simulation assumes it, the plan carries it, the workers serving the plan run it."""

    compiled_batches: CompiledBatches = Field(
        default=DEFAULT_COMPILED_BATCHES,
        description="batch sizes a compiled stage runs at (a short batch padded up): pow2, plan or off",
    )
    batch_wait_s: NonNegativeFloat = Field(
        default=DEFAULT_BATCH_WAIT_S, description="the longest a batch waits to fill up"
    )

    @field_validator("compiled_batches", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    def policy(self) -> BatchingPolicy:
        return BatchingPolicy(compiled_batches=self.compiled_batches, batch_wait_s=self.batch_wait_s)


OfferingKind = Literal["on-demand", "spot", "serverless", "reserved"]
OFFERING_KINDS: tuple[str, ...] = ("on-demand", "spot", "serverless", "reserved")
DEFAULT_OFFERING: OfferingKind = "on-demand"
"""The offering kind a plan compares families on when none is named (docs/recommend.md, "Prices")."""


class Scenario(_Strict):
    """A whole scenario file."""

    fleet: list[FleetEntry] = Field(min_length=1)
    measurements: str | None = None
    offering: OfferingKind = Field(
        default=DEFAULT_OFFERING,
        description="which catalog price a fleet entry without price_per_hour gets: the family's first price of "
        "this offering kind",
    )
    allow_estimates: bool = Field(
        default=False,
        description="also plan on families and cells that were not measured (transferred by the roofline model, "
        "or imported estimates), labelled with their uncertainty",
    )
    workloads: list[WorkloadSpec] = Field(min_length=1)
    solver: SolverSection = Field(default_factory=SolverSection)
    batching: BatchingSection | None = Field(
        default=None, description="the workers' batching policy (default: planner.core.batching's defaults)"
    )

    _path: Path | None = PrivateAttr(default=None)
    _name: str = PrivateAttr(default="<scenario>")
    _lines: dict[KeyPath, int] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path | None:
        return self._path

    def measurements_path(self) -> Path | None:
        """The measurements CSV, resolved against the scenario file's directory."""
        if self.measurements is None:
            return None
        p = Path(self.measurements)
        if not p.is_absolute() and self._path is not None:
            p = self._path.parent / p
        return p

    def locate(self, path: KeyPath) -> str:
        """`file:line` of a key path (the nearest enclosing key that has a line)."""
        name = str(self._path) if self._path is not None else self._name
        line = _nearest_line(self._lines, path)
        return f"{name}:{line}" if line else name

    def check_catalog(self, families: Mapping[str, GpuFamily], models: Mapping[str, ModelSpec]) -> None:
        """Refuse names the catalog does not know, at their line (a fleet-only family needs memory_gib)."""
        known_families = ", ".join(sorted(families)) or "none loaded"
        for i, entry in enumerate(self.fleet):
            if entry.family not in families and entry.memory_gib is None:
                raise InputError(
                    f"{self.locate(('fleet', i, 'family'))}: fleet[{i}].family: {entry.family!r} is not in "
                    "the catalog. Fix: add `memory_gib:` to this entry (only its measured cells are used), "
                    f"or use a catalog family ({known_families})."
                )
            spec = families.get(entry.family)
            if entry.price_per_hour is None and (spec is None or spec.price_for(self.offering) is None):
                kinds = ", ".join(spec.offering_kinds()) if spec is not None else ""
                listed = f" (it lists {kinds})" if kinds else ""
                raise InputError(
                    f"{self.locate(('fleet', i))}: fleet[{i}].price_per_hour: {entry.family!r} has no "
                    f"{self.offering} price in the catalog{listed}. Fix: add `price_per_hour:` ($/GPU-hour) to "
                    "this entry, or set `offering:` to a kind it lists."
                )
        fleet = {e.family for e in self.fleet}
        for i, w in enumerate(self.workloads):
            for j, model_id in enumerate(w.models):
                if model_id not in models:
                    where: KeyPath = ("workloads", i, "model", j) if isinstance(w.model, list) else ("workloads", i)
                    raise InputError(
                        f"{self.locate(where)}: workloads[{i}].model: unknown model {model_id!r}. "
                        f"Fix: use one of {', '.join(sorted(models)) or 'the catalog models'}."
                    )
            for j, fam in enumerate(w.families or []):
                if fam not in fleet:
                    raise InputError(
                        f"{self.locate(('workloads', i, 'families', j))}: workloads[{i}].families: {fam!r} "
                        "is not in the fleet. Fix: add it under `fleet:` or remove it from this list."
                    )
            if isinstance(w.steps, dict):
                for model_id in w.steps:
                    if model_id not in w.models:
                        raise InputError(
                            f"{self.locate(('workloads', i, 'steps', model_id))}: workloads[{i}].steps: "
                            f"{model_id!r} is not one of this workload's models. "
                            "Fix: key `steps:` by the models under `model:`."
                        )


# ---- YAML with line numbers -------------------------------------------------------------------------


def _nearest_line(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    for cut in range(len(path), -1, -1):
        line = lines.get(path[:cut])
        if line is not None:
            return line
    return None


def _convert(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], name: str, loader: yaml.SafeLoader) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise InputError(
                    f"{name}:{line}: {_dotted(path) or 'top level'}: a key must be a plain name. "
                    "Fix: write `key: value`."
                )
            if key in out:
                raise InputError(
                    f"{name}:{line}: {_dotted((*path, key))}: the key appears twice in this mapping. Fix: keep one."
                )
            lines[(*path, key)] = line
            out[key] = _convert(value_node, (*path, key), lines, name, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, name, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_HINTS: dict[str, str] = {
    "fleet": "list the families the plan may use, e.g. `- {family: h100-sxm-80gb, price_per_hour: 4.18}`",
    "family": "a family id such as h100-sxm-80gb",
    "price_per_hour": "give $/GPU-hour as a positive number, e.g. 4.18",
    "available": "give a whole number of GPUs (>= 0), or leave it out for unlimited",
    "memory_gib": "give the card's usable memory in GiB, e.g. 48",
    "workloads": "list at least one workload with name, model and rate",
    "name": "give a short name of letters, digits, '.', '_', '+', '-'",
    "model": "a model id such as sdxl, or a list of acceptable models such as [sdxl, sdxl-lightning]",
    "rate": "give the target rate in images/s as a positive number, e.g. 5.0",
    "p95_latency_s": "give the p95 latency objective in seconds, e.g. 20",
    "headroom": "give a fraction >= 0, e.g. 0.2 for 20% spare capacity",
    "recipes": "map a stage (text_encoder, denoiser, vae_decoder) to a list of recipe ids",
    "steps": "give a whole number, or a mapping model -> steps",
    "quality": "e.g. `quality: {metric: ssim_image, min: 0.95}`",
    "quality_scores": "e.g. `quality_scores: {min_score: 0.8, scores: {sdxl: {'*': 1.0}}}`",
    "measurements": "give the path of a measurements CSV, relative to this file",
    "height": "give the image height in pixels",
    "width": "give the image width in pixels",
    "batches": "give a list of batch sizes, e.g. [1, 2, 4]",
    "max_startup_s": "give the longest start-up a replica may take, in seconds, e.g. 60",
    "offering": "one of on-demand, spot, serverless, reserved",
    "allow_estimates": "true or false",
}


def _hint(loc: KeyPath, kind: str) -> str:
    if kind == "extra_forbidden":
        return "remove it or check its spelling against docs/scenario.md"
    for part in reversed(loc):
        if isinstance(part, str) and part in _HINTS:
            return _HINTS[part]
    if loc and loc[-1] in STAGES:
        return "list recipe ids for this stage, e.g. [bf16, fp8-compile]"
    return "see docs/scenario.md for the format"


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> KeyPath:
    """Drop pydantic's union-branch labels (`str`, `list[str]`, `function-after[...]`) from a location."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if _has(node, part):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not any(c in part for c in "[]()-"):
            out.append(part)  # a missing or unknown key: keep it, its line is the parent's
            node = None
    return tuple(out)


def parse_scenario(text: str, *, name: str = "<scenario>", path: Path | None = None) -> Scenario:
    """Parse scenario YAML text; every error names `name:line`, the key and how to fix it.

    Bounded before it is expanded (`planner.core.yamlsafe`): at most 1 MiB of text and 100,000 nodes with its
    aliases expanded."""
    if len(text) > MAX_YAML_BYTES:
        raise InputError(
            f"{name}: {len(text)} characters, more than the {MAX_YAML_BYTES} a scenario may be. Fix: put "
            "measurements in a CSV file (`measurements:`), not inline."
        )
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{name}{line}: not valid YAML ({exc.problem}). Fix: check indentation and quoting.") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{name}: not valid YAML ({exc}). Fix: check indentation and quoting.") from exc
    if root is None:
        raise InputError(f"{name}: the file is empty. Fix: give `fleet:` and `workloads:` (docs/scenario.md).")
    try:
        check_bounded(root, name=name)  # before the walk below expands any alias
    except InputError:
        loader.dispose()
        raise
    lines: dict[KeyPath, int] = {}
    try:
        data = _convert(root, (), lines, name, loader)
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise InputError(f"{name}:1: the top level must be a mapping. Fix: start with `fleet:` and `workloads:`.")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors()[:20]:
            loc = _clean_loc(err["loc"], data)
            at = _nearest_line(lines, loc)
            where = f"{name}:{at}" if at else name
            msg = err["msg"].removeprefix("Value error, ")
            key = _dotted(loc) or "top level"
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{where}: {key}: {msg}. Fix: {_hint(loc, err['type'])}.")
        unique = list(dict.fromkeys(problems))
        raise InputError("invalid scenario:\n  " + "\n  ".join(unique)) from exc
    scenario._lines = lines
    scenario._path = path
    scenario._name = name
    for label, field, names in (
        ("fleet", "family", [f.family for f in scenario.fleet]),
        ("workloads", "name", [w.name for w in scenario.workloads]),
    ):
        seen: set[str] = set()
        for i, item in enumerate(names):
            if item in seen:
                raise InputError(
                    f"{scenario.locate((label, i, field))}: {label}[{i}].{field}: {item!r} appears twice. "
                    "Fix: give each entry once."
                )
            seen.add(item)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario file."""
    p = Path(path)
    try:
        text = read_bounded(p, what="scenario file")
    except FileNotFoundError as exc:
        raise InputError(f"{p}: no such file. Fix: give the path of a scenario YAML file.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read ({exc}). Fix: save the scenario as UTF-8 text.") from exc
    return parse_scenario(text, name=str(p), path=p)
