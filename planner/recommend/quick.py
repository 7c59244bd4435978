"""The quick flags of `planner recommend` as a scenario (contract 2), checked flag by flag.

`planner recommend --model sdxl --rate 10` is a one-workload scenario whose fleet is every family the store has
a price for (or the `--family` flags, each with its `--price` and `--available` in order). Building a real
Scenario means the quick path and `--scenario FILE` go through the same solve; checking here first means an
error names the flag the person typed rather than a key of a file they never wrote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from planner.catalog.schema import STAGE_ALIASES
from planner.core.errors import InputError
from planner.planning import StoreCatalog, scenario_from_data
from planner.scenario import DEFAULT_OFFERING, OFFERING_KINDS, Scenario, floor_range_problem

QUALITY_METRICS = ("ssim_image", "psnr_image", "psnr_latent")
_QUALITY = re.compile(r"^\s*([a-z_]+)\s*>=\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class QuickRequest:
    """What the quick flags say; None means "the default" (the model's, the catalog's, unlimited)."""

    models: Sequence[str]
    rate: float
    p95_latency_s: float | None = None
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    headroom: float | None = None
    quality: str | None = None
    synthetic_quality: bool = False
    recipes: Sequence[str] = ()
    families: Sequence[str] = ()
    prices: Sequence[float] = ()
    available: Sequence[int] = ()
    name: str | None = None
    offering: str | None = None
    allow_estimates: bool = False
    max_startup_s: float | None = None


def parse_quality(text: str, *, synthetic: bool = False) -> dict[str, Any]:
    """`METRIC>=MIN` as a scenario quality floor.

    Real-weight quality only by default (DESIGN.md: drift measured on random weights is not perceptual quality);
    `synthetic=True` counts synthetic-weight measurements too, and the output labels them.
    """
    match = _QUALITY.match(text)
    if match is None or match.group(1) not in QUALITY_METRICS:
        raise InputError(
            f"--quality {text!r}: expected METRIC>=MIN with METRIC one of {', '.join(QUALITY_METRICS)}. "
            "Fix: e.g. --quality ssim_image>=0.95 or --quality psnr_image>=30."
        )
    try:
        value = float(match.group(2))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"--quality {text!r}: {match.group(2)!r} is not a number. Fix: e.g. ssim_image>=0.95.")
    problem = floor_range_problem(match.group(1), value)
    if problem is not None:
        raise InputError(f"--quality {text!r}: {problem}. Fix: give a floor within the range, e.g. ssim_image>=0.95.")
    return {"metric": match.group(1), "min": value, "weights": "any" if synthetic else "real", "missing": "exclude"}


def parse_recipes(items: Sequence[str]) -> dict[str, list[str]]:
    """`STAGE=R1,R2` flags (stage names or te/dn/vae) as a per-stage allow-list."""
    out: dict[str, list[str]] = {}
    for item in items:
        stage, sep, names = item.partition("=")
        stage = STAGE_ALIASES.get(stage.strip(), stage.strip())
        recipes = [r.strip() for r in names.split(",") if r.strip()]
        if not sep or stage not in STAGE_ALIASES.values() or not recipes:
            raise InputError(
                f"--recipe {item!r}: expected STAGE=RECIPE[,RECIPE...] with STAGE one of text_encoder (te), "
                "denoiser (dn), vae_decoder (vae). Fix: e.g. --recipe denoiser=bf16,fp8-compile."
            )
        out.setdefault(stage, []).extend(r for r in recipes if r not in out.get(stage, []))
    return out


def _fleet(request: QuickRequest, catalog: StoreCatalog, offering: str) -> list[dict[str, Any]]:
    known = sorted(catalog.memory_gib)
    if not request.families:
        if request.prices or request.available:
            raise InputError("--price and --available go with --family. Fix: name each family with --family F.")
        priced = catalog.priced_families(offering)
        if not priced:
            raise InputError(
                f"the store has no GPU family with an {offering} price. Fix: name families with --family F --price P, "
                "or pick another --offering."
            )
        return [_entry(f, None, None, catalog, offering) for f in priced]
    for flag, values in (("--price", request.prices), ("--available", request.available)):
        if values and len(values) != len(request.families):
            raise InputError(
                f"{flag} was given {len(values)} time(s) for {len(request.families)} --family flag(s); they pair in "
                f"order. Fix: give {flag} once per --family, or leave it out for every family."
            )
    entries: list[dict[str, Any]] = []
    for i, fam in enumerate(request.families):
        if fam not in catalog.memory_gib:
            raise InputError(
                f"--family {fam!r}: unknown GPU family. Fix: use one of {', '.join(known)}, or a scenario file "
                "(--scenario) with `memory_gib:` for a family outside the catalog."
            )
        if fam in request.families[:i]:
            raise InputError(f"--family {fam!r} is given twice. Fix: name each family once.")
        price = request.prices[i] if request.prices else None
        if price is None and catalog.price_for(fam, offering) is None:
            raise InputError(
                f"--family {fam!r} has no {offering} price in the store. Fix: give --price ($/GPU-hour) for it, or "
                "pick another --offering."
            )
        if price is not None and not price > 0:
            raise InputError(f"--price {price:g} for {fam!r}: a price must be positive ($/GPU-hour).")
        avail = request.available[i] if request.available else None
        if avail is not None and avail < 0:
            raise InputError(f"--available {avail} for {fam!r}: give a whole number of GPUs >= 0.")
        entries.append(_entry(fam, price, avail, catalog, offering))
    return entries


def _entry(
    fam: str, price: float | None, available: int | None, catalog: StoreCatalog, offering: str
) -> dict[str, Any]:
    """A fleet entry: a catalog family's price is left to the scenario's offering (so the plan keeps its source);
    a `--price` is the user's; an operator-defined family without ceilings gets its stored price and memory."""
    entry: dict[str, Any] = {"family": fam}
    if price is not None:
        entry["price_per_hour"] = price
        entry["price_source"] = "--price"
    elif fam not in catalog.families:
        listed = catalog.price_for(fam, offering)
        assert listed is not None
        entry["price_per_hour"] = listed.price_per_hour
        entry["price_source"] = f"{listed.provider} {listed.offering} ({listed.as_of}; {listed.source})"[:300]
    if available is not None:
        entry["available"] = available
    if fam not in catalog.families:
        entry["memory_gib"] = catalog.memory_gib[fam]  # an operator-defined family without ceilings
    return entry


def workload_name(models: Sequence[str]) -> str:
    return "+".join(models)[:64]


def quick_scenario(request: QuickRequest, catalog: StoreCatalog) -> Scenario:
    """A one-workload scenario from the quick flags; every error names its flag and the fix."""
    if not request.models:
        raise InputError("give --model (a model id such as sdxl) and --rate, or --scenario FILE.")
    for model in request.models:
        if model not in catalog.models:
            raise InputError(
                f"--model {model!r}: unknown model. Known models: {', '.join(sorted(catalog.models))}. "
                "Fix: use one of those ids (`planner models` describes them)."
            )
    if len(set(request.models)) != len(request.models):
        raise InputError("--model names a model twice. Fix: give each acceptable model once.")
    checks: list[tuple[str, float | None, bool]] = [
        ("--rate", request.rate, request.rate > 0 and math.isfinite(request.rate)),
        ("--p95", request.p95_latency_s, request.p95_latency_s is None or request.p95_latency_s > 0),
        ("--headroom", request.headroom, request.headroom is None or request.headroom >= 0),
        ("--steps", request.steps, request.steps is None or request.steps > 0),
        ("--height", request.height, request.height is None or request.height > 0),
        ("--width", request.width, request.width is None or request.width > 0),
        ("--max-startup", request.max_startup_s, request.max_startup_s is None or request.max_startup_s > 0),
    ]
    for flag, value, ok in checks:
        if not ok:
            raise InputError(f"{flag} {value:g}: must be positive" + (" or 0" if flag == "--headroom" else "") + ".")
    workload: dict[str, Any] = {
        "name": request.name or workload_name(request.models),
        "model": request.models[0] if len(request.models) == 1 else list(request.models),
        "rate": request.rate,
    }
    optional = {
        "p95_latency_s": request.p95_latency_s,
        "steps": request.steps,
        "height": request.height,
        "width": request.width,
        "headroom": request.headroom,
        "max_startup_s": request.max_startup_s,
    }
    workload.update({k: v for k, v in optional.items() if v is not None})
    if request.quality is not None:
        workload["quality"] = parse_quality(request.quality, synthetic=request.synthetic_quality)
    if request.recipes:
        workload["recipes"] = parse_recipes(request.recipes)
    known_recipes = set(catalog.recipes)
    for stage, names in workload.get("recipes", {}).items():
        for name in names:
            if name not in known_recipes:
                raise InputError(
                    f"--recipe {stage}={name}: unknown recipe {name!r}. Fix: use one of "
                    f"{', '.join(sorted(known_recipes))} (`planner recipes`)."
                )
    offering = request.offering or DEFAULT_OFFERING
    if offering not in OFFERING_KINDS:
        raise InputError(f"--offering {offering!r}: expected one of {', '.join(OFFERING_KINDS)}.")
    data: dict[str, Any] = {
        "fleet": _fleet(request, catalog, offering),
        "workloads": [workload],
        "offering": offering,
        "allow_estimates": request.allow_estimates,
    }
    return scenario_from_data(
        data, name="the command line", fix="correct the flag the key path names (workloads.0.name is --name)"
    )


@dataclass(frozen=True)
class WhatIfPoint:
    """One point of `--what-if rate=...`: an absolute total rate, or a multiplier of every workload's rate."""

    label: str
    factor: float | None = None
    total_rate: float | None = None

    def factor_for(self, current_total: float) -> float:
        """The multiplier applied to every workload's rate (absolute totals keep the workloads' proportions)."""
        if self.factor is not None:
            return self.factor
        assert self.total_rate is not None
        return self.total_rate / current_total


def parse_what_if(text: str) -> list[WhatIfPoint]:
    """`rate=1,10,100` (absolute images/s, the total over workloads) or `rate=x0.5,x2` (multipliers)."""
    key, sep, values = text.partition("=")
    if not sep or key.strip() != "rate" or not values.strip():
        raise InputError(
            f"--what-if {text!r}: expected rate=V[,V...]. Fix: e.g. --what-if rate=1,10,100 (images/s) or "
            "--what-if rate=x0.5,x2 (multipliers of the current rates)."
        )
    points: list[WhatIfPoint] = []
    for raw in values.split(","):
        item = raw.strip().lower()
        multiplier = item.startswith("x") or item.endswith("x")
        number = item.strip("x")
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise InputError(
                f"--what-if {text!r}: {raw.strip()!r} is not a positive number (or xN multiplier). "
                "Fix: e.g. rate=1,10,100 or rate=x0.5,x2."
            )
        if multiplier:
            points.append(WhatIfPoint(label=f"x{value:g}", factor=value))
        else:
            points.append(WhatIfPoint(label=f"{value:g} images/s", total_rate=value))
    return points


def merge_what_if(specs: Sequence[str]) -> list[WhatIfPoint]:
    """Repeated `--what-if` flags merged into one sweep (each parsed alone; a point given twice runs once)."""
    points: list[WhatIfPoint] = []
    for spec in specs:
        for point in parse_what_if(spec):
            if point not in points:
                points.append(point)
    return points
