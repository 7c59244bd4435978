"""Plans: store a solver answer (contract 3) with its groups and routing table; activate, mark stale, compare.

One plan per fleet is in force: `active`, or `stale` after drift was reported (the scheduler keeps routing by
it until another is activated). Activation supersedes the plan in force in the same transaction; the partial
unique index on active plans backs it up, and the fleet row is locked so two activations queue up. The routing
table's version is the plan id, so it only increases: a plan older than the last one activated cannot be
activated again (copy it first, which gives it a new id).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from planner.core.errors import ConflictError, FieldError, NotFoundError
from planner.db import models as m
from planner.schemas.plans import PlanEventIn, PlanResult

Loc = tuple[str | int, ...]
IN_FORCE = ("active", "stale")


def pool_name(workload: str, group_index: int, family: str, nth: int = 1) -> str:
    """The queue a routing entry names: `<workload>.<group_index>.<family>`, and `.<nth>` after it from the
    second pool of one family serving the same group (another recipe or batch)."""
    base = f"{workload}.{group_index}.{family}"
    return base if nth == 1 else f"{base}.{nth}"


def topology_indices(
    groups: Sequence[Sequence[str]], model_stages: Sequence[str] | None
) -> tuple[list[int], str | None]:
    """Each group's index in its workload's topology, and what is wrong with the split (None if nothing).

    A plan may serve one group of the topology from several pools (two families, or two recipes on one): they
    all carry the same index, which the router reads as one step of the pipeline with a choice of pools. The
    distinct stage lists, in pipeline order, must split the model's stages into consecutive groups with no
    stage missing or served twice.
    """
    distinct: list[tuple[str, ...]] = []
    for stages in groups:
        if tuple(stages) not in distinct:
            distinct.append(tuple(stages))
    order = list(model_stages) if model_stages else [s for st in distinct for s in st]
    distinct.sort(key=lambda st: order.index(st[0]) if st[0] in order else len(order))
    index = {st: i for i, st in enumerate(distinct)}
    covered = [s for st in distinct for s in st]
    problem = None
    if groups and model_stages is not None and covered != list(model_stages):
        split = "".join("[" + "+".join(st) + "]" for st in distinct)
        problem = (
            f"the groups' stages {split} do not split the model's stages {'+'.join(model_stages)} into consecutive "
            "groups (a stage is missing or in two groups); give every stage exactly one group's stage list"
        )
    return [index[tuple(stages)] for stages in groups], problem


def store_plan(
    session: Session,
    *,
    fleet: m.Fleet,
    result: PlanResult,
    inputs: dict[str, Any],
    now: datetime,
    loc: Loc = ("result",),
) -> m.Plan:
    """A draft plan from a contract-3 result, with its groups and routing entries (each problem names its field)."""
    families = set(session.scalars(select(m.GpuFamily.id)))
    model_stages = {
        model.id: [st.stage for st in model.stages]
        for model in session.scalars(select(m.Model).options(selectinload(m.Model.stages)))
    }
    models = set(model_stages)
    stored = {w.name: w.models for w in fleet.workloads}
    problems: list[tuple[Loc, str]] = []
    for fam in result.gpus:
        if fam not in families:
            problems.append(((*loc, "gpus", fam), f"unknown GPU family {fam!r}"))
    plan = m.Plan(
        fleet_id=fleet.id,
        status="draft",
        feasible=result.feasible,
        total_cost_per_hour=result.total_cost_per_hour,
        result=result.model_dump(mode="json"),
        inputs=inputs,
        created_at=now,
        groups=[],
        routes=[],
        events=[],
    )
    for wi, w in enumerate(result.workloads):
        totals: dict[tuple[str, ...], float] = defaultdict(float)
        counts: dict[tuple[str, ...], int] = defaultdict(int)
        for g in w.groups:
            totals[tuple(g.stages)] += g.throughput
            counts[tuple(g.stages)] += 1
        candidates = stored.get(w.name, [])
        workload_model = w.model or (candidates[0] if len(candidates) == 1 else None)
        first_model = (w.groups[0].model if w.groups else None) or workload_model
        indices, split_problem = topology_indices([g.stages for g in w.groups], model_stages.get(first_model or ""))
        if split_problem is not None:
            problems.append(((*loc, "workloads", wi, "groups"), split_problem))
        seen: dict[tuple[int, str], int] = defaultdict(int)
        for gi, g in enumerate(w.groups):
            model = g.model or workload_model
            if model is None:
                problems.append(
                    (
                        (*loc, "workloads", wi, "model"),
                        "which model? give `model` (the fleet has no such single-model workload)",
                    )
                )
                continue
            if model not in models:
                problems.append(((*loc, "workloads", wi, "groups", gi, "model"), f"unknown model {model!r}"))
            if g.family not in families:
                problems.append(((*loc, "workloads", wi, "groups", gi, "family"), f"unknown GPU family {g.family!r}"))
            key = tuple(g.stages)
            weight = g.throughput / totals[key] if totals[key] > 0 else 1.0 / counts[key]
            recipes = {str(k): v for k, v in g.recipes.items()}
            index = indices[gi]
            seen[(index, g.family)] += 1
            plan.groups.append(
                m.PlanGroup(
                    workload_name=w.name,
                    group_index=gi,  # its position in the result; the routing entry carries its topology step
                    model_id=model,
                    stages=list(g.stages),
                    gpu_family_id=g.family,
                    recipes=recipes,
                    batch=g.batch,
                    replicas=g.replicas,
                    throughput=g.throughput,
                    utilization=g.utilization,
                )
            )
            plan.routes.append(
                m.RoutingEntry(
                    pool=pool_name(w.name, index, g.family, seen[(index, g.family)]),
                    workload_name=w.name,
                    group_index=index,
                    model_id=model,
                    stages=list(g.stages),
                    gpu_family_id=g.family,
                    recipes=recipes,
                    batch=g.batch,
                    replicas=g.replicas,
                    capacity=g.throughput,
                    weight=round(weight, 9),
                )
            )
    if problems:
        raise FieldError(problems)
    session.add(plan)
    session.flush()
    return plan


def get_plan(session: Session, *, plan_id: int) -> m.Plan:
    plan = session.scalar(
        select(m.Plan)
        .where(m.Plan.id == plan_id)
        .options(selectinload(m.Plan.groups), selectinload(m.Plan.events), selectinload(m.Plan.routes))
    )
    if plan is None:
        raise NotFoundError("plan", plan_id, hint="list a fleet's plans with GET /v1/fleets/{fleet}/plans")
    return plan


def list_plans(
    session: Session, *, fleet: m.Fleet, status: str | None, limit: int, offset: int
) -> tuple[Sequence[m.Plan], int]:
    query = select(m.Plan).where(m.Plan.fleet_id == fleet.id)
    if status is not None:
        query = query.where(m.Plan.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    plans = session.scalars(query.order_by(m.Plan.id.desc()).limit(limit).offset(offset)).all()
    return plans, int(total)


def plan_in_force(session: Session, *, fleet_id: int) -> m.Plan | None:
    """The plan the routing table comes from: the last activated one still active or stale."""
    return session.scalar(
        select(m.Plan)
        .where(m.Plan.fleet_id == fleet_id, m.Plan.status.in_(IN_FORCE), m.Plan.activated_at.is_not(None))
        .options(selectinload(m.Plan.routes))
        .order_by(m.Plan.id.desc())
        .limit(1)
    )


def _event(session: Session, plan: m.Plan, kind: str, message: str, now: datetime, **data: Any) -> m.PlanEvent:
    event = m.PlanEvent(plan_id=plan.id, kind=kind, message=message, data=data, created_at=now)
    session.add(event)
    return event


def activate(session: Session, *, plan: m.Plan, now: datetime) -> m.Plan:
    """Make a plan the fleet's plan in force; the previous one becomes superseded (one transaction)."""
    # Lock the fleet so concurrent activations of one fleet run one after the other (SQLite locks the file).
    session.execute(select(m.Fleet.id).where(m.Fleet.id == plan.fleet_id).with_for_update())
    session.refresh(plan)
    if plan.status == "active":
        return plan
    if not plan.feasible:
        raise ConflictError(f"plan {plan.id} is infeasible: it cannot carry its workloads; solve again")
    last = session.scalar(
        select(func.max(m.Plan.id)).where(m.Plan.fleet_id == plan.fleet_id, m.Plan.activated_at.is_not(None))
    )
    if last is not None and plan.id < last:
        raise ConflictError(
            f"plan {plan.id} is older than plan {last}, the fleet's last activated plan; routing versions only "
            f"increase: copy it (POST /v1/plans/{plan.id}/copy) and activate the copy"
        )
    previous = session.scalars(
        select(m.Plan).where(
            m.Plan.fleet_id == plan.fleet_id,
            m.Plan.id != plan.id,
            m.Plan.status.in_(IN_FORCE),
            m.Plan.activated_at.is_not(None),
        )
    ).all()
    if previous:
        session.execute(
            update(m.Plan)
            .where(m.Plan.id.in_([p.id for p in previous]))
            .values(status="superseded")
            .execution_options(synchronize_session="fetch")
        )
        for p in previous:
            _event(session, p, "superseded", f"superseded by plan {plan.id}", now, by=plan.id)
    session.flush()
    plan.status = "active"
    plan.activated_at = now
    plan.stale_reason = None
    _event(session, plan, "activated", "activated" + (f"; supersedes plan {previous[0].id}" if previous else ""), now)
    session.flush()
    return plan


def add_event(session: Session, *, plan: m.Plan, data: PlanEventIn, now: datetime) -> m.PlanEvent:
    """Record an event; a drift on a plan not yet superseded makes it stale."""
    event = _event(session, plan, data.kind, data.message, now, **data.data)
    if data.kind == "drift" and plan.status in ("active", "draft"):
        plan.status = "stale"
        plan.stale_reason = data.message
    session.flush()
    return event


def copy_plan(session: Session, *, plan: m.Plan, now: datetime) -> m.Plan:
    """A new draft with the same result (and so a newer id and routing version)."""
    fleet = session.scalar(select(m.Fleet).where(m.Fleet.id == plan.fleet_id).options(selectinload(m.Fleet.workloads)))
    assert fleet is not None
    result = PlanResult.model_validate(plan.result)
    return store_plan(session, fleet=fleet, result=result, inputs={**plan.inputs, "copied_from": plan.id}, now=now)


def delete_plan(session: Session, *, plan: m.Plan) -> None:
    if plan.status in IN_FORCE and plan.activated_at is not None:
        raise ConflictError(f"plan {plan.id} is the fleet's plan in force; activate another one first")
    session.delete(plan)
    session.flush()


# Comparison.


def _delta(base: float | None, other: float | None) -> dict[str, float | None]:
    delta = None if base is None or other is None else round(other - base, 9)
    return {"base": base, "other": other, "delta": delta}


def _groups(w: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            tuple(g.get("stages", [])),
            g.get("family"),
            tuple(sorted((g.get("recipes") or {}).items())),
            g.get("batch"),
            g.get("replicas"),
        )
        for g in w.get("groups", [])
    ]


def _changes(base: dict[str, Any], other: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if base.get("model") != other.get("model"):
        out.append(f"model {base.get('model')} -> {other.get('model')}")
    if base.get("topology") != other.get("topology"):
        out.append(f"topology {base.get('topology')} -> {other.get('topology')}")
    b_by = {tuple(g.get("stages", [])): g for g in base.get("groups", [])}
    o_by = {tuple(g.get("stages", [])): g for g in other.get("groups", [])}
    for stages in [s for s in b_by if s in o_by]:
        b, o = b_by[stages], o_by[stages]
        name = "+".join(stages)
        for key in ("family", "batch", "replicas"):
            if b.get(key) != o.get(key):
                out.append(f"{name}: {key} {b.get(key)} -> {o.get(key)}")
        if b.get("recipes") != o.get("recipes"):
            for stage in stages:
                br, orr = (b.get("recipes") or {}).get(stage), (o.get("recipes") or {}).get(stage)
                if br != orr:
                    out.append(f"{name}: {stage} recipe {br} -> {orr}")
    return out


def compare(base: m.Plan, other: m.Plan) -> dict[str, Any]:
    """Cost and per-workload differences of `other` against `base`."""
    b_res, o_res = base.result, other.result
    b_w = {w["name"]: w for w in b_res.get("workloads", [])}
    o_w = {w["name"]: w for w in o_res.get("workloads", [])}
    names = list(b_w) + [n for n in o_w if n not in b_w]
    workloads = []
    for name in names:
        bw, ow = b_w.get(name), o_w.get(name)
        presence = "both" if bw and ow else ("base" if bw else "other")
        workloads.append(
            {
                "name": name,
                "presence": presence,
                "cost_per_hour": _delta(bw and bw.get("cost_per_hour"), ow and ow.get("cost_per_hour")),
                "cost_per_image": _delta(bw and bw.get("cost_per_image"), ow and ow.get("cost_per_image")),
                "topology": {"base": bw and bw.get("topology"), "other": ow and ow.get("topology")},
                "groups_changed": bool(bw and ow and _groups(bw) != _groups(ow)),
                "changes": _changes(bw, ow) if bw and ow else [f"only in {presence}"],
            }
        )
    b_gpus, o_gpus = b_res.get("gpus", {}), o_res.get("gpus", {})
    fams = sorted(set(b_gpus) | set(o_gpus))
    return {
        "base_plan_id": base.id,
        "other_plan_id": other.id,
        "total_cost_per_hour": _delta(base.total_cost_per_hour, other.total_cost_per_hour),
        "ratio": (other.total_cost_per_hour / base.total_cost_per_hour) if base.total_cost_per_hour > 0 else None,
        "gpus": {f: _delta(b_gpus.get(f, 0), o_gpus.get(f, 0)) for f in fams},
        "workloads": workloads,
    }
