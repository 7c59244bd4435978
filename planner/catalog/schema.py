"""Typed shapes of the catalog data files (GPU families, models, recipes).

The catalogs are data, not code: `planner/catalog/data/*.yaml` hold them and these classes refuse a file that
is malformed, so a typo in a price or a stage name fails at load time with the file and field named.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

STAGES: tuple[str, ...] = ("text_encoder", "denoiser", "vae_decoder")
"""The ordered stages of every text-to-image pipeline (DESIGN.md vocabulary)."""

STAGE_ALIASES: dict[str, str] = {"te": "text_encoder", "dn": "denoiser", "vae": "vae_decoder"}
"""Short stage names the CLI accepts wherever it takes a stage (the topology's `[te+dn][vae]`)."""

Stage = Literal["text_encoder", "denoiser", "vae_decoder"]
Precision = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8"]
FactStatus = Literal["read", "secondary", "computed", "measured", "unverified"]

ID_PATTERN = r"^[a-z0-9][a-z0-9.+_-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OFFERING_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("serverless", "serverless"),
    ("spot", "spot"),
    ("on-demand", "on-demand"),
    ("on demand", "on-demand"),
    ("reserved", "reserved"),
    ("committed", "reserved"),
)


def offering_kind(offering: str) -> str | None:
    """The offering kind an offering's text names first (`pod spot (...; lists $2.69 as on-demand)` is spot)."""
    text = offering.lower()
    hits = [(text.find(word), kind) for word, kind in OFFERING_KEYWORDS if word in text]
    return min(hits)[1] if hits else None


class Price(_Strict):
    """One price of one family: an offering at a provider, with where and when it was read."""

    price_per_hour: PositiveFloat
    provider: str
    offering: str = Field(description="on-demand, spot, serverless, reserved, ...")
    source: str
    as_of: str = Field(description="date or month the price was read, ISO format (2026-03 or 2026-03-14)")
    status: FactStatus
    kind: Literal["on-demand", "spot", "serverless", "reserved"] | None = Field(
        default=None, description="the offering kind; default: the first kind the offering's text names"
    )
    region: str | None = Field(default=None, description="where the price applies, when the source says")
    override: bool = Field(default=False, description="an operator's price (the store's override): used first")

    @property
    def offering_kind(self) -> str | None:
        return self.kind or offering_kind(self.offering)


class GpuFamily(_Strict):
    """A GPU family: what the planner needs to know of a card it may rent."""

    id: str = Field(pattern=ID_PATTERN)
    name: str
    vendor: Literal["nvidia", "amd", "other"]
    memory_gib: PositiveFloat = Field(description="device memory the runtime can use, GiB")
    memory_bandwidth_tbps: PositiveFloat = Field(description="device memory bandwidth, TB/s (1e12 B/s)")
    tflops: dict[Precision, PositiveFloat] = Field(
        description="dense (no 2:4 sparsity) tensor throughput per precision; absent = not supported"
    )
    tdp_w: PositiveFloat
    nvml_patterns: list[str] = Field(
        default_factory=list,
        description="case-insensitive regular expressions matched against NVML's product name",
    )
    nvml_examples: list[str] = Field(
        default_factory=list,
        description="product names its patterns must match (and no other family's do): tests check them",
    )
    compute_capability: str | None = None
    prices: list[Price] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    unverified: list[str] = Field(
        default_factory=list,
        description="fields whose values no source confirms (`tflops.fp8` names one precision)",
    )
    notes: str = Field(default="", description="how values were derived (memory_gib: NVML or datasheet)")

    @field_validator("nvml_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"nvml pattern {pattern!r} is not a valid regex: {exc}") from exc
        return patterns

    @model_validator(mode="after")
    def _unverified_names_fields(self) -> GpuFamily:
        for name in self.unverified:
            field, _, precision = name.partition(".")
            known = field in type(self).model_fields and (
                not precision or (field == "tflops" and precision in self.tflops)
            )
            if not known:
                raise ValueError(
                    f"unverified names {name!r}: neither a field nor tflops.<a precision listed in tflops>"
                )
        return self

    @property
    def default_price(self) -> Price | None:
        """The first price listed (an operator's override, else the catalog's first)."""
        return self.prices[0] if self.prices else None

    def price_for(self, kind: str) -> Price | None:
        """The price a plan uses for an offering kind: an operator's override whatever its kind (it is the
        fleet's own price), else the first catalog price of that kind; None when the family has neither."""
        for price in self.prices:
            if price.override:
                return price
        return next((p for p in self.prices if p.offering_kind == kind), None)

    def offering_kinds(self) -> list[str]:
        """The offering kinds the family has a price for, in catalog order."""
        return list(dict.fromkeys(k for p in self.prices if (k := p.offering_kind) is not None))

    def peak_tflops(self, precision: str) -> float | None:
        """Dense peak for a precision, falling back the way the hardware does (fp32 matmul runs as tf32)."""
        table: dict[str, float] = {str(k): v for k, v in self.tflops.items()}
        value = table.get(precision)
        if value is None and precision == "fp32":
            value = table.get("tf32")
        return value


class Component(_Strict):
    """One module of a stage, built from its architecture config (diffusers or transformers class)."""

    name: str = Field(description="pipeline component name, e.g. unet, transformer, text_encoder_2, vae")
    library: Literal["diffusers", "transformers"]
    class_name: str
    config: str = Field(description="path of the architecture config JSON, relative to catalog/data/configs")
    tiny_config: str = Field(description="path of a tiny CPU config of the same class, for tests")
    params: PositiveInt | None = Field(default=None, description="parameter count at the full config")
    params_status: FactStatus = Field(
        default="computed", description="provenance of `params`; computed = counted by building the config"
    )
    status: FactStatus = Field(default="unverified", description="provenance of the architecture config file")
    source: str = ""


class StageSpec(_Strict):
    name: Stage
    components: list[Component]
    tflops_per_call: float | None = Field(
        default=None,
        ge=0,
        description="FLOPs (1e12) of one call at batch 1 and the model's default resolution, CFG not applied",
    )
    flops_source: str = ""


class StageVariant(_Strict):
    """Components that replace a stage's own when a recipe asks for them (`vae: tiny` -> AutoencoderTiny).

    The variant has the stage's contract (same inputs and output shapes) but other weights and cost, so it
    carries its own FLOPs. Models without a variant cannot run a recipe that needs it.
    """

    components: list[Component]
    tflops_per_call: float | None = Field(
        default=None,
        ge=0,
        description="FLOPs (1e12) of one call at batch 1 and the model's default resolution",
    )
    flops_source: str = ""


class TinyRun(_Strict):
    """Shapes of a CPU smoke run built from the components' `tiny_config`s.

    The tiny configs keep the real pipeline's contracts (latent channels, VAE scale factor, packing, the
    denoiser's text width = the text encoders' hidden size), only narrower, so these few numbers are all a
    stage runner needs beyond the model's own fields.
    """

    height: PositiveInt = 64
    width: PositiveInt = 64
    text_tokens: PositiveInt = Field(default=16, description="text sequence length of the tiny run")


class ModelSpec(_Strict):
    """A pipeline (`sdxl`, `flux-dev`, ...): its stages in order and its generation defaults."""

    id: str = Field(pattern=ID_PATTERN)
    name: str
    architecture: Literal["sd", "sdxl", "flux", "qwen-image", "z-image"]
    distilled_from: str | None = None
    default_steps: PositiveInt
    height: PositiveInt
    width: PositiveInt
    guidance_scale: float = Field(ge=0)
    cfg: bool = Field(description="classifier-free guidance: the denoiser runs a doubled batch each step")
    text_tokens: PositiveInt = Field(description="text sequence length the denoiser attends to")
    latent_channels: PositiveInt
    vae_scale_factor: PositiveInt = 8
    stages: list[StageSpec]
    weights_repo: str = Field(default="", description="where the real weights are published (not fetched)")
    scheduler: str | None = Field(
        default=None,
        description="path of the model's published scheduler config (diffusers scheduler_config.json, `_class_name` "
        "names the class), relative to catalog/data/configs: what a pipeline on random weights samples with",
    )
    notes: str = ""
    tiny_vae: StageVariant | None = Field(
        default=None,
        description="the AutoencoderTiny (TAESD family) of a `vae: tiny` recipe; None = none exists",
    )
    tiny: TinyRun = Field(default_factory=TinyRun, description="shapes of a CPU run of the tiny configs")

    @model_validator(mode="after")
    def _stages_in_order(self) -> ModelSpec:
        names = [s.name for s in self.stages]
        if names != [s for s in STAGES if s in names] or len(set(names)) != len(names):
            raise ValueError(f"stages must be a subset of {STAGES} in that order, got {names}")
        return self

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"model {self.id!r} has no stage {name!r}; its stages are {[s.name for s in self.stages]}")

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


class Recipe(_Strict):
    """A named set of optimizations applied to one stage. Recipes are data (DESIGN.md)."""

    id: str = Field(pattern=ID_PATTERN)
    description: str = ""
    stages: list[Stage] = Field(description="the stages this recipe can apply to")
    precision: Precision = "bf16"
    quantization: Literal["none", "fp8-rowwise", "fp8-tensorwise", "int8-dynamic", "int8-weight-only"] = "none"
    compile: Literal["none", "default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"] = "none"
    compile_scope: Literal["whole", "regional"] = "regional"
    attention: Literal["default", "math", "efficient", "flash", "cudnn"] = "default"
    cache: Literal["none", "first-block-cache"] = "none"
    cache_threshold: float | None = Field(default=None, gt=0)
    vae: Literal["full", "tiled", "tiny"] = "full"
    fused_qkv: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    fast_gemm: bool = Field(
        default=False,
        description="fp8 GEMMs with cuBLASLt's fast accumulation and the bias in the GEMM's epilogue (torchao's "
        "inference default); fp8 quantization only",
    )
    data_dependent: bool = Field(
        default=False, description="its speed depends on activations (step caches): synthetic weights mislead"
    )
    reference: bool = Field(default=False, description="the recipe quality drift is measured against")

    @model_validator(mode="after")
    def _fast_gemm_is_fp8(self) -> Recipe:
        if self.fast_gemm and not self.quantization.startswith("fp8"):
            raise ValueError(
                f"recipe {self.id!r}: fast_gemm is an option of the fp8 GEMMs, but its quantization is "
                f"{self.quantization!r}; set quantization to fp8-rowwise or drop fast_gemm"
            )
        return self
