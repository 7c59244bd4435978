"""GPU families (read; define non-catalog ones; override prices), models and recipes (read)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status

from planner.api.deps import AdminDep, AgentDep, SessionDep
from planner.api.schemas.catalog import FamilyIn, FamilyOut, ModelOut, PriceIn, PriceOut, RecipeOut
from planner.api.schemas.common import ERROR_RESPONSES, Id32, Ident, responses
from planner.crud import catalog as crud
from planner.db import models as m

router = APIRouter(prefix="/v1", tags=["catalog"], responses=ERROR_RESPONSES)

FamilyId = Annotated[Ident, Path(description="a GPU family id, e.g. h100-sxm-80gb")]


def family_out(fam: m.GpuFamily) -> FamilyOut:
    prices = [PriceOut.model_validate(p) for p in crud.ordered_prices(fam)]
    return FamilyOut.model_validate(
        {
            **{c: getattr(fam, c) for c in FamilyOut.model_fields if c not in ("prices", "price_per_hour")},
            "prices": prices,
            "price_per_hour": crud.default_price(fam),
        }
    )


@router.get("/gpu-families", response_model=list[FamilyOut], summary="GPU families with their prices")
def list_families(_: AgentDep, session: SessionDep) -> list[FamilyOut]:
    return [family_out(f) for f in crud.list_families(session)]


@router.get("/gpu-families/{family_id}", response_model=FamilyOut, summary="A GPU family", responses=responses(404))
def get_family(family_id: FamilyId, _: AgentDep, session: SessionDep) -> FamilyOut:
    return family_out(crud.get_family(session, family_id=family_id))


@router.put(
    "/gpu-families/{family_id}",
    response_model=FamilyOut,
    summary="Define (201) or update (200) a family the catalog does not have",
    responses=responses(409, extra={201: {"model": FamilyOut, "description": "defined"}}),
)
def put_family(family_id: FamilyId, _: AdminDep, session: SessionDep, response: Response, body: FamilyIn) -> FamilyOut:
    fam, created = crud.put_family(session, family_id=family_id, data=body)
    session.commit()
    if created:
        response.status_code = status.HTTP_201_CREATED
    return family_out(fam)


@router.post(
    "/gpu-families/{family_id}/prices",
    status_code=status.HTTP_201_CREATED,
    response_model=FamilyOut,
    summary="Override a family's price: the new price comes first",
    responses=responses(404, 409),
)
def add_price(family_id: FamilyId, _: AdminDep, session: SessionDep, body: PriceIn) -> FamilyOut:
    fam = crud.get_family(session, family_id=family_id)
    crud.add_price(session, family=fam, data=body)
    session.commit()
    return family_out(crud.get_family(session, family_id=family_id))


@router.delete(
    "/gpu-families/{family_id}/prices/{price_id}",
    response_model=FamilyOut,
    summary="Remove a price override (catalog prices stay)",
    responses=responses(404, 409),
)
def delete_price(family_id: FamilyId, price_id: Annotated[Id32, Path()], _: AdminDep, session: SessionDep) -> FamilyOut:
    fam = crud.get_family(session, family_id=family_id)
    crud.delete_price(session, family=fam, price_id=price_id)
    session.commit()
    return family_out(crud.get_family(session, family_id=family_id))


@router.get("/models", response_model=list[ModelOut], summary="Models with their ordered stages")
def list_models(_: AgentDep, session: SessionDep) -> list[ModelOut]:
    return [ModelOut.model_validate(x) for x in crud.list_models(session)]


@router.get("/models/{model_id}", response_model=ModelOut, summary="A model", responses=responses(404))
def get_model(model_id: Annotated[Ident, Path()], _: AgentDep, session: SessionDep) -> ModelOut:
    return ModelOut.model_validate(crud.get_model(session, model_id=model_id))


@router.get("/recipes", response_model=list[RecipeOut], summary="Recipes (catalog and imported)")
def list_recipes(
    _: AgentDep,
    session: SessionDep,
    stage: Annotated[Literal["text_encoder", "denoiser", "vae_decoder"] | None, Query()] = None,
) -> list[RecipeOut]:
    return [RecipeOut.model_validate(r) for r in crud.list_recipes(session, stage=stage)]


@router.get("/recipes/{recipe_id}", response_model=RecipeOut, summary="A recipe", responses=responses(404))
def get_recipe(recipe_id: Annotated[Ident, Path()], _: AgentDep, session: SessionDep) -> RecipeOut:
    return RecipeOut.model_validate(crud.get_recipe(session, recipe_id=recipe_id))
