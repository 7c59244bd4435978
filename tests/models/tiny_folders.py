"""Tiny real-format diffusers model folders, built offline, for every architecture the catalog serves.

A folder is what `DiffusionPipeline.save_pretrained` writes (`model_index.json`, `tokenizer*/`, `text_encoder*/`,
`unet/` or `transformer/`, `vae/`, `scheduler/`): the catalog's tiny configs with seeded random weights, real
tokenizer classes (CLIP byte-pair, T5 unigram, Qwen2 byte-level BPE) whose vocabularies this module writes, and
each model's published scheduler settings (the catalog's `scheduler:` config). A user's folder is loaded through
the same `from_pretrained` path, so tests of serving, probing and quality run the code a real model takes, only at
tiny shapes.

    build_folder("sdxl", root) -> root / "sdxl"          # one model
    tiny_model_dirs (session fixture) -> TinyFolders      # folders built once per session, on first use

Nothing is downloaded: the tokenizers are made from vocabularies written here.
"""

from __future__ import annotations

import json
import string
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

from planner.catalog import Component, ModelSpec, component_config, known_model

MODELS = (
    "sd15",
    "sdxl",
    "sdxl-lightning",
    "flux-dev",
    "flux-schnell",
    "qwen-image",
    "qwen-image-lightning",
    "z-image-turbo",
)
"""Every model id the builder serves: one per architecture plus the distilled variants (their own folders)."""
ARCHITECTURE_MODELS = ("sd15", "sdxl", "flux-dev", "qwen-image", "z-image-turbo")
"""One model per architecture: what the per-architecture tests run."""

WORDS = "a photo of an astronaut riding horse on the moon red cat sitting in garden watercolor painting city at night"
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The Qwen chat template's shape (role turns, generation prompt), as Z-Image's pipeline applies it."""


# -- tokenizers ---------------------------------------------------------------------------------------------


@cache
def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode alphabet (CLIP and Qwen2 byte-level BPE): 256 printable stand-ins of the bytes."""
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def clip_tokenizer(max_length: int = 77) -> Any:
    """A CLIP byte-pair tokenizer: every byte with and without the word-end mark, a few merges of common words."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for tok in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(WORDS.split())):
        if len(word) < 2:
            continue
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
            left = left + right
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = max_length
    return tok


def t5_tokenizer(max_length: int = 512) -> Any:
    """A T5 unigram tokenizer: <pad> 0, </s> 1, <unk> 2, then characters and the test words as pieces."""
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [f"▁{w}" for w in sorted(set(WORDS.split()))]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(dict.fromkeys(pieces))]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=0)
    tok.model_max_length = max_length
    return tok


def qwen_tokenizer() -> Any:
    """A Qwen2 byte-level BPE tokenizer with the chat special tokens and a chat template."""
    from transformers import Qwen2Tokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges: list[tuple[str, str]] = []
    for word in sorted(set(WORDS.split())):
        left = "Ġ" + word[0]
        if left not in vocab:
            merges.append(("Ġ", word[0]))
            vocab[left] = len(vocab)
        for ch in word[1:]:
            if left + ch not in vocab:
                merges.append((left, ch))
                vocab[left + ch] = len(vocab)
            left = left + ch
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.model_max_length = 32768
    return tok


# -- modules ------------------------------------------------------------------------------------------------


def build_module(component: Component, seed: int) -> torch.nn.Module:
    """A component from its tiny config with seeded random weights (float32, CPU)."""
    cfg = component_config(component, tiny=True)
    torch.manual_seed(seed)
    if component.library == "diffusers":
        import diffusers

        module: torch.nn.Module = getattr(diffusers, component.class_name).from_config(cfg)
    else:
        import transformers

        skip = ("architectures", "model_type", "torch_dtype", "dtype")
        args = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in skip}
        config = transformers.AutoConfig.for_model(cfg["model_type"], **args)
        module = getattr(transformers, component.class_name)(config)
    return module.eval()


def _components(spec: ModelSpec, seed: int) -> dict[str, torch.nn.Module]:
    out: dict[str, torch.nn.Module] = {}
    for i, comp in enumerate(c for s in spec.stages for c in s.components):
        out[comp.name] = build_module(comp, seed + i)
    return out


def _scheduler(model_id: str) -> Any:
    """The model's published scheduler, from the catalog's copy of its config (as random weights get it)."""
    from stagekit.synthetic import scheduler_for

    return scheduler_for(known_model(model_id))


def pipeline(model_id: str, *, seed: int = 0) -> Any:
    """The model's diffusers pipeline object, tiny, with random weights and the tokenizers made here."""
    import diffusers

    spec = known_model(model_id)
    mods = _components(spec, seed)
    sched = _scheduler(model_id)
    arch = spec.architecture
    if arch == "sd":
        return diffusers.StableDiffusionPipeline(
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=clip_tokenizer(),
            unet=mods["unet"],
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if arch == "sdxl":
        return diffusers.StableDiffusionXLPipeline(
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            text_encoder_2=mods["text_encoder_2"],
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            unet=mods["unet"],
            scheduler=sched,
        )
    if arch == "flux":
        return diffusers.FluxPipeline(
            scheduler=sched,
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=clip_tokenizer(),
            text_encoder_2=mods["text_encoder_2"],
            tokenizer_2=t5_tokenizer(),
            transformer=mods["transformer"],
        )
    if arch == "qwen-image":
        return diffusers.QwenImagePipeline(
            scheduler=sched,
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=qwen_tokenizer(),
            transformer=mods["transformer"],
        )
    if arch == "z-image":
        return diffusers.ZImagePipeline(
            scheduler=sched,
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=qwen_tokenizer(),
            transformer=mods["transformer"],
        )
    raise ValueError(f"no tiny folder recipe for architecture {arch!r} (model {model_id!r})")


def build_folder(model_id: str, root: Path, *, seed: int | None = None) -> Path:
    """Write the model's tiny diffusers folder under `root/model_id` (save_pretrained) and return it.

    The default seed is the model id's: a distilled variant's weights differ from its base model's, as they do.
    """
    out = root / model_id
    seed = zlib.crc32(model_id.encode()) % 10_000 if seed is None else seed
    pipeline(model_id, seed=seed).save_pretrained(out, safe_serialization=True)
    return out


class TinyFolders:
    """Tiny model folders under one root, each built on first use and kept (one build per session)."""

    def __init__(self, root: Path, build: Callable[[str, Path], Path] = build_folder) -> None:
        self.root = root
        self._build = build
        self._dirs: dict[str, Path] = {}

    def __getitem__(self, model_id: str) -> Path:
        if model_id not in self._dirs:
            self._dirs[model_id] = self._build(model_id, self.root)
        return self._dirs[model_id]

    def env(self, *model_ids: str) -> str:
        """`GFP_MODEL_DIRS` for these models (built if needed): `id=dir,id=dir`."""
        return ",".join(f"{m}={self[m]}" for m in model_ids)


def copy_folder(src: Path, dst: Path) -> Path:
    """A copy of a folder to break on purpose (the original stays shared)."""
    import shutil

    shutil.copytree(src, dst)
    return dst


def model_index(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "model_index.json").read_text())
    return data


@cache
def _reference_pipeline(folder: Path) -> Any:
    import diffusers

    return diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)


def reference_image(
    folder: Path,
    model_id: str,
    *,
    prompt: str,
    seed: int,
    steps: int,
    height: int = 64,
    width: int = 64,
    negative_prompt: str | None = None,
) -> Any:
    """The image `DiffusionPipeline.from_pretrained(folder)` makes (uint8 (H, W, 3)), with the model's catalog
    guidance and, for Qwen-Image, the serving default negative prompt " " (docs/models.md)."""
    import numpy as np

    spec = known_model(model_id)
    kwargs: dict[str, Any] = {
        "true_cfg_scale" if spec.architecture == "qwen-image" else "guidance_scale": spec.guidance_scale
    }
    if negative_prompt is None and spec.architecture == "qwen-image":
        negative_prompt = " "
    if negative_prompt is not None and spec.cfg:
        kwargs["negative_prompt"] = negative_prompt
    out = _reference_pipeline(folder)(
        prompt,
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=steps,
        height=height,
        width=width,
        output_type="np",
        **kwargs,
    ).images[0]
    return (out * 255).round().astype(np.uint8)
