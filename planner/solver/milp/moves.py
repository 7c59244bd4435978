"""What each MILP column pays for the replicas it moves against a running plan (a re-plan, planner.solver.replan)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from planner.solver.milp.patterns import MoveCost, Pattern
from planner.solver.options import ChoiceKey, GroupKey, OptionSet
from planner.solver.problem import Problem
from planner.solver.replan import ReplicaKey, RunningPlan, group_moves


@dataclass(frozen=True)
class MoveCosts:
    """$/hour each MILP column pays for the replicas it moves against the running plan (planner.solver.replan).

    A pattern of group G pays for its moves against G's running replicas; a shared slot, for removing them all;
    a choice (model, topology), for removing the running groups it does not serve. Groups listed by integer
    replica columns (too many covers to list) pay nothing: their moves are counted, not weighed."""

    problem: Problem
    option_set: OptionSet
    running: RunningPlan
    per_move: float
    groups: Mapping[tuple[str, tuple[str, ...]], Mapping[ReplicaKey, int]]
    """The running replicas by (workload name, stages)."""

    def _old(self, gk: GroupKey) -> Mapping[ReplicaKey, int]:
        name = self.problem.workloads[gk[0]].name
        if self.running.models.get(name, gk[1]) != gk[1]:
            return {}
        return self.groups.get((name, gk[2]), {})

    def pattern(self, gk: GroupKey, p: Pattern) -> float:
        """Moves of a pattern; a pure one counts as the running replicas' kind where one of its option's latency
        tie-break alternatives is that kind (the engine then keeps it: same replicas, same or lower price)."""
        name = self.problem.workloads[gk[0]].name
        options = self.option_set.options
        old = self._old(gk)
        new = {(name, gk[2], options[i].family, options[i].recipes, options[i].batch): n for i, n in p.replicas}
        if len(p.replicas) == 1 and old and not set(new) & set(old):
            n, o = p.replicas[0][1], options[p.replicas[0][0]]
            for a in o.alternatives.options() if o.alternatives is not None else ():
                key = (name, gk[2], a.family, a.recipes, a.batch)
                if key in old:
                    new = {key: n}
                    break
        return self.per_move * group_moves(old, new).total

    def shared(self, gk: GroupKey) -> float:
        return self.per_move * sum(self._old(gk).values())

    def choice(self, ck: ChoiceKey) -> float:
        wi, model_id, topo = ck
        name = self.problem.workloads[wi].name
        kept = set(topo) if self.running.models.get(name, model_id) == model_id else set()
        gone = sum(n for key, n in self.running.replicas.items() if key[0] == name and key[1] not in kept)
        return self.per_move * gone


def move_costs(problem: Problem, option_set: OptionSet) -> MoveCosts | None:
    """The move costs of a re-plan; None without a running plan or at a move cost of zero."""
    running = problem.options.running
    if running is None or problem.options.move_cost_per_hour <= 0:
        return None
    return MoveCosts(problem, option_set, running, problem.options.move_cost_per_hour, running.by_group())


def pattern_cost(moves: MoveCosts | None, gk: GroupKey) -> MoveCost | None:
    """The move cost of group `gk`'s patterns, for `group_patterns` (None outside a re-plan)."""
    if moves is None:
        return None
    return lambda p: moves.pattern(gk, p)
