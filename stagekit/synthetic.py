"""Random weights (`--synthetic`): the model's own diffusers pipeline object, from random modules.

What a model folder would hold besides weights is made here, offline: the tokenizers and the scheduler. The
serving code (`stagekit.serving`) then runs the same pipeline calls on these objects as on a user's folder, so a
synthetic stage's compute, shapes and per-call work are a real stage's; only the images are noise.

- Tokenizers are the real classes (CLIP byte-pair, T5 unigram, Qwen2 byte-level BPE) with vocabularies written
  here: every byte, plus whole-word merges for `WORDS` (the probe prompts' words and the pipelines' prompt
  templates), so a probe prompt is one token per word and Qwen-Image's template prefix is the 34 tokens its
  pipeline drops (`prompt_template_encode_start_idx`), as with Qwen's own tokenizer. Every id is inside the text
  encoder config's vocabulary; CLIP's end token is its last id, where the pooled output is read (the configs'
  legacy `eos_token_id: 2` takes the highest id of the row).
- The scheduler is the catalog's copy of the model's published scheduler config (`planner.catalog`).

    pipeline(spec, modules, tiny=...) -> the model's pipeline with `modules` in place, every other model part None
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from torch import nn

from planner.catalog import Component, ModelSpec, component_config, scheduler_config
from stagekit.errors import UnsupportedModelError
from stagekit.sources import PIPELINES

PROMPT_WORDS = (
    "a photo of an astronaut riding horse on the moon watercolor painting red fox in snow at dawn bowl fruit "
    "wooden table studio lighting"
)
"""The probe prompts' words (`stagekit.serving.PROBE_PROMPTS`)."""
TEMPLATE_WORDS = (
    "Describe image by detailing color shape size texture quantity text spatial relationships objects and "
    "background system user assistant"
)
"""The words of Qwen-Image's prompt template and of the Qwen chat templates' roles."""
WORDS = (*PROMPT_WORDS.split(), *TEMPLATE_WORDS.split())
"""Words the tokenizers know whole; any other text is tokenized byte by byte (more tokens than a real one)."""

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The Qwen chat template's shape (role turns, generation prompt), as Z-Image's pipeline applies it."""

TOKENIZER_MAX_LENGTH = {"CLIP": 77, "T5": 512, "Qwen": 32768}


def _vocab_size(component: Component, tiny: bool) -> int:
    cfg = component_config(component, tiny=tiny)
    return int(cfg.get("vocab_size") or cfg["text_config"]["vocab_size"])


@cache
def _byte_chars() -> tuple[str, ...]:
    """GPT-2's byte-to-unicode alphabet (CLIP and Qwen2 byte-level BPE): 256 printable stand-ins of the bytes."""
    from tokenizers.pre_tokenizers import ByteLevel

    return tuple(sorted(ByteLevel.alphabet()))


QWEN_IMAGE_TEMPLATE_TEXT = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of "
    "the objects and background:"
)


@cache
def _trained_merges(*, clip: bool) -> tuple[tuple[str, str], ...]:
    """BPE merges trained (the `tokenizers` trainer) on `WORDS` until each is one token: CLIP's word-end-marked
    lowercase words, or Qwen2's byte-level words with and without a leading space."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if clip:
        model = models.BPE(end_of_word_suffix="</w>")
        pre: Any = pre_tokenizers.Whitespace()
        lines = [w.lower() for w in WORDS]
        trainer = trainers.BpeTrainer(vocab_size=100_000, show_progress=False, end_of_word_suffix="</w>")
    else:
        model, pre = models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=False)
        lines = [*WORDS, *(f" {w}" for w in WORDS), QWEN_IMAGE_TEMPLATE_TEXT]
        trainer = trainers.BpeTrainer(vocab_size=100_000, show_progress=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre
    tok.train_from_iterator(lines, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return tuple((str(a), str(b)) for a, b in merges)


def _bpe(base: list[str], *, clip: bool, limit: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A vocabulary of `base` symbols then the trained merges' tokens, at most `limit` ids, and those merges."""
    vocab = {s: i for i, s in enumerate(dict.fromkeys(base))}
    merges: list[tuple[str, str]] = []
    for a, b in _trained_merges(clip=clip):
        if len(vocab) >= limit:
            break
        if a in vocab and b in vocab and a + b not in vocab:
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    return vocab, merges


@cache
def clip_tokenizer(vocab_size: int) -> Any:
    """A CLIP byte-pair tokenizer of `vocab_size` ids: bytes (with and without the word-end mark), the words,
    unused fillers, then <|startoftext|> and <|endoftext|> as the last two ids (as in CLIP's own vocabulary)."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab, merges = _bpe([*chars, *(c + "</w>" for c in chars)], clip=True, limit=vocab_size - 2)
    for i in range(len(vocab), vocab_size - 2):
        vocab[f"<|unused{i}|>"] = i
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]  # the backend takes pairs
    tok.model_max_length = TOKENIZER_MAX_LENGTH["CLIP"]
    return tok


@cache
def t5_tokenizer(vocab_size: int) -> Any:
    """A T5 unigram tokenizer: <pad> 0, </s> 1, <unk> 2, the words as pieces, then characters."""
    import string

    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁", *(f"▁{w}" for w in WORDS)]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    unique = list(dict.fromkeys(pieces))[:vocab_size]
    tok = T5Tokenizer(vocab=[(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(unique)], extra_ids=0)
    tok.model_max_length = TOKENIZER_MAX_LENGTH["T5"]
    return tok


@cache
def qwen_tokenizer(vocab_size: int) -> Any:
    """A Qwen2 byte-level BPE tokenizer with the chat special tokens and a chat template."""
    from transformers import Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab, merges = _bpe(list(_byte_chars()), clip=False, limit=vocab_size - len(specials))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]  # the backend takes pairs
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.model_max_length = TOKENIZER_MAX_LENGTH["Qwen"]
    return tok


def tokenizer_for(component: Component, *, tiny: bool) -> Any:
    """The tokenizer a pipeline pairs with this text encoder, inside its config's vocabulary."""
    size = _vocab_size(component, tiny)
    kind = component.class_name
    if kind.startswith("CLIPText"):
        return clip_tokenizer(size)
    if kind.startswith("T5"):
        return t5_tokenizer(size)
    if kind.startswith("Qwen"):
        return qwen_tokenizer(size)
    raise UnsupportedModelError(f"no offline tokenizer for text encoder {kind} ({component.name})")


def scheduler_for(spec: ModelSpec) -> Any:
    """The model's published scheduler, from the catalog's copy of its config."""
    import diffusers

    cfg = scheduler_config(spec)
    cls: Any = getattr(diffusers, cfg["_class_name"])
    return cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})


def pipeline(spec: ModelSpec, modules: dict[str, nn.Module], *, tiny: bool) -> Any:
    """The model's diffusers pipeline with `modules` in place, every text encoder's tokenizer, the scheduler, and
    None for every other part (as `stagekit.serving.load_pipeline` builds it from a folder)."""
    import diffusers

    cls: Any = getattr(diffusers, PIPELINES[spec.architecture])
    parts: dict[str, Any] = {
        name: None
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.default is inspect.Parameter.empty
    }
    encoders = [c for s in spec.stages for c in s.components if c.name.startswith("text_encoder")]
    for comp in encoders:
        parts[comp.name.replace("text_encoder", "tokenizer")] = tokenizer_for(comp, tiny=tiny)
    parts["scheduler"] = scheduler_for(spec)
    parts.update(modules)
    if spec.architecture == "sd":
        parts["requires_safety_checker"] = False
    return cls(**parts)
