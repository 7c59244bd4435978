"""Which recipe quality is measured against, and the published quality figures shipped with the catalog.

The reference of a stage is its highest-precision plain recipe (fp32 where the catalog has it), not the
catalog's `reference: true` recipe, which is the naive baseline a plan's savings are compared with (bf16): a
bf16 output compared with itself says nothing about what bf16 costs in quality (issue 26).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.catalog.loader import DATA_DIR, models, recipes
from planner.catalog.schema import ID_PATTERN, FactStatus, Recipe, Stage
from planner.core.errors import CatalogError

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


PublishedMetric = Literal[
    "psnr_image", "ssim_image", "image_reward", "clip_score", "fid", "pick_score", "aesthetic_score"
]
LOWER_IS_BETTER: frozenset[str] = frozenset({"fid"})
"""Metrics where a smaller number is the better image (every other published metric: larger is better)."""


class PublishedQuality(BaseModel):
    """One published quality figure of a (model, stage, recipe), with its source (quality_published.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=ID_PATTERN)
    stage: Stage
    recipe: str = Field(pattern=ID_PATTERN)
    applies: Literal["same", "similar"]
    metric: PublishedMetric
    value: float = Field(allow_inf_nan=False)
    baseline: float | None = Field(default=None, allow_inf_nan=False)
    compared_with: str
    compared_model: str | None = Field(default=None, pattern=ID_PATTERN)
    """For a model-level figure (a distilled variant against its base): the catalog id of the model compared with."""
    conditions: str
    source: str
    as_of: str
    status: FactStatus

    def describe(self) -> str:
        """One line: the figure, what it compares with, and its source."""
        base = f" (baseline {self.baseline:g})" if self.baseline is not None else ""
        how = "" if self.applies == "same" else ", a similar setup"
        return f"{self.metric} {self.value:g}{base} against {self.compared_with}{how}; {self.source} [{self.status}]"

    def against_baseline(self) -> Literal["better", "worse", "same"] | None:
        """The figure against its baseline in its metric's own sense (None: no baseline published)."""
        if self.baseline is None:
            return None
        if self.value == self.baseline:
            return "same"
        lower_wins = self.metric in LOWER_IS_BETTER
        return "better" if (self.value < self.baseline) == lower_wins else "worse"


@cache
def published_quality(data_dir: Path | None = None) -> tuple[PublishedQuality, ...]:
    """The shipped published figures; an entry naming an unknown model, stage or recipe fails loading."""
    root = DATA_DIR if data_dir is None else Path(data_dir)
    path = root / "quality_published.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
        figures = tuple(PublishedQuality.model_validate(f) for f in raw["figures"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValidationError) as exc:
        fix = "Fix the entry it names (schema: planner/catalog/quality.py)."
        raise CatalogError(f"cannot load {path}: {exc}. {fix}") from exc
    known_models, known_recipes = models(data_dir), recipes(data_dir)
    for f in figures:
        if f.model not in known_models or f.recipe not in known_recipes:
            raise CatalogError(f"{path}: {f.model}/{f.recipe} is not in the catalog; fix or remove that figure")
        if f.compared_model is not None and f.compared_model not in known_models:
            raise CatalogError(f"{path}: compared_model {f.compared_model} is not in the catalog; fix that figure")
        if f.stage not in known_recipes[f.recipe].stages:
            raise CatalogError(f"{path}: recipe {f.recipe} has no stage {f.stage}; fix that figure")
    return figures
