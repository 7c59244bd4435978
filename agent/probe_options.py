"""What one probe sweep is asked to do (`agent probe`'s options), shared by the sweep, its cells and its quality."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.timing import TimerOptions
from planner.catalog import ModelSpec
from stagekit.pipelines import tiny_shapes
from stagekit.recipes import RecipeOptions


@dataclass(frozen=True)
class ProbeOptions:
    """One sweep. Sizes default to the model's own (or its tiny run's with `tiny`)."""

    model: str
    recipes: tuple[str, ...]
    batches: tuple[int, ...] = (1,)
    stages: tuple[str, ...] | None = None
    height: int | None = None
    width: int | None = None
    tiny: bool = False
    weights_dir: Path | None = None
    timer: TimerOptions = field(default_factory=TimerOptions)
    budget_s: float | None = None
    memory_cap_gib: float | None = None
    quality: bool = True
    synthetic_drift: bool = False
    quality_steps: int | None = None
    quality_prompts: int | None = None
    max_batch_by_recipe: dict[str, int] = field(default_factory=dict)
    recipe_options: RecipeOptions = field(default_factory=RecipeOptions)
    seed: int = 0


def sizes(spec: ModelSpec, opts: ProbeOptions) -> tuple[int, int, int]:
    """(height, width, text_tokens) of the sweep."""
    if opts.tiny:
        h, w, t = tiny_shapes(spec)
    else:
        h, w, t = spec.height, spec.width, spec.text_tokens
    return opts.height or h, opts.width or w, t
