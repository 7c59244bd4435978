"""Load the catalogs shipped as package data, validated once and cached."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from planner.catalog.schema import Component, GpuFamily, ModelSpec, Recipe
from planner.core.errors import CatalogError

T = TypeVar("T", bound=BaseModel)

DATA_DIR = Path(str(resources.files("planner.catalog") / "data"))
CONFIGS_DIR = DATA_DIR / "configs"


def _load_list(filename: str, kind: type[T], key: str) -> dict[str, T]:
    path = DATA_DIR / filename
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get(key), list):
        raise CatalogError(f"catalog {path} must be a mapping with a list under {key!r}")
    try:
        items = TypeAdapter(list[kind]).validate_python(raw[key])  # type: ignore[valid-type]
    except ValidationError as exc:
        raise CatalogError(f"catalog {path} is invalid:\n{exc}") from exc
    out: dict[str, T] = {}
    for item in items:
        ident = item.id  # type: ignore[attr-defined]
        if ident in out:
            raise CatalogError(f"catalog {path} defines {ident!r} twice")
        out[ident] = item
    return out


@cache
def gpu_families() -> dict[str, GpuFamily]:
    """The GPU family catalog, keyed by family id (`h100-sxm-80gb`)."""
    return _load_list("gpu_families.yaml", GpuFamily, "families")


@cache
def models() -> dict[str, ModelSpec]:
    """The model catalog, keyed by model id (`sdxl`)."""
    found = _load_list("models.yaml", ModelSpec, "models")
    for spec in found.values():
        if spec.distilled_from is not None and spec.distilled_from not in found:
            raise CatalogError(f"model {spec.id!r} is distilled from unknown model {spec.distilled_from!r}")
        for stage in spec.stages:
            for comp in stage.components:
                for rel in (comp.config, comp.tiny_config):
                    if not (CONFIGS_DIR / rel).is_file():
                        raise CatalogError(f"model {spec.id!r} stage {stage.name}: config {rel} is missing")
    return found


@cache
def recipes() -> dict[str, Recipe]:
    """The recipe catalog, keyed by recipe id (`bf16`, `fp8-compile`)."""
    return _load_list("recipes.yaml", Recipe, "recipes")


def component_config(component: Component, *, tiny: bool = False) -> dict[str, Any]:
    """The architecture config of a component as a dict, metadata keys (`_...`) kept for the builders."""
    rel = component.tiny_config if tiny else component.config
    data: dict[str, Any] = json.loads((CONFIGS_DIR / rel).read_text())
    return data


def match_family(product_name: str) -> GpuFamily | None:
    """The catalog family whose NVML patterns match a product name; None if none does (never a guess)."""
    hits = [
        fam
        for fam in gpu_families().values()
        if any(re.search(p, product_name, flags=re.IGNORECASE) for p in fam.nvml_patterns)
    ]
    if len(hits) == 1:
        return hits[0]
    return None


def known_model(model_id: str) -> ModelSpec:
    """A model by id, or an error that lists the known ones."""
    found = models()
    if model_id not in found:
        raise CatalogError(f"unknown model {model_id!r}; known models: {', '.join(sorted(found))}")
    return found[model_id]
