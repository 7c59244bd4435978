"""The catalogs (GPU families, models, recipes) shipped as data files."""

from planner.catalog.loader import (
    component_config,
    gpu_families,
    known_model,
    match_family,
    models,
    recipes,
    scheduler_config,
)
from planner.catalog.schema import STAGES, Component, GpuFamily, ModelSpec, Price, Recipe, StageSpec

__all__ = [
    "STAGES",
    "Component",
    "GpuFamily",
    "ModelSpec",
    "Price",
    "Recipe",
    "StageSpec",
    "component_config",
    "gpu_families",
    "known_model",
    "match_family",
    "models",
    "recipes",
    "scheduler_config",
]
