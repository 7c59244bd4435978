"""Build a model's stage modules from the catalog and feed them the inputs the real pipeline would.

Weights are real when a local diffusers-format folder is given (`<weights_dir>/<component name>/`), synthetic
otherwise: the module is built from its architecture config with random initialisation, directly on the
target device and in the target dtype (so a 12 B-parameter transformer builds in seconds on a GPU). Compute
and memory are then the real model's; quality and data-dependent behaviour are not (DESIGN.md).

A stage call is what one serving step runs: the text encoder(s) on a batch of prompts, one denoiser step
(a CFG model's call runs 2 x batch latents), or one VAE decode of a batch of latents. Inputs are random
tensors of the shapes each pipeline in diffusers 0.42 passes; the architecture-specific glue (packing, ids,
conditioning widths) lives in the `_Arch` adapters below.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from planner.catalog import Component, ModelSpec, component_config

QWEN_TEMPLATE_TOKENS = 34
"""Qwen-Image wraps the prompt in a chat template whose first 34 tokens are dropped after encoding."""
ZIMAGE_TEXT_PAD = 512
"""Z-Image's tokenizer pads every prompt to 512 tokens, so its text encoder always runs 512."""


class StageUnsupported(Exception):
    """This stage cannot run this way here (no such module variant, no kernel): the cell is `unsupported`."""


DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.bfloat16,
    "int8": torch.bfloat16,
}
"""Module dtype per recipe precision: quantized recipes keep non-Linear ops (and their inputs) in bf16."""


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_component(
    component: Component,
    *,
    tiny: bool,
    device: torch.device,
    dtype: torch.dtype,
    weights_dir: Path | None = None,
) -> nn.Module:
    """One module: from `weights_dir/<name>` when given (real weights), else from its config (synthetic)."""
    if weights_dir is not None:
        return _load_component(component, weights_dir, device=device, dtype=dtype)
    cfg = component_config(component, tiny=tiny)
    if component.library == "diffusers":
        import diffusers

        cls: Any = getattr(diffusers, component.class_name)
        with torch.device(device), default_dtype(dtype):
            module: nn.Module = cls.from_config(cfg)
    else:
        import transformers

        cls = getattr(transformers, component.class_name)
        # A config's torch_dtype/dtype (CLIP's says float16) would override the build dtype for some layers.
        skip = ("architectures", "model_type", "torch_dtype", "dtype")
        args = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in skip}
        config = transformers.AutoConfig.for_model(cfg["model_type"], **args)
        with torch.device(device), default_dtype(dtype):
            module = cls(config)
    module.to(device=device)  # built in dtype already; a cast would also touch fp32-pinned modules
    module.eval()
    module.requires_grad_(False)
    return module


def _load_component(component: Component, path: Path, *, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A component's real weights from its folder, offline, in the recipe's dtype (as `from_pretrained` casts:
    modules a model pins to fp32 stay there). A folder that does not load is named with its part."""
    import diffusers
    import transformers

    lib: Any = diffusers if component.library == "diffusers" else transformers
    cls: Any = getattr(lib, component.class_name)
    dtype_arg = {"dtype": dtype}
    try:
        module: nn.Module = cls.from_pretrained(str(path), local_files_only=True, **dtype_arg)
    except Exception as exc:
        from stagekit.sources import ModelSourceError

        raise ModelSourceError(
            f"part {component.name!r} ({component.class_name}) does not load from {path}: {type(exc).__name__}: "
            f"{str(exc)[:500]}"
        ) from exc
    module.to(device=device)
    module.eval()
    module.requires_grad_(False)
    return module


def weights_path(weights_dir: Path | None, component: Component, *, variant: str = "") -> Path | None:
    """Where a component's real weights are: `<dir>/<name>` (or `<dir>/tiny_vae` for the tiny VAE)."""
    if weights_dir is None:
        return None
    path = weights_dir / ("tiny_vae" if variant == "tiny_vae" else component.name)
    if not path.is_dir():
        raise StageUnsupported(f"real weights for component {component.name!r} not found at {path}")
    return path


def _config(module: nn.Module) -> Any:
    return getattr(module, "config", None)


@dataclass
class StageSetup:
    """What a stage runner needs to know besides the modules: shapes and generation settings."""

    spec: ModelSpec
    stage: str
    height: int
    width: int
    text_tokens: int
    tiny: bool
    device: torch.device
    dtype: torch.dtype
    channels_last: bool = False

    @property
    def latent_hw(self) -> tuple[int, int]:
        f = self.spec.vae_scale_factor
        return self.height // f, self.width // f

    @property
    def cfg_factor(self) -> int:
        return 2 if self.spec.cfg else 1


def _rand(
    shape: tuple[int, ...], setup: StageSetup, generator: torch.Generator, dtype: torch.dtype | None = None
) -> Any:
    # Generate on the CPU for determinism across devices, then move: inputs are built once per cell.
    t = torch.randn(shape, generator=generator, dtype=torch.float32)
    return t.to(device=setup.device, dtype=dtype or setup.dtype)


class StageRunner:
    """One stage's modules and inputs at one batch: `call()` runs one serving call and returns its output."""

    def __init__(self, setup: StageSetup, modules: dict[str, nn.Module]) -> None:
        self.setup = setup
        self.modules = modules
        self.batch = 0
        self.inputs: dict[str, Any] = {}
        self.call_context: contextlib.AbstractContextManager[Any] | None = None
        self.served: Callable[[int, int], Callable[[], Any]] | None = None
        """On real weights: (batch, seed) -> one call of the serving stage (`stagekit.serving.attach_served`),
        which `call()` then times in place of the module call on random inputs."""
        self._served_call: Callable[[], Any] | None = None

    # -- inputs -------------------------------------------------------------------------------------------
    def prepare(self, batch: int, *, seed: int = 0) -> None:
        """Build the inputs of a call at `batch` images (random, seeded; the serving stage's own on real weights)."""
        self.batch = batch
        self._served_call = self.served(batch, seed) if self.served is not None else None
        g = torch.Generator().manual_seed(seed)
        s = self.setup
        if s.stage == "text_encoder":
            self.inputs = self._text_inputs(batch, g)
        elif s.stage == "denoiser":
            h, w = s.latent_hw
            latents = _rand((batch, s.spec.latent_channels, h, w), s, g)
            self.inputs = {"latents": latents, "cond": self._conditioning(batch * s.cfg_factor, g)}
        else:
            h, w = s.latent_hw
            z = _rand((batch, s.spec.latent_channels, h, w), s, g)
            if s.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            self.inputs = {"latents": z}

    def _text_len(self, module: nn.Module) -> int:
        cfg = _config(module)
        kind = type(module).__name__
        if kind.startswith("CLIPText"):
            return int(cfg.max_position_embeddings)
        if kind.startswith("Qwen2_5_VL"):
            return self.setup.text_tokens + QWEN_TEMPLATE_TOKENS
        if kind.startswith("Qwen3") and not self.setup.tiny:
            return ZIMAGE_TEXT_PAD
        return self.setup.text_tokens

    def _text_inputs(self, batch: int, g: torch.Generator) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, module in self.modules.items():
            cfg = _config(module)
            vocab = int(getattr(cfg, "vocab_size", None) or cfg.text_config.vocab_size)
            seq = self._text_len(module)
            ids = torch.randint(0, min(vocab, 30000), (batch, seq), generator=g).to(self.setup.device)
            out[name] = ids
        return out

    def example_conditioning(self, rows: int, *, seed: int = 0) -> dict[str, Any]:
        """`rows` rows of random text conditioning in the denoiser's keyword arguments (the worker's warm-up)."""
        return self._conditioning(rows, torch.Generator().manual_seed(seed))

    def _conditioning(self, rows: int, g: torch.Generator) -> dict[str, Any]:
        """Random text conditioning of the widths the denoiser expects (what the text stage would give)."""
        s = self.setup
        den = next(iter(self.modules.values()))
        cfg = _config(den)
        arch = s.spec.architecture
        if arch in ("sd", "sdxl"):
            seq = 77
            cond: dict[str, Any] = {"encoder_hidden_states": _rand((rows, seq, int(cfg.cross_attention_dim)), s, g)}
            if cfg.addition_embed_type == "text_time":
                time_dim = int(cfg.addition_time_embed_dim)
                text_dim = int(cfg.projection_class_embeddings_input_dim) - 6 * time_dim
                cond["added_cond_kwargs"] = {
                    "text_embeds": _rand((rows, text_dim), s, g),
                    "time_ids": torch.tensor([[s.height, s.width, 0, 0, s.height, s.width]] * rows).to(
                        device=s.device, dtype=s.dtype
                    ),
                }
            return cond
        if arch == "flux":
            seq = s.text_tokens
            cond = {
                "encoder_hidden_states": _rand((rows, seq, int(cfg.joint_attention_dim)), s, g),
                "pooled_projections": _rand((rows, int(cfg.pooled_projection_dim)), s, g),
                "txt_ids": torch.zeros(seq, 3, device=s.device, dtype=s.dtype),
            }
            if cfg.guidance_embeds:
                cond["guidance"] = torch.full((rows,), s.spec.guidance_scale or 3.5, device=s.device, dtype=s.dtype)
            return cond
        if arch == "qwen-image":
            seq = s.text_tokens
            return {
                "encoder_hidden_states": _rand((rows, seq, int(cfg.joint_attention_dim)), s, g),
                "encoder_hidden_states_mask": torch.ones(rows, seq, device=s.device, dtype=torch.long),
            }
        if arch == "z-image":
            seq = s.text_tokens
            return {"cap_feats": [_rand((seq, int(cfg.cap_feat_dim)), s, g) for _ in range(rows)]}
        raise StageUnsupported(f"no denoiser adapter for architecture {arch!r}")

    def set_conditioning(self, cond: dict[str, Any]) -> None:
        """Give the denoiser real text conditioning (a serving batch's) in place of prepare()'s random one.

        `cond` has the keys `_conditioning` builds for the architecture (the denoiser's keyword arguments); for
        a CFG model its rows are the batch's conditional rows followed by its unconditional ones.
        """
        self.inputs["cond"] = cond

    # -- calls --------------------------------------------------------------------------------------------
    def denoiser_call(self, latents: torch.Tensor, t: float, *, renorm_cfg: bool = False) -> torch.Tensor:
        """One denoiser step on unpacked latents (batch, C, h, w) at time t in (0, 1]; returns the prediction.

        For a CFG model the latents are doubled (cond + uncond rows) and the guided prediction is returned.
        `t` is what the model is given, scaled: a UNet gets `t * 999` (the scheduler's timestep), Flux and
        Qwen-Image get `t` (their pipelines pass timestep / 1000), Z-Image gets `t` (its pipeline passes
        (1000 - timestep) / 1000, so the caller passes 1 - sigma). `renorm_cfg` rescales Qwen-Image's guided
        prediction to the conditional one's norm per packed token, as QwenImagePipeline's true CFG does (the
        serving loop asks for it; a probe's step keeps the plain combination).
        """
        s = self.setup
        module = next(iter(self.modules.values()))
        cond = self.inputs["cond"]
        x = torch.cat([latents, latents]) if s.cfg_factor == 2 else latents
        rows, c, h, w = x.shape
        arch = s.spec.architecture
        guided = False
        if arch in ("sd", "sdxl"):
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # torch.full, not torch.tensor: a host-to-device copy per call would sync the stream every step.
            timestep = torch.full((), t * 999.0, device=s.device)
            out = module(x, timestep, return_dict=False, **cond)[0]
        elif arch in ("flux", "qwen-image"):
            packed = (
                x.view(rows, c, h // 2, 2, w // 2, 2)
                .permute(0, 2, 4, 1, 3, 5)
                .reshape(rows, (h // 2) * (w // 2), c * 4)
            )
            timestep = torch.full((rows,), t, device=s.device, dtype=s.dtype)
            if arch == "flux":
                img_ids = torch.zeros(h // 2, w // 2, 3, device=s.device, dtype=s.dtype)
                img_ids[..., 1] += torch.arange(h // 2, device=s.device, dtype=s.dtype)[:, None]
                img_ids[..., 2] += torch.arange(w // 2, device=s.device, dtype=s.dtype)[None, :]
                out = module(
                    hidden_states=packed, timestep=timestep, img_ids=img_ids.reshape(-1, 3), return_dict=False, **cond
                )[0]
            else:
                out = module(
                    hidden_states=packed,
                    timestep=timestep,
                    img_shapes=[[(1, h // 2, w // 2)]] * rows,
                    return_dict=False,
                    **cond,
                )[0]
            if renorm_cfg and s.cfg_factor == 2 and arch == "qwen-image":
                c_out, u_out = out.chunk(2)
                comb = u_out + max(s.spec.guidance_scale, 1.0) * (c_out - u_out)
                out = comb * (torch.norm(c_out, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
                rows, guided = rows // 2, True
            out = out.view(rows, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(rows, c, h, w)
        elif arch == "z-image":
            xs = list(x.unsqueeze(2).unbind(0))
            # float32, as ZImagePipeline passes it (its timestep embedding works in float32)
            timestep = torch.full((rows,), t, device=s.device, dtype=torch.float32)
            outs = module(xs, timestep, cond["cap_feats"], return_dict=False)[0]
            out = torch.stack([o.squeeze(1) for o in outs])
        else:  # pragma: no cover - _conditioning refused it already
            raise StageUnsupported(f"no denoiser adapter for architecture {arch!r}")
        if s.cfg_factor == 2 and not guided:
            c_out, u_out = out.chunk(2)
            out = u_out + max(s.spec.guidance_scale, 1.0) * (c_out - u_out)
        result: torch.Tensor = out
        return result

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents (batch, C, h, w) to images (batch, 3, H, W) in about [-1, 1]."""
        vae: Any = next(iter(self.modules.values()))
        z = latents
        if type(vae).__name__ == "AutoencoderKLQwenImage":
            return vae.decode(z.unsqueeze(2), return_dict=False)[0].squeeze(2)  # type: ignore[no-any-return]
        return vae.decode(z, return_dict=False)[0]  # type: ignore[no-any-return]

    def encode_text(self) -> list[torch.Tensor]:
        """Run every text encoder of the stage; return the hidden states the denoiser would be given."""
        parts: list[torch.Tensor] = []
        for name, module in self.modules.items():
            ids = self.inputs[name]
            kind = type(module).__name__
            if kind.startswith("T5"):
                out = module(input_ids=ids)
                parts.append(out.last_hidden_state)
            else:
                mask = torch.ones_like(ids)
                kwargs: dict[str, Any] = {"output_hidden_states": True}
                if not kind.startswith("CLIP"):
                    kwargs["attention_mask"] = mask
                out = module(input_ids=ids, **kwargs)
                hidden = out.hidden_states
                # SDXL and Z-Image take the penultimate layer; SD 1.5 and Qwen-Image the last.
                pick = -2 if (self.setup.spec.architecture in ("sdxl", "z-image")) else -1
                parts.append(hidden[pick])
        return parts

    def conditioning(self) -> torch.Tensor:
        """The text stage's output flattened into one float tensor per prompt (for drift, not timed)."""
        with torch.inference_mode():
            parts = self.encode_text()
        return torch.cat([p.reshape(p.shape[0], -1).float() for p in parts], dim=1)

    def step(self, latents: torch.Tensor, t: float) -> torch.Tensor:
        """One denoiser call on given latents at time t, inside the recipe's call context (cache, attention)."""
        ctx = self.call_context or contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return self.denoiser_call(latents, t)

    def call(self) -> torch.Tensor:
        """One serving call of this stage at the prepared batch: the serving stage itself where attached."""
        if self._served_call is not None:
            return self._served_call()  # type: ignore[no-any-return]
        s = self.setup
        ctx = self.call_context or contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            if s.stage == "text_encoder":
                return self.encode_text()[-1]  # as a pipeline, no extra copy of the conditioning
            if s.stage == "denoiser":
                return self.denoiser_call(self.inputs["latents"], 0.5)
            return self.vae_decode(self.inputs["latents"])

    @property
    def input_tensors(self) -> dict[str, Any]:
        return self.inputs


@dataclass
class BuiltStage:
    """The modules of one stage (or of its tiny-VAE variant) with the variant's name."""

    modules: dict[str, nn.Module]
    variant: str = ""
    notes: list[str] = field(default_factory=list)


def stage_components(spec: ModelSpec, stage: str, *, tiny_vae: bool) -> list[Component]:
    """The components a stage runs: its own, or the model's tiny VAE for a `vae: tiny` recipe."""
    if tiny_vae:
        variant = getattr(spec, "tiny_vae", None)
        if stage != "vae_decoder" or variant is None:
            raise StageUnsupported(f"model {spec.id!r} has no tiny VAE in the catalog")
        return list(variant.components)
    return list(spec.stage(stage).components)


def build_stage(
    spec: ModelSpec,
    stage: str,
    *,
    tiny: bool,
    device: torch.device,
    dtype: torch.dtype,
    tiny_vae: bool = False,
    weights_dir: Path | None = None,
    seed: int = 0,
) -> BuiltStage:
    """Build a stage's modules (synthetic weights unless `weights_dir`)."""
    comps = stage_components(spec, stage, tiny_vae=tiny_vae)
    modules: dict[str, nn.Module] = {}
    for i, comp in enumerate(comps):
        # Seeded so every recipe of a sweep builds the same synthetic weights (drift compares recipes, not draws).
        torch.manual_seed(seed + i)
        path = weights_path(weights_dir, comp, variant="tiny_vae" if tiny_vae else "")
        modules[comp.name] = build_component(comp, tiny=tiny, device=device, dtype=dtype, weights_dir=path)
    return BuiltStage(modules, "tiny_vae" if tiny_vae else "")


def tiny_shapes(spec: ModelSpec) -> tuple[int, int, int]:
    """(height, width, text_tokens) of the model's CPU smoke run (catalog `tiny:`; 64x64, 16 tokens if absent)."""
    t = getattr(spec, "tiny", None)
    if t is None:
        return 64, 64, 16
    return int(t.height), int(t.width), int(t.text_tokens)


def tile_size(vae: nn.Module, height: int, width: int) -> int:
    """Tile edge (pixels) for a tiled decode: the config's own, or half the image when that would not tile.

    diffusers tiles only images larger than the VAE's `sample_size` (1024 for SDXL's VAE), so at the model's
    own resolution `enable_tiling()` alone changes nothing; half the image (512 px at 1024) is the usual tile.
    """
    cfg = _config(vae)
    raw = getattr(cfg, "sample_size", 0) or 0
    native = int(raw[0] if isinstance(raw, list | tuple) else raw)
    if native and native < min(height, width):
        return native
    edge: int = max(16, 2 ** int(math.log2(max(min(height, width) // 2, 1))))
    return edge
