"""GPU families with their prices, models with their stages, recipes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from planner.api.schemas.common import Gib, LongText, Out, PricePerHour, ShortText, Strict, Tflops, Watts

Precision = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8"]
FactStatus = Literal["read", "secondary", "computed", "measured", "unverified"]


class PriceOut(Out):
    id: int
    price_per_hour: float
    provider: str
    offering: str
    source: str
    as_of: str
    status: str
    is_override: bool = Field(description="set by an operator; overrides come before the catalog's prices")


class FamilyOut(Out):
    id: str
    name: str
    vendor: str
    memory_gib: float
    memory_bandwidth_tbps: float | None
    tflops: dict[str, float]
    tdp_w: float | None
    nvml_patterns: list[str]
    compute_capability: str | None
    in_catalog: bool
    unverified: list[str]
    sources: list[str]
    price_per_hour: float | None = Field(
        description="the price a fleet gets by default: the first override, else the catalog's first on-demand "
        "price (the default offering kind), else its first"
    )
    prices: list[PriceOut]


class FamilyIn(Strict):
    """A family the catalog does not know (a lab card, a new rental offering): what placing work on it needs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Lab GPU 48G",
                    "vendor": "other",
                    "memory_gib": 48,
                    "memory_bandwidth_tbps": 0.96,
                    "tflops": {"bf16": 180, "fp16": 180},
                    "tdp_w": 300,
                    "nvml_patterns": ["Lab GPU 48"],
                }
            ]
        },
    )

    name: ShortText = Field(min_length=1)
    vendor: Literal["nvidia", "amd", "other"] = "other"
    memory_gib: Gib
    memory_bandwidth_tbps: Annotated[float, Field(gt=0, le=1e4, allow_inf_nan=False)] | None = None
    tflops: dict[Precision, Annotated[Tflops, Field(gt=0)]] = Field(default_factory=dict)
    tdp_w: Annotated[Watts, Field(gt=0)] | None = None
    nvml_patterns: list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]] = Field(
        default_factory=list, max_length=16, description="case-insensitive regular expressions on NVML's product name"
    )
    compute_capability: str | None = Field(default=None, pattern=r"^[0-9]{1,2}\.[0-9]{1,2}$")

    @field_validator("nvml_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        import re

        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} is not a regular expression: {exc}") from exc
        return patterns


class PriceIn(Strict):
    """An operator's price for a family (a negotiated rate, a reservation); it comes before the catalog's."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "price_per_hour": 2.85,
                    "provider": "acme-cloud",
                    "offering": "reserved-1y",
                    "source": "contract 2026-014",
                    "as_of": "2026-03-01",
                }
            ]
        },
    )

    price_per_hour: PricePerHour
    provider: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00]*$")
    offering: str = Field(default="override", min_length=1, max_length=100, pattern=r"^[^\x00]*$")
    source: LongText = ""
    as_of: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}(-[0-9]{2})?$", examples=["2026-03-01"])
    status: FactStatus = "read"


class StageOut(Out):
    stage: str
    position: int
    tflops_per_call: float | None
    components: list[dict[str, Any]]


class ModelOut(Out):
    id: str
    name: str
    architecture: str
    distilled_from: str | None
    default_steps: int
    height: int
    width: int
    guidance_scale: float
    cfg: bool
    text_tokens: int
    in_catalog: bool
    stages: list[StageOut]


class RecipeOut(Out):
    id: str
    description: str
    stages: list[str]
    options: dict[str, Any]
    in_catalog: bool
