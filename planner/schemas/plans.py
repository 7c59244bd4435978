"""Plans: a solver answer (contract 3 JSON) stored with its groups and routing table; comparisons; events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.core import solver_defaults
from planner.schemas.common import (
    Ident,
    JsonObject,
    LongText,
    Money,
    Name,
    Out,
    Strict,
    check_json,
)

Stage = Literal["text_encoder", "denoiser", "vae_decoder"]
STAGE_ORDER = ("text_encoder", "denoiser", "vae_decoder")
Replicas = Annotated[int, Field(ge=0, le=1_000_000, description="whole GPUs, as the CLI prints them")]
Throughput = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]

EXAMPLE_RESULT: dict[str, Any] = {
    "total_cost_per_hour": 12.54,
    "gpus": {"h100-sxm-80gb": 3},
    "workloads": [
        {
            "name": "sdxl-prod",
            "model": "sdxl",
            "topology": "[te+dn+vae]",
            "cost_per_hour": 12.54,
            "cost_per_image": 0.000697,
            "groups": [
                {
                    "stages": ["text_encoder", "denoiser", "vae_decoder"],
                    "family": "h100-sxm-80gb",
                    "recipes": {"text_encoder": "bf16", "denoiser": "fp8-compile", "vae_decoder": "bf16"},
                    "batch": 4,
                    "replicas": 3,
                    "throughput": 6.3,
                }
            ],
        }
    ],
}


class _Open(BaseModel):
    """Contract 3 welcomes extra keys: they are kept in the stored result."""

    model_config = ConfigDict(extra="allow")


class PlanGroupResult(_Open):
    stages: list[Stage] = Field(min_length=1, max_length=3)
    family: Ident
    recipes: dict[Stage, Ident]
    batch: int = Field(ge=1, le=4096)
    replicas: Replicas
    throughput: Throughput = Field(description="images/s of the group's replicas together")
    model: Ident | None = Field(default=None, description="extra: the model, when the workload's is not given")
    utilization: Annotated[float, Field(ge=0, le=1e3, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> PlanGroupResult:
        idx = [STAGE_ORDER.index(s) for s in self.stages]
        if idx != sorted(set(idx)) or idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError("stages: must be consecutive pipeline stages in order")
        missing = [s for s in self.stages if s not in self.recipes]
        if missing:
            raise ValueError(f"recipes: no recipe for stage {missing[0]}")
        extra = [s for s in self.recipes if s not in self.stages]
        if extra:
            raise ValueError(f"recipes: stage {extra[0]} is not one of this group's stages")
        return self


class PlanWorkloadResult(_Open):
    name: Name
    model: Ident | None = Field(default=None, description="extra: the model chosen for this workload")
    topology: Annotated[str, Field(max_length=200)] | list[list[Stage]]
    cost_per_hour: Money
    cost_per_image: Money
    groups: list[PlanGroupResult] = Field(max_length=64)


class PlanResult(_Open):
    """Contract 3: what `planner recommend --format json` prints; extra keys are kept."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE_RESULT]})

    total_cost_per_hour: Money
    gpus: dict[Ident, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(
        max_length=64, description="GPUs per family: whole GPUs, as the CLI prints them"
    )
    workloads: list[PlanWorkloadResult] = Field(max_length=256)
    feasible: bool = True

    @model_validator(mode="after")
    def _distinct(self) -> PlanResult:
        names = [w.name for w in self.workloads]
        if len(set(names)) != len(names):
            raise ValueError("workloads: a workload is listed twice")
        check_json(self.model_extra or {})
        for w in self.workloads:
            check_json(w.model_extra or {})
            for g in w.groups:
                check_json(g.model_extra or {})
        return self


class PlanIn(Strict):
    """A plan computed elsewhere (e.g. `planner recommend --format json`), stored as a draft."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"result": EXAMPLE_RESULT}]})

    result: PlanResult
    inputs: JsonObject = Field(default_factory=dict, description="what the plan was computed from (kept as is)")
    activate: bool = Field(default=False, description="activate it at once")


class SolveIn(Strict):
    """Options for solving a fleet's workloads against the stored measurements."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"time_limit_s": 30, "activate": False}]})

    time_limit_s: float = Field(default=solver_defaults.TIME_LIMIT_S, gt=0, le=3600, allow_inf_nan=False)
    mip_rel_gap: float = Field(default=solver_defaults.MIP_REL_GAP, ge=0, le=0.5, allow_inf_nan=False)
    share_gpus: bool = solver_defaults.SHARE_GPUS
    allow_estimates: bool = Field(
        default=False,
        description="also plan on families no agent measured (roofline transfers), labelled; default: measured only",
    )
    activate: bool = False
    from_active: bool = Field(
        default=False,
        description="re-plan close to the fleet's plan in force: each replica moved must save move_cost_per_hour "
        "(the result's `replan` says what moved and what a fresh solve would have); no plan in force: a fresh solve",
    )
    move_cost_per_hour: float = Field(default=0.5, ge=0, le=1e6, allow_inf_nan=False)


class PlanGroupOut(Out):
    workload: str = Field(validation_alias="workload_name")
    group_index: int = Field(description="the group's position in the plan result's `groups` of its workload")
    model: str = Field(validation_alias="model_id")
    stages: list[str]
    family: str = Field(validation_alias="gpu_family_id")
    recipes: dict[str, str]
    batch: int
    replicas: int
    throughput: float
    utilization: float | None


class PlanEventOut(Out):
    id: int
    kind: str
    message: str
    data: dict[str, Any]
    created_at: datetime


PlanStatus = Literal["draft", "active", "stale", "superseded"]


class PlanSummary(Out):
    id: int
    fleet_id: int
    status: PlanStatus
    feasible: bool
    total_cost_per_hour: float
    created_at: datetime
    activated_at: datetime | None
    stale_reason: str | None


class PlanOut(PlanSummary):
    result: dict[str, Any]
    inputs: dict[str, Any]
    groups: list[PlanGroupOut]
    events: list[PlanEventOut]


class PlanEventIn(Strict):
    """Something that happened to a plan. `drift`: achieved throughput left tolerance; the plan becomes stale."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "drift",
                    "message": "pool sdxl-prod.0.h100-sxm-80gb achieved 4.1 images/s, planned 6.3 (-35%)",
                    "data": {"pool": "sdxl-prod.0.h100-sxm-80gb", "achieved": 4.1, "planned": 6.3},
                }
            ]
        },
    )

    kind: Literal["drift", "note"]
    message: LongText = Field(min_length=1)
    data: JsonObject = Field(default_factory=dict)


class Delta(BaseModel):
    base: float | None
    other: float | None
    delta: float | None = Field(description="other - base; null when either is absent")


class WorkloadComparison(BaseModel):
    name: str
    presence: Literal["both", "base", "other"]
    cost_per_hour: Delta
    cost_per_image: Delta
    topology: dict[str, Any] = Field(description="base and other topology")
    groups_changed: bool = Field(description="families, recipes, batches or replicas differ")
    changes: list[str] = Field(description="what differs, in words")


class PlanComparison(BaseModel):
    base_plan_id: int
    other_plan_id: int
    total_cost_per_hour: Delta
    ratio: float | None = Field(description="other / base total cost; null when base is 0")
    gpus: dict[str, Delta]
    workloads: list[WorkloadComparison]


class RoutingPool(Out):
    pool: str = Field(
        description="queue name: <workload>.<group_index>.<family>, then .<n> for a family's n-th pool of one group"
    )
    workload: str = Field(validation_alias="workload_name")
    group_index: int = Field(
        description="the step of the workload's topology this pool serves (0 first); pools of one step are "
        "alternatives, a job takes one of them"
    )
    model: str = Field(validation_alias="model_id")
    stages: list[str]
    family: str = Field(validation_alias="gpu_family_id")
    recipes: dict[str, str]
    batch: int
    replicas: int
    capacity: float = Field(description="images/s the pool's replicas carry together")
    weight: float = Field(description="share of the workload's traffic for these stages this pool takes")


class RoutingTable(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "fleet_id": 1,
                    "plan_id": 7,
                    "version": 7,
                    "status": "active",
                    "activated_at": "2026-03-14T10:30:00Z",
                    "pools": [
                        {
                            "pool": "sdxl-prod.0.h100-sxm-80gb",
                            "workload": "sdxl-prod",
                            "group_index": 0,
                            "model": "sdxl",
                            "stages": ["text_encoder", "denoiser", "vae_decoder"],
                            "family": "h100-sxm-80gb",
                            "recipes": {"text_encoder": "bf16", "denoiser": "fp8-compile", "vae_decoder": "bf16"},
                            "batch": 4,
                            "replicas": 3,
                            "capacity": 6.3,
                            "weight": 1.0,
                        }
                    ],
                }
            ]
        }
    )

    fleet_id: int
    plan_id: int
    version: int = Field(description="increases with every activation: the plan id")
    status: Literal["active", "stale"] = Field(description="stale: drift was reported; still the plan in force")
    activated_at: datetime | None
    pools: list[RoutingPool]


class SolveOut(BaseModel):
    plan: PlanOut
    solve_time_s: float
