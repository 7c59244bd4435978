"""A plan, a what-if sweep and a comparison as plain tables (title, columns, rows of text).

The terminal (rich) and the HTML report render the same tables, so the two never disagree on a number or a
label. Money: $/hour and $/month for budgets, $/image and $/1000 images for unit cost; a month is 730 hours.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from planner.recommend.compare import Comparison
from planner.recommend.sweep import WhatIfResult
from planner.solver.plan import GroupPlan, Plan, WorkloadPlan

HOURS_PER_MONTH = 730.0
STAGE_SHORT = {"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}
BINDING_MEANING = {
    "capacity": "the rate sets the GPU count: cost grows with the rate",
    "latency": "the p95 objective limits batching or adds replicas: relaxing it lowers the cost",
    "availability": "a family's GPU count is exhausted: more of it would lower the cost",
    "memory": "GPU memory rules out cheaper options (recipe, batch or family)",
    "quality": "the quality floor rules out cheaper recipes",
}


@dataclass(frozen=True)
class View:
    """One table: `right` holds the indices of numeric columns, `totals` those of total rows."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    right: frozenset[int] = frozenset()
    totals: frozenset[int] = frozenset()
    caption: str = ""


@dataclass(frozen=True)
class Context:
    """Where the numbers came from, for the header of every output."""

    source: str
    measurements: int
    measured_families: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


def money(value: float | None, *, digits: int = 2) -> str:
    if value is None:
        return "-"
    if digits == 2 and abs(value) >= 1000:
        return f"${value:,.0f}"
    return f"${value:,.{digits}f}"


def unit_cost(value: float | None) -> str:
    """$/image: small numbers, shown to 3 significant digits."""
    if value is None:
        return "-"
    return f"${value:.3g}" if value < 0.01 else f"${value:.4f}"


def stages_label(stages: Sequence[str]) -> str:
    return "+".join(STAGE_SHORT.get(s, s) for s in stages)


def recipes_text(recipes: dict[str, str]) -> str:
    return " ".join(f"{STAGE_SHORT.get(s, s)}={r}" for s, r in recipes.items())


def _replicas(g: GroupPlan) -> str:
    if g.shared_gpu is None:
        return str(g.replicas)
    return f"{(g.gpu_fraction or 0.0):.0%} of {g.shared_gpu}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def evidence_text(g: GroupPlan) -> str:
    """A group's evidence with its uncertainty: `measured`, `interpolated ±5%`, `transferred from X ±64%`."""
    if g.measured:
        return "measured"
    return f"{g.evidence} ±{g.uncertainty:.0%}"


def latency_sentence(wp: WorkloadPlan) -> str:
    """What the plan says of latency: the objective met or missed, or plainly that there is none."""
    if wp.p95_objective_s is None:
        return (
            f"No p95 objective was given: this is the cheapest plan at any latency, and its p95 is "
            f"{wp.predicted_p95_s:.2f} s (give --p95 for interactive requests)."
        )
    if wp.meets_latency:
        return f"Meets the p95 objective of {wp.p95_objective_s:g} s (predicted {wp.predicted_p95_s:.2f} s)."
    return f"ABOVE the p95 objective of {wp.p95_objective_s:g} s (predicted {wp.predicted_p95_s:.2f} s)."


def workload_view(wp: WorkloadPlan) -> View:
    """One row per group (the topology column lists the groups, so its rows read as the topology): what runs
    where, and what it costs per hour, image, 1000 images and month."""
    rows: list[tuple[str, ...]] = []
    per_image = 3600.0 * wp.rate
    for g in wp.groups:
        rows.append(
            (
                f"[{stages_label(g.stages)}]",
                g.family,
                "\n".join(f"{STAGE_SHORT.get(s, s)}={r}" for s, r in g.recipes.items()),
                str(g.batch),
                _replicas(g),
                f"{g.utilization:.0%}",
                f"{g.p95_s:.2f}",
                _seconds(g.simulated_p95_s),
                money(g.cost_per_hour),
                unit_cost(g.cost_per_hour / per_image),
                money(g.cost_per_hour / per_image * 1000, digits=3),
                money(g.cost_per_hour * HOURS_PER_MONTH),
                f"{g.startup_s:.0f}",
                evidence_text(g),
            )
        )
    objective = f"{wp.p95_objective_s:g} s" if wp.p95_objective_s is not None else "none"
    who = wp.name if wp.name == wp.model else f"{wp.name}: {wp.model}"
    rows.append(
        (
            "total",
            "",
            "",
            "",
            "",
            "",
            f"{wp.predicted_p95_s:.2f}",
            _seconds(wp.simulated_p95_s),
            money(wp.cost_per_hour),
            unit_cost(wp.cost_per_image),
            money(wp.cost_per_image * 1000, digits=3),
            money(wp.cost_per_hour * HOURS_PER_MONTH),
            "",
            "",
        )
    )
    return View(
        title=f"{who} at {wp.rate:g} images/s (topology {wp.topology}, headroom {wp.headroom:.0%}, "
        f"p95 objective {objective})",
        columns=(
            "topology",
            "family",
            "recipes",
            "batch",
            "replicas",
            "util",
            "p95 s",
            "sim. p95 s",
            "$/hour",
            "$/image",
            "$/1k",
            "$/month",
            "start s",
            "evidence",
        ),
        rows=rows,
        right=frozenset({3, 4, 5, 6, 7, 8, 9, 10, 11, 12}),
        totals=frozenset({len(rows) - 1}),
        caption="p95 s: predicted (batch formation + queueing + service), the bound the plan is held to; the last "
        "row is the workload's total. sim. p95 s: the scheduler's greedy batching simulated on the plan's pools "
        "(Poisson arrivals; - on a shared GPU): mostly below the bound, above it where compiled pools pad short "
        "batches; an objective holds for both figures unless a warning says otherwise. "
        + latency_sentence(wp)
        + (
            f" The bound was held to {wp.bound_objective_s:.3g} s so that the simulation meets it too."
            if wp.bound_objective_s is not None
            else ""
        )
        + " $/1k: per 1000 images; a month is 730 hours. start s: seconds a replica takes to become ready "
        "(weights read at an assumed 2 GB/s + the measured compile time of every batch size it runs). evidence: "
        "measured, interpolated between measured batches, scaled from a measured image size, or transferred from "
        "another family, with its uncertainty (see the numbers table).",
    )


def headline_lines(plan: Plan) -> list[str]:
    """The first lines of every output: what the plan rests on, its estimates, and the prices it compares."""
    summary = plan.evidence_summary()
    methods = summary["groups"]
    counts = ", ".join(f"{n} {m}" for m, n in sorted(methods.items())) or "no groups"
    worst = f"up to ±{summary['largest_uncertainty']:.0%}"
    if summary["measured_only"]:
        rests = f"Evidence: the plan rests on measurements ({counts} group(s))."
    elif set(methods) <= {"measured", "interpolated", "scaled"}:
        rests = (
            f"Evidence: the plan rests on measurements scaled to this image size ({counts} group(s); {worst}): "
            "no agent measured this size; see the warnings."
        )
    else:
        rests = f"Evidence: the plan rests on ESTIMATES ({counts} group(s); {worst}): see the warnings before buying."
    if plan.allow_estimates:
        rests += " Estimates allowed: unmeasured families may be used, labelled."
    else:
        rests += " Families no agent measured for this model are left out (--allow-estimates to price them anyway)."
    used = sorted({g.family for w in plan.workloads for g in w.groups})
    prices = "; ".join(_price_line(f, plan.prices.get(f, {})) for f in used)
    kind = plan.offering or "as given"
    return [rests, f"Prices ({kind} unless given): {prices}."]


def _price_line(family: str, p: dict[str, object]) -> str:
    price = p.get("price_per_hour")
    money_text = money(float(price), digits=2) if isinstance(price, int | float) else "-"
    if p.get("provider") is None:
        return f"{family} {money_text}/GPU-h (from {p.get('source')})"
    region = f", {p['region']}" if p.get("region") else ""
    offer = f"{p.get('provider')} {p.get('offering')}{region}, {p.get('date')}"
    return f"{family} {money_text}/GPU-h ({offer}; {p.get('source')})"


def prices_view(plan: Plan) -> View:
    """Per family the plan uses: the price, and which provider, offering, region, date and source it is."""
    used = sorted({g.family for w in plan.workloads for g in w.groups})
    rows: list[tuple[str, ...]] = []
    for fam in used:
        p = plan.prices.get(fam, {})
        price = p.get("price_per_hour")
        rows.append(
            (
                fam,
                money(float(price)) if isinstance(price, int | float) else "-",
                str(p.get("provider") or "-"),
                str(p.get("offering") or "-"),
                str(p.get("kind") or "-"),
                str(p.get("region") or "not stated"),
                str(p.get("date") or "-"),
                str(p.get("source") or "-"),
                str(p.get("status") or "-"),
            )
        )
    return View(
        title="Prices",
        columns=("family", "$/GPU-h", "provider", "offering", "kind", "region", "date", "source", "status"),
        rows=rows,
        right=frozenset({1}),
        caption=f"Catalog prices are compared at one offering kind ({plan.offering or 'as given'}); --offering or a "
        "scenario's `offering:` picks another, --price or `price_per_hour:` overrides one. status: read (the "
        "vendor's page), secondary (a price tracker), unverified (general knowledge, not confirmed).",
    )


def _cells_text(cells: dict[str, dict[str, list[object]]]) -> str:
    return "; ".join(
        f"{m}: recipes {', '.join(map(str, c['recipes']))}; batches {', '.join(map(str, c['batches']))}"
        for m, c in cells.items()
    )


def opportunities_view(plan: Plan) -> View:
    """Unmeasured families ranked by what they could save if their estimates hold, and how to measure them."""
    rows: list[tuple[str, ...]] = []
    for o in plan.opportunities:
        low_high = o.get("cost_range")
        saving = o.get("saving_per_hour")
        rows.append(
            (
                o["family"],
                ("-" if saving < 0 else "") + money(abs(saving)) if saving is not None else "-",
                f"{money(low_high[0])}-{money(low_high[1])}" if low_high else "-",
                f"±{o['uncertainty']:.0%}" if o.get("uncertainty") is not None else "-",
                "yes" if o["agent_can_measure"] else "no",
                o["command"] if o["agent_can_measure"] else f"{o['how']}: {o['command']} ({_cells_text(o['cells'])})",
                o.get("reason") or "",
            )
        )
    return View(
        title="What to probe next",
        columns=("family", "saves $/h", "plan $/h range", "±", "agent", "how to measure", "note"),
        rows=rows,
        right=frozenset({1, 2, 3}),
        caption="Families no agent measured for this model, ranked by what a plan on them would save if their "
        "estimates (roofline transfer) hold; the range is the cost if the latency is off by the uncertainty "
        "either way. A negative saving costs more. A family whose estimates miss the p95 objective is priced "
        "without it (note) and claims no saving. Measure before buying.",
    )


def totals_view(plan: Plan) -> View:
    """GPUs and cost per family, then the fleet's total and its blended $/image."""
    cost: dict[str, float] = defaultdict(float)
    for w in plan.workloads:
        for g in w.groups:
            cost[g.family] += g.cost_per_hour
    rows: list[tuple[str, ...]] = [
        (fam, str(n), money(cost[fam]), money(cost[fam] * HOURS_PER_MONTH)) for fam, n in sorted(plan.gpus.items())
    ]
    total = plan.total_cost_per_hour or 0.0
    rate = sum(w.rate for w in plan.workloads)
    rows.append(("total", str(sum(plan.gpus.values())), money(total), money(total * HOURS_PER_MONTH)))
    per_image = total / (3600.0 * rate) if rate > 0 else None
    caption = (
        f"{rate:g} images/s in all: {unit_cost(per_image)} per image, "
        f"{money(per_image * 1000 if per_image is not None else None, digits=3)} per 1000 images."
    )
    if plan.shared_gpus:
        caption += f" {len(plan.shared_gpus)} GPU(s) are shared by low-rate groups."
    return View(
        title="Fleet",
        columns=("family", "GPUs", "$/hour", "$/month"),
        rows=rows,
        right=frozenset({1, 2, 3}),
        totals=frozenset({len(rows) - 1}),
        caption=caption,
    )


def baselines_view(plan: Plan) -> View:
    rows: list[tuple[str, ...]] = []
    for b in plan.baselines:
        if not b.feasible or b.cost_per_hour is None:
            rows.append((b.name, b.description, "-", "-", b.note or "infeasible on this fleet", "-"))
            continue
        gpus = ", ".join(f"{n} {f}" for f, n in sorted(b.gpus.items())) or "-"
        saving = f"{b.saving:.1%}" if b.saving is not None else "-"
        rows.append(
            (b.name, b.description, money(b.cost_per_hour), money(b.cost_per_hour * HOURS_PER_MONTH), gpus, saving)
        )
    return View(
        title="Savings over the baselines (solved on the same data)",
        columns=("baseline", "what it may use", "$/hour", "$/month", "GPUs", "this plan saves"),
        rows=rows,
        right=frozenset({2, 3, 5}),
    )


def cells_view(plan: Plan) -> View:
    """Every latency the plan rests on: measured, or estimated (interpolated, transferred) with its basis."""
    rows: list[tuple[str, ...]] = []
    for w in plan.workloads:
        for g in w.groups:
            for c in g.cells:
                rows.append(
                    (
                        w.name,
                        g.family,
                        STAGE_SHORT.get(c.stage, c.stage),
                        c.recipe,
                        str(g.batch),
                        f"{c.latency_ms:.1f}",
                        str(c.calls),
                        c.evidence or c.source,
                        f"±{c.uncertainty:.0%}" if c.source != "measured" else "",
                        c.basis,
                    )
                )
    measured = sum(1 for r in rows if r[7] == "measured")
    unmeasured = sorted({r[1] for r in rows} - {r[1] for r in rows if r[7] == "measured"})
    advice = (
        f" No cell of {', '.join(unmeasured)} was measured: probe it (`agent probe`) before buying on this plan "
        "(see the warnings and 'What to probe next')."
        if unmeasured
        else ""
    )
    return View(
        title="Measured and estimated numbers",
        columns=("workload", "family", "stage", "recipe", "batch", "ms/call", "calls", "evidence", "±", "basis"),
        rows=rows,
        right=frozenset({4, 5, 6}),
        caption=f"{measured} of {len(rows)} stage latencies measured; the others are derived (interpolated between "
        "measured batches, scaled from a measured image size) or estimated (transferred from a measured family by "
        "the roofline model, only with estimates allowed)." + advice,
    )


def binding_view(plan: Plan) -> View:
    rows: list[tuple[str, ...]] = []
    for w in plan.workloads:
        for constraint in w.binding or ("capacity",):
            rows.append((w.name, constraint, BINDING_MEANING.get(constraint, "")))
    sens = plan.sensitivity
    caption = ""
    if sens is not None and plan.total_cost_per_hour:
        parts = []
        for constraint, alt in sens.relaxed:
            if alt.cost_per_hour is None:
                continue
            change = 1 - alt.cost_per_hour / plan.total_cost_per_hour
            if change > 0.002:
                parts.append(f"without the {constraint} constraint: {money(alt.cost_per_hour)}/h ({change:.1%} less)")
        for item in (*sens.rates, *sens.quality):
            cost = money(item.cost_per_hour) + "/h" if item.cost_per_hour is not None else "infeasible"
            parts.append(f"{item.label}: {cost}")
        caption = "; ".join(parts)
    return View(
        title="Binding constraints", columns=("workload", "constraint", "what it means"), rows=rows, caption=caption
    )


def quality_view(plan: Plan) -> View:
    """Every recipe a quality floor judged: its quality, where that number came from, in or out and why."""
    rows: list[tuple[str, ...]] = []
    for q in plan.quality:
        if q.value is None:
            shown = "unknown"
        elif q.value == float("inf"):
            shown = "exact"
        else:
            shown = f"{q.value:.4g}"
        rows.append((q.workload, q.model, STAGE_SHORT.get(q.stage, q.stage), q.recipe, shown, q.source, q.verdict,
                     q.detail))  # fmt: skip
    return View(
        title="Quality floor: the source of every recipe's quality",
        columns=("workload", "model", "stage", "recipe", "quality", "source", "verdict", "rests on"),
        rows=rows,
        right=frozenset({4}),
        caption="source: measured = real weights (the agent's quality probe); published = a cited figure "
        "(planner/catalog/data/quality_published.yaml); synthetic = drift on random weights, counted only when "
        "asked (--synthetic-quality); reference = the stage's fp32 recipe, exact; unknown = excluded unless "
        "`missing: allow`.",
    )


def distilled_view(plan: Plan) -> View:
    """What serving a distilled variant gives up against its base model, as published, with the source."""
    rows: list[tuple[str, ...]] = []
    for d in plan.distilled_quality:
        if d["evidence"] == "unknown":
            rows.append((d["workload"], d["model"], d["compared_model"] or "-", "-", "-", "-", "unknown", "no figure"))
            continue
        base = "-" if d["baseline"] is None else f"{d['baseline']:g}"
        rows.append(
            (d["workload"], d["model"], d["compared_model"], d["metric"], f"{d['value']:g}", base,
             d["against_baseline"] or "-", f"{d['source']} [{d['status']}]")
        )  # fmt: skip
    return View(
        title="Distilled variants: published quality against the model they replace",
        columns=("workload", "served", "instead of", "metric", "value", "base", "", "source"),
        rows=rows,
        right=frozenset({4, 5}),
        caption="No quality floor compares two models' images; these are what papers and model cards published "
        "for both on one benchmark (planner/catalog/data/quality_published.yaml, `compared_model`). Lower is "
        "better for fid, higher for the rest. Measure your own prompts on real weights before relying on them.",
    )


def plan_views(plan: Plan) -> list[View]:
    """The whole recommendation: per workload, the fleet, the baselines, binding constraints, the numbers."""
    views = [workload_view(w) for w in plan.workloads]
    views.append(totals_view(plan))
    views.append(prices_view(plan))
    if plan.opportunities:
        views.append(opportunities_view(plan))
    if plan.baselines:
        views.append(baselines_view(plan))
    views.append(binding_view(plan))
    if plan.quality:
        views.append(quality_view(plan))
    if plan.distilled_quality:
        views.append(distilled_view(plan))
    views.append(cells_view(plan))
    return views


def what_if_view(results: Sequence[WhatIfResult]) -> View:
    rows: list[tuple[str, ...]] = []
    for r in results:
        gpus = ", ".join(f"{n} {f}" for f, n in sorted(r.gpus.items()))
        if r.cost_per_hour is None:
            gpus = f"cannot carry it (carries {r.carried or 0.0:.0%})"
        rows.append(
            (
                r.label,
                f"{r.rate:g}",
                money(r.cost_per_hour),
                unit_cost(r.cost_per_image),
                money(r.cost_per_image * 1000 if r.cost_per_image is not None else None, digits=3),
                str(sum(r.gpus.values())) if r.gpus else "-",
                gpus,
            )
        )
    return View(
        title="What if the rate changes",
        columns=("point", "images/s", "$/hour", "$/image", "$/1k images", "GPUs", "GPUs by family"),
        rows=rows,
        right=frozenset({1, 2, 3, 4, 5}),
        caption="Each point re-solves every workload with its rate scaled (an absolute rate is the total over the "
        "workloads, in their proportions).",
    )


def _delta(before: float | None, after: float | None, *, unit: bool = False) -> str:
    if before is None or after is None:
        return "-"
    fmt = unit_cost if unit else money
    change = after - before
    ratio = f" ({change / before:+.0%})" if before else ""
    return ("+" if change >= 0 else "-") + fmt(abs(change)) + ratio


def _gpus(counts: dict[str, float]) -> str:
    return ", ".join(f"{n:g} {f}" for f, n in sorted(counts.items())) or "-"


def compare_views(cmp: Comparison) -> list[View]:
    """This recommendation against a saved plan: totals and GPUs, then each workload's cost, GPUs and recipes."""
    rows: list[tuple[str, ...]] = [
        ("$/hour", money(cmp.before_cost), money(cmp.after_cost), _delta(cmp.before_cost, cmp.after_cost))
    ]
    for fam in sorted(set(cmp.before_gpus) | set(cmp.after_gpus)):
        b, a = cmp.before_gpus.get(fam, 0), cmp.after_gpus.get(fam, 0)
        rows.append((f"GPUs {fam}", f"{b:g}", f"{a:g}", f"{a - b:+g}"))
    summary = View(
        title=f"Compared with {cmp.before_name}",
        columns=("", "saved plan", "this recommendation", "change"),
        rows=rows,
        right=frozenset({1, 2, 3}),
    )
    wrows: list[tuple[str, ...]] = []
    for w in cmp.workloads:
        wrows.append(
            (
                w.name,
                money(w.before_cost),
                money(w.after_cost),
                _delta(w.before_cost, w.after_cost),
                unit_cost(w.before_cost_per_image),
                unit_cost(w.after_cost_per_image),
                _gpus(w.before_gpus),
                _gpus(w.after_gpus),
                "; ".join(w.changes) or "same",
            )
        )
    per_workload = View(
        title="Per workload",
        columns=(
            "workload",
            "$/hour before",
            "$/hour now",
            "change",
            "$/image before",
            "$/image now",
            "GPUs before",
            "GPUs now",
            "what changed",
        ),
        rows=wrows,
        right=frozenset({1, 2, 3, 4, 5}),
    )
    return [summary, per_workload]


def context_lines(ctx: Context) -> list[str]:
    measured = ", ".join(ctx.measured_families) or "none"
    return [
        f"Measurements: {ctx.measurements} cells from {ctx.source} (measured on: {measured}).",
        *ctx.notes,
    ]
