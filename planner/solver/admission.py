"""Admission: the recipes a workload may use for a stage (allow-list, stage applicability, quality floor),
and why none when none is left."""

from __future__ import annotations

from collections.abc import Mapping

from planner.catalog.schema import Recipe
from planner.perf.model import PerfModel
from planner.solver.problem import Workload
from planner.solver.quality import evidence_for, judge


def default_recipe(stage: str, recipes: Mapping[str, Recipe]) -> str:
    """The recipe the naive baseline uses: the catalog's reference recipe for the stage, else bf16."""
    for rid, recipe in recipes.items():
        if recipe.reference and stage in recipe.stages:
            return rid
    return "bf16"


def allowed_recipes(
    perf: PerfModel, recipes: Mapping[str, Recipe], w: Workload, model: str, stage: str, *, default_only: bool
) -> tuple[list[str], str]:
    """Recipes of a stage after allow-list, stage applicability and quality floor; plus why, if none."""
    h, wd = w.resolution[model]
    have = perf.recipes_for(model, stage, h, wd)
    names = sorted(have)
    if default_only:
        names = [r for r in names if r == default_recipe(stage, recipes)]
    if w.recipes is not None and stage in w.recipes:
        names = [r for r in names if r in w.recipes[stage]]
    names = [r for r in names if r not in recipes or stage in recipes[r].stages]
    if not names:
        if not have:
            sizes = ", ".join(f"{sh}x{sw}" for sh, sw in perf.sizes_for(model, stage))
            if not sizes:
                return [], f"{model}: no cells for stage {stage} at any size (this model has not been measured)"
            return [], (
                f"{model}: no cells for stage {stage} at {h}x{wd} (height x width; measured sizes: {sizes}); "
                "cells are not scaled between sizes"
            )
        measured = ", ".join(sorted(have))
        return [], f"{model}: no allowed recipe of stage {stage} has cells (measured: {measured})"
    passed = [r for r in names if quality_ok(perf, recipes, w, model, stage, r)]
    if not passed:
        return (
            [],
            f"{model}: the quality floor excludes every recipe of stage {stage} ({', '.join(names)})",
        )
    return passed, ""


def quality_ok(
    perf: PerfModel, recipes: Mapping[str, Recipe], w: Workload, model: str, stage: str, recipe: str
) -> bool:
    h, wd = w.resolution[model]
    if w.quality is not None:
        evidence = evidence_for(perf, w.quality, model, stage, recipe, (h, wd))
        if judge(w.quality, evidence)[0] == "excluded":
            return False
    if w.quality_scores is not None:
        score = w.quality_scores.score(model, recipe)
        if score is None:
            ref = recipes.get(recipe)
            is_reference = ref is not None and ref.reference
            if not is_reference and w.quality_scores.missing == "exclude":
                return False
        elif score < w.quality_scores.min_score:
            return False
    return True
