"""Load the catalogs shipped as package data, validated once and cached.

Every loader takes an optional `data_dir` (a folder holding `gpu_families.yaml`, `models.yaml`,
`recipes.yaml` and `configs/`) so tests and operators can point it at another copy; by default it reads the
package's own `data/`. Results are cached per folder.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from planner.catalog.schema import Component, GpuFamily, ModelSpec, Recipe
from planner.core.errors import CatalogError, InputError
from planner.core.yamlsafe import read_bounded, safe_load_bounded

T = TypeVar("T", GpuFamily, ModelSpec, Recipe)

DATA_DIR = Path(str(resources.files("planner.catalog") / "data"))
CONFIGS_DIR = DATA_DIR / "configs"

_FIX = "Fix the named entries in that file (the schema is planner/catalog/schema.py) and load again."


def _where(key: str, index: int, item: object) -> str:
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{key}[{index}]" + (f" (id {ident!r})" if ident is not None else "")


def _load_list(data_dir: Path, filename: str, kind: type[T], key: str) -> dict[str, T]:
    """Validate each entry under `key:` of a YAML file; errors name the file, the entry and the field."""
    path = data_dir / filename
    try:
        raw = safe_load_bounded(read_bounded(path, what="catalog file"), name=str(path))
    except (OSError, yaml.YAMLError, InputError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}. Check the file exists and is YAML.") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get(key), list):
        raise CatalogError(f"catalog {path} must be a mapping with a list under {key!r}. {_FIX}")
    problems: list[str] = []
    out: dict[str, T] = {}
    for index, item in enumerate(raw[key]):
        try:
            parsed = kind.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(part) for part in err["loc"]) or "(entry)"
                problems.append(f"  {_where(key, index, item)} field {field}: {err['msg']}")
            continue
        ident = parsed.id
        if ident in out:
            problems.append(f"  {_where(key, index, item)} field id: {ident!r} is defined twice")
            continue
        out[ident] = parsed
    if problems:
        raise CatalogError(f"catalog {path} is invalid:\n" + "\n".join(problems) + f"\n{_FIX}")
    return out


def _dir(data_dir: Path | None) -> Path:
    return DATA_DIR if data_dir is None else Path(data_dir)


@cache
def gpu_families(data_dir: Path | None = None) -> dict[str, GpuFamily]:
    """The GPU family catalog, keyed by family id (`h100-sxm-80gb`)."""
    return _load_list(_dir(data_dir), "gpu_families.yaml", GpuFamily, "families")


@cache
def models(data_dir: Path | None = None) -> dict[str, ModelSpec]:
    """The model catalog, keyed by model id (`sdxl`); every config file it names must exist."""
    root = _dir(data_dir)
    path = root / "models.yaml"
    found = _load_list(root, "models.yaml", ModelSpec, "models")
    problems: list[str] = []
    for spec in found.values():
        if spec.distilled_from is not None and spec.distilled_from not in found:
            problems.append(f"  model {spec.id!r} field distilled_from: no model {spec.distilled_from!r}")
        if spec.scheduler is not None and not (root / "configs" / spec.scheduler).is_file():
            problems.append(
                f"  model {spec.id!r} field scheduler: {spec.scheduler} is not a file under {root / 'configs'}"
            )
        groups = [(f"stage {s.name}", s.components) for s in spec.stages]
        if spec.tiny_vae is not None:
            groups.append(("tiny_vae", spec.tiny_vae.components))
        for where, components in groups:
            for comp in components:
                for field, rel in (("config", comp.config), ("tiny_config", comp.tiny_config)):
                    if not (root / "configs" / rel).is_file():
                        problems.append(
                            f"  model {spec.id!r} {where} component {comp.name!r} field {field}: "
                            f"{rel} is not a file under {root / 'configs'}"
                        )
    if problems:
        raise CatalogError(f"catalog {path} is invalid:\n" + "\n".join(problems) + f"\n{_FIX}")
    return found


@cache
def recipes(data_dir: Path | None = None) -> dict[str, Recipe]:
    """The recipe catalog, keyed by recipe id (`bf16`, `fp8-compile`)."""
    return _load_list(_dir(data_dir), "recipes.yaml", Recipe, "recipes")


def component_config(component: Component, *, tiny: bool = False, data_dir: Path | None = None) -> dict[str, Any]:
    """The architecture config of a component as a dict, metadata keys (`_...`) kept for the builders."""
    rel = component.tiny_config if tiny else component.config
    return _read_config(_dir(data_dir) / "configs" / rel, f"config {{path}} of component {component.name!r}")


def _read_config(path: Path, what: str) -> dict[str, Any]:
    """A shipped JSON config; `what` names it in the error (`{path}` is filled in)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read {what.format(path=path)}: {exc}. Restore it or fix its JSON.") from exc
    return data


def scheduler_config(spec: ModelSpec, data_dir: Path | None = None) -> dict[str, Any]:
    """The model's published scheduler config (`_class_name` the diffusers class; other `_`-keys metadata)."""
    if spec.scheduler is None:
        raise CatalogError(f"model {spec.id!r} names no scheduler config: add `scheduler:` to its models.yaml entry")
    return _read_config(_dir(data_dir) / "configs" / spec.scheduler, f"scheduler config {{path}} of model {spec.id!r}")


def match_family(product_name: str, data_dir: Path | None = None) -> GpuFamily | None:
    """The catalog family whose NVML patterns match a product name; None if none does (never a guess)."""
    hits = [
        fam
        for fam in gpu_families(data_dir).values()
        if any(re.search(p, product_name, flags=re.IGNORECASE) for p in fam.nvml_patterns)
    ]
    if len(hits) == 1:
        return hits[0]
    return None


def known_model(model_id: str, data_dir: Path | None = None) -> ModelSpec:
    """A model by id, or an error that lists the known ones."""
    found = models(data_dir)
    if model_id not in found:
        raise CatalogError(
            f"unknown model {model_id!r}; known models: {', '.join(sorted(found))}. Use one of those ids "
            "or add the model to models.yaml."
        )
    return found[model_id]
