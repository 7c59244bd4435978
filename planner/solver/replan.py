"""Stable re-plans: the running plan's replicas, what a new plan moves, and what a move costs.

A capacity review re-solves after small changes (a rate up 10%); solved from scratch, the new optimum may move
many replicas for a saving of cents. Given the running plan, the MILP weighs each replica moved against its
saving: every cover pattern of a group pays `move_cost_per_hour` ($/hour, `SolverOptions`) per replica it moves
against the running plan, so a move is made only where it saves at least that much per hour. At a move cost of
zero the objective is the plan's cost alone: today's optimum.

Moves are counted per (workload, stage group, family): replicas whose recipe or batch changed on the same family
are *changed* (one move each), the rest *added* or *removed*. A group the new plan serves with another topology
or model removes all its running replicas. Shared-GPU slots are not counted (a tenant's move is a routing change,
not a replica's).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ReplicaKey = tuple[str, tuple[str, ...], str, tuple[str, ...], int]
"""(workload name, stages of the group, family, recipe per stage in stage order, batch)."""
GroupFamily = tuple[str, tuple[str, ...], str]
"""(workload name, stages of the group, family)."""


@dataclass(frozen=True)
class RunningPlan:
    """The dedicated replicas of the plan that runs now, and each workload's model."""

    replicas: Mapping[ReplicaKey, int]
    models: Mapping[str, str]

    @classmethod
    def from_plan_dict(cls, data: Mapping[str, Any]) -> RunningPlan:
        """From a plan as `planner recommend --format json` prints it (contract 3)."""
        replicas: dict[ReplicaKey, int] = defaultdict(int)
        models: dict[str, str] = {}
        for w in data.get("workloads") or []:
            name = str(w["name"])
            if w.get("model") is not None:
                models[name] = str(w["model"])
            for g in w.get("groups") or []:
                if g.get("shared_gpu"):
                    continue
                stages = tuple(str(s) for s in g["stages"])
                recipes = tuple(str(g["recipes"][s]) for s in stages)
                replicas[(name, stages, str(g["family"]), recipes, int(g["batch"]))] += int(g["replicas"])
        return cls(replicas=dict(replicas), models=models)

    def by_group(self) -> dict[tuple[str, tuple[str, ...]], dict[ReplicaKey, int]]:
        out: dict[tuple[str, tuple[str, ...]], dict[ReplicaKey, int]] = defaultdict(dict)
        for key, n in self.replicas.items():
            out[(key[0], key[1])][key] = n
        return dict(out)


@dataclass(frozen=True)
class Moves:
    """Replicas a plan adds, removes and changes (recipe or batch, same family) against the running plan."""

    added: int = 0
    removed: int = 0
    changed: int = 0

    @property
    def total(self) -> int:
        return self.added + self.removed + self.changed

    def __add__(self, other: Moves) -> Moves:
        return Moves(self.added + other.added, self.removed + other.removed, self.changed + other.changed)

    def to_dict(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "total": self.total}


def group_moves(old: Mapping[ReplicaKey, int], new: Mapping[ReplicaKey, int]) -> Moves:
    """Moves between two sets of replicas (module docstring): per family, min(added, removed) are changes."""
    by_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key in set(old) | set(new):
        diff = new.get(key, 0) - old.get(key, 0)
        if diff > 0:
            by_family[key[2]][0] += diff
        elif diff < 0:
            by_family[key[2]][1] -= diff
    total = Moves()
    for added, removed in by_family.values():
        changed = min(added, removed)
        total = total + Moves(added - changed, removed - changed, changed)
    return total


def plan_replicas(workloads: Iterable[Any]) -> dict[ReplicaKey, int]:
    """The dedicated replicas of solved workload plans (`WorkloadPlan`), keyed as the running plan's."""
    out: dict[ReplicaKey, int] = defaultdict(int)
    for w in workloads:
        for g in w.groups:
            if g.shared_gpu is not None:
                continue
            stages = tuple(g.stages)
            out[(w.name, stages, g.family, tuple(g.recipes[s] for s in stages), g.batch)] += g.replicas
    return dict(out)


def plan_moves(running: RunningPlan, replicas: Mapping[ReplicaKey, int]) -> Moves:
    """All moves from the running plan to `replicas` (every workload and group, either side)."""
    old_by: dict[tuple[str, tuple[str, ...]], dict[ReplicaKey, int]] = running.by_group()
    new_by: dict[tuple[str, tuple[str, ...]], dict[ReplicaKey, int]] = defaultdict(dict)
    for key, n in replicas.items():
        new_by[(key[0], key[1])][key] = n
    total = Moves()
    for group in set(old_by) | set(new_by):
        total = total + group_moves(old_by.get(group, {}), new_by.get(group, {}))
    return total
