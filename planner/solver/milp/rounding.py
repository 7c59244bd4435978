"""Stage 2 of the fluid solve: every fluid pool rounded to whole GPUs, greedily, in place.

Pools go from the smallest fractional part up. A pool is rounded down when moving enough tenants out costs less
than the GPU saved: to room that rounding up left in another pool where the group has a slot (free), else to the
group's cheapest pure dedicated cover (cheapest per unit of GPU share first). Otherwise it is rounded up, and its
room is filled with dedicated groups that have a slot there, largest saving first. Availability holds
throughout: a dedicated cover is taken only where it fits with every GPU already placed (pools not yet rounded
counted rounded up), and a pool whose round-up would not fit its family's availability is rounded down whatever
the moves cost.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from planner.solver.milp.columns import slot_size
from planner.solver.milp.patterns import COVER_TOLERANCE
from planner.solver.milp.result import MilpResult, Pool, gpu_price, objective
from planner.solver.options import GroupKey, OptionSet
from planner.solver.problem import Problem

EPS = 1e-9
Cover = tuple[float, list[tuple[int, int]]]
"""A dedicated cover: its $/hour and (option, replicas)."""


@dataclass
class _Move:
    """A tenant leaving a pool being rounded down: to a slot in another pool's room, or to a dedicated cover."""

    tenant: int
    slot: int | None
    cover: Cover | None


def round_pools(problem: Problem, option_set: OptionSet, result: MilpResult) -> None:
    """Round every fluid pool of `result` to whole GPUs (module docstring), in place."""
    _Rounding(problem, option_set, result).run()


class _Rounding:
    def __init__(self, problem: Problem, option_set: OptionSet, result: MilpResult) -> None:
        self.problem, self.option_set, self.result = problem, option_set, result
        self.options = option_set.options
        self.chosen = {(wi, m, g) for wi, (m, topo) in result.choices.items() for g in topo}
        # GPUs in use while pools are rounded: pools already rounded at their whole count, pools still to round
        # at their count rounded up (they may yet round up); `room` is what each pool's round-up leaves free.
        self.pool_gpus: dict[Pool, int] = {}
        self.room: dict[Pool, float] = {}
        for pool, (_, tenants) in result.shared_fluid.items():
            total = sum(self.size(i) for i in tenants)
            self.pool_gpus[pool] = math.ceil(total - EPS)
            self.room[pool] = math.ceil(total - EPS) - total

    def size(self, i: int) -> float:
        opts = self.problem.options
        o = self.options[i]
        return slot_size(o, self.problem.families[o.family], opts.share_max_utilization, opts.memory_reserve_gib)

    def run(self) -> None:
        result = self.result
        for pool, _count in sorted(result.fluid_pools.items(), key=lambda kv: kv[1] - math.floor(kv[1])):
            tenants = result.shared_fluid[pool][1]
            total = sum(self.size(i) for i in tenants)
            target = math.floor(total + EPS)
            if total - target <= EPS:
                self._set(pool, tenants, max(target, 1), 0.0)
            elif not self._round_down(pool, tenants, total, target):
                self._round_up(pool, tenants, total)
        result.objective = objective(self.problem, self.options, result)

    def _set(self, pool: Pool, tenants: list[int], gpus: int, room: float) -> None:
        self.result.shared_fluid[pool] = (gpus, tenants)
        self.pool_gpus[pool] = gpus
        self.room[pool] = room

    # ---- GPUs in use and availability ------------------------------------------------------------------

    def in_use(self, without: Pool | None = None) -> dict[str, int]:
        """GPUs per family: dedicated replicas, exact bins, and every pool but `without` at its current count."""
        use: dict[str, int] = defaultdict(int)
        for i, n in self.result.replicas.items():
            use[self.options[i].family] += n
        for fid, _ in self.result.shared_bins:
            use[fid] += 1
        for pool, n in self.pool_gpus.items():
            if pool != without:
                use[pool[0]] += n
        return use

    def fits(self, use: Mapping[str, int], fid: str, n: int) -> bool:
        avail = self.problem.families[fid].available
        return avail is None or use.get(fid, 0) + n <= avail

    def dedicated_cover(self, key: GroupKey, use: Mapping[str, int]) -> Cover | None:
        """The group's cheapest pure dedicated cover that fits every family's availability given `use`."""
        lam = self.problem.workloads[key[0]].rate
        best: Cover | None = None
        for i in self.option_set.by_group.get(key, []):
            o = self.options[i]
            if o.shared or o.credit <= 0:
                continue
            n = math.ceil(lam / o.credit - COVER_TOLERANCE)
            if not self.fits(use, o.family, n):
                continue
            if best is None or n * o.cost_per_hour < best[0]:
                best = (n * o.cost_per_hour, [(i, n)])
        return best

    # ---- rounding down ---------------------------------------------------------------------------------

    def _round_down(self, pool: Pool, tenants: list[int], total: float, target: int) -> bool:
        """Round `pool` down to `target` GPUs where moving tenants out is cheaper than the GPU saved (or the
        round-up does not fit availability); False where it stays to be rounded up."""
        use = self.in_use(without=pool)  # everything else, with this pool at `target`
        use[pool[0]] += target
        must = not self.fits(use, pool[0], math.ceil(total - EPS) - target)
        moved, freed, extra = self._moves_out(pool, tenants, total, target, use)
        closes = target >= 1 or freed >= total - EPS
        if not (total - freed <= target + EPS and closes and (must or extra < gpu_price(self.problem, pool[0]) - EPS)):
            return False
        self._apply(pool, tenants, moved, max(target, 1) - (total - freed), target)
        return True

    def _moves_out(
        self, pool: Pool, tenants: list[int], total: float, target: int, use: dict[str, int]
    ) -> tuple[list[_Move], float, float]:
        """Tenants to move out, largest first: to room left in other pools (free), else to their cheapest dedicated
        cover that fits availability, cheapest per unit of GPU share first, until the rest fits `target` GPUs.
        Returns the moves, the GPU share freed and the $/hour the covers add (`use` takes the covers' GPUs)."""
        moved: list[_Move] = []
        freed, extra = 0.0, 0.0
        taken: dict[Pool, float] = defaultdict(float)
        by_cost: list[tuple[float, int]] = []
        for i in sorted(tenants, key=lambda i: -self.size(i)):
            if total - freed <= target + EPS:
                break
            slot = self._slot_with_room(i, pool, taken)
            if slot is not None:
                taken[self.options[slot].pool] += self.size(slot)
                moved.append(_Move(i, slot, None))
                freed += self.size(i)
                continue
            cover = self.dedicated_cover(self.options[i].key, use)
            if cover is not None:
                by_cost.append((cover[0] / self.size(i), i))
        for _, i in sorted(by_cost):
            if total - freed <= target + EPS:
                break
            cover = self.dedicated_cover(self.options[i].key, use)  # again: covers taken before may use the room
            if cover is None:
                continue
            for j, n in cover[1]:
                use[self.options[j].family] += n
            moved.append(_Move(i, None, cover))
            freed += self.size(i)
            extra += cover[0]
        return moved, freed, extra

    def _slot_with_room(self, i: int, pool: Pool, taken: Mapping[Pool, float]) -> int | None:
        """A slot of tenant i's group in another pool whose room (less what is `taken`) holds it."""
        for j in self.option_set.by_group.get(self.options[i].key, []):
            other = self.options[j]
            if (
                other.shared
                and other.pool != pool
                and other.pool in self.room
                and self.size(j) <= self.room[other.pool] - taken[other.pool] + EPS
            ):
                return j
        return None

    def _apply(self, pool: Pool, tenants: list[int], moved: list[_Move], room: float, target: int) -> None:
        result = self.result
        for m in moved:
            if m.slot is not None:
                other = self.options[m.slot].pool
                result.shared_fluid[other][1].append(m.slot)
                self.room[other] -= self.size(m.slot)
            elif m.cover is not None:
                for j, n in m.cover[1]:
                    result.replicas[j] = result.replicas.get(j, 0) + n
        gone = {m.tenant for m in moved}
        kept = [i for i in tenants if i not in gone]
        if kept:
            self._set(pool, kept, max(target, 1), room)
        else:
            del result.shared_fluid[pool]
            del self.pool_gpus[pool]
            self.room.pop(pool, None)

    # ---- rounding up -----------------------------------------------------------------------------------

    def _round_up(self, pool: Pool, tenants: list[int], total: float) -> None:
        """Round `pool` up and fill its room with dedicated groups that have a slot there, largest saving per unit
        of room first."""
        high = math.ceil(total - EPS)
        self._set(pool, tenants, high, 0.0)
        left = high - total
        for _, slot, held in self._fills(pool, tenants):
            size = self.size(slot)
            if size > left + EPS:
                continue
            left -= size
            tenants.append(slot)
            for j in held:
                self.result.replicas.pop(j)
        self.room[pool] = left

    def _fills(self, pool: Pool, tenants: list[int]) -> list[tuple[float, int, list[int]]]:
        """(-saving per unit of room, the group's smallest slot in `pool`, its dedicated options) per chosen group
        served by dedicated replicas and not yet in the pool, best first."""
        options = self.options
        in_pool = {options[i].key for i in tenants}
        dedicated_by_key: dict[GroupKey, list[int]] = defaultdict(list)
        for j in self.result.replicas:
            dedicated_by_key[options[j].key].append(j)
        fills = []
        for key, held in dedicated_by_key.items():
            if key not in self.chosen or key in in_pool:
                continue
            slots = [i for i in self.option_set.by_group.get(key, []) if options[i].shared and options[i].pool == pool]
            if not slots:
                continue
            slot = min(slots, key=self.size)
            saving = sum(options[j].cost_per_hour * self.result.replicas[j] for j in held)
            fills.append((-saving / self.size(slot), slot, held))
        fills.sort()
        return fills
