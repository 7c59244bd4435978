"""The worker's stage code against the diffusers pipelines, and against the agent's recipe code.

- Parity: for every architecture, the worker's text_encoder -> denoiser -> vae_decoder (fp32, 3 steps) gives
  the image the diffusers 0.42 pipeline gives with the same modules, scheduler, seed noise and token ids (a
  tokenizer object that tokenizes as the worker's stand-in does): text conditioning, sampler, timestep
  conventions, guidance, latent packing and VAE un-scaling are the pipeline's.
- The modules the worker runs are the ones `stagekit.recipes.prepare` built and nothing else (a spy on prepare;
  fused QKV, int8 layers, compile): a regression that builds modules on its own fails here.
- Recipes a device cannot run fail with the agent's reason; the UNet's timestep mapping is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from scheduler.stages import GroupRunner, GroupSpec
from stagekit.errors import UnsupportedModelError
from tests.scheduler.stage_helpers import FP32, MODELS, SYNTHETIC, group, items

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from stagekit import (  # noqa: E402
    quant,
    recipes,
    serving,
)
from stagekit import synthetic as diffusion  # noqa: E402
from stagekit.recipes import PreparedStage, RecipeOptions  # noqa: E402


class _Encoding(dict[str, Any]):
    def to(self, device: Any) -> _Encoding:
        return _Encoding({k: v.to(device) for k, v in self.items()})

    def __getattr__(self, key: str) -> Any:
        return self[key]


class FakeTokenizer:
    """What a diffusers pipeline calls as its tokenizer, tokenizing as the worker's stand-in does."""

    added_tokens_encoder: dict[str, int] = {}  # noqa: RUF012

    def __init__(self, tok: diffusion.Tokenizer, template: str | None = None) -> None:
        self.tok = dataclasses.replace(tok, length=None)
        self.model_max_length = tok.length or 77
        self.template = template

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def batch_decode(self, ids: Any, **kwargs: Any) -> list[str]:
        return ["" for _ in ids]

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        return "\x00" + messages[0]["content"]  # the stand-in adds the template's tokens itself

    def _prompt(self, text: str) -> str:
        if self.template is not None:
            before, after = self.template.split("{}")
            assert text.startswith(before)
            assert text.endswith(after)
            return text[len(before) : len(text) - len(after)]
        return text.removeprefix("\x00")

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        max_length: int | None = None,
        truncation: bool = False,
        **kwargs: Any,
    ) -> _Encoding:
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.tok(self._prompt(t)) for t in texts]
        if truncation and max_length:
            rows = [r[:max_length] for r in rows]
        n = max_length if padding == "max_length" and max_length else max(len(r) for r in rows)
        pad = self.tok.pad
        return _Encoding(
            input_ids=torch.tensor([r + [pad] * (n - len(r)) for r in rows]),
            attention_mask=torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows]),
        )


def _pipeline_images(batch: list[dict[str, Any]], runner: GroupRunner) -> np.ndarray:
    """The diffusers pipeline's images (N, H, W, 3) in 0..255 for the batch, on the worker's modules."""
    te, dn, vae = runner.fns
    spec = dn.spec  # type: ignore[attr-defined]
    mods = {**te.modules, **dn.modules, **vae.modules}  # type: ignore[attr-defined]
    toks = {name: FakeTokenizer(t) for name, t in te.tokenizers.items()}  # type: ignore[attr-defined]
    noise = dn.noise(batch, 64, 64)  # type: ignore[attr-defined]
    prompts = [i["prompt"] for i in batch]
    negatives = [i["negative_prompt"] or "" for i in batch]
    arch = spec.architecture
    pipe: Any
    calls: list[dict[str, Any]]
    if arch in ("sd", "sdxl"):
        unet_sampler = diffusers.EulerDiscreteScheduler.from_config(diffusion.UNET_SAMPLER)
    if arch == "sd":
        pipe = diffusers.StableDiffusionPipeline(
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=toks["text_encoder"],
            unet=mods["unet"],
            scheduler=unet_sampler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        calls = [{"prompt": prompts, "negative_prompt": negatives, "latents": noise}]
    elif arch == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            text_encoder_2=mods["text_encoder_2"],
            tokenizer=toks["text_encoder"],
            tokenizer_2=toks["text_encoder_2"],
            unet=mods["unet"],
            scheduler=unet_sampler,
        )
        # one image per call: the pipeline zeroes a whole call's negatives when negative_prompt is None
        calls = [
            {"prompt": item["prompt"], "negative_prompt": item["negative_prompt"], "latents": noise[k : k + 1]}
            for k, item in enumerate(batch)
        ]
    elif arch == "flux":
        pipe = diffusers.FluxPipeline(
            scheduler=dn.sampler(),  # type: ignore[attr-defined]
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=toks["text_encoder"],
            text_encoder_2=mods["text_encoder_2"],
            tokenizer_2=toks["text_encoder_2"],
            transformer=mods["transformer"],
        )
        t5_tokens = te.tokenizers["text_encoder_2"].length  # type: ignore[attr-defined]
        latents = pipe._pack_latents(noise, len(batch), 16, 8, 8)
        calls = [{"prompt": prompts, "latents": latents, "max_sequence_length": t5_tokens}]
    elif arch == "qwen-image":
        tok = FakeTokenizer(te.tokenizers["text_encoder"])  # type: ignore[attr-defined]
        pipe = diffusers.QwenImagePipeline(
            scheduler=dn.sampler(),  # type: ignore[attr-defined]
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=tok,
            transformer=mods["transformer"],
        )
        tok.template = pipe.prompt_template_encode
        latents = pipe._pack_latents(noise, len(batch), 16, 8, 8)
        calls = [{"prompt": prompts, "negative_prompt": negatives, "latents": latents}]
    else:
        pipe = diffusers.ZImagePipeline(
            scheduler=dn.sampler(),  # type: ignore[attr-defined]
            vae=mods["vae"],
            text_encoder=mods["text_encoder"],
            tokenizer=toks["text_encoder"],
            transformer=mods["transformer"],
        )
        calls = [{"prompt": prompts, "latents": noise}]
    # Qwen-Image's guidance is true CFG (true_cfg_scale); the others' guidance_scale
    guidance = (
        {"true_cfg_scale": spec.guidance_scale} if arch == "qwen-image" else {"guidance_scale": spec.guidance_scale}
    )
    pipe.set_progress_bar_config(disable=True)
    steps = batch[0]["steps"]
    images = torch.cat(
        [
            pipe(**call, **guidance, num_inference_steps=steps, height=64, width=64, output_type="pt").images
            for call in calls
        ]
    )
    return (images.permute(0, 2, 3, 1) * 255).numpy()  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_worker_images_are_the_diffusers_pipelines(model: str) -> None:
    runner = group(model, FP32)
    batch = items(2, steps=3)
    batch[1]["negative_prompt"] = "blurry, low quality"  # one row with a negative prompt, one without
    ours = np.stack([o["image"] for o in runner.run([runner.prepare(i) for i in batch])]).astype(np.float64)
    with torch.inference_mode():
        theirs = _pipeline_images(batch, runner)
    assert ours.std() > 1.0  # not a flat image: the comparison means something
    assert np.abs(ours - theirs).max() <= 1.0  # the worker rounds to uint8; the pipeline's floats do not


def test_unet_timestep_mapping_is_exact() -> None:
    """denoiser_call gives a UNet t * 999: every trailing timestep comes back exactly (float32)."""
    for steps in range(1, 101):
        sched: Any = diffusers.EulerDiscreteScheduler.from_config(diffusion.UNET_SAMPLER)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            assert torch.full((), diffusion.unet_time(float(t)) * 999.0).item() == t.item()


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> list[PreparedStage]:
    """Every PreparedStage stagekit.recipes.prepare makes while the test builds stages."""
    made: list[PreparedStage] = []
    real = recipes.prepare

    def spy(*args: Any, **kwargs: Any) -> PreparedStage:
        result = real(*args, **kwargs)
        made.append(result)
        return result

    monkeypatch.setattr(serving, "prepare", spy)
    return made


def test_worker_modules_are_what_agent_recipes_prepare_built(prepared: list[PreparedStage]) -> None:
    stages = ("text_encoder", "denoiser", "vae_decoder")
    recipes = (("text_encoder", "bf16"), ("denoiser", "bf16-fused-qkv"), ("vae_decoder", "bf16-tiny-vae"))
    runner = GroupRunner.build(GroupSpec("sdxl", stages, recipes, True, "cpu"), SYNTHETIC)
    assert [p.runner.setup.stage for p in prepared] == list(stages)
    for fn, made in zip(runner.fns, prepared, strict=True):
        stage: Any = fn
        assert stage.prepared is made
        assert stage.runner is made.runner
        assert all(stage.modules[name] is module for name, module in made.modules.items())
    unet: Any = runner.fns[1].modules["unet"]  # type: ignore[attr-defined]
    assert "fused QKV projections" in prepared[1].notes
    fused = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert fused
    assert all(getattr(m, "fused_projections", False) for m in fused)
    assert type(runner.fns[2].modules["vae"]).__name__ == "AutoencoderTiny"  # type: ignore[attr-defined]
    out = runner.run([runner.prepare(i) for i in items(1)])
    assert out[0]["image"].shape == (64, 64, 3)


def test_quantized_recipe_runs_the_agents_int8_layers(prepared: list[PreparedStage]) -> None:
    # the tiny models' layers are narrower than the agent's default eligibility (128 features): lower it
    options = RecipeOptions(quant_min_features=16)
    te = serving.build_stage("flux-dev", "text_encoder", "bf16", True, "cpu")
    dn: Any = serving.build_stage("flux-dev", "denoiser", "int8", True, "cpu", options=options)
    transformer = dn.modules["transformer"]
    assert transformer is prepared[-1].modules["transformer"]
    layers = [m for m in transformer.modules() if isinstance(m, quant.Int8DynamicLinear)]
    assert layers
    assert any(f"{len(layers)} Linear layers int8-dynamic" in note for note in prepared[-1].notes)
    out = dn(te([te.prepare(i) for i in items(2)]))  # type: ignore[attr-defined]
    assert all(o["latents"].shape == (16, 8, 8) and torch.isfinite(o["latents"]).all() for o in out)


def test_compiling_recipe_is_compiled_by_the_agent(prepared: list[PreparedStage]) -> None:
    stage: Any = serving.build_stage("sd15", "denoiser", "bf16-compile", True, "cpu")
    assert stage.prepared is prepared[-1]
    assert stage.prepared.compiled  # apply_compile() ran (torch.compile is lazy: nothing compiles until a call)
    assert any("compile" in note for note in stage.prepared.notes)


@pytest.mark.parametrize(
    ("model", "stage", "recipe", "reason"),
    [
        ("flux-dev", "denoiser", "fp8", "fp8 matmul needs an NVIDIA GPU"),
        ("flux-dev", "denoiser", "int8", "no Linear layer is eligible"),
        ("sd15", "denoiser", "bf16-fbcache", "no diffusers cache hooks"),
        ("sd15", "text_encoder", "bf16-tiny-vae", "does not apply to stage"),
        ("qwen-image", "vae_decoder", "bf16-tiny-vae", "no tiny VAE"),
        ("sd15", "denoiser", "bf16-sdpa-cudnn", "cuDNN attention backend needs an NVIDIA GPU"),
    ],
)
def test_unsupported_recipes_fail_with_the_agents_reason(model: str, stage: str, recipe: str, reason: str) -> None:
    with pytest.raises(UnsupportedModelError, match=reason):
        serving.build_stage(model, stage, recipe, True, "cpu")


def test_unknown_model_or_recipe() -> None:
    with pytest.raises(UnsupportedModelError, match="not in the catalog"):
        serving.build_stage("no-such-model", "denoiser", "bf16", True, "cpu")
    with pytest.raises(UnsupportedModelError, match="not in the catalog"):
        serving.build_stage("sd15", "denoiser", "bf16-some-new-kernel", True, "cpu")
