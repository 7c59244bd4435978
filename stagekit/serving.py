"""Serving stages: the model's own diffusers pipeline, split into the catalog's stages (imports torch).

    build_stage(model_id, stage, recipe, tiny, device, source=...) -> StageFn

The stage's modules come from `stagekit.recipes.prepare` (precision, VAE variant, fused QKV, channels_last,
fp8/int8 layers, step cache, then compile), loaded from the model's folder (`stagekit.sources`); the diffusers
pipeline object is then built from that folder with those modules in place (`from_pretrained(folder,
local_files_only=True, unet=prepared, text_encoder=None, ...)`: the folder's tokenizers and scheduler config,
the stage's own modules, no other stage's weights). Each stage is then a call of the pipeline's own code:
- text encoder: `pipeline.encode_prompt` with the real tokenizers (negatives as the pipeline encodes them);
- denoiser: `pipeline(prompt_embeds=..., generator=[one CPU generator per item's seed], output_type="latent")`,
  inside the recipe's call context (attention backend, step cache): the pipeline's sampler, timesteps, guidance,
  latent packing and noise, so an image equals `DiffusionPipeline.from_pretrained(folder)(prompt, ...)`'s;
- VAE decoder: the pipeline's latent un-scaling (below: diffusers keeps it inline in `__call__`), `vae.decode`,
  `image_processor.postprocess`.
What stays ours is what diffusers does not do: the item hand-off between split stages (one tensor per item),
padding Qwen-Image's text to a warmed length for a compiled denoiser, the recipe's context, and warm-up inputs.
Random weights (`--synthetic`) run the same stage classes on the same pipeline class, built by
`stagekit.synthetic` from the random modules, offline tokenizers and the catalog's scheduler config.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from planner import catalog
from planner.catalog.schema import ModelSpec
from stagekit import synthetic
from stagekit.errors import UnsupportedModelError
from stagekit.interface import Item, StageFn, mark_weights
from stagekit.pipelines import StageRunner, StageUnsupported, tiny_shapes
from stagekit.recipes import PreparedStage, RecipeOptions, prepare, reset_cache
from stagekit.sources import PIPELINES, ModelSource, ModelSourceError

EMBED_KEYS = ("prompt_embeds", "pooled_prompt_embeds")
DEFAULT_NEGATIVE = {"qwen-image": " "}
"""The negative prompt of a CFG model whose pipeline runs CFG only when given one (Qwen-Image's model card uses
" "): the plan measured two transformer passes per step, and a job without a negative prompt gets them too."""
QWEN_MAX_SEQUENCE = 512
"""QwenImagePipeline keeps at most max_sequence_length (512) tokens of each prompt's conditioning."""


def load_pipeline(spec: ModelSpec, folder: Path, modules: dict[str, torch.nn.Module], dtype: torch.dtype) -> Any:
    """The model's pipeline object from its folder, with `modules` in place and every other model component None."""
    import diffusers

    cls: Any = getattr(diffusers, PIPELINES[spec.architecture])
    index = json.loads((folder / "model_index.json").read_text())
    # every model part but this stage's stays unloaded: other stages' modules, and parts the stages never run
    # (SD 1.5's safety checker and feature extractor, an image encoder); tokenizers and the scheduler are loaded
    others: dict[str, Any] = {
        k: None
        for k, v in index.items()
        if isinstance(v, list)  # a component ([library, class]); scalars are the pipeline's config, kept
        and k not in modules
        and not k.startswith("tokenizer")
        and k != "scheduler"
    }
    if spec.architecture == "sd":
        others["requires_safety_checker"] = False
    try:
        return cls.from_pretrained(folder, local_files_only=True, dtype=dtype, **modules, **others)
    except Exception as exc:  # a tokenizer or scheduler that does not load: name the folder and what failed
        raise ModelSourceError(
            f"model {spec.id!r}: the {cls.__name__} in {folder} does not load (tokenizers, scheduler): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


class PipelineStage:
    """One stage of a model's pipeline in one recipe's form: from the model's folder, or on random weights (None)."""

    def __init__(self, spec: ModelSpec, prepared: PreparedStage, folder: Path | None) -> None:
        self.spec = spec
        self.prepared = prepared
        setup = prepared.runner.setup
        self.device, self.dtype = setup.device, setup.dtype
        self.static_shapes = prepared.compiled  # compiled modules are static-shape: GroupRunner pads batches
        self.weights = "real" if folder is not None else "synthetic"
        modules = self.modules_for_pipeline()
        self.pipe = (
            load_pipeline(spec, folder, modules, self.dtype)
            if folder is not None
            else synthetic.pipeline(spec, modules, tiny=setup.tiny)
        )
        self.pipe.set_progress_bar_config(disable=True)  # a worker's log is not a terminal

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """The stage's prepared modules (the pipeline holds these objects; a VAE stage's stays apart)."""
        return self.prepared.modules

    def modules_for_pipeline(self) -> dict[str, torch.nn.Module]:
        return dict(self.prepared.modules)

    def _ctx(self) -> contextlib.AbstractContextManager[Any]:
        """The recipe's call context (attention backend, step cache) around the pipeline's call."""
        return self.prepared.runner.call_context or contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def unload(self) -> None:
        self.prepared.modules.clear()
        self.pipe = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class TextStage(PipelineStage):
    """`encode_prompt` on the batch's prompts (and negatives for a CFG model): one row per item."""

    def negative(self, item: Item) -> str | None:
        neg = item.get("negative_prompt")
        return DEFAULT_NEGATIVE.get(self.spec.architecture) if neg is None else str(neg)

    def encode(self, prompts: list[str], negatives: list[str] | None) -> dict[str, list[torch.Tensor]]:
        """The pipeline's embeddings per prompt: `prompt_embeds` (+ pooled, + `negative_*` for CFG)."""
        pipe, arch, cfg = self.pipe, self.spec.architecture, self.spec.cfg
        out: dict[str, Any] = {}
        if arch == "sd":
            out["prompt_embeds"], neg = pipe.encode_prompt(prompts, self.device, 1, cfg, negative_prompt=negatives)
            if cfg:
                out["negative_prompt_embeds"] = neg
        elif arch == "sdxl":
            pe, ne, pooled, npooled = pipe.encode_prompt(
                prompts, device=self.device, do_classifier_free_guidance=cfg, negative_prompt=negatives
            )
            out.update(prompt_embeds=pe, pooled_prompt_embeds=pooled)
            if cfg:
                out.update(negative_prompt_embeds=ne, negative_pooled_prompt_embeds=npooled)
        elif arch == "flux":
            out["prompt_embeds"], out["pooled_prompt_embeds"], _ = pipe.encode_prompt(prompts, None, self.device)
        elif arch == "qwen-image":
            for key, texts in (("prompt_embeds", prompts), ("negative_prompt_embeds", negatives)):
                if texts is not None:
                    pe, mask = pipe.encode_prompt(texts, self.device)
                    out[key] = [e if mask is None else e[mask[i].bool()] for i, e in enumerate(pe)]
        elif arch == "z-image":
            out["prompt_embeds"], neg = pipe.encode_prompt(prompts, self.device, cfg, negatives)
            if cfg:
                out["negative_prompt_embeds"] = neg
        else:
            raise UnsupportedModelError(f"model {self.spec.id!r}: no text stage for architecture {arch!r}")
        return {k: list(v) for k, v in out.items()}

    def __init__(self, spec: ModelSpec, prepared: PreparedStage, folder: Path | None) -> None:
        super().__init__(spec, prepared, folder)
        if self.static_shapes and spec.architecture == "qwen-image":
            base, prefix = prepared.runner.setup.text_tokens, int(self.pipe.prompt_template_encode_start_idx)
            self.pipe.tokenizer = BucketedTokenizer(self.pipe.tokenizer, base=base, prefix=prefix)

    def groups(self, negs: list[str | None]) -> list[list[int]]:
        """Items encoded together: SDXL encodes an absent negative as zeros, a given one (even "") as text, so one
        call per kind; a compiled encoder runs the whole batch (its warmed size) once, absent negatives zeroed."""
        if self.static_shapes:
            return [list(range(len(negs)))]
        return [[i for i, n in enumerate(negs) if n is None], [i for i, n in enumerate(negs) if n is not None]]

    def zeroes_absent_negatives(self) -> bool:
        return bool(getattr(self.pipe.config, "force_zeros_for_empty_prompt", False))

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        negs = [self.negative(item) for item in batch]
        rows: list[Item] = [{} for _ in batch]
        with torch.inference_mode(), self._ctx():
            for idx in (g for g in self.groups(negs) if g):
                prompts = [str(batch[i].get("prompt") or "") for i in idx]
                given = self.spec.cfg and any(negs[i] is not None for i in idx)
                neg = [str(negs[i] or "") for i in idx] if given else None
                for key, values in self.encode(prompts, neg).items():
                    for j, i in enumerate(idx):
                        absent = key.startswith("negative_") and negs[i] is None and self.zeroes_absent_negatives()
                        rows[i][key] = torch.zeros_like(values[j]) if absent else values[j]
        self._sync()
        return mark_weights([{**item, **row} for item, row in zip(batch, rows, strict=True)], self.weights)


class BucketedTokenizer:
    """Qwen-Image's tokenizer for a compiled text encoder: a batch is padded (right, masked) to the probe's text
    length or a doubling of it (`text_bucket`), not to its longest prompt, so new prompt lengths reuse the warmed
    graphs; the pipeline keeps each prompt's own tokens (a causal encoder's are unchanged by right padding)."""

    def __init__(self, tokenizer: Any, *, base: int, prefix: int) -> None:
        self.tokenizer, self.base, self.prefix = tokenizer, base, prefix

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        if kwargs.get("padding") is True:
            limit = kwargs.get("max_length")
            longest = max(len(ids) for ids in self.tokenizer(text, truncation=True, max_length=limit).input_ids)
            length = self.prefix + text_bucket(longest - self.prefix, self.base)
            kwargs = {**kwargs, "padding": "max_length", "max_length": min(length, limit or length)}
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


class DenoiserStage(PipelineStage):
    """The pipeline called on the batch's embeddings with one seeded generator per item, `output_type="latent"`."""

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        first = batch[0]
        h, w = int(first["height"]), int(first["width"])
        steps = int(first.get("steps") or self.spec.default_steps)
        kwargs = self.conditioning(batch)
        generators = [torch.Generator("cpu").manual_seed(int(item["seed"])) for item in batch]
        for m in self.prepared.cache_modules:
            reset_cache(m)  # a new trajectory starts with a full compute
        guidance = "true_cfg_scale" if self.spec.architecture == "qwen-image" else "guidance_scale"
        with torch.inference_mode(), self._ctx():
            latents = self.pipe(
                **kwargs,
                height=h,
                width=w,
                num_inference_steps=steps,
                generator=generators,
                output_type="latent",
                **{guidance: self.spec.guidance_scale},
            ).images
        self._sync()
        out = [
            {**{k: v for k, v in item.items() if not k.endswith("prompt_embeds")}, "latents": latents[i]}
            for i, item in enumerate(batch)
        ]
        return mark_weights(out, self.weights)

    def conditioning(self, batch: Sequence[Item]) -> dict[str, Any]:
        """The pipeline's embedding arguments from the items' rows (stacked; Qwen-Image padded and masked)."""
        arch = self.spec.architecture
        out: dict[str, Any] = {}
        for key in (*EMBED_KEYS, *(f"negative_{k}" for k in EMBED_KEYS)):
            if key not in first_keys(batch):
                continue
            rows = [item[key].to(self.device, self.dtype) for item in batch]
            if arch == "z-image":
                out[key] = rows  # one tensor per prompt, its own length
            elif arch == "qwen-image":
                n = max(r.shape[0] for r in rows)
                if self.static_shapes:  # a compiled denoiser sees a few text lengths, not each batch's longest
                    n = text_bucket(n, self.prepared.runner.setup.text_tokens)
                out[key] = torch.stack([torch.cat([r, r.new_zeros(n - r.shape[0], r.shape[1])]) for r in rows])
                mask = [[1] * r.shape[0] + [0] * (n - r.shape[0]) for r in rows]
                out[key.replace("embeds", "embeds_mask")] = torch.tensor(mask, dtype=torch.long, device=self.device)
            else:
                out[key] = torch.stack(rows)
        return out

    def example_items(self, n: int, *, height: int, width: int, steps: int) -> list[Item]:
        """`n` items as the text stage hands them over, random conditioning of its shapes (a compiled warm-up)."""
        runner = self.prepared.runner
        return example_conditioning_items(self.spec, runner, n, height=height, width=width, steps=steps)


def first_keys(batch: Sequence[Item]) -> set[str]:
    return set(batch[0]) if batch else set()


def text_bucket(n: int, base: int) -> int:
    """The padded text length of a compiled denoiser for a batch whose longest prompt has `n` tokens: `base` (the
    probe's length) doubled until it holds `n`, at most Qwen-Image's longest sequence (and never below `n`)."""
    size = max(base, 1)
    while size < n:
        size *= 2
    return max(n, min(size, QWEN_MAX_SEQUENCE))


def latent_shape(spec: ModelSpec, height: int, width: int) -> tuple[int, int, int]:
    """(channels, h, w) of an unpacked latent: packed models' sides are even (2 x (side // 16))."""
    f = spec.vae_scale_factor
    if spec.architecture in ("sd", "sdxl"):
        return spec.latent_channels, height // f, width // f
    return spec.latent_channels, 2 * (height // (f * 2)), 2 * (width // (f * 2))


CONDITIONING_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "sd": {"prompt_embeds": ("encoder_hidden_states",)},
    "sdxl": {"prompt_embeds": ("encoder_hidden_states",), "pooled_prompt_embeds": ("added_cond_kwargs", "text_embeds")},
    "flux": {"prompt_embeds": ("encoder_hidden_states",), "pooled_prompt_embeds": ("pooled_projections",)},
    "qwen-image": {"prompt_embeds": ("encoder_hidden_states",)},
    "z-image": {"prompt_embeds": ("cap_feats",)},
}
"""Where each text-stage output is in the denoiser module's keyword arguments (`StageRunner.example_conditioning`)."""


def example_conditioning_items(
    spec: ModelSpec, runner: StageRunner, n: int, *, height: int, width: int, steps: int
) -> list[Item]:
    """`n` denoiser inputs as a text stage hands them over, random conditioning of the shapes the denoiser module
    takes (a compiled stage's warm-up; a probe's inputs): one row per item, `negative_*` for CFG."""
    cond = runner.example_conditioning(n * (2 if spec.cfg else 1))
    cols: dict[str, Any] = {}
    for key, path in CONDITIONING_COLUMNS[spec.architecture].items():
        value: Any = cond
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            cols[key] = value
    out = []
    for i in range(n):
        item: Item = {"prompt": "a warm-up image", "seed": i, "height": height, "width": width, "steps": steps}
        for key, rows in cols.items():
            item[key] = rows[i]
            if spec.cfg:
                item[f"negative_{key}"] = rows[n + i]
        out.append(item)
    return out


class VaeStage(PipelineStage):
    """The pipeline's latent un-scaling, `vae.decode`, `image_processor.postprocess`: uint8 (H, W, 3) on the CPU."""

    def modules_for_pipeline(self) -> dict[str, torch.nn.Module]:
        # the VAE in use (a tiny VAE is another class than the pipeline's) stays apart: the pipeline lends only
        # its image processor and latent unpacking
        return {}

    @property
    def vae(self) -> Any:
        return next(iter(self.prepared.modules.values()))

    def unscale(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """What each pipeline's `__call__` does to its latents between the sampler and `vae.decode`."""
        arch, cfg = self.spec.architecture, self.vae.config
        if arch in ("flux", "qwen-image"):
            z = type(self.pipe)._unpack_latents(z, height, width, self.pipe.vae_scale_factor)
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if arch == "qwen-image" and mean is not None and std is not None:
            view = (1, int(cfg.z_dim), 1, 1, 1)
            std_inv = 1.0 / torch.tensor(std).view(view).to(z.device, z.dtype)
            return z / std_inv + torch.tensor(mean).view(view).to(z.device, z.dtype)
        if arch == "sdxl" and mean is not None and std is not None:
            m = torch.tensor(mean).view(1, 4, 1, 1).to(z.device, z.dtype)
            s = torch.tensor(std).view(1, 4, 1, 1).to(z.device, z.dtype)
            return z * s / float(cfg.scaling_factor) + m
        return z / float(getattr(cfg, "scaling_factor", None) or 1.0) + float(getattr(cfg, "shift_factor", None) or 0.0)

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        h, w = int(batch[0]["height"]), int(batch[0]["width"])
        z = torch.stack([item["latents"] for item in batch]).to(self.device, self.dtype)
        with torch.inference_mode(), self._ctx():
            z = self.unscale(z, h, w)
            if z.ndim == 4 and self.prepared.runner.setup.channels_last:
                z = z.contiguous(memory_format=torch.channels_last)
            if type(self.vae).__name__ == "AutoencoderKLQwenImage" and z.ndim == 4:
                z = z.unsqueeze(2)
            image = self.vae.decode(z, return_dict=False)[0]
            if image.ndim == 5:
                image = image[:, :, 0]
            arr = self.pipe.image_processor.postprocess(image, output_type="np")
        self._sync()
        pixels = (arr * 255).round().astype(np.uint8)  # as the pipelines' numpy_to_pil
        out = [
            {**{k: v for k, v in item.items() if k != "latents"}, "image": np.ascontiguousarray(pixels[i])}
            for i, item in enumerate(batch)
        ]
        return mark_weights(out, self.weights)

    def example_items(self, n: int, *, height: int, width: int, steps: int) -> list[Item]:
        """`n` items as the denoiser hands them over (zero latents, packed as the pipeline leaves them)."""
        c, lh, lw = latent_shape(self.spec, height, width)
        shape = (lh * lw // 4, c * 4) if self.spec.architecture in ("flux", "qwen-image") else (c, lh, lw)
        z = torch.zeros(shape, device=self.device)
        return [{"seed": i, "height": height, "width": width, "steps": steps, "latents": z} for i in range(n)]


STAGES: dict[str, type[PipelineStage]] = {"text_encoder": TextStage, "denoiser": DenoiserStage, "vae_decoder": VaeStage}

PROBE_PROMPTS = (
    "a photo of an astronaut riding a horse on the moon",
    "a watercolor painting of a red fox in the snow at dawn",
    "a bowl of fruit on a wooden table, studio lighting",
)


def probe_prompt(tokenizer: Any, tokens: int, i: int) -> str:
    """A prompt of about `tokens` tokens of this tokenizer (the catalog's typical prompt length, which the plan's
    text-stage FLOPs assume): where a pipeline pads to the longest prompt (Qwen-Image), length is cost."""
    words = " ".join(PROBE_PROMPTS[i % len(PROBE_PROMPTS) :] + PROBE_PROMPTS[: i % len(PROBE_PROMPTS)]).split()
    limit = min(tokens, int(getattr(tokenizer, "model_max_length", tokens) or tokens))  # CLIP: 77
    out: list[str] = []
    while len(out) < 4 * limit:
        out.append(words[len(out) % len(words)])
        if len(tokenizer(" ".join(out)).input_ids) > limit:
            out.pop()
            break
    return " ".join(out)


def attach_served(prepared: PreparedStage, spec: ModelSpec, folder: Path | None, *, height: int, width: int) -> None:
    """Make the prepared runner's timed call the serving stage (on the folder's weights, or random ones for None),
    so a probe times what a worker runs: the text stage tokenizes and calls `encode_prompt` on prompts of the
    catalog's `text_tokens`; the denoiser calls the pipeline for one step (`num_inference_steps=1`: one
    transformer/UNet call, CFG included, plus the pipeline's per-call work) on conditioning of the text stage's
    shapes; the VAE stage un-scales, decodes and post-processes."""
    stage: Any = STAGES[prepared.runner.setup.stage](spec, prepared, folder)
    tokens = prepared.runner.setup.text_tokens

    def served(batch: int, seed: int) -> Any:
        if isinstance(stage, TextStage):
            items: list[Item] = [
                {"prompt": probe_prompt(stage.pipe.tokenizer, tokens, i), "seed": seed + i, "height": height,
                 "width": width}
                for i in range(batch)
            ]  # fmt: skip
        else:
            items = stage.example_items(batch, height=height, width=width, steps=1)
            items = [{**item, "seed": seed + i} for i, item in enumerate(items)]
        return lambda: stage(items)

    prepared.runner.served = served


def build_stage(
    model_id: str,
    stage: str,
    recipe: str,
    tiny: bool,
    device: str,
    *,
    source: ModelSource | None = None,
    options: RecipeOptions | None = None,
) -> StageFn:
    """A model's serving stage in a recipe's form: `prepare` (then compile), then the pipeline around it.

    `source` None or without a folder: random weights (the same stages on `stagekit.synthetic`'s pipeline); only a
    caller that was asked for `--synthetic` passes that.
    """
    try:
        spec = catalog.models()[model_id]
    except KeyError:
        raise UnsupportedModelError(f"model {model_id!r} is not in the catalog") from None
    if stage not in spec.stage_names:
        raise UnsupportedModelError(f"model {model_id!r} has no stage {stage!r}")
    rec = catalog.recipes().get(recipe)
    if rec is None:
        raise UnsupportedModelError(f"recipe {recipe!r} is not in the catalog: a worker cannot apply it")
    folder = source.folder if source is not None else None
    height, width, text_tokens = tiny_shapes(spec) if tiny else (spec.height, spec.width, spec.text_tokens)
    try:
        prepared = prepare(
            spec,
            stage,
            rec,
            device=torch.device(device),
            tiny=tiny and folder is None,
            height=height,
            width=width,
            text_tokens=text_tokens,
            weights_dir=folder,
            options=options,
        )
        prepared.apply_compile()
    except StageUnsupported as exc:
        raise UnsupportedModelError(f"model {model_id!r} stage {stage!r} recipe {recipe!r}: {exc}") from exc
    fn: StageFn = STAGES[stage](spec, prepared, folder)  # type: ignore[assignment]
    return fn
