"""CLI tables on narrow terminals: text wraps between words, numbers and ids never split, records when too wide."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from planner.catalog import loader
from planner.cli.tables import render_table
from tests.helpers import run_cli

COLUMNS = ("family", "what it may use", "$/hour")
ROWS = [("h100-sxm-80gb", "one family, default recipe (bf16), batch 1", "$54.72"), ("l4-24gb", "any mix", "$3.10")]


def rendered(width: int) -> list[str]:
    out = Console(width=width, record=True, color_system=None)
    render_table("Savings", COLUMNS, ROWS, out=out, right={2}, whole={0})
    return out.export_text().splitlines()


def test_natural_widths_when_the_table_fits() -> None:
    lines = rendered(200)
    assert any(line.rstrip() == "h100-sxm-80gb  one family, default recipe (bf16), batch 1  $54.72" for line in lines)


def test_narrow_widths_wrap_text_only() -> None:
    lines = rendered(40)
    assert max(len(line) for line in lines) <= 40
    words = " ".join(lines).split()
    for whole in ("h100-sxm-80gb", "l4-24gb", "$54.72", "$3.10", "default", "recipe"):
        assert whole in words, whole  # ids and numbers whole, text wrapped between words
    assert not any(line.startswith("family h100") for line in lines)  # still a table, not records


def test_too_narrow_for_any_table_prints_records() -> None:
    out = Console(width=24, record=True, color_system=None)
    render_table("Savings", COLUMNS, ROWS, out=out, right={2}, whole={0})
    text = out.export_text()
    assert "family h100-sxm-80gb" in text
    assert "family l4-24gb" in text
    assert "$54.72" in text.split()
    assert "$3.10" in text.split()
    assert max(len(line) for line in text.splitlines()) <= 24


@pytest.mark.parametrize("columns", [80, 200])
def test_catalog_listings_show_every_id_whole(tmp_path: Path, columns: int) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path), "COLUMNS": str(columns)}
    for command, ids in (
        ("families", loader.gpu_families()),
        ("models", loader.models()),
        ("recipes", loader.recipes()),
    ):
        proc = run_cli("planner", command, env=env)
        assert proc.returncode == 0, proc.stderr
        words = set(proc.stdout.split())
        assert set(ids) <= words, (command, set(ids) - words)
        assert max(len(line) for line in proc.stdout.splitlines() if "  " in line.strip()) <= columns


def test_records_print_brackets_as_text_not_markup() -> None:
    """A topology (`[te+dn]`) is data: rich markup would swallow it as a style tag and print `topology  -> ;`."""
    columns = ("workload", "what changed", "$/hour")
    rows = [("sdxl", "topology [te+dn+vae] -> [te+dn][vae]; [bold]not a style[/bold]", "$40.08")]
    out = Console(width=24, record=True, color_system=None)
    render_table("Per workload", columns, rows, out=out, right={2}, whole={0})
    text = "".join(out.export_text().split())  # the narrow value column folds long words
    assert "[te+dn+vae]->[te+dn][vae]" in text
    assert "[bold]notastyle[/bold]" in text


def test_models_say_which_families_measured_them(tmp_path: Path) -> None:
    """The shipped data measures most catalog models; one it does not measure says so (it cannot be planned)."""
    env = {"XDG_DATA_HOME": str(tmp_path), "COLUMNS": "220", "PLANNER_SEED_REFERENCE_DATA": "true"}
    proc = run_cli("planner", "models", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "h100-sxm-80gb" in lines["sdxl"]
    assert "h200-141gb" in lines["sdxl"]
    assert lines["sdxl-turbo"].rstrip().endswith("not measured")
