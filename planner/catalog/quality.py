"""Which recipe quality is measured against, and the published quality figures shipped with the catalog.

The reference of a stage is its highest-precision plain recipe (fp32 where the catalog has it), not the
catalog's `reference: true` recipe, which is the naive baseline a plan's savings are compared with (bf16): a
bf16 output compared with itself says nothing about what bf16 costs in quality (issue 26).
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.catalog.schema import Recipe

PRECISION_RANK: dict[str, int] = {"fp32": 4, "tf32": 3, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
"""Higher is closer to exact arithmetic; bf16 and fp16 tie (fp16 has the mantissa, bf16 the range)."""


def is_plain(recipe: Recipe) -> bool:
    """A recipe that changes nothing but the precision: no quantization, compile, cache, VAE swap or layout."""
    return (
        recipe.quantization == "none"
        and recipe.compile == "none"
        and recipe.cache == "none"
        and recipe.vae == "full"
        and recipe.attention == "default"
        and not (recipe.fused_qkv or recipe.channels_last or recipe.cuda_graphs)
    )


def quality_reference(stage: str, recipes: Mapping[str, Recipe]) -> Recipe | None:
    """The stage's highest-precision plain recipe (ties: the catalog's `reference` one, then the id)."""
    plain = [r for r in recipes.values() if stage in r.stages and is_plain(r)]
    if not plain:
        return None
    return max(plain, key=lambda r: (PRECISION_RANK.get(r.precision, 0), r.reference, r.id))
