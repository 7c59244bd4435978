"""`scheduler generate`: one image on this host through the stage code a worker runs (an install check).

The model's stages are built as a co-located pool's (`GroupRunner` over `StageBuilder`: the model folder's
pipeline in each stage's recipe) and run on one request, so an operator sees the image, and any error about the
folder, before the host joins a pool.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from planner import catalog
from planner.core.errors import ConfigError, InputError
from scheduler.codec import encode_png
from scheduler.stages import GroupRunner, GroupSpec, stage_builder
from stagekit.errors import UnsupportedModelError
from stagekit.sources import ModelSources


def parse_recipes(values: Sequence[str], stages: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`RECIPE` (every stage) or `STAGE=RECIPE` entries as a GroupSpec's recipes (a stage left out: the default)."""
    out: dict[str, str] = {}
    for value in values:
        stage, sep, recipe = value.partition("=")
        if not sep:
            out.update(dict.fromkeys(stages, value))
        elif stage in stages:
            out[stage] = recipe
        else:
            raise InputError(f"--recipe {value!r}: no stage {stage!r}; the stages are {', '.join(stages)}")
    return tuple(sorted(out.items()))


def generate_image(
    sources: ModelSources,
    model: str,
    *,
    prompt: str,
    out: Path,
    negative_prompt: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    recipes: Sequence[str] = (),
    device: str = "cuda",
    tiny: bool = False,
) -> dict[str, Any]:
    """Build the model's stages, run one request, write the PNG; returns what ran (weights, recipes, seconds)."""
    spec = catalog.models().get(model)
    if spec is None:
        raise InputError(f"model {model!r} is not in the catalog; known: {', '.join(catalog.models())}")
    stages = tuple(spec.stage_names)
    group = GroupSpec(model, stages, parse_recipes(recipes, stages), tiny, device)
    builder = stage_builder(sources)
    started = time.perf_counter()
    try:
        source = builder.check(model)
        runner = GroupRunner.build(group, builder)
    except UnsupportedModelError as exc:
        raise ConfigError(str(exc)) from exc
    built = time.perf_counter()
    item = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "height": height or spec.height,
        "width": width or spec.width,
        "steps": steps or spec.default_steps,
    }
    try:
        (result,) = runner.run([runner.prepare(item)])
    except UnsupportedModelError as exc:
        raise ConfigError(str(exc)) from exc
    finally:
        runner.unload()
    png = encode_png(result["image"], text={"weights": source.weights, "model": model, "seed": str(seed)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    return {
        "model": model,
        "weights": source.weights,
        "folder": str(source.folder) if source.folder else None,
        "recipes": {s: group.recipe(s) for s in stages},
        "device": device,
        **{k: v for k, v in item.items() if k != "prompt"},
        "out": str(out),
        "sha256": hashlib.sha256(png).hexdigest(),
        "load_s": round(built - started, 3),
        "generate_s": round(time.perf_counter() - built, 3),
    }
