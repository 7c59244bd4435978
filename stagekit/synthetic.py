"""Stages on synthetic (random) weights: the stand-in glue a worker runs when asked for `--synthetic`.

With real weights the stages are the model's diffusers pipeline (`stagekit.serving`). Random weights come with no
tokenizer files and no scheduler config, so this module keeps a hashed stand-in tokenizer and the pipelines'
conditioning, samplers and decode written out per architecture: the compute and memory are the real model's
(what timing needs), the images are noise. The rest of this docstring describes that glue.

The modules are built, and the plan's recipe applied, only by `stagekit.recipes.prepare` -- the function whose
result the agent's probes time -- so a worker runs exactly the measured stage: the recipe's precision (kept
on the CPU as well, where the agent runs bf16 too), tiny or tiled VAE, fused QKV, channels_last, fp8/int8
layers, then `apply_compile()` for a compiling recipe; the prepared runner's call context (attention backend,
step cache) wraps every module call. A recipe the device cannot run (`StageUnsupported`: fp8 on a CPU, a step
cache on a UNet, no eligible layer to quantize, ...) raises UnsupportedModelError with the agent's reason.

What serving adds is the glue each diffusers 0.42 pipeline has around its modules:
- text conditioning (`TextEncoderStage`): token ids from a deterministic stand-in tokenizer in `prepare(item)`
  (the job's thread: no tokenizer files reach these machines, and synthetic weights make any ids as good as
  others), then per architecture what the pipeline's `encode_prompt` builds: SD the CLIP last hidden state;
  SDXL both encoders' penultimate hidden states concatenated plus encoder 2's pooled `text_embeds` (zeros for
  an absent negative prompt: force_zeros_for_empty_prompt); Flux T5's last hidden state at the model's
  `text_tokens` plus CLIP's pooled output; Qwen-Image Qwen2.5-VL's last hidden states of the chat-templated
  prompt with the template's 34-token prefix dropped (one tensor per prompt, its own length); Z-Image Qwen3's
  penultimate hidden states of the prompt's tokens (padding masked out);
- the sampler loop (`DenoiserStage`), each step one `StageRunner.denoiser_call` (latent packing, ids, CFG as
  probed) on the batch's real conditioning (`StageRunner.set_conditioning`): EulerDiscrete with trailing
  timesteps for UNets (sd, sdxl), flow-matching Euler (FlowMatchEulerDiscreteScheduler, sigmas 1 -> 0 with
  each model's shift) for Flux, Qwen-Image (true CFG, renormalised) and Z-Image (which predicts -velocity at
  time 1 - sigma; the catalog's Z-Image runs without CFG: ZImagePipeline's own CFG, pos + g (pos - neg), is
  not the agent's combination);
- the decode (`VaeDecoderStage`) through `StageRunner.vae_decode`, after the pipeline's latent un-scaling
  (scaling and shift factors, or Qwen-Image's per-channel mean and std); uint8 (H, W, 3) images on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from planner.catalog.schema import ModelSpec
from stagekit.errors import UnsupportedModelError
from stagekit.interface import Item, StageFn
from stagekit.pipelines import QWEN_TEMPLATE_TOKENS, ZIMAGE_TEXT_PAD, StageRunner
from stagekit.recipes import PreparedStage, reset_cache

QWEN_MAX_TOKENS = 1024
"""QwenImagePipeline: the tokenizer truncates at 1024 + the template prefix ..."""
QWEN_MAX_SEQUENCE = 512
"""... and __call__ keeps at most max_sequence_length (512) tokens of each prompt's conditioning."""
QWEN_TEMPLATE_SUFFIX = 5
"""Tokens after the prompt in Qwen chat templates: `<|im_end|>`, newline, `<|im_start|>`, `assistant`, newline."""
ZIMAGE_TEMPLATE_PREFIX = 3
"""Tokens before the prompt in Z-Image's Qwen3 chat template: `<|im_start|>`, `user`, newline."""

UNET_SAMPLER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}
"""EulerDiscreteScheduler for the SD 1.5 / SDXL family (their scheduler configs' betas; trailing spacing, as
SDXL-Lightning and SDXL-Turbo require and few-step serving wants)."""

_FLUX_DEV = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
_QWEN_IMAGE = {
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
FLOW_SAMPLERS: dict[str, dict[str, Any]] = {
    # black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json: resolution-dependent (dynamic) shift
    "flux-dev": _FLUX_DEV,
    # FLUX.1-schnell: no shift
    "flux-schnell": {"shift": 1.0, "use_dynamic_shifting": False},
    # Qwen/Qwen-Image scheduler/scheduler_config.json
    "qwen-image": _QWEN_IMAGE,
    # ModelTC/Qwen-Image-Lightning's generate_with_diffusers.py: mu pinned at log(3), no terminal stretch
    "qwen-image-lightning": {
        **_QWEN_IMAGE,
        "base_shift": math.log(3),
        "max_shift": math.log(3),
        "shift_terminal": None,
    },
    # Tongyi-MAI/Z-Image-Turbo scheduler config (secondary copies): static shift 3
    "z-image-turbo": {"shift": 3.0, "use_dynamic_shifting": False},
}
"""FlowMatchEulerDiscreteScheduler settings per model (the published scheduler configs); a model not listed
takes its architecture's entry in FLOW_DEFAULTS."""
FLOW_DEFAULTS = {"flux": "flux-dev", "qwen-image": "qwen-image", "z-image": "z-image-turbo"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unet_time(timestep: float) -> float:
    """The `t` of `StageRunner.denoiser_call` for a UNet timestep: it calls the UNet with t * 999.

    Exact: for every trailing-spaced timestep float32(timestep / 999 * 999) == timestep (a test checks it).
    """
    return float(timestep) / 999.0


# -- the stand-in tokenizer ---------------------------------------------------------------------------------


def word_ids(text: str, *, lo: int, hi: int) -> list[int]:
    """Words hashed into [lo, hi): deterministic ids for a prompt (no tokenizer files reach these machines)."""
    span = max(hi - lo, 1)
    return [lo + zlib.crc32(word.encode()) % span for word in text.lower().split()]


@dataclass(frozen=True)
class Tokenizer:
    """A stand-in of one text encoder's tokenizer: its special tokens, padding and truncation, words hashed.

    A prompt's ids are kept unpadded (truncated at `max_length`); a batch pads them with `pad` to `length`
    (or to its longest when that is longer or `length` is None), with an attention mask marking the prompt's
    own tokens. `prefix` and `suffix` stand for a chat template's tokens.
    """

    vocab: int
    length: int | None
    bos: list[int]
    eos: list[int]
    pad: int
    max_length: int
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    def __call__(self, text: str) -> list[int]:
        reserved = len(self.bos) + len(self.eos) + len(self.prefix) + len(self.suffix)
        words = word_ids(text, lo=3, hi=self.vocab - 3)[: max(self.max_length - reserved, 0)]
        return [*self.bos, *self.prefix, *words, *self.suffix, *self.eos][: self.max_length]

    def pad_rows(self, rows: list[list[int]], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of ids padded (right) to `length` (default: the tokenizer's) or the longest row, and its
        attention mask (long, 1 = a prompt's token), on the CPU."""
        n = max([length or self.length or 0, *(len(r) for r in rows)])
        ids = torch.tensor([r + [self.pad] * (n - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows], dtype=torch.long)
        return ids, mask


def tokenizer_for(module: nn.Module, spec: ModelSpec, *, text_tokens: int, tiny: bool) -> Tokenizer:
    """The stand-in of the tokenizer a pipeline pairs with this text encoder."""
    cfg: Any = getattr(module, "config", None)
    vocab = int(getattr(cfg, "vocab_size", None) or cfg.text_config.vocab_size)
    kind = type(module).__name__
    if kind.startswith("CLIPText"):
        # CLIP: <|startoftext|> ... <|endoftext|>, the two highest ids (49406, 49407 of 49408), padded with
        # <|endoftext|> to 77; the pooled output is read at the first end token.
        n = int(cfg.max_position_embeddings)
        return Tokenizer(vocab, n, [vocab - 2], [vocab - 1], vocab - 1, n)
    if kind.startswith("T5"):
        # T5: no start token, </s> = 1, <pad> = 0; padded to the pipeline's max_sequence_length.
        return Tokenizer(vocab, text_tokens, [], [1], 0, text_tokens)
    im_start, im_end, end = vocab - 2, vocab - 3, vocab - 1  # <|im_start|>, <|im_end|>, <|endoftext|> (pad)
    newline, assistant = word_ids("\n", lo=3, hi=vocab - 3) or [3], word_ids("assistant", lo=3, hi=vocab - 3)
    suffix = (im_end, *newline, im_start, *assistant, *newline)
    if kind.startswith("Qwen2_5_VL"):
        # Qwen-Image's template: a 34-token system prompt prefix (dropped after encoding), the prompt, the
        # assistant turn; padded to the longest prompt of the batch, truncated at 1024 + 34.
        words = word_ids(" ".join(f"template-{i}" for i in range(QWEN_TEMPLATE_TOKENS - 1)), lo=3, hi=vocab - 3)
        prefix = (im_start, *words)
        return Tokenizer(vocab, None, [], [], end, QWEN_MAX_TOKENS + QWEN_TEMPLATE_TOKENS, prefix, suffix)
    if kind.startswith("Qwen3"):
        # Z-Image's template (user turn, generation prompt); padded to 512 (the tiny run: its text_tokens),
        # truncated at 512.
        prefix = (im_start, *word_ids("user", lo=3, hi=vocab - 3), *newline)
        length = text_tokens if tiny else ZIMAGE_TEXT_PAD
        return Tokenizer(vocab, length, [], [], end, ZIMAGE_TEXT_PAD, prefix, suffix)
    raise UnsupportedModelError(f"model {spec.id!r}: no tokenizer stand-in for text encoder {kind}")


# -- stages -------------------------------------------------------------------------------------------------


class _Stage:
    """One stage of one model in one recipe's form: the agent's prepared runner and the serving glue."""

    def __init__(self, spec: ModelSpec, prepared: PreparedStage) -> None:
        self.spec = spec
        self.prepared = prepared
        self.runner: StageRunner = prepared.runner
        self.modules = prepared.modules
        self.device = self.runner.setup.device
        self.dtype = self.runner.setup.dtype
        # compiled modules are static-shape (dynamic=False): one graph per batch size, see GroupRunner
        self.static_shapes = prepared.compiled

    def _ctx(self) -> contextlib.AbstractContextManager[Any]:
        """The recipe's call context (attention backend, step cache): entered around every module call."""
        return self.runner.call_context or contextlib.nullcontext()

    def unload(self) -> None:
        self.modules.clear()
        self.runner.inputs = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def latent_shape(spec: ModelSpec, height: int, width: int) -> tuple[int, int, int]:
    """(channels, h, w) of an unpacked latent: packed models' sides are even (2 x (side // 16))."""
    f = spec.vae_scale_factor
    if spec.architecture in ("sd", "sdxl"):
        return spec.latent_channels, height // f, width // f
    return spec.latent_channels, 2 * (height // (f * 2)), 2 * (width // (f * 2))


def text_bucket(n: int, base: int) -> int:
    """The padded text length of a compiled denoiser for a batch whose longest prompt has `n` tokens: `base` (the
    probe's length) doubled until it holds `n`, at most Qwen-Image's longest sequence (and never below `n`)."""
    size = max(base, 1)
    while size < n:
        size *= 2
    return max(n, min(size, QWEN_MAX_SEQUENCE))


def _strip(item: Item, prefixes: tuple[str, ...]) -> Item:
    return {k: v for k, v in item.items() if not k.startswith(prefixes)}


class TextEncoderStage(_Stage):
    """The text encoders: `prompt_embeds` (+ `pooled_prompt_embeds`), and the `negative_*` pair for CFG models."""

    def __init__(self, spec: ModelSpec, prepared: PreparedStage) -> None:
        super().__init__(spec, prepared)
        s = self.runner.setup
        self.tokenizers = {
            name: tokenizer_for(m, spec, text_tokens=s.text_tokens, tiny=s.tiny) for name, m in self.modules.items()
        }

    def _negative(self, item: Item) -> str | None:
        """The negative prompt to encode; None for no negative row (SDXL: zeros for an absent one)."""
        if not self.spec.cfg:
            return None
        negative = item.get("negative_prompt")
        if negative is None and self.spec.architecture == "sdxl":
            return None  # StableDiffusionXLPipeline: force_zeros_for_empty_prompt
        return str(negative or "")

    def prepare(self, item: Item) -> Item:
        """Tokenize (CPU work, in the job's thread)."""
        item = dict(item)
        negative = self._negative(item)
        for name, tok in self.tokenizers.items():
            item[f"_ids_{name}"] = tok(str(item.get("prompt") or ""))
            item[f"_neg_ids_{name}"] = tok(negative) if negative is not None else None
        return item

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        first = next(iter(self.tokenizers))
        items = [item if f"_ids_{first}" in item else self.prepare(item) for item in batch]
        with torch.inference_mode():
            cond = self._encode({n: [item[f"_ids_{n}"] for item in items] for n in self.tokenizers})
            neg_rows = [i for i, item in enumerate(items) if item[f"_neg_ids_{first}"] is not None]
            # a compiled encoder runs the negative pass at the batch's (padded, warmed) size, not at the size of
            # the subset that has a negative prompt (SDXL: an absent one is zeros), which would compile a graph
            enc_rows = list(range(len(items))) if neg_rows and self.static_shapes else neg_rows
            neg = (
                self._encode({n: [self._neg_ids(items[i], n) for i in enc_rows] for n in self.tokenizers})
                if enc_rows
                else None
            )
        _sync(self.device)
        out = []
        for i, item in enumerate(items):
            o = _strip(item, ("_ids_", "_neg_ids_"))
            o.update({k: v[i] for k, v in cond.items()})
            if self.spec.cfg:
                if neg is not None and i in neg_rows:
                    j = enc_rows.index(i)
                    o.update({f"negative_{k}": v[j] for k, v in neg.items()})
                else:
                    o.update({f"negative_{k}": torch.zeros_like(v[i]) for k, v in cond.items()})
            o["weights"] = "synthetic"  # noise: the result says so
            out.append(o)
        return out

    def _neg_ids(self, item: Item, name: str) -> list[int]:
        ids: list[int] | None = item[f"_neg_ids_{name}"]
        return self.tokenizers[name]("") if ids is None else ids

    def _ids(self, name: str, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizers[name]
        length = None
        if self.static_shapes and tok.length is None:
            # Qwen-Image pads to the batch's longest prompt: a compiled encoder gets the probe's length or a
            # doubling of it (masked, right padding: a causal encoder's prompt tokens are unchanged)
            prefix = len(tok.bos) + len(tok.prefix)
            longest = max(len(r) for r in rows) - prefix
            length = min(prefix + text_bucket(longest, self.runner.setup.text_tokens), tok.max_length)
        ids, mask = tok.pad_rows(rows, length)
        return ids.to(self.device), mask.to(self.device)

    def _call(self, module: nn.Module, **kwargs: Any) -> Any:
        with self._ctx():
            return module(**kwargs)

    def _encode(self, rows: dict[str, list[list[int]]]) -> dict[str, list[torch.Tensor]]:
        """One pass of each text encoder over its id rows; the conditioning tensors, one per row."""
        arch = self.spec.architecture
        mods = self.modules
        if arch == "sd":
            (name,) = rows
            ids, _ = self._ids(name, rows[name])
            hidden = self._call(mods[name], input_ids=ids).last_hidden_state
            return {"prompt_embeds": list(hidden)}
        if arch == "sdxl":
            hiddens: list[torch.Tensor] = []
            pooled: torch.Tensor | None = None
            for name, r in rows.items():
                ids, _ = self._ids(name, r)
                out = self._call(mods[name], input_ids=ids, output_hidden_states=True)
                hiddens.append(out.hidden_states[-2])
                if hasattr(out, "text_embeds"):
                    pooled = out.text_embeds  # CLIPTextModelWithProjection (text_encoder_2)
            if pooled is None:
                raise UnsupportedModelError(f"model {self.spec.id!r}: no pooled text embedding (text_encoder_2)")
            return {"prompt_embeds": list(torch.cat(hiddens, dim=-1)), "pooled_prompt_embeds": list(pooled)}
        if arch == "flux":
            result: dict[str, list[torch.Tensor]] = {}
            for name, r in rows.items():
                ids, _ = self._ids(name, r)
                module = mods[name]
                if type(module).__name__.startswith("CLIP"):
                    result["pooled_prompt_embeds"] = list(self._call(module, input_ids=ids).pooler_output)
                else:
                    result["prompt_embeds"] = list(self._call(module, input_ids=ids)[0])
            return result
        if arch in ("qwen-image", "z-image"):
            (name,) = rows
            ids, mask = self._ids(name, rows[name])
            out = self._call(mods[name], input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[-1 if arch == "qwen-image" else -2]
            keep = mask.bool()
            embeds = [hidden[i][keep[i]] for i in range(hidden.shape[0])]
            if arch == "qwen-image":
                embeds = [e[QWEN_TEMPLATE_TOKENS:][:QWEN_MAX_SEQUENCE] for e in embeds]
            return {"prompt_embeds": embeds}
        raise UnsupportedModelError(f"model {self.spec.id!r}: no text conditioning for architecture {arch!r}")


def example_conditioning_items(
    spec: ModelSpec, runner: StageRunner, n: int, *, height: int, width: int, steps: int
) -> list[Item]:
    """`n` denoiser inputs as a text stage hands them over, random conditioning of the shapes the denoiser module
    takes (a compiled stage's warm-up; a probe's inputs on real weights): one row per item, `negative_*` for CFG."""
    rows = n * (2 if spec.cfg else 1)
    cond = runner.example_conditioning(rows)
    arch = spec.architecture
    if arch in ("sd", "sdxl"):
        cols = {"prompt_embeds": cond["encoder_hidden_states"]}
        if "added_cond_kwargs" in cond:
            cols["pooled_prompt_embeds"] = cond["added_cond_kwargs"]["text_embeds"]
    elif arch == "flux":
        cols = {"prompt_embeds": cond["encoder_hidden_states"], "pooled_prompt_embeds": cond["pooled_projections"]}
    elif arch == "qwen-image":
        cols = {"prompt_embeds": cond["encoder_hidden_states"]}
    else:
        cols = {"prompt_embeds": cond["cap_feats"]}
    out = []
    for i in range(n):
        item: Item = {"prompt": "a warm-up image", "seed": i, "height": height, "width": width, "steps": steps}
        for key, rows_of in cols.items():
            item[key] = rows_of[i]
            if spec.cfg:
                item[f"negative_{key}"] = rows_of[n + i]
        out.append(item)
    return out


class DenoiserStage(_Stage):
    """The sampler loop around `StageRunner.denoiser_call`: seeded noise, `steps` steps, CFG as the model has it."""

    def __init__(self, spec: ModelSpec, prepared: PreparedStage) -> None:
        super().__init__(spec, prepared)
        self.module: Any = next(iter(self.modules.values()))
        if spec.architecture not in ("sd", "sdxl") and spec.architecture not in FLOW_DEFAULTS:
            raise UnsupportedModelError(f"model {spec.id!r}: no sampler for architecture {spec.architecture!r}")

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return latent_shape(self.spec, height, width)

    def example_items(self, n: int, *, height: int, width: int, steps: int) -> list[Item]:
        """`n` items as the text stage hands them over, with random conditioning of its shapes (warm-up)."""
        return example_conditioning_items(self.spec, self.runner, n, height=height, width=width, steps=steps)

    def noise(self, batch: Sequence[Item], height: int, width: int) -> torch.Tensor:
        """Each item's initial noise from its own seed (CPU generator: the same on every device), float32."""
        shape = self.latent_shape(height, width)
        return torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(item["seed"]))) for item in batch]
        ).to(self.device)

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        first = batch[0]
        h, w = int(first["height"]), int(first["width"])
        steps = int(first.get("steps") or self.spec.default_steps)
        noise = self.noise(batch, h, w)
        self.runner.set_conditioning(self.conditioning(batch, h, w))
        for m in self.prepared.cache_modules:
            reset_cache(m)  # a new trajectory starts with a full compute
        try:
            with torch.inference_mode():
                if self.spec.architecture in ("sd", "sdxl"):
                    latents = self._euler(noise.to(self.dtype), steps)
                else:
                    latents = self._flow(noise, steps)
        finally:
            self.runner.inputs = {}
        _sync(self.device)
        out = []
        for i, item in enumerate(batch):
            o = {k: v for k, v in item.items() if not k.endswith("prompt_embeds")}
            o["latents"] = latents[i].detach()
            o["weights"] = "synthetic"  # noise: the result says so
            out.append(o)
        return out

    # -- conditioning: the denoiser's keyword arguments, conditional rows then unconditional ones ------------
    def _rows(self, batch: Sequence[Item], key: str) -> list[torch.Tensor]:
        rows = [item[key] for item in batch]
        if self.spec.cfg:
            rows += [item[f"negative_{key}"] for item in batch]
        return [r.to(self.device, self.dtype) for r in rows]

    def conditioning(self, batch: Sequence[Item], height: int, width: int) -> dict[str, Any]:
        arch = self.spec.architecture
        cfg = self.module.config
        embeds = self._rows(batch, "prompt_embeds")
        if arch in ("sd", "sdxl"):
            cond: dict[str, Any] = {"encoder_hidden_states": torch.stack(embeds)}
            if getattr(cfg, "addition_embed_type", None) == "text_time":
                pooled = torch.stack(self._rows(batch, "pooled_prompt_embeds"))
                # original size, crop top-left, target size (StableDiffusionXLPipeline._get_add_time_ids)
                time_ids = torch.tensor([[height, width, 0, 0, height, width]] * len(embeds), dtype=self.dtype)
                cond["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(self.device)}
            return cond
        if arch == "flux":
            hidden = torch.stack(embeds)
            cond = {
                "encoder_hidden_states": hidden,
                "pooled_projections": torch.stack(self._rows(batch, "pooled_prompt_embeds")),
                "txt_ids": torch.zeros(hidden.shape[1], 3, device=self.device, dtype=self.dtype),
            }
            if cfg.guidance_embeds:
                # FluxPipeline: the distilled guidance is an input (float32; the model scales it by 1000)
                cond["guidance"] = torch.full(
                    (hidden.shape[0],), self.spec.guidance_scale, device=self.device, dtype=torch.float32
                )
            return cond
        if arch == "qwen-image":
            n = max(e.shape[0] for e in embeds)
            if self.static_shapes:
                # a compiled denoiser sees a few text lengths (masked): the probe's, then doublings of it, not each
                # batch's longest prompt (a graph per length)
                n = text_bucket(n, self.runner.setup.text_tokens)
            hidden = torch.stack([torch.cat([e, e.new_zeros(n - e.shape[0], e.shape[1])]) for e in embeds])
            mask = torch.tensor([[1] * e.shape[0] + [0] * (n - e.shape[0]) for e in embeds], dtype=torch.long)
            # QwenImagePipeline passes no mask when nothing is padded
            return {
                "encoder_hidden_states": hidden,
                "encoder_hidden_states_mask": None
                if bool(mask.all()) and not self.static_shapes
                else mask.to(self.device),
            }
        # z-image: one caption feature tensor per row, each its own length
        return {"cap_feats": embeds}

    # -- samplers ------------------------------------------------------------------------------------------
    def _step(self, x: torch.Tensor, t: float) -> torch.Tensor:
        with self._ctx():
            return self.runner.denoiser_call(x, t, renorm_cfg=True)

    def _euler(self, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """EulerDiscrete (trailing): scale_model_input, one UNet call at the scheduler's timestep, step."""
        from diffusers import EulerDiscreteScheduler

        cls: Any = EulerDiscreteScheduler
        sched = cls.from_config(UNET_SAMPLER)
        sched.set_timesteps(steps, device=self.device)
        times = sched.timesteps.tolist()  # once, not a device sync per step
        latents = noise * sched.init_noise_sigma
        for t, tv in zip(sched.timesteps, times, strict=True):
            x = sched.scale_model_input(latents, t)
            pred = self._step(x, unet_time(tv))
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        result: torch.Tensor = latents
        return result

    def sampler(self) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        key = self.spec.id if self.spec.id in FLOW_SAMPLERS else FLOW_DEFAULTS[self.spec.architecture]
        cls: Any = FlowMatchEulerDiscreteScheduler
        return cls.from_config({"num_train_timesteps": 1000, **FLOW_SAMPLERS[key]})

    def _flow(self, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """Flow-matching Euler: sigmas from 1 towards 0 over `steps`, shifted as the model's scheduler does."""
        sched = self.sampler()
        arch = self.spec.architecture
        _, lh, lw = noise.shape[1:]
        if arch == "z-image":
            sigmas: Any = torch.linspace(1.0, 1 / steps, steps).tolist()  # ZImagePipeline's default sigmas
        else:
            sigmas = np.linspace(1.0, 1 / steps, steps)
        c = sched.config
        seq = (lh // 2) * (lw // 2)  # image tokens after 2x2 packing
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = seq * slope + c.base_shift - slope * c.base_image_seq_len  # the pipelines' calculate_shift
        sched.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        sched.set_begin_index(0)
        times = sched.timesteps.to("cpu")
        if arch == "z-image":
            # ZImagePipeline: float32 latents, the model at (1000 - t) / 1000 in float32, its output negated
            latents = noise
            for i, t in enumerate(sched.timesteps):
                tm = float((1000 - times[i]) / 1000)
                pred = -self._step(latents.to(self.dtype), tm).float()
                latents = sched.step(pred, t, latents, return_dict=False)[0]
            return latents
        # Flux, Qwen-Image: latents in the model dtype, the model at timestep / 1000 (in that dtype)
        latents = noise.to(self.dtype)
        for i, t in enumerate(sched.timesteps):
            tm = float(times[i].to(self.dtype) / 1000)
            pred = self._step(latents, tm)
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        result: torch.Tensor = latents
        return result


class VaeDecoderStage(_Stage):
    """Latents to uint8 images (H, W, 3) on the CPU, un-scaled as the model's pipeline does before decoding."""

    def __init__(self, spec: ModelSpec, prepared: PreparedStage) -> None:
        super().__init__(spec, prepared)
        vae: Any = next(iter(self.modules.values()))
        cfg = vae.config
        self.mean: torch.Tensor | None = None
        self.std_inv: torch.Tensor | None = None
        if type(vae).__name__ == "AutoencoderKLQwenImage":
            view = (1, int(cfg.z_dim), 1, 1)
            self.mean = torch.tensor(cfg.latents_mean).view(view).to(self.device, self.dtype)
            self.std_inv = (1.0 / torch.tensor(cfg.latents_std)).view(view).to(self.device, self.dtype)
        # the VAE in use's own factors: AutoencoderTiny's are 1 and 0 (TAESD decodes scaled latents)
        self.scaling = float(getattr(cfg, "scaling_factor", None) or 1.0)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)

    def example_items(self, n: int, *, height: int, width: int, steps: int) -> list[Item]:
        """`n` items as the denoiser hands them over (zero latents: warm-up)."""
        shape = latent_shape(self.spec, height, width)
        return [
            {
                "seed": i,
                "height": height,
                "width": width,
                "steps": steps,
                "latents": torch.zeros(shape, device=self.device),
            }
            for i in range(n)
        ]

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        z = torch.stack([item["latents"] for item in batch]).to(self.device, self.dtype)
        if self.mean is not None and self.std_inv is not None:
            z = z / self.std_inv + self.mean  # QwenImagePipeline: latents / (1 / std) + mean
        else:
            z = z / self.scaling
            if self.shift:
                z = z + self.shift
        if self.runner.setup.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._ctx():
            images = self.runner.vae_decode(z)
            pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            pixels = pixels.permute(0, 2, 3, 1).to("cpu")
        _sync(self.device)
        arr = pixels.numpy()
        out = []
        for i, item in enumerate(batch):
            o = {k: v for k, v in item.items() if k != "latents"}
            o["image"] = np.ascontiguousarray(arr[i])
            o["weights"] = "synthetic"  # noise: the result says so
            out.append(o)
        return out


STAGES: dict[str, type[_Stage]] = {
    "text_encoder": TextEncoderStage,
    "denoiser": DenoiserStage,
    "vae_decoder": VaeDecoderStage,
}


def synthetic_stage(spec: ModelSpec, stage: str, prepared: PreparedStage) -> StageFn:
    """A stage on random weights: the stand-in glue around the prepared modules (no tokenizer files exist)."""
    runner: StageFn = STAGES[stage](spec, prepared)  # type: ignore[assignment]
    return runner
