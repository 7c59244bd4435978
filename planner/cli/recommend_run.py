"""What `planner recommend` does once its flags are parsed: read the store, solve, print, sweep, report.

Kept apart from the flag declarations (planner/cli/recommend.py) so that `planner --help` and the other
commands do not import the solver (scipy) they do not use.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from planner.cli.common import console, err_console
from planner.cli.progress import DeferredProgress
from planner.cli.tables import render_table
from planner.core.config import get_settings
from planner.core.errors import InputError
from planner.crud.measurements import stored_rows
from planner.crud.store import open_store
from planner.db.session import session_scope
from planner.measurements.csvio import read_csv
from planner.perf.model import QualityMetric
from planner.planning import InfeasibleError, load_catalog, store_problem
from planner.recommend import views as v
from planner.recommend.compare import compare, load_plan_file
from planner.recommend.export import write_csv
from planner.recommend.opportunities import opportunities
from planner.recommend.quick import QuickRequest, merge_what_if, parse_quality, quick_scenario
from planner.recommend.sweep import builder_for, what_if
from planner.scenario import Scenario, load_scenario
from planner.solver import OptionBuilder, Plan, Problem, solve
from planner.solver.distilled import with_distilled_quality
from planner.solver.replan import RunningPlan


def render_view(view: v.View, out: Console) -> None:
    render_table(
        view.title, view.columns, view.rows, right=view.right, totals=view.totals, caption=view.caption, out=out
    )


def _notes(scenario: Scenario) -> tuple[str, ...]:
    notes: list[str] = []
    for w in scenario.workloads:
        if w.quality is None:
            continue
        floor = f"{w.name}: quality floor {w.quality.metric} >= {w.quality.min:g}"
        if w.quality.weights == "real":
            notes.append(
                f"{floor} counts quality measured with real weights first, then published figures (cited); drift "
                "on random weights is not perceptual quality and is not counted. A recipe with neither is excluded "
                "unless it is the stage's quality reference (fp32, exact); the 'Quality floor' table names the "
                "source of each. --synthetic-quality (or `weights: any`) counts synthetic-weight drift too."
            )
        else:
            notes.append(
                f"{floor} counts synthetic-weight measurements: drift against the reference recipe on random "
                "weights, not perceptual quality."
            )
    return tuple(notes)


def _scenario_and_context(
    database_url: str | None,
    scenario_file: Path | None,
    request: QuickRequest | None,
    progress: DeferredProgress,
    *,
    allow_estimates: bool = False,
) -> tuple[Scenario, Problem, v.Context]:
    """Read everything from the store in one short transaction; the solves run after it is closed."""
    settings = get_settings()
    engine = open_store(database_url, settings=settings)
    try:
        with session_scope(engine) as session:
            catalog = load_catalog(session)
            rows = stored_rows(session, status="ok")
            if scenario_file is not None:
                scenario = load_scenario(scenario_file)
                if allow_estimates:  # the flag turns the scenario's key on for this run
                    scenario = scenario.model_copy(update={"allow_estimates": True})
            else:
                assert request is not None
                scenario = quick_scenario(request, catalog)
            problem = store_problem(
                session,
                scenario,
                settings=settings,
                store_catalog=catalog,
                rows=rows,
                progress=progress.message,
                inputs="scenario" if scenario_file is not None else "flags",
            )
    finally:
        engine.dispose()
    extra_file = scenario.measurements_path()
    extra = [located.row for located in read_csv(extra_file)] if extra_file is not None else []
    measured = tuple(sorted({r.gpu_family for r in [*rows, *extra] if r.source == "measured" and r.status == "ok"}))
    source = engine.url.render_as_string(hide_password=True)
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        home = str(Path.home())
        path = engine.url.database
        source = "the embedded store " + ("~" + path[len(home) :] if path.startswith(home + "/") else path)
    notes = _notes(scenario)
    if extra_file is not None:
        notes = (f"Plus {len(extra)} rows of the scenario's measurements file {extra_file}.", *notes)
    return scenario, problem, v.Context(source=source, measurements=len(rows), measured_families=measured, notes=notes)


def command_line(params: dict[str, Any]) -> str:
    """The command as a person would type it (flags in a fixed order, defaults left out): the report's header."""
    parts = ["planner", "recommend"]
    for flag, value in params.items():
        if value is None or value is False or value == [] or value == ():
            continue
        if value is True:
            parts.append(flag)
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            parts += [flag, f"{item:g}" if isinstance(item, float) else str(item)]
    return shlex.join(parts)


def _running_plan(path: Path) -> RunningPlan:
    """The plan `--from` names, as the solver's running plan; InputError saying what is wrong with it."""
    data = load_plan_file(path, flag="--from")
    try:
        return RunningPlan.from_plan_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"--from {path}: a group lacks {exc} (stages, family, recipes per stage, batch, replicas). Fix: give "
            "a file written by `planner recommend --format json`."
        ) from exc


def run(
    *,
    model: list[str] | None,
    rate: float | None,
    p95: float | None,
    steps: int | None,
    height: int | None,
    width: int | None,
    headroom: float | None,
    quality: str | None,
    synthetic_quality: bool,
    recipe: list[str] | None,
    family: list[str] | None,
    price: list[float] | None,
    available: list[int] | None,
    name: str | None,
    scenario: Path | None,
    output_format: str,
    report: Path | None,
    what_if_spec: list[str] | None,
    offering: str | None = None,
    allow_estimates: bool = False,
    max_startup: float | None = None,
    probe_next: bool = True,
    compare_file: Path | None,
    database_url: str | None,
    from_file: Path | None = None,
    move_cost: float = 0.5,
) -> None:
    """The command, flag values in."""
    quick_given = {
        "--model": model,
        "--rate": rate,
        "--p95": p95,
        "--steps": steps,
        "--height": height,
        "--width": width,
        "--headroom": headroom,
        "--quality": quality,
        "--recipe": recipe,
        "--family": family,
        "--price": price,
        "--available": available,
        "--name": name,
        "--offering": offering,
        "--max-startup": max_startup,
    }
    used = [flag for flag, value in quick_given.items() if value not in (None, [])]
    request: QuickRequest | None = None
    if scenario is not None:
        if used:
            raise InputError(
                f"--scenario and {', '.join(used)} both describe the workload. Fix: put them in the scenario file, "
                "or leave out --scenario."
            )
    else:
        if not model or rate is None:
            raise InputError(
                "give --model and --rate (e.g. planner recommend --model sdxl --rate 10), or --scenario FILE."
            )
        if synthetic_quality and quality is None:
            raise InputError("--synthetic-quality goes with --quality. Fix: add e.g. --quality ssim_image>=0.95.")
        if quality is not None:
            parse_quality(quality)  # refuse a malformed floor before opening the store
        request = QuickRequest(
            models=model,
            rate=rate,
            p95_latency_s=p95,
            steps=steps,
            height=height,
            width=width,
            headroom=headroom,
            quality=quality,
            synthetic_quality=synthetic_quality,
            recipes=recipe or (),
            families=family or (),
            prices=price or (),
            available=available or (),
            name=name,
            offering=offering,
            allow_estimates=allow_estimates,
            max_startup_s=max_startup,
        )
    points = merge_what_if(what_if_spec or [])
    saved = load_plan_file(compare_file) if compare_file is not None else None
    running = _running_plan(from_file) if from_file is not None else None

    with DeferredProgress(err_console, "solving") as progress:
        scen, problem, context = _scenario_and_context(
            database_url, scenario, request, progress, allow_estimates=allow_estimates
        )
        if running is not None:
            problem = problem.with_options(running=running, move_cost_per_hour=move_cost)
        builder = builder_for(problem)
        plan = with_distilled_quality(solve(problem, builder=builder), problem)
    if plan.feasible and probe_next:
        with DeferredProgress(err_console, "what to probe next") as progress:
            plan = replace(plan, opportunities=tuple(opportunities(problem, plan)))
    if not plan.feasible:
        if output_format == "json":
            # A script reads stdout: it gets the object (feasible false, `infeasible` saying why and what would
            # carry the rate) and the exit code 3; a person reads the same explanation on stderr.
            sys.stdout.write(plan.to_json() + "\n")
        raise InfeasibleError(plan)

    side = console if output_format == "table" else err_console
    if output_format == "json":
        sys.stdout.write(plan.to_json() + "\n")
    elif output_format == "csv":
        write_csv(plan, sys.stdout)
    else:
        # Risk first: what the plan rests on, its prices, and every warning, before the tables.
        for line in [*v.headline_lines(plan), *v.context_lines(context)]:
            console.print(Text(line), highlight=False, soft_wrap=True)
        for warning in plan.warnings:
            # Plain text: a warning names groups like `[te+dn]`, which rich markup would swallow.
            console.print(Text.assemble(("warning:", "yellow"), " ", warning), highlight=False, soft_wrap=True)
        for view in v.plan_views(plan):
            render_view(view, console)
        if plan.replan is not None:
            console.print(Text(plan.replan.summary()), highlight=False, soft_wrap=True)

    extra: list[tuple[str, list[v.View]]] = []
    if points:
        with DeferredProgress(err_console, "what-if", total=len(points)) as progress:
            results = what_if(problem, points, builder=builder, tick=progress.tick)
        view = v.what_if_view(results)
        render_view(view, side)
        extra.append(("What if the rate changes", [view]))
    if saved is not None and compare_file is not None:
        views = v.compare_views(compare(saved, plan.to_dict(), before_name=str(compare_file)))
        for view in views:
            render_view(view, side)
        extra.append((f"Compared with {compare_file}", views))
    if report is not None:
        params = {
            **quick_given,
            "--synthetic-quality": synthetic_quality,
            "--allow-estimates": allow_estimates,
            "--scenario": scenario,
            "--what-if": what_if_spec,
            "--no-probe-next": not probe_next,
            "--compare": compare_file,
            "--from": from_file,
            "--move-cost": move_cost if from_file is not None else None,
            "--report": report,
        }
        _write_report(report, plan, problem, scen, context, builder, extra, command=command_line(params))


def _write_report(
    directory: Path,
    plan: Plan,
    problem: Problem,
    scenario: Scenario,
    context: v.Context,
    builder: OptionBuilder,
    extra: list[tuple[str, list[v.View]]],
    *,
    command: str,
) -> None:
    """Run the report's sweeps and write it (matplotlib is imported here only)."""
    from planner.report.build import report_steps, write_report

    metric: QualityMetric = next((w.quality.metric for w in scenario.workloads if w.quality is not None), "ssim_image")
    with DeferredProgress(err_console, "report", total=report_steps(problem, metric)) as progress:
        path = write_report(
            directory,
            plan=plan,
            problem=problem,
            command=command,
            context=context,
            metric=metric,
            extra_sections=extra,
            builder=builder,
            tick=progress.tick,
        )
    err_console.print(Text(f"report written to {path}"), highlight=False, soft_wrap=True)
