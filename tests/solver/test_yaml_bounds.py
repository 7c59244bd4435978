"""YAML bounded before it is expanded (issue 28): an alias bomb is refused at once, naming the file and why."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from planner.core.errors import InputError
from planner.core.yamlsafe import MAX_YAML_NODES, expanded_size, safe_load_bounded
from planner.scenario import load_scenario


def alias_bomb(levels: int = 7, fan: int = 9) -> str:
    """Seven levels of nine-fold aliases (the issue's file): 9^7 = 4.8 million leaves from ~600 bytes."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    lines.append(f"fleet: *a{levels}")
    lines.append("workloads: []")
    return "\n".join(lines) + "\n"


def test_the_alias_bomb_scenario_is_refused_in_under_a_second_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(InputError) as err:
        load_scenario(path)
    took = time.perf_counter() - started
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    print(f"alias bomb refused in {took * 1000:.1f} ms, peak memory grew {grown_kib} KiB: {err.value}")
    assert took < 1.0, took
    assert grown_kib < 50 * 1024, grown_kib
    assert str(path) in str(err.value)
    assert "aliases expand to more than" in str(err.value)


def test_ordinary_aliases_still_work_and_the_count_is_exact() -> None:
    text = "base: &b {x: 1, y: 2}\nitems: [*b, *b, *b]\n"
    assert safe_load_bounded(text, name="t") == {"base": {"x": 1, "y": 2}, "items": [{"x": 1, "y": 2}] * 3}
    import yaml

    root = yaml.compose(text)
    assert root is not None
    # root(1) + 2 keys + base mapping (1 + 4 scalars) + items seq (1 + 3 x 5) = 1 + 2 + 5 + 16
    assert expanded_size(root) == 24


def test_a_file_over_the_size_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(InputError, match="more than the 1048576"):
        load_scenario(path)
    assert MAX_YAML_NODES == 100_000
