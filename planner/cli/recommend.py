"""`planner recommend`: the capacity-review answer, from quick flags or a scenario file, against a store.

The store is the embedded SQLite file by default (migrated and seeded from the shipped reference measurements on
first use, so a fresh machine needs no service), or a fleet's PostgreSQL with `--database-url`. The solve goes
through `planner.planning`, the same path as the service's solve. docs/recommend.md documents the flags, the
JSON (DESIGN.md contract 3: exactly `Plan.to_json()`), the CSV columns and the report. The work itself is in
planner/cli/recommend_run.py, imported when the command runs.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from planner.cli.common import DatabaseUrlOption, handle_errors


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@handle_errors
def recommend(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="A model id (repeat for several acceptable models; the plan picks)."),
    ] = None,
    rate: Annotated[float | None, typer.Option("--rate", "-r", help="Target rate, images/s.")] = None,
    p95: Annotated[
        float | None,
        typer.Option(
            "--p95",
            help="p95 latency objective, seconds [default: none: the cheapest plan at any latency, its p95 stated]. "
            "Interactive requests want one (docs/recommend.md, 'Choosing a latency objective').",
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoiser steps for every --model [default: each model's].")] = None,
    height: Annotated[int | None, typer.Option(help="Image height in pixels [default: the model's].")] = None,
    width: Annotated[int | None, typer.Option(help="Image width in pixels [default: the model's].")] = None,
    headroom: Annotated[float | None, typer.Option(help="Spare capacity fraction [default: 0.2].")] = None,
    quality: Annotated[
        str | None,
        typer.Option(
            help="Quality floor METRIC>=MIN (ssim_image, psnr_image, psnr_latent), e.g. ssim_image>=0.95; "
            "real-weight measurements only unless --synthetic-quality."
        ),
    ] = None,
    synthetic_quality: Annotated[
        bool,
        typer.Option(
            "--synthetic-quality", help="Let --quality count quality measured on synthetic weights (labelled)."
        ),
    ] = False,
    recipe: Annotated[
        list[str] | None,
        typer.Option("--recipe", help="Allow-list STAGE=R1,R2 (stage or te/dn/vae), e.g. dn=bf16,fp8-compile."),
    ] = None,
    family: Annotated[
        list[str] | None,
        typer.Option(
            "--family",
            help="A GPU family the plan may use (repeat) [default: every family with a price at --offering].",
        ),
    ] = None,
    price: Annotated[
        list[float] | None,
        typer.Option("--price", help="$/GPU-hour of each --family, in order [default: the catalog's at --offering]."),
    ] = None,
    offering: Annotated[
        str | None,
        typer.Option(
            "--offering",
            help="Which catalog price families are compared at: on-demand, spot, serverless or reserved "
            "[default: on-demand].",
        ),
    ] = None,
    allow_estimates: Annotated[
        bool,
        typer.Option(
            "--allow-estimates",
            help="Also plan on families and cells no agent measured (roofline transfers, imported estimates), "
            "labelled with their uncertainty [default: off: measured, interpolated and scaled cells only].",
        ),
    ] = False,
    max_startup: Annotated[
        float | None,
        typer.Option(
            "--max-startup",
            help="Longest a replica may take to become ready, seconds (weights load + compile of every batch size) "
            "[default: no cap].",
        ),
    ] = None,
    probe_next: Annotated[
        bool,
        typer.Option(
            "--probe-next/--no-probe-next",
            help="Rank the fleet's unmeasured families by what they could save (one extra solve each) [default: on].",
        ),
    ] = True,
    available: Annotated[
        list[int] | None, typer.Option("--available", help="GPUs of each --family, in order [default: unlimited].")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Workload name [default: the model ids].")] = None,
    scenario: Annotated[
        Path | None, typer.Option("--scenario", "-s", help="A scenario YAML file (whole fleet; docs/scenario.md).")
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table (rich), json (contract 3) or csv (one row per group).")
    ] = OutputFormat.table,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write a self-contained HTML report (with plots) into DIR.")
    ] = None,
    what_if_spec: Annotated[
        list[str] | None,
        typer.Option(
            "--what-if",
            help="Re-solve at other rates: rate=1,10,100 (images/s, total) or rate=x0.5,x2 (multipliers); repeated "
            "flags merge [default: none].",
        ),
    ] = None,
    compare_file: Annotated[
        Path | None, typer.Option("--compare", help="A plan saved earlier with --format json, to compare against.")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="The running plan (saved with --format json): re-plan close to it, weighing each replica moved "
            "against its saving, and report the moves.",
        ),
    ] = None,
    move_cost: Annotated[
        float,
        typer.Option(
            "--move-cost",
            min=0.0,
            help="With --from: $/hour a replica moved must save to be worth moving (0: the fresh optimum).",
        ),
    ] = 0.5,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Recommend the cheapest fleet plan ($/image) for a rate, latency objective and quality floor.

    Quick: `planner recommend --model sdxl --rate 10 --p95 10`. Whole fleet: `planner recommend --scenario fleet.yaml`.
    """
    from planner.cli.recommend_run import run

    run(
        model=model,
        rate=rate,
        p95=p95,
        steps=steps,
        height=height,
        width=width,
        headroom=headroom,
        quality=quality,
        synthetic_quality=synthetic_quality,
        recipe=recipe,
        family=family,
        price=price,
        offering=offering,
        allow_estimates=allow_estimates,
        max_startup=max_startup,
        probe_next=probe_next,
        available=available,
        name=name,
        scenario=scenario,
        output_format=output_format.value,
        report=report,
        what_if_spec=what_if_spec,
        compare_file=compare_file,
        from_file=from_file,
        move_cost=move_cost,
        database_url=database_url,
    )
