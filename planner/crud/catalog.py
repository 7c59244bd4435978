"""GPU families and their prices, models, recipes: the catalogs as the store holds them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from planner.api.schemas.catalog import FamilyIn, PriceIn
from planner.catalog.schema import offering_kind
from planner.core.errors import ConflictError, NotFoundError
from planner.db import models as m
from planner.scenario import DEFAULT_OFFERING


def ordered_prices(family: m.GpuFamily) -> list[m.GpuPrice]:
    """Overrides first (newest first), then the catalog's prices in catalog order."""
    overrides = sorted((p for p in family.prices if p.is_override), key=lambda p: (-p.position, -p.id))
    catalog = sorted((p for p in family.prices if not p.is_override), key=lambda p: (p.position, p.id))
    return overrides + catalog


def default_price(family: m.GpuFamily) -> float | None:
    """A fleet entry's price when none is given: an operator's override, else the first price of the default
    offering kind (on-demand: docs/recommend.md, "Prices"), else the first listed."""
    prices = ordered_prices(family)
    if not prices:
        return None
    if prices[0].is_override:
        return prices[0].price_per_hour
    kind = next((p for p in prices if offering_kind(p.offering) == DEFAULT_OFFERING), prices[0])
    return kind.price_per_hour


def list_families(session: Session) -> Sequence[m.GpuFamily]:
    return session.scalars(select(m.GpuFamily).options(selectinload(m.GpuFamily.prices)).order_by(m.GpuFamily.id)).all()


def get_family(session: Session, *, family_id: str) -> m.GpuFamily:
    fam = session.scalar(
        select(m.GpuFamily).where(m.GpuFamily.id == family_id).options(selectinload(m.GpuFamily.prices))
    )
    if fam is None:
        raise NotFoundError("GPU family", family_id, hint="list families with GET /v1/gpu-families")
    return fam


def put_family(session: Session, *, family_id: str, data: FamilyIn) -> tuple[m.GpuFamily, bool]:
    """Define or update a family the catalog does not know; (family, created). Catalog families are data: 409."""
    fam = session.get(m.GpuFamily, family_id)
    created = fam is None
    if fam is None:
        fam = m.GpuFamily(id=family_id, in_catalog=False)
        session.add(fam)
    elif fam.in_catalog:
        raise ConflictError(
            f"GPU family {family_id!r} comes from the catalog and is rewritten by seeding; "
            "override its price (POST /v1/gpu-families/{id}/prices) or a fleet's memory_gib instead"
        )
    fam.name = data.name
    fam.vendor = data.vendor
    fam.memory_gib = data.memory_gib
    fam.memory_bandwidth_tbps = data.memory_bandwidth_tbps
    fam.tflops = {str(k): v for k, v in data.tflops.items()}
    fam.tdp_w = data.tdp_w
    fam.nvml_patterns = list(data.nvml_patterns)
    fam.compute_capability = data.compute_capability
    fam.unverified = []
    fam.sources = []
    session.flush()
    return get_family(session, family_id=family_id), created


def add_price(session: Session, *, family: m.GpuFamily, data: PriceIn) -> m.GpuPrice:
    """An operator's price: it comes first, so fleets that name no price get it."""
    top = session.scalar(
        select(func.max(m.GpuPrice.position)).where(
            m.GpuPrice.gpu_family_id == family.id, m.GpuPrice.is_override.is_(True)
        )
    )
    clash = session.scalar(
        select(m.GpuPrice).where(
            m.GpuPrice.gpu_family_id == family.id,
            m.GpuPrice.provider == data.provider,
            m.GpuPrice.offering == data.offering,
            m.GpuPrice.as_of == data.as_of,
        )
    )
    if clash is not None:
        raise ConflictError(
            f"family {family.id!r} already has a price from {data.provider}/{data.offering} as of {data.as_of}; "
            "delete it first or give another as_of"
        )
    price = m.GpuPrice(
        gpu_family_id=family.id,
        price_per_hour=data.price_per_hour,
        provider=data.provider,
        offering=data.offering,
        source=data.source,
        as_of=data.as_of,
        status=data.status,
        is_override=True,
        position=(top or 0) + 1,
    )
    session.add(price)
    session.flush()
    session.refresh(family)
    return price


def delete_price(session: Session, *, family: m.GpuFamily, price_id: int) -> None:
    price = session.get(m.GpuPrice, price_id)
    if price is None or price.gpu_family_id != family.id:
        raise NotFoundError("price", price_id, hint=f"see GET /v1/gpu-families/{family.id}")
    if not price.is_override:
        raise ConflictError(f"price {price_id} comes from the catalog; add an override instead of deleting it")
    session.delete(price)
    session.flush()
    session.refresh(family)


def list_models(session: Session) -> Sequence[m.Model]:
    return session.scalars(select(m.Model).options(selectinload(m.Model.stages)).order_by(m.Model.id)).all()


def get_model(session: Session, *, model_id: str) -> m.Model:
    model = session.scalar(select(m.Model).where(m.Model.id == model_id).options(selectinload(m.Model.stages)))
    if model is None:
        raise NotFoundError("model", model_id, hint="list models with GET /v1/models")
    return model


def list_recipes(session: Session, *, stage: str | None = None) -> Sequence[m.Recipe]:
    recipes = session.scalars(select(m.Recipe).order_by(m.Recipe.id)).all()
    if stage is not None:
        return [r for r in recipes if stage in r.stages]
    return recipes


def get_recipe(session: Session, *, recipe_id: str) -> m.Recipe:
    recipe = session.get(m.Recipe, recipe_id)
    if recipe is None:
        raise NotFoundError("recipe", recipe_id, hint="list recipes with GET /v1/recipes")
    return recipe
