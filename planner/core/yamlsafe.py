"""YAML the planner reads, bounded before it is expanded.

A YAML alias refers to an anchored node, so a file of a few hundred bytes can stand for billions of nodes (seven
levels of nine-fold aliases: 9^7 = 4.8 million leaves took 26 s and 2.9 GB to refuse). PyYAML's composer keeps
an alias as a second reference to the same node object, so the node graph of such a file is small: its
expanded size is counted on that graph, each node once (memoised), before anything walks or constructs it.

Bounds: `MAX_YAML_BYTES` (1 MiB) of text and `MAX_YAML_NODES` (100,000 nodes once aliases are expanded): a
scenario of 50 families and 200 workloads is a few thousand nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from planner.core.errors import InputError

MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def read_bounded(path: Path, *, what: str = "file", max_bytes: int = MAX_YAML_BYTES) -> str:
    """A text file's content, refused above `max_bytes` before it is read."""
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(
            f"{path}: the {what} is {size} bytes, more than the {max_bytes} a YAML file may be. Fix: split it, or "
            "point to large data (measurements) by a path instead of inlining it."
        )
    return path.read_text(encoding="utf-8")


def expanded_size(root: yaml.Node, *, limit: int = MAX_YAML_NODES) -> int:
    """Nodes the graph stands for with every alias expanded, counted in time linear in the graph; stops counting
    (returns a number above `limit`) as soon as the limit is passed."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if not children_done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        sizes[id(node)] = total
        if total > limit:
            return total
    return sizes.get(id(root), 1)


def check_bounded(root: yaml.Node | None, *, name: str, limit: int = MAX_YAML_NODES) -> None:
    """Refuse a node graph that expands beyond `limit` nodes (an alias bomb), naming the file and the reason."""
    if root is None:
        return
    size = expanded_size(root, limit=limit)
    if size > limit:
        raise InputError(
            f"{name}: refused: its aliases expand to more than {limit} YAML nodes (at least {size}); a scenario or "
            "catalog is far smaller, so this is a mistake or an alias bomb. Fix: write the repeated parts out, "
            "or use fewer nested aliases."
        )


def safe_load_bounded(text: str, *, name: str, limit: int = MAX_YAML_NODES) -> Any:
    """`yaml.safe_load` with the expansion bound checked on the composed graph first."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        check_bounded(root, name=name, limit=limit)
        return loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
