"""Serving stages on torch (worker-only: imports torch): text encoders, the denoising loop, the VAE decode.

The modules come from the catalog's architecture configs, built the way the agent builds them for its probes
(`agent.pipelines.build_component`: the class named in the catalog, `from_config` in the recipe's dtype on
the target device, synthetic weights). `prepare_modules` is the one place that builds and applies a recipe;
when agent.pipelines and agent.recipes are merged it should return `agent.recipes.prepare(...).runner`'s
modules and call context, so the worker runs exactly the probed stage code. This stand-in applies a
recipe's precision (fp32 on the CPU), VAE variant and channels_last; other options are the agent's.

The serving glue is here: real conditioning flows from the text encoders into the denoiser, which runs
`steps` scheduler steps (CFG doubles its batch), and the decoder turns latents into uint8 images. SD and
SDXL (UNet) are wired; other architectures raise UnsupportedModelError until the agent's adapters are used.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from planner import catalog
from planner.catalog.schema import Component, ModelSpec, Recipe
from scheduler.errors import UnsupportedModelError
from scheduler.stages import Item, StageFn

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_component(component: Component, *, tiny: bool, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """One module from its config, synthetic weights seeded by its name (every worker builds the same one)."""
    cfg = catalog.component_config(component, tiny=tiny)
    torch.manual_seed(zlib.crc32(f"{component.config}".encode()))
    module: nn.Module
    if component.library == "diffusers":
        import diffusers

        cls: Any = getattr(diffusers, component.class_name)
        with torch.device(device), _default_dtype(dtype):
            module = cls.from_config(cfg)
    else:
        import transformers

        cls = getattr(transformers, component.class_name)
        args = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "model_type")}
        config = transformers.AutoConfig.for_model(cfg["model_type"], **args)
        with torch.device(device), _default_dtype(dtype):
            module = cls(config)
    module.to(device=device)
    module.eval()
    module.requires_grad_(False)
    return module


@dataclass
class Prepared:
    """A stage's modules in a recipe's form, and the context each call runs in (attention, caches)."""

    modules: dict[str, nn.Module]
    dtype: torch.dtype
    call_context: contextlib.AbstractContextManager[Any] | None = None


def prepare_modules(
    spec: ModelSpec, stage: str, recipe: Recipe | None, *, tiny: bool, device: torch.device
) -> Prepared:
    """Build a stage's modules with a recipe applied (the stand-in for agent.recipes.prepare)."""
    precision = recipe.precision if recipe is not None else "fp32"
    dtype = torch.float32 if device.type == "cpu" else DTYPES.get(precision, torch.bfloat16)
    components = list(spec.stage(stage).components)
    if recipe is not None and recipe.vae == "tiny" and stage == "vae_decoder":
        variant = getattr(spec, "tiny_vae", None)
        if variant is None:
            raise UnsupportedModelError(f"model {spec.id!r} has no tiny VAE for recipe {recipe.id!r}")
        components = list(variant.components)
    modules = {c.name: build_component(c, tiny=tiny, device=device, dtype=dtype) for c in components}
    if recipe is not None and recipe.channels_last and stage != "text_encoder":
        for module in modules.values():
            cast(Any, module).to(memory_format=torch.channels_last)
    return Prepared(modules, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stage:
    def __init__(self, spec: ModelSpec, prepared: Prepared, device: torch.device) -> None:
        self.spec = spec
        self.prepared = prepared
        self.modules = prepared.modules
        self.device = device
        self.dtype = prepared.dtype

    def _ctx(self) -> contextlib.AbstractContextManager[Any]:
        return self.prepared.call_context or contextlib.nullcontext()

    def unload(self) -> None:
        self.modules.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def tokenize(text: str, *, length: int, vocab: int, bos: int = 0, eos: int = 2, pad: int = 1) -> list[int]:
    """A deterministic stand-in tokenizer (no tokenizer files reach this machine): words hashed into the vocab.

    Real weights come with their tokenizer; synthetic weights make any token ids as good as any others.
    """
    ids = [bos]
    for word in text.lower().split():
        ids.append(3 + zlib.crc32(word.encode()) % max(vocab - 3, 1))
    ids = [*ids[: length - 1], eos]
    return ids + [pad] * (length - len(ids))


class TextEncoderStage(_Stage):
    """CLIP text encoders: per-token embeddings (+ pooled for SDXL), for the prompt and, for CFG, the negative."""

    def _length(self, module: nn.Module) -> int:
        cfg: Any = module.config
        return int(cfg.max_position_embeddings)

    def prepare(self, item: Item) -> Item:
        item = dict(item)
        for name, module in self.modules.items():
            cfg: Any = module.config
            item[f"_ids_{name}"] = tokenize(item.get("prompt") or "", length=self._length(module), vocab=cfg.vocab_size)
            if self.spec.cfg:
                item[f"_neg_ids_{name}"] = tokenize(
                    item.get("negative_prompt") or "", length=self._length(module), vocab=cfg.vocab_size
                )
        return item

    def _encode(self, key: str, batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for name, module in self.modules.items():
            ids = torch.tensor([item[f"{key}{name}"] for item in batch], dtype=torch.long, device=self.device)
            out = module(input_ids=ids, output_hidden_states=True)
            if self.spec.architecture == "sdxl":
                hidden.append(out.hidden_states[-2])
                if hasattr(out, "text_embeds"):
                    pooled = out.text_embeds
            else:
                hidden.append(out.last_hidden_state)
        return torch.cat(hidden, dim=-1), pooled

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        batch = [self.prepare(item) if not any(k.startswith("_ids_") for k in item) else item for item in batch]
        with torch.inference_mode(), self._ctx():
            emb, pooled = self._encode("_ids_", batch)
            neg, neg_pooled = self._encode("_neg_ids_", batch) if self.spec.cfg else (None, None)
        _sync(self.device)
        out = []
        for i, item in enumerate(batch):
            o = {k: v for k, v in item.items() if not k.startswith(("_ids_", "_neg_ids_"))}
            o["prompt_embeds"] = emb[i]
            if pooled is not None:
                o["pooled_prompt_embeds"] = pooled[i]
            if neg is not None:
                o["negative_prompt_embeds"] = neg[i]
            if neg_pooled is not None:
                o["negative_pooled_prompt_embeds"] = neg_pooled[i]
            out.append(o)
        return out


class DenoiserStage(_Stage):
    """The denoising loop: seeded initial noise, `steps` scheduler steps, CFG when the model uses it."""

    def __init__(self, spec: ModelSpec, prepared: Prepared, device: torch.device) -> None:
        super().__init__(spec, prepared, device)
        self.unet: Any = next(iter(self.modules.values()))

    def _scheduler(self) -> Any:
        from diffusers import EulerDiscreteScheduler

        cls: Any = EulerDiscreteScheduler
        return cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing")

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        first = batch[0]
        h, w, steps = int(first["height"]), int(first["width"]), int(first.get("steps") or self.spec.default_steps)
        f = self.spec.vae_scale_factor
        cfg = self.unet.config
        noise = [
            torch.randn(
                (cfg.in_channels, h // f, w // f),
                generator=torch.Generator().manual_seed(int(item["seed"])),
            )
            for item in batch
        ]
        latents = torch.stack(noise).to(self.device, self.dtype)
        cond = torch.stack([item["prompt_embeds"] for item in batch]).to(self.device, self.dtype)
        use_cfg = self.spec.cfg
        if use_cfg:
            uncond = torch.stack([item["negative_prompt_embeds"] for item in batch]).to(self.device, self.dtype)
            cond = torch.cat([uncond, cond])
        added: dict[str, torch.Tensor] | None = None
        if getattr(cfg, "addition_embed_type", None) == "text_time":
            pooled = torch.stack([item["pooled_prompt_embeds"] for item in batch]).to(self.device, self.dtype)
            if use_cfg:
                neg = torch.stack([item["negative_pooled_prompt_embeds"] for item in batch]).to(self.device, self.dtype)
                pooled = torch.cat([neg, pooled])
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype).repeat(
                pooled.shape[0], 1
            )
            added = {"text_embeds": pooled, "time_ids": time_ids}
        sched = self._scheduler()
        sched.set_timesteps(steps, device=self.device)
        latents = latents * sched.init_noise_sigma
        guidance = max(self.spec.guidance_scale, 1.0)
        with torch.inference_mode(), self._ctx():
            for t in sched.timesteps:
                x = torch.cat([latents, latents]) if use_cfg else latents
                x = sched.scale_model_input(x, t)
                kwargs: dict[str, Any] = {"encoder_hidden_states": cond, "return_dict": False}
                if added is not None:
                    kwargs["added_cond_kwargs"] = added
                pred = self.unet(x, t, **kwargs)[0]
                if use_cfg:
                    p_uncond, p_cond = pred.chunk(2)
                    pred = p_uncond + guidance * (p_cond - p_uncond)
                latents = sched.step(pred, t, latents, return_dict=False)[0]
        _sync(self.device)
        out = []
        for i, item in enumerate(batch):
            o = {k: v for k, v in item.items() if not k.endswith("prompt_embeds")}
            o["latents"] = latents[i].detach()
            out.append(o)
        return out


class VaeDecoderStage(_Stage):
    """Latents to uint8 images (H, W, 3) on the CPU."""

    def __init__(self, spec: ModelSpec, prepared: Prepared, device: torch.device) -> None:
        super().__init__(spec, prepared, device)
        self.vae: Any = next(iter(self.modules.values()))

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        z = torch.stack([item["latents"] for item in batch]).to(self.device, self.dtype)
        scale = float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)
        with torch.inference_mode(), self._ctx():
            images = self.vae.decode(z / scale, return_dict=False)[0]
            pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            pixels = pixels.permute(0, 2, 3, 1).to("cpu")
        _sync(self.device)
        arr = pixels.numpy()
        out = []
        for i, item in enumerate(batch):
            o = {k: v for k, v in item.items() if k != "latents"}
            o["image"] = np.ascontiguousarray(arr[i])
            out.append(o)
        return out


STAGES: dict[str, type[_Stage]] = {
    "text_encoder": TextEncoderStage,
    "denoiser": DenoiserStage,
    "vae_decoder": VaeDecoderStage,
}


def build_stage(model_id: str, stage: str, recipe: str, tiny: bool, device: str) -> StageFn:
    """The serving stage of a model in a recipe's form (see the module docstring)."""
    try:
        spec = catalog.models()[model_id]
    except KeyError:
        raise UnsupportedModelError(f"model {model_id!r} is not in the catalog") from None
    if spec.architecture not in ("sd", "sdxl"):
        raise UnsupportedModelError(
            f"model {model_id!r} ({spec.architecture}): the stand-in serves SD and SDXL UNets only; "
            "point scheduler.stages.default_build_stage at agent.pipelines for the others"
        )
    dev = torch.device(device)
    prepared = prepare_modules(spec, stage, catalog.recipes().get(recipe), tiny=tiny, device=dev)
    runner: StageFn = STAGES[stage](spec, prepared, dev)  # type: ignore[assignment]
    return runner
