"""Stage groups and topologies: how a model's ordered stages may be split over pools of GPUs."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

Group = tuple[str, ...]
"""Consecutive stages served together on one GPU."""
Topology = tuple[Group, ...]
"""A split of a model's ordered stages into consecutive groups."""
GroupKey = tuple[int, str, Group]
"""(workload index, model id, group)."""
ChoiceKey = tuple[int, str, Topology]
"""(workload index, model id, topology): one assignment a workload may get."""

STAGE_ABBREV: dict[str, str] = {"text_encoder": "te", "denoiser": "dn", "vae_decoder": "vae"}


def topologies(stages: Sequence[str]) -> list[Topology]:
    """Every split of the ordered stages into consecutive groups (2^(n-1) of them)."""
    n = len(stages)
    out: list[Topology] = []
    for cuts in itertools.product((False, True), repeat=max(n - 1, 0)):
        groups: list[Group] = []
        start = 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(tuple(stages[start:i]))
                start = i
        groups.append(tuple(stages[start:]))
        out.append(tuple(groups))
    out.sort(key=len)
    return out


def group_name(group: Group) -> str:
    return "[" + "+".join(STAGE_ABBREV.get(s, s) for s in group) + "]"


def topology_name(topology: Topology) -> str:
    """`[te][dn+vae]`, DESIGN.md's notation."""
    return "".join(group_name(g) for g in topology)
